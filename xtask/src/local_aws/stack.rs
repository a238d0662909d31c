//! `cargo xtask stack up|down|status`: the whole local stack as long-running processes. moto's
//! server with the template's tables and both secrets, the Google emulator with the stack's OAuth
//! client, each function of the template under the Runtime Interface Emulator, and the stand-ins
//! process (the local API Gateway, the app with its JWT issuer, and the event source mapping).
//! The issuer's RSA key is `.dev/jwt-issuer.pem`. State lives in
//! `.dev/`: `stack.json` and `stack.env` (every variable and URL), pid files in `.dev/run/`, logs
//! in `.dev/logs/`. `up` on a running stack changes nothing; `down` stops by pid and tolerates
//! stale pid files. `CALSYNC_STACK_BIN_DIR` runs prebuilt binaries instead of building.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};
use url::Url;

use testkit::stack::{StackSecrets, provision};
use testkit::template::{Context, Template};
use testkit::{aws, moto, paths, process, rie};

use crate::local_aws::issuer::Issuer;
use crate::setup;
use secrecy::SecretString;

/// Local resource names are `calsync-local-GrantsTable` and so on.
pub const PREFIX: &str = "calsync-local-";
pub const DEFAULT_AWS_PORT: u16 = 5005;
pub const DEFAULT_GOOGLE_PORT: u16 = 8085;
/// The HTTP front (the API) is on `localhost`; the app and the emulator are on `127.0.0.1`, another
/// site, so the browser treats the app's calls and Google's redirect back as cross-site.
pub const DEFAULT_FRONT_PORT: u16 = 3000;
/// The app stand-in and its identity provider, on `127.0.0.1`.
pub const DEFAULT_APP_PORT: u16 = 3001;
/// Function `i` of the template is invoked on `rie_port + i`; its runtime API is 100 above that.
pub const DEFAULT_RIE_PORT: u16 = 9101;
const RUNTIME_API_OFFSET: u16 = 100;

/// Where the stack listens. `host` is where moto's server and the Google emulator bind: loopback,
/// or Docker's bridge gateway when `sam local invoke` containers must reach them.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub aws_port: u16,
    pub google_port: u16,
    pub front_port: u16,
    pub app_port: u16,
    pub rie_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        let port = |name: &str, default: u16| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            host: std::env::var("CALSYNC_STACK_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
            aws_port: port("CALSYNC_AWS_PORT", DEFAULT_AWS_PORT),
            google_port: port("CALSYNC_GOOGLE_PORT", DEFAULT_GOOGLE_PORT),
            front_port: port("CALSYNC_FRONT_PORT", DEFAULT_FRONT_PORT),
            app_port: port("CALSYNC_APP_PORT", DEFAULT_APP_PORT),
            rie_port: port("CALSYNC_RIE_PORT", DEFAULT_RIE_PORT),
        }
    }
}

/// What `up` started, as written to `.dev/stack.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub aws_endpoint: String,
    pub google_url: String,
    /// The local HTTP front (API Gateway's stand-in), e.g. `http://localhost:3000/`.
    #[serde(default)]
    pub front_url: String,
    /// The app stand-in, on another site, e.g. `http://127.0.0.1:3001/`; also the JWT issuer.
    #[serde(default)]
    pub app_url: String,
    /// Template logical id to its local function.
    pub functions: BTreeMap<String, LocalFunction>,
    /// The environment every function gets (plus the AWS variables).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalFunction {
    pub binary: String,
    pub invoke_url: String,
}

fn state_file() -> PathBuf {
    paths::dev_dir().join("stack.json")
}

fn pid_file(name: &str) -> PathBuf {
    paths::run_dir().join(format!("{name}.pid"))
}

fn log_file(name: &str) -> PathBuf {
    paths::logs_dir().join(format!("{name}.log"))
}

/// The running stack's state, if `up` wrote one.
pub fn load_state() -> Option<State> {
    serde_json::from_str(&std::fs::read_to_string(state_file()).ok()?).ok()
}

fn pid_files() -> Vec<PathBuf> {
    std::fs::read_dir(paths::run_dir())
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pid"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every process `up` started is alive.
pub fn is_running() -> bool {
    let files = pid_files();
    load_state().is_some()
        && !files.is_empty()
        && files
            .iter()
            .all(|f| process::read_pid(f).is_some_and(process::is_alive))
}

/// The local stack's OAuth client and keyring, generated once and kept in `.dev/`.
fn load_or_create_secrets() -> Result<StackSecrets> {
    let path = paths::dev_dir().join("stack-secrets.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()));
    }
    let secrets = StackSecrets::generate();
    std::fs::write(&path, serde_json::to_string_pretty(&secrets)?)?;
    Ok(secrets)
}

/// The template's parameters for the local stack: the browser returns to the app, Google
/// redirects to the API, and the app's origin is the JWT issuer.
pub fn context(options: &Options) -> Result<Context> {
    let google = Url::parse(&format!("http://{}:{}/", options.host, options.google_port))?;
    let aws = format!("http://{}:{}", options.host, options.aws_port);
    let (app, api) = (
        Url::parse(&app_url(options))?,
        Url::parse(&front_url(options))?,
    );
    let mut ctx = testkit::stack::local_context(PREFIX, &google, &aws, &app, &api);
    ctx.parameters
        .insert("JwtIssuer".into(), app.origin().ascii_serialization());
    Ok(ctx)
}

/// Where the browser reaches the stack's HTTP routes (the API).
pub fn front_url(options: &Options) -> String {
    format!("http://localhost:{}/", options.front_port)
}

/// The app stand-in's page.
pub fn app_url(options: &Options) -> String {
    format!("http://127.0.0.1:{}/", options.app_port)
}

/// The stack's JWT issuer, its key kept in `.dev/jwt-issuer.pem`.
pub fn issuer(options: &Options) -> Result<Issuer> {
    let ctx = context(options)?;
    Issuer::load_or_create(
        &paths::dev_dir().join("jwt-issuer.pem"),
        &ctx.parameters["JwtIssuer"],
    )
}

/// A JWT for `user` that the running stack's authorizer accepts (`cargo xtask jwt USER`).
pub fn mint_jwt(user: &str) -> Result<SecretString> {
    let options = Options::default();
    let api = Template::load_workspace()?.http_api(&context(&options)?)?;
    let audience = api
        .jwt
        .and_then(|jwt| jwt.audience.into_iter().next())
        .context("template.yaml declares no JWT audience")?;
    issuer(&options)?.mint(user, &audience)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::workspace_root().join("target"))
}

/// Builds the function binaries and the emulator in one debug build.
fn build(template: &Template) -> Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(paths::workspace_root()).args([
        "build",
        "-p",
        "google-emulator",
        // The stand-ins process runs this crate's binary as built now, not the `cargo xtask`
        // that is running (a test build may have replaced that file since it started).
        "-p",
        "xtask",
    ]);
    for function in template.functions()? {
        command.args(["-p", &function.binary]);
    }
    println!("stack: cargo build of the functions, the Google emulator and the stand-ins");
    let status = command.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build failed (its errors are above)"
    );
    Ok(())
}

pub async fn up(options: &Options) -> Result<State> {
    if is_running() {
        let state = load_state().expect("is_running checked it");
        println!("stack: already running (cargo xtask stack down stops it)");
        return Ok(state);
    }
    down().await?;
    let template = Template::load_workspace()?;
    // Prebuilt binaries (a release build, another checkout's) can stand in for this one's.
    let bin = match std::env::var_os("CALSYNC_STACK_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            build(&template)?;
            target_dir().join("debug")
        }
    };
    let venv = setup::ensure()?;
    for dir in [paths::run_dir(), paths::logs_dir()] {
        std::fs::create_dir_all(dir)?;
    }
    let ctx = context(options)?;
    let aws_endpoint = format!("http://{}:{}", options.host, options.aws_port);
    for (host, port, variable) in [
        (options.host.as_str(), options.aws_port, "CALSYNC_AWS_PORT"),
        (
            options.host.as_str(),
            options.google_port,
            "CALSYNC_GOOGLE_PORT",
        ),
        ("127.0.0.1", options.front_port, "CALSYNC_FRONT_PORT"),
        ("127.0.0.1", options.app_port, "CALSYNC_APP_PORT"),
    ] {
        ensure_free(host, port, variable)?;
    }

    moto::start_detached(
        &venv,
        &options.host,
        options.aws_port,
        &log_file("moto"),
        &pid_file("moto"),
    )
    .await
    .context("starting moto's server (log: .dev/logs/moto.log)")?;
    let sdk = aws::local_sdk_config(&aws_endpoint).await;
    let secrets = load_or_create_secrets()?;
    let google_url = format!("http://{}:{}/", options.host, options.google_port);
    let provisioned = provision(&sdk, &template, &ctx, &Url::parse(&google_url)?, &secrets).await?;
    for name in provisioned.tables.values() {
        let outcome = if provisioned.created.contains(name) {
            "created"
        } else {
            "already there"
        };
        println!("stack: table {name}: {outcome}");
    }
    let env = provisioned.env;
    let redirect_uri = &ctx.parameters["OAuthRedirectUri"];

    let mut emulator = Command::new(bin.join("google-emulator"));
    emulator
        .arg("--bind")
        .arg(format!("{}:{}", options.host, options.google_port))
        .args(["--client-id", &secrets.client_id])
        .args(["--client-secret", &secrets.client_secret])
        .args(["--redirect-uri", redirect_uri]);
    process::spawn_detached(
        &mut emulator,
        &log_file("google-emulator"),
        &pid_file("google-emulator"),
    )?;
    process::wait_for_port(
        SocketAddr::from((
            options.host.parse::<std::net::IpAddr>()?,
            options.google_port,
        )),
        Duration::from_secs(20),
        "the Google emulator (log: .dev/logs/google-emulator.log)",
    )
    .await?;

    let aws_env: Vec<(String, String)> = aws::local_env(&aws_endpoint)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let rie_binary = paths::rie(&venv)?;
    let mut functions = BTreeMap::new();
    for (index, function) in template.functions()?.into_iter().enumerate() {
        let offset = u16::try_from(index)?;
        let port = options.rie_port + offset;
        ensure_free("127.0.0.1", port, "CALSYNC_RIE_PORT")?;
        ensure_free("127.0.0.1", port + RUNTIME_API_OFFSET, "CALSYNC_RIE_PORT")?;
        let mut function_env = template.environment(&ctx, Some(&function.logical_id))?;
        function_env.extend(aws_env.clone());
        rie::start_detached(
            &rie_binary,
            &bin.join(&function.binary),
            port,
            port + RUNTIME_API_OFFSET,
            &function_env,
            &log_file(&function.binary),
            &pid_file(&function.binary),
        )
        .await
        .with_context(|| format!("starting {} under the RIE", function.binary))?;
        functions.insert(
            function.logical_id.clone(),
            LocalFunction {
                binary: function.binary.clone(),
                invoke_url: rie::invoke_url(port),
            },
        );
    }

    let mut all_env = env;
    all_env.extend(aws_env);
    let state = State {
        aws_endpoint,
        google_url,
        front_url: front_url(options),
        app_url: app_url(options),
        functions,
        env: all_env,
    };
    write_state(&state)?;

    // The key exists before the stand-ins (and `cargo xtask jwt`) read it.
    issuer(options)?;
    // The API Gateway, the app and the event source mapping run in one process of their own.
    let mut stand_ins = Command::new(bin.join("xtask"));
    stand_ins
        .arg("stand-ins")
        .env("CALSYNC_FRONT_PORT", options.front_port.to_string())
        .env("CALSYNC_APP_PORT", options.app_port.to_string());
    process::spawn_detached(
        &mut stand_ins,
        &log_file("stand-ins"),
        &pid_file("stand-ins"),
    )?;
    for port in [options.front_port, options.app_port] {
        process::wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
            "the local API Gateway, app and event source mapping (log: .dev/logs/stand-ins.log)",
        )
        .await?;
    }
    Ok(state)
}

/// A port taken by another program would make the readiness check talk to that program instead.
fn ensure_free(host: &str, port: u16, variable: &str) -> Result<()> {
    std::net::TcpListener::bind((host, port)).map(drop).with_context(|| {
        format!("cannot listen on {host}:{port} (in use, or not an address of this machine); choose another port with {variable}")
    })
}

fn write_state(state: &State) -> Result<()> {
    std::fs::write(state_file(), serde_json::to_string_pretty(state)?)?;
    let mut lines = vec![
        "# Written by `cargo xtask stack up`; `set -a; . .dev/stack.env` loads it.".to_string(),
    ];
    lines.extend(
        state
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v))),
    );
    lines.push(format!("CALSYNC_GOOGLE_EMULATOR_URL={}", state.google_url));
    for function in state.functions.values() {
        lines.push(format!(
            "CALSYNC_INVOKE_URL_{}={}",
            function.binary.replace('-', "_").to_uppercase(),
            function.invoke_url
        ));
    }
    std::fs::write(paths::dev_dir().join("stack.env"), lines.join("\n") + "\n")?;
    Ok(())
}

fn shell_quote(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:,@".contains(c))
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Stops every process of the stack by its pid file; stale or missing pids are fine.
pub async fn down() -> Result<()> {
    for file in pid_files() {
        if let Some(pid) = process::read_pid(&file) {
            process::stop_pid(pid, Duration::from_secs(10)).await?;
        }
        std::fs::remove_file(&file)?;
    }
    let _ = std::fs::remove_file(state_file());
    Ok(())
}

/// One line per process and the URLs, for `stack status`.
pub fn status() -> String {
    let files = pid_files();
    if files.is_empty() {
        return "stack: not running".into();
    }
    let mut out: Vec<String> = files
        .iter()
        .map(|file| {
            let name = file.file_stem().unwrap_or_default().to_string_lossy();
            match process::read_pid(file) {
                Some(pid) if process::is_alive(pid) => format!("  {name:<16} running (pid {pid})"),
                Some(pid) => format!("  {name:<16} stopped (stale pid {pid})"),
                None => format!("  {name:<16} unreadable pid file"),
            }
        })
        .collect();
    if let Some(state) = load_state() {
        out.push(summary(&state));
    }
    out.join("\n")
}

/// The URLs of a running stack.
pub fn summary(state: &State) -> String {
    let mut out = vec![
        format!("  AWS (moto)        {}", state.aws_endpoint),
        format!("  Google emulator   {}", state.google_url),
        format!("  API (front)       {}", state.front_url),
        format!("  app (JWT issuer)  {}", state.app_url),
    ];
    for (id, function) in &state.functions {
        out.push(format!("  {id:<22} {}", function.invoke_url));
    }
    out.push("  environment       .dev/stack.env".into());
    out.join("\n")
}
