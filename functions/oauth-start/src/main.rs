//! `GET /oauth/google/start`: wiring only; the handler lives in `calsync::http`.

use std::sync::Arc;

use calsync::{aws::Clients, config, http, telemetry};
use lambda_http::{Error, Request, service_fn};

// One thread: an environment gets one event at a time and at most a vCPU, so worker threads
// would only park and wake each other on every answer (README, "Performance").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = config::load_or_exit("oauth-start");
    let clients = Clients::from_env().await;
    let deps = Arc::new(http::StartDeps::cold_start(config, &clients).await?);
    lambda_http::run(service_fn(move |request: Request| {
        let deps = deps.clone();
        async move { Ok::<_, Error>(http::start_router(&deps, request).await) }
    }))
    .await
}
