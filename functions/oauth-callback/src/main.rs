//! `GET /oauth/google/callback`, `GET /oauth/google/status`, `DELETE /oauth/google/connection`: wiring only; the handler lives in `shared::http`.

use std::sync::Arc;

use lambda_http::{Error, Request, service_fn};
use shared::{aws::Clients, config, http, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = config::load_or_exit("oauth-callback");
    let clients = Clients::from_env().await;
    // Until the sync's replay is wired in (shared::sync), a connect replays nothing.
    let deps = Arc::new(http::CallbackDeps::new(config, &clients, http::NoReplay));
    lambda_http::run(service_fn(move |request: Request| {
        let deps = deps.clone();
        async move { Ok::<_, Error>(http::callback_router(&deps, request).await) }
    }))
    .await
}
