//! Lifecycle events on moto's EventBridge, read back the way an app would: a rule on the stack's
//! bus matching calsync's source, targeting an SQS queue of the test's own.
//!
//! moto delivers to the queue inside `PutEvents`, so once a handler has returned, what it sent is
//! in the queue: [`EventTap::drain`] reads until the queue is empty, without waiting.

use anyhow::{Context as _, Result, ensure};
use aws_config::SdkConfig;
use serde_json::{Value, json};

/// The bus name that needs no creating (every account and region has it).
pub const DEFAULT_BUS: &str = "default";

/// Creates the bus `name` unless it is the default bus or exists already.
pub async fn ensure_bus(sdk: &SdkConfig, name: &str) -> Result<()> {
    if name == DEFAULT_BUS {
        return Ok(());
    }
    let events = aws_sdk_eventbridge::Client::new(sdk);
    match events.create_event_bus().name(name).send().await {
        Ok(_) => Ok(()),
        Err(error)
            if aws_sdk_eventbridge::error::ProvideErrorMetadata::code(&error)
                == Some("ResourceAlreadyExistsException") =>
        {
            Ok(())
        }
        Err(error) => Err(aws_sdk_eventbridge::Error::from(error))
            .with_context(|| format!("creating the event bus {name}")),
    }
}

/// A queue that receives every event with `source` on `bus`.
pub struct EventTap {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl EventTap {
    /// Creates the queue `{name}` and the rule `{name}` on `bus` that sends it every event whose
    /// source is `source`.
    pub async fn start(sdk: &SdkConfig, bus: &str, source: &str, name: &str) -> Result<Self> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let queue_url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(aws_sdk_sqs::Error::from)
            .context("creating the tap's queue")?
            .queue_url
            .context("no queue URL")?;
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(aws_sdk_sqs::Error::from)
            .context("reading the tap queue's ARN")?
            .attributes
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .context("no queue ARN")?;
        let events = aws_sdk_eventbridge::Client::new(sdk);
        events
            .put_rule()
            .name(name)
            .event_bus_name(bus)
            .event_pattern(json!({"source": [source]}).to_string())
            .send()
            .await
            .map_err(aws_sdk_eventbridge::Error::from)
            .context("creating the tap's rule")?;
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("tap")
            .arn(queue_arn)
            .build()
            .context("a target")?;
        let put = events
            .put_targets()
            .rule(name)
            .event_bus_name(bus)
            .targets(target)
            .send()
            .await
            .map_err(aws_sdk_eventbridge::Error::from)
            .context("pointing the tap's rule at its queue")?;
        ensure!(
            put.failed_entry_count() == 0,
            "the tap's target was refused: {:?}",
            put.failed_entries()
        );
        Ok(Self { sqs, queue_url })
    }

    /// Every event delivered since the last call (EventBridge's envelope: `detail-type`,
    /// `source`, `time`, `detail`, ...), oldest first as far as SQS keeps order.
    pub async fn drain(&self) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        loop {
            let answer = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(aws_sdk_sqs::Error::from)
                .context("reading the tap's queue")?;
            let messages = answer.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(events);
            }
            for message in messages {
                let body = message.body().context("a message without a body")?;
                events.push(serde_json::from_str(body).context("an event that is not JSON")?);
                if let Some(handle) = message.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await
                        .map_err(aws_sdk_sqs::Error::from)
                        .context("deleting a read message")?;
                }
            }
        }
    }
}
