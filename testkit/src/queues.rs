//! Creates the template's SQS queues (visibility timeout and dead-letter redrive as declared) in
//! the local AWS emulator. Creating a queue that exists with the same attributes is harmless.

use anyhow::{Context as _, Result};
use aws_sdk_sqs::{Client, types::QueueAttributeName};

use crate::template::{Context, QueueSpec, Template};

/// Creates `spec` under `ctx`'s name; its dead-letter queue must exist already (see
/// [`Template::queues`]' order).
pub async fn create_queue(client: &Client, ctx: &Context, spec: &QueueSpec) -> Result<()> {
    let name = Template::local_name(ctx, &spec.logical_id);
    let mut request = client.create_queue().queue_name(&name);
    if let Some(seconds) = spec.visibility_timeout {
        request = request.attributes(QueueAttributeName::VisibilityTimeout, seconds.to_string());
    }
    if let Some((dead_letter, count)) = &spec.redrive {
        let policy = serde_json::json!({
            "deadLetterTargetArn": Template::queue_arn(ctx, dead_letter),
            "maxReceiveCount": count,
        });
        request = request.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
    }
    request
        .send()
        .await
        .with_context(|| format!("creating queue {name}"))?;
    Ok(())
}

/// The ARN of a queue from its URL (`https://HOST/ACCOUNT/NAME`).
pub fn arn_of_url(queue_url: &str, region: &str) -> String {
    let mut parts = queue_url.trim_end_matches('/').rsplit('/');
    let name = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or_default();
    format!("arn:aws:sqs:{region}:{account}:{name}")
}

/// Receives up to `max` messages (long-polling up to `wait_seconds`), with their system
/// attributes.
pub async fn receive(
    client: &Client,
    queue_url: &str,
    max: i32,
    wait_seconds: i32,
) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    let received = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max)
        .wait_time_seconds(wait_seconds)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .with_context(|| format!("receiving from {queue_url}"))?;
    Ok(received.messages.unwrap_or_default())
}

/// Up to `max` messages of `queue_url` (no waiting) and the event that delivers them to a
/// function, as the SQS event source mapping would on the local stack's region.
pub async fn receive_event(
    client: &Client,
    queue_url: &str,
    max: i32,
) -> Result<(Vec<aws_sdk_sqs::types::Message>, serde_json::Value)> {
    let messages = receive(client, queue_url, max, 0).await?;
    let arn = arn_of_url(queue_url, crate::aws::REGION);
    let event = lambda_event(&messages, &arn, crate::aws::REGION);
    Ok((messages, event))
}

/// The event Lambda's SQS event source mapping invokes a function with.
pub fn lambda_event(
    messages: &[aws_sdk_sqs::types::Message],
    queue_arn: &str,
    region: &str,
) -> serde_json::Value {
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, serde_json::Value> = m
                .attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_string(), v.as_str().into()))
                .collect();
            serde_json::json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// Deletes the messages a function's answer does not name in `batchItemFailures`, as the event
/// source mapping does after a successful invocation. Returns how many were deleted.
pub async fn delete_handled(
    client: &Client,
    queue_url: &str,
    messages: &[aws_sdk_sqs::types::Message],
    answer: &serde_json::Value,
) -> Result<usize> {
    let failed: Vec<&str> = answer
        .get("batchItemFailures")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("itemIdentifier")?.as_str())
        .collect();
    let done: Vec<_> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| !failed.contains(&m.message_id().unwrap_or_default()))
        .filter_map(|(i, m)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle()?)
                .build()
                .ok()
        })
        .collect();
    let count = done.len();
    if count > 0 {
        client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(done))
            .send()
            .await
            .context("deleting handled messages")?;
    }
    Ok(count)
}
