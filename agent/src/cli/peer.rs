//! `wren peer`.

use super::PeerArgs;

/// Runs `wren peer`.
pub async fn run(args: PeerArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`wren peer` is not implemented yet")
}
