//! calsync's dev tooling: the local stack, the test kit for integration tests, the local stand-ins
//! for API Gateway and the event source mapping, the demo and the CI command.
//!
//! `template.yaml` is the one description of the stack: [`template`] reads it and every other
//! module works from what it declares.

// What xtask shares with the tests lives in testkit; ci.rs still reaches these as `crate::…`.
pub use testkit::{moto, paths, process};

pub mod chromium;
pub mod ci;
pub mod demo;
pub mod event_checks;
pub mod events;
pub mod front;
pub mod gateway;
pub mod poller;
pub mod sam;
pub mod setup;
pub mod stack;
