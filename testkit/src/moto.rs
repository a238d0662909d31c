//! moto's server (DynamoDB, DynamoDB Streams, Secrets Manager, SQS over HTTP), from the venv.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Result;

use crate::process;

const STARTUP: Duration = Duration::from_secs(30);

fn program(venv: &Path) -> std::path::PathBuf {
    venv.join("bin/moto_server")
}

/// Starts moto on `127.0.0.1:port`, tied to this process's lifetime; returns once it answers.
pub async fn start_tied(venv: &Path, port: u16, log: &Path) -> Result<Child> {
    let port_text = port.to_string();
    let child = process::spawn_tied(&program(venv), &["-H", "127.0.0.1", "-p", &port_text], log)?;
    process::wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        STARTUP,
        "moto_server",
    )
    .await?;
    Ok(child)
}

/// Starts moto detached on `host:port` with a pid file, for the long-running local stack.
pub async fn start_detached(
    venv: &Path,
    host: &str,
    port: u16,
    log: &Path,
    pid_file: &Path,
) -> Result<u32> {
    let mut command = Command::new(program(venv));
    command.args(["-H", host, "-p", &port.to_string()]);
    let pid = process::spawn_detached(&mut command, log, pid_file)?;
    let ip: std::net::IpAddr = host.parse()?;
    process::wait_for_port(SocketAddr::from((ip, port)), STARTUP, "moto_server").await?;
    Ok(pid)
}
