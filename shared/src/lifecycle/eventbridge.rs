//! The EventBridge adapter of [`LifecycleEvents`]: one `PutEvents` call per attempt, on the bus
//! that `EVENT_BUS_NAME` names.
//!
//! The client's own retries are off and its attempt timeout is [`ATTEMPT_TIMEOUT`]: [`super::emit`]
//! owns the retries and the budget, so the SDK cannot stretch an attempt with retries of its own.
//! `PutEvents` can answer 200 and still refuse the entry (`FailedEntryCount`); that entry's
//! error code decides whether a retry can help.

use aws_config::SdkConfig;
use aws_sdk_eventbridge::{
    Client,
    config::{retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
    primitives::DateTime,
    types::PutEventsRequestEntry,
};

use super::{ATTEMPT_TIMEOUT, EmitError, LifecycleEvent, LifecycleEvents, SOURCE};

/// Error codes of `PutEvents` (the call's or an entry's) that a retry can get past.
const RETRYABLE_CODES: [&str; 4] = [
    "InternalFailure",
    "InternalException",
    "ThrottlingException",
    "ServiceUnavailable",
];

/// Publishes lifecycle events to one EventBridge bus.
#[derive(Clone, Debug)]
pub struct EventBridgeEvents {
    client: Client,
    bus: String,
}

/// The EventBridge client lifecycle events need: `sdk`'s region, credentials and endpoint, no
/// SDK retries, and the attempt timeout.
pub fn client(sdk: &SdkConfig) -> Client {
    let config = aws_sdk_eventbridge::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(ATTEMPT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    Client::from_conf(config)
}

impl EventBridgeEvents {
    /// Publishes on `bus` (a name; `default` is the account's default bus) with `client` (from
    /// [`client`]).
    pub fn new(client: Client, bus: String) -> Self {
        Self { client, bus }
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }
}

fn classify(code: Option<&str>, text: String) -> EmitError {
    match code {
        Some(code) if RETRYABLE_CODES.contains(&code) => EmitError::Unavailable(text),
        Some(_) => EmitError::Refused(text),
        None => EmitError::Unavailable(text),
    }
}

impl LifecycleEvents for EventBridgeEvents {
    async fn publish(&self, event: &LifecycleEvent) -> Result<(), EmitError> {
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(event.kind.detail_type())
            .detail(event.detail_json())
            .time(DateTime::from_millis(event.time.timestamp_millis()))
            .build();
        let answer = self.client.put_events().entries(entry).send().await;
        let output = match answer {
            Ok(output) => output,
            Err(error) => {
                let text = crate::aws::describe_error(&error);
                return Err(match &error {
                    SdkError::ServiceError(service) => {
                        let status = service.raw().status().as_u16();
                        if status >= 500 || status == 429 {
                            EmitError::Unavailable(text)
                        } else {
                            classify(error.code().or(Some("ClientError")), text)
                        }
                    }
                    SdkError::ConstructionFailure(_) => EmitError::Refused(text),
                    // Timeouts, connection failures, unreadable answers: worth another attempt.
                    _ => EmitError::Unavailable(text),
                });
            }
        };
        if output.failed_entry_count() == 0 {
            return Ok(());
        }
        let failed = output.entries().first();
        let code = failed.and_then(|e| e.error_code());
        let message = failed.and_then(|e| e.error_message()).unwrap_or_default();
        Err(classify(
            code.or(Some("Unknown")),
            format!("{} {message}", code.unwrap_or("entry refused")),
        ))
    }
}
