//! DynamoDB Streams on moto, spoken as the JSON protocol it is: moto's records already have the
//! exact shape Lambda hands a stream consumer (`aws_lambda_events::dynamodb::EventRecord`, DynamoDB
//! typed JSON), so they pass through with only the stream's ARN added. No SDK is needed for it.

use anyhow::{Context as _, Result, anyhow, ensure};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::aws;

/// moto's DynamoDB Streams API at one endpoint.
#[derive(Debug, Clone)]
pub struct Streams {
    http: reqwest::Client,
    endpoint: String,
}

impl Streams {
    pub fn new(endpoint: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            endpoint: endpoint.to_string(),
        }
    }

    async fn call(&self, action: &str, body: Value) -> Result<Value> {
        // moto picks the service from the credential scope and checks no signature.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/20260101/{}/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
            aws::ACCESS_KEY_ID,
            aws::REGION
        );
        let response = self
            .http
            .post(&self.endpoint)
            .header("x-amz-target", format!("DynamoDBStreams_20120810.{action}"))
            .header("content-type", "application/x-amz-json-1.0")
            .header("authorization", authorization)
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("DynamoDB Streams {action}"))?;
        let status = response.status();
        let text = response.text().await?;
        ensure!(
            status.is_success(),
            "DynamoDB Streams {action}: {status} {text}"
        );
        Ok(serde_json::from_str(&text)?)
    }

    /// The ids of the stream's shards.
    pub async fn shard_ids(&self, stream_arn: &str) -> Result<Vec<String>> {
        let stream = self
            .call("DescribeStream", json!({ "StreamArn": stream_arn }))
            .await?;
        Ok(stream["StreamDescription"]["Shards"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|shard| shard["ShardId"].as_str().map(str::to_string))
            .collect())
    }

    /// An iterator at the oldest record of a shard.
    pub async fn oldest(&self, stream_arn: &str, shard_id: &str) -> Result<Option<String>> {
        let answer = self
            .call(
                "GetShardIterator",
                json!({ "StreamArn": stream_arn, "ShardId": shard_id,
                        "ShardIteratorType": "TRIM_HORIZON" }),
            )
            .await?;
        Ok(answer["ShardIterator"].as_str().map(str::to_string))
    }

    /// Up to `limit` records from `iterator`, in Lambda's shape, and the next iterator (`None` once
    /// a closed shard is read to its end).
    pub async fn records(
        &self,
        stream_arn: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let mut page = self
            .call(
                "GetRecords",
                json!({ "ShardIterator": iterator, "Limit": limit }),
            )
            .await?;
        let records = match page["Records"].take() {
            Value::Array(records) => records,
            _ => Vec::new(),
        };
        let records = records
            .into_iter()
            .map(|record| lambda_record(record, stream_arn))
            .collect();
        Ok((
            records,
            page["NextShardIterator"].as_str().map(str::to_string),
        ))
    }
}

/// A record as Lambda delivers it: with its stream's ARN, and the creation time in whole seconds.
fn lambda_record(mut record: Value, stream_arn: &str) -> Value {
    let created = &mut record["dynamodb"]["ApproximateCreationDateTime"];
    if let Some(seconds) = created.as_f64() {
        *created = json!(seconds.floor() as i64);
    }
    record["eventSourceARN"] = json!(stream_arn);
    record
}

/// The ARN of `table`'s latest stream.
pub async fn stream_arn(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Result<String> {
    let description = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(aws_sdk_dynamodb::Error::from)
        .with_context(|| format!("describing table {table}"))?;
    description
        .table()
        .and_then(|t| t.latest_stream_arn())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("table {table} has no stream"))
}

/// Every record the stream of `table` holds, oldest first per shard, in Lambda's event shape.
pub async fn stream_records(
    dynamodb: &aws_sdk_dynamodb::Client,
    streams: &Streams,
    table: &str,
) -> Result<Vec<Value>> {
    let stream_arn = stream_arn(dynamodb, table).await?;
    let mut out = Vec::new();
    for shard_id in streams.shard_ids(&stream_arn).await? {
        let mut iterator = streams.oldest(&stream_arn, &shard_id).await?;
        // An open shard hands out a next iterator forever; an empty page means we are at its end.
        while let Some(current) = iterator {
            let (records, next) = streams.records(&stream_arn, &current, 1000).await?;
            if records.is_empty() {
                break;
            }
            out.extend(records);
            iterator = next;
        }
    }
    Ok(out)
}

/// Wraps records as the event Lambda passes to a stream consumer.
pub fn stream_event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

// ---- Lambda's give-ups ---------------------------------------------------------------------

/// Why records were given up. The variants are named as Lambda's on-failure record names its
/// `condition`, which their `Debug` form prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    RetryAttemptsExhausted,
    RecordAgeExceeded,
}

/// A Lambda-shaped stream record's `SequenceNumber`.
pub fn sequence_number(record: &Value) -> &str {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .unwrap_or_default()
}

/// When DynamoDB wrote a Lambda-shaped stream record.
pub fn created_at(record: &Value) -> Option<SystemTime> {
    let seconds = record["dynamodb"]["ApproximateCreationDateTime"].as_f64()?;
    Some(UNIX_EPOCH + Duration::from_secs_f64(seconds))
}

/// The on-failure record Lambda sends for a DynamoDB stream batch it gave up on.
pub fn failure_record(
    records: &[Value],
    why: GiveUp,
    attempts: u32,
    shard_id: &str,
    stream_arn: &str,
    function_arn: &str,
) -> Value {
    let first = records.first();
    let last = records.last();
    let arrival = |r: Option<&Value>| {
        r.and_then(created_at)
            .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())
    };
    json!({
        "requestContext": {
            "requestId": uuid_like(),
            "functionArn": function_arn,
            "condition": format!("{why:?}"),
            "approximateInvokeCount": attempts,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": first.map(sequence_number),
            "endSequenceNumber": last.map(sequence_number),
            "approximateArrivalOfFirstRecord": arrival(first),
            "approximateArrivalOfLastRecord": arrival(last),
            "batchSize": records.len(),
            "streamArn": stream_arn,
        }
    })
}

/// A request id shaped like Lambda's (a UUID).
fn uuid_like() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    let parts = [
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..],
    ];
    parts.join("-")
}
