//! `cargo xtask bench`: the release binaries under the RIE, against moto's server and the Google
//! emulator, measured. Cold starts, event-sync batches (wall, CPU, DynamoDB and Google calls per
//! record, concurrency), peak RSS, binary and zip sizes, each next to the budget of issue 15. The
//! table goes to stdout and the figures to `.dev/bench/<time>.json`.
//!
//! Calibration: the emulators' own time is measured and subtracted, not simulated. Each batch runs
//! at 0 ms and again with 100 ms added to every Calendar call; what the second adds to the wall
//! time is what the waits cost, calsync's and the emulators' own time taken out, and the
//! concurrency budget is judged on it. Every DynamoDB and Calendar call also goes through a
//! counting [`FaultProxy`], which times each answer: their sum spread over the batch's lanes is
//! shown too, and the span of the Secrets Manager reads is taken from each init.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use testkit::api_gateway::HttpApiEvent;
use testkit::fault_proxy::{Calls, FaultProxy};
use testkit::rie::{self, TiedFunction};
use testkit::template::{FunctionSpec, Template};
use testkit::{TestStack, paths, rows};

use crate::{local_aws::stack::target_dir, setup};

/// (records, users) of each batch: every size, over the user counts that leave a user several
/// records, and over as many users as records.
const BATCHES: [(usize, usize); 8] = [
    (1, 1),
    (10, 1),
    (10, 10),
    (100, 1),
    (100, 10),
    (100, 100),
    (1000, 10),
    (1000, 100),
];
const LATENCIES_MS: [u64; 2] = [0, 100];
/// The template's stream `BatchSize`: a batch's two reads (states, grants) are shared by this many.
const FULL_BATCH: usize = 50;
const USERS: usize = 100;
const COLD_STARTS: usize = 5;

/// Issue 15's budgets.
const INIT_MS: f64 = 10.0;
const CPU_MS_PER_RECORD: f64 = 0.5;
const DYNAMODB_PER_KNOWN_RECORD: f64 = 1.1;
const EFFICIENCY: f64 = 0.9;
const RSS_MB: f64 = 16.0;
const ZIP_MB: f64 = 4.0;

#[derive(Serialize)]
struct Artifact {
    function: String,
    binary_bytes: u64,
    zip_bytes: u64,
}

#[derive(Serialize)]
struct ColdStart {
    function: String,
    /// Cold starts measured; each figure is their median.
    runs: usize,
    /// From spawning the RIE to the first invocation's answer.
    spawn_to_answer_ms: f64,
    /// The first invocation alone (the RIE starts the function then).
    first_invoke_ms: f64,
    /// The RIE's `INIT REPORT` (from starting the function to its first poll for work).
    init_ms: Option<f64>,
    /// `init_ms` less the time it waited for Secrets Manager's answers (both secrets are read
    /// during init): the function's own init, which the budget is about.
    own_init_ms: Option<f64>,
    /// The first invocation's CPU time in the function process (its init included).
    cpu_ms: f64,
    /// What the first invocation's AWS and Google calls took at the proxies, and how much of
    /// it Secrets Manager's (event-sync reads both secrets during init, so its init holds that).
    emulators_ms: f64,
    secrets_ms: f64,
}

#[derive(Serialize, Default)]
struct Batch {
    latency_ms: u64,
    records: usize,
    users: usize,
    /// `false`: new events (inserts); `true`: events already synced (their updates).
    known: bool,
    wall_ms: f64,
    cpu_ms: f64,
    /// `/proc/<pid>/stat`'s utime+stime (10 ms ticks), a cross-check of `cpu_ms`.
    cpu_ticks_ms: f64,
    dynamodb_calls: usize,
    google_calls: u64,
    /// Every forwarded AWS operation and Calendar method, with its count and answer time.
    calls: BTreeMap<String, (usize, f64)>,
    emulators_ms: f64,
    /// CPU time of moto (unless `CALSYNC_TEST_AWS_ENDPOINT` named one already running) and of
    /// this process (the Google emulator and the proxies run in it).
    emulators_cpu_ms: f64,
    efficiency: Option<f64>,
    calibrated_efficiency: Option<f64>,
    /// Against the same batch at 0 ms: the ideal over what the added latency added to the wall.
    /// This is the figure the budget is judged on (see `CALIBRATION`).
    baseline_efficiency: Option<f64>,
    failures: usize,
    rss_kb: u64,
}

impl Batch {
    fn per_record(&self, total: f64) -> f64 {
        total / self.records as f64
    }
}

#[derive(Serialize)]
struct Report {
    machine: BTreeMap<&'static str, String>,
    sync_concurrency: usize,
    calibration: &'static str,
    zip_tool: &'static str,
    artifacts: Vec<Artifact>,
    cold_starts: Vec<ColdStart>,
    batches: Vec<Batch>,
    event_sync_peak_rss_kb: u64,
    budgets: Vec<(String, String, bool)>,
}

const CALIBRATION: &str = "the same batch at 0 ms subtracted: each batch runs at 0 ms and again at \
    100 ms a Calendar call, so the second's extra wall time is what the 100 ms calls cost, \
    calsync's and the emulators' own time taken out; efficiency is records x 100 ms / \
    SYNC_CONCURRENCY over that. Also shown (\"calibrated\"): each DynamoDB and Calendar answer timed \
    at a counting proxy, their sum less the latency added on purpose, divided by \
    min(records, SYNC_CONCURRENCY), taken from the wall time; it assumes the emulators answer calls \
    in parallel, which moto (one Python process) does not, so it understates";
const ZIP_TOOL: &str = "python3 zipfile (ZIP_DEFLATED, as sam build), the binary as `bootstrap`";

pub async fn run() -> Result<()> {
    let venv = setup::ensure()?;
    let functions = Template::load_workspace()?.functions()?;
    // Another build's binaries (a profiling build with symbols, a copy of `main`'s) can stand in.
    let bin = match std::env::var_os("CALSYNC_BENCH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => build_release(&functions)?,
    };
    let out = paths::dev_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    let mut artifacts = functions
        .iter()
        .map(|f| artifact(&venv, &bin, &out, &f.binary))
        .collect::<Result<Vec<_>>>()?;

    println!("bench: moto, the Google emulator and counting proxies in front of both");
    let stack = TestStack::start().await?;
    let aws = FaultProxy::start(&stack.aws_endpoint).await?;
    let google = FaultProxy::start(stack.emulator.base_url.as_str()).await?;
    let mut env = stack.env.clone();
    env.insert("AWS_ENDPOINT_URL".into(), aws.endpoint.clone());
    env.insert(
        "GOOGLE_CALENDAR_API_URL".into(),
        format!("{}/calendar/v3", google.endpoint),
    );
    let concurrency: usize = env["SYNC_CONCURRENCY"].parse()?;
    let binary = |name: &str| -> Result<PathBuf> {
        let spec = functions.iter().find(|f| f.logical_id == name);
        Ok(bin.join(&spec.context("template.yaml lost a function")?.binary))
    };
    let start = |name: &'static str| {
        let (binary, env, log) = (binary(name), env.clone(), out.join(format!("{name}.log")));
        async move { Cold::start(&binary?, &env, &log).await }
    };

    // Init under a loaded machine varies from run to run: the median of a few cold starts.
    let cold =
        async |name: &'static str, event: &Value, status: u16| -> Result<(Cold, ColdStart)> {
            let mut runs = Vec::new();
            loop {
                let function = start(name).await?;
                runs.push(
                    function
                        .first(&stack.http, event, status, [&aws, &google])
                        .await?,
                );
                if runs.len() == COLD_STARTS {
                    return Ok((function, ColdStart::median(runs)));
                }
            }
        };
    let mut cold_starts = Vec::new();
    let event = HttpApiEvent::get("/oauth/google/start")
        .user("bench-cold")
        .json();
    let (oauth_start, figures) = cold("OAuthStartFunction", &event, 302).await?;
    cold_starts.push(figures);
    let event = HttpApiEvent::get("/oauth/google/status")
        .user("bench-cold")
        .json();
    let (callback, figures) = cold("OAuthCallbackFunction", &event, 200).await?;
    cold_starts.push(figures);
    let event: Value = serde_json::from_str(&std::fs::read_to_string(
        paths::workspace_root().join("events/resync-job.json"),
    )?)?;
    cold_starts.push(cold("ResyncFunction", &event, 0).await?.1);

    println!("bench: connecting {USERS} users through oauth-start and oauth-callback");
    for user in 0..USERS {
        let account = format!("bench-{user}@example.test");
        stack
            .control_post("accounts", &json!({ "email": account }))
            .await?;
        let (http, start_url) = (&stack.http, &oauth_start.tied.invoke_url);
        let callback_url = &callback.tied.invoke_url;
        stack
            .connect_through_events(
                &format!("bench-u{user}"),
                &account,
                async |event| rie::invoke(http, start_url, &event.json()).await,
                async |event| rie::invoke(http, callback_url, &event.json()).await,
            )
            .await?;
    }
    drop((oauth_start, callback));

    let dynamodb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let events_table = stack.table("EVENTS_TABLE").to_string();
    let mut seen = 0;
    let mut write_rows = async |ids: &[(String, String)], title: &str| -> Result<Vec<Value>> {
        futures::stream::iter(ids)
            .map(|(id, user)| rows::put(&dynamodb, &events_table, rows::event_row(id, user, title)))
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        // moto's stream from the start, less what earlier batches were handed.
        let all = stack.stream_records("EVENTS_TABLE").await?;
        let new = all[seen.min(all.len())..].to_vec();
        seen = all.len();
        Ok(new)
    };

    let records = write_rows(&[("bench-cold-1".into(), "bench-u0".into())], "cold").await?;
    // Its later cold starts find the record applied: the same init, a lighter first batch.
    let (sync, figures) = cold("EventSyncFunction", &TestStack::stream_event(records), 0).await?;
    cold_starts.push(figures);
    let pid = sync.tied.runtime_pid().context("event-sync's process")?;
    // moto's server runs under a shell of ours (`testkit::process::spawn_tied`).
    let shells = testkit::process::children(std::process::id());
    let moto = shells
        .into_iter()
        .flat_map(testkit::process::children)
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("python"))
        });

    let mut batches = Vec::new();
    println!("\nevent-sync, warm (SYNC_CONCURRENCY={concurrency}):\n{BATCH_HEADER}");
    let mut next_user = 0;
    for latency_ms in LATENCIES_MS {
        if latency_ms > 0 {
            // A delay without a status is a slow but normal answer, for every call from now on.
            let delay = json!({"target": "calendar", "delay_ms": latency_ms, "count": u32::MAX});
            let (status, answer) = stack.control_post("faults", &delay).await?;
            ensure!(status.is_success(), "emulator faults: {answer}");
        }
        for (records, users) in BATCHES {
            // Each batch's users are the next ones round the connected 100, so no batch starts
            // with a user whose pace (README, "Google's quotas") the batch before used up.
            let ids: Vec<(String, String)> = (0..records)
                .map(|i| {
                    let id = format!("bench-{latency_ms}-{records}x{users}-{i}");
                    (id, format!("bench-u{}", (next_user + i % users) % USERS))
                })
                .collect();
            next_user += users;
            for (known, title) in [(false, "inserted"), (true, "updated")] {
                let records_written = write_rows(&ids, title).await?;
                ensure!(records_written.len() == records, "the stream lost records");
                let event = TestStack::stream_event(records_written);
                aws.take_calls();
                google.take_calls();
                let stats = stack.control_get("stats").await?;
                let (cpu, ticks) = (cpu_ns(pid)?, cpu_ticks(pid)?);
                let emulators_cpu = emulators_cpu_ns(moto)?;
                let started = Instant::now();
                let answer = rie::invoke(&stack.http, &sync.tied.invoke_url, &event).await?;
                let wall = started.elapsed();
                let emulators_cpu = emulators_cpu_ns(moto)? - emulators_cpu;
                let mut batch = Batch {
                    latency_ms,
                    records,
                    users,
                    known,
                    wall_ms: ms(wall),
                    cpu_ms: (cpu_ns(pid)? - cpu) as f64 / 1e6,
                    cpu_ticks_ms: (cpu_ticks(pid)? - ticks) as f64 * 10.0,
                    emulators_cpu_ms: emulators_cpu as f64 / 1e6,
                    google_calls: google_calls(&stack.control_get("stats").await?)
                        - google_calls(&stats),
                    failures: answer["batchItemFailures"]
                        .as_array()
                        .with_context(|| format!("event-sync answered {answer}"))?
                        .len(),
                    rss_kb: vm_hwm_kb(pid),
                    ..Batch::default()
                };
                let calls: BTreeMap<String, Calls> = aws
                    .take_calls()
                    .into_iter()
                    .chain(google.take_calls())
                    .collect();
                batch.dynamodb_calls = calls
                    .iter()
                    .filter(|(op, _)| op.starts_with("DynamoDB_"))
                    .map(|(_, c)| c.count)
                    .sum();
                let added = Duration::from_millis(latency_ms) * batch.google_calls as u32;
                let external = calls.values().map(|c| c.upstream).sum::<Duration>();
                let lanes = records.min(concurrency) as f64;
                batch.emulators_ms = ms(external.saturating_sub(added)) / lanes;
                batch.calls = calls
                    .into_iter()
                    .map(|(op, c)| (op, (c.count, ms(c.upstream))))
                    .collect();
                if latency_ms > 0 {
                    let ideal = (records as u64 * latency_ms) as f64 / concurrency as f64;
                    batch.efficiency = Some(efficiency(ideal, batch.wall_ms, 0.0));
                    batch.calibrated_efficiency =
                        Some(efficiency(ideal, batch.wall_ms, batch.emulators_ms));
                }
                println!("{}", batch_row(&batch));
                batches.push(batch);
            }
        }
    }
    for i in 0..batches.len() {
        let b = &batches[i];
        if b.latency_ms == 0 || !within_bursts(b) {
            continue;
        }
        let Some(zero) = at_zero(&batches, b) else {
            continue;
        };
        let ideal = (b.records as u64 * b.latency_ms) as f64 / concurrency as f64;
        let measured = efficiency(ideal, b.wall_ms, zero.wall_ms);
        batches[i].baseline_efficiency = Some(measured);
    }
    println!(
        "\nagainst the same batch at 0 ms:\n| records | users | kind | wall at 0 ms | at 100 ms | efficiency |\n| --- | --- | --- | --- | --- | --- |"
    );
    for b in &batches {
        let (Some(measured), Some(zero)) = (b.baseline_efficiency, at_zero(&batches, b)) else {
            continue;
        };
        println!(
            "| {} | {} | {} | {:.0} ms | {:.0} ms | {:.0}% |",
            b.records,
            b.users,
            if b.known { "update" } else { "insert" },
            zero.wall_ms,
            b.wall_ms,
            measured * 100.0
        );
    }
    // One row per function in the printed table.
    cold_starts.sort_by(|a, b| a.function.cmp(&b.function));
    artifacts.sort_by(|a, b| a.function.cmp(&b.function));
    let report = Report {
        machine: machine(),
        sync_concurrency: concurrency,
        calibration: CALIBRATION,
        zip_tool: ZIP_TOOL,
        event_sync_peak_rss_kb: vm_hwm_kb(pid),
        budgets: Vec::new(),
        artifacts,
        cold_starts,
        batches,
    };
    let report = Report {
        budgets: budgets(&report),
        ..report
    };
    print_report(&report);
    let file = out.join(format!(
        "{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    println!("bench: figures in {}", file.display());
    Ok(())
}

/// Builds the functions with the workspace's release profile (what ships); their folder.
fn build_release(functions: &[FunctionSpec]) -> Result<PathBuf> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(paths::workspace_root())
        .args(["build", "--release"]);
    for function in functions {
        command.args(["-p", &function.binary]);
    }
    println!(
        "bench: cargo build --release of {} functions (fat LTO, one codegen unit: minutes the first time)",
        functions.len()
    );
    let status = command.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build failed (its errors are above)"
    );
    Ok(target_dir().join("release"))
}

/// The binary's size, and its zip's as `sam build` makes it.
fn artifact(venv: &Path, bin: &Path, out: &Path, binary: &str) -> Result<Artifact> {
    let (path, zip) = (bin.join(binary), out.join(format!("{binary}.zip")));
    let status = Command::new(venv.join("bin/python3"))
        .args([
            "-c",
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n    \
             z.write(sys.argv[2], 'bootstrap')",
        ])
        .arg(&zip)
        .arg(&path)
        .status()
        .context("zipping with the venv's python3")?;
    ensure!(status.success(), "zipping {} failed", path.display());
    Ok(Artifact {
        function: binary.to_string(),
        binary_bytes: std::fs::metadata(&path)?.len(),
        zip_bytes: std::fs::metadata(&zip)?.len(),
    })
}

/// A function under the RIE, from the moment it was spawned.
struct Cold {
    tied: TiedFunction,
    name: String,
    spawned: Instant,
    log: PathBuf,
}

impl Cold {
    async fn start(binary: &Path, env: &HashMap<String, String>, log: &Path) -> Result<Self> {
        let spawned = Instant::now();
        let tied = rie::start_tied(binary, env, Some(log)).await?;
        let name = binary.file_name().unwrap_or_default().to_string_lossy();
        Ok(Self {
            tied,
            name: name.into_owned(),
            spawned,
            log: log.to_path_buf(),
        })
    }

    /// The first invocation, which must answer `status` (0: a non-HTTP answer, any).
    async fn first(
        &self,
        http: &reqwest::Client,
        event: &Value,
        status: u16,
        proxies: [&FaultProxy; 2],
    ) -> Result<ColdStart> {
        for proxy in proxies {
            proxy.take_calls();
        }
        let sent = Instant::now();
        let answer = rie::invoke(http, &self.tied.invoke_url, event).await?;
        let answered = Instant::now();
        ensure!(
            status == 0 || answer["statusCode"] == status,
            "{}'s first answer: {answer}",
            self.name
        );
        ensure!(answer.get("errorType").is_none(), "{}: {answer}", self.name);
        let calls: Vec<(String, Calls)> = proxies
            .into_iter()
            .flat_map(FaultProxy::take_calls)
            .collect();
        let time = |secrets: bool| {
            let chosen = calls
                .iter()
                .filter(|(op, _)| !secrets || op.starts_with("secretsmanager"));
            ms(chosen.map(|(_, c)| c.upstream).sum())
        };
        // Both secrets are asked for at once: the wait is their span, not their sum.
        let secrets_waited = calls
            .iter()
            .filter(|(op, _)| op.starts_with("secretsmanager"))
            .filter_map(|(_, c)| c.span)
            .reduce(|(a0, a1), (b0, b1)| (a0.min(b0), a1.max(b1)))
            .map_or(0.0, |(first, last)| ms(last - first));
        let init_ms = init_duration(&std::fs::read_to_string(&self.log)?);
        let pid = self.tied.runtime_pid().context("the function's process")?;
        Ok(ColdStart {
            function: self.name.clone(),
            runs: 1,
            spawn_to_answer_ms: ms(answered - self.spawned),
            first_invoke_ms: ms(answered - sent),
            // The RIE logs its INIT REPORT before it passes the event on.
            init_ms,
            own_init_ms: init_ms.map(|init| init - secrets_waited),
            cpu_ms: cpu_ns(pid)? as f64 / 1e6,
            emulators_ms: time(false),
            secrets_ms: time(true),
        })
    }
}

impl ColdStart {
    /// Each figure's median over `runs`.
    fn median(runs: Vec<ColdStart>) -> ColdStart {
        let median = |figure: fn(&ColdStart) -> Option<f64>| {
            let mut values: Vec<f64> = runs.iter().filter_map(figure).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied()
        };
        let cold = ColdStart {
            function: runs[0].function.clone(),
            runs: runs.len(),
            spawn_to_answer_ms: median(|c| Some(c.spawn_to_answer_ms)).unwrap_or_default(),
            first_invoke_ms: median(|c| Some(c.first_invoke_ms)).unwrap_or_default(),
            init_ms: median(|c| c.init_ms),
            own_init_ms: median(|c| c.own_init_ms),
            cpu_ms: median(|c| Some(c.cpu_ms)).unwrap_or_default(),
            emulators_ms: median(|c| Some(c.emulators_ms)).unwrap_or_default(),
            secrets_ms: median(|c| Some(c.secrets_ms)).unwrap_or_default(),
        };
        println!(
            "bench: {} cold (median of {}): {:.1} ms spawn to answer, init {}",
            cold.function,
            cold.runs,
            cold.spawn_to_answer_ms,
            cold.init_ms.map_or("?".into(), |i| format!("{i:.1} ms"))
        );
        cold
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn google_calls(stats: &Value) -> u64 {
    let calendar = stats["calendar"].as_object().into_iter().flatten();
    calendar.filter_map(|(_, n)| n.as_u64()).sum::<u64>()
        + stats["token"]["refresh_token"].as_u64().unwrap_or(0)
}

/// The same batch (records, users, kind) without added latency.
fn at_zero<'b>(batches: &'b [Batch], b: &Batch) -> Option<&'b Batch> {
    batches
        .iter()
        .find(|o| (o.records, o.users, o.known, o.latency_ms) == (b.records, b.users, b.known, 0))
}

/// Whether the batch goes at the pace of its calls' answers, not of Google's quotas: it fits in
/// the container's burst and each user's (README, "Google's quotas"). A batch beyond them waits for
/// its slots whatever the latency, so the same batch at 0 ms is no baseline for it.
fn within_bursts(b: &Batch) -> bool {
    let limits = calsync::sync::pacing::PacingLimits::STREAM;
    b.records <= limits.per_container.burst as usize
        && b.records.div_ceil(b.users.max(1)) <= limits.per_user.burst as usize
}

/// The ideal wall time over the measured one, with `other_ms` of it not the waits the ideal is
/// about (the emulators' time, or the whole same batch at 0 ms).
fn efficiency(ideal_ms: f64, wall_ms: f64, other_ms: f64) -> f64 {
    ideal_ms / (wall_ms - other_ms).max(f64::EPSILON)
}

/// The RIE's `INIT REPORT(durationMs: 50.9)`: from starting the function to its first poll for
/// work. (Its `REPORT` line's `Init Duration` is not that: a fraction of a millisecond, always.)
fn init_duration(log: &str) -> Option<f64> {
    let (_, rest) = log.split_once("INIT REPORT(durationMs: ")?;
    rest.split(')').next()?.trim().parse().ok()
}

/// CPU time of every thread of `pid`, in nanoseconds (`schedstat`, precise where `stat` counts
/// 10 ms ticks).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += schedstat_ns(&schedstat).context("a malformed schedstat")?;
    }
    Ok(total)
}

fn schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// CPU time of moto's server and of this process (the Google emulator and the proxies), from
/// `stat`: moto serves each request on a thread of its own, which `schedstat` forgets once it ends.
fn emulators_cpu_ns(moto: Option<u32>) -> Result<u64> {
    let moto = moto.map_or(Ok(0), cpu_ticks)?;
    Ok((moto + cpu_ticks(std::process::id())?) * 10_000_000)
}

/// utime + stime of `pid` in clock ticks (`/proc/<pid>/stat`; exited threads included).
fn cpu_ticks(pid: u32) -> Result<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
        .context("a malformed /proc/<pid>/stat")
}

fn stat_ticks(stat: &str) -> Option<u64> {
    // After the command (which may hold spaces and parentheses): fields 3 on; utime is 14.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmHWM` (the peak resident set).
fn status_kb(status: &str, field: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_kb(&status, "VmHWM").unwrap_or_default()
}

fn machine() -> BTreeMap<&'static str, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Other work on the machine stretches wall times (not CPU times): the load says how much.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    BTreeMap::from([
        ("load average at the end", load),
        ("cpu", model.to_string()),
        ("cores", cores.to_string()),
        ("kernel", kernel.trim().to_string()),
        ("arch", std::env::consts::ARCH.to_string()),
    ])
}

const BATCH_HEADER: &str = "| latency | records | users | kind | wall | CPU/record | DynamoDB/record | Google/record | emulators' share | emulators' CPU/record (10 ms ticks) | efficiency | calibrated | peak RSS |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

fn batch_row(b: &Batch) -> String {
    let eff = |e: Option<f64>| e.map_or("-".into(), |e| format!("{:.0}%", e * 100.0));
    let failed = if b.failures > 0 {
        format!(" {} FAILED", b.failures)
    } else {
        String::new()
    };
    format!(
        "| {} ms | {} | {} | {} | {:.1} ms | {:.3} ms | {:.2} | {:.2} | {:.1} ms | {:.1} ms | {} | {} | {:.1} MiB |{failed}",
        b.latency_ms,
        b.records,
        b.users,
        if b.known { "update" } else { "insert" },
        b.wall_ms,
        b.per_record(b.cpu_ms),
        b.per_record(b.dynamodb_calls as f64),
        b.per_record(b.google_calls as f64),
        b.emulators_ms,
        b.per_record(b.emulators_cpu_ms),
        eff(b.efficiency),
        eff(b.calibrated_efficiency),
        b.rss_kb as f64 / 1024.0,
    )
}

/// Each budget: what it is, the figure it was judged on, and whether it holds.
fn budgets(report: &Report) -> Vec<(String, String, bool)> {
    let mb = |bytes: f64| bytes / (1024.0 * 1024.0);
    // The highest value and where it was measured (negate a figure where lower is worse).
    let worst = |values: Vec<(String, f64)>| {
        values
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or_default()
    };
    let label = |b: &Batch| {
        let kind = if b.known { "updates" } else { "inserts" };
        format!(
            "{} {kind} / {} users at {} ms",
            b.records, b.users, b.latency_ms
        )
    };
    let rows = &report.batches;
    let mut out = Vec::new();
    let mut judge = |what: &str, at: String, shown: String, holds: bool| {
        out.push((what.to_string(), format!("{shown} ({at})"), holds));
    };
    let (at, init) = worst(
        report
            .cold_starts
            .iter()
            .map(|c| (c.function.clone(), c.own_init_ms.unwrap_or(f64::INFINITY)))
            .collect(),
    );
    judge(
        "init < 10 ms (less the wait for Secrets Manager)",
        at,
        format!("{init:.1} ms"),
        init < INIT_MS,
    );
    let (at, cpu) = worst(
        rows.iter()
            .filter(|b| b.records >= 100)
            .map(|b| (label(b), b.per_record(b.cpu_ms)))
            .collect(),
    );
    judge(
        "CPU <= 0.5 ms/record (batches of 100+)",
        at,
        format!("{cpu:.3} ms"),
        cpu <= CPU_MS_PER_RECORD,
    );
    let (at, calls) = worst(
        rows.iter()
            .filter(|b| b.known && b.records >= FULL_BATCH)
            .map(|b| (label(b), b.per_record(b.dynamodb_calls as f64)))
            .collect(),
    );
    judge(
        "DynamoDB <= 1.1 calls/record, known events (batches of 50+)",
        at,
        format!("{calls:.2}"),
        calls <= DYNAMODB_PER_KNOWN_RECORD,
    );
    let (at, google) = worst(
        rows.iter()
            .map(|b| (label(b), (b.per_record(b.google_calls as f64) - 1.0).abs()))
            .collect(),
    );
    judge(
        "1 Google call per change",
        at,
        format!("off by {google:.2}"),
        google < 0.005,
    );
    let (at, eff) = worst(
        rows.iter()
            .filter(|b| b.latency_ms == 100 && b.records == 100 && b.users == 10)
            .map(|b| (label(b), -b.baseline_efficiency.unwrap_or(0.0)))
            .collect(),
    );
    let eff = -eff;
    judge(
        ">= 90% of the concurrency limit (against the same batch at 0 ms)",
        at,
        format!("{:.0}%", eff * 100.0),
        eff >= EFFICIENCY,
    );
    let rss = report.event_sync_peak_rss_kb as f64 / 1024.0;
    judge(
        "peak RSS < 16 MiB (1,000-record batches)",
        "event-sync".into(),
        format!("{rss:.1} MiB"),
        rss < RSS_MB,
    );
    let (at, zip) = worst(
        report
            .artifacts
            .iter()
            .map(|a| (a.function.clone(), mb(a.zip_bytes as f64)))
            .collect(),
    );
    judge("zip < 4 MiB", at, format!("{zip:.2} MiB"), zip < ZIP_MB);
    out
}

fn print_report(report: &Report) {
    let m = &report.machine;
    println!(
        "\ncalsync bench on {} ({} cores, {}, Linux {}, load {}); SYNC_CONCURRENCY={}",
        m["cpu"],
        m["cores"],
        m["arch"],
        m["kernel"],
        m["load average at the end"],
        report.sync_concurrency
    );
    println!(
        "calibration: {}\nzips: {}\n",
        report.calibration, report.zip_tool
    );
    println!(
        "| function | binary | zip | spawn to first answer | first invoke | init (RIE report) | less Secrets Manager | first invoke CPU | its AWS and Google calls (Secrets Manager) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (a, c) in report.artifacts.iter().zip(&report.cold_starts) {
        let shown = |ms: Option<f64>| ms.map_or("-".into(), |i| format!("{i:.1} ms"));
        let (init, own) = (shown(c.init_ms), shown(c.own_init_ms));
        println!(
            "| {} | {:.2} MiB | {:.2} MiB | {:.1} ms | {:.1} ms | {init} | {own} | {:.1} ms | {:.1} ms ({:.1} ms) |",
            a.function,
            a.binary_bytes as f64 / 1048576.0,
            a.zip_bytes as f64 / 1048576.0,
            c.spawn_to_answer_ms,
            c.first_invoke_ms,
            c.cpu_ms,
            c.emulators_ms,
            c.secrets_ms,
        );
    }
    println!(
        "\nevent-sync peak RSS (VmHWM): {:.1} MiB\n",
        report.event_sync_peak_rss_kb as f64 / 1024.0
    );
    println!("| budget | measured | |\n| --- | --- | --- |");
    for (budget, measured, holds) in &report.budgets {
        println!(
            "| {budget} | {measured} | {} |",
            if *holds { "pass" } else { "MISS" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        // A command with a space and a parenthesis, as `comm` may hold.
        let stat = "4242 (event (sync) S 4241 4242 4241 0 -1 4194560 1200 0 0 0 37 5 0 0 20 0 9 0";
        assert_eq!(stat_ticks(stat), Some(42));
        assert_eq!(schedstat_ns("123456789 2000 17\n"), Some(123_456_789));
        let status =
            "Name:\tevent-sync\nVmPeak:\t  20000 kB\nVmHWM:\t   11876 kB\nVmRSS:\t 9000 kB\n";
        assert_eq!(status_kb(status, "VmHWM"), Some(11_876));
        assert_eq!(status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn the_rie_report_gives_the_init_duration() {
        let log = "07:57:17,275 [INFO] (rapid) INIT START(type: on-demand, phase: init)\n\
                   07:57:17,326 [INFO] (rapid) INIT REPORT(durationMs: 50.901000)\n\
                   REPORT RequestId: a\tInit Duration: 0.03 ms\tDuration: 207.87 ms\n";
        assert_eq!(init_duration(log), Some(50.901));
        assert_eq!(
            init_duration("REPORT RequestId: b\tDuration: 5.00 ms"),
            None
        );
    }

    #[test]
    fn only_batches_inside_the_bursts_have_a_baseline() {
        let batch = |records, users| Batch {
            records,
            users,
            ..Batch::default()
        };
        assert!(within_bursts(&batch(100, 10)));
        assert!(within_bursts(&batch(10, 1)));
        // One user's 100 records, and 1,000 records, wait for their pace at any latency.
        assert!(!within_bursts(&batch(100, 1)));
        assert!(!within_bursts(&batch(1000, 100)));
    }

    #[test]
    fn efficiency_is_the_ideal_over_calsyncs_part_of_the_wall() {
        // 100 records at 100 ms over 8 lanes: 1,250 ms ideal.
        let ideal = 100.0 * 100.0 / 8.0;
        assert!((efficiency(ideal, 1250.0, 0.0) - 1.0).abs() < 1e-9);
        assert!((efficiency(ideal, 2500.0, 0.0) - 0.5).abs() < 1e-9);
        // 1,000 of the 2,500 ms were the emulators' own.
        assert!((efficiency(ideal, 2500.0, 1000.0) - 1250.0 / 1500.0).abs() < 1e-9);
        // The same batch took 925 ms at 0 ms and 2,097 ms at 100 ms: 1,250 of 1,172 added.
        assert!(efficiency(ideal, 2097.0, 925.0) > 1.0);
    }
}
