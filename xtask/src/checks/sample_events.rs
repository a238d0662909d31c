//! Runs every file of `events/` against the local stack's functions under the RIE and checks each
//! answer against `events/expected.json`.
//!
//! An expectation names the function (template logical id) and what the answer must hold:
//! `status`; `headers` (name to required prefix); `location_query` (a JSON subset of the
//! `Location` header's query parameters, so a redirect to Google carries PKCE and its other
//! parameters); `cookies` (substrings one `Set-Cookie` value must all contain, so the attributes
//! belong to the same cookie); `body_contains` (substrings of the body); `body_json` (a JSON subset of the
//! parsed body, string leaves ending in `*` are prefixes); `result` (a JSON subset of a non-HTTP
//! function's answer). `${VAR}` in any string is the stack's environment variable. `"enforced":
//! false` reports a mismatch as pending instead of failing (for behaviour not built yet).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, ensure};
use serde::Deserialize;
use serde_json::Value;

use crate::local_aws::stack::State;
use testkit::api_gateway::{answer_header, answer_set_cookies};
use testkit::rie;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub function: String,
    #[serde(default = "yes")]
    pub enforced: bool,
    #[serde(default)]
    pub note: Option<String>,
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub location_query: Option<Value>,
    #[serde(default)]
    pub cookies: Vec<String>,
    #[serde(default)]
    pub body_contains: Vec<String>,
    pub body_json: Option<Value>,
    pub result: Option<Value>,
}

fn yes() -> bool {
    true
}

pub fn load_expectations(dir: &Path) -> Result<BTreeMap<String, Expectation>> {
    let path = dir.join("expected.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every event file (all `*.json` but `env.json` and `expected.json`).
pub fn event_files(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json") && n != "env.json" && n != "expected.json")
        .collect();
    files.sort();
    Ok(files)
}

/// Invokes every file under the RIE and prints one line for each; fails when an enforced
/// expectation does not hold. Returns the summary line.
pub async fn check_all(dir: &Path, state: &State) -> Result<String> {
    let expectations = load_expectations(dir)?;
    let http = reqwest::Client::new();
    let files = event_files(dir)?;
    let (mut failures, mut pending) = (0, 0);
    for file in &files {
        let Some(expectation) = expectations.get(file) else {
            failures += 1;
            println!("    FAIL     {file}: no entry in events/expected.json");
            continue;
        };
        let event: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file))?)
            .with_context(|| format!("parsing events/{file}"))?;
        let function = state
            .functions
            .get(&expectation.function)
            .ok_or_else(|| anyhow!("events/expected.json: no function {}", expectation.function))?;
        let answer = rie::invoke(&http, &function.invoke_url, &event).await?;
        match check(expectation, &answer, &state.env) {
            Ok(()) => println!("    ok       {file}"),
            Err(why) if expectation.enforced => {
                failures += 1;
                println!("    FAIL     {file}: {why}");
            }
            Err(why) => {
                pending += 1;
                println!("    pending  {file}: {why}");
            }
        }
    }
    ensure!(
        failures == 0,
        "{failures} of {} event files failed",
        files.len()
    );
    Ok(format!(
        "{} event files, {} passed, {pending} pending",
        files.len(),
        files.len() - pending
    ))
}

fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in env {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

/// Whether `answer` holds everything `expectation` asks; the first difference otherwise.
pub fn check(
    expectation: &Expectation,
    answer: &Value,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let short = || {
        let text = answer.to_string();
        text.chars().take(300).collect::<String>()
    };
    if let Some(error) = answer.get("errorType") {
        return Err(format!("the function failed: {error} {}", short()));
    }
    if let Some(status) = expectation.status {
        let got = answer.get("statusCode").and_then(Value::as_u64);
        if got != Some(u64::from(status)) {
            return Err(format!("status {got:?}, expected {status}: {}", short()));
        }
    }
    for (name, prefix) in &expectation.headers {
        let prefix = expand(prefix, env);
        match answer_header(answer, name) {
            Some(v) if v.starts_with(&prefix) => {}
            other => return Err(format!("header {name} is {other:?}, expected {prefix}...")),
        }
    }
    if let Some(expected) = &expectation.location_query {
        let location = answer_header(answer, "location").unwrap_or_default();
        let url = url::Url::parse(&location).map_err(|e| format!("Location {location:?}: {e}"))?;
        let query: serde_json::Map<String, Value> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        subset(expected, &Value::Object(query), env)
            .map_err(|p| format!("Location {location}: {p}"))?;
    }
    if !expectation.cookies.is_empty() {
        let cookies = answer_set_cookies(answer);
        let holds_all = |c: &String| expectation.cookies.iter().all(|n| c.contains(n.as_str()));
        if !cookies.iter().any(holds_all) {
            return Err(format!(
                "no Set-Cookie holds all of {:?} (got {cookies:?})",
                expectation.cookies
            ));
        }
    }
    let body = answer
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for needle in &expectation.body_contains {
        let needle = expand(needle, env);
        if !body.contains(&needle) {
            return Err(format!("body lacks {needle:?}: {}", short()));
        }
    }
    if let Some(expected) = &expectation.body_json {
        let parsed: Value = serde_json::from_str(body)
            .map_err(|e| format!("body is not JSON ({e}): {}", short()))?;
        subset(expected, &parsed, env).map_err(|p| format!("body: {p}"))?;
    }
    if let Some(expected) = &expectation.result {
        subset(expected, answer, env).map_err(|p| format!("result: {p}: {}", short()))?;
    }
    Ok(())
}

/// `expected` is contained in `got`: objects by key, arrays exactly, strings ending in `*` as prefixes.
fn subset(expected: &Value, got: &Value, env: &BTreeMap<String, String>) -> Result<(), String> {
    match (expected, got) {
        (Value::Object(e), Value::Object(g)) => {
            for (key, value) in e {
                let inner = g.get(key).ok_or_else(|| format!("missing {key}"))?;
                subset(value, inner, env).map_err(|p| format!("{key}: {p}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(g)) if e.len() == g.len() => {
            e.iter().zip(g).try_for_each(|(e, g)| subset(e, g, env))
        }
        (Value::String(e), Value::String(g)) => {
            let e = expand(e, env);
            match e.strip_suffix('*') {
                Some(prefix) if g.starts_with(prefix) => Ok(()),
                _ if &e == g => Ok(()),
                _ => Err(format!("{g:?} is not {e:?}")),
            }
        }
        (e, g) if e == g => Ok(()),
        (e, g) => Err(format!("{g} is not {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expectation(value: Value) -> Expectation {
        serde_json::from_value(value).unwrap()
    }

    fn env() -> BTreeMap<String, String> {
        BTreeMap::from([("AUTH".to_string(), "http://g/auth".to_string())])
    }

    #[test]
    fn a_redirect_with_its_cookie_passes_and_a_501_fails() {
        let e = expectation(json!({
            "function": "F", "status": 302,
            "headers": {"location": "${AUTH}?"},
            "cookies": ["__Host-", "HttpOnly"]
        }));
        let good = json!({
            "statusCode": 302,
            "headers": {"Location": "http://g/auth?state=x"},
            "cookies": ["__Host-calsync=1; HttpOnly; Secure"]
        });
        assert_eq!(check(&e, &good, &env()), Ok(()));
        let stub = json!({"statusCode": 501, "headers": {}, "body": "not implemented"});
        assert!(check(&e, &stub, &env()).unwrap_err().contains("status"));
        let wrong_place = json!({
            "statusCode": 302, "headers": {"location": "https://evil/"},
            "cookies": ["__Host-calsync=1; HttpOnly"]
        });
        assert!(
            check(&e, &wrong_place, &env())
                .unwrap_err()
                .contains("location")
        );
    }

    #[test]
    fn json_bodies_and_results_match_as_subsets() {
        let e = expectation(json!({
            "function": "F", "status": 200,
            "body_json": {"authorization_url": "${AUTH}*", "connected": false}
        }));
        let good = json!({"statusCode": 200,
            "body": "{\"authorization_url\":\"http://g/auth?x\",\"connected\":false,\"extra\":1}"});
        assert_eq!(check(&e, &good, &env()), Ok(()));
        let bad = json!({"statusCode": 200, "body": "{\"authorization_url\":\"http://g/auth?x\",\"connected\":true}"});
        assert!(check(&e, &bad, &env()).is_err());

        let stream = expectation(json!({"function": "S", "result": {"batchItemFailures": []}}));
        assert_eq!(
            check(&stream, &json!({"batchItemFailures": []}), &env()),
            Ok(())
        );
        let failed =
            json!({"errorType": "&str", "errorMessage": "event-sync is not implemented yet"});
        assert!(
            check(&stream, &failed, &env())
                .unwrap_err()
                .contains("failed")
        );
        let one_failure = json!({"batchItemFailures": [{"itemIdentifier": "1"}]});
        assert!(check(&stream, &one_failure, &env()).is_err());
    }
}
