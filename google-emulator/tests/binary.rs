//! The `google-emulator` binary: flags, the ready line, and one request log line per call that
//! never carries a token.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

/// Kills the child process if an assertion fails before the test stops it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_registers_the_client_from_flags_and_logs_no_secret() {
    let child = Command::new(env!("CARGO_BIN_EXE_google-emulator"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            "https://other.example.test/cb",
            "--redirect-uri",
            REDIRECT_URI,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut child = KillOnDrop(child);
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("google-emulator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let base = Url::parse(base).unwrap();
    assert!(base.as_str().ends_with('/'));

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut auth = base.join("o/oauth2/v2/auth").unwrap();
    auth.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", DEFAULT_SCOPES)
        .append_pair("access_type", "offline")
        .append_pair("state", "s")
        .append_pair("code_challenge", &challenge(VERIFIER))
        .append_pair("code_challenge_method", "S256");
    let consent: Value = http
        .post(base.join("__emulator/consent").unwrap())
        .json(&json!({"authorization_url": auth.as_str(), "account": ALICE, "decision": "allow"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let params = redirect_params(&consent);
    let code = param(&params, "code").unwrap();
    let response = http
        .post(base.join("token").unwrap())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let mut revoke = base.join("revoke").unwrap();
    revoke.query_pairs_mut().append_pair("token", access);
    assert_eq!(
        http.post(revoke).send().await.unwrap().status(),
        StatusCode::OK
    );
    let secrets: Value = http
        .get(base.join("__emulator/issued-secrets").unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mut logs = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("/token"), "one line per request: {logs}");
    assert!(logs.contains("/revoke"));
    let secrets = secrets["values"].as_array().unwrap();
    assert!(secrets.len() >= 5);
    for secret in secrets {
        let secret = secret.as_str().unwrap();
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[test]
fn binary_refuses_unknown_flags_with_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_google-emulator"))
        .arg("--nope")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown argument --nope"), "{stderr}");
}
