//! The built `event-sync` binary under the Lambda Runtime Interface Emulator (what `sam local
//! invoke` runs), with the stack's environment: a stream event built from moto's real stream
//! records goes in, Google (the emulator) and the sync-state table change, and the answer has
//! Lambda's `batchItemFailures` shape.

use std::{collections::HashMap, net::SocketAddr, process::Stdio, time::Duration};

use aws_sdk_dynamodb::types::AttributeValue;
use calsync::{
    aws::Clients, config::Config, http, mapping::google_event_id, sync::replay::ProductionReplay,
};
use lambda_http::{Request, http::StatusCode};
use serde_json::{Value, json};
use url::Url;
use xtask::{paths, process, testkit::TestStack};

fn api_event(path: &str, query: &str, cookies: &[String], user: Option<&str>) -> Request {
    let mut context = json!({
        "accountId": "123456789012", "apiId": "api", "domainName": "api.example.test",
        "domainPrefix": "api",
        "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                 "sourceIp": "203.0.113.9", "userAgent": "test"},
        "requestId": "req", "routeKey": format!("GET {path}"), "stage": "$default",
        "time": "25/Nov/2026:21:00:00 +0000", "timeEpoch": 1795640400000u64
    });
    if let Some(user) = user {
        context["authorizer"] = json!({"jwt": {"claims": {"sub": user}, "scopes": null}});
    }
    let mut event = json!({
        "version": "2.0", "routeKey": format!("GET {path}"), "rawPath": path,
        "rawQueryString": query, "headers": {"host": "api.example.test"},
        "requestContext": context, "isBase64Encoded": false
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        event["queryStringParameters"] = json!(params);
    }
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway v2 event")
}

/// Connects `user` as `account` through the real start and callback handlers (in process).
async fn connect(stack: &TestStack, user: &str, account: &str) {
    let config = Config::from_source(&stack.env).unwrap();
    let clients = Clients::new(&stack.sdk);
    let start = http::StartDeps::new(config.clone(), &clients);
    let callback = http::CallbackDeps::new(
        config.clone(),
        &clients,
        ProductionReplay::from_config(&config, &clients),
    );
    let response = http::start_router(
        &start,
        api_event("/oauth/google/start", "", &[], Some(user)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let consent: Value = reqwest::Client::new()
        .post(stack.control("consent"))
        .json(&json!({"authorization_url": location, "account": account, "decision": "allow"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let redirect = Url::parse(consent["redirect"].as_str().unwrap()).unwrap();
    let response = http::callback_router(
        &callback,
        api_event(
            "/oauth/google/callback",
            redirect.query().unwrap(),
            &[cookie],
            None,
        ),
    )
    .await;
    let back = response.headers()["location"].to_str().unwrap();
    assert!(back.contains("calsync=connected"), "{back}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_sync_binary_under_the_rie_applies_a_real_stream_batch() {
    let stack = TestStack::start().await.expect("test stack");
    connect(&stack, "u1", "alice@example.com").await;

    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let events_table = stack.table("EVENTS_TABLE").to_string();
    for (id, user) in [("rie-1", "u1"), ("rie-2", "nobody")] {
        dynamodb
            .put_item()
            .table_name(&events_table)
            .item("event_id", AttributeValue::S(id.into()))
            .item("user_id", AttributeValue::S(user.into()))
            .item("title", AttributeValue::S(format!("From the RIE {id}")))
            .item("start", AttributeValue::S("2026-12-24".into()))
            .item("end", AttributeValue::S("2026-12-25".into()))
            .send()
            .await
            .unwrap();
    }
    let records = stack.stream_records("EVENTS_TABLE").await.unwrap();
    assert_eq!(records.len(), 2);

    let venv = paths::venv().expect("the project venv (cargo xtask setup)");
    let rie = paths::rie(&venv).expect("the RIE from aws-sam-cli");
    let (port, api_port) = (process::free_port().unwrap(), process::free_port().unwrap());
    let mut child = tokio::process::Command::new(rie)
        .arg("--runtime-interface-emulator-address")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--runtime-api-address")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg(env!("CARGO_BIN_EXE_event-sync"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&stack.env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the RIE");
    process::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
        "the RIE",
    )
    .await
    .unwrap();

    let answer: Value = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"
        ))
        .json(&TestStack::stream_event(records))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    child.kill().await.ok();
    assert_eq!(answer, json!({"batchItemFailures": []}), "{answer}");

    let items: Value = reqwest::Client::new()
        .get(stack.control("calendars/alice@example.com/primary/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == google_event_id("rie-1").as_str())
        .expect("the binary wrote the event");
    assert_eq!(event["start"], json!({"date": "2026-12-24"}));

    let parked = dynamodb
        .get_item()
        .table_name(stack.table("SYNC_STATE_TABLE"))
        .key("event_id", AttributeValue::S("rie-2".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("a sync state for the unconnected user");
    assert_eq!(parked["status"], AttributeValue::S("not_connected".into()));
}
