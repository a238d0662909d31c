//! CloudWatch metrics in Embedded Metric Format (EMF): what an invocation did is counted as it
//! goes and written at its end as one JSON log line, which CloudWatch Logs turns into metrics. No
//! API call on the hot path, and nothing to flush on a crash but one line.
//!
//! Counting is task-local ([`scope`]): each handler runs inside one, and [`count`] and [`add`]
//! from anywhere below it (the sync, the token cache, the retry loop, the Calendar client) land
//! in that invocation's line. Outside a scope they do nothing, so unit tests need no setup.
//!
//! The line carries no token or user data: metric names, numbers, the function's name and, for
//! the callback, the connect's outcome code.

use std::{collections::BTreeMap, future::Future, sync::Mutex, sync::OnceLock};

use serde_json::{Map, Value, json};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "calsync";

/// Every metric calsync writes. The template's alarms and dashboard name them too (a test reads
/// the template against this list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// Stream records applied: Google holds the change (or the delete).
    RecordsSynced,
    /// Stream records already applied (a redelivery), skipped.
    RecordsSkipped,
    /// Stream records parked for a user without a usable grant.
    RecordsParked,
    /// Stream records whose row (or Google) refused the change for good.
    RecordsInvalid,
    /// Stream records reported in `batchItemFailures` (Lambda retries them).
    RecordsFailed,
    /// Stream records that cannot be ordered at all (no key or sequence), skipped.
    RecordsPoison,
    /// Calendar API calls Google answered with success.
    GoogleCallsOk,
    /// Calendar API calls refused for rate (403 rate limits, 429).
    GoogleCallsRateLimited,
    /// Calendar API calls answered 5xx.
    GoogleCallsServerError,
    /// Calendar API calls answered 401 (the token is refreshed and the call retried once).
    GoogleCallsUnauthorized,
    /// Calendar API calls refused for good (400, 403, 404 calendar, ...).
    GoogleCallsRejected,
    /// Calendar API calls that got no answer (timeout, connection refused).
    GoogleCallsUnreachable,
    /// Access tokens refreshed.
    TokenRefreshes,
    /// Refreshes not made: another invocation held the user's refresh lease and its new token
    /// was used.
    TokenRefreshesShared,
    /// Refresh tokens Google refused (`invalid_grant`, `invalid_rapt`): a user must reconnect.
    InvalidGrants,
    /// Refreshes that failed for now (the token endpoint unavailable).
    TokenRefreshFailures,
    /// Google calls tried again after a retryable failure.
    Retries,
    /// Time spent waiting between those tries.
    BackoffTime,
    /// Changes a resync applied (synced, deleted, or marked invalid).
    ResyncApplied,
    /// Rows a resync found in Google as they are.
    ResyncInSync,
    /// Changes a resync left parked.
    ResyncParked,
    /// Changes a resync could not apply now (the next resync tries again).
    ResyncFailed,
    /// Resync jobs that ran out of time and queued their continuation.
    ResyncContinued,
    /// User jobs a sweep queued.
    SweepUsersQueued,
    /// User jobs queued for the users named in a stream range Lambda gave up on (the redrive).
    RedriveUsersQueued,
    /// Copies in Google whose row is gone or elsewhere, deleted by the reconciliation.
    ReconcileOrphansDeleted,
    /// Copies deleted or changed in Google while calsync's state said synced, written again.
    ReconcileRestored,
    /// Sweeps the on-failure queue's records did not start: a sweep recorded as started after
    /// their batch arrived covers them.
    SweepsCovered,
    /// Idle grants the keep-alive refreshed.
    KeepAliveRefreshed,
    /// Idle grants Google refused at the keep-alive.
    KeepAliveRefused,
    /// Grants a resync found sealed under an old key and sealed again under the current one: a
    /// sweep's sum is how many grants still used an old key when it ran.
    GrantsResealed,
    /// Lifecycle events EventBridge accepted.
    LifecycleEventsSent,
    /// Lifecycle events given up on after their retries (best effort).
    LifecycleEventsDropped,
    /// Callbacks, by `Outcome` (`connected`, `denied`, `invalid_state`, ...).
    Connects,
}

impl Metric {
    pub const ALL: [Metric; 34] = [
        Metric::RecordsSynced,
        Metric::RecordsSkipped,
        Metric::RecordsParked,
        Metric::RecordsInvalid,
        Metric::RecordsFailed,
        Metric::RecordsPoison,
        Metric::GoogleCallsOk,
        Metric::GoogleCallsRateLimited,
        Metric::GoogleCallsServerError,
        Metric::GoogleCallsUnauthorized,
        Metric::GoogleCallsRejected,
        Metric::GoogleCallsUnreachable,
        Metric::TokenRefreshes,
        Metric::TokenRefreshesShared,
        Metric::InvalidGrants,
        Metric::TokenRefreshFailures,
        Metric::Retries,
        Metric::BackoffTime,
        Metric::ResyncApplied,
        Metric::ResyncInSync,
        Metric::ResyncParked,
        Metric::ResyncFailed,
        Metric::ResyncContinued,
        Metric::SweepUsersQueued,
        Metric::RedriveUsersQueued,
        Metric::SweepsCovered,
        Metric::ReconcileOrphansDeleted,
        Metric::ReconcileRestored,
        Metric::KeepAliveRefreshed,
        Metric::KeepAliveRefused,
        Metric::GrantsResealed,
        Metric::LifecycleEventsSent,
        Metric::LifecycleEventsDropped,
        Metric::Connects,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::RecordsSynced => "RecordsSynced",
            Metric::RecordsSkipped => "RecordsSkipped",
            Metric::RecordsParked => "RecordsParked",
            Metric::RecordsInvalid => "RecordsInvalid",
            Metric::RecordsFailed => "RecordsFailed",
            Metric::RecordsPoison => "RecordsPoison",
            Metric::GoogleCallsOk => "GoogleCallsOk",
            Metric::GoogleCallsRateLimited => "GoogleCallsRateLimited",
            Metric::GoogleCallsServerError => "GoogleCallsServerError",
            Metric::GoogleCallsUnauthorized => "GoogleCallsUnauthorized",
            Metric::GoogleCallsRejected => "GoogleCallsRejected",
            Metric::GoogleCallsUnreachable => "GoogleCallsUnreachable",
            Metric::TokenRefreshes => "TokenRefreshes",
            Metric::TokenRefreshesShared => "TokenRefreshesShared",
            Metric::InvalidGrants => "InvalidGrants",
            Metric::TokenRefreshFailures => "TokenRefreshFailures",
            Metric::Retries => "Retries",
            Metric::BackoffTime => "BackoffTime",
            Metric::ResyncApplied => "ResyncApplied",
            Metric::ResyncInSync => "ResyncInSync",
            Metric::ResyncParked => "ResyncParked",
            Metric::ResyncFailed => "ResyncFailed",
            Metric::ResyncContinued => "ResyncContinued",
            Metric::SweepUsersQueued => "SweepUsersQueued",
            Metric::RedriveUsersQueued => "RedriveUsersQueued",
            Metric::SweepsCovered => "SweepsCovered",
            Metric::ReconcileOrphansDeleted => "ReconcileOrphansDeleted",
            Metric::ReconcileRestored => "ReconcileRestored",
            Metric::KeepAliveRefreshed => "KeepAliveRefreshed",
            Metric::KeepAliveRefused => "KeepAliveRefused",
            Metric::GrantsResealed => "GrantsResealed",
            Metric::LifecycleEventsSent => "LifecycleEventsSent",
            Metric::LifecycleEventsDropped => "LifecycleEventsDropped",
            Metric::Connects => "Connects",
        }
    }

    /// CloudWatch's unit.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::BackoffTime => "Milliseconds",
            _ => "Count",
        }
    }
}

/// One invocation's counts.
#[derive(Default)]
struct Recorder {
    values: Mutex<(BTreeMap<Metric, f64>, Option<&'static str>)>,
}

tokio::task_local! {
    static CURRENT: Recorder;
}

/// Adds `value` to `metric` in the current invocation's line (nothing outside a [`scope`]).
pub fn add(metric: Metric, value: f64) {
    let _ = CURRENT.try_with(|recorder| {
        let mut values = recorder
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *values.0.entry(metric).or_default() += value;
    });
}

/// Adds one to `metric`.
pub fn count(metric: Metric) {
    add(metric, 1.0);
}

/// Counts one callback with its outcome code, the `Outcome` dimension of [`Metric::Connects`].
pub fn connect_outcome(outcome: &'static str) {
    count(Metric::Connects);
    let _ = CURRENT.try_with(|recorder| {
        recorder
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1 = Some(outcome);
    });
}

/// Runs `work` (one invocation of `function`) counting its metrics, then writes them as one EMF
/// line, if it counted any.
pub async fn scope<F: Future>(function: &'static str, work: F) -> F::Output {
    CURRENT
        .scope(Recorder::default(), async move {
            let output = work.await;
            let line = CURRENT.with(|recorder| {
                let values = recorder
                    .values
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                document(function, &values.0, values.1, chrono::Utc::now())
            });
            if let Some(line) = line {
                write_line(&line);
            }
            output
        })
        .await
}

/// The EMF document of `values`: every metric under the `Function` dimension, except
/// [`Metric::Connects`], under `Function` and `Outcome`. `None` when nothing was counted.
pub fn document(
    function: &str,
    values: &BTreeMap<Metric, f64>,
    outcome: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let definition = |metric: &Metric| json!({"Name": metric.name(), "Unit": metric.unit()});
    let mut directives = Vec::new();
    let plain: Vec<Value> = values
        .keys()
        .filter(|m| **m != Metric::Connects)
        .map(definition)
        .collect();
    if !plain.is_empty() {
        directives.push(json!({
            "Namespace": NAMESPACE, "Dimensions": [["Function"]], "Metrics": plain,
        }));
    }
    let mut root = Map::new();
    if values.contains_key(&Metric::Connects) {
        directives.push(json!({
            "Namespace": NAMESPACE, "Dimensions": [["Function", "Outcome"]],
            "Metrics": [definition(&Metric::Connects)],
        }));
        root.insert("Outcome".into(), json!(outcome.unwrap_or("unknown")));
    }
    root.insert(
        "_aws".into(),
        json!({"Timestamp": at.timestamp_millis(), "CloudWatchMetrics": directives}),
    );
    root.insert("Function".into(), json!(function));
    for (metric, value) in values {
        root.insert(metric.name().into(), json!(value));
    }
    Some(Value::Object(root).to_string())
}

type LineWriter = Box<dyn Fn(&str) + Send + Sync>;

static WRITER: OnceLock<LineWriter> = OnceLock::new();

/// Where EMF lines go: set once, by [`crate::telemetry`], to the same place as the log lines.
pub fn set_writer(writer: LineWriter) {
    let _ = WRITER.set(writer);
}

fn write_line(line: &str) {
    if let Some(writer) = WRITER.get() {
        writer(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_metric_is_listed() {
        let mut names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
    }

    #[tokio::test]
    async fn a_scope_counts_what_runs_inside_it_and_nothing_leaks_out() {
        count(Metric::RecordsSynced); // outside: nothing, no panic
        let values = CURRENT
            .scope(Recorder::default(), async {
                count(Metric::RecordsSynced);
                add(Metric::BackoffTime, 12.5);
                count(Metric::RecordsSynced);
                connect_outcome("denied");
                CURRENT.with(|r| r.values.lock().unwrap().clone())
            })
            .await;
        assert_eq!(values.0[&Metric::RecordsSynced], 2.0);
        assert_eq!(values.0[&Metric::BackoffTime], 12.5);
        assert_eq!(values.1, Some("denied"));
    }

    #[test]
    fn the_document_is_emf() {
        let at = chrono::DateTime::from_timestamp_millis(1_764_000_000_123).unwrap();
        assert_eq!(document("event-sync", &BTreeMap::new(), None, at), None);
        let values = BTreeMap::from([(Metric::RecordsSynced, 3.0), (Metric::BackoffTime, 40.0)]);
        let line = document("event-sync", &values, None, at).unwrap();
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed,
            json!({
                "_aws": {"Timestamp": 1_764_000_000_123_i64, "CloudWatchMetrics": [{
                    "Namespace": "calsync", "Dimensions": [["Function"]],
                    "Metrics": [
                        {"Name": "RecordsSynced", "Unit": "Count"},
                        {"Name": "BackoffTime", "Unit": "Milliseconds"},
                    ],
                }]},
                "Function": "event-sync", "RecordsSynced": 3.0, "BackoffTime": 40.0,
            })
        );
        let values = BTreeMap::from([(Metric::Connects, 1.0)]);
        let parsed: Value = serde_json::from_str(
            &document("oauth-callback", &values, Some("connected"), at).unwrap(),
        )
        .unwrap();
        assert_eq!(parsed["Outcome"], "connected");
        assert_eq!(
            parsed["_aws"]["CloudWatchMetrics"],
            json!([{"Namespace": "calsync", "Dimensions": [["Function", "Outcome"]],
                    "Metrics": [{"Name": "Connects", "Unit": "Count"}]}])
        );
    }
}
