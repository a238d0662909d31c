//! The built `event-sync` binary under the Lambda Runtime Interface Emulator (what `sam local
//! invoke` runs), with the stack's environment: a stream event built from moto's real stream
//! records goes in, Google (the emulator) and the sync-state table change, and the answer has
//! Lambda's `batchItemFailures` shape.

use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{aws::Clients, config::Config, http, mapping::google_event_id};
use serde_json::json;
use testkit::{TestStack, rie, rows, stack::ALICE};

/// Connects `user` as `account` through the real start and callback handlers (in process).
async fn connect(stack: &TestStack, user: &str, account: &str) {
    let config = Config::from_source(&stack.env).unwrap();
    let clients = Clients::new(&stack.sdk);
    let start = http::StartDeps::new(config.clone(), &clients);
    let callback = http::CallbackDeps::new(config, &clients, http::NothingAfterConnect);
    stack
        .connect_through(
            user,
            account,
            async |request| http::start_router(&start, request).await,
            async |request| http::callback_router(&callback, request).await,
        )
        .await
        .expect("connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_sync_binary_under_the_rie_applies_a_real_stream_batch() {
    let stack = TestStack::start().await.expect("test stack");
    connect(&stack, "u1", ALICE).await;

    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    for (id, user) in [("rie-1", "u1"), ("rie-2", "nobody")] {
        let mut row = rows::event_row(id, user, &format!("From the RIE {id}"));
        row.insert("start".into(), rows::text("2026-12-24"));
        row.insert("end".into(), rows::text("2026-12-25"));
        rows::put(&dynamodb, stack.table("EVENTS_TABLE"), row)
            .await
            .unwrap();
    }
    let records = stack.stream_records("EVENTS_TABLE").await.unwrap();
    assert_eq!(records.len(), 2);

    let answer = rie::invoke_once(
        &stack.http,
        env!("CARGO_BIN_EXE_event-sync").as_ref(),
        &stack.env,
        &TestStack::stream_event(records),
    )
    .await
    .unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}), "{answer}");

    let events = stack.calendar_events(ALICE, "primary").await.unwrap();
    let event = events
        .iter()
        .find(|e| e["id"] == google_event_id("rie-1").as_str())
        .expect("the binary wrote the event");
    assert_eq!(event["start"], json!({"date": "2026-12-24"}));

    let parked = stack
        .item("SYNC_STATE_TABLE", "event_id", "rie-2")
        .await
        .unwrap()
        .expect("a sync state for the unconnected user");
    assert_eq!(parked["status"], AttributeValue::S("not_connected".into()));
}
