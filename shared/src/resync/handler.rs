//! The resync Lambda entry point: SQS messages (jobs, and the stream's on-failure records) or the
//! daily schedule's input in; `batchItemFailures` out.

use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use lambda_runtime::{Error, LambdaEvent};
use serde::Deserialize;

use super::{Job, JobQueue, Redrive, StreamRange, SweepLog};
use crate::{
    aws::Clients,
    calendar,
    config::Config,
    grants::GrantStore,
    metrics::{self, Metric},
    store::{DynamoGrantStore, DynamoStreamRange, DynamoSyncStateStore, SqsJobQueue, Stores},
    sync::{
        SyncPorts, Syncer, handler::Production as SyncProduction, keep_alive::KeepAlive,
        pacing::PacingLimits, resync::Phase, retry::Deadline,
    },
};

/// Time assumed left when the context carries no deadline (hand-made events).
const NO_DEADLINE_FALLBACK: Duration = Duration::from_secs(60);

/// User jobs a sweep queues per SQS call (SQS's batch limit).
pub(crate) const SEND_BATCH: usize = 10;

/// What the function is invoked with.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ResyncEvent {
    /// The schedule's constant input, `{"sweep": {}}`.
    Schedule { sweep: serde_json::Value },
    /// The resync queue's jobs, or the stream's on-failure records.
    Queue(SqsEvent),
}

/// The part of Lambda's on-failure record for a stream batch that says what it is.
#[derive(Debug, Deserialize)]
struct StreamFailure {
    #[serde(rename = "DDBStreamBatchInfo")]
    batch: serde_json::Value,
}

/// The ports a resync talks to: the sync's, the grants (for the sweep), the queue, and the
/// Events stream (to read again a range Lambda gave up on).
pub trait ResyncPorts {
    type Sync: SyncPorts;
    type Grants: GrantStore;
    type Queue: JobQueue;
    type Sweeps: SweepLog;
    type Ranges: StreamRange;
}

pub struct ResyncDeps<P: ResyncPorts> {
    pub syncer: Syncer<P::Sync>,
    pub grants: P::Grants,
    pub queue: P::Queue,
    pub sweeps: P::Sweeps,
    pub ranges: P::Ranges,
    /// The Events table: a failure record naming another table's stream is not read.
    pub events_table: String,
    /// A grant idle this long is refreshed by its user's resync (`KEEPALIVE_DAYS`).
    pub keep_alive_after: chrono::Duration,
}

/// The production ports. Never built: it only names types.
pub enum Production {}

impl ResyncPorts for Production {
    type Sync = SyncProduction;
    type Grants = DynamoGrantStore;
    type Queue = SqsJobQueue;
    type Sweeps = DynamoSyncStateStore;
    type Ranges = DynamoStreamRange;
}

impl ResyncDeps<Production> {
    /// A cold start: [`Self::from_config`], and both secrets read during init (see
    /// [`crate::secrets::SecretsCache::read_at_init`]).
    pub async fn cold_start(
        config: &Config,
        clients: &Clients,
    ) -> Result<Self, crate::secrets::SecretsError> {
        let deps = Self::from_config(config, clients);
        deps.syncer.refresher.secrets().read_at_init().await?;
        Ok(deps)
    }

    /// Builds the clients once per cold start, over one secrets cache.
    pub fn from_config(config: &Config, clients: &Clients) -> Self {
        let stores = Stores::new(config, clients);
        Self {
            syncer: Syncer::over(
                config,
                clients,
                &stores,
                calendar::DEFAULT_TIMEOUT,
                PacingLimits::RESYNC,
            ),
            grants: stores.grants(),
            queue: SqsJobQueue::new(clients.sqs.clone(), config.resync_queue_url.clone()),
            sweeps: stores.sync_state(),
            ranges: DynamoStreamRange::new(clients.dynamodb_streams.clone()),
            events_table: config.tables.events.clone(),
            keep_alive_after: chrono::Duration::days(config.keepalive_days as i64),
        }
    }
}

/// Why a message was not done; it stays on the queue (and reaches the dead-letter queue after the
/// queue's receive limit).
#[derive(Debug, thiserror::Error)]
enum MessageError {
    #[error("the message is neither a resync job nor a stream failure record: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Resync(#[from] crate::sync::resync::ResyncError),
    #[error(transparent)]
    Queue(#[from] super::QueueError),
    #[error("cannot list the grants: {0}")]
    Grants(#[from] crate::grants::GrantError),
}

/// Runs the invocation. Never fails as a whole: a message that must be retried is named in
/// `batchItemFailures`.
pub async fn handle<P: ResyncPorts>(
    deps: &ResyncDeps<P>,
    event: LambdaEvent<ResyncEvent>,
) -> Result<SqsBatchResponse, Error> {
    // Boxed like the user resync below: the future nests every layer of the sync.
    metrics::scope("resync", Box::pin(handle_event(deps, event))).await
}

async fn handle_event<P: ResyncPorts>(
    deps: &ResyncDeps<P>,
    event: LambdaEvent<ResyncEvent>,
) -> Result<SqsBatchResponse, Error> {
    let deadline = Deadline::from_lambda_ms(event.context.deadline, NO_DEADLINE_FALLBACK);
    let mut response = SqsBatchResponse::default();
    match event.payload {
        ResyncEvent::Schedule { .. } => {
            tracing::info!("scheduled sweep");
            deps.sweep_now(deadline).await?;
        }
        ResyncEvent::Queue(sqs) => {
            let mut fail = |id: &str, error: &dyn std::fmt::Display| {
                tracing::error!(message_id = id, %error, "resync message failed; SQS delivers it again");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.to_string();
                response.batch_item_failures.push(failure);
            };
            // A failure record's range still in the stream's retention is read again and its
            // users' resyncs queued. The others arriving together start one sweep between them,
            // and none if a sweep started since their batches arrived.
            let (mut gave_up, mut arrivals) = (Vec::new(), Vec::new());
            for message in &sqs.records {
                let id = message.message_id.as_deref().unwrap_or_default();
                match Message::read(message) {
                    Ok(Message::Job(job)) => {
                        if let Err(error) = deps.run(job, deadline).await {
                            fail(id, &error);
                        }
                    }
                    Ok(Message::StreamFailure(batch)) => {
                        tracing::warn!(%batch, "the stream gave up on records");
                        match super::redrive(&deps.ranges, &deps.queue, &deps.events_table, &batch)
                            .await
                        {
                            Ok(Redrive::Queued(_)) => {}
                            Ok(Redrive::Sweep) => {
                                gave_up.push(id);
                                arrivals.push(last_arrival(&batch));
                            }
                            Err(error) => fail(id, &error),
                        }
                    }
                    Err(error) => fail(id, &error),
                }
            }
            if !gave_up.is_empty() && deps.swept_since(&arrivals).await {
                tracing::info!(
                    records = gave_up.len(),
                    "a sweep started after these batches arrived covers them; no new sweep"
                );
                metrics::count(Metric::SweepsCovered);
            } else if !gave_up.is_empty() {
                // Whatever those records changed is healed by resyncing every connected user
                // from the current rows.
                if let Err(error) = deps.sweep_now(deadline).await {
                    gave_up.iter().for_each(|id| fail(id, &error));
                }
            }
        }
    }
    Ok(response)
}

/// A message of either queue the function consumes.
enum Message {
    Job(Job),
    /// Lambda's on-failure record of a stream batch (its `DDBStreamBatchInfo`).
    StreamFailure(serde_json::Value),
}

impl Message {
    fn read(message: &SqsMessage) -> Result<Self, MessageError> {
        let body = message.body.as_deref().unwrap_or_default();
        if let Ok(job) = serde_json::from_str::<Job>(body) {
            return Ok(Message::Job(job));
        }
        serde_json::from_str::<StreamFailure>(body)
            .map(|failure| Message::StreamFailure(failure.batch))
            .map_err(|e| MessageError::Unreadable(e.to_string()))
    }
}

/// When the last record of a failed batch reached the stream (Lambda's
/// `approximateArrivalOfLastRecord`), if the failure record says.
fn last_arrival(batch: &serde_json::Value) -> Option<DateTime<Utc>> {
    let text = batch["approximateArrivalOfLastRecord"].as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl<P: ResyncPorts> ResyncDeps<P> {
    /// Starts a sweep, and records it once every user is queued or the rest durably continued.
    async fn sweep_now(&self, deadline: Deadline) -> Result<(), MessageError> {
        let started = Utc::now();
        self.run(Job::Sweep { cursor: None }, deadline).await?;
        if let Err(error) = self.sweeps.record(started).await {
            tracing::warn!(%error, "cannot record the sweep; a failure record arriving later may start another");
        }
        Ok(())
    }

    /// Whether a recorded sweep started after the last record of every one of these failed
    /// batches arrived (a batch whose arrival is unknown needs a sweep). The stream's arrival
    /// times are rounded down to the second, hence the second added.
    async fn swept_since(&self, arrivals: &[Option<DateTime<Utc>>]) -> bool {
        let Some(latest) = arrivals.iter().copied().collect::<Option<Vec<_>>>() else {
            return false;
        };
        let Some(latest) = latest.into_iter().max() else {
            return false;
        };
        match self.sweeps.last_started().await {
            Ok(started) => started.is_some_and(|s| latest + chrono::Duration::seconds(1) <= s),
            Err(error) => {
                tracing::warn!(%error, "cannot read when the last sweep started; sweeping");
                false
            }
        }
    }

    /// Runs a job until done or out of time; then queues its continuation.
    async fn run(&self, job: Job, deadline: Deadline) -> Result<(), MessageError> {
        let rest = match job {
            Job::User(user) => {
                if user.phase == Phase::States && user.cursor.is_none() {
                    // Once per user resync, before its changes: the sweep that resyncs every
                    // connected user daily is also what keeps their grants alive and re-sealed.
                    let kept = self
                        .syncer
                        .keep_alive(&user.user_id, self.keep_alive_after)
                        .await;
                    tracing::info!(user_id = user.user_id, keep_alive = ?kept, "keep-alive");
                    match kept {
                        KeepAlive::Refreshed => metrics::count(Metric::KeepAliveRefreshed),
                        KeepAlive::Refused => metrics::count(Metric::KeepAliveRefused),
                        KeepAlive::NotDue | KeepAlive::Inactive | KeepAlive::Failed(_) => {}
                    }
                    match self.grants.reseal(&user.user_id).await {
                        Ok(true) => {
                            metrics::count(Metric::GrantsResealed);
                            tracing::info!(
                                user_id = user.user_id,
                                "grant re-sealed under the current key"
                            )
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(user_id = user.user_id, %error, "cannot re-seal the grant now; the next sweep tries again")
                        }
                    }
                }
                // Boxed: the resync's future nests every layer of the sync inside it, deeper than
                // the compiler lays out by default when the binary's main awaits it.
                let (report, rest) = Box::pin(self.syncer.resync_user(user, deadline)).await?;
                tracing::info!(?report, more = rest.is_some(), "user resync");
                report.count_metrics();
                if rest.is_some() {
                    metrics::count(Metric::ResyncContinued);
                }
                rest.map(Job::User)
            }
            Job::Sweep { cursor } => self.sweep(cursor, deadline).await?,
        };
        if let Some(rest) = rest {
            self.queue.send(&[rest]).await?;
        }
        Ok(())
    }

    /// Queues a user job per active grant, from `cursor` on; returns the continuation when time
    /// runs out. A page is queued whole before the cursor moves, so a crash only queues some
    /// users twice, which costs reads and no Google calls.
    async fn sweep(
        &self,
        mut cursor: Option<String>,
        deadline: Deadline,
    ) -> Result<Option<Job>, MessageError> {
        let mut queued = 0usize;
        loop {
            if tokio::time::Instant::now() + self.syncer.retry.safety_margin > deadline.0 {
                tracing::info!(queued, "sweep continues in another invocation");
                return Ok(Some(Job::Sweep { cursor }));
            }
            let page = self.grants.active_users(cursor.as_deref()).await?;
            let jobs: Vec<Job> = page.items.iter().map(|user| Job::user(user)).collect();
            for chunk in jobs.chunks(SEND_BATCH) {
                self.queue.send(chunk).await?;
                metrics::add(Metric::SweepUsersQueued, chunk.len() as f64);
            }
            queued += jobs.len();
            match page.next {
                Some(next) => cursor = Some(next),
                None => {
                    tracing::info!(queued, "sweep queued every connected user");
                    return Ok(None);
                }
            }
        }
    }
}
