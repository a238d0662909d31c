//! calsync's dev tooling.

pub mod front;
pub mod poller;
