//! `cargo xtask events`: regenerates the DynamoDB stream events in `events/` from what moto's
//! stream really holds after an INSERT, a MODIFY and a REMOVE of an Events row, and `env.json`
//! (the environment `sam local invoke` gives each function) from the template.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, ensure};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};

use testkit::template::Template;
use testkit::{aws, moto, paths, process, streams, tables};

use crate::local_aws::stack;

/// Docker's default bridge gateway: how a `sam local invoke` container reaches the host.
pub const DOCKER_BRIDGE_GATEWAY: &str = "172.17.0.1";

/// The sample Events row (the ids the sam checks also use: `sam-demo-1` of `demo-user`).
fn row(event_id: &str, title: &str, end: &str) -> Vec<(&'static str, AttributeValue)> {
    let s = |v: &str| AttributeValue::S(v.to_string());
    vec![
        ("event_id", s(event_id)),
        ("user_id", s("demo-user")),
        ("title", s(title)),
        ("description", s("Weekly planning")),
        ("location", s("Room 4")),
        ("start", s("2026-12-02T10:00:00+01:00")),
        ("end", s(end)),
        ("time_zone", s("Europe/Berlin")),
        (
            "recurrence",
            AttributeValue::L(vec![s("RRULE:FREQ=WEEKLY;COUNT=4")]),
        ),
    ]
}

/// The files, in the order their records are written.
const STREAM_FILES: [&str; 4] = [
    "event-sync-insert.json",
    "event-sync-modify.json",
    "event-sync-remove.json",
    "event-sync-invalid-row.json",
];

pub async fn regenerate() -> Result<()> {
    let events_dir = paths::workspace_root().join("events");
    std::fs::create_dir_all(&events_dir)?;
    let venv = crate::setup::ensure()?;
    let port = process::free_port()?;
    let log = std::env::temp_dir().join(format!("calsync-events-moto-{}.log", std::process::id()));
    let _moto = moto::start_tied(&venv, port, &log).await?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let sdk = aws::local_sdk_config(&endpoint).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);

    let template = Template::load_workspace()?;
    let ctx = stack::context(&stack::Options::default())?;
    let spec = template
        .tables(&ctx)?
        .into_iter()
        .find(|t| t.logical_id == "EventsTable")
        .ok_or_else(|| anyhow!("template.yaml declares no EventsTable"))?;
    let table = Template::local_name(&ctx, &spec.logical_id);
    tables::create_table(&dynamodb, &spec, &table).await?;

    let put = async |item: Vec<(&'static str, AttributeValue)>| {
        let put = item.into_iter().fold(
            dynamodb.put_item().table_name(&table),
            |put, (name, value)| put.item(name, value),
        );
        put.send().await.map_err(aws_sdk_dynamodb::Error::from)
    };
    put(row("sam-demo-1", "Team sync", "2026-12-02T11:00:00+01:00")).await?;
    put(row(
        "sam-demo-1",
        "Team sync (moved)",
        "2026-12-02T11:00:00+01:00",
    ))
    .await?;
    dynamodb
        .delete_item()
        .table_name(&table)
        .key("event_id", AttributeValue::S("sam-demo-1".into()))
        .send()
        .await
        .map_err(aws_sdk_dynamodb::Error::from)?;
    // Ends before it starts: event-sync must mark it invalid, not fail the batch.
    put(row(
        "sam-demo-invalid",
        "Team sync",
        "2026-12-02T09:00:00+01:00",
    ))
    .await?;

    let records =
        streams::stream_records(&dynamodb, &streams::Streams::new(&endpoint), &table).await?;
    ensure!(
        records.len() == STREAM_FILES.len(),
        "expected {} stream records, moto returned {}",
        STREAM_FILES.len(),
        records.len()
    );
    for (record, file) in records.iter().zip(STREAM_FILES) {
        write_json(
            &events_dir.join(file),
            &streams::stream_event(vec![record.clone()]),
        )?;
        println!("events: wrote events/{file} ({})", record["eventName"]);
    }
    write_json(&events_dir.join("env.json"), &sam_env(&template)?)?;
    println!("events: wrote events/env.json (services at {DOCKER_BRIDGE_GATEWAY})");
    Ok(())
}

/// Each function's environment for `sam local invoke --env-vars events/env.json`: the local
/// stack's names, with moto and the Google emulator reached at Docker's bridge gateway.
pub fn sam_env(template: &Template) -> Result<Value> {
    let options = stack::Options {
        host: DOCKER_BRIDGE_GATEWAY.to_string(),
        aws_port: stack::DEFAULT_AWS_PORT,
        google_port: stack::DEFAULT_GOOGLE_PORT,
        front_port: stack::DEFAULT_FRONT_PORT,
        app_port: stack::DEFAULT_APP_PORT,
        rie_port: stack::DEFAULT_RIE_PORT,
    };
    let ctx = stack::context(&options)?;
    let mut out = BTreeMap::new();
    for function in template.functions()? {
        out.insert(
            function.logical_id.clone(),
            template.environment(&ctx, Some(&function.logical_id))?,
        );
    }
    Ok(json!(out))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}
