//! `sam build` and `sam local invoke` for real, in Docker, the way a user of calsync meets them.
//!
//! On a bare Debian machine (as root) this installs Docker's engine and debootstrap, starts the
//! engine, builds the local Lambda base image `local/lambda-provided:al2023` from Debian's own
//! packages (no image registry is reachable here), runs `sam build` (cargo-lambda, x86_64), and
//! then `sam local invoke`s every function with each of its files in `events/`, checking each
//! answer. The containers reach moto's server and the Google emulator on the Docker bridge's
//! gateway address, which stays on this machine. Last, `sam local start-api` answers one route.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::event_checks;
use base64::Engine as _;
use rand::RngCore as _;
use serde_json::{Value, json};
use tokio::process::Command;
use url::Url;

/// The locally built stand-in for `public.ecr.aws/lambda/provided:al2023`.
pub const BASE_IMAGE: &str = "local/lambda-provided:al2023";
/// Bumped when the base image's recipe changes, so an older local image is rebuilt.
const BASE_REVISION: &str = "2";
const BASE_LABEL: &str = "calsync.base-revision";
/// Set to an image (e.g. `public.ecr.aws/lambda/provided:al2023`) to invoke on it, pulled as
/// usual, instead of building [`BASE_IMAGE`]; then nothing is installed with apt-get.
pub const IMAGE_VARIABLE: &str = "CALSYNC_SAM_INVOKE_IMAGE";
/// The app user the sample events act for (`events/oauth-start*.json`, `events/event-sync-*.json`).
pub const DEMO_USER: &str = "demo-user";
/// The Google account the demo user connects (one of the emulator's default accounts).
pub const DEMO_ACCOUNT: &str = "alice@example.com";
const APP_ORIGIN: &str = "https://app.example.test";
const REDIRECT_URI: &str = "https://app.example.test/oauth/google/callback";
const REGION: &str = "us-east-1";
/// How long the engine may take to answer after `dockerd` starts.
const DOCKERD_READY: Duration = Duration::from_secs(60);
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
    if image.is_none() {
        ensure_packages().await?;
    }
    ensure_docker(&dev).await?;
    timings.record("docker engine ready", started.elapsed());

    if image.is_none() {
        let started = Instant::now();
        ensure_base_image(&dev).await?;
        timings.record("base image ready", started.elapsed());
    }

    let gateway = bridge_gateway().await?;
    println!("sam: containers reach this machine at {gateway}");

    let started = Instant::now();
    let recompiled = sam_build(&root, &tools).await?;
    timings.record(
        format!("sam build ({recompiled} crates compiled)"),
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

// ------------------------------------------------------------------------------------------ setup

/// Installs Docker's engine and debootstrap from Debian when they are missing.
async fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = [("dockerd", "docker.io"), ("debootstrap", "debootstrap")]
        .into_iter()
        .filter(|(binary, _)| which(binary).is_none())
        .map(|(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("sam: installing {}", missing.join(" "));
    run_checked(
        Command::new("apt-get").arg("update").arg("-qq"),
        "apt-get update",
    )
    .await?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
    .await?;
    Ok(())
}

/// Starts `dockerd` (state under `.dev/docker/`) unless an engine already answers.
async fn ensure_docker(dev: &Path) -> Result<()> {
    if docker_answers().await {
        return Ok(());
    }
    let dir = dev.join("docker");
    std::fs::create_dir_all(dir.join("data"))?;
    // An engine of ours that is still starting or stopping holds the pid file: wait for it to
    // answer or go; a pid file whose process is gone is stale.
    let pidfile = dir.join("dockerd.pid");
    let deadline = Instant::now() + DOCKERD_READY;
    while let Ok(pid) = std::fs::read_to_string(&pidfile) {
        if !Path::new("/proc").join(pid.trim()).exists() {
            let _ = std::fs::remove_file(&pidfile);
            break;
        }
        if docker_answers().await {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "dockerd (pid {}) neither answers nor exits; see {}",
            pid.trim(),
            dir.join("dockerd.log").display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::File::create(dir.join("dockerd.log"))?;
    println!(
        "sam: starting dockerd (log {})",
        dir.join("dockerd.log").display()
    );
    // Its own process group: the engine outlives this run and a Ctrl-C of it.
    let mut command = std::process::Command::new("dockerd");
    command
        .args(["--iptables=false", "--ip-masq=false", "--data-root"])
        .arg(dir.join("data"))
        .arg("--pidfile")
        .arg(dir.join("dockerd.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().context("starting dockerd")?;
    let deadline = Instant::now() + DOCKERD_READY;
    loop {
        if docker_answers().await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "dockerd exited ({status}) before answering; see {}",
                dir.join("dockerd.log").display()
            );
        }
        ensure!(
            Instant::now() < deadline,
            "dockerd did not answer within {DOCKERD_READY:?}; see {}",
            dir.join("dockerd.log").display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Imports the base image from a debootstrapped Debian, cached as a tarball in `.dev/`.
async fn ensure_base_image(dev: &Path) -> Result<()> {
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
    let dir = dev.join("lambda-base");
    std::fs::create_dir_all(&dir)?;
    let tarball = dir.join(format!("bookworm-minbase-r{BASE_REVISION}.tar"));
    if !tarball.exists() {
        let rootfs = dir.join("rootfs");
        let _ = std::fs::remove_dir_all(&rootfs);
        println!("sam: debootstrap of Debian bookworm (minbase) for {BASE_IMAGE}");
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
    }
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

/// The default bridge's gateway: this machine as seen from inside `sam local`'s containers.
pub async fn bridge_gateway() -> Result<IpAddr> {
    let output = run_checked(
        Command::new("docker").args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
        ]),
        "docker network inspect bridge",
    )
    .await?;
    output
        .split_whitespace()
        .find_map(|a| a.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
        .ok_or_else(|| anyhow!("the bridge network has no IPv4 gateway: {output:?}"))
}

// ------------------------------------------------------------------------------------------ build

/// `sam build` for x86_64 on the workspace's own `target/`; returns how many crates it compiled.
async fn sam_build(root: &Path, tools: &Tools) -> Result<usize> {
    let target = root.join("target");
    let since = SystemTime::now();
    let mut command = tools.command("sam");
    command
        .current_dir(root)
        // SAM's build cache would hash the whole workspace (CodeUri `.`); cargo's is enough.
        .args([
            "build",
            "--no-cached",
            "--parameter-overrides",
            "Architecture=x86_64",
        ])
        .env("CARGO_TARGET_DIR", &target);
    let output = command.output().await.context("running sam build")?;
    if !output.status.success() {
        bail!(
            "sam build failed ({}):\n{}{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stdout), 40),
            tail(&String::from_utf8_lossy(&output.stderr), 40)
        );
    }
    Ok(
        compiled_since(&target.join("x86_64-unknown-linux-gnu/release/deps"), since)
            + compiled_since(&target.join("release/deps"), since),
    )
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
pub fn template_variables(template: &Path) -> Result<std::collections::BTreeSet<String>> {
    let doc: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(template)?)?;
    let variables = doc["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .ok_or_else(|| anyhow!("template.yaml has no Globals.Function.Environment.Variables"))?;
    Ok(variables
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect())
}

/// The template's functions by binary name (`BuildProperties.Binary`) → logical id.
pub fn functions_from_template(template: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("reading {}", template.display()))?;
    let doc: serde_norway::Value =
        serde_norway::from_str(&text).context("parsing template.yaml")?;
    let resources = doc
        .get("Resources")
        .and_then(|r| r.as_mapping())
        .ok_or_else(|| anyhow!("template.yaml has no Resources"))?;
    let mut functions = BTreeMap::new();
    for (id, resource) in resources {
        if resource.get("Type").and_then(|t| t.as_str()) != Some("AWS::Serverless::Function") {
            continue;
        }
        let id = id.as_str().unwrap_or_default().to_string();
        let binary = resource
            .get("Metadata")
            .and_then(|m| m.get("BuildProperties"))
            .and_then(|b| b.get("Binary"))
            .and_then(|b| b.as_str())
            .ok_or_else(|| anyhow!("function {id} has no Metadata.BuildProperties.Binary"))?;
        functions.insert(binary.to_string(), id);
    }
    ensure!(!functions.is_empty(), "template.yaml declares no function");
    Ok(functions)
}

// --------------------------------------------------------------------------------- local services

/// moto's server and the Google emulator, listening on the bridge gateway only.
struct LocalServices {
    moto: tokio::process::Child,
    moto_url: Url,
    emulator: google_emulator::Running,
    http: reqwest::Client,
    tables: BTreeMap<String, String>,
    client_secret_id: String,
    keys_secret_id: String,
}

impl LocalServices {
    async fn start(root: &Path, tools: &Tools, gateway: IpAddr) -> Result<Self> {
        let port = free_port(gateway)?;
        std::fs::create_dir_all(root.join(".dev"))?;
        let moto_log = std::fs::File::create(root.join(".dev/sam-moto.log"))?;
        let moto = tools
            .command("moto_server")
            .args(["-H", &gateway.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(moto_log.try_clone()?)
            .stderr(moto_log)
            .kill_on_drop(true)
            .spawn()
            .context("starting moto_server")?;
        let moto_url = Url::parse(&format!("http://{gateway}:{port}"))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(moto_url.join("moto-api/data.json")?)
            .send()
            .await
            .is_err()
        {
            ensure!(
                Instant::now() < deadline,
                "moto_server did not answer in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let emulator = google_emulator::Emulator::start(google_emulator::Options {
            bind: SocketAddr::new(gateway, 0),
        })
        .await?;

        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(Provider::Rustls(CryptoMode::Ring))
                    .build_https(),
            )
            .endpoint_url(moto_url.as_str().trim_end_matches('/'))
            .region(Region::new(REGION))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "sam-checks",
            ))
            .load()
            .await;
        let suffix = random_token(6);
        let tables = create_tables(
            &aws_sdk_dynamodb::Client::new(&sdk),
            &root.join("template.yaml"),
            &format!("sam-{suffix}-"),
        )
        .await?;

        let client_id = format!("calsync-sam-{suffix}.apps.googleusercontent.com");
        let client_secret = format!("GOCSPX-{}", random_token(18));
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let client_secret_id = format!("sam-{suffix}/google-client");
        let keys_secret_id = format!("sam-{suffix}/token-keys");
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        for (id, value) in [
            (
                &client_secret_id,
                json!({"web": {"client_id": client_id, "client_secret": client_secret,
                               "redirect_uris": [REDIRECT_URI]}}),
            ),
            (
                &keys_secret_id,
                json!({"current": "k1", "keys": {
                    "k1": base64::engine::general_purpose::STANDARD.encode(key)}}),
            ),
        ] {
            secrets
                .create_secret()
                .name(id.as_str())
                .secret_string(value.to_string())
                .send()
                .await
                .with_context(|| format!("creating secret {id} in moto"))?;
        }
        let services = Self {
            moto,
            moto_url,
            emulator,
            http,
            tables,
            client_secret_id,
            keys_secret_id,
        };
        services
            .control_post(
                "clients",
                &json!({"client_id": client_id, "client_secret": client_secret,
                        "redirect_uris": [REDIRECT_URI]}),
            )
            .await?;
        Ok(services)
    }

    fn table(&self, logical_id: &str) -> Result<&str> {
        self.tables
            .get(logical_id)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("template.yaml declares no table {logical_id}"))
    }

    /// Every variable of SPEC's configuration table, for every function (`Parameters`).
    fn env_file(&self) -> Result<Value> {
        let base = self.emulator.base_url.as_str();
        let table = |id| self.table(id).map(str::to_string);
        Ok(json!({"Parameters": {
            "GRANTS_TABLE": table("GrantsTable")?,
            "OAUTH_FLOWS_TABLE": table("OAuthFlowsTable")?,
            "SYNC_STATE_TABLE": table("SyncStateTable")?,
            "EVENTS_TABLE": table("EventsTable")?,
            "GOOGLE_CLIENT_SECRET_ID": self.client_secret_id,
            "TOKEN_KEYS_SECRET_ID": self.keys_secret_id,
            "OAUTH_REDIRECT_URI": REDIRECT_URI,
            "ALLOWED_RETURN_ORIGINS": APP_ORIGIN,
            "DEFAULT_RETURN_URL": format!("{APP_ORIGIN}/settings"),
            "GOOGLE_SCOPES": "openid email https://www.googleapis.com/auth/calendar.events.owned",
            "GOOGLE_AUTH_URL": format!("{base}o/oauth2/v2/auth"),
            "GOOGLE_TOKEN_URL": format!("{base}token"),
            "GOOGLE_REVOKE_URL": format!("{base}revoke"),
            "GOOGLE_CALENDAR_API_URL": format!("{base}calendar/v3"),
            "SYNC_CONCURRENCY": "8",
            "AWS_ENDPOINT_URL": self.moto_url.as_str().trim_end_matches('/'),
            "RUST_LOG": "info",
        }}))
    }

    /// `AwsEndpointUrl` makes the template declare `AWS_ENDPOINT_URL`, which env files may then set.
    fn parameter_overrides(&self) -> Vec<String> {
        vec![
            "Architecture=x86_64".into(),
            format!(
                "AwsEndpointUrl={}",
                self.moto_url.as_str().trim_end_matches('/')
            ),
        ]
    }

    fn control(&self, path: &str) -> Result<Url> {
        Ok(self.emulator.base_url.join("__emulator/")?.join(path)?)
    }

    async fn control_post(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .http
            .post(self.control(path)?)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        ensure!(status.is_success(), "emulator {path}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn control_get(&self, path: &str) -> Result<Value> {
        let response = self.http.get(self.control(path)?).send().await?;
        let status = response.status();
        ensure!(status.is_success(), "emulator {path}: {status}");
        Ok(response.json().await?)
    }

    /// The demo account's primary calendar, cancelled events included.
    async fn calendar(&self) -> Result<Vec<Value>> {
        let listing = self
            .control_get(&format!("calendars/{DEMO_ACCOUNT}/primary/events"))
            .await?;
        Ok(listing["items"].as_array().cloned().unwrap_or_default())
    }

    async fn stop(mut self) {
        let _ = self.moto.kill().await;
        self.emulator.shutdown().await;
    }
}

/// Creates every `AWS::DynamoDB::Table` of the template under `prefix`; logical id → name.
async fn create_tables(
    dynamodb: &aws_sdk_dynamodb::Client,
    template: &Path,
    prefix: &str,
) -> Result<BTreeMap<String, String>> {
    let doc: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(template)?)?;
    let resources = doc
        .get("Resources")
        .and_then(|r| r.as_mapping())
        .ok_or_else(|| anyhow!("template.yaml has no Resources"))?;
    let mut tables = BTreeMap::new();
    for (id, resource) in resources {
        if resource.get("Type").and_then(|t| t.as_str()) != Some("AWS::DynamoDB::Table") {
            continue;
        }
        let id = id.as_str().unwrap_or_default();
        let props = &resource["Properties"];
        let name = format!("{prefix}{id}");
        let key_schema = |schema: &serde_norway::Value| -> Result<Vec<KeySchemaElement>> {
            schema
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|k| {
                    Ok(KeySchemaElement::builder()
                        .attribute_name(k["AttributeName"].as_str().unwrap_or_default())
                        .key_type(KeyType::from(k["KeyType"].as_str().unwrap_or_default()))
                        .build()?)
                })
                .collect()
        };
        let mut request = dynamodb
            .create_table()
            .table_name(&name)
            .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
            .set_key_schema(Some(key_schema(&props["KeySchema"])?));
        for attribute in props["AttributeDefinitions"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            request = request.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attribute["AttributeName"].as_str().unwrap_or_default())
                    .attribute_type(ScalarAttributeType::from(
                        attribute["AttributeType"].as_str().unwrap_or_default(),
                    ))
                    .build()?,
            );
        }
        for index in props["GlobalSecondaryIndexes"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            request = request.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index["IndexName"].as_str().unwrap_or_default())
                    .set_key_schema(Some(key_schema(&index["KeySchema"])?))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()?,
            );
        }
        if let Some(view) = props["StreamSpecification"]["StreamViewType"].as_str() {
            request = request.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::from(view))
                    .build()?,
            );
        }
        request
            .send()
            .await
            .with_context(|| format!("creating table {name} in moto"))?;
        tables.insert(id.to_string(), name);
    }
    Ok(tables)
}

// ----------------------------------------------------------------------------------------- invoke

struct Sam {
    root: PathBuf,
    tools: Tools,
    env_file: PathBuf,
    parameters: Vec<String>,
    /// `None`: the local [`BASE_IMAGE`], never pulled.
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
            .args(["--region", REGION]);
        match &self.image {
            None => command.args(["--invoke-image", BASE_IMAGE, "--skip-pull-image"]),
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
    let auth_url = format!("{}o/oauth2/v2/auth?", services.emulator.base_url);
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
                header(answer, "content-type").is_some_and(|t| t.starts_with("text/html"))
                    && body.contains(&format!("<code>{error}</code>"))
            }
        };
        ensure!(named, "{file}: expected error {error}, got {answer}");
    }
    if let Some(prefix) = &expect.location_prefix {
        let location = header(answer, "location").unwrap_or_default();
        ensure!(
            location.starts_with(prefix.as_str()),
            "{file}: Location {location:?} is not on {prefix}"
        );
        let url = Url::parse(&location)?;
        let query: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        for (key, value) in [
            ("response_type", Some("code")),
            ("redirect_uri", Some(REDIRECT_URI)),
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
        let cookie = set_cookies(answer)
            .into_iter()
            .find(|c| c.starts_with("__Host-"))
            .ok_or_else(|| anyhow!("{file}: no __Host- Set-Cookie in {answer}"))?;
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=600",
        ] {
            ensure!(
                cookie.contains(attribute),
                "{file}: cookie lacks {attribute}: {cookie}"
            );
        }
    }
    Ok(())
}

fn header(answer: &Value, name: &str) -> Option<String> {
    let headers = answer["headers"].as_object()?;
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str().map(str::to_string))
        .or_else(|| {
            answer["multiValueHeaders"]
                .as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))?
                .1
                .get(0)?
                .as_str()
                .map(str::to_string)
        })
}

/// API Gateway v2 answers carry Set-Cookie in `cookies`; v1-shaped ones in the headers.
fn set_cookies(answer: &Value) -> Vec<String> {
    let mut cookies: Vec<String> = answer["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    cookies.extend(header(answer, "set-cookie"));
    cookies
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
    let files = event_checks::event_files(&events_dir)?;
    let expectations = event_checks::load_expectations(&events_dir)?;
    let variables: BTreeMap<String, String> = services.env_file()?["Parameters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let event_sync = functions
        .get("event-sync")
        .ok_or_else(|| anyhow!("no event-sync function"))?;
    let mut outputs = String::new();
    let (events_dir, expectations, variables) = (&events_dir, &expectations, &variables);
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
                event_checks::check(&expectation, &invocation.answer, variables)
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
    let issued = services.control_get("issued-secrets").await?;
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
    let start_event = http_event(
        "/oauth/google/start",
        &[("return_to", format!("{APP_ORIGIN}/calendar"))],
        &[("accept", "application/json")],
        Some(DEMO_USER),
        &[],
    );
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
    let cookie = set_cookies(&start.answer)
        .into_iter()
        .find(|c| c.starts_with("__Host-"))
        .and_then(|c| c.split(';').next().map(str::to_string))
        .ok_or_else(|| anyhow!("connect start set no cookie"))?;

    let consent = services
        .control_post(
            "consent",
            &json!({"authorization_url": authorization_url, "account": DEMO_ACCOUNT,
                    "decision": "allow"}),
        )
        .await?;
    let redirect = Url::parse(
        consent["redirect"]
            .as_str()
            .ok_or_else(|| anyhow!("emulator consent gave no redirect: {consent}"))?,
    )?;
    ensure!(
        redirect.as_str().starts_with(REDIRECT_URI),
        "consent redirected to {} instead of the callback",
        redirect.path()
    );
    let query: Vec<(String, String)> = redirect.query_pairs().into_owned().collect();
    let callback_event = http_event("/oauth/google/callback", &query, &[], None, &[cookie]);
    let callback_file = work.join("connect-callback.json");
    std::fs::write(&callback_file, serde_json::to_vec(&callback_event)?)?;
    let started = Instant::now();
    let callback = sam.invoke(callback_id, &callback_file).await?;
    timings.record(
        format!("invoke {callback_id} (connect: callback)"),
        started.elapsed(),
    );
    outputs.push_str(&callback.output);
    let location = header(&callback.answer, "location").unwrap_or_default();
    ensure!(
        callback.answer["statusCode"] == 302
            && location.starts_with(&format!("{APP_ORIGIN}/calendar"))
            && location.contains("calsync=connected"),
        "connect callback: {}",
        callback.answer
    );
    ensure!(
        set_cookies(&callback.answer)
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

/// An API Gateway HTTP API (payload 2.0) GET event, as the sample files hold them.
fn http_event<Q: AsRef<str>>(
    path: &str,
    query: &[(Q, String)],
    headers: &[(&str, &str)],
    user: Option<&str>,
    cookies: &[String],
) -> Value {
    let raw_query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query.iter().map(|(k, v)| (k.as_ref(), v.as_str())))
        .finish();
    let mut header_map = serde_json::Map::new();
    header_map.insert("host".into(), json!("api.example.test"));
    for (name, value) in headers {
        header_map.insert(name.to_string(), json!(value));
    }
    let mut context = json!({
        "accountId": "123456789012", "apiId": "local", "domainName": "api.example.test",
        "domainPrefix": "api",
        "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                 "sourceIp": "192.0.2.10", "userAgent": "sam-checks"},
        "requestId": random_token(8), "routeKey": format!("GET {path}"), "stage": "$default",
        "time": "", "timeEpoch": 0,
    });
    if let Some(user) = user {
        context["authorizer"] = json!({"jwt": {"claims": {"sub": user}, "scopes": null}});
    }
    let mut event = json!({
        "version": "2.0", "routeKey": format!("GET {path}"), "rawPath": path,
        "rawQueryString": raw_query, "headers": header_map, "requestContext": context,
        "isBase64Encoded": false,
    });
    if !query.is_empty() {
        let params: serde_json::Map<String, Value> = query
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), json!(v)))
            .collect();
        event["queryStringParameters"] = Value::Object(params);
    }
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    event
}

// -------------------------------------------------------------------------------------- start-api

/// `sam local start-api` once: the callback route without a state answers 400 `invalid_state`.
async fn start_api_smoke(sam: &Sam, timings: &mut Timings) -> Result<()> {
    let port = free_port(IpAddr::from([127, 0, 0, 1]))?;
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
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION);
        command
    }
}

async fn run_checked(command: &mut Command, what: &str) -> Result<String> {
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

fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn free_port(ip: IpAddr) -> Result<u16> {
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("no free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn tempdir(root: &Path) -> Result<PathBuf> {
    let dir = root
        .join(".dev")
        .join(format!("sam-run-{}", random_token(4)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
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
        let expectations = event_checks::load_expectations(&root.join("events")).unwrap();
        let files = event_checks::event_files(&root.join("events")).unwrap();
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
    fn set_cookie_is_read_from_v2_cookies_and_from_headers() {
        let v2 = json!({"statusCode": 302, "cookies": ["__Host-a=1; Secure"]});
        assert_eq!(set_cookies(&v2), ["__Host-a=1; Secure"]);
        let v1 = json!({"statusCode": 302, "headers": {"Set-Cookie": "__Host-b=2"}});
        assert_eq!(set_cookies(&v1), ["__Host-b=2"]);
        assert!(set_cookies(&json!({"statusCode": 200})).is_empty());
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

    #[test]
    fn the_callback_event_carries_query_and_cookie() {
        let event = http_event(
            "/oauth/google/callback",
            &[("state", "s 1".to_string()), ("code", "c".to_string())],
            &[],
            None,
            &["__Host-calsync_oauth=n".to_string()],
        );
        assert_eq!(event["rawQueryString"], "state=s+1&code=c");
        assert_eq!(event["queryStringParameters"]["state"], "s 1");
        assert_eq!(event["cookies"][0], "__Host-calsync_oauth=n");
        assert!(event["requestContext"].get("authorizer").is_none());
    }
}
