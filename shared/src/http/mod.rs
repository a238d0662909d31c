//! The HTTP handlers (API Gateway HTTP API v2 events): identity from the authorizer, start, callback, status and disconnect.
//!
//! Each handler is a plain async function from a [`Request`] to a [`Response`], so tests call it
//! with a JSON event. The dependencies (configuration, stores, Google client) are built once per
//! cold start by the function's `main` and passed by reference.

pub mod callback;
pub mod cookies;
pub mod identity;
pub mod link;
pub mod responses;
pub mod return_to;
pub mod start;
pub mod status;

use std::future::Future;

use lambda_http::{Body, Request, Response, http::Method, http::StatusCode};

use crate::{
    aws::Clients,
    calendar::CalendarClient,
    config::Config,
    flows::FlowStore,
    google_oauth::GoogleOAuth,
    grants::GrantStore,
    lifecycle::{LifecycleEvents, eventbridge::EventBridgeEvents},
    secrets::SecretsError,
    store::{DynamoFlowStore, DynamoGrantStore, DynamoSyncStateStore, Stores},
    sync_state::SyncSummaries,
};

/// What happens right after a user connects: production queues the user's resync
/// ([`crate::resync::ResyncOnConnect`]). The callback awaits it before answering (a Lambda cannot
/// work after its answer), so it must be quick; it must not fail the connect, so it reports
/// problems itself and returns nothing.
pub trait AfterConnect: Send + Sync {
    fn connected(&self, user_id: &str) -> impl Future<Output = ()> + Send;
}

/// An [`AfterConnect`] that does nothing (the start function, and tests of the connect alone).
#[derive(Debug, Default, Clone, Copy)]
pub struct NothingAfterConnect;

impl AfterConnect for NothingAfterConnect {
    async fn connected(&self, _user_id: &str) {}
}

/// What `GET /oauth/google/start` needs.
pub struct StartDeps<F> {
    pub config: Config,
    pub flows: F,
    pub google: GoogleOAuth,
}

/// The ports the oauth-callback function's routes talk to, bundled so a handler names one type
/// parameter: production's is [`Production`], unit tests bundle fakes.
pub trait CallbackPorts {
    type Grants: GrantStore;
    /// Where `Grant Connected` and `Grant Disconnected` go.
    type Lifecycle: LifecycleEvents;
    type Flows: FlowStore;
    /// What the status route says of the user's sync.
    type SyncStates: SyncSummaries;
    type AfterConnect: AfterConnect;
}

/// The production ports: DynamoDB stores, and `A` run after each successful connect. Never
/// built: it only names types.
pub struct Production<A>(std::marker::PhantomData<fn() -> A>);

impl<A: AfterConnect> CallbackPorts for Production<A> {
    type Grants = DynamoGrantStore;
    type Lifecycle = EventBridgeEvents;
    type Flows = DynamoFlowStore;
    type SyncStates = DynamoSyncStateStore;
    type AfterConnect = A;
}

/// What the oauth-callback function's routes need.
pub struct CallbackDeps<P: CallbackPorts> {
    pub config: Config,
    pub grants: P::Grants,
    pub lifecycle: P::Lifecycle,
    pub flows: P::Flows,
    pub sync_states: P::SyncStates,
    pub after_connect: P::AfterConnect,
    pub google: GoogleOAuth,
    /// Makes the dedicated calendar on a connect (`CALENDAR_MODE=dedicated`), and deletes it on
    /// a disconnect when the deployment asks.
    pub calendar: CalendarClient,
}

impl StartDeps<DynamoFlowStore> {
    /// A cold start: [`Self::new`], and both secrets read during init (see
    /// [`crate::secrets::SecretsCache::read_at_init`]).
    pub async fn cold_start(config: Config, clients: &Clients) -> Result<Self, SecretsError> {
        let deps = Self::new(config, clients);
        deps.google.secrets().read_at_init().await?;
        Ok(deps)
    }

    /// The production wiring: DynamoDB and Secrets Manager clients, Google's endpoints.
    pub fn new(config: Config, clients: &Clients) -> Self {
        let stores = Stores::new(&config, clients);
        Self {
            flows: stores.flows(),
            google: GoogleOAuth::new(&config, stores.secrets()),
            config,
        }
    }
}

impl<A: AfterConnect> CallbackDeps<Production<A>> {
    /// A cold start: [`Self::new`], and both secrets read during init (see
    /// [`crate::secrets::SecretsCache::read_at_init`]).
    pub async fn cold_start(
        config: Config,
        clients: &Clients,
        after_connect: A,
    ) -> Result<Self, SecretsError> {
        let deps = Self::new(config, clients, after_connect);
        deps.google.secrets().read_at_init().await?;
        Ok(deps)
    }

    /// The production wiring, with `after_connect` run after each successful connect.
    pub fn new(config: Config, clients: &Clients, after_connect: A) -> Self {
        let stores = Stores::new(&config, clients);
        Self {
            grants: stores.grants(),
            lifecycle: EventBridgeEvents::new(
                clients.eventbridge.clone(),
                config.event_bus_name.clone(),
            ),
            flows: stores.flows(),
            sync_states: stores.sync_state(),
            after_connect,
            google: GoogleOAuth::new(&config, stores.secrets()),
            calendar: CalendarClient::new(
                config.google.calendar_api_url.clone(),
                crate::calendar::DEFAULT_TIMEOUT,
            ),
            config,
        }
    }
}

/// The route a request is for, matched on the end of its path so a stage prefix does not matter.
fn route_of(request: &Request) -> &str {
    let path = request.uri().path().trim_end_matches('/');
    [
        "/oauth/google/start",
        "/oauth/google/connect-links",
        "/oauth/google/connect",
        "/oauth/google/callback",
        "/oauth/google/status",
        "/oauth/google/connection",
    ]
    .into_iter()
    .find(|route| path.ends_with(route))
    .unwrap_or("")
}

fn not_found() -> Response<Body> {
    responses::json_error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

fn method_not_allowed() -> Response<Body> {
    responses::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The oauth-start function's handler: start, and the connect link's two routes (all of them
/// only ever write flow records).
pub async fn start_router<F: FlowStore>(deps: &StartDeps<F>, request: Request) -> Response<Body> {
    match (route_of(&request), request.method()) {
        ("/oauth/google/start", &Method::GET) => start::handle(deps, request).await,
        ("/oauth/google/connect-links", &Method::POST) => link::mint(deps, request).await,
        ("/oauth/google/connect", &Method::POST) => link::open(deps, request).await,
        ("/oauth/google/start" | "/oauth/google/connect-links" | "/oauth/google/connect", _) => {
            method_not_allowed()
        }
        _ => not_found(),
    }
}

/// The oauth-callback function's handler: callback, status and connection.
pub async fn callback_router<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    request: Request,
) -> Response<Body> {
    let route = async {
        match (route_of(&request), request.method()) {
            ("/oauth/google/callback", &Method::GET) => callback::handle(deps, request).await,
            ("/oauth/google/status", &Method::GET) => status::status(deps, request).await,
            ("/oauth/google/connection", &Method::DELETE) => {
                status::disconnect(deps, request).await
            }
            ("/oauth/google/callback" | "/oauth/google/status" | "/oauth/google/connection", _) => {
                method_not_allowed()
            }
            _ => not_found(),
        }
    };
    crate::metrics::scope("oauth-callback", route).await
}

/// The query parameters of the request's raw query string. A parameter given twice is
/// ambiguous and reported as `Err(name)`.
pub(crate) fn query(
    request: &Request,
) -> Result<std::collections::HashMap<String, String>, String> {
    let mut map = std::collections::HashMap::new();
    for (key, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        if map.insert(key.to_string(), value.to_string()).is_some() {
            return Err(key.to_string());
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flows::nonce_hash,
        secrets::{GoogleClient, SecretsCache},
        store::{InMemoryFlowStore, InMemoryGrantStore},
        sync_state::{StateError, SyncSummary},
        vault::Keyring,
    };
    use serde_json::json;

    /// A fixed summary: some parked changes.
    struct FixedSummary(u64);

    impl SyncSummaries for FixedSummary {
        async fn summary(&self, _user_id: &str) -> Result<SyncSummary, StateError> {
            Ok(SyncSummary {
                parked: self.0,
                ..SyncSummary::default()
            })
        }
    }

    /// In-memory stores, a fixed parked count, nothing after a connect.
    enum Fakes {}

    impl CallbackPorts for Fakes {
        type Grants = InMemoryGrantStore;
        type Lifecycle = crate::lifecycle::RecordedEvents;
        type Flows = InMemoryFlowStore;
        type SyncStates = FixedSummary;
        type AfterConnect = NothingAfterConnect;
    }

    fn config() -> Config {
        let env = crate::config::test_variables(&[
            (
                "OAUTH_REDIRECT_URI",
                "https://api.example/oauth/google/callback",
            ),
            ("ALLOWED_RETURN_ORIGINS", "https://app.example"),
            ("DEFAULT_RETURN_URL", "https://app.example/settings"),
            // Nothing listens here: these tests must never reach Google.
            ("GOOGLE_TOKEN_URL", "http://127.0.0.1:9/token"),
            ("GOOGLE_REVOKE_URL", "http://127.0.0.1:9/revoke"),
        ]);
        Config::from_source(&env).unwrap()
    }

    fn google(config: &Config) -> GoogleOAuth {
        let secrets = std::sync::Arc::new(SecretsCache::fixed(
            GoogleClient {
                client_id: "cid".into(),
                client_secret: secrecy::SecretString::from("GOCSPX-secret".to_string()),
            },
            Keyring::generate("k1"),
        ));
        GoogleOAuth::new(config, secrets)
    }

    fn request(path: &str, query: &str, cookie: Option<&str>, user: Option<&str>) -> Request {
        let mut context = json!({
            "accountId": "1", "apiId": "a", "domainName": "api.example", "domainPrefix": "api",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "t"},
            "requestId": "r", "routeKey": format!("GET {path}"), "stage": "$default",
            "time": "25/Nov/2026:21:00:00 +0000", "timeEpoch": 1795000000000u64
        });
        if let Some(user) = user {
            context["authorizer"] = json!({"jwt": {"claims": {"sub": user}, "scopes": null}});
        }
        let mut event = json!({
            "version": "2.0", "routeKey": format!("GET {path}"), "rawPath": path,
            "rawQueryString": query, "headers": {"host": "api.example"},
            "requestContext": context, "isBase64Encoded": false
        });
        if let Some(cookie) = cookie {
            event["cookies"] = json!([format!("{}={cookie}", cookies::NAME)]);
        }
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    fn deps() -> (StartDeps<InMemoryFlowStore>, CallbackDeps<Fakes>) {
        let config = config();
        let flows = InMemoryFlowStore::new();
        let start = StartDeps {
            config: config.clone(),
            flows: flows.clone(),
            google: google(&config),
        };
        let callback = CallbackDeps {
            google: google(&config),
            calendar: CalendarClient::new(
                config.google.calendar_api_url.clone(),
                crate::calendar::DEFAULT_TIMEOUT,
            ),
            config,
            grants: InMemoryGrantStore::new(),
            lifecycle: crate::lifecycle::RecordedEvents::new(),
            flows,
            sync_states: FixedSummary(3),
            after_connect: NothingAfterConnect,
        };
        (start, callback)
    }

    fn location(response: &Response<Body>) -> url::Url {
        url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn start_stores_a_flow_bound_to_the_cookie() {
        let (start, _) = deps();
        let response = start_router(
            &start,
            request("/oauth/google/start", "", None, Some("user-1")),
        )
        .await;
        assert_eq!(response.status(), StatusCode::FOUND);
        let url = location(&response);
        let state = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let cookie = response.headers()["set-cookie"].to_str().unwrap();
        let nonce = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
        let flow = start.flows.find(&state).await.unwrap().unwrap();
        assert_eq!(flow.user_id, "user-1");
        assert_eq!(flow.return_to, "https://app.example/settings");
        assert_eq!(flow.nonce_hash, nonce_hash(nonce));
        assert!(!url.as_str().contains(flow.verifier_secret()));
    }

    #[tokio::test]
    async fn callback_refusals_never_reach_google_or_consume_the_flow() {
        let (start, callback) = deps();
        let started = start_router(
            &start,
            request("/oauth/google/start", "", None, Some("user-1")),
        )
        .await;
        let state = location(&started)
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let query = format!("state={state}&code=4%2F0abc");
        let cases = [
            (
                "state=unknown&code=x".to_string(),
                Some("whatever"),
                "invalid_state",
            ),
            (query.clone(), None, "state_mismatch"),
            (query.clone(), Some("wrong-nonce"), "state_mismatch"),
            (format!("state={state}"), Some("x"), "invalid_request"),
            (format!("{query}&state=again"), Some("x"), "invalid_request"),
        ];
        for (query, cookie, code) in cases {
            let response = callback_router(
                &callback,
                request("/oauth/google/callback", &query, cookie, None),
            )
            .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            let Body::Text(body) = response.body() else {
                panic!("a text body")
            };
            assert!(body.contains(code), "{query}: {body}");
        }
        assert!(callback.flows.find(&state).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn status_of_a_user_without_grant() {
        let (_, callback) = deps();
        let response = callback_router(
            &callback,
            request("/oauth/google/status", "", None, Some("user-1")),
        )
        .await;
        let Body::Text(body) = response.body() else {
            panic!("a text body")
        };
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["status"], "not_connected");
        assert_eq!(body["parked_changes"], 3);
    }

    #[tokio::test]
    async fn a_disconnect_google_does_not_confirm_keeps_the_grant() {
        let (_, callback) = deps();
        let grant = crate::grants::Grant {
            user_id: "user-1".into(),
            status: crate::grants::GrantStatus::Active,
            google_sub: "1".into(),
            google_email: None,
            scopes: vec![],
            connected_at: chrono::Utc::now(),
            refreshed_at: None,
            access_token: None,
            access_token_expires_at: None,
            refresh_token: Some(secrecy::SecretString::from("1//rt".to_string())),
            reauth_reason: None,
            needs_reauth_reported_at: None,
            parked_reported_at: None,
            calendar: None,
            version: 0,
        };
        callback.grants.save(&grant).await.unwrap();
        let mut delete = request("/oauth/google/connection", "", None, Some("user-1"));
        *delete.method_mut() = lambda_http::http::Method::DELETE;
        // The revoke URL points at a closed port: Google "does not answer".
        let response = callback_router(&callback, delete).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let Body::Text(body) = response.body() else {
            panic!("a text body")
        };
        assert!(body.contains("revoke_failed"));
        assert!(!body.contains("1//rt"));
        assert!(callback.grants.get("user-1").await.unwrap().is_some());
        assert!(
            callback.lifecycle.events().is_empty(),
            "nothing was disconnected"
        );
    }
}
