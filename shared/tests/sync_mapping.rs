//! The mapped Event resource checked against Google's Calendar v3 discovery document (shipped in
//! the google-api-python-client wheel of the project venv): every field we send exists in the
//! `Event` schema with the type we send, and `status` is one of its documented values. The
//! emulator the sync tests run against knows exactly the `Event` fields Google documents.

use std::collections::HashMap;

use calsync::mapping::EventRow;
use serde_dynamo::AttributeValue as A;
use serde_json::Value;

fn discovery() -> Value {
    let venv = testkit::paths::venv().expect("the project venv");
    for entry in std::fs::read_dir(venv.join("lib")).unwrap() {
        let path = entry
            .unwrap()
            .path()
            .join("site-packages/googleapiclient/discovery_cache/documents/calendar.v3.json");
        if path.exists() {
            return serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        }
    }
    panic!(
        "calendar.v3.json not found under {}/lib/*/site-packages: run `cargo xtask setup`",
        venv.display()
    );
}

/// Checks `value` against `schema` (resolving `$ref`s), naming the path of any mismatch.
fn check(doc: &Value, schema: &Value, value: &Value, path: &str) {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(name) => &doc["schemas"][name],
        None => schema,
    };
    match value {
        Value::Object(fields) => {
            for (name, inner) in fields {
                let field_schema = schema["properties"]
                    .get(name)
                    .or_else(|| schema.get("additionalProperties"))
                    .unwrap_or_else(|| panic!("{path}.{name} is not in the discovery document"));
                check(doc, field_schema, inner, &format!("{path}.{name}"));
            }
        }
        Value::Array(items) => {
            assert_eq!(schema["type"], "array", "{path} is not an array field");
            for item in items {
                check(doc, &schema["items"], item, &format!("{path}[]"));
            }
        }
        Value::String(_) => assert_eq!(schema["type"], "string", "{path} is not a string field"),
        other => panic!("{path}: unexpected JSON {other}"),
    }
}

fn row(pairs: &[(&str, &str)], recurrence: Option<&[&str]>) -> EventRow {
    let mut item: HashMap<String, A> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), A::S(v.to_string())))
        .collect();
    if let Some(lines) = recurrence {
        item.insert(
            "recurrence".into(),
            A::L(lines.iter().map(|l| A::S(l.to_string())).collect()),
        );
    }
    EventRow::from_image("app-event-1", &item.into()).unwrap()
}

#[test]
fn mapped_events_match_the_discovery_document() {
    let doc = discovery();
    let event_schema = serde_json::json!({"$ref": "Event"});
    let timed = row(
        &[
            ("user_id", "u"),
            ("title", "T"),
            ("description", "D"),
            ("location", "L"),
            ("start", "2026-12-01T09:00:00-05:00"),
            ("end", "2026-12-01T10:00:00-05:00"),
            ("time_zone", "America/New_York"),
        ],
        Some(&["RRULE:FREQ=WEEKLY;COUNT=2", "EXDATE:20261208T140000Z"]),
    );
    let all_day = row(
        &[
            ("user_id", "u"),
            ("title", "T"),
            ("start", "2026-12-24"),
            ("end", "2026-12-25"),
        ],
        None,
    );
    for event in [timed.to_google_event(), all_day.to_google_event()] {
        check(&doc, &event_schema, &event, "Event");
        let status = &doc["schemas"]["Event"]["properties"]["status"]["description"];
        assert!(
            status.as_str().unwrap().contains("\"confirmed\""),
            "{status}"
        );
    }
    // Google's rule for client-chosen ids: base32hex characters, 5 to 1024 of them.
    let id_rule = doc["schemas"]["Event"]["properties"]["id"]["description"]
        .as_str()
        .unwrap();
    assert!(id_rule.contains("base32hex"), "{id_rule}");
}

#[test]
fn the_emulator_knows_exactly_googles_event_fields() {
    let doc = discovery();
    let mut fields: Vec<&str> = doc["schemas"]["Event"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut emulated = google_emulator::calendar::EVENT_FIELDS.to_vec();
    emulated.sort_unstable();
    assert_eq!(emulated, fields);
}
