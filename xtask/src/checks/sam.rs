//! `sam build` and `sam local invoke` for real, in Docker, the way a user of calsync meets them.
//!
//! On a bare Debian machine (as root) this installs Docker's engine and debootstrap, starts the
//! engine, builds the local Lambda base image `local/lambda-provided:al2023` from Debian's own
//! packages (no image registry is reachable here), runs `sam build` (cargo-lambda, x86_64), and
//! then `sam local invoke`s every function with each of its files in `events/`, checking each
//! answer. The containers reach moto's server and the Google emulator on the Docker bridge's
//! gateway address, which stays on this machine. Last, `sam local start-api` answers one route.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use crate::{apt::which, checks::sample_events, docker, docker::tail};
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use testkit::api_gateway::{HttpApiEvent, answer_header, answer_set_cookies, cookie_pair};
use testkit::stack::{APP_ORIGIN, BINDING_COOKIE_ATTRIBUTES, OAUTH_REDIRECT_URI};
use testkit::{TestStack, aws, process, seed, template::Template};
use tokio::process::Command;
use url::Url;

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
    let recompiled = sam_build(&root, &tools, Some(Architecture::X86_64), None).await?;
    timings.record(
        format!("sam build x86_64 ({recompiled} crates compiled)"),
        started.elapsed(),
    );

    let functions = functions_from_template(&root.join("template.yaml"))?;
    let services = LocalServices::start(&root, &tools, gateway).await?;
    let work = tempdir(&root)?;
    let env = services.env_file()?;
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
    };

    let result = run_invokes(&sam, &services, &functions, &work, &mut timings).await;
    let result = match result {
        Ok(()) => start_api_smoke(&sam, &mut timings).await,
        Err(e) => Err(e),
    };
    services.stop().await;
    let _ = std::fs::remove_dir_all(&work);
    println!("sam: timings\n{}", timings.report());
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

/// `sam build` with the template's defaults (arm64, what a user deploys), into
/// `.dev/sam-build-default/`; checks that each function's `bootstrap` is an arm64 executable.
pub async fn build_template_defaults(root: &Path) -> Result<String> {
    let tools = Tools::find(root)?;
    let build_dir = root.join(".dev/sam-build-default");
    let started = Instant::now();
    let compiled = sam_build(root, &tools, None, Some(&build_dir)).await?;
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
) -> Result<usize> {
    let built_for = match architecture {
        Some(architecture) => architecture,
        None => default_architecture(root)?,
    };
    ensure_rust_target(built_for.rust_target()).await?;
    let target = root.join("target");
    let since = SystemTime::now();
    let mut command = tools.command("sam");
    command
        .current_dir(root)
        // SAM's build cache would hash the whole workspace (CodeUri `.`); cargo's is enough.
        .args(["build", "--no-cached"])
        .env("CARGO_TARGET_DIR", &target);
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

    /// Every variable of SPEC's configuration table, for every function (`Parameters`).
    fn env_file(&self) -> Result<Value> {
        Ok(json!({ "Parameters": self.variables }))
    }

    /// `AwsEndpointUrl` makes the template declare `AWS_ENDPOINT_URL`, which env files may then set.
    fn parameter_overrides(&self) -> Vec<String> {
        vec![
            "Architecture=x86_64".into(),
            format!("AwsEndpointUrl={}", self.stack.aws_endpoint),
        ]
    }

    /// The demo account's primary calendar, cancelled events included.
    async fn calendar(&self) -> Result<Vec<Value>> {
        let listing = self
            .stack
            .control_get(&format!("calendars/{DEMO_ACCOUNT}/primary/events"))
            .await?;
        Ok(listing["items"].as_array().cloned().unwrap_or_default())
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
}

/// One `sam local invoke`: the function's answer and everything it printed.
struct Invocation {
    answer: Value,
    output: String,
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

    async fn invoke(&self, function: &str, event: &Path) -> Result<Invocation> {
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
        Ok(Invocation {
            answer,
            output: all,
        })
    }
}

/// What one HTTP answer must show.
struct HttpExpect {
    status: u64,
    error: Option<&'static str>,
    location_prefix: Option<String>,
    sets_cookie: bool,
}

/// The checks for the sample events this module knows; other files get the generic check.
fn http_expectation(file: &str, services: &LocalServices) -> Option<HttpExpect> {
    let auth_url = format!("{}o/oauth2/v2/auth?", services.stack.emulator.base_url);
    let refused = |status, error| HttpExpect {
        status,
        error: Some(error),
        location_prefix: None,
        sets_cookie: false,
    };
    Some(match file {
        "oauth-start.json" => HttpExpect {
            status: 302,
            error: None,
            location_prefix: Some(auth_url),
            sets_cookie: true,
        },
        "oauth-start-json.json" => HttpExpect {
            status: 200,
            error: None,
            location_prefix: None,
            sets_cookie: true,
        },
        "oauth-start-bad-return-to.json" => refused(400, "invalid_return_to"),
        "oauth-start-no-identity.json" => refused(401, "unauthorized"),
        "oauth-callback-forged-state.json" => refused(400, "invalid_state"),
        "oauth-callback-no-state.json" => refused(400, "invalid_state"),
        "oauth-callback-denied-unknown-state.json" => refused(400, "invalid_state"),
        _ => return None,
    })
}

fn check_http(file: &str, answer: &Value, expect: &HttpExpect) -> Result<()> {
    let status = answer["statusCode"].as_u64();
    ensure!(
        status == Some(expect.status),
        "{file}: expected status {}, got {answer}",
        expect.status
    );
    if let Some(error) = expect.error {
        // Browsers (Accept: text/html) get a page naming the error; API clients get JSON.
        let body = answer["body"].as_str().unwrap_or_default();
        let named = match serde_json::from_str::<Value>(body) {
            Ok(json) => json["error"] == error,
            Err(_) => {
                answer_header(answer, "content-type").is_some_and(|t| t.starts_with("text/html"))
                    && body.contains(&format!("<code>{error}</code>"))
            }
        };
        ensure!(named, "{file}: expected error {error}, got {answer}");
    }
    if let Some(prefix) = &expect.location_prefix {
        let location = answer_header(answer, "location").unwrap_or_default();
        ensure!(
            location.starts_with(prefix.as_str()),
            "{file}: Location {location:?} is not on {prefix}"
        );
        let url = Url::parse(&location)?;
        let query: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        for (key, value) in [
            ("response_type", Some("code")),
            ("redirect_uri", Some(OAUTH_REDIRECT_URI)),
            ("access_type", Some("offline")),
            ("prompt", Some("consent")),
            ("code_challenge_method", Some("S256")),
            ("state", None),
            ("code_challenge", None),
        ] {
            let got = query.get(key).map(String::as_str);
            ensure!(
                got.is_some() && (value.is_none() || got == value),
                "{file}: Location lacks {key}={value:?}: {location}"
            );
        }
    }
    if expect.sets_cookie {
        let cookie = answer_set_cookies(answer)
            .into_iter()
            .find(|c| c.starts_with("__Host-"))
            .ok_or_else(|| anyhow!("{file}: no __Host- Set-Cookie in {answer}"))?;
        for attribute in BINDING_COOKIE_ATTRIBUTES {
            ensure!(
                cookie.contains(attribute),
                "{file}: cookie lacks {attribute}: {cookie}"
            );
        }
    }
    Ok(())
}

async fn run_invokes(
    sam: &Sam,
    services: &LocalServices,
    functions: &BTreeMap<String, String>,
    work: &Path,
    timings: &mut Timings,
) -> Result<()> {
    let events_dir = sam.root.join("events");
    // events/expected.json names each file's function and what its answer must hold.
    let files = sample_events::event_files(&events_dir)?;
    let expectations = sample_events::load_expectations(&events_dir)?;
    let variables = &services.variables;
    let event_sync = functions
        .get("event-sync")
        .ok_or_else(|| anyhow!("no event-sync function"))?;
    let mut outputs = String::new();
    let (events_dir, expectations) = (&events_dir, &expectations);
    let invoke_checked = move |file: String| {
        let expectation = expectations.get(&file).cloned();
        async move {
            let expectation = expectation
                .ok_or_else(|| anyhow!("events/{file} has no entry in events/expected.json"))?;
            ensure!(
                functions.values().any(|id| *id == expectation.function),
                "events/expected.json: {file} names {}, not a function of template.yaml",
                expectation.function
            );
            let started = Instant::now();
            let invocation = sam
                .invoke(&expectation.function, &events_dir.join(&file))
                .await?;
            let took = started.elapsed();
            if let Err(difference) =
                sample_events::check(&expectation, &invocation.answer, variables)
            {
                ensure!(!expectation.enforced, "events/{file}: {difference}");
                println!("sam: events/{file}: pending (not enforced): {difference}");
            }
            Ok::<_, anyhow::Error>((file, expectation.function, invocation, took))
        }
    };

    // HTTP samples first, then the connect, then the stream samples that need the grant.
    let (stream_files, http_files): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| {
        expectations
            .get(f)
            .is_some_and(|e| e.function == *event_sync)
    });
    for file in http_files {
        let (file, function, invocation, took) = invoke_checked(file).await?;
        timings.record(format!("invoke {function} {file}"), took);
        if let Some(expect) = http_expectation(&file, services) {
            check_http(&file, &invocation.answer, &expect)?;
        }
        outputs.push_str(&invocation.output);
    }

    let (start_id, callback_id) = (
        functions
            .get("oauth-start")
            .ok_or_else(|| anyhow!("no oauth-start function"))?,
        functions
            .get("oauth-callback")
            .ok_or_else(|| anyhow!("no oauth-callback function"))?,
    );
    connect_through_callback(
        sam,
        services,
        start_id,
        callback_id,
        work,
        timings,
        &mut outputs,
    )
    .await?;

    for file in stream_files {
        let (file, function, invocation, took) = invoke_checked(file).await?;
        timings.record(format!("invoke {function} {file}"), took);
        ensure!(
            invocation.answer == json!({"batchItemFailures": []}),
            "{file}: expected no batch item failures, got {}",
            invocation.answer
        );
        check_calendar_after(&file, services).await?;
        outputs.push_str(&invocation.output);
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
            !outputs.contains(secret),
            "a token, code, verifier or client secret appears in the invocations' output"
        );
    }
    Ok(())
}

/// What the demo calendar must hold after each known stream sample.
async fn check_calendar_after(file: &str, services: &LocalServices) -> Result<()> {
    let calendar = services.calendar().await?;
    let find = |event_id: &str| {
        calendar
            .iter()
            .find(|e| e["extendedProperties"]["private"]["calsync_event_id"] == event_id)
            .cloned()
    };
    match file {
        "event-sync-insert.json" | "event-sync-modify.json" => {
            let title = if file == "event-sync-insert.json" {
                "Team sync"
            } else {
                "Team sync (moved)"
            };
            let event = find("sam-demo-1")
                .ok_or_else(|| anyhow!("{file}: sam-demo-1 is not in {DEMO_ACCOUNT}'s calendar"))?;
            ensure!(
                event["summary"] == title && event["status"] != "cancelled",
                "{file}: calendar holds {event}"
            );
        }
        "event-sync-remove.json" => {
            if let Some(event) = find("sam-demo-1") {
                ensure!(
                    event["status"] == "cancelled",
                    "{file}: sam-demo-1 is still in the calendar: {event}"
                );
            }
        }
        "event-sync-invalid-row.json" => {
            ensure!(
                find("sam-demo-invalid").is_none(),
                "{file}: an invalid row reached the calendar"
            );
        }
        _ => {}
    }
    Ok(())
}

/// The callback's success under `sam local invoke`: a real flow record and cookie from the start
/// function, the emulator's consent for them, then the callback with the code it issued.
async fn connect_through_callback(
    sam: &Sam,
    services: &LocalServices,
    start_id: &str,
    callback_id: &str,
    work: &Path,
    timings: &mut Timings,
    outputs: &mut String,
) -> Result<()> {
    let return_to = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("return_to", &format!("{APP_ORIGIN}/calendar"))
        .finish();
    let start_event = HttpApiEvent::get("/oauth/google/start")
        .query(&return_to)
        .header("accept", "application/json")
        .user(DEMO_USER)
        .json();
    let start_file = work.join("connect-start.json");
    std::fs::write(&start_file, serde_json::to_vec(&start_event)?)?;
    let started = Instant::now();
    let start = sam.invoke(start_id, &start_file).await?;
    timings.record(
        format!("invoke {start_id} (connect: start)"),
        started.elapsed(),
    );
    outputs.push_str(&start.output);
    ensure!(
        start.answer["statusCode"] == 200,
        "connect start: {}",
        start.answer
    );
    let body: Value = serde_json::from_str(start.answer["body"].as_str().unwrap_or_default())?;
    let authorization_url = body["authorization_url"]
        .as_str()
        .ok_or_else(|| anyhow!("connect start gave no authorization_url: {body}"))?;
    let set_cookie = answer_set_cookies(&start.answer)
        .into_iter()
        .find(|c| c.starts_with("__Host-"))
        .ok_or_else(|| anyhow!("connect start set no cookie"))?;
    let (name, nonce) = cookie_pair(&set_cookie).context("a malformed Set-Cookie")?;

    let redirect = services
        .stack
        .consent(authorization_url, DEMO_ACCOUNT, "allow", &[])
        .await?;
    ensure!(
        redirect.as_str().starts_with(OAUTH_REDIRECT_URI),
        "consent redirected to {} instead of the callback",
        redirect.path()
    );
    let callback_event = HttpApiEvent::get("/oauth/google/callback")
        .query(redirect.query().unwrap_or_default())
        .cookie(&format!("{name}={nonce}"))
        .json();
    let callback_file = work.join("connect-callback.json");
    std::fs::write(&callback_file, serde_json::to_vec(&callback_event)?)?;
    let started = Instant::now();
    let callback = sam.invoke(callback_id, &callback_file).await?;
    timings.record(
        format!("invoke {callback_id} (connect: callback)"),
        started.elapsed(),
    );
    outputs.push_str(&callback.output);
    let location = answer_header(&callback.answer, "location").unwrap_or_default();
    ensure!(
        callback.answer["statusCode"] == 302
            && location.starts_with(&format!("{APP_ORIGIN}/calendar"))
            && location.contains("calsync=connected"),
        "connect callback: {}",
        callback.answer
    );
    ensure!(
        answer_set_cookies(&callback.answer)
            .iter()
            .any(|c| c.starts_with("__Host-") && c.contains("Max-Age=0")),
        "connect callback did not clear the cookie: {}",
        callback.answer
    );

    // The same callback again: the flow record was single use.
    let started = Instant::now();
    let replayed = sam.invoke(callback_id, &callback_file).await?;
    timings.record(
        format!("invoke {callback_id} (replayed callback)"),
        started.elapsed(),
    );
    outputs.push_str(&replayed.output);
    check_http(
        "replayed callback",
        &replayed.answer,
        &HttpExpect {
            status: 400,
            error: Some("invalid_state"),
            location_prefix: None,
            sets_cookie: false,
        },
    )
}

// -------------------------------------------------------------------------------------- start-api

/// `sam local start-api` once: the callback route without a state answers 400 `invalid_state`.
async fn start_api_smoke(sam: &Sam, timings: &mut Timings) -> Result<()> {
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
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("http://127.0.0.1:{port}/oauth/google/callback");
    let deadline = Instant::now() + START_API_READY;
    let result = loop {
        match http
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
        {
            Ok(response) => break Ok(response),
            Err(e) if e.is_connect() && Instant::now() < deadline => {
                if let Some(status) = child.try_wait()? {
                    break Err(anyhow!(
                        "sam local start-api exited ({status}); see {}",
                        log_path.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => break Err(anyhow!("start-api did not answer: {e}")),
        }
    };
    let outcome = async {
        let response = result?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(
            status == 400 && body["error"] == "invalid_state",
            "start-api GET /oauth/google/callback: {status} {body}"
        );
        // sam local skips JWT authorizers, so an authorized route sees no identity.
        let start = http
            .get(format!("http://127.0.0.1:{port}/oauth/google/start"))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?;
        let status = start.status();
        let body: Value = start.json().await.unwrap_or(Value::Null);
        ensure!(
            status == 401 && body["error"] == "unauthorized",
            "start-api GET /oauth/google/start: {status} {body}"
        );
        Ok(())
    }
    .await;
    timings.record("sam local start-api up + two routes", started.elapsed());
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
            ["event-sync", "oauth-callback", "oauth-start"]
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

    #[test]
    fn a_wrong_status_or_error_fails_the_check() {
        let expect = HttpExpect {
            status: 400,
            error: Some("invalid_state"),
            location_prefix: None,
            sets_cookie: false,
        };
        let good = json!({"statusCode": 400, "body": "{\"error\":\"invalid_state\"}"});
        check_http("x", &good, &expect).unwrap();
        let other = json!({"statusCode": 400, "body": "{\"error\":\"state_mismatch\"}"});
        assert!(check_http("x", &other, &expect).is_err());
        let ok = json!({"statusCode": 200, "body": "{}"});
        assert!(check_http("x", &ok, &expect).is_err());
    }

    #[test]
    fn a_redirect_without_pkce_fails_the_check() {
        let expect = HttpExpect {
            status: 302,
            error: None,
            location_prefix: Some("http://g/auth?".into()),
            sets_cookie: false,
        };
        let full = "http://g/auth?response_type=code&redirect_uri=https%3A%2F%2Fapp.example.test%2Foauth%2Fgoogle%2Fcallback&access_type=offline&prompt=consent&code_challenge_method=S256&state=s&code_challenge=c";
        check_http(
            "x",
            &json!({"statusCode": 302, "headers": {"location": full}}),
            &expect,
        )
        .unwrap();
        let no_pkce = full.replace("&code_challenge=c", "");
        assert!(
            check_http(
                "x",
                &json!({"statusCode": 302, "headers": {"location": no_pkce}}),
                &expect
            )
            .is_err()
        );
    }
}
