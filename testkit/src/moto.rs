//! moto's server (DynamoDB, DynamoDB Streams, Secrets Manager, SQS over HTTP), from the venv.
//!
//! moto serves requests on threads and checks a write's condition apart from applying it, so two
//! conditional writes of one item at the same moment can both succeed (seen: 5 of 30 rounds of
//! ten concurrent claims had two winners). DynamoDB applies each conditional write atomically, so
//! moto runs under [`ATOMIC_WRITES`], which serialises its DynamoDB writes.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::process;

const STARTUP: Duration = Duration::from_secs(30);

/// Starts `moto_server`'s own `main` with DynamoDB's item writes made atomic as in DynamoDB.
const ATOMIC_WRITES: &str = r#"
import sys, threading
from moto.dynamodb.models import DynamoDBBackend
lock = threading.RLock()
def atomic(write):
    def locked(self, *args, **kwargs):
        with lock:
            return write(self, *args, **kwargs)
    return locked
for name in ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item"):
    setattr(DynamoDBBackend, name, atomic(getattr(DynamoDBBackend, name)))
from moto.server import main
main(sys.argv[1:])
"#;

fn program(venv: &Path) -> std::path::PathBuf {
    venv.join("bin/moto_server")
}

/// The Python that runs `moto_server` (its `#!` line, `/usr/bin/env python3` included), to start
/// it under [`ATOMIC_WRITES`].
fn interpreter(moto_server: &Path) -> Result<Vec<String>> {
    let script = std::fs::read_to_string(moto_server)
        .with_context(|| format!("reading {}", moto_server.display()))?;
    let shebang = script
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("#!"))
        .with_context(|| format!("{} has no #! line", moto_server.display()))?;
    Ok(shebang.split_whitespace().map(str::to_string).collect())
}

/// The command line that starts moto on `host:port`.
fn command(moto_server: &Path, host: &str, port: u16) -> Result<(std::path::PathBuf, Vec<String>)> {
    let mut words = interpreter(moto_server)?.into_iter();
    let python = words
        .next()
        .context("moto_server's #! line names no program")?;
    let args = ["-c", ATOMIC_WRITES, "-H", host, "-p", &port.to_string()];
    Ok((
        python.into(),
        words.chain(args.iter().map(|a| a.to_string())).collect(),
    ))
}

/// Starts the venv's moto on `127.0.0.1:port`, tied to this process's lifetime; returns once it
/// answers.
pub async fn start_tied(venv: &Path, port: u16, log: &Path) -> Result<Child> {
    start_tied_on(&program(venv), IpAddr::from([127, 0, 0, 1]), port, log).await
}

/// Starts `moto_server` on `ip:port`, tied to this process's lifetime (or until the returned
/// child is dropped); returns once it answers.
pub async fn start_tied_on(moto_server: &Path, ip: IpAddr, port: u16, log: &Path) -> Result<Child> {
    let (python, args) = command(moto_server, &ip.to_string(), port)?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = process::spawn_tied(&python, &args, log)?;
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
    let (python, args) = command(&program(venv), host, port)?;
    let mut command = Command::new(python);
    command.args(args);
    let pid = process::spawn_detached(&mut command, log, pid_file)?;
    let ip: IpAddr = host.parse()?;
    process::wait_for_port(SocketAddr::from((ip, port)), STARTUP, "moto_server").await?;
    Ok(pid)
}
