//! The Google Calendar events client: insert, full-replace update and delete of one event, with
//! Google's error answers read into [`CalendarError`] (which says whether a retry can help).
//!
//! Behind the [`Calendar`] trait so the sync logic can be unit-tested with a fake; the adapter
//! [`CalendarClient`] speaks HTTP to `GOOGLE_CALENDAR_API_URL` (Google or the project's emulator).

use std::{future::Future, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use crate::{
    mapping,
    metrics::{self, Metric},
};

/// Timeout of one Calendar API call; a slower answer is a retryable [`CalendarError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("Google rejected the access token (401); refresh it and retry once")]
    Unauthorized,
    #[error("Google has no such event or calendar (404)")]
    NotFound,
    #[error("the event was deleted from Google (410)")]
    Gone,
    #[error("an event with this id already exists in Google (409)")]
    Conflict,
    #[error("Google rate-limited the call ({status} {reason}); retry with backoff")]
    RateLimited {
        status: u16,
        reason: String,
        /// What the answer's `Retry-After` asked for, if it had one.
        retry_after: Option<Duration>,
    },
    #[error("Google refused the call (403 {reason}): {message}")]
    Forbidden { reason: String, message: String },
    #[error("Google rejected the event (400): {message}")]
    BadRequest { message: String },
    #[error("Google's Calendar API failed ({status}); retry later")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("Google answered {status} unexpectedly: {message}")]
    Unexpected { status: u16, message: String },
    #[error("the Calendar API did not answer in time; retry later")]
    Timeout,
    #[error("the Calendar API could not be reached: {0}")]
    Network(String),
}

impl CalendarError {
    /// Worth retrying with backoff: rate limits, server errors and transport trouble.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CalendarError::RateLimited { .. }
                | CalendarError::Server { .. }
                | CalendarError::Timeout
                | CalendarError::Network(_)
        )
    }

    /// The least wait the answer asked for before another try (its `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CalendarError::RateLimited { retry_after, .. }
            | CalendarError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A `Retry-After` value: delay seconds, or an HTTP date (RFC 7231 §7.1.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// The Calendar calls event-sync needs. `event` is Google's Event resource (with its `id`).
pub trait Calendar: Send + Sync {
    fn insert(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event: &Value,
    ) -> impl Future<Output = Result<(), CalendarError>> + Send;

    /// Full replace (PUT), so attributes absent from `event` are cleared in Google.
    fn update(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
        event: &Value,
    ) -> impl Future<Output = Result<(), CalendarError>> + Send;

    fn delete(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
    ) -> impl Future<Output = Result<(), CalendarError>> + Send;

    /// One page of the events calsync wrote to `calendar_id` (those carrying
    /// [`crate::mapping::MARKER_PROPERTY`]), cancelled ones included; `page_token` is the previous
    /// page's [`EventPage::next`]. The default lists none: for fakes of tests that reconcile
    /// nothing.
    fn list_ours(
        &self,
        _token: &SecretString,
        _calendar_id: &str,
        _page_token: Option<&str>,
    ) -> impl Future<Output = Result<EventPage, CalendarError>> + Send {
        async { Ok(EventPage::default()) }
    }

    /// Makes a secondary calendar titled `summary` (`calendars.insert`) and returns its id. The
    /// default refuses: for fakes of tests that never make one.
    fn create_calendar(
        &self,
        _token: &SecretString,
        _summary: &str,
    ) -> impl Future<Output = Result<String, CalendarError>> + Send {
        async {
            Err(CalendarError::Unexpected {
                status: 501,
                message: "this calendar makes no calendars".into(),
            })
        }
    }

    /// Deletes a secondary calendar and its events (`calendars.delete`); 404 and 410 count as
    /// done.
    fn delete_calendar(
        &self,
        _token: &SecretString,
        _calendar_id: &str,
    ) -> impl Future<Output = Result<(), CalendarError>> + Send {
        async { Ok(()) }
    }
}

/// One page of the events calsync wrote to a calendar (`events.list`), and the token of the next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventPage {
    pub items: Vec<Value>,
    pub next: Option<String>,
}

/// Events a listing page asks for (Google's default page).
pub const LIST_PAGE_SIZE: &str = "250";

/// HTTP adapter of [`Calendar`]: one reqwest client (connection pool) per cold start, no redirects.
#[derive(Clone, Debug)]
pub struct CalendarClient {
    http: reqwest::Client,
    base: Url,
    /// Per call, so the client can be the one the OAuth client uses too.
    timeout: Duration,
}

impl CalendarClient {
    /// `base` is `GOOGLE_CALENDAR_API_URL` (for example `https://www.googleapis.com/calendar/v3`).
    pub fn new(base: Url, timeout: Duration) -> Self {
        Self::with_http_client(base, crate::google_oauth::http_client(timeout), timeout)
    }

    /// Over `http` ([`crate::google_oauth::http_client`]), shared with the OAuth client: one
    /// TLS configuration and one pool of connections to Google per container.
    pub fn with_http_client(base: Url, http: reqwest::Client, timeout: Duration) -> Self {
        Self {
            http,
            base,
            timeout,
        }
    }

    /// `calendars` or `calendars/{calendar_id}`.
    fn calendar_url(&self, calendar_id: Option<&str>) -> Url {
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .expect("the Calendar API URL is an http(s) URL");
            segments.pop_if_empty().push("calendars");
            if let Some(id) = calendar_id {
                segments.push(id);
            }
        }
        url
    }

    fn events_url(&self, calendar_id: &str, event_id: Option<&str>) -> Url {
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .expect("the Calendar API URL is an http(s) URL");
            segments
                .pop_if_empty()
                .extend(["calendars", calendar_id, "events"]);
            if let Some(id) = event_id {
                segments.push(id);
            }
        }
        url
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(), CalendarError> {
        self.send_reading(request).await.map(drop)
    }

    /// Sends `request`; its answer's body on success.
    async fn send_reading(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<String, CalendarError> {
        let result = async {
            let response = request
                .timeout(self.timeout)
                .send()
                .await
                .map_err(transport_error)?;
            let status = response.status().as_u16();
            let success = response.status().is_success();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = response.text().await;
            if success {
                return body.map_err(transport_error);
            }
            Err(match read_error(status, &body.unwrap_or_default()) {
                CalendarError::RateLimited { status, reason, .. } => CalendarError::RateLimited {
                    status,
                    reason,
                    retry_after,
                },
                CalendarError::Server { status, .. } => CalendarError::Server {
                    status,
                    retry_after,
                },
                other => other,
            })
        }
        .await;
        metrics::count(call_metric(&result));
        result
    }
}

/// The metric one Calendar call's outcome counts in.
fn call_metric<T>(result: &Result<T, CalendarError>) -> Metric {
    match result {
        Ok(_) => Metric::GoogleCallsOk,
        Err(CalendarError::Unauthorized) => Metric::GoogleCallsUnauthorized,
        Err(CalendarError::RateLimited { .. }) => Metric::GoogleCallsRateLimited,
        Err(CalendarError::Server { .. }) => Metric::GoogleCallsServerError,
        Err(CalendarError::Timeout | CalendarError::Network(_)) => Metric::GoogleCallsUnreachable,
        // 404, 409 and 410 are answers the sync expects (a delete already done, an insert
        // already there); they count with the other refusals.
        Err(
            CalendarError::NotFound
            | CalendarError::Gone
            | CalendarError::Conflict
            | CalendarError::Forbidden { .. }
            | CalendarError::BadRequest { .. }
            | CalendarError::Unexpected { .. },
        ) => Metric::GoogleCallsRejected,
    }
}

fn transport_error(error: reqwest::Error) -> CalendarError {
    if error.is_timeout() {
        CalendarError::Timeout
    } else {
        // The URL carries no secret (the token is a header), but keep the text short and generic.
        CalendarError::Network(error.without_url().to_string())
    }
}

/// Reads Google's JSON error body `{"error":{"code","message","errors":[{"reason",..}]}}`.
pub fn read_error(status: u16, body: &str) -> CalendarError {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = &parsed["error"];
    let message: String = error["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    let reason = error["errors"][0]["reason"]
        .as_str()
        .or_else(|| error["status"].as_str())
        .unwrap_or("")
        .to_string();
    match status {
        400 => CalendarError::BadRequest { message },
        401 => CalendarError::Unauthorized,
        403 if matches!(
            reason.as_str(),
            "rateLimitExceeded" | "userRateLimitExceeded" | "quotaExceeded"
        ) =>
        {
            CalendarError::RateLimited {
                status,
                reason,
                retry_after: None,
            }
        }
        403 => CalendarError::Forbidden { reason, message },
        404 => CalendarError::NotFound,
        409 => CalendarError::Conflict,
        410 => CalendarError::Gone,
        429 => CalendarError::RateLimited {
            status,
            reason,
            retry_after: None,
        },
        500..=599 => CalendarError::Server {
            status,
            retry_after: None,
        },
        _ => CalendarError::Unexpected { status, message },
    }
}

impl Calendar for CalendarClient {
    async fn insert(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event: &Value,
    ) -> Result<(), CalendarError> {
        let url = self.events_url(calendar_id, None);
        self.send(
            self.http
                .post(url)
                .bearer_auth(token.expose_secret())
                .json(event),
        )
        .await
    }

    async fn update(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
        event: &Value,
    ) -> Result<(), CalendarError> {
        let url = self.events_url(calendar_id, Some(event_id));
        self.send(
            self.http
                .put(url)
                .bearer_auth(token.expose_secret())
                .json(event),
        )
        .await
    }

    async fn delete(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<(), CalendarError> {
        let url = self.events_url(calendar_id, Some(event_id));
        self.send(self.http.delete(url).bearer_auth(token.expose_secret()))
            .await
    }

    async fn list_ours(
        &self,
        token: &SecretString,
        calendar_id: &str,
        page_token: Option<&str>,
    ) -> Result<EventPage, CalendarError> {
        let mut url = self.events_url(calendar_id, None);
        {
            let marker = format!("{}={}", mapping::MARKER_PROPERTY, mapping::MARKER_VALUE);
            let mut query = url.query_pairs_mut();
            query
                .append_pair("privateExtendedProperty", &marker)
                .append_pair("showDeleted", "true")
                .append_pair("maxResults", LIST_PAGE_SIZE);
            if let Some(page_token) = page_token {
                query.append_pair("pageToken", page_token);
            }
        }
        let body = self
            .send_reading(self.http.get(url).bearer_auth(token.expose_secret()))
            .await?;
        let page: Value = serde_json::from_str(&body).map_err(|e| CalendarError::Unexpected {
            status: 200,
            message: format!("events.list answered something that is not JSON: {e}"),
        })?;
        Ok(EventPage {
            items: page["items"].as_array().cloned().unwrap_or_default(),
            next: page["nextPageToken"].as_str().map(str::to_string),
        })
    }

    async fn create_calendar(
        &self,
        token: &SecretString,
        summary: &str,
    ) -> Result<String, CalendarError> {
        let body = serde_json::json!({ "summary": summary });
        let answer = self
            .send_reading(
                self.http
                    .post(self.calendar_url(None))
                    .bearer_auth(token.expose_secret())
                    .json(&body),
            )
            .await?;
        let made: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        made["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .ok_or_else(|| CalendarError::Unexpected {
                status: 200,
                message: "calendars.insert answered without an id".into(),
            })
    }

    async fn delete_calendar(
        &self,
        token: &SecretString,
        calendar_id: &str,
    ) -> Result<(), CalendarError> {
        let url = self.calendar_url(Some(calendar_id));
        match self
            .send(self.http.delete(url).bearer_auth(token.expose_secret()))
            .await
        {
            Err(CalendarError::NotFound | CalendarError::Gone) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_calendar_ids() {
        let client = CalendarClient::new(
            Url::parse("http://127.0.0.1:1/calendar/v3").unwrap(),
            DEFAULT_TIMEOUT,
        );
        assert_eq!(
            client
                .events_url("team/a b@example.com", Some("abc"))
                .as_str(),
            "http://127.0.0.1:1/calendar/v3/calendars/team%2Fa%20b@example.com/events/abc"
        );
        let slash = CalendarClient::new(
            Url::parse("http://127.0.0.1:1/calendar/v3/").unwrap(),
            DEFAULT_TIMEOUT,
        );
        assert_eq!(
            slash.events_url("primary", None).as_str(),
            "http://127.0.0.1:1/calendar/v3/calendars/primary/events"
        );
    }

    #[test]
    fn google_error_bodies_become_typed_errors() {
        let body = |reason: &str| {
            format!(
                r#"{{"error":{{"code":403,"message":"m","errors":[{{"domain":"usageLimits","reason":"{reason}","message":"m"}}]}}}}"#
            )
        };
        assert!(read_error(403, &body("userRateLimitExceeded")).is_retryable());
        assert!(read_error(403, &body("rateLimitExceeded")).is_retryable());
        assert_eq!(
            read_error(403, &body("forbidden")),
            CalendarError::Forbidden {
                reason: "forbidden".into(),
                message: "m".into()
            }
        );
        assert!(!read_error(403, &body("forbidden")).is_retryable());
        assert!(read_error(429, "").is_retryable());
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        assert!(parse_retry_after(&soon).is_some_and(|d| d > Duration::from_secs(25)));
        assert_eq!(parse_retry_after("soon"), None);
        assert!(read_error(503, "<html>").is_retryable());
        assert_eq!(read_error(409, ""), CalendarError::Conflict);
        assert_eq!(read_error(410, ""), CalendarError::Gone);
        assert_eq!(read_error(401, ""), CalendarError::Unauthorized);
        assert!(matches!(
            read_error(400, r#"{"error":{"message":"Invalid start time."}}"#),
            CalendarError::BadRequest { message } if message == "Invalid start time."
        ));
    }
}
