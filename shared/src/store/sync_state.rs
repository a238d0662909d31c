//! The sync-state table (partition key `event_id`, index [`BY_USER_INDEX`] on `user_id`): the
//! adapter of [`SyncStateStore`] and [`ParkedChanges`], and its in-memory fake.

use std::{collections::HashMap, sync::Arc};

use aws_sdk_dynamodb::{
    operation::query::builders::QueryFluentBuilder,
    types::{AttributeValue, Select},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Item, Table, page_after, resume_key, unless_condition_failed};
use crate::{
    aws::describe_error,
    sync_state::{
        Expected, PAGE_SIZE, Page, ParkedChanges, Sequence, StateError, SyncState, SyncStateStore,
        SyncStatus,
    },
};

/// Name of the sync-state table's index by user (see `template.yaml`).
pub const BY_USER_INDEX: &str = "by_user";

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
        })
    }
}

/// DynamoDB adapter of [`SyncStateStore`] and [`ParkedChanges`].
#[derive(Clone, Debug)]
pub struct DynamoSyncStateStore(Table);

impl DynamoSyncStateStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self(Table::new(client, table, "event_id"))
    }

    fn decode(item: Item) -> Result<SyncState, StateError> {
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

    /// A user's states, through the index by user.
    fn user_query(&self, user_id: &str) -> QueryFluentBuilder {
        self.0
            .query()
            .index_name(BY_USER_INDEX)
            .key_condition_expression("user_id = :u")
            .expression_attribute_values(":u", AttributeValue::S(user_id.to_string()))
    }

    /// A user's parked states: the status route counts them.
    fn parked_query(&self, user_id: &str) -> QueryFluentBuilder {
        let [a, b] = SyncStatus::PARKED.map(|s| AttributeValue::S(s.as_str().into()));
        self.user_query(user_id)
            .filter_expression("#s IN (:a, :b)")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":a", a)
            .expression_attribute_values(":b", b)
    }
}

impl SyncStateStore for DynamoSyncStateStore {
    async fn get(&self, event_id: &str) -> Result<Option<SyncState>, StateError> {
        let item = self.0.get(event_id).await.map_err(StateError::Store)?;
        item.map(Self::decode).transpose()
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
        let start = cursor
            .map(resume_key::decode)
            .transpose()
            .map_err(StateError::Store)?;
        let answer = self
            .user_query(user_id)
            .limit(PAGE_SIZE as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| StateError::Store(describe_error(&e)))?;
        Ok(Page {
            items: answer
                .items
                .unwrap_or_default()
                .into_iter()
                .map(Self::decode)
                .collect::<Result<_, _>>()?,
            next: answer.last_evaluated_key.as_ref().map(resume_key::encode),
        })
    }
}

impl ParkedChanges for DynamoSyncStateStore {
    async fn count(&self, user_id: &str) -> Result<u64, StateError> {
        let mut pages = self
            .parked_query(user_id)
            .select(Select::Count)
            .into_paginator()
            .send();
        let mut total = 0u64;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StateError::Store(describe_error(&e)))?;
            total += page.count.max(0) as u64;
        }
        Ok(total)
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

impl ParkedChanges for InMemorySyncStateStore {
    async fn count(&self, user_id: &str) -> Result<u64, StateError> {
        let items = self.items.lock().await;
        let parked = items
            .values()
            .filter(|s| s.user_id.as_deref() == Some(user_id) && s.status.is_parked());
        Ok(parked.count() as u64)
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
        assert_eq!(store.count("u").await.unwrap(), 1);
        assert_eq!(store.count("other").await.unwrap(), 0);
    }
}
