//! The DynamoDB stream consumer: wiring only; the handler lives in `shared::sync`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::{aws::Clients, config, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let _config = config::load_or_exit("event-sync");
    let _clients = Clients::from_env().await;
    lambda_runtime::run(service_fn(|_event: LambdaEvent<serde_json::Value>| async {
        Err::<serde_json::Value, Error>("event-sync is not implemented yet".into())
    }))
    .await
}
