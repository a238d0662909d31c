//! What heals the gaps the stream leaves (issue 12), end to end against moto's server and the
//! Google emulator over HTTP: a moved event's old copy whose delete waits for its owner's grant.
//! Users connect through the real start and callback handlers; resync jobs run from the real
//! queue through the resync handler, as the SQS event source mapping would run them.

use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{
    aws::Clients,
    calendar,
    config::Config,
    http::{self, StartDeps},
    mapping::google_event_id,
    resync::handler::{self as resync_handler, ResyncDeps, ResyncEvent},
    store::DynamoFlowStore,
    sync::handler::SyncDeps,
};
use lambda_http::Body;
use serde_json::{Value, json};
use testkit::{
    TestStack,
    api_gateway::HttpApiEvent,
    invocation::with_deadline,
    rows,
    stack::{ALICE, BOB},
};

mod common;
use common::{
    QueueingCallback, metric_total, queueing_callback, stack_with_config, sync_and_resync,
};

struct Stack {
    stack: TestStack,
    config: Config,
    clients: Clients,
    sync: SyncDeps,
    start: StartDeps<DynamoFlowStore>,
    callback: QueueingCallback,
    resync: ResyncDeps<resync_handler::Production>,
    /// Stream records already handed to event-sync.
    seen: usize,
}

impl Stack {
    async fn start() -> Self {
        let (stack, config, clients) = stack_with_config().await;
        let (sync, resync) = sync_and_resync(&config, &clients);
        Self {
            start: StartDeps::new(config.clone(), &clients),
            callback: queueing_callback(&config, &clients),
            sync,
            resync,
            stack,
            config,
            clients,
            seen: 0,
        }
    }

    async fn put_row(&self, event_id: &str, user: &str, title: &str, calendar: Option<&str>) {
        let mut row = rows::event_row(event_id, user, title);
        if let Some(calendar) = calendar {
            row.insert("calendar_id".into(), AttributeValue::S(calendar.into()));
        }
        let table = self.stack.table("EVENTS_TABLE");
        rows::put(&self.clients.dynamodb, table, row)
            .await
            .expect("put row");
    }

    /// The stream records written since the last call.
    async fn new_records(&mut self) -> Vec<Value> {
        let all = self.stack.stream_records("EVENTS_TABLE").await.unwrap();
        let records = all[self.seen..].to_vec();
        self.seen = all.len();
        assert!(!records.is_empty(), "the stream holds new records");
        records
    }

    /// Hands the stream's new records to event-sync, as one batch; returns its failures.
    async fn sync_new(&mut self) -> Vec<String> {
        let records = self.new_records().await;
        self.sync(records).await
    }

    /// Hands `records` to event-sync, as one batch; returns its failures.
    async fn sync(&self, records: Vec<Value>) -> Vec<String> {
        common::run_event_sync(&self.sync, records).await
    }

    /// Runs the resync queue's jobs one at a time until it is empty; returns how many ran.
    async fn drain_resync(&self) -> usize {
        common::drain_resync(
            &self.resync,
            &self.clients.sqs,
            &self.config.resync_queue_url,
        )
        .await
    }

    /// Puts Lambda's on-failure records of these batches on the on-failure queue, runs the
    /// resync function on them as one invocation, then runs the resync jobs that queued; returns
    /// how many jobs ran.
    async fn consume_failures(&self, failures: &[Value]) -> usize {
        let url = self
            .config
            .resync_queue_url
            .replace("ResyncQueue", "EventSyncFailureQueue");
        for failure in failures {
            let sent = self.clients.sqs.send_message().queue_url(&url);
            sent.message_body(failure.to_string()).send().await.unwrap();
        }
        let messages = testkit::queues::receive(&self.clients.sqs, &url, 10, 0)
            .await
            .unwrap();
        assert_eq!(messages.len(), failures.len());
        let arn = testkit::queues::arn_of_url(&url, testkit::aws::REGION);
        let event = testkit::queues::lambda_event(&messages, &arn, testkit::aws::REGION);
        let payload: ResyncEvent = serde_json::from_value(event).unwrap();
        let answer = resync_handler::handle(&self.resync, with_deadline(payload, 300))
            .await
            .expect("resync answers");
        assert!(answer.batch_item_failures.is_empty());
        let answer = serde_json::to_value(answer).unwrap();
        testkit::queues::delete_handled(&self.clients.sqs, &url, &messages, &answer)
            .await
            .unwrap();
        self.drain_resync().await
    }

    /// Connects `user` as `account` through the real handlers, then runs the resync it queued.
    async fn connect(&self, user: &str, account: &str) {
        common::connect(&self.stack, &self.start, &self.callback, user, account).await;
        assert!(
            self.drain_resync().await >= 1,
            "the connect queued a resync"
        );
    }

    async fn status(&self, user: &str) -> Value {
        let request = HttpApiEvent::get("/oauth/google/status")
            .user(user)
            .request();
        match common::answered(http::callback_router(&self.callback, request).await).body() {
            Body::Text(text) => serde_json::from_str(text).unwrap(),
            other => panic!("unexpected body {other:?}"),
        }
    }

    async fn control(&self, path: &str, body: Value) {
        let (status, _) = self.stack.control_post(path, &body).await.unwrap();
        assert!(status.is_success(), "control {path}: {status}");
    }

    /// The status of the Google event of `event_id` in `email`'s `calendar` (`cancelled` once
    /// deleted), if Google ever held it.
    async fn google_status(&self, email: &str, calendar: &str, event_id: &str) -> Option<String> {
        let id = google_event_id(event_id);
        let listed = self
            .stack
            .control_get(&format!("calendars/{email}/{calendar}/events"))
            .await
            .unwrap();
        listed["items"]
            .as_array()?
            .iter()
            .find(|e| e["id"] == id.as_str())
            .map(|e| e["status"].as_str().unwrap().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_away_from_a_revoked_grant_deletes_the_old_copy_once_its_owner_reconnects() {
    let mut s = Stack::start().await;
    s.connect("u1", ALICE).await;
    s.connect("u2", BOB).await;
    s.control("calendars", json!({"email": BOB, "calendar_id": "team"}))
        .await;
    s.put_row("m1", "u1", "Handover", None).await;
    s.put_row("stay", "u1", "Stays with Alice", None).await;
    assert_eq!(s.sync_new().await, Vec::<String>::new());

    // Alice removes the app's access in her Google account; then her event moves to Bob.
    s.control("revoke", json!({"email": ALICE})).await;
    s.put_row("m1", "u2", "Handover", Some("team")).await;
    assert_eq!(
        s.sync_new().await,
        Vec::<String>::new(),
        "parking fails nothing"
    );
    assert_eq!(
        s.google_status(BOB, "team", "m1").await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        s.google_status(ALICE, "primary", "m1").await.as_deref(),
        Some("confirmed"),
        "Alice's copy cannot be deleted without her grant"
    );
    let status = s.status("u1").await;
    assert_eq!(status["status"], "needs_reauth");
    assert_eq!(status["parked_changes"], 1, "the delete waits, visibly");
    assert_eq!(status["last_error"]["event_id"], "m1");

    // Alice reconnects: her resync deletes the copy she no longer owns, and nothing else.
    s.connect("u1", ALICE).await;
    assert_eq!(
        s.google_status(ALICE, "primary", "m1").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        s.google_status(ALICE, "primary", "stay").await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        s.google_status(BOB, "team", "m1").await.as_deref(),
        Some("confirmed")
    );
    assert!(metric_total("resync", "ResyncApplied", None) >= 1.0);
    let status = s.status("u1").await;
    assert_eq!(status["parked_changes"], 0);
    assert_eq!(status["last_error"], Value::Null);
    common::assert_nothing_leaked(&s.stack, &[]).await;
}

/// Lambda's on-failure record of the batch `records`, arrived at `arrived` (default: as the
/// stream says).
fn failure(records: &[Value], arrived: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    let mut failure = testkit::streams::failure_record(
        records,
        testkit::streams::GiveUp::RecordAgeExceeded,
        11,
        "shardId-00000001",
        "arn:aws:dynamodb:eu-west-1:123456789012:table/events/stream/1",
        "arn:aws:lambda:eu-west-1:123456789012:function:event-sync",
    );
    if let Some(at) = arrived {
        failure["DDBStreamBatchInfo"]["approximateArrivalOfLastRecord"] = json!(at.to_rfc3339());
    }
    failure
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_records_arriving_apart_start_one_sweep_while_it_covers_them() {
    let mut s = Stack::start().await;
    s.connect("u1", ALICE).await;
    s.put_row("r1", "u1", "Given up on", None).await;
    let given_up = s.new_records().await;
    // The stream gave up on the batch hours after it arrived; its record starts a sweep, which
    // queues the one connected user.
    let hours_ago = Some(chrono::Utc::now() - chrono::Duration::hours(6));
    assert_eq!(
        s.consume_failures(&[failure(&given_up, hours_ago)]).await,
        1
    );
    assert_eq!(
        s.google_status(ALICE, "primary", "r1").await.as_deref(),
        Some("confirmed")
    );

    // Another shard's record of a batch that arrived before that sweep started, in another
    // invocation: the sweep covers it, none starts.
    assert_eq!(
        s.consume_failures(&[failure(&given_up, hours_ago)]).await,
        0
    );
    assert_eq!(metric_total("resync", "SweepsCovered", None), 1.0);

    // A batch that arrived after the sweep started is not covered: it sweeps again.
    s.put_row("r2", "u1", "Given up on later", None).await;
    let later = s.new_records().await;
    assert_eq!(s.consume_failures(&[failure(&later, None)]).await, 1);
    assert_eq!(
        s.google_status(ALICE, "primary", "r2").await.as_deref(),
        Some("confirmed")
    );
    // A record that does not say when its batch arrived always sweeps.
    let mut unknown = failure(&given_up, None);
    unknown["DDBStreamBatchInfo"]
        .as_object_mut()
        .unwrap()
        .remove("approximateArrivalOfLastRecord");
    assert_eq!(s.consume_failures(&[unknown]).await, 1);
    assert_eq!(metric_total("resync", "SweepsCovered", None), 1.0);
    common::assert_nothing_leaked(&s.stack, &[]).await;
}

impl Stack {
    /// The user's Google access token, as the grant holds it, for acting as the user in Google.
    async fn access_token(&self, user: &str) -> secrecy::SecretString {
        use calsync::grants::GrantStore;
        let grants = calsync::store::Stores::new(&self.config, &self.clients).grants();
        let grant = grants.get(user).await.unwrap().expect("a grant");
        grant.access_token.expect("an access token")
    }

    /// The Google event of `event_id` in `email`'s primary calendar, as Google holds it.
    async fn google_event(&self, email: &str, event_id: &str) -> Value {
        let id = google_event_id(event_id);
        let listed = self
            .stack
            .control_get(&format!("calendars/{email}/primary/events"))
            .await
            .unwrap();
        let items = listed["items"].as_array().unwrap();
        items
            .iter()
            .find(|e| e["id"] == id.as_str())
            .cloned()
            .unwrap_or_default()
    }

    /// Calendar writes Google has served (insert, update, patch, delete).
    async fn writes(&self) -> u64 {
        let stats = self.stack.control_get("stats").await.unwrap();
        ["insert", "update", "patch", "delete"]
            .iter()
            .map(|k| stats["calendar"][k].as_u64().unwrap())
            .sum()
    }

    /// Queues the daily sweep's job for `user` and runs the resync jobs.
    async fn resync(&self, user: &str) -> usize {
        let job = serde_json::to_string(&calsync::resync::Job::user(user)).unwrap();
        let queue = self
            .clients
            .sqs
            .send_message()
            .queue_url(&self.config.resync_queue_url);
        queue.message_body(job).send().await.unwrap();
        self.drain_resync().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_deletes_orphans_and_restores_what_was_deleted_or_changed_in_google() {
    use calsync::calendar::{Calendar, CalendarClient};
    let mut s = Stack::start().await;
    s.connect("u1", ALICE).await;
    s.put_row("keep", "u1", "Untouched", None).await;
    s.put_row("undo", "u1", "Deleted by the user in Google", None)
        .await;
    s.put_row("edit", "u1", "Edited by the user in Google", None)
        .await;
    assert_eq!(s.sync_new().await, Vec::<String>::new());

    // Alice acts in Google: deletes one event, retitles another, adds one of her own. And
    // Google holds a copy calsync wrote of a row that is gone (a delete that never reached it).
    let google = CalendarClient::new(
        s.config.google.calendar_api_url.clone(),
        calendar::DEFAULT_TIMEOUT,
    );
    let token = s.access_token("u1").await;
    let undo = google_event_id("undo");
    google.delete(&token, "primary", &undo).await.unwrap();
    let mut edited = s.google_event(ALICE, "edit").await;
    edited["summary"] = json!("Alice's own title");
    let edit = google_event_id("edit");
    google
        .update(&token, "primary", &edit, &edited)
        .await
        .unwrap();
    let own = json!({
        "id": "a11ce0000001", "summary": "Alice's own",
        "start": {"dateTime": "2026-12-01T09:00:00Z"}, "end": {"dateTime": "2026-12-01T10:00:00Z"},
    });
    google.insert(&token, "primary", &own).await.unwrap();
    let mut orphan = s.google_event(ALICE, "keep").await;
    orphan["id"] = json!(google_event_id("gone"));
    orphan["extendedProperties"]["private"]["calsync_event_id"] = json!("gone");
    orphan["summary"] = json!("A row that is gone");
    for field in [
        "iCalUID", "etag", "htmlLink", "created", "updated", "sequence",
    ] {
        orphan.as_object_mut().unwrap().remove(field);
    }
    google.insert(&token, "primary", &orphan).await.unwrap();
    let keep = s.google_event(ALICE, "keep").await;

    let writes = s.writes().await;
    assert_eq!(s.resync("u1").await, 1);
    assert_eq!(s.google_event(ALICE, "gone").await["status"], "cancelled");
    let undone = s.google_event(ALICE, "undo").await;
    assert_eq!(
        (undone["status"].as_str(), undone["summary"].as_str()),
        (Some("confirmed"), Some("Deleted by the user in Google"))
    );
    assert_eq!(
        s.google_event(ALICE, "edit").await["summary"],
        "Edited by the user in Google"
    );
    // Nothing else is touched: the event in sync keeps its etag, Alice's own event stays.
    assert_eq!(s.google_event(ALICE, "keep").await, keep);
    let listed = s
        .stack
        .control_get(&format!("calendars/{ALICE}/primary/events"))
        .await
        .unwrap();
    let own = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "a11ce0000001");
    assert_eq!(own.unwrap()["status"], "confirmed");
    assert_eq!(s.writes().await - writes, 3, "one delete and two updates");
    assert_eq!(metric_total("resync", "ReconcileOrphansDeleted", None), 1.0);
    assert_eq!(metric_total("resync", "ReconcileRestored", None), 2.0);

    // Healed: the next run writes nothing.
    let writes = s.writes().await;
    assert_eq!(s.resync("u1").await, 1);
    assert_eq!(s.writes().await, writes);
    common::assert_nothing_leaked(&s.stack, &[]).await;
}

impl Stack {
    /// The token keyring secret, as JSON.
    async fn keyring(&self) -> Value {
        let secrets = aws_sdk_secretsmanager::Client::new(&self.stack.sdk);
        let secret = secrets
            .get_secret_value()
            .secret_id(&self.config.secrets.token_keys);
        let text = secret.send().await.unwrap();
        serde_json::from_str(text.secret_string().unwrap()).unwrap()
    }

    async fn put_keyring(&self, keyring: &Value) {
        let secrets = aws_sdk_secretsmanager::Client::new(&self.stack.sdk);
        let put = secrets
            .put_secret_value()
            .secret_id(&self.config.secrets.token_keys);
        put.secret_string(keyring.to_string()).send().await.unwrap();
    }

    /// The resync function invoked with one user job for each of `users`, as the queue's event
    /// source mapping delivers them; returns the messages it failed.
    async fn resync_users(&self, users: &[&str]) -> usize {
        let records: Vec<Value> = users
            .iter()
            .map(|user| {
                let job = serde_json::to_string(&calsync::resync::Job::user(user)).unwrap();
                json!({"messageId": format!("job-{user}"), "body": job,
                       "attributes": {}, "messageAttributes": {}})
            })
            .collect();
        let payload: ResyncEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
        let answer = resync_handler::handle(&self.resync, with_deadline(payload, 300))
            .await
            .expect("resync answers");
        answer.batch_item_failures.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_load_fails_no_request() {
    use calsync::grants::{GrantStatus, GrantStore};
    use futures::future::join_all;
    let mut s = Stack::start().await;
    s.connect("u1", ALICE).await;
    s.connect("u2", BOB).await;
    let old_key = s.keyring().await["current"].as_str().unwrap().to_string();
    let sealed_key = |item: &std::collections::HashMap<String, AttributeValue>| {
        let sealed = item["refresh_token_sealed"].as_s().unwrap();
        sealed.split('.').nth(1).unwrap().to_string()
    };

    for i in 0..3 {
        s.put_row(&format!("b{i}"), "u2", "Bob's, before the rotation", None)
            .await;
    }
    assert_eq!(s.sync_new().await, Vec::<String>::new());

    // The README's steps, each while both functions' warm instances (`s.sync`, `s.resync`,
    // whose caches hold the keyring from before) run invocations side by side: two event-sync
    // batches of Alice's new rows, and two resyncs of Bob (each keeps his grant alive, re-seals
    // it, and reconciles his rows; separate users, so no invocation loses a race to another and
    // retries). Every step expires the access tokens, so each invocation refreshes and seals the
    // new token with the keyring it holds.
    use base64::Engine;
    let new_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let steps = [
        "add a key",
        "switch current",
        "re-seal",
        "remove the old key",
    ];
    for (n, step) in steps.into_iter().enumerate() {
        let mut keyring = s.keyring().await;
        match step {
            "add a key" => keyring["keys"]["k2"] = json!(new_key),
            "switch current" => keyring["current"] = json!("k2"),
            "remove the old key" => {
                keyring["keys"].as_object_mut().unwrap().remove(&old_key);
            }
            _ => {}
        }
        s.put_keyring(&keyring).await;
        if step == "re-seal" {
            // The README's wait: a secrets cache's lifetime after the switch, every instance
            // holds the keyring whose current key is the new one (here: new instances).
            (s.sync, s.resync) = sync_and_resync(&s.config, &s.clients);
        }
        for email in [ALICE, BOB] {
            s.control("expire-access-tokens", json!({"email": email}))
                .await;
        }
        for i in 0..6 {
            s.put_row(&format!("a{n}{i}"), "u1", step, None).await;
        }
        let records = s.new_records().await;
        let (first, second) = records.split_at(records.len() / 2);
        let syncs = join_all([s.sync(first.to_vec()), s.sync(second.to_vec())]);
        let resyncs = join_all([s.resync_users(&["u2"]), s.resync_users(&["u2"])]);
        let (synced, resynced) = tokio::join!(syncs, resyncs);
        assert!(synced.iter().all(Vec::is_empty), "{step}: {synced:?}");
        assert_eq!(resynced, [0, 0], "{step}");
        if step == "re-seal" {
            // The step itself: the sweep's resync of every user re-seals each grant under the
            // current key (Bob's resyncs above did his already).
            assert_eq!(s.resync_users(&["u1", "u2"]).await, 0);
        }
        let ids = (0..6).map(|i| (ALICE, format!("a{n}{i}")));
        for (email, id) in ids.chain((0..3).map(|i| (BOB, format!("b{i}")))) {
            assert_eq!(
                s.google_status(email, "primary", &id).await.as_deref(),
                Some("confirmed"),
                "{step}: {id}"
            );
        }
        for user in ["u1", "u2"] {
            assert_eq!(s.status(user).await["parked_changes"], 0, "{step}");
        }
    }

    // Every grant is sealed under the new key, and a cold instance (a fresh keyring without the
    // old key) opens it as active.
    let grants = calsync::store::Stores::new(&s.config, &s.clients).grants();
    for user in ["u1", "u2"] {
        let item = s
            .clients
            .dynamodb
            .get_item()
            .table_name(s.stack.table("GrantsTable"))
            .key("user_id", AttributeValue::S(user.into()))
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        assert_eq!(sealed_key(&item), "k2");
        let grant = grants.get(user).await.unwrap().unwrap();
        assert_eq!(grant.status, GrantStatus::Active);
    }
    // Each re-seal the resyncs made is counted, as an operator reads it off the dashboard.
    let resealed = common::logs_text()
        .matches("grant re-sealed under the current key")
        .count();
    assert!(resealed >= 1, "no resync re-sealed a grant");
    assert_eq!(
        metric_total("resync", "GrantsResealed", None),
        resealed as f64
    );
    common::assert_nothing_leaked(&s.stack, &[]).await;
}
