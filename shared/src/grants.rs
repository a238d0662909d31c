//! Grants: one per app user, the Google authorization calsync holds, with tokens sealed at rest.
//!
//! A [`Grant`] holds plaintext tokens in memory (as `secrecy` types); [`DynamoGrantStore`] seals
//! them with the [`Vault`](crate::vault::Vault) on write and opens them on read, binding each
//! ciphertext to the grants table and the user id. Every write is conditional on the version that
//! was read ([`GrantStore::save`]), so two writers never silently overwrite each other: the loser
//! gets [`GrantError::Conflict`] and re-reads.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use aws_sdk_dynamodb::{error::SdkError, types::AttributeValue};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::{
    secrets::{SecretsCache, SecretsError},
    vault::{Vault, VaultError},
};

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
    pub version: u64,
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
    /// reconnected). Used when Google refused this grant's refresh token.
    fn retire(
        &self,
        grant: &Grant,
        status: GrantStatus,
    ) -> impl Future<Output = Result<Grant, GrantError>> + Send {
        let retired = Grant {
            status,
            access_token: None,
            access_token_expires_at: None,
            refresh_token: None,
            ..grant.clone()
        };
        async move { self.save(&retired).await }
    }

    /// Removes `grant` entirely (the user disconnected) if the stored version is still
    /// `grant.version`; [`GrantError::Conflict`] otherwise. No grant stored: nothing to do.
    fn delete(&self, grant: &Grant) -> impl Future<Output = Result<(), GrantError>> + Send;
}

/// The item as DynamoDB holds it: tokens only as sealed text.
#[derive(Serialize, Deserialize)]
struct StoredGrant {
    user_id: String,
    status: GrantStatus,
    google_sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    google_email: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    connected_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refreshed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token_sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token_expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token_sealed: Option<String>,
    version: u64,
    updated_at: DateTime<Utc>,
}

/// DynamoDB adapter of [`GrantStore`] (partition key `user_id`).
#[derive(Clone)]
pub struct DynamoGrantStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    secrets: Arc<SecretsCache>,
}

fn store_error<E, R>(error: SdkError<E, R>) -> GrantError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    GrantError::Store(aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string())
}

impl DynamoGrantStore {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: String,
        secrets: Arc<SecretsCache>,
    ) -> Self {
        Self {
            client,
            table,
            secrets,
        }
    }

    async fn vault(&self) -> Result<Vault, GrantError> {
        Ok(Vault::new(self.secrets.keyring().await?))
    }

    fn seal(
        &self,
        vault: &Vault,
        user_id: &str,
        value: &Option<SecretString>,
    ) -> Result<Option<String>, GrantError> {
        value
            .as_ref()
            .map(|v| vault.seal(&self.table, user_id, v))
            .transpose()
            .map_err(|source| GrantError::Vault {
                user_id: user_id.to_string(),
                source,
            })
    }

    fn open(
        &self,
        vault: &Vault,
        user_id: &str,
        value: &Option<String>,
    ) -> Result<Option<SecretString>, GrantError> {
        value
            .as_deref()
            .map(|v| vault.open(&self.table, user_id, v))
            .transpose()
            .map_err(|source| GrantError::Vault {
                user_id: user_id.to_string(),
                source,
            })
    }
}

impl GrantStore for DynamoGrantStore {
    async fn get(&self, user_id: &str) -> Result<Option<Grant>, GrantError> {
        let answer = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("user_id", AttributeValue::S(user_id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        let Some(item) = answer.item else {
            return Ok(None);
        };
        let stored: StoredGrant =
            serde_dynamo::from_item(item).map_err(|e| GrantError::Corrupt {
                user_id: user_id.to_string(),
                reason: e.to_string(),
            })?;
        let vault = self.vault().await?;
        Ok(Some(Grant {
            access_token: self.open(&vault, user_id, &stored.access_token_sealed)?,
            refresh_token: self.open(&vault, user_id, &stored.refresh_token_sealed)?,
            user_id: stored.user_id,
            status: stored.status,
            google_sub: stored.google_sub,
            google_email: stored.google_email,
            scopes: stored.scopes,
            connected_at: stored.connected_at,
            refreshed_at: stored.refreshed_at,
            access_token_expires_at: stored.access_token_expires_at,
            version: stored.version,
        }))
    }

    async fn save(&self, grant: &Grant) -> Result<Grant, GrantError> {
        let vault = self.vault().await?;
        let new_version = grant.version + 1;
        let stored = StoredGrant {
            user_id: grant.user_id.clone(),
            status: grant.status,
            google_sub: grant.google_sub.clone(),
            google_email: grant.google_email.clone(),
            scopes: grant.scopes.clone(),
            connected_at: grant.connected_at,
            refreshed_at: grant.refreshed_at,
            access_token_sealed: self.seal(&vault, &grant.user_id, &grant.access_token)?,
            access_token_expires_at: grant.access_token_expires_at,
            refresh_token_sealed: self.seal(&vault, &grant.user_id, &grant.refresh_token)?,
            version: new_version,
            updated_at: Utc::now(),
        };
        let item: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(&stored).map_err(|e| GrantError::Store(e.to_string()))?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        put = if grant.version == 0 {
            put.condition_expression("attribute_not_exists(user_id)")
        } else {
            put.condition_expression("#version = :read_version")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(
                    ":read_version",
                    AttributeValue::N(grant.version.to_string()),
                )
        };
        match put.send().await {
            Ok(_) => Ok(Grant {
                version: new_version,
                ..grant.clone()
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(GrantError::Conflict {
                    user_id: grant.user_id.clone(),
                })
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn delete_tokens(&self, user_id: &str, status: GrantStatus) -> Result<(), GrantError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("user_id", AttributeValue::S(user_id.to_string()))
            .condition_expression("attribute_exists(user_id)")
            .update_expression(
                "SET #status = :status, #version = #version + :one, updated_at = :now \
                 REMOVE access_token_sealed, refresh_token_sealed, access_token_expires_at",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":status", AttributeValue::S(status.as_str().into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":now", AttributeValue::S(Utc::now().to_rfc3339()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn delete(&self, grant: &Grant) -> Result<(), GrantError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("user_id", AttributeValue::S(grant.user_id.clone()))
            .condition_expression("attribute_not_exists(user_id) OR #version = :read_version")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(
                ":read_version",
                AttributeValue::N(grant.version.to_string()),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(GrantError::Conflict {
                    user_id: grant.user_id.clone(),
                })
            }
            Err(e) => Err(store_error(e)),
        }
    }
}

/// An in-memory [`GrantStore`] with the same version rules, for unit tests.
#[derive(Default, Clone)]
pub struct InMemoryGrantStore {
    grants: Arc<Mutex<HashMap<String, Grant>>>,
}

impl InMemoryGrantStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl GrantStore for InMemoryGrantStore {
    async fn get(&self, user_id: &str) -> Result<Option<Grant>, GrantError> {
        Ok(self.grants.lock().unwrap().get(user_id).cloned())
    }

    async fn save(&self, grant: &Grant) -> Result<Grant, GrantError> {
        let mut grants = self.grants.lock().unwrap();
        let stored_version = grants.get(&grant.user_id).map_or(0, |g| g.version);
        if stored_version != grant.version {
            return Err(GrantError::Conflict {
                user_id: grant.user_id.clone(),
            });
        }
        let saved = Grant {
            version: grant.version + 1,
            ..grant.clone()
        };
        grants.insert(grant.user_id.clone(), saved.clone());
        Ok(saved)
    }

    async fn delete_tokens(&self, user_id: &str, status: GrantStatus) -> Result<(), GrantError> {
        if let Some(grant) = self.grants.lock().unwrap().get_mut(user_id) {
            grant.status = status;
            grant.access_token = None;
            grant.refresh_token = None;
            grant.access_token_expires_at = None;
            grant.version += 1;
        }
        Ok(())
    }

    async fn delete(&self, grant: &Grant) -> Result<(), GrantError> {
        let mut grants = self.grants.lock().unwrap();
        match grants.get(&grant.user_id) {
            Some(stored) if stored.version != grant.version => Err(GrantError::Conflict {
                user_id: grant.user_id.clone(),
            }),
            _ => {
                grants.remove(&grant.user_id);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(user: &str) -> Grant {
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
            version: 0,
        }
    }

    #[tokio::test]
    async fn in_memory_store_enforces_versions() {
        let store = InMemoryGrantStore::new();
        let saved = store.save(&grant("u")).await.unwrap();
        assert_eq!(saved.version, 1);
        assert!(matches!(
            store.save(&grant("u")).await,
            Err(GrantError::Conflict { .. })
        ));
        let again = store.save(&saved).await.unwrap();
        assert_eq!(again.version, 2);
        assert!(matches!(
            store.save(&saved).await,
            Err(GrantError::Conflict { .. })
        ));
        store
            .delete_tokens("u", GrantStatus::NeedsReauth)
            .await
            .unwrap();
        let read = store.get("u").await.unwrap().unwrap();
        assert_eq!(read.status, GrantStatus::NeedsReauth);
        assert!(read.refresh_token.is_none() && read.access_token.is_none());
        assert_eq!(read.version, 3);

        // retire and delete are conditional on the version read.
        assert!(matches!(
            store.retire(&saved, GrantStatus::NeedsReauth).await,
            Err(GrantError::Conflict { .. })
        ));
        let renewed = store
            .save(&Grant {
                status: GrantStatus::Active,
                refresh_token: Some(SecretString::from("rt2".to_string())),
                ..read.clone()
            })
            .await
            .unwrap();
        let retired = store
            .retire(&renewed, GrantStatus::NeedsReauth)
            .await
            .unwrap();
        assert!(retired.refresh_token.is_none() && retired.status == GrantStatus::NeedsReauth);
        assert!(matches!(
            store.delete(&renewed).await,
            Err(GrantError::Conflict { .. })
        ));
        store.delete(&retired).await.unwrap();
        assert!(store.get("u").await.unwrap().is_none());
        store.delete(&retired).await.unwrap();
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
    }
}
