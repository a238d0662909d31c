//! OAuth flow records: single-use `state`, the sealed PKCE verifier and the browser-binding hash, consumed by a conditional delete.
//!
//! A flow lives from `GET /oauth/google/start` to the callback, at most [`FLOW_LIFETIME`]. The
//! record keys on `state`; it holds the user id, `return_to`, the PKCE verifier (sealed with the
//! vault, bound to the flows table and the user) and the SHA-256 of the browser nonce whose
//! plaintext only the `__Host-calsync_oauth` cookie carries. `expires_at` (epoch seconds) is the
//! table's TTL attribute; DynamoDB deletes late, so expiry is also checked on every read.
//!
//! The callback first [`FlowStore::find`]s the record and checks the cookie against it, and only
//! then [`FlowStore::consume`]s it with a delete conditioned on the record still existing with the
//! same nonce hash. So a request without the right cookie (a forged link, a leaked callback URL)
//! cannot burn the legitimate user's flow, while two callbacks racing with the right cookie still
//! see exactly one winner.

use std::future::Future;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{secrets::SecretsError, vault::VaultError};

/// How long a started connect may take before its callback is refused.
pub const FLOW_LIFETIME: Duration = Duration::minutes(10);

/// 32 random bytes from the OS, base64url without padding (43 characters): `state` and the nonce.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a browser nonce: base64url of its SHA-256.
pub fn nonce_hash(nonce: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(nonce.as_bytes()))
}

/// Whether `nonce` (from the cookie) hashes to `stored_hash`, compared in constant time.
pub fn nonce_matches(nonce: &str, stored_hash: &str) -> bool {
    let computed = nonce_hash(nonce);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// A flow as the handlers see it (verifier in plaintext, in a secrecy type).
#[derive(Debug, Clone)]
pub struct Flow {
    pub state: String,
    pub user_id: String,
    pub return_to: String,
    pub verifier: SecretString,
    pub nonce_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Flow {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("a flow with this state already exists")]
    Duplicate,
    #[error("flow store request failed: {0}")]
    Store(String),
    #[error("a stored flow record is unreadable: {0}")]
    Corrupt(String),
    #[error("the flow's verifier could not be sealed or opened: {0}")]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

/// How long a connect link (`POST /oauth/google/connect-links`) may wait for its browser. The
/// app's page navigates to it right after minting it, so two minutes leave room for a slow
/// network and little for a link that leaked.
pub const LINK_LIFETIME: Duration = Duration::minutes(2);

/// Keys of connect-link records start with this. Flow states are base64url (no `.`), so the two
/// kinds of record never share a key, and a `state` of this shape is never read as a flow.
pub const LINK_KEY_PREFIX: &str = "link.";

/// The table key of a link record: the prefix and the SHA-256 of the link token, so the table
/// never holds the token a browser presents.
pub fn link_key(token: &str) -> String {
    format!("{LINK_KEY_PREFIX}{}", nonce_hash(token))
}

/// Whether `state` is shaped like a flow's state (and so never like a link key).
pub fn is_flow_state(state: &str) -> bool {
    !state.is_empty()
        && state.len() <= 128
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A single-use connect link: who minted it and where the browser returns. The token itself is
/// never stored, only [`link_key`] of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectLink {
    pub user_id: String,
    pub return_to: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl ConnectLink {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }
}

/// A new link for `user_id`: the record and its token (for the minting page only).
pub fn new_link(user_id: &str, return_to: &str, now: DateTime<Utc>) -> (ConnectLink, SecretString) {
    let link = ConnectLink {
        user_id: user_id.to_string(),
        return_to: return_to.to_string(),
        created_at: now,
        expires_at: now + LINK_LIFETIME,
    };
    (link, SecretString::from(random_token()))
}

/// Where flow records live ([`crate::store::DynamoFlowStore`]). Connect links live in the same
/// table (same lifetime class, same TTL attribute), under keys of their own ([`link_key`]).
pub trait FlowStore: Send + Sync {
    /// Stores a new flow; fails with [`FlowError::Duplicate`] if the state exists.
    fn create(&self, flow: &Flow) -> impl Future<Output = Result<(), FlowError>> + Send;

    /// Reads a flow without consuming it (expired ones too: the caller checks expiry).
    fn find(&self, state: &str) -> impl Future<Output = Result<Option<Flow>, FlowError>> + Send;

    /// Deletes the flow if it still exists with this nonce hash, returning it; `None` when it was
    /// already consumed (or never existed).
    fn consume(
        &self,
        state: &str,
        nonce_hash: &str,
    ) -> impl Future<Output = Result<Option<Flow>, FlowError>> + Send;

    /// Stores a connect link under [`link_key`] of `token`.
    fn create_link(
        &self,
        token: &SecretString,
        link: &ConnectLink,
    ) -> impl Future<Output = Result<(), FlowError>> + Send;

    /// Deletes the link of `token` and returns it (expired ones too: the caller checks expiry);
    /// `None` when it never existed or was already used. Two racing consumers see one winner.
    fn consume_link(
        &self,
        token: &SecretString,
    ) -> impl Future<Output = Result<Option<ConnectLink>, FlowError>> + Send;
}

/// Whether a verifier has the shape RFC 7636 requires (43 to 128 unreserved characters).
pub fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// A new flow for `user_id`: fresh state, nonce and PKCE pair. Returns the flow, the nonce for
/// the cookie, and the PKCE challenge for the consent URL.
pub fn new_flow(
    user_id: &str,
    return_to: &str,
    now: DateTime<Utc>,
) -> (Flow, String, oauth2::PkceCodeChallenge) {
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let nonce = random_token();
    let flow = Flow {
        state: random_token(),
        user_id: user_id.to_string(),
        return_to: return_to.to_string(),
        verifier: SecretString::from(verifier.secret().clone()),
        nonce_hash: nonce_hash(&nonce),
        created_at: now,
        expires_at: now + FLOW_LIFETIME,
    };
    (flow, nonce, challenge)
}

impl Flow {
    /// The verifier's plaintext, for the code exchange only.
    pub fn verifier_secret(&self) -> &str {
        self.verifier.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_base64url(s: &str) -> bool {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    #[test]
    fn state_and_nonce_are_256_bits_of_base64url() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 43);
        assert!(is_base64url(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
    }

    #[test]
    fn link_keys_never_look_like_flow_states() {
        let (link, token) = new_link("u", "https://a.example/", Utc::now());
        let key = link_key(token.expose_secret());
        assert!(key.starts_with(LINK_KEY_PREFIX));
        assert!(!key.contains(token.expose_secret()));
        assert!(!is_flow_state(&key));
        assert!(is_flow_state(&random_token()));
        assert_eq!(link.expires_at - link.created_at, LINK_LIFETIME);
        assert!(link.is_expired(link.created_at + LINK_LIFETIME));
        assert!(!link.is_expired(link.created_at));
    }

    #[test]
    fn a_new_flow_has_a_valid_verifier_and_a_hashed_nonce() {
        let now = Utc::now();
        let (flow, nonce, challenge) = new_flow("user-1", "https://app.example/x", now);
        assert!(is_valid_verifier(flow.verifier_secret()));
        assert_eq!(flow.verifier_secret().len(), 43);
        assert!(is_base64url(flow.verifier_secret()));
        assert_eq!(challenge.method().as_str(), "S256");
        assert_eq!(
            challenge.as_str(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(flow.verifier_secret().as_bytes()))
        );
        assert_ne!(flow.nonce_hash, nonce);
        assert!(nonce_matches(&nonce, &flow.nonce_hash));
        assert!(!nonce_matches(&random_token(), &flow.nonce_hash));
        assert!(!nonce_matches("", &flow.nonce_hash));
        assert_eq!(flow.expires_at - flow.created_at, Duration::minutes(10));
        assert!(!flow.is_expired(now));
        assert!(flow.is_expired(now + Duration::minutes(10)));
        assert!(!format!("{flow:?}").contains(flow.verifier_secret()));
    }
}
