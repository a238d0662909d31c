//! The app's Events table (partition key `event_id`), which calsync only reads: the replay's
//! [`EventsSource`] and its in-memory fake.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::Table;
use crate::sync::replay::{EventsSource, ReplayError};

/// The Events table in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoEvents(Table);

impl DynamoEvents {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self(Table::new(client, table, "event_id"))
    }
}

impl EventsSource for DynamoEvents {
    async fn current_row(&self, event_id: &str) -> Result<Option<serde_dynamo::Item>, ReplayError> {
        let item = self.0.get(event_id).await.map_err(ReplayError::Events)?;
        Ok(item.map(serde_dynamo::Item::from))
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
    async fn current_row(&self, event_id: &str) -> Result<Option<serde_dynamo::Item>, ReplayError> {
        Ok(self.rows.lock().unwrap().get(event_id).cloned())
    }
}
