//! `google-emulator --bind 127.0.0.1:PORT [--client-id ID --client-secret S --redirect-uri URI...]`
//!
//! Serves the emulator until killed; prints `google-emulator listening on <base url>` once ready.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use google_emulator::{Emulator, Options};

struct Args {
    bind: SocketAddr,
    client_id: Option<String>,
    client_secret: Option<String>,
    redirect_uris: Vec<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut parsed = Args {
        bind: Options::default().bind,
        client_id: None,
        client_secret: None,
        redirect_uris: Vec::new(),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => {
                parsed.bind = value()?
                    .parse()
                    .context("--bind needs an address like 127.0.0.1:8089")?
            }
            "--client-id" => parsed.client_id = Some(value()?),
            "--client-secret" => parsed.client_secret = Some(value()?),
            "--redirect-uri" => parsed.redirect_uris.push(value()?),
            "--help" | "-h" => {
                println!(
                    "google-emulator --bind 127.0.0.1:PORT [--client-id ID --client-secret SECRET --redirect-uri URI ...]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}; try --help"),
        }
    }
    if parsed.client_id.is_some() != parsed.client_secret.is_some() {
        bail!("--client-id and --client-secret go together");
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
    let args = parse_args(std::env::args().skip(1))?;
    let running = Emulator::start(Options { bind: args.bind }).await?;
    if let (Some(id), Some(secret)) = (&args.client_id, &args.client_secret) {
        running.register_client(id, secret, args.redirect_uris.clone());
    }
    println!("google-emulator listening on {}", running.base_url);
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    Ok(())
}
