//! The test kit against the real parts: moto's server over HTTP and the Google emulator.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;
use testkit::{TestStack, stack::OAUTH_REDIRECT_URI};

#[tokio::test]
async fn tables_exist_with_the_templates_keys_indexes_streams_and_ttl() {
    let stack = TestStack::start().await.unwrap();
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let mut tables = HashMap::new();
    for (variable, key) in [
        ("EVENTS_TABLE", "event_id"),
        ("GRANTS_TABLE", "user_id"),
        ("OAUTH_FLOWS_TABLE", "state"),
        ("SYNC_STATE_TABLE", "event_id"),
    ] {
        let name = &stack.env[variable];
        assert!(name.starts_with(&stack.prefix), "{variable}={name}");
        let table = dynamodb
            .describe_table()
            .table_name(name)
            .send()
            .await
            .unwrap()
            .table
            .unwrap();
        assert_eq!(table.key_schema()[0].attribute_name(), key, "{variable}");
        tables.insert(variable, table);
    }
    assert_eq!(
        tables["EVENTS_TABLE"]
            .stream_specification()
            .and_then(|s| s.stream_view_type())
            .map(|v| v.as_str()),
        Some("NEW_AND_OLD_IMAGES")
    );
    for variable in ["EVENTS_TABLE", "SYNC_STATE_TABLE"] {
        assert_eq!(
            tables[variable].global_secondary_indexes()[0].index_name(),
            Some("by_user"),
            "{variable}"
        );
    }
    let ttl = dynamodb
        .describe_time_to_live()
        .table_name(&stack.env["OAUTH_FLOWS_TABLE"])
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|t| t.attribute_name()),
        Some("expires_at")
    );
}

#[tokio::test]
async fn environment_configures_the_functions_and_secrets_are_readable() {
    let stack = TestStack::start().await.unwrap();
    for variable in [
        "GRANTS_TABLE",
        "OAUTH_FLOWS_TABLE",
        "SYNC_STATE_TABLE",
        "EVENTS_TABLE",
        "GOOGLE_CLIENT_SECRET_ID",
        "TOKEN_KEYS_SECRET_ID",
        "OAUTH_REDIRECT_URI",
        "ALLOWED_RETURN_ORIGINS",
        "DEFAULT_RETURN_URL",
        "GOOGLE_SCOPES",
        "GOOGLE_AUTH_URL",
        "GOOGLE_TOKEN_URL",
        "GOOGLE_REVOKE_URL",
        "GOOGLE_CALENDAR_API_URL",
        "SYNC_CONCURRENCY",
        "EVENT_BUS_NAME",
        "KEEPALIVE_DAYS",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(stack.env.contains_key(variable), "{variable} missing");
    }
    assert_eq!(stack.env["OAUTH_REDIRECT_URI"], OAUTH_REDIRECT_URI);
    assert_eq!(
        stack.env["GOOGLE_TOKEN_URL"],
        stack.emulator.base_url.join("token").unwrap().as_str()
    );

    let secrets = aws_sdk_secretsmanager::Client::new(&stack.sdk);
    let read = |variable: &'static str| {
        let secrets = secrets.clone();
        let id = stack.env[variable].clone();
        async move {
            let text = secrets
                .get_secret_value()
                .secret_id(id)
                .send()
                .await
                .unwrap()
                .secret_string
                .unwrap();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let client = read("GOOGLE_CLIENT_SECRET_ID").await;
    assert_eq!(client["web"]["client_id"], stack.client_id.as_str());
    assert_eq!(client["web"]["client_secret"], stack.client_secret.as_str());
    let keyring = read("TOKEN_KEYS_SECRET_ID").await;
    let current = keyring["current"].as_str().unwrap();
    let key = keyring["keys"][current].as_str().unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    assert_eq!(bytes.len(), 32);
}

#[tokio::test]
async fn two_stacks_do_not_share_tables() {
    let (a, b) = tokio::join!(TestStack::start(), TestStack::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.env["GRANTS_TABLE"], b.env["GRANTS_TABLE"]);
    assert_ne!(a.emulator.base_url, b.emulator.base_url);
}

#[tokio::test]
async fn the_emulator_knows_the_registered_client() {
    let stack = TestStack::start().await.unwrap();
    let stats = stack.http.get(stack.control("stats")).send().await.unwrap();
    assert!(stats.status().is_success(), "{}", stats.status());
    // The consent step accepts an authorization request for our client and redirect URI, and
    // refuses another redirect URI: the client was registered as the contract says.
    let authorization_url = |redirect: &str| {
        let mut url = stack.emulator.base_url.join("o/oauth2/v2/auth").unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &stack.client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair(
                "scope",
                "openid email https://www.googleapis.com/auth/calendar.events.owned",
            )
            .append_pair("state", "s")
            .append_pair(
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            )
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    };
    let consent = async |redirect: &str| {
        let url = authorization_url(redirect);
        let answer = stack.consent_answer(&url, "alice@example.com", "allow", &[]);
        answer.await.unwrap()
    };
    let (status, body) = consent(OAUTH_REDIRECT_URI).await;
    assert_eq!(status, 200);
    assert!(
        body["redirect"]
            .as_str()
            .unwrap()
            .starts_with(OAUTH_REDIRECT_URI)
    );
    let (status, _) = consent("https://evil.example.test/cb").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stream_records_have_lambdas_dynamodb_event_shape() {
    let stack = TestStack::start().await.unwrap();
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let table = &stack.env["EVENTS_TABLE"];
    let put = |title: &str| {
        dynamodb
            .put_item()
            .table_name(table)
            .item("event_id", AttributeValue::S("ev-1".into()))
            .item("user_id", AttributeValue::S("user-1".into()))
            .item("title", AttributeValue::S(title.into()))
            .send()
    };
    put("first").await.unwrap();
    put("second").await.unwrap();
    dynamodb
        .delete_item()
        .table_name(table)
        .key("event_id", AttributeValue::S("ev-1".into()))
        .send()
        .await
        .unwrap();

    let records = stack.stream_records("EventsTable").await.unwrap();
    let names: Vec<_> = records
        .iter()
        .map(|r| r["eventName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["INSERT", "MODIFY", "REMOVE"]);
    let modify = &records[1];
    assert_eq!(modify["dynamodb"]["OldImage"]["title"]["S"], "first");
    assert_eq!(modify["dynamodb"]["NewImage"]["title"]["S"], "second");
    assert_eq!(modify["dynamodb"]["Keys"]["event_id"]["S"], "ev-1");
    assert_eq!(modify["eventSource"], "aws:dynamodb");
    assert!(
        modify["eventSourceARN"]
            .as_str()
            .unwrap()
            .contains(&format!("table/{table}/stream/"))
    );
    let sequence: Vec<u128> = records
        .iter()
        .map(|r| {
            r["dynamodb"]["SequenceNumber"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(sequence.windows(2).all(|w| w[0] < w[1]), "{sequence:?}");

    // What Lambda's own event type reads, field by field.
    let event: aws_lambda_events::event::dynamodb::Event =
        serde_json::from_value(TestStack::stream_event(records)).unwrap();
    assert_eq!(event.records.len(), 3);
    assert_eq!(event.records[2].event_name, "REMOVE");
    assert!(event.records[2].change.new_image.is_empty());
    assert_eq!(
        event.records[0].change.sequence_number.as_deref(),
        Some(sequence[0].to_string().as_str())
    );
}

#[tokio::test]
async fn dump_tables_shows_every_item() {
    let stack = TestStack::start().await.unwrap();
    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    dynamodb
        .put_item()
        .table_name(&stack.env["GRANTS_TABLE"])
        .item("user_id", AttributeValue::S("user-dump".into()))
        .item("marker", AttributeValue::S("needle-8c1f".into()))
        .send()
        .await
        .unwrap();
    let dump = stack.dump_tables().await.unwrap();
    assert!(dump.contains("needle-8c1f"), "{dump}");
    let parsed: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(parsed.as_object().unwrap().len(), stack.tables.len());
}
