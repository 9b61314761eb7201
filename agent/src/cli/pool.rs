//! `wren pool`.

use super::PoolArgs;

/// Runs `wren pool`.
pub async fn run(args: PoolArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`wren pool` is not implemented yet")
}
