//! A tiny stand-in for the app that uses calsync, on a site of its own (`http://127.0.0.1:PORT`,
//! while the API is on `http://localhost:PORT`), so the browser applies its cross-site rules to
//! every call the page makes.
//!
//! It is also the app's identity provider, as far as calsync can tell: `/login?user=ID` signs a
//! user in to the app (the app's own first-party session cookie), `POST /token` gives the page a
//! JWT for that user signed by the stack's [`Issuer`], and the issuer's discovery document and
//! JWKS are served under `/.well-known/` (the stack's `JwtIssuer` is this origin). The page keeps
//! the JWT in a script variable and calls calsync only with `Authorization: Bearer`: connect
//! (`POST connect-links`, then a top-level form POST of the link), status and disconnect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use google_emulator::html::escape;
use secrecy::ExposeSecret;
use serde_json::json;

use super::issuer::{DISCOVERY_PATH, Issuer, JWKS_PATH};

/// The app's session cookie (first-party on the app's site; calsync never sees it).
pub const SESSION_COOKIE: &str = "app_session";

struct App {
    issuer: Issuer,
    audience: String,
    /// calsync's API, e.g. `http://localhost:3000`.
    api: String,
    sessions: Mutex<HashMap<String, String>>,
}

/// Serves the app on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    issuer: Issuer,
    audience: String,
    api: &url::Url,
) -> Result<()> {
    let app = Arc::new(App {
        issuer,
        audience,
        api: api.origin().ascii_serialization(),
        sessions: Mutex::new(HashMap::new()),
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/token", post(token))
        .route(&format!("/{DISCOVERY_PATH}"), get(discovery))
        .route(&format!("/{JWKS_PATH}"), get(jwks))
        .with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}

fn signed_in(app: &App, headers: &HeaderMap) -> Option<String> {
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))?;
    app.sessions.lock().unwrap().get(session).cloned()
}

async fn discovery(State(app): State<Arc<App>>) -> Response {
    Json(app.issuer.discovery()).into_response()
}

async fn jwks(State(app): State<Arc<App>>) -> Response {
    Json(app.issuer.jwks()).into_response()
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    user: Option<String>,
}

async fn login(State(app): State<Arc<App>>, Query(q): Query<LoginQuery>) -> Response {
    let Some(user) = q
        .user
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
    else {
        return Html(
            r#"<!doctype html><form method="get" action="/login">
<label>User id <input name="user" value="user-alice"></label> <button id="signin">Sign in</button></form>"#,
        )
        .into_response();
    };
    let session = testkit::seed::random_token(32);
    app.sessions.lock().unwrap().insert(session.clone(), user);
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Lax; Path=/"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(user) = signed_in(&app, &headers) {
        app.sessions.lock().unwrap().retain(|_, u| *u != user);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Max-Age=0; Path=/"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

/// The signed-in user's JWT, for the page's script (same origin, so no CORS).
async fn token(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let Some(user) = signed_in(&app, &headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "not signed in"})),
        )
            .into_response();
    };
    match app.issuer.mint(&user, &app.audience) {
        Ok(token) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "token": token.expose_secret() })),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The page's script: the JWT lives in `token` only; every call to calsync carries it as a
/// bearer token; connecting ends in a top-level form POST of the link. Each call's outcome lands
/// in `#result`, whose `data-calls` counts the calls answered (tests wait on it).
const SCRIPT: &str = r#"
let token = null;
async function jwt() {
  if (!token) token = (await (await fetch("/token", {method: "POST"})).json()).token;
  return token;
}
async function calsync(method, path, body) {
  const headers = {Authorization: "Bearer " + await jwt()};
  if (body) headers["Content-Type"] = "application/json";
  return fetch(API + path, {method, headers, body: body && JSON.stringify(body)});
}
function show(text) {
  const out = document.getElementById("result");
  out.textContent = text;
  out.dataset.calls = Number(out.dataset.calls) + 1;
}
async function connect() {
  const answer = await calsync("POST", "/oauth/google/connect-links", {return_to: location.origin + "/"});
  if (answer.status !== 201) return show(answer.status + " " + await answer.text());
  const {connect_url, link} = await answer.json();
  const form = document.createElement("form");
  form.method = "POST";
  form.action = connect_url;
  form.append(Object.assign(document.createElement("input"), {type: "hidden", name: "link", value: link}));
  document.body.append(form);
  form.submit();
}
async function status() {
  const answer = await calsync("GET", "/oauth/google/status");
  show(answer.status + " " + await answer.text());
}
async function disconnect() {
  const answer = await calsync("DELETE", "/oauth/google/connection");
  show(answer.status + " " + await answer.text());
}
function run(action) { action().catch(error => show("error " + error)); }
"#;

async fn page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Html<String> {
    let outcome = query.get("calsync").cloned().unwrap_or_default();
    let body = match signed_in(&app, &headers) {
        None => r#"<p>Not signed in. <a id="login" href="/login">Sign in</a></p>"#.to_string(),
        Some(user) => format!(
            r#"<p>Signed in as <b id="user">{user}</b> (<a href="/logout">sign out</a>)</p>
<p><button id="connect" onclick="run(connect)">Connect Google Calendar</button>
<button id="status" onclick="run(status)">Connection status</button>
<button id="disconnect" onclick="run(disconnect)">Disconnect</button></p>
<pre><output id="result" data-calls="0"></output></pre>"#,
            user = escape(&user),
        ),
    };
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>calsync local app</title></head>
<body><h1>calsync local app</h1>{body}<p>calsync outcome: <output id="calsync">{outcome}</output></p>
<script>const API = {api};{SCRIPT}</script></body></html>"#,
        outcome = escape(&outcome),
        api = json!(app.api),
    ))
}
