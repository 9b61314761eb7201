//! `wren bgp`.

use super::BgpArgs;

/// Runs `wren bgp`.
pub async fn run(args: BgpArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`wren bgp` is not implemented yet")
}
