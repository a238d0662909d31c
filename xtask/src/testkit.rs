//! A whole calsync stack for one integration test: moto's server (started once per test process
//! and shared), a fresh in-process Google emulator, the template's tables under a prefix of the
//! test's own, both secrets seeded, the OAuth client registered at the emulator, and the
//! environment the functions would see.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let stack = xtask::testkit::TestStack::start().await?;
//! // e.g. calsync::config::Config::from_source(&stack.env)
//! let grants_table = &stack.env["GRANTS_TABLE"];
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, anyhow};
use aws_config::SdkConfig;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use url::Url;

use crate::template::{Context, Template};
use crate::{aws, ddb_json, moto, paths, process, seed, streams, tables};

pub const APP_ORIGIN: &str = "https://app.example.test";
pub const DEFAULT_RETURN_URL: &str = "https://app.example.test/settings";
pub const OAUTH_REDIRECT_URI: &str = "https://app.example.test/oauth/google/callback";
pub const JWT_ISSUER: &str = "https://issuer.example.test";
pub const JWT_AUDIENCE: &str = "calsync-test";

/// moto's server, shared by every test of this process. It dies with the process.
struct SharedMoto {
    endpoint: String,
    _child: Option<Mutex<std::process::Child>>,
}

static MOTO: OnceCell<SharedMoto> = OnceCell::const_new();
static STACKS: AtomicU32 = AtomicU32::new(0);

async fn shared_moto() -> Result<&'static SharedMoto> {
    MOTO.get_or_try_init(|| async {
        // An already running emulator (the local stack's, or CI's) can be reused.
        if let Ok(endpoint) = std::env::var("CALSYNC_TEST_AWS_ENDPOINT") {
            return Ok(SharedMoto {
                endpoint,
                _child: None,
            });
        }
        let venv = paths::venv()?;
        let port = process::free_port()?;
        let log =
            std::env::temp_dir().join(format!("calsync-test-moto-{}.log", std::process::id()));
        let child = moto::start_tied(&venv, port, &log)
            .await
            .with_context(|| format!("starting moto (log: {})", log.display()))?;
        Ok(SharedMoto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: Some(Mutex::new(child)),
        })
    })
    .await
}

/// One test's stack. See the module documentation.
pub struct TestStack {
    /// Every variable of SPEC's configuration table, plus `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub env: HashMap<String, String>,
    /// Points at moto, on the ring TLS client.
    pub sdk: SdkConfig,
    pub emulator: google_emulator::Running,
    pub client_id: String,
    pub client_secret: String,
    /// The prefix of this stack's table and secret names.
    pub prefix: String,
    /// Template logical id (`GrantsTable`) to this stack's table name.
    pub tables: BTreeMap<String, String>,
    /// moto's endpoint, e.g. `http://127.0.0.1:PORT`.
    pub aws_endpoint: String,
    pub http: reqwest::Client,
}

impl TestStack {
    pub async fn start() -> Result<Self> {
        let moto = shared_moto().await?;
        let sdk = aws::local_sdk_config(&moto.endpoint).await;
        let emulator = google_emulator::Emulator::start(google_emulator::Options::default())
            .await
            .context("starting the Google emulator")?;
        let prefix = format!(
            "calsync-t{}-{}-{}-",
            std::process::id(),
            STACKS.fetch_add(1, Ordering::Relaxed),
            seed::random_token(3)
        );
        let client_id = format!("{}.apps.googleusercontent.com", seed::random_token(12));
        let client_secret = format!("GOCSPX-{}", seed::random_token(14));
        let ctx = local_context(&prefix, &emulator.base_url, &moto.endpoint);

        let template = Template::load_workspace()?;
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let mut table_names = BTreeMap::new();
        for spec in template.tables(&ctx)? {
            let name = Template::local_name(&ctx, &spec.logical_id);
            tables::create_table(&dynamodb, &spec, &name).await?;
            table_names.insert(spec.logical_id, name);
        }

        let mut env: HashMap<String, String> =
            template.environment(&ctx, None)?.into_iter().collect();
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let client_json = seed::google_client_json(
            &client_id,
            &client_secret,
            &emulator.base_url,
            &[OAUTH_REDIRECT_URI],
            &[APP_ORIGIN],
        )?;
        seed_secret(&secrets, &env, "GOOGLE_CLIENT_SECRET_ID", &client_json).await?;
        seed_secret(
            &secrets,
            &env,
            "TOKEN_KEYS_SECRET_ID",
            &seed::generate_keyring(),
        )
        .await?;

        let http = reqwest::Client::new();
        let registered = http
            .post(emulator.base_url.join("__emulator/clients")?)
            .json(&json!({
                "client_id": client_id,
                "client_secret": client_secret,
                "redirect_uris": [OAUTH_REDIRECT_URI],
            }))
            .send()
            .await
            .context("registering the OAuth client at the emulator")?;
        if !registered.status().is_success() {
            return Err(anyhow!(
                "the emulator refused the OAuth client: {}",
                registered.status()
            ));
        }

        for (name, value) in aws::local_env(&moto.endpoint) {
            env.insert(name.to_string(), value);
        }
        Ok(Self {
            env,
            sdk,
            emulator,
            client_id,
            client_secret,
            prefix,
            tables: table_names,
            aws_endpoint: moto.endpoint.clone(),
            http,
        })
    }

    /// A URL of the emulator's control API: `control("stats")` is `{base}__emulator/stats`.
    pub fn control(&self, path: &str) -> Url {
        self.emulator
            .base_url
            .join("__emulator/")
            .and_then(|base| base.join(path.trim_start_matches('/')))
            .expect("a relative path joins onto the emulator's URL")
    }

    /// The name of a table of this stack, by template logical id (`EventsTable`) or env variable
    /// (`EVENTS_TABLE`); any other string is taken as a table name.
    pub fn table<'a>(&'a self, table: &'a str) -> &'a str {
        self.tables
            .get(table)
            .or_else(|| self.env.get(table))
            .map(String::as_str)
            .unwrap_or(table)
    }

    /// Every item of every table of this stack as JSON text (`{"<table>": [items..]}`, DynamoDB
    /// typed JSON), for leak scans.
    pub async fn dump_tables(&self) -> Result<String> {
        let client = aws_sdk_dynamodb::Client::new(&self.sdk);
        let mut dump = serde_json::Map::new();
        for name in self.tables.values() {
            let mut items = Vec::new();
            let mut pages = client.scan().table_name(name).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page
                    .map_err(aws_sdk_dynamodb::Error::from)
                    .with_context(|| format!("scanning {name}"))?;
                items.extend(page.items().iter().map(ddb_json::table_item));
            }
            dump.insert(name.clone(), Value::Array(items));
        }
        Ok(serde_json::to_string_pretty(&Value::Object(dump))?)
    }

    /// The records moto's stream holds for `table` (see [`TestStack::table`]), in Lambda's
    /// `DynamodbEvent` record shape.
    pub async fn stream_records(&self, table: &str) -> Result<Vec<Value>> {
        streams::stream_records(
            &aws_sdk_dynamodb::Client::new(&self.sdk),
            &aws_sdk_dynamodbstreams::Client::new(&self.sdk),
            self.table(table),
        )
        .await
    }

    /// `{"Records": [...]}`.
    pub fn stream_event(records: Vec<Value>) -> Value {
        streams::stream_event(records)
    }
}

/// The template's parameters for a local stack whose Google is `google` and AWS is `aws_endpoint`.
pub fn local_context(prefix: &str, google: &Url, aws_endpoint: &str) -> Context {
    let join = |path: &str| {
        google
            .join(path)
            .expect("a relative path joins onto the emulator's URL")
            .to_string()
    };
    let parameters = [
        ("JwtIssuer", JWT_ISSUER.to_string()),
        ("JwtAudience", JWT_AUDIENCE.to_string()),
        ("OAuthRedirectUri", OAUTH_REDIRECT_URI.to_string()),
        ("AllowedReturnOrigins", APP_ORIGIN.to_string()),
        ("DefaultReturnUrl", DEFAULT_RETURN_URL.to_string()),
        ("GoogleAuthUrl", join("o/oauth2/v2/auth")),
        ("GoogleTokenUrl", join("token")),
        ("GoogleRevokeUrl", join("revoke")),
        ("GoogleCalendarApiUrl", join("calendar/v3")),
        ("AwsEndpointUrl", aws_endpoint.to_string()),
    ];
    Context {
        parameters: parameters
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        prefix: prefix.to_string(),
        region: aws::REGION.to_string(),
        account_id: aws::ACCOUNT_ID.to_string(),
    }
}

async fn seed_secret(
    client: &aws_sdk_secretsmanager::Client,
    env: &HashMap<String, String>,
    variable: &str,
    value: &str,
) -> Result<()> {
    let name = env
        .get(variable)
        .ok_or_else(|| anyhow!("template.yaml sets no {variable}"))?;
    seed::upsert_secret(client, name, value).await
}

/// The variables SPEC requires of every function, with values that pass validation.
pub const REQUIRED_VARIABLES: [(&str, &str); 9] = [
    ("GRANTS_TABLE", "grants"),
    ("OAUTH_FLOWS_TABLE", "flows"),
    ("SYNC_STATE_TABLE", "sync-state"),
    ("EVENTS_TABLE", "events"),
    ("GOOGLE_CLIENT_SECRET_ID", "google-client"),
    ("TOKEN_KEYS_SECRET_ID", "token-keys"),
    ("OAUTH_REDIRECT_URI", OAUTH_REDIRECT_URI),
    ("ALLOWED_RETURN_ORIGINS", APP_ORIGIN),
    ("DEFAULT_RETURN_URL", DEFAULT_RETURN_URL),
];

/// Starts a function's binary once per required variable, each time without that variable (and
/// once with a malformed URL), and checks that it stops before serving: exit status 78 and one
/// line on stderr naming the variable. Returns how many starts were checked.
pub fn check_stops_on_bad_configuration(binary: &std::path::Path) -> Result<usize> {
    let run = |env: &[(&str, &str)]| -> Result<(Option<i32>, String)> {
        let output = std::process::Command::new(binary)
            .env_clear()
            .envs(env.iter().copied())
            .env("AWS_REGION", aws::REGION)
            .output()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok((
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    };
    let mut cases: Vec<(&str, Vec<(&str, &str)>)> = REQUIRED_VARIABLES
        .iter()
        .map(|(missing, _)| {
            let env = REQUIRED_VARIABLES
                .iter()
                .filter(|(name, _)| name != missing)
                .copied()
                .collect();
            (*missing, env)
        })
        .collect();
    let mut malformed = REQUIRED_VARIABLES.to_vec();
    malformed.retain(|(name, _)| *name != "OAUTH_REDIRECT_URI");
    malformed.push(("OAUTH_REDIRECT_URI", "not a url"));
    cases.push(("OAUTH_REDIRECT_URI", malformed));
    for (variable, env) in &cases {
        let (code, stderr) = run(env)?;
        let lines: Vec<&str> = stderr.lines().collect();
        anyhow::ensure!(
            code == Some(78) && lines.len() == 1 && lines[0].contains(variable),
            "{} with {variable} missing or malformed: exit {code:?}, stderr {stderr:?}",
            binary.display()
        );
    }
    Ok(cases.len())
}
