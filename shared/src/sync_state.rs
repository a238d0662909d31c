//! The sync state: one item per app event id saying where its Google copy is, what happened to the
//! last change, and which stream record was applied last.
//!
//! Writes are conditional on the state read before (its sequence number), so two writers never
//! silently overwrite each other and an older record cannot overwrite a newer one. Sequence numbers
//! are decimal strings of varying length; [`Sequence`] compares them as numbers and stores a
//! zero-padded copy (`sequence_order`) that DynamoDB can compare as text.

use std::{cmp::Ordering, collections::HashMap, future::Future};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Digits of the stored `sequence_order`; DynamoDB stream sequence numbers have at most 40.
const ORDER_WIDTH: usize = 48;

/// A stream record's `SequenceNumber`, ordered numerically.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sequence(String);

impl Sequence {
    /// Accepts a non-empty string of ASCII digits (leading zeros are ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.trim();
        if digits.is_empty()
            || digits.len() > ORDER_WIDTH
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let trimmed = digits.trim_start_matches('0');
        Some(Self(if trimmed.is_empty() {
            "0".into()
        } else {
            trimmed.into()
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Fixed-width text whose lexical order is the numeric order.
    pub fn order_key(&self) -> String {
        format!("{:0>width$}", self.0, width = ORDER_WIDTH)
    }
}

impl Ord for Sequence {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Sequence {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// Google holds the event as the row last said.
    Synced,
    /// The row was removed and the Google event deleted.
    Deleted,
    /// Parked: Google refused the user's refresh token; replayed when the user reconnects.
    NeedsReauth,
    /// Parked: the user has no grant; replayed when the user connects.
    NotConnected,
    /// The row (or Google) rejected the change; `last_error` says why. A later change retries.
    Invalid,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::Synced => "synced",
            SyncStatus::Deleted => "deleted",
            SyncStatus::NeedsReauth => "needs_reauth",
            SyncStatus::NotConnected => "not_connected",
            SyncStatus::Invalid => "invalid",
        }
    }

    /// The statuses that wait for the user to (re)connect.
    pub const PARKED: [SyncStatus; 2] = [SyncStatus::NeedsReauth, SyncStatus::NotConnected];

    pub fn is_parked(self) -> bool {
        Self::PARKED.contains(&self)
    }
}

/// The sync state of one app event.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncState {
    pub event_id: String,
    /// The owner the last change named (absent only for a row without `user_id`).
    pub user_id: Option<String>,
    pub calendar_id: String,
    /// Set while Google may hold a copy (at `user_id`'s `calendar_id`); cleared once deleted.
    pub google_event_id: Option<String>,
    pub status: SyncStatus,
    pub last_sequence: Option<Sequence>,
    /// [`crate::mapping::EventRow::fingerprint`] of the row Google holds (set while `synced`):
    /// a resync skips rows whose fingerprint matches, and re-applies the rest.
    pub fingerprint: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// When a change of this event last reached Google (kept while later changes park or fail):
    /// the status route's `last_synced_at`.
    pub synced_at: Option<DateTime<Utc>>,
    /// Set on a [`leftover_key`] state: the app event whose copy this is.
    pub leftover_of: Option<String>,
}

impl SyncState {
    /// The app event this state is about (a leftover's is the event it was a copy of).
    pub fn app_event_id(&self) -> &str {
        self.leftover_of.as_deref().unwrap_or(&self.event_id)
    }
}

/// The key of the state of a *leftover*: a copy an event left at `user_id`'s `calendar_id` when
/// it moved to another user or calendar while that user's grant was unusable, so the copy could
/// not be deleted then. The delete is parked on a state of its own, owned by the old owner: their
/// resync (after a reconnect, or the sweep) finds it among their states and applies it, and their
/// status counts it as parked. Hashed (bounded length whatever the ids) and prefixed, so it reads
/// as what it is; no row has it, so the resync sees a leftover's row as gone and deletes.
pub fn leftover_key(event_id: &str, user_id: &str, calendar_id: &str) -> String {
    let place = crate::mapping::google_event_id(&format!("{event_id}\0{user_id}\0{calendar_id}"));
    format!("calsync-leftover:{place}")
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the sync state of event {event_id:?} changed since it was read (another invocation applied a newer record); retry the record"
    )]
    Conflict { event_id: String },
    #[error("sync-state store request failed: {0}")]
    Store(String),
    #[error("the stored sync state of event {event_id:?} is unreadable: {reason}")]
    Corrupt { event_id: String, reason: String },
}

/// What the stored state must still be for a write to go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// No state stored yet.
    Absent,
    /// A state stored at this sequence (None: stored without one).
    At(Option<Sequence>),
}

impl Expected {
    pub fn of(state: Option<&SyncState>) -> Self {
        match state {
            None => Expected::Absent,
            Some(s) => Expected::At(s.last_sequence.clone()),
        }
    }
}

/// Where sync states live ([`crate::store::DynamoSyncStateStore`]).
pub trait SyncStateStore: Send + Sync {
    fn get(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<SyncState>, StateError>> + Send;

    /// The states of `event_ids` (distinct), read as consistently as [`Self::get`] but in as few
    /// requests as the store allows (DynamoDB: one per [`BATCH_READ_LIMIT`] keys): a stream batch
    /// reads the states of all its events at once. A key with no state is absent from the map;
    /// one whose item is unreadable maps to its own error, so it fails only its own event. The
    /// outer error is the read itself failing.
    fn get_many(
        &self,
        event_ids: &[&str],
    ) -> impl Future<Output = Result<Found, StateError>> + Send;

    /// Writes `state` if the stored state still matches `expected`, else [`StateError::Conflict`].
    fn put(
        &self,
        state: &SyncState,
        expected: &Expected,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// One page of a user's states, in no promised order; `cursor` is the previous page's
    /// [`Page::next`].
    fn of_user(
        &self,
        user_id: &str,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<SyncState>, StateError>> + Send;
}

/// What [`SyncStateStore::get_many`] found, by event id.
pub type Found = HashMap<String, Result<SyncState, StateError>>;

/// Keys per `BatchGetItem` request (DynamoDB's limit).
pub const BATCH_READ_LIMIT: usize = 100;

/// One page of a listing, and where the next one starts (`None`: this was the last). The cursor
/// is opaque text (a table's own resume key) that a queued job can carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Items per page of the listings a resync walks: small enough that one page fits well inside
/// an invocation, so a page is the unit a resync redoes after a crash.
pub const PAGE_SIZE: usize = 100;

/// What the status route tells a user about their sync, from the states calsync already writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Changes waiting for a usable grant.
    pub parked: u64,
    /// When a change last reached Google (the newest `synced` or `deleted` state).
    pub last_synced_at: Option<DateTime<Utc>>,
    /// The newest state that is neither synced nor deleted: what went wrong last and is not
    /// healed yet.
    pub last_error: Option<LastError>,
}

/// A user's most recent unhealed sync problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// The state's status: `invalid` (the row or Google refused the change), `needs_reauth` or
    /// `not_connected` (parked).
    pub code: SyncStatus,
    pub event_id: String,
    pub at: DateTime<Utc>,
}

impl SyncSummary {
    /// Folds one of the user's states into the summary.
    pub fn add_state(&mut self, state: &SyncState) {
        let (status, updated_at, synced_at) = (state.status, state.updated_at, state.synced_at);
        self.add(state.app_event_id(), status, updated_at, synced_at);
    }

    /// Folds one state of the user into the summary (`synced_at` as stored; states written
    /// before it was stored count their last update when synced or deleted).
    pub fn add(
        &mut self,
        event_id: &str,
        status: SyncStatus,
        updated_at: DateTime<Utc>,
        synced_at: Option<DateTime<Utc>>,
    ) {
        let reached_google = matches!(status, SyncStatus::Synced | SyncStatus::Deleted);
        let synced_at = synced_at.or(reached_google.then_some(updated_at));
        self.last_synced_at = self.last_synced_at.max(synced_at);
        match status {
            SyncStatus::Synced | SyncStatus::Deleted => {}
            SyncStatus::NeedsReauth | SyncStatus::NotConnected | SyncStatus::Invalid => {
                self.parked += u64::from(status.is_parked());
                if self.last_error.as_ref().is_none_or(|e| e.at < updated_at) {
                    self.last_error = Some(LastError {
                        code: status,
                        event_id: event_id.to_string(),
                        at: updated_at,
                    });
                }
            }
        }
    }
}

/// A user's [`SyncSummary`]: all the status route needs to know of the sync states.
pub trait SyncSummaries: Send + Sync {
    fn summary(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<SyncSummary, StateError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_keeps_the_newest_success_and_problem() {
        let at = |minute: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(minute);
        let mut summary = SyncSummary::default();
        summary.add("a", SyncStatus::Synced, at(5), Some(at(5)));
        summary.add("b", SyncStatus::Deleted, at(9), None);
        summary.add("c", SyncStatus::Invalid, at(7), None);
        summary.add("d", SyncStatus::NeedsReauth, at(3), None);
        summary.add("e", SyncStatus::NotConnected, at(1), None);
        assert_eq!(summary.parked, 2);
        assert_eq!(summary.last_synced_at, Some(at(9)));
        let error = summary.last_error.clone().unwrap();
        assert_eq!(
            (error.code, error.event_id.as_str(), error.at),
            (SyncStatus::Invalid, "c", at(7))
        );
        // A change that parks after its event reached Google keeps when it did.
        summary.add("f", SyncStatus::NeedsReauth, at(20), Some(at(11)));
        assert_eq!(summary.last_synced_at, Some(at(11)));
        assert_eq!(summary.last_error.as_ref().unwrap().event_id, "f");
    }

    #[test]
    fn sequences_compare_as_numbers() {
        let s = |t: &str| Sequence::parse(t).unwrap();
        assert!(s("100") > s("99"));
        assert!(s("000000000000000000000000000000000000000100") > s("99"));
        assert!(s("4421584500000000017450439091") < s("4421584500000000017450439092"));
        assert_eq!(s("0042"), s("42"));
        assert!(s("100").order_key() > s("99").order_key());
        assert!(Sequence::parse("12a").is_none());
        assert!(Sequence::parse("").is_none());
    }
}
