//! The local event source mapping for SQS, as Lambda runs it for the template's `SQS` events:
//! long-polls the queue, invokes the function (under the RIE) with up to `BatchSize` messages in
//! Lambda's SQS event shape, deletes the messages the answer does not name in
//! `batchItemFailures` (all of them stay on a function error), and leaves the rest to the queue:
//! they come back after the visibility timeout, and moto moves them to the dead-letter queue
//! after the redrive policy's receive count, as SQS does.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;
use testkit::queues;

/// One SQS event source of a function.
pub struct QueuePoller {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: i32,
    pub http: reqwest::Client,
    pub invoke_url: String,
}

impl QueuePoller {
    /// `properties` is the template event's `Properties` (`BatchSize`, default 10 as Lambda's).
    pub fn batch_size_of(properties: &Value) -> i32 {
        properties
            .get("BatchSize")
            .and_then(Value::as_i64)
            .map_or(10, |n| n.clamp(1, 10) as i32)
    }

    pub async fn run(self) -> Result<()> {
        loop {
            let messages = queues::receive(&self.sqs, &self.queue_url, self.batch_size, 1).await?;
            if messages.is_empty() {
                continue;
            }
            let event = queues::lambda_event(&messages, &self.queue_arn, testkit::aws::REGION);
            let answer = self
                .http
                .post(&self.invoke_url)
                .json(&event)
                .send()
                .await
                .context("invoking the function under the RIE")?;
            let failed_call = !answer.status().is_success();
            let answer: Value = answer.json().await.unwrap_or(Value::Null);
            if failed_call || answer.get("errorType").is_some() {
                eprintln!(
                    "queue poller: the function failed on {}: {answer}",
                    self.queue_arn
                );
                continue; // every message comes back after its visibility timeout
            }
            queues::delete_handled(&self.sqs, &self.queue_url, &messages, &answer).await?;
        }
    }
}

/// How long the HTTP call to a function may take: its timeout and a margin.
pub fn invoke_timeout(timeout_seconds: u64) -> Duration {
    Duration::from_secs(timeout_seconds + 5)
}
