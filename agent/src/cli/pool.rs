//! `wren pool add|list|rm|disable|enable`: address pools (`pools/<name>`).

use wren_ipam::{Ipam, PoolSpec, Usage};
use wren_model::{Encapsulation, EncapsulationMode, Pool};

use super::{EncapArg, EncapModeArg, Output, PoolArgs, PoolCommand, print_json};
use crate::daemon::status::table;

/// Runs `wren pool`.
pub async fn run(args: PoolArgs) -> anyhow::Result<()> {
    let ipam = Ipam::new(super::store::open_reachable(&args.store).await?);
    match args.command {
        PoolCommand::Add {
            name,
            cidr,
            block_size,
            encap,
            encap_mode,
            nat_outgoing,
            disabled,
            communities,
        } => {
            let spec = PoolSpec {
                name,
                cidr,
                block_size,
                encapsulation: match encap {
                    EncapArg::None => Encapsulation::None,
                    EncapArg::Vxlan => Encapsulation::Vxlan,
                    EncapArg::Ipip => Encapsulation::Ipip,
                },
                encapsulation_mode: match encap_mode {
                    EncapModeArg::Always => EncapsulationMode::Always,
                    EncapModeArg::CrossSubnet => EncapsulationMode::CrossSubnet,
                },
                nat_outgoing,
                disabled,
                communities,
            };
            let added = ipam.add_pool(&spec).await?;
            println!(
                "pool {} added: {} in /{} blocks, encapsulation {}{}",
                added.name,
                added.pool.cidr,
                added.pool.block_size,
                encapsulation(&added.pool),
                if added.pool.disabled {
                    ", disabled"
                } else {
                    ""
                }
            );
        }
        PoolCommand::List(format) => {
            let usage = ipam.usage().await?;
            if format.output == Output::Json {
                let rows: Vec<PoolRow> = usage.pools.iter().map(PoolRow::of).collect();
                print_json(&rows)?;
            } else if usage.pools.is_empty() {
                println!("no pools (add one with `wren pool add NAME --cidr CIDR`)");
            } else {
                print!("{}", pools_table(&usage));
            }
        }
        PoolCommand::Rm { name } => {
            let blocks = ipam.remove_pool(&name).await?;
            let plural = if blocks == 1 { "" } else { "s" };
            println!("pool {name} removed ({blocks} empty block{plural} freed)");
        }
        PoolCommand::Disable { name } => {
            ipam.set_pool_disabled(&name, true).await?;
            println!("pool {name} disabled: it hands out no new addresses; existing ones stay");
        }
        PoolCommand::Communities {
            name,
            communities,
            clear,
        } => {
            let pool = if communities.is_empty() && !clear {
                ipam.get_pool(&name).await?
            } else {
                ipam.set_pool_communities(&name, communities).await?
            };
            println!(
                "pool {name} communities: {}",
                community_list(&pool.pool.communities)
            );
        }
        PoolCommand::Enable { name } => {
            ipam.set_pool_disabled(&name, false).await?;
            println!("pool {name} enabled");
        }
    }
    Ok(())
}

/// One pool in `wren pool list -o json`: its document's fields, and its usage.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PoolRow<'a> {
    name: &'a str,
    #[serde(flatten)]
    pool: &'a Pool,
    /// Blocks claimed from the pool.
    blocks: usize,
    /// Blocks the pool can be cut into.
    block_capacity: u128,
    /// Addresses allocated.
    used: u64,
}

impl<'a> PoolRow<'a> {
    fn of(usage: &'a wren_ipam::PoolUsage) -> Self {
        PoolRow {
            name: &usage.name,
            pool: &usage.pool,
            blocks: usage.blocks.len(),
            block_capacity: usage.block_capacity,
            used: usage.used(),
        }
    }
}

/// Every pool with its settings and usage: blocks claimed of blocks it holds, addresses
/// allocated of addresses it holds.
pub(super) fn pools_table(usage: &Usage) -> String {
    let rows: Vec<Vec<String>> = usage
        .pools
        .iter()
        .map(|p| {
            let host_bits = p.pool.cidr.max_prefix_len() - p.pool.cidr.prefix_len();
            vec![
                p.name.clone(),
                p.pool.cidr.to_string(),
                format!("/{}", p.pool.block_size),
                encapsulation(&p.pool),
                if p.pool.nat_outgoing { "yes" } else { "no" }.to_owned(),
                if p.pool.disabled {
                    "disabled"
                } else {
                    "enabled"
                }
                .to_owned(),
                format!("{}/{}", p.blocks.len(), count(p.block_capacity)),
                format!(
                    "{}/{}",
                    p.used(),
                    count(1u128.checked_shl(host_bits.into()).unwrap_or(u128::MAX))
                ),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "CIDR", "BLOCK", "ENCAP", "NAT", "STATE", "BLOCKS", "USED",
        ],
        &rows,
    )
}

/// A count as a person reads it: `1024`, or `2^74` for the sizes of IPv6 ranges.
fn count(n: u128) -> String {
    if n.is_power_of_two() && n > 1 << 24 {
        format!("2^{}", n.trailing_zeros())
    } else if n == u128::MAX {
        "2^128".to_owned()
    } else {
        n.to_string()
    }
}

/// `65000:1, 65000:1:2`, or `none`.
pub(super) fn community_list(communities: &[wren_model::Community]) -> String {
    if communities.is_empty() {
        return "none".to_owned();
    }
    let text: Vec<String> = communities.iter().map(ToString::to_string).collect();
    text.join(", ")
}

/// `vxlan (cross-subnet)`, `ipip (always)`, `none`.
fn encapsulation(pool: &Pool) -> String {
    let mode = match pool.encapsulation_mode {
        EncapsulationMode::Always => "always",
        EncapsulationMode::CrossSubnet => "cross-subnet",
    };
    match pool.encapsulation {
        Encapsulation::None => "none".to_owned(),
        Encapsulation::Vxlan => format!("vxlan ({mode})"),
        Encapsulation::Ipip => format!("ipip ({mode})"),
    }
}
