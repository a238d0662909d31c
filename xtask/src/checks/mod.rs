//! The checks `cargo xtask test` runs beyond `cargo test`.

pub mod browser;
pub mod load;
pub mod sam;
pub mod sample_events;
#[cfg(test)]
mod template_hardening;
