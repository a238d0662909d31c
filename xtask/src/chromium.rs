//! A real browser for the tests: headless Chromium driven through chromedriver (WebDriver).
//!
//! Uses a Chrome and chromedriver already installed, else installs Debian's `chromium` and
//! `chromium-driver` with apt; starts chromedriver on a free loopback port, and opens a session with the flags this machine needs (no sandbox as root,
//! no background networking: the network is closed) and a fresh profile, so no cookie survives
//! from one test to the next. Third-party cookies are blocked (the profile preference behind
//! Chrome's "Block third-party cookies" setting), as more and more browsers do by default.

use std::{
    future::Future,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use url::Url;

use crate::apt;

/// A Chrome or Chromium to use instead of the one found on PATH.
pub const CHROME_VARIABLE: &str = "CALSYNC_CHROME";
/// A chromedriver matching it, likewise.
pub const CHROMEDRIVER_VARIABLE: &str = "CALSYNC_CHROMEDRIVER";

/// The browser and its driver: named by [`CHROME_VARIABLE`] and [`CHROMEDRIVER_VARIABLE`], else
/// found on PATH (Debian's `chromium`, a CI runner's `google-chrome`, `$CHROMEWEBDRIVER`), else
/// Debian's `chromium` and `chromium-driver` installed with apt-get.
pub fn find_or_install() -> Result<(PathBuf, PathBuf)> {
    if let Some(found) = find() {
        return Ok(found);
    }
    apt::install(
        &["chromium", "chromium-driver"],
        "the browser tests",
        "--no-browser",
    )?;
    find().context(
        "chromium and chromium-driver were installed but no chromium and chromedriver are on PATH",
    )
}

fn find() -> Option<(PathBuf, PathBuf)> {
    let named = |variable: &str| std::env::var_os(variable).map(PathBuf::from);
    let chrome = named(CHROME_VARIABLE).or_else(|| {
        [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ]
        .into_iter()
        .find_map(apt::which)
    })?;
    let driver = named(CHROMEDRIVER_VARIABLE)
        .or_else(|| apt::which("chromedriver"))
        .or_else(|| {
            // GitHub's runners put it here, off PATH.
            named("CHROMEWEBDRIVER")
                .map(|dir| dir.join("chromedriver"))
                .filter(|p| p.is_file())
        })?;
    Some((chrome, driver))
}

/// A running chromedriver and one browser session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    pub async fn start() -> Result<Self> {
        let (chrome, chromedriver) = find_or_install()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(&chromedriver)
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
                "binary": chrome,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {"profile.block_third_party_cookies": true, "profile.cookie_controls_mode": 1}
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
    /// The element `css` selects, waiting up to 10 s for it to appear.
    async fn find(&self, css: &str) -> Result<fantoccini::elements::Element> {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))
    }

    pub async fn choose(&self, css: &str) -> Result<()> {
        Ok(self.find(css).await?.click().await?)
    }

    /// Clicks the element matching the CSS selector and returns the URL of the page the click
    /// leads to.
    pub async fn click(&self, css: &str) -> Result<Url> {
        let element = self.find(css).await?;
        self.navigating(css, async { Ok(element.click().await?) })
            .await
    }

    /// Runs `script` in the page (which starts a navigation) and returns where it leads.
    pub async fn run_navigating(&self, script: &str, args: Vec<serde_json::Value>) -> Result<Url> {
        self.navigating(script, async {
            self.client.execute(script, args).await?;
            Ok(())
        })
        .await
    }

    /// Clicks a button whose script answers into `output` (an element counting its answers in
    /// `data-calls`) and returns that answer, waiting for the count to move on.
    pub async fn click_for_answer(&self, button: &str, output: &str) -> Result<String> {
        let calls: u64 = self
            .find(output)
            .await?
            .attr("data-calls")
            .await?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        self.find(button).await?.click().await?;
        self.text(&format!(r#"{output}[data-calls="{}"]"#, calls + 1))
            .await
    }

    /// Does `action`, which starts a navigation, and waits (bounded) until the browser has left
    /// the current page and the next one has loaded.
    async fn navigating(
        &self,
        what: &str,
        action: impl Future<Output = Result<()>>,
    ) -> Result<Url> {
        let before = self.client.current_url().await?;
        action.await?;
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
        bail!("{what} on {before} led nowhere within 10 s")
    }

    pub async fn text(&self, css: &str) -> Result<String> {
        Ok(self.find(css).await?.text().await?)
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
