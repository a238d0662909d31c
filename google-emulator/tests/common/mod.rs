//! Shared helpers for the emulator's HTTP tests: a started emulator with one registered client,
//! and small wrappers for the consent, token, revoke and Calendar calls. The control API is
//! reached through testkit's client, the one calsync's tests and the demo use.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use google_emulator::{Emulator, Options, Running};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use testkit::emulator_control::EmulatorControl;
use url::Url;

pub const CLIENT_ID: &str = "123-test.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-test-secret";
pub const REDIRECT_URI: &str = "https://app.example.test/oauth/google/callback";
pub const CALENDAR_SCOPE: &str = "https://www.googleapis.com/auth/calendar.events.owned";
pub const DEFAULT_SCOPES: &str =
    "openid email https://www.googleapis.com/auth/calendar.events.owned";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-test-verifier";
pub const ALICE: &str = "alice@example.com";
pub const BOB: &str = "bob@example.com";

/// An in-process emulator with the test client registered; its calls are [`Google`]'s.
pub struct Harness {
    pub emu: Running,
    pub google: Google,
}

impl std::ops::Deref for Harness {
    type Target = Google;

    fn deref(&self) -> &Google {
        &self.google
    }
}

impl Harness {
    pub async fn start() -> Harness {
        let emu = Emulator::start(Options::default())
            .await
            .expect("emulator starts");
        let google = Google::at(emu.base_url.clone());
        let (status, _) = google
            .control_post(
                "clients",
                json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [REDIRECT_URI]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        Harness { emu, google }
    }
}

/// The emulator at a base URL as a client (and the test's control hand) sees it.
pub struct Google {
    pub base_url: Url,
    /// Follows no redirect, as calsync's OAuth client.
    pub http: reqwest::Client,
    pub control: EmulatorControl,
}

pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub body: Value,
}

/// Which client credentials a token request carries, and how.
pub enum ClientAuth<'a> {
    /// HTTP Basic, as calsync sends them.
    Basic(&'a str, &'a str),
    /// `client_id` and `client_secret` in the form.
    Form(&'a str, &'a str),
    None,
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Google {
    pub fn at(base_url: Url) -> Google {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Google {
            control: EmulatorControl::new(base_url.clone()),
            base_url,
            http,
        }
    }

    pub fn url(&self, path: &str) -> Url {
        self.base_url.join(path).unwrap()
    }

    pub async fn control_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.control.control_post(path, &body).await.unwrap()
    }

    /// A control call that must succeed (a fault queued, the clock moved, a setting changed).
    pub async fn control_ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.control_post(path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        answer
    }

    pub async fn control_get(&self, path: &str) -> Value {
        self.control.control_get(path).await.unwrap()
    }

    pub async fn advance_clock(&self, seconds: i64) {
        self.control_ok("clock", json!({"advance_seconds": seconds}))
            .await;
    }

    /// The emulator's clock.
    pub async fn now(&self) -> DateTime<Utc> {
        self.control_get("clock").await["now"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Every event of `email`'s primary calendar, cancelled ones included.
    pub async fn stored(&self, email: &str) -> Vec<Value> {
        self.control
            .calendar_events(email, "primary")
            .await
            .unwrap()
    }

    /// An authorization URL like calsync's start route builds, with `overrides` replacing or
    /// (with an empty value) removing parameters.
    pub fn auth_url(&self, overrides: &[(&str, &str)]) -> String {
        let challenge = challenge(VERIFIER);
        let mut params: Vec<(String, String)> = [
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("scope", DEFAULT_SCOPES),
            ("access_type", "offline"),
            ("prompt", "consent"),
            ("include_granted_scopes", "true"),
            ("state", "state-123"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (key, value) in overrides {
            params.retain(|(k, _)| k != key);
            if !value.is_empty() {
                params.push((key.to_string(), value.to_string()));
            }
        }
        let mut url = self.url("o/oauth2/v2/auth");
        url.query_pairs_mut().extend_pairs(params);
        url.to_string()
    }

    /// `account`'s `decision` on the consent page of `authorization_url`, every scope ticked.
    pub async fn consent(&self, url: &str, account: &str, decision: &str) -> (StatusCode, Value) {
        let answer = self.control.consent_answer(url, account, decision, &[]);
        answer.await.unwrap()
    }

    /// Consents with `allow` and returns the redirect's query parameters.
    pub async fn allow(&self, authorization_url: &str, account: &str) -> Vec<(String, String)> {
        let (status, body) = self.consent(authorization_url, account, "allow").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        redirect_params(&body)
    }

    /// The authorization code of `account`'s consent to the default request.
    pub async fn code(&self, account: &str) -> String {
        let params = self.allow(&self.auth_url(&[]), account).await;
        param(&params, "code").expect("a code")
    }

    /// A token request with `form` and the test client's credentials (Basic or in the form).
    pub async fn token_form(&self, form: &[(&str, &str)], basic: bool) -> (StatusCode, Value) {
        let auth = if basic {
            ClientAuth::Basic(CLIENT_ID, CLIENT_SECRET)
        } else {
            ClientAuth::Form(CLIENT_ID, CLIENT_SECRET)
        };
        self.token_as(form, auth).await
    }

    pub async fn token_as(
        &self,
        form: &[(&str, &str)],
        auth: ClientAuth<'_>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url("token"));
        let mut form: Vec<(&str, &str)> = form.to_vec();
        match auth {
            ClientAuth::Basic(id, secret) => request = request.basic_auth(id, Some(secret)),
            ClientAuth::Form(id, secret) => {
                form.push(("client_id", id));
                form.push(("client_secret", secret));
            }
            ClientAuth::None => {}
        }
        let response = request.form(&form).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn exchange(&self, code: &str, verifier: &str) -> (StatusCode, Value) {
        self.token_form(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", verifier),
            ],
            true,
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        self.token_form(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
            true,
        )
        .await
    }

    /// `POST revoke` with the token in the form body; Google's answer (`null` when empty).
    pub async fn revoke(&self, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("revoke"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Runs the whole connect flow for an account with the default scopes.
    pub async fn connect(&self, account: &str) -> Tokens {
        self.connect_with(&self.auth_url(&[]), account).await
    }

    pub async fn connect_with(&self, authorization_url: &str, account: &str) -> Tokens {
        let params = self.allow(authorization_url, account).await;
        let code = param(&params, "code").expect("a code");
        let (status, body) = self.exchange(&code, VERIFIER).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Tokens {
            access_token: body["access_token"].as_str().unwrap().to_owned(),
            refresh_token: body["refresh_token"].as_str().map(str::to_owned),
            body,
        }
    }

    pub async fn calendar(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self
            .http
            .request(method, self.url(&format!("calendar/v3/{path}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, headers, value)
    }

    /// A call on the event `id` of the primary calendar with `token`.
    pub async fn event_call(
        &self,
        method: Method,
        token: &str,
        id: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let path = format!("calendars/primary/events/{id}");
        self.calendar(method, &path, Some(token), body).await
    }

    pub async fn insert(&self, token: &str, event: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .calendar(
                Method::POST,
                "calendars/primary/events",
                Some(token),
                Some(event),
            )
            .await;
        (status, body)
    }

    /// Inserting `timed_event(id)` into the primary calendar with `token` answers `status`.
    pub async fn assert_insert(&self, token: &str, id: &str, status: StatusCode) {
        let (answered, body) = self.insert(token, timed_event(id)).await;
        assert_eq!(answered, status, "{id}: {body}");
    }

    pub async fn stats(&self) -> Value {
        self.control_get("stats").await
    }
}

pub fn redirect_params(body: &Value) -> Vec<(String, String)> {
    let redirect = Url::parse(body["redirect"].as_str().expect("a redirect")).unwrap();
    redirect.query_pairs().into_owned().collect()
}

pub fn param(params: &[(String, String)], key: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// An OAuth error answer: `status` and `{"error": error, ...}`.
pub fn assert_oauth_error(answer: &(StatusCode, Value), status: StatusCode, error: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], error, "{}", answer.1);
}

/// An OAuth error answer whose body is exactly Google's `{"error", "error_description"}`.
pub fn assert_oauth_body(
    answer: &(StatusCode, Value),
    status: StatusCode,
    error: &str,
    description: &str,
) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let expected = json!({"error": error, "error_description": description});
    assert_eq!(answer.1, expected);
}

/// A valid timed event with a client-chosen id.
pub fn timed_event(id: &str) -> Value {
    json!({
        "id": id,
        "summary": "Standup",
        "description": "Daily",
        "location": "Room 1",
        "start": {"dateTime": "2026-12-01T09:00:00+01:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-12-01T09:15:00+01:00", "timeZone": "Europe/Berlin"},
        "extendedProperties": {"private": {"calsync_event_id": "evt-1"}},
    })
}

/// The Google error fields: (code, reason, message).
pub fn google_error(body: &Value) -> (u64, String, String) {
    (
        body["error"]["code"].as_u64().unwrap_or(0),
        body["error"]["errors"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        body["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}
