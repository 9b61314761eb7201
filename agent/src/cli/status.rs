//! `wren status`.

use super::StatusArgs;

/// Runs `wren status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`wren status` is not implemented yet")
}
