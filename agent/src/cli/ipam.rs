//! `wren ipam`.

use super::IpamArgs;

/// Runs `wren ipam`.
pub async fn run(args: IpamArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`wren ipam` is not implemented yet")
}
