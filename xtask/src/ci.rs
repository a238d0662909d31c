//! `cargo xtask test`: the whole CI in one command. Setup, `cargo fmt --check`, clippy with
//! warnings as errors, every test (cargo-nextest when installed, else `cargo test`; one moto
//! server for all of them), `sam validate --lint`, and every file of `events/` invoked under
//! the Runtime Interface Emulator against a running local stack with its answer checked. Every
//! step runs even after a failure, then a summary with timings; any failure exits non-zero.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use testkit::{moto, paths, process};

use crate::checks::sample_events::{self as event_checks, Verdict};
use crate::checks::{browser, sam};
use crate::local_aws::stack;
use crate::{demo, setup};

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

/// What each step did, in order, for the closing summary.
#[derive(Default)]
struct Summary(Vec<Step>);

struct Step {
    name: String,
    took: Duration,
    outcome: Outcome,
}

enum Outcome {
    Passed(String),
    Failed(String),
    /// Not run: the flag that skipped it.
    Skipped(&'static str),
}

impl Summary {
    fn record(&mut self, name: &str, started: Instant, outcome: Result<String, String>) {
        let took = started.elapsed();
        let outcome = match outcome {
            Ok(detail) => {
                println!("==> {name}: ok ({took:.1?})");
                Outcome::Passed(detail)
            }
            Err(e) => {
                println!("==> {name}: FAILED ({took:.1?}): {e}");
                Outcome::Failed(e)
            }
        };
        self.0.push(Step {
            name: name.to_string(),
            took,
            outcome,
        });
    }

    fn skip(&mut self, name: &str, flag: &'static str) {
        println!("==> {name}: skipped ({flag})");
        self.0.push(Step {
            name: name.to_string(),
            took: Duration::ZERO,
            outcome: Outcome::Skipped(flag),
        });
    }

    /// Prints the table; an error when any step failed.
    fn finish(self) -> Result<()> {
        println!("\nsummary");
        let (mut failed, mut skipped) = (0, 0);
        for step in &self.0 {
            let (mark, detail) = match &step.outcome {
                Outcome::Passed(detail) => ("ok  ", detail.clone()),
                Outcome::Failed(detail) => {
                    failed += 1;
                    ("FAIL", detail.clone())
                }
                Outcome::Skipped(flag) => {
                    skipped += 1;
                    ("skip", format!("skipped ({flag}): not proven by this run"))
                }
            };
            println!("  {mark} {:<28} {:>8.1?}  {detail}", step.name, step.took);
        }
        if failed > 0 {
            bail!("{failed} step(s) failed");
        }
        let passed = self.0.len() - skipped;
        if skipped > 0 {
            println!("{passed} steps passed, {skipped} skipped");
        } else {
            println!("all {passed} steps passed");
        }
        Ok(())
    }
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(paths::workspace_root());
    command
}

fn run_command(command: &mut Command) -> Result<String, String> {
    match command.status() {
        Ok(status) if status.success() => Ok(String::new()),
        Ok(status) => Err(format!("{status}")),
        Err(error) => Err(format!(
            "could not start {:?}: {error}",
            command.get_program()
        )),
    }
}

pub async fn run(options: &Options) -> Result<()> {
    let mut summary = Summary::default();

    let started = Instant::now();
    println!("==> setup");
    let venv: Option<PathBuf> = match setup::ensure() {
        Ok(venv) => {
            summary.record("setup", started, Ok(venv.display().to_string()));
            Some(venv)
        }
        Err(e) => {
            summary.record("setup", started, Err(format!("{e:#}")));
            None
        }
    };
    let with_venv = |command: &mut Command| {
        if let Some(venv) = &venv {
            command.env("CALSYNC_VENV", venv);
        }
    };

    let started = Instant::now();
    println!("==> cargo fmt --all --check");
    summary.record(
        "cargo fmt --all --check",
        started,
        run_command(cargo().args(["fmt", "--all", "--check"])),
    );

    let started = Instant::now();
    println!("==> cargo clippy --workspace --all-targets -- -D warnings");
    summary.record(
        "cargo clippy",
        started,
        run_command(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
    );

    let started = Instant::now();
    println!("==> duplicate crates in the functions (cargo tree -d)");
    summary.record(
        "duplicate crates",
        started,
        duplicate_crates().map_err(|e| format!("{e:#}")),
    );

    let started = Instant::now();
    // One moto server for the whole test run: with nextest every test is its own process and
    // would otherwise start its own.
    let moto = match &venv {
        Some(venv) => start_test_moto(venv).await.map_err(|e| format!("{e:#}")),
        None => Err("no venv".into()),
    };
    let with_test_env = |command: &mut Command| {
        with_venv(command);
        if let Ok((endpoint, _)) = &moto {
            command.env("CALSYNC_TEST_AWS_ENDPOINT", endpoint);
        }
    };
    if nextest_available() {
        println!("==> cargo nextest run --workspace");
        let mut test = cargo();
        test.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        with_test_env(&mut test);
        summary.record(
            "cargo nextest run --workspace",
            started,
            run_command(&mut test),
        );
        let started = Instant::now();
        println!("==> cargo test --doc --workspace");
        let mut doc = cargo();
        doc.args(["test", "--doc", "--workspace"]);
        with_test_env(&mut doc);
        summary.record("cargo test --doc", started, run_command(&mut doc));
    } else {
        println!("==> cargo test --workspace");
        let mut test = cargo();
        test.args(["test", "--workspace", "--no-fail-fast"]);
        with_test_env(&mut test);
        summary.record("cargo test --workspace", started, run_command(&mut test));
    }
    drop(moto);

    let started = Instant::now();
    println!("==> sam validate --lint");
    let outcome = match &venv {
        Some(venv) => run_command(
            Command::new(venv.join("bin/sam"))
                .args(["validate", "--lint"])
                .env("SAM_CLI_TELEMETRY", "0")
                .current_dir(paths::workspace_root()),
        ),
        None => Err("no venv".into()),
    };
    summary.record("sam validate --lint", started, outcome);

    let started = Instant::now();
    println!("==> events/ under the Runtime Interface Emulator");
    let outcome = events_under_rie().await.map_err(|e| format!("{e:#}"));
    summary.record("events/ under the RIE", started, outcome);

    if options.browser {
        let started = Instant::now();
        println!("==> browser tests (headless Chromium through the local stack)");
        let outcome = on_local_stack(browser_tests)
            .await
            .map_err(|e| format!("{e:#}"));
        summary.record("browser tests", started, outcome);
    } else {
        summary.skip("browser tests", "--no-browser");
    }

    let started = Instant::now();
    println!("==> the demo story on the local stack");
    let outcome = on_local_stack(demo_story)
        .await
        .map_err(|e| format!("{e:#}"));
    summary.record("demo story", started, outcome);

    if options.sam {
        let started = Instant::now();
        println!("==> sam build with the template's defaults (arm64, what a user deploys)");
        let outcome = sam::build_template_defaults(&paths::workspace_root())
            .await
            .map_err(|e| format!("{e:#}"));
        summary.record("sam build (arm64)", started, outcome);

        let started = Instant::now();
        println!("==> sam build + sam local invoke (x86_64, Docker)");
        let outcome = sam::run_sam_checks(&paths::workspace_root())
            .await
            .map(|()| String::new())
            .map_err(|e| format!("{e:#}"));
        summary.record("sam build + sam local invoke", started, outcome);
    } else {
        summary.skip("sam build (arm64)", "--no-sam");
        summary.skip("sam build + sam local invoke", "--no-sam");
    }

    summary.finish()
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
    let mut command = cargo();
    command.args(["tree", "--duplicates", "--depth", "0", "--edges", "normal"]);
    for function in testkit::template::Template::load_workspace()?.functions()? {
        command.args(["--package", &function.binary]);
    }
    let output = command.output()?;
    if !output.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
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
    if !new.is_empty() {
        bail!(
            "the functions now link a second version of {new:?}: align the versions, or add the \
             crate to KNOWN_DUPLICATES in xtask/src/ci.rs and say why in the README's \
             \"Crate versions\""
        );
    }
    Ok(format!("{} crate versions, all known", listed.len()))
}

fn nextest_available() -> bool {
    cargo()
        .args(["nextest", "--version"])
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

/// Starts the local stack if it is not running (and stops it again afterwards), then checks every
/// event file. Pending (not enforced) mismatches are listed but do not fail.
pub async fn events_under_rie() -> Result<String> {
    let was_running = stack::is_running();
    let state = stack::up(&stack::Options::default()).await?;
    let checked = event_checks::check_all(&paths::workspace_root().join("events"), &state).await;
    if !was_running {
        stack::down().await?;
    }
    let checked = checked?;
    let mut failures = 0;
    let mut pending = 0;
    for c in &checked {
        match &c.verdict {
            Verdict::Pass => println!("    ok       {}", c.file),
            Verdict::Pending(why) => {
                pending += 1;
                println!("    pending  {}: {why}", c.file);
            }
            Verdict::Fail(why) => {
                failures += 1;
                println!("    FAIL     {}: {why}", c.file);
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} event files failed", checked.len());
    }
    Ok(format!(
        "{} event files, {} passed, {pending} pending",
        checked.len(),
        checked.len() - pending
    ))
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

/// The real-browser scenarios through the local HTTP front.
async fn browser_tests(state: stack::State) -> Result<String> {
    let front: url::Url = state.front_url.parse()?;
    Ok(browser::run_all(&front).await?.join("; "))
}

/// The demo's story, which checks issue 5's promise: a row written to the Events table reaches the
/// calendar through the stream poller, tokens expire and are revoked, parked changes replay.
async fn demo_story(state: stack::State) -> Result<String> {
    let held = demo::DemoStack::from_state(&state)
        .await?
        .run_and_print()
        .await?;
    Ok(format!("{held} of {held} steps"))
}
