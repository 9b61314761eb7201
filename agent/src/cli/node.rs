//! `wren node list|rm`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wren_model::{Node, keys};
use wren_store::json::JsonStore;
use wren_store::{Store, StoreError};

use super::{NodeArgs, NodeCommand, Output, print_json};
use crate::daemon::registration::Liveness;
use crate::daemon::status::table;

/// How long `wren node rm --force` waits for a running agent to put its liveness key back,
/// when the key does not say how often its holder checks: a third of the default TTL, twice.
const DEFAULT_RECHECK: Duration = Duration::from_secs(20);

/// Makes sure no agent runs as `node` before it is removed. A live node is refused; with
/// `force`, its liveness key is taken away and the node counts as gone only if no agent puts
/// it back within two of its holder's check periods (so a running node keeps its routes and
/// pods).
async fn ensure_gone(store: &dyn Store, node: &str, force: bool) -> anyhow::Result<()> {
    let key = keys::liveness(node);
    let Some(kv) = store.get(&key).await? else {
        return Ok(());
    };
    let holder = Liveness::decode(&kv.value);
    let address = holder.address_text();
    if !force {
        anyhow::bail!(
            "node {node} is live (its agent at {address} holds liveness/{node}); stop that agent \
             first, or pass --force if it is gone"
        );
    }
    let recheck = holder
        .ttl_secs
        .map(|ttl| Duration::from_millis(ttl * 1000 / 3) * 2 + Duration::from_secs(1))
        .unwrap_or(DEFAULT_RECHECK);
    match store.delete(&key, Some(kv.mod_revision)).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => {}
        Err(e) if e.is_conflict() => {
            anyhow::bail!(
                "node {node}'s agent at {address} rewrote liveness/{node} meanwhile: it is running; \
                 nothing was removed"
            )
        }
        Err(e) => return Err(e.into()),
    }
    println!(
        "liveness/{node} taken away; waiting {}s for a running agent at {address} to put it back",
        recheck.as_secs()
    );
    let deadline = Instant::now() + recheck;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(back) = store.get(&key).await? {
            let now = Liveness::decode(&back.value).address_text();
            anyhow::bail!(
                "node {node}'s agent at {now} put liveness/{node} back: it is running; nothing \
                 was removed"
            );
        }
    }
    Ok(())
}

/// Runs `wren node`.
pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let store = super::store::open(&args.store).await?;
    match args.command {
        NodeCommand::List(format) => {
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
            if format.output == Output::Json {
                let rows: Vec<NodeRow> = nodes
                    .items
                    .iter()
                    .map(|n| NodeRow {
                        name: &n.value.name,
                        ipv4: n.value.ipv4,
                        ipv6: n.value.ipv6,
                        as_number: n.value.as_number.unwrap_or(cluster_as),
                        cluster_as: n.value.as_number.is_none(),
                        live: live.contains(&n.value.name),
                        blocks: blocks.get(&n.value.name).cloned().unwrap_or_default(),
                    })
                    .collect();
                return print_json(&rows);
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
        NodeCommand::Rm { node, force } => {
            ensure_gone(store.as_ref(), &node, force).await?;
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

/// One node in `wren node list -o json`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRow<'a> {
    name: &'a str,
    ipv4: Option<ipnet::Ipv4Net>,
    ipv6: Option<ipnet::Ipv6Net>,
    /// The AS the node speaks.
    as_number: u32,
    /// Whether that is the cluster's AS (the node sets none of its own).
    cluster_as: bool,
    /// Whether its agent holds its liveness key.
    live: bool,
    /// Blocks affine to it.
    blocks: Vec<IpNet>,
}
