//! `cargo xtask test`: the whole CI in one command. Setup, `cargo fmt --check`, clippy with
//! warnings as errors, every test (cargo-nextest when installed, else `cargo test`; one moto
//! server for all of them), `sam validate --lint`, and every file of `events/` invoked under
//! the Runtime Interface Emulator against a running local stack with its answer checked. Every
//! step runs even after a failure, then a summary with timings; any failure exits non-zero.

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use testkit::{moto, paths, process};

use crate::checks::sample_events as event_checks;
use crate::checks::{browser, load, sam};
use crate::local_aws::stack;
use crate::{chromium, demo, docker, setup};

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The real-browser tests in headless Chromium (on unless `--no-browser`).
    pub browser: bool,
    /// `sam build` for the default architecture, and `sam build` + `sam local invoke` in Docker
    /// (on unless `--no-sam`).
    pub sam: bool,
}

impl Options {
    pub fn parse(args: &[&str]) -> Result<Self> {
        if let Some(unknown) = args
            .iter()
            .find(|a| !["--no-sam", "--no-browser"].contains(a))
        {
            bail!("test: unknown option {unknown}; usage: test [--no-browser] [--no-sam]");
        }
        Ok(Self {
            browser: !args.contains(&"--no-browser"),
            sam: !args.contains(&"--no-sam"),
        })
    }
}

/// The steps run so far, for the closing summary.
#[derive(Default)]
struct Summary(Vec<Step>);

struct Step {
    name: String,
    took: Duration,
    /// `None`: skipped by the flag named in the detail.
    passed: Option<bool>,
    detail: String,
}

impl Summary {
    /// Announces the step, runs it, and records its time and outcome; a failure does not stop CI.
    async fn step(&mut self, name: &str, run: impl Future<Output = Result<String>>) {
        println!("==> {name}");
        let started = Instant::now();
        let outcome = run.await;
        let took = started.elapsed();
        let (passed, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(e) => (false, format!("{e:#}")),
        };
        println!(
            "==> {name}: {} ({took:.1?})",
            if passed { "ok" } else { "FAILED" }
        );
        self.0.push(Step {
            name: name.into(),
            took,
            passed: Some(passed),
            detail,
        });
    }

    fn skip(&mut self, name: &str, flag: &str) {
        println!("==> {name}: skipped ({flag})");
        self.0.push(Step {
            name: name.into(),
            took: Duration::ZERO,
            passed: None,
            detail: format!("skipped ({flag})"),
        });
    }

    /// Prints one line per step; fails when any step failed.
    fn finish(self) -> Result<()> {
        println!("\nsummary");
        for step in &self.0 {
            let mark = match step.passed {
                None => "skip",
                Some(true) => "ok  ",
                Some(false) => "FAIL",
            };
            let took = match step.passed {
                None => "-".to_string(),
                Some(_) => format!("{:.1} s", step.took.as_secs_f64()),
            };
            println!("  {mark} {:<56} {took:>8}  {}", step.name, step.detail);
        }
        let count = |passed| self.0.iter().filter(|s| s.passed == passed).count();
        let (failed, skipped) = (count(Some(false)), count(None));
        ensure!(failed == 0, "{failed} step(s) failed");
        match skipped {
            0 => println!("all {} steps passed", self.0.len()),
            _ => println!(
                "{} steps passed, {skipped} skipped: this run does not prove them",
                count(Some(true))
            ),
        }
        Ok(())
    }
}

fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(paths::workspace_root()).args(args);
    command
}

fn run_command(mut command: Command) -> Result<String> {
    let status = command
        .status()
        .with_context(|| format!("could not start {:?}", command.get_program()))?;
    ensure!(status.success(), "{status}");
    Ok(String::new())
}

pub async fn run(options: &Options) -> Result<()> {
    let mut summary = Summary::default();
    let mut machine = Some(prepare_machine(options));
    let mut venv = None;
    summary
        .step("setup", async {
            venv = Some(setup::ensure()?);
            Ok(venv.iter().map(|v| v.display().to_string()).collect())
        })
        .await;
    let venv = venv.as_deref();
    summary
        .step("cargo fmt --all --check", async {
            run_command(cargo(&["fmt", "--all", "--check"]))
        })
        .await;
    summary
        .step(
            "cargo clippy --workspace --all-targets -- -D warnings",
            async {
                let clippy = [
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ];
                run_command(cargo(&clippy))
            },
        )
        .await;

    summary
        .step("duplicate crates in the functions (cargo tree -d)", async {
            duplicate_crates()
        })
        .await;

    // One moto server for the whole test run: with nextest every test is its own process and
    // would otherwise start its own.
    let moto = match venv {
        Some(venv) => start_test_moto(venv).await,
        None => Err(anyhow!("no venv")),
    };
    let test_command = |args: &[&str]| {
        let mut command = cargo(args);
        if let Some(venv) = venv {
            command.env("CALSYNC_VENV", venv);
        }
        if let Ok((endpoint, _)) = &moto {
            command.env("CALSYNC_TEST_AWS_ENDPOINT", endpoint);
        }
        command
    };
    if nextest_available() {
        let nextest = ["nextest", "run", "--workspace", "--no-fail-fast"];
        summary
            .step("cargo nextest run --workspace", async {
                run_command(test_command(&nextest))
            })
            .await;
        summary
            .step("cargo test --doc --workspace", async {
                run_command(test_command(&["test", "--doc", "--workspace"]))
            })
            .await;
    } else {
        summary
            .step("cargo test --workspace", async {
                run_command(test_command(&["test", "--workspace", "--no-fail-fast"]))
            })
            .await;
    }
    drop(moto);

    summary
        .step("sam validate --lint", async {
            let mut sam = Command::new(venv.context("no venv")?.join("bin/sam"));
            sam.args(["validate", "--lint"])
                .env("SAM_CLI_TELEMETRY", "0")
                .current_dir(paths::workspace_root());
            run_command(sam)
        })
        .await;
    summary
        .step(
            "events/ under the Runtime Interface Emulator",
            events_under_rie(),
        )
        .await;
    if let Some(preparing) = machine.take() {
        preparing.await?;
    }
    if options.browser {
        summary
            .step(
                "browser tests (headless Chromium, local stack)",
                on_local_stack(browser_tests),
            )
            .await;
    } else {
        summary.skip(
            "browser tests (headless Chromium, local stack)",
            "--no-browser",
        );
    }
    summary
        .step(
            "the demo story on the local stack",
            on_local_stack(demo_story),
        )
        .await;

    summary
        .step(
            "load on the connect routes (oha, local stack)",
            load_on_connect_routes(),
        )
        .await;

    let (arm64, docker) = (
        "sam build with the template's defaults (arm64)",
        "sam build + sam local invoke (x86_64, Docker)",
    );
    if options.sam {
        summary
            .step(
                arm64,
                sam::build_template_defaults(&paths::workspace_root()),
            )
            .await;
        summary
            .step(docker, async {
                sam::run_sam_checks(&paths::workspace_root()).await?;
                Ok(String::new())
            })
            .await;
    } else {
        summary.skip(arm64, "--no-sam");
        summary.skip(docker, "--no-sam");
    }
    summary.finish()
}

/// Prepares, in the background from the start, what the later steps need from the machine:
/// Chromium, a running Docker engine with the local Lambda base image, the default
/// architecture's Rust target, and oha (the load step's tool, built by cargo into `.dev/`). apt, debootstrap and rustup mostly wait on the network while the
/// steps before them (pip, clippy, the tests) use the CPU; on a fresh machine that takes them off
/// the critical path. The steps that need them wait for this first (so apt never runs twice at
/// once) and then find them ready; a failure here is only announced, and the step then tries
/// again itself and fails with its own message.
fn prepare_machine(options: &Options) -> tokio::task::JoinHandle<()> {
    let options = options.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let root = paths::workspace_root();
        let dev = paths::dev_dir();
        let mut ready = Vec::new();
        let mut report = |what: &'static str, outcome: Result<()>| match outcome {
            Ok(()) => ready.push(what),
            Err(error) => println!(
                "machine: preparing {what} in the background failed, its step will try again: {error:#}"
            ),
        };
        if options.browser {
            let found = tokio::task::spawn_blocking(chromium::find_or_install).await;
            report(
                "Chromium",
                found.map_err(anyhow::Error::from).and_then(|f| f.map(drop)),
            );
        }
        if options.sam {
            report("the Docker engine", docker::ensure_engine(&dev).await);
            if std::env::var_os(sam::IMAGE_VARIABLE).is_none_or(|image| image.is_empty()) {
                report(
                    "the Lambda base image",
                    docker::ensure_base_image(&dev).await,
                );
            }
            report(
                "the default architecture's Rust target",
                sam::ensure_default_rust_target(&root).await,
            );
        }
        // Last: the others wait on the network, oha's build on the CPU.
        let oha = tokio::task::spawn_blocking(load::ensure_oha).await;
        report(
            "oha",
            oha.map_err(anyhow::Error::from).and_then(|f| f.map(drop)),
        );
        if !ready.is_empty() {
            println!(
                "machine: {} ready ({:.0} s, in the background)",
                ready.join(", "),
                started.elapsed().as_secs_f64()
            );
        }
    })
}

/// Crates the functions link in more than one version today, each pinned by a dependency we do
/// not control (the README's "Crate versions" says which); any other fails the step, so the
/// list only shrinks.
const KNOWN_DUPLICATES: &[&str] = &[
    "base64",
    "block-buffer",
    "cpufeatures",
    "crypto-common",
    "digest",
    "sha2",
    "syn",
    "thiserror",
    "thiserror-impl",
];

/// `cargo tree -d` over the deployed functions: prints every crate they link twice and fails
/// on one that is not in [`KNOWN_DUPLICATES`].
fn duplicate_crates() -> Result<String> {
    let mut command = cargo(&["tree", "--duplicates", "--depth", "0", "--edges", "normal"]);
    for function in testkit::template::Template::load_workspace()?.functions()? {
        command.args(["--package", &function.binary]);
    }
    let output = command.output()?;
    ensure!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: std::collections::BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.trim_end_matches(" (proc-macro)").to_string())
        .collect();
    for line in &listed {
        println!("    {line}");
    }
    let new: Vec<&String> = listed
        .iter()
        .filter(|line| {
            let name = line.split_whitespace().next().unwrap_or_default();
            !KNOWN_DUPLICATES.contains(&name)
        })
        .collect();
    ensure!(
        new.is_empty(),
        "the functions now link a second version of {new:?}: align the versions, or add the \
         crate to KNOWN_DUPLICATES in xtask/src/ci.rs and say why in the README's \
         \"Crate versions\""
    );
    Ok(format!("{} crate versions, all known", listed.len()))
}

fn nextest_available() -> bool {
    cargo(&["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A moto server for the test step, tied to this process; its endpoint and the process handle.
async fn start_test_moto(venv: &std::path::Path) -> Result<(String, std::process::Child)> {
    let port = process::free_port()?;
    std::fs::create_dir_all(paths::logs_dir())?;
    let child = moto::start_tied(venv, port, &paths::logs_dir().join("test-moto.log")).await?;
    Ok((format!("http://127.0.0.1:{port}"), child))
}

/// Every event file under the RIE on the local stack (started here if it is not running, and
/// stopped again after). Pending (not enforced) mismatches are listed but do not fail.
pub async fn events_under_rie() -> Result<String> {
    on_local_stack(|state| async move {
        event_checks::check_all(&paths::workspace_root().join("events"), &state).await
    })
    .await
}

/// Runs `check` on the local stack, started here if it is not running (and stopped again after).
async fn on_local_stack<F, Fut>(check: F) -> Result<String>
where
    F: FnOnce(stack::State) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let was_running = stack::is_running();
    let state = stack::up(&stack::Options::default()).await?;
    let outcome = check(state).await;
    if !was_running {
        stack::down().await?;
    }
    outcome.map_err(|e| {
        anyhow::anyhow!(
            "{e:#} (each process of the local stack logs to {})",
            paths::logs_dir().display()
        )
    })
}

/// oha on the connect routes through the local stack's front (started here if not running).
pub async fn load_on_connect_routes() -> Result<String> {
    on_local_stack(|state| async move { load::run(&state).await }).await
}

/// The real-browser scenarios through the local HTTP front.
async fn browser_tests(state: stack::State) -> Result<String> {
    Ok(browser::run_all(&state).await?.join("; "))
}

/// The demo's story, which checks issue 5's promise: a row written to the Events table reaches the
/// calendar through the stream poller, tokens expire and are revoked, parked changes and older rows arrive through the resync.
async fn demo_story(state: stack::State) -> Result<String> {
    let held = demo::DemoStack::from_state(&state)
        .await?
        .run_and_print()
        .await?;
    Ok(format!("{held} of {held} steps"))
}
