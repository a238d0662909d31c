//! Rows of the app's Events table, as the tests and the demo write them.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aws_sdk_dynamodb::types::AttributeValue;

/// An Events row as DynamoDB holds it.
pub type Row = HashMap<String, AttributeValue>;

/// A valid row: `event_id`, `user_id`, `title`, and an hour on 2026-12-01 as `start` and `end`.
/// Callers change or add attributes with `insert`.
pub fn event_row(event_id: &str, user_id: &str, title: &str) -> Row {
    [
        ("event_id", event_id),
        ("user_id", user_id),
        ("title", title),
        ("start", "2026-12-01T09:00:00+01:00"),
        ("end", "2026-12-01T10:00:00+01:00"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), text(value)))
    .collect()
}

/// A string attribute.
pub fn text(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

/// Writes `row` to `table`, as the app would.
pub async fn put(dynamodb: &aws_sdk_dynamodb::Client, table: &str, row: Row) -> Result<()> {
    dynamodb
        .put_item()
        .table_name(table)
        .set_item(Some(row))
        .send()
        .await
        .map_err(aws_sdk_dynamodb::Error::from)
        .with_context(|| format!("writing a row to {table}"))?;
    Ok(())
}
