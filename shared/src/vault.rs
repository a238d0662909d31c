//! The token vault: AES-256-GCM sealing of tokens and PKCE verifiers, bound to their table and user.
//!
//! A sealed value is the text `v1.<key id>.<nonce>.<ciphertext and tag>` (both base64url, no
//! padding). The associated data binds the ciphertext to the format version, the key id, the table
//! and the user id, so a value copied into another user's item, another table, or relabelled with
//! another key id fails to open. Writes use the keyring's `current` key; reads use the key the
//! value names, which is how a rotated keyring still opens old grants.

use std::{collections::HashMap, fmt, sync::Arc};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const FORMAT: &str = "v1";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error(
        "the token keyring is not JSON of the shape {{\"current\": \"<key id>\", \"keys\": {{\"<key id>\": \"<base64 of 32 bytes>\"}}}}"
    )]
    Shape,
    #[error(
        "the token keyring's key {key_id:?} is not the standard base64 of exactly 32 bytes; generate one with `openssl rand -base64 32`"
    )]
    BadKey { key_id: String },
    #[error(
        "the token keyring's key id {key_id:?} is not allowed: use 1 to 64 letters, digits, '-' or '_'"
    )]
    BadKeyId { key_id: String },
    #[error(
        "the token keyring's current key {key_id:?} is not among its keys; add it or move current"
    )]
    CurrentMissing { key_id: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("sealed value is malformed (expected v1.<key id>.<nonce>.<ciphertext>)")]
    Malformed,
    #[error(
        "sealed value names key {key_id:?}, which the keyring no longer holds; restore that key to the keyring"
    )]
    UnknownKey { key_id: String },
    #[error(
        "sealed value failed authentication: it was tampered with, moved to another item, or the key changed"
    )]
    Tampered,
    #[error("encryption failed")]
    Encrypt,
}

/// The token keys (the `TOKEN_KEYS_SECRET_ID` secret). Its `Debug` names key ids only.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("key_ids", &ids)
            .finish()
    }
}

#[derive(Deserialize)]
struct KeyringJson {
    current: String,
    keys: HashMap<String, SecretString>,
}

fn valid_key_id(key_id: &str) -> bool {
    (1..=64).contains(&key_id.len())
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Keyring {
    /// Parses the secret's JSON text. Errors never quote key material.
    pub fn from_json(text: &str) -> Result<Self, KeyringError> {
        let parsed: KeyringJson = serde_json::from_str(text).map_err(|_| KeyringError::Shape)?;
        let mut keys = HashMap::new();
        for (key_id, encoded) in parsed.keys {
            let bytes = STANDARD
                .decode(encoded.expose_secret().trim())
                .map_err(|_| KeyringError::BadKey {
                    key_id: key_id.clone(),
                })?;
            let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyringError::BadKey {
                key_id: key_id.clone(),
            })?;
            keys.insert(key_id, key);
        }
        Self::new(parsed.current, keys)
    }

    /// Builds a keyring from raw keys (tests and tooling).
    pub fn new(
        current: impl Into<String>,
        keys: HashMap<String, [u8; KEY_LEN]>,
    ) -> Result<Self, KeyringError> {
        let current = current.into();
        let mut ciphers = HashMap::new();
        for (key_id, key) in keys {
            if !valid_key_id(&key_id) {
                return Err(KeyringError::BadKeyId { key_id });
            }
            let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| KeyringError::BadKey {
                key_id: key_id.clone(),
            })?;
            ciphers.insert(key_id, cipher);
        }
        if !ciphers.contains_key(&current) {
            return Err(KeyringError::CurrentMissing { key_id: current });
        }
        Ok(Self {
            current,
            keys: ciphers,
        })
    }

    /// A keyring with one fresh random key (tests, and seeding a local stack).
    pub fn generate(key_id: &str) -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::new(key_id, HashMap::from([(key_id.to_string(), key)]))
            .expect("a generated key id is checked by the caller")
    }

    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }
}

/// The key id a sealed value names (its second field), if it has one.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    sealed.split('.').nth(1)
}

/// Seals and opens secret values for one (table, user id) place.
#[derive(Clone, Debug)]
pub struct Vault {
    keyring: Arc<Keyring>,
}

/// Length-prefixed fields, so no choice of table or user id can collide with another.
fn associated_data(key_id: &str, table: &str, user_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + table.len() + user_id.len());
    for part in ["calsync-token", FORMAT, key_id, table, user_id] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

impl Vault {
    pub fn new(keyring: Arc<Keyring>) -> Self {
        Self { keyring }
    }

    /// The key [`Vault::seal`] uses.
    pub fn current_key_id(&self) -> &str {
        &self.keyring.current
    }

    pub fn seal(
        &self,
        table: &str,
        user_id: &str,
        secret: &SecretString,
    ) -> Result<String, VaultError> {
        let key_id = &self.keyring.current;
        let cipher = &self.keyring.keys[key_id];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(key_id, table, user_id);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Encrypt)?;
        Ok(format!(
            "{FORMAT}.{key_id}.{}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    pub fn open(
        &self,
        table: &str,
        user_id: &str,
        sealed: &str,
    ) -> Result<SecretString, VaultError> {
        let mut parts = sealed.split('.');
        let (Some(format), Some(key_id), Some(nonce), Some(body), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(VaultError::Malformed);
        };
        if format != FORMAT || !valid_key_id(key_id) {
            return Err(VaultError::Malformed);
        }
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| VaultError::Malformed)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| VaultError::Malformed)?;
        if nonce.len() != NONCE_LEN || body.len() < 16 {
            return Err(VaultError::Malformed);
        }
        let cipher = self
            .keyring
            .keys
            .get(key_id)
            .ok_or_else(|| VaultError::UnknownKey {
                key_id: key_id.to_string(),
            })?;
        let aad = associated_data(key_id, table, user_id);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &body,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Tampered)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| VaultError::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "grants";

    fn keyring(current: &str, ids: &[(&str, u8)]) -> Arc<Keyring> {
        let keys = ids
            .iter()
            .map(|(id, fill)| (id.to_string(), [*fill; KEY_LEN]))
            .collect();
        Arc::new(Keyring::new(current, keys).unwrap())
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    /// Replaces one dot-separated part of a sealed value by `f(decoded bytes)`.
    fn tamper_part(sealed: &str, index: usize, f: impl Fn(&mut Vec<u8>)) -> String {
        let mut parts: Vec<String> = sealed.split('.').map(str::to_string).collect();
        let mut bytes = URL_SAFE_NO_PAD.decode(&parts[index]).unwrap();
        f(&mut bytes);
        parts[index] = URL_SAFE_NO_PAD.encode(bytes);
        parts.join(".")
    }

    #[test]
    fn round_trip() {
        let vault = Vault::new(keyring("k1", &[("k1", 1)]));
        let sealed = vault.seal(TABLE, "user-1", &secret("ya29.token")).unwrap();
        assert!(!sealed.contains("ya29"));
        assert!(sealed.starts_with("v1.k1."));
        let opened = vault.open(TABLE, "user-1", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "ya29.token");
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let vault = Vault::new(keyring("k1", &[("k1", 1)]));
        let a = vault.seal(TABLE, "u", &secret("same")).unwrap();
        let b = vault.seal(TABLE, "u", &secret("same")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_value_moved_to_another_user_or_table_does_not_open() {
        let vault = Vault::new(keyring("k1", &[("k1", 1)]));
        let sealed = vault.seal(TABLE, "user-1", &secret("refresh")).unwrap();
        assert_eq!(
            vault.open(TABLE, "user-2", &sealed).err(),
            Some(VaultError::Tampered)
        );
        assert_eq!(
            vault.open("flows", "user-1", &sealed).err(),
            Some(VaultError::Tampered)
        );
    }

    #[test]
    fn flipping_nonce_tag_or_body_fails() {
        let vault = Vault::new(keyring("k1", &[("k1", 1)]));
        let sealed = vault
            .seal(TABLE, "u", &secret("a long enough secret"))
            .unwrap();
        let flipped_nonce = tamper_part(&sealed, 2, |b| b[0] ^= 1);
        let flipped_body = tamper_part(&sealed, 3, |b| b[0] ^= 1);
        let flipped_tag = tamper_part(&sealed, 3, |b| {
            let last = b.len() - 1;
            b[last] ^= 0x80
        });
        for bad in [flipped_nonce, flipped_body, flipped_tag] {
            assert_ne!(bad, sealed);
            assert_eq!(
                vault.open(TABLE, "u", &bad).err(),
                Some(VaultError::Tampered)
            );
        }
    }

    #[test]
    fn a_changed_key_id_fails() {
        // Both keys are present, so only the associated data and the key stop a relabelled value.
        let vault = Vault::new(keyring("k1", &[("k1", 1), ("k2", 1)]));
        let sealed = vault.seal(TABLE, "u", &secret("s")).unwrap();
        let relabelled = sealed.replacen("v1.k1.", "v1.k2.", 1);
        assert_eq!(
            vault.open(TABLE, "u", &relabelled).err(),
            Some(VaultError::Tampered)
        );
        let unknown = sealed.replacen("v1.k1.", "v1.k9.", 1);
        assert_eq!(
            vault.open(TABLE, "u", &unknown).err(),
            Some(VaultError::UnknownKey {
                key_id: "k9".into()
            })
        );
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        let vault = Vault::new(keyring("k1", &[("k1", 1)]));
        for bad in [
            "",
            "v1",
            "v1.k1.AAAA",
            "v2.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
            "v1.k1.!!.AAAA",
            "v1.k1.AAAA.AAAA",
            "v1.k1.a.b.c",
            "v1..AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(
                vault.open(TABLE, "u", bad).err(),
                Some(VaultError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_rotated_keyring_reads_old_values_and_writes_with_the_new_key() {
        let old = Vault::new(keyring("k1", &[("k1", 1)]));
        let sealed_old = old.seal(TABLE, "u", &secret("old")).unwrap();
        let rotated = Vault::new(keyring("k2", &[("k1", 1), ("k2", 2)]));
        assert_eq!(
            rotated
                .open(TABLE, "u", &sealed_old)
                .unwrap()
                .expose_secret(),
            "old"
        );
        let sealed_new = rotated.seal(TABLE, "u", &secret("new")).unwrap();
        assert!(sealed_new.starts_with("v1.k2."));
        assert_eq!(
            old.open(TABLE, "u", &sealed_new).err(),
            Some(VaultError::UnknownKey {
                key_id: "k2".into()
            })
        );
    }

    #[test]
    fn keyring_json_is_parsed_and_checked() {
        let key = STANDARD.encode([7u8; 32]);
        let good = format!(r#"{{"current":"2026-01","keys":{{"2026-01":"{key}"}}}}"#);
        let ring = Keyring::from_json(&good).unwrap();
        assert_eq!(ring.current_key_id(), "2026-01");
        assert!(!format!("{ring:?}").contains(&key));

        let short = STANDARD.encode([7u8; 16]);
        let cases = [
            ("not json".to_string(), KeyringError::Shape),
            (
                format!(r#"{{"current":"a","keys":{{"a":"{short}"}}}}"#),
                KeyringError::BadKey { key_id: "a".into() },
            ),
            (
                format!(r#"{{"current":"b","keys":{{"a":"{key}"}}}}"#),
                KeyringError::CurrentMissing { key_id: "b".into() },
            ),
            (
                format!(r#"{{"current":"a.b","keys":{{"a.b":"{key}"}}}}"#),
                KeyringError::BadKeyId {
                    key_id: "a.b".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            let error = Keyring::from_json(&text).unwrap_err();
            assert_eq!(error, expected);
            assert!(!error.to_string().contains(&key));
        }
    }
}
