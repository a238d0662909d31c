//! Child processes of the dev tooling: free ports, waiting for a port to answer, processes tied to
//! the lifetime of the test process, and detached processes tracked by pid files.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A loopback port that was free a moment ago (the kernel's pick for port 0).
pub fn free_port() -> Result<u16> {
    free_port_on(IpAddr::from([127, 0, 0, 1]))
}

/// A port of `ip` that was free a moment ago.
pub fn free_port_on(ip: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("no free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`, or fails after `timeout` naming `what`.
/// (A readiness check of a process just started, not a test's synchronisation.)
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not open {addr} within {timeout:?}");
        }
        // Short: the benchmark's spawn-to-first-answer includes this wait.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `program args..` so that it dies with the calling process: a shell runs it in the
/// background and kills it when its stdin (a pipe only we hold) reaches end of file, which is
/// when this process exits however it exits.
pub fn spawn_tied(program: &Path, args: &[&str], log: &Path) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new("sh")
        .arg("-c")
        .arg(r#""$0" "$@" </dev/null & child=$!; cat >/dev/null; kill "$child" 2>/dev/null"#)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Starts a long-lived process in its own process group (so a terminal's Ctrl-C to the command
/// that started it leaves it running), output to `log`, and records its pid in `pid_file`.
pub fn spawn_detached(command: &mut Command, log: &Path, pid_file: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let pid = child.id();
    std::fs::write(pid_file, format!("{pid}\n"))?;
    Ok(pid)
}

/// Whether a process with this pid is alive (and not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The pids of `pid`'s children (of every thread of it).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Reads a pid file; `None` when it is absent or unreadable.
pub fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Sends SIGTERM to `pid` (only that process) and waits up to `timeout` for it to end; then SIGKILL.
pub async fn stop_pid(pid: u32, timeout: Duration) -> Result<()> {
    if !is_alive(pid) {
        return Ok(());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `done` until it holds or `timeout` passes (signals are delivered asynchronously).
    async fn eventually(timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    #[tokio::test]
    async fn a_tied_process_dies_when_its_stdin_closes() {
        let dir = std::env::temp_dir().join(format!("calsync-tied-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let mut wrapper = spawn_tied(
            Path::new("/bin/sh"),
            &[
                "-c",
                &format!("echo $$ > {}; exec sleep 600", pid_file.display()),
            ],
            &dir.join("log"),
        )
        .unwrap();
        assert!(eventually(Duration::from_secs(10), || read_pid(&pid_file).is_some()).await);
        let pid = read_pid(&pid_file).unwrap();
        assert!(is_alive(pid));
        // What happens when the test process exits: the pipe's write end closes.
        drop(wrapper.stdin.take());
        wrapper.wait().unwrap();
        assert!(eventually(Duration::from_secs(10), || !is_alive(pid)).await);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_detached_process_is_stopped_by_its_pid_file() {
        let dir = std::env::temp_dir().join(format!("calsync-detached-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("sleep.pid");
        let pid = spawn_detached(
            Command::new("sleep").arg("600"),
            &dir.join("sleep.log"),
            &pid_file,
        )
        .unwrap();
        assert_eq!(read_pid(&pid_file), Some(pid));
        assert!(is_alive(pid));
        stop_pid(pid, Duration::from_secs(10)).await.unwrap();
        // Our own child stays a zombie until reaped; is_alive counts that as stopped.
        assert!(!is_alive(pid));
        // A stale pid is fine.
        stop_pid(pid, Duration::from_secs(1)).await.unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
