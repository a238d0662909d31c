//! The resync queue's consumer and the daily sweep: wiring only; the handler lives in
//! `calsync::resync`.

use calsync::{
    aws::Clients,
    config,
    resync::handler::{self, ResyncDeps, ResyncEvent},
    telemetry,
};
use lambda_runtime::{Error, LambdaEvent, service_fn};

// One thread: an environment gets one event at a time and at most a vCPU, so worker threads
// would only park and wake each other on every answer (README, "Performance").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = config::load_or_exit("resync");
    let clients = Clients::from_env().await;
    let deps = ResyncDeps::cold_start(&config, &clients).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ResyncEvent>| async move { handler::handle(deps, event).await },
    ))
    .await
}
