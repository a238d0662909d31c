//! The HTTP handlers (API Gateway HTTP API v2 events): identity from the authorizer, start, callback, status and disconnect.
//!
//! Each handler is a plain async function from a [`Request`] to a [`Response`], so tests call it
//! with a JSON event. The dependencies (configuration, stores, Google client) are built once per
//! cold start by the function's `main` and passed by reference.

pub mod callback;
pub mod cookies;
pub mod identity;
pub mod responses;
pub mod return_to;
pub mod start;
pub mod status;

use std::future::Future;

use lambda_http::{Body, Request, Response, http::Method, http::StatusCode};

use std::sync::Arc;

use crate::{
    aws::Clients,
    config::Config,
    flows::{DynamoFlowStore, FlowStore},
    google_oauth::GoogleOAuth,
    grants::{DynamoGrantStore, GrantStore},
    secrets::SecretsCache,
};

pub use status::{DynamoParkedChanges, ParkedChanges};

/// What happens right after a user connects: the sync replays the user's parked changes.
/// The callback awaits it before answering (a Lambda cannot work after its answer); it must not
/// fail the connect, so it reports problems itself and returns nothing.
pub trait AfterConnect: Send + Sync {
    fn connected(&self, user_id: &str) -> impl Future<Output = ()> + Send;
}

/// An [`AfterConnect`] that does nothing (the start function, and tests of the connect alone).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReplay;

impl AfterConnect for NoReplay {
    async fn connected(&self, _user_id: &str) {}
}

/// What `GET /oauth/google/start` needs.
pub struct StartDeps<F> {
    pub config: Config,
    pub flows: F,
    pub google: GoogleOAuth,
}

/// What the oauth-callback function's routes need.
pub struct CallbackDeps<G, F, P, A> {
    pub config: Config,
    pub grants: G,
    pub flows: F,
    pub parked: P,
    pub after_connect: A,
    pub google: GoogleOAuth,
}

impl StartDeps<DynamoFlowStore> {
    /// The production wiring: DynamoDB and Secrets Manager clients, Google's endpoints.
    pub fn new(config: Config, clients: &Clients) -> Self {
        let secrets = Arc::new(SecretsCache::new(
            clients.secrets.clone(),
            config.secrets.clone(),
        ));
        Self {
            flows: DynamoFlowStore::new(
                clients.dynamodb.clone(),
                config.tables.oauth_flows.clone(),
                secrets.clone(),
            ),
            google: GoogleOAuth::new(&config, secrets),
            config,
        }
    }
}

impl<A: AfterConnect> CallbackDeps<DynamoGrantStore, DynamoFlowStore, DynamoParkedChanges, A> {
    /// The production wiring, with `after_connect` run after each successful connect.
    pub fn new(config: Config, clients: &Clients, after_connect: A) -> Self {
        let secrets = Arc::new(SecretsCache::new(
            clients.secrets.clone(),
            config.secrets.clone(),
        ));
        Self {
            grants: DynamoGrantStore::new(
                clients.dynamodb.clone(),
                config.tables.grants.clone(),
                secrets.clone(),
            ),
            flows: DynamoFlowStore::new(
                clients.dynamodb.clone(),
                config.tables.oauth_flows.clone(),
                secrets.clone(),
            ),
            parked: DynamoParkedChanges::new(
                clients.dynamodb.clone(),
                config.tables.sync_state.clone(),
            ),
            after_connect,
            google: GoogleOAuth::new(&config, secrets),
            config,
        }
    }
}

/// The route a request is for, matched on the end of its path so a stage prefix does not matter.
fn route_of(request: &Request) -> &str {
    let path = request.uri().path().trim_end_matches('/');
    [
        "/oauth/google/start",
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

/// The oauth-start function's handler.
pub async fn start_router<F: FlowStore>(deps: &StartDeps<F>, request: Request) -> Response<Body> {
    match (route_of(&request), request.method()) {
        ("/oauth/google/start", &Method::GET) => start::handle(deps, request).await,
        ("/oauth/google/start", _) => method_not_allowed(),
        _ => not_found(),
    }
}

/// The oauth-callback function's handler: callback, status and connection.
pub async fn callback_router<G, F, P, A>(
    deps: &CallbackDeps<G, F, P, A>,
    request: Request,
) -> Response<Body>
where
    G: GrantStore,
    F: FlowStore,
    P: ParkedChanges,
    A: AfterConnect,
{
    match (route_of(&request), request.method()) {
        ("/oauth/google/callback", &Method::GET) => callback::handle(deps, request).await,
        ("/oauth/google/status", &Method::GET) => status::status(deps, request).await,
        ("/oauth/google/connection", &Method::DELETE) => status::disconnect(deps, request).await,
        ("/oauth/google/callback" | "/oauth/google/status" | "/oauth/google/connection", _) => {
            method_not_allowed()
        }
        _ => not_found(),
    }
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
