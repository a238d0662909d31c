//! Helpers the `shared` integration tests share: a test stack with the configuration and clients
//! on it, the log capture their leak scans read, a connect through the real handlers, and the
//! Events table's stream handed to event-sync.
// Each test binary uses its own part of these.
#![allow(dead_code)]

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use aws_lambda_events::event::dynamodb::Event as DynamodbEvent;
use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{
    aws::Clients,
    calendar,
    config::Config,
    flows::FlowStore,
    http::{self, CallbackDeps, CallbackPorts, StartDeps},
    resync::{
        ResyncOnConnect,
        handler::{self as resync_handler, ResyncDeps, ResyncEvent},
    },
    store::SqsJobQueue,
    sync::{self, handler::SyncDeps, retry::RetryPolicy},
};
use lambda_http::{Body, Response};
use serde_json::Value;
use testkit::{TestStack, invocation::with_deadline};

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
/// Every panic message of this test binary, and every answer of the HTTP handlers called through
/// [`connect`] or [`answered`] (status, headers and body), for the leak scans.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static ANSWERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A tracing writer appending every line to one buffer shared with the test.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A fresh test stack (logs captured), the configuration the functions read from its environment,
/// and the AWS clients on it.
pub async fn stack_with_config() -> (TestStack, Config, Clients) {
    stack_with_parameters(&[]).await
}

/// [`stack_with_config`] with template parameters overridden (`("CalendarMode", "dedicated")`).
pub async fn stack_with_parameters(parameters: &[(&str, &str)]) -> (TestStack, Config, Clients) {
    capture_logs();
    let stack = TestStack::start_with_parameters(parameters)
        .await
        .expect("test stack");
    let config = Config::from_source(&stack.env).expect("config from the stack's env");
    let clients = Clients::new(&stack.sdk);
    (stack, config, clients)
}

/// Installs the capturing subscriber (and a panic hook that keeps each message, then reports it
/// as usual) once per test binary and returns the log buffer.
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |panic| {
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(panic.to_string());
            }
            report(panic);
        }));
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        calsync::telemetry::init_with_writer(move || writer.clone());
        buffer
    })
    .clone()
}

/// Every EMF line captured so far (the metrics' lines share the log writer), each checked against
/// EMF's rules: one JSON object whose `_aws` has a millisecond `Timestamp` and directives in the
/// `calsync` namespace, every dimension a string on the root, every metric a number there with a
/// CloudWatch unit.
pub fn emf_documents() -> Vec<serde_json::Value> {
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned();
    logs.lines()
        .filter(|line| line.contains("\"_aws\""))
        .map(|line| {
            let doc: serde_json::Value =
                serde_json::from_str(line).expect("an EMF line is one JSON object");
            let aws = &doc["_aws"];
            assert!(
                aws["Timestamp"]
                    .as_i64()
                    .is_some_and(|t| t > 1_600_000_000_000)
            );
            let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
            assert!(!directives.is_empty());
            for directive in directives {
                assert_eq!(directive["Namespace"], calsync::metrics::NAMESPACE);
                for set in directive["Dimensions"].as_array().expect("dimension sets") {
                    for key in set.as_array().expect("a dimension set") {
                        let key = key.as_str().unwrap();
                        assert!(doc[key].is_string(), "dimension {key} in {line}");
                    }
                }
                for metric in directive["Metrics"].as_array().expect("metrics") {
                    let name = metric["Name"].as_str().unwrap();
                    assert!(doc[name].is_number(), "{name} has no value in {line}");
                    assert!(
                        ["Count", "Milliseconds"].contains(&metric["Unit"].as_str().unwrap()),
                        "{line}"
                    );
                }
            }
            doc
        })
        .collect()
}

/// The sum of `metric` over the EMF lines of `function` captured so far (where `outcome` is
/// given, only those of that `Outcome`).
pub fn metric_total(function: &str, metric: &str, outcome: Option<&str>) -> f64 {
    emf_documents()
        .iter()
        .filter(|doc| doc["Function"] == function)
        .filter(|doc| outcome.is_none_or(|o| doc["Outcome"] == o))
        .filter_map(|doc| doc[metric].as_f64())
        .sum()
}

/// Every line captured so far, as text.
pub fn logs_text() -> String {
    String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned()
}

/// Every value the emulator issued or received (tokens, codes, verifiers, the client secret).
pub async fn issued_secrets(stack: &TestStack) -> Vec<String> {
    let issued = stack.control_get("issued-secrets").await.unwrap();
    issued["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Panics where one of `secrets` appears in one of `places` (a name and its text). Only
/// meaningful values count: the shortest real secrets are far longer than 8 characters.
pub fn assert_no_secret_in(secrets: &[String], places: &[(&str, &str)]) {
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        for (place, text) in places {
            assert!(
                !text.contains(secret.as_str()),
                "an issued secret appears in {place}"
            );
        }
    }
}

/// Keeps a handler's answer for [`assert_nothing_leaked`] and hands it back.
pub fn answered(answer: Response<Body>) -> Response<Body> {
    ANSWERS.lock().unwrap().push(format!(
        "{} {:?} {:?}",
        answer.status(),
        answer.headers(),
        answer.body()
    ));
    answer
}

/// The leak scan every scenario ends with: no sentinel-marked secret (every token, code and
/// client secret the stack handed out carries [`SENTINEL`](google_emulator::state::SENTINEL)),
/// whole or cut, and no other value the emulator issued or received (the PKCE verifiers), in a
/// log line, a handler's answer (status, headers, body), an item of any of the stack's tables,
/// one of `events` (the lifecycle events its tap read), or a panic message; nor a key of the
/// token keyring.
pub async fn assert_nothing_leaked(stack: &TestStack, events: &[Value]) {
    let tables = stack.dump_tables().await.unwrap();
    let mut secrets = issued_secrets(stack).await;
    secrets.push(stack.client_secret.clone());
    let keyring = aws_sdk_secretsmanager::Client::new(&stack.sdk)
        .get_secret_value()
        .secret_id(&stack.env["TOKEN_KEYS_SECRET_ID"])
        .send()
        .await
        .unwrap();
    let keyring: Value = serde_json::from_str(keyring.secret_string().unwrap()).unwrap();
    let keys = keyring["keys"].as_object().expect("the keyring's keys");
    assert!(!keys.is_empty());
    secrets.extend(keys.values().map(|key| key.as_str().unwrap().to_string()));
    assert_nothing_leaked_in(&secrets, events, Some(tables));
}

/// [`assert_nothing_leaked`] where `secrets` are the values to look for besides the sentinel and
/// `tables` the tables' text, if there are tables: what a test without a stack can scan.
pub fn assert_nothing_leaked_in(secrets: &[String], events: &[Value], tables: Option<String>) {
    let places = [
        ("a log line", logs_text()),
        ("an answer", ANSWERS.lock().unwrap().join("\n")),
        ("a table", tables.unwrap_or_default()),
        ("a lifecycle event", serde_json::to_string(events).unwrap()),
        ("a panic message", PANICS.lock().unwrap().join("\n")),
    ];
    for (place, text) in &places {
        assert!(
            !text.contains(google_emulator::state::SENTINEL),
            "a sentinel-marked secret appears in {place}"
        );
    }
    let places: Vec<(&str, &str)> = places.iter().map(|(p, t)| (*p, t.as_str())).collect();
    assert_no_secret_in(secrets, &places);
}

/// Refresh calls the emulator's token endpoint has answered.
pub async fn refreshes(stack: &TestStack) -> u64 {
    let stats = stack.control_get("stats").await.unwrap();
    stats["token"]["refresh_token"].as_u64().unwrap()
}

/// Connects `user` to Google as `account` the way a browser does, through the real start and
/// callback handlers.
pub async fn connect<F: FlowStore, P: CallbackPorts>(
    stack: &TestStack,
    start: &StartDeps<F>,
    callback: &CallbackDeps<P>,
    user: &str,
    account: &str,
) {
    stack
        .connect_through(
            user,
            account,
            async |request| answered(http::start_router(start, request).await),
            async |request| answered(http::callback_router(callback, request).await),
        )
        .await
        .expect("connected");
}

/// Flips one character of `user`'s sealed refresh token, as a corrupted item or a key removed
/// too early would.
pub async fn damage_sealed_refresh_token(stack: &TestStack, user: &str) {
    let grants = stack.table("GrantsTable");
    let item = stack
        .item(grants, "user_id", user)
        .await
        .unwrap()
        .expect("a grant");
    let mut damaged: Vec<char> = item["refresh_token_sealed"]
        .as_s()
        .unwrap()
        .chars()
        .collect();
    let middle = damaged.len() - 12;
    damaged[middle] = if damaged[middle] == 'A' { 'B' } else { 'A' };
    aws_sdk_dynamodb::Client::new(&stack.sdk)
        .update_item()
        .table_name(grants)
        .key("user_id", AttributeValue::S(user.into()))
        .update_expression("SET refresh_token_sealed = :damaged")
        .expression_attribute_values(":damaged", AttributeValue::S(damaged.into_iter().collect()))
        .send()
        .await
        .unwrap();
}

/// Backoff short enough for a test (Google's faults are retried in milliseconds).
pub fn quick_retries(retry: &mut RetryPolicy) {
    retry.base = std::time::Duration::from_millis(20);
    retry.cap = std::time::Duration::from_millis(200);
}

/// event-sync's and resync's dependencies as a cold start builds them (fresh secrets caches),
/// with short retry delays.
pub fn sync_and_resync(
    config: &Config,
    clients: &Clients,
) -> (SyncDeps, ResyncDeps<resync_handler::Production>) {
    let mut sync = SyncDeps::from_config(config, clients, calendar::DEFAULT_TIMEOUT);
    let mut resync = ResyncDeps::from_config(config, clients);
    for retry in [&mut sync.retry, &mut resync.syncer.retry] {
        quick_retries(retry);
    }
    (sync, resync)
}

/// The callback handler as deployed: each connect queues the user's resync.
pub type QueueingCallback = CallbackDeps<http::Production<ResyncOnConnect<SqsJobQueue>>>;

/// [`QueueingCallback`] on the stack's resync queue.
pub fn queueing_callback(config: &Config, clients: &Clients) -> QueueingCallback {
    let queue = SqsJobQueue::new(clients.sqs.clone(), config.resync_queue_url.clone());
    CallbackDeps::new(config.clone(), clients, ResyncOnConnect(queue))
}

/// Rates far above Google's, for resyncs of thousands of rows against the emulator, which has
/// no quota: at Google's pace they would take minutes to test what the rows do, not the pacing
/// (which has tests of its own).
pub const EMULATOR_PACE: calsync::sync::pacing::PacingLimits = {
    use calsync::sync::pacing::{PacingLimits, Rate};
    let rate = Rate {
        per_minute: 60_000,
        burst: 100,
    };
    PacingLimits {
        per_user: rate,
        per_container: rate,
    }
};

/// Hands out the Events table's stream records once each, in order.
#[derive(Default)]
pub struct StreamCursor(Mutex<usize>);

impl StreamCursor {
    /// The records written since the last call.
    pub async fn new_records(&self, stack: &TestStack) -> Vec<Value> {
        let all = stack
            .stream_records("EVENTS_TABLE")
            .await
            .expect("stream records");
        let mut seen = self.0.lock().unwrap();
        let new = all[*seen..].to_vec();
        *seen = all.len();
        new
    }
}

/// event-sync's handler over `records` as one stream batch: the sequence numbers it asks Lambda
/// to retry (`batchItemFailures`).
pub async fn run_event_sync(deps: &SyncDeps, records: Vec<Value>) -> Vec<String> {
    let payload: DynamodbEvent =
        serde_json::from_value(TestStack::stream_event(records)).expect("a DynamodbEvent");
    let response = sync::handle(deps, with_deadline(payload, 60))
        .await
        .expect("the handler answers");
    // Read from the answer as Lambda reads it, so the wire names are checked too.
    let answer = serde_json::to_value(&response).unwrap();
    answer["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

/// The resync function over up to `max` messages of the queue at `url`, as Lambda's SQS mapping
/// hands them over (the ones it answered for deleted): how many it got, and its answer.
pub async fn deliver_to_resync(
    resync: &ResyncDeps<resync_handler::Production>,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    max: i32,
) -> (usize, Value) {
    let (messages, event) = testkit::queues::receive_event(sqs, url, max)
        .await
        .expect("receive");
    if messages.is_empty() {
        return (0, Value::Null);
    }
    let payload: ResyncEvent = serde_json::from_value(event).expect("an SQS event");
    let answer = resync_handler::handle(resync, with_deadline(payload, 300))
        .await
        .expect("the resync handler answers");
    let answer = serde_json::to_value(&answer).unwrap();
    testkit::queues::delete_handled(sqs, url, &messages, &answer)
        .await
        .expect("delete");
    (messages.len(), answer)
}

/// Runs the resync queue's jobs one at a time until it is empty (continuations included), each
/// of which must succeed; returns how many ran.
pub async fn drain_resync(
    resync: &ResyncDeps<resync_handler::Production>,
    sqs: &aws_sdk_sqs::Client,
    url: &str,
) -> usize {
    let mut jobs = 0;
    loop {
        match deliver_to_resync(resync, sqs, url, 1).await {
            (0, _) => return jobs,
            (delivered, answer) => {
                assert_eq!(
                    answer["batchItemFailures"],
                    serde_json::json!([]),
                    "a job failed"
                );
                jobs += delivered;
            }
        }
    }
}
