//! Load on the connect routes: oha (a real load tool, from crates.io, kept in `.dev/tools/`) on
//! loopback through the local HTTP front, the template's JWT authorizer and CORS in front of the
//! oauth functions under the RIE, as the local stack runs them. Every answer must be the one
//! expected, the complete connects made meanwhile must leave no flow record behind, every record
//! the load left must expire within its lifetime, and the functions' memory must stay flat.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use testkit::paths;

use crate::demo::{Browser, DemoStack};
use crate::local_aws::stack;

/// The oha release CI installs (a pinned version, so its JSON output is the one read here).
const OHA_VERSION: &str = "1.16.0";
const CONNECTIONS: &str = "8";
/// Complete connects (link, form POST, consent, callback) made between the two load runs.
const CONNECTS: usize = 20;
/// How much the functions' resident memory may grow between the end of the first load run and
/// the end of the second: an allocator settling, not a leak per request.
const RSS_SLACK_KB: u64 = 4 * 1024;

fn oha_root() -> PathBuf {
    paths::dev_dir().join("tools/oha")
}

/// oha, installed with cargo into `.dev/tools/oha` unless it is there already.
pub fn ensure_oha() -> Result<PathBuf> {
    let binary = oha_root().join("bin/oha");
    if binary.exists() {
        return Ok(binary);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    std::fs::create_dir_all(paths::logs_dir())?;
    // Its progress goes to a log: it often builds in the background while other steps print.
    let log = paths::logs_dir().join("oha-install.log");
    let status = Command::new(cargo)
        .args([
            "install",
            "oha",
            "--locked",
            "--version",
            OHA_VERSION,
            "--root",
        ])
        .arg(oha_root())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?.try_clone()?)
        .status()
        .context("running cargo install oha")?;
    ensure!(
        status.success(),
        "cargo install oha {OHA_VERSION} failed (log: {})",
        log.display()
    );
    Ok(binary)
}

/// Resident memory (kB) of the function processes the RIE of `binary` runs (its children).
fn function_rss_kb(binary: &str) -> Result<u64> {
    let rie = testkit::process::read_pid(&paths::run_dir().join(format!("{binary}.pid")))
        .with_context(|| format!("no pid file for {binary}"))?;
    let mut total = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so read after its closing paren.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(rie) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    ensure!(total > 0, "{binary} has no running function process");
    Ok(total)
}

fn rss_kb() -> Result<u64> {
    Ok(function_rss_kb("oauth-start")? + function_rss_kb("oauth-callback")?)
}

/// One oha run; fails unless every answer had `expected` status. Returns its figures as text.
fn oha(
    oha: &std::path::Path,
    requests: usize,
    args: &[&str],
    url: &url::Url,
    expected: u16,
) -> Result<String> {
    let output = Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "-c", CONNECTIONS])
        .args(["-n", &requests.to_string()])
        .args(args)
        .arg(url.as_str())
        .output()
        .context("running oha")?;
    ensure!(
        output.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).context("oha's JSON report")?;
    let statuses = &report["statusCodeDistribution"];
    ensure!(
        statuses == &json!({ expected.to_string(): requests })
            && report["errorDistribution"]
                .as_object()
                .is_none_or(|e| e.is_empty()),
        "{} {}: answers {statuses}, errors {}",
        args.first().unwrap_or(&""),
        url.path(),
        report["errorDistribution"]
    );
    let latency = &report["metrics"]["latency_ms"];
    let percentile = |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(0.0) * 1000.0;
    Ok(format!(
        "{requests} x {} {}: all {expected}, {:.0} req/s, latency p50 {:.1} ms, p95 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        args.iter()
            .position(|a| *a == "-m")
            .map_or("GET", |i| args[i + 1]),
        url.path(),
        report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        percentile("p50"),
        percentile("p95"),
        percentile("p99"),
        latency["max"].as_f64().unwrap_or(0.0),
    ))
}

/// Flow records and connect links in the flows table: how many, and whether each expires
/// within the lifetime of its kind from now.
async fn flow_records(demo: &DemoStack) -> Result<usize> {
    let now = chrono::Utc::now().timestamp();
    let mut count = 0;
    let mut pages = demo
        .dynamodb
        .scan()
        .table_name(&demo.flows_table)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for item in page?.items() {
            let expires_at: i64 = item
                .get("expires_at")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .context("a flow record without its TTL attribute")?;
            ensure!(
                expires_at <= now + calsync::flows::FLOW_LIFETIME.num_seconds(),
                "a flow record expires {} s from now",
                expires_at - now
            );
            count += 1;
        }
    }
    Ok(count)
}

/// The load, on a running local stack; its figures.
pub async fn run(state: &stack::State) -> Result<String> {
    let oha_binary = ensure_oha()?;
    let demo = DemoStack::from_state(state).await?;
    let app = demo.app.origin().ascii_serialization();
    let jwt = stack::mint_jwt("load-user")?;
    let bearer = format!(
        "Authorization: Bearer {}",
        secrecy::ExposeSecret::expose_secret(&jwt)
    );
    let origin = format!("Origin: {app}");
    let body = json!({ "return_to": demo.app.as_str() }).to_string();
    let links = demo.front.join("oauth/google/connect-links")?;
    let start = demo.front.join("oauth/google/start")?;
    let link_args = [
        "-m",
        "POST",
        "-H",
        &bearer,
        "-H",
        &origin,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
    ];

    // Warm: both functions started (the RIE starts them on their first invocation).
    connect(&demo, "load-warm").await?;
    let cold_rss = rss_kb()?;
    let mut figures = vec![oha(&oha_binary, 2000, &link_args, &links, 201)?];
    figures.push(oha(&oha_binary, 1000, &["-H", &bearer], &start, 302)?);
    let mid_rss = rss_kb()?;

    let before = flow_records(&demo).await?;
    for i in 0..CONNECTS {
        connect(&demo, &format!("load{i}")).await?;
    }
    let after = flow_records(&demo).await?;
    ensure!(
        after == before,
        "{CONNECTS} complete connects left {} flow record(s) behind",
        after.saturating_sub(before)
    );
    figures.push(oha(&oha_binary, 2000, &link_args, &links, 201)?);
    let end_rss = rss_kb()?;
    for line in &figures {
        println!("  load: {line}");
    }
    println!(
        "  load: {CONNECTS} complete connects left no flow record; the {after} the load left \
         (links and flows never used) each expire within {} min (DynamoDB's TTL removes them \
         later; calsync refuses them from then on)",
        calsync::flows::FLOW_LIFETIME.num_minutes()
    );
    println!(
        "  load: oauth-start + oauth-callback resident memory: {:.1} MB after one connect, \
         {:.1} MB after 3,000 requests, {:.1} MB after 5,000",
        mb(cold_rss),
        mb(mid_rss),
        mb(end_rss)
    );
    ensure!(
        end_rss <= mid_rss + RSS_SLACK_KB,
        "the functions' memory grew from {mid_rss} kB to {end_rss} kB over 2,000 more requests"
    );
    Ok(format!(
        "5,000 requests all answered as expected; memory {:.1} -> {:.1} MB",
        mb(mid_rss),
        mb(end_rss)
    ))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A complete connect through the front as a new Google account.
async fn connect(demo: &DemoStack, user: &str) -> Result<()> {
    let email = format!("{user}@example.com");
    let (status, answer) = demo
        .google
        .control_post("accounts", &json!({ "email": email }))
        .await?;
    ensure!(status.is_success(), "emulator accounts: {status} {answer}");
    demo.connect(&mut Browser::new(), user, &email).await?;
    Ok(())
}
