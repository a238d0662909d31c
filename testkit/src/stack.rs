//! A whole calsync stack for one integration test: moto's server (started once per test process
//! and shared), a fresh in-process Google emulator, the template's tables under a prefix of the
//! test's own, both secrets seeded, the OAuth client registered at the emulator, and the
//! environment the functions would see.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let stack = testkit::TestStack::start().await?;
//! // e.g. calsync::config::Config::from_source(&stack.env)
//! let grants_table = &stack.env["GRANTS_TABLE"];
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, anyhow, ensure};
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use url::Url;

use crate::api_gateway::{HttpApiEvent, answer_header, answer_of, answer_set_cookies, cookie_pair};
use crate::emulator_control::EmulatorControl;
use crate::eventbridge::{self, EventTap};
use crate::template::{Context, Template};
use crate::{aws, ddb_json, moto, paths, process, queues, seed, streams, tables};

pub const APP_ORIGIN: &str = "https://app.example.test";
pub const DEFAULT_RETURN_URL: &str = "https://app.example.test/settings";
pub const OAUTH_REDIRECT_URI: &str = "https://app.example.test/oauth/google/callback";
pub const JWT_ISSUER: &str = "https://issuer.example.test";
pub const JWT_AUDIENCE: &str = "calsync-test";
/// Two of the Google accounts every emulator starts with, and Alice's Google subject.
pub const ALICE: &str = google_emulator::state::DEFAULT_ACCOUNTS[0].0;
pub const ALICE_SUB: &str = google_emulator::state::DEFAULT_ACCOUNTS[0].1;
pub const BOB: &str = google_emulator::state::DEFAULT_ACCOUNTS[1].0;
/// What SPEC requires of the `__Host-` cookie that binds a connect to its browser.
pub const BINDING_COOKIE_ATTRIBUTES: [&str; 5] = [
    "HttpOnly",
    "Secure",
    "SameSite=Lax",
    "Path=/",
    "Max-Age=600",
];

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
    /// The emulator's control API; a stack also offers its calls as its own (`stack.consent(..)`).
    pub google: EmulatorControl,
    /// A moto of this stack's own (see [`TestStack::start_reachable_at`]); it stops with the stack.
    _own_moto: Option<std::process::Child>,
}

impl TestStack {
    /// A stack on loopback, on the moto server every test of this process shares.
    pub async fn start() -> Result<Self> {
        Self::start_with_parameters(&[]).await
    }

    /// [`TestStack::start`] with template parameters overridden (`("CalendarMode",
    /// "dedicated")`), as `sam deploy --parameter-overrides` would.
    pub async fn start_with_parameters(parameters: &[(&str, &str)]) -> Result<Self> {
        let moto = shared_moto().await?;
        let ip = IpAddr::from([127, 0, 0, 1]);
        Self::start_with(moto.endpoint.clone(), None, ip, parameters).await
    }

    /// A stack whose moto (`moto_server`, its log in `moto_log`) and emulator listen on `ip`, for
    /// clients that are not on loopback (containers reach the host on Docker's bridge gateway).
    pub async fn start_reachable_at(
        ip: IpAddr,
        moto_server: &Path,
        moto_log: &Path,
    ) -> Result<Self> {
        let port = process::free_port_on(ip)?;
        let moto = moto::start_tied_on(moto_server, ip, port, moto_log)
            .await
            .with_context(|| format!("starting moto (log: {})", moto_log.display()))?;
        Self::start_with(format!("http://{ip}:{port}"), Some(moto), ip, &[]).await
    }

    async fn start_with(
        aws_endpoint: String,
        own_moto: Option<std::process::Child>,
        ip: IpAddr,
        parameters: &[(&str, &str)],
    ) -> Result<Self> {
        let sdk = aws::local_sdk_config(&aws_endpoint).await;
        let emulator = google_emulator::Emulator::start(google_emulator::Options {
            bind: SocketAddr::new(ip, 0),
        })
        .await
        .context("starting the Google emulator")?;
        let prefix = format!(
            "calsync-t{}-{}-{}-",
            std::process::id(),
            STACKS.fetch_add(1, Ordering::Relaxed),
            seed::random_token(6)
        );
        let secrets = StackSecrets::generate();
        let app = Url::parse(DEFAULT_RETURN_URL)?;
        let mut ctx = local_context(&prefix, &emulator.base_url, &aws_endpoint, &app, &app);
        // A bus of the stack's own: tests sharing one moto never read each other's events.
        ctx.parameters
            .insert("EventBusName".into(), format!("{prefix}bus"));
        for (name, value) in parameters {
            ctx.parameters.insert(name.to_string(), value.to_string());
        }
        let template = Template::load_workspace()?;
        let provisioned = provision(&sdk, &template, &ctx, &emulator.base_url, &secrets).await?;
        let StackSecrets {
            client_id,
            client_secret,
            ..
        } = secrets;
        let mut env: HashMap<String, String> = provisioned.env.into_iter().collect();

        let google = EmulatorControl::new(emulator.base_url.clone());
        let client = json!({
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": [OAUTH_REDIRECT_URI],
        });
        let (status, answer) = google
            .control_post("clients", &client)
            .await
            .context("registering the OAuth client at the emulator")?;
        ensure!(
            status.is_success(),
            "the emulator refused the OAuth client: {status} {answer}"
        );

        for (name, value) in aws::local_env(&aws_endpoint) {
            env.insert(name.to_string(), value);
        }
        Ok(Self {
            env,
            sdk,
            emulator,
            client_id,
            client_secret,
            prefix,
            tables: provisioned.tables,
            aws_endpoint,
            http: reqwest::Client::new(),
            google,
            _own_moto: own_moto,
        })
    }

    /// Connects `user` to Google as `account` the way a browser does, through the caller's start
    /// and callback handlers: start, consent, then the callback with the binding cookie.
    pub async fn connect_through(
        &self,
        user: &str,
        account: &str,
        start: impl AsyncFnOnce(Request) -> Response<Body>,
        callback: impl AsyncFnOnce(Request) -> Response<Body>,
    ) -> Result<()> {
        self.connect_through_events(
            user,
            account,
            // Boxed: the handlers' futures nested in these closures' would otherwise be too deep
            // for the compiler's layout computation.
            async |event| Ok(answer_of(Box::pin(start(event.request())).await)),
            async |event| Ok(answer_of(Box::pin(callback(event.request())).await)),
        )
        .await
        .map(drop)
    }

    /// [`TestStack::connect_through`] for functions that answer API Gateway events with Lambda's
    /// JSON (under the RIE or `sam local invoke`). The callback must send the browser back
    /// connected and clear the binding cookie; returns the callback's event, for a replay.
    pub async fn connect_through_events(
        &self,
        user: &str,
        account: &str,
        start: impl AsyncFnOnce(HttpApiEvent) -> Result<Value>,
        callback: impl AsyncFnOnce(HttpApiEvent) -> Result<Value>,
    ) -> Result<HttpApiEvent> {
        let started = start(HttpApiEvent::get("/oauth/google/start").user(user)).await?;
        ensure!(started["statusCode"] == 302, "start answered {started}");
        let location = answer_header(&started, "location").context("start gave no Location")?;
        let set_cookie = answer_set_cookies(&started)
            .into_iter()
            .find(|c| c.starts_with("__Host-"))
            .context("start set no __Host- cookie")?;
        let (name, nonce) = cookie_pair(&set_cookie).context("a malformed Set-Cookie")?;
        let redirect = self.consent(&location, account, "allow", &[]).await?;
        ensure!(
            redirect.as_str().starts_with(OAUTH_REDIRECT_URI),
            "consent redirected to {redirect} instead of the callback"
        );
        let event = HttpApiEvent::get("/oauth/google/callback")
            .query(redirect.query().unwrap_or_default())
            .cookie(&format!("{name}={nonce}"));
        let back = callback(event.clone()).await?;
        let location = answer_header(&back, "location").unwrap_or_default();
        ensure!(
            back["statusCode"] == 302 && location.contains("calsync=connected"),
            "the callback answered {back}"
        );
        ensure!(
            answer_set_cookies(&back)
                .iter()
                .any(|c| c.starts_with(&format!("{name}=")) && c.contains("Max-Age=0")),
            "the callback did not clear the binding cookie: {back}"
        );
        Ok(event)
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

    /// The item of `table` (see [`TestStack::table`]) whose key attribute `key` is `value`, read
    /// consistently.
    pub async fn item(
        &self,
        table: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>> {
        let table = self.table(table);
        let answer = aws_sdk_dynamodb::Client::new(&self.sdk)
            .get_item()
            .table_name(table)
            .key(key, AttributeValue::S(value.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(aws_sdk_dynamodb::Error::from)
            .with_context(|| format!("reading {key}={value} of {table}"))?;
        Ok(answer.item)
    }

    /// The records moto's stream holds for `table` (see [`TestStack::table`]), in Lambda's
    /// `DynamodbEvent` record shape.
    pub async fn stream_records(&self, table: &str) -> Result<Vec<Value>> {
        streams::stream_records(
            &aws_sdk_dynamodb::Client::new(&self.sdk),
            &streams::Streams::new(&self.aws_endpoint),
            self.table(table),
        )
        .await
    }

    /// A queue that receives every event with `source` on this stack's bus (`EVENT_BUS_NAME`), to
    /// read what the functions emitted; see [`EventTap::drain`].
    pub async fn tap_events(&self, source: &str) -> Result<EventTap> {
        let bus = self
            .env
            .get("EVENT_BUS_NAME")
            .context("template.yaml sets no EVENT_BUS_NAME")?;
        EventTap::start(&self.sdk, bus, source, &format!("{}lifecycle", self.prefix)).await
    }

    /// `{"Records": [...]}`.
    pub fn stream_event(records: Vec<Value>) -> Value {
        streams::stream_event(records)
    }
}

impl std::ops::Deref for TestStack {
    type Target = EmulatorControl;

    fn deref(&self) -> &EmulatorControl {
        &self.google
    }
}

/// The template's parameters for a local stack whose Google is `google`, AWS is `aws_endpoint`,
/// whose app page `app` is where the browser returns by default, and whose HTTP API is at `api`
/// (Google redirects to the callback there).
pub fn local_context(
    prefix: &str,
    google: &Url,
    aws_endpoint: &str,
    app: &Url,
    api: &Url,
) -> Context {
    let join = |path: &str| {
        google
            .join(path)
            .expect("a relative path joins onto the emulator's URL")
            .to_string()
    };
    let origin = app.origin().ascii_serialization();
    // The sample events in events/ return to the test app's origin wherever the app is.
    let allowed_origins = if origin == APP_ORIGIN {
        origin.clone()
    } else {
        format!("{origin},{APP_ORIGIN}")
    };
    let parameters = [
        ("JwtIssuer", JWT_ISSUER.to_string()),
        ("JwtAudience", JWT_AUDIENCE.to_string()),
        (
            "OAuthRedirectUri",
            format!(
                "{}/oauth/google/callback",
                api.origin().ascii_serialization()
            ),
        ),
        ("AllowedReturnOrigins", allowed_origins),
        ("DefaultReturnUrl", app.to_string()),
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

/// The OAuth client and token keyring a stack's secrets hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackSecrets {
    pub client_id: String,
    pub client_secret: String,
    pub keyring: String,
}

impl StackSecrets {
    /// A client id and secret shaped like Google's (the secret marked for leak scans), and a
    /// keyring of one fresh key.
    pub fn generate() -> Self {
        Self {
            client_id: format!("{}.apps.googleusercontent.com", seed::random_token(24)),
            client_secret: format!("GOCSPX-{}", google_emulator::state::sentinel_token(28)),
            keyring: seed::generate_keyring(),
        }
    }
}

/// What [`provision`] made.
pub struct Provisioned {
    /// The environment the template gives every function.
    pub env: BTreeMap<String, String>,
    /// Template logical id to table name.
    pub tables: BTreeMap<String, String>,
    /// The names of the tables that did not exist before.
    pub created: Vec<String>,
}

/// Creates the template's tables and queues under `ctx`'s names (an existing one is kept), the
/// event bus when it is not the default one, and seeds both secrets: the Google client (at
/// `google`, redirecting to the template's `OAuthRedirectUri`) and
/// the keyring.
pub async fn provision(
    sdk: &SdkConfig,
    template: &Template,
    ctx: &Context,
    google: &Url,
    secrets: &StackSecrets,
) -> Result<Provisioned> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let (mut names, mut created) = (BTreeMap::new(), Vec::new());
    for spec in template.tables(ctx)? {
        let name = Template::local_name(ctx, &spec.logical_id);
        if tables::create_table(&dynamodb, &spec, &name).await? == tables::Outcome::Created {
            created.push(name.clone());
        }
        names.insert(spec.logical_id, name);
    }
    let sqs = aws_sdk_sqs::Client::new(sdk);
    for spec in template.queues(ctx)? {
        queues::create_queue(&sqs, ctx, &spec).await?;
    }
    let env = template.environment(ctx, None)?;
    if let Some(bus) = env.get("EVENT_BUS_NAME") {
        eventbridge::ensure_bus(sdk, bus).await?;
    }
    let redirect_uri = ctx
        .parameters
        .get("OAuthRedirectUri")
        .context("no OAuthRedirectUri")?;
    let client_json = seed::google_client_json(
        &secrets.client_id,
        &secrets.client_secret,
        google,
        &[redirect_uri],
        &[APP_ORIGIN],
    )?;
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    for (variable, value) in [
        ("GOOGLE_CLIENT_SECRET_ID", &client_json),
        ("TOKEN_KEYS_SECRET_ID", &secrets.keyring),
    ] {
        let name = env
            .get(variable)
            .ok_or_else(|| anyhow!("template.yaml sets no {variable}"))?;
        seed::upsert_secret(&client, name, value).await?;
    }
    Ok(Provisioned {
        env,
        tables: names,
        created,
    })
}

/// Starts a function's binary once per variable of `required` (SPEC's required configuration),
/// each time without that variable (and once with a malformed URL), and checks that it stops
/// before serving: exit status 78 and one line on stderr naming the variable. The other
/// variables are the local stack's, from the template. Returns how many starts were checked.
pub fn check_stops_on_bad_configuration(
    binary: &std::path::Path,
    required: &[&str],
) -> Result<usize> {
    let google = Url::parse("http://127.0.0.1:1/")?;
    let app = Url::parse(DEFAULT_RETURN_URL)?;
    let ctx = local_context("calsync-config-", &google, "http://127.0.0.1:1", &app, &app);
    let valid = Template::load_workspace()?.environment(&ctx, None)?;
    let run = |missing: &str, malformed: Option<&str>| -> Result<(Option<i32>, String)> {
        let mut command = std::process::Command::new(binary);
        command
            .env_clear()
            .envs(valid.iter().filter(|(name, _)| *name != missing))
            .env("AWS_REGION", aws::REGION);
        if let Some(value) = malformed {
            command.env(missing, value);
        }
        let output = command
            .output()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok((
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    };
    let mut cases: Vec<(&str, Option<&str>)> = required.iter().map(|name| (*name, None)).collect();
    cases.push(("OAUTH_REDIRECT_URI", Some("not a url")));
    for (variable, malformed) in &cases {
        ensure!(
            valid.contains_key(*variable),
            "template.yaml sets no {variable}"
        );
        let (code, stderr) = run(variable, *malformed)?;
        let lines: Vec<&str> = stderr.lines().collect();
        ensure!(
            code == Some(78) && lines.len() == 1 && lines[0].contains(variable),
            "{} with {variable} missing or malformed: exit {code:?}, stderr {stderr:?}",
            binary.display()
        );
    }
    Ok(cases.len())
}

/// [`check_stops_on_bad_configuration`] as a function's test: panics with the failed start, and
/// unless every variable of `required` and the malformed URL were each checked.
pub fn assert_stops_on_bad_configuration(binary: &str, required: &[&str]) {
    let checked = check_stops_on_bad_configuration(Path::new(binary), required)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(checked, required.len() + 1, "starts checked of {binary}");
}
