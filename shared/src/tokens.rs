//! Access tokens for event-sync: one [`TokenProvider`] per batch hands out each user's Google access
//! token, refreshing it when it expires within 5 minutes or after Google answered 401, at most once
//! per user per batch however many tasks of that user run at the same time.
//!
//! Across invocations (separate Lambda environments holding the same expired token) a refresh
//! first takes a short lease on the grant ([`REFRESH_LEASE`], a compare-and-set on the grant's
//! version): one invocation asks Google, the others re-read the grant until its new token is
//! there, and refresh themselves only if the lease runs out first.
//!
//! When Google refuses the refresh token (`invalid_grant`, or `invalid_rapt`), the grant is marked
//! `needs_reauth` with that reason and its token material deleted; the caller then parks that
//! user's records and, once per user per batch, asks [`GrantAccess::report_owed`] which lifecycle
//! events of the episode are still to be sent. The grant store and the OAuth client sit behind
//! [`GrantAccess`] and [`TokenRefresher`] so unit tests use fakes.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex as AsyncMutex;

use crate::{
    grants::{AppCalendar, Marker, ReauthReason, RefreshLease},
    metrics::{self, Metric},
};

/// A token that expires sooner than this is refreshed before use.
pub const REFRESH_MARGIN: Duration = Duration::minutes(5);

/// How long one invocation's claim on a user's refresh keeps the others waiting: the token
/// client's timeout ([`crate::google_oauth::REQUEST_TIMEOUT`], 10 s) plus the write of the new
/// token. A waiting invocation never waits longer than this (and one poll) before it refreshes
/// itself, so a holder that died or hangs costs the others this much time, not a failure.
pub const REFRESH_LEASE: Duration = Duration::seconds(12);

/// A waiting invocation re-reads the grant after this, doubling up to [`LEASE_POLL_MAX`].
const LEASE_POLL_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const LEASE_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(400);

/// What the token provider needs to know about a user's grant.
#[derive(Clone, Debug)]
pub struct GrantTokens {
    /// False once Google refused the refresh token (`needs_reauth`).
    pub active: bool,
    pub access_token: Option<SecretString>,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token: Option<SecretString>,
    /// When Google last accepted the refresh token (the last refresh, or the connect): Google
    /// ends a refresh token unused for six months, so the keep-alive refreshes idle ones.
    pub last_used_at: DateTime<Utc>,
    /// The stored version this was read at: a refresh lease is claimed only on it.
    pub version: u64,
    /// The dedicated calendar (`CALENDAR_MODE=dedicated`).
    pub calendar: Option<AppCalendar>,
    /// For the lifecycle events this grant's calendar causes.
    pub google_email: Option<String>,
}

/// A fresh access token.
#[derive(Clone, Debug)]
pub struct FreshToken {
    pub access_token: SecretString,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("Google refused the refresh token ({}); the user must connect again", .0.as_str())]
    InvalidGrant(ReauthReason),
    #[error("the token endpoint is unavailable, retry later: {0}")]
    Transient(String),
    #[error("the token endpoint refused the refresh: {0}")]
    Rejected(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("the user has not connected Google Calendar")]
    NotConnected,
    #[error("Google refused the user's refresh token; the user must connect again")]
    NeedsReauth,
    #[error("the access token could not be refreshed now, retry later: {0}")]
    Transient(String),
    #[error("Google rejected the access token even right after a refresh")]
    StillUnauthorized,
    #[error("the grant store failed: {0}")]
    Store(String),
}

impl TokenError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TokenError::Transient(_) | TokenError::Store(_) | TokenError::StillUnauthorized
        )
    }
}

/// The lifecycle events a `needs_reauth` user's episode still owes the app: each is reported by
/// the one caller that recorded it on the grant ([`GrantAccess::report_owed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkReport {
    pub google_email: Option<String>,
    pub reason: ReauthReason,
    /// Send `Grant Needs Reauth`.
    pub needs_reauth: bool,
    /// Send `Sync Parked`.
    pub parked: bool,
}

/// The grant operations token handling needs. Implementations never put a token in an error.
pub trait GrantAccess: Send + Sync {
    fn load(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<GrantTokens>, TokenError>> + Send;

    /// The grants of `user_ids` that exist, keyed by user, read at once (see
    /// [`TokenProvider::prefetch`]).
    fn load_many(
        &self,
        user_ids: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, GrantTokens>, TokenError>> + Send {
        async move {
            let mut grants = HashMap::new();
            for user_id in user_ids {
                if let Some(grant) = self.load(user_id).await? {
                    grants.insert(user_id.to_string(), grant);
                }
            }
            Ok(grants)
        }
    }

    /// Stores a refreshed access token on the user's grant (re-reading on a version conflict).
    fn record_refresh(
        &self,
        user_id: &str,
        token: &FreshToken,
    ) -> impl Future<Output = Result<(), TokenError>> + Send;

    /// Takes `lease` on the user's refresh if the grant is still at `version` and no other lease
    /// runs (see [`crate::grants::GrantStore::claim_refresh`]). False: re-read the grant.
    fn claim_refresh(
        &self,
        user_id: &str,
        version: u64,
        lease: &RefreshLease,
    ) -> impl Future<Output = Result<bool, TokenError>> + Send;

    /// Ends `lease` early, after its refresh failed, so the others need not wait it out.
    fn release_refresh(
        &self,
        user_id: &str,
        lease: &RefreshLease,
    ) -> impl Future<Output = Result<(), TokenError>> + Send;

    /// Marks the grant `needs_reauth` for `reason` and deletes its token material, if it still
    /// holds `refused` (the refresh token Google refused). Returns false when the grant changed
    /// meanwhile (the user reconnected): then nothing is written.
    fn mark_needs_reauth(
        &self,
        user_id: &str,
        refused: &SecretString,
        reason: ReauthReason,
    ) -> impl Future<Output = Result<bool, TokenError>> + Send;

    /// `user_id`'s grant needs reauth (a change parked: `Grant Needs Reauth` and `Sync Parked`;
    /// the keep-alive's refresh was refused: only `Grant Needs Reauth`): records on the grant
    /// which of `markers` this episode had not reported yet, and returns them for the caller to
    /// send (`None`: nothing left to send, or the grant is usable again). Concurrent callers
    /// never both get the same event.
    fn report_owed(
        &self,
        user_id: &str,
        markers: &[Marker],
    ) -> impl Future<Output = Result<Option<ParkReport>, TokenError>> + Send;

    /// Records `made` as the user's dedicated calendar if the grant still names `gone` (`None`:
    /// no calendar), and returns the calendar the grant names afterwards: `made`, or the one
    /// another invocation recorded first (then `made` is not needed).
    fn replace_calendar(
        &self,
        user_id: &str,
        gone: Option<&str>,
        made: &AppCalendar,
    ) -> impl Future<Output = Result<AppCalendar, TokenError>> + Send;
}

/// What a batch knows of a user's dedicated calendar: read with the grant once, replaced when
/// the user deleted it. A recreation holds the lock, so one batch makes at most one per user.
#[derive(Default)]
pub enum CalendarSlot {
    #[default]
    Unknown,
    Known {
        calendar: Option<AppCalendar>,
        /// This batch already made one in place of a deleted one: it makes no other.
        remade: bool,
    },
}

/// Exchanges a refresh token for a new access token.
pub trait TokenRefresher: Send + Sync {
    fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> impl Future<Output = Result<FreshToken, RefreshError>> + Send;
}

#[derive(Default)]
enum Slot {
    #[default]
    Unknown,
    Ready {
        token: SecretString,
        expires_at: Option<DateTime<Utc>>,
        refresh_token: Option<SecretString>,
        refreshed: bool,
        /// The grant's stored version when read (0 after this invocation's own refresh, which
        /// never claims again in this batch).
        version: u64,
    },
    Unusable(TokenError),
}

/// `user_id`'s slot in one of the provider's per-user caches, made empty the first time it is asked
/// for.
fn user_slot<T: Default>(
    slots: &Mutex<HashMap<String, Arc<AsyncMutex<T>>>>,
    user_id: &str,
) -> Arc<AsyncMutex<T>> {
    slots
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(user_id.to_string())
        .or_default()
        .clone()
}

/// Per-batch token cache. Each user has an async mutex, so concurrent tasks of one user wait for
/// the single load or refresh instead of starting their own.
pub struct TokenProvider<'a, G, R> {
    grants: &'a G,
    refresher: &'a R,
    users: Mutex<HashMap<String, Arc<AsyncMutex<Slot>>>>,
    /// Users whose parking this batch already reported (one grant read per user per batch).
    parked: Mutex<HashSet<String>>,
    calendars: Mutex<HashMap<String, Arc<AsyncMutex<CalendarSlot>>>>,
}

impl<'a, G: GrantAccess, R: TokenRefresher> TokenProvider<'a, G, R> {
    pub fn new(grants: &'a G, refresher: &'a R) -> Self {
        Self {
            grants,
            refresher,
            users: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashSet::new()),
            calendars: Mutex::new(HashMap::new()),
        }
    }

    /// The grants this provider reads.
    pub fn grants(&self) -> &'a G {
        self.grants
    }

    /// What this batch knows of `user_id`'s dedicated calendar (see [`CalendarSlot`]).
    pub fn calendar_slot(&self, user_id: &str) -> Arc<AsyncMutex<CalendarSlot>> {
        user_slot(&self.calendars, user_id)
    }

    /// True the first time it is asked about `user_id` in this batch: only then does a parked
    /// change ask the grant which lifecycle events are still owed.
    pub fn first_park(&self, user_id: &str) -> bool {
        self.parked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(user_id.to_string())
    }

    fn slot(&self, user_id: &str) -> Arc<AsyncMutex<Slot>> {
        user_slot(&self.users, user_id)
    }

    /// The user's access token, refreshed first if it expires within [`REFRESH_MARGIN`].
    pub async fn access_token(&self, user_id: &str) -> Result<SecretString, TokenError> {
        let slot = self.slot(user_id);
        let mut slot = slot.lock().await;
        if matches!(*slot, Slot::Unknown) {
            *slot = self.load(user_id).await?;
        }
        let needs_refresh = match &*slot {
            Slot::Unusable(e) => return Err(e.clone()),
            Slot::Ready {
                refreshed: true, ..
            } => false,
            Slot::Ready { expires_at, .. } => {
                expires_at.is_none_or(|at| at <= Utc::now() + REFRESH_MARGIN)
            }
            Slot::Unknown => unreachable!("loaded above"),
        };
        if needs_refresh {
            self.refresh(user_id, &mut slot).await?;
        }
        match &*slot {
            Slot::Ready { token, .. } => Ok(token.clone()),
            Slot::Unusable(e) => Err(e.clone()),
            Slot::Unknown => unreachable!("loaded above"),
        }
    }

    /// Refreshes the user's access token now, whatever its expiry (the keep-alive: Google ends
    /// refresh tokens nobody uses). Once per batch, like every refresh here.
    pub async fn refresh_now(&self, user_id: &str) -> Result<(), TokenError> {
        let slot = self.slot(user_id);
        let mut slot = slot.lock().await;
        if matches!(*slot, Slot::Unknown) {
            *slot = self.load(user_id).await?;
        }
        match &*slot {
            Slot::Unusable(e) => Err(e.clone()),
            Slot::Ready {
                refreshed: true, ..
            } => Ok(()),
            _ => self.refresh(user_id, &mut slot).await,
        }
    }

    /// After Google answered 401 to `rejected`: a token to retry with, refreshed once per batch.
    /// If another task already refreshed since `rejected` was handed out, that token is reused.
    pub async fn after_unauthorized(
        &self,
        user_id: &str,
        rejected: &SecretString,
    ) -> Result<SecretString, TokenError> {
        let slot = self.slot(user_id);
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Unusable(e) => return Err(e.clone()),
            Slot::Ready {
                token, refreshed, ..
            } => {
                if token.expose_secret() != rejected.expose_secret() {
                    return Ok(token.clone());
                }
                if *refreshed {
                    return Err(TokenError::StillUnauthorized);
                }
            }
            Slot::Unknown => *slot = self.load(user_id).await?,
        }
        self.refresh(user_id, &mut slot).await?;
        match &*slot {
            Slot::Ready { token, .. } => Ok(token.clone()),
            Slot::Unusable(e) => Err(e.clone()),
            Slot::Unknown => unreachable!("refreshed above"),
        }
    }

    /// Reads the grants of a batch's users at once, so each user's first token costs no read
    /// of its own. Best effort: a user it could not read is read alone when first needed.
    pub async fn prefetch(&self, user_ids: &[&str]) {
        let grants = match self.grants.load_many(user_ids).await {
            Ok(grants) => grants,
            Err(error) => {
                tracing::debug!(%error, "the batch's grants were not read at once; each is read when first needed");
                return;
            }
        };
        let mut grants = grants;
        for user_id in user_ids {
            let grant = grants.remove(*user_id);
            // The dedicated calendar the grant names is known from the same read.
            let calendar = self.calendar_slot(user_id);
            if let Ok(mut calendar) = calendar.try_lock()
                && matches!(*calendar, CalendarSlot::Unknown)
            {
                *calendar = CalendarSlot::Known {
                    calendar: grant.as_ref().and_then(|g| g.calendar.clone()),
                    remade: false,
                };
            }
            let slot = self.slot(user_id);
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            if matches!(*slot, Slot::Unknown) {
                *slot = Self::slot_of(grant);
            }
        }
    }

    async fn load(&self, user_id: &str) -> Result<Slot, TokenError> {
        Ok(Self::slot_of(self.grants.load(user_id).await?))
    }

    fn slot_of(grant: Option<GrantTokens>) -> Slot {
        let Some(grant) = grant else {
            return Slot::Unusable(TokenError::NotConnected);
        };
        if !grant.active || grant.refresh_token.is_none() {
            return Slot::Unusable(TokenError::NeedsReauth);
        }
        // No stored access token: an empty one with no expiry, so the first use refreshes.
        let expires_at = grant
            .access_token
            .as_ref()
            .and(grant.access_token_expires_at);
        Slot::Ready {
            token: grant
                .access_token
                .unwrap_or_else(|| SecretString::from(String::new())),
            expires_at,
            refresh_token: grant.refresh_token,
            refreshed: false,
            version: grant.version,
        }
    }

    /// Replaces the slot's token, unless another invocation is refreshing it right now: then
    /// waits (at most [`REFRESH_LEASE`] and one poll) for the token it stores on the grant.
    async fn refresh(&self, user_id: &str, slot: &mut Slot) -> Result<(), TokenError> {
        let Slot::Ready {
            token: stale,
            version,
            ..
        } = &*slot
        else {
            return Ok(());
        };
        let (stale, mut version) = (stale.clone(), *version);
        let give_up = tokio::time::Instant::now()
            + REFRESH_LEASE.to_std().unwrap_or_default()
            + LEASE_POLL_MAX;
        let mut poll = LEASE_POLL_FIRST;
        loop {
            let lease = RefreshLease::new(REFRESH_LEASE);
            if self.grants.claim_refresh(user_id, version, &lease).await? {
                return self.refresh_holding(user_id, slot, &lease).await;
            }
            // Another invocation holds the lease, or wrote the grant since it was read: either
            // way the grant may already hold a token this one can use.
            *slot = self.load(user_id).await?;
            let Slot::Ready {
                token,
                expires_at,
                version: read,
                ..
            } = &*slot
            else {
                return match &*slot {
                    Slot::Unusable(e) => Err(e.clone()),
                    _ => Ok(()),
                };
            };
            let fresh = token.expose_secret() != stale.expose_secret()
                && expires_at.is_some_and(|at| at > Utc::now() + REFRESH_MARGIN);
            if fresh {
                tracing::info!(user_id, "using the token another invocation just refreshed");
                metrics::count(Metric::TokenRefreshesShared);
                return Ok(());
            }
            if *read != version {
                // The grant moved on without a usable token (a reconnect, a marker): claim anew.
                version = *read;
                continue;
            }
            if tokio::time::Instant::now() + poll > give_up {
                return Err(TokenError::Transient(
                    "another invocation kept the refresh of this grant past its lease".into(),
                ));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(LEASE_POLL_MAX);
        }
    }

    /// The refresh itself, under `lease`: a stored token ends the lease (a full write of the
    /// grant drops it), a failure releases it.
    async fn refresh_holding(
        &self,
        user_id: &str,
        slot: &mut Slot,
        lease: &RefreshLease,
    ) -> Result<(), TokenError> {
        let outcome = self.refresh_once(user_id, slot).await;
        if !matches!(outcome, Ok(true))
            && let Err(error) = self.grants.release_refresh(user_id, lease).await
        {
            tracing::warn!(user_id, %error, "could not release the refresh lease; it runs out by itself");
        }
        outcome.map(drop)
    }

    /// Returns whether the new token was stored (which ended the lease).
    async fn refresh_once(&self, user_id: &str, slot: &mut Slot) -> Result<bool, TokenError> {
        let Slot::Ready { refresh_token, .. } = &*slot else {
            return Ok(false);
        };
        let refresh_token = refresh_token.clone().ok_or(TokenError::NeedsReauth)?;
        let refreshed = self.refresher.refresh(&refresh_token).await;
        metrics::count(match &refreshed {
            Ok(_) => Metric::TokenRefreshes,
            Err(RefreshError::InvalidGrant(_)) => Metric::InvalidGrants,
            Err(RefreshError::Transient(_) | RefreshError::Rejected(_)) => {
                Metric::TokenRefreshFailures
            }
        });
        match refreshed {
            Ok(fresh) => {
                // The new token works whether or not it is stored; failing to store it only costs
                // another refresh in a later batch, so that failure is logged, not returned.
                let stored = self.grants.record_refresh(user_id, &fresh).await;
                if let Err(error) = &stored {
                    tracing::warn!(user_id, %error, "could not store the refreshed access token");
                }
                *slot = Slot::Ready {
                    token: fresh.access_token,
                    expires_at: Some(fresh.expires_at),
                    refresh_token: Some(refresh_token),
                    refreshed: true,
                    version: 0,
                };
                Ok(stored.is_ok())
            }
            Err(RefreshError::InvalidGrant(reason)) => {
                if !self
                    .grants
                    .mark_needs_reauth(user_id, &refresh_token, reason)
                    .await?
                {
                    // The user reconnected while we refreshed: use the new grant on the retry.
                    *slot = self.load(user_id).await?;
                    return Err(TokenError::Transient(
                        "the grant was renewed during the refresh".into(),
                    ));
                }
                tracing::warn!(
                    user_id,
                    reason = reason.as_str(),
                    "Google refused the refresh token; grant marked needs_reauth"
                );
                *slot = Slot::Unusable(TokenError::NeedsReauth);
                Err(TokenError::NeedsReauth)
            }
            Err(RefreshError::Transient(reason)) => Err(TokenError::Transient(reason)),
            // invalid_client and other refusals are configuration trouble, not the user's: retry
            // later (the record fails and reaches the on-failure queue if it persists).
            Err(RefreshError::Rejected(reason)) => Err(TokenError::Transient(reason)),
        }
    }
}

/// In-memory fakes of [`GrantAccess`] and [`TokenRefresher`] for unit tests.
pub mod fakes {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct FakeGrants {
        pub grants: Mutex<HashMap<String, GrantTokens>>,
        pub refreshes_recorded: AtomicUsize,
        /// Per user: the reason of the needs_reauth episode and the markers reported in it.
        pub episodes: Mutex<HashMap<String, (ReauthReason, Vec<Marker>)>>,
        pub park_reports: AtomicUsize,
        /// Refresh leases; every write of a user's grant ends the user's.
        pub leases: crate::store::InMemoryLeases,
    }

    impl FakeGrants {
        pub fn with_user(self, user_id: &str, access_expires_in: Duration) -> Self {
            self.grants.lock().unwrap().insert(
                user_id.to_string(),
                GrantTokens {
                    active: true,
                    access_token: Some(SecretString::from(format!("at-{user_id}-0"))),
                    access_token_expires_at: Some(Utc::now() + access_expires_in),
                    refresh_token: Some(SecretString::from(format!("rt-{user_id}"))),
                    last_used_at: Utc::now(),
                    version: 1,
                    calendar: None,
                    google_email: None,
                },
            );
            self
        }

        pub fn is_active(&self, user_id: &str) -> Option<bool> {
            self.grants.lock().unwrap().get(user_id).map(|g| g.active)
        }
    }

    impl GrantAccess for FakeGrants {
        async fn load(&self, user_id: &str) -> Result<Option<GrantTokens>, TokenError> {
            Ok(self.grants.lock().unwrap().get(user_id).cloned())
        }

        async fn replace_calendar(
            &self,
            user_id: &str,
            gone: Option<&str>,
            made: &AppCalendar,
        ) -> Result<AppCalendar, TokenError> {
            let mut grants = self.grants.lock().unwrap();
            let grant = grants.get_mut(user_id).ok_or(TokenError::NotConnected)?;
            match &grant.calendar {
                Some(held) if Some(held.id.as_str()) != gone => Ok(held.clone()),
                _ => {
                    grant.calendar = Some(made.clone());
                    grant.version += 1;
                    Ok(made.clone())
                }
            }
        }

        async fn record_refresh(
            &self,
            user_id: &str,
            token: &FreshToken,
        ) -> Result<(), TokenError> {
            self.refreshes_recorded.fetch_add(1, Ordering::SeqCst);
            if let Some(g) = self.grants.lock().unwrap().get_mut(user_id) {
                g.access_token = Some(token.access_token.clone());
                g.access_token_expires_at = Some(token.expires_at);
                g.version += 1;
            }
            self.leases.end(user_id);
            Ok(())
        }

        async fn claim_refresh(
            &self,
            user_id: &str,
            version: u64,
            lease: &RefreshLease,
        ) -> Result<bool, TokenError> {
            let grants = self.grants.lock().unwrap();
            let stored = grants.get(user_id).map(|g| g.version);
            Ok(self.leases.claim(user_id, stored, version, lease))
        }

        async fn release_refresh(
            &self,
            user_id: &str,
            lease: &RefreshLease,
        ) -> Result<(), TokenError> {
            self.leases.release(user_id, lease);
            Ok(())
        }

        async fn mark_needs_reauth(
            &self,
            user_id: &str,
            refused: &SecretString,
            reason: ReauthReason,
        ) -> Result<bool, TokenError> {
            let mut grants = self.grants.lock().unwrap();
            let Some(g) = grants.get_mut(user_id) else {
                return Ok(true);
            };
            if g.refresh_token.as_ref().map(|t| t.expose_secret()) != Some(refused.expose_secret())
            {
                return Ok(false);
            }
            g.active = false;
            g.access_token = None;
            g.refresh_token = None;
            g.version += 1;
            self.leases.end(user_id);
            self.episodes
                .lock()
                .unwrap()
                .insert(user_id.to_string(), (reason, Vec::new()));
            Ok(true)
        }

        async fn report_owed(
            &self,
            user_id: &str,
            markers: &[Marker],
        ) -> Result<Option<ParkReport>, TokenError> {
            self.park_reports.fetch_add(1, Ordering::SeqCst);
            if self.is_active(user_id) != Some(false) {
                return Ok(None);
            }
            let mut episodes = self.episodes.lock().unwrap();
            let (reason, reported) = episodes
                .entry(user_id.to_string())
                .or_insert((ReauthReason::InvalidGrant, Vec::new()));
            let owed = |marker| markers.contains(&marker) && !reported.contains(&marker);
            let report = ParkReport {
                google_email: Some(format!("{user_id}@example.com")),
                reason: *reason,
                needs_reauth: owed(Marker::NeedsReauth),
                parked: owed(Marker::Parked),
            };
            for marker in markers {
                if !reported.contains(marker) {
                    reported.push(*marker);
                }
            }
            Ok((report.needs_reauth || report.parked).then_some(report))
        }
    }

    /// Refreshes to `at-<n>` tokens; refresh tokens listed in `revoked` get `invalid_grant`.
    #[derive(Default)]
    pub struct FakeRefresher {
        pub calls: AtomicUsize,
        pub revoked: Mutex<Vec<String>>,
    }

    impl TokenRefresher for FakeRefresher {
        async fn refresh(&self, refresh_token: &SecretString) -> Result<FreshToken, RefreshError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            // Yield so concurrent callers really overlap in tests.
            tokio::task::yield_now().await;
            if self
                .revoked
                .lock()
                .unwrap()
                .iter()
                .any(|r| r == refresh_token.expose_secret())
            {
                return Err(RefreshError::InvalidGrant(ReauthReason::InvalidGrant));
            }
            Ok(FreshToken {
                access_token: SecretString::from(format!("at-fresh-{n}")),
                expires_at: Utc::now() + Duration::hours(1),
            })
        }
    }
}

/// [`GrantAccess`] over the connect flow's [`crate::grants::GrantStore`].
pub struct StoredGrants<G>(pub G);

/// Attempts of a grant write that keeps meeting newer versions.
const SAVE_ATTEMPTS: usize = 3;

fn grant_tokens(g: crate::grants::Grant) -> GrantTokens {
    GrantTokens {
        active: g.status == crate::grants::GrantStatus::Active,
        access_token: g.access_token,
        access_token_expires_at: g.access_token_expires_at,
        refresh_token: g.refresh_token,
        last_used_at: g
            .refreshed_at
            .map_or(g.connected_at, |at| at.max(g.connected_at)),
        version: g.version,
        calendar: g.calendar,
        google_email: g.google_email,
    }
}

fn grant_error(error: crate::grants::GrantError) -> TokenError {
    TokenError::Store(error.to_string())
}

/// What [`StoredGrants::update_grant`] does with the grant it read.
enum GrantUpdate<T> {
    /// Leave the stored grant as it is and answer this.
    Decline(T),
    /// Save the changed grant, then answer this.
    Save(T),
}

impl<G: crate::grants::GrantStore> StoredGrants<G> {
    /// Reads `user_id`'s grant, lets `change` decline or change it, and saves the change. A save
    /// that meets a newer version reads and changes the grant again, up to [`SAVE_ATTEMPTS`] times;
    /// `storing` says what was being stored in the error when all of them met one.
    async fn update_grant<T>(
        &self,
        user_id: &str,
        storing: &str,
        no_grant: impl FnOnce() -> Result<T, TokenError>,
        mut change: impl FnMut(&mut crate::grants::Grant) -> GrantUpdate<T>,
    ) -> Result<T, TokenError> {
        for _ in 0..SAVE_ATTEMPTS {
            let Some(mut grant) = self.0.get(user_id).await.map_err(grant_error)? else {
                return no_grant();
            };
            let answer = match change(&mut grant) {
                GrantUpdate::Decline(answer) => return Ok(answer),
                GrantUpdate::Save(answer) => answer,
            };
            match self.0.save(&grant).await {
                Ok(_) => return Ok(answer),
                Err(crate::grants::GrantError::Conflict { .. }) => continue,
                Err(e) => return Err(grant_error(e)),
            }
        }
        Err(TokenError::Store(format!(
            "the grant of user {user_id:?} kept changing while {storing}"
        )))
    }
}

impl<G: crate::grants::GrantStore> GrantAccess for StoredGrants<G> {
    async fn load(&self, user_id: &str) -> Result<Option<GrantTokens>, TokenError> {
        let grant = self.0.get(user_id).await.map_err(grant_error)?;
        Ok(grant.map(grant_tokens))
    }

    async fn load_many(
        &self,
        user_ids: &[&str],
    ) -> Result<HashMap<String, GrantTokens>, TokenError> {
        let grants = self.0.get_many(user_ids).await.map_err(grant_error)?;
        Ok(grants
            .into_iter()
            .map(|g| (g.user_id.clone(), grant_tokens(g)))
            .collect())
    }

    async fn replace_calendar(
        &self,
        user_id: &str,
        gone: Option<&str>,
        made: &AppCalendar,
    ) -> Result<AppCalendar, TokenError> {
        self.update_grant(
            user_id,
            "recording its calendar",
            || Err(TokenError::NotConnected),
            |grant| match &grant.calendar {
                Some(held) if Some(held.id.as_str()) != gone => GrantUpdate::Decline(held.clone()),
                _ => {
                    grant.calendar = Some(made.clone());
                    GrantUpdate::Save(made.clone())
                }
            },
        )
        .await
    }

    async fn claim_refresh(
        &self,
        user_id: &str,
        version: u64,
        lease: &RefreshLease,
    ) -> Result<bool, TokenError> {
        self.0
            .claim_refresh(user_id, version, lease)
            .await
            .map_err(grant_error)
    }

    async fn release_refresh(&self, user_id: &str, lease: &RefreshLease) -> Result<(), TokenError> {
        self.0
            .release_refresh(user_id, lease)
            .await
            .map_err(grant_error)
    }

    async fn record_refresh(&self, user_id: &str, token: &FreshToken) -> Result<(), TokenError> {
        self.update_grant(
            user_id,
            "storing a refreshed token",
            || Ok(()),
            |grant| {
                // A grant that was disconnected or replaced meanwhile must not get this token.
                if grant.status != crate::grants::GrantStatus::Active
                    || grant.refresh_token.is_none()
                {
                    return GrantUpdate::Decline(());
                }
                grant.access_token = Some(token.access_token.clone());
                grant.access_token_expires_at = Some(token.expires_at);
                grant.refreshed_at = Some(Utc::now());
                GrantUpdate::Save(())
            },
        )
        .await
    }

    async fn mark_needs_reauth(
        &self,
        user_id: &str,
        refused: &SecretString,
        reason: ReauthReason,
    ) -> Result<bool, TokenError> {
        for _ in 0..SAVE_ATTEMPTS {
            let Some(grant) = self.0.get(user_id).await.map_err(grant_error)? else {
                return Ok(true);
            };
            let holds_refused = grant
                .refresh_token
                .as_ref()
                .is_some_and(|t| t.expose_secret() == refused.expose_secret());
            if !holds_refused {
                return Ok(grant.status == crate::grants::GrantStatus::NeedsReauth);
            }
            match self
                .0
                .retire(&grant, crate::grants::GrantStatus::NeedsReauth, reason)
                .await
            {
                Ok(_) => return Ok(true),
                Err(crate::grants::GrantError::Conflict { .. }) => continue,
                Err(e) => return Err(grant_error(e)),
            }
        }
        Err(TokenError::Store(format!(
            "the grant of user {user_id:?} kept changing while marking it needs_reauth"
        )))
    }

    async fn report_owed(
        &self,
        user_id: &str,
        markers: &[Marker],
    ) -> Result<Option<ParkReport>, TokenError> {
        for _ in 0..SAVE_ATTEMPTS {
            let Some(grant) = self.0.get(user_id).await.map_err(grant_error)? else {
                return Ok(None);
            };
            // Reconnected meanwhile: that ended the episode.
            if grant.status == crate::grants::GrantStatus::Active {
                return Ok(None);
            }
            let owed: Vec<Marker> = markers
                .iter()
                .copied()
                .filter(|m| grant.reported(*m).is_none())
                .collect();
            if owed.is_empty() {
                return Ok(None);
            }
            // Recorded before sending: an event whose sending fails is lost (best effort), never
            // sent twice by two invocations.
            match self.0.mark_reported(&grant, &owed).await {
                Ok(true) => {
                    return Ok(Some(ParkReport {
                        google_email: grant.google_email.clone(),
                        // Grants retired before reasons were stored were all refused refreshes.
                        reason: grant.reauth_reason.unwrap_or(ReauthReason::InvalidGrant),
                        needs_reauth: owed.contains(&Marker::NeedsReauth),
                        parked: owed.contains(&Marker::Parked),
                    }));
                }
                // Another invocation recorded them, or the grant changed: look again.
                Ok(false) => continue,
                Err(e) => return Err(grant_error(e)),
            }
        }
        Ok(None)
    }
}

impl TokenRefresher for crate::google_oauth::GoogleOAuth {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<FreshToken, RefreshError> {
        use crate::google_oauth::OAuthError;
        match crate::google_oauth::GoogleOAuth::refresh(self, refresh_token).await {
            Ok(t) => Ok(FreshToken {
                access_token: t.access_token,
                expires_at: t.expires_at,
            }),
            Err(OAuthError::InvalidGrant) => {
                Err(RefreshError::InvalidGrant(ReauthReason::InvalidGrant))
            }
            Err(OAuthError::InvalidRapt) => {
                Err(RefreshError::InvalidGrant(ReauthReason::InvalidRapt))
            }
            Err(e @ (OAuthError::Transient(_) | OAuthError::Secrets(_))) => {
                Err(RefreshError::Transient(e.to_string()))
            }
            Err(e) => Err(RefreshError::Rejected(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fakes::*;
    use super::*;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn valid_token_is_used_without_refresh() {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(30));
        let refresher = FakeRefresher::default();
        let tokens = TokenProvider::new(&grants, &refresher);
        assert_eq!(
            tokens.access_token("u").await.unwrap().expose_secret(),
            "at-u-0"
        );
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn expiring_token_is_refreshed_once_under_concurrency() {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(4));
        let refresher = FakeRefresher::default();
        let tokens = TokenProvider::new(&grants, &refresher);
        let all = futures::future::join_all((0..20).map(|_| tokens.access_token("u"))).await;
        for token in all {
            assert_eq!(token.unwrap().expose_secret(), "at-fresh-1");
        }
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        assert_eq!(grants.refreshes_recorded.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unauthorized_refreshes_once_then_gives_up() {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(30));
        let refresher = FakeRefresher::default();
        let tokens = TokenProvider::new(&grants, &refresher);
        let first = tokens.access_token("u").await.unwrap();
        let second = tokens.after_unauthorized("u", &first).await.unwrap();
        assert_eq!(second.expose_secret(), "at-fresh-1");
        // A task still holding the old token gets the refreshed one without a second refresh.
        let again = tokens.after_unauthorized("u", &first).await.unwrap();
        assert_eq!(again.expose_secret(), "at-fresh-1");
        assert!(matches!(
            tokens.after_unauthorized("u", &second).await,
            Err(TokenError::StillUnauthorized)
        ));
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalid_grant_marks_needs_reauth() {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(1));
        let refresher = FakeRefresher::default();
        refresher.revoked.lock().unwrap().push("rt-u".into());
        let tokens = TokenProvider::new(&grants, &refresher);
        assert!(matches!(
            tokens.access_token("u").await,
            Err(TokenError::NeedsReauth)
        ));
        assert!(matches!(
            tokens.access_token("u").await,
            Err(TokenError::NeedsReauth)
        ));
        assert_eq!(grants.is_active("u"), Some(false));
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        assert!(matches!(
            tokens.access_token("nobody").await,
            Err(TokenError::NotConnected)
        ));
    }

    /// Refreshes like [`FakeRefresher`], each call taking `delay` (a slow token endpoint) and the
    /// first `failures` calls answering a transient error.
    struct SlowRefresher {
        inner: FakeRefresher,
        delay: std::time::Duration,
        failures: usize,
    }

    impl SlowRefresher {
        fn new(delay_ms: u64, failures: usize) -> Self {
            Self {
                inner: FakeRefresher::default(),
                delay: std::time::Duration::from_millis(delay_ms),
                failures,
            }
        }

        fn calls(&self) -> usize {
            self.inner.calls.load(Ordering::SeqCst)
        }
    }

    impl TokenRefresher for SlowRefresher {
        async fn refresh(&self, refresh_token: &SecretString) -> Result<FreshToken, RefreshError> {
            tokio::time::sleep(self.delay).await;
            let fresh = self.inner.refresh(refresh_token).await;
            if self.calls() <= self.failures {
                return Err(RefreshError::Transient(
                    "503 from the token endpoint".into(),
                ));
            }
            fresh
        }
    }

    /// `invocations` providers (each its own cache, as separate Lambda environments have) ask
    /// for the same user's expiring token at once: one refresh, everyone gets its token.
    async fn racing_invocations(invocations: usize) {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(1));
        let refresher = SlowRefresher::new(100, 0);
        let providers: Vec<_> = (0..invocations)
            .map(|_| TokenProvider::new(&grants, &refresher))
            .collect();
        let tokens = futures::future::join_all(providers.iter().map(|p| p.access_token("u"))).await;
        for token in tokens {
            assert_eq!(token.unwrap().expose_secret(), "at-fresh-1");
        }
        assert_eq!(
            refresher.calls(),
            1,
            "one refresh for {invocations} invocations"
        );
        assert_eq!(grants.refreshes_recorded.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_invocations_share_one_refresh() {
        racing_invocations(2).await;
        racing_invocations(10).await;
    }

    #[tokio::test]
    async fn a_lease_whose_holder_died_runs_out_and_the_waiter_refreshes() {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(1));
        // An invocation claimed the refresh and was killed before it answered.
        let dead = RefreshLease {
            owner: "dead".into(),
            until: Utc::now() + Duration::milliseconds(300),
        };
        assert!(grants.claim_refresh("u", 1, &dead).await.unwrap());
        let refresher = SlowRefresher::new(0, 0);
        let tokens = TokenProvider::new(&grants, &refresher);
        let started = std::time::Instant::now();
        assert_eq!(
            tokens.access_token("u").await.unwrap().expose_secret(),
            "at-fresh-1"
        );
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(250),
            "the waiter did not wait for the lease: {waited:?}"
        );
        assert!(
            waited < std::time::Duration::from_secs(3),
            "waited {waited:?}"
        );
        assert_eq!(refresher.calls(), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_releases_the_lease_at_once() {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(1));
        let refresher = SlowRefresher::new(0, 1);
        let first = TokenProvider::new(&grants, &refresher);
        assert!(matches!(
            first.access_token("u").await,
            Err(TokenError::Transient(_))
        ));
        // The next invocation need not wait out the 12 s lease.
        let started = std::time::Instant::now();
        let second = TokenProvider::new(&grants, &refresher);
        assert_eq!(
            second.access_token("u").await.unwrap().expose_secret(),
            "at-fresh-2"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(refresher.calls(), 2);
    }

    #[tokio::test]
    async fn a_waiter_sees_the_grant_retired_by_the_holder() {
        let grants = FakeGrants::default().with_user("u", Duration::minutes(1));
        let refresher = FakeRefresher::default();
        refresher.revoked.lock().unwrap().push("rt-u".into());
        let (a, b) = (
            TokenProvider::new(&grants, &refresher),
            TokenProvider::new(&grants, &refresher),
        );
        let (a, b) = futures::future::join(a.access_token("u"), b.access_token("u")).await;
        assert!(matches!(a, Err(TokenError::NeedsReauth)), "{a:?}");
        assert!(matches!(b, Err(TokenError::NeedsReauth)), "{b:?}");
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
    }

    mod stored {
        use super::*;
        use crate::{
            grants::{Grant, GrantStatus, GrantStore},
            store::InMemoryGrantStore,
        };

        fn grant(refresh: &str, access_expires_in: Duration) -> Grant {
            Grant {
                user_id: "u".into(),
                status: GrantStatus::Active,
                google_sub: "sub".into(),
                google_email: None,
                scopes: vec![],
                connected_at: Utc::now(),
                refreshed_at: None,
                access_token: Some(SecretString::from("at-old".to_string())),
                access_token_expires_at: Some(Utc::now() + access_expires_in),
                refresh_token: Some(SecretString::from(refresh.to_string())),
                reauth_reason: None,
                needs_reauth_reported_at: None,
                parked_reported_at: None,
                calendar: None,
                version: 0,
            }
        }

        /// Refuses `rt-old`; if `reconnect`, the user reconnects while the refresh is under way.
        struct Refuser {
            store: InMemoryGrantStore,
            reconnect: bool,
        }

        impl TokenRefresher for Refuser {
            async fn refresh(&self, token: &SecretString) -> Result<FreshToken, RefreshError> {
                assert_eq!(token.expose_secret(), "rt-old");
                if self.reconnect {
                    let current = self.store.get("u").await.unwrap().unwrap();
                    let renewed = Grant {
                        access_token: Some(SecretString::from("at-new".to_string())),
                        refresh_token: Some(SecretString::from("rt-new".to_string())),
                        ..grant("rt-new", Duration::hours(1))
                    };
                    self.store
                        .save(&Grant {
                            version: current.version,
                            ..renewed
                        })
                        .await
                        .unwrap();
                }
                Err(RefreshError::InvalidGrant(ReauthReason::InvalidRapt))
            }
        }

        /// A stored grant holding `rt-old`, and a refresher that refuses it.
        async fn stored_and_refused(
            reconnect: bool,
        ) -> (
            InMemoryGrantStore,
            StoredGrants<InMemoryGrantStore>,
            Refuser,
        ) {
            let store = InMemoryGrantStore::new();
            store
                .save(&grant("rt-old", Duration::minutes(1)))
                .await
                .unwrap();
            let refresher = Refuser {
                store: store.clone(),
                reconnect,
            };
            (store.clone(), StoredGrants(store), refresher)
        }

        #[tokio::test]
        async fn invalid_grant_retires_the_stored_grant() {
            let (store, grants, refresher) = stored_and_refused(false).await;
            let tokens = TokenProvider::new(&grants, &refresher);
            assert!(matches!(
                tokens.access_token("u").await,
                Err(TokenError::NeedsReauth)
            ));
            let stored = store.get("u").await.unwrap().unwrap();
            assert_eq!(stored.status, GrantStatus::NeedsReauth);
            assert!(stored.refresh_token.is_none() && stored.access_token.is_none());
            assert_eq!(stored.reauth_reason, Some(ReauthReason::InvalidRapt));

            // A refused keep-alive owes only Grant Needs Reauth; the first parked change after
            // it owes Sync Parked alone, later ones nothing.
            let report = grants
                .report_owed("u", &[Marker::NeedsReauth])
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                report,
                ParkReport {
                    google_email: None,
                    reason: ReauthReason::InvalidRapt,
                    needs_reauth: true,
                    parked: false,
                }
            );
            let both = [Marker::NeedsReauth, Marker::Parked];
            let report = grants.report_owed("u", &both).await.unwrap().unwrap();
            assert!(!report.needs_reauth && report.parked, "{report:?}");
            assert_eq!(grants.report_owed("u", &both).await.unwrap(), None);
            assert_eq!(grants.report_owed("nobody", &both).await.unwrap(), None);
        }

        #[tokio::test]
        async fn a_reconnect_during_the_refresh_is_not_wiped() {
            let (store, grants, refresher) = stored_and_refused(true).await;
            let tokens = TokenProvider::new(&grants, &refresher);
            assert!(matches!(
                tokens.access_token("u").await,
                Err(TokenError::Transient(_))
            ));
            let stored = store.get("u").await.unwrap().unwrap();
            assert_eq!(stored.status, GrantStatus::Active);
            assert_eq!(stored.refresh_token.unwrap().expose_secret(), "rt-new");
            // The retry uses the renewed grant's token.
            assert_eq!(
                tokens.access_token("u").await.unwrap().expose_secret(),
                "at-new"
            );
        }
    }
}
