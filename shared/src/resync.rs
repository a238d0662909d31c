//! Resync jobs: the durable work that brings users' calendars up to date off the request path.
//!
//! A job is an SQS message on the resync queue, consumed by the `resync` function:
//! - [`Job::User`]: resync one user ([`crate::sync::resync`]); queued by every connect, by the
//!   sweep, and by a job that ran out of time (carrying where it stopped).
//! - [`Job::Sweep`]: queue a user job for every active grant, a page at a time; started by the
//!   daily schedule and whenever Lambda gave up on stream records (the on-failure queue's
//!   messages), continued by itself when it runs out of time.
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
