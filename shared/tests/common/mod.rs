//! Helpers the `shared` integration tests share: a test stack with the configuration and clients
//! on it, and the log capture their leak scans read.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use calsync::{aws::Clients, config::Config};
use testkit::TestStack;

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// A tracing writer appending every line to one buffer shared with the test.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A fresh test stack (logs captured), the configuration the functions read from its environment,
/// and the AWS clients on it.
pub async fn stack_with_config() -> (TestStack, Config, Clients) {
    capture_logs();
    let stack = TestStack::start().await.expect("test stack");
    let config = Config::from_source(&stack.env).expect("config from the stack's env");
    let clients = Clients::new(&stack.sdk);
    (stack, config, clients)
}

/// Installs the capturing subscriber once per test binary and returns its buffer.
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        calsync::telemetry::init_with_writer(move || writer.clone());
        buffer
    })
    .clone()
}

/// Every EMF line captured so far (the metrics' lines share the log writer), each checked against
/// EMF's rules: one JSON object whose `_aws` has a millisecond `Timestamp` and directives in the
/// `calsync` namespace, every dimension a string on the root, every metric a number there with a
/// CloudWatch unit.
pub fn emf_documents() -> Vec<serde_json::Value> {
    let logs = String::from_utf8_lossy(&capture_logs().lock().unwrap()).into_owned();
    logs.lines()
        .filter(|line| line.contains("\"_aws\""))
        .map(|line| {
            let doc: serde_json::Value =
                serde_json::from_str(line).expect("an EMF line is one JSON object");
            let aws = &doc["_aws"];
            assert!(
                aws["Timestamp"]
                    .as_i64()
                    .is_some_and(|t| t > 1_600_000_000_000)
            );
            let directives = aws["CloudWatchMetrics"].as_array().expect("directives");
            assert!(!directives.is_empty());
            for directive in directives {
                assert_eq!(directive["Namespace"], calsync::metrics::NAMESPACE);
                for set in directive["Dimensions"].as_array().expect("dimension sets") {
                    for key in set.as_array().expect("a dimension set") {
                        let key = key.as_str().unwrap();
                        assert!(doc[key].is_string(), "dimension {key} in {line}");
                    }
                }
                for metric in directive["Metrics"].as_array().expect("metrics") {
                    let name = metric["Name"].as_str().unwrap();
                    assert!(doc[name].is_number(), "{name} has no value in {line}");
                    assert!(
                        ["Count", "Milliseconds"].contains(&metric["Unit"].as_str().unwrap()),
                        "{line}"
                    );
                }
            }
            doc
        })
        .collect()
}

/// The sum of `metric` over the EMF lines of `function` captured so far (where `outcome` is
/// given, only those of that `Outcome`).
pub fn metric_total(function: &str, metric: &str, outcome: Option<&str>) -> f64 {
    emf_documents()
        .iter()
        .filter(|doc| doc["Function"] == function)
        .filter(|doc| outcome.is_none_or(|o| doc["Outcome"] == o))
        .filter_map(|doc| doc[metric].as_f64())
        .sum()
}
