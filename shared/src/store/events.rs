//! The app's Events table (partition key `event_id`, index `by_user` on `user_id`), which
//! calsync only reads: the resync's [`EventsSource`] and its in-memory fake.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{Table, page_after};
use crate::{
    sync::resync::{EventsSource, ResyncError},
    sync_state::Page,
};

type Row = (String, serde_dynamo::Item);

/// The Events table in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoEvents(Table);

impl DynamoEvents {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self(Table::new(client, table, "event_id"))
    }
}

impl EventsSource for DynamoEvents {
    async fn current_row(&self, event_id: &str) -> Result<Option<serde_dynamo::Item>, ResyncError> {
        let item = self.0.get(event_id).await.map_err(ResyncError::Events)?;
        Ok(item.map(serde_dynamo::Item::from))
    }

    async fn rows_of_user(
        &self,
        user_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<Row>, ResyncError> {
        let page = self
            .0
            .page_by_user(user_id, cursor)
            .await
            .map_err(ResyncError::Events)?;
        Ok(Page {
            next: page.next,
            items: page
                .items
                .into_iter()
                .filter_map(|item| {
                    let event_id = item.get("event_id")?.as_s().ok()?.clone();
                    Some((event_id, serde_dynamo::Item::from(item)))
                })
                .collect(),
        })
    }
}

/// Rows in memory, for unit tests: what the app's table holds now.
#[derive(Clone, Default)]
pub struct InMemoryEvents {
    rows: Arc<Mutex<HashMap<String, serde_dynamo::Item>>>,
}

impl InMemoryEvents {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes (or with `None`, deletes) the row of `event_id`.
    pub fn set(&self, event_id: &str, row: Option<serde_dynamo::Item>) {
        let mut rows = self.rows.lock().unwrap();
        match row {
            Some(row) => rows.insert(event_id.to_string(), row),
            None => rows.remove(event_id),
        };
    }
}

impl EventsSource for InMemoryEvents {
    async fn current_row(&self, event_id: &str) -> Result<Option<serde_dynamo::Item>, ResyncError> {
        Ok(self.rows.lock().unwrap().get(event_id).cloned())
    }

    async fn rows_of_user(
        &self,
        user_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<Row>, ResyncError> {
        let mut rows: Vec<Row> = self
            .rows
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, row)| crate::mapping::placement(row).user_id.as_deref() == Some(user_id))
            .map(|(id, row)| (id.clone(), row.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(page_after(rows, cursor, |(id, _)| id.as_str()))
    }
}
