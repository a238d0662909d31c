//! `GET /oauth/google/status` and `DELETE /oauth/google/connection`, and the count of parked changes.

use std::future::Future;

use aws_sdk_dynamodb::types::{AttributeValue, Select};
use lambda_http::{Body, Request, Response, http::StatusCode};
use serde_json::json;

use super::{AfterConnect, CallbackDeps, identity, responses};
use crate::{
    flows::FlowStore,
    google_oauth::OAuthError,
    grants::{GrantError, GrantStatus, GrantStore},
};

/// How many times a disconnect re-reads a grant that changed under it.
const DELETE_ATTEMPTS: usize = 3;

/// The sync-state statuses that mean "waiting for the user to (re)connect".
pub const PARKED_STATUSES: [&str; 2] = ["needs_reauth", "not_connected"];

#[derive(Debug, thiserror::Error)]
#[error("counting parked changes failed: {0}")]
pub struct ParkedError(pub String);

/// How many of a user's changes wait for a usable grant.
pub trait ParkedChanges: Send + Sync {
    fn count(&self, user_id: &str) -> impl Future<Output = Result<u64, ParkedError>> + Send;
}

/// Counts the user's sync-state items whose status is parked, through the `by_user` index.
#[derive(Clone, Debug)]
pub struct DynamoParkedChanges {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoParkedChanges {
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }
}

impl ParkedChanges for DynamoParkedChanges {
    async fn count(&self, user_id: &str) -> Result<u64, ParkedError> {
        let mut total = 0u64;
        let mut start_key = None;
        loop {
            let answer = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("by_user")
                .key_condition_expression("user_id = :user")
                .filter_expression("#status IN (:a, :b)")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":user", AttributeValue::S(user_id.to_string()))
                .expression_attribute_values(":a", AttributeValue::S(PARKED_STATUSES[0].into()))
                .expression_attribute_values(":b", AttributeValue::S(PARKED_STATUSES[1].into()))
                .select(Select::Count)
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| {
                    ParkedError(aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string())
                })?;
            total += answer.count.max(0) as u64;
            match answer.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => return Ok(total),
            }
        }
    }
}

/// A fixed count, for unit tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct FixedParkedChanges(pub u64);

impl ParkedChanges for FixedParkedChanges {
    async fn count(&self, _user_id: &str) -> Result<u64, ParkedError> {
        Ok(self.0)
    }
}

pub async fn status<G, F, P, A>(deps: &CallbackDeps<G, F, P, A>, request: Request) -> Response<Body>
where
    G: GrantStore,
    F: FlowStore,
    P: ParkedChanges,
    A: AfterConnect,
{
    let Some(user_id) = identity::user_id(&request) else {
        return responses::unauthorized();
    };
    let grant = match deps.grants.get(&user_id).await {
        Ok(grant) => grant,
        Err(error) => {
            tracing::error!(user_id, outcome = "store_failed", %error, "status failed");
            return responses::internal("could not read the connection status; try again");
        }
    };
    let parked = match deps.parked.count(&user_id).await {
        Ok(n) => n,
        Err(error) => {
            tracing::error!(user_id, outcome = "store_failed", %error, "status failed");
            return responses::internal("could not read the connection status; try again");
        }
    };
    let body = match grant {
        Some(grant) => json!({
            "connected": grant.status == GrantStatus::Active,
            "status": grant.status.as_str(),
            "google_email": grant.google_email,
            "scopes": grant.scopes,
            "connected_at": grant.connected_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "parked_changes": parked,
        }),
        None => json!({
            "connected": false,
            "status": "not_connected",
            "google_email": null,
            "scopes": [],
            "connected_at": null,
            "parked_changes": parked,
        }),
    };
    responses::json(StatusCode::OK, body, None)
}

pub async fn disconnect<G, F, P, A>(
    deps: &CallbackDeps<G, F, P, A>,
    request: Request,
) -> Response<Body>
where
    G: GrantStore,
    F: FlowStore,
    P: ParkedChanges,
    A: AfterConnect,
{
    let Some(user_id) = identity::user_id(&request) else {
        return responses::unauthorized();
    };
    // Re-read and retry when the grant changes under us (a refresh stored a new access token).
    for _ in 0..DELETE_ATTEMPTS {
        let grant = match deps.grants.get(&user_id).await {
            Ok(Some(grant)) => grant,
            Ok(None) => {
                tracing::info!(
                    user_id,
                    outcome = "not_connected",
                    "disconnect: nothing to do"
                );
                return responses::no_content();
            }
            Err(error) => {
                tracing::error!(user_id, outcome = "store_failed", %error, "disconnect failed");
                return responses::internal("could not read the connection; try again");
            }
        };
        if let Some(token) = grant.refresh_token.as_ref().or(grant.access_token.as_ref()) {
            match deps.google.revoke(token).await {
                Ok(()) | Err(OAuthError::InvalidGrant) => {}
                Err(error) => {
                    // Keep the grant so a retry can still revoke it: deleting it here would
                    // leave a live grant at Google that calsync could no longer name.
                    tracing::warn!(user_id, outcome = "revoke_failed", %error, "disconnect failed");
                    return responses::json_error(
                        StatusCode::BAD_GATEWAY,
                        "revoke_failed",
                        "Google did not confirm the revocation; nothing was changed, try again",
                    );
                }
            }
        }
        match deps.grants.delete(&grant).await {
            Ok(()) => {
                tracing::info!(user_id, outcome = "disconnected", "calendar disconnected");
                return responses::no_content();
            }
            Err(GrantError::Conflict { .. }) => continue,
            Err(error) => {
                tracing::error!(user_id, outcome = "store_failed", %error, "disconnect failed after revoking");
                return responses::internal(
                    "the grant was revoked at Google but could not be deleted; try again",
                );
            }
        }
    }
    tracing::error!(
        user_id,
        outcome = "store_failed",
        "the grant kept changing under the delete"
    );
    responses::internal("the grant kept changing; try again")
}
