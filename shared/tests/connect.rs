//! The connect flow end to end: the start and callback handlers called with API Gateway v2
//! events, against moto's server (DynamoDB, Secrets Manager) and the Google emulator over HTTP.
//!
//! Every test ends with the leak scan ([`common::assert_nothing_leaked`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{
    config::Config,
    google_oauth::{GoogleOAuth, OAuthError},
    grants::{Grant, GrantStatus, GrantStore, Marker, ReauthReason},
    http::{self, AfterConnect, CallbackDeps, StartDeps},
    secrets::SecretsCache,
    store::{DynamoFlowStore, DynamoGrantStore},
};
use lambda_http::{
    Body, Request, Response,
    http::{Method, StatusCode},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use testkit::{
    TestStack,
    api_gateway::{HttpApiEvent, cookie_pair},
    stack::{ALICE, ALICE_SUB, BINDING_COOKIE_ATTRIBUTES, BOB},
};
use url::Url;

mod common;
use common::{logs_text, metric_total, stack_with_config};

const EVENTS_OWNED: &str = "https://www.googleapis.com/auth/calendar.events.owned";

// ---- the harness ---------------------------------------------------------------------------

/// Records which users connected (the hook the sync's replay plugs into).
#[derive(Clone, Default)]
struct Replays(Arc<Mutex<Vec<String>>>);

impl AfterConnect for Replays {
    async fn connected(&self, user_id: &str) {
        self.0.lock().unwrap().push(user_id.to_string());
    }
}

struct Harness {
    stack: TestStack,
    config: Config,
    start: StartDeps<DynamoFlowStore>,
    callback: CallbackDeps<http::Production<Replays>>,
    replays: Replays,
    dynamodb: aws_sdk_dynamodb::Client,
}

/// What the start route handed to the browser.
struct Started {
    authorization_url: Url,
    state: String,
    nonce: String,
}

impl Started {
    /// A start answer (`status`, a Location to Google, the binding cookie) read as the browser
    /// would.
    fn from_answer(response: &Response<Body>, status: StatusCode) -> Self {
        assert_eq!(response.status(), status, "{}", body_text(response));
        let location = location(response);
        let cookie = header(response, "set-cookie").unwrap();
        let (name, nonce) = cookie_pair(cookie).unwrap();
        assert_eq!(name, "__Host-calsync_oauth");
        Started {
            state: query_param(&location, "state").unwrap(),
            nonce: nonce.to_string(),
            authorization_url: location,
        }
    }
}

impl Harness {
    async fn start() -> Self {
        let (stack, config, clients) = stack_with_config().await;
        let replays = Replays::default();
        Self {
            start: StartDeps::new(config.clone(), &clients),
            callback: CallbackDeps::new(config.clone(), &clients, replays.clone()),
            replays,
            dynamodb: clients.dynamodb.clone(),
            config,
            stack,
        }
    }

    async fn call_start(&self, request: Request) -> Response<Body> {
        common::answered(http::start_router(&self.start, request).await)
    }

    async fn call_callback(&self, request: Request) -> Response<Body> {
        common::answered(http::callback_router(&self.callback, request).await)
    }

    /// `GET /oauth/google/start` for `user`, returning the consent URL, state and cookie nonce.
    async fn begin(&self, user: &str) -> Started {
        let response = self
            .call_start(
                HttpApiEvent::get("/oauth/google/start")
                    .user(user)
                    .request(),
            )
            .await;
        Started::from_answer(&response, StatusCode::FOUND)
    }

    /// Start for `user`, then `account` allows at the consent page: the flow and the callback
    /// query Google sends back.
    async fn consented(&self, user: &str, account: &str) -> (Started, String) {
        self.decided(user, account, "allow", &[]).await
    }

    /// Start for `user`, then `account`'s `decision` at the consent page with `remove` unticked.
    async fn decided(
        &self,
        user: &str,
        account: &str,
        decision: &str,
        remove: &[&str],
    ) -> (Started, String) {
        let started = self.begin(user).await;
        let query = self
            .consent(&started.authorization_url, account, decision, remove)
            .await;
        (started, query)
    }

    /// Start for `user`, then `account` allows a consent URL without `prompt=consent`: on a
    /// repeated consent Google then sends no new refresh token.
    async fn consented_again(&self, user: &str, account: &str) -> (Started, String) {
        let started = self.begin(user).await;
        let query = self
            .consent(
                &without_prompt(&started.authorization_url),
                account,
                "allow",
                &[],
            )
            .await;
        (started, query)
    }

    /// The callback with Google's `query`, in the browser that started the flow.
    async fn finish(&self, started: &Started, query: &str) -> Response<Body> {
        self.callback_with(query, Some(&started.nonce)).await
    }

    async fn control(&self, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
        self.stack.control_post(path, &body).await.unwrap()
    }

    async fn control_get(&self, path: &str) -> Value {
        self.stack.control_get(path).await.unwrap()
    }

    /// The consent decision at the emulator; returns the callback query Google would send.
    async fn consent(&self, url: &Url, account: &str, decision: &str, remove: &[&str]) -> String {
        let redirect = self
            .stack
            .consent(url.as_str(), account, decision, remove)
            .await
            .unwrap();
        assert_eq!(
            redirect.as_str().split('?').next().unwrap(),
            self.config.oauth.redirect_uri.as_str()
        );
        redirect.query().unwrap_or("").to_string()
    }

    async fn callback_with(&self, query: &str, cookie: Option<&str>) -> Response<Body> {
        let mut event = HttpApiEvent::get("/oauth/google/callback").query(query);
        if let Some(nonce) = cookie {
            event = event
                .cookie(&format!("__Host-calsync_oauth={nonce}"))
                .cookie("theme=dark");
        }
        self.call_callback(event.request()).await
    }

    /// Start, consent as `account`, callback with the right cookie.
    async fn connect(&self, user: &str, account: &str) -> Response<Body> {
        let (started, query) = self.consented(user, account).await;
        self.finish(&started, &query).await
    }

    /// [`Harness::connect`], which must send the browser back connected.
    async fn connected(&self, user: &str, account: &str) {
        assert_eq!(outcome(&self.connect(user, account).await).0, "connected");
    }

    async fn stats(&self) -> Value {
        self.control_get("stats").await
    }

    /// Authorization codes the token endpoint has been asked to exchange.
    async fn code_exchanges(&self) -> u64 {
        self.stats().await["token"]["authorization_code"]
            .as_u64()
            .unwrap()
    }

    async fn grant_of(&self, user: &str) -> Option<Grant> {
        self.callback.grants.get(user).await.unwrap()
    }

    async fn grant(&self, user: &str) -> Grant {
        self.grant_of(user).await.expect("a grant")
    }

    /// `user`'s grant as the table holds it.
    async fn grant_item(&self, user: &str) -> HashMap<String, AttributeValue> {
        let item = self.stack.item("GrantsTable", "user_id", user).await;
        item.unwrap().expect("a grant item")
    }

    /// Moves the flow record (or link) under `key` one second past its expiry; it stays in the
    /// table, as DynamoDB's TTL deletes late.
    async fn expire_flow_record(&self, key: &str) {
        let past = chrono::Utc::now().timestamp() - 1;
        self.dynamodb
            .update_item()
            .table_name(self.table("OAuthFlowsTable"))
            .key("state", AttributeValue::S(key.to_string()))
            .update_expression("SET expires_at = :past")
            .expression_attribute_values(":past", AttributeValue::N(past.to_string()))
            .condition_expression("attribute_exists(#s)")
            .expression_attribute_names("#s", "state")
            .send()
            .await
            .unwrap();
    }

    /// The token keyring in Secrets Manager.
    async fn keyring(&self) -> Value {
        let secret = self
            .secrets()
            .get_secret_value()
            .secret_id(&self.config.secrets.token_keys)
            .send()
            .await
            .unwrap();
        serde_json::from_str(secret.secret_string().unwrap()).unwrap()
    }

    async fn put_keyring(&self, keyring: &Value) {
        self.secrets()
            .put_secret_value()
            .secret_id(&self.config.secrets.token_keys)
            .secret_string(keyring.to_string())
            .send()
            .await
            .unwrap();
    }

    fn secrets(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.stack.sdk)
    }

    async fn status_of(&self, user: &str) -> Value {
        let response = self
            .call_callback(
                HttpApiEvent::get("/oauth/google/status")
                    .user(user)
                    .request(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        serde_json::from_str(&body_text(&response)).unwrap()
    }

    fn table(&self, logical_id: &str) -> String {
        self.stack.tables[logical_id].clone()
    }

    /// The leak scan ([`common::assert_nothing_leaked`], no lifecycle tap here).
    async fn assert_no_leaks(&self) {
        let issued = common::issued_secrets(&self.stack).await;
        assert!(!issued.is_empty(), "the emulator lists what it issued");
        common::assert_nothing_leaked(&self.stack, &[]).await;
    }
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn body_text(response: &Response<Body>) -> String {
    match response.body() {
        Body::Text(text) => text.clone(),
        Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    }
}

fn body_json(response: &Response<Body>) -> Value {
    serde_json::from_str(&body_text(response)).unwrap()
}

fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn location(response: &Response<Body>) -> Url {
    Url::parse(header(response, "location").expect("a Location header")).unwrap()
}

/// The outcome parameters the callback appended to return_to.
fn outcome(response: &Response<Body>) -> (String, Option<String>) {
    assert_eq!(
        response.status(),
        StatusCode::FOUND,
        "{}",
        body_text(response)
    );
    let url = location(response);
    assert!(
        url.as_str()
            .starts_with("https://app.example.test/settings?"),
        "{url}"
    );
    (
        query_param(&url, "calsync").unwrap(),
        query_param(&url, "reason"),
    )
}

/// A refusal with `status` whose body names `code`.
fn assert_refused(response: &Response<Body>, status: StatusCode, code: &str) {
    let body = body_text(response);
    assert_eq!(response.status(), status, "{body}");
    assert!(body.contains(code), "{code} not in {body}");
}

fn assert_cookie_cleared(response: &Response<Body>) {
    let cookie = header(response, "set-cookie").expect("the cookie is cleared");
    assert!(cookie.starts_with("__Host-calsync_oauth=;"), "{cookie}");
    assert!(cookie.contains("Max-Age=0") && cookie.contains("Secure") && cookie.contains("Path=/"));
}

fn without_prompt(url: &Url) -> Url {
    let mut stripped = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "prompt")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    stripped.query_pairs_mut().clear().extend_pairs(pairs);
    stripped
}

// ---- the tests -----------------------------------------------------------------------------

#[tokio::test]
async fn full_connect_stores_an_active_grant_and_replays() {
    let h = Harness::start().await;
    let started = h.begin("user-1").await;

    // The consent URL has exactly what SPEC lists.
    let url = &started.authorization_url;
    assert!(url.as_str().starts_with(h.config.google.auth_url.as_str()));
    let expect = [
        ("response_type", "code"),
        ("client_id", h.stack.client_id.as_str()),
        (
            "redirect_uri",
            "https://app.example.test/oauth/google/callback",
        ),
        ("access_type", "offline"),
        ("prompt", "consent"),
        ("include_granted_scopes", "true"),
        ("code_challenge_method", "S256"),
    ];
    for (name, value) in expect {
        assert_eq!(query_param(url, name).as_deref(), Some(value), "{name}");
    }
    assert_eq!(
        query_param(url, "scope").as_deref(),
        Some("openid email https://www.googleapis.com/auth/calendar.events.owned")
    );
    assert!(query_param(url, "approval_prompt").is_none());
    assert_eq!(query_param(url, "code_challenge").unwrap().len(), 43);
    assert_eq!(started.state.len(), 43);
    assert_eq!(started.nonce.len(), 43);

    let query = h.consent(url, ALICE, "allow", &[]).await;
    let response = h.finish(&started, &query).await;
    assert_eq!(outcome(&response), ("connected".into(), None));
    assert_cookie_cleared(&response);

    let grant = h.grant("user-1").await;
    assert_eq!(grant.status, GrantStatus::Active);
    assert_eq!(grant.google_sub, ALICE_SUB);
    assert_eq!(grant.google_email.as_deref(), Some(ALICE));
    assert!(grant.scopes.iter().any(|s| s == EVENTS_OWNED));
    assert!(grant.refresh_token.is_some() && grant.access_token.is_some());
    assert!(grant.access_token_expires_at.unwrap() > chrono::Utc::now());
    assert_eq!(*h.replays.0.lock().unwrap(), vec!["user-1".to_string()]);

    // The stored refresh token is the one Google issued: it refreshes.
    let refreshed = h
        .callback
        .google
        .refresh(grant.refresh_token.as_ref().unwrap())
        .await
        .unwrap();
    assert!(!refreshed.access_token.expose_secret().is_empty());

    let status = h.status_of("user-1").await;
    assert_eq!(status["connected"], true);
    assert_eq!(status["status"], "active");
    assert_eq!(status["google_email"], ALICE);
    assert_eq!(status["parked_changes"], 0);
    assert!(status["connected_at"].is_string());
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn start_answers_json_when_asked_and_checks_identity_and_return_to() {
    let h = Harness::start().await;
    let response = h
        .call_start(
            HttpApiEvent::get("/oauth/google/start")
                .query("return_to=https%3A%2F%2Fapp.example.test%2Fcalendar%3Fx%3D1")
                .user("user-1")
                .header("accept", "application/json")
                .request(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_json(&response);
    let url = Url::parse(body["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(
        query_param(&url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    let cookie = header(&response, "set-cookie").unwrap();
    assert!(cookie.starts_with("__Host-calsync_oauth="));
    for attribute in BINDING_COOKIE_ATTRIBUTES {
        assert!(cookie.split("; ").any(|a| a == attribute), "{attribute}");
    }
    // The flow remembers return_to: the outcome goes there.
    let (_, nonce) = cookie_pair(cookie).unwrap();
    let query = h.consent(&url, ALICE, "deny", &[]).await;
    let denied = h.callback_with(&query, Some(nonce)).await;
    assert_eq!(
        location(&denied).as_str(),
        "https://app.example.test/calendar?x=1&calsync=denied"
    );

    for bad in [
        "return_to=%2F%2Fevil.example",
        "return_to=https%3A%2F%2Fapp.example.test%40evil.example%2F",
        "return_to=https%3A%2F%2Fapp.example.test.evil.example%2F",
        "return_to=javascript%3Aalert(1)",
        "return_to=https%3A%2F%2Fapp.example.test&return_to=https%3A%2F%2Fevil.example",
    ] {
        let response = h
            .call_start(
                HttpApiEvent::get("/oauth/google/start")
                    .query(bad)
                    .user("user-1")
                    .request(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body_json(&response)["error"], "invalid_return_to");
        assert!(header(&response, "set-cookie").is_none());
    }

    let anonymous = h
        .call_start(HttpApiEvent::get("/oauth/google/start").request())
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(&anonymous)["error"], "unauthorized");
    let status = h
        .call_callback(HttpApiEvent::get("/oauth/google/status").request())
        .await;
    assert_eq!(status.status(), StatusCode::UNAUTHORIZED);
    let unknown = h
        .call_callback(
            HttpApiEvent::get("/oauth/google/nothing")
                .user("u")
                .request(),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(body_json(&unknown)["error"], "not_found");
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_replayed_callback_is_invalid_state_and_exchanges_once() {
    let h = Harness::start().await;
    let (started, query) = h.consented("user-1", ALICE).await;
    let first = h.finish(&started, &query).await;
    assert_eq!(outcome(&first).0, "connected");
    let again = h.finish(&started, &query).await;
    assert_refused(&again, StatusCode::BAD_REQUEST, "invalid_state");
    assert!(
        header(&again, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(h.code_exchanges().await, 1);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_wrong_or_missing_cookie_is_refused_without_calling_google_or_burning_the_flow() {
    let h = Harness::start().await;
    let (started, query) = h.consented("user-1", ALICE).await;
    let missing = h
        .call_callback(
            HttpApiEvent::get("/oauth/google/callback")
                .query(&query)
                .header("accept", "application/json")
                .request(),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(&missing)["error"], "state_mismatch");
    let wrong = h
        .callback_with(&query, Some(&calsync::flows::random_token()))
        .await;
    assert_refused(&wrong, StatusCode::BAD_REQUEST, "state_mismatch");
    assert!(header(&wrong, "set-cookie").is_none());
    assert_eq!(h.code_exchanges().await, 0);
    assert!(h.grant_of("user-1").await.is_none());

    // The right browser can still finish.
    let right = h.finish(&started, &query).await;
    assert_eq!(outcome(&right).0, "connected");
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_forged_state_is_invalid_state() {
    let h = Harness::start().await;
    let (started, query) = h.consented("user-1", ALICE).await;
    let forged_query = query.replace(
        &format!("state={}", started.state),
        &format!("state={}", calsync::flows::random_token()),
    );
    assert_ne!(forged_query, query);
    let forged = h.callback_with(&forged_query, Some(&started.nonce)).await;
    assert_refused(&forged, StatusCode::BAD_REQUEST, "invalid_state");
    let no_state = h.callback_with("code=abc", Some(&started.nonce)).await;
    assert_eq!(no_state.status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.code_exchanges().await, 0);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn an_expired_flow_record_still_in_the_table_is_invalid_state() {
    let h = Harness::start().await;
    let (started, query) = h.consented("user-1", ALICE).await;
    h.expire_flow_record(&started.state).await;
    let response = h.finish(&started, &query).await;
    assert_refused(&response, StatusCode::BAD_REQUEST, "invalid_state");
    assert_eq!(h.code_exchanges().await, 0);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn access_denied_redirects_with_denied_and_changes_nothing() {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    let before = h.grant("user-1").await;

    let (started, query) = h.decided("user-1", ALICE, "deny", &[]).await;
    let response = h.finish(&started, &query).await;
    assert_eq!(outcome(&response), ("denied".into(), None));
    assert_cookie_cleared(&response);
    let after = h.grant("user-1").await;
    assert_eq!(after.version, before.version);
    assert_eq!(h.code_exchanges().await, 1);
    // Each callback counts once in the Connects metric, by its outcome.
    for outcome in ["connected", "denied"] {
        assert!(metric_total("oauth-callback", "Connects", Some(outcome)) >= 1.0);
    }
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_removed_calendar_scope_is_refused_and_the_token_revoked() {
    let h = Harness::start().await;
    let (started, query) = h.decided("user-1", ALICE, "allow", &[EVENTS_OWNED]).await;
    let response = h.finish(&started, &query).await;
    assert_eq!(
        outcome(&response),
        ("error".into(), Some("scope_denied".into()))
    );
    assert!(h.grant_of("user-1").await.is_none());
    let stats = h.stats().await;
    assert_eq!(stats["revoke"], 1);
    assert_eq!(stats["token"]["authorization_code"], 1);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn reconnect_without_a_refresh_token_keeps_the_stored_one_for_the_same_account() {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    let first = h.grant("user-1").await;

    // Without prompt=consent Google sends no new refresh token on a repeated consent.
    let (started, query) = h.consented_again("user-1", ALICE).await;
    let response = h.finish(&started, &query).await;
    assert_eq!(outcome(&response).0, "connected");
    let second = h.grant("user-1").await;
    assert_eq!(second.version, first.version + 1);
    assert_eq!(
        second.refresh_token.as_ref().unwrap().expose_secret(),
        first.refresh_token.as_ref().unwrap().expose_secret()
    );
    assert_ne!(
        second.access_token.as_ref().unwrap().expose_secret(),
        first.access_token.as_ref().unwrap().expose_secret()
    );
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn reconnect_without_a_refresh_token_for_another_account_is_refused() {
    let h = Harness::start().await;
    // Bob has consented before (for another app user), so Google sends him no new refresh token.
    h.connected("user-2", BOB).await;
    h.connected("user-1", ALICE).await;
    let before = h.grant("user-1").await;

    let (started, query) = h.consented_again("user-1", BOB).await;
    let response = h.finish(&started, &query).await;
    assert_eq!(
        outcome(&response),
        ("error".into(), Some("no_refresh_token".into()))
    );
    let after = h.grant("user-1").await;
    assert_eq!(after.google_sub, ALICE_SUB);
    assert_eq!(after.version, before.version);

    // A first connect that gets no refresh token stores nothing either.
    let (started, query) = h.consented_again("user-3", BOB).await;
    let response = h.finish(&started, &query).await;
    assert_eq!(outcome(&response).1.as_deref(), Some("no_refresh_token"));
    assert!(h.grant_of("user-3").await.is_none());
    // user-2 holds Bob's account: the refused callbacks revoked nothing, and user-2 still syncs.
    assert_eq!(h.stats().await["revoke"], 0);
    assert!(h.refreshes("user-2").await);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_token_endpoint_failure_is_token_exchange_failed() {
    let h = Harness::start().await;

    // 500 from the token endpoint.
    let (started, query) = h.consented("user-1", ALICE).await;
    let (status, _) = h
        .control(
            "faults",
            json!({"target": "token", "status": 500, "count": 1}),
        )
        .await;
    assert!(status.is_success());
    let response = h.finish(&started, &query).await;
    assert_eq!(
        outcome(&response),
        ("error".into(), Some("token_exchange_failed".into()))
    );
    assert_cookie_cleared(&response);

    // invalid_grant: the code expired at Google (its clock moved past the code's 10 minutes).
    let (started, query) = h.consented("user-1", ALICE).await;
    let (status, _) = h.control("clock", json!({"advance_seconds": 700})).await;
    assert!(status.is_success());
    let response = h.finish(&started, &query).await;
    assert_eq!(
        outcome(&response),
        ("error".into(), Some("token_exchange_failed".into()))
    );
    assert!(h.grant_of("user-1").await.is_none());
    assert_eq!(h.code_exchanges().await, 2);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn status_summarises_the_sync_and_delete_revokes() {
    let h = Harness::start().await;
    let empty = h.status_of("user-1").await;
    assert_eq!(
        empty,
        json!({"connected": false, "status": "not_connected", "google_email": null,
               "scopes": [], "connected_at": null, "calendar": null, "parked_changes": 0,
               "last_synced_at": null, "last_error": null})
    );
    h.connected("user-1", ALICE).await;
    let grant = h.grant("user-1").await;

    for (event_id, user, status, updated_at) in [
        ("e1", "user-1", "needs_reauth", "2026-11-20T10:00:00Z"),
        ("e2", "user-1", "not_connected", "2026-11-20T09:00:00Z"),
        ("e3", "user-1", "synced", "2026-11-21T08:00:00Z"),
        ("e5", "user-1", "deleted", "2026-11-19T08:00:00Z"),
        ("e6", "user-1", "invalid", "2026-11-20T11:30:00Z"),
        ("e4", "user-2", "needs_reauth", "2026-11-22T08:00:00Z"),
        ("e7", "user-2", "synced", "2026-11-23T08:00:00Z"),
    ] {
        h.dynamodb
            .put_item()
            .table_name(h.table("SyncStateTable"))
            .item("event_id", AttributeValue::S(event_id.into()))
            .item("user_id", AttributeValue::S(user.into()))
            .item("calendar_id", AttributeValue::S("primary".into()))
            .item("status", AttributeValue::S(status.into()))
            .item("updated_at", AttributeValue::S(updated_at.into()))
            .send()
            .await
            .unwrap();
    }
    let status = h.status_of("user-1").await;
    assert_eq!(status["connected"], true);
    assert_eq!(status["parked_changes"], 2);
    assert_eq!(status["last_synced_at"], "2026-11-21T08:00:00Z");
    assert_eq!(
        status["last_error"],
        json!({"code": "invalid", "event_id": "e6", "at": "2026-11-20T11:30:00Z"})
    );
    assert_eq!(
        status["scopes"].as_array().unwrap().len(),
        grant.scopes.len()
    );

    // needs_reauth shows as such.
    h.callback
        .grants
        .delete_tokens("user-1", GrantStatus::NeedsReauth)
        .await
        .unwrap();
    let status = h.status_of("user-1").await;
    assert_eq!(status["connected"], false);
    assert_eq!(status["status"], "needs_reauth");
    assert_eq!(status["google_email"], ALICE);

    // Reconnect, then disconnect: revoked at Google, gone here.
    h.connected("user-1", ALICE).await;
    let grant = h.grant("user-1").await;
    let revokes_before = h.revokes().await;
    assert_eq!(h.disconnect("user-1").await, StatusCode::NO_CONTENT);
    assert_eq!(h.revokes().await, revokes_before + 1);
    assert!(h.grant_of("user-1").await.is_none());
    assert_eq!(h.status_of("user-1").await["status"], "not_connected");
    assert!(
        !h.refreshes_with(grant.refresh_token.as_ref().unwrap())
            .await
    );
    // Deleting again is harmless.
    assert_eq!(h.disconnect("user-1").await, StatusCode::NO_CONTENT);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn grant_writes_are_versioned_and_tokens_sealed_at_rest() {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    let grant = h.grant("user-1").await;
    let saved = h.callback.grants.save(&grant).await.unwrap();
    assert_eq!(saved.version, grant.version + 1);
    assert!(matches!(
        h.callback.grants.save(&grant).await,
        Err(calsync::grants::GrantError::Conflict { .. })
    ));

    let sealed_item = h.grant_item("user-1").await;
    let sealed = sealed_item["refresh_token_sealed"].as_s().unwrap();
    assert!(sealed.starts_with("v1."));
    assert!(!sealed.contains(grant.refresh_token.as_ref().unwrap().expose_secret()));

    // Deleting with a stale version is a conflict; with the current one it works.
    assert!(matches!(
        h.callback.grants.delete(&grant).await,
        Err(calsync::grants::GrantError::Conflict { .. })
    ));
    let retired = h
        .callback
        .grants
        .retire(&saved, GrantStatus::NeedsReauth, ReauthReason::InvalidGrant)
        .await
        .unwrap();
    assert!(matches!(
        h.callback
            .grants
            .retire(&saved, GrantStatus::NeedsReauth, ReauthReason::InvalidGrant)
            .await,
        Err(calsync::grants::GrantError::Conflict { .. })
    ));
    let reread = h.grant("user-1").await;
    assert_eq!(reread.status, GrantStatus::NeedsReauth);
    assert!(reread.refresh_token.is_none() && reread.access_token.is_none());
    assert_eq!(reread.version, retired.version);
    assert_eq!(reread.reauth_reason, Some(ReauthReason::InvalidGrant));
    // The lifecycle markers: recorded once, only at the version read, the version unchanged.
    let markers = [Marker::NeedsReauth, Marker::Parked];
    assert!(
        !h.callback
            .grants
            .mark_reported(&saved, &markers)
            .await
            .unwrap()
    );
    assert!(
        h.callback
            .grants
            .mark_reported(&retired, &markers)
            .await
            .unwrap()
    );
    assert!(
        !h.callback
            .grants
            .mark_reported(&retired, &[Marker::Parked])
            .await
            .unwrap()
    );
    let marked = h.grant("user-1").await;
    assert_eq!(marked.version, retired.version);
    assert!(marked.needs_reauth_reported_at.is_some() && marked.parked_reported_at.is_some());
    let item = h.grant_item("user-1").await;
    assert!(
        !item.contains_key("refresh_token_sealed") && !item.contains_key("access_token_sealed")
    );

    // The sealed refresh token copied into another user's item does not open: that grant holds
    // no token and reads as needs_reauth.
    let mut stolen = sealed_item.clone();
    stolen.insert("user_id".into(), AttributeValue::S("user-evil".into()));
    h.dynamodb
        .put_item()
        .table_name(h.table("GrantsTable"))
        .set_item(Some(stolen))
        .send()
        .await
        .unwrap();
    let stolen = h.grant("user-evil").await;
    assert!(stolen.refresh_token.is_none() && stolen.access_token.is_none());
    assert_eq!(stolen.status, GrantStatus::NeedsReauth);

    // A Secrets Manager backed cache reads both secrets in their stored shapes.
    let cache = SecretsCache::new(h.secrets(), h.config.secrets.clone());
    assert_eq!(
        cache.google_client().await.unwrap().client_id,
        h.stack.client_id
    );
    assert!(!cache.keyring().await.unwrap().current_key_id().is_empty());
    let _ = GoogleOAuth::new(&h.config, Arc::new(cache));
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn two_racing_callbacks_connect_once() {
    let h = Harness::start().await;
    let (started, query) = h.consented("user-1", ALICE).await;
    let (a, b) = tokio::join!(h.finish(&started, &query), h.finish(&started, &query));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [302, 400]);
    let winner = if a.status() == StatusCode::FOUND {
        &a
    } else {
        &b
    };
    assert_eq!(outcome(winner).0, "connected");
    assert_eq!(h.code_exchanges().await, 1);
    assert_eq!(h.grant("user-1").await.version, 1);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_rotated_keyring_reads_old_grants_reaches_warm_instances_and_the_old_key_can_go_after_a_reseal()
 {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    let sealed_key_id = |item: &HashMap<String, AttributeValue>| {
        item["refresh_token_sealed"]
            .as_s()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_string()
    };
    let read_item = || h.grant_item("user-1");
    let old_key_id = sealed_key_id(&read_item().await);
    let secrets = h.secrets();
    // A warm instance: its cache (the default 15-minute lifetime) holds the keyring from before
    // the rotation.
    let warm_cache = Arc::new(SecretsCache::new(secrets.clone(), h.config.secrets.clone()));
    let warm = DynamoGrantStore::new(
        h.dynamodb.clone(),
        h.table("GrantsTable"),
        warm_cache.clone(),
    );
    assert!(warm.get("user-1").await.unwrap().is_some());
    assert_eq!(
        warm_cache.keyring().await.unwrap().current_key_id(),
        old_key_id
    );

    // Rotate: add a key, make it current, keep the old one.
    let mut keyring = h.keyring().await;
    use base64::Engine;
    let new_key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    keyring["keys"]["rotated-2"] = json!(new_key);
    keyring["current"] = json!("rotated-2");
    h.put_keyring(&keyring).await;

    // A warm function's cache keeps the old keyring until its lifetime ends; a fresh one (or an
    // expired cache) reads the rotated keyring.
    let fresh = Arc::new(SecretsCache::with_ttl(
        secrets.clone(),
        h.config.secrets.clone(),
        std::time::Duration::ZERO,
    ));
    let store = DynamoGrantStore::new(h.dynamodb.clone(), h.table("GrantsTable"), fresh.clone());
    let grant = store.get("user-1").await.unwrap().unwrap();
    assert_eq!(sealed_key_id(&read_item().await), old_key_id);
    // The sweep re-seals the idle grant under the current key, once.
    assert!(store.reseal("user-1").await.unwrap());
    assert!(!store.reseal("user-1").await.unwrap());
    assert_eq!(sealed_key_id(&read_item().await), "rotated-2");
    let reread = store.get("user-1").await.unwrap().unwrap();
    let reread_refresh = reread.refresh_token.unwrap().expose_secret().to_string();
    assert_eq!(reread_refresh, grant.refresh_token.unwrap().expose_secret());
    assert_eq!(fresh.keyring().await.unwrap().current_key_id(), "rotated-2");

    // The warm instance meets a grant sealed under a key its cached keyring lacks: it fetches the
    // keyring once more instead of failing until its cache expires.
    let seen_by_warm = warm.get("user-1").await.unwrap().unwrap();
    assert_eq!(
        seen_by_warm.refresh_token.unwrap().expose_secret(),
        reread_refresh
    );
    assert_eq!(
        warm_cache.keyring().await.unwrap().current_key_id(),
        "rotated-2"
    );

    // Every grant is on the new key: the old one can be removed, and the grant still opens.
    keyring["keys"].as_object_mut().unwrap().remove(&old_key_id);
    h.put_keyring(&keyring).await;
    let after = store.get("user-1").await.unwrap().unwrap();
    assert_eq!(after.status, GrantStatus::Active);
    assert_eq!(after.refresh_token.unwrap().expose_secret(), reread_refresh);
    h.assert_no_leaks().await;
}

// ---- the cross-site handshake: connect links -------------------------------------------------

const APP_ORIGIN: &str = "https://app.example.test";

impl Harness {
    /// `POST /oauth/google/connect-links` for `user` with a JSON body; the answer.
    async fn mint(&self, user: Option<&str>, body: &str) -> Response<Body> {
        let mut event = HttpApiEvent::new(Method::POST, "/oauth/google/connect-links")
            .header("content-type", "application/json")
            .header("origin", APP_ORIGIN)
            .body(body.as_bytes());
        if let Some(user) = user {
            event = event.user(user);
        }
        self.call_start(event.request()).await
    }

    /// A fresh link for `user`: the answer's `link`, after checking the answer's shape.
    async fn link_for(&self, user: &str) -> String {
        let response = self.mint(Some(user), "").await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            body_text(&response)
        );
        let body = body_json(&response);
        assert_eq!(
            body["connect_url"],
            "https://app.example.test/oauth/google/connect"
        );
        let expires_at = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        let lifetime = expires_at - chrono::Utc::now();
        assert!(
            lifetime <= calsync::flows::LINK_LIFETIME && lifetime > chrono::Duration::seconds(60),
            "{lifetime}"
        );
        body["link"].as_str().unwrap().to_string()
    }

    /// The browser's form POST to `/oauth/google/connect`, with the given `Origin` (if any).
    async fn open_link(&self, link: &str, origin: Option<&str>) -> Response<Body> {
        let mut event = HttpApiEvent::new(Method::POST, "/oauth/google/connect")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "text/html,application/xhtml+xml")
            .body(format!("link={link}").as_bytes());
        if let Some(origin) = origin {
            event = event.header("origin", origin);
        }
        self.call_start(event.request()).await
    }

    /// Opens `link` from the app's page: the consent URL and the cookie nonce it handed out.
    async fn opened(&self, link: &str) -> Started {
        let response = self.open_link(link, Some(APP_ORIGIN)).await;
        let started = Started::from_answer(&response, StatusCode::SEE_OTHER);
        let cookie = header(&response, "set-cookie").unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
        started
    }

    /// How many flow records (not links) the flows table holds.
    async fn flow_records(&self) -> (usize, usize) {
        let items = self
            .dynamodb
            .scan()
            .table_name(self.table("OAuthFlowsTable"))
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        let links = items
            .iter()
            .filter(|item| {
                item.get("kind")
                    .and_then(|k| k.as_s().ok())
                    .map(String::as_str)
                    == Some("link")
            })
            .count();
        (items.len() - links, links)
    }

    /// Neither the table nor the logs ever hold a link token (only the mint answer does).
    async fn assert_link_not_stored(&self, link: &str) {
        let tables = self.stack.dump_tables().await.unwrap();
        assert!(!tables.contains(link), "a link token is stored");
        assert!(!logs_text().contains(link), "a link token is logged");
    }
}

/// A refusal of the link routes: `status`, the error `code`, and no cookie handed out (`case`
/// names the case in a failure).
fn assert_link_refused(response: &Response<Body>, status: StatusCode, code: &str, case: &str) {
    assert_eq!(response.status(), status, "{case}");
    assert_eq!(error_code(response), code, "{case}");
    assert!(header(response, "set-cookie").is_none(), "{case}");
}

fn error_code(response: &Response<Body>) -> String {
    let text = body_text(response);
    [
        "origin_not_allowed",
        "invalid_link",
        "invalid_return_to",
        "unauthorized",
        "invalid_request",
    ]
    .into_iter()
    .find(|code| text.contains(code))
    .unwrap_or("none")
    .to_string()
}

#[tokio::test]
async fn a_link_opened_from_the_app_page_connects_its_minter() {
    let h = Harness::start().await;
    let response = h
        .mint(
            Some("user-1"),
            r#"{"return_to": "https://app.example.test/settings?tab=cal"}"#,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let link = body_json(&response)["link"].as_str().unwrap().to_string();
    assert_eq!(link.len(), 43);
    assert_eq!(h.flow_records().await, (0, 1));
    h.assert_link_not_stored(&link).await;

    let started = h.opened(&link).await;
    // The link is used up and one flow took its place.
    assert_eq!(h.flow_records().await, (1, 0));
    let url = &started.authorization_url;
    assert!(url.as_str().starts_with(h.config.google.auth_url.as_str()));
    assert_eq!(
        query_param(url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(!url.as_str().contains(&link));

    let query = h.consent(url, ALICE, "allow", &[]).await;
    let back = h.finish(&started, &query).await;
    assert_eq!(location(&back).path(), "/settings");
    assert_eq!(query_param(&location(&back), "tab").as_deref(), Some("cal"));
    assert_eq!(
        query_param(&location(&back), "calsync").as_deref(),
        Some("connected")
    );
    let grant = h.grant("user-1").await;
    assert_eq!(grant.google_sub, ALICE_SUB);
    h.assert_link_not_stored(&link).await;
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn minting_needs_an_identity_and_checks_return_to() {
    let h = Harness::start().await;
    let anonymous = h.mint(None, "").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    for body in [
        r#"{"return_to": "https://evil.example/"}"#,
        r#"{"return_to": "//evil.example"}"#,
        r#"{"return_to": 42}"#,
    ] {
        let response = h.mint(Some("user-1"), body).await;
        assert_link_refused(
            &response,
            StatusCode::BAD_REQUEST,
            "invalid_return_to",
            body,
        );
    }
    let garbage = h.mint(Some("user-1"), "return_to=x").await;
    assert_link_refused(&garbage, StatusCode::BAD_REQUEST, "invalid_request", "");
    // Nothing refused left a record behind.
    assert_eq!(h.flow_records().await, (0, 0));
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_reused_link_is_invalid_link() {
    let h = Harness::start().await;
    let link = h.link_for("user-1").await;
    h.opened(&link).await;
    let again = h.open_link(&link, Some(APP_ORIGIN)).await;
    assert_link_refused(&again, StatusCode::BAD_REQUEST, "invalid_link", "");
    assert!(
        header(&again, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    // Only the first use started a flow.
    assert_eq!(h.flow_records().await, (1, 0));
    let unknown = h.open_link("not-a-link", Some(APP_ORIGIN)).await;
    assert_eq!(error_code(&unknown), "invalid_link");
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn an_expired_link_is_invalid_link_and_used_up() {
    let h = Harness::start().await;
    let link = h.link_for("user-1").await;
    h.expire_flow_record(&calsync::flows::link_key(&link)).await;
    let response = h.open_link(&link, Some(APP_ORIGIN)).await;
    assert_link_refused(&response, StatusCode::BAD_REQUEST, "invalid_link", "");
    assert_eq!(h.flow_records().await, (0, 0));
    h.assert_no_leaks().await;
}

/// Login CSRF: the attacker mints a link for their own app user and makes the victim's browser
/// open it (a link, an auto-submitting form on the attacker's site, a redirect). None of these
/// may start a flow, so the victim's Google account can never reach the attacker's app user.
#[tokio::test]
async fn a_link_opened_from_another_site_never_connects_the_victim() {
    let h = Harness::start().await;
    let attackers_link = h.link_for("attacker").await;
    let token_calls = h.code_exchanges().await;

    for origin in [
        Some("https://evil.example"),
        Some("null"),
        Some("https://app.example.test.evil.example"),
        Some("http://app.example.test"),
        None,
    ] {
        let response = h.open_link(&attackers_link, origin).await;
        assert_link_refused(
            &response,
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            &format!("{origin:?}"),
        );
        assert!(header(&response, "location").is_none(), "{origin:?}");
    }
    // A plain navigation (a link in a mail, an <img>, a redirect) is a GET: not a way in either.
    let get = h
        .call_start(
            HttpApiEvent::get("/oauth/google/connect")
                .query(&format!("link={attackers_link}"))
                .request(),
        )
        .await;
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);

    // No flow was started, no cookie handed out, Google never asked, nobody connected.
    assert_eq!(h.flow_records().await, (0, 1));
    assert_eq!(h.code_exchanges().await, token_calls);
    assert!(h.grant_of("attacker").await.is_none());

    // The refusals did not burn the link: its own app page (the attacker's here) can still open
    // it, which shows the origin is checked before the link is consumed.
    h.opened(&attackers_link).await;
    assert_eq!(h.flow_records().await, (1, 0));
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn the_start_route_still_works_beside_links() {
    let h = Harness::start().await;
    let link = h.link_for("user-2").await;
    // A flow started by GET /oauth/google/start does not consume or disturb a pending link.
    h.connected("user-1", ALICE).await;
    assert_eq!(h.flow_records().await, (0, 1));
    // A link's key is never accepted as a callback state.
    let key = calsync::flows::link_key(&link);
    let forged = h
        .callback_with(&format!("state={key}&code=x"), Some("nonce"))
        .await;
    assert_refused(&forged, StatusCode::BAD_REQUEST, "invalid_state");
    assert_eq!(h.flow_records().await, (0, 1));
    h.assert_no_leaks().await;
}

// ---- revocation: only what calsync no longer uses ------------------------------------------

impl Harness {
    /// Whether `user`'s stored refresh token still works at Google (the emulator ends every token
    /// of an account on revoke, as Google does).
    async fn refreshes(&self, user: &str) -> bool {
        let grant = self.grant(user).await;
        self.refreshes_with(grant.refresh_token.as_ref().unwrap())
            .await
    }

    /// Whether Google still refreshes with `refresh_token` (not `invalid_grant`).
    async fn refreshes_with(&self, refresh_token: &SecretString) -> bool {
        match self.callback.google.refresh(refresh_token).await {
            Ok(_) => true,
            Err(OAuthError::InvalidGrant) => false,
            Err(other) => panic!("refresh failed otherwise: {other}"),
        }
    }

    async fn disconnect(&self, user: &str) -> StatusCode {
        self.call_callback(
            HttpApiEvent::new(Method::DELETE, "/oauth/google/connection")
                .user(user)
                .request(),
        )
        .await
        .status()
    }

    async fn revokes(&self) -> u64 {
        self.stats().await["revoke"].as_u64().unwrap()
    }
}

#[tokio::test]
async fn two_app_users_on_one_account_disconnecting_one_leaves_the_other_syncing() {
    let h = Harness::start().await;
    h.connected("b1", ALICE).await;
    h.connected("b2", ALICE).await;
    let b2_before = h.grant("b2").await;

    assert_eq!(h.disconnect("b1").await, StatusCode::NO_CONTENT);
    assert!(h.grant_of("b1").await.is_none());
    assert_eq!(h.revokes().await, 0, "b2 still holds Alice's account");
    assert!(h.refreshes("b2").await);
    assert_eq!(h.status_of("b2").await["status"], "active");
    assert_eq!(h.grant("b2").await.version, b2_before.version);

    // The last holder's disconnect revokes: the account's grant ends at Google.
    assert_eq!(h.disconnect("b2").await, StatusCode::NO_CONTENT);
    assert_eq!(h.revokes().await, 1);
    assert!(
        !h.refreshes_with(b2_before.refresh_token.as_ref().unwrap())
            .await
    );
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_needs_reauth_grant_does_not_keep_an_account_from_being_revoked() {
    let h = Harness::start().await;
    h.connected("b1", ALICE).await;
    h.connected("b2", ALICE).await;
    h.callback
        .grants
        .delete_tokens("b1", GrantStatus::NeedsReauth)
        .await
        .unwrap();
    assert_eq!(h.disconnect("b2").await, StatusCode::NO_CONTENT);
    assert_eq!(h.revokes().await, 1);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_reconnect_with_the_same_account_never_revokes() {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    h.connected("user-1", ALICE).await;
    assert_eq!(h.revokes().await, 0);
    assert!(h.refreshes("user-1").await);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_reconnect_with_another_account_revokes_the_old_one_once_the_new_is_stored() {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    let old = h.grant("user-1").await;
    h.connected("user-1", BOB).await;
    assert_eq!(h.revokes().await, 1);
    assert!(!h.refreshes_with(old.refresh_token.as_ref().unwrap()).await);
    let new = h.grant("user-1").await;
    assert_ne!(new.google_sub, ALICE_SUB);
    assert!(h.refreshes("user-1").await);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn a_reconnect_away_from_a_shared_account_leaves_it_to_the_other_user() {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    h.connected("user-2", ALICE).await;
    h.connected("user-1", BOB).await;
    assert_eq!(h.revokes().await, 0);
    assert!(h.refreshes("user-2").await);
    assert!(h.refreshes("user-1").await);
    h.assert_no_leaks().await;
}

#[tokio::test]
async fn an_unreadable_grant_counts_as_needs_reauth_until_the_user_reconnects() {
    let h = Harness::start().await;
    h.connected("user-1", ALICE).await;
    common::damage_sealed_refresh_token(&h.stack, "user-1").await;

    // Status says what the user must do (not a 500), and a reconnect overwrites the grant.
    assert_eq!(h.status_of("user-1").await["status"], "needs_reauth");
    h.connected("user-1", ALICE).await;
    assert_eq!(h.status_of("user-1").await["status"], "active");
    h.assert_no_leaks().await;
}
