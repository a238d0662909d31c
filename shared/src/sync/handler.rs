//! The event-sync Lambda entry point: a DynamoDB stream batch in, `batchItemFailures` out.

use std::time::Duration;

use aws_lambda_events::event::{
    dynamodb::Event as DynamodbEvent,
    streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse},
};
use lambda_runtime::{Error, LambdaEvent};

use super::{Syncer, retry::Deadline};
use crate::{
    calendar::Calendar,
    sync_state::SyncStateStore,
    tokens::{GrantAccess, TokenRefresher},
};

/// Time assumed left when the context carries no deadline (hand-made events).
const NO_DEADLINE_FALLBACK: Duration = Duration::from_secs(60);

/// Applies a stream batch. Never fails as a whole: records that must be retried are listed in
/// `batchItemFailures` (Lambda retries from the lowest one), everything else is done or parked.
pub async fn handle<C, S, G, R>(
    syncer: &Syncer<C, S, G, R>,
    event: LambdaEvent<DynamodbEvent>,
) -> Result<DynamoDbEventResponse, Error>
where
    C: Calendar,
    S: SyncStateStore,
    G: GrantAccess,
    R: TokenRefresher,
{
    let deadline = Deadline::from_lambda_ms(event.context.deadline, NO_DEADLINE_FALLBACK);
    let records = event.payload.records;
    let count = records.len();
    let failed = syncer.sync_batch(records, deadline).await;
    tracing::info!(records = count, failed = failed.len(), "batch done");
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|sequence| {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence);
            failure
        })
        .collect();
    Ok(response)
}

/// The production wiring: Google over HTTP, state and grants in DynamoDB.
pub type SyncDeps = Syncer<
    crate::calendar::CalendarClient,
    crate::sync_state::DynamoSyncStateStore,
    crate::tokens::StoredGrants<crate::grants::DynamoGrantStore>,
    crate::google_oauth::GoogleOAuth,
>;

impl SyncDeps {
    /// Builds the clients once per cold start (`calendar_timeout` is the Calendar client's).
    pub fn from_config(
        config: &crate::config::Config,
        clients: &crate::aws::Clients,
        calendar_timeout: Duration,
    ) -> Self {
        let secrets = std::sync::Arc::new(crate::secrets::SecretsCache::new(
            clients.secrets.clone(),
            config.secrets.clone(),
        ));
        Syncer {
            calendar: crate::calendar::CalendarClient::new(
                config.google.calendar_api_url.clone(),
                calendar_timeout,
            ),
            states: crate::sync_state::DynamoSyncStateStore::new(
                clients.dynamodb.clone(),
                config.tables.sync_state.clone(),
            ),
            grants: crate::tokens::StoredGrants(crate::grants::DynamoGrantStore::new(
                clients.dynamodb.clone(),
                config.tables.grants.clone(),
                secrets.clone(),
            )),
            refresher: crate::google_oauth::GoogleOAuth::new(config, secrets),
            retry: super::retry::RetryPolicy {
                safety_margin: calendar_timeout + Duration::from_secs(2),
                ..Default::default()
            },
            concurrency: config.sync_concurrency,
        }
    }
}
