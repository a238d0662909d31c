//! Applying one change of one event to Google and computing the event's next sync state.
//!
//! An upsert writes the mapped event at the row's user and calendar (insert, 409 → update; or
//! update, 404/410 → insert when Google should already hold it), after deleting the copy at the
//! old place if the row moved. A remove deletes the copy (404/410 count as done). Users without a
//! usable grant park the change; Google 400s and invalid rows mark it `invalid`; retryable trouble
//! that outlasts the retry policy fails the record.

use std::future::Future;

use chrono::Utc;
use secrecy::SecretString;
use tokio::time::Instant;

use super::{
    SyncPorts, Syncer, Tokens,
    app_calendar::calendar_missing,
    pacing::PacedOut,
    retry::{Deadline, Retryable},
};
use crate::{
    calendar::{Calendar, CalendarError, EventPage},
    grants::Marker,
    lifecycle::{self, LifecycleEvent},
    mapping::{EventRow, fingerprint, placement, synced_fields_changed},
    sync_state::{Expected, StateError, SyncState, SyncStateStore, SyncStatus, leftover_key},
    tokens::{GrantAccess, TokenError},
};

/// One change to apply.
#[derive(Clone, Copy, Debug)]
pub enum Change<'i> {
    /// INSERT or MODIFY (`old_image` only for MODIFY), or a replay of the current row.
    Upsert {
        image: &'i serde_dynamo::Item,
        old_image: Option<&'i serde_dynamo::Item>,
    },
    Remove {
        old_image: Option<&'i serde_dynamo::Item>,
    },
}

/// The change could not be applied now and must be retried (its record goes to
/// `batchItemFailures`). The reason never contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RecordFailure(pub String);

/// Why one Google call did not succeed, after retries.
#[derive(Debug)]
pub(super) enum CallError {
    Token(TokenError),
    Calendar(CalendarError),
    Paced(PacedOut),
}

impl Retryable for CallError {
    fn is_retryable(&self) -> bool {
        match self {
            CallError::Token(e) => matches!(e, TokenError::Transient(_) | TokenError::Store(_)),
            CallError::Calendar(e) => e.is_retryable(),
            CallError::Paced(_) => false,
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            CallError::Token(_) | CallError::Paced(_) => None,
            CallError::Calendar(e) => e.retry_after(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Token(e) => e.fmt(f),
            CallError::Calendar(e) => e.fmt(f),
            CallError::Paced(e) => e.fmt(f),
        }
    }
}

/// What a failed call means for the change.
pub(super) enum Refusal {
    /// No usable grant: park with this status.
    Park(SyncStatus),
    /// Retryable trouble outlasted the retries.
    Fail(String),
    /// Google refused for good (400, 403 other than rate limits, 404 calendar, ...).
    Reject(CalendarError),
}

impl From<CallError> for Refusal {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Token(TokenError::NotConnected) => Refusal::Park(SyncStatus::NotConnected),
            CallError::Token(TokenError::NeedsReauth) => Refusal::Park(SyncStatus::NeedsReauth),
            CallError::Token(e) => Refusal::Fail(e.to_string()),
            CallError::Calendar(e) if e.is_retryable() => Refusal::Fail(e.to_string()),
            CallError::Calendar(e) => Refusal::Reject(e),
            CallError::Paced(e) => Refusal::Fail(e.to_string()),
        }
    }
}

const PARKED_REASON: &str =
    "parked until the user connects Google Calendar again; replayed on connect";

const LEFTOVER_REASON: &str = "the event moved to another user or calendar; this copy is deleted once its owner connects Google Calendar again";

fn state(
    event_id: &str,
    previous: Option<&SyncState>,
    user_id: Option<String>,
    calendar_id: String,
    google_event_id: Option<String>,
    status: SyncStatus,
    last_error: Option<String>,
) -> SyncState {
    SyncState {
        event_id: event_id.to_string(),
        user_id,
        calendar_id,
        google_event_id,
        status,
        // The caller sets the sequence of the record applied; a replay keeps the previous one.
        last_sequence: previous.and_then(|p| p.last_sequence.clone()),
        // Set by an upsert whose outcome is final for the row's content.
        fingerprint: None,
        last_error,
        updated_at: Utc::now(),
        synced_at: match status {
            SyncStatus::Synced | SyncStatus::Deleted => Some(Utc::now()),
            _ => previous.and_then(|p| p.synced_at),
        },
        leftover_of: previous.and_then(|p| p.leftover_of.clone()),
    }
}

impl<P: SyncPorts> Syncer<P> {
    /// One Google call with the user's token, each attempt in its slot of the user's pace: 401
    /// refreshes once and retries once; retryable errors are retried by the policy.
    pub(super) async fn call<T, F, Fut>(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        deadline: Deadline,
        op: F,
    ) -> Result<T, CallError>
    where
        F: Fn(SecretString) -> Fut,
        Fut: Future<Output = Result<T, CalendarError>>,
    {
        let op = &op;
        // A slot later than this leaves no time for the call itself and the state write; one
        // free now is always taken, as the retry policy always makes a first attempt.
        let latest = (deadline.0.checked_sub(self.retry.safety_margin))
            .unwrap_or(deadline.0)
            .max(Instant::now());
        let pace = || async move {
            self.pacer
                .admit(user_id, latest)
                .await
                .map_err(CallError::Paced)
        };
        self.retry
            .run(deadline, move || async move {
                let token = tokens
                    .access_token(user_id)
                    .await
                    .map_err(CallError::Token)?;
                pace().await?;
                match op(token.clone()).await {
                    Err(CalendarError::Unauthorized) => {
                        let fresh = tokens
                            .after_unauthorized(user_id, &token)
                            .await
                            .map_err(CallError::Token)?;
                        pace().await?;
                        op(fresh).await.map_err(|e| match e {
                            CalendarError::Unauthorized => {
                                CallError::Token(TokenError::StillUnauthorized)
                            }
                            e => CallError::Calendar(e),
                        })
                    }
                    other => other.map_err(CallError::Calendar),
                }
            })
            .await
    }

    async fn delete_at(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        calendar_id: &str,
        google_event_id: &str,
        deadline: Deadline,
    ) -> Result<(), Refusal> {
        let Some(calendar_id) = self
            .google_calendar(tokens, user_id, calendar_id, false, deadline)
            .await?
        else {
            return Ok(()); // no such calendar: nothing there to delete
        };
        let calendar_id = calendar_id.as_str();
        let result = self
            .call(tokens, user_id, deadline, |token| async move {
                match self
                    .calendar
                    .delete(&token, calendar_id, google_event_id)
                    .await
                {
                    Err(CalendarError::NotFound | CalendarError::Gone) => Ok(()),
                    other => other,
                }
            })
            .await;
        result.map_err(Refusal::from)
    }

    /// One page of the events calsync wrote to `user_id`'s `calendar_id` (see
    /// [`Calendar::list_ours`]).
    pub(super) async fn list_at(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        calendar_id: &str,
        page_token: Option<&str>,
        deadline: Deadline,
    ) -> Result<EventPage, Refusal> {
        let Some(calendar_id) = self
            .google_calendar(tokens, user_id, calendar_id, false, deadline)
            .await?
        else {
            return Ok(EventPage::default());
        };
        let calendar_id = calendar_id.as_str();
        self.call(tokens, user_id, deadline, |token| async move {
            self.calendar
                .list_ours(&token, calendar_id, page_token)
                .await
        })
        .await
        .map_err(Refusal::from)
    }

    /// Writes `row` where its calendar is in Google; a dedicated calendar the user deleted is
    /// made again once (see [`super::app_calendar`]) and the row written there.
    async fn write_event(
        &self,
        tokens: &Tokens<'_, P>,
        row: &EventRow,
        expect_existing: bool,
        deadline: Deadline,
    ) -> Result<(), Refusal> {
        let user = row.user_id.as_str();
        let place = self
            .google_calendar(tokens, user, &row.calendar_id, true, deadline)
            .await?;
        let Some(calendar) = place else {
            return Err(Refusal::Reject(CalendarError::NotFound));
        };
        match self
            .write_event_at(tokens, row, &calendar, expect_existing, deadline)
            .await
        {
            Err(refusal) if self.app_calendar.is_some() && calendar_missing(&refusal) => match self
                .calendar_gone(tokens, user, &calendar, deadline)
                .await?
            {
                Some(new) => {
                    self.write_event_at(tokens, row, &new, false, deadline)
                        .await
                }
                None => Err(refusal),
            },
            other => other,
        }
    }

    async fn write_event_at(
        &self,
        tokens: &Tokens<'_, P>,
        row: &EventRow,
        calendar: &str,
        expect_existing: bool,
        deadline: Deadline,
    ) -> Result<(), Refusal> {
        let event = row.to_google_event();
        let google_id = row.google_event_id();
        let user = row.user_id.as_str();
        let insert = || {
            self.call(tokens, user, deadline, |token| {
                let event = &event;
                async move { self.calendar.insert(&token, calendar, event).await }
            })
        };
        let update = || {
            self.call(tokens, user, deadline, |token| {
                let (event, google_id) = (&event, google_id.as_str());
                async move {
                    self.calendar
                        .update(&token, calendar, google_id, event)
                        .await
                }
            })
        };
        let result = if expect_existing {
            match update().await {
                Err(CallError::Calendar(CalendarError::NotFound | CalendarError::Gone)) => {
                    match insert().await {
                        Err(CallError::Calendar(CalendarError::Conflict)) => update().await,
                        other => other,
                    }
                }
                other => other,
            }
        } else {
            match insert().await {
                Err(CallError::Calendar(CalendarError::Conflict)) => update().await,
                other => other,
            }
        };
        result.map_err(Refusal::from)
    }

    /// Applies `change` to the event `event_id` whose stored state is `previous`, and returns the
    /// state to store (with `previous`'s sequence; the caller sets the record's). A change parked
    /// because the grant needs reauth sends the episode's lifecycle events still owed.
    pub async fn apply(
        &self,
        tokens: &Tokens<'_, P>,
        event_id: &str,
        previous: Option<&SyncState>,
        change: Change<'_>,
        deadline: Deadline,
    ) -> Result<SyncState, RecordFailure> {
        let next = match change {
            Change::Remove { old_image } => {
                self.apply_remove(tokens, event_id, previous, old_image, deadline)
                    .await
            }
            Change::Upsert { image, old_image } => {
                self.apply_upsert(tokens, event_id, previous, image, old_image, deadline)
                    .await
            }
        }?;
        if next.status == SyncStatus::NeedsReauth
            && let Some(user_id) = &next.user_id
        {
            self.report_parked(tokens, user_id).await;
        }
        Ok(next)
    }

    /// Sends `Grant Needs Reauth` and `Sync Parked` for `user_id` if this episode has not yet:
    /// the grant records which ones were sent, so however many records park, in however many
    /// invocations, each goes out once. Asked once per user per batch. A user without a grant
    /// (`not_connected`) has nothing to record it on and gets no event (the README says why).
    async fn report_parked(&self, tokens: &Tokens<'_, P>, user_id: &str) {
        if !tokens.first_park(user_id) {
            return;
        }
        let owed = [Marker::NeedsReauth, Marker::Parked];
        let report = match self.grants.report_owed(user_id, &owed).await {
            Ok(Some(report)) => report,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(user_id, %error, "cannot tell which lifecycle events are owed; none sent");
                return;
            }
        };
        let email = report.google_email.as_deref();
        if report.needs_reauth {
            let event = LifecycleEvent::needs_reauth(user_id, email, report.reason);
            lifecycle::emit(&self.lifecycle, event).await;
        }
        if report.parked {
            let event = LifecycleEvent::sync_parked(user_id, email, Some(report.reason));
            lifecycle::emit(&self.lifecycle, event).await;
        }
    }

    async fn apply_remove(
        &self,
        tokens: &Tokens<'_, P>,
        event_id: &str,
        previous: Option<&SyncState>,
        old_image: Option<&serde_dynamo::Item>,
        deadline: Deadline,
    ) -> Result<SyncState, RecordFailure> {
        let copy = previous.and_then(|p| Some((p, p.user_id.clone()?, p.google_event_id.clone()?)));
        let Some((prev, user_id, google_id)) = copy else {
            // Google never got this event (or it is deleted already): nothing to call.
            let place = old_image.map(placement).unwrap_or_default();
            let user_id = previous.and_then(|p| p.user_id.clone()).or(place.user_id);
            let calendar_id = previous.map_or(place.calendar_id, |p| p.calendar_id.clone());
            return Ok(state(
                event_id,
                previous,
                user_id,
                calendar_id,
                None,
                SyncStatus::Deleted,
                None,
            ));
        };
        let keep = |status, error: Option<String>| {
            state(
                event_id,
                previous,
                Some(user_id.clone()),
                prev.calendar_id.clone(),
                Some(google_id.clone()),
                status,
                error,
            )
        };
        match self
            .delete_at(tokens, &user_id, &prev.calendar_id, &google_id, deadline)
            .await
        {
            Ok(()) => Ok(state(
                event_id,
                previous,
                Some(user_id.clone()),
                prev.calendar_id.clone(),
                None,
                SyncStatus::Deleted,
                None,
            )),
            Err(Refusal::Park(status)) => Ok(keep(status, Some(PARKED_REASON.into()))),
            Err(Refusal::Fail(reason)) => Err(RecordFailure(reason)),
            Err(Refusal::Reject(error)) => Ok(keep(SyncStatus::Invalid, Some(error.to_string()))),
        }
    }

    /// Parks the delete of the copy `event_id` left at `old_user`'s calendar (see
    /// [`leftover_key`]). Not recorded, the copy would be lost track of: the record fails instead.
    async fn park_leftover(
        &self,
        event_id: &str,
        prev: &SyncState,
        old_user: &str,
        google_id: &str,
        status: SyncStatus,
    ) -> Result<(), RecordFailure> {
        let key = leftover_key(event_id, old_user, &prev.calendar_id);
        let fail = |error: StateError| {
            RecordFailure(format!(
                "the event moved, its old copy cannot be deleted now, and parking that delete failed: {error}"
            ))
        };
        let stored = self.states.get(&key).await.map_err(fail)?;
        if stored.as_ref().is_some_and(|s| s.status.is_parked()) {
            return Ok(());
        }
        let mut leftover = state(
            &key,
            None,
            Some(old_user.to_string()),
            prev.calendar_id.clone(),
            Some(google_id.to_string()),
            status,
            Some(LEFTOVER_REASON.into()),
        );
        leftover.leftover_of = Some(event_id.to_string());
        leftover.synced_at = prev.synced_at;
        match self
            .states
            .put(&leftover, &Expected::of(stored.as_ref()))
            .await
        {
            // Another invocation parked the same delete meanwhile.
            Ok(()) | Err(StateError::Conflict { .. }) => {
                tracing::warn!(
                    event_id,
                    user_id = old_user,
                    "the event moved; deleting its old copy is parked until the old owner's grant works"
                );
                Ok(())
            }
            Err(error) => Err(fail(error)),
        }
    }

    async fn apply_upsert(
        &self,
        tokens: &Tokens<'_, P>,
        event_id: &str,
        previous: Option<&SyncState>,
        image: &serde_dynamo::Item,
        old_image: Option<&serde_dynamo::Item>,
        deadline: Deadline,
    ) -> Result<SyncState, RecordFailure> {
        if let (Some(prev), Some(old)) = (previous, old_image)
            && !synced_fields_changed(old, image)
        {
            let mut unchanged = prev.clone();
            unchanged.updated_at = Utc::now();
            if matches!(prev.status, SyncStatus::Synced | SyncStatus::Invalid) {
                unchanged.fingerprint = Some(fingerprint(image));
            }
            return Ok(unchanged);
        }
        let old_copy =
            previous.and_then(|p| Some((p, p.user_id.clone()?, p.google_event_id.clone()?)));
        let row = EventRow::from_image(event_id, image).map_err(|e| e.to_string());
        let row = match row.and_then(|row| self.placeable(row)) {
            Ok(row) => row,
            Err(error) => {
                tracing::warn!(event_id, %error, "invalid event row");
                // Google's copy, if any, stays where it is; keep pointing at it.
                let (user_id, calendar_id, google_id) = match &old_copy {
                    Some((prev, user, google_id)) => (
                        Some(user.clone()),
                        prev.calendar_id.clone(),
                        Some(google_id.clone()),
                    ),
                    None => {
                        let place = placement(image);
                        (place.user_id, place.calendar_id, None)
                    }
                };
                let mut invalid = state(
                    event_id,
                    previous,
                    user_id,
                    calendar_id,
                    google_id,
                    SyncStatus::Invalid,
                    Some(error.to_string()),
                );
                invalid.fingerprint = Some(fingerprint(image));
                return Ok(invalid);
            }
        };
        let mut copy_here = None;
        if let Some((prev, old_user, google_id)) = &old_copy {
            if *old_user == row.user_id && prev.calendar_id == row.calendar_id {
                copy_here = Some(google_id.clone());
            } else {
                match self
                    .delete_at(tokens, old_user, &prev.calendar_id, google_id, deadline)
                    .await
                {
                    Ok(()) => {}
                    Err(Refusal::Fail(reason)) => return Err(RecordFailure(reason)),
                    Err(Refusal::Park(status)) => {
                        self.park_leftover(event_id, prev, old_user, google_id, status)
                            .await?
                    }
                    Err(Refusal::Reject(error)) => tracing::warn!(
                        event_id,
                        %error,
                        "the event moved but Google refuses to delete its copy at the old user/calendar; it stays there"
                    ),
                }
            }
        }
        let outcome = self
            .write_event(tokens, &row, copy_here.is_some(), deadline)
            .await;
        let at_row = |google_id, status: SyncStatus, error| {
            let mut next = state(
                event_id,
                previous,
                Some(row.user_id.clone()),
                row.calendar_id.clone(),
                google_id,
                status,
                error,
            );
            if !status.is_parked() {
                next.fingerprint = Some(fingerprint(image));
            }
            next
        };
        match outcome {
            Ok(()) => Ok(at_row(
                Some(row.google_event_id()),
                SyncStatus::Synced,
                None,
            )),
            Err(Refusal::Park(status)) => Ok(at_row(copy_here, status, Some(PARKED_REASON.into()))),
            Err(Refusal::Fail(reason)) => Err(RecordFailure(reason)),
            Err(Refusal::Reject(error)) => {
                tracing::warn!(event_id, %error, "Google refused the event");
                Ok(at_row(
                    copy_here,
                    SyncStatus::Invalid,
                    Some(error.to_string()),
                ))
            }
        }
    }
}
