//! `cargo run -p xtask --example sam`: the `sam build` / `sam local invoke` checks, until the
//! lead wires `cargo xtask sam` to `xtask::sam::run_sam_checks`.

use std::path::Path;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    xtask::sam::run_sam_checks(&root).await
}
