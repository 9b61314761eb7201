//! `wren node list|rm`.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use wren_model::{Node, keys};
use wren_store::StoreError;
use wren_store::json::JsonStore;

use super::{NodeArgs, NodeCommand};
use crate::daemon::status::table;

/// Runs `wren node`.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let store = super::store::open(&args.store).await?;
    match args.command {
        NodeCommand::List => {
            let cluster_as = store
                .get_json::<wren_model::ClusterConfig>(keys::CLUSTER_CONFIG)
                .await?
                .map(|c| c.value.as_number)
                .unwrap_or(wren_model::DEFAULT_AS);
            let nodes = store.list_json::<Node>(keys::NODES).await?;
            let live: BTreeSet<String> = store
                .list(keys::LIVENESS)
                .await?
                .items
                .into_iter()
                .map(|kv| kv.key.trim_start_matches(keys::LIVENESS).to_owned())
                .collect();
            let mut blocks: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
            for kv in store.list(keys::AFFINITY).await?.items {
                if let Some((node, cidr)) = wren_ipam::affinity::parse_key(&kv.key) {
                    blocks.entry(node.to_owned()).or_default().push(cidr);
                }
            }
            let rows: Vec<Vec<String>> = nodes
                .items
                .iter()
                .map(|n| {
                    let node = &n.value;
                    let addresses: Vec<String> = node
                        .ipv4
                        .map(|a| a.to_string())
                        .into_iter()
                        .chain(node.ipv6.map(|a| a.to_string()))
                        .collect();
                    let asn = match node.as_number {
                        Some(asn) => asn.to_string(),
                        None => format!("{cluster_as} (cluster)"),
                    };
                    let node_blocks: Vec<String> = blocks
                        .get(&node.name)
                        .map(|b| b.iter().map(ToString::to_string).collect())
                        .unwrap_or_default();
                    vec![
                        node.name.clone(),
                        addresses.join(","),
                        asn,
                        if live.contains(&node.name) {
                            "yes"
                        } else {
                            "no"
                        }
                        .to_owned(),
                        node_blocks.join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["NAME", "ADDRESSES", "AS", "LIVE", "BLOCKS"], &rows)
            );
        }
        NodeCommand::Rm { node } => {
            if store.get(&keys::liveness(&node)).await?.is_some() {
                anyhow::bail!(
                    "node {node} is live (its agent holds liveness/{node}); stop that agent first"
                );
            }
            let existed = match store.delete(&keys::node(&node), None).await {
                Ok(_) => true,
                Err(StoreError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            let released = wren_ipam::Ipam::new(store.clone())
                .release_node_blocks(&node)
                .await?;
            if !existed && released.released_blocks.is_empty() && released.kept_blocks.is_empty() {
                anyhow::bail!("no node named {node}");
            }
            if existed {
                println!("node {node} removed");
            }
            for block in &released.released_blocks {
                println!("block {block} freed");
            }
            for (block, used) in &released.kept_blocks {
                println!(
                    "block {block} still holds {used} address(es); it is freed when they are released \
                     (see `wren ipam check`)"
                );
            }
        }
    }
    Ok(())
}
