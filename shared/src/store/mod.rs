//! Every DynamoDB table calsync touches, one file each: the adapter that implements the domain's
//! store trait, and the in-memory fake unit tests use in its place.
//!
//! - [`flows`]: OAuth flow records ([`crate::flows::FlowStore`]).
//! - [`grants`]: grants, tokens sealed at rest ([`crate::grants::GrantStore`]).
//! - [`sync_state`]: the sync state and its parked changes ([`crate::sync_state::SyncStateStore`],
//!   [`crate::sync_state::ParkedChanges`]).
//! - [`events`]: the app's Events table, read only ([`crate::sync::resync::EventsSource`]).
//! - [`resync_queue`]: the SQS queue of resync jobs ([`crate::resync::JobQueue`]), the one
//!   store here that is not a table.
//! - [`stream_range`]: the Events table's stream, read again by shard and sequence range
//!   ([`crate::resync::StreamRange`]).
//!
//! The adapters share [`Table`] (a table keyed on one string attribute, read consistently) and,
//! for the tables holding secrets, [`SealedTable`] (values bound to the table and the user).

mod events;
mod flows;
mod grants;
mod resync_queue;
mod stream_range;
mod sync_state;

use std::{collections::HashMap, sync::Arc};

use aws_sdk_dynamodb::{
    error::{ProvideErrorMetadata, SdkError},
    operation::{
        delete_item::builders::DeleteItemFluentBuilder, put_item::builders::PutItemFluentBuilder,
        query::builders::QueryFluentBuilder, scan::builders::ScanFluentBuilder,
        update_item::builders::UpdateItemFluentBuilder,
    },
    types::{AttributeValue, KeysAndAttributes},
};
use secrecy::SecretString;

pub use events::{DynamoEvents, InMemoryEvents};
pub use flows::{DynamoFlowStore, InMemoryFlowStore};
pub use grants::{DynamoGrantStore, InMemoryGrantStore, InMemoryLeases};
pub use resync_queue::{InMemoryJobQueue, SqsJobQueue};
pub use stream_range::{DynamoStreamRange, InMemoryStreamRange};
pub use sync_state::{DynamoSyncStateStore, InMemorySyncStateStore};

use crate::{
    aws::{Clients, describe_error},
    config::{Config, Tables},
    secrets::{SecretsCache, SecretsError},
    sync_state::{BATCH_READ_LIMIT, PAGE_SIZE, Page},
    vault::{Vault, VaultError},
};

/// Name of the index by user that the Events and sync-state tables both have (see
/// `template.yaml`; an existing Events table must have it too).
pub const BY_USER_INDEX: &str = "by_user";

/// A function's production adapters, built once per cold start over its AWS clients and one
/// secrets cache, which the sealed tables and the Google client share.
pub struct Stores {
    dynamodb: aws_sdk_dynamodb::Client,
    tables: Tables,
    secrets: Arc<SecretsCache>,
}

impl Stores {
    pub fn new(config: &Config, clients: &Clients) -> Self {
        Self {
            dynamodb: clients.dynamodb.clone(),
            tables: config.tables.clone(),
            secrets: Arc::new(SecretsCache::new(
                clients.secrets.clone(),
                config.secrets.clone(),
            )),
        }
    }

    pub fn secrets(&self) -> Arc<SecretsCache> {
        self.secrets.clone()
    }

    pub fn flows(&self) -> DynamoFlowStore {
        DynamoFlowStore::new(
            self.dynamodb.clone(),
            self.tables.oauth_flows.clone(),
            self.secrets(),
        )
    }

    pub fn grants(&self) -> DynamoGrantStore {
        DynamoGrantStore::new(
            self.dynamodb.clone(),
            self.tables.grants.clone(),
            self.secrets(),
        )
    }

    pub fn sync_state(&self) -> DynamoSyncStateStore {
        DynamoSyncStateStore::new(self.dynamodb.clone(), self.tables.sync_state.clone())
    }

    pub fn events(&self) -> DynamoEvents {
        DynamoEvents::new(self.dynamodb.clone(), self.tables.events.clone())
    }
}

/// A listing's resume key (DynamoDB's `LastEvaluatedKey`, whose attributes here are all
/// strings) as the opaque cursor text of a [`crate::sync_state::Page`].
pub mod resume_key {
    use std::collections::{BTreeMap, HashMap};

    use aws_sdk_dynamodb::types::AttributeValue;

    pub fn encode(key: &HashMap<String, AttributeValue>) -> String {
        let strings: BTreeMap<&str, &str> = key
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.as_s().ok()?.as_str())))
            .collect();
        serde_json::to_string(&strings).expect("a map of strings serialises")
    }

    pub fn decode(cursor: &str) -> Result<HashMap<String, AttributeValue>, String> {
        let strings: HashMap<String, String> = serde_json::from_str(cursor)
            .map_err(|e| format!("the listing cursor is not a resume key ({e})"))?;
        Ok(strings
            .into_iter()
            .map(|(name, value)| (name, AttributeValue::S(value)))
            .collect())
    }
}

/// The in-memory fakes' paging: `items` sorted by `key`, the page after the one that ended at
/// `cursor` (the last key it held).
pub fn page_after<T>(items: Vec<T>, cursor: Option<&str>, key: impl Fn(&T) -> &str) -> Page<T> {
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| cursor.is_none_or(|after| key(item) > after))
        .collect();
    let size = PAGE_SIZE;
    let next = (rest.len() > size).then(|| key(&rest[size - 1]).to_string());
    rest.truncate(size);
    Page { items: rest, next }
}

/// `BatchGetItem` requests per batch read before unprocessed keys fail it, and the first wait
/// between them (doubling): about 0.75 s in all, the order of the SDK's own retries.
const UNPROCESSED_ATTEMPTS: u32 = 5;
const UNPROCESSED_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// One item as the SDK holds it.
type Item = HashMap<String, AttributeValue>;

/// A table whose partition key is one string attribute. Requests built here already name the
/// table and the key; errors come back as [`describe_error`]'s text for the store's own enum.
#[derive(Clone, Debug)]
pub struct Table {
    client: aws_sdk_dynamodb::Client,
    name: String,
    key: &'static str,
}

impl Table {
    pub fn new(client: aws_sdk_dynamodb::Client, name: String, key: &'static str) -> Self {
        Self { client, name, key }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn key_value(value: &str) -> AttributeValue {
        AttributeValue::S(value.to_string())
    }

    /// The item under `key`, read strongly consistent: every caller is about to write
    /// conditionally on what it read, and a stale read would only cost a lost race.
    pub async fn get(&self, key: &str) -> Result<Option<Item>, String> {
        self.client
            .get_item()
            .table_name(&self.name)
            .key(self.key, Self::key_value(key))
            .consistent_read(true)
            .send()
            .await
            .map(|answer| answer.item)
            .map_err(|e| describe_error(&e))
    }

    /// The items under `keys` (at most [`BATCH_READ_LIMIT`], distinct), in one `BatchGetItem`
    /// read strongly consistent like [`Self::get`], in no particular order. Keys DynamoDB leaves
    /// unprocessed (throttling, its 16 MB answer limit) are asked again after a backoff, a few
    /// times; keys still left then make the whole read fail, like a throttled `GetItem` would.
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Item>, String> {
        debug_assert!(keys.len() <= BATCH_READ_LIMIT);
        let mut items = Vec::with_capacity(keys.len());
        let mut pending: Vec<Item> = keys
            .iter()
            .map(|k| Item::from([(self.key.to_string(), Self::key_value(k))]))
            .collect();
        let mut backoff = UNPROCESSED_BACKOFF;
        for attempt in 1..=UNPROCESSED_ATTEMPTS {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(pending))
                .consistent_read(true)
                .build()
                .map_err(|e| e.to_string())?;
            let answer = self
                .client
                .batch_get_item()
                .request_items(&self.name, request)
                .send()
                .await
                .map_err(|e| describe_error(&e))?;
            if let Some(found) = answer.responses.and_then(|mut r| r.remove(&self.name)) {
                items.extend(found);
            }
            pending = answer
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.name))
                .map(|k| k.keys)
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(items);
            }
            if attempt < UNPROCESSED_ATTEMPTS {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Err(format!(
            "DynamoDB left {} of {} keys of table {} unprocessed after {UNPROCESSED_ATTEMPTS} batch reads (throttled); retry later",
            pending.len(),
            keys.len(),
            self.name
        ))
    }

    pub fn put(&self, item: Item) -> PutItemFluentBuilder {
        self.client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
    }

    pub fn delete(&self, key: &str) -> DeleteItemFluentBuilder {
        self.client
            .delete_item()
            .table_name(&self.name)
            .key(self.key, Self::key_value(key))
    }

    pub fn update(&self, key: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.name)
            .key(self.key, Self::key_value(key))
    }

    pub fn query(&self) -> QueryFluentBuilder {
        self.client.query().table_name(&self.name)
    }

    pub fn scan(&self) -> ScanFluentBuilder {
        self.client.scan().table_name(&self.name)
    }

    /// A query of `user_id`'s items through the table's [`BY_USER_INDEX`].
    pub fn by_user(&self, user_id: &str) -> QueryFluentBuilder {
        self.query()
            .index_name(BY_USER_INDEX)
            .key_condition_expression("user_id = :u")
            .expression_attribute_values(":u", Self::key_value(user_id))
    }

    /// One page ([`PAGE_SIZE`] items) of `user_id`'s items from `cursor` on, through the index;
    /// the page's `next` resumes after it.
    pub async fn page_by_user(
        &self,
        user_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<Item>, String> {
        let start = cursor.map(resume_key::decode).transpose()?;
        let answer = self
            .by_user(user_id)
            .limit(PAGE_SIZE as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| describe_error(&e))?;
        Ok(Page {
            next: answer.last_evaluated_key.as_ref().map(resume_key::encode),
            items: answer.items.unwrap_or_default(),
        })
    }
}

/// A conditional write's answer: `Some(output)` when it went through, `None` when its condition
/// did not hold (for the caller to name: a conflict, or nothing to do), else the error's text.
pub fn unless_condition_failed<O, E, R>(
    result: Result<O, SdkError<E, R>>,
) -> Result<Option<O>, String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(output) => Ok(Some(output)),
        Err(e)
            if e.as_service_error().and_then(ProvideErrorMetadata::code)
                == Some("ConditionalCheckFailedException") =>
        {
            Ok(None)
        }
        Err(e) => Err(describe_error(&e)),
    }
}

/// A table holding secrets sealed with the [`Vault`], each bound to this table and its user, so a
/// ciphertext copied to another table or another user's item does not open.
#[derive(Clone)]
pub struct SealedTable {
    pub table: Table,
    secrets: Arc<SecretsCache>,
}

impl SealedTable {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        name: String,
        key: &'static str,
        secrets: Arc<SecretsCache>,
    ) -> Self {
        Self {
            table: Table::new(client, name, key),
            secrets,
        }
    }

    /// The vault with the current keyring (cached by [`SecretsCache`]).
    pub async fn vault(&self) -> Result<Vault, SecretsError> {
        Ok(Vault::new(self.secrets.keyring().await?))
    }

    /// The vault for opening `sealed` values: a key id the cached keyring lacks (a rotation this
    /// instance has not seen yet) fetches the keyring again, within a bound.
    pub async fn vault_opening<'a>(
        &self,
        sealed: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vault, SecretsError> {
        let key_ids: Vec<&str> = sealed
            .into_iter()
            .filter_map(crate::vault::sealed_key_id)
            .collect();
        Ok(Vault::new(self.secrets.keyring_knowing(&key_ids).await?))
    }

    pub fn seal(
        &self,
        vault: &Vault,
        user_id: &str,
        value: &SecretString,
    ) -> Result<String, VaultError> {
        vault.seal(self.table.name(), user_id, value)
    }

    pub fn open(
        &self,
        vault: &Vault,
        user_id: &str,
        sealed: &str,
    ) -> Result<SecretString, VaultError> {
        vault.open(self.table.name(), user_id, sealed)
    }
}
