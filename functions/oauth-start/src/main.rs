//! `GET /oauth/google/start`: wiring only; the handler lives in `shared::http`.

use lambda_http::{Error, service_fn};
use shared::{aws::Clients, config, http, telemetry};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let _config = config::load_or_exit("oauth-start");
    let _clients = Clients::from_env().await;
    lambda_http::run(service_fn(http::not_implemented)).await
}
