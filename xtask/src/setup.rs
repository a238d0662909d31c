//! `cargo xtask setup`: the project's Python venv in `.dev/venv` (moto's server, aws-sam-cli with
//! the Runtime Interface Emulator, cfn-lint, cargo-lambda, the Google API discovery documents),
//! installed from the pinned `xtask/requirements.txt`. A stamp file holding that list makes
//! re-runs instant; changing the list reinstalls.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use testkit::paths;

pub const REQUIREMENTS: &str = include_str!("../requirements.txt");
const STAMP: &str = ".calsync-requirements";

/// Whether `venv` holds exactly the pinned requirements.
pub fn is_current(venv: &Path) -> bool {
    std::fs::read_to_string(venv.join(STAMP)).is_ok_and(|s| s == REQUIREMENTS)
        && venv.join("bin/moto_server").exists()
        && venv.join("bin/sam").exists()
}

/// Installs the venv into `.dev/venv` unless it is current; returns its path.
pub fn install() -> Result<PathBuf> {
    let venv = paths::own_venv();
    if is_current(&venv) {
        println!("setup: {} is current", venv.display());
        return Ok(venv);
    }
    std::fs::create_dir_all(paths::dev_dir())?;
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    println!(
        "setup: pip install of moto, aws-sam-cli, cfn-lint, cargo-lambda into {} (first run: about a minute)",
        venv.display()
    );
    let requirements = paths::dev_dir().join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS)?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--disable-pip-version-check", "--quiet", "-r"])
        .arg(&requirements))?;
    std::fs::write(venv.join(STAMP), REQUIREMENTS)?;
    println!("setup: installed {}", venv.display());
    Ok(venv)
}

/// The venv to use, installing `.dev/venv` when none is found.
pub fn ensure() -> Result<PathBuf> {
    match paths::venv() {
        Ok(venv) => Ok(venv),
        Err(_) => install(),
    }
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
