//! `sam build` and `sam local invoke` for real, in Docker, the way a user of calsync meets them.
//!
//! On a bare Debian machine (as root) this installs Docker's engine and debootstrap, starts the
//! engine, builds the local Lambda base image `local/lambda-provided:al2023` from Debian's own
//! packages (no image registry is reachable here), runs `sam build` (cargo-lambda, x86_64), and
//! then `sam local invoke`s every function with each of its files in `events/`, checking each
//! answer. The containers reach moto's server and the Google emulator on the Docker bridge's
//! gateway address, which stays on this machine. Last, `sam local start-api` answers one route.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use crate::{apt::which, checks::sample_events, docker, docker::tail};
use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};
use testkit::api_gateway::HttpApiEvent;
use testkit::{TestStack, aws, process, seed, template::Template};
use tokio::process::Command;

/// Set to an image (e.g. `public.ecr.aws/lambda/provided:al2023`) to invoke on it, pulled as
/// usual, instead of building [`docker::BASE_IMAGE`]; then nothing is installed with apt-get.
pub const IMAGE_VARIABLE: &str = "CALSYNC_SAM_INVOKE_IMAGE";
/// The app user the sample events act for (`events/oauth-start*.json`, `events/event-sync-*.json`).
pub const DEMO_USER: &str = "demo-user";
/// The Google account the demo user connects (one of the emulator's default accounts).
pub const DEMO_ACCOUNT: &str = "alice@example.com";
/// How often a running `sam build` reports how far it got.
const BUILD_HEARTBEAT: Duration = Duration::from_secs(30);
/// How long `sam local start-api` may take to listen.
const START_API_READY: Duration = Duration::from_secs(120);

/// Every step that takes time, for the closing report.
#[derive(Default)]
pub struct Timings(Vec<(String, Duration)>);

impl Timings {
    fn record(&mut self, what: impl Into<String>, took: Duration) {
        let what = what.into();
        println!("sam: {what}: {:.1} s", took.as_secs_f64());
        self.0.push((what, took));
    }

    /// One line per step, `seconds  step`.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (what, took) in &self.0 {
            let _ = writeln!(out, "{:>8.1} s  {what}", took.as_secs_f64());
        }
        out
    }
}

/// Runs everything: machine setup, `sam build`, every invoke with its checks, the start-api smoke.
pub async fn run_sam_checks(root: &Path) -> Result<()> {
    let root = root
        .canonicalize()
        .with_context(|| format!("project root {}", root.display()))?;
    let mut timings = Timings::default();
    let dev = root.join(".dev");
    let tools = Tools::find(&root)?;
    // Users' CI (GitHub's runners) can pull the official image; this machine cannot.
    let image = std::env::var(IMAGE_VARIABLE).ok().filter(|i| !i.is_empty());

    let started = Instant::now();
    docker::ensure_engine(&dev).await?;
    timings.record("docker engine ready", started.elapsed());

    if image.is_none() {
        let started = Instant::now();
        docker::ensure_base_image(&dev).await?;
        timings.record("base image ready", started.elapsed());
    }

    let gateway = docker::host_address().await?;
    println!("sam: containers reach this machine at {gateway}");

    let started = Instant::now();
    let recompiled = sam_build(
        &root,
        &tools,
        Some(Architecture::X86_64),
        None,
        Profile::LocalInvoke,
    )
    .await?;
    timings.record(
        format!("sam build x86_64 ({recompiled} crates compiled)"),
        started.elapsed(),
    );

    let functions = functions_from_template(&root.join("template.yaml"))?;
    let services = LocalServices::start(&root, &tools, gateway).await?;
    let work = tempdir(&root)?;
    // Every variable of SPEC's configuration table, for every function.
    let env = json!({ "Parameters": services.variables });
    for variable in template_variables(&root.join("template.yaml"))? {
        ensure!(
            env["Parameters"].get(&variable).is_some(),
            "template.yaml declares {variable} but the sam check's env file does not set it"
        );
    }
    let env_file = work.join("env.json");
    std::fs::write(&env_file, serde_json::to_vec_pretty(&env)?)?;
    let sam = Sam {
        root: root.clone(),
        tools,
        env_file,
        parameters: services.parameter_overrides(),
        image,
        work: work.clone(),
        timings: RefCell::new(timings),
        outputs: RefCell::default(),
    };

    let result = match run_invokes(&sam, &services, &functions).await {
        Ok(()) => start_api_smoke(&sam).await,
        Err(e) => Err(e),
    };
    services.stop().await;
    let _ = std::fs::remove_dir_all(&work);
    println!("sam: timings\n{}", sam.timings.borrow().report());
    result
}

// ------------------------------------------------------------------------------------------ build

/// The functions' CPU architecture, the template's `Architecture` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// What `sam local invoke` runs on an x86 machine.
    X86_64,
    /// The template's default: what `sam build && sam deploy` ships.
    Arm64,
}

impl Architecture {
    fn parameter(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        }
    }

    fn rust_target(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-gnu",
            Self::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// `e_machine` of an ELF executable for this architecture.
    fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Arm64 => 183,
        }
    }
}

/// Which release build `sam build` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// The workspace's release profile as it is (fat LTO, one codegen unit): what a deploy ships,
    /// and what the arm64 step builds.
    Deploy,
    /// The release profile without LTO, in 16 codegen units at opt-level 1 (cargo's
    /// `CARGO_PROFILE_RELEASE_*` variables, which `sam build` passes on to cargo-lambda): the
    /// build that only `sam local invoke` runs, on the same code. It checks behaviour in Lambda's
    /// container, not speed, and compiles in a fraction of the time of the fat-LTO links.
    LocalInvoke,
}

impl Profile {
    fn overrides(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Profile::Deploy => &[],
            Profile::LocalInvoke => &[
                ("CARGO_PROFILE_RELEASE_LTO", "off"),
                ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
                ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1"),
            ],
        }
    }
}

/// `sam build` with the template's defaults (arm64, what a user deploys), into
/// `.dev/sam-build-default/`; checks that each function's `bootstrap` is an arm64 executable.
pub async fn build_template_defaults(root: &Path) -> Result<String> {
    let tools = Tools::find(root)?;
    let build_dir = root.join(".dev/sam-build-default");
    let started = Instant::now();
    let compiled = sam_build(root, &tools, None, Some(&build_dir), Profile::Deploy).await?;
    let functions = functions_from_template(&root.join("template.yaml"))?;
    for id in functions.values() {
        let bootstrap = build_dir.join(id).join("bootstrap");
        let machine = elf_machine(&bootstrap)?;
        ensure!(
            machine == Architecture::Arm64.elf_machine(),
            "{} is built for ELF machine {machine}, not arm64 ({})",
            bootstrap.display(),
            Architecture::Arm64.elf_machine()
        );
    }
    Ok(format!(
        "{} arm64 bootstraps, {compiled} crates compiled, {:.0} s",
        functions.len(),
        started.elapsed().as_secs_f64()
    ))
}

/// The `e_machine` field of an ELF file.
fn elf_machine(path: &Path) -> Result<u16> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() > 20 && bytes.starts_with(b"\x7fELF"),
        "{} is not an ELF executable",
        path.display()
    );
    Ok(u16::from_le_bytes([bytes[18], bytes[19]]))
}

/// The template's default architecture, read from its `Architecture` parameter.
fn default_architecture(root: &Path) -> Result<Architecture> {
    match Template::load(&root.join("template.yaml"))?.parameter_default("Architecture") {
        Some("arm64") => Ok(Architecture::Arm64),
        Some("x86_64") => Ok(Architecture::X86_64),
        other => bail!("template.yaml's Architecture parameter has default {other:?}"),
    }
}

/// Installs the Rust target of the template's default architecture (what
/// [`build_template_defaults`] needs), so that it can be done ahead of time.
pub async fn ensure_default_rust_target(root: &Path) -> Result<()> {
    ensure_rust_target(default_architecture(root)?.rust_target()).await
}

/// Installs a Rust target once, before `sam build` starts one cargo-lambda build per function in
/// parallel: each would otherwise try to install it at the same moment, and all but one fail.
async fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .await
        .with_context(|| {
            format!("running rustup; without it, install the Rust target {target} yourself")
        })?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == target)
    {
        return Ok(());
    }
    println!("sam: rustup target add {target}");
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .await?;
    ensure!(
        status.success(),
        "rustup target add {target} failed ({status})"
    );
    Ok(())
}

/// `sam build` on the workspace's own `target/` (with `architecture` as the template's
/// `Architecture`, or its default), into `build_dir` (default `.aws-sam/build`); returns how many
/// crates it compiled. cargo-lambda's output streams through, so a cold build shows progress.
async fn sam_build(
    root: &Path,
    tools: &Tools,
    architecture: Option<Architecture>,
    build_dir: Option<&Path>,
    profile: Profile,
) -> Result<usize> {
    let built_for = match architecture {
        Some(architecture) => architecture,
        None => default_architecture(root)?,
    };
    ensure_rust_target(built_for.rust_target()).await?;
    let target = root.join("target");
    let since = SystemTime::now();
    prebuild_functions(root, tools, built_for, &target, profile).await?;
    let mut command = tools.command("sam");
    command
        .current_dir(root)
        // SAM's build cache would hash the whole workspace (CodeUri `.`); cargo's is enough.
        .args(["build", "--no-cached"])
        .env("CARGO_TARGET_DIR", &target)
        .envs(profile.overrides().iter().copied());
    if let Some(architecture) = architecture {
        command.args([
            "--parameter-overrides",
            &format!("Architecture={}", architecture.parameter()),
        ]);
    }
    if let Some(build_dir) = build_dir {
        command.arg("--build-dir").arg(build_dir);
    }
    println!(
        "sam: sam build for {} (a cold build compiles every dependency: minutes)",
        built_for.parameter()
    );
    let deps = target.join(built_for.rust_target()).join("release/deps");
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .context("running sam build")?;
    // SAM shows cargo-lambda's output only when a build ends; the crates compiled so far are the
    // sign of life in between.
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(BUILD_HEARTBEAT) => println!(
                "sam: sam build for {} still running: {} crates compiled, {:.0} s",
                built_for.parameter(),
                compiled_since(&deps, since),
                since.elapsed().unwrap_or_default().as_secs_f64()
            ),
        }
    };
    ensure!(
        status.success(),
        "sam build for {} failed ({status}); its output is above",
        built_for.parameter()
    );
    Ok(compiled_since(&deps, since) + compiled_since(&target.join("release/deps"), since))
}

/// Builds every function of the template in one `cargo lambda build`, with the flags `sam build`
/// gives each (`--release`, `--arm64` for arm64), so the builds `sam build` then starts find them
/// fresh. `sam build` starts one cargo per function; they queue on the target folder's lock and
/// run their fat-LTO links one after another on one core, where one cargo runs them side by side
/// (on this 2-core machine that halves the ~2 minutes each link takes). cargo's own progress shows.
async fn prebuild_functions(
    root: &Path,
    tools: &Tools,
    architecture: Architecture,
    target: &Path,
    profile: Profile,
) -> Result<()> {
    let mut command = tools.command("cargo");
    command
        .current_dir(root)
        .args(["lambda", "build", "--release"])
        .env("CARGO_TARGET_DIR", target)
        .envs(profile.overrides().iter().copied());
    if architecture == Architecture::Arm64 {
        command.arg("--arm64");
    }
    for binary in functions_from_template(&root.join("template.yaml"))?.keys() {
        command.args(["--bin", binary]);
    }
    println!(
        "sam: cargo lambda build --release of every function for {}, before sam build{}",
        architecture.parameter(),
        match profile {
            Profile::Deploy => "",
            Profile::LocalInvoke => " (for sam local invoke: no LTO, opt-level 1)",
        }
    );
    let status = command.stdin(Stdio::null()).status().await?;
    ensure!(
        status.success(),
        "cargo lambda build for {} failed ({status}); its output is above",
        architecture.parameter()
    );
    Ok(())
}

/// Crates (`.rlib`/`.rmeta`/`.so` written after `since`) in a cargo `deps` folder.
fn compiled_since(deps: &Path, since: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(deps) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".rlib") || name.ends_with(".so")
        })
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= since)
        })
        .count()
}

/// The variables `template.yaml` gives every function (`Globals.Function.Environment`).
pub fn template_variables(template: &Path) -> Result<BTreeSet<String>> {
    Ok(Template::load(template)?.global_variables())
}

/// The template's functions by binary name (`BuildProperties.Binary`) → logical id.
pub fn functions_from_template(template: &Path) -> Result<BTreeMap<String, String>> {
    let functions: BTreeMap<String, String> = Template::load(template)?
        .functions()?
        .into_iter()
        .map(|function| (function.binary, function.logical_id))
        .collect();
    ensure!(!functions.is_empty(), "template.yaml declares no function");
    Ok(functions)
}

// --------------------------------------------------------------------------------- local services

/// What the containers call: a test stack whose moto and Google emulator listen on the bridge
/// gateway, with the template's tables and both secrets.
struct LocalServices {
    stack: TestStack,
    /// The variables the template gives every function, as this stack resolves them.
    variables: BTreeMap<String, String>,
}

impl LocalServices {
    async fn start(root: &Path, tools: &Tools, gateway: IpAddr) -> Result<Self> {
        let moto_server = tools.path("moto_server").context("moto_server not found")?;
        std::fs::create_dir_all(root.join(".dev"))?;
        let log = root.join(".dev/sam-moto.log");
        let stack = TestStack::start_reachable_at(gateway, &moto_server, &log).await?;
        let declared = template_variables(&root.join("template.yaml"))?;
        let variables = stack
            .env
            .iter()
            .filter(|(name, _)| declared.contains(*name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Ok(Self { stack, variables })
    }

    /// `AwsEndpointUrl` makes the template declare `AWS_ENDPOINT_URL`, which env files may then set.
    fn parameter_overrides(&self) -> Vec<String> {
        vec![
            "Architecture=x86_64".into(),
            format!("AwsEndpointUrl={}", self.stack.aws_endpoint),
        ]
    }

    async fn stop(self) {
        // moto goes with the rest of the stack.
        self.stack.emulator.shutdown().await;
    }
}

// ----------------------------------------------------------------------------------------- invoke

struct Sam {
    root: PathBuf,
    tools: Tools,
    env_file: PathBuf,
    parameters: Vec<String>,
    /// `None`: the local [`docker::BASE_IMAGE`], never pulled.
    image: Option<String>,
    /// Where the events made here are written for `--event`.
    work: PathBuf,
    timings: RefCell<Timings>,
    /// Everything the invocations printed, scanned for secrets at the end.
    outputs: RefCell<String>,
}

impl Sam {
    fn command(&self, subcommand: &str) -> Command {
        let mut command = self.tools.command("sam");
        command
            .current_dir(&self.root)
            .args(["local", subcommand, "--template"])
            .arg(self.root.join(".aws-sam/build/template.yaml"))
            .arg("--env-vars")
            .arg(&self.env_file)
            .arg("--parameter-overrides")
            .args(&self.parameters)
            .args(["--region", aws::REGION]);
        match &self.image {
            None => command.args(["--invoke-image", docker::BASE_IMAGE, "--skip-pull-image"]),
            Some(image) => command.args(["--invoke-image", image]),
        };
        command
    }

    /// `sam local invoke function --event event`: the function's answer. Its time goes to the
    /// timings as `label`, its output to `outputs`.
    async fn invoke(&self, function: &str, label: &str, event: &Path) -> Result<Value> {
        let started = Instant::now();
        let output = self
            .command("invoke")
            .arg(function)
            .arg("--event")
            .arg(event)
            .output()
            .await
            .context("running sam local invoke")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let all = format!("{stdout}\n{stderr}");
        ensure!(
            output.status.success(),
            "sam local invoke {function} {} failed ({}):\n{}",
            event.display(),
            output.status,
            tail(&all, 40)
        );
        // The function's answer is the last line of stdout; the logs go to stderr.
        let answer = stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
            .ok_or_else(|| {
                anyhow!(
                    "sam local invoke {function} gave no JSON answer:\n{}",
                    tail(&all, 40)
                )
            })?;
        ensure!(
            answer.get("errorType").is_none() && answer.get("errorMessage").is_none(),
            "{function} failed on {}: {answer}\n{}",
            event.display(),
            tail(&stderr, 30)
        );
        self.timings
            .borrow_mut()
            .record(format!("invoke {function} {label}"), started.elapsed());
        self.outputs.borrow_mut().push_str(&all);
        Ok(answer)
    }

    /// [`Sam::invoke`] with an event made here, written to the work folder as `{label}.json`.
    async fn invoke_event(
        &self,
        function: &str,
        label: &str,
        event: &HttpApiEvent,
    ) -> Result<Value> {
        let file = self.work.join(format!("{label}.json"));
        std::fs::write(&file, serde_json::to_vec(&event.json())?)?;
        self.invoke(function, label, &file).await
    }
}

/// Every file of `events/` against its function, checked as under the RIE (`events/expected.json`,
/// see [`sample_events::check`]). Between the HTTP and the stream samples, a real connect, so the
/// stream samples reach the demo account's calendar, which is checked after each.
/// How many HTTP samples `sam local invoke` runs at once.
const HTTP_INVOKES_AT_ONCE: usize = 2;

async fn run_invokes(
    sam: &Sam,
    services: &LocalServices,
    functions: &BTreeMap<String, String>,
) -> Result<()> {
    let events_dir = sam.root.join("events");
    let expectations = sample_events::load_expectations(&events_dir)?;
    let function = |binary: &str| {
        functions
            .get(binary)
            .ok_or_else(|| anyhow!("template.yaml has no {binary} function"))
    };
    let event_sync = function("event-sync")?;
    let mut files = Vec::new();
    for file in sample_events::event_files(&events_dir)? {
        let expectation = expectations
            .get(&file)
            .ok_or_else(|| anyhow!("events/{file} has no entry in events/expected.json"))?;
        ensure!(
            functions.values().any(|id| *id == expectation.function),
            "events/expected.json: {file} names {}, not a function of template.yaml",
            expectation.function
        );
        files.push((file, expectation));
    }
    let invoke_checked = async |file: &str, expectation: &sample_events::Expectation| {
        let answer = sam
            .invoke(&expectation.function, file, &events_dir.join(file))
            .await?;
        if let Err(difference) = sample_events::check(expectation, &answer, &services.variables) {
            ensure!(!expectation.enforced, "events/{file}: {difference}");
            println!("sam: events/{file}: pending (not enforced): {difference}");
        }
        Ok::<_, anyhow::Error>(())
    };
    let (stream_files, http_files): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(_, expectation)| expectation.function == *event_sync);
    // The HTTP samples share no state (none connects anyone), and each invoke mostly waits for
    // its container: two at a time.
    let results: Vec<Result<()>> = futures::stream::iter(&http_files)
        .map(|(file, expectation)| invoke_checked(file, expectation))
        .buffer_unordered(HTTP_INVOKES_AT_ONCE)
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;
    connect_and_replay(
        sam,
        services,
        function("oauth-start")?,
        function("oauth-callback")?,
    )
    .await?;
    for (file, expectation) in stream_files {
        invoke_checked(&file, expectation).await?;
        check_calendar_after(&file, services).await?;
    }

    // Nothing the emulator issued or received (tokens, codes, verifiers, the client secret)
    // may appear in anything the functions or sam printed.
    let issued = services.stack.control_get("issued-secrets").await?;
    let values: Vec<&str> = issued["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    ensure!(!values.is_empty(), "the emulator reports no issued secret");
    for secret in values {
        ensure!(
            !sam.outputs.borrow().contains(secret),
            "a token, code, verifier or client secret appears in the invocations' output"
        );
    }
    Ok(())
}

/// What the demo calendar must hold after each known stream sample: the event's summary,
/// `cancelled`, or nothing at all (`None`).
async fn check_calendar_after(file: &str, services: &LocalServices) -> Result<()> {
    let (event_id, allowed): (&str, &[Option<&str>]) = match file {
        "event-sync-insert.json" => ("sam-demo-1", &[Some("Team sync")]),
        "event-sync-modify.json" => ("sam-demo-1", &[Some("Team sync (moved)")]),
        "event-sync-remove.json" => ("sam-demo-1", &[Some("cancelled"), None]),
        // An invalid row never reaches the calendar.
        "event-sync-invalid-row.json" => ("sam-demo-invalid", &[None]),
        _ => return Ok(()),
    };
    let listing = services
        .stack
        .control_get(&format!("calendars/{DEMO_ACCOUNT}/primary/events"))
        .await?;
    let event = listing["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["extendedProperties"]["private"]["calsync_event_id"] == event_id);
    let held = event.map(|e| match e["status"].as_str() {
        Some("cancelled") => "cancelled",
        _ => e["summary"].as_str().unwrap_or_default(),
    });
    ensure!(
        allowed.contains(&held),
        "{file}: {DEMO_ACCOUNT}'s calendar holds {event_id} as {held:?}, expected one of {allowed:?}"
    );
    Ok(())
}

/// The callback's success under `sam local invoke` (a real flow record and cookie from the start
/// function, the emulator's consent for them), then the same callback again, refused: the flow
/// record was single use.
async fn connect_and_replay(
    sam: &Sam,
    services: &LocalServices,
    start_id: &str,
    callback_id: &str,
) -> Result<()> {
    let callback = services
        .stack
        .connect_through_events(
            DEMO_USER,
            DEMO_ACCOUNT,
            async |event| sam.invoke_event(start_id, "connect-start", &event).await,
            async |event| {
                sam.invoke_event(callback_id, "connect-callback", &event)
                    .await
            },
        )
        .await
        .context("connecting through sam local invoke")?;
    let replay = callback.header("accept", "text/html");
    let replayed = sam
        .invoke_event(callback_id, "replayed-callback", &replay)
        .await?;
    sample_events::check(&replay_refused(callback_id), &replayed, &services.variables)
        .map_err(|difference| anyhow!("the replayed callback: {difference}"))
}

/// What a replayed callback must answer: the error page for an unknown state.
fn replay_refused(callback_id: &str) -> sample_events::Expectation {
    serde_json::from_value(json!({
        "function": callback_id,
        "status": 400,
        "headers": {"content-type": "text/html"},
        "body_contains": ["<code>invalid_state</code>"],
    }))
    .expect("a valid expectation")
}

// -------------------------------------------------------------------------------------- start-api

/// `sam local start-api` once: the callback route without a state answers 400 `invalid_state`,
/// and the start route 401, because sam local skips JWT authorizers and so sees no identity.
async fn start_api_smoke(sam: &Sam) -> Result<()> {
    let port = process::free_port()?;
    let log_path = sam.root.join(".dev/sam-start-api.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut child = sam
        .command("start-api")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting sam local start-api")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let outcome = async {
        let listening = format!("sam local start-api (log: {})", log_path.display());
        process::wait_for_port(([127, 0, 0, 1], port).into(), START_API_READY, &listening).await?;
        for (path, status, error) in [
            ("/oauth/google/callback", 400, "invalid_state"),
            ("/oauth/google/start", 401, "unauthorized"),
        ] {
            let response = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await?;
            let got = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            ensure!(
                got == status && body["error"] == error,
                "start-api GET {path}: {got} {body}"
            );
        }
        Ok(())
    }
    .await;
    sam.timings
        .borrow_mut()
        .record("sam local start-api up + two routes", started.elapsed());
    // SIGINT lets sam remove its containers; kill only if it does not stop.
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    outcome
}

// ---------------------------------------------------------------------------------------- helpers

/// sam, cargo-lambda and moto_server: from the project venv (`.dev/venv`) when it has them,
/// otherwise from PATH (users' CI installs them with pip and aws-actions/setup-sam).
struct Tools {
    venv_bin: Option<PathBuf>,
}

impl Tools {
    fn find(root: &Path) -> Result<Self> {
        let venv_bin = root.join(".dev/venv/bin");
        let tools = Self {
            venv_bin: venv_bin.join("sam").is_file().then_some(venv_bin),
        };
        for tool in ["sam", "cargo-lambda", "moto_server"] {
            ensure!(
                tools.path(tool).is_some(),
                "{tool} not found in .dev/venv/bin or PATH: \
                 pip install aws-sam-cli cargo-lambda 'moto[server,dynamodb]'"
            );
        }
        Ok(tools)
    }

    fn path(&self, tool: &str) -> Option<PathBuf> {
        self.venv_bin
            .as_ref()
            .map(|bin| bin.join(tool))
            .filter(|p| p.is_file())
            .or_else(|| which(tool))
    }

    /// The tool with PATH venv-first (cargo-lambda, zig), no telemetry, moto's dummy credentials.
    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.path(tool).unwrap_or_else(|| tool.into()));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = self.venv_bin.iter().cloned().collect();
        paths.extend(std::env::split_paths(&path));
        command
            .env("PATH", std::env::join_paths(paths).unwrap_or(path))
            .env("SAM_CLI_TELEMETRY", "0")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", aws::REGION)
            .env("AWS_DEFAULT_REGION", aws::REGION);
        command
    }
}

fn tempdir(root: &Path) -> Result<PathBuf> {
    let dir = root
        .join(".dev")
        .join(format!("sam-run-{}", seed::random_token(8)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_names_a_function_for_every_sample_event() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let functions = functions_from_template(&root.join("template.yaml")).unwrap();
        assert_eq!(
            functions.keys().map(String::as_str).collect::<Vec<_>>(),
            ["event-sync", "oauth-callback", "oauth-start", "resync"]
        );
        let expectations = sample_events::load_expectations(&root.join("events")).unwrap();
        let files = sample_events::event_files(&root.join("events")).unwrap();
        assert!(files.len() >= 3, "events/ holds too few samples");
        for name in files {
            let expected = &expectations[&name].function;
            let (binary, id) = functions
                .iter()
                .find(|(b, _)| name.starts_with(b.as_str()))
                .unwrap_or_else(|| panic!("events/{name} names no function"));
            assert_eq!(id, expected, "events/{name} is {binary}'s");
        }
    }

    #[test]
    fn events_env_json_sets_exactly_the_template_variables() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let declared = template_variables(&root.join("template.yaml")).unwrap();
        assert!(declared.contains("GRANTS_TABLE") && declared.contains("AWS_ENDPOINT_URL"));
        let env: Value =
            serde_json::from_slice(&std::fs::read(root.join("events/env.json")).unwrap()).unwrap();
        // Either one `Parameters` object for all functions or one object per function.
        let objects: Vec<&serde_json::Map<String, Value>> = match env.get("Parameters") {
            Some(all) => vec![all.as_object().unwrap()],
            None => env
                .as_object()
                .unwrap()
                .values()
                .filter_map(Value::as_object)
                .collect(),
        };
        assert!(!objects.is_empty());
        for object in objects {
            let set: std::collections::BTreeSet<String> = object.keys().cloned().collect();
            assert_eq!(set, declared);
        }
    }

    /// The repository's own expectations, with the variables a stack would give them.
    fn expectation_of(file: &str) -> (sample_events::Expectation, BTreeMap<String, String>) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut all = sample_events::load_expectations(&root.join("events")).unwrap();
        let variables = BTreeMap::from([
            ("GOOGLE_AUTH_URL".to_string(), "http://g/auth".to_string()),
            (
                "OAUTH_REDIRECT_URI".to_string(),
                "https://app.example.test/oauth/google/callback".to_string(),
            ),
        ]);
        (all.remove(file).unwrap(), variables)
    }

    const FULL_REDIRECT: &str = "http://g/auth?response_type=code&redirect_uri=https%3A%2F%2Fapp.example.test%2Foauth%2Fgoogle%2Fcallback&access_type=offline&prompt=consent&code_challenge_method=S256&state=s&code_challenge=c";
    const BINDING_COOKIE: &str =
        "__Host-calsync_oauth=n; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=600";

    #[test]
    fn the_start_redirect_needs_pkce_and_every_cookie_attribute_on_one_cookie() {
        let (start, variables) = expectation_of("oauth-start.json");
        let answer = |location: &str, cookies: &[&str]| json!({"statusCode": 302, "headers": {"Location": location}, "cookies": cookies});
        let good = answer(FULL_REDIRECT, &[BINDING_COOKIE]);
        assert_eq!(sample_events::check(&start, &good, &variables), Ok(()));
        for dropped in [
            "&code_challenge=c",
            "&code_challenge_method=S256",
            "&state=s",
            "&prompt=consent",
            "&access_type=offline",
        ] {
            let location = FULL_REDIRECT.replace(dropped, "");
            let verdict =
                sample_events::check(&start, &answer(&location, &[BINDING_COOKIE]), &variables);
            assert!(verdict.is_err(), "a redirect without {dropped} passed");
        }
        let elsewhere = FULL_REDIRECT.replace("app.example.test", "evil.example");
        assert!(
            sample_events::check(&start, &answer(&elsewhere, &[BINDING_COOKIE]), &variables)
                .is_err()
        );
        for attribute in BINDING_COOKIE.split("; ").skip(1) {
            let cookie = BINDING_COOKIE.replace(&format!("; {attribute}"), "");
            let verdict =
                sample_events::check(&start, &answer(FULL_REDIRECT, &[&cookie]), &variables);
            assert!(verdict.is_err(), "a cookie without {attribute} passed");
        }
        // The attributes spread over two cookies are not one binding cookie.
        let split = [
            "__Host-calsync_oauth=n; HttpOnly; Secure",
            "other=1; SameSite=Lax; Path=/; Max-Age=600",
        ];
        assert!(sample_events::check(&start, &answer(FULL_REDIRECT, &split), &variables).is_err());
        assert!(sample_events::check(&start, &answer(FULL_REDIRECT, &[]), &variables).is_err());
    }

    #[test]
    fn a_refused_callback_must_be_the_invalid_state_page() {
        let page = |status: u16, content_type: &str, body: &str| json!({"statusCode": status, "headers": {"content-type": content_type}, "body": body});
        let good = page(
            400,
            "text/html; charset=utf-8",
            "<p>Error: <code>invalid_state</code></p>",
        );
        for refused in [
            replay_refused("OAuthCallbackFunction"),
            expectation_of("oauth-callback-forged-state.json").0,
            expectation_of("oauth-callback-no-state.json").0,
        ] {
            let variables = BTreeMap::new();
            assert_eq!(sample_events::check(&refused, &good, &variables), Ok(()));
            let other_error = page(400, "text/html", "<code>state_mismatch</code>");
            assert!(sample_events::check(&refused, &other_error, &variables).is_err());
            let json_body = page(400, "application/json", "{\"error\":\"invalid_state\"}");
            assert!(sample_events::check(&refused, &json_body, &variables).is_err());
            let connected = page(200, "text/html", "<code>invalid_state</code>");
            assert!(sample_events::check(&refused, &connected, &variables).is_err());
        }
    }

    #[test]
    fn a_stream_sample_fails_on_any_batch_item_failure() {
        let (insert, variables) = expectation_of("event-sync-insert.json");
        let ok = json!({"batchItemFailures": []});
        assert_eq!(sample_events::check(&insert, &ok, &variables), Ok(()));
        let one = json!({"batchItemFailures": [{"itemIdentifier": "1"}]});
        assert!(sample_events::check(&insert, &one, &variables).is_err());
        let failed = json!({"errorType": "Panic", "errorMessage": "boom"});
        assert!(sample_events::check(&insert, &failed, &variables).is_err());
    }
}
