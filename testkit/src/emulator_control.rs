//! The Google emulator's control API (`/__emulator/...`): answer the consent page as an account,
//! read calendars and counters, expire or revoke tokens. Tests reach it through
//! [`crate::TestStack`]; the demo, on a stack of its own, directly.

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use url::Url;

#[derive(Debug, Clone)]
pub struct EmulatorControl {
    /// The emulator's base URL, e.g. `http://127.0.0.1:PORT/`.
    pub base_url: Url,
    http: reqwest::Client,
}

impl EmulatorControl {
    pub fn new(base_url: Url) -> Self {
        Self {
            base_url,
            http: reqwest::Client::new(),
        }
    }

    /// A URL of the control API: `control("stats")` is `{base}__emulator/stats`.
    pub fn control(&self, path: &str) -> Url {
        self.base_url
            .join("__emulator/")
            .and_then(|base| base.join(path.trim_start_matches('/')))
            .expect("a relative path joins onto the emulator's URL")
    }

    /// A control call with a JSON body; its status and JSON answer (`null` when there is none).
    pub async fn control_post(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(reqwest::StatusCode, Value)> {
        let response = self.http.post(self.control(path)).json(body).send().await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// A control read, such as `stats` or `issued-secrets`.
    pub async fn control_get(&self, path: &str) -> Result<Value> {
        let response = self.http.get(self.control(path)).send().await?;
        ensure!(
            response.status().is_success(),
            "emulator {path}: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Google's consent page answered by `account` with `decision` (`allow` or `deny`), optional
    /// scopes unticked; the URL Google sends the browser back to.
    pub async fn consent(
        &self,
        authorization_url: &str,
        account: &str,
        decision: &str,
        remove_scopes: &[&str],
    ) -> Result<Url> {
        let (status, body) = self
            .consent_answer(authorization_url, account, decision, remove_scopes)
            .await?;
        ensure!(status.is_success(), "emulator consent: {status} {body}");
        let redirect = body["redirect"]
            .as_str()
            .context("consent gave no redirect")?;
        Ok(Url::parse(redirect)?)
    }

    /// [`EmulatorControl::consent`]'s call as the emulator answered it, refusals included.
    pub async fn consent_answer(
        &self,
        authorization_url: &str,
        account: &str,
        decision: &str,
        remove_scopes: &[&str],
    ) -> Result<(reqwest::StatusCode, Value)> {
        self.control_post(
            "consent",
            &json!({"authorization_url": authorization_url, "account": account,
                    "decision": decision, "remove_scopes": remove_scopes}),
        )
        .await
    }

    /// Every event of `email`'s calendar `calendar_id`, cancelled ones included.
    pub async fn calendar_events(&self, email: &str, calendar_id: &str) -> Result<Vec<Value>> {
        let mut answer = self
            .control_get(&format!("calendars/{email}/{calendar_id}/events"))
            .await?;
        match answer["items"].take() {
            Value::Array(items) => Ok(items),
            other => anyhow::bail!("the emulator listed {email}'s {calendar_id} as {other}"),
        }
    }

    /// `email`'s calendars, each `{"id", "summary", "created_by"}` (the primary one's id is the
    /// email).
    pub async fn calendars(&self, email: &str) -> Result<Vec<Value>> {
        let mut answer = self.control_get(&format!("calendars/{email}")).await?;
        match answer["items"].take() {
            Value::Array(items) => Ok(items),
            other => anyhow::bail!("the emulator listed {email}'s calendars as {other}"),
        }
    }

    /// `email` deletes their calendar `calendar_id` in Google's own interface.
    pub async fn delete_calendar(&self, email: &str, calendar_id: &str) -> Result<()> {
        let url = self.control(&format!("calendars/{email}/{calendar_id}"));
        let response = self.http.delete(url).send().await?;
        ensure!(
            response.status().is_success(),
            "emulator delete calendar {calendar_id}: {}",
            response.status()
        );
        Ok(())
    }
}
