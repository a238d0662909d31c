//! The AWS Lambda Runtime Interface Emulator (the one `sam local invoke` runs, from the aws-sam-cli
//! wheel): starting a built function under it, and invoking it with an event.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::process;

/// Starts `binary` under the RIE, detached, invocable at `127.0.0.1:port`; the runtime API (the
/// function's side) listens on `api_port`. The function sees exactly `env` (plus `PATH`).
pub async fn start_detached(
    rie: &Path,
    binary: &Path,
    port: u16,
    api_port: u16,
    env: &BTreeMap<String, String>,
    log: &Path,
    pid_file: &Path,
) -> Result<u32> {
    let mut command = Command::new(rie);
    command
        .arg("--runtime-interface-emulator-address")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--runtime-api-address")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg(binary)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env);
    let pid = process::spawn_detached(&mut command, log, pid_file)?;
    process::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
        "the Runtime Interface Emulator",
    )
    .await?;
    Ok(pid)
}

/// The invoke URL of a function served by the RIE on `port`.
pub fn invoke_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/2015-03-31/functions/function/invocations")
}

/// Invokes the function behind `url` with `event`; returns what the function answered (its
/// result, or Lambda's `{"errorType", "errorMessage"}` when it failed).
pub async fn invoke(http: &reqwest::Client, url: &str, event: &Value) -> Result<Value> {
    let response = http
        .post(url)
        .json(event)
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .with_context(|| format!("invoking {url}"))?;
    let text = response.text().await?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}
