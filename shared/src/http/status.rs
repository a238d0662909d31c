//! `GET /oauth/google/status` and `DELETE /oauth/google/connection`.

use chrono::{DateTime, SecondsFormat, Utc};
use lambda_http::{Body, Request, Response, http::StatusCode};
use serde_json::json;

use super::{CallbackDeps, CallbackPorts, identity, responses};
use crate::{
    calendar::Calendar,
    google_oauth::OAuthError,
    grants::{Grant, GrantError, GrantStatus, GrantStore, account_in_use},
    lifecycle::{self, LifecycleEvent},
    sync_state::SyncSummaries,
};

/// How many times a disconnect re-reads a grant that changed under it.
const DELETE_ATTEMPTS: usize = 3;

pub async fn status<P: CallbackPorts>(deps: &CallbackDeps<P>, request: Request) -> Response<Body> {
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
    let summary = match deps.sync_states.summary(&user_id).await {
        Ok(summary) => summary,
        Err(error) => {
            tracing::error!(user_id, outcome = "store_failed", %error, "status failed");
            return responses::internal("could not read the connection status; try again");
        }
    };
    let time = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut body = match grant {
        Some(grant) => json!({
            "connected": grant.status == GrantStatus::Active,
            "status": grant.status.as_str(),
            "google_email": grant.google_email,
            "scopes": grant.scopes,
            "connected_at": time(grant.connected_at),
            "calendar": grant.calendar.as_ref().map(|c| json!({
                "id": c.id,
                "created_at": time(c.created_at),
            })),
        }),
        None => json!({
            "connected": false,
            "status": "not_connected",
            "google_email": null,
            "scopes": [],
            "connected_at": null,
            "calendar": null,
        }),
    };
    body["parked_changes"] = json!(summary.parked);
    body["last_synced_at"] = json!(summary.last_synced_at.map(time));
    body["last_error"] = json!(summary.last_error.map(|error| json!({
        "code": error.code.as_str(),
        "event_id": error.event_id,
        "at": time(error.at),
    })));
    responses::json(StatusCode::OK, body, None)
}

/// Deletes the dedicated calendar of `grant` (`DELETE_CALENDAR_ON_DISCONNECT`), before its tokens
/// are revoked. Best effort: a calendar left behind is the user's, and the disconnect goes on.
async fn delete_app_calendar<P: CallbackPorts>(deps: &CallbackDeps<P>, grant: &Grant) {
    let (user_id, Some(calendar), Some(refresh)) = (
        grant.user_id.as_str(),
        grant.calendar.as_ref(),
        grant.refresh_token.as_ref(),
    ) else {
        return;
    };
    // The stored access token may have expired long ago; a disconnect is rare, refresh it.
    let result = match deps.google.refresh(refresh).await {
        Ok(fresh) => deps
            .calendar
            .delete_calendar(&fresh.access_token, &calendar.id)
            .await
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match result {
        Ok(()) => tracing::info!(
            user_id,
            calendar_id = calendar.id,
            "the app's calendar was deleted"
        ),
        Err(error) => {
            tracing::warn!(user_id, calendar_id = calendar.id, %error, "the app's calendar could not be deleted; it stays the user's")
        }
    }
}

pub async fn disconnect<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    request: Request,
) -> Response<Body> {
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
        // Google's revoke ends the account's whole grant for the client: while another app
        // user's grant holds the same Google account, only this user's grant is deleted.
        let shared = match account_in_use(&deps.grants, &grant.google_sub, Some(&user_id)).await {
            Ok(shared) => shared,
            Err(error) => {
                tracing::error!(user_id, outcome = "store_failed", %error, "disconnect failed");
                return responses::internal("could not read the connection; try again");
            }
        };
        if deps.config.calendar.delete_on_disconnect {
            delete_app_calendar(deps, &grant).await;
        }
        let token = grant.refresh_token.as_ref().or(grant.access_token.as_ref());
        if let Some(token) = token.filter(|_| !shared) {
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
                tracing::info!(
                    user_id,
                    outcome = "disconnected",
                    revoked = !shared,
                    "calendar disconnected"
                );
                let event = LifecycleEvent::disconnected(&user_id, grant.google_email.as_deref());
                lifecycle::emit(&deps.lifecycle, event).await;
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
