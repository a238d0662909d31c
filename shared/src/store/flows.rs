//! The OAuth flows table (partition key `state`, TTL attribute `expires_at`): the adapter of
//! [`FlowStore`] and its in-memory fake. The PKCE verifier is stored sealed, bound to its user.
//!
//! Connect links share the table: their key is `link.` and the SHA-256 of the link token
//! ([`link_key`]), and they carry `kind = "link"`. Flow reads refuse keys that are not shaped like
//! a state, so a link record is never read as a flow (and the reverse is guarded by `kind`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use aws_sdk_dynamodb::{
    Client,
    types::{AttributeValue, ReturnValue},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Item, SealedTable, unless_condition_failed};
use crate::{
    flows::{ConnectLink, Flow, FlowError, FlowStore, is_flow_state, link_key},
    secrets::SecretsCache,
};
use secrecy::{ExposeSecret, SecretString};

const LINK_KIND: &str = "link";

#[derive(Serialize, Deserialize)]
struct StoredLink {
    state: String,
    kind: String,
    user_id: String,
    return_to: String,
    created_at: DateTime<Utc>,
    /// Epoch seconds: the table's TTL attribute.
    expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredFlow {
    state: String,
    user_id: String,
    return_to: String,
    verifier_sealed: String,
    nonce_hash: String,
    created_at: DateTime<Utc>,
    /// Epoch seconds: the table's TTL attribute.
    expires_at: i64,
}

/// DynamoDB adapter of [`FlowStore`].
#[derive(Clone)]
pub struct DynamoFlowStore(SealedTable);

impl DynamoFlowStore {
    pub fn new(client: Client, table: String, secrets: Arc<SecretsCache>) -> Self {
        Self(SealedTable::new(client, table, "state", secrets))
    }

    async fn to_flow(&self, item: Item) -> Result<Flow, FlowError> {
        let stored: StoredFlow =
            serde_dynamo::from_item(item).map_err(|e| FlowError::Corrupt(e.to_string()))?;
        let vault = self
            .0
            .vault_opening([stored.verifier_sealed.as_str()])
            .await?;
        let verifier = self
            .0
            .open(&vault, &stored.user_id, &stored.verifier_sealed)?;
        let expires_at = DateTime::from_timestamp(stored.expires_at, 0)
            .ok_or_else(|| FlowError::Corrupt("expires_at out of range".into()))?;
        Ok(Flow {
            state: stored.state,
            user_id: stored.user_id,
            return_to: stored.return_to,
            verifier,
            nonce_hash: stored.nonce_hash,
            created_at: stored.created_at,
            expires_at,
        })
    }

    /// Writes a record whose key must be new: a flow's state and a link's hash are random, so a
    /// clash means a replayed write, never two flows sharing a key.
    async fn put_new(&self, record: &impl Serialize) -> Result<(), FlowError> {
        let item: Item =
            serde_dynamo::to_item(record).map_err(|e| FlowError::Store(e.to_string()))?;
        let put = self
            .0
            .table
            .put(item)
            .condition_expression("attribute_not_exists(#state)")
            .expression_attribute_names("#state", "state")
            .send()
            .await;
        match unless_condition_failed(put).map_err(FlowError::Store)? {
            Some(_) => Ok(()),
            None => Err(FlowError::Duplicate),
        }
    }
}

impl FlowStore for DynamoFlowStore {
    async fn create(&self, flow: &Flow) -> Result<(), FlowError> {
        let vault = self.0.vault().await?;
        let stored = StoredFlow {
            state: flow.state.clone(),
            user_id: flow.user_id.clone(),
            return_to: flow.return_to.clone(),
            verifier_sealed: self.0.seal(&vault, &flow.user_id, &flow.verifier)?,
            nonce_hash: flow.nonce_hash.clone(),
            created_at: flow.created_at,
            expires_at: flow.expires_at.timestamp(),
        };
        self.put_new(&stored).await
    }

    async fn find(&self, state: &str) -> Result<Option<Flow>, FlowError> {
        if !is_flow_state(state) {
            return Ok(None);
        }
        match self.0.table.get(state).await.map_err(FlowError::Store)? {
            Some(item) => Ok(Some(self.to_flow(item).await?)),
            None => Ok(None),
        }
    }

    async fn consume(&self, state: &str, nonce_hash: &str) -> Result<Option<Flow>, FlowError> {
        if !is_flow_state(state) {
            return Ok(None);
        }
        let deleted = self
            .0
            .table
            .delete(state)
            .condition_expression("attribute_exists(#state) AND nonce_hash = :nonce_hash")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":nonce_hash", AttributeValue::S(nonce_hash.to_string()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        // A failed condition means another callback consumed it first (or it never existed).
        match unless_condition_failed(deleted)
            .map_err(FlowError::Store)?
            .and_then(|answer| answer.attributes)
        {
            Some(item) if !item.is_empty() => Ok(Some(self.to_flow(item).await?)),
            _ => Ok(None),
        }
    }

    async fn create_link(&self, token: &SecretString, link: &ConnectLink) -> Result<(), FlowError> {
        let stored = StoredLink {
            state: link_key(token.expose_secret()),
            kind: LINK_KIND.to_string(),
            user_id: link.user_id.clone(),
            return_to: link.return_to.clone(),
            created_at: link.created_at,
            expires_at: link.expires_at.timestamp(),
        };
        self.put_new(&stored).await
    }

    async fn consume_link(&self, token: &SecretString) -> Result<Option<ConnectLink>, FlowError> {
        let deleted = self
            .0
            .table
            .delete(&link_key(token.expose_secret()))
            .condition_expression("attribute_exists(#state) AND kind = :kind")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":kind", AttributeValue::S(LINK_KIND.to_string()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        // A failed condition: unknown token, or another request used the link first.
        let Some(item) = unless_condition_failed(deleted)
            .map_err(FlowError::Store)?
            .and_then(|answer| answer.attributes)
            .filter(|item| !item.is_empty())
        else {
            return Ok(None);
        };
        let stored: StoredLink =
            serde_dynamo::from_item(item).map_err(|e| FlowError::Corrupt(e.to_string()))?;
        Ok(Some(ConnectLink {
            user_id: stored.user_id,
            return_to: stored.return_to,
            created_at: stored.created_at,
            expires_at: DateTime::from_timestamp(stored.expires_at, 0)
                .ok_or_else(|| FlowError::Corrupt("expires_at out of range".into()))?,
        }))
    }
}

/// An in-memory [`FlowStore`] for unit tests.
#[derive(Default, Clone)]
pub struct InMemoryFlowStore {
    flows: Arc<Mutex<HashMap<String, Flow>>>,
    links: Arc<Mutex<HashMap<String, ConnectLink>>>,
}

impl InMemoryFlowStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl FlowStore for InMemoryFlowStore {
    async fn create(&self, flow: &Flow) -> Result<(), FlowError> {
        let mut flows = self.flows.lock().unwrap();
        if flows.contains_key(&flow.state) {
            return Err(FlowError::Duplicate);
        }
        flows.insert(flow.state.clone(), flow.clone());
        Ok(())
    }

    async fn find(&self, state: &str) -> Result<Option<Flow>, FlowError> {
        if !is_flow_state(state) {
            return Ok(None);
        }
        Ok(self.flows.lock().unwrap().get(state).cloned())
    }

    async fn consume(&self, state: &str, nonce_hash: &str) -> Result<Option<Flow>, FlowError> {
        let mut flows = self.flows.lock().unwrap();
        match flows.get(state) {
            Some(flow) if flow.nonce_hash == nonce_hash => Ok(flows.remove(state)),
            _ => Ok(None),
        }
    }

    async fn create_link(&self, token: &SecretString, link: &ConnectLink) -> Result<(), FlowError> {
        let mut links = self.links.lock().unwrap();
        let key = link_key(token.expose_secret());
        if links.contains_key(&key) {
            return Err(FlowError::Duplicate);
        }
        links.insert(key, link.clone());
        Ok(())
    }

    async fn consume_link(&self, token: &SecretString) -> Result<Option<ConnectLink>, FlowError> {
        Ok(self
            .links
            .lock()
            .unwrap()
            .remove(&link_key(token.expose_secret())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{new_flow, nonce_hash};

    #[tokio::test]
    async fn in_memory_consume_is_single_use_and_needs_the_hash() {
        let store = InMemoryFlowStore::new();
        let (flow, nonce, _) = new_flow("u", "https://a.example/", Utc::now());
        store.create(&flow).await.unwrap();
        assert!(matches!(
            store.create(&flow).await,
            Err(FlowError::Duplicate)
        ));
        assert!(
            store
                .consume(&flow.state, &nonce_hash("wrong"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .consume(&flow.state, &nonce_hash(&nonce))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .consume(&flow.state, &nonce_hash(&nonce))
                .await
                .unwrap()
                .is_none()
        );
    }
}
