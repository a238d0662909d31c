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

use std::{collections::BTreeSet, future::Future, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    SyncPorts, Syncer, Tokens,
    apply::{Change, Refusal},
    retry::Deadline,
};
use crate::{
    mapping::{
        DEFAULT_CALENDAR_ID, EVENT_ID_PROPERTY, EventRow, fingerprint, google_copy_differs,
        google_event_id, placement,
    },
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
    /// Reconciliation against Google: calsync's events listed in each calendar the user's states
    /// and rows name, orphans deleted, copies deleted or changed in Google written again.
    Google,
}

/// A user's resync, or where one stopped: what a queued job carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResync {
    pub user_id: String,
    pub phase: Phase,
    /// The page to start at (`None`: the phase's first); in the `google` phase, Google's page
    /// token in the first of `calendars`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The calendars the states and rows phases met (and `primary`): the `google` phase lists
    /// each, the first one now.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub calendars: BTreeSet<String>,
}

impl UserResync {
    pub fn from_start(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_string(),
            phase: Phase::States,
            cursor: None,
            calendars: BTreeSet::new(),
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
    /// Copies in Google whose row is gone or elsewhere, deleted by the reconciliation.
    pub orphans_deleted: usize,
    /// Copies deleted or changed in Google while their state said synced, written again.
    pub restored: usize,
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
            (Metric::ReconcileOrphansDeleted, self.orphans_deleted),
            (Metric::ReconcileRestored, self.restored),
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

/// The least time between two Google calls of one user's reconciliation: 300 a minute, half of
/// Google's default per-user quota (600 a minute), leaving the rest to the stream.
const RECONCILE_CALL_INTERVAL: Duration = Duration::from_millis(200);

/// Spaces a reconciliation's Google calls [`RECONCILE_CALL_INTERVAL`] apart.
#[derive(Default)]
struct Pace(Option<tokio::time::Instant>);

impl Pace {
    /// How long the next call would wait for its slot.
    fn wait_left(&self) -> Duration {
        self.0.map_or(Duration::ZERO, |next| {
            next - tokio::time::Instant::now().min(next)
        })
    }

    async fn wait(&mut self) {
        if let Some(next) = self.0 {
            tokio::time::sleep_until(next).await;
        }
        self.0 = Some(tokio::time::Instant::now() + RECONCILE_CALL_INTERVAL);
    }
}

/// How a listed page of the `google` phase ended.
enum Listed {
    /// More pages follow, from this token.
    More(String),
    /// The calendar is done (or cannot be listed).
    Done,
    /// Out of time mid-page: the page is redone.
    OutOfTime,
    /// The user's grant is unusable or Google unavailable: the next resync reconciles.
    Stop,
}

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
        let mut pace = Pace::default();
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
                    job.calendars
                        .extend(page.items.iter().map(|s| s.calendar_id.clone()));
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
                    job.calendars
                        .extend(page.items.iter().map(|(_, row)| placement(row).calendar_id));
                    for (event_id, image) in page.items {
                        if self.out_of_time(deadline) {
                            return Ok((report, Some(job)));
                        }
                        self.resync_row(&tokens, &event_id, &image, &mut report, deadline)
                            .await?;
                    }
                    page.next
                }
                Phase::Google => {
                    let Some(calendar) = job.calendars.first().cloned() else {
                        tracing::info!(user_id = job.user_id, ?report, "resync done");
                        return Ok((report, None));
                    };
                    let cursor = job.cursor.clone();
                    let listed = self
                        .reconcile_page(
                            &tokens,
                            &job.user_id,
                            &calendar,
                            cursor,
                            &mut pace,
                            &mut report,
                            deadline,
                        )
                        .await?;
                    match listed {
                        Listed::More(next) => job.cursor = Some(next),
                        Listed::Done => {
                            job.calendars.remove(&calendar);
                            job.cursor = None;
                        }
                        Listed::OutOfTime => return Ok((report, Some(job))),
                        Listed::Stop => {
                            tracing::info!(user_id = job.user_id, ?report, "resync done");
                            return Ok((report, None));
                        }
                    }
                    continue;
                }
            };
            match (next, job.phase) {
                (Some(cursor), _) => job.cursor = Some(cursor),
                (None, Phase::States) => {
                    job.phase = Phase::Rows;
                    job.cursor = None;
                }
                (None, _) => {
                    job.phase = Phase::Google;
                    job.cursor = None;
                    job.calendars.insert(DEFAULT_CALENDAR_ID.to_string());
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
        self.apply_over_state(tokens, state, row, report, deadline)
            .await;
        Ok(())
    }

    /// Applies `row` over the stored `state` (see [`Self::resync_event`]) and counts the outcome.
    async fn apply_over_state(
        &self,
        tokens: &Tokens<'_, P>,
        state: SyncState,
        row: Option<serde_dynamo::Item>,
        report: &mut ResyncReport,
        deadline: Deadline,
    ) {
        let key = state.event_id.clone();
        let expected = Expected::of(Some(&state));
        let outcome = self
            .resync_event(tokens, &key, expected, Some(state), row, deadline)
            .await;
        report.count(outcome);
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
        self.apply_over_state(tokens, leftover, None, report, deadline)
            .await;
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
        let mut in_sync = state.as_ref().is_some_and(|s| {
            matches!(s.status, SyncStatus::Synced | SyncStatus::Invalid)
                && s.fingerprint.as_deref() == Some(fingerprint(listed).as_str())
        });
        if let Some(state) = state.as_ref().filter(|_| in_sync) {
            // A copy in a dedicated calendar the user deleted since is not in Google any more
            // (an unreadable grant counts as in sync here: the apply would park it anyway).
            in_sync = !self
                .copy_predates_calendar(tokens, state)
                .await
                .unwrap_or(false);
        }
        if in_sync {
            report.in_sync += 1;
            return Ok(());
        }
        // The index lags the table: apply what the row says now.
        let row = self.events.current_row(event_id).await?;
        let expected = Expected::of(state.as_ref());
        let outcome = self
            .resync_event(tokens, event_id, expected, state, row, deadline)
            .await;
        report.count(outcome);
        Ok(())
    }

    /// Lists one page of calsync's events in `calendar` and heals what differs from the rows.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_page(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        calendar: &str,
        cursor: Option<String>,
        pace: &mut Pace,
        report: &mut ResyncReport,
        deadline: Deadline,
    ) -> Result<Listed, ResyncError> {
        if self.no_time_for_a_paced_call(pace, deadline) {
            return Ok(Listed::OutOfTime);
        }
        pace.wait().await;
        let page = match self
            .list_at(tokens, user_id, calendar, cursor.as_deref(), deadline)
            .await
        {
            Ok(page) => page,
            Err(Refusal::Park(_)) => return Ok(Listed::Stop),
            Err(Refusal::Fail(reason)) => {
                tracing::warn!(
                    user_id,
                    calendar,
                    reason,
                    "cannot list calsync's events now; the next resync reconciles"
                );
                report.failed += 1;
                return Ok(Listed::Stop);
            }
            Err(Refusal::Reject(error)) => {
                tracing::warn!(user_id, calendar, %error, "Google refuses to list this calendar; not reconciled");
                return Ok(Listed::Done);
            }
        };
        let before = (report.orphans_deleted, report.restored);
        for held in &page.items {
            if self.out_of_time(deadline) {
                return Ok(Listed::OutOfTime);
            }
            let healed = self
                .reconcile_event(tokens, user_id, calendar, held, pace, report, deadline)
                .await?;
            if !healed {
                return Ok(Listed::OutOfTime);
            }
        }
        let (orphans, restored) = (
            report.orphans_deleted - before.0,
            report.restored - before.1,
        );
        if orphans + restored > 0 {
            tracing::info!(
                user_id,
                calendar,
                orphans_deleted = orphans,
                restored,
                "reconciliation healed Google"
            );
        }
        Ok(page.next.map_or(Listed::Done, Listed::More))
    }

    /// Whether waiting for the next paced slot and then calling would run past the deadline: the
    /// call is left to the next invocation (which starts with a free slot, so it progresses).
    fn no_time_for_a_paced_call(&self, pace: &Pace, deadline: Deadline) -> bool {
        self.out_of_time(Deadline(deadline.0 - pace.wait_left()))
    }

    /// One event calsync wrote to `user_id`'s `calendar`, as Google holds it: deleted if its
    /// row is gone or elsewhere; written again if its state says Google holds the row but Google
    /// holds it cancelled or changed. `false`: it needs a call there is no time left for.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_event(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        calendar: &str,
        held: &serde_json::Value,
        pace: &mut Pace,
        report: &mut ResyncReport,
        deadline: Deadline,
    ) -> Result<bool, ResyncError> {
        let Some(event_id) = held["extendedProperties"]["private"][EVENT_ID_PROPERTY].as_str()
        else {
            return Ok(true);
        };
        let google_id = google_event_id(event_id);
        if held["id"].as_str() != Some(google_id.as_str()) {
            return Ok(true); // not a copy calsync placed under this event's id
        }
        let cancelled = held["status"] == "cancelled";
        let row = self.events.current_row(event_id).await?;
        let row_here = row.as_ref().is_some_and(|image| {
            let place = placement(image);
            place.user_id.as_deref() == Some(user_id) && place.calendar_id == calendar
        });
        let stored = self.states.get(event_id).await?;
        let expected = Expected::of(stored.as_ref());
        if !row_here {
            if cancelled {
                return Ok(true);
            }
            if self.no_time_for_a_paced_call(pace, deadline) {
                return Ok(false);
            }
            // Applied from a state pointing at this copy, so the apply deletes it (and writes
            // the row where it is now, if anywhere).
            let here = SyncState {
                event_id: event_id.to_string(),
                user_id: Some(user_id.to_string()),
                calendar_id: calendar.to_string(),
                google_event_id: Some(google_id),
                status: SyncStatus::Synced,
                last_sequence: stored.as_ref().and_then(|s| s.last_sequence.clone()),
                fingerprint: None,
                last_error: None,
                updated_at: chrono::Utc::now(),
                synced_at: stored.as_ref().and_then(|s| s.synced_at),
                leftover_of: None,
            };
            let previous = holding_our_copy(stored, &here);
            pace.wait().await;
            match self
                .resync_event(tokens, event_id, expected, previous, row, deadline)
                .await
            {
                Outcome::Applied => report.orphans_deleted += 1,
                outcome => report.count(outcome),
            }
            return Ok(true);
        }
        let synced_here = stored.as_ref().is_some_and(|s| {
            s.status == SyncStatus::Synced
                && s.user_id.as_deref() == Some(user_id)
                && s.calendar_id == calendar
                && s.google_event_id.is_some()
        });
        let image = row.as_ref().expect("the row is here");
        let changed = || {
            EventRow::from_image(event_id, image)
                .is_ok_and(|wanted| google_copy_differs(held, &wanted.to_google_event()))
        };
        // Rows whose state is anything else are the rows phase's.
        if !synced_here || !(cancelled || changed()) {
            return Ok(true);
        }
        if self.no_time_for_a_paced_call(pace, deadline) {
            return Ok(false);
        }
        pace.wait().await;
        match self
            .resync_event(tokens, event_id, expected, stored, row, deadline)
            .await
        {
            Outcome::Applied => report.restored += 1,
            outcome => report.count(outcome),
        }
        Ok(true)
    }

    /// Applies `row` (`None`: deleted) over `previous`, writing the state if the stored one is
    /// still `expected`; after losing that write to a stream record, again from what Google
    /// holds now.
    async fn resync_event(
        &self,
        tokens: &Tokens<'_, P>,
        event_id: &str,
        mut expected: Expected,
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
            match self.states.put(&next, &expected).await {
                Ok(()) if next.status.is_parked() => return Outcome::Parked,
                Ok(()) => return Outcome::Applied,
                Err(StateError::Conflict { .. }) => {
                    tracing::info!(
                        event_id,
                        "a stream record changed the event during the resync; applying again"
                    );
                    let reread = async {
                        let fresh = self.states.get(event_id).await?;
                        Ok::<_, ResyncError>((fresh, self.events.current_row(event_id).await?))
                    };
                    let fresh = match reread.await {
                        Ok((fresh, now)) => {
                            row = now;
                            fresh
                        }
                        Err(error) => {
                            tracing::warn!(event_id, %error, "resync cannot re-read the state and the row");
                            return Outcome::Failed;
                        }
                    };
                    expected = Expected::of(fresh.as_ref());
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
