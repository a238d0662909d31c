//! `GET /oauth/google/start`: creates a flow record and sends the browser to Google's consent page.
//! [`begin_flow`] is shared with the connect link's route (`super::link`), which starts the same
//! flow for the link's user.

use chrono::Utc;
use lambda_http::{Body, Request, Response, http::StatusCode};
use serde_json::json;
use url::Url;

use super::{StartDeps, cookies, identity, query, responses, return_to};
use crate::flows::{FlowStore, new_flow};

pub(crate) fn invalid_return_to() -> Response<Body> {
    responses::json_error(
        StatusCode::BAD_REQUEST,
        "invalid_return_to",
        "return_to must be an absolute http(s) URL on one of the app's allowed origins",
    )
}

/// Stores a new flow for `user_id` and builds Google's consent URL for it. Returns that URL and
/// the `Set-Cookie` value carrying the flow's nonce, or the error answer.
pub(crate) async fn begin_flow<F: FlowStore>(
    deps: &StartDeps<F>,
    user_id: &str,
    return_to: &Url,
) -> Result<(Url, String), Response<Body>> {
    let (flow, nonce, challenge) = new_flow(user_id, return_to.as_str(), Utc::now());
    if let Err(error) = deps.flows.create(&flow).await {
        tracing::error!(user_id, outcome = "store_failed", %error, "start failed");
        return Err(responses::internal(
            "could not start the connection; try again",
        ));
    }
    let url = match deps
        .google
        .authorization_url(&deps.config.oauth.scopes, &flow.state, challenge)
        .await
    {
        Ok(url) => url,
        Err(error) => {
            tracing::error!(user_id, outcome = "client_unavailable", %error, "start failed");
            return Err(responses::internal(
                "could not start the connection; try again",
            ));
        }
    };
    tracing::info!(user_id, outcome = "started", "connect started");
    Ok((url, cookies::set(&nonce)))
}

pub async fn handle<F: FlowStore>(deps: &StartDeps<F>, request: Request) -> Response<Body> {
    let Some(user_id) = identity::user_id(&request) else {
        tracing::info!(
            outcome = "unauthorized",
            "start refused: no authorizer identity"
        );
        return responses::unauthorized();
    };
    let refuse = |reason: &str| {
        tracing::info!(
            user_id,
            outcome = "invalid_return_to",
            reason,
            "start refused"
        );
        invalid_return_to()
    };
    let params = match query(&request) {
        Ok(params) => params,
        Err(_) => return refuse("a query parameter is repeated"),
    };
    let return_to = match params.get("return_to") {
        None => deps.config.oauth.default_return_url.clone(),
        Some(raw) => match return_to::validate(raw, &deps.config.oauth.allowed_return_origins) {
            Ok(url) => url,
            Err(e) => return refuse(&e.to_string()),
        },
    };
    let (url, cookie) = match begin_flow(deps, &user_id, &return_to).await {
        Ok(started) => started,
        Err(response) => return response,
    };
    if responses::prefers_json(&request) {
        responses::json(
            StatusCode::OK,
            json!({"authorization_url": url.as_str()}),
            Some(cookie),
        )
    } else {
        responses::redirect(url.as_str(), Some(cookie))
    }
}
