//! calsync's library: everything the three Lambda functions do, behind plain async handlers.
//!
//! The functions' `main.rs` files only read [`config`], build clients once per cold start and hand
//! events to the handlers here, so every handler can be called from a test with a JSON event.
//! Domain logic talks to small traits (the grant, flow and sync-state stores, the Google clients);
//! DynamoDB and Google adapters implement them, and unit tests use in-memory fakes.
//! `ARCHITECTURE.md` at the repository root maps the modules.

pub mod aws;
pub mod calendar;
pub mod config;
pub mod flows;
pub mod google_oauth;
pub mod grants;
pub mod http;
pub mod mapping;
pub mod secrets;
pub mod sync;
pub mod sync_state;
pub mod telemetry;
pub mod tokens;
pub mod vault;
