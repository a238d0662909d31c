//! The grants table (partition key `user_id`): the adapter of [`GrantStore`] and its in-memory
//! fake. Tokens are sealed on write and opened on read; every write but `delete_tokens` is
//! conditional on the version that was read.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aws_sdk_dynamodb::{Client, types::AttributeValue};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Item, SealedTable, page_after, resume_key, unless_condition_failed};
use crate::{
    grants::{
        AppCalendar, Grant, GrantError, GrantStatus, GrantStore, Marker, ReauthReason, RefreshLease,
    },
    secrets::SecretsCache,
    sync_state::{PAGE_SIZE, Page},
    vault::{VaultError, sealed_key_id},
};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reauth_reason: Option<ReauthReason>,
    // The lifecycle markers (`Marker::attribute`): set by `mark_reported`, dropped by every full
    // write, which is what ends an episode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    needs_reauth_reported_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parked_reported_at: Option<DateTime<Utc>>,
    // The dedicated calendar (`Grant::calendar`), both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calendar_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calendar_created_at: Option<DateTime<Utc>>,
    version: u64,
    updated_at: DateTime<Utc>,
}

/// The refresh lease's attributes ([`GrantStore::claim_refresh`]): not part of [`StoredGrant`], so
/// every full write (a put of the whole item) drops them.
const LEASE_UNTIL: &str = "refresh_lease_until";
const LEASE_OWNER: &str = "refresh_lease_owner";

/// Name of the grants table's index by Google account (see `template.yaml`; keys only).
pub const BY_GOOGLE_SUB_INDEX: &str = "by_google_sub";

/// DynamoDB adapter of [`GrantStore`].
#[derive(Clone)]
pub struct DynamoGrantStore(SealedTable);

/// Seals or opens an optional token of `user_id`; a failure names the user, never the token.
fn each_token<A, B>(
    user_id: &str,
    value: Option<A>,
    crypt: impl FnOnce(A) -> Result<B, VaultError>,
) -> Result<Option<B>, GrantError> {
    value
        .map(crypt)
        .transpose()
        .map_err(|source| GrantError::Vault {
            user_id: user_id.to_string(),
            source,
        })
}

fn conflict(user_id: &str) -> GrantError {
    GrantError::Conflict {
        user_id: user_id.to_string(),
    }
}

impl DynamoGrantStore {
    pub fn new(client: Client, table: String, secrets: Arc<SecretsCache>) -> Self {
        Self(SealedTable::new(client, table, "user_id", secrets))
    }

    /// The grant item of `user_id` as stored (tokens still sealed), read consistently.
    async fn stored(&self, user_id: &str) -> Result<Option<StoredGrant>, GrantError> {
        let Some(item) = self.0.table.get(user_id).await.map_err(GrantError::Store)? else {
            return Ok(None);
        };
        let stored = serde_dynamo::from_item(item).map_err(|e| GrantError::Corrupt {
            user_id: user_id.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some(stored))
    }

    /// A stored grant with its tokens opened; one whose tokens cannot be opened reads as
    /// needs_reauth.
    async fn open_stored(&self, stored: StoredGrant) -> Result<Grant, GrantError> {
        let user_id = stored.user_id.as_str();
        let sealed: Vec<&str> = [&stored.access_token_sealed, &stored.refresh_token_sealed]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let vault = self.0.vault_opening(sealed.iter().copied()).await?;
        let open = |sealed: &Option<String>| {
            each_token(user_id, sealed.as_deref(), |v| {
                self.0.open(&vault, user_id, v)
            })
        };
        let opened = open(&stored.access_token_sealed)
            .and_then(|access| Ok((access, open(&stored.refresh_token_sealed)?)));
        let (access_token, refresh_token, status, reauth_reason) = match opened {
            Ok((access, refresh)) => (access, refresh, stored.status, stored.reauth_reason),
            // Corrupt ciphertext, or a key no longer in the keyring: only a new connect can
            // help, so the grant reads as needs_reauth (status says so, sync parks, a reconnect
            // overwrites it). The item is left as it is, in case the key comes back.
            Err(GrantError::Vault { source, .. }) => {
                let key_ids: Vec<&str> = sealed.iter().filter_map(|s| sealed_key_id(s)).collect();
                tracing::warn!(
                    user_id = %stored.user_id,
                    ?key_ids,
                    error = %source,
                    "the stored grant's tokens cannot be opened: it counts as needs_reauth until the user reconnects"
                );
                (
                    None,
                    None,
                    GrantStatus::NeedsReauth,
                    Some(ReauthReason::UnreadableGrant),
                )
            }
            Err(other) => return Err(other),
        };
        Ok(Grant {
            access_token,
            refresh_token,
            user_id: stored.user_id,
            status,
            google_sub: stored.google_sub,
            google_email: stored.google_email,
            scopes: stored.scopes,
            connected_at: stored.connected_at,
            refreshed_at: stored.refreshed_at,
            access_token_expires_at: stored.access_token_expires_at,
            reauth_reason,
            needs_reauth_reported_at: stored.needs_reauth_reported_at,
            parked_reported_at: stored.parked_reported_at,
            calendar: stored
                .calendar_id
                .zip(stored.calendar_created_at)
                .map(|(id, created_at)| AppCalendar { id, created_at }),
            version: stored.version,
        })
    }
}

impl GrantStore for DynamoGrantStore {
    async fn reseal(&self, user_id: &str) -> Result<bool, GrantError> {
        let Some(stored) = self.stored(user_id).await? else {
            return Ok(false);
        };
        let vault = self.0.vault().await?;
        let on_old_key = [&stored.access_token_sealed, &stored.refresh_token_sealed]
            .into_iter()
            .flatten()
            .any(|sealed| sealed_key_id(sealed) != Some(vault.current_key_id()));
        if !on_old_key {
            return Ok(false);
        }
        let Some(grant) = self.get(user_id).await? else {
            return Ok(false);
        };
        if grant.access_token.is_none() && grant.refresh_token.is_none() {
            return Ok(false); // unreadable: keep the ciphertext in case its key comes back
        }
        match self.save(&grant).await {
            Ok(_) => Ok(true),
            // Someone else wrote it meanwhile, under the current key.
            Err(GrantError::Conflict { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn active_users(&self, cursor: Option<&str>) -> Result<Page<String>, GrantError> {
        let start = cursor
            .map(resume_key::decode)
            .transpose()
            .map_err(GrantError::Store)?;
        let answer = self
            .0
            .table
            .scan()
            .projection_expression("user_id")
            .filter_expression("#s = :active")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(
                ":active",
                AttributeValue::S(GrantStatus::Active.as_str().into()),
            )
            .limit(PAGE_SIZE as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| GrantError::Store(crate::aws::describe_error(&e)))?;
        Ok(Page {
            items: answer
                .items()
                .iter()
                .filter_map(|item| item.get("user_id")?.as_s().ok().cloned())
                .collect(),
            next: answer.last_evaluated_key.as_ref().map(resume_key::encode),
        })
    }

    async fn holders(&self, google_sub: &str) -> Result<Vec<String>, GrantError> {
        let mut items = self
            .0
            .table
            .query()
            .index_name(BY_GOOGLE_SUB_INDEX)
            .key_condition_expression("google_sub = :sub")
            .expression_attribute_values(":sub", AttributeValue::S(google_sub.to_string()))
            .into_paginator()
            .items()
            .send();
        let mut users = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| GrantError::Store(crate::aws::describe_error(&e)))?;
            if let Some(AttributeValue::S(user_id)) = item.get("user_id") {
                users.push(user_id.clone());
            }
        }
        Ok(users)
    }

    async fn get(&self, user_id: &str) -> Result<Option<Grant>, GrantError> {
        let Some(stored) = self.stored(user_id).await? else {
            return Ok(None);
        };
        self.open_stored(stored).await.map(Some)
    }

    async fn get_many(&self, user_ids: &[&str]) -> Result<Vec<Grant>, GrantError> {
        let mut grants = Vec::with_capacity(user_ids.len());
        for keys in user_ids.chunks(crate::sync_state::BATCH_READ_LIMIT) {
            let items = self
                .0
                .table
                .get_many(keys)
                .await
                .map_err(GrantError::Store)?;
            for item in items {
                let user_id = item
                    .get("user_id")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let stored = serde_dynamo::from_item(item).map_err(|e| GrantError::Corrupt {
                    user_id,
                    reason: e.to_string(),
                })?;
                grants.push(self.open_stored(stored).await?);
            }
        }
        Ok(grants)
    }

    async fn save(&self, grant: &Grant) -> Result<Grant, GrantError> {
        let vault = self.0.vault().await?;
        let user_id = grant.user_id.as_str();
        let seal = |token| each_token(user_id, token, |v| self.0.seal(&vault, user_id, v));
        let new_version = grant.version + 1;
        let stored = StoredGrant {
            user_id: grant.user_id.clone(),
            status: grant.status,
            google_sub: grant.google_sub.clone(),
            google_email: grant.google_email.clone(),
            scopes: grant.scopes.clone(),
            connected_at: grant.connected_at,
            refreshed_at: grant.refreshed_at,
            access_token_sealed: seal(grant.access_token.as_ref())?,
            access_token_expires_at: grant.access_token_expires_at,
            refresh_token_sealed: seal(grant.refresh_token.as_ref())?,
            reauth_reason: grant.reauth_reason,
            needs_reauth_reported_at: grant.needs_reauth_reported_at,
            parked_reported_at: grant.parked_reported_at,
            calendar_id: grant.calendar.as_ref().map(|c| c.id.clone()),
            calendar_created_at: grant.calendar.as_ref().map(|c| c.created_at),
            version: new_version,
            updated_at: Utc::now(),
        };
        let item: Item =
            serde_dynamo::to_item(&stored).map_err(|e| GrantError::Store(e.to_string()))?;
        let mut put = self.0.table.put(item);
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
        match unless_condition_failed(put.send().await).map_err(GrantError::Store)? {
            Some(_) => Ok(Grant {
                version: new_version,
                ..grant.clone()
            }),
            None => Err(conflict(user_id)),
        }
    }

    async fn delete_tokens(&self, user_id: &str, status: GrantStatus) -> Result<(), GrantError> {
        let updated = self
            .0
            .table
            .update(user_id)
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
        // A failed condition: the user has no grant, so there is nothing to delete.
        unless_condition_failed(updated).map_err(GrantError::Store)?;
        Ok(())
    }

    async fn mark_reported(&self, grant: &Grant, markers: &[Marker]) -> Result<bool, GrantError> {
        if markers.is_empty() {
            return Ok(false);
        }
        let mut update = self
            .0
            .table
            .update(&grant.user_id)
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(
                ":read_version",
                AttributeValue::N(grant.version.to_string()),
            )
            .expression_attribute_values(":now", AttributeValue::S(Utc::now().to_rfc3339()));
        let (mut sets, mut conditions) = (Vec::new(), vec!["#version = :read_version".to_string()]);
        for (i, marker) in markers.iter().enumerate() {
            let name = format!("#m{i}");
            update = update.expression_attribute_names(&name, marker.attribute());
            sets.push(format!("{name} = :now"));
            conditions.push(format!("attribute_not_exists({name})"));
        }
        let updated = update
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression(conditions.join(" AND "))
            .send()
            .await;
        Ok(unless_condition_failed(updated)
            .map_err(GrantError::Store)?
            .is_some())
    }

    async fn claim_refresh(
        &self,
        user_id: &str,
        version: u64,
        lease: &RefreshLease,
    ) -> Result<bool, GrantError> {
        let claimed = self
            .0
            .table
            .update(user_id)
            .update_expression("SET #until = :until, #owner = :owner")
            .condition_expression(
                "#version = :read_version AND (attribute_not_exists(#until) OR #until < :now)",
            )
            .expression_attribute_names("#version", "version")
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_names("#owner", LEASE_OWNER)
            .expression_attribute_values(":read_version", AttributeValue::N(version.to_string()))
            .expression_attribute_values(
                ":until",
                AttributeValue::N(lease.until.timestamp_millis().to_string()),
            )
            .expression_attribute_values(
                ":now",
                AttributeValue::N(Utc::now().timestamp_millis().to_string()),
            )
            .expression_attribute_values(":owner", AttributeValue::S(lease.owner.clone()))
            .send()
            .await;
        Ok(unless_condition_failed(claimed)
            .map_err(GrantError::Store)?
            .is_some())
    }

    async fn release_refresh(&self, user_id: &str, lease: &RefreshLease) -> Result<(), GrantError> {
        let released = self
            .0
            .table
            .update(user_id)
            .update_expression("REMOVE #until, #owner")
            .condition_expression("#owner = :owner")
            .expression_attribute_names("#until", LEASE_UNTIL)
            .expression_attribute_names("#owner", LEASE_OWNER)
            .expression_attribute_values(":owner", AttributeValue::S(lease.owner.clone()))
            .send()
            .await;
        // A failed condition: the lease already ended (a full write, or another claim after it).
        unless_condition_failed(released).map_err(GrantError::Store)?;
        Ok(())
    }

    async fn delete(&self, grant: &Grant) -> Result<(), GrantError> {
        let deleted = self
            .0
            .table
            .delete(&grant.user_id)
            .condition_expression("attribute_not_exists(user_id) OR #version = :read_version")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(
                ":read_version",
                AttributeValue::N(grant.version.to_string()),
            )
            .send()
            .await;
        match unless_condition_failed(deleted).map_err(GrantError::Store)? {
            Some(_) => Ok(()),
            None => Err(conflict(&grant.user_id)),
        }
    }
}

/// An in-memory [`GrantStore`] with the same version rules, for unit tests.
#[derive(Default, Clone)]
pub struct InMemoryGrantStore {
    grants: Arc<Mutex<HashMap<String, Grant>>>,
    /// A full write drops the user's lease, as the item's put does.
    leases: Arc<InMemoryLeases>,
}

/// Refresh leases by user with the rules of [`GrantStore::claim_refresh`], for the fakes.
#[derive(Default)]
pub struct InMemoryLeases(Mutex<HashMap<String, RefreshLease>>);

impl InMemoryLeases {
    /// Takes `lease` if the grant is stored at `version` (`stored`: its version now) and no
    /// unexpired lease is held.
    pub fn claim(
        &self,
        user_id: &str,
        stored: Option<u64>,
        version: u64,
        lease: &RefreshLease,
    ) -> bool {
        let mut leases = self.0.lock().unwrap();
        let free = leases
            .get(user_id)
            .is_none_or(|held| held.until < Utc::now());
        if stored != Some(version) || !free {
            return false;
        }
        leases.insert(user_id.to_string(), lease.clone());
        true
    }

    /// Ends `lease` if it is the one held.
    pub fn release(&self, user_id: &str, lease: &RefreshLease) {
        let mut leases = self.0.lock().unwrap();
        if leases
            .get(user_id)
            .is_some_and(|held| held.owner == lease.owner)
        {
            leases.remove(user_id);
        }
    }

    /// A full write of the grant: whatever lease ran is over.
    pub fn end(&self, user_id: &str) {
        self.0.lock().unwrap().remove(user_id);
    }
}

impl InMemoryGrantStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl GrantStore for InMemoryGrantStore {
    async fn reseal(&self, _user_id: &str) -> Result<bool, GrantError> {
        Ok(false) // nothing is sealed in memory
    }

    async fn active_users(&self, cursor: Option<&str>) -> Result<Page<String>, GrantError> {
        let mut users: Vec<String> = self
            .grants
            .lock()
            .unwrap()
            .values()
            .filter(|g| g.status == GrantStatus::Active)
            .map(|g| g.user_id.clone())
            .collect();
        users.sort();
        Ok(page_after(users, cursor, String::as_str))
    }

    async fn holders(&self, google_sub: &str) -> Result<Vec<String>, GrantError> {
        Ok(self
            .grants
            .lock()
            .unwrap()
            .values()
            .filter(|g| g.google_sub == google_sub)
            .map(|g| g.user_id.clone())
            .collect())
    }

    async fn get(&self, user_id: &str) -> Result<Option<Grant>, GrantError> {
        Ok(self.grants.lock().unwrap().get(user_id).cloned())
    }

    async fn save(&self, grant: &Grant) -> Result<Grant, GrantError> {
        let mut grants = self.grants.lock().unwrap();
        let stored_version = grants.get(&grant.user_id).map_or(0, |g| g.version);
        if stored_version != grant.version {
            return Err(conflict(&grant.user_id));
        }
        let saved = Grant {
            version: grant.version + 1,
            ..grant.clone()
        };
        grants.insert(grant.user_id.clone(), saved.clone());
        self.leases.end(&grant.user_id);
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

    async fn mark_reported(&self, grant: &Grant, markers: &[Marker]) -> Result<bool, GrantError> {
        let mut grants = self.grants.lock().unwrap();
        let Some(stored) = grants.get_mut(&grant.user_id) else {
            return Ok(false);
        };
        if markers.is_empty()
            || stored.version != grant.version
            || markers.iter().any(|m| stored.reported(*m).is_some())
        {
            return Ok(false);
        }
        let now = Utc::now();
        for marker in markers {
            match marker {
                Marker::NeedsReauth => stored.needs_reauth_reported_at = Some(now),
                Marker::Parked => stored.parked_reported_at = Some(now),
            }
        }
        Ok(true)
    }

    async fn claim_refresh(
        &self,
        user_id: &str,
        version: u64,
        lease: &RefreshLease,
    ) -> Result<bool, GrantError> {
        let grants = self.grants.lock().unwrap();
        let stored = grants.get(user_id).map(|g| g.version);
        Ok(self.leases.claim(user_id, stored, version, lease))
    }

    async fn release_refresh(&self, user_id: &str, lease: &RefreshLease) -> Result<(), GrantError> {
        self.leases.release(user_id, lease);
        Ok(())
    }

    async fn delete(&self, grant: &Grant) -> Result<(), GrantError> {
        let mut grants = self.grants.lock().unwrap();
        match grants.get(&grant.user_id) {
            Some(stored) if stored.version != grant.version => Err(conflict(&grant.user_id)),
            _ => {
                grants.remove(&grant.user_id);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::grants::tests::grant;

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
            store
                .retire(&saved, GrantStatus::NeedsReauth, ReauthReason::InvalidGrant)
                .await,
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
            .retire(
                &renewed,
                GrantStatus::NeedsReauth,
                ReauthReason::InvalidRapt,
            )
            .await
            .unwrap();
        assert!(retired.refresh_token.is_none() && retired.status == GrantStatus::NeedsReauth);
        assert_eq!(retired.reauth_reason, Some(ReauthReason::InvalidRapt));

        // Markers: once per episode, only at the version read, and a full write clears them.
        assert!(
            !store
                .mark_reported(&renewed, &[Marker::Parked])
                .await
                .unwrap()
        );
        assert!(
            store
                .mark_reported(&retired, &[Marker::NeedsReauth, Marker::Parked])
                .await
                .unwrap()
        );
        assert!(
            !store
                .mark_reported(&retired, &[Marker::Parked])
                .await
                .unwrap()
        );
        let marked = store.get("u").await.unwrap().unwrap();
        assert!(marked.parked_reported_at.is_some() && marked.version == retired.version);
        let reconnected = store
            .save(&Grant {
                status: GrantStatus::Active,
                needs_reauth_reported_at: None,
                parked_reported_at: None,
                reauth_reason: None,
                ..marked
            })
            .await
            .unwrap();
        let retired = store
            .retire(
                &reconnected,
                GrantStatus::NeedsReauth,
                ReauthReason::InvalidGrant,
            )
            .await
            .unwrap();
        assert!(retired.parked_reported_at.is_none());
        assert!(
            store
                .mark_reported(&retired, &[Marker::Parked])
                .await
                .unwrap()
        );
        assert!(matches!(
            store.delete(&renewed).await,
            Err(GrantError::Conflict { .. })
        ));
        store.delete(&retired).await.unwrap();
        assert!(store.get("u").await.unwrap().is_none());
        store.delete(&retired).await.unwrap();
    }
}
