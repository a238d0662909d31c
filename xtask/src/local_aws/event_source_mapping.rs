//! The local stream poller: what Lambda's event source mapping does for event-sync in AWS.
//!
//! It reads the Events table's DynamoDB stream on moto's server, one shard iterator per shard, and
//! invokes event-sync (under the Runtime Interface Emulator) with batches shaped exactly like
//! Lambda's DynamoDB events, honouring the template's mapping settings:
//! - `BatchSize`;
//! - `ReportBatchItemFailures`: the checkpoint moves to just before the lowest failed sequence
//!   number, and the batch is retried from there;
//! - `BisectBatchOnFunctionError`: a function error splits the batch in two halves, retried in order;
//! - `MaximumRetryAttempts` and `MaximumRecordAgeInSeconds`: past them the records are given up and
//!   described on the on-failure destination with the metadata Lambda sends (an SQS queue in moto).
//!
//! The delivery logic ([`deliver`]) is separate from the stream reading so it can be tested with a
//! scripted function.

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use serde_json::{Value, json};
pub use testkit::streams::{GiveUp, created_at, failure_record, sequence_number};

/// The event source mapping settings of the template.
#[derive(Debug, Clone)]
pub struct MappingSettings {
    pub batch_size: usize,
    pub maximum_retry_attempts: u32,
    pub maximum_record_age: Duration,
    pub bisect_on_function_error: bool,
}

impl MappingSettings {
    /// Reads the settings of the template's DynamoDB event (its `Properties`); absent ones keep
    /// Lambda's defaults.
    pub fn from_template_properties(properties: &Value) -> Self {
        let defaults = Self::default();
        let number = |name: &str| properties.get(name).and_then(Value::as_u64);
        Self {
            batch_size: number("BatchSize").map_or(defaults.batch_size, |n| n as usize),
            maximum_retry_attempts: number("MaximumRetryAttempts")
                .map_or(defaults.maximum_retry_attempts, |n| n as u32),
            maximum_record_age: number("MaximumRecordAgeInSeconds")
                .map_or(defaults.maximum_record_age, Duration::from_secs),
            bisect_on_function_error: properties
                .get("BisectBatchOnFunctionError")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

impl Default for MappingSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            maximum_retry_attempts: 5,
            maximum_record_age: Duration::from_secs(3600),
            bisect_on_function_error: true,
        }
    }
}

/// What one invocation of the function answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// The function returned; these sequence numbers were reported in `batchItemFailures`.
    Returned { failed: Vec<String> },
    /// The function raised an error (or its answer was not a batch response).
    FunctionError(String),
}

impl Invocation {
    /// Reads a Lambda answer as the event source mapping does.
    pub fn from_answer(answer: &Value) -> Self {
        if let Some(kind) = answer.get("errorType").and_then(Value::as_str) {
            return Self::FunctionError(kind.to_string());
        }
        let mut failed = Vec::new();
        for item in answer
            .get("batchItemFailures")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match item.get("itemIdentifier").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => failed.push(id.to_string()),
                // Lambda treats an empty or missing identifier as a failure of the whole batch.
                _ => return Self::FunctionError("InvalidBatchItemFailure".into()),
            }
        }
        Self::Returned { failed }
    }
}

/// The function side and the failure destination of [`deliver`].
pub trait Target {
    fn invoke(&self, event: Value) -> impl Future<Output = Result<Invocation>> + Send;
    fn give_up(
        &self,
        records: &[Value],
        why: GiveUp,
        attempts: u32,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Delivers one batch (records of one shard, in order) until every record is either processed or
/// given up. Returns the number of invocations made.
pub async fn deliver(
    target: &impl Target,
    settings: &MappingSettings,
    batch: Vec<Value>,
    now: impl Fn() -> SystemTime,
) -> Result<u32> {
    let mut invocations = 0;
    // A stack of (segment, retries so far); bisection pushes the second half first so the
    // first half is delivered first, as stream order wants.
    let mut work = vec![(batch, 0u32)];
    while let Some((segment, retries)) = work.pop() {
        let now = now();
        let (expired, segment): (Vec<Value>, Vec<Value>) =
            segment.into_iter().partition(|record| {
                created_at(record).is_some_and(|at| {
                    now.duration_since(at).unwrap_or_default() > settings.maximum_record_age
                })
            });
        if !expired.is_empty() {
            target
                .give_up(&expired, GiveUp::RecordAgeExceeded, retries)
                .await?;
        }
        if segment.is_empty() {
            continue;
        }
        invocations += 1;
        let outcome = target.invoke(json!({ "Records": segment })).await?;
        let retry_from = match outcome {
            Invocation::Returned { failed } if failed.is_empty() => continue,
            Invocation::Returned { failed } => {
                // Retry from the earliest failed record; everything before it is checkpointed.
                // Identifiers naming no record of the batch fail the whole batch (None).
                segment
                    .iter()
                    .position(|r| failed.iter().any(|f| f == sequence_number(r)))
            }
            Invocation::FunctionError(_) => None,
        };
        if retries >= settings.maximum_retry_attempts {
            let rest = &segment[retry_from.unwrap_or(0)..];
            target
                .give_up(rest, GiveUp::RetryAttemptsExhausted, retries + 1)
                .await?;
            continue;
        }
        match retry_from {
            Some(position) => work.push((segment[position..].to_vec(), retries + 1)),
            None if settings.bisect_on_function_error && segment.len() > 1 => {
                let mut first = segment;
                let second = first.split_off(first.len() / 2);
                work.push((second, retries + 1));
                work.push((first, retries + 1));
            }
            None => work.push((segment, retries + 1)),
        }
    }
    Ok(invocations)
}

/// Invokes a function under the RIE and sends give-ups to an SQS queue.
pub struct RieTarget {
    pub http: reqwest::Client,
    pub invoke_url: String,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub shard_id: String,
    pub stream_arn: String,
    pub function_arn: String,
}

impl Target for RieTarget {
    async fn invoke(&self, event: Value) -> Result<Invocation> {
        let answer: Value = self
            .http
            .post(&self.invoke_url)
            .json(&event)
            .send()
            .await
            .context("invoking event-sync under the RIE")?
            .json()
            .await
            .context("reading event-sync's answer")?;
        Ok(Invocation::from_answer(&answer))
    }

    async fn give_up(&self, records: &[Value], why: GiveUp, attempts: u32) -> Result<()> {
        let message = failure_record(
            records,
            why,
            attempts,
            &self.shard_id,
            &self.stream_arn,
            &self.function_arn,
        );
        eprintln!(
            "poller: gave up {} record(s) ({why:?}), sent to the on-failure queue",
            records.len()
        );
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(message.to_string())
            .send()
            .await
            .context("sending to the on-failure queue")?;
        Ok(())
    }
}

/// Where to poll from and what to invoke.
pub struct Poller {
    pub streams: testkit::streams::Streams,
    pub settings: MappingSettings,
    /// Its `shard_id` is set to the shard each batch comes from.
    pub target: RieTarget,
    pub idle_wait: Duration,
}

impl Poller {
    /// Polls every shard of the stream forever, each from its oldest record, in order.
    pub async fn run(mut self) -> Result<()> {
        let stream_arn = self.target.stream_arn.clone();
        let mut iterators: HashMap<String, Option<String>> = HashMap::new();
        loop {
            for shard_id in self.streams.shard_ids(&stream_arn).await? {
                if let Entry::Vacant(new_shard) = iterators.entry(shard_id) {
                    let iterator = self.streams.oldest(&stream_arn, new_shard.key()).await?;
                    new_shard.insert(iterator);
                }
            }
            let mut delivered = 0;
            for (shard_id, iterator) in iterators.iter_mut() {
                let Some(current) = iterator.clone() else {
                    continue; // closed shard, fully read
                };
                let (records, next) = self
                    .streams
                    .records(&stream_arn, &current, self.settings.batch_size)
                    .await
                    .context("reading the Events stream")?;
                *iterator = next;
                if records.is_empty() {
                    continue;
                }
                delivered += records.len();
                self.target.shard_id.clone_from(shard_id);
                deliver(&self.target, &self.settings, records, SystemTime::now).await?;
            }
            if delivered == 0 {
                tokio::time::sleep(self.idle_wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::UNIX_EPOCH};

    use super::*;

    /// A scripted function: answers in order, recording every batch it was given.
    struct Scripted {
        answers: Mutex<Vec<Invocation>>,
        seen: Mutex<Vec<Vec<String>>>,
        given_up: Mutex<Vec<(Vec<String>, GiveUp)>>,
    }

    impl Scripted {
        fn new(answers: Vec<Invocation>) -> Self {
            Self {
                answers: Mutex::new(answers.into_iter().rev().collect()),
                seen: Mutex::default(),
                given_up: Mutex::default(),
            }
        }
    }

    fn seqs(records: &[Value]) -> Vec<String> {
        records
            .iter()
            .map(|r| sequence_number(r).to_string())
            .collect()
    }

    impl Target for Scripted {
        async fn invoke(&self, event: Value) -> Result<Invocation> {
            let records = event["Records"].as_array().unwrap().clone();
            self.seen.lock().unwrap().push(seqs(&records));
            Ok(self
                .answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(Invocation::Returned { failed: vec![] }))
        }
        async fn give_up(&self, records: &[Value], why: GiveUp, _: u32) -> Result<()> {
            self.given_up.lock().unwrap().push((seqs(records), why));
            Ok(())
        }
    }

    fn batch(n: u32, created: u64) -> Vec<Value> {
        (1..=n)
            .map(|i| {
                json!({"dynamodb": {"SequenceNumber": format!("{}", 100 + i),
                                    "ApproximateCreationDateTime": created as f64}})
            })
            .collect()
    }

    const NOW: u64 = 1_800_000_000;
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[tokio::test]
    async fn partial_failure_retries_from_the_lowest_failed_record() {
        let target = Scripted::new(vec![Invocation::Returned {
            failed: vec!["104".into(), "103".into()],
        }]);
        let n = deliver(&target, &MappingSettings::default(), batch(5, NOW), now)
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(target.seen.lock().unwrap()[1], vec!["103", "104", "105"]);
        assert!(target.given_up.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn function_error_bisects_in_order() {
        let target = Scripted::new(vec![Invocation::FunctionError("Unhandled".into())]);
        deliver(&target, &MappingSettings::default(), batch(4, NOW), now)
            .await
            .unwrap();
        let seen = target.seen.lock().unwrap();
        assert_eq!(seen[1], vec!["101", "102"]);
        assert_eq!(seen[2], vec!["103", "104"]);
    }

    #[tokio::test]
    async fn exhausted_retries_go_to_the_failure_destination() {
        let settings = MappingSettings {
            maximum_retry_attempts: 2,
            bisect_on_function_error: false,
            ..Default::default()
        };
        let always = Invocation::Returned {
            failed: vec!["102".into()],
        };
        let target = Scripted::new(vec![always.clone(), always.clone(), always]);
        let n = deliver(&target, &settings, batch(3, NOW), now)
            .await
            .unwrap();
        assert_eq!(n, 3, "one try and two retries");
        assert_eq!(
            *target.given_up.lock().unwrap(),
            vec![(
                vec!["102".to_string(), "103".to_string()],
                GiveUp::RetryAttemptsExhausted
            )]
        );
    }

    #[tokio::test]
    async fn records_past_the_maximum_age_are_not_delivered() {
        let target = Scripted::new(vec![]);
        let mut records = batch(1, NOW - 7200);
        records.extend(batch(1, NOW).into_iter().map(|mut r| {
            r["dynamodb"]["SequenceNumber"] = json!("200");
            r
        }));
        deliver(&target, &MappingSettings::default(), records, now)
            .await
            .unwrap();
        assert_eq!(*target.seen.lock().unwrap(), vec![vec!["200".to_string()]]);
        assert_eq!(
            target.given_up.lock().unwrap()[0].1,
            GiveUp::RecordAgeExceeded
        );
    }

    #[test]
    fn an_empty_item_identifier_fails_the_whole_batch() {
        let answer = json!({"batchItemFailures": [{"itemIdentifier": ""}]});
        assert!(matches!(
            Invocation::from_answer(&answer),
            Invocation::FunctionError(_)
        ));
    }

    #[test]
    fn failure_record_names_the_batch() {
        let records = batch(2, NOW);
        let record = failure_record(
            &records,
            GiveUp::RetryAttemptsExhausted,
            6,
            "shard-1",
            "arn:stream",
            "arn:function",
        );
        assert_eq!(record["DDBStreamBatchInfo"]["startSequenceNumber"], "101");
        assert_eq!(record["DDBStreamBatchInfo"]["endSequenceNumber"], "102");
        assert_eq!(record["DDBStreamBatchInfo"]["batchSize"], 2);
        assert_eq!(
            record["requestContext"]["condition"],
            "RetryAttemptsExhausted"
        );
    }
}
