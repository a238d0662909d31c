//! The event-sync Lambda entry point: a DynamoDB stream batch in, `batchItemFailures` out.

use std::time::Duration;

use aws_lambda_events::event::{
    dynamodb::Event as DynamodbEvent,
    streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse},
};
use lambda_runtime::{Error, LambdaEvent};

use super::{
    SyncPorts, Syncer,
    pacing::{Pacer, PacingLimits},
    retry::Deadline,
};
use crate::{
    aws::Clients,
    calendar::CalendarClient,
    config::Config,
    google_oauth::{GoogleOAuth, REQUEST_TIMEOUT, http_client},
    lifecycle::eventbridge::EventBridgeEvents,
    resync::ResyncOnConnect,
    store::{DynamoEvents, DynamoGrantStore, DynamoSyncStateStore, SqsJobQueue, Stores},
    tokens::StoredGrants,
};

/// Time assumed left when the context carries no deadline (hand-made events).
const NO_DEADLINE_FALLBACK: Duration = Duration::from_secs(60);

/// Applies a stream batch. Never fails as a whole: records that must be retried are listed in
/// `batchItemFailures` (Lambda retries from the lowest one), everything else is done or parked.
pub async fn handle<P: SyncPorts>(
    syncer: &Syncer<P>,
    event: LambdaEvent<DynamodbEvent>,
) -> Result<DynamoDbEventResponse, Error> {
    crate::metrics::scope("event-sync", handle_batch(syncer, event)).await
}

async fn handle_batch<P: SyncPorts>(
    syncer: &Syncer<P>,
    event: LambdaEvent<DynamodbEvent>,
) -> Result<DynamoDbEventResponse, Error> {
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

/// The production ports: Google over HTTP, the state, grants and rows in DynamoDB. Never built:
/// it only names types.
pub enum Production {}

impl SyncPorts for Production {
    type Calendar = CalendarClient;
    type States = DynamoSyncStateStore;
    type Grants = StoredGrants<DynamoGrantStore>;
    type Refresher = GoogleOAuth;
    type Events = DynamoEvents;
    type Lifecycle = EventBridgeEvents;
    type Backfill = ResyncOnConnect<SqsJobQueue>;
}

/// The production wiring.
pub type SyncDeps = Syncer<Production>;

impl Syncer<Production> {
    /// A cold start: the clients built once (`calendar_timeout` is the Calendar client's) and
    /// both secrets read during init. Where Secrets Manager cannot give them, this is the
    /// invocation's one error (logged once, naming the secret): Lambda fails the invocation,
    /// retries the batch, and the next cold start reads them again.
    pub async fn cold_start(
        config: &Config,
        clients: &Clients,
        calendar_timeout: Duration,
    ) -> Result<Self, crate::secrets::SecretsError> {
        let deps = Self::from_config(config, clients, calendar_timeout);
        deps.refresher.secrets().read_at_init().await?;
        Ok(deps)
    }

    /// Builds the clients once per cold start (`calendar_timeout` is the Calendar client's).
    pub fn from_config(config: &Config, clients: &Clients, calendar_timeout: Duration) -> Self {
        let stores = Stores::new(config, clients);
        Self::over(
            config,
            clients,
            &stores,
            calendar_timeout,
            PacingLimits::STREAM,
        )
    }

    /// Over a function's `stores` (and so its one secrets cache), with one HTTP client for both
    /// of Google's APIs, keeping to `pacing`.
    pub fn over(
        config: &Config,
        clients: &Clients,
        stores: &Stores,
        calendar_timeout: Duration,
        pacing: PacingLimits,
    ) -> Self {
        let google = http_client(REQUEST_TIMEOUT);
        let calendar_api = config.google.calendar_api_url.clone();
        Syncer {
            calendar: CalendarClient::with_http_client(
                calendar_api,
                google.clone(),
                calendar_timeout,
            ),
            states: stores.sync_state(),
            grants: StoredGrants(stores.grants()),
            events: stores.events(),
            lifecycle: EventBridgeEvents::new(
                clients.eventbridge.clone(),
                config.event_bus_name.clone(),
            ),
            refresher: GoogleOAuth::with_http_client(config, stores.secrets(), google),
            retry: super::retry::RetryPolicy {
                safety_margin: calendar_timeout + Duration::from_secs(2),
                ..Default::default()
            },
            pacer: Pacer::new(pacing),
            concurrency: config.sync_concurrency,
            app_calendar: config.calendar.dedicated().map(str::to_string),
            backfill: ResyncOnConnect(SqsJobQueue::new(
                clients.sqs.clone(),
                config.resync_queue_url.clone(),
            )),
        }
    }
}
