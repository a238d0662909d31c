//! Hostile input, generated: stream records, rows, `return_to` values and callback requests built
//! from a seeded generator, a fixed number of cases each (so CI's time is fixed too). Each case
//! must end in a value or a clear error, never a panic, and the checks below say which.
//!
//! No proptest: its `std` feature turns on `num-traits`' `std`, which the product builds without,
//! and that would rebuild chrono and everything above it for the tests (see ARCHITECTURE.md).
//! The generator is `rand`'s seeded `StdRng`, which the product already builds; a failing case
//! prints its seed and index to replay it.
//!
//! The callback tests end with the leak scan's stack-free half ([`common::assert_nothing_leaked_in`]:
//! log lines, answers, panic messages; their events are asserted empty and there are no tables).
//! None of the generated values is a secret; a sentinel-marked code and state sent last stand for
//! a real one, which no log line or answer may hold.

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::EventRecord;
use calsync::{
    config::{Config, REQUIRED_VARIABLES},
    google_oauth::GoogleOAuth,
    grants::GrantStore,
    http::{self, CallbackDeps, CallbackPorts, NothingAfterConnect},
    lifecycle::RecordedEvents,
    mapping::{EventRow, SYNCED_ATTRIBUTES, google_event_id},
    secrets::SecretsCache,
    store::{InMemoryFlowStore, InMemoryGrantStore, InMemorySyncStateStore},
    sync::batch::group_records,
};
use lambda_http::Body;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value, json};
use testkit::api_gateway::HttpApiEvent;

mod common;

/// API Gateway's HTTP API refuses a request whose request line and headers exceed 10,240 bytes,
/// so no longer query or cookie reaches a function. (Past 64 KB, lambda_http's conversion of the
/// event panics on the URI: the deployed shape never gets there.)
const API_GATEWAY_HEAD_LIMIT: usize = 10_240;

/// `hostile_text` cut to what fits in a request head.
fn head_text(rng: &mut StdRng) -> String {
    hostile_text(rng).chars().take(1_000).collect()
}

/// Cases per target. Fixed, with a fixed seed: the same inputs on every run.
const CASES: usize = 2_000;
const SEED: u64 = 0x00ca_15c0;

// ---- the generator -----------------------------------------------------------------------------

/// Strings that break careless parsers: empty, huge, control characters, markup, quotes, other
/// scripts and emoji, percent escapes, and near-misses of valid values.
fn hostile_text(rng: &mut StdRng) -> String {
    let pieces = [
        "",
        " ",
        "\u{0}",
        "\u{1b}[31m",
        "\r\n",
        "\t",
        "\u{202e}",
        "\u{feff}",
        "💥",
        "日本語",
        "'\"<>&",
        "%00",
        "%ZZ",
        "%2F%2F",
        "../",
        "\\",
        "=",
        ";",
        ",",
        "2026-12-01",
        "2026-02-30",
        "2026-12-01T09:00:00+01:00",
        "2026-12-01T09:00:00",
        "9999-99-99T99:99:99Z",
        "Europe/Berlin",
        "Mars/Olympus",
        "RRULE:FREQ=DAILY",
        "RRULE:",
        "primary",
        "https://app.example.test/",
        "https://app.example.test.evil/",
        "javascript:alert(1)",
        "//evil.test",
        "https://user@app.example.test",
        "http://app.example.test",
        "https://APP.example.test:443/x",
    ];
    match rng.gen_range(0..10) {
        // Huge: DynamoDB items go up to 400 KB.
        0 => "x".repeat(rng.gen_range(10_000..400_000)),
        1 => (0..rng.gen_range(0..64))
            .map(|_| char::from_u32(rng.gen_range(0..0x11_0000)).unwrap_or('\u{fffd}'))
            .collect(),
        _ => (0..rng.gen_range(1..5))
            .map(|_| *pieces.choose(rng).unwrap())
            .collect(),
    }
}

/// A DynamoDB attribute value of any type, often not the one expected.
fn hostile_attribute(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth > 2 { 6 } else { 9 }) {
        0..=2 => json!({"S": hostile_text(rng)}),
        3 => {
            let number = *["1", "-0", "1e400", "NaN", "x", ""].choose(rng).unwrap();
            json!({ "N": number })
        }
        4 => json!({"BOOL": rng.r#gen::<bool>()}),
        5 => json!({"NULL": true}),
        6 => {
            json!({"L": (0..rng.gen_range(0..4)).map(|_| hostile_attribute(rng, depth + 1)).collect::<Vec<_>>()})
        }
        7 => json!({"M": {"a": hostile_attribute(rng, depth + 1)}}),
        _ => json!({"SS": [hostile_text(rng)]}),
    }
}

/// A stream image: a valid row with some attributes replaced, dropped or of another type.
fn hostile_image(rng: &mut StdRng) -> serde_json::Map<String, Value> {
    let mut image = serde_json::Map::new();
    let valid = [
        ("event_id", json!({"S": "e1"})),
        ("user_id", json!({"S": "u1"})),
        ("title", json!({"S": "Planning"})),
        ("start", json!({"S": "2026-12-01T09:00:00+01:00"})),
        ("end", json!({"S": "2026-12-01T10:00:00+01:00"})),
    ];
    for (name, value) in valid {
        image.insert(name.into(), value);
    }
    for _ in 0..rng.gen_range(0..5) {
        let fields: Vec<&str> = SYNCED_ATTRIBUTES.into_iter().chain(["event_id"]).collect();
        let field = *fields.choose(rng).unwrap();
        match rng.gen_range(0..4) {
            0 => {
                image.remove(field);
            }
            1 => {
                image.insert(field.into(), json!({"S": hostile_text(rng)}));
            }
            2 if field == "recurrence" => {
                image.insert(
                    field.into(),
                    json!({"L": [{"S": hostile_text(rng)}, hostile_attribute(rng, 1)]}),
                );
            }
            _ => {
                image.insert(field.into(), hostile_attribute(rng, 0));
            }
        }
    }
    image
}

/// A stream record in Lambda's shape, with any part of it missing, mistyped or out of range.
fn hostile_record(rng: &mut StdRng) -> Value {
    let name = *["INSERT", "MODIFY", "REMOVE", "insert", "", "DROP"]
        .choose(rng)
        .unwrap();
    let sequence = *[
        "100",
        "",
        "-1",
        "abc",
        "99999999999999999999999999999999999999999",
    ]
    .choose(rng)
    .unwrap();
    let (key, new_image, old_image) = (
        hostile_attribute(rng, 0),
        hostile_image(rng),
        hostile_image(rng),
    );
    let mut record = json!({
        "eventID": "1",
        "eventName": name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/Events/stream/x",
        "dynamodb": {
            "Keys": {"event_id": key},
            "NewImage": new_image,
            "OldImage": old_image,
            "SequenceNumber": sequence,
            "SizeBytes": 10,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    });
    if rng.gen_range(0..4) == 0 {
        record["dynamodb"]["Keys"]["event_id"] = json!({"S": hostile_text(rng)});
    }
    if rng.gen_range(0..10) == 0 {
        let part = ["eventName", "dynamodb"].choose(rng).unwrap();
        record.as_object_mut().unwrap().remove(*part);
    }
    record
}

// ---- the targets ---------------------------------------------------------------------------------

#[test]
fn stream_records_are_grouped_or_refused_never_lost() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let (mut grouped, mut poison, mut unreadable) = (0, 0, 0);
    for case in 0..CASES {
        let batch: Vec<Value> = (0..rng.gen_range(1..6))
            .map(|_| hostile_record(&mut rng))
            .collect();
        let mut records = Vec::new();
        for value in batch {
            match serde_json::from_value::<EventRecord>(value) {
                Ok(record) => records.push(record),
                // Lambda's own parser refuses it: the invocation fails before calsync runs.
                Err(error) => {
                    assert!(!error.to_string().is_empty(), "case {case}");
                    unreadable += 1;
                }
            }
        }
        let count = records.len();
        let (groups, poisoned) = group_records(records);
        let kept: usize = groups.iter().map(|g| g.changes.len()).sum();
        assert_eq!(
            kept + poisoned.len(),
            count,
            "case {case}: a record vanished"
        );
        for group in &groups {
            assert!(!group.event_id.is_empty(), "case {case}");
            assert!(
                group.changes.iter().all(|c| c.event_id == group.event_id),
                "case {case}: a change in another event's group"
            );
        }
        for reason in &poisoned {
            assert!(
                reason.to_string().starts_with("stream record"),
                "case {case}"
            );
        }
        grouped += kept;
        poison += poisoned.len();
    }
    println!(
        "stream records: {CASES} batches, {grouped} grouped, {poison} poison, {unreadable} refused by Lambda's parser"
    );
    assert!(
        grouped > 0 && poison > 0,
        "the generator reaches both outcomes"
    );
}

#[test]
fn rows_map_to_a_valid_google_event_or_a_clear_error() {
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let (mut mapped, mut refused) = (0, 0);
    for case in 0..CASES {
        let image = Value::Object(hostile_image(&mut rng));
        // Images come as DynamoDB JSON in the stream record.
        let Ok(item) = serde_json::from_value::<serde_dynamo::Item>(image) else {
            continue;
        };
        let event_id = hostile_text(&mut rng);
        match EventRow::from_image(&event_id, &item) {
            Ok(row) => {
                mapped += 1;
                let event = row.to_google_event();
                let id = event["id"].as_str().expect("an id");
                assert_eq!(id, google_event_id(&event_id), "case {case}");
                assert!(
                    (5..=1024).contains(&id.len())
                        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v')),
                    "case {case}: {id:?} is not a Google event id"
                );
                assert!(event["summary"].as_str().is_some_and(|s| !s.is_empty()));
            }
            Err(error) => {
                refused += 1;
                let text = error.to_string();
                // The reason is stored as the row's last error: short and one line.
                assert!(
                    !text.is_empty() && text.len() < 1_000,
                    "case {case}: {text:.200}"
                );
            }
        }
    }
    println!("rows: {CASES} cases, {mapped} mapped, {refused} refused with a reason");
    assert!(
        mapped > 0 && refused > 0,
        "the generator reaches both outcomes"
    );
}

#[test]
fn unpaired_surrogates_in_a_stream_event_are_refused_by_the_parser() {
    // DynamoDB strings are UTF-8 and cannot hold one; a JSON event can still spell it.
    for spelled in [r#""\ud800""#, r#""\udfff""#, r#""a\ud83d""#] {
        let text = format!(
            r#"{{"Records":[{{"eventName":"INSERT","dynamodb":{{"Keys":{{"event_id":{{"S":{spelled}}}}},"SequenceNumber":"1"}}}}]}}"#
        );
        let parsed = serde_json::from_str::<aws_lambda_events::event::dynamodb::Event>(&text);
        let error = parsed.expect_err("a lone surrogate is not a string");
        let text = error.to_string();
        assert!(
            text.contains("surrogate") || text.contains("hex escape"),
            "{text}"
        );
    }
}

#[test]
fn return_to_accepts_only_the_allowed_origins() {
    let allowed = vec!["https://app.example.test".to_string()];
    let mut rng = StdRng::seed_from_u64(SEED + 2);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..CASES {
        let raw = if rng.gen_range(0..3) == 0 {
            format!("https://app.example.test/{}", hostile_text(&mut rng))
        } else {
            hostile_text(&mut rng)
        };
        match http::return_to::validate(&raw, &allowed) {
            Ok(url) => {
                accepted += 1;
                assert_eq!(
                    url.origin().ascii_serialization(),
                    allowed[0],
                    "case {case}: {raw:.200}"
                );
            }
            Err(error) => {
                refused += 1;
                assert!(!error.to_string().is_empty());
            }
        }
    }
    println!("return_to: {CASES} cases, {accepted} accepted, {refused} refused");
    assert!(accepted > 0 && refused > 0);
}

// ---- the callback, with every dependency in memory -------------------------------------------

enum Fakes {}

impl CallbackPorts for Fakes {
    type Grants = InMemoryGrantStore;
    type Lifecycle = RecordedEvents;
    type Flows = InMemoryFlowStore;
    type SyncStates = InMemorySyncStateStore;
    type AfterConnect = NothingAfterConnect;
}

async fn callback_deps() -> CallbackDeps<Fakes> {
    common::capture_logs();
    let mut env: HashMap<String, String> = REQUIRED_VARIABLES
        .iter()
        .map(|name| (name.to_string(), format!("hostile-{name}")))
        .collect();
    for (name, value) in [
        (
            "RESYNC_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/1/q",
        ),
        ("OAUTH_REDIRECT_URI", testkit::stack::OAUTH_REDIRECT_URI),
        ("ALLOWED_RETURN_ORIGINS", testkit::stack::APP_ORIGIN),
        ("DEFAULT_RETURN_URL", testkit::stack::DEFAULT_RETURN_URL),
    ] {
        env.insert(name.into(), value.into());
    }
    let config = Config::from_source(&env).expect("a valid configuration");
    // Nothing here may reach Secrets Manager or Google: every request below fails before.
    let sdk = testkit::aws::local_sdk_config("http://127.0.0.1:9").await;
    let secrets = std::sync::Arc::new(SecretsCache::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        config.secrets.clone(),
    ));
    CallbackDeps {
        google: GoogleOAuth::new(&config, secrets),
        calendar: calsync::calendar::CalendarClient::new(
            config.google.calendar_api_url.clone(),
            calsync::calendar::DEFAULT_TIMEOUT,
        ),
        config,
        grants: InMemoryGrantStore::new(),
        lifecycle: RecordedEvents::default(),
        flows: InMemoryFlowStore::new(),
        sync_states: InMemorySyncStateStore::new(),
        after_connect: NothingAfterConnect,
    }
}

#[tokio::test]
async fn hostile_callbacks_get_a_clear_4xx_and_touch_nothing() {
    let deps = callback_deps().await;
    let mut rng = StdRng::seed_from_u64(SEED + 3);
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for case in 0..CASES {
        let mut query = String::new();
        for _ in 0..rng.gen_range(0..6) {
            let name = [
                "state",
                "code",
                "error",
                "scope",
                "state",
                head_text(&mut rng).as_str(),
            ]
            .choose(&mut rng)
            .unwrap()
            .to_string();
            let value = head_text(&mut rng);
            query.push_str(&format!(
                "{}={}&",
                url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>(),
                url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
            ));
        }
        query.truncate(query.floor_char_boundary(API_GATEWAY_HEAD_LIMIT / 2));
        let mut event = HttpApiEvent::get("/oauth/google/callback").query(&query);
        for _ in 0..rng.gen_range(0..4) {
            let cookie = if rng.r#gen::<bool>() {
                format!("__Host-calsync_state={}", head_text(&mut rng))
            } else {
                head_text(&mut rng)
            };
            event = event.cookie(&cookie);
        }
        if rng.gen_range(0..5) == 0 {
            event = event.header("accept", "application/json");
        }
        let answer =
            common::answered(Box::pin(http::callback_router(&deps, event.request())).await);
        let status = answer.status().as_u16();
        assert!(
            (400..500).contains(&status),
            "case {case}: {status} for {query:.300}"
        );
        let body = match answer.body() {
            Body::Text(text) => text.clone(),
            Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            other => format!("{other:?}"),
        };
        assert!(
            ["invalid_state", "state_mismatch", "invalid_request"]
                .iter()
                .any(|code| body.contains(code)),
            "case {case}: {status} {body:.300}"
        );
        *statuses.entry(status).or_default() += 1;
    }
    assert!(deps.grants.get("anyone").await.unwrap().is_none());
    assert!(deps.lifecycle.events().is_empty());
    println!("callbacks: {CASES} cases, answers {statuses:?}");
    assert_a_real_code_is_refused_unseen(&deps).await;
}

/// A callback with a real-looking code (sentinel-marked) and no cookie is refused, and the code
/// reaches no log line or answer; then the scan.
async fn assert_a_real_code_is_refused_unseen(deps: &CallbackDeps<Fakes>) {
    let marked = google_emulator::state::sentinel_token;
    let query = format!("code={}&state={}", marked(40), marked(30));
    let event = HttpApiEvent::get("/oauth/google/callback").query(&query);
    let answer = common::answered(Box::pin(http::callback_router(deps, event.request())).await);
    assert!(answer.status().is_client_error());
    common::assert_nothing_leaked_in(&[], &[], None);
}

#[tokio::test]
async fn oversized_and_malformed_api_gateway_events() {
    let deps = callback_deps().await;
    // As large as API Gateway lets through: a head at its limit (query and 50 cookies), and a
    // 1 MB body (the limit is 10 MB).
    let huge = "s".repeat(1 << 20);
    let part = API_GATEWAY_HEAD_LIMIT / 4;
    let mut event = HttpApiEvent::get("/oauth/google/callback")
        .query(&format!("state={}&code={}", &huge[..part], &huge[..part]))
        .body(huge.as_bytes());
    for i in 0..50 {
        event = event.cookie(&format!("c{i}={}", &huge[..part / 50]));
    }
    let answer = common::answered(Box::pin(http::callback_router(&deps, event.request())).await);
    assert_eq!(answer.status().as_u16(), 400);

    // Events that are not API Gateway v2 requests are refused by the runtime's parser, with a
    // message, before any handler runs.
    for text in [
        "",
        "null",
        "[]",
        "{\"version\":\"2.0\",\"routeKey\":7}",
        "{\"version\":\"2.0\",\"rawPath\":\"/oauth/google/callback\",\"requestContext\":\"x\"}",
        "{\"version\":\"2.0\",\"headers\":[1,2]}",
    ] {
        let parsed =
            serde_json::from_str::<aws_lambda_events::event::apigw::ApiGatewayV2httpRequest>(text);
        let error = parsed.expect_err(text);
        assert!(!error.to_string().is_empty());
    }
    assert_a_real_code_is_refused_unseen(&deps).await;
}
