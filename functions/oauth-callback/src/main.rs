//! `GET /oauth/google/callback`, `GET /oauth/google/status`, `DELETE /oauth/google/connection`: wiring only; the handler lives in `calsync::http`.

use std::sync::Arc;

use calsync::{aws::Clients, config, http, sync::replay::ProductionReplay, telemetry};
use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = config::load_or_exit("oauth-callback");
    let clients = Clients::from_env().await;
    // A successful connect replays the user's parked changes before answering.
    let replay = ProductionReplay::from_config(&config, &clients);
    let deps = Arc::new(http::CallbackDeps::new(config, &clients, replay));
    lambda_http::run(service_fn(move |request: Request| {
        let deps = deps.clone();
        async move { Ok::<_, Error>(http::callback_router(&deps, request).await) }
    }))
    .await
}
