//! `CALENDAR_MODE=dedicated`: rows go to a calendar calsync made for the user, and nowhere else.
//!
//! The sync states keep the row's own `calendar_id` (`primary`, since a dedicated deployment
//! refuses any other), and this module says where that is in Google: the calendar the user's
//! grant names. When Google answers 404 there (the user deleted the calendar), a new one is made
//! once, recorded on the grant (conditional on the grant still naming the deleted one, so racing
//! invocations keep one), the app hears `Calendar Recreated`, and the user's resync writes every
//! current row into it: states synced before the calendar was made do not count as in sync.

use chrono::Utc;

use super::{SyncPorts, Syncer, Tokens, apply::Refusal, retry::Deadline};
use crate::{
    calendar::{Calendar, CalendarError},
    grants::AppCalendar,
    http::AfterConnect,
    lifecycle::{self, LifecycleEvent},
    mapping::{DEFAULT_CALENDAR_ID, EventRow},
    sync_state::SyncState,
    tokens::{CalendarSlot, GrantAccess, TokenError},
};

impl<P: SyncPorts> Syncer<P> {
    /// A row a dedicated deployment cannot place: one naming a calendar of its own.
    pub(super) fn placeable(&self, row: EventRow) -> Result<EventRow, String> {
        if self.app_calendar.is_some() && row.calendar_id != DEFAULT_CALENDAR_ID {
            return Err(format!(
                "calendar_id must be empty: this deployment writes every row to the calendar it made for the user, not to {:?}",
                row.calendar_id
            ));
        }
        Ok(row)
    }

    /// Where the row calendar `calendar_id` of `user_id` is in Google: itself, or in dedicated
    /// mode the user's calendar (made now if the grant names none and `make`: for a write, not a
    /// delete or a listing); `None`: nowhere.
    pub(super) async fn google_calendar(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        calendar_id: &str,
        make: bool,
        deadline: Deadline,
    ) -> Result<Option<String>, Refusal> {
        if self.app_calendar.is_none() {
            return Ok(Some(calendar_id.to_string()));
        }
        if calendar_id != DEFAULT_CALENDAR_ID {
            return Ok(None);
        }
        let slot = tokens.calendar_slot(user_id);
        let mut slot = slot.lock().await;
        match self.known(tokens, user_id, &mut slot).await? {
            Some(calendar) => Ok(Some(calendar.id)),
            None if make => {
                self.remake(tokens, user_id, None, &mut slot, deadline)
                    .await
            }
            None => Ok(None),
        }
    }

    /// Google answered 404 in `gone`: the user's calendar in its place, made now unless another
    /// task or invocation already did; `None` when this batch already made one (no loop).
    pub(super) async fn calendar_gone(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        gone: &str,
        deadline: Deadline,
    ) -> Result<Option<String>, Refusal> {
        let slot = tokens.calendar_slot(user_id);
        let mut slot = slot.lock().await;
        let current = self.known(tokens, user_id, &mut slot).await?;
        if let Some(current) = current.filter(|c| c.id != gone) {
            return Ok(Some(current.id));
        }
        if matches!(*slot, CalendarSlot::Known { remade: true, .. }) {
            return Ok(None);
        }
        self.remake(tokens, user_id, Some(gone), &mut slot, deadline)
            .await
    }

    /// Whether the copy `state` records was written before the user's dedicated calendar was
    /// made, so it lived in a calendar since deleted and must be written again.
    pub(super) async fn copy_predates_calendar(
        &self,
        tokens: &Tokens<'_, P>,
        state: &SyncState,
    ) -> Result<bool, Refusal> {
        let Some(user_id) = state
            .user_id
            .as_deref()
            .filter(|_| self.app_calendar.is_some())
        else {
            return Ok(false);
        };
        let slot = tokens.calendar_slot(user_id);
        let mut slot = slot.lock().await;
        let calendar = self.known(tokens, user_id, &mut slot).await?;
        // Only a synced copy was in Google; an invalid row's state stays as it is.
        let synced = state.status == crate::sync_state::SyncStatus::Synced;
        Ok(synced && calendar.is_some_and(|c| state.synced_at.is_none_or(|at| at < c.created_at)))
    }

    async fn known(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        slot: &mut CalendarSlot,
    ) -> Result<Option<AppCalendar>, Refusal> {
        if let CalendarSlot::Known { calendar, .. } = slot {
            return Ok(calendar.clone());
        }
        let grant = tokens.grants().load(user_id).await.map_err(token_refusal)?;
        let calendar = grant.and_then(|g| g.calendar);
        *slot = CalendarSlot::Known {
            calendar: calendar.clone(),
            remade: false,
        };
        Ok(calendar)
    }

    /// Makes the user's calendar in place of `gone` and records it on the grant; a calendar
    /// another invocation recorded first wins, and the one made here is deleted again.
    async fn remake(
        &self,
        tokens: &Tokens<'_, P>,
        user_id: &str,
        gone: Option<&str>,
        slot: &mut CalendarSlot,
        deadline: Deadline,
    ) -> Result<Option<String>, Refusal> {
        let name = self.app_calendar.as_deref().unwrap_or_default();
        let id = self
            .call(tokens, user_id, deadline, |token| async move {
                self.calendar.create_calendar(&token, name).await
            })
            .await
            .map_err(Refusal::from)?;
        let made = AppCalendar {
            id,
            created_at: Utc::now(),
        };
        let held = self
            .grants
            .replace_calendar(user_id, gone, &made)
            .await
            .map_err(token_refusal)?;
        *slot = CalendarSlot::Known {
            calendar: Some(held.clone()),
            remade: true,
        };
        if held.id != made.id {
            let dropped = self
                .call(tokens, user_id, deadline, |token| {
                    let id = made.id.as_str();
                    async move { self.calendar.delete_calendar(&token, id).await }
                })
                .await;
            tracing::info!(
                user_id,
                deleted = dropped.is_ok(),
                "another invocation made the user's calendar first"
            );
            return Ok(Some(held.id));
        }
        tracing::warn!(
            user_id,
            calendar_id = made.id,
            replaced = gone,
            "the user's calendar was made anew; every row is written there again"
        );
        if gone.is_some() {
            let email = tokens
                .grants()
                .load(user_id)
                .await
                .ok()
                .flatten()
                .and_then(|g| g.google_email);
            let event = LifecycleEvent::calendar_recreated(user_id, email.as_deref(), &made.id);
            lifecycle::emit(&self.lifecycle, event).await;
            self.backfill.connected(user_id).await;
        }
        Ok(Some(made.id))
    }
}

fn token_refusal(error: TokenError) -> Refusal {
    match error {
        TokenError::NotConnected => Refusal::Park(crate::sync_state::SyncStatus::NotConnected),
        TokenError::NeedsReauth => Refusal::Park(crate::sync_state::SyncStatus::NeedsReauth),
        other => Refusal::Fail(other.to_string()),
    }
}

/// A write that met a deleted calendar (404 or 410).
pub(super) fn calendar_missing(refusal: &Refusal) -> bool {
    matches!(
        refusal,
        Refusal::Reject(CalendarError::NotFound | CalendarError::Gone)
    )
}
