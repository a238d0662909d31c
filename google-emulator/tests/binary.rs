//! The `google-emulator` binary: flags, the ready line, and one request log line per call that
//! never carries a token.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use common::*;
use reqwest::StatusCode;
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

    let google = Google::at(base);
    let tokens = google.connect(ALICE).await;
    assert_eq!(google.revoke(&tokens.access_token).await.0, StatusCode::OK);
    let secrets = google.control_get("issued-secrets").await;

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
