//! `GET /oauth/google/callback`, `GET /oauth/google/status`, `DELETE /oauth/google/connection`: wiring only; the handler lives in `calsync::http`.

use std::sync::Arc;

use calsync::{aws::Clients, config, http, resync::ResyncOnConnect, store::SqsJobQueue, telemetry};
use lambda_http::{Error, Request, service_fn};

// One thread: an environment gets one event at a time and at most a vCPU, so worker threads
// would only park and wake each other on every answer (README, "Performance").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = config::load_or_exit("oauth-callback");
    let clients = Clients::from_env().await;
    // A successful connect queues the user's resync (backfill and parked changes).
    let queue = SqsJobQueue::new(clients.sqs.clone(), config.resync_queue_url.clone());
    let deps =
        Arc::new(http::CallbackDeps::cold_start(config, &clients, ResyncOnConnect(queue)).await?);
    lambda_http::run(service_fn(move |request: Request| {
        let deps = deps.clone();
        async move { Ok::<_, Error>(http::callback_router(&deps, request).await) }
    }))
    .await
}
