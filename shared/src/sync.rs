//! The event-sync handler: DynamoDB stream batches applied to Google Calendar in order,
//! idempotently, with parking, and the resync that brings a user's calendar up to date.
//!
//! - [`batch`]: groups a batch by event id, applies each group in stream order, runs groups
//!   concurrently, and names the records that must be retried.
//! - [`apply`]: what one change (upsert or remove) does to Google and to the sync state.
//! - [`retry`]: backoff with jitter inside the invocation's remaining time.
//! - [`pacing`]: each user's and the container's rate of Google calls, kept up front.
//! - [`resync`]: applies a user's current rows (and parked changes) wherever Google lacks them.
//! - [`keep_alive`]: refreshes a grant nobody used for a while, before Google ends it.
//! - [`handler`]: the Lambda entry point and the production wiring ([`handler::SyncDeps`]).
//!
//! The README's "How sync works" section explains the semantics for users.

pub mod app_calendar;
pub mod apply;
pub mod batch;
pub mod handler;
pub mod keep_alive;
pub mod pacing;
pub mod resync;
pub mod retry;

pub use handler::handle;

use retry::RetryPolicy;

use crate::{
    calendar::Calendar,
    http::AfterConnect,
    lifecycle::LifecycleEvents,
    sync_state::SyncStateStore,
    tokens::{GrantAccess, TokenProvider, TokenRefresher},
};
use resync::EventsSource;

/// The per-batch token cache over a bundle's grants and refresher.
type Tokens<'a, P> = TokenProvider<'a, <P as SyncPorts>::Grants, <P as SyncPorts>::Refresher>;

/// The ports syncing talks to, bundled so code generic over them names one type parameter:
/// production's is [`handler::Production`], unit tests bundle fakes.
pub trait SyncPorts {
    type Calendar: Calendar;
    type States: SyncStateStore;
    type Grants: GrantAccess;
    type Refresher: TokenRefresher;
    /// The app's Events table, read by the resync only.
    type Events: EventsSource;
    /// Where `Grant Needs Reauth`, `Sync Parked` and `Calendar Recreated` go.
    type Lifecycle: LifecycleEvents;
    /// Hands a user to the resync (a calendar made anew must get every row again).
    type Backfill: AfterConnect;
}

/// Everything syncing needs: the Calendar API, the sync-state store, the user's grants, the
/// token refresher, the app's rows and the lifecycle events (each behind its trait), and the
/// limits.
pub struct Syncer<P: SyncPorts> {
    pub calendar: P::Calendar,
    pub states: P::States,
    pub grants: P::Grants,
    pub refresher: P::Refresher,
    pub events: P::Events,
    pub lifecycle: P::Lifecycle,
    pub retry: RetryPolicy,
    /// The container's rates of Google calls, per user and in all.
    pub pacer: pacing::Pacer,
    /// Event groups applied at the same time (`SYNC_CONCURRENCY`).
    pub concurrency: usize,
    /// The dedicated calendar's title (`CALENDAR_MODE=dedicated`); `None`: rows go to the
    /// calendar they name.
    pub app_calendar: Option<String>,
    pub backfill: P::Backfill,
}

#[cfg(test)]
mod tests;
