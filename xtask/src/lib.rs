//! calsync's dev tooling.
