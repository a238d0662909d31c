//! The local HTTP front: what API Gateway's HTTP API does for calsync in AWS, on one loopback port.
//!
//! It serves the routes `template.yaml` declares (read from the template, so there is no second
//! list to keep in step), turns each request into an API Gateway HTTP API v2 event, invokes the
//! function that owns the route under the Runtime Interface Emulator, and turns the function's
//! answer (status, headers, cookies, body) back into HTTP.
//!
//! Nothing here issues the app's JWTs, so routes behind the authorizer take the signed-in user from
//! a local session: `GET /__local/login?user=ID` (or the form at `/__local/login`) sets an opaque,
//! random session cookie whose user lives only in this process's memory. The claims are injected
//! into the event the way the JWT authorizer would; a deployed stack never sees this front, and its
//! JWT authorizer cannot be satisfied by a local session. `/` is a tiny stand-in for the app: a
//! "Connect Google Calendar" link, and the `calsync=` outcome when calsync sends the browser back.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Result, bail};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use google_emulator::html::escape;
use rand::RngCore;
use serde_json::{Value, json};
use testkit::api_gateway::HttpApiEvent;
use testkit::template::Template;

/// The session cookie of the local login; deliberately not `__Host-` so it is visibly local-only.
pub const SESSION_COOKIE: &str = "calsync_local_session";

/// One HTTP API route of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: String,
    /// The template's logical id of the function serving the route, e.g. `OAuthStartFunction`.
    pub function: String,
    pub authorized: bool,
}

/// Every `HttpApi` route the template declares, with the function serving it.
pub fn routes_from_template(template: &Template) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for function in template.functions()? {
        for route in function.routes {
            routes.push(Route {
                method: route.method.parse()?,
                path: route.path,
                function: function.logical_id.clone(),
                authorized: route.authorized,
            });
        }
    }
    if routes.is_empty() {
        bail!("template.yaml declares no HttpApi routes");
    }
    Ok(routes)
}

/// Where the front sends each function's invocations: the RIE invoke URL by logical id.
pub type Invokers = HashMap<String, String>;

struct Front {
    routes: Vec<Route>,
    invokers: Invokers,
    http: reqwest::Client,
    sessions: Mutex<HashMap<String, String>>,
}

/// Serves the front on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Vec<Route>,
    invokers: Invokers,
) -> Result<()> {
    for route in &routes {
        if !invokers.contains_key(&route.function) {
            bail!(
                "no running function for {} (route {} {})",
                route.function,
                route.method,
                route.path
            );
        }
    }
    let state = Arc::new(Front {
        routes,
        invokers,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        sessions: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/", get(app_page))
        .route("/__local/login", get(login))
        .route("/__local/logout", get(logout))
        .fallback(gateway)
        .with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn signed_in_user(front: &Front, headers: &HeaderMap) -> Option<String> {
    let session = cookie_value(headers, SESSION_COOKIE)?;
    front.sessions.lock().unwrap().get(session).cloned()
}

async fn app_page(State(front): State<Arc<Front>>, headers: HeaderMap, uri: Uri) -> Html<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let return_to: String =
        url::form_urlencoded::byte_serialize(format!("http://{host}/").as_bytes()).collect();
    let user = signed_in_user(&front, &headers);
    let outcome = uri
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("calsync="))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let body = match user {
        None => r#"<p>Not signed in. <a id="login" href="/__local/login">Sign in (local)</a></p>"#
            .to_string(),
        Some(user) => format!(
            r#"<p>Signed in as <b id="user">{user}</b> (<a href="/__local/logout">sign out</a>)</p>
<p><a id="connect" href="/oauth/google/start?return_to={return_to}">Connect Google Calendar</a></p>
<p><a id="status" href="/oauth/google/status">Connection status (JSON)</a></p>"#,
            user = escape(&user),
        ),
    };
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>calsync local app</title></head>
<body><h1>calsync local app</h1>{body}<p>calsync outcome: <output id="calsync">{outcome}</output></p></body></html>"#,
        outcome = escape(&outcome)
    ))
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    user: Option<String>,
}

async fn login(State(front): State<Arc<Front>>, Query(q): Query<LoginQuery>) -> Response {
    let Some(user) = q.user.filter(|u| !u.trim().is_empty()) else {
        return Html(
            r#"<!doctype html><form method="get" action="/__local/login">
<label>User id <input name="user" value="user-alice"></label> <button id="signin">Sign in</button></form>"#,
        )
        .into_response();
    };
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let session = URL_SAFE_NO_PAD.encode(raw);
    front
        .sessions
        .lock()
        .unwrap()
        .insert(session.clone(), user.trim().to_string());
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, "/")
        .header(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Lax; Path=/"),
        )
        .body(Body::empty())
        .unwrap()
}

async fn logout(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if let Some(session) = cookie_value(&headers, SESSION_COOKIE) {
        front.sessions.lock().unwrap().remove(session);
    }
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, "/")
        .header(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Max-Age=0; Path=/"),
        )
        .body(Body::empty())
        .unwrap()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

async fn gateway(
    State(front): State<Arc<Front>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(route) = front
        .routes
        .iter()
        .find(|r| r.method == method && r.path == uri.path())
    else {
        // API Gateway's own answer for a route it does not have.
        return json_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let user = signed_in_user(&front, &headers);
    if route.authorized && user.is_none() {
        // What the JWT authorizer answers without a valid token; the function is not invoked.
        return json_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let event = api_gateway_event(route, &uri, &headers, &body, user.as_deref());
    let url = &front.invokers[&route.function];
    let answer = match front.http.post(url).json(&event).send().await {
        Ok(response) => response.json::<Value>().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) => response_from_lambda(&answer),
        Err(e) => {
            tracing::error!(function = %route.function, error = %e, "invocation failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

/// The API Gateway HTTP API payload format 2.0 event for one request; the claims of the signed-in
/// user only on routes behind the authorizer.
pub fn api_gateway_event(
    route: &Route,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    user: Option<&str>,
) -> Value {
    let mut event = HttpApiEvent::new(route.method.clone(), uri.path())
        .query(uri.query().unwrap_or_default())
        .body(body);
    for (name, value) in headers {
        if let Ok(value) = value.to_str() {
            event = event.header(name.as_str(), value);
        }
    }
    if let (true, Some(user)) = (route.authorized, user) {
        event = event.user(user);
    }
    event.json()
}

/// Turns a function's v2 answer back into HTTP, as API Gateway does.
pub fn response_from_lambda(answer: &Value) -> Response {
    if answer.get("errorType").is_some() || answer.get("errorMessage").is_some() {
        tracing::error!(answer = %answer, "function error");
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    }
    let status = answer
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = Response::builder().status(status);
    for (name, value) in answer
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(value) = value.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
            response = response.header(name, value);
        }
    }
    for (name, values) in answer
        .get("multiValueHeaders")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for value in values.as_array().into_iter().flatten() {
            if let Some(value) = value.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
                response = response.header(name, value);
            }
        }
    }
    for cookie in answer
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(value) = cookie.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
            response = response.header(header::SET_COOKIE, value);
        }
    }
    let body = answer.get("body").and_then(Value::as_str).unwrap_or("");
    let body = if answer.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default()
    } else {
        body.as_bytes().to_vec()
    };
    response
        .body(Body::from(body))
        .unwrap_or_else(|_| json_error(StatusCode::BAD_GATEWAY, "Bad Gateway"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_route() -> Route {
        Route {
            method: Method::GET,
            path: "/oauth/google/start".into(),
            function: "OAuthStartFunction".into(),
            authorized: true,
        }
    }

    #[test]
    fn event_carries_cookies_query_and_claims() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; b=2".parse().unwrap());
        headers.insert(header::ACCEPT, "application/json".parse().unwrap());
        let uri: Uri = "/oauth/google/start?return_to=https%3A%2F%2Fx.test%2F&x=1&x=2"
            .parse()
            .unwrap();
        let event = api_gateway_event(&start_route(), &uri, &headers, b"", Some("user-1"));
        // The request's parts reach the event; HttpApiEvent's own tests cover how each is shaped.
        assert_eq!(event["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(event["headers"]["accept"], "application/json");
        assert_eq!(event["queryStringParameters"]["x"], "1,2");
        assert_eq!(
            event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
            "user-1"
        );
        // The event must be one lambda_http accepts.
        let parsed: aws_lambda_events::apigw::ApiGatewayV2httpRequest =
            serde_json::from_value(event).expect("valid v2 event");
        assert_eq!(parsed.raw_path.as_deref(), Some("/oauth/google/start"));
    }

    #[test]
    fn unauthorized_route_gets_no_claims() {
        let mut route = start_route();
        route.authorized = false;
        let event = api_gateway_event(
            &route,
            &"/oauth/google/callback".parse().unwrap(),
            &HeaderMap::new(),
            b"",
            Some("user-1"),
        );
        assert!(event["requestContext"].get("authorizer").is_none());
    }

    #[test]
    fn answer_maps_status_headers_and_each_cookie() {
        let answer = json!({
            "statusCode": 302,
            "headers": {"location": "https://google.test/auth"},
            "cookies": ["__Host-a=1; Secure; Path=/", "b=2"],
            "body": ""
        });
        let response = response_from_lambda(&answer);
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://google.test/auth"
        );
        let cookies: Vec<_> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .collect();
        assert_eq!(cookies.len(), 2);
    }

    #[test]
    fn function_error_is_a_500() {
        let response = response_from_lambda(&json!({"errorType": "Panic", "errorMessage": "boom"}));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
