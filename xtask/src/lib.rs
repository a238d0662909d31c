//! calsync's dev tooling: the local stack, the test kit for integration tests, the local stand-ins
//! for API Gateway and the event source mapping, the demo and the CI command.
//!
//! `template.yaml` is the one description of the stack: [`template`] reads it and every other
//! module works from what it declares.

pub mod apt;
pub mod aws;
pub mod chromium;
pub mod ci;
pub mod ddb_json;
pub mod demo;
pub mod docker;
pub mod event_checks;
pub mod events;
pub mod front;
pub mod gateway;
pub mod moto;
pub mod paths;
pub mod poller;
pub mod process;
pub mod rie;
pub mod sam;
pub mod seed;
pub mod setup;
pub mod stack;
pub mod streams;
pub mod tables;
pub mod template;
pub mod testkit;
