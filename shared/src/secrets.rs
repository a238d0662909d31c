//! Secrets Manager: the Google OAuth client and the token keyring, fetched once and cached.
//!
//! Each secret is fetched on first use and kept for a bounded lifetime ([`DEFAULT_TTL`]), so a
//! rotated keyring or client secret reaches warm functions without a redeploy. Errors name the
//! secret id and what is wrong with its shape, never its value.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use secrecy::SecretString;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::{config::SecretIds, vault::Keyring, vault::KeyringError};

/// How long a fetched secret is trusted before it is fetched again.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// The Google OAuth web client calsync acts as.
#[derive(Clone, Debug)]
pub struct GoogleClient {
    pub client_id: String,
    pub client_secret: SecretString,
}

#[derive(Deserialize)]
struct FlatClient {
    client_id: String,
    client_secret: SecretString,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientJson {
    Downloaded { web: FlatClient },
    Flat(FlatClient),
}

impl GoogleClient {
    /// Reads Google's downloaded client JSON (`{"web": {...}}`) or a flat
    /// `{"client_id", "client_secret"}` object.
    pub fn from_json(text: &str) -> Result<Self, ClientShapeError> {
        let parsed: ClientJson = serde_json::from_str(text).map_err(|_| ClientShapeError)?;
        let (ClientJson::Downloaded { web: flat } | ClientJson::Flat(flat)) = parsed;
        if flat.client_id.trim().is_empty() {
            return Err(ClientShapeError);
        }
        Ok(Self {
            client_id: flat.client_id,
            client_secret: flat.client_secret,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "expected Google's downloaded client JSON {{\"web\": {{\"client_id\": ..., \"client_secret\": ...}}}} or a flat {{\"client_id\": ..., \"client_secret\": ...}}"
)]
pub struct ClientShapeError;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "could not read secret {id:?} from Secrets Manager ({message}); check the secret exists and the function may call GetSecretValue on it"
    )]
    Fetch { id: String, message: String },
    #[error("secret {id:?} has no SecretString; store the JSON as a string secret")]
    NotAString { id: String },
    #[error("secret {id:?} (Google OAuth client) is malformed: {source}")]
    GoogleClient {
        id: String,
        #[source]
        source: ClientShapeError,
    },
    #[error("secret {id:?} (token keyring) is malformed: {source}")]
    Keyring {
        id: String,
        #[source]
        source: KeyringError,
    },
}

struct Cached<T> {
    value: Arc<T>,
    fetched_at: Instant,
}

enum Backend {
    SecretsManager {
        client: aws_sdk_secretsmanager::Client,
        ids: SecretIds,
    },
    /// Values given at construction; never expire (unit tests and tooling).
    Fixed,
}

/// The least time between two keyring fetches caused by an unknown key id. A value sealed under
/// a key newer than this instance's cache (another instance saw the rotation first) fetches the
/// keyring at once; a value naming a key that exists nowhere cannot turn every read into a call
/// to Secrets Manager.
pub const UNKNOWN_KEY_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Fetches and caches both secrets. Cheap to share behind an `Arc`.
pub struct SecretsCache {
    backend: Backend,
    ttl: Duration,
    google_client: Mutex<Option<Cached<GoogleClient>>>,
    keyring: Mutex<Option<Cached<Keyring>>>,
    /// When an unknown key id last made the keyring be fetched again.
    unknown_key_refetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for SecretsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SecretsCache {
    pub fn new(client: aws_sdk_secretsmanager::Client, ids: SecretIds) -> Self {
        Self::with_ttl(client, ids, DEFAULT_TTL)
    }

    pub fn with_ttl(client: aws_sdk_secretsmanager::Client, ids: SecretIds, ttl: Duration) -> Self {
        Self {
            backend: Backend::SecretsManager { client, ids },
            ttl,
            google_client: Mutex::new(None),
            keyring: Mutex::new(None),
            unknown_key_refetch: Mutex::new(None),
        }
    }

    /// A cache holding the given values forever, with no Secrets Manager behind it.
    pub fn fixed(google_client: GoogleClient, keyring: Keyring) -> Self {
        let now = Instant::now();
        Self {
            backend: Backend::Fixed,
            ttl: Duration::MAX,
            google_client: Mutex::new(Some(Cached {
                value: Arc::new(google_client),
                fetched_at: now,
            })),
            keyring: Mutex::new(Some(Cached {
                value: Arc::new(keyring),
                fetched_at: now,
            })),
            unknown_key_refetch: Mutex::new(None),
        }
    }

    /// Both secrets, fetched now (a cold start does this during init, where Lambda gives the
    /// function a full CPU and a failure is one clear error instead of one per record).
    pub async fn fetch_all(&self) -> Result<(), SecretsError> {
        // At once: a cold start waits for one round trip to Secrets Manager, not two.
        futures::try_join!(self.google_client(), self.keyring())?;
        Ok(())
    }

    /// [`Self::fetch_all`] during a function's init (every function does): a failure is logged
    /// once, naming the secret, and fails the init, so Lambda reports the invocation's one error
    /// and the next cold start tries again.
    pub async fn read_at_init(&self) -> Result<(), SecretsError> {
        self.fetch_all().await.inspect_err(|error| {
            tracing::error!(%error, "cold start: the secrets cannot be read; this invocation fails");
        })
    }

    pub async fn google_client(&self) -> Result<Arc<GoogleClient>, SecretsError> {
        self.cached(&self.google_client, |backend| async move {
            let (id, text) = fetch(backend, |ids| &ids.google_client).await?;
            GoogleClient::from_json(&text)
                .map_err(|source| SecretsError::GoogleClient { id, source })
        })
        .await
    }

    pub async fn keyring(&self) -> Result<Arc<Keyring>, SecretsError> {
        self.cached(&self.keyring, |backend| async move {
            let (id, text) = fetch(backend, |ids| &ids.token_keys).await?;
            Keyring::from_json(&text).map_err(|source| SecretsError::Keyring { id, source })
        })
        .await
    }

    /// The keyring, fetched again (at most once per [`UNKNOWN_KEY_REFETCH_INTERVAL`]) when it
    /// lacks one of `key_ids`: after a rotation, a warm instance opens what a newer one sealed.
    pub async fn keyring_knowing(&self, key_ids: &[&str]) -> Result<Arc<Keyring>, SecretsError> {
        let keyring = self.keyring().await?;
        let unknown: Vec<&str> = key_ids
            .iter()
            .copied()
            .filter(|id| !keyring.has_key(id))
            .collect();
        if unknown.is_empty() || matches!(self.backend, Backend::Fixed) {
            return Ok(keyring);
        }
        {
            let mut last = self.unknown_key_refetch.lock().await;
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KEY_REFETCH_INTERVAL) {
                return Ok(keyring);
            }
            *last = Some(Instant::now());
        }
        tracing::info!(
            key_ids = ?unknown,
            "a sealed value names a key the cached keyring lacks: fetching the keyring again"
        );
        self.keyring.lock().await.take();
        self.keyring().await
    }

    /// One fetch at a time per secret: concurrent callers wait for the first one's answer.
    async fn cached<'a, T, F, Fut>(
        &'a self,
        slot: &Mutex<Option<Cached<T>>>,
        load: F,
    ) -> Result<Arc<T>, SecretsError>
    where
        F: FnOnce(&'a Backend) -> Fut,
        Fut: Future<Output = Result<T, SecretsError>>,
    {
        let mut guard = slot.lock().await;
        if let Some(cached) = guard.as_ref() {
            if cached.fetched_at.elapsed() < self.ttl {
                return Ok(cached.value.clone());
            }
            if matches!(self.backend, Backend::Fixed) {
                return Ok(cached.value.clone());
            }
        }
        let value = Arc::new(load(&self.backend).await?);
        *guard = Some(Cached {
            value: value.clone(),
            fetched_at: Instant::now(),
        });
        Ok(value)
    }
}

async fn fetch(
    backend: &Backend,
    which: impl Fn(&SecretIds) -> &String,
) -> Result<(String, String), SecretsError> {
    let Backend::SecretsManager { client, ids } = backend else {
        unreachable!("a fixed cache is always filled");
    };
    let id = which(ids).clone();
    let answer = client
        .get_secret_value()
        .secret_id(&id)
        .send()
        .await
        .map_err(|e| SecretsError::Fetch {
            id: id.clone(),
            message: crate::aws::describe_error(&e),
        })?;
    let text = answer
        .secret_string()
        .ok_or_else(|| SecretsError::NotAString { id: id.clone() })?
        .to_string();
    Ok((id, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn both_client_shapes_are_read() {
        let downloaded = r#"{"web":{"client_id":"id-1.apps.googleusercontent.com","project_id":"p","auth_uri":"https://accounts.google.com/o/oauth2/auth","client_secret":"GOCSPX-abc","redirect_uris":["https://x/cb"]}}"#;
        let flat = r#"{"client_id":"id-2","client_secret":"GOCSPX-def"}"#;
        let a = GoogleClient::from_json(downloaded).unwrap();
        assert_eq!(a.client_id, "id-1.apps.googleusercontent.com");
        assert_eq!(a.client_secret.expose_secret(), "GOCSPX-abc");
        let b = GoogleClient::from_json(flat).unwrap();
        assert_eq!(b.client_id, "id-2");
        assert!(!format!("{b:?}").contains("GOCSPX-def"));
    }

    #[test]
    fn malformed_client_json_is_an_error_without_the_value() {
        for bad in [
            r#"{"installed":{"client_id":"x","client_secret":"GOCSPX-leak"}}"#,
            r#"{"client_id":"","client_secret":"GOCSPX-leak"}"#,
            r#"{"client_secret":"GOCSPX-leak"}"#,
            "GOCSPX-leak",
        ] {
            let error = GoogleClient::from_json(bad).unwrap_err();
            assert!(!error.to_string().contains("GOCSPX-leak"));
        }
    }

    #[tokio::test]
    async fn a_fixed_cache_answers_without_aws() {
        let cache = SecretsCache::fixed(
            GoogleClient {
                client_id: "id".into(),
                client_secret: SecretString::from("s".to_string()),
            },
            Keyring::generate("k1"),
        );
        assert_eq!(cache.google_client().await.unwrap().client_id, "id");
        assert_eq!(cache.keyring().await.unwrap().current_key_id(), "k1");
    }
}
