//! AWS SDK clients, built once per cold start.
//!
//! The SDK's default HTTPS client would bring a second TLS crypto provider (aws-lc) beside the
//! `ring` one that reqwest and oauth2 use; two providers make rustls refuse to pick one at run
//! time, so the SDK gets a rustls client on `ring` here. Endpoints come from the standard
//! `AWS_ENDPOINT_URL*` variables, which is how the local stack points it at moto's server.

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig, timeout::TimeoutConfig};
use aws_smithy_http_client::{
    Builder,
    tls::{Provider, rustls_provider::CryptoMode},
};

/// Loads region, credentials and endpoints the standard way, over a `ring` TLS client.
pub async fn sdk_config() -> SdkConfig {
    let http_client = Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .load()
        .await
}

/// Every AWS client a calsync function uses, sharing one configuration and connection pool.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// The Events stream, read again by the resync when Lambda gave up on a range of it.
    pub dynamodb_streams: aws_sdk_dynamodbstreams::Client,
    /// Tuned for best-effort lifecycle events (`lifecycle::eventbridge::client`).
    pub eventbridge: aws_sdk_eventbridge::Client,
}

/// The longest a DynamoDB or Secrets Manager call may take per attempt (the SDK retries it, three
/// attempts in all). Their answers take milliseconds; without a bound the SDK waits forever, so a
/// service that stops answering would hold an invocation until Lambda's own timeout.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn bounded(config: &SdkConfig) -> SdkConfig {
    config
        .to_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build()
}

impl Clients {
    pub fn new(config: &SdkConfig) -> Self {
        let bounded = bounded(config);
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(&bounded),
            secrets: aws_sdk_secretsmanager::Client::new(&bounded),
            sqs: aws_sdk_sqs::Client::new(config),
            dynamodb_streams: aws_sdk_dynamodbstreams::Client::new(&bounded),
            eventbridge: crate::lifecycle::eventbridge::client(config),
        }
    }

    pub async fn from_env() -> Self {
        Self::new(&sdk_config().await)
    }
}

/// An SDK error with its whole chain of causes (the service's code and message, or the
/// connection failure): the top-level `Display` alone says only "service error". Every AWS
/// client's `SdkError` is this one type, so Secrets Manager errors come here too.
pub fn describe_error<E, R>(error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    aws_sdk_dynamodb::error::DisplayErrorContext(error).to_string()
}
