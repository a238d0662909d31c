//! Creates the template's DynamoDB tables (keys, indexes, streams, TTL as declared) in the local
//! AWS emulator. Existing tables are kept, so running it twice is harmless.

use anyhow::{Context as _, Result};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification,
};

use crate::template::TableSpec;

/// What happened to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyThere,
}

fn key_schema(pairs: &[(String, String)]) -> Result<Vec<KeySchemaElement>> {
    pairs
        .iter()
        .map(|(name, kind)| {
            Ok(KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(KeyType::from(kind.as_str()))
                .build()?)
        })
        .collect()
}

/// Creates `spec` as `name`, or leaves an existing table of that name alone.
pub async fn create_table(client: &Client, spec: &TableSpec, name: &str) -> Result<Outcome> {
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(key_schema(&spec.key_schema)?));
    for (attribute, kind) in &spec.attributes {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(attribute)
                .attribute_type(ScalarAttributeType::from(kind.as_str()))
                .build()?,
        );
    }
    for index in &spec.global_indexes {
        request = request.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(&index.name)
                .set_key_schema(Some(key_schema(&index.key_schema)?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::from(index.projection_type.as_str()))
                        .build(),
                )
                .build()?,
        );
    }
    if let Some(view) = &spec.stream_view_type {
        request = request.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::from(view.as_str()))
                .build()?,
        );
    }
    let outcome = match request.send().await {
        Ok(_) => Outcome::Created,
        Err(error) if error.code() == Some("ResourceInUseException") => Outcome::AlreadyThere,
        Err(error) => {
            return Err(aws_sdk_dynamodb::Error::from(error))
                .with_context(|| format!("creating table {name}"));
        }
    };
    if let (Some(attribute), Outcome::Created) = (&spec.ttl_attribute, outcome) {
        client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(attribute)
                    .enabled(true)
                    .build()?,
            )
            .send()
            .await
            .map_err(aws_sdk_dynamodb::Error::from)
            .with_context(|| format!("enabling TTL on {name}"))?;
    }
    Ok(outcome)
}
