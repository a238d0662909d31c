//! Calendar v3 events API: insert, get, update, patch, delete and list, with Google's
//! authentication, scope, id, time-range, time-zone and recurrence rules and its error bodies.
//!
//! Events are stored as JSON objects holding only the fields the discovery document defines for
//! the Event resource; unknown top-level fields are dropped like Google does. Deleting marks an
//! event `cancelled` and keeps it: a second delete is 410, a re-insert with its id is 409, and an
//! update brings it back.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value, json};

use crate::state::{FaultTarget, SharedState, State as World, random_calendar_id, random_event_id};

/// Top-level Event fields of Calendar v3 (from the discovery document; calsync's
/// `shared/tests/sync_mapping.rs` checks the list against it). Anything else in a request body is
/// ignored.
pub const EVENT_FIELDS: &[&str] = &[
    "anyoneCanAddSelf",
    "attachments",
    "attendees",
    "attendeesOmitted",
    "birthdayProperties",
    "colorId",
    "conferenceData",
    "created",
    "creator",
    "description",
    "end",
    "endTimeUnspecified",
    "etag",
    "eventLabelId",
    "eventType",
    "extendedProperties",
    "focusTimeProperties",
    "gadget",
    "guestsCanInviteOthers",
    "guestsCanModify",
    "guestsCanSeeOtherGuests",
    "hangoutLink",
    "htmlLink",
    "iCalUID",
    "id",
    "kind",
    "location",
    "locked",
    "organizer",
    "originalStartTime",
    "outOfOfficeProperties",
    "privateCopy",
    "recurrence",
    "recurringEventId",
    "reminders",
    "sequence",
    "source",
    "start",
    "status",
    "summary",
    "transparency",
    "updated",
    "visibility",
    "workingLocationProperties",
];

/// Fields only the server sets; values sent by clients are ignored.
const SERVER_FIELDS: &[&str] = &[
    "kind",
    "etag",
    "htmlLink",
    "created",
    "updated",
    "creator",
    "organizer",
    "hangoutLink",
    "recurringEventId",
    "privateCopy",
    "locked",
];

const WRITE_SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/calendar",
    "https://www.googleapis.com/auth/calendar.events",
    "https://www.googleapis.com/auth/calendar.events.owned",
];

/// "Make secondary Google calendars, and see, create, change, and delete events on them": a
/// token with only this scope reaches the calendars its client made, nothing else.
pub const APP_CREATED_SCOPE: &str = "https://www.googleapis.com/auth/calendar.app.created";

/// Scopes that let `calendars.insert` and `calendars.delete` touch any calendar of the account.
const CALENDARS_WRITE_SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/calendar",
    "https://www.googleapis.com/auth/calendar.calendars",
];

const CALENDARS_READ_SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.calendars.readonly",
];

const READ_SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/calendar.readonly",
    "https://www.googleapis.com/auth/calendar.events.readonly",
    "https://www.googleapis.com/auth/calendar.events.owned.readonly",
];

/// A Calendar API error, answered in Google's JSON shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub domain: &'static str,
    pub auth: Option<Box<AuthDetails>>,
    /// Seconds for a `Retry-After` header (a queued fault's).
    pub retry_after: Option<u64>,
}

/// The extra parts of Google's authentication and permission errors.
#[derive(Debug, Clone, Default)]
pub struct AuthDetails {
    /// The detail message in `errors[0].message` when it differs from the top-level one.
    pub item_message: Option<&'static str>,
    pub status: Option<&'static str>,
    pub location: Option<(&'static str, &'static str)>,
    pub www_authenticate: Option<&'static str>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            domain: "global",
            auth: None,
            retry_after: None,
        }
    }

    pub fn bad_request(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::bad_request("invalid", message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "notFound", "Not Found")
    }

    pub fn invalid_credentials() -> Self {
        Self {
            auth: Some(Box::new(AuthDetails {
                item_message: Some("Invalid Credentials"),
                status: Some("UNAUTHENTICATED"),
                location: Some(("Authorization", "header")),
                www_authenticate: Some(
                    "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
                ),
            })),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            )
        }
    }

    pub fn missing_credentials() -> Self {
        Self {
            auth: Some(Box::new(AuthDetails {
                item_message: Some("Login Required."),
                status: Some("UNAUTHENTICATED"),
                location: Some(("Authorization", "header")),
                www_authenticate: Some("Bearer realm=\"https://accounts.google.com/\""),
            })),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "required",
                "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            )
        }
    }

    pub fn insufficient_scopes() -> Self {
        Self {
            auth: Some(Box::new(AuthDetails {
                item_message: Some("Insufficient Permission"),
                status: Some("PERMISSION_DENIED"),
                www_authenticate: Some(
                    "Bearer realm=\"https://accounts.google.com/\", error=\"insufficient_scope\"",
                ),
                ..AuthDetails::default()
            })),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
            )
        }
    }

    /// The answer to a fault queued through the control API.
    pub fn fault(status: u16, reason: Option<&str>) -> Self {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (reason, message, domain): (&'static str, &'static str, &'static str) =
            match (status, reason) {
                (_, Some("userRateLimitExceeded")) => (
                    "userRateLimitExceeded",
                    "User Rate Limit Exceeded",
                    "usageLimits",
                ),
                (_, Some("rateLimitExceeded")) | (429, None) => {
                    ("rateLimitExceeded", "Rate Limit Exceeded", "usageLimits")
                }
                (_, Some("quotaExceeded")) => (
                    "quotaExceeded",
                    "Calendar usage limits exceeded.",
                    "usageLimits",
                ),
                (403, None) => ("forbidden", "Forbidden", "global"),
                (503, _) => (
                    "backendError",
                    "The service is currently unavailable.",
                    "global",
                ),
                (400, _) => ("badRequest", "Bad Request", "global"),
                _ => ("backendError", "Backend Error", "global"),
            };
        Self {
            domain,
            ..Self::new(code, reason, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let auth = self.auth.map(|a| *a).unwrap_or_default();
        let mut item = json!({
            "domain": self.domain,
            "reason": self.reason,
            "message": auth.item_message.map(str::to_owned).unwrap_or_else(|| self.message.clone()),
        });
        if let Some((location, location_type)) = auth.location {
            item["location"] = json!(location);
            item["locationType"] = json!(location_type);
        }
        let mut error = json!({
            "errors": [item],
            "code": self.code.as_u16(),
            "message": self.message,
        });
        if let Some(status) = auth.status {
            error["status"] = json!(status);
        }
        let mut response = (self.code, axum::Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        if let Some(value) = auth.www_authenticate
            && let Ok(value) = value.parse()
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Which API method a request is, for stats and scope checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Insert,
    Get,
    List,
    Update,
    Patch,
    Delete,
    CalendarsInsert,
    CalendarsGet,
    CalendarsDelete,
}

impl Method {
    /// The broad scopes that allow the method on any calendar of the account.
    fn broad_scopes(self) -> &'static [&'static [&'static str]] {
        match self {
            Method::Get | Method::List => &[WRITE_SCOPES, READ_SCOPES],
            Method::Insert | Method::Update | Method::Patch | Method::Delete => &[WRITE_SCOPES],
            Method::CalendarsInsert | Method::CalendarsDelete => &[CALENDARS_WRITE_SCOPES],
            Method::CalendarsGet => &[CALENDARS_WRITE_SCOPES, CALENDARS_READ_SCOPES],
        }
    }
}

fn count(world: &mut World, method: Method) {
    let stats = &mut world.stats.calendar;
    match method {
        Method::Insert => stats.insert += 1,
        Method::Get => stats.get += 1,
        Method::Update => stats.update += 1,
        Method::Patch => stats.patch += 1,
        Method::Delete => stats.delete += 1,
        Method::List => stats.list += 1,
        Method::CalendarsInsert => stats.calendars_insert += 1,
        Method::CalendarsGet => stats.calendars_get += 1,
        Method::CalendarsDelete => stats.calendars_delete += 1,
    }
}

/// The request's access token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Counts the call, serves a queued fault, then authenticates and checks the token's scopes for
/// `method` on `calendar_id` (`None`: a new calendar): returns the account's email.
async fn admit(
    shared: &SharedState,
    headers: &HeaderMap,
    method: Method,
    calendar_id: Option<&str>,
) -> Result<String, ApiError> {
    let fault = {
        let mut world = shared.lock();
        count(&mut world, method);
        world.take_fault(FaultTarget::Calendar)
    };
    if let Some(fault) = fault {
        if fault.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(fault.delay_ms)).await;
        }
        if let Some(status) = fault.status {
            return Err(ApiError {
                retry_after: fault.retry_after,
                ..ApiError::fault(status, fault.reason.as_deref())
            });
        }
    }
    let token = bearer(headers).ok_or_else(ApiError::missing_credentials)?;
    let world = shared.lock();
    let grant = world
        .grant_for_access_token(token)
        .ok_or_else(ApiError::invalid_credentials)?;
    let broad = grant.scopes.iter().any(|s| {
        method
            .broad_scopes()
            .iter()
            .any(|set| set.contains(&s.as_str()))
    });
    // `calendar.app.created` reaches calendars its client made; an unknown id is let through to
    // the method's own 404 (a calendar the user deleted reads as gone, not as forbidden).
    let app_created = grant.scopes.iter().any(|s| s == APP_CREATED_SCOPE)
        && calendar_id.is_none_or(|id| {
            world
                .calendar(&grant.email, id)
                .is_none_or(|c| c.created_by.as_deref() == Some(grant.client_id.as_str()))
        });
    if !broad && !app_created {
        return Err(ApiError::insufficient_scopes());
    }
    Ok(grant.email.clone())
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("parseError", "Parse Error")),
        Err(_) => Err(ApiError::bad_request("parseError", "Parse Error")),
    }
}

/// Keeps only the Event fields Google defines and drops those only the server sets.
fn writable_fields(body: Map<String, Value>) -> Map<String, Value> {
    body.into_iter()
        .filter(|(key, _)| {
            EVENT_FIELDS.contains(&key.as_str()) && !SERVER_FIELDS.contains(&key.as_str())
        })
        .collect()
}

/// Event ids: 5 to 1024 characters of lowercase base32hex (`0-9a-v`).
pub fn is_valid_event_id(id: &str) -> bool {
    (5..=1024).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v'))
}

/// A point in time of an event's start or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum When {
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
}

fn parse_when(event: &Map<String, Value>, field: &str) -> Result<(When, bool), ApiError> {
    let missing = || ApiError::bad_request("required", format!("Missing {field} time."));
    let invalid = || ApiError::invalid(format!("Invalid {field} time."));
    let value = event.get(field).ok_or_else(missing)?;
    let object = value.as_object().ok_or_else(invalid)?;
    let time_zone = match object.get("timeZone") {
        None | Some(Value::Null) => None,
        Some(Value::String(zone)) => Some(zone.parse::<chrono_tz::Tz>().map_err(|_| {
            ApiError::invalid(format!("Invalid time zone definition for {field} time."))
        })?),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "Invalid time zone definition for {field} time."
            )));
        }
    };
    let date = object.get("date").filter(|v| !v.is_null());
    let date_time = object.get("dateTime").filter(|v| !v.is_null());
    let when = match (date, date_time) {
        (None, None) => return Err(missing()),
        (Some(_), Some(_)) => return Err(invalid()),
        (Some(date), None) => {
            let text = date.as_str().ok_or_else(invalid)?;
            When::Date(NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| invalid())?)
        }
        (None, Some(date_time)) => {
            let text = date_time.as_str().ok_or_else(invalid)?;
            match DateTime::parse_from_rfc3339(text) {
                Ok(at) => When::DateTime(at.with_timezone(&Utc)),
                Err(_) => {
                    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                        .map_err(|_| invalid())?;
                    let zone = time_zone.ok_or_else(|| {
                        ApiError::bad_request(
                            "required",
                            format!("Missing time zone definition for {field} time."),
                        )
                    })?;
                    let local = zone
                        .from_local_datetime(&naive)
                        .earliest()
                        .ok_or_else(invalid)?;
                    When::DateTime(local.with_timezone(&Utc))
                }
            }
        }
    };
    Ok((when, time_zone.is_some()))
}

const RRULE_KEYS: &[&str] = &[
    "FREQ",
    "UNTIL",
    "COUNT",
    "INTERVAL",
    "BYSECOND",
    "BYMINUTE",
    "BYHOUR",
    "BYDAY",
    "BYMONTHDAY",
    "BYYEARDAY",
    "BYWEEKNO",
    "BYMONTH",
    "BYSETPOS",
    "WKST",
];
const FREQUENCIES: &[&str] = &[
    "SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY",
];

fn valid_recurrence_line(line: &str) -> bool {
    let Some((name_and_params, value)) = line.split_once(':') else {
        return false;
    };
    let name = name_and_params.split(';').next().unwrap_or("");
    if value.is_empty() {
        return false;
    }
    match name {
        "RRULE" | "EXRULE" => {
            let mut seen = Vec::new();
            for part in value.split(';') {
                let Some((key, val)) = part.split_once('=') else {
                    return false;
                };
                if !RRULE_KEYS.contains(&key) || val.is_empty() || seen.contains(&key) {
                    return false;
                }
                if key == "FREQ" && !FREQUENCIES.contains(&val) {
                    return false;
                }
                if (key == "COUNT" || key == "INTERVAL") && !val.parse::<u32>().is_ok_and(|n| n > 0)
                {
                    return false;
                }
                seen.push(key);
            }
            seen.contains(&"FREQ") && !(seen.contains(&"COUNT") && seen.contains(&"UNTIL"))
        }
        "RDATE" | "EXDATE" => value.split(',').all(|item| {
            item.len() >= 8
                && item
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'T' | b'Z' | b'/' | b'P'))
        }),
        _ => false,
    }
}

/// Checks the rules Google enforces on a whole event before storing it.
fn validate(event: &Map<String, Value>) -> Result<(), ApiError> {
    for field in ["summary", "description", "location", "colorId", "iCalUID"] {
        if let Some(value) = event.get(field)
            && !value.is_string()
            && !value.is_null()
        {
            return Err(ApiError::invalid(format!("Invalid value for: {field}")));
        }
    }
    if let Some(status) = event.get("status")
        && !matches!(
            status.as_str(),
            Some("confirmed" | "tentative" | "cancelled")
        )
    {
        return Err(ApiError::invalid("Invalid value for: status"));
    }
    if let Some(value) = event.get("transparency")
        && !matches!(value.as_str(), Some("opaque" | "transparent"))
    {
        return Err(ApiError::invalid("Invalid value for: transparency"));
    }
    if let Some(value) = event.get("visibility")
        && !matches!(
            value.as_str(),
            Some("default" | "public" | "private" | "confidential")
        )
    {
        return Err(ApiError::invalid("Invalid value for: visibility"));
    }
    if let Some(properties) = event.get("extendedProperties") {
        let valid = properties.as_object().is_some_and(|object| {
            object.iter().all(|(scope, map)| {
                matches!(scope.as_str(), "private" | "shared")
                    && map
                        .as_object()
                        .is_some_and(|m| m.values().all(Value::is_string))
            })
        });
        if !valid {
            return Err(ApiError::invalid("Invalid value for: extendedProperties"));
        }
    }
    let (start, start_zoned) = parse_when(event, "start")?;
    let (end, end_zoned) = parse_when(event, "end")?;
    let same_kind = matches!(
        (start, end),
        (When::Date(_), When::Date(_)) | (When::DateTime(_), When::DateTime(_))
    );
    if !same_kind {
        return Err(ApiError::invalid(
            "Start and end times must either both be date or both be dateTime.",
        ));
    }
    if end <= start {
        return Err(ApiError::bad_request(
            "timeRangeEmpty",
            "The specified time range is empty.",
        ));
    }
    match event.get("recurrence") {
        None | Some(Value::Null) => {}
        Some(Value::Array(lines)) => {
            if !lines
                .iter()
                .all(|l| l.as_str().is_some_and(valid_recurrence_line))
            {
                return Err(ApiError::invalid("Invalid recurrence rule."));
            }
            if !lines.is_empty() && matches!(start, When::DateTime(_)) {
                if !start_zoned {
                    return Err(ApiError::bad_request(
                        "required",
                        "Missing time zone definition for start time.",
                    ));
                }
                if !end_zoned {
                    return Err(ApiError::bad_request(
                        "required",
                        "Missing time zone definition for end time.",
                    ));
                }
            }
        }
        Some(_) => return Err(ApiError::invalid("Invalid recurrence rule.")),
    }
    Ok(())
}

/// Sets the fields the server owns, keeping those an earlier version already had.
fn stamp(
    world: &mut World,
    event: &mut Map<String, Value>,
    email: &str,
    id: &str,
    previous: Option<&Map<String, Value>>,
) {
    let now = timestamp(world.now());
    let etag = world.next_etag();
    let keep = |field: &str, default: Value| {
        previous
            .and_then(|p| p.get(field).cloned())
            .unwrap_or(default)
    };
    let html_link = format!(
        "https://www.google.com/calendar/event?eid={}",
        URL_SAFE_NO_PAD.encode(format!("{id} {email}"))
    );
    let person = json!({"email": email, "self": true});
    event.insert("kind".into(), json!("calendar#event"));
    event.insert("etag".into(), json!(etag));
    event.insert("id".into(), json!(id));
    event.insert("htmlLink".into(), keep("htmlLink", json!(html_link)));
    event.insert("created".into(), keep("created", json!(now)));
    event.insert("updated".into(), json!(now));
    event.insert("creator".into(), keep("creator", person.clone()));
    event.insert("organizer".into(), keep("organizer", person));
    let ical = event
        .get("iCalUID")
        .filter(|v| v.is_string())
        .cloned()
        .unwrap_or_else(|| keep("iCalUID", json!(format!("{id}@google.com"))));
    event.insert("iCalUID".into(), ical);
    if !event.get("status").is_some_and(Value::is_string) {
        event.insert("status".into(), json!("confirmed"));
    }
    let previous_sequence = previous
        .and_then(|p| p.get("sequence"))
        .and_then(Value::as_u64);
    let requested = event.get("sequence").and_then(Value::as_u64);
    let sequence = match previous_sequence {
        Some(old) => requested.unwrap_or(0).max(old + 1),
        None => requested.unwrap_or(0),
    };
    event.insert("sequence".into(), json!(sequence));
    if !event.contains_key("reminders") {
        event.insert("reminders".into(), json!({"useDefault": true}));
    }
    if !event.contains_key("eventType") {
        event.insert("eventType".into(), json!("default"));
    }
}

/// JSON merge for patch: objects merge recursively, arrays and scalars replace, null clears.
fn merge(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(inner) => match target.get_mut(&key) {
                Some(Value::Object(existing)) => merge(existing, inner),
                _ => {
                    let mut fresh = Map::new();
                    merge(&mut fresh, inner);
                    target.insert(key, Value::Object(fresh));
                }
            },
            other => {
                target.insert(key, other);
            }
        }
    }
}

fn respond(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST calendars/{calendarId}/events`.
pub async fn insert(
    State(shared): State<SharedState>,
    Path(calendar_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(insert_inner(&shared, &calendar_id, &headers, &body).await)
}

async fn insert_inner(
    shared: &SharedState,
    calendar_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let email = admit(shared, headers, Method::Insert, Some(calendar_id)).await?;
    let mut world = shared.lock();
    if world.calendar(&email, calendar_id).is_none() {
        return Err(ApiError::not_found());
    }
    let mut event = writable_fields(parse_body(body)?);
    let id = match event.get("id") {
        None | Some(Value::Null) => random_event_id(),
        Some(Value::String(id)) if is_valid_event_id(id) => id.clone(),
        Some(_) => return Err(ApiError::invalid("Invalid resource id value.")),
    };
    validate(&event)?;
    let exists = world
        .calendar(&email, calendar_id)
        .is_some_and(|c| c.events.contains_key(&id));
    if exists {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate",
            "The requested identifier already exists.",
        ));
    }
    stamp(&mut world, &mut event, &email, &id, None);
    let calendar = world
        .calendar_mut(&email, calendar_id)
        .ok_or_else(ApiError::not_found)?;
    calendar.events.insert(id, event.clone());
    Ok(Value::Object(event))
}

/// `GET calendars/{calendarId}/events/{eventId}`.
pub async fn get(
    State(shared): State<SharedState>,
    Path((calendar_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    respond(get_inner(&shared, &calendar_id, &event_id, &headers).await)
}

async fn get_inner(
    shared: &SharedState,
    calendar_id: &str,
    event_id: &str,
    headers: &HeaderMap,
) -> Result<Value, ApiError> {
    let email = admit(shared, headers, Method::Get, Some(calendar_id)).await?;
    let world = shared.lock();
    let calendar = world
        .calendar(&email, calendar_id)
        .ok_or_else(ApiError::not_found)?;
    let event = calendar
        .events
        .get(event_id)
        .ok_or_else(ApiError::not_found)?;
    Ok(Value::Object(event.clone()))
}

/// Events a list page holds when `maxResults` is absent, and the most it ever holds (Google's
/// documented default and cap; a larger `maxResults` gets this many).
const LIST_DEFAULT: usize = 250;
const LIST_MAX: usize = 2500;

/// The parameters of `events.list` the emulator serves; the others are ignored.
struct ListQuery {
    show_deleted: bool,
    max_results: usize,
    /// The id after which the page starts (what `nextPageToken` encodes).
    after: Option<String>,
    /// `privateExtendedProperty=name=value` constraints, all of which an event must match.
    private: Vec<(String, String)>,
}

impl ListQuery {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut query = ListQuery {
            show_deleted: false,
            max_results: LIST_DEFAULT,
            after: None,
            private: Vec::new(),
        };
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "showDeleted" => query.show_deleted = value == "true",
                "maxResults" => {
                    query.max_results = match value.parse::<usize>() {
                        Ok(n) if n >= 1 => n.min(LIST_MAX),
                        _ => return Err(ApiError::invalid(format!("Invalid value '{value}'."))),
                    }
                }
                "pageToken" => {
                    let after = URL_SAFE_NO_PAD
                        .decode(value.as_bytes())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .ok_or_else(|| ApiError::invalid("Invalid page token value."))?;
                    query.after = Some(after);
                }
                "privateExtendedProperty" => {
                    let (name, wanted) = value.split_once('=').ok_or_else(|| {
                        ApiError::invalid("Invalid extended property constraint.")
                    })?;
                    query.private.push((name.to_string(), wanted.to_string()));
                }
                _ => {}
            }
        }
        Ok(query)
    }

    fn matches(&self, event: &Map<String, Value>) -> bool {
        let visible =
            self.show_deleted || event.get("status").and_then(Value::as_str) != Some("cancelled");
        let private = event
            .get("extendedProperties")
            .and_then(|p| p.get("private"));
        visible
            && self.private.iter().all(|(name, wanted)| {
                private.and_then(|p| p.get(name)).and_then(Value::as_str) == Some(wanted.as_str())
            })
    }
}

/// `GET calendars/{calendarId}/events`: the matching events in a stable order (by id), a page at
/// a time, `nextPageToken` while more follow; cancelled ones only with `showDeleted=true`.
pub async fn list(
    State(shared): State<SharedState>,
    Path(calendar_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let email = admit(&shared, &headers, Method::List, Some(&calendar_id)).await?;
        let query = ListQuery::parse(raw.as_deref())?;
        let world = shared.lock();
        let calendar = world
            .calendar(&email, &calendar_id)
            .ok_or_else(ApiError::not_found)?;
        let mut matching = calendar
            .events
            .iter()
            .filter(|(id, _)| query.after.as_ref().is_none_or(|after| *id > after))
            .filter(|(_, event)| query.matches(event));
        let items: Vec<Value> = matching
            .by_ref()
            .take(query.max_results)
            .map(|(_, event)| Value::Object(event.clone()))
            .collect();
        let next = match (matching.next(), items.last()) {
            (Some(_), Some(last)) => last["id"].as_str().map(|id| URL_SAFE_NO_PAD.encode(id)),
            _ => None,
        };
        let mut page = json!({
            "kind": "calendar#events",
            "summary": email,
            "timeZone": "UTC",
            "accessRole": "owner",
            "items": items,
        });
        if let Some(token) = next {
            page["nextPageToken"] = json!(token);
        }
        Ok(page)
    }
    .await;
    respond(result)
}

/// `PUT calendars/{calendarId}/events/{eventId}` (update: replaces the event, and revives a
/// cancelled one) and `PATCH` (`MERGE`: merges the body into the event).
pub async fn modify_route<const MERGE: bool>(
    State(shared): State<SharedState>,
    Path((calendar_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let method = if MERGE { Method::Patch } else { Method::Update };
    respond(modify(&shared, &calendar_id, &event_id, &headers, &body, method).await)
}

async fn modify(
    shared: &SharedState,
    calendar_id: &str,
    event_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    method: Method,
) -> Result<Value, ApiError> {
    let email = admit(shared, headers, method, Some(calendar_id)).await?;
    let mut world = shared.lock();
    let previous = world
        .calendar(&email, calendar_id)
        .ok_or_else(ApiError::not_found)?
        .events
        .get(event_id)
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    let mut body = writable_fields(parse_body(body)?);
    body.remove("id");
    let mut event = if method == Method::Patch {
        let mut merged = previous.clone();
        // The old sequence is not a request for that sequence.
        merged.remove("sequence");
        merge(&mut merged, body);
        merged
    } else {
        if !body.contains_key("iCalUID")
            && let Some(ical) = previous.get("iCalUID")
        {
            body.insert("iCalUID".into(), ical.clone());
        }
        body
    };
    validate(&event)?;
    stamp(&mut world, &mut event, &email, event_id, Some(&previous));
    let calendar = world
        .calendar_mut(&email, calendar_id)
        .ok_or_else(ApiError::not_found)?;
    calendar.events.insert(event_id.to_owned(), event.clone());
    Ok(Value::Object(event))
}

/// `DELETE calendars/{calendarId}/events/{eventId}`: 204, 410 when already deleted, 404 unknown.
pub async fn delete(
    State(shared): State<SharedState>,
    Path((calendar_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let email = admit(&shared, &headers, Method::Delete, Some(&calendar_id)).await?;
        let mut world = shared.lock();
        let now = timestamp(world.now());
        let etag = world.next_etag();
        let calendar = world
            .calendar_mut(&email, &calendar_id)
            .ok_or_else(ApiError::not_found)?;
        let event = calendar
            .events
            .get_mut(&event_id)
            .ok_or_else(ApiError::not_found)?;
        if event.get("status").and_then(Value::as_str) == Some("cancelled") {
            return Err(ApiError::new(
                StatusCode::GONE,
                "deleted",
                "Resource has been deleted",
            ));
        }
        event.insert("status".into(), json!("cancelled"));
        event.insert("updated".into(), json!(now));
        event.insert("etag".into(), json!(etag));
        Ok(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

/// The Calendar resource Google answers for a secondary calendar.
fn calendar_resource(id: &str, calendar: &crate::state::Calendar) -> Value {
    json!({
        "kind": "calendar#calendar",
        "etag": format!("\"{}\"", id.len()),
        "id": id,
        "summary": calendar.summary.clone().unwrap_or_default(),
        "timeZone": "UTC",
        "conferenceProperties": {"allowedConferenceSolutionTypes": ["hangoutsMeet"]},
    })
}

/// `POST calendars`: makes a secondary calendar owned by the token's account; `summary` (the
/// title) is required.
pub async fn calendars_insert(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let email = admit(&shared, &headers, Method::CalendarsInsert, None).await?;
        let body = parse_body(&body)?;
        let summary = body
            .get("summary")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request("required", "Missing title."))?;
        let mut world = shared.lock();
        let client_id = bearer(&headers)
            .and_then(|token| world.grant_for_access_token(token))
            .map(|grant| grant.client_id.clone());
        let id = random_calendar_id();
        let calendar = crate::state::Calendar {
            summary: Some(summary.to_owned()),
            created_by: client_id,
            ..Default::default()
        };
        let resource = calendar_resource(&id, &calendar);
        world.calendars.insert((email, id), calendar);
        Ok(resource)
    }
    .await;
    respond(result)
}

/// `GET calendars/{calendarId}`: a secondary calendar's resource (404 when unknown or deleted).
pub async fn calendars_get(
    State(shared): State<SharedState>,
    Path(calendar_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let email = admit(&shared, &headers, Method::CalendarsGet, Some(&calendar_id)).await?;
        let world = shared.lock();
        let calendar = world
            .calendar(&email, &calendar_id)
            .ok_or_else(ApiError::not_found)?;
        Ok(calendar_resource(&calendar_id, calendar))
    }
    .await;
    respond(result)
}

/// `DELETE calendars/{calendarId}`: removes a secondary calendar and its events (204); the
/// primary calendar cannot be deleted (Google's answer: clear it instead).
pub async fn calendars_delete(
    State(shared): State<SharedState>,
    Path(calendar_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let email = admit(
            &shared,
            &headers,
            Method::CalendarsDelete,
            Some(&calendar_id),
        )
        .await?;
        let mut world = shared.lock();
        if calendar_id == "primary" || calendar_id == email {
            return Err(ApiError::bad_request(
                "cannotDeletePrimaryCalendar",
                "The primary calendar cannot be deleted.",
            ));
        }
        world
            .calendars
            .remove(&(email, calendar_id.clone()))
            .ok_or_else(ApiError::not_found)?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_rules() {
        assert!(is_valid_event_id("abcde"));
        assert!(is_valid_event_id(&"0".repeat(1024)));
        assert!(!is_valid_event_id("abcd"));
        assert!(!is_valid_event_id(&"0".repeat(1025)));
        assert!(!is_valid_event_id("abcdw"));
        assert!(!is_valid_event_id("ABCDE"));
    }

    #[test]
    fn recurrence_lines() {
        assert!(valid_recurrence_line(
            "RRULE:FREQ=DAILY;INTERVAL=2;BYDAY=MO,TU"
        ));
        assert!(valid_recurrence_line("EXDATE;VALUE=DATE:20261224,20261231"));
        assert!(valid_recurrence_line(
            "RDATE;TZID=Europe/Berlin:20261224T100000"
        ));
        assert!(!valid_recurrence_line("RRULE:"));
        assert!(!valid_recurrence_line("RRULE:FREQ=DAILY;FREQ=WEEKLY"));
        assert!(!valid_recurrence_line("RRULE:FREQ=DAILY;COUNT=0"));
        assert!(!valid_recurrence_line("RRULE:FREQ=DAILY;BYWHAT=1"));
        assert!(!valid_recurrence_line("EXDATE:tomorrow"));
    }

    #[test]
    fn merge_patches_objects_and_replaces_arrays() {
        let mut target = json!({"a": {"x": 1, "y": 2}, "b": [1, 2], "c": "keep"})
            .as_object()
            .unwrap()
            .clone();
        let patch = json!({"a": {"y": null, "z": 3}, "b": [3], "d": "new"})
            .as_object()
            .unwrap()
            .clone();
        merge(&mut target, patch);
        assert_eq!(
            Value::Object(target),
            json!({"a": {"x": 1, "z": 3}, "b": [3], "c": "keep", "d": "new"})
        );
    }
}
