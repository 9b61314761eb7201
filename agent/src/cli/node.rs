//! `wren node`.

use super::NodeArgs;

/// Runs `wren node`.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`wren node` is not implemented yet")
}
