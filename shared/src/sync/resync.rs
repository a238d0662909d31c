//! Resync: brings one user's calendar up to date with the app's rows as they are NOW, whatever
//! the stream did or missed. It runs after every connect (backfill and the parked changes), for
//! every connected user in the daily sweep, and after the stream gave up on records.
//!
//! Two phases, each a walk over pages that a queued job can resume ([`UserResync`]):
//! - `states`: the user's sync states. A parked one, or one whose Google copy has no row any
//!   more (a REMOVE the stream never applied) or whose row now names another user, is applied
//!   from the current row (or deleted).
//! - `rows`: the user's rows (the Events table's `by_user` index). A row whose state is missing,
//!   parked, or holds another [`crate::mapping::fingerprint`] is applied; the rest is in sync
//!   and costs no Google call.
//!
//! Every write to the sync state is conditional on the state read before it, like the stream's.
//! When a stream record wins that race, Google may hold a copy the stored state does not know
//! of (a REMOVE deleted the event while the resync wrote it again); the resync then re-reads
//! the state and the row and applies them again from the copy it wrote, so it can neither
//! resurrect a deleted row nor undo a newer change.

use std::future::Future;

use serde::{Deserialize, Serialize};

use super::{SyncPorts, Syncer, Tokens, apply::Change, retry::Deadline};
use crate::{
    mapping::{fingerprint, placement},
    metrics::{self, Metric},
    sync_state::{Expected, Page, StateError, SyncState, SyncStateStore, SyncStatus},
    tokens::TokenProvider,
};

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("cannot read the sync states: {0}")]
    State(#[from] StateError),
    #[error("cannot read the Events table: {0}")]
    Events(String),
}

/// Reads the app's Events table ([`crate::store::DynamoEvents`]).
pub trait EventsSource: Send + Sync {
    /// The row of `event_id` now (read strongly consistent).
    fn current_row(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<serde_dynamo::Item>, ResyncError>> + Send;

    /// One page of a user's rows, as `(event_id, row)`, through the `by_user` index (eventually
    /// consistent: each is read again before it is applied).
    fn rows_of_user(
        &self,
        user_id: &str,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<(String, serde_dynamo::Item)>, ResyncError>> + Send;
}

/// Which walk a user's resync is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    States,
    Rows,
}

/// A user's resync, or where one stopped: what a queued job carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResync {
    pub user_id: String,
    pub phase: Phase,
    /// The page to start at (`None`: the phase's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl UserResync {
    pub fn from_start(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_string(),
            phase: Phase::States,
            cursor: None,
        }
    }
}

/// What a resync did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ResyncReport {
    /// Changes applied (synced, deleted, or marked invalid).
    pub applied: usize,
    /// Rows Google already holds as they are.
    pub in_sync: usize,
    /// Parked (the user's grant is unusable).
    pub still_parked: usize,
    /// Failed for now (Google or a store unavailable); the next resync tries again.
    pub failed: usize,
}

enum Outcome {
    Applied,
    Parked,
    Failed,
}

impl ResyncReport {
    /// Adds this report to the invocation's metrics.
    pub fn count_metrics(&self) {
        for (metric, value) in [
            (Metric::ResyncApplied, self.applied),
            (Metric::ResyncInSync, self.in_sync),
            (Metric::ResyncParked, self.still_parked),
            (Metric::ResyncFailed, self.failed),
        ] {
            if value > 0 {
                metrics::add(metric, value as f64);
            }
        }
    }

    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Parked => self.still_parked += 1,
            Outcome::Failed => self.failed += 1,
        }
    }
}

/// How often one event is re-applied after losing its state write to a stream record.
const RACE_ATTEMPTS: usize = 3;

/// `fresh` (the state stored now) corrected by what Google holds after our apply wrote `ours`:
/// if our write left a copy the stored state does not point at, the copy must be the one the
/// next apply works from, or nothing would ever delete it.
fn holding_our_copy(fresh: Option<SyncState>, ours: &SyncState) -> Option<SyncState> {
    let Some(our_copy) = ours.google_event_id.clone() else {
        return fresh;
    };
    let knows_it = fresh.as_ref().is_some_and(|f| {
        f.google_event_id.as_ref() == Some(&our_copy)
            && f.user_id == ours.user_id
            && f.calendar_id == ours.calendar_id
    });
    if knows_it {
        return fresh;
    }
    let mut merged = fresh.unwrap_or_else(|| ours.clone());
    merged.user_id = ours.user_id.clone();
    merged.calendar_id = ours.calendar_id.clone();
    merged.google_event_id = Some(our_copy);
    merged.status = SyncStatus::Synced;
    merged.fingerprint = None;
    Some(merged)
}

impl<P: SyncPorts> Syncer<P> {
    fn out_of_time(&self, deadline: Deadline) -> bool {
        tokio::time::Instant::now() + self.retry.safety_margin > deadline.0
    }

    /// Resyncs `job`'s user until done or out of time. Returns what it did and, when time ran
    /// out, where to resume (the page it stopped in is redone; what it applied is in sync then).
    pub async fn resync_user(
        &self,
        mut job: UserResync,
        deadline: Deadline,
    ) -> Result<(ResyncReport, Option<UserResync>), ResyncError> {
        let tokens = TokenProvider::new(&self.grants, &self.refresher);
        let mut report = ResyncReport::default();
        loop {
            if self.out_of_time(deadline) {
                return Ok((report, Some(job)));
            }
            let next = match job.phase {
                Phase::States => {
                    let page = self
                        .states
                        .of_user(&job.user_id, job.cursor.as_deref())
                        .await?;
                    for state in page.items {
                        if self.out_of_time(deadline) {
                            return Ok((report, Some(job)));
                        }
                        self.resync_state(&tokens, &job.user_id, state, &mut report, deadline)
                            .await?;
                    }
                    page.next
                }
                Phase::Rows => {
                    let page = self
                        .events
                        .rows_of_user(&job.user_id, job.cursor.as_deref())
                        .await?;
                    for (event_id, image) in page.items {
                        if self.out_of_time(deadline) {
                            return Ok((report, Some(job)));
                        }
                        self.resync_row(&tokens, &event_id, &image, &mut report, deadline)
                            .await?;
                    }
                    page.next
                }
            };
            match (next, job.phase) {
                (Some(cursor), _) => job.cursor = Some(cursor),
                (None, Phase::States) => {
                    job.phase = Phase::Rows;
                    job.cursor = None;
                }
                (None, Phase::Rows) => {
                    tracing::info!(user_id = job.user_id, ?report, "resync done");
                    return Ok((report, None));
                }
            }
        }
    }

    /// The states phase: only states whose row may be gone or elsewhere need a look here.
    async fn resync_state(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        state: SyncState,
        report: &mut ResyncReport,
        deadline: Deadline,
    ) -> Result<(), ResyncError> {
        if !state.status.is_parked() && state.google_event_id.is_none() {
            return Ok(());
        }
        if let Some(event_id) = state.leftover_of.clone() {
            return self
                .resync_leftover(tokens, &event_id, state, report, deadline)
                .await;
        }
        let row = self.events.current_row(&state.event_id).await?;
        let row_is_here = row
            .as_ref()
            .is_some_and(|image| placement(image).user_id.as_deref() == Some(user_id));
        if row_is_here && !state.status.is_parked() {
            return Ok(()); // the rows phase compares it
        }
        let event_id = state.event_id.clone();
        let outcome = self
            .resync_event(tokens, &event_id, Some(state), row, deadline)
            .await;
        report.count(outcome);
        Ok(())
    }

    /// A copy `event_id` left at this user's calendar when it moved away: deleted, unless the
    /// event has moved back there since (then the copy is the event's own again).
    async fn resync_leftover(
        &self,
        tokens: &Tokens<'_, P>,
        event_id: &str,
        leftover: SyncState,
        report: &mut ResyncReport,
        deadline: Deadline,
    ) -> Result<(), ResyncError> {
        let now = self.states.get(event_id).await?;
        let moved_back = now.is_some_and(|s| {
            s.status != SyncStatus::Deleted
                && s.user_id == leftover.user_id
                && s.calendar_id == leftover.calendar_id
        });
        if moved_back {
            let mut done = leftover.clone();
            done.status = SyncStatus::Deleted;
            done.google_event_id = None;
            done.last_error = None;
            done.updated_at = chrono::Utc::now();
            // Lost to a concurrent resync of the same leftover: it is handled either way.
            match self.states.put(&done, &Expected::of(Some(&leftover))).await {
                Ok(()) | Err(StateError::Conflict { .. }) => report.applied += 1,
                Err(error) => return Err(error.into()),
            }
            return Ok(());
        }
        let key = leftover.event_id.clone();
        let outcome = self
            .resync_event(tokens, &key, Some(leftover), None, deadline)
            .await;
        report.count(outcome);
        Ok(())
    }

    /// The rows phase: a row is applied unless its state says Google holds exactly it.
    async fn resync_row(
        &self,
        tokens: &Tokens<'_, P>,
        event_id: &str,
        listed: &serde_dynamo::Item,
        report: &mut ResyncReport,
        deadline: Deadline,
    ) -> Result<(), ResyncError> {
        let state = self.states.get(event_id).await?;
        let in_sync = state.as_ref().is_some_and(|s| {
            matches!(s.status, SyncStatus::Synced | SyncStatus::Invalid)
                && s.fingerprint.as_deref() == Some(fingerprint(listed).as_str())
        });
        if in_sync {
            report.in_sync += 1;
            return Ok(());
        }
        // The index lags the table: apply what the row says now.
        let row = self.events.current_row(event_id).await?;
        let outcome = self
            .resync_event(tokens, event_id, state, row, deadline)
            .await;
        report.count(outcome);
        Ok(())
    }

    /// Applies `row` (`None`: deleted) over `previous`, conditionally; after losing the state
    /// write to a stream record, again from what Google holds now.
    async fn resync_event(
        &self,
        tokens: &Tokens<'_, P>,
        event_id: &str,
        mut previous: Option<SyncState>,
        mut row: Option<serde_dynamo::Item>,
        deadline: Deadline,
    ) -> Outcome {
        for _ in 0..RACE_ATTEMPTS {
            let change = match &row {
                Some(image) => Change::Upsert {
                    image,
                    old_image: None,
                },
                None => Change::Remove { old_image: None },
            };
            let next = match self
                .apply(tokens, event_id, previous.as_ref(), change, deadline)
                .await
            {
                Ok(next) => next,
                Err(failure) => {
                    tracing::warn!(event_id, %failure, "resync could not apply the row now");
                    return Outcome::Failed;
                }
            };
            let expected = Expected::of(previous.as_ref());
            match self.states.put(&next, &expected).await {
                Ok(()) if next.status.is_parked() => return Outcome::Parked,
                Ok(()) => return Outcome::Applied,
                Err(StateError::Conflict { .. }) => {
                    tracing::info!(
                        event_id,
                        "a stream record changed the event during the resync; applying again"
                    );
                    let fresh = match self.states.get(event_id).await {
                        Ok(fresh) => fresh,
                        Err(error) => {
                            tracing::warn!(event_id, %error, "resync cannot re-read the state");
                            return Outcome::Failed;
                        }
                    };
                    row = match self.events.current_row(event_id).await {
                        Ok(row) => row,
                        Err(error) => {
                            tracing::warn!(event_id, %error, "resync cannot re-read the row");
                            return Outcome::Failed;
                        }
                    };
                    previous = holding_our_copy(fresh, &next);
                }
                Err(error) => {
                    tracing::warn!(event_id, %error, "resync could not record the state");
                    return Outcome::Failed;
                }
            }
        }
        tracing::warn!(
            event_id,
            "resync kept losing races on this event; the next resync retries it"
        );
        Outcome::Failed
    }
}
