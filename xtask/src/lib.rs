//! calsync's dev tooling, grouped by what it is:
//! - [`local_aws`]: the local stand-ins for AWS: the stack (what CloudFormation would create, as
//!   long-running processes), the API Gateway in front of the HTTP functions and the event source
//!   mapping that feeds event-sync from the Events table's stream;
//! - [`checks`]: what `cargo xtask test` verifies beyond `cargo test`: the sample events under the
//!   RIE, the browser scenarios, and `sam build` plus `sam local invoke` in Docker;
//! - what the checks need on the machine: [`apt`] (Debian packages), [`docker`] (the engine, the
//!   local Lambda base image, the address containers reach this machine at), [`chromium`];
//! - the commands: [`setup`], [`regenerate_samples`], [`demo`], [`ci`], [`bench`] (`main.rs`
//!   dispatches).
//!
//! What the tests need too (moto, the template, tables, secrets, streams, the RIE) is in
//! `testkit`; `template.yaml` is the one description of the stack that both read.

pub mod apt;
pub mod bench;
pub mod checks;
pub mod chromium;
pub mod ci;
pub mod demo;
pub mod docker;
pub mod local_aws;
pub mod regenerate_samples;
pub mod setup;
