//! calsync's dev tooling.

pub mod chromium;
pub mod demo;
pub mod front;
pub mod poller;
pub mod sam;
