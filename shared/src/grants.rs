//! Grants: one per app user, the Google authorization calsync holds, with tokens sealed at rest.
//!
//! A [`Grant`] holds plaintext tokens in memory (as `secrecy` types); [`DynamoGrantStore`](crate::store::DynamoGrantStore) seals
//! them with the [`Vault`](crate::vault::Vault) on write and opens them on read, binding each
//! ciphertext to the grants table and the user id. Every write is conditional on the version that
//! was read ([`GrantStore::save`]), so two writers never silently overwrite each other: the loser
//! gets [`GrantError::Conflict`] and re-reads.

use std::future::Future;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::sync_state::Page;
use crate::{secrets::SecretsError, vault::VaultError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// The grant holds a refresh token that Google last accepted.
    Active,
    /// Google refused the refresh token (`invalid_grant`); the user must connect again.
    NeedsReauth,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::NeedsReauth => "needs_reauth",
        }
    }
}

/// Why a grant needs the user to connect again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReauthReason {
    /// Google refused the refresh token: revoked, expired, unused for six months, a testing-mode
    /// app after seven days.
    InvalidGrant,
    /// Google refused the refresh token under a Workspace session-control policy (`invalid_rapt`).
    InvalidRapt,
    /// The stored tokens cannot be opened (damaged ciphertext, a key gone from the keyring).
    UnreadableGrant,
}

impl ReauthReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReauthReason::InvalidGrant => "invalid_grant",
            ReauthReason::InvalidRapt => "invalid_rapt",
            ReauthReason::UnreadableGrant => "unreadable_grant",
        }
    }
}

/// A lifecycle event reported at most once per needs_reauth episode of a grant; the grant item
/// remembers it (see [`GrantStore::mark_reported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// `Grant Needs Reauth` was sent.
    NeedsReauth,
    /// `Sync Parked` was sent.
    Parked,
}

impl Marker {
    /// The grant item's attribute holding when it was reported.
    pub fn attribute(self) -> &'static str {
        match self {
            Marker::NeedsReauth => "needs_reauth_reported_at",
            Marker::Parked => "parked_reported_at",
        }
    }
}

/// A short claim on a grant's refresh, so that of several invocations holding the same expired
/// access token one asks Google and the others wait for its answer on the grant
/// ([`GrantStore::claim_refresh`]). It lives on the grant item beside the version and dies with
/// the next full write of the grant (which is how a successful refresh releases it) or at `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshLease {
    /// Random per claim: only its holder releases it.
    pub owner: String,
    pub until: DateTime<Utc>,
}

impl RefreshLease {
    /// A new lease of its own, running for `length` from now.
    pub fn new(length: chrono::Duration) -> Self {
        use rand::Rng;
        Self {
            owner: format!("{:016x}", rand::thread_rng().r#gen::<u64>()),
            until: Utc::now() + length,
        }
    }
}

/// The calendar calsync made for the user (`CALENDAR_MODE=dedicated`) and when: every copy
/// synced before `created_at` lived in an earlier calendar (one the user deleted), so a resync
/// writes it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCalendar {
    pub id: String,
    pub created_at: DateTime<Utc>,
}

/// A user's Google authorization. `version` is the stored version this value was read at
/// (0 = not stored yet).
#[derive(Clone, Debug)]
pub struct Grant {
    pub user_id: String,
    pub status: GrantStatus,
    pub google_sub: String,
    pub google_email: Option<String>,
    pub scopes: Vec<String>,
    pub connected_at: DateTime<Utc>,
    pub refreshed_at: Option<DateTime<Utc>>,
    pub access_token: Option<SecretString>,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token: Option<SecretString>,
    /// Why the grant needs reauth (set with that status; `UnreadableGrant` is set on read).
    pub reauth_reason: Option<ReauthReason>,
    /// When `Grant Needs Reauth` was sent for this episode. Every full write of the grant (a
    /// connect, a refresh, a retirement) starts a new episode with both markers unset.
    pub needs_reauth_reported_at: Option<DateTime<Utc>>,
    /// When `Sync Parked` was sent for this episode.
    pub parked_reported_at: Option<DateTime<Utc>>,
    /// The dedicated calendar, in that mode (kept across reconnects of the same Google account).
    pub calendar: Option<AppCalendar>,
    pub version: u64,
}

impl Grant {
    /// When `marker` was reported in this episode.
    pub fn reported(&self, marker: Marker) -> Option<DateTime<Utc>> {
        match marker {
            Marker::NeedsReauth => self.needs_reauth_reported_at,
            Marker::Parked => self.parked_reported_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(
        "the grant of user {user_id:?} was changed by another writer since it was read; read it again and retry"
    )]
    Conflict { user_id: String },
    #[error("grant store request failed: {0}")]
    Store(String),
    #[error("the stored grant of user {user_id:?} is unreadable: {reason}")]
    Corrupt { user_id: String, reason: String },
    #[error("a token of user {user_id:?} could not be sealed or opened: {source}")]
    Vault {
        user_id: String,
        #[source]
        source: VaultError,
    },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

/// Where grants live. Methods return `Send` futures so handlers can run them on any task.
pub trait GrantStore: Send + Sync {
    fn get(&self, user_id: &str) -> impl Future<Output = Result<Option<Grant>, GrantError>> + Send;

    /// The grants of `user_ids` (distinct) that exist, in no particular order: what a batch
    /// reads at once instead of one read per user.
    fn get_many(
        &self,
        user_ids: &[&str],
    ) -> impl Future<Output = Result<Vec<Grant>, GrantError>> + Send {
        async move {
            let mut grants = Vec::new();
            for user_id in user_ids {
                grants.extend(self.get(user_id).await?);
            }
            Ok(grants)
        }
    }

    /// Writes `grant` if the stored version is still `grant.version` (0: no item may exist).
    /// Returns the grant with its new version.
    fn save(&self, grant: &Grant) -> impl Future<Output = Result<Grant, GrantError>> + Send;

    /// Deletes the token material of an existing grant and sets its status, whatever its
    /// version (nothing to do when the user has no grant). This is the one write not
    /// conditional on a version: prefer [`GrantStore::retire`], which cannot wipe a grant the
    /// user renewed after `grant` was read.
    fn delete_tokens(
        &self,
        user_id: &str,
        status: GrantStatus,
    ) -> impl Future<Output = Result<(), GrantError>> + Send;

    /// Deletes the token material of `grant` and sets `status` if the stored version is still
    /// `grant.version` ([`GrantError::Conflict`] otherwise: re-read, the user may have
    /// reconnected). Used when Google refused this grant's refresh token, for `reason`.
    fn retire(
        &self,
        grant: &Grant,
        status: GrantStatus,
        reason: ReauthReason,
    ) -> impl Future<Output = Result<Grant, GrantError>> + Send {
        let retired = Grant {
            status,
            access_token: None,
            access_token_expires_at: None,
            refresh_token: None,
            reauth_reason: Some(reason),
            needs_reauth_reported_at: None,
            parked_reported_at: None,
            ..grant.clone()
        };
        async move { self.save(&retired).await }
    }

    /// Records that the lifecycle events `markers` were reported for `grant`'s episode, if the
    /// stored version is still `grant.version` and none of them is recorded yet. Returns whether
    /// this call recorded them: only then does the caller send the events, so concurrent
    /// invocations send each one once. Neither tokens nor the version change (a writer that read
    /// the grant before still wins, and its full write starts a new episode).
    fn mark_reported(
        &self,
        grant: &Grant,
        markers: &[Marker],
    ) -> impl Future<Output = Result<bool, GrantError>> + Send;

    /// Takes `lease` on the refresh of `user_id`'s grant if the stored version is still `version`
    /// and no unexpired lease is held. Returns whether this call took it; false means another
    /// writer got there first (re-read the grant: it may already hold a fresh token). Neither
    /// tokens nor the version change, so the holder's own refreshed write still succeeds.
    fn claim_refresh(
        &self,
        user_id: &str,
        version: u64,
        lease: &RefreshLease,
    ) -> impl Future<Output = Result<bool, GrantError>> + Send;

    /// Gives `lease` up early (its refresh failed), if it is still the one held.
    fn release_refresh(
        &self,
        user_id: &str,
        lease: &RefreshLease,
    ) -> impl Future<Output = Result<(), GrantError>> + Send;

    /// Removes `grant` entirely (the user disconnected) if the stored version is still
    /// `grant.version`; [`GrantError::Conflict`] otherwise. No grant stored: nothing to do.
    fn delete(&self, grant: &Grant) -> impl Future<Output = Result<(), GrantError>> + Send;

    /// The app users whose stored grant names Google account `google_sub` (through an eventually
    /// consistent index: callers re-read each one before trusting it, see [`account_in_use`]).
    fn holders(
        &self,
        google_sub: &str,
    ) -> impl Future<Output = Result<Vec<String>, GrantError>> + Send;

    /// Seals `user_id`'s tokens again under the keyring's current key when one was sealed under
    /// another, so a rotation can finish: the sweep re-seals grants nobody refreshed since.
    /// Returns whether it did. A grant that cannot be opened is left as it is.
    fn reseal(&self, user_id: &str) -> impl Future<Output = Result<bool, GrantError>> + Send;

    /// One page of the users whose grant is `active` (the sweep resyncs each): `cursor` is the
    /// previous page's [`Page::next`]. A page may hold fewer than a full page, or none, and
    /// still have a next.
    fn active_users(
        &self,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<String>, GrantError>> + Send;
}

/// Whether a stored grant other than `except_user`'s still holds a usable refresh token for
/// Google account `google_sub`.
///
/// Google's revoke ends the whole grant of an account for the client (every token of it), so
/// calsync revokes an account's tokens only when this is false. A `needs_reauth` grant holds no
/// token and does not count: revoking cannot hurt it.
pub async fn account_in_use<G: GrantStore>(
    grants: &G,
    google_sub: &str,
    except_user: Option<&str>,
) -> Result<bool, GrantError> {
    for user_id in grants.holders(google_sub).await? {
        if Some(user_id.as_str()) == except_user {
            continue;
        }
        // The index may lag: the grant itself (a consistent read) decides.
        if let Some(grant) = grants.get(&user_id).await?
            && grant.google_sub == google_sub
            && grant.status == GrantStatus::Active
            && grant.refresh_token.is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An active grant of `user` holding both tokens, not stored yet.
    pub(crate) fn grant(user: &str) -> Grant {
        Grant {
            user_id: user.into(),
            status: GrantStatus::Active,
            google_sub: "100".into(),
            google_email: Some("alice@example.com".into()),
            scopes: vec!["https://www.googleapis.com/auth/calendar.events.owned".into()],
            connected_at: Utc::now(),
            refreshed_at: None,
            access_token: Some(SecretString::from("at".to_string())),
            access_token_expires_at: Some(Utc::now()),
            refresh_token: Some(SecretString::from("rt".to_string())),
            reauth_reason: None,
            needs_reauth_reported_at: None,
            parked_reported_at: None,
            calendar: None,
            version: 0,
        }
    }

    #[test]
    fn grant_debug_redacts_tokens() {
        let text = format!("{:?}", grant("u"));
        assert!(!text.contains("\"at\"") && !text.contains("\"rt\""));
    }

    #[test]
    fn status_is_stored_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&GrantStatus::NeedsReauth).unwrap(),
            "\"needs_reauth\""
        );
        assert_eq!(GrantStatus::Active.as_str(), "active");
        for reason in [
            ReauthReason::InvalidGrant,
            ReauthReason::InvalidRapt,
            ReauthReason::UnreadableGrant,
        ] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                reason.as_str(),
                "the stored and the reported names agree"
            );
        }
    }
}
