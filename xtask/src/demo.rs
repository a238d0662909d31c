//! The demo: the whole calsync story on the local stack, told in a few lines with timings.
//!
//! It drives the stack only from the outside, as a user and the app would: the browser side goes
//! the way the app's page does (sign in to the app, a connect link minted with the JWT, the form
//! POST from the app's origin, the emulator's consent, the callback), the app side
//! writes rows to the Events table, and the emulator's read-back shows what reached the calendar.
//! Each step checks what it claims; the demo exits non-zero when any step does not hold.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_dynamodb::types::AttributeValue;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use url::Url;

use testkit::api_gateway::cookie_pair;
use testkit::emulator_control::EmulatorControl;
use testkit::eventbridge::EventTap;
use testkit::rows;

/// How many steps the story has; the demo passes only when all of them held.
pub const STEPS: usize = 7;

/// What the demo needs to know about a running stack.
pub struct DemoStack {
    /// The local HTTP front (the API), e.g. `http://localhost:PORT/`.
    pub front: Url,
    /// The app stand-in on another site, e.g. `http://127.0.0.1:PORT/`.
    pub app: Url,
    pub google: EmulatorControl,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub events_table: String,
    pub flows_table: String,
    /// The app's view of calsync's lifecycle events: a rule on the stack's bus into a queue.
    pub lifecycle: EventTap,
}

/// A browser-like client: no redirects followed, cookies kept by hand per host, and the app
/// page's script memory (the JWT it fetched from the app).
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, HashMap<String, String>>,
    jwt: Option<String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

/// Status, `Location` (resolved) and body of an answer.
pub type Answer = (StatusCode, Option<Url>, String);

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
            cookies: HashMap::new(),
            jwt: None,
        }
    }

    /// Sends a request with this browser's cookies for the URL's host, storing the ones it sets.
    pub async fn send(&mut self, request: reqwest::RequestBuilder, url: &Url) -> Result<Answer> {
        let host = url.host_str().unwrap_or_default().to_string();
        let jar = self.cookies.entry(host).or_default();
        let mut request = request;
        if !jar.is_empty() {
            let cookie: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header(header::COOKIE, cookie.join("; "));
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("request to {}", url.path()))?;
        for set in response.headers().get_all(header::SET_COOKIE) {
            let Some((name, value)) = set.to_str().ok().and_then(cookie_pair) else {
                continue;
            };
            let expired = set.to_str()?.to_ascii_lowercase().contains("max-age=0");
            if expired || value.is_empty() {
                jar.remove(name);
            } else {
                jar.insert(name.to_string(), value.to_string());
            }
        }
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| url.join(l))
            .transpose()?;
        Ok((status, location, response.text().await?))
    }

    pub async fn get(&mut self, url: &Url) -> Result<Answer> {
        let request = self.http.get(url.clone());
        self.send(request, url).await
    }

    /// What the app page's script does to call calsync: `Authorization: Bearer` with the JWT it
    /// holds, from the app's origin.
    pub async fn call_api(
        &mut self,
        method: reqwest::Method,
        url: &Url,
        app: &Url,
        body: Option<Value>,
    ) -> Result<Answer> {
        let jwt = self
            .jwt
            .clone()
            .context("the page holds no JWT: sign in first")?;
        let mut request = self
            .http
            .request(method, url.clone())
            .bearer_auth(jwt)
            .header(header::ORIGIN, app.origin().ascii_serialization());
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request, url).await
    }

    /// Signs `user` in to the app and fetches the JWT the page keeps in memory.
    pub async fn sign_in(&mut self, app: &Url, user: &str) -> Result<()> {
        let mut login = app.join("login")?;
        login.query_pairs_mut().append_pair("user", user);
        self.get(&login).await?;
        let url = app.join("token")?;
        let request = self.http.post(url.clone());
        let (status, _, body) = self.send(request, &url).await?;
        ensure!(
            status == StatusCode::OK,
            "the app's token endpoint answered {status}"
        );
        let token: Value = serde_json::from_str(&body)?;
        self.jwt = token["token"].as_str().map(str::to_string);
        Ok(())
    }
}

/// One step's outcome line.
pub struct Step {
    pub title: String,
    pub took: Duration,
    pub ok: bool,
    pub detail: String,
}

/// Polls `check` until it returns `Some`, or fails after `timeout`. The stack is asynchronous
/// (a stream poller sits between a row write and the calendar), so steps wait for the effect.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let mut last_error = None;
    while started.elapsed() < timeout {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match last_error {
        Some(e) => Err(e.context(format!("timed out waiting for {what}"))),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

impl DemoStack {
    /// The demo's view of a stack `cargo xtask stack up` started.
    pub async fn from_state(state: &crate::local_aws::stack::State) -> Result<Self> {
        let sdk = testkit::aws::local_sdk_config(&state.aws_endpoint).await;
        let bus = state
            .env
            .get("EVENT_BUS_NAME")
            .context("the stack has no EVENT_BUS_NAME")?;
        let lifecycle = EventTap::start(&sdk, bus, "calsync", "calsync-demo-lifecycle").await?;
        // Only this run's events count.
        lifecycle.drain().await?;
        Ok(Self {
            lifecycle,
            front: state.front_url.parse()?,
            app: state.app_url.parse()?,
            google: EmulatorControl::new(state.google_url.parse()?),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            events_table: state
                .env
                .get("EVENTS_TABLE")
                .context("the stack has no EVENTS_TABLE")?
                .clone(),
            flows_table: state
                .env
                .get("OAUTH_FLOWS_TABLE")
                .context("the stack has no OAUTH_FLOWS_TABLE")?
                .clone(),
        })
    }

    /// Runs the story, printing one line per step; fails unless every step held.
    pub async fn run_and_print(&self) -> Result<usize> {
        let steps = self
            .run(|step| {
                let mark = if step.ok { "ok " } else { "FAIL" };
                println!(
                    "  [{mark}] {:<58} {:>5.1}s  {}",
                    step.title,
                    step.took.as_secs_f64(),
                    step.detail
                );
            })
            .await?;
        let held = steps.iter().filter(|s| s.ok).count();
        ensure!(held == STEPS, "the story held {held} of {STEPS} steps");
        Ok(held)
    }

    /// A control call that must succeed.
    async fn control_post(&self, path: &str, body: Value) -> Result<()> {
        let (status, answer) = self.google.control_post(path, &body).await?;
        ensure!(status.is_success(), "emulator {path}: {status} {answer}");
        Ok(())
    }

    /// The events in `email`'s primary calendar that are not cancelled, by summary.
    pub async fn calendar(&self, email: &str) -> Result<Vec<Value>> {
        let all = self
            .google
            .control_get(&format!("calendars/{email}/primary/events"))
            .await?;
        Ok(all["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["status"] != "cancelled")
            .collect())
    }

    /// Signs `user` in to the app and mints a connect link with the JWT, as the app page does;
    /// returns the URL to submit it to and the link.
    pub async fn mint_link(&self, browser: &mut Browser, user: &str) -> Result<(Url, String)> {
        browser.sign_in(&self.app, user).await?;
        let links = self.front.join("oauth/google/connect-links")?;
        let body = json!({ "return_to": self.app.as_str() });
        let (status, _, answer) = browser
            .call_api(reqwest::Method::POST, &links, &self.app, Some(body))
            .await?;
        ensure!(
            status == StatusCode::CREATED,
            "connect-links answered {status}: {answer}"
        );
        let answer: Value = serde_json::from_str(&answer)?;
        let connect = Url::parse(answer["connect_url"].as_str().context("no connect_url")?)?;
        let link = answer["link"].as_str().context("no link")?.to_string();
        Ok((connect, link))
    }

    /// The browser side of a connect, as the app page does it: sign in to the app, mint a
    /// connect link with the JWT, submit it from the app's origin, consent as `account`, callback.
    /// Returns the URL calsync sends the browser back to.
    pub async fn connect(&self, browser: &mut Browser, user: &str, account: &str) -> Result<Url> {
        let (connect, link) = self.mint_link(browser, user).await?;
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("link", &link)
            .finish();
        let form = browser
            .http
            .post(connect.clone())
            .header(header::ORIGIN, self.app.origin().ascii_serialization())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form);
        let (status, location, body) = browser.send(form, &connect).await?;
        ensure!(
            status == StatusCode::SEE_OTHER,
            "connect answered {status}: {body}"
        );
        let authorization_url = location.context("connect gave no Location")?;
        let callback = self
            .google
            .consent(authorization_url.as_str(), account, "allow", &[])
            .await?;
        let (status, location, body) = browser.get(&callback).await?;
        ensure!(
            status == StatusCode::FOUND,
            "callback answered {status}: {body}"
        );
        let back = location.context("callback gave no Location")?;
        ensure!(
            back.origin() == self.app.origin(),
            "callback sent the browser to {back}"
        );
        Ok(back)
    }

    pub async fn status(&self, browser: &mut Browser) -> Result<Value> {
        let url = self.front.join("oauth/google/status")?;
        let (status, _, body) = browser
            .call_api(reqwest::Method::GET, &url, &self.app, None)
            .await?;
        ensure!(status == StatusCode::OK, "status answered {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    pub async fn put_event(&self, event_id: &str, user: &str, title: &str, day: u32) -> Result<()> {
        let at = |hour: u32| rows::text(&format!("2026-12-{day:02}T{hour:02}:00:00+01:00"));
        let mut row = rows::event_row(event_id, user, title);
        row.insert("start".into(), at(9));
        row.insert("end".into(), at(10));
        row.insert("time_zone".into(), rows::text("Europe/Berlin"));
        rows::put(&self.dynamodb, &self.events_table, row).await
    }

    pub async fn delete_event(&self, event_id: &str) -> Result<()> {
        self.dynamodb
            .delete_item()
            .table_name(&self.events_table)
            .key("event_id", AttributeValue::S(event_id.into()))
            .send()
            .await
            .context("deleting an Events row")?;
        Ok(())
    }

    /// Waits until the calendar's events of this run (by the `calsync_event_id` calsync stamps on
    /// each) carry exactly the titles `want`; other events in the calendar are not the demo's.
    async fn wait_for_titles(&self, email: &str, run: &str, want: &[&str]) -> Result<Vec<String>> {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        eventually(
            Duration::from_secs(60),
            &format!("calendar to hold {want:?}"),
            || async {
                let mut titles: Vec<String> = self
                    .calendar(email)
                    .await?
                    .iter()
                    .filter(|e| {
                        e["extendedProperties"]["private"]["calsync_event_id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with(run))
                    })
                    .filter_map(|e| e["summary"].as_str().map(str::to_string))
                    .collect();
                titles.sort();
                Ok((titles == want).then_some(titles))
            },
        )
        .await
    }

    async fn refreshes(&self) -> Result<u64> {
        Ok(
            self.google.control_get("stats").await?["token"]["refresh_token"]
                .as_u64()
                .unwrap_or(0),
        )
    }

    /// Runs the story; every step is checked. Returns the steps for the summary.
    pub async fn run(&self, mut report: impl FnMut(&Step)) -> Result<Vec<Step>> {
        let user = "user-alice";
        let email = "alice@example.com";
        let mut browser = Browser::new();
        let mut steps = Vec::new();
        let run = format!("demo-{}-", chrono::Utc::now().timestamp_millis());
        let run = run.as_str();
        let ids: Vec<String> = (1..=3).map(|i| format!("{run}{i}")).collect();

        macro_rules! step {
            ($title:expr, $body:expr) => {{
                let started = Instant::now();
                let result: Result<String> = $body.await;
                let step = Step {
                    title: $title.to_string(),
                    took: started.elapsed(),
                    ok: result.is_ok(),
                    detail: match &result {
                        Ok(d) => d.clone(),
                        Err(e) => format!("{e:#}"),
                    },
                };
                report(&step);
                let failed = !step.ok;
                steps.push(step);
                if failed {
                    return Ok(steps);
                }
            }};
        }

        step!("connect Google Calendar through the consent page", async {
            let back = self.connect(&mut browser, user, email).await?;
            let outcome = back
                .query_pairs()
                .find(|(k, _)| k == "calsync")
                .map(|(_, v)| v.into_owned());
            ensure!(
                outcome.as_deref() == Some("connected"),
                "returned to {back}"
            );
            let status = self.status(&mut browser).await?;
            ensure!(status["status"] == "active", "status: {status}");
            Ok(format!("{user} connected as {email}"))
        });

        step!("write three events to the Events table", async {
            for (i, id) in ids.iter().enumerate() {
                self.put_event(id, user, &format!("Demo event {}", i + 1), 1 + i as u32)
                    .await?;
            }
            let titles = self
                .wait_for_titles(
                    email,
                    run,
                    &["Demo event 1", "Demo event 2", "Demo event 3"],
                )
                .await?;
            Ok(format!("calendar holds {}", titles.join(", ")))
        });

        step!("change one, delete one", async {
            self.put_event(&ids[0], user, "Demo event 1 (moved)", 4)
                .await?;
            self.delete_event(&ids[1]).await?;
            self.wait_for_titles(email, run, &["Demo event 1 (moved)", "Demo event 3"])
                .await?;
            Ok("calendar follows the change and the delete".into())
        });

        step!(
            "expire the access token: calsync refreshes on its own",
            async {
                let before = self.refreshes().await?;
                self.control_post("expire-access-tokens", json!({ "email": email }))
                    .await?;
                self.put_event(&ids[2], user, "Demo event 3 (after expiry)", 3)
                    .await?;
                self.wait_for_titles(
                    email,
                    run,
                    &["Demo event 1 (moved)", "Demo event 3 (after expiry)"],
                )
                .await?;
                let after = self.refreshes().await?;
                ensure!(after == before + 1, "refreshes went {before} -> {after}");
                Ok("one refresh, change delivered".into())
            }
        );

        step!(
            "revoke the refresh token: changes park, the app hears why",
            async {
                self.control_post("revoke", json!({ "email": email }))
                    .await?;
                self.put_event(&ids[1], user, "Demo event 2 (while revoked)", 2)
                    .await?;
                self.put_event(&ids[2], user, "Demo event 3 (while revoked)", 3)
                    .await?;
                let status = eventually(Duration::from_secs(60), "parked status", || async {
                    let status = self.status(&mut browser.clone()).await?;
                    Ok((status["status"] == "needs_reauth"
                        && status["parked_changes"].as_u64() >= Some(2))
                    .then_some(status))
                })
                .await?;
                let heard = std::cell::RefCell::new(Vec::new());
                let reauth = eventually(Duration::from_secs(30), "Grant Needs Reauth", || async {
                    let new = self.lifecycle.drain().await?;
                    heard.borrow_mut().extend(new);
                    Ok(heard
                        .borrow()
                        .iter()
                        .find(|e| {
                            e["detail-type"] == "Grant Needs Reauth"
                                && e["detail"]["user_id"] == user
                        })
                        .cloned())
                })
                .await?;
                Ok(format!(
                    "status needs_reauth, {} parked change(s); the app got Grant Needs Reauth ({})",
                    status["parked_changes"], reauth["detail"]["reason"]
                ))
            }
        );

        step!("reconnect: the parked changes arrive", async {
            let back = self.connect(&mut browser, user, email).await?;
            ensure!(
                back.query_pairs()
                    .any(|(k, v)| k == "calsync" && v == "connected"),
                "returned to {back}"
            );
            self.wait_for_titles(
                email,
                run,
                &[
                    "Demo event 1 (moved)",
                    "Demo event 2 (while revoked)",
                    "Demo event 3 (while revoked)",
                ],
            )
            .await?;
            Ok("calendar holds every change made while revoked".into())
        });

        step!(
            "a user whose rows predate the connect: connect, and every row arrives",
            async {
                let (user, email) = ("user-bob", "bob@example.com");
                let titles: Vec<String> = (1..=5).map(|i| format!("Bob's event {i}")).collect();
                for (i, title) in titles.iter().enumerate() {
                    self.put_event(&format!("{run}bob-{i}"), user, title, 10 + i as u32)
                        .await?;
                }
                let mut browser = Browser::new();
                let back = self.connect(&mut browser, user, email).await?;
                ensure!(
                    back.query_pairs()
                        .any(|(k, v)| k == "calsync" && v == "connected"),
                    "returned to {back}"
                );
                let want: Vec<&str> = titles.iter().map(String::as_str).collect();
                self.wait_for_titles(email, &format!("{run}bob-"), &want)
                    .await?;
                Ok(format!(
                    "{email}'s calendar holds all {} rows, queued by the connect and applied by resync",
                    want.len()
                ))
            }
        );

        Ok(steps)
    }
}
