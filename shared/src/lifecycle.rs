//! Lifecycle events: what calsync tells the app about a user's connection, on EventBridge.
//!
//! Five events, all with source [`SOURCE`]: `Grant Connected` (the callback stored a grant),
//! `Grant Needs Reauth` (Google refused the refresh token, or the stored tokens cannot be opened),
//! `Grant Disconnected` (the user disconnected), `Sync Parked` (the first change of a user whose
//! grant needs reauth was parked; once per episode, see `grants::Grant::parked_reported_at`) and
//! `Calendar Recreated` (the user deleted the dedicated calendar; calsync made another). The
//! detail ([`Detail`]) names the user, the Google account, the time and the status; never a token.
//!
//! Emitting is best effort: [`emit`] tries the [`LifecycleEvents`] port a few times within a short
//! budget and logs what it could not deliver, so an unreachable bus never fails a connect or a
//! sync. The EventBridge adapter is [`eventbridge::EventBridgeEvents`]; unit tests use
//! [`RecordedEvents`].

pub mod eventbridge;

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    grants::ReauthReason,
    metrics::{self, Metric},
};

/// The `source` of every calsync event, what a rule matches on.
pub const SOURCE: &str = "calsync";

/// Attempts per event: one and two retries.
pub const ATTEMPTS: usize = 3;
/// What one attempt may take; the adapter's client has the same limit.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(800);
/// What emitting one event may take in all, attempts and pauses included: short enough that a
/// stalled bus costs a connect or a batch at most this.
pub const BUDGET: Duration = Duration::from_secs(2);
/// The pause before the first retry; doubled for the next.
const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// The five events (their `detail-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "Grant Connected")]
    GrantConnected,
    #[serde(rename = "Grant Needs Reauth")]
    GrantNeedsReauth,
    #[serde(rename = "Grant Disconnected")]
    GrantDisconnected,
    #[serde(rename = "Sync Parked")]
    SyncParked,
    #[serde(rename = "Calendar Recreated")]
    CalendarRecreated,
}

impl Kind {
    /// EventBridge's `detail-type`.
    pub fn detail_type(self) -> &'static str {
        match self {
            Kind::GrantConnected => "Grant Connected",
            Kind::GrantNeedsReauth => "Grant Needs Reauth",
            Kind::GrantDisconnected => "Grant Disconnected",
            Kind::SyncParked => "Sync Parked",
            Kind::CalendarRecreated => "Calendar Recreated",
        }
    }

    /// The connection status after the event, as `GET /oauth/google/status` names it.
    pub fn status(self) -> &'static str {
        match self {
            Kind::GrantConnected | Kind::CalendarRecreated => "active",
            Kind::GrantNeedsReauth | Kind::SyncParked => "needs_reauth",
            Kind::GrantDisconnected => "not_connected",
        }
    }
}

/// The event's `detail`, the schema the README documents. Built only from grant metadata, so it
/// cannot carry a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    pub user_id: String,
    pub google_email: Option<String>,
    /// When calsync saw the transition (RFC 3339, UTC, milliseconds). Retries of one event carry
    /// the same value, so a consumer can drop duplicates on (`detail-type`, `user_id`, `time`).
    pub time: String,
    pub status: String,
    /// Why the grant needs reauth (`Grant Needs Reauth`, `Sync Parked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReauthReason>,
    /// The new calendar's id (`Calendar Recreated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar_id: Option<String>,
}

/// One lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub kind: Kind,
    pub time: DateTime<Utc>,
    pub detail: Detail,
}

impl LifecycleEvent {
    fn new(
        kind: Kind,
        user_id: &str,
        google_email: Option<&str>,
        reason: Option<ReauthReason>,
    ) -> Self {
        let time = Utc::now();
        Self {
            kind,
            time,
            detail: Detail {
                user_id: user_id.to_string(),
                google_email: google_email.map(str::to_string),
                time: time.to_rfc3339_opts(SecondsFormat::Millis, true),
                status: kind.status().to_string(),
                reason,
                calendar_id: None,
            },
        }
    }

    pub fn connected(user_id: &str, google_email: Option<&str>) -> Self {
        Self::new(Kind::GrantConnected, user_id, google_email, None)
    }

    pub fn needs_reauth(user_id: &str, google_email: Option<&str>, reason: ReauthReason) -> Self {
        Self::new(Kind::GrantNeedsReauth, user_id, google_email, Some(reason))
    }

    pub fn disconnected(user_id: &str, google_email: Option<&str>) -> Self {
        Self::new(Kind::GrantDisconnected, user_id, google_email, None)
    }

    /// The user deleted calsync's calendar in Google; calsync made `calendar_id` in its place
    /// and writes every current row there again.
    pub fn calendar_recreated(
        user_id: &str,
        google_email: Option<&str>,
        calendar_id: &str,
    ) -> Self {
        let mut event = Self::new(Kind::CalendarRecreated, user_id, google_email, None);
        event.detail.calendar_id = Some(calendar_id.to_string());
        event
    }

    pub fn sync_parked(
        user_id: &str,
        google_email: Option<&str>,
        reason: Option<ReauthReason>,
    ) -> Self {
        Self::new(Kind::SyncParked, user_id, google_email, reason)
    }

    /// The detail as the JSON text EventBridge carries.
    pub fn detail_json(&self) -> String {
        serde_json::to_string(&self.detail).expect("a Detail always serialises")
    }
}

/// Why one attempt to publish failed. The text never holds the detail (it names no token anyway,
/// but the log line stays short).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmitError {
    #[error("the event bus is unavailable: {0}")]
    Unavailable(String),
    #[error("the event bus refused the event: {0}")]
    Refused(String),
}

impl EmitError {
    fn is_retryable(&self) -> bool {
        matches!(self, EmitError::Unavailable(_))
    }
}

/// Where lifecycle events go: one attempt per call; [`emit`] adds the retries and the budget.
pub trait LifecycleEvents: Send + Sync {
    fn publish(&self, event: &LifecycleEvent)
    -> impl Future<Output = Result<(), EmitError>> + Send;
}

/// Publishes `event` best effort: up to [`ATTEMPTS`] attempts within [`BUDGET`], each cut at
/// [`ATTEMPT_TIMEOUT`]. Never fails: what could not be delivered is logged (without a token: the
/// detail has none) and the caller carries on.
pub async fn emit<L: LifecycleEvents>(events: &L, event: LifecycleEvent) {
    let started = tokio::time::Instant::now();
    let deadline = started + BUDGET;
    let mut pause = FIRST_PAUSE;
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let error =
            match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), events.publish(&event)).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        user_id = event.detail.user_id,
                        event = event.kind.detail_type(),
                        attempt,
                        "lifecycle event sent"
                    );
                    metrics::count(Metric::LifecycleEventsSent);
                    return;
                }
                Ok(Err(error)) => error,
                // A timed-out attempt may still have reached the bus: a retry can deliver the event
                // twice (at least once; the README says so).
                Err(_) => EmitError::Unavailable("the attempt timed out".into()),
            };
        let retry = error.is_retryable();
        last_error = Some(error);
        if !retry || attempt == ATTEMPTS {
            break;
        }
        // Retrying only makes sense if the pause leaves room for another attempt.
        if tokio::time::Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    metrics::count(Metric::LifecycleEventsDropped);
    tracing::warn!(
        user_id = event.detail.user_id,
        event = event.kind.detail_type(),
        error = last_error.map(|e| e.to_string()).unwrap_or_default(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "lifecycle event not sent; carrying on"
    );
}

/// An in-memory [`LifecycleEvents`] for unit tests: records what was published, and can fail the
/// next attempts.
#[derive(Clone, Default)]
pub struct RecordedEvents {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    events: Vec<LifecycleEvent>,
    attempts: usize,
    failures: Vec<EmitError>,
    hang: bool,
}

impl RecordedEvents {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events published so far.
    pub fn events(&self) -> Vec<LifecycleEvent> {
        self.inner.lock().unwrap().events.clone()
    }

    /// The kinds published so far, in order.
    pub fn kinds(&self) -> Vec<Kind> {
        self.events().iter().map(|e| e.kind).collect()
    }

    /// Every attempt, successful or not.
    pub fn attempts(&self) -> usize {
        self.inner.lock().unwrap().attempts
    }

    /// The next attempts fail with these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = EmitError>) {
        self.inner.lock().unwrap().failures.extend(errors);
    }

    /// Every attempt from now on never answers.
    pub fn hang(&self) {
        self.inner.lock().unwrap().hang = true;
    }
}

impl LifecycleEvents for RecordedEvents {
    async fn publish(&self, event: &LifecycleEvent) -> Result<(), EmitError> {
        let hang = {
            let mut inner = self.inner.lock().unwrap();
            inner.attempts += 1;
            if !inner.failures.is_empty() {
                return Err(inner.failures.remove(0));
            }
            inner.hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        self.inner.lock().unwrap().events.push(event.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_has_the_documented_shape() {
        let event = LifecycleEvent::needs_reauth(
            "user-1",
            Some("alice@example.com"),
            ReauthReason::InvalidRapt,
        );
        let detail: serde_json::Value = serde_json::from_str(&event.detail_json()).unwrap();
        let keys: Vec<&str> = detail
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["google_email", "reason", "status", "time", "user_id"],
            "{detail}"
        );
        assert_eq!(detail["status"], "needs_reauth");
        assert_eq!(detail["reason"], "invalid_rapt");
        assert!(detail["time"].as_str().unwrap().ends_with('Z'));
        let connected = LifecycleEvent::connected("user-1", None);
        let detail: serde_json::Value = serde_json::from_str(&connected.detail_json()).unwrap();
        assert!(detail.get("reason").is_none(), "{detail}");
        assert_eq!(detail["google_email"], serde_json::Value::Null);
        assert_eq!(detail["status"], "active");
        assert_eq!(
            LifecycleEvent::disconnected("u", None).detail.status,
            "not_connected"
        );
        assert_eq!(
            serde_json::to_value(Kind::SyncParked).unwrap(),
            Kind::SyncParked.detail_type()
        );
    }

    #[tokio::test]
    async fn transient_failures_are_retried_then_the_event_is_sent() {
        let events = RecordedEvents::new();
        events.fail_next([
            EmitError::Unavailable("503".into()),
            EmitError::Unavailable("throttled".into()),
        ]);
        emit(&events, LifecycleEvent::connected("u", None)).await;
        assert_eq!(events.attempts(), 3);
        assert_eq!(events.kinds(), [Kind::GrantConnected]);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_attempts_are_bounded() {
        let events = RecordedEvents::new();
        events.fail_next([EmitError::Refused("AccessDenied".into())]);
        emit(&events, LifecycleEvent::connected("u", None)).await;
        assert_eq!(events.attempts(), 1);
        assert!(events.events().is_empty());

        let events = RecordedEvents::new();
        events.fail_next((0..10).map(|_| EmitError::Unavailable("down".into())));
        emit(&events, LifecycleEvent::connected("u", None)).await;
        assert_eq!(events.attempts(), ATTEMPTS);
        assert!(events.events().is_empty());
    }

    // On the real clock (tokio's paused one needs its `test-util` feature, which would make the
    // tests' build of every crate on tokio differ from the functions' and the tooling's): the
    // budget plus a little scheduling.
    #[tokio::test]
    async fn a_bus_that_never_answers_costs_at_most_the_budget() {
        let events = RecordedEvents::new();
        events.hang();
        let started = tokio::time::Instant::now();
        emit(&events, LifecycleEvent::connected("u", None)).await;
        let took = started.elapsed();
        assert!(took <= BUDGET + Duration::from_millis(300), "took {took:?}");
        assert!(events.attempts() >= 2, "the timed-out attempt was retried");
        assert!(events.events().is_empty());
    }
}
