//! Reads a table's DynamoDB stream from the local emulator and turns each record into the exact
//! JSON Lambda hands a stream consumer (`aws_lambda_events::dynamodb::EventRecord`).

use anyhow::{Context as _, Result, anyhow};
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use serde_json::{Map, Value, json};

use crate::ddb_json::stream_item;

/// Every record the stream of `table` holds, oldest first per shard, in Lambda's event shape.
pub async fn stream_records(
    dynamodb: &aws_sdk_dynamodb::Client,
    streams: &aws_sdk_dynamodbstreams::Client,
    table: &str,
) -> Result<Vec<Value>> {
    let description = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(aws_sdk_dynamodb::Error::from)
        .with_context(|| format!("describing table {table}"))?;
    let stream_arn = description
        .table()
        .and_then(|t| t.latest_stream_arn())
        .ok_or_else(|| anyhow!("table {table} has no stream"))?
        .to_string();
    let stream = streams
        .describe_stream()
        .stream_arn(&stream_arn)
        .send()
        .await
        .map_err(aws_sdk_dynamodbstreams::Error::from)
        .with_context(|| format!("describing the stream of {table}"))?;
    let shards = stream
        .stream_description()
        .map(|d| d.shards().to_vec())
        .unwrap_or_default();
    let mut out = Vec::new();
    for shard in shards {
        let Some(shard_id) = shard.shard_id() else {
            continue;
        };
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(aws_sdk_dynamodbstreams::Error::from)
            .context("getting a shard iterator")?
            .shard_iterator;
        // An open shard hands out a next iterator forever; an empty page means we are at its end.
        while let Some(current) = iterator {
            let page = streams
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .map_err(aws_sdk_dynamodbstreams::Error::from)
                .context("reading stream records")?;
            if page.records().is_empty() {
                break;
            }
            out.extend(page.records().iter().map(|r| lambda_record(r, &stream_arn)));
            iterator = page.next_shard_iterator;
        }
    }
    Ok(out)
}

/// One stream record as Lambda delivers it.
pub fn lambda_record(record: &Record, stream_arn: &str) -> Value {
    let mut change = Map::new();
    if let Some(s) = &record.dynamodb {
        if let Some(t) = s.approximate_creation_date_time() {
            change.insert("ApproximateCreationDateTime".into(), json!(t.secs()));
        }
        if let Some(keys) = s.keys() {
            change.insert("Keys".into(), stream_item(keys));
        }
        if let Some(image) = s.new_image() {
            change.insert("NewImage".into(), stream_item(image));
        }
        if let Some(image) = s.old_image() {
            change.insert("OldImage".into(), stream_item(image));
        }
        if let Some(sequence) = s.sequence_number() {
            change.insert("SequenceNumber".into(), json!(sequence));
        }
        if let Some(size) = s.size_bytes() {
            change.insert("SizeBytes".into(), json!(size));
        }
        if let Some(view) = s.stream_view_type() {
            change.insert("StreamViewType".into(), json!(view.as_str()));
        }
    }
    json!({
        "eventID": record.event_id().unwrap_or_default(),
        "eventName": record.event_name().map(|n| n.as_str()).unwrap_or_default(),
        "eventVersion": record.event_version().unwrap_or("1.1"),
        "eventSource": record.event_source().unwrap_or("aws:dynamodb"),
        "awsRegion": record.aws_region().unwrap_or(crate::aws::REGION),
        "dynamodb": Value::Object(change),
        "eventSourceARN": stream_arn,
    })
}

/// Wraps records as the event Lambda passes to a stream consumer.
pub fn stream_event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}
