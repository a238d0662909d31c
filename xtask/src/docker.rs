//! Docker's engine for `sam local`, the local Lambda base image, and the address at which the
//! containers reach this machine.
//!
//! An engine that already answers (`docker info`: Docker Desktop, a CI runner's, one started by an
//! earlier run) is used as it is. Otherwise Debian's engine is installed when missing and started
//! with its state in `.dev/docker/` and an explicit bridge address: an engine that creates `docker0`
//! itself may report no gateway for it (`../shared/notes/local-aws.md`), and the containers need
//! that gateway to reach moto and the Google emulator. `cargo xtask sam --fresh-engine` runs the
//! whole sam check on an engine that has never run before, in a network namespace of its own,
//! because a machine that ran Docker once hides exactly that first-run behaviour.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::process::Command;

use crate::apt;

/// The locally built stand-in for `public.ecr.aws/lambda/provided:al2023`.
pub const BASE_IMAGE: &str = "local/lambda-provided:al2023";
/// Bumped when the base image's recipe changes, so an older local image is rebuilt.
const BASE_REVISION: &str = "2";
const BASE_LABEL: &str = "calsync.base-revision";
/// Where an engine started here keeps its state (default `.dev/docker`).
const STATE_VARIABLE: &str = "CALSYNC_DOCKER_STATE";
/// The address the containers reach this machine at, when it cannot be found out (an engine in a
/// VM, such as Docker Desktop's: there, the services must listen where this address leads).
pub const HOST_ADDRESS_VARIABLE: &str = "CALSYNC_DOCKER_HOST_ADDRESS";
/// The bridge an engine started without `--bridge` creates and uses.
const BRIDGE: &str = "docker0";
/// How long the engine may take to answer after `dockerd` starts.
const DOCKERD_READY: Duration = Duration::from_secs(60);
/// The network namespace of `--fresh-engine`.
const FRESH_NAMESPACE: &str = "calsync-fresh-engine";

/// Makes sure an engine answers: the one already running, or Debian's, installed and started.
pub async fn ensure_engine(dev: &Path) -> Result<()> {
    if answers().await {
        return Ok(());
    }
    let socket = match std::env::var("DOCKER_HOST") {
        Err(_) => None,
        Ok(host) if host.starts_with("unix://") => Some(host),
        Ok(host) => bail!(
            "DOCKER_HOST={host} does not answer (`docker info` fails); start that engine, \
             unset DOCKER_HOST to let calsync start one here, or pass --no-sam"
        ),
    };
    if apt::which("dockerd").is_none() || apt::which("docker").is_none() {
        apt::install(&["docker.io"], "sam local invoke", "--no-sam")?;
    }
    let dir = std::env::var_os(STATE_VARIABLE)
        .map(PathBuf::from)
        .unwrap_or_else(|| dev.join("docker"));
    start_dockerd(&dir, socket.as_deref()).await
}

/// `docker info` answers on the engine `docker` talks to (`DOCKER_HOST` or the default socket).
async fn answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Starts `dockerd` with its state in `dir`, on `socket` (a `unix://` DOCKER_HOST) or the default.
async fn start_dockerd(dir: &Path, socket: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir.join("data"))?;
    let log_path = dir.join("dockerd.log");
    // An engine of ours that is still starting or stopping holds the pid file: wait for it to
    // answer or go; a pid file whose process is gone is stale.
    let pidfile = dir.join("dockerd.pid");
    let deadline = Instant::now() + DOCKERD_READY;
    while let Ok(pid) = std::fs::read_to_string(&pidfile) {
        if !Path::new("/proc").join(pid.trim()).exists() {
            let _ = std::fs::remove_file(&pidfile);
            break;
        }
        if answers().await {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "dockerd (pid {}) neither answers nor exits; read {} and stop it",
            pid.trim(),
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let bridge = bridge_address_to_use()?;
    println!(
        "sam: starting dockerd, bridge {BRIDGE} at {}/{} (log {})",
        bridge.0,
        bridge.1,
        log_path.display()
    );
    let log = std::fs::File::create(&log_path)?;
    // Its own process group: the engine outlives this run and a Ctrl-C of it.
    let mut command = std::process::Command::new("dockerd");
    command
        .args(["--iptables=false", "--ip-masq=false"])
        .arg(format!("--bip={}/{}", bridge.0, bridge.1))
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--pidfile")
        .arg(&pidfile);
    if let Some(socket) = socket {
        // A second engine beside the system's: its own socket and runtime state.
        command
            .arg(format!("--host={socket}"))
            .arg("--exec-root")
            .arg(dir.join("exec"));
    }
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().context("starting dockerd")?;
    let deadline = Instant::now() + DOCKERD_READY;
    loop {
        if answers().await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "dockerd exited ({status}) before answering: read {} (the last lines name the \
                 cause; a Docker engine needs root)",
                log_path.display()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "dockerd did not answer within {DOCKERD_READY:?}: read {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The bridge address for an engine started here: the one `docker0` already has (left by an
/// earlier engine), else the first usual Docker range that no route of this machine overlaps.
fn bridge_address_to_use() -> Result<(Ipv4Addr, u8)> {
    if let Some(existing) = interface_ipv4(BRIDGE) {
        return Ok(existing);
    }
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    free_bridge_address(&parse_routes(&routes))
        .ok_or_else(|| anyhow!("every candidate bridge range overlaps a route of this machine (/proc/net/route); start a Docker engine yourself"))
}

/// An IPv4 route: its network, its prefix length and its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    network: Ipv4Addr,
    prefix: u8,
    interface: String,
}

/// `/proc/net/route`: addresses and masks in hex, in the kernel's (little-endian) byte order.
fn parse_routes(table: &str) -> Vec<Route> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(fields.get(i)?, 16).ok();
            Some(Route {
                interface: fields.first()?.to_string(),
                // The kernel prints the address as the u32 it holds in memory (network order).
                network: Ipv4Addr::from(hex(1)?.to_le_bytes()),
                prefix: hex(7)?.count_ones() as u8,
            })
        })
        .collect()
}

/// Docker's own default pool (172.17-31.0.0/16), then 192.168.x.0/24: the first that no route
/// overlaps. The default route (prefix 0) overlaps everything and says nothing, so it is left out.
fn free_bridge_address(routes: &[Route]) -> Option<(Ipv4Addr, u8)> {
    let candidates = (17..=31)
        .map(|b| (Ipv4Addr::new(172, b, 0, 0), 16))
        .chain((200..=254).map(|c| (Ipv4Addr::new(192, 168, c, 0), 24)));
    candidates
        .filter(|(network, prefix)| {
            routes
                .iter()
                .filter(|r| r.prefix > 0 && r.interface != BRIDGE)
                .all(|r| !overlaps((*network, *prefix), (r.network, r.prefix)))
        })
        .map(|(network, prefix)| (Ipv4Addr::from(u32::from(network) + 1), prefix))
        .next()
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let shorter = a.1.min(b.1);
    let mask = u32::MAX.checked_shl(32 - u32::from(shorter)).unwrap_or(0);
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// An interface's first IPv4 address and prefix (`ip -4 -o addr show dev NAME`).
fn interface_ipv4(name: &str) -> Option<(Ipv4Addr, u8)> {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    let (address, prefix) = cidr.split_once('/')?;
    Some((address.parse().ok()?, prefix.parse().ok()?))
}

/// This machine as seen from inside `sam local`'s containers: [`HOST_ADDRESS_VARIABLE`] when set,
/// else the default bridge's gateway as the engine reports it, else the bridge interface's own
/// address (an engine that created `docker0` itself may report no gateway).
pub async fn host_address() -> Result<IpAddr> {
    if let Ok(address) = std::env::var(HOST_ADDRESS_VARIABLE) {
        return address
            .parse()
            .with_context(|| format!("{HOST_ADDRESS_VARIABLE}={address} is not an IP address"));
    }
    let output = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}|{{index .Options \"com.docker.network.bridge.name\"}}",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running docker network inspect bridge")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (gateways, interface) = text.trim().split_once('|').unwrap_or((text.trim(), ""));
    if let Some(gateway) = gateways
        .split_whitespace()
        .find_map(|a| a.parse::<Ipv4Addr>().ok())
    {
        return Ok(IpAddr::V4(gateway));
    }
    let interface = if interface.is_empty() {
        BRIDGE
    } else {
        interface
    };
    interface_ipv4(interface)
        .map(|(address, _)| IpAddr::V4(address))
        .ok_or_else(|| {
            anyhow!(
                "the engine reports no gateway for its bridge network and this machine has no \
                 interface {interface} (an engine in a VM, such as Docker Desktop's?): set \
                 {HOST_ADDRESS_VARIABLE} to the address containers reach this machine at, or pass \
                 --no-sam (docker network inspect bridge said {:?})",
                text.trim()
            )
        })
}

/// Imports [`BASE_IMAGE`] from a debootstrapped Debian unless the engine has this revision.
pub async fn ensure_base_image(dev: &Path) -> Result<()> {
    let label = Command::new("docker")
        .args(["image", "inspect", "--format"])
        .arg(format!("{{{{ index .Config.Labels \"{BASE_LABEL}\" }}}}"))
        .arg(BASE_IMAGE)
        .stderr(Stdio::null())
        .output()
        .await?;
    if label.status.success() && String::from_utf8_lossy(&label.stdout).trim() == BASE_REVISION {
        return Ok(());
    }
    let tarball = ensure_base_tarball(dev).await?;
    run_checked(
        Command::new("docker")
            .arg("import")
            .arg("--change")
            .arg(format!("LABEL {BASE_LABEL}={BASE_REVISION}"))
            .arg(&tarball)
            .arg(BASE_IMAGE),
        "docker import",
    )
    .await?;
    Ok(())
}

/// The base image's root file system as a tarball, cached in `.dev/lambda-base/`.
async fn ensure_base_tarball(dev: &Path) -> Result<PathBuf> {
    let dir = dev.join("lambda-base");
    let tarball = dir.join(format!("bookworm-minbase-r{BASE_REVISION}.tar"));
    if tarball.exists() {
        return Ok(tarball);
    }
    if apt::which("debootstrap").is_none() {
        apt::install(&["debootstrap"], "the local Lambda base image", "--no-sam")?;
    }
    std::fs::create_dir_all(&dir)?;
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    println!("sam: debootstrap of Debian bookworm (minbase) for {BASE_IMAGE} (about a minute)");
    run_checked(
        Command::new("debootstrap")
            // The official image trusts the usual CAs; a function calling Google needs them.
            .args(["--variant=minbase", "--include=ca-certificates", "bookworm"])
            .arg(&rootfs),
        "debootstrap",
    )
    .await?;
    let partial = dir.join("bookworm-minbase.tar.partial");
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
        "tar of the rootfs",
    )
    .await?;
    std::fs::rename(&partial, &tarball)?;
    std::fs::remove_dir_all(&rootfs)?;
    Ok(tarball)
}

/// `cargo xtask sam --fresh-engine`: the whole sam check against an engine that has never run:
/// a new network namespace (so the engine creates its bridge itself, as on a machine that never
/// ran Docker), a new data root, its own socket and runtime state. What needs the network
/// (packages, the debootstrap) is done here first; the namespace has only loopback.
pub async fn run_on_fresh_engine(root: &Path) -> Result<()> {
    let dev = root.join(".dev");
    ensure!(
        apt::which("ip").is_some() && apt::which("nsenter").is_some(),
        "--fresh-engine needs `ip` (Debian package iproute2) and `nsenter` (util-linux)"
    );
    if apt::which("dockerd").is_none() || apt::which("docker").is_none() {
        apt::install(&["docker.io"], "sam local invoke", "--no-sam")?;
    }
    ensure_base_tarball(&dev).await?;
    let state = dev.join("docker-fresh");
    // Left over from an interrupted run: both would make the engine less than fresh.
    let _ = std::fs::remove_dir_all(&state);
    let _ = ip(&["netns", "delete", FRESH_NAMESPACE]).await;
    std::fs::create_dir_all(&state)?;
    ip(&["netns", "add", FRESH_NAMESPACE]).await?;
    ip(&["-n", FRESH_NAMESPACE, "link", "set", "lo", "up"]).await?;
    println!(
        "sam: fresh engine: network namespace {FRESH_NAMESPACE}, state {}",
        state.display()
    );
    // nsenter enters only the network namespace: `ip netns exec` would also remount /sys, which
    // hides the cgroup mounts a Docker engine needs ("Devices cgroup isn't mounted").
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{FRESH_NAMESPACE}"))
        .arg(std::env::current_exe()?)
        .arg("sam")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", state.join("docker.sock").display()),
        )
        .env(STATE_VARIABLE, &state)
        .current_dir(root)
        .status()
        .await
        .context("running the sam check in the fresh engine's namespace")?;
    stop_engine(&state).await;
    let _ = ip(&["netns", "delete", FRESH_NAMESPACE]).await;
    if status.success() {
        let _ = std::fs::remove_dir_all(&state);
    }
    ensure!(
        status.success(),
        "the sam check failed on a fresh engine ({status}); the engine's log is {}",
        state.join("dockerd.log").display()
    );
    println!("sam: fresh engine: the whole sam check passed");
    Ok(())
}

/// Stops the engine whose state is in `dir` (by its pid file) and waits for it to go.
async fn stop_engine(dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(dir.join("dockerd.pid")) else {
        return;
    };
    let pid = pid.trim().to_string();
    let _ = Command::new("kill").arg(&pid).status().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new("/proc").join(&pid).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ip(args: &[&str]) -> Result<String> {
    run_checked(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
    .await
}

/// Runs a command to completion; its standard output, or an error with the tail of both streams.
pub async fn run_checked(command: &mut Command, what: &str) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    ensure!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        tail(&String::from_utf8_lossy(&output.stdout), 20),
        tail(&String::from_utf8_lossy(&output.stderr), 20)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(network: [u8; 4], prefix: u8, interface: &str) -> Route {
        Route {
            network: network.into(),
            prefix,
            interface: interface.into(),
        }
    }

    #[test]
    fn the_kernel_route_table_is_read_in_its_byte_order() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            parse_routes(table),
            [
                route([0, 0, 0, 0], 0, "eth0"),
                route([192, 0, 2, 0], 24, "eth0"),
                route([172, 17, 0, 0], 16, "docker0"),
            ]
        );
    }

    #[test]
    fn the_bridge_takes_dockers_default_when_nothing_overlaps_it() {
        let routes = [
            route([0, 0, 0, 0], 0, "eth0"),
            route([192, 0, 2, 0], 24, "eth0"),
        ];
        assert_eq!(
            free_bridge_address(&routes),
            Some((Ipv4Addr::new(172, 17, 0, 1), 16))
        );
    }

    #[test]
    fn the_bridge_avoids_every_network_the_machine_routes() {
        let routes = [
            route([172, 17, 5, 0], 24, "eth0"),
            route([172, 18, 0, 0], 16, "tun0"),
        ];
        assert_eq!(
            free_bridge_address(&routes),
            Some((Ipv4Addr::new(172, 19, 0, 1), 16))
        );
        // A VPN routing all of 172.16.0.0/12 pushes it out of Docker's pool.
        let vpn = [
            route([172, 16, 0, 0], 12, "tun0"),
            route([192, 168, 200, 0], 24, "wlan0"),
        ];
        assert_eq!(
            free_bridge_address(&vpn),
            Some((Ipv4Addr::new(192, 168, 201, 1), 24))
        );
    }

    #[test]
    fn a_bridge_left_by_an_earlier_engine_does_not_count_as_taken() {
        let routes = [route([172, 17, 0, 0], 16, BRIDGE)];
        assert_eq!(
            free_bridge_address(&routes),
            Some((Ipv4Addr::new(172, 17, 0, 1), 16))
        );
    }
}
