//! `wren agent`.

use super::AgentArgs;
use crate::config::AgentConfig;

/// Runs `wren agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args)?;
    if args.print_config {
        print!("{}", toml::to_string(&config.to_file())?);
        return Ok(());
    }
    anyhow::bail!("`wren agent` is not implemented yet")
}
