//! Logging: JSON lines through `tracing`, the shape CloudWatch Logs Insights reads best.
//!
//! Secret values never reach a log line because they are `secrecy` types whose `Debug` prints
//! `[REDACTED]`; tests scan captured output to hold that.

use tracing_subscriber::{
    filter::Targets, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

/// Installs the JSON subscriber on stdout. The level comes from Lambda's `AWS_LAMBDA_LOG_LEVEL`
/// (the template's `LoggingConfig`, changeable without a deploy of code), else `RUST_LOG` (a
/// filter such as `calsync=debug` for local runs), else `info`.
pub fn init() {
    init_with_writer(std::io::stdout);
}

/// Same as [`init`] with another writer (tests capture logs this way). A second call is a no-op.
/// The metrics' EMF lines ([`crate::metrics`]) go to the same writer, a line each.
pub fn init_with_writer<W>(writer: W)
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    let metrics = writer.clone();
    crate::metrics::set_writer(Box::new(move |line: &str| {
        use std::io::Write;
        let mut out = metrics.make_writer();
        // One write, so a line never interleaves with another writer's.
        let _ = out.write_all(format!("{line}\n").as_bytes());
    }));
    // `Targets`, not `EnvFilter`: the same `level` and `target=level` syntax without the regex
    // engine EnvFilter links (about 300 KB of every binary). A value it cannot read means `info`.
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|level| level.to_lowercase())
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|filter| filter.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(writer)
        .with_current_span(false)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(true)
        .without_time()
        .with_ansi(false);
    let _ = tracing_subscriber::registry()
        .with(json)
        .with(filter)
        .try_init();
}
