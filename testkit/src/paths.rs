//! Where things live: the workspace root, the ignored `.dev/` folder and the Python venv in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

/// The workspace root (the folder holding `template.yaml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// `.dev/`: the venv, the local stack's state, pid files and logs. Ignored by git.
pub fn dev_dir() -> PathBuf {
    workspace_root().join(".dev")
}

pub fn run_dir() -> PathBuf {
    dev_dir().join("run")
}

pub fn logs_dir() -> PathBuf {
    dev_dir().join("logs")
}

/// Where `cargo xtask setup` installs the venv.
pub fn own_venv() -> PathBuf {
    dev_dir().join("venv")
}

/// The venv to use: `$CALSYNC_VENV`, else this checkout's `.dev/venv`, else (in a linked git
/// worktree) the main checkout's `.dev/venv`, so worktrees share one install.
pub fn venv() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CALSYNC_VENV") {
        return Ok(PathBuf::from(dir));
    }
    let own = own_venv();
    if own.join("bin/moto_server").exists() {
        return Ok(own);
    }
    if let Some(main) = main_checkout() {
        let shared = main.join(".dev/venv");
        if shared.join("bin/moto_server").exists() {
            return Ok(shared);
        }
    }
    bail!(
        "no Python venv with moto's server at {}: run `cargo xtask setup` first (or set CALSYNC_VENV)",
        own.display()
    )
}

/// The main checkout of a linked git worktree (the parent of the shared `.git` folder).
fn main_checkout() -> Option<PathBuf> {
    let output = Command::new("git")
        .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .current_dir(workspace_root())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let common = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    common.parent().map(Path::to_path_buf)
}

/// The AWS Lambda Runtime Interface Emulator that the aws-sam-cli wheel carries, for this machine.
pub fn rie(venv: &Path) -> Result<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "x86_64",
    };
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib)? {
        let candidate = entry?
            .path()
            .join("site-packages/samcli/local/rapid")
            .join(format!("aws-lambda-rie-{arch}"));
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "the Runtime Interface Emulator is not in {} (is aws-sam-cli installed? run `cargo xtask setup`)",
        lib.display()
    )
}
