//! A real browser for the tests: Debian's headless Chromium driven through chromedriver (WebDriver).
//!
//! Installs `chromium` and `chromium-driver` with apt when they are missing, starts chromedriver on
//! a free loopback port, and opens a session with the flags this machine needs (no sandbox as root,
//! no background networking: the network is closed) and a fresh profile, so no cookie survives
//! from one test to the next.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use url::Url;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs Chromium and its driver from Debian's packages when they are missing.
pub fn ensure_installed() -> Result<()> {
    if std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists() {
        return Ok(());
    }
    eprintln!("installing chromium and chromium-driver (Debian packages)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "chromium", "chromium-driver"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
        let retry = Command::new("apt-get")
            .args(["install", "-y", "-qq", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !update.success() || !retry.success() {
            bail!("could not install chromium and chromium-driver with apt-get");
        }
    }
    Ok(())
}

/// A running chromedriver and one browser session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    pub async fn start() -> Result<Self> {
        ensure_installed()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let profile =
            std::env::temp_dir().join(format!("calsync-chromium-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&profile)?;
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let caps = caps.as_object().cloned().unwrap_or_default();
        let webdriver = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen; connect until it does (bounded).
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_connector())
                .capabilities(caps.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => {
                    return Ok(Self {
                        client,
                        driver,
                        profile,
                    });
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("chromedriver did not accept a session: {last:?}")
    }

    /// Loads `url` and returns where the browser ended up after every redirect.
    pub async fn goto(&self, url: &Url) -> Result<Url> {
        self.client.goto(url.as_str()).await?;
        Ok(self.client.current_url().await?)
    }

    /// Clicks a control that stays on the page (a radio button, a checkbox).
    pub async fn choose(&self, css: &str) -> Result<()> {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))?
            .click()
            .await?;
        Ok(())
    }

    /// Clicks the element matching the CSS selector and returns the URL of the page the click
    /// leads to. A click only starts the navigation, so this waits (bounded) until the browser
    /// has left the current page and the next one has loaded.
    pub async fn click(&self, css: &str) -> Result<Url> {
        let element = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))?;
        let before = self.client.current_url().await?;
        element.click().await?;
        for _ in 0..200 {
            let now = self.client.current_url().await?;
            let loaded = self
                .client
                .execute("return document.readyState", vec![])
                .await?;
            if now != before && loaded == "complete" {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("clicking {css} on {before} led nowhere within 10 s")
    }

    pub async fn text(&self, css: &str) -> Result<String> {
        Ok(self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await?
            .text()
            .await?)
    }

    pub async fn close(mut self) -> Result<()> {
        let result = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
        result.map_err(Into::into)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

fn hyper_connector() -> hyper_util::client::legacy::connect::HttpConnector {
    hyper_util::client::legacy::connect::HttpConnector::new()
}

// The scenarios live with the other checks; ci.rs still reaches them here.
pub use crate::checks::browser as scenarios;
