//! The emulator's whole world in memory: clock, OAuth clients, accounts, consents, codes, tokens,
//! calendars, queued faults, call counts and the record of every secret handed out.
//!
//! One `Mutex` guards it; handlers lock, change what they need and unlock before any await.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Google's default access token lifetime as its token endpoint reports it (`expires_in`).
pub const DEFAULT_ACCESS_TOKEN_LIFETIME_SECONDS: i64 = 3599;
/// Authorization codes live ten minutes.
pub const CODE_LIFETIME_SECONDS: i64 = 600;

/// Handle shared by every request handler.
#[derive(Clone, Default)]
pub struct SharedState(Arc<Mutex<State>>);

impl SharedState {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(State::new())))
    }

    /// Locks the state. A handler that panicked while holding the lock leaves data that is still
    /// consistent enough for a test emulator, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A registered OAuth client.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
}

/// A Google account that can sign in on the consent page.
#[derive(Debug, Clone)]
pub struct Account {
    pub email: String,
    pub sub: String,
}

/// An authorization code handed out by the consent step.
#[derive(Debug, Clone)]
pub struct AuthCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub email: String,
    pub scopes: Vec<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub issue_refresh_token: bool,
    pub expires_at: DateTime<Utc>,
    /// Set once exchanged: the grant made from it (revoked if the code is replayed).
    pub redeemed_grant: Option<u64>,
}

/// The tokens issued from one code exchange (one refresh token and the access tokens minted
/// from it or alongside it).
#[derive(Debug, Clone)]
pub struct Grant {
    pub client_id: String,
    pub email: String,
    pub scopes: Vec<String>,
    pub nonce: Option<String>,
    pub revoked: bool,
    /// When the refresh token stops working by itself (Google's time-limited refresh tokens,
    /// e.g. 7 days for apps in testing mode); `None` = until revoked.
    pub refresh_expires_at: Option<DateTime<Utc>>,
}

/// One access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub grant_id: u64,
    pub expires_at: DateTime<Utc>,
}

/// A calendar: events by id, cancelled ones kept.
#[derive(Debug, Clone, Default)]
pub struct Calendar {
    pub events: BTreeMap<String, Map<String, Value>>,
    /// The title given to `calendars.insert` (`None` for primary and control-made calendars).
    pub summary: Option<String>,
    /// The OAuth client whose token made it with `calendars.insert`: what a token holding only
    /// `calendar.app.created` may touch.
    pub created_by: Option<String>,
}

/// Which endpoint family a queued fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultTarget {
    Calendar,
    Token,
}

/// A queued fault: the next `remaining` matching calls wait `delay_ms` and then, when `status`
/// is set, answer that error instead of doing their work.
#[derive(Debug, Clone)]
pub struct Fault {
    pub target: FaultTarget,
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub remaining: u32,
    pub delay_ms: u64,
    /// Seconds for a `Retry-After` header on the error answer.
    pub retry_after: Option<u64>,
}

/// What a call must suffer before (or instead of) being served.
#[derive(Debug, Clone)]
pub struct FaultHit {
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub delay_ms: u64,
    pub retry_after: Option<u64>,
}

/// Call counts for `GET __emulator/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub token: TokenStats,
    pub revoke: u64,
    pub calendar: CalendarStats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenStats {
    pub authorization_code: u64,
    pub refresh_token: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CalendarStats {
    pub insert: u64,
    pub update: u64,
    pub patch: u64,
    pub delete: u64,
    pub get: u64,
    pub list: u64,
    /// `calendars.insert`, `calendars.get` and `calendars.delete` (the Calendar resource).
    pub calendars_insert: u64,
    pub calendars_get: u64,
    pub calendars_delete: u64,
}

/// The accounts every emulator starts with.
pub const DEFAULT_ACCOUNTS: [(&str, &str); 2] = [
    ("alice@example.com", "100000000000000000001"),
    ("bob@example.com", "100000000000000000002"),
];

#[derive(Debug)]
pub struct State {
    pub clock_offset: Duration,
    pub access_token_lifetime_seconds: i64,
    /// Lifetime of refresh tokens issued from now on; `None` = until revoked.
    pub refresh_token_lifetime_seconds: Option<i64>,
    pub clients: HashMap<String, Client>,
    pub accounts: BTreeMap<String, Account>,
    /// Scopes each account has granted each client, keyed by (client_id, email). Present means
    /// the account has consented to the client before (so no new refresh token without
    /// `prompt=consent`).
    pub consents: HashMap<(String, String), BTreeSet<String>>,
    pub codes: HashMap<String, AuthCode>,
    pub grants: HashMap<u64, Grant>,
    pub next_grant_id: u64,
    pub access_tokens: HashMap<String, AccessToken>,
    pub refresh_tokens: HashMap<String, u64>,
    /// Calendars keyed by (owner email, calendar id); each account's primary calendar has the
    /// account's email as id.
    pub calendars: HashMap<(String, String), Calendar>,
    pub faults: VecDeque<Fault>,
    pub stats: Stats,
    pub issued_secrets: BTreeSet<String>,
    pub etag_counter: u64,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> Self {
        let mut state = State {
            clock_offset: Duration::zero(),
            access_token_lifetime_seconds: DEFAULT_ACCESS_TOKEN_LIFETIME_SECONDS,
            refresh_token_lifetime_seconds: None,
            clients: HashMap::new(),
            accounts: BTreeMap::new(),
            consents: HashMap::new(),
            codes: HashMap::new(),
            grants: HashMap::new(),
            next_grant_id: 1,
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            calendars: HashMap::new(),
            faults: VecDeque::new(),
            stats: Stats::default(),
            issued_secrets: BTreeSet::new(),
            etag_counter: 0,
        };
        for (email, sub) in DEFAULT_ACCOUNTS {
            state.add_account(email, sub);
        }
        state
    }

    /// Clears everything but the registered clients and the default accounts.
    pub fn reset(&mut self) {
        let clients = std::mem::take(&mut self.clients);
        *self = State::new();
        for (id, client) in clients {
            self.issued_secrets.insert(client.client_secret.clone());
            self.clients.insert(id, client);
        }
    }

    /// The emulator clock: real time moved by the control API's offset.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    pub fn add_client(&mut self, client_id: &str, client: Client) {
        self.issued_secrets.insert(client.client_secret.clone());
        self.clients.insert(client_id.to_owned(), client);
    }

    pub fn add_account(&mut self, email: &str, sub: &str) {
        self.accounts.insert(
            email.to_owned(),
            Account {
                email: email.to_owned(),
                sub: sub.to_owned(),
            },
        );
        self.calendars
            .entry((email.to_owned(), email.to_owned()))
            .or_default();
    }

    /// Finds an account's calendar; `primary` and the account's email name the primary one.
    pub fn calendar_mut(&mut self, email: &str, calendar_id: &str) -> Option<&mut Calendar> {
        let id = if calendar_id == "primary" {
            email
        } else {
            calendar_id
        };
        self.calendars.get_mut(&(email.to_owned(), id.to_owned()))
    }

    pub fn calendar(&self, email: &str, calendar_id: &str) -> Option<&Calendar> {
        let id = if calendar_id == "primary" {
            email
        } else {
            calendar_id
        };
        self.calendars.get(&(email.to_owned(), id.to_owned()))
    }

    /// Remembers a value that tests must never find in logs, tables or answers.
    pub fn remember_secret(&mut self, value: &str) {
        if !value.is_empty() {
            self.issued_secrets.insert(value.to_owned());
        }
    }

    /// Takes one use of the first queued fault for `target`, if any.
    pub fn take_fault(&mut self, target: FaultTarget) -> Option<FaultHit> {
        let index = self.faults.iter().position(|f| f.target == target)?;
        let fault = &mut self.faults[index];
        let hit = FaultHit {
            status: fault.status,
            reason: fault.reason.clone(),
            delay_ms: fault.delay_ms,
            retry_after: fault.retry_after,
        };
        fault.remaining = fault.remaining.saturating_sub(1);
        if fault.remaining == 0 {
            self.faults.remove(index);
        }
        Some(hit)
    }

    /// Creates a grant and returns its id.
    pub fn new_grant(&mut self, grant: Grant) -> u64 {
        let id = self.next_grant_id;
        self.next_grant_id += 1;
        self.grants.insert(id, grant);
        id
    }

    /// Mints an access token for a grant on the emulator clock.
    pub fn mint_access_token(&mut self, grant_id: u64) -> (String, i64) {
        let token = format!("ya29.{}", sentinel_token(120));
        let lifetime = self.access_token_lifetime_seconds;
        let expires_at = self.now() + Duration::seconds(lifetime);
        self.access_tokens.insert(
            token.clone(),
            AccessToken {
                grant_id,
                expires_at,
            },
        );
        self.remember_secret(&token);
        (token, lifetime)
    }

    pub fn mint_refresh_token(&mut self, grant_id: u64) -> String {
        let token = format!("1//{}", sentinel_token(100));
        self.refresh_tokens.insert(token.clone(), grant_id);
        let expires_at = self
            .refresh_token_lifetime_seconds
            .map(|lifetime| self.now() + Duration::seconds(lifetime));
        if let Some(grant) = self.grants.get_mut(&grant_id) {
            grant.refresh_expires_at = expires_at;
        }
        self.remember_secret(&token);
        token
    }

    /// Revokes one grant: its refresh token and access tokens stop working.
    pub fn revoke_grant(&mut self, grant_id: u64) {
        if let Some(grant) = self.grants.get_mut(&grant_id) {
            grant.revoked = true;
        }
    }

    /// Removes the app's access as the account's "Third-party connections" page does: every
    /// grant of this account for this client dies and the earlier consent is forgotten.
    pub fn revoke_client_access(&mut self, client_id: &str, email: &str) {
        for grant in self.grants.values_mut() {
            if grant.client_id == client_id && grant.email == email {
                grant.revoked = true;
            }
        }
        self.consents
            .remove(&(client_id.to_owned(), email.to_owned()));
    }

    /// Removes every client's access to an account.
    pub fn revoke_account(&mut self, email: &str) {
        let clients: Vec<String> = self
            .grants
            .values()
            .filter(|g| g.email == email)
            .map(|g| g.client_id.clone())
            .chain(
                self.consents
                    .keys()
                    .filter(|(_, e)| e == email)
                    .map(|(c, _)| c.clone()),
            )
            .collect();
        for client_id in clients {
            self.revoke_client_access(&client_id, email);
        }
    }

    /// Makes every access token of the account expired now (refresh tokens stay valid).
    pub fn expire_access_tokens(&mut self, email: &str) {
        let now = self.now();
        let grants: BTreeSet<u64> = self
            .grants
            .iter()
            .filter(|(_, g)| g.email == email)
            .map(|(id, _)| *id)
            .collect();
        for token in self.access_tokens.values_mut() {
            if grants.contains(&token.grant_id) && token.expires_at > now {
                token.expires_at = now - Duration::seconds(1);
            }
        }
    }

    /// The grant behind a live access token, or `None` when unknown, expired or revoked.
    pub fn grant_for_access_token(&self, token: &str) -> Option<&Grant> {
        let access = self.access_tokens.get(token)?;
        if access.expires_at <= self.now() {
            return None;
        }
        self.grants.get(&access.grant_id).filter(|g| !g.revoked)
    }

    pub fn next_etag(&mut self) -> String {
        self.etag_counter += 1;
        let micros = self.now().timestamp_micros().max(0) as u64;
        format!("\"{}\"", micros.saturating_mul(10) + self.etag_counter % 10)
    }
}

/// A secondary calendar's id, shaped like Google's.
pub fn random_calendar_id() -> String {
    format!("{}@group.calendar.google.com", random_event_id())
}

/// Marks every token, code and client secret a test stack hands out, every 24 characters, so a
/// leak scan finds any of them, or any piece of one of 47 characters or more, by one search,
/// whatever else it was cut from or pasted into.
pub const SENTINEL: &str = "LEAKsentinel";

/// [`random_token`] of `len` random characters with [`SENTINEL`] before each 24 of them.
pub fn sentinel_token(len: usize) -> String {
    let random = random_token(len);
    let mut out = String::with_capacity(len + SENTINEL.len() * (len / 24 + 1));
    for (i, c) in random.chars().enumerate() {
        if i % 24 == 0 {
            out.push_str(SENTINEL);
        }
        out.push(c);
    }
    out
}

/// A random string of ASCII letters, digits, `-` and `_` like Google's opaque tokens.
pub fn random_token(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|i| {
            // Sprinkle the URL-safe punctuation Google's tokens contain.
            if i % 17 == 16 {
                if rng.gen_bool(0.5) { '-' } else { '_' }
            } else {
                char::from(rng.sample(Alphanumeric))
            }
        })
        .collect()
}

/// A random lowercase base32hex id, the alphabet Google uses for event ids.
pub fn random_event_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
    let mut rng = rand::thread_rng();
    (0..26)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_is_used_count_times_then_gone() {
        let mut state = State::new();
        state.faults.push_back(Fault {
            target: FaultTarget::Calendar,
            status: Some(503),
            reason: None,
            remaining: 2,
            delay_ms: 0,
            retry_after: None,
        });
        assert!(state.take_fault(FaultTarget::Token).is_none());
        assert_eq!(
            state.take_fault(FaultTarget::Calendar).unwrap().status,
            Some(503)
        );
        assert!(state.take_fault(FaultTarget::Calendar).is_some());
        assert!(state.take_fault(FaultTarget::Calendar).is_none());
    }

    #[test]
    fn generated_ids_and_tokens_have_googles_alphabets() {
        let id = random_event_id();
        assert!(id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v')));
        let token = random_token(200);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(random_token(40), random_token(40));
        let marked = sentinel_token(100);
        assert_eq!(marked.len(), 100 + 5 * SENTINEL.len());
        assert!(marked.split(SENTINEL).all(|piece| piece.len() <= 24));
    }

    #[test]
    fn etags_change_on_every_write() {
        let mut state = State::new();
        let first = state.next_etag();
        let second = state.next_etag();
        assert_ne!(first, second);
    }
}
