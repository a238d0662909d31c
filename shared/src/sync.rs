//! The event-sync handler: DynamoDB stream batches applied to Google Calendar in order,
//! idempotently, with parking and replay.
//!
//! - [`batch`]: groups a batch by event id, applies each group in stream order, runs groups
//!   concurrently, and names the records that must be retried.
//! - [`apply`]: what one change (upsert or remove) does to Google and to the sync state.
//! - [`retry`]: backoff with jitter inside the invocation's remaining time.
//! - [`replay`]: re-applies a user's parked changes from the current rows after they connect.
//! - [`handler`]: the Lambda entry point and the production wiring ([`handler::SyncDeps`]).
//!
//! `shared/README-sync.md` explains the semantics for users.

pub mod apply;
pub mod batch;
pub mod handler;
pub mod replay;
pub mod retry;

pub use handler::handle;

use retry::RetryPolicy;

/// Everything syncing needs: the Calendar API, the sync-state store, the user's grants and the
/// token refresher (each behind its trait), and the limits.
pub struct Syncer<C, S, G, R> {
    pub calendar: C,
    pub states: S,
    pub grants: G,
    pub refresher: R,
    pub retry: RetryPolicy,
    /// Event groups applied at the same time (`SYNC_CONCURRENCY`).
    pub concurrency: usize,
}

#[cfg(test)]
mod tests;
