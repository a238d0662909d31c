//! Replay: after a user connects, every parked change of that user (sync state `needs_reauth` or
//! `not_connected`) is applied from the CURRENT row of the Events table, not from the old stream
//! record, so the calendar ends up as the app is now. A row that is gone is deleted from Google if
//! Google had a copy. The sync state keeps its sequence number and the write is conditional on it,
//! so a stream record that lands meanwhile wins.

use std::future::Future;

use super::{SyncPorts, Syncer, apply::Change, retry::Deadline};
use crate::{
    sync_state::{Expected, StateError, SyncStateStore},
    tokens::TokenProvider,
};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot list the parked changes: {0}")]
    State(#[from] StateError),
    #[error("cannot read the Events table: {0}")]
    Events(String),
}

/// Reads the current row of an event from the app's Events table
/// ([`crate::store::DynamoEvents`]).
pub trait EventsSource: Send + Sync {
    fn current_row(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<serde_dynamo::Item>, ReplayError>> + Send;
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Parked changes now applied (synced, deleted, or marked invalid).
    pub applied: usize,
    /// Still parked (the grant is still unusable).
    pub still_parked: usize,
    /// Failed for now (Google or a store unavailable), or overtaken by a newer stream record.
    pub failed: usize,
}

impl<P: SyncPorts> Syncer<P> {
    /// Applies every parked change of `user_id` from the current rows.
    pub async fn replay_user(
        &self,
        user_id: &str,
        deadline: Deadline,
    ) -> Result<ReplayReport, ReplayError> {
        let parked = self.states.parked(user_id).await?;
        let tokens = TokenProvider::new(&self.grants, &self.refresher);
        let mut report = ReplayReport::default();
        for previous in parked {
            // Out of time: the rest stays parked (the status route counts it) for the next connect.
            if tokio::time::Instant::now() + self.retry.safety_margin > deadline.0 {
                report.still_parked += 1;
                continue;
            }
            let event_id = previous.event_id.as_str();
            let row = self.events.current_row(event_id).await?;
            let change = match &row {
                Some(image) => Change::Upsert {
                    image,
                    old_image: None,
                },
                None => Change::Remove { old_image: None },
            };
            let next = match self
                .apply(&tokens, event_id, Some(&previous), change, deadline)
                .await
            {
                Ok(next) => next,
                Err(failure) => {
                    tracing::warn!(event_id, %failure, "parked change could not be replayed now");
                    report.failed += 1;
                    continue;
                }
            };
            match self.states.put(&next, &Expected::of(Some(&previous))).await {
                Ok(()) if next.status.is_parked() => report.still_parked += 1,
                Ok(()) => report.applied += 1,
                Err(error) => {
                    tracing::warn!(event_id, %error, "replayed change not recorded");
                    report.failed += 1;
                }
            }
        }
        tracing::info!(user_id, ?report, "replayed parked changes");
        Ok(report)
    }
}

/// The callback's [`crate::http::AfterConnect`] hook: replays the user's parked changes within
/// `budget` (the callback must still answer the browser in time). Problems are logged, never
/// turned into a failed connect; what is left stays parked.
pub struct ReplayOnConnect<P: SyncPorts> {
    pub syncer: Syncer<P>,
    pub budget: std::time::Duration,
}

impl<P: SyncPorts> crate::http::AfterConnect for ReplayOnConnect<P> {
    async fn connected(&self, user_id: &str) {
        let deadline = Deadline::in_(self.budget);
        if let Err(error) = self.syncer.replay_user(user_id, deadline).await {
            tracing::error!(user_id, %error, "replay after connect failed; changes stay parked");
        }
    }
}

/// The production hook: the sync's clients, the Events table among them.
pub type ProductionReplay = ReplayOnConnect<super::handler::Production>;

/// Time a connect may spend replaying before answering the browser.
pub const REPLAY_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// Calendar timeout during a replay: shorter, so one slow answer cannot eat the whole budget.
pub const REPLAY_CALENDAR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl ProductionReplay {
    pub fn from_config(config: &crate::config::Config, clients: &crate::aws::Clients) -> Self {
        let mut syncer =
            super::handler::SyncDeps::from_config(config, clients, REPLAY_CALENDAR_TIMEOUT);
        // One attempt may still start while the budget allows one call.
        syncer.retry.safety_margin = REPLAY_CALENDAR_TIMEOUT;
        Self {
            syncer,
            budget: REPLAY_BUDGET,
        }
    }
}
