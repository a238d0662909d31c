//! event-sync end to end: rows written to the Events table in moto's DynamoDB, the records its
//! stream really holds handed to `sync::handle` as Lambda's `DynamodbEvent`, and Google played by
//! the project's emulator over HTTP. Users connect through the real start and callback handlers.
//!
//! The emulator's faults apply to the next calls whatever event they are for, so the tests that
//! need one event to fail and another to pass order the batch and run it with concurrency 1.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{
    aws::Clients,
    calendar,
    config::Config,
    grants::{Grant, GrantStatus, GrantStore},
    http::{self, StartDeps},
    mapping::google_event_id,
    resync::handler::{self as resync_handler, ResyncDeps},
    store::{DynamoFlowStore, Stores},
    sync::handler::SyncDeps,
    sync_state::{SyncState, SyncStateStore, SyncStatus},
};
use lambda_http::Body;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use testkit::{
    TestStack,
    api_gateway::HttpApiEvent,
    rows,
    stack::{ALICE, BOB},
};

mod common;
use common::{StreamCursor, metric_total};

const APP_CALENDAR: &str = "Acme events";

// ---- the harness ---------------------------------------------------------------------------

struct Harness {
    stack: TestStack,
    config: Config,
    clients: Clients,
    deps: SyncDeps,
    start: StartDeps<DynamoFlowStore>,
    callback: common::QueueingCallback,
    resync: ResyncDeps<resync_handler::Production>,
    events_table: String,
    stream: StreamCursor,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A stack in `CALENDAR_MODE=dedicated`, its calendar named [`APP_CALENDAR`].
    async fn dedicated() -> Self {
        Self::start_with(&[
            ("CalendarMode", "dedicated"),
            ("CalendarName", APP_CALENDAR),
        ])
        .await
    }

    async fn start_with(parameters: &[(&str, &str)]) -> Self {
        let (stack, config, clients) = common::stack_with_parameters(parameters).await;
        let (deps, resync) = common::sync_and_resync(&config, &clients);
        Self {
            events_table: stack.table("EVENTS_TABLE").to_string(),
            start: StartDeps::new(config.clone(), &clients),
            callback: common::queueing_callback(&config, &clients),
            resync,
            deps,
            clients,
            config,
            stack,
            stream: StreamCursor::default(),
        }
    }

    // -- the app's side --

    async fn put_row(
        &self,
        event_id: &str,
        user: &str,
        title: &str,
        extra: &[(&str, AttributeValue)],
    ) {
        let mut row = rows::event_row(event_id, user, title);
        for (k, v) in extra {
            row.insert(k.to_string(), v.clone());
        }
        rows::put(&self.clients.dynamodb, &self.events_table, row)
            .await
            .expect("put row");
    }

    async fn delete_row(&self, event_id: &str) {
        self.clients
            .dynamodb
            .delete_item()
            .table_name(&self.events_table)
            .key("event_id", AttributeValue::S(event_id.into()))
            .send()
            .await
            .expect("delete row");
    }

    /// The stream records written since the last call.
    async fn new_records(&self) -> Vec<Value> {
        self.stream.new_records(&self.stack).await
    }

    async fn run_with(&self, deps: &SyncDeps, records: Vec<Value>) -> Vec<String> {
        common::run_event_sync(deps, records).await
    }

    async fn deliver(&self, url: &str, max: i32) -> (usize, Value) {
        common::deliver_to_resync(&self.resync, &self.clients.sqs, url, max).await
    }

    async fn drain_resync(&self) -> usize {
        common::drain_resync(
            &self.resync,
            &self.clients.sqs,
            &self.config.resync_queue_url,
        )
        .await
    }

    async fn run(&self, records: Vec<Value>) -> Vec<String> {
        self.run_with(&self.deps, records).await
    }

    async fn sync_new(&self) -> Vec<String> {
        let records = self.new_records().await;
        assert!(!records.is_empty(), "the stream holds new records");
        self.run(records).await
    }

    /// The stores as the functions build them.
    fn stores(&self) -> Stores {
        Stores::new(&self.config, &self.clients)
    }

    async fn state(&self, event_id: &str) -> Option<SyncState> {
        self.stores().sync_state().get(event_id).await.unwrap()
    }

    async fn grant(&self, user: &str) -> Grant {
        self.stores()
            .grants()
            .get(user)
            .await
            .unwrap()
            .expect("a grant")
    }

    // -- Google's side --

    async fn control(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.stack.control_post(path, &body).await.unwrap();
        assert!(status.is_success(), "control {path}: {status}");
        answer
    }

    async fn control_get(&self, path: &str) -> Value {
        self.stack.control_get(path).await.unwrap()
    }

    async fn stats(&self) -> Value {
        self.control_get("stats").await
    }

    async fn writes(&self) -> u64 {
        let c = &self.stats().await["calendar"];
        ["insert", "update", "patch", "delete"]
            .iter()
            .map(|k| c[k].as_u64().unwrap())
            .sum()
    }

    async fn refreshes(&self) -> u64 {
        common::refreshes(&self.stack).await
    }

    /// Every event of `email`'s primary calendar, cancelled ones included.
    async fn calendar(&self, email: &str) -> Vec<Value> {
        self.stack.calendar_events(email, "primary").await.unwrap()
    }

    /// The Google event of `event_id` in `email`'s calendar, cancelled ones included.
    async fn google(&self, email: &str, calendar_id: &str, event_id: &str) -> Option<Value> {
        let id = google_event_id(event_id);
        let events = self
            .stack
            .calendar_events(email, calendar_id)
            .await
            .unwrap();
        events.into_iter().find(|e| e["id"] == id.as_str())
    }

    /// The live (not cancelled) Google event of `event_id` has `summary`; `None`: there is none.
    async fn assert_live(&self, email: &str, event_id: &str, summary: Option<&str>) {
        let live = self.live_summary(email, event_id).await;
        assert_eq!(live.as_deref(), summary, "{event_id} in {email}'s calendar");
    }

    /// The summary of the live (not cancelled) Google event, if any.
    async fn live_summary(&self, email: &str, event_id: &str) -> Option<String> {
        let event = self.google(email, "primary", event_id).await?;
        if event["status"] == "cancelled" {
            return None;
        }
        Some(event["summary"].as_str()?.to_string())
    }

    // -- connecting, through the real start and callback handlers --

    /// Connects, then runs the resync the connect queued (as the resync function would).
    async fn connect(&self, user: &str, account: &str) {
        self.connect_only(user, account).await;
        assert!(
            self.drain_resync().await >= 1,
            "the connect queued a resync"
        );
    }

    async fn connect_only(&self, user: &str, account: &str) {
        common::connect(&self.stack, &self.start, &self.callback, user, account).await;
    }

    /// `GET /oauth/google/status` of `user`, through the real handler.
    async fn status_json(&self, user: &str) -> Value {
        let status = common::answered(
            http::callback_router(
                &self.callback,
                HttpApiEvent::get("/oauth/google/status")
                    .user(user)
                    .request(),
            )
            .await,
        );
        match status.body() {
            Body::Text(text) => serde_json::from_str(text).unwrap(),
            other => panic!("unexpected body {other:?}"),
        }
    }

    /// `DELETE /oauth/google/connection` of `user`, through the real handler.
    async fn disconnect(&self, user: &str) -> lambda_http::Response<Body> {
        let request = HttpApiEvent::new(
            lambda_http::http::Method::DELETE,
            "/oauth/google/connection",
        );
        common::answered(http::callback_router(&self.callback, request.user(user).request()).await)
    }

    /// The leak scan ([`common::assert_nothing_leaked`]; no lifecycle tap on this harness).
    async fn assert_no_leaks(&self) {
        assert!(common::issued_secrets(&self.stack).await.len() >= 2);
        common::assert_nothing_leaked(&self.stack, &[]).await;
    }
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn seq(record: &Value) -> String {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---- the cases of issue 4 ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_modify_unsynced_modify_and_remove() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;

    h.put_row(
        "e1",
        "u1",
        "Planning",
        &[("location", s("Room 1")), ("time_zone", s("Europe/Berlin"))],
    )
    .await;
    assert!(h.sync_new().await.is_empty());
    let event = h.google(ALICE, "primary", "e1").await.expect("inserted");
    assert_eq!(event["summary"], "Planning");
    assert_eq!(event["location"], "Room 1");
    assert_eq!(event["start"]["timeZone"], "Europe/Berlin");
    assert_eq!(
        event["extendedProperties"]["private"]["calsync_event_id"],
        "e1"
    );
    assert_eq!(h.state("e1").await.unwrap().status, SyncStatus::Synced);

    // A full replace: the cleared location is cleared in Google too.
    h.put_row(
        "e1",
        "u1",
        "Planning v2",
        &[("time_zone", s("Europe/Berlin"))],
    )
    .await;
    assert!(h.sync_new().await.is_empty());
    let event = h.google(ALICE, "primary", "e1").await.unwrap();
    assert_eq!(event["summary"], "Planning v2");
    assert!(event.get("location").is_none(), "{event}");

    let writes = h.writes().await;
    h.put_row(
        "e1",
        "u1",
        "Planning v2",
        &[("time_zone", s("Europe/Berlin")), ("color", s("red"))],
    )
    .await;
    let records = h.new_records().await;
    assert_eq!(records.len(), 1);
    assert!(h.run(records.clone()).await.is_empty());
    assert_eq!(
        h.writes().await,
        writes,
        "an unsynced attribute made a Calendar call"
    );
    assert_eq!(
        h.state("e1").await.unwrap().last_sequence.unwrap().as_str(),
        seq(&records[0]).trim_start_matches('0')
    );

    h.delete_row("e1").await;
    assert!(h.sync_new().await.is_empty());
    h.assert_live(ALICE, "e1", None).await;
    let state = h.state("e1").await.unwrap();
    assert_eq!(state.status, SyncStatus::Deleted);
    assert_eq!(state.google_event_id, None);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_of_an_event_google_deleted_and_delete_then_insert() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.put_row("e2", "u1", "Dentist", &[]).await;
    assert!(h.sync_new().await.is_empty());

    // The user deletes the event in Google themselves.
    let token = h.grant("u1").await.access_token.unwrap();
    let url = format!(
        "{}calendar/v3/calendars/primary/events/{}",
        h.stack.emulator.base_url,
        google_event_id("e2")
    );
    let deleted = h
        .stack
        .http
        .delete(url)
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);

    h.delete_row("e2").await;
    assert!(
        h.sync_new().await.is_empty(),
        "404/410 on delete counts as done"
    );
    assert_eq!(h.state("e2").await.unwrap().status, SyncStatus::Deleted);

    // The app writes the same event id again: Google has it as cancelled; it comes back.
    h.put_row("e2", "u1", "Dentist again", &[]).await;
    assert!(h.sync_new().await.is_empty());
    h.assert_live(ALICE, "e2", Some("Dentist again")).await;
    assert_eq!(h.state("e2").await.unwrap().status, SyncStatus::Synced);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_batch_twice_makes_one_event_and_409_turns_into_update() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.put_row("e3", "u1", "Offsite", &[]).await;
    let batch = h.new_records().await;
    assert!(h.run(batch.clone()).await.is_empty());
    let writes = h.writes().await;
    assert!(h.run(batch.clone()).await.is_empty());
    assert_eq!(h.writes().await, writes, "redelivery called Google");

    // The sync state is lost (say, the previous invocation died after Google answered): the
    // redelivered insert meets 409 and becomes an update.
    h.clients
        .dynamodb
        .delete_item()
        .table_name(&h.config.tables.sync_state)
        .key("event_id", s("e3"))
        .send()
        .await
        .unwrap();
    let updates = h.stats().await["calendar"]["update"].as_u64().unwrap();
    assert!(h.run(batch).await.is_empty());
    assert_eq!(
        h.stats().await["calendar"]["update"].as_u64().unwrap(),
        updates + 1
    );
    assert_eq!(h.calendar(ALICE).await.len(), 1, "one Google event");
    assert_eq!(h.state("e3").await.unwrap().status, SyncStatus::Synced);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_record_in_a_later_batch_is_skipped() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.put_row("e4", "u1", "First", &[]).await;
    h.put_row("e4", "u1", "Second", &[]).await;
    let records = h.new_records().await;
    assert_eq!(records.len(), 2);
    assert!(h.run(vec![records[1].clone()]).await.is_empty());
    assert!(h.run(vec![records[0].clone()]).await.is_empty());
    h.assert_live(ALICE, "e4", Some("Second")).await;
    assert_eq!(
        h.state("e4").await.unwrap().last_sequence.unwrap().as_str(),
        seq(&records[1]).trim_start_matches('0')
    );
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_refreshed_once() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    let before = h.refreshes().await;
    // Google expires the token early; our stored expiry still says it is good: the 401 path.
    h.control("expire-access-tokens", json!({"email": ALICE}))
        .await;
    h.put_row("e5", "u1", "After expiry", &[]).await;
    assert!(h.sync_new().await.is_empty());
    assert_eq!(h.refreshes().await, before + 1);
    h.assert_live(ALICE, "e5", Some("After expiry")).await;
    let grant = h.grant("u1").await;
    assert!(
        grant.refreshed_at.is_some(),
        "the refreshed token is stored"
    );
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_records_of_one_user_with_an_expiring_token_make_one_refresh() {
    let h = Harness::start().await;
    // Tokens live 2 minutes: within the 5-minute margin, so the batch refreshes before use.
    h.control("settings", json!({"access_token_lifetime_seconds": 120}))
        .await;
    h.connect("u1", ALICE).await;
    // The refreshed token lives an hour, so the second phase below meets no proactive refresh.
    h.control("settings", json!({"access_token_lifetime_seconds": 3600}))
        .await;
    let before = h.refreshes().await;
    for i in 0..20 {
        h.put_row(&format!("bulk-{i}"), "u1", &format!("Bulk {i}"), &[])
            .await;
    }
    assert!(h.sync_new().await.is_empty());
    assert_eq!(h.refreshes().await, before + 1);
    assert_eq!(h.calendar(ALICE).await.len(), 20);

    // Now Google kills that token early: 20 concurrent 401s still make one refresh.
    h.control("expire-access-tokens", json!({"email": ALICE}))
        .await;
    for i in 0..20 {
        h.put_row(&format!("bulk-{i}"), "u1", &format!("Bulk {i} v2"), &[])
            .await;
    }
    assert!(h.sync_new().await.is_empty());
    assert_eq!(h.refreshes().await, before + 2);
    for i in [0, 7, 19] {
        assert_eq!(
            h.live_summary(ALICE, &format!("bulk-{i}")).await,
            Some(format!("Bulk {i} v2"))
        );
    }
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_parks_and_reconnecting_replays() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.put_row("p1", "u1", "Kept", &[]).await;
    h.put_row("p3", "u1", "Will be removed", &[]).await;
    assert!(h.sync_new().await.is_empty());

    // The user removes the app's access in their Google account.
    h.control("revoke", json!({"email": ALICE})).await;
    h.put_row("p1", "u1", "Kept, edited", &[]).await;
    h.put_row("p2", "u1", "New while parked", &[]).await;
    h.delete_row("p3").await;
    // A user who never connected is parked too.
    h.put_row("q1", "u2", "Bob's", &[]).await;
    assert!(
        h.sync_new().await.is_empty(),
        "parking does not fail the batch"
    );

    let grant = h.grant("u1").await;
    assert_eq!(grant.status, GrantStatus::NeedsReauth);
    assert!(grant.refresh_token.is_none() && grant.access_token.is_none());
    for id in ["p1", "p2", "p3"] {
        assert_eq!(
            h.state(id).await.unwrap().status,
            SyncStatus::NeedsReauth,
            "{id}"
        );
    }
    assert_eq!(
        h.state("q1").await.unwrap().status,
        SyncStatus::NotConnected
    );
    let status = h.status_json("u1").await;
    assert_eq!(status["status"], "needs_reauth");
    assert_eq!(status["parked_changes"], 3);
    assert_eq!(status["last_error"]["code"], "needs_reauth");
    let synced_before = status["last_synced_at"].as_str().unwrap().to_string();
    // The latest change wins at replay: edit p2 again while parked.
    h.put_row("p2", "u1", "New while parked, edited", &[]).await;
    assert!(h.sync_new().await.is_empty());

    h.connect("u1", ALICE).await;
    h.assert_live(ALICE, "p1", Some("Kept, edited")).await;
    h.assert_live(ALICE, "p2", Some("New while parked, edited"))
        .await;
    h.assert_live(ALICE, "p3", None).await;
    assert_eq!(h.state("p1").await.unwrap().status, SyncStatus::Synced);
    assert_eq!(h.state("p3").await.unwrap().status, SyncStatus::Deleted);
    let status = h.status_json("u1").await;
    assert_eq!(status["parked_changes"], 0);
    assert_eq!(
        status["last_error"],
        Value::Null,
        "replay healed every parked change"
    );
    assert!(
        status["last_synced_at"].as_str().unwrap() >= synced_before.as_str(),
        "the replay's syncs are the newest"
    );

    h.connect("u2", BOB).await;
    h.assert_live(BOB, "q1", Some("Bob's")).await;
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_retried() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.control(
        "faults",
        json!({"target": "calendar", "status": 429, "reason": "rateLimitExceeded", "count": 2}),
    )
    .await;
    h.put_row("r1", "u1", "After 429s", &[]).await;
    assert!(h.sync_new().await.is_empty());
    h.assert_live(ALICE, "r1", Some("After 429s")).await;

    h.control(
        "faults",
        json!({"target": "calendar", "status": 403, "reason": "userRateLimitExceeded", "count": 1}),
    )
    .await;
    h.put_row("r2", "u1", "After 403", &[]).await;
    assert!(h.sync_new().await.is_empty());
    h.assert_live(ALICE, "r2", Some("After 403")).await;

    // What happened shows in event-sync's metrics (EMF lines, checked as EMF by the reader):
    // three refusals, three retries after a wait, two records synced with two good calls.
    let total = |metric| metric_total("event-sync", metric, None);
    assert!(total("GoogleCallsRateLimited") >= 3.0);
    assert!(total("Retries") >= 3.0);
    assert!(total("BackoffTime") > 0.0);
    assert!(total("RecordsSynced") >= 2.0);
    assert!(total("GoogleCallsOk") >= 2.0);
    assert!(metric_total("oauth-callback", "Connects", Some("connected")) >= 1.0);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_keeps_failing_is_reported_and_blocks_only_its_event() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.put_row("bad", "u1", "Bad 1", &[]).await;
    h.put_row("good", "u1", "Good", &[]).await;
    h.put_row("bad", "u1", "Bad 2", &[]).await;
    let records = h.new_records().await;
    assert_eq!(records.len(), 3);

    // Every call of the first event's first record gets 500 (groups run one at a time, in order).
    let mut deps = SyncDeps::from_config(&h.config, &h.clients, calendar::DEFAULT_TIMEOUT);
    deps.concurrency = 1;
    deps.retry.base = Duration::from_millis(10);
    deps.retry.max_attempts = 3;
    h.control(
        "faults",
        json!({"target": "calendar", "status": 500, "count": 3}),
    )
    .await;
    let failed = h.run_with(&deps, records.clone()).await;
    assert_eq!(failed, vec![seq(&records[0])]);
    assert_eq!(
        h.google(ALICE, "primary", "bad").await,
        None,
        "later records of the event were applied"
    );
    h.assert_live(ALICE, "good", Some("Good")).await;
    assert!(h.state("bad").await.is_none());

    // Lambda redelivers from the failed record on: now it goes through, in order.
    assert!(
        h.run(vec![records[0].clone(), records[2].clone()])
            .await
            .is_empty()
    );
    h.assert_live(ALICE, "bad", Some("Bad 2")).await;
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_client_timeout_is_retried() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    let mut deps = SyncDeps::from_config(&h.config, &h.clients, Duration::from_millis(500));
    deps.retry.base = Duration::from_millis(10);
    h.control(
        "faults",
        json!({"target": "calendar", "delay_ms": 1500, "count": 1}),
    )
    .await;
    h.put_row("slow", "u1", "Slow", &[]).await;
    let records = h.new_records().await;
    assert!(h.run_with(&deps, records).await.is_empty());
    h.assert_live(ALICE, "slow", Some("Slow")).await;
    assert_eq!(h.calendar(ALICE).await.len(), 1);

    // Without retries, the same slow answer fails the record: the timeout is what saved it above.
    deps.retry.max_attempts = 1;
    h.control(
        "faults",
        json!({"target": "calendar", "delay_ms": 1500, "count": 1}),
    )
    .await;
    h.put_row("slow", "u1", "Slow again", &[]).await;
    let records = h.new_records().await;
    assert_eq!(
        h.run_with(&deps, records.clone()).await,
        vec![seq(&records[0])]
    );
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rows_are_marked_and_do_not_fail_the_batch() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    let writes = h.writes().await;
    // Missing title.
    h.clients
        .dynamodb
        .put_item()
        .table_name(&h.events_table)
        .item("event_id", s("i1"))
        .item("user_id", s("u1"))
        .item("start", s("2026-12-01T09:00:00Z"))
        .item("end", s("2026-12-01T10:00:00Z"))
        .send()
        .await
        .unwrap();
    for (id, title, invalid) in [
        ("i2", "Backwards", ("end", s("2026-12-01T08:00:00+01:00"))),
        ("i3", "Nowhere", ("time_zone", s("Mars/Olympus_Mons"))),
        (
            "i4",
            "Weekly",
            (
                "recurrence",
                AttributeValue::L(vec![s("RRULE:FREQ=WEEKLY")]),
            ),
        ),
    ] {
        h.put_row(id, "u1", title, &[invalid]).await;
    }
    h.put_row("ok", "u1", "Fine", &[]).await;
    assert!(h.sync_new().await.is_empty());
    for (id, words) in [
        ("i1", "title"),
        ("i2", "after"),
        ("i3", "Mars/Olympus_Mons"),
        ("i4", "time_zone"),
    ] {
        let state = h.state(id).await.unwrap();
        assert_eq!(state.status, SyncStatus::Invalid, "{id}");
        let error = state.last_error.unwrap();
        assert!(error.contains(words), "{id}: {error}");
    }
    assert_eq!(
        h.writes().await,
        writes + 1,
        "only the valid row reached Google"
    );
    h.assert_live(ALICE, "ok", Some("Fine")).await;

    // A row we accept but Google refuses (400): invalid, with Google's reason.
    let rule = AttributeValue::L(vec![s("RRULE:FREQ=SOMETIMES")]);
    h.put_row(
        "i5",
        "u1",
        "Odd rule",
        &[("time_zone", s("UTC")), ("recurrence", rule)],
    )
    .await;
    assert!(h.sync_new().await.is_empty());
    let state = h.state("i5").await.unwrap();
    assert_eq!(state.status, SyncStatus::Invalid);
    assert!(state.last_error.unwrap().contains("400"));
    h.assert_live(ALICE, "i5", None).await;
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_user_or_calendar_moves_the_event() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.connect("u2", BOB).await;
    h.control("calendars", json!({"email": BOB, "calendar_id": "team"}))
        .await;
    h.put_row("m1", "u1", "Handover", &[]).await;
    assert!(h.sync_new().await.is_empty());
    h.put_row("m1", "u2", "Handover", &[("calendar_id", s("team"))])
        .await;
    assert!(h.sync_new().await.is_empty());
    assert_eq!(
        h.live_summary(ALICE, "m1").await,
        None,
        "the old copy was deleted"
    );
    let moved = h
        .google(BOB, "team", "m1")
        .await
        .expect("written at the new place");
    assert_eq!(moved["status"], "confirmed");
    let state = h.state("m1").await.unwrap();
    assert_eq!(
        (state.user_id.as_deref(), state.calendar_id.as_str()),
        (Some("u2"), "team")
    );
    h.assert_no_leaks().await;
}

// ---- resync: backfill, durable replay, the failure queue (issue 12) -------------------------

impl Harness {
    /// Writes `count` rows of `user` (ids `{prefix}-0000`, ...) 25 at a time, as an app's import
    /// would.
    async fn put_rows(&self, prefix: &str, user: &str, count: usize) {
        let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:04}")).collect();
        for chunk in ids.chunks(25) {
            let writes = chunk
                .iter()
                .map(|id| {
                    let item = rows::event_row(id, user, id);
                    aws_sdk_dynamodb::types::WriteRequest::builder()
                        .put_request(
                            aws_sdk_dynamodb::types::PutRequest::builder()
                                .set_item(Some(item))
                                .build()
                                .unwrap(),
                        )
                        .build()
                })
                .collect();
            let answer = self
                .clients
                .dynamodb
                .batch_write_item()
                .request_items(&self.events_table, writes)
                .send()
                .await
                .expect("batch write");
            assert!(answer.unprocessed_items.unwrap_or_default().is_empty());
        }
    }

    /// The ids of the live events in `email`'s primary calendar, and how many there are in all.
    async fn live_ids(&self, email: &str) -> (std::collections::BTreeSet<String>, usize) {
        let items = self.calendar(email).await;
        let live = items
            .iter()
            .filter(|e| e["status"] != "cancelled")
            .map(|e| {
                e["extendedProperties"]["private"]["calsync_event_id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        (live, items.len())
    }

    async fn queue(&self, url: &str, body: &Value) {
        self.clients
            .sqs
            .send_message()
            .queue_url(url)
            .message_body(body.to_string())
            .send()
            .await
            .expect("send");
    }

    /// Lambda gives up on `records` (one batch of the real stream, in `shard_id`, or the stream's
    /// one shard): its on-failure record goes on the failure queue, whose URL is returned.
    async fn give_up(&self, records: &[Value], shard_id: Option<&str>) -> String {
        let stream_arn = records[0]["eventSourceARN"].as_str().unwrap().to_string();
        let shards = testkit::streams::Streams::new(&self.stack.aws_endpoint)
            .shard_ids(&stream_arn)
            .await
            .unwrap();
        let failure = testkit::streams::failure_record(
            records,
            testkit::streams::GiveUp::RecordAgeExceeded,
            11,
            shard_id.unwrap_or(&shards[0]),
            &stream_arn,
            "arn:aws:lambda:eu-west-1:123456789012:function:event-sync",
        );
        let failure_queue = self
            .config
            .resync_queue_url
            .replace("ResyncQueue", "EventSyncFailureQueue");
        self.queue(&failure_queue, &failure).await;
        failure_queue
    }

    /// The resync function consumes the one failure record on `url`, then the jobs it queued;
    /// returns how many jobs ran.
    async fn consume_failure(&self, url: &str) -> usize {
        let (delivered, answer) = self.deliver(url, 10).await;
        assert_eq!(delivered, 1);
        assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
        self.drain_resync().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_rows_older_than_the_connect_all_reach_google_off_the_request_path() {
    const ROWS: usize = 2000;
    let mut h = Harness::start().await;
    h.put_rows("bulk", "u1", ROWS).await;

    let started = std::time::Instant::now();
    h.connect_only("u1", ALICE).await;
    println!("connect with {ROWS} rows waiting: {:?}", started.elapsed());
    assert_eq!(h.writes().await, 0, "the callback wrote to Google itself");

    let started = std::time::Instant::now();
    // At Google's pace (270 a minute for one user) the backfill takes 7.5 minutes.
    h.resync.syncer.pacer = calsync::sync::pacing::Pacer::new(common::EMULATOR_PACE);
    let jobs = h.drain_resync().await;
    println!(
        "resync of {ROWS} rows: {jobs} job(s), {:?}",
        started.elapsed()
    );
    let (live, all) = h.live_ids(ALICE).await;
    assert_eq!(
        (live.len(), all),
        (ROWS, ROWS),
        "every row once, no duplicate"
    );
    assert_eq!(h.stats().await["calendar"]["insert"], ROWS as u64);

    // Everything is in sync: resyncing again (the daily sweep) reads and writes nothing to Google.
    let writes = h.writes().await;
    let url = h.config.resync_queue_url.clone();
    h.queue(&url, &json!({"job": "sweep"})).await;
    assert_eq!(h.drain_resync().await, 2, "the sweep and one user job");
    assert_eq!(h.writes().await, writes);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_stream_gave_up_on_during_an_outage_arrives_through_the_failure_queue() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.put_row("kept", "u1", "Before the outage", &[]).await;
    h.put_row("gone", "u1", "Removed during the outage", &[])
        .await;
    assert!(h.sync_new().await.is_empty());

    // Google is unreachable for longer than the mapping's retries and record age.
    let mut down = h.config.clone();
    down.google.calendar_api_url = "http://127.0.0.1:9/calendar/v3".parse().unwrap();
    let mut outage = SyncDeps::from_config(&down, &h.clients, Duration::from_millis(500));
    outage.retry.base = Duration::from_millis(5);
    outage.retry.cap = Duration::from_millis(20);
    h.put_row("kept", "u1", "Changed during the outage", &[])
        .await;
    h.put_row("new", "u1", "Written during the outage", &[])
        .await;
    h.delete_row("gone").await;
    let records = h.new_records().await;
    assert_eq!(h.run_with(&outage, records.clone()).await.len(), 3);

    // Lambda gives up and records the batch (the real stream's shard and sequence range) on the
    // on-failure queue; the stream moves on.
    let failure_queue = h.give_up(&records, None).await;

    // Another user, connected, whose rows the range does not name: the redrive leaves them be.
    h.connect("u2", BOB).await;

    // Google is back. The resync function consumes the failure queue: the range is still in the
    // stream's retention, so it is read again and only the user it names is resynced (no sweep).
    assert_eq!(
        h.consume_failure(&failure_queue).await,
        1,
        "one job: the user the range names (a sweep would have queued both users)"
    );

    h.assert_live(ALICE, "kept", Some("Changed during the outage"))
        .await;
    h.assert_live(ALICE, "new", Some("Written during the outage"))
        .await;
    h.assert_live(ALICE, "gone", None).await;
    assert_eq!(h.state("gone").await.unwrap().status, SyncStatus::Deleted);
    h.assert_no_leaks().await;
}

/// A range DynamoDB Streams will not hand out again (here a shard it does not have; past the
/// 24 h retention it is `TrimmedDataAccessException`, which moto never answers) is swept: every
/// connected user is resynced, and the change arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_range_the_stream_cannot_read_again_is_swept() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.connect("u2", BOB).await;
    h.put_row("lost", "u1", "Given up on", &[]).await;
    let records = h.new_records().await;
    let failure_queue = h
        .give_up(&records, Some("shardId-00000000000000000000-gone"))
        .await;

    assert_eq!(
        h.consume_failure(&failure_queue).await,
        2,
        "the sweep queued both connected users"
    );
    h.assert_live(ALICE, "lost", Some("Given up on")).await;
    h.assert_no_leaks().await;
}

// ---- CALENDAR_MODE=dedicated (issue 16) ----------------------------------------------------

impl Harness {
    /// The calendars calsync made in `email`'s account (their ids), in no particular order.
    async fn app_calendars(&self, email: &str) -> Vec<String> {
        let calendars = self.stack.google.calendars(email).await.unwrap();
        calendars
            .iter()
            .filter(|c| c["summary"] == APP_CALENDAR)
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The live summaries of `email`'s calendar `calendar_id`, sorted.
    async fn live_in(&self, email: &str, calendar_id: &str) -> Vec<String> {
        let events = self
            .stack
            .calendar_events(email, calendar_id)
            .await
            .unwrap();
        let mut live: Vec<String> = events
            .iter()
            .filter(|e| e["status"] != "cancelled")
            .map(|e| e["summary"].as_str().unwrap().to_string())
            .collect();
        live.sort();
        live
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_mode_writes_only_to_the_calendar_it_made_and_a_reconnect_keeps_it() {
    let h = Harness::dedicated().await;
    h.connect("u1", ALICE).await;
    let grant = h.grant("u1").await;
    let app_scope = "https://www.googleapis.com/auth/calendar.app.created";
    assert!(
        grant.scopes.iter().any(|s| s == app_scope),
        "{:?}",
        grant.scopes
    );
    assert!(!grant.scopes.iter().any(|s| s.contains("events")));
    let calendar = grant.calendar.expect("the connect made the calendar").id;
    assert_eq!(
        h.app_calendars(ALICE).await,
        std::slice::from_ref(&calendar)
    );

    h.put_row("e1", "u1", "Planning", &[]).await;
    h.put_row("e2", "u1", "Elsewhere", &[("calendar_id", s("work"))])
        .await;
    assert!(h.sync_new().await.is_empty());
    assert_eq!(h.live_in(ALICE, &calendar).await, ["Planning"]);
    assert!(
        h.calendar(ALICE).await.is_empty(),
        "nothing in the primary calendar"
    );
    // A row naming a calendar of its own is refused, visibly.
    let refused = h.state("e2").await.unwrap();
    assert_eq!(refused.status, SyncStatus::Invalid);
    assert!(
        refused
            .last_error
            .unwrap()
            .contains("calendar_id must be empty")
    );

    // Connecting again (the same Google account) keeps the calendar and makes none.
    h.connect("u1", ALICE).await;
    assert_eq!(h.grant("u1").await.calendar.unwrap().id, calendar);
    assert_eq!(
        h.app_calendars(ALICE).await,
        std::slice::from_ref(&calendar)
    );
    let status = h.status_json("u1").await;
    assert_eq!(status["calendar"]["id"], calendar.as_str());
    // Disconnecting leaves the calendar to the user (DeleteCalendarOnDisconnect is false).
    let gone = h.disconnect("u1").await;
    assert_eq!(gone.status(), 204);
    assert_eq!(h.live_in(ALICE, &calendar).await, ["Planning"]);
    assert_eq!(h.stats().await["calendar"]["calendars_insert"], 1);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_the_user_deleted_is_made_once_more_and_every_row_comes_back() {
    let h = Harness::dedicated().await;
    let tap = h.stack.tap_events("calsync").await.expect("a tap");
    h.connect("u1", ALICE).await;
    for (id, title) in [("e1", "One"), ("e2", "Two"), ("e3", "Three")] {
        h.put_row(id, "u1", title, &[]).await;
    }
    assert!(h.sync_new().await.is_empty());
    let first = h.grant("u1").await.calendar.unwrap().id;
    assert_eq!(h.live_in(ALICE, &first).await, ["One", "Three", "Two"]);

    h.stack.google.delete_calendar(ALICE, &first).await.unwrap();
    // The next write meets 404: one new calendar, recorded on the grant, the row written there.
    h.put_row("e1", "u1", "One v2", &[]).await;
    assert!(h.sync_new().await.is_empty());
    let second = h.grant("u1").await.calendar.unwrap().id;
    assert_ne!(second, first);
    assert_eq!(h.app_calendars(ALICE).await, std::slice::from_ref(&second));
    assert_eq!(h.live_in(ALICE, &second).await, ["One v2"]);
    // The resync it queued brings every other current row back.
    assert!(
        h.drain_resync().await >= 1,
        "the recreation queued a resync"
    );
    assert_eq!(h.live_in(ALICE, &second).await, ["One v2", "Three", "Two"]);
    assert_eq!(h.stats().await["calendar"]["calendars_insert"], 2);
    let events = tap.drain().await.unwrap();
    let recreated: Vec<&Value> = events
        .iter()
        .filter(|e| e["detail-type"] == "Calendar Recreated")
        .collect();
    assert_eq!(recreated.len(), 1, "{events:?}");
    assert_eq!(recreated[0]["detail"]["calendar_id"], second.as_str());
    assert_eq!(recreated[0]["detail"]["status"], "active");
    assert_eq!(h.status_json("u1").await["calendar"]["id"], second.as_str());
    common::assert_nothing_leaked(&h.stack, &events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_connects_of_one_user_keep_one_calendar() {
    let h = Harness::dedicated().await;
    // Both callbacks' calendars.insert answers are held, so the connects overlap there even on a
    // loaded machine (unheld, one could finish before the other began, and not race at all).
    h.control(
        "faults",
        json!({"target": "calendar", "delay_ms": 500, "count": 2}),
    )
    .await;
    tokio::join!(h.connect_only("u1", ALICE), h.connect_only("u1", ALICE));
    let kept = h.grant("u1").await.calendar.unwrap().id;
    // Each callback made one; the one whose grant write lost deleted its own again. Should the
    // second still come after the first, it reuses the grant's: one calendar either way.
    let stats = h.stats().await;
    let count = |method: &str| stats["calendar"][method].as_u64().unwrap_or(0);
    assert_eq!(
        count("calendars_insert") - count("calendars_delete"),
        1,
        "{stats}"
    );
    assert_eq!(h.app_calendars(ALICE).await, [kept]);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_may_delete_the_calendar_on_disconnect() {
    let h = Harness::start_with(&[
        ("CalendarMode", "dedicated"),
        ("CalendarName", APP_CALENDAR),
        ("DeleteCalendarOnDisconnect", "true"),
    ])
    .await;
    h.connect("u1", ALICE).await;
    h.put_row("e1", "u1", "Planning", &[]).await;
    assert!(h.sync_new().await.is_empty());
    assert_eq!(h.app_calendars(ALICE).await.len(), 1);
    let gone = h.disconnect("u1").await;
    assert_eq!(gone.status(), 204);
    assert!(h.app_calendars(ALICE).await.is_empty());
    assert_eq!(h.stats().await["calendar"]["calendars_delete"], 1);
    h.assert_no_leaks().await;
}
