//! The browser tests: the connect flow in headless Chromium, in the deployed shape. The app page
//! is on `http://127.0.0.1:PORT` and calsync's API on `http://localhost:PORT` (two sites), the
//! page holds a JWT in script memory and calls the API with `Authorization: Bearer` through the
//! local API Gateway, which checks it as the JWT authorizer does; third-party cookies are blocked.
//! An "attacker" site of the test's own is on `127.0.0.2`, a third site. Each scenario returns one
//! line; each checks outcomes that a broken handshake would change (the page, the status route,
//! the emulator's counters).

use anyhow::{Context as _, Result, ensure};
use axum::{Router, extract::Query, http::HeaderMap, response::Html, routing::get};
use serde_json::{Value, json};
use url::Url;

use crate::chromium::Browser;
use crate::demo::{Browser as Client, DemoStack};
use crate::local_aws::stack::State;

/// The consent page's path on the emulator.
const CONSENT_PATH: &str = "/o/oauth2/v2/auth";

/// A site of the test's own on `127.0.0.2` (another site than the app's and the API's): `/` an
/// attacker's page whose button submits `link` to `connect`; `/set?name=N` sets cookie `N`
/// (`SameSite=None; Secure`, so only a third-party cookie block keeps it out); `/echo` shows the
/// cookies it receives.
async fn third_site(connect: Url, link: String) -> Result<(Url, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .context("binding a third site on 127.0.0.2")?;
    let base = Url::parse(&format!("http://{}/", listener.local_addr()?))?;
    let page = format!(
        r#"<!doctype html><h1>You won a prize</h1><form method="post" action="{connect}">
<input type="hidden" name="link" value="{link}"><button id="go">Claim</button></form>"#
    );
    let router = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route(
            "/set",
            get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    let name = q.get("name").cloned().unwrap_or_default();
                    (
                        [(
                            "set-cookie",
                            format!("{name}=1; SameSite=None; Secure; Path=/"),
                        )],
                        "set",
                    )
                },
            ),
        )
        .route(
            "/echo",
            get(|headers: HeaderMap| async move {
                let cookies = headers
                    .get("cookie")
                    .and_then(|c| c.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                format!("cookies: [{cookies}]")
            }),
        );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((base, server))
}

/// Runs `scenario` in a fresh browser, closing it whatever the outcome.
async fn in_browser<T, F>(scenario: F) -> Result<T>
where
    F: AsyncFnOnce(&Browser) -> Result<T>,
{
    let browser = Browser::start().await?;
    let result = scenario(&browser).await;
    browser.close().await?;
    result
}

/// Signs `user` in at the app (its own session, first-party) and lands on its page.
async fn sign_in(browser: &Browser, stack: &DemoStack, user: &str) -> Result<()> {
    let mut login = stack.app.join("login")?;
    login.query_pairs_mut().append_pair("user", user);
    let home = browser.goto(&login).await?;
    ensure!(
        home.origin() == stack.app.origin() && browser.text("#user").await? == user,
        "signing in ended on {home}"
    );
    Ok(())
}

/// Clicks Connect on the app page: a connect link fetched with the JWT, then the form POST;
/// the browser must land on the emulator's consent page.
async fn connect(browser: &Browser, stack: &DemoStack, user: &str) -> Result<()> {
    sign_in(browser, stack, user).await?;
    let consent = browser.click("#connect").await?;
    ensure!(
        consent.origin() == stack.google.base_url.origin() && consent.path() == CONSENT_PATH,
        "Connect should land on the emulator's consent page, got {consent}"
    );
    Ok(())
}

/// The connection status as the app page shows it after a click on "Connection status".
async fn page_status(browser: &Browser) -> Result<Value> {
    let answer = browser.click_for_answer("#status", "#result").await?;
    let body = answer
        .strip_prefix("200 ")
        .with_context(|| format!("the status call answered {answer}"))?;
    Ok(serde_json::from_str(body)?)
}

async fn stat(stack: &DemoStack, pointer: &str) -> Result<u64> {
    let stats = stack.google.control_get("stats").await?;
    stats
        .pointer(pointer)
        .and_then(Value::as_u64)
        .with_context(|| format!("no {pointer} in the emulator's stats {stats}"))
}

/// The browser really blocks third-party cookies: a cookie set from a frame of another site is
/// dropped, while the same cookie set on a top-level visit is kept.
async fn third_party_cookies_blocked(stack: &DemoStack) -> Result<String> {
    let (site, server) = third_site(stack.front.clone(), String::new()).await?;
    let outcome = in_browser(async |browser| {
        browser.goto(&stack.app).await?;
        let frame = site.join("set?name=third")?;
        browser
            .client
            .execute_async(
                "const [src, done] = arguments; const f = document.createElement('iframe');
                 f.onload = () => done(true); f.src = src; document.body.append(f);",
                vec![json!(frame.as_str())],
            )
            .await?;
        browser.goto(&site.join("set?name=first")?).await?;
        browser.goto(&site.join("echo")?).await?;
        let echo = browser.text("body").await?;
        ensure!(
            echo.contains("first=1") && !echo.contains("third=1"),
            "third-party cookies are not blocked: {echo}"
        );
        Ok("third-party cookies blocked (a framed site's cookie was dropped)".into())
    })
    .await;
    server.abort();
    outcome
}

/// Allow on the consent page: back on the app with `calsync=connected`; then status (active,
/// bob) and disconnect (204, one revocation at Google, status not_connected) from the page.
async fn connect_allowed_then_disconnect(stack: &DemoStack, user: &str) -> Result<String> {
    in_browser(async |browser| {
        connect(browser, stack, user).await?;
        browser
            .choose(r#"input[name="account"][value="bob@example.com"]"#)
            .await?;
        let back = browser.click(r#"button[value="allow"]"#).await?;
        ensure!(back.origin() == stack.app.origin(), "after consent the browser is on {back}");
        let outcome = browser.text("#calsync").await?;
        ensure!(outcome == "connected", "the app page shows calsync={outcome} ({back})");
        let status = page_status(browser).await?;
        ensure!(
            status["status"] == "active" && status["google_email"] == "bob@example.com",
            "status after connect: {status}"
        );
        let revokes = stat(stack, "/revoke").await?;
        let answer = browser.click_for_answer("#disconnect", "#result").await?;
        ensure!(answer.trim() == "204", "disconnect answered {answer}");
        ensure!(
            stat(stack, "/revoke").await? == revokes + 1,
            "disconnect did not revoke bob's grant at Google"
        );
        let status = page_status(browser).await?;
        ensure!(status["status"] == "not_connected", "status after disconnect: {status}");
        Ok(format!(
            "{user} connected as bob@example.com from the app page; status active; disconnect 204, revoked, status not_connected"
        ))
    })
    .await
}

/// Cancel on the consent page: back with `calsync=denied`; the page's status says not_connected.
async fn consent_denied(stack: &DemoStack, user: &str) -> Result<String> {
    in_browser(async |browser| {
        connect(browser, stack, user).await?;
        browser.click(r#"button[value="deny"]"#).await?;
        let outcome = browser.text("#calsync").await?;
        ensure!(outcome == "denied", "the app page shows calsync={outcome}");
        let status = page_status(browser).await?;
        ensure!(
            status["status"] == "not_connected",
            "status after a denied consent: {status}"
        );
        Ok(format!("{user} denied; status not_connected"))
    })
    .await
}

/// Login CSRF: an attacker mints a link for their own app user and makes a signed-in victim's
/// browser submit it from the attacker's site, or open it as a plain link. Neither reaches
/// Google, and the attacker's user stays unconnected (the grants table, through the status route).
async fn login_csrf_refused(stack: &DemoStack, victim: &str, attacker: &str) -> Result<String> {
    let mut attacker_client = Client::new();
    let (connect_url, link) = stack.mint_link(&mut attacker_client, attacker).await?;
    let (site, server) = third_site(connect_url.clone(), link.clone()).await?;
    let exchanges = stat(stack, "/token/authorization_code").await?;
    let outcome = in_browser(async |browser| {
        sign_in(browser, stack, victim).await?;
        browser.goto(&site).await?;
        let landed = browser.click("#go").await?;
        let page = browser.text("body").await?;
        ensure!(
            landed.origin() == stack.front.origin() && page.contains("origin_not_allowed"),
            "the attacker's form led to {landed}: {page}"
        );
        let mut opened = connect_url.clone();
        opened.query_pairs_mut().append_pair("link", &link);
        let landed = browser.goto(&opened).await?;
        let page = browser.text("body").await?;
        ensure!(
            landed.path() != CONSENT_PATH && page.contains("Not Found"),
            "opening the link as a plain link led to {landed}: {page}"
        );
        Ok(())
    })
    .await;
    server.abort();
    outcome?;
    ensure!(
        stat(stack, "/token/authorization_code").await? == exchanges,
        "a code was exchanged during the attempt"
    );
    for user in [attacker, victim] {
        let mut client = Client::new();
        client.sign_in(&stack.app, user).await?;
        let status = stack.status(&mut client).await?;
        ensure!(
            status["status"] == "not_connected",
            "{user} after the attempt: {status}"
        );
    }
    Ok(format!(
        "an attacker's link submitted from 127.0.0.2 answered origin_not_allowed, as a plain link 404; {attacker} and {victim} not connected"
    ))
}

/// The app page submits a link as its script does after minting it.
const OPEN_LINK: &str = "const [action, link] = arguments; const f = document.createElement('form');
 f.method = 'POST'; f.action = action;
 f.append(Object.assign(document.createElement('input'), {type: 'hidden', name: 'link', value: link}));
 document.body.append(f); f.submit();";

/// From the app page, opens `link`; returns where the browser lands and the page's text.
async fn open_link(
    browser: &Browser,
    stack: &DemoStack,
    connect: &Url,
    link: &str,
) -> Result<(Url, String)> {
    browser.goto(&stack.app).await?;
    let landed = browser
        .run_navigating(OPEN_LINK, vec![json!(connect.as_str()), json!(link)])
        .await?;
    Ok((landed, browser.text("body").await?))
}

/// A link used once reaches Google; the same link again is refused. A link past its expiry
/// (moved into the past in the flows table) is refused.
async fn reused_and_expired_links(stack: &DemoStack, user: &str) -> Result<String> {
    let mut client = Client::new();
    let (connect_url, link) = stack.mint_link(&mut client, user).await?;
    let (_, expired) = stack.mint_link(&mut client, user).await?;
    expire_links(stack, user).await?;
    in_browser(async |browser| {
        sign_in(browser, stack, user).await?;
        // The first link was minted before the expiry was moved, so mint a fresh one to use twice.
        let (_, fresh) = stack.mint_link(&mut client, user).await?;
        let (landed, _) = open_link(browser, stack, &connect_url, &fresh).await?;
        ensure!(landed.path() == CONSENT_PATH, "a fresh link led to {landed}");
        let (landed, page) = open_link(browser, stack, &connect_url, &fresh).await?;
        ensure!(
            landed.path() != CONSENT_PATH && page.contains("invalid_link"),
            "a reused link led to {landed}: {page}"
        );
        for old in [&link, &expired] {
            let (landed, page) = open_link(browser, stack, &connect_url, old).await?;
            ensure!(
                landed.path() != CONSENT_PATH && page.contains("invalid_link"),
                "an expired link led to {landed}: {page}"
            );
        }
        Ok(format!(
            "{user}: a link opened twice reached Google once, then invalid_link; expired links invalid_link"
        ))
    })
    .await
}

/// Moves every connect link of `user` in the flows table two minutes into the past.
async fn expire_links(stack: &DemoStack, user: &str) -> Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let table = stack.flows_table.as_str();
    let items = stack
        .dynamodb
        .scan()
        .table_name(table)
        .filter_expression("#u = :u AND #k = :k")
        .expression_attribute_names("#u", "user_id")
        .expression_attribute_names("#k", "kind")
        .expression_attribute_values(":u", AttributeValue::S(user.into()))
        .expression_attribute_values(":k", AttributeValue::S("link".into()))
        .send()
        .await
        .context("scanning the flows table")?
        .items
        .unwrap_or_default();
    ensure!(
        items.len() == 2,
        "expected {user}'s two links, found {}",
        items.len()
    );
    let past = chrono::Utc::now().timestamp() - 120;
    for item in items {
        let key = item
            .get("state")
            .cloned()
            .context("a link without its key")?;
        stack
            .dynamodb
            .update_item()
            .table_name(table)
            .key("state", key)
            .update_expression("SET expires_at = :t")
            .expression_attribute_values(":t", AttributeValue::N(past.to_string()))
            .send()
            .await
            .context("moving a link's expiry")?;
    }
    Ok(())
}

/// Every scenario against the running stack, each with users of its own.
pub async fn run_all(state: &State) -> Result<Vec<String>> {
    let stack = DemoStack::from_state(state).await?;
    let run = chrono::Utc::now().timestamp_millis();
    let user = |role: &str| format!("browser-{role}-{run}");
    Ok(vec![
        third_party_cookies_blocked(&stack).await?,
        connect_allowed_then_disconnect(&stack, &user("allow")).await?,
        consent_denied(&stack, &user("deny")).await?,
        login_csrf_refused(&stack, &user("victim"), &user("attacker")).await?,
        reused_and_expired_links(&stack, &user("links")).await?,
    ])
}
