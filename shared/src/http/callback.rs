//! `GET /oauth/google/callback`: Google sends the browser back here with `state` and a `code` or
//! an `error`.
//!
//! Order of checks: the flow record must exist and be unexpired (else 400 `invalid_state`), the
//! cookie must match its nonce hash (else 400 `state_mismatch`, and the record stays, so a forged
//! or leaked link cannot burn the user's own flow), then the record is consumed by a conditional
//! delete (a lost race is `invalid_state`). None of these calls Google. From then on every answer
//! is a redirect to the flow's `return_to` with `calsync=connected|denied|error` and the cookie
//! is cleared.

use chrono::Utc;
use lambda_http::{Body, Request, Response, http::StatusCode};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{AfterConnect, CallbackDeps, CallbackPorts, cookies, query, responses};
use crate::{
    calendar::Calendar,
    config::CalendarMode,
    flows::{Flow, FlowStore, nonce_hash, nonce_matches},
    google_oauth::{CodeExchange, GoogleIdentity, OAuthError},
    grants::{AppCalendar, Grant, GrantError, GrantStatus, GrantStore, account_in_use},
    lifecycle::{self, LifecycleEvent},
    metrics,
};

/// Scopes that let calsync write events (full URLs as Google reports them; short forms too): in
/// the user's calendars, or in a calendar calsync makes (which needs a scope that makes one).
const WRITE_SCOPES: [&str; 3] = ["calendar", "calendar.events", "calendar.events.owned"];
const DEDICATED_WRITE_SCOPES: [&str; 2] = ["calendar", "calendar.app.created"];
const SCOPE_PREFIX: &str = "https://www.googleapis.com/auth/";

pub fn can_write_events(mode: CalendarMode, scopes: &[String]) -> bool {
    let needed: &[&str] = match mode {
        CalendarMode::Primary => &WRITE_SCOPES,
        CalendarMode::Dedicated => &DEDICATED_WRITE_SCOPES,
    };
    scopes.iter().any(|scope| {
        let short = scope.strip_prefix(SCOPE_PREFIX).unwrap_or(scope);
        needed.contains(&short)
    })
}

/// How many times a grant write that lost a version race is retried after re-reading.
const SAVE_ATTEMPTS: usize = 3;

fn outcome_url(return_to: &str, outcome: &str, reason: Option<&str>) -> String {
    let mut url = Url::parse(return_to).expect("return_to was validated at start");
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("calsync", outcome);
        if let Some(reason) = reason {
            pairs.append_pair("reason", reason);
        }
    }
    url.to_string()
}

fn finish(flow: &Flow, outcome: &str, reason: Option<&str>) -> Response<Body> {
    responses::redirect(
        &outcome_url(&flow.return_to, outcome, reason),
        Some(cookies::clear()),
    )
}

fn invalid_state(request: &Request) -> Response<Body> {
    responses::error_for(
        request,
        StatusCode::BAD_REQUEST,
        "invalid_state",
        "This connection link is unknown, expired or already used. Start connecting your calendar again from the app.",
    )
}

/// A callback no authorization server would send (the outcome and the answer).
fn invalid_request(request: &Request, detail: &'static str) -> (&'static str, Response<Body>) {
    tracing::info!(outcome = "invalid_request", detail, "callback refused");
    let answer = responses::error_for(request, StatusCode::BAD_REQUEST, "invalid_request", detail);
    ("invalid_request", answer)
}

fn state_mismatch(request: &Request) -> Response<Body> {
    responses::error_for(
        request,
        StatusCode::BAD_REQUEST,
        "state_mismatch",
        "This connection was started in another browser or the connection cookie is missing. Start connecting your calendar again from this browser.",
    )
}

/// Google's `error` values are short codes; anything else is not echoed back.
fn safe_code(error: &str) -> Option<&str> {
    (!error.is_empty()
        && error.len() <= 64
        && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    .then_some(error)
}

/// `GET /oauth/google/callback`; each answer counts in the `Connects` metric by its outcome.
pub async fn handle<P: CallbackPorts>(deps: &CallbackDeps<P>, request: Request) -> Response<Body> {
    let (outcome, response) = answer(deps, request).await;
    metrics::connect_outcome(outcome);
    response
}

/// The callback's answer and its outcome code (the `calsync` or `reason` the app sees, or the
/// error's code).
async fn answer<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    request: Request,
) -> (&'static str, Response<Body>) {
    let Ok(params) = query(&request) else {
        return invalid_request(&request, "The callback's query repeats a parameter.");
    };
    let Some(state) = params.get("state").filter(|s| !s.is_empty()) else {
        tracing::info!(outcome = "invalid_state", "callback refused: no state");
        return ("invalid_state", invalid_state(&request));
    };
    let code = params.get("code").filter(|c| !c.is_empty());
    let google_error = params.get("error").filter(|e| !e.is_empty());
    if code.is_none() && google_error.is_none() {
        return invalid_request(
            &request,
            "The callback carries neither a code nor an error.",
        );
    }

    let flow = match deps.flows.find(state).await {
        Ok(Some(flow)) if !flow.is_expired(Utc::now()) => flow,
        Ok(found) => {
            let outcome = if found.is_some() {
                "expired"
            } else {
                "unknown"
            };
            tracing::info!(
                outcome = "invalid_state",
                state_was = outcome,
                "callback refused"
            );
            return ("invalid_state", invalid_state(&request));
        }
        Err(error) => {
            tracing::error!(outcome = "store_failed", %error, "callback failed reading the flow");
            let response = responses::internal("could not read the connection; try again");
            return ("store_failed", response);
        }
    };
    let user_id = flow.user_id.clone();
    let Some(nonce) = cookies::read(&request).filter(|n| nonce_matches(n, &flow.nonce_hash)) else {
        tracing::warn!(
            user_id,
            outcome = "state_mismatch",
            "callback refused: cookie missing or not matching"
        );
        return ("state_mismatch", state_mismatch(&request));
    };
    let flow = match deps.flows.consume(state, &nonce_hash(&nonce)).await {
        Ok(Some(flow)) => flow,
        Ok(None) => {
            tracing::info!(
                user_id,
                outcome = "invalid_state",
                state_was = "used",
                "callback refused"
            );
            return ("invalid_state", invalid_state(&request));
        }
        Err(error) => {
            tracing::error!(user_id, outcome = "store_failed", %error, "callback failed consuming the flow");
            let response = responses::internal("could not read the connection; try again");
            return ("store_failed", response);
        }
    };

    if let Some(error) = google_error {
        let reason = safe_code(error).filter(|e| *e != "access_denied");
        tracing::info!(
            user_id,
            outcome = "denied",
            google_error = safe_code(error),
            "user did not grant access"
        );
        return ("denied", finish(&flow, "denied", reason));
    }
    let code = SecretString::from(code.expect("checked above").clone());

    let exchange = match deps.google.exchange_code(&code, &flow.verifier).await {
        Ok(exchange) => exchange,
        Err(error) => {
            tracing::warn!(user_id, outcome = "token_exchange_failed", %error, "code exchange failed");
            let reason = "token_exchange_failed";
            return (reason, finish(&flow, "error", Some(reason)));
        }
    };
    match connect(deps, &flow, exchange).await {
        Ok(()) => {
            deps.after_connect.connected(&user_id).await;
            tracing::info!(user_id, outcome = "connected", "calendar connected");
            ("connected", finish(&flow, "connected", None))
        }
        Err(reason) => (reason, finish(&flow, "error", Some(reason))),
    }
}

/// Gives the tokens of a callback that ends without a stored grant back to Google, unless a
/// stored grant (this user's or another's) holds the same Google account: Google's revoke ends
/// the account's whole grant for the client, which would kill that grant's tokens too. Without
/// an identity the account is unknown, so nothing is revoked (it cannot be shown to be unused).
async fn revoke_unless_held<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    user_id: &str,
    sub: Option<&str>,
    exchange: &CodeExchange,
) {
    let Some(sub) = sub else {
        tracing::info!(
            user_id,
            revoked = false,
            "account unknown: the new tokens are not revoked"
        );
        return;
    };
    match account_in_use(&deps.grants, sub, None).await {
        Ok(false) => {}
        Ok(true) => {
            tracing::info!(
                user_id,
                revoked = false,
                "a stored grant holds this account: not revoked"
            );
            return;
        }
        Err(error) => {
            tracing::warn!(user_id, %error, revoked = false, "could not tell whether the account is in use: not revoked");
            return;
        }
    }
    let token = exchange
        .refresh_token
        .as_ref()
        .unwrap_or(&exchange.access_token);
    match deps.google.revoke(token).await {
        Ok(()) => tracing::info!(
            user_id,
            revoked = true,
            "the unused new tokens were revoked"
        ),
        Err(error) => tracing::warn!(user_id, %error, "revoking the unused new tokens failed"),
    }
}

/// After a reconnect moved `user_id` from `old`'s Google account to another one: revoke the old
/// account's grant unless another app user's grant still holds it. Never on a reconnect with
/// the same account (revoking would end the token just stored).
async fn revoke_replaced<P: CallbackPorts>(deps: &CallbackDeps<P>, old: &Grant) {
    let user_id = old.user_id.as_str();
    let Some(token) = old.refresh_token.as_ref().or(old.access_token.as_ref()) else {
        return;
    };
    match account_in_use(&deps.grants, &old.google_sub, None).await {
        Ok(false) => match deps.google.revoke(token).await {
            Ok(()) | Err(OAuthError::InvalidGrant) => {
                tracing::info!(
                    user_id,
                    revoked = true,
                    "the replaced account's grant was revoked"
                )
            }
            Err(error) => {
                tracing::warn!(user_id, %error, "revoking the replaced account's grant failed")
            }
        },
        Ok(true) => tracing::info!(
            user_id,
            revoked = false,
            "another app user holds the replaced account: not revoked"
        ),
        Err(error) => tracing::warn!(
            user_id,
            %error,
            revoked = false,
            "could not tell whether the replaced account is in use: not revoked"
        ),
    }
}

/// Checks the token answer and stores the grant. Errors are the `reason` for the redirect.
async fn connect<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    flow: &Flow,
    exchange: CodeExchange,
) -> Result<(), &'static str> {
    let user_id = flow.user_id.as_str();
    let scopes = exchange
        .scopes
        .clone()
        .unwrap_or_else(|| deps.config.oauth.scopes.clone());
    let identity = exchange.identity.clone();
    let sub = identity.as_ref().map(|i| i.sub.as_str());
    if !can_write_events(deps.config.calendar.mode, &scopes) {
        // Without a scope that writes events the grant is useless: give it back to Google
        // (unless that would end a grant calsync still uses).
        revoke_unless_held(deps, user_id, sub, &exchange).await;
        tracing::info!(user_id, outcome = "scope_denied", granted = ?scopes, "no event-writing scope granted");
        return Err("scope_denied");
    }
    let Some(GoogleIdentity { sub, email }) = identity else {
        tracing::warn!(
            user_id,
            outcome = "no_identity",
            "the token answer had no id_token; GOOGLE_SCOPES must include openid"
        );
        revoke_unless_held(deps, user_id, None, &exchange).await;
        return Err("no_identity");
    };
    let result = store_grant(deps, user_id, &sub, email.clone(), scopes, &exchange).await;
    if result.is_ok() {
        // Sent before the replay and the answer: the grant is stored, whatever follows.
        let event = LifecycleEvent::connected(user_id, email.as_deref());
        lifecycle::emit(&deps.lifecycle, event).await;
    }
    match &result {
        Ok(Some(replaced)) if replaced.google_sub != sub => revoke_replaced(deps, replaced).await,
        Ok(_) => {}
        Err(_) => revoke_unless_held(deps, user_id, Some(&sub), &exchange).await,
    }
    result.map(|_| ())
}

/// Writes the grant (re-reading on a version conflict); returns the grant it replaced.
async fn store_grant<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    user_id: &str,
    sub: &str,
    email: Option<String>,
    scopes: Vec<String>,
    exchange: &CodeExchange,
) -> Result<Option<Grant>, &'static str> {
    // The calendar this callback made, if it made one: deleted again when another connect's
    // calendar won the race, or when nothing is stored.
    let mut made: Option<AppCalendar> = None;
    let result = async {
        for _ in 0..SAVE_ATTEMPTS {
            match save_grant(deps, user_id, sub, &email, &scopes, exchange, &mut made).await? {
                Some(replaced) => return Ok(replaced),
                None => continue,
            }
        }
        tracing::error!(
            user_id,
            outcome = "store_failed",
            "the grant kept changing under the write"
        );
        Err("storage_failed")
    }
    .await;
    let stored_ours = result.is_ok();
    if let Some(ours) = made.filter(|_| !stored_ours) {
        drop_calendar(deps, user_id, &exchange.access_token, &ours.id).await;
    }
    result
}

/// The dedicated calendar the grant of `sub` keeps (the one the stored grant of the same Google
/// account names), or a new one this callback makes, remembered in `made`.
async fn calendar_for<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    user_id: &str,
    existing: Option<&Grant>,
    sub: &str,
    token: &SecretString,
    made: &mut Option<AppCalendar>,
) -> Result<Option<AppCalendar>, &'static str> {
    let Some(name) = deps.config.calendar.dedicated() else {
        return Ok(None);
    };
    let kept = existing
        .filter(|g| g.google_sub == sub)
        .and_then(|g| g.calendar.clone());
    if let Some(kept) = kept {
        // Another connect of the same account stored its calendar first: ours goes.
        if let Some(ours) = made.take() {
            drop_calendar(deps, user_id, token, &ours.id).await;
        }
        return Ok(Some(kept));
    }
    if made.is_none() {
        let id = deps
            .calendar
            .create_calendar(token, name)
            .await
            .map_err(|error| {
                tracing::warn!(user_id, outcome = "calendar_failed", %error, "Google did not make the calendar");
                "calendar_failed"
            })?;
        tracing::info!(user_id, calendar_id = id, "the app's calendar was made");
        *made = Some(AppCalendar {
            id,
            created_at: Utc::now(),
        });
    }
    Ok(made.clone())
}

/// Deletes a calendar this callback made and does not keep (best effort: an empty calendar).
async fn drop_calendar<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    user_id: &str,
    token: &SecretString,
    calendar_id: &str,
) {
    match deps.calendar.delete_calendar(token, calendar_id).await {
        Ok(()) => tracing::info!(user_id, calendar_id, "a calendar made twice was deleted"),
        Err(error) => {
            tracing::warn!(user_id, calendar_id, %error, "a calendar made twice could not be deleted; it stays empty")
        }
    }
}

/// One attempt at writing the grant: the grant it replaced (`Some(None)`: none), or `None` when
/// another writer changed it first (read again and retry).
#[allow(clippy::too_many_arguments)]
async fn save_grant<P: CallbackPorts>(
    deps: &CallbackDeps<P>,
    user_id: &str,
    sub: &str,
    email: &Option<String>,
    scopes: &[String],
    exchange: &CodeExchange,
    made: &mut Option<AppCalendar>,
) -> Result<Option<Option<Grant>>, &'static str> {
    {
        let existing = deps.grants.get(user_id).await.map_err(|error| {
            tracing::error!(user_id, outcome = "store_failed", %error, "reading the grant failed");
            "storage_failed"
        })?;
        let refresh_token = match (&exchange.refresh_token, &existing) {
            (Some(fresh), _) => fresh.clone(),
            (None, Some(old)) if old.google_sub == sub && old.refresh_token.is_some() => {
                old.refresh_token.clone().expect("checked")
            }
            (None, _) => {
                let same_account = existing.as_ref().map(|g| g.google_sub == sub);
                tracing::info!(
                    user_id,
                    outcome = "no_refresh_token",
                    ?same_account,
                    "Google sent no refresh token and none is stored for this account"
                );
                return Err("no_refresh_token");
            }
        };
        let grant = Grant {
            user_id: user_id.to_string(),
            status: GrantStatus::Active,
            google_sub: sub.to_string(),
            google_email: email.clone(),
            scopes: scopes.to_vec(),
            connected_at: Utc::now(),
            refreshed_at: None,
            access_token: Some(SecretString::from(
                exchange.access_token.expose_secret().to_string(),
            )),
            access_token_expires_at: Some(exchange.expires_at),
            refresh_token: Some(refresh_token),
            // A new grant: any needs_reauth episode of the one it replaces ends here.
            reauth_reason: None,
            needs_reauth_reported_at: None,
            parked_reported_at: None,
            calendar: calendar_for(
                deps,
                user_id,
                existing.as_ref(),
                sub,
                &exchange.access_token,
                made,
            )
            .await?,
            version: existing.as_ref().map_or(0, |g| g.version),
        };
        match deps.grants.save(&grant).await {
            Ok(_) => Ok(Some(existing)),
            Err(GrantError::Conflict { .. }) => Ok(None),
            Err(error) => {
                tracing::error!(user_id, outcome = "store_failed", %error, "writing the grant failed");
                Err("storage_failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_scopes() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(can_write_events(
            CalendarMode::Primary,
            &s(&[
                "openid",
                "https://www.googleapis.com/auth/calendar.events.owned"
            ])
        ));
        assert!(can_write_events(
            CalendarMode::Primary,
            &s(&["https://www.googleapis.com/auth/calendar"])
        ));
        assert!(can_write_events(
            CalendarMode::Primary,
            &s(&["https://www.googleapis.com/auth/calendar.events"])
        ));
        assert!(!can_write_events(
            CalendarMode::Primary,
            &s(&[
                "openid",
                "email",
                "https://www.googleapis.com/auth/calendar.readonly"
            ])
        ));
        assert!(!can_write_events(
            CalendarMode::Primary,
            &s(&["https://www.googleapis.com/auth/calendar.events.readonly"])
        ));
        assert!(!can_write_events(CalendarMode::Primary, &[]));
        let app_created = s(&["https://www.googleapis.com/auth/calendar.app.created"]);
        assert!(can_write_events(CalendarMode::Dedicated, &app_created));
        assert!(!can_write_events(CalendarMode::Primary, &app_created));
        let owned = s(&["https://www.googleapis.com/auth/calendar.events.owned"]);
        assert!(!can_write_events(CalendarMode::Dedicated, &owned));
    }

    #[test]
    fn outcome_is_appended_to_return_to() {
        assert_eq!(
            outcome_url(
                "https://app.example/settings?tab=cal#top",
                "error",
                Some("scope_denied")
            ),
            "https://app.example/settings?tab=cal&calsync=error&reason=scope_denied#top"
        );
        assert_eq!(
            outcome_url("https://app.example/", "connected", None),
            "https://app.example/?calsync=connected"
        );
    }

    #[test]
    fn only_short_codes_are_echoed() {
        assert_eq!(safe_code("access_denied"), Some("access_denied"));
        assert_eq!(safe_code("<script>"), None);
        assert_eq!(safe_code(""), None);
    }
}
