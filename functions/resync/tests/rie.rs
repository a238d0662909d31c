//! The built `resync` binary under the Lambda Runtime Interface Emulator, with the stack's
//! environment: rows written before their user connects, the job the connect really queued on
//! moto's SQS delivered in Lambda's SQS event shape, and Google (the emulator) holding every row.

use calsync::{
    aws::Clients, config::Config, http, mapping::google_event_id, resync::ResyncOnConnect,
    store::SqsJobQueue,
};
use serde_json::json;
use testkit::{TestStack, queues, rie, rows, stack::ALICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_binary_under_the_rie_backfills_rows_written_before_the_connect() {
    let stack = TestStack::start().await.expect("test stack");
    let config = Config::from_source(&stack.env).unwrap();
    let clients = Clients::new(&stack.sdk);
    for id in ["old-1", "old-2", "old-3"] {
        let row = rows::event_row(id, "u1", &format!("Before connecting {id}"));
        rows::put(&clients.dynamodb, stack.table("EVENTS_TABLE"), row)
            .await
            .unwrap();
    }

    let start = http::StartDeps::new(config.clone(), &clients);
    let queue = SqsJobQueue::new(clients.sqs.clone(), config.resync_queue_url.clone());
    let callback = http::CallbackDeps::new(config.clone(), &clients, ResyncOnConnect(queue));
    stack
        .connect_through(
            "u1",
            ALICE,
            async |request| http::start_router(&start, request).await,
            async |request| http::callback_router(&callback, request).await,
        )
        .await
        .expect("connected");

    let (messages, event) = queues::receive_event(&clients.sqs, &config.resync_queue_url, 10)
        .await
        .unwrap();
    assert_eq!(messages.len(), 1, "the connect queued one job");
    let binary = env!("CARGO_BIN_EXE_resync").as_ref();
    let answer = rie::invoke_once(&stack.http, binary, &stack.env, &event)
        .await
        .unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}), "{answer}");

    let events = stack.calendar_events(ALICE, "primary").await.unwrap();
    for id in ["old-1", "old-2", "old-3"] {
        assert!(
            events
                .iter()
                .any(|e| e["id"] == google_event_id(id).as_str()),
            "{id} reached Google: {events:?}"
        );
    }
}
