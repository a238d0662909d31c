//! Lifecycle events end to end: the real handlers against moto over HTTP and the Google emulator,
//! the events read back from moto's EventBridge through a rule that targets an SQS queue, as an
//! app would read them. Each stack has its own bus, so the tests of one moto never mix.

use std::sync::Mutex;

use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{
    aws::Clients,
    calendar,
    config::Config,
    grants::{GrantStatus, GrantStore},
    http::{self, CallbackDeps, NothingAfterConnect, StartDeps},
    lifecycle::SOURCE,
    resync::{
        Job,
        handler::{self as resync_handler, ResyncDeps, ResyncEvent},
    },
    store::DynamoFlowStore,
    sync::handler::SyncDeps,
};
use lambda_http::http::{Method, StatusCode};
use serde_json::Value;
use testkit::{
    TestStack,
    api_gateway::HttpApiEvent,
    eventbridge::EventTap,
    invocation::with_deadline,
    rows,
    stack::{ALICE, BOB},
};

mod common;
use common::{StreamCursor, metric_total, stack_with_config};

struct Harness {
    stack: TestStack,
    clients: Clients,
    deps: SyncDeps,
    resync: ResyncDeps<resync_handler::Production>,
    start: StartDeps<DynamoFlowStore>,
    callback: CallbackDeps<http::Production<NothingAfterConnect>>,
    tap: EventTap,
    /// Every event read so far, for the leak scan.
    read: Mutex<Vec<Value>>,
    stream: StreamCursor,
}

impl Harness {
    async fn start() -> Self {
        let (stack, config, clients): (TestStack, Config, Clients) = stack_with_config().await;
        assert_eq!(config.event_bus_name, stack.env["EVENT_BUS_NAME"]);
        assert_ne!(
            config.event_bus_name, "default",
            "each stack has its own bus"
        );
        let mut deps = SyncDeps::from_config(&config, &clients, calendar::DEFAULT_TIMEOUT);
        common::quick_retries(&mut deps.retry);
        let tap = stack.tap_events(SOURCE).await.expect("a tap on the bus");
        Self {
            resync: ResyncDeps::from_config(&config, &clients),
            start: StartDeps::new(config.clone(), &clients),
            callback: CallbackDeps::new(config, &clients, NothingAfterConnect),
            deps,
            clients,
            tap,
            stack,
            read: Mutex::new(Vec::new()),
            stream: StreamCursor::default(),
        }
    }

    /// The events delivered since the last call.
    async fn events(&self) -> Vec<Value> {
        let events = self.tap.drain().await.expect("the tap's queue");
        self.read.lock().unwrap().extend(events.iter().cloned());
        events
    }

    /// The events delivered since the last call, as their `detail-type`s, sorted.
    async fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .events()
            .await
            .iter()
            .map(|e| e["detail-type"].as_str().unwrap().to_string())
            .collect();
        kinds.sort();
        kinds
    }

    /// The events delivered since the last call are one of each of `kinds`, every one for
    /// `user` with `status` and `reason` (see [`detail`]).
    async fn assert_only(&self, kinds: &[&str], user: &str, status: &str, reason: Option<&str>) {
        let events = self.events().await;
        assert_eq!(events.len(), kinds.len(), "{events:?}");
        for kind in kinds {
            detail(only(&events, kind), user, status, reason);
        }
    }

    /// A refusal's episode: one Grant Needs Reauth and one Sync Parked for `user`, for `reason`.
    async fn assert_reauth_and_parked(&self, user: &str, reason: &str) {
        let kinds = ["Grant Needs Reauth", "Sync Parked"];
        self.assert_only(&kinds, user, "needs_reauth", Some(reason))
            .await;
    }

    async fn connect(&self, user: &str, account: &str) {
        common::connect(&self.stack, &self.start, &self.callback, user, account).await;
    }

    /// The account removes the app's access at Google.
    async fn revoke_at_google(&self, account: &str) {
        let (status, answer) = self
            .stack
            .control_post("revoke", &serde_json::json!({"email": account}))
            .await
            .unwrap();
        assert!(status.is_success(), "{status} {answer}");
    }

    async fn disconnect(&self, user: &str) {
        let response = common::answered(
            http::callback_router(
                &self.callback,
                HttpApiEvent::new(Method::DELETE, "/oauth/google/connection")
                    .user(user)
                    .request(),
            )
            .await,
        );
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    async fn put_row(&self, event_id: &str, user: &str, title: &str) {
        let row = rows::event_row(event_id, user, title);
        rows::put(
            &self.clients.dynamodb,
            self.stack.table("EVENTS_TABLE"),
            row,
        )
        .await
        .expect("put row");
    }

    /// Hands the stream records written since the last call to event-sync, in one batch.
    async fn sync_new(&self) {
        self.sync_new_in(1).await;
    }

    /// Hands the stream records written since the last call to `invocations` concurrent
    /// invocations of event-sync (as several shards would), one slice each.
    async fn sync_new_in(&self, invocations: usize) {
        let records = self.stream.new_records(&self.stack).await;
        assert!(records.len() >= invocations, "the stream holds new records");
        let per_invocation = records.len().div_ceil(invocations);
        let batches = records
            .chunks(per_invocation)
            .map(|batch| common::run_event_sync(&self.deps, batch.to_vec()));
        for failures in futures::future::join_all(batches).await {
            assert!(failures.is_empty(), "parking never fails the batch");
        }
    }

    /// Runs `user`'s resync job (what a connect or the sweep queues) through the resync handler.
    async fn resync_user(&self, user: &str) {
        let body = serde_json::to_string(&Job::user(user)).unwrap();
        let event = serde_json::json!({"Records": [{
            "messageId": "m1", "body": body, "eventSource": "aws:sqs",
        }]});
        let payload: ResyncEvent = serde_json::from_value(event).expect("an SQS event");
        let answer = resync_handler::handle(&self.resync, with_deadline(payload, 120))
            .await
            .expect("the resync handler answers");
        assert!(answer.batch_item_failures.is_empty());
    }

    /// Makes `user`'s grant look as if Google last accepted its refresh token `days` ago.
    async fn age_grant(&self, user: &str, days: i64) {
        let then = (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339();
        self.clients
            .dynamodb
            .update_item()
            .table_name(self.stack.table("GrantsTable"))
            .key("user_id", AttributeValue::S(user.into()))
            .update_expression("SET connected_at = :then, refreshed_at = :then")
            .expression_attribute_values(":then", AttributeValue::S(then))
            .send()
            .await
            .expect("age the grant");
    }

    /// Refreshes the token endpoint has answered so far.
    async fn refreshes(&self) -> u64 {
        common::refreshes(&self.stack).await
    }

    /// The leak scan over every event read, those still on the tap included.
    async fn assert_no_leaks(&self) {
        self.events().await;
        let read = self.read.lock().unwrap().clone();
        assert!(common::issued_secrets(&self.stack).await.len() >= 2);
        common::assert_nothing_leaked(&self.stack, &read).await;
    }
}

/// The one event of `events` with `detail_type`.
fn only<'a>(events: &'a [Value], detail_type: &str) -> &'a Value {
    let matching: Vec<&Value> = events
        .iter()
        .filter(|e| e["detail-type"] == detail_type)
        .collect();
    assert_eq!(matching.len(), 1, "one {detail_type} in {events:?}");
    matching[0]
}

/// The detail of `event`, checked against the schema the README documents.
fn detail(event: &Value, user: &str, status: &str, reason: Option<&str>) {
    assert_eq!(event["source"], SOURCE);
    let detail = event["detail"].clone();
    assert_eq!(detail["user_id"], user);
    assert_eq!(detail["google_email"], ALICE);
    assert_eq!(detail["status"], status);
    match reason {
        Some(reason) => assert_eq!(detail["reason"], reason),
        None => assert!(detail.get("reason").is_none(), "{detail}"),
    }
    let time = detail["time"].as_str().expect("a time");
    let time = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339");
    let age = chrono::Utc::now() - time.with_timezone(&chrono::Utc);
    assert!(age >= chrono::Duration::zero() && age < chrono::Duration::minutes(2));
    let mut keys: Vec<&str> = detail
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    let mut expected = vec!["google_email", "status", "time", "user_id"];
    if reason.is_some() {
        expected.insert(1, "reason");
    }
    assert_eq!(keys, expected, "no other field, so no token, in {detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_disconnect_emit_one_event_each() {
    let h = Harness::start().await;
    assert!(h.events().await.is_empty());

    h.connect("u1", ALICE).await;
    h.assert_only(&["Grant Connected"], "u1", "active", None)
        .await;

    h.disconnect("u1").await;
    h.assert_only(&["Grant Disconnected"], "u1", "not_connected", None)
        .await;

    // Nothing left to disconnect: no transition, no event.
    h.disconnect("u1").await;
    assert!(h.events().await.is_empty());
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_emits_needs_reauth_and_sync_parked_once_per_episode() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.put_row("p1", "u1", "Synced").await;
    h.sync_new().await;
    assert_eq!(h.kinds().await, ["Grant Connected"]);

    // The user removes the app's access at Google: the next refresh gets invalid_grant, and
    // every change parks, in two invocations running at once.
    h.revoke_at_google(ALICE).await;
    for id in ["p1", "p2", "p3", "p4"] {
        h.put_row(id, "u1", "While revoked").await;
    }
    h.sync_new_in(2).await;
    h.assert_reauth_and_parked("u1", "invalid_grant").await;

    // More changes in later invocations: the same episode, no new event.
    h.put_row("p5", "u1", "Still revoked").await;
    h.sync_new().await;
    h.put_row("p6", "u1", "Still revoked").await;
    h.sync_new().await;
    assert!(h.events().await.is_empty());

    // Connecting again ends the episode; the next refusal starts a new one.
    h.connect("u1", ALICE).await;
    assert_eq!(h.kinds().await, ["Grant Connected"]);
    h.revoke_at_google(ALICE).await;
    h.put_row("p7", "u1", "Revoked again").await;
    h.put_row("p8", "u1", "Revoked again").await;
    h.sync_new().await;
    assert_eq!(h.kinds().await, ["Grant Needs Reauth", "Sync Parked"]);
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_grant_emits_needs_reauth_once_with_its_reason() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    assert_eq!(h.kinds().await, ["Grant Connected"]);
    common::damage_sealed_refresh_token(&h.stack, "u1").await;

    h.put_row("p1", "u1", "Parked").await;
    h.put_row("p2", "u1", "Parked").await;
    h.sync_new().await;
    h.assert_reauth_and_parked("u1", "unreadable_grant").await;
    h.put_row("p3", "u1", "Parked").await;
    h.sync_new().await;
    assert!(h.events().await.is_empty());
    h.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_refreshes_idle_grants_and_reports_a_refused_one_before_anything_parks() {
    let h = Harness::start().await;
    h.connect("u1", ALICE).await;
    h.connect("u2", BOB).await;
    assert_eq!(h.kinds().await, ["Grant Connected", "Grant Connected"]);

    // u1's grant has gone unused for 31 days, u2's was used at its connect just now.
    h.age_grant("u1", 31).await;
    let before = h.refreshes().await;
    h.resync_user("u2").await;
    assert_eq!(h.refreshes().await, before, "a grant in use is left alone");
    h.resync_user("u1").await;
    assert_eq!(
        h.refreshes().await,
        before + 1,
        "the idle grant is refreshed"
    );
    let grant = h.callback.grants.get("u1").await.unwrap().unwrap();
    let refreshed_at = grant.refreshed_at.expect("the refresh is recorded");
    assert!(chrono::Utc::now() - refreshed_at < chrono::Duration::minutes(2));
    h.resync_user("u1").await;
    assert_eq!(h.refreshes().await, before + 1, "refreshed once per period");
    assert!(metric_total("resync", "KeepAliveRefreshed", None) >= 1.0);
    assert!(h.events().await.is_empty());

    // Idle again, and the user removed the app's access at Google meanwhile: the keep-alive
    // learns it first, and the app hears Grant Needs Reauth alone (nothing has parked).
    h.age_grant("u1", 40).await;
    h.revoke_at_google(ALICE).await;
    h.resync_user("u1").await;
    let grant = h.callback.grants.get("u1").await.unwrap().unwrap();
    assert_eq!(grant.status, GrantStatus::NeedsReauth);
    assert!(grant.refresh_token.is_none());
    assert!(metric_total("resync", "KeepAliveRefused", None) >= 1.0);
    assert!(metric_total("resync", "InvalidGrants", None) >= 1.0);
    h.assert_only(
        &["Grant Needs Reauth"],
        "u1",
        "needs_reauth",
        Some("invalid_grant"),
    )
    .await;
    // The next sweep owes nothing; the first change that parks owes Sync Parked alone.
    h.resync_user("u1").await;
    assert!(h.events().await.is_empty());
    h.put_row("k1", "u1", "Parked").await;
    h.sync_new().await;
    assert_eq!(h.kinds().await, ["Sync Parked"]);
    h.assert_no_leaks().await;
}
