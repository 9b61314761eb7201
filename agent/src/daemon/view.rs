//! What the agent knows of the cluster: the documents under the prefixes it watches, decoded.
//!
//! The view is rebuilt from the raw watch snapshots whenever one changes, and everything the
//! agent decides (its BGP peers, what it exports, which kernel routes it wants) is a pure
//! function of the view. A document that does not parse is logged and left out rather than
//! stopping the agent: one bad write by another tool must not take the node's routing down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use wren_model::{ClusterConfig, Node, Peer, Pool, Workload, keys};

/// Raw documents under one watched prefix: key (relative to the store prefix) → value.
pub type Snapshot = BTreeMap<String, Vec<u8>>;

/// One IPAM block as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockInfo {
    /// The node the block is affine to.
    pub affinity: Option<String>,
    /// Addresses other nodes borrowed: address → borrowing node.
    pub borrowed: BTreeMap<IpAddr, String>,
    /// Number of addresses in use.
    pub used: u32,
}

/// The decoded cluster state one agent works from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// `config/cluster`, or the defaults when it is absent.
    pub cluster: ClusterConfig,
    /// Every registered node by name.
    pub nodes: BTreeMap<String, Node>,
    /// Nodes whose liveness key exists (their agent is running).
    pub live: BTreeSet<String>,
    /// Explicit BGP peers by name.
    pub peers: BTreeMap<String, Peer>,
    /// Address pools by name.
    pub pools: BTreeMap<String, Pool>,
    /// This node's block affinities that are confirmed.
    pub confirmed_affinities: BTreeSet<IpNet>,
    /// Every IPAM block.
    pub blocks: BTreeMap<IpNet, BlockInfo>,
    /// This node's workloads.
    pub workloads: Vec<Workload>,
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(doc) => Some(doc),
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring a document that does not parse");
            None
        }
    }
}

/// Keeps the documents of a snapshot whose key starts with `prefix`, with the rest of the key.
fn under<'a>(
    snapshot: &'a Snapshot,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
    snapshot
        .range(prefix.to_owned()..)
        .take_while(move |(k, _)| k.starts_with(prefix))
        .map(move |(k, v)| (&k[prefix.len()..], v.as_slice()))
}

impl ClusterView {
    /// Decodes cluster config, nodes, liveness and peers.
    pub fn set_cluster(
        &mut self,
        config: &Snapshot,
        nodes: &Snapshot,
        liveness: &Snapshot,
        peers: &Snapshot,
    ) {
        self.cluster = config
            .get(keys::CLUSTER_CONFIG)
            .and_then(|v| decode(keys::CLUSTER_CONFIG, v))
            .unwrap_or_default();
        self.nodes = under(nodes, keys::NODES)
            .filter_map(|(name, v)| Some((name.to_owned(), decode::<Node>(name, v)?)))
            .collect();
        self.live = under(liveness, keys::LIVENESS)
            .map(|(name, _)| name.to_owned())
            .collect();
        self.peers = under(peers, keys::PEERS)
            .filter_map(|(name, v)| Some((name.to_owned(), decode::<Peer>(name, v)?)))
            .collect();
    }

    /// Decodes the pools.
    pub fn set_pools(&mut self, pools: &Snapshot) {
        self.pools = under(pools, keys::POOLS)
            .filter_map(|(name, v)| Some((name.to_owned(), decode::<Pool>(name, v)?)))
            .collect();
    }

    /// Decodes this node's workloads.
    pub fn set_workloads(&mut self, node: &str, workloads: &Snapshot) {
        let prefix = keys::node_workloads(node);
        self.workloads = under(workloads, &prefix)
            .filter_map(|(key, v)| decode::<Workload>(key, v))
            .collect();
    }

    /// Decodes this node's confirmed affinities.
    pub fn set_affinities(&mut self, node: &str, affinities: &Snapshot) {
        let prefix = keys::node_affinities(node);
        self.confirmed_affinities = under(affinities, &prefix)
            .filter_map(|(segment, v)| {
                let cidr = keys::parse_cidr_segment(segment)?;
                let doc: wren_ipam::affinity::Affinity = decode(segment, v)?;
                (doc.state == wren_ipam::affinity::AffinityState::Confirmed).then_some(cidr)
            })
            .collect();
    }

    /// Decodes every block.
    pub fn set_blocks(&mut self, blocks: &Snapshot) {
        self.blocks = under(blocks, keys::BLOCKS)
            .filter_map(|(segment, v)| {
                let block = match wren_ipam::block::Block::from_json(v) {
                    Ok(block) => block,
                    Err(e) => {
                        tracing::warn!(block = segment, error = %e, "ignoring a block that does not parse");
                        return None;
                    }
                };
                let borrowed = block
                    .assignments()
                    .filter_map(|(address, a)| Some((address, a.borrowed_by.clone()?)))
                    .collect();
                let info = BlockInfo {
                    affinity: block.affinity().map(str::to_owned),
                    borrowed,
                    used: block.used(),
                };
                Some((block.cidr(), info))
            })
            .collect();
    }

    /// The AS a node speaks: its own or the cluster's.
    pub fn as_of(&self, node: &Node) -> u32 {
        node.as_number.unwrap_or(self.cluster.as_number)
    }

    /// This node's blocks: confirmed affinity and the block document agrees.
    pub fn local_blocks(&self, node: &str) -> BTreeSet<IpNet> {
        self.confirmed_affinities
            .iter()
            .filter(|cidr| {
                self.blocks
                    .get(cidr)
                    .is_some_and(|b| b.affinity.as_deref() == Some(node))
            })
            .copied()
            .collect()
    }

    /// Host routes for the addresses this node borrowed from other nodes' blocks.
    pub fn borrowed_addresses(&self, node: &str) -> BTreeSet<IpNet> {
        self.blocks
            .values()
            .filter(|b| b.affinity.as_deref() != Some(node))
            .flat_map(|b| b.borrowed.iter())
            .filter(|(_, borrower)| borrower.as_str() == node)
            .map(|(address, _)| IpNet::from(*address))
            .collect()
    }

    /// Addresses in use by this node: used addresses of its blocks plus borrowed ones.
    pub fn addresses_in_use(&self, node: &str) -> u64 {
        let own: u64 = self
            .local_blocks(node)
            .iter()
            .filter_map(|cidr| self.blocks.get(cidr))
            .map(|b| u64::from(b.used).saturating_sub(b.borrowed.len() as u64))
            .sum();
        own + self.borrowed_addresses(node).len() as u64
    }
}
