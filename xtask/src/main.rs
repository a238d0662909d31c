//! `cargo xtask <command>`: see `cargo xtask help`.

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask setup              install the Python venv (moto, aws-sam-cli, cargo-lambda) into .dev/
cargo xtask stack up [--host ADDR] | down | status
                               the local stack: moto, the Google emulator, the functions under the RIE
cargo xtask test [--sam]       the whole CI: fmt, clippy, tests, sam validate, events/ under the RIE
                               (--sam also: sam build and sam local invoke in Docker)
cargo xtask events             regenerate the stream events in events/ from moto's real stream
cargo xtask events check       only the last step of `test`: events/ under the RIE, answers checked
cargo xtask demo               the story end to end (not yet)";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["setup"] => xtask::setup::install().map(|_| ()),
        ["stack", "up", rest @ ..] => stack_up(rest).await,
        ["stack", "down"] => xtask::stack::down()
            .await
            .map(|()| println!("stack: stopped")),
        ["stack", "status"] => {
            println!("{}", xtask::stack::status());
            Ok(())
        }
        ["test", rest @ ..] => xtask::ci::run(&xtask::ci::Options::parse(rest)).await,
        ["events"] => xtask::events::regenerate().await,
        ["events", "check"] => xtask::ci::events_under_rie()
            .await
            .map(|summary| println!("events: {summary}")),
        ["demo", ..] => {
            eprintln!("cargo xtask demo: not yet; `cargo xtask stack up` starts the local stack");
            return ExitCode::from(2);
        }
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
    let mut options = xtask::stack::Options::default();
    match rest {
        [] => {}
        ["--host", host] => options.host = host.to_string(),
        other => anyhow::bail!("stack up: unexpected {other:?}; usage: stack up [--host ADDR]"),
    }
    let state = xtask::stack::up(&options).await?;
    println!("stack: up\n{}", xtask::stack::summary(&state));
    Ok(())
}
