//! calsync's library: everything the four Lambda functions do, behind plain async handlers.
//!
//! The functions' `main.rs` files only read [`config`], build clients once per cold start and hand
//! events to the handlers here, so every handler can be called from a test with a JSON event.
//! Domain logic talks to small traits (the grant, flow and sync-state stores, the Google clients),
//! bundled per handler into one ports trait ([`sync::SyncPorts`], [`http::CallbackPorts`]). The
//! DynamoDB adapters and their in-memory fakes live in [`store`], one file per table; Google's
//! adapters in [`calendar`] and [`google_oauth`]; lifecycle events for the app in [`lifecycle`];
//! CloudWatch metrics in [`metrics`].
//! `ARCHITECTURE.md` at the repository root maps the modules.

pub mod aws;
pub mod calendar;
pub mod config;
pub mod flows;
pub mod google_oauth;
pub mod grants;
pub mod http;
pub mod lifecycle;
pub mod mapping;
pub mod metrics;
pub mod resync;
pub mod secrets;
pub mod store;
pub mod sync;
pub mod sync_state;
pub mod telemetry;
pub mod tokens;
pub mod vault;
