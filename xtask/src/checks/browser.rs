//! The browser tests: the connect flow through the local HTTP front in headless Chromium, the app
//! on `localhost` and the Google emulator on `127.0.0.1` (two sites, so the `SameSite=Lax` binding
//! cookie is tested as browsers treat a cross-site redirect). Each scenario returns one line.

use anyhow::{Result, ensure};
use url::Url;

use crate::chromium::Browser;

/// Signs `user` in through the local login and clicks "Connect Google Calendar"; returns the
/// consent page's URL.
async fn sign_in_and_connect(browser: &Browser, front: &Url, user: &str) -> Result<Url> {
    let mut login = front.join("__local/login")?;
    login.query_pairs_mut().append_pair("user", user);
    let home = browser.goto(&login).await?;
    ensure!(home.host_str() == front.host_str(), "login ended on {home}");
    let consent = browser.click("#connect").await?;
    ensure!(
        consent.host_str() == Some("127.0.0.1") && consent.path() == "/o/oauth2/v2/auth",
        "Connect should land on the emulator's consent page, got {consent}"
    );
    Ok(consent)
}

/// Allow on the consent page: the browser comes back with `calsync=connected`, and the status
/// route (same signed-in browser) says active.
pub async fn connect_allowed(front: &Url, user: &str) -> Result<String> {
    let browser = Browser::start().await?;
    let result = async {
        sign_in_and_connect(&browser, front, user).await?;
        browser
            .choose(r#"input[name="account"][value="bob@example.com"]"#)
            .await?;
        let back = browser.click(r#"button[value="allow"]"#).await?;
        ensure!(
            back.host_str() == front.host_str(),
            "after consent the browser is on {back}"
        );
        let outcome = browser.text("#calsync").await?;
        ensure!(
            outcome == "connected",
            "the app page shows calsync={outcome} ({back})"
        );
        browser.goto(&front.join("oauth/google/status")?).await?;
        let status = browser.text("body").await?;
        ensure!(
            status.contains(r#""status":"active""#) && status.contains("bob@example.com"),
            "status after connect: {status}"
        );
        Ok(format!(
            "{user} connected as bob@example.com; status active"
        ))
    }
    .await;
    browser.close().await?;
    result
}

/// Cancel on the consent page: the browser comes back with `calsync=denied`, nothing stored.
pub async fn consent_denied(front: &Url, user: &str) -> Result<String> {
    let browser = Browser::start().await?;
    let result = async {
        sign_in_and_connect(&browser, front, user).await?;
        browser.click(r#"button[value="deny"]"#).await?;
        let outcome = browser.text("#calsync").await?;
        ensure!(outcome == "denied", "the app page shows calsync={outcome}");
        browser.goto(&front.join("oauth/google/status")?).await?;
        let status = browser.text("body").await?;
        ensure!(
            status.contains(r#""status":"not_connected""#),
            "status after a denied consent: {status}"
        );
        Ok(format!("{user} denied; status not_connected"))
    }
    .await;
    browser.close().await?;
    result
}

/// Both scenarios against the stack whose front is `front`, each with a user of its own.
pub async fn run_all(front: &Url) -> Result<Vec<String>> {
    let run = chrono::Utc::now().timestamp_millis();
    Ok(vec![
        connect_allowed(front, &format!("browser-allow-{run}")).await?,
        consent_denied(front, &format!("browser-deny-{run}")).await?,
    ])
}
