//! calsync's dev tooling.

pub mod demo;
pub mod front;
pub mod poller;
