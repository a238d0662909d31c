//! The sync state: one item per app event id saying where its Google copy is, what happened to the
//! last change, and which stream record was applied last.
//!
//! Writes are conditional on the state read before (its sequence number), so two writers never
//! silently overwrite each other and an older record cannot overwrite a newer one. Sequence numbers
//! are decimal strings of varying length; [`Sequence`] compares them as numbers and stores a
//! zero-padded copy (`sequence_order`) that DynamoDB can compare as text.

use std::{cmp::Ordering, collections::HashMap, future::Future, sync::Arc};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

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

    pub fn is_parked(self) -> bool {
        matches!(self, SyncStatus::NeedsReauth | SyncStatus::NotConnected)
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
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
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

/// Where sync states live.
pub trait SyncStateStore: Send + Sync {
    fn get(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<SyncState>, StateError>> + Send;

    /// Writes `state` if the stored state still matches `expected`, else [`StateError::Conflict`].
    fn put(
        &self,
        state: &SyncState,
        expected: &Expected,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Every parked state (`needs_reauth`, `not_connected`) of a user.
    fn parked(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<SyncState>, StateError>> + Send;
}

/// The item as DynamoDB holds it (partition key `event_id`, index `by_user` on `user_id`).
#[derive(Serialize, Deserialize)]
struct StoredState {
    event_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    calendar_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    google_event_id: Option<String>,
    status: SyncStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_sequence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sequence_order: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    updated_at: DateTime<Utc>,
}

impl From<&SyncState> for StoredState {
    fn from(s: &SyncState) -> Self {
        Self {
            event_id: s.event_id.clone(),
            user_id: s.user_id.clone(),
            calendar_id: s.calendar_id.clone(),
            google_event_id: s.google_event_id.clone(),
            status: s.status,
            last_sequence: s.last_sequence.as_ref().map(|q| q.as_str().to_string()),
            sequence_order: s.last_sequence.as_ref().map(Sequence::order_key),
            last_error: s.last_error.clone(),
            updated_at: s.updated_at,
        }
    }
}

impl StoredState {
    fn into_state(self) -> Result<SyncState, StateError> {
        let last_sequence = match self.last_sequence {
            None => None,
            Some(text) => Some(Sequence::parse(&text).ok_or_else(|| StateError::Corrupt {
                event_id: self.event_id.clone(),
                reason: "last_sequence is not a decimal number".into(),
            })?),
        };
        Ok(SyncState {
            event_id: self.event_id,
            user_id: self.user_id,
            calendar_id: self.calendar_id,
            google_event_id: self.google_event_id,
            status: self.status,
            last_sequence,
            last_error: self.last_error,
            updated_at: self.updated_at,
        })
    }
}

fn store_error(e: impl std::error::Error) -> StateError {
    StateError::Store(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
}

/// DynamoDB adapter of [`SyncStateStore`].
#[derive(Clone, Debug)]
pub struct DynamoSyncStateStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// Name of the sync-state table's index by user (see `template.yaml`).
pub const BY_USER_INDEX: &str = "by_user";

impl DynamoSyncStateStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }

    fn decode(item: HashMap<String, AttributeValue>) -> Result<SyncState, StateError> {
        let event_id = match item.get("event_id") {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => String::new(),
        };
        let stored: StoredState =
            serde_dynamo::from_item(item).map_err(|e| StateError::Corrupt {
                event_id,
                reason: e.to_string(),
            })?;
        stored.into_state()
    }
}

impl SyncStateStore for DynamoSyncStateStore {
    async fn get(&self, event_id: &str) -> Result<Option<SyncState>, StateError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("event_id", AttributeValue::S(event_id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        answer.item.map(Self::decode).transpose()
    }

    async fn put(&self, state: &SyncState, expected: &Expected) -> Result<(), StateError> {
        let item: HashMap<String, AttributeValue> = serde_dynamo::to_item(StoredState::from(state))
            .map_err(|e| StateError::Corrupt {
                event_id: state.event_id.clone(),
                reason: e.to_string(),
            })?;
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        request = match expected {
            Expected::Absent => request.condition_expression("attribute_not_exists(event_id)"),
            Expected::At(None) => request.condition_expression(
                "attribute_exists(event_id) AND attribute_not_exists(sequence_order)",
            ),
            Expected::At(Some(sequence)) => request
                .condition_expression("sequence_order = :read")
                .expression_attribute_values(":read", AttributeValue::S(sequence.order_key())),
        };
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(StateError::Conflict {
                    event_id: state.event_id.clone(),
                })
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn parked(&self, user_id: &str) -> Result<Vec<SyncState>, StateError> {
        let mut states = Vec::new();
        let mut start_key = None;
        loop {
            let answer = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_USER_INDEX)
                .key_condition_expression("user_id = :u")
                .filter_expression("#s IN (:a, :b)")
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":u", AttributeValue::S(user_id.to_string()))
                .expression_attribute_values(
                    ":a",
                    AttributeValue::S(SyncStatus::NeedsReauth.as_str().into()),
                )
                .expression_attribute_values(
                    ":b",
                    AttributeValue::S(SyncStatus::NotConnected.as_str().into()),
                )
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(store_error)?;
            for item in answer.items.unwrap_or_default() {
                states.push(Self::decode(item)?);
            }
            start_key = answer.last_evaluated_key;
            if start_key.is_none() {
                break;
            }
        }
        states.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        Ok(states)
    }
}

/// In-memory [`SyncStateStore`] for unit tests, with the same conditional-write rule.
#[derive(Clone, Default)]
pub struct InMemorySyncStateStore {
    items: Arc<Mutex<HashMap<String, SyncState>>>,
}

impl InMemorySyncStateStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn snapshot(&self) -> HashMap<String, SyncState> {
        self.items.lock().await.clone()
    }
}

impl SyncStateStore for InMemorySyncStateStore {
    async fn get(&self, event_id: &str) -> Result<Option<SyncState>, StateError> {
        Ok(self.items.lock().await.get(event_id).cloned())
    }

    async fn put(&self, state: &SyncState, expected: &Expected) -> Result<(), StateError> {
        let mut items = self.items.lock().await;
        let current = Expected::of(items.get(&state.event_id));
        if &current != expected {
            return Err(StateError::Conflict {
                event_id: state.event_id.clone(),
            });
        }
        items.insert(state.event_id.clone(), state.clone());
        Ok(())
    }

    async fn parked(&self, user_id: &str) -> Result<Vec<SyncState>, StateError> {
        let mut states: Vec<_> = self
            .items
            .lock()
            .await
            .values()
            .filter(|s| s.user_id.as_deref() == Some(user_id) && s.status.is_parked())
            .cloned()
            .collect();
        states.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn in_memory_store_refuses_stale_writes() {
        let store = InMemorySyncStateStore::new();
        let mut state = SyncState {
            event_id: "e".into(),
            user_id: Some("u".into()),
            calendar_id: "primary".into(),
            google_event_id: None,
            status: SyncStatus::NotConnected,
            last_sequence: Sequence::parse("5"),
            last_error: None,
            updated_at: Utc::now(),
        };
        store.put(&state, &Expected::Absent).await.unwrap();
        assert!(matches!(
            store.put(&state, &Expected::Absent).await,
            Err(StateError::Conflict { .. })
        ));
        state.last_sequence = Sequence::parse("6");
        store
            .put(&state, &Expected::At(Sequence::parse("5")))
            .await
            .unwrap();
        assert_eq!(store.parked("u").await.unwrap().len(), 1);
        assert!(store.parked("other").await.unwrap().is_empty());
    }
}
