//! Debian packages the checks need (Docker's engine, debootstrap, Chromium), installed when missing.
//!
//! `apt-get update` always runs first: a fresh machine's package lists are empty or stale, and an
//! install against them fails with "Unable to locate package". Where apt cannot be used (another
//! system, or neither root nor password-less sudo), the error says what to install by hand and
//! which flag skips the step instead.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

/// Installs `packages` with apt-get; `skip_flag` is the `cargo xtask test` flag that skips the
/// step needing them, named in the error when they cannot be installed here.
pub fn install(packages: &[&str], what_for: &str, skip_flag: &str) -> Result<()> {
    let by_hand = format!(
        "install {} (Debian/Ubuntu packages: {}) yourself, or pass {skip_flag} to skip {what_for}",
        what_for_tools(packages),
        packages.join(" ")
    );
    let Some(prefix) = privilege_prefix() else {
        bail!(
            "{what_for} needs {}, which are missing and apt-get cannot install them here (no apt-get, or neither root nor password-less sudo): {by_hand}",
            packages.join(" ")
        );
    };
    println!(
        "apt: installing {} for {what_for} (apt-get update, then apt-get install; about a minute)",
        packages.join(" ")
    );
    let apt = |args: &[&str]| -> Result<()> {
        let argv: Vec<&str> = prefix
            .iter()
            .copied()
            .chain(["apt-get"])
            .chain(args.iter().copied())
            .collect();
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("apt-get {} failed ({status}); {by_hand}", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "--no-install-recommends"]
        .iter()
        .copied()
        .chain(packages.iter().copied())
        .collect::<Vec<_>>())?;
    Ok(())
}

/// How apt-get may be run: directly as root (empty), through `sudo -n`, or not at all.
fn privilege_prefix() -> Option<Vec<&'static str>> {
    which("apt-get")?;
    if is_root() {
        return Some(Vec::new());
    }
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // sudo drops the environment: DEBIAN_FRONTEND goes through `env`.
    sudo.then(|| vec!["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"])
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's effective user.
    std::os::unix::fs::MetadataExt::uid(&match std::fs::metadata("/proc/self") {
        Ok(m) => m,
        Err(_) => return false,
    }) == 0
}

fn what_for_tools(packages: &[&str]) -> String {
    packages
        .iter()
        .map(|p| match *p {
            "docker.io" => "a Docker engine",
            "chromium" => "Chromium",
            "chromium-driver" => "a matching chromedriver",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A program on PATH (or in the sbin folders, where Debian puts dockerd's helpers).
pub fn which(binary: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}
