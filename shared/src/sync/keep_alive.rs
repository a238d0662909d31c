//! Keep-alive: Google ends a refresh token that goes unused for six months, and calsync uses one
//! only when a change needs a fresh access token. So each user's resync (daily, through the
//! sweep) first refreshes a grant nobody refreshed for `KEEPALIVE_DAYS`. When Google refuses,
//! the grant turns `needs_reauth` and the app hears `Grant Needs Reauth` at once, before any
//! change of the user has to park.

use chrono::{Duration, Utc};

use super::{SyncPorts, Syncer};
use crate::{
    grants::Marker,
    lifecycle::{self, LifecycleEvent},
    tokens::{GrantAccess, TokenError, TokenProvider},
};

/// What the keep-alive did for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepAlive {
    /// Google accepted the refresh token again.
    Refreshed,
    /// Used within the idle period: nothing to do.
    NotDue,
    /// No grant, or one that already needs reauth (whose `Grant Needs Reauth` is sent now if
    /// its episode has not sent it: a grant found unreadable, say).
    Inactive,
    /// Google refused the refresh token: the grant needs reauth now.
    Refused,
    /// The token endpoint or the grant store failed; the next sweep tries again.
    Failed(String),
}

impl<P: SyncPorts> Syncer<P> {
    /// Refreshes `user_id`'s grant if Google last accepted its refresh token `idle_after` ago
    /// or longer.
    pub async fn keep_alive(&self, user_id: &str, idle_after: Duration) -> KeepAlive {
        let grant = match self.grants.load(user_id).await {
            Ok(Some(grant)) => grant,
            Ok(None) => return KeepAlive::Inactive,
            Err(error) => return KeepAlive::Failed(error.to_string()),
        };
        if !grant.active || grant.refresh_token.is_none() {
            self.report_needs_reauth(user_id).await;
            return KeepAlive::Inactive;
        }
        if Utc::now() - grant.last_used_at < idle_after {
            return KeepAlive::NotDue;
        }
        let tokens = TokenProvider::new(&self.grants, &self.refresher);
        match tokens.refresh_now(user_id).await {
            Ok(()) => KeepAlive::Refreshed,
            Err(TokenError::NeedsReauth) => {
                self.report_needs_reauth(user_id).await;
                KeepAlive::Refused
            }
            Err(error) => KeepAlive::Failed(error.to_string()),
        }
    }

    /// Sends `Grant Needs Reauth` unless this episode of the grant already did (a parked change
    /// sends it too; whichever comes first records it on the grant).
    async fn report_needs_reauth(&self, user_id: &str) {
        match self
            .grants
            .report_owed(user_id, &[Marker::NeedsReauth])
            .await
        {
            Ok(Some(report)) if report.needs_reauth => {
                let email = report.google_email.as_deref();
                let event = LifecycleEvent::needs_reauth(user_id, email, report.reason);
                lifecycle::emit(&self.lifecycle, event).await;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(user_id, %error, "cannot tell whether Grant Needs Reauth is owed; none sent");
            }
        }
    }
}
