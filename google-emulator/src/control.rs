//! The test and demo control API under `__emulator/`: register clients and accounts, answer the
//! consent step without a browser, move the clock, change token lifetimes, expire or revoke an
//! account's tokens, queue faults, add calendars, and read back calendars, call counts and every
//! secret the emulator issued.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{Duration, SecondsFormat};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::oauth::{AuthorizationRequest, Decision, decide};
use crate::state::{Client, Fault, FaultTarget, SharedState, State as World};

fn bad_request(error: &str, description: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error, "error_description": description.into()})),
    )
        .into_response()
}

/// A control call's JSON body. One that does not fit `T` is refused as `invalid_request`, the
/// description saying which field does not fit (axum's own JSON rejection would be plain text).
pub struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| bad_request("invalid_request", e.to_string()))
    }
}

#[derive(Deserialize)]
pub struct ClientRequest {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
}

/// `POST __emulator/clients`.
pub async fn add_client(
    State(shared): State<SharedState>,
    Body(request): Body<ClientRequest>,
) -> Response {
    if request.client_id.is_empty() || request.client_secret.is_empty() {
        return bad_request(
            "invalid_request",
            "client_id and client_secret are required",
        );
    }
    shared.lock().add_client(
        &request.client_id,
        Client {
            client_secret: request.client_secret,
            redirect_uris: request.redirect_uris,
        },
    );
    Json(json!({"client_id": request.client_id})).into_response()
}

#[derive(Deserialize)]
pub struct AccountRequest {
    email: String,
    sub: Option<String>,
}

/// `POST __emulator/accounts`.
pub async fn add_account(
    State(shared): State<SharedState>,
    Body(request): Body<AccountRequest>,
) -> Response {
    if !request.email.contains('@') {
        return bad_request("invalid_request", "email must be an email address");
    }
    let sub = request.sub.unwrap_or_else(|| {
        let n: u64 = rand::random::<u64>() % 1_000_000_000_000;
        format!("1{n:020}")
    });
    shared.lock().add_account(&request.email, &sub);
    Json(json!({"email": request.email, "sub": sub})).into_response()
}

#[derive(Deserialize)]
pub struct ConsentRequest {
    authorization_url: String,
    account: Option<String>,
    decision: String,
    #[serde(default)]
    remove_scopes: Vec<String>,
}

/// `POST __emulator/consent`: what the consent page would do, without HTML.
pub async fn consent(
    State(shared): State<SharedState>,
    Body(request): Body<ConsentRequest>,
) -> Response {
    let mut world = shared.lock();
    let authorization = match AuthorizationRequest::from_url(&world, &request.authorization_url) {
        Ok(a) => a,
        Err(error) => return bad_request(error.error, error.description),
    };
    // Without an account the one named by `login_hint` is chosen, as the page preselects it.
    let account = request.account.or_else(|| authorization.login_hint.clone());
    let decision = match (request.decision.as_str(), account) {
        ("deny", _) => Decision::Deny,
        ("allow", Some(email)) => Decision::Allow {
            email,
            removed_scopes: request.remove_scopes,
        },
        ("allow", None) => {
            return bad_request(
                "invalid_request",
                "allow needs an account (or a login_hint)",
            );
        }
        _ => return bad_request("invalid_request", "decision must be allow or deny"),
    };
    match decide(&mut world, &authorization, &decision) {
        Ok(redirect) => Json(json!({"redirect": redirect.to_string()})).into_response(),
        Err(error) => bad_request(error.error, error.description),
    }
}

#[derive(Deserialize)]
pub struct ClockRequest {
    advance_seconds: i64,
}

/// `GET __emulator/clock`.
pub async fn get_clock(State(shared): State<SharedState>) -> Response {
    let now = shared.lock().now();
    Json(json!({"now": now.to_rfc3339_opts(SecondsFormat::Millis, true)})).into_response()
}

/// `POST __emulator/clock`: moves the emulator clock forward (or back with a negative value).
pub async fn advance_clock(
    State(shared): State<SharedState>,
    Body(request): Body<ClockRequest>,
) -> Response {
    let mut world = shared.lock();
    world.clock_offset += Duration::seconds(request.advance_seconds);
    let now = world.now();
    Json(json!({"now": now.to_rfc3339_opts(SecondsFormat::Millis, true)})).into_response()
}

#[derive(Deserialize)]
pub struct SettingsRequest {
    access_token_lifetime_seconds: Option<i64>,
    /// Seconds; 0 makes refresh tokens live until revoked again.
    refresh_token_lifetime_seconds: Option<i64>,
}

/// `POST __emulator/settings`.
pub async fn settings(
    State(shared): State<SharedState>,
    Body(request): Body<SettingsRequest>,
) -> Response {
    let mut world = shared.lock();
    if let Some(lifetime) = request.access_token_lifetime_seconds {
        if lifetime <= 0 {
            return bad_request(
                "invalid_request",
                "access_token_lifetime_seconds must be positive",
            );
        }
        world.access_token_lifetime_seconds = lifetime;
    }
    if let Some(lifetime) = request.refresh_token_lifetime_seconds {
        if lifetime < 0 {
            return bad_request(
                "invalid_request",
                "refresh_token_lifetime_seconds must be 0 (unlimited) or positive",
            );
        }
        world.refresh_token_lifetime_seconds = (lifetime > 0).then_some(lifetime);
    }
    Json(json!({
        "access_token_lifetime_seconds": world.access_token_lifetime_seconds,
        "refresh_token_lifetime_seconds": world.refresh_token_lifetime_seconds.unwrap_or(0),
    }))
    .into_response()
}

#[derive(Deserialize)]
pub struct EmailRequest {
    email: String,
}

/// `POST __emulator/expire-access-tokens`.
pub async fn expire_access_tokens(
    State(shared): State<SharedState>,
    Body(request): Body<EmailRequest>,
) -> Response {
    on_account(&shared, &request.email, World::expire_access_tokens)
}

/// `POST __emulator/revoke`: the user removed the app's access in their Google account.
pub async fn revoke_account(
    State(shared): State<SharedState>,
    Body(request): Body<EmailRequest>,
) -> Response {
    on_account(&shared, &request.email, World::revoke_account)
}

/// Applies `change` to the account `email`.
fn on_account(
    shared: &SharedState,
    email: &str,
    change: impl FnOnce(&mut World, &str),
) -> Response {
    let mut world = shared.lock();
    if !world.accounts.contains_key(email) {
        // A typo here would otherwise make a test pass without testing anything.
        return bad_request("invalid_request", "unknown account");
    }
    change(&mut world, email);
    Json(json!({})).into_response()
}

#[derive(Deserialize)]
pub struct FaultRequest {
    target: FaultTarget,
    status: Option<u16>,
    reason: Option<String>,
    count: Option<u32>,
    #[serde(default)]
    delay_ms: u64,
    /// Seconds for a `Retry-After` header on the error answer.
    retry_after: Option<u64>,
}

/// `POST __emulator/faults`: queues faults for the next `count` (default 1) matching calls.
pub async fn add_fault(
    State(shared): State<SharedState>,
    Body(request): Body<FaultRequest>,
) -> Response {
    if let Some(status) = request.status
        && !(400..=599).contains(&status)
    {
        return bad_request("invalid_request", "status must be 4xx or 5xx");
    }
    if request.status.is_none() && request.delay_ms == 0 {
        return bad_request("invalid_request", "give a status, a delay_ms or both");
    }
    let count = request.count.unwrap_or(1);
    if count == 0 {
        return bad_request("invalid_request", "count must be at least 1");
    }
    shared.lock().faults.push_back(Fault {
        target: request.target,
        status: request.status,
        reason: request.reason,
        remaining: count,
        delay_ms: request.delay_ms,
        retry_after: request.retry_after,
    });
    Json(json!({"queued": count})).into_response()
}

#[derive(Deserialize)]
pub struct CalendarRequest {
    email: String,
    calendar_id: String,
}

/// `POST __emulator/calendars`: adds a secondary calendar to an account.
pub async fn add_calendar(
    State(shared): State<SharedState>,
    Body(request): Body<CalendarRequest>,
) -> Response {
    let mut world = shared.lock();
    if !world.accounts.contains_key(&request.email) {
        return bad_request("invalid_request", "unknown account");
    }
    if request.calendar_id.is_empty() || request.calendar_id == "primary" {
        return bad_request("invalid_request", "calendar_id must name a new calendar");
    }
    world
        .calendars
        .entry((request.email.clone(), request.calendar_id.clone()))
        .or_default();
    Json(json!({"email": request.email, "calendar_id": request.calendar_id})).into_response()
}

/// `GET __emulator/calendars/{email}/{calendarId}/events`: every event, cancelled ones included.
pub async fn calendar_events(
    State(shared): State<SharedState>,
    Path((email, calendar_id)): Path<(String, String)>,
) -> Response {
    let world = shared.lock();
    match world.calendar(&email, &calendar_id) {
        Some(calendar) => {
            let items: Vec<Value> = calendar
                .events
                .values()
                .cloned()
                .map(Value::Object)
                .collect();
            Json(json!({"items": items})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "error_description": "no such calendar"})),
        )
            .into_response(),
    }
}

/// `GET __emulator/calendars/{email}`: the account's calendars, `{"items": [{"id", "summary",
/// "created_by"}]}` (the primary one has the account's email as id).
pub async fn account_calendars(
    State(shared): State<SharedState>,
    Path(email): Path<String>,
) -> Response {
    let world = shared.lock();
    let items: Vec<Value> = world
        .calendars
        .iter()
        .filter(|((owner, _), _)| *owner == email)
        .map(|((_, id), c)| json!({"id": id, "summary": c.summary, "created_by": c.created_by}))
        .collect();
    Json(json!({"items": items})).into_response()
}

/// `DELETE __emulator/calendars/{email}/{calendarId}`: the user deletes a secondary calendar in
/// Google's own interface (no token, no scope).
pub async fn delete_calendar(
    State(shared): State<SharedState>,
    Path((email, calendar_id)): Path<(String, String)>,
) -> Response {
    let mut world = shared.lock();
    if calendar_id == email || calendar_id == "primary" {
        return bad_request("invalid_request", "the primary calendar cannot be deleted");
    }
    match world.calendars.remove(&(email, calendar_id)) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "error_description": "no such calendar"})),
        )
            .into_response(),
    }
}

/// `GET __emulator/stats`.
pub async fn stats(State(shared): State<SharedState>) -> Response {
    Json(json!(shared.lock().stats)).into_response()
}

/// `GET __emulator/issued-secrets`.
pub async fn issued_secrets(State(shared): State<SharedState>) -> Response {
    let values: Vec<String> = shared.lock().issued_secrets.iter().cloned().collect();
    Json(json!({"values": values})).into_response()
}

/// `POST __emulator/reset`.
pub async fn reset(State(shared): State<SharedState>) -> Response {
    shared.lock().reset();
    Json(json!({})).into_response()
}
