//! Shared helpers for the emulator's HTTP tests: a started emulator with one registered client,
//! and small wrappers for the consent, token and Calendar calls.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use google_emulator::{Emulator, Options, Running};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
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

pub struct Harness {
    pub emu: Running,
    pub http: reqwest::Client,
}

pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub body: Value,
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Harness {
    pub async fn start() -> Harness {
        let emu = Emulator::start(Options::default())
            .await
            .expect("emulator starts");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let harness = Harness { emu, http };
        let (status, _) = harness
            .control_post(
                "clients",
                json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [REDIRECT_URI]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        harness
    }

    pub fn url(&self, path: &str) -> Url {
        self.emu.base_url.join(path).unwrap()
    }

    pub async fn control_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(&format!("__emulator/{path}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn control_get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.url(&format!("__emulator/{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
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

    pub async fn consent(
        &self,
        authorization_url: &str,
        account: &str,
        decision: &str,
        remove_scopes: &[&str],
    ) -> (StatusCode, Value) {
        self.control_post(
            "consent",
            json!({"authorization_url": authorization_url, "account": account,
                   "decision": decision, "remove_scopes": remove_scopes}),
        )
        .await
    }

    /// Consents with `allow` and returns the redirect's query parameters.
    pub async fn allow(&self, authorization_url: &str, account: &str) -> Vec<(String, String)> {
        let (status, body) = self.consent(authorization_url, account, "allow", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        redirect_params(&body)
    }

    pub async fn token_form(&self, form: &[(&str, &str)], basic: bool) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url("token"));
        let mut form: Vec<(&str, &str)> = form.to_vec();
        if basic {
            request = request.basic_auth(CLIENT_ID, Some(CLIENT_SECRET));
        } else {
            form.push(("client_id", CLIENT_ID));
            form.push(("client_secret", CLIENT_SECRET));
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
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
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
