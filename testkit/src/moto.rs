//! moto's server (DynamoDB, DynamoDB Streams, Secrets Manager, SQS over HTTP), from the venv.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::Result;

use crate::process;

const STARTUP: Duration = Duration::from_secs(30);

fn program(venv: &Path) -> std::path::PathBuf {
    venv.join("bin/moto_server")
}

/// Starts the venv's moto on `127.0.0.1:port`, tied to this process's lifetime; returns once it
/// answers.
pub async fn start_tied(venv: &Path, port: u16, log: &Path) -> Result<Child> {
    start_tied_on(&program(venv), IpAddr::from([127, 0, 0, 1]), port, log).await
}

/// Starts `moto_server` on `ip:port`, tied to this process's lifetime (or until the returned
/// child is dropped); returns once it answers.
pub async fn start_tied_on(moto_server: &Path, ip: IpAddr, port: u16, log: &Path) -> Result<Child> {
    let (host, port_text) = (ip.to_string(), port.to_string());
    let child = process::spawn_tied(moto_server, &["-H", &host, "-p", &port_text], log)?;
    process::wait_for_port(SocketAddr::new(ip, port), STARTUP, "moto_server").await?;
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
    let ip: IpAddr = host.parse()?;
    process::wait_for_port(SocketAddr::from((ip, port)), STARTUP, "moto_server").await?;
    Ok(pid)
}
