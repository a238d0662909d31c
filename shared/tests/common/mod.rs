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
