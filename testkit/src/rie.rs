//! The AWS Lambda Runtime Interface Emulator (the one `sam local invoke` runs, from the aws-sam-cli
//! wheel): starting a built function under it, and invoking it with an event.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{paths, process};

/// `binary` under the RIE, invocable at `127.0.0.1:port`; the runtime API (the function's side)
/// listens on `api_port`. The function sees exactly `env` (plus `PATH`).
fn command<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    rie: &Path,
    binary: &Path,
    port: u16,
    api_port: u16,
    env: impl IntoIterator<Item = (K, V)>,
) -> Command {
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
    command
}

async fn wait_until_invocable(port: u16) -> Result<()> {
    process::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
        "the Runtime Interface Emulator",
    )
    .await
}

/// Starts `binary` under the RIE, detached with a pid file, for the long-running local stack.
pub async fn start_detached(
    rie: &Path,
    binary: &Path,
    port: u16,
    api_port: u16,
    env: &BTreeMap<String, String>,
    log: &Path,
    pid_file: &Path,
) -> Result<u32> {
    let pid = process::spawn_detached(
        &mut command(rie, binary, port, api_port, env),
        log,
        pid_file,
    )?;
    wait_until_invocable(port).await?;
    Ok(pid)
}

/// A function under the RIE for one test; it stops when this is dropped.
pub struct TiedFunction {
    child: tokio::process::Child,
    pub invoke_url: String,
}

impl TiedFunction {
    /// The function's own process (the RIE's child, started on the first invocation), for what
    /// `/proc` says of it; `None` before that.
    pub fn runtime_pid(&self) -> Option<u32> {
        process::children(self.child.id()?).into_iter().next()
    }
}

/// Starts `binary` under the project venv's RIE on free ports, for one test; the RIE's output
/// (its `INIT REPORT` and `REPORT` lines, the function's logs) goes to `log`, or nowhere.
pub async fn start_tied<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    binary: &Path,
    env: impl IntoIterator<Item = (K, V)>,
    log: Option<&Path>,
) -> Result<TiedFunction> {
    let out = log
        .map(|log| {
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))
        })
        .transpose()?;
    let output = || {
        out.as_ref()
            .and_then(|f| f.try_clone().ok())
            .map_or_else(Stdio::null, Stdio::from)
    };
    let rie = paths::rie(&paths::venv()?)?;
    let (port, api_port) = (process::free_port()?, process::free_port()?);
    let child = tokio::process::Command::from(command(&rie, binary, port, api_port, env))
        .stdout(output())
        .stderr(output())
        .kill_on_drop(true)
        .spawn()
        .context("starting the Runtime Interface Emulator")?;
    wait_until_invocable(port).await?;
    Ok(TiedFunction {
        child,
        invoke_url: invoke_url(port),
    })
}

/// Starts `binary` under the RIE, invokes it once with `event`, stops it, and returns its answer.
pub async fn invoke_once<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    http: &reqwest::Client,
    binary: &Path,
    env: impl IntoIterator<Item = (K, V)>,
    event: &Value,
) -> Result<Value> {
    let function = start_tied(binary, env, None)
        .await
        .context("the function under the RIE (cargo xtask setup installs the RIE)")?;
    invoke(http, &function.invoke_url, event).await
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
