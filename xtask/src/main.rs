//! `cargo xtask <command>`: see `cargo xtask help`.

use std::process::ExitCode;

use xtask::local_aws::stack;

const HELP: &str = "\
cargo xtask setup              install the Python venv (moto, aws-sam-cli, cargo-lambda) into .dev/
cargo xtask stack up [--host ADDR] | down | status
                               the local stack: moto, the Google emulator, the functions under the RIE
cargo xtask test [--no-browser] [--no-sam]
                               the whole CI: fmt, clippy, tests, sam validate, events/ under the RIE,
                               browser tests and the demo story, sam build (arm64, the template's
                               default) and sam build + sam local invoke (x86_64) in Docker;
                               --no-browser / --no-sam skip those steps (the summary says so)
cargo xtask jwt USER_ID        print a JWT for USER_ID that the running stack's authorizer accepts
                               (curl -H \"Authorization: Bearer $(cargo xtask jwt u1)\" ...)
cargo xtask load               oha on the connect routes through the running stack's front (installs
                               oha into .dev/tools/ if missing), with figures
cargo xtask browser            the real-browser tests (headless Chromium) against the running stack
cargo xtask events             regenerate the stream events in events/ from moto's real stream
cargo xtask sam [--fresh-engine]
                               sam build + sam local invoke of every events/ file in Docker, answers
                               checked; --fresh-engine: on a brand-new engine (own network namespace,
                               data root and socket), as on a machine that never ran Docker
cargo xtask events check       only the last step of `test`: events/ under the RIE, answers checked
cargo xtask bench              release builds under the RIE against moto and the Google emulator:
                               cold starts, event-sync batches, RSS, sizes, against the budgets
                               (a table, and JSON in .dev/bench/)
cargo xtask demo [--keep-running]
                               install, build, start the stack and run the story end to end
                               (--keep-running leaves the stack up and prints its URLs)";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["setup"] => xtask::setup::install().map(|_| ()),
        ["stack", "up", rest @ ..] => stack_up(rest).await,
        ["stack", "down"] => stack::down().await.map(|()| println!("stack: stopped")),
        ["stack", "status"] => {
            println!("{}", stack::status());
            Ok(())
        }
        ["test", rest @ ..] => match xtask::ci::Options::parse(rest) {
            Ok(options) => xtask::ci::run(&options).await,
            Err(e) => Err(e),
        },
        ["events"] => xtask::regenerate_samples::regenerate().await,
        ["events", "check"] => xtask::ci::events_under_rie()
            .await
            .map(|summary| println!("events: {summary}")),
        ["stand-ins"] => stand_ins().await,
        ["jwt", user] => running_stack()
            .and_then(|_| stack::mint_jwt(user))
            .map(|token| println!("{}", secrecy::ExposeSecret::expose_secret(&token))),
        ["browser"] => browser().await,
        ["load"] => xtask::ci::load_on_connect_routes()
            .await
            .map(|summary| println!("load: {summary}")),
        ["sam"] => xtask::checks::sam::run_sam_checks(&testkit::paths::workspace_root()).await,
        ["sam", "--fresh-engine"] => {
            xtask::docker::run_on_fresh_engine(&testkit::paths::workspace_root()).await
        }
        ["bench"] => xtask::bench::run().await,
        ["demo"] => demo(false).await,
        ["demo", "--keep-running"] => demo(true).await,
        ["help" | "--help" | "-h"] | [] => {
            println!("{HELP}");
            Ok(())
        }
        _ => {
            eprintln!("unknown command {args:?}\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn stack_up(rest: &[&str]) -> anyhow::Result<()> {
    let mut options = stack::Options::default();
    match rest {
        [] => {}
        ["--host", host] => options.host = host.to_string(),
        other => anyhow::bail!("stack up: unexpected {other:?}; usage: stack up [--host ADDR]"),
    }
    let state = stack::up(&options).await?;
    println!("stack: up\n{}", stack::summary(&state));
    Ok(())
}

/// The local stack's API Gateway and event source mapping (started by `stack up`).
async fn stand_ins() -> anyhow::Result<()> {
    let state = running_stack()?;
    xtask::local_aws::run(&state, &stack::Options::default()).await
}

/// The README's first command: the whole story on a fresh local stack.
async fn demo(keep_running: bool) -> anyhow::Result<()> {
    use std::time::Instant;
    let started = Instant::now();
    println!(
        "calsync demo: installing and building what the local stack needs (first run: minutes)"
    );
    xtask::setup::ensure()?;
    stack::down().await?;
    let options = stack::Options::default();
    let state = stack::up(&options).await?;
    println!(
        "calsync demo: stack up in {:.0?} (moto, Google emulator, 4 functions under the RIE, API Gateway, event source mappings)\n",
        started.elapsed()
    );
    let outcome = xtask::demo::DemoStack::from_state(&state)
        .await?
        .run_and_print()
        .await;
    match &outcome {
        Ok(held) => println!(
            "\ncalsync demo: all {held} steps held, {:.0?} in all",
            started.elapsed()
        ),
        Err(e) => println!("\ncalsync demo: {e:#}"),
    }
    if keep_running {
        println!(
            "\nThe stack is still running; try it in a browser:\n{}",
            stack::summary(&state)
        );
        println!(
            "  sign in at {}login, then Connect; `cargo xtask jwt USER` prints a token for curl; \
             `cargo xtask stack down` stops it",
            state.app_url
        );
    } else {
        stack::down().await?;
        println!("calsync demo: stack stopped (`cargo xtask demo --keep-running` leaves it up)");
    }
    outcome
        .map(|_| ())
        .map_err(|e| e.context("the demo failed; logs of every process are in .dev/logs/"))
}

/// The browser tests against the running local stack.
async fn browser() -> anyhow::Result<()> {
    let state = running_stack()?;
    for line in xtask::checks::browser::run_all(&state).await? {
        println!("browser: ok  {line}");
    }
    Ok(())
}

fn running_stack() -> anyhow::Result<stack::State> {
    stack::load_state()
        .ok_or_else(|| anyhow::anyhow!("no running stack: `cargo xtask stack up` starts one"))
}
