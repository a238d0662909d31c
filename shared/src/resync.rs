//! Resync jobs: the durable work that brings users' calendars up to date off the request path.
//!
//! A job is an SQS message on the resync queue, consumed by the `resync` function:
//! - [`Job::User`]: resync one user ([`crate::sync::resync`]); queued by every connect, by the
//!   sweep, and by a job that ran out of time (carrying where it stopped).
//! - [`Job::Sweep`]: queue a user job for every active grant, a page at a time; started by the
//!   daily schedule and whenever Lambda gave up on stream records that cannot be read again
//!   ([`redrive`] queues the named users' jobs instead while the range is in the stream's
//!   retention), continued by itself when it runs out of time.
//!
//! Every job is idempotent (a resync skips what Google already holds), so SQS's at-least-once
//! delivery, a crash halfway and a redelivery are all harmless. A job that keeps failing lands in
//! the dead-letter queue after the queue's receive limit, and the next sweep covers its user.

pub mod handler;

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{sync::resync::UserResync, sync_state::StateError};

/// One message of the resync queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Job {
    User(UserResync),
    Sweep {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
}

impl Job {
    pub fn user(user_id: &str) -> Self {
        Job::User(UserResync::from_start(user_id))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot queue resync jobs: {0}")]
pub struct QueueError(pub String);

/// Where jobs go ([`crate::store::SqsJobQueue`]).
pub trait JobQueue: Send + Sync {
    fn send(&self, jobs: &[Job]) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// When the latest sweep started that has queued every connected user (its continuation, if it
/// ran short of time, durably on the queue). A sweep reads every user's rows after it starts, so
/// it covers every change written to the Events table before then: the on-failure queue's
/// records of batches that arrived in the stream before it need no sweep of their own
/// ([`crate::store::DynamoSyncStateStore`] keeps it on one item of the sync-state table).
pub trait SweepLog: Send + Sync {
    fn last_started(
        &self,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, StateError>> + Send;

    /// Records a sweep that started at `at`, unless a later one is recorded already.
    fn record(&self, at: DateTime<Utc>) -> impl Future<Output = Result<(), StateError>> + Send;
}

/// How many times a connect tries to queue its user's resync.
const QUEUE_ATTEMPTS: usize = 3;

/// The callback's [`crate::http::AfterConnect`]: queues the user's resync (the backfill of every
/// row and the parked changes) and returns, so the browser gets its answer at once.
pub struct ResyncOnConnect<Q: JobQueue>(pub Q);

impl<Q: JobQueue> crate::http::AfterConnect for ResyncOnConnect<Q> {
    async fn connected(&self, user_id: &str) {
        let job = [Job::user(user_id)];
        for attempt in 1..=QUEUE_ATTEMPTS {
            match self.0.send(&job).await {
                Ok(()) => return,
                Err(error) if attempt == QUEUE_ATTEMPTS => tracing::error!(
                    user_id,
                    %error,
                    "the resync after connect is not queued; the daily sweep will bring this user's calendar up to date"
                ),
                Err(error) => {
                    tracing::warn!(user_id, %error, attempt, "queueing the resync failed; trying again")
                }
            }
        }
    }
}

/// The range of one shard of the Events stream that Lambda gave up on (its on-failure record's
/// `DDBStreamBatchInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRange {
    pub stream_arn: String,
    pub shard_id: String,
    pub start: String,
    pub end: String,
}

impl ShardRange {
    /// The range a failure record names, if it names one whole.
    pub fn from_batch(batch: &serde_json::Value) -> Option<Self> {
        let text = |key: &str| batch[key].as_str().map(str::to_string);
        Some(Self {
            stream_arn: text("streamArn")?,
            shard_id: text("shardId")?,
            start: text("startSequenceNumber")?,
            end: text("endSequenceNumber")?,
        })
    }

    /// Whether the range is on a stream of `table` (`arn:…:table/<table>/stream/<label>`).
    pub fn is_on_table(&self, table: &str) -> bool {
        self.stream_arn
            .split_once(":table/")
            .and_then(|(_, rest)| rest.split_once("/stream/"))
            .is_some_and(|(name, label)| name == table && !label.is_empty())
    }
}

/// Whether sequence number `a` comes after `b` in a shard (decimal strings of any length).
pub fn sequence_after(a: &str, b: &str) -> bool {
    (a.len(), a) > (b.len(), b)
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the stream range: {0}")]
pub struct RangeError(pub String);

/// Reads a range of the Events stream again while it is in the stream's 24 h retention
/// ([`crate::store::DynamoStreamRange`]).
pub trait StreamRange: Send + Sync {
    /// Every user a record of the range names in its new or old image, each once, in order.
    fn users_in(
        &self,
        range: &ShardRange,
    ) -> impl Future<Output = Result<Vec<String>, RangeError>> + Send;
}

/// What the resync did with a failure record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    /// The range was read again and a job queued for each of its users.
    Queued(usize),
    /// The range cannot be read (or is not the Events stream's): a sweep covers it.
    Sweep,
}

/// Re-reads the range a failure record names and queues a user job for each user it names. A
/// range that cannot be read is the sweep's; a queue that refuses the jobs is an error (SQS
/// delivers the record again).
pub async fn redrive(
    ranges: &impl StreamRange,
    queue: &impl JobQueue,
    events_table: &str,
    batch: &serde_json::Value,
) -> Result<Redrive, QueueError> {
    let Some(range) = ShardRange::from_batch(batch) else {
        tracing::warn!(%batch, "the failure record names no whole stream range; sweeping");
        return Ok(Redrive::Sweep);
    };
    if !range.is_on_table(events_table) {
        tracing::error!(
            stream_arn = range.stream_arn,
            events_table,
            "the failure record names a stream other than the Events table's; not reading it, sweeping"
        );
        return Ok(Redrive::Sweep);
    }
    let users = match ranges.users_in(&range).await {
        Ok(users) => users,
        Err(error) => {
            tracing::warn!(?range, %error, "the stream range cannot be read again; sweeping");
            return Ok(Redrive::Sweep);
        }
    };
    let jobs: Vec<Job> = users.iter().map(|user| Job::user(user)).collect();
    for chunk in jobs.chunks(handler::SEND_BATCH) {
        queue.send(chunk).await?;
        crate::metrics::add(
            crate::metrics::Metric::RedriveUsersQueued,
            chunk.len() as f64,
        );
    }
    tracing::info!(
        ?range,
        users = jobs.len(),
        "the stream range read again; its users' resyncs queued"
    );
    Ok(Redrive::Queued(jobs.len()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{InMemoryJobQueue, InMemoryStreamRange};

    const ARN: &str =
        "arn:aws:dynamodb:eu-west-1:123456789012:table/Events/stream/2026-12-01T00:00:00.000";

    fn batch(arn: &str) -> serde_json::Value {
        json!({"shardId": "shardId-1", "startSequenceNumber": "100", "endSequenceNumber": "900",
               "streamArn": arn, "batchSize": 3,
               "approximateArrivalOfLastRecord": "2026-12-01T10:00:00Z"})
    }

    fn users(jobs: Vec<Job>) -> Vec<String> {
        jobs.into_iter()
            .map(|job| match job {
                Job::User(user) => user.user_id,
                other => panic!("not a user job: {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_readable_range_queues_only_the_users_it_names() {
        let ranges = InMemoryStreamRange::new();
        ranges.put(ARN, "shardId-1", "050", &["outside"]);
        ranges.put(ARN, "shardId-1", "100", &["u1"]);
        ranges.put(ARN, "shardId-1", "500", &["u2", "u1"]);
        ranges.put(ARN, "shardId-1", "900", &["u3"]);
        ranges.put(ARN, "shardId-1", "1000", &["after"]);
        ranges.put(ARN, "shardId-2", "500", &["other shard"]);
        let queue = InMemoryJobQueue::new();
        let done = redrive(&ranges, &queue, "Events", &batch(ARN))
            .await
            .unwrap();
        assert_eq!(done, Redrive::Queued(3));
        assert_eq!(users(queue.take()), ["u1", "u2", "u3"]);
    }

    #[tokio::test]
    async fn an_unreadable_range_or_another_stream_is_swept() {
        let ranges = InMemoryStreamRange::new();
        ranges.put(ARN, "shardId-1", "500", &["u1"]);
        ranges.trim();
        let queue = InMemoryJobQueue::new();
        let done = redrive(&ranges, &queue, "Events", &batch(ARN))
            .await
            .unwrap();
        assert_eq!(done, Redrive::Sweep);

        let readable = InMemoryStreamRange::new();
        let other = ARN.replace("table/Events/", "table/Other/");
        readable.put(&other, "shardId-1", "500", &["u1"]);
        let done = redrive(&readable, &queue, "Events", &batch(&other))
            .await
            .unwrap();
        assert_eq!(done, Redrive::Sweep);
        let done = redrive(&readable, &queue, "Events", &json!({"shardId": "x"}))
            .await
            .unwrap();
        assert_eq!(done, Redrive::Sweep);
        assert!(queue.take().is_empty());
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert!(sequence_after("1000", "999"));
        assert!(!sequence_after("999", "1000"));
        assert!(!sequence_after("500", "500"));
    }
}
