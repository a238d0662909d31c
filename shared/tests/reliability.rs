//! Reliability under races and faults, end to end: the real handlers against moto's server over
//! HTTP and the Google emulator, each event-sync invocation built as `functions/event-sync` builds
//! it (its own clients, secrets cache and token cache, as a separate Lambda environment has).
//! Every test ends by comparing the Google calendar with the rows: each row's event there once,
//! nothing else.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{
    aws::Clients,
    calendar,
    config::Config,
    grants::GrantStore,
    http::{self, CallbackDeps, NothingAfterConnect, StartDeps},
    store::{DynamoFlowStore, DynamoGrantStore, Stores},
    sync::handler::SyncDeps,
};
use serde_json::{Value, json};
use testkit::{
    TestStack,
    api_gateway::{HttpApiEvent, answer_of},
    fault_proxy::{Fault, FaultProxy},
    rows,
    stack::ALICE,
};

mod common;
use common::{StreamCursor, metric_total, quick_retries, run_event_sync, stack_with_config};

// ---- the harness ---------------------------------------------------------------------------

struct Harness {
    stack: TestStack,
    config: Config,
    clients: Clients,
    start: StartDeps<DynamoFlowStore>,
    callback: CallbackDeps<http::Production<NothingAfterConnect>>,
    events_table: String,
    stream: StreamCursor,
    /// The lifecycle events the app would read, kept for the leak scan.
    tap: testkit::eventbridge::EventTap,
    events: std::sync::Mutex<Vec<Value>>,
}

impl Harness {
    async fn start() -> Self {
        let (stack, config, clients) = stack_with_config().await;
        Self {
            tap: stack.tap_events("calsync").await.expect("a lifecycle tap"),
            events: Default::default(),
            events_table: stack.table("EVENTS_TABLE").to_string(),
            start: StartDeps::new(config.clone(), &clients),
            callback: CallbackDeps::new(config.clone(), &clients, NothingAfterConnect),
            clients,
            config,
            stack,
            stream: StreamCursor::default(),
        }
    }

    /// A stack where u1 has connected as Alice.
    async fn with_alice() -> Self {
        let h = Self::start().await;
        h.connect("u1", ALICE).await;
        h
    }

    /// A fault proxy in front of moto's server, and the AWS clients that go through it.
    async fn fault_proxy(&self) -> (FaultProxy, Clients) {
        let proxy = FaultProxy::start(&self.stack.aws_endpoint).await.unwrap();
        let through_proxy = Clients::new(&testkit::aws::local_sdk_config(&proxy.endpoint).await);
        (proxy, through_proxy)
    }

    /// A new event-sync invocation environment on `clients`: what `main` builds at a cold
    /// start, with short backoffs so the tests stay quick.
    fn invocation_on(&self, clients: &Clients) -> SyncDeps {
        let mut deps = SyncDeps::from_config(&self.config, clients, calendar::DEFAULT_TIMEOUT);
        quick_retries(&mut deps.retry);
        deps
    }

    fn invocation(&self) -> SyncDeps {
        self.invocation_on(&Clients::new(&self.stack.sdk))
    }

    async fn connect(&self, user: &str, account: &str) {
        common::connect(&self.stack, &self.start, &self.callback, user, account).await;
    }

    /// Writes rows `{prefix}0..{prefix}{count}` of `user`; returns their event ids.
    async fn put_rows(&self, prefix: &str, user: &str, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..count {
            let id = format!("{prefix}{i}");
            let row = rows::event_row(&id, user, &format!("Event {i}"));
            rows::put(&self.clients.dynamodb, &self.events_table, row)
                .await
                .expect("put row");
            ids.push(id);
        }
        ids
    }

    /// The stream records written since the last call.
    async fn new_records(&self) -> Vec<Value> {
        self.stream.new_records(&self.stack).await
    }

    fn grants(&self) -> DynamoGrantStore {
        Stores::new(&self.config, &self.clients).grants()
    }

    /// The grant item's version as stored (no decryption: a plain read of one attribute).
    async fn grant_version(&self, user: &str) -> u64 {
        let item = self
            .clients
            .dynamodb
            .get_item()
            .table_name(&self.config.tables.grants)
            .key("user_id", AttributeValue::S(user.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("read the grant");
        match item.item().and_then(|i| i.get("version")) {
            Some(AttributeValue::N(n)) => n.parse().unwrap(),
            other => panic!("the grant has no version: {other:?}"),
        }
    }

    async fn control(&self, path: &str, body: Value) {
        let (status, answer) = self.stack.control_post(path, &body).await.unwrap();
        assert!(status.is_success(), "control {path}: {status} {answer}");
    }

    async fn refreshes(&self) -> u64 {
        common::refreshes(&self.stack).await
    }

    /// The calendar of `email` as `calsync_event_id` to the number of live Google events of it.
    async fn calendar(&self, email: &str) -> BTreeMap<String, usize> {
        let events = self
            .stack
            .control_get(&format!("calendars/{email}/primary/events"))
            .await
            .unwrap();
        let mut live = BTreeMap::new();
        for event in events["items"].as_array().unwrap() {
            if event["status"] == "cancelled" {
                continue;
            }
            let id = event["extendedProperties"]["private"]["calsync_event_id"]
                .as_str()
                .expect("every event calsync wrote names its row")
                .to_string();
            *live.entry(id).or_insert(0) += 1;
        }
        live
    }

    /// Nothing lost, nothing twice: `email`'s calendar holds each of `ids` once, and nothing else.
    /// And nothing leaked so far (see [`Harness::assert_nothing_leaked`]).
    async fn assert_calendar_is(&self, email: &str, ids: &[String]) {
        let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
        assert_eq!(self.calendar(email).await, expected);
        self.assert_nothing_leaked().await;
    }

    /// No secret in a log line, answer, table, lifecycle event or panic message so far.
    async fn assert_nothing_leaked(&self) {
        let new = self.tap.drain().await.expect("the lifecycle tap");
        let mut events = self.events.lock().unwrap().clone();
        events.extend(new);
        common::assert_nothing_leaked(&self.stack, &events).await;
        *self.events.lock().unwrap() = events;
    }

    /// A route of the callback function, its answer kept for the leak scan (`body` as text).
    async fn call(&self, event: HttpApiEvent) -> Value {
        let response = http::callback_router(&self.callback, event.request()).await;
        let body = format!("{:?}", response.body());
        let mut answer = answer_of(common::answered(response));
        answer["body"] = json!(body);
        answer
    }
}

/// Runs each batch in an invocation of its own, all at once (each on its own task, as Lambda
/// runs one environment per shard); every invocation's `batchItemFailures`.
async fn invoke_at_once(invocations: Vec<SyncDeps>, batches: Vec<Vec<Value>>) -> Vec<Vec<String>> {
    let tasks: Vec<_> = invocations
        .into_iter()
        .zip(batches)
        .map(|(deps, batch)| tokio::spawn(async move { run_event_sync(&deps, batch).await }))
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("an invocation panicked"));
    }
    answers
}

// ---- refresh races ---------------------------------------------------------------------------

/// How the racing invocations find the token expired.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    /// The grant says so (and Google agrees): each refreshes before its first call.
    Stored,
    /// Only Google knows: each gets 401 on its first call, then refreshes.
    AtGoogle,
}

/// `invocations` event-sync invocations at once, three records each, all holding `u1`'s expired
/// access token. Returns the number of refreshes Google saw.
async fn race(invocations: usize, expiry: Expiry) -> u64 {
    let h = Harness::with_alice().await;
    let ids = h.put_rows("race", "u1", invocations * 3).await;
    let records = h.new_records().await;
    assert_eq!(records.len(), ids.len());

    h.control("expire-access-tokens", json!({"email": ALICE}))
        .await;
    if let Expiry::Stored = expiry {
        let grants = h.grants();
        let grant = grants.get("u1").await.unwrap().unwrap();
        grants
            .save(&calsync::grants::Grant {
                access_token_expires_at: Some(chrono::Utc::now() - chrono::Duration::minutes(1)),
                ..grant
            })
            .await
            .unwrap();
    }
    let version_before = h.grant_version("u1").await;
    let refreshes_before = h.refreshes().await;

    // Every write of the grant while they run is watched: its version never goes back.
    let stop = Arc::new(AtomicBool::new(false));
    let h = Arc::new(h);
    let watcher = tokio::spawn({
        let (h, stop) = (h.clone(), stop.clone());
        async move {
            let mut versions = vec![version_before];
            while !stop.load(Ordering::SeqCst) {
                let version = h.grant_version("u1").await;
                assert!(
                    version >= *versions.last().unwrap(),
                    "the grant's version went back: {versions:?} then {version}"
                );
                if version != *versions.last().unwrap() {
                    versions.push(version);
                }
                tokio::task::yield_now().await;
            }
            versions
        }
    });

    let shared_before = metric_total("event-sync", "TokenRefreshesShared", None);
    let deps: Vec<SyncDeps> = (0..invocations).map(|_| h.invocation()).collect();
    let batches: Vec<Vec<Value>> = records.chunks(3).map(<[Value]>::to_vec).collect();
    let answers = invoke_at_once(deps, batches).await;
    stop.store(true, Ordering::SeqCst);
    let versions = watcher.await.expect("the version watcher");

    for answer in &answers {
        assert!(answer.is_empty(), "a record failed: {answers:?}");
    }
    let refreshes = h.refreshes().await - refreshes_before;
    let shared = metric_total("event-sync", "TokenRefreshesShared", None) - shared_before;
    println!(
        "refresh race: {invocations} invocations at once, token expired {expiry:?}: \
         {refreshes} refresh(es) at Google, {shared} invocation(s) used another's token"
    );
    // Every refresh that reached Google is stored once, and no write was lost on the way.
    assert_eq!(
        h.grant_version("u1").await,
        version_before + refreshes,
        "versions seen: {versions:?}"
    );
    assert_eq!(refreshes, 1, "the lease lets one invocation refresh");
    h.assert_calendar_is(ALICE, &ids).await;

    // The stored token is the one Google issued last: a later invocation needs no refresh.
    let more = h.put_rows("after", "u1", 1).await;
    assert!(
        run_event_sync(&h.invocation(), h.new_records().await)
            .await
            .is_empty()
    );
    assert_eq!(h.refreshes().await - refreshes_before, refreshes);
    h.assert_calendar_is(ALICE, &[ids, more].concat()).await;
    refreshes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_then_ten_invocations_on_one_expired_grant_refresh_once() {
    race(2, Expiry::Stored).await;
    race(10, Expiry::Stored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_invocations_meeting_401_at_once_refresh_once() {
    race(10, Expiry::AtGoogle).await;
}

// ---- faults at every dependency --------------------------------------------------------------

fn sequence(record: &Value) -> String {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What Lambda hands the function again after `failed` came back in `batchItemFailures`: the
/// batch from the lowest failed record on.
fn redelivery(records: &[Value], failed: &[String]) -> Vec<Value> {
    let first = records
        .iter()
        .position(|r| failed.contains(&sequence(r)))
        .expect("a failed record is in the batch");
    records[first..].to_vec()
}

/// Hands the function that redelivery, which must apply every record (`what` names the case).
async fn assert_redelivery_applies(
    deps: &SyncDeps,
    records: &[Value],
    failed: &[String],
    what: &str,
) {
    let redelivered = run_event_sync(deps, redelivery(records, failed)).await;
    assert!(redelivered.is_empty(), "{what}: {redelivered:?}");
}

impl Harness {
    /// An invocation one call at a time (so a queued fault meets the call the test means), three
    /// attempts per call, and a Calendar client that gives up after 300 ms.
    fn one_at_a_time(&self, clients: &Clients) -> SyncDeps {
        let mut deps = SyncDeps::from_config(&self.config, clients, Duration::from_millis(300));
        quick_retries(&mut deps.retry);
        deps.retry.cap = Duration::from_millis(100);
        deps.retry.max_attempts = 3;
        deps.concurrency = 1;
        deps
    }

    async fn fault(&self, target: &str, fault: &Value, count: u32) {
        let mut body = fault.clone();
        body["target"] = json!(target);
        body["count"] = json!(count);
        self.control("faults", body).await;
    }

    /// `fault` at `target` (`calendar` or `token`), first `brief` times (cleared within the three
    /// attempts), then three times (outlasting them), each on a new row of `u1`, whose token is
    /// expired first when the target is the token endpoint. The first row is applied in its
    /// invocation; the second is reported, missing from Google, and applied on redelivery.
    /// Returns the two rows' ids.
    async fn brief_then_outlasting(
        &self,
        deps: &SyncDeps,
        target: &str,
        fault: &Value,
        brief: u32,
        name: &str,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for (phase, count) in [("brief", brief), ("long", 3)] {
            if target == "token" {
                self.expire_token("u1", ALICE).await;
            }
            let row = self.put_rows(&format!("{phase}{name}-"), "u1", 1).await;
            self.fault(target, fault, count).await;
            let records = self.new_records().await;
            let failed = run_event_sync(deps, records.clone()).await;
            if count == brief {
                assert!(failed.is_empty(), "{target} {fault} {count}x: {failed:?}");
            } else {
                assert_eq!(failed, vec![sequence(&records[0])], "{target} {fault}");
                assert!(!self.calendar(ALICE).await.contains_key(&row[0]));
                assert_redelivery_applies(deps, &records, &failed, &format!("{target} {fault}"))
                    .await;
            }
            ids.extend(row);
        }
        ids
    }

    /// Expires `user`'s access token at Google and on the grant, so the next call refreshes.
    async fn expire_token(&self, user: &str, email: &str) {
        self.control("expire-access-tokens", json!({"email": email}))
            .await;
        let grants = self.grants();
        let grant = grants.get(user).await.unwrap().unwrap();
        grants
            .save(&calsync::grants::Grant {
                access_token_expires_at: Some(chrono::Utc::now() - chrono::Duration::minutes(1)),
                ..grant
            })
            .await
            .unwrap();
    }
}

/// Calendar faults as Google answers them: a fault that clears within the retries costs
/// nothing; one that outlasts them fails the record, which its redelivery then applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_errors_rate_limits_and_hangs_lose_nothing() {
    let h = Harness::with_alice().await;
    let deps = h.one_at_a_time(&Clients::new(&h.stack.sdk));
    let faults = [
        json!({"status": 500}),
        json!({"status": 503}),
        json!({"status": 429}),
        json!({"status": 403, "reason": "rateLimitExceeded"}),
        // Past the client's 300 ms timeout, and an error even when it comes.
        json!({"status": 503, "delay_ms": 1000}),
    ];
    let mut ids = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        let survived = h
            .brief_then_outlasting(&deps, "calendar", fault, 2, &i.to_string())
            .await;
        ids.extend(survived);
        h.assert_calendar_is(ALICE, &ids).await;
    }
    println!(
        "calendar faults survived: {} kinds, each brief and outlasting the retries",
        faults.len()
    );

    // A 429 with Retry-After: the next try waits what Google asked, not the 20 ms backoff.
    let asked = h.put_rows("asked", "u1", 1).await;
    h.fault("calendar", &json!({"status": 429, "retry_after": 1}), 1)
        .await;
    let started = std::time::Instant::now();
    assert!(
        run_event_sync(&deps, h.new_records().await)
            .await
            .is_empty()
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
    ids.extend(asked);
    h.assert_calendar_is(ALICE, &ids).await;
}

/// The token endpoint failing or hanging while the user's token needs a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors_and_hangs_lose_nothing() {
    let h = Harness::with_alice().await;
    let clients = Clients::new(&h.stack.sdk);
    let mut deps = h.one_at_a_time(&clients);
    // The token client gives up after 300 ms (10 s in production).
    deps.refresher = calsync::google_oauth::GoogleOAuth::with_http_client(
        &h.config,
        calsync::store::Stores::new(&h.config, &clients).secrets(),
        calsync::google_oauth::http_client(Duration::from_millis(300)),
    );
    let faults = [json!({"status": 500}), json!({"delay_ms": 1000})];
    let mut ids = Vec::new();
    for (i, fault) in faults.iter().enumerate() {
        let survived = h
            .brief_then_outlasting(&deps, "token", fault, 1, &i.to_string())
            .await;
        ids.extend(survived);
        h.assert_calendar_is(ALICE, &ids).await;
    }
}

/// DynamoDB throttling, failing, unreachable or silent in the middle of a batch: the records
/// it cuts off come back in `batchItemFailures`, and their redelivery applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_faults_in_the_middle_of_a_batch_lose_nothing() {
    let h = Harness::with_alice().await;
    let (proxy, through_proxy) = h.fault_proxy().await;
    let mut ids = Vec::new();
    for (i, fault) in [
        Fault::Throttle,
        Fault::ServerError,
        Fault::Refuse,
        Fault::Hang,
    ]
    .into_iter()
    .enumerate()
    {
        // A cold invocation: the batch's one state read, the grant and the secrets, then one
        // state write per record: the fault begins at the third record's write.
        let deps = h.one_at_a_time(&through_proxy);
        let batch = h.put_rows(&format!("ddb{i}-"), "u1", 5).await;
        let records = h.new_records().await;
        proxy.fail_after(6, fault);
        let failed = run_event_sync(&deps, records.clone()).await;
        let applied = h.calendar(ALICE).await;
        let cut_off = batch.iter().filter(|id| !applied.contains_key(*id)).count();
        println!(
            "{fault:?} after 6 DynamoDB calls: {} record(s) reported, {cut_off} not in Google yet",
            failed.len()
        );
        assert!(
            !failed.is_empty() && failed.len() < batch.len(),
            "{fault:?}: {} of the batch reported",
            failed.len()
        );

        proxy.set(Fault::Forward);
        assert_redelivery_applies(&deps, &records, &failed, &format!("{fault:?}")).await;
        ids.extend(batch);
        h.assert_calendar_is(ALICE, &ids).await;
    }
}

/// Secrets Manager unreachable when an invocation starts cold: every record fails with an error
/// naming the secret, and once the service is back the same environment applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_unreachable_at_cold_start_then_back() {
    let h = Harness::with_alice().await;
    let (proxy, through_proxy) = h.fault_proxy().await;
    let clients = Clients {
        secrets: through_proxy.secrets,
        ..Clients::new(&h.stack.sdk)
    };
    proxy.set(Fault::Refuse);
    // As main starts: the secrets are read during init, and their absence is the one error.
    let cold = SyncDeps::cold_start(&h.config, &clients, calendar::DEFAULT_TIMEOUT).await;
    let error = cold
        .err()
        .expect("a cold start without Secrets Manager fails")
        .to_string();
    assert!(error.contains("could not read secret"), "{error}");
    proxy.set(Fault::Forward);
    assert!(
        SyncDeps::cold_start(&h.config, &clients, calendar::DEFAULT_TIMEOUT)
            .await
            .is_ok(),
        "the next cold start reads them"
    );

    // An environment built while it was unreachable (or whose cached secrets expire while it
    // is): each record fails with the reason, and the redelivery applies them.
    let deps = h.one_at_a_time(&clients);
    let ids = h.put_rows("cold", "u1", 2).await;
    let records = h.new_records().await;
    proxy.set(Fault::Refuse);
    let logs_before = common::capture_logs().lock().unwrap().len();
    let failed = run_event_sync(&deps, records.clone()).await;
    assert_eq!(
        failed.len(),
        records.len(),
        "every record is reported: {failed:?}"
    );
    let logs = String::from_utf8_lossy(&common::capture_logs().lock().unwrap()[logs_before..])
        .into_owned();
    assert!(
        logs.contains("could not read secret"),
        "no clear error in the logs"
    );
    assert!(h.calendar(ALICE).await.is_empty());

    proxy.set(Fault::Forward);
    assert_redelivery_applies(&deps, &records, &failed, "secrets back").await;
    h.assert_calendar_is(ALICE, &ids).await;
}

/// An invocation killed while Google calls are in flight, and the whole batch delivered again
/// to a new one: no event twice, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_killed_mid_batch_and_redelivered_loses_nothing() {
    let h = Harness::with_alice().await;
    let ids = h.put_rows("kill", "u1", 6).await;
    let records = h.new_records().await;
    // Slow Google answers, so the kill lands between calls and during one.
    h.fault("calendar", &json!({"delay_ms": 300}), 4).await;
    let deps = h.one_at_a_time(&Clients::new(&h.stack.sdk));
    let batch = records.clone();
    let running = tokio::spawn(async move { run_event_sync(&deps, batch).await });
    loop {
        let stats = h.stack.control_get("stats").await.unwrap();
        if stats["calendar"]["insert"].as_u64().unwrap() >= 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    let applied = h.calendar(ALICE).await.len();
    println!("killed with {applied} of {} events in Google", ids.len());
    assert!(applied < ids.len());

    assert!(
        run_event_sync(&h.one_at_a_time(&Clients::new(&h.stack.sdk)), records)
            .await
            .is_empty()
    );
    h.assert_calendar_is(ALICE, &ids).await;
}

// ---- load on the stream path -----------------------------------------------------------------

/// One stream batch of 1,000 records across 100 users (ten rows each), every user's access token
/// expired at Google beforehand: one invocation as `main` builds it applies them all, each once
/// in its user's calendar, with one refresh per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_record_batch_across_a_hundred_users_applies_each_once() {
    use futures::{StreamExt as _, stream};
    const USERS: usize = 100;
    const ROWS_EACH: usize = 10;
    let h = Harness::start().await;
    let accounts: Vec<(String, String)> = (0..USERS)
        .map(|i| (format!("load{i}"), format!("load{i}@example.com")))
        .collect();
    for (user, email) in &accounts {
        h.control("accounts", json!({"email": email})).await;
        h.connect(user, email).await;
    }
    // Written concurrently, as an app's many writers would; the stream orders them per item.
    let ids: Vec<Vec<String>> = stream::iter(&accounts)
        .map(|(user, _)| {
            let h = &h;
            async move { h.put_rows(&format!("{user}-"), user, ROWS_EACH).await }
        })
        .buffered(8)
        .collect()
        .await;
    let records = h.new_records().await;
    assert_eq!(records.len(), USERS * ROWS_EACH);
    for (_, email) in &accounts {
        h.control("expire-access-tokens", json!({"email": email}))
            .await;
    }
    let stats_before = h.stack.control_get("stats").await.unwrap();

    let unauthorized_before = metric_total("event-sync", "GoogleCallsUnauthorized", None);
    let started = std::time::Instant::now();
    let failed = run_event_sync(&h.invocation(), records).await;
    let wall = started.elapsed();
    assert!(failed.is_empty(), "{} record(s) failed", failed.len());

    let stats = h.stack.control_get("stats").await.unwrap();
    let delta = |path: &[&str]| {
        let read = |v: &Value| path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap();
        read(&stats) - read(&stats_before)
    };
    let refreshes = delta(&["token", "refresh_token"]);
    let inserts = delta(&["calendar", "insert"]);
    let calls: u64 = ["insert", "update", "patch", "delete", "get", "list"]
        .iter()
        .map(|call| delta(&["calendar", call]))
        .sum();
    let unauthorized =
        metric_total("event-sync", "GoogleCallsUnauthorized", None) - unauthorized_before;
    println!(
        "stream load: {} records across {USERS} users in one batch: applied in {:.1} s \
         ({:.0} records/s), {refreshes} refreshes, {calls} Calendar calls ({inserts} inserts, \
         {unauthorized} of them answered 401 before their user's refresh)",
        USERS * ROWS_EACH,
        wall.as_secs_f64(),
        (USERS * ROWS_EACH) as f64 / wall.as_secs_f64()
    );
    assert_eq!(refreshes, USERS as u64, "one refresh per user in a batch");
    // Only the calls that met the expired token were tried again.
    assert_eq!(inserts, (USERS * ROWS_EACH) as u64 + unauthorized as u64);
    for ((_, email), ids) in accounts.iter().zip(&ids) {
        let expected: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 1)).collect();
        assert_eq!(h.calendar(email).await, expected, "{email}'s calendar");
    }
    h.assert_calendar_is(&accounts[0].1, &ids[0]).await;
}

// ---- secrets never leak ----------------------------------------------------------------------

/// What the other scenarios of this file do not pass through, each ending with the leak scan
/// every scenario here ends with: a connect (every answer kept), its callback replayed (its flow
/// used, the code in its query), status, a grant revoked at Google (the refresh refused, the changes
/// parked, `Grant Needs Reauth` and `Sync Parked` sent), a reconnect, and a disconnect (the grant
/// revoked at Google, `Grant Disconnected`). Every token, code and the client secret carry the
/// emulator's sentinel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reauth_and_disconnect_leak_no_secret() {
    let h = Harness::start().await;
    let callback = h
        .stack
        .connect_through_events(
            "u1",
            ALICE,
            async |event| {
                Ok(answer_of(common::answered(
                    http::start_router(&h.start, event.request()).await,
                )))
            },
            async |event| Ok(h.call(event).await),
        )
        .await
        .expect("connected");
    let replayed = h.call(callback).await;
    // Its flow is gone: refused before the used code reaches Google.
    assert_eq!(replayed["statusCode"], 400, "{replayed}");
    let status = h
        .call(HttpApiEvent::get("/oauth/google/status").user("u1"))
        .await;
    assert_eq!(status["statusCode"], 200, "{status}");
    h.assert_nothing_leaked().await;

    // Revoked at Google: the next change needs a refresh, which Google refuses.
    h.control("revoke", json!({"email": ALICE})).await;
    h.expire_token("u1", ALICE).await;
    h.put_rows("revoked", "u1", 2).await;
    assert!(
        run_event_sync(&h.invocation(), h.new_records().await)
            .await
            .is_empty()
    );
    let status = h
        .call(HttpApiEvent::get("/oauth/google/status").user("u1"))
        .await;
    assert!(status.to_string().contains("needs_reauth"), "{status}");
    h.assert_nothing_leaked().await;
    let kinds: Vec<Value> = h
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["detail-type"].clone())
        .collect();
    assert!(kinds.contains(&json!("Grant Needs Reauth")), "{kinds:?}");

    h.connect("u1", ALICE).await;
    let gone = h
        .call(
            HttpApiEvent::new(
                lambda_http::http::Method::DELETE,
                "/oauth/google/connection",
            )
            .user("u1"),
        )
        .await;
    assert!(gone["statusCode"].as_u64().unwrap() < 300, "{gone}");
    h.assert_nothing_leaked().await;
    let kinds: Vec<Value> = h
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["detail-type"].clone())
        .collect();
    assert!(kinds.contains(&json!("Grant Disconnected")), "{kinds:?}");
    println!(
        "leak scan: {} lifecycle events, {} issued secrets, every log line, answer and table item: \
         no sentinel, no secret",
        kinds.len(),
        common::issued_secrets(&h.stack).await.len()
    );
}
