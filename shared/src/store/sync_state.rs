//! The sync-state table (partition key `event_id`, index [`super::BY_USER_INDEX`] on `user_id`): the
//! adapter of [`SyncStateStore`] and [`SyncSummaries`], and its in-memory fake.

use std::{collections::HashMap, sync::Arc};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Item, Table, page_after, unless_condition_failed};
use crate::{
    aws::describe_error,
    resync::SweepLog,
    sync_state::{
        BATCH_READ_LIMIT, Expected, Found, Page, Sequence, StateError, SyncState, SyncStateStore,
        SyncStatus, SyncSummaries, SyncSummary,
    },
};

/// The item as DynamoDB holds it.
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
    /// [`Sequence::order_key`]: what the conditional write compares, since DynamoDB compares
    /// strings as text and sequence numbers vary in length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sequence_order: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    synced_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leftover_of: Option<String>,
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
            fingerprint: s.fingerprint.clone(),
            last_error: s.last_error.clone(),
            updated_at: s.updated_at,
            synced_at: s.synced_at,
            leftover_of: s.leftover_of.clone(),
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
            fingerprint: self.fingerprint,
            last_error: self.last_error,
            updated_at: self.updated_at,
            synced_at: self.synced_at,
            leftover_of: self.leftover_of,
        })
    }
}

/// DynamoDB adapter of [`SyncStateStore`] and [`SyncSummaries`].
#[derive(Clone, Debug)]
pub struct DynamoSyncStateStore(Table);

impl DynamoSyncStateStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self(Table::new(client, table, "event_id"))
    }

    fn decode(item: Item) -> Result<SyncState, StateError> {
        read_item::<StoredState>(item)?.into_state()
    }
}

impl SyncStateStore for DynamoSyncStateStore {
    async fn get(&self, event_id: &str) -> Result<Option<SyncState>, StateError> {
        let item = self.0.get(event_id).await.map_err(StateError::Store)?;
        item.map(Self::decode).transpose()
    }

    async fn get_many(&self, event_ids: &[&str]) -> Result<Found, StateError> {
        let mut found = Found::with_capacity(event_ids.len());
        for keys in event_ids.chunks(BATCH_READ_LIMIT) {
            for item in self.0.get_many(keys).await.map_err(StateError::Store)? {
                let Some(AttributeValue::S(event_id)) = item.get("event_id") else {
                    continue;
                };
                found.insert(event_id.clone(), Self::decode(item));
            }
        }
        Ok(found)
    }

    async fn put(&self, state: &SyncState, expected: &Expected) -> Result<(), StateError> {
        let item: Item =
            serde_dynamo::to_item(StoredState::from(state)).map_err(|e| StateError::Corrupt {
                event_id: state.event_id.clone(),
                reason: e.to_string(),
            })?;
        let mut request = self.0.put(item);
        request = match expected {
            Expected::Absent => request.condition_expression("attribute_not_exists(event_id)"),
            Expected::At(None) => request.condition_expression(
                "attribute_exists(event_id) AND attribute_not_exists(sequence_order)",
            ),
            Expected::At(Some(sequence)) => request
                .condition_expression("sequence_order = :read")
                .expression_attribute_values(":read", AttributeValue::S(sequence.order_key())),
        };
        match unless_condition_failed(request.send().await).map_err(StateError::Store)? {
            Some(_) => Ok(()),
            None => Err(StateError::Conflict {
                event_id: state.event_id.clone(),
            }),
        }
    }

    async fn of_user(
        &self,
        user_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<SyncState>, StateError> {
        let page = self
            .0
            .page_by_user(user_id, cursor)
            .await
            .map_err(StateError::Store)?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(Self::decode)
                .collect::<Result<_, _>>()?,
            next: page.next,
        })
    }
}

/// The key of the [`SweepLog`] item (no `user_id`, so it is in no user's listing or summary).
const SWEEP_LOG_KEY: &str = "calsync-sweep-log";

/// Fixed-width UTC text, so DynamoDB's text comparison is the time order.
fn sweep_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl SweepLog for DynamoSyncStateStore {
    async fn last_started(&self) -> Result<Option<DateTime<Utc>>, StateError> {
        let item = self.0.get(SWEEP_LOG_KEY).await.map_err(StateError::Store)?;
        let Some(AttributeValue::S(text)) = item.as_ref().and_then(|i| i.get("started_at")) else {
            return Ok(None);
        };
        DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| StateError::Corrupt {
                event_id: SWEEP_LOG_KEY.into(),
                reason: e.to_string(),
            })
    }

    async fn record(&self, at: DateTime<Utc>) -> Result<(), StateError> {
        let item = Item::from([
            ("event_id".into(), AttributeValue::S(SWEEP_LOG_KEY.into())),
            ("started_at".into(), AttributeValue::S(sweep_time(at))),
        ]);
        let request = self
            .0
            .put(item)
            .condition_expression("attribute_not_exists(event_id) OR started_at < :at")
            .expression_attribute_values(":at", AttributeValue::S(sweep_time(at)));
        // Refused: a later sweep is recorded already, which covers more.
        unless_condition_failed(request.send().await).map_err(StateError::Store)?;
        Ok(())
    }
}

/// A stored state (or part of one) read from its item; unreadable, it names its event.
fn read_item<T: serde::de::DeserializeOwned>(item: Item) -> Result<T, StateError> {
    let event_id = match item.get("event_id") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => String::new(),
    };
    serde_dynamo::from_item(item).map_err(|e| StateError::Corrupt {
        event_id,
        reason: e.to_string(),
    })
}

/// The attributes a [`SyncSummary`] reads of each state.
#[derive(Deserialize)]
struct SummarisedState {
    event_id: String,
    status: SyncStatus,
    updated_at: DateTime<Utc>,
    #[serde(default)]
    synced_at: Option<DateTime<Utc>>,
    #[serde(default)]
    leftover_of: Option<String>,
}

impl SyncSummaries for DynamoSyncStateStore {
    async fn summary(&self, user_id: &str) -> Result<SyncSummary, StateError> {
        let mut pages = self
            .0
            .by_user(user_id)
            .projection_expression("event_id, #s, updated_at, synced_at, leftover_of")
            .expression_attribute_names("#s", "status")
            .into_paginator()
            .items()
            .send();
        let mut summary = SyncSummary::default();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| StateError::Store(describe_error(&e)))?;
            let state: SummarisedState = read_item(item)?;
            summary.add(
                state.leftover_of.as_deref().unwrap_or(&state.event_id),
                state.status,
                state.updated_at,
                state.synced_at,
            );
        }
        Ok(summary)
    }
}

/// In-memory [`SyncStateStore`] and [`SweepLog`] for unit tests, with the same conditional-write
/// rules, counting requests as DynamoDB would get them.
#[derive(Clone, Default)]
pub struct InMemorySyncStateStore {
    items: Arc<Mutex<HashMap<String, SyncState>>>,
    sweep_started: Arc<Mutex<Option<DateTime<Utc>>>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl InMemorySyncStateStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub async fn snapshot(&self) -> HashMap<String, SyncState> {
        self.items.lock().await.clone()
    }

    /// Requests so far: one per `get` and `put`, one per [`BATCH_READ_LIMIT`] keys of
    /// `get_many`.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn count(&self, requests: usize) {
        self.requests
            .fetch_add(requests, std::sync::atomic::Ordering::SeqCst);
    }
}

impl SyncStateStore for InMemorySyncStateStore {
    async fn get(&self, event_id: &str) -> Result<Option<SyncState>, StateError> {
        self.count(1);
        Ok(self.items.lock().await.get(event_id).cloned())
    }

    async fn get_many(&self, event_ids: &[&str]) -> Result<Found, StateError> {
        self.count(event_ids.len().div_ceil(BATCH_READ_LIMIT));
        let items = self.items.lock().await;
        Ok(event_ids
            .iter()
            .filter_map(|id| Some((id.to_string(), Ok(items.get(*id)?.clone()))))
            .collect())
    }

    async fn put(&self, state: &SyncState, expected: &Expected) -> Result<(), StateError> {
        self.count(1);
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

    async fn of_user(
        &self,
        user_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<SyncState>, StateError> {
        let mut states: Vec<_> = self
            .items
            .lock()
            .await
            .values()
            .filter(|s| s.user_id.as_deref() == Some(user_id))
            .cloned()
            .collect();
        states.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        let items = page_after(states, cursor, |s| &s.event_id);
        Ok(items)
    }
}

impl SweepLog for InMemorySyncStateStore {
    async fn last_started(&self) -> Result<Option<DateTime<Utc>>, StateError> {
        Ok(*self.sweep_started.lock().await)
    }

    async fn record(&self, at: DateTime<Utc>) -> Result<(), StateError> {
        let mut started = self.sweep_started.lock().await;
        *started = (*started).max(Some(at));
        Ok(())
    }
}

impl SyncSummaries for InMemorySyncStateStore {
    async fn summary(&self, user_id: &str) -> Result<SyncSummary, StateError> {
        let mut summary = SyncSummary::default();
        let items = self.items.lock().await;
        for state in items.values() {
            if state.user_id.as_deref() == Some(user_id) {
                summary.add_state(state);
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            fingerprint: None,
            last_error: None,
            updated_at: Utc::now(),
            synced_at: None,
            leftover_of: None,
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
        assert_eq!(store.summary("u").await.unwrap().parked, 1);
        assert_eq!(
            store.summary("other").await.unwrap(),
            SyncSummary::default()
        );
    }
}
