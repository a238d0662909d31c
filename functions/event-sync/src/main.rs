//! The DynamoDB stream consumer: wiring only; the handler lives in `calsync::sync`.

use aws_lambda_events::event::dynamodb::Event as DynamodbEvent;
use calsync::{aws::Clients, calendar, config, sync, telemetry};
use lambda_runtime::{Error, LambdaEvent, service_fn};

// One thread: an environment gets one event at a time and at most a vCPU, so worker threads
// would only park and wake each other on every answer (README, "Performance").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = config::load_or_exit("event-sync");
    let clients = Clients::from_env().await;
    let deps =
        sync::handler::SyncDeps::cold_start(&config, &clients, calendar::DEFAULT_TIMEOUT).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<DynamodbEvent>| async move { sync::handle(deps, event).await },
    ))
    .await
}
