//! The deployed template's hardening rules (least privilege, encryption, recovery, the stream
//! mapping's limits as the README states them), checked on `template.yaml` as data.

use serde_json::Value;
use testkit::template::Template;

/// Actions whose only accepted resource is `"*"`: AWS names no resource for them.
const ACTIONS_WITHOUT_RESOURCE: [&str; 1] = ["dynamodb:ListStreams"];

fn template() -> Value {
    Template::load_workspace().unwrap().as_json().clone()
}

fn resources_of<'a>(root: &'a Value, type_: &str) -> Vec<(&'a String, &'a Value)> {
    root["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == type_)
        .collect()
}

/// A value or a list of them, as IAM writes `Action` and `Resource`.
fn one_or_many(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// `!GetAtt Resource.Attribute` in long form: the resource.
fn get_att(value: &Value) -> Option<&str> {
    match &value["Fn::GetAtt"] {
        Value::Array(parts) => parts.first()?.as_str(),
        Value::String(dotted) => dotted.split('.').next(),
        _ => None,
    }
}

#[test]
fn every_function_has_a_role_of_its_own_and_no_sam_managed_policy() {
    let root = template();
    let functions = resources_of(&root, "AWS::Serverless::Function");
    assert_eq!(functions.len(), 4);
    let mut roles = Vec::new();
    for (id, function) in functions {
        let properties = &function["Properties"];
        assert!(
            properties.get("Policies").is_none(),
            "{id}: SAM's Policies add AWS's managed execution policies (logs and streams or queues on \"*\")"
        );
        let role = get_att(&properties["Role"]).unwrap_or_else(|| panic!("{id} names no Role"));
        assert_eq!(root["Resources"][role]["Type"], "AWS::IAM::Role", "{id}");
        roles.push(role.to_string());
        // Its logs go to a group of its own, and its role may write there only.
        let group = properties["LoggingConfig"]["LogGroup"]["Ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} names no log group"));
        assert_eq!(root["Resources"][group]["Type"], "AWS::Logs::LogGroup");
        let statements = statements(&root["Resources"][role]);
        let logs: Vec<&Value> = statements
            .iter()
            .filter(|s| {
                one_or_many(&s["Action"])
                    .iter()
                    .any(|a| a.as_str().is_some_and(|a| a.starts_with("logs:")))
            })
            .copied()
            .collect();
        assert_eq!(logs.len(), 1, "{id}: one logs statement");
        assert_eq!(get_att(&logs[0]["Resource"]), Some(group), "{id}'s logs");
    }
    roles.sort();
    roles.dedup();
    assert_eq!(roles.len(), 4, "no two functions share a role");
}

fn statements(role: &Value) -> Vec<&Value> {
    let assume = &role["Properties"]["AssumeRolePolicyDocument"]["Statement"];
    assert_eq!(
        assume,
        &serde_json::json!([{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]),
        "only Lambda assumes a function's role"
    );
    role["Properties"]["Policies"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|policy| policy["PolicyDocument"]["Statement"].as_array().unwrap())
        .collect()
}

#[test]
fn no_statement_has_a_wildcard_unless_aws_requires_one() {
    let root = template();
    for (id, role) in resources_of(&root, "AWS::IAM::Role") {
        for statement in statements(role) {
            assert_eq!(statement["Effect"], "Allow", "{id}");
            let actions: Vec<&str> = one_or_many(&statement["Action"])
                .into_iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            for action in &actions {
                assert!(!action.contains('*'), "{id}: action {action}");
            }
            for resource in one_or_many(&statement["Resource"]) {
                if resource == "*" {
                    assert!(
                        actions.iter().all(|a| ACTIONS_WITHOUT_RESOURCE.contains(a)),
                        "{id}: {actions:?} on \"*\""
                    );
                } else if let Some(text) = resource.as_str() {
                    assert!(!text.contains('*'), "{id}: resource {text}");
                }
            }
        }
    }
}

/// The actions `role` allows on a resource `!GetAtt`'d (or `!Ref`'d) from `resource`.
/// A statement's resources, both branches of an `!If` included.
fn resources(value: &Value) -> Vec<&Value> {
    one_or_many(value)
        .into_iter()
        .flat_map(|r| match &r["Fn::If"] {
            Value::Array(parts) if parts.len() == 3 => parts[1..].iter().collect(),
            _ => vec![r],
        })
        .collect()
}

fn actions_on(root: &Value, role: &str, resource: &str) -> Vec<String> {
    let mut actions: Vec<String> = statements(&root["Resources"][role])
        .into_iter()
        .filter(|s| {
            resources(&s["Resource"])
                .iter()
                .any(|r| get_att(r) == Some(resource) || r["Ref"] == resource)
        })
        .flat_map(|s| {
            one_or_many(&s["Action"])
                .into_iter()
                .map(|a| a.as_str().unwrap().to_string())
        })
        .collect();
    actions.sort();
    actions
}

#[test]
fn each_function_may_do_only_what_its_code_does_on_the_tables() {
    let root = template();
    let grants = |role| actions_on(&root, role, "GrantsTable");
    let states = |role| actions_on(&root, role, "SyncStateTable");
    // Status, connect and disconnect read, write and delete whole grants; nothing there updates
    // part of one.
    assert_eq!(
        grants("OAuthCallbackRole"),
        [
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem"
        ]
    );
    // UpdateItem: the lifecycle events' markers (`GrantStore::mark_reported`) and the refresh
    // lease (`GrantStore::claim_refresh`); Scan: the sweep; BatchGetItem: a stream batch reads
    // its users' grants at once (`GrantStore::get_many`).
    assert_eq!(
        grants("EventSyncRole"),
        [
            "dynamodb:BatchGetItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem"
        ]
    );
    assert_eq!(
        grants("ResyncRole"),
        [
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Scan",
            "dynamodb:UpdateItem"
        ]
    );
    // Sync states are written whole, conditionally; a stream batch reads its states at once.
    assert_eq!(
        states("EventSyncRole"),
        [
            "dynamodb:BatchGetItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem"
        ]
    );
    assert_eq!(
        states("ResyncRole"),
        ["dynamodb:GetItem", "dynamodb:PutItem"]
    );
    assert!(grants("OAuthStartRole").is_empty() && states("OAuthStartRole").is_empty());
    // Flow records: oauth-start writes them and uses links up; the callback reads flows and uses
    // them up; the sync functions never see one.
    let flows = |role| actions_on(&root, role, "OAuthFlowsTable");
    assert_eq!(
        flows("OAuthStartRole"),
        ["dynamodb:DeleteItem", "dynamodb:PutItem"]
    );
    assert_eq!(
        flows("OAuthCallbackRole"),
        ["dynamodb:DeleteItem", "dynamodb:GetItem"]
    );
    assert!(flows("EventSyncRole").is_empty() && flows("ResyncRole").is_empty());
    // Only the resync reads the app's rows; event-sync sees them only in its stream.
    let events = |role| actions_on(&root, role, "EventsTable");
    let existing_stream = |role| actions_on(&root, role, "ExistingEventsStreamArn");
    // The stream: its mapping reads it with event-sync's role; the resync reads again a range
    // Lambda gave up on (GetShardIterator at its start, GetRecords), and describes nothing.
    let mapping = [
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
    ];
    assert_eq!(events("EventSyncRole"), mapping);
    assert_eq!(existing_stream("EventSyncRole"), mapping);
    let redrive = ["dynamodb:GetRecords", "dynamodb:GetShardIterator"];
    // GetItem: the table itself (its Query is on the index, a `!Sub`).
    let resync_table = ["dynamodb:GetItem"];
    let mut resync_on_events = [&redrive[..], &resync_table[..]].concat();
    resync_on_events.sort();
    assert_eq!(events("ResyncRole"), resync_on_events);
    assert_eq!(existing_stream("ResyncRole"), redrive);
}

#[test]
fn every_table_and_queue_is_encrypted_and_state_is_recoverable() {
    let root = template();
    for (id, table) in resources_of(&root, "AWS::DynamoDB::Table") {
        let properties = &table["Properties"];
        assert_eq!(properties["SSESpecification"]["SSEEnabled"], true, "{id}");
        // Flow records live ten minutes (TTL): nothing in them is worth restoring or keeping.
        let transient = id == "OAuthFlowsTable";
        assert_eq!(
            properties["TimeToLiveSpecification"]["Enabled"] == true,
            transient,
            "{id}"
        );
        let recoverable =
            properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] == true;
        assert_eq!(recoverable, !transient, "{id}: point-in-time recovery");
        let kept = if transient { "Delete" } else { "Retain" };
        assert_eq!(table["DeletionPolicy"], kept, "{id}");
    }
    for (id, queue) in resources_of(&root, "AWS::SQS::Queue") {
        let properties = &queue["Properties"];
        assert!(
            properties["SqsManagedSseEnabled"] == true
                || properties.get("KmsMasterKeyId").is_some(),
            "{id}"
        );
    }
}

#[test]
fn the_stream_mapping_gives_up_where_the_readme_says() {
    let root = template();
    let stream = &root["Resources"]["EventSyncFunction"]["Properties"]["Events"]["EventsStream"]["Properties"];
    let readme =
        std::fs::read_to_string(testkit::paths::workspace_root().join("README.md")).unwrap();
    assert_eq!(stream["MaximumRetryAttempts"], 10);
    assert!(readme.contains("`MaximumRetryAttempts` (10)"));
    assert_eq!(stream["MaximumRecordAgeInSeconds"], 21600);
    assert!(readme.contains("`MaximumRecordAgeInSeconds` (6 hours)"));
    assert_eq!(stream["BisectBatchOnFunctionError"], true);
    assert_eq!(
        get_att(&stream["DestinationConfig"]["OnFailure"]["Destination"]),
        Some("EventSyncFailureQueue")
    );
    // The on-failure queue has a consumer.
    let resync_events = &root["Resources"]["ResyncFunction"]["Properties"]["Events"];
    assert!(
        resync_events
            .as_object()
            .unwrap()
            .values()
            .any(|e| e["Type"] == "SQS"
                && get_att(&e["Properties"]["Queue"]) == Some("EventSyncFailureQueue"))
    );
}

#[test]
fn every_alarm_notifies_the_optional_topic_and_watches_what_the_readme_says() {
    let root = template();
    let alarms = resources_of(&root, "AWS::CloudWatch::Alarm");
    let mut ids: Vec<&str> = alarms.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "EventSyncIteratorAgeAlarm",
            "FunctionErrorsAlarm",
            "FunctionThrottlesAlarm",
            "InvalidGrantsAlarm",
            "ResyncDeadLettersAlarm",
            "StreamGaveUpAlarm",
        ]
    );
    let notify = serde_json::json!({"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]});
    let readme =
        std::fs::read_to_string(testkit::paths::workspace_root().join("README.md")).unwrap();
    for (id, alarm) in &alarms {
        let properties = &alarm["Properties"];
        assert_eq!(properties["AlarmActions"], notify, "{id}");
        assert_eq!(properties["OKActions"], notify, "{id}");
        assert_eq!(properties["TreatMissingData"], "notBreaching", "{id}");
        assert!(
            readme.contains(&format!("`{id}`")),
            "the README says what to do about {id}"
        );
        // calsync's own metrics in an alarm are metrics the code writes.
        for metric in properties["Metrics"].as_array().into_iter().flatten() {
            let stat = &metric["MetricStat"]["Metric"];
            if stat["Namespace"] == calsync::metrics::NAMESPACE {
                let name = stat["MetricName"].as_str().unwrap();
                assert!(metric_names().contains(&name), "{id}: {name}");
            }
        }
    }
    // The four functions' errors and throttles, each summed over all four.
    for id in ["FunctionErrorsAlarm", "FunctionThrottlesAlarm"] {
        let watched: Vec<&Value> = root["Resources"][id]["Properties"]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["MetricStat"]["Metric"]["Dimensions"][0].get("Value"))
            .collect();
        assert_eq!(watched.len(), 4, "{id}");
    }
}

fn metric_names() -> Vec<&'static str> {
    calsync::metrics::Metric::ALL
        .iter()
        .map(|m| m.name())
        .collect()
}

#[test]
fn the_dashboard_shows_every_metric_and_alarm() {
    let root = template();
    let body = root["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("a !Sub of the dashboard's JSON");
    // What CloudFormation substitutes: names, ARNs, the threshold (a number).
    let substituted = with_placeholders(body);
    let dashboard: Value = serde_json::from_str(&substituted).expect("the dashboard body is JSON");
    let text = dashboard.to_string();
    for name in metric_names() {
        assert!(text.contains(name), "the dashboard shows {name}");
    }
    let alarms: Vec<String> = dashboard["widgets"][0]["properties"]["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    for (id, _) in resources_of(&root, "AWS::CloudWatch::Alarm") {
        assert!(
            alarms.contains(&format!("<{id}.Arn>")),
            "the alarm widget lists {id}"
        );
    }
}

/// `${Name}` and `${Name.Attribute}` of a `!Sub` replaced by `<Name>` (a number where the
/// template puts one outside quotes).
fn with_placeholders(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}').expect("a closed ${") + start;
        let name = &rest[start + 2..end];
        out.push_str(&rest[..start]);
        let quoted = out.ends_with('"');
        out.push_str(&if quoted {
            format!("<{name}>")
        } else {
            "0".to_string()
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}
