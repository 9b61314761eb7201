//! What the agent knows of the cluster: the documents under the prefixes it watches, decoded.
//!
//! The view is kept current by the watch tasks ([`super::reflector`]): each document is
//! decoded once, when its put arrives, into the part of the view its prefix feeds ([`Part`]);
//! a delete removes it, and a fresh listing (after a watch ended) replaces the part wholesale.
//! Everything the agent decides (its BGP peers, what it exports, which kernel routes it
//! wants) is a pure function of the view. A document that does not parse is logged and left
//! out rather than stopping the agent: one bad write by another tool must not take the
//! node's routing down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use wren_model::{ClusterConfig, Namespace, Node, Peer, PodMeta, Pool, Workload, keys};
use wren_policy::NetworkPolicy;

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
    /// This node's workloads, by their key under the node's workload prefix.
    pub workloads: BTreeMap<String, Workload>,
    /// Network policies, by `namespace/name`.
    pub policies: BTreeMap<String, NetworkPolicy>,
    /// Namespaces' labels, by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods' labels and named ports, by `namespace/name`.
    pub pod_meta: BTreeMap<String, PodMeta>,
    /// Every node's workloads that carry a Kubernetes identity, by their key under
    /// `workloads/` (`<node>/<containerID>/<ifname>`): network policy selects pods wherever
    /// they run, so each node knows every pod's addresses.
    pub pods: BTreeMap<String, Workload>,
    /// The keys under `cluster/` (the identity and the rebuild reports): not routing data,
    /// but a change wakes a pass, which checks the identity ([`super::identity`]).
    pub cluster_records: BTreeSet<String>,
    /// The documents this node writes back should the datastore lose them, by key, as
    /// stored: the cluster configuration, pools, peers, this node's document, affinities
    /// and workloads, the network policies, namespaces and pods' labels (every agent holds
    /// them all: a lost policy would open its pods), and the blocks affine to it or lending
    /// it an address
    /// ([`super::identity::Holdings`]).
    pub held: BTreeMap<String, Vec<u8>>,
}

/// The part of the view one watched prefix feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// `config/cluster`.
    Cluster,
    /// `nodes/`.
    Nodes,
    /// `liveness/`.
    Liveness,
    /// `peers/`.
    Peers,
    /// `pools/`.
    Pools,
    /// This node's affinities.
    Affinities,
    /// `ipam/blocks/`.
    Blocks,
    /// This node's workloads.
    Workloads,
    /// `cluster/`: the identity and the rebuild reports.
    Records,
    /// `policies/`.
    Policies,
    /// `namespaces/`.
    Namespaces,
    /// `pods/`: pods' labels and named ports.
    PodMeta,
    /// `workloads/`: every node's pods, for network policy's selectors.
    Pods,
}

impl Part {
    /// Every part: the view is complete once each has been listed.
    pub const ALL: [Part; 13] = [
        Part::Cluster,
        Part::Nodes,
        Part::Liveness,
        Part::Peers,
        Part::Pools,
        Part::Affinities,
        Part::Blocks,
        Part::Workloads,
        Part::Records,
        Part::Policies,
        Part::Namespaces,
        Part::PodMeta,
        Part::Pods,
    ];

    /// The prefix (relative to the store's) that feeds this part on node `node`.
    pub fn prefix(self, node: &str) -> String {
        match self {
            Part::Cluster => keys::CLUSTER_CONFIG.to_owned(),
            Part::Nodes => keys::NODES.to_owned(),
            Part::Liveness => keys::LIVENESS.to_owned(),
            Part::Peers => keys::PEERS.to_owned(),
            Part::Pools => keys::POOLS.to_owned(),
            Part::Affinities => keys::node_affinities(node),
            Part::Blocks => keys::BLOCKS.to_owned(),
            Part::Workloads => keys::node_workloads(node),
            Part::Records => keys::CLUSTER.to_owned(),
            Part::Policies => keys::POLICIES.to_owned(),
            Part::Namespaces => keys::NAMESPACES.to_owned(),
            Part::PodMeta => keys::PODS.to_owned(),
            Part::Pods => keys::WORKLOADS.to_owned(),
        }
    }

    /// Whether this part holds any document to write back. [`Part::Pods`] never does, and
    /// must not touch what [`Part::Workloads`] holds under the same keys.
    fn holds(self) -> bool {
        !matches!(self, Part::Liveness | Part::Records | Part::Pods)
    }

    /// Whether `node` writes back the document `key` of this part, decoded as `block` for a
    /// block, should the datastore lose it.
    fn held(self, node: &str, key: &str, block: Option<&BlockInfo>) -> bool {
        match self {
            Part::Cluster
            | Part::Pools
            | Part::Peers
            | Part::Affinities
            | Part::Workloads
            | Part::Policies
            | Part::Namespaces
            | Part::PodMeta => true,
            Part::Nodes => key == keys::node(node),
            Part::Blocks => block.is_some_and(|b| {
                b.affinity.as_deref() == Some(node) || b.borrowed.values().any(|n| n == node)
            }),
            Part::Liveness | Part::Records | Part::Pods => false,
        }
    }
}

/// Decodes a document; fields this version does not know (a newer one wrote them) are set
/// aside and named in the debug log, as the rest of the document still holds.
fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match wren_store::json::decode_with_unknown(key, value) {
        Ok((doc, unknown)) => {
            if !unknown.is_empty() {
                tracing::debug!(key, fields = ?unknown.names(), "fields this version does not know");
            }
            Some(doc)
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring a document that does not parse");
            None
        }
    }
}

/// A stored policy, validated as `wren policy apply` validates it: one that is not valid
/// is left out rather than half enforced.
fn decode_policy(key: &str, value: &[u8]) -> Option<NetworkPolicy> {
    let document: serde_json::Value = decode(key, value)?;
    match wren_policy::decode_value(0, document) {
        Ok(policy) => Some(policy),
        Err(e) => {
            tracing::warn!(key, error = %e, "ignoring a policy that is not valid");
            None
        }
    }
}

/// A workload as policy sees it: only one with a Kubernetes identity is a pod.
fn decode_pod(key: &str, value: &[u8]) -> Option<Workload> {
    decode::<Workload>(key, value).filter(|w| w.pod_namespace.is_some() && w.pod_name.is_some())
}

fn decode_block(key: &str, value: &[u8]) -> Option<(IpNet, BlockInfo)> {
    let block = match wren_ipam::block::Block::from_json(value) {
        Ok(block) => block,
        Err(e) => {
            tracing::warn!(block = key, error = %e, "ignoring a block that does not parse");
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
}

/// Sets `map[key]` to `value` (removes it for `None`); whether that changed anything.
fn set<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) -> bool {
    match value {
        Some(v) if map.get(&key) == Some(&v) => false,
        Some(v) => {
            map.insert(key, v);
            true
        }
        None => map.remove(&key).is_some(),
    }
}

/// Replaces `here` with `fresh` when they differ; whether they did.
fn take_if_changed<T: PartialEq>(here: &mut T, fresh: T) -> bool {
    let changed = *here != fresh;
    if changed {
        *here = fresh;
    }
    changed
}

/// Puts `key` in `set` or takes it out; whether that changed anything.
fn mark<K: Ord>(set: &mut BTreeSet<K>, key: K, present: bool) -> bool {
    if present {
        set.insert(key)
    } else {
        set.remove(&key)
    }
}

impl ClusterView {
    /// Applies a put of `key` (relative to the store's prefix) to `part`, decoding its value;
    /// whether the view changed. A value that does not decode takes the document out.
    pub fn put(&mut self, part: Part, node: &str, key: &str, value: &[u8]) -> bool {
        self.update(part, node, key, Some(value))
    }

    /// Applies a delete of `key` to `part`; whether the view changed.
    pub fn delete(&mut self, part: Part, node: &str, key: &str) -> bool {
        self.update(part, node, key, None)
    }

    /// Replaces `part` with a fresh listing of its prefix; whether the view changed.
    pub fn replace<'a>(
        &mut self,
        part: Part,
        node: &str,
        listing: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> bool {
        let mut fresh = ClusterView::default();
        for (key, value) in listing {
            fresh.put(part, node, key, value);
        }
        let prefix = part.prefix(node);
        let held_changed = part.holds() && {
            let mut held = self.held.clone();
            held.retain(|key, _| !key.starts_with(prefix.as_str()));
            held.append(&mut fresh.held);
            take_if_changed(&mut self.held, held)
        };
        held_changed
            | match part {
                Part::Cluster => take_if_changed(&mut self.cluster, fresh.cluster),
                Part::Nodes => take_if_changed(&mut self.nodes, fresh.nodes),
                Part::Liveness => take_if_changed(&mut self.live, fresh.live),
                Part::Peers => take_if_changed(&mut self.peers, fresh.peers),
                Part::Pools => take_if_changed(&mut self.pools, fresh.pools),
                Part::Affinities => {
                    take_if_changed(&mut self.confirmed_affinities, fresh.confirmed_affinities)
                }
                Part::Blocks => take_if_changed(&mut self.blocks, fresh.blocks),
                Part::Workloads => take_if_changed(&mut self.workloads, fresh.workloads),
                Part::Records => take_if_changed(&mut self.cluster_records, fresh.cluster_records),
                Part::Policies => take_if_changed(&mut self.policies, fresh.policies),
                Part::Namespaces => take_if_changed(&mut self.namespaces, fresh.namespaces),
                Part::PodMeta => take_if_changed(&mut self.pod_meta, fresh.pod_meta),
                Part::Pods => take_if_changed(&mut self.pods, fresh.pods),
            }
    }

    fn update(&mut self, part: Part, node: &str, key: &str, value: Option<&[u8]>) -> bool {
        let changed = self.update_decoded(part, node, key, value);
        if !part.holds() {
            return changed;
        }
        let block = match part {
            Part::Blocks => key
                .strip_prefix(keys::BLOCKS)
                .and_then(keys::parse_cidr_segment)
                .and_then(|cidr| self.blocks.get(&cidr)),
            _ => None,
        };
        let held = match value {
            Some(value) if part.held(node, key, block) && self.decoded(part, node, key) => {
                Some(value.to_vec())
            }
            _ => None,
        };
        set(&mut self.held, key.to_owned(), held) | changed
    }

    /// Whether the document `key` of `part` is in the decoded view (it parsed).
    fn decoded(&self, part: Part, node: &str, key: &str) -> bool {
        if part == Part::Cluster {
            return key == keys::CLUSTER_CONFIG;
        }
        let Some(rest) = key.strip_prefix(part.prefix(node).as_str()) else {
            return false;
        };
        let cidr = || keys::parse_cidr_segment(rest);
        match part {
            Part::Cluster => false,
            Part::Nodes => self.nodes.contains_key(rest),
            Part::Peers => self.peers.contains_key(rest),
            Part::Pools => self.pools.contains_key(rest),
            Part::Affinities => cidr().is_some_and(|c| self.confirmed_affinities.contains(&c)),
            Part::Blocks => cidr().is_some_and(|c| self.blocks.contains_key(&c)),
            Part::Workloads => self.workloads.contains_key(rest),
            Part::Policies => self.policies.contains_key(rest),
            Part::Namespaces => self.namespaces.contains_key(rest),
            Part::PodMeta => self.pod_meta.contains_key(rest),
            Part::Liveness | Part::Records | Part::Pods => false,
        }
    }

    fn update_decoded(&mut self, part: Part, node: &str, key: &str, value: Option<&[u8]>) -> bool {
        if part == Part::Cluster {
            if key != keys::CLUSTER_CONFIG {
                return false;
            }
            let config = value.and_then(|v| decode(key, v)).unwrap_or_default();
            let changed = self.cluster != config;
            self.cluster = config;
            return changed;
        }
        let Some(rest) = key.strip_prefix(part.prefix(node).as_str()) else {
            return false;
        };
        match part {
            Part::Cluster => false,
            Part::Nodes => set(
                &mut self.nodes,
                rest.to_owned(),
                value.and_then(|v| decode(key, v)),
            ),
            Part::Liveness => mark(&mut self.live, rest.to_owned(), value.is_some()),
            Part::Peers => set(
                &mut self.peers,
                rest.to_owned(),
                value.and_then(|v| decode(key, v)),
            ),
            Part::Pools => set(
                &mut self.pools,
                rest.to_owned(),
                value.and_then(|v| decode(key, v)),
            ),
            Part::Affinities => {
                let Some(cidr) = keys::parse_cidr_segment(rest) else {
                    return false;
                };
                let confirmed = value
                    .and_then(|v| decode::<wren_ipam::affinity::Affinity>(key, v))
                    .is_some_and(|a| a.state == wren_ipam::affinity::AffinityState::Confirmed);
                mark(&mut self.confirmed_affinities, cidr, confirmed)
            }
            Part::Blocks => {
                let Some(cidr) = keys::parse_cidr_segment(rest) else {
                    return false;
                };
                let info = value
                    .and_then(|v| decode_block(key, v))
                    .map(|(_, info)| info);
                set(&mut self.blocks, cidr, info)
            }
            Part::Workloads => set(
                &mut self.workloads,
                rest.to_owned(),
                value.and_then(|v| decode(key, v)),
            ),
            Part::Records => mark(&mut self.cluster_records, rest.to_owned(), value.is_some()),
            Part::Policies => set(
                &mut self.policies,
                rest.to_owned(),
                value.and_then(|v| decode_policy(key, v)),
            ),
            Part::Namespaces => set(
                &mut self.namespaces,
                rest.to_owned(),
                value.and_then(|v| decode(key, v)),
            ),
            Part::PodMeta => set(
                &mut self.pod_meta,
                rest.to_owned(),
                value.and_then(|v| decode(key, v)),
            ),
            Part::Pods => set(
                &mut self.pods,
                rest.to_owned(),
                value.and_then(|v| decode_pod(key, v)),
            ),
        }
    }

    /// The cluster as network policy sees it: policies, namespaces, every node's pods with
    /// their labels, and the nodes' own addresses.
    pub fn policy_cluster(&self) -> wren_policy::Cluster {
        wren_policy::Cluster::from_records(
            self.policies.values(),
            self.namespaces.iter().map(|(name, ns)| (name.as_str(), ns)),
            &self.pod_meta,
            self.pods.values(),
            self.nodes.values(),
        )
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

/// The view as the watch tasks keep it, shared with the controller: each task changes its
/// part in place, and a pass takes the view as it stands (copied only when a task changes it
/// while a pass still holds it).
#[derive(Debug, Default)]
pub struct LiveView {
    state: Mutex<LiveState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct LiveState {
    view: Arc<ClusterView>,
    listed: BTreeSet<Part>,
    generation: u64,
}

/// The view as one pass takes it.
#[derive(Debug, Clone)]
pub struct ViewSnapshot {
    /// The view.
    pub view: Arc<ClusterView>,
    /// Counts the view's changes: equal generations, equal views.
    pub generation: u64,
}

impl LiveView {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        lock(&self.state)
    }

    /// The view as of now, once every part has been listed (before that, acting on it would
    /// mean acting on an empty cluster).
    pub fn current(&self) -> Option<ViewSnapshot> {
        let state = self.lock();
        (state.listed.len() == Part::ALL.len()).then(|| ViewSnapshot {
            view: state.view.clone(),
            generation: state.generation,
        })
    }

    /// Changes the view with `change`, which says whether it changed anything; wakes the
    /// controller when it did.
    pub fn update(&self, change: impl FnOnce(&mut ClusterView) -> bool) {
        let mut state = self.lock();
        if change(Arc::make_mut(&mut state.view)) {
            state.generation += 1;
            self.changed.notify_one();
        }
    }

    /// Replaces `part` with a fresh listing and counts it as listed; wakes the controller
    /// when the view changed or became complete.
    pub fn listed<'a>(
        &self,
        part: Part,
        node: &str,
        listing: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) {
        let mut state = self.lock();
        let changed = Arc::make_mut(&mut state.view).replace(part, node, listing);
        let first = state.listed.insert(part);
        if changed {
            state.generation += 1;
        }
        if changed || first {
            self.changed.notify_one();
        }
    }

    /// Waits until the view changes (or returns at once if it changed since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_doc(name: &str, ip: &str) -> Vec<u8> {
        serde_json::to_vec(&Node::new(name, Some(ip.parse().unwrap()))).unwrap()
    }

    #[test]
    fn documents_are_decoded_as_they_arrive_and_a_relisting_replaces_the_part() {
        let mut v = ClusterView::default();
        assert!(v.put(Part::Nodes, "a", "nodes/b", &node_doc("b", "10.0.0.2/24")));
        assert!(!v.put(Part::Nodes, "a", "nodes/b", &node_doc("b", "10.0.0.2/24")));
        assert!(v.put(Part::Nodes, "a", "nodes/c", &node_doc("c", "10.0.0.3/24")));
        assert_eq!(v.nodes.len(), 2);
        // A document that does not parse is left out; so is one under another prefix.
        assert!(v.put(Part::Nodes, "a", "nodes/c", b"{not json"));
        assert!(!v.put(Part::Nodes, "a", "peers/x", &node_doc("x", "10.0.0.9/24")));
        assert_eq!(v.nodes.keys().collect::<Vec<_>>(), ["b"]);
        assert!(v.delete(Part::Nodes, "a", "nodes/b"));
        assert!(v.nodes.is_empty());
        // A relisting with what the part holds already changes nothing.
        let d = node_doc("d", "10.0.0.4/24");
        assert!(v.replace(Part::Nodes, "a", [("nodes/d", d.as_slice())]));
        assert!(!v.replace(Part::Nodes, "a", [("nodes/d", d.as_slice())]));
        assert!(v.replace(Part::Nodes, "a", []));
        assert!(v.nodes.is_empty());
        // Liveness is a set of names; the cluster config falls back to its defaults.
        assert!(v.put(Part::Liveness, "a", "liveness/b", b"holder"));
        assert!(v.live.contains("b"));
        let off = serde_json::to_vec(&ClusterConfig {
            node_to_node_mesh: false,
            ..Default::default()
        })
        .unwrap();
        assert!(v.put(Part::Cluster, "a", keys::CLUSTER_CONFIG, &off));
        assert!(!v.cluster.node_to_node_mesh);
        assert!(v.delete(Part::Cluster, "a", keys::CLUSTER_CONFIG));
        assert_eq!(v.cluster, ClusterConfig::default());
    }

    #[test]
    fn the_view_keeps_as_stored_what_this_node_would_write_back() {
        use wren_ipam::block::{Assignment, Block};
        let mut v = ClusterView::default();
        let own = Block::new("10.65.0.0/26".parse().unwrap(), Some("a".into())).unwrap();
        let mut lender = Block::new("10.65.0.64/26".parse().unwrap(), Some("b".into())).unwrap();
        let other = Block::new("10.65.0.128/26".parse().unwrap(), Some("b".into())).unwrap();
        lender
            .assign(
                "10.65.0.70".parse().unwrap(),
                Assignment {
                    handle: "net.c1".into(),
                    borrowed_by: Some("a".into()),
                },
            )
            .unwrap();
        for block in [&own, &lender, &other] {
            v.put(
                Part::Blocks,
                "a",
                &keys::block(&block.cidr()),
                &block.to_json(),
            );
        }
        v.put(Part::Nodes, "a", "nodes/a", &node_doc("a", "10.0.0.1/24"));
        v.put(Part::Nodes, "a", "nodes/b", &node_doc("b", "10.0.0.2/24"));
        v.put(Part::Pools, "a", "pools/broken", b"{not json");
        let held: Vec<&str> = v.held.keys().map(String::as_str).collect();
        assert_eq!(
            held,
            [
                keys::block(&own.cidr()).as_str(),
                keys::block(&lender.cidr()).as_str(),
                "nodes/a"
            ]
        );
        // The lender stops lending: no longer held. A relisting replaces the part's share.
        lender.release("10.65.0.70".parse().unwrap());
        assert!(v.put(
            Part::Blocks,
            "a",
            &keys::block(&lender.cidr()),
            &lender.to_json()
        ));
        assert!(!v.held.contains_key(&keys::block(&lender.cidr())));
        assert!(v.replace(Part::Blocks, "a", []));
        assert_eq!(v.held.keys().collect::<Vec<_>>(), ["nodes/a"]);
        // Every node's workloads feed network policy under the same keys as this node's:
        // that part never takes this node's workload out of what it holds.
        let w = br#"{"node":"a","containerId":"c1","ifname":"eth0","network":"k8s","handle":"k8s.c1","podNamespace":"x","podName":"p","netns":"/x","addresses":["10.65.0.5/32"],"hostInterface":"wren0","mac":"ee:ee:ee:ee:ee:ee"}"#;
        let key = keys::workload("a", "c1", "eth0");
        assert!(v.put(Part::Workloads, "a", &key, w));
        assert!(v.put(Part::Pods, "a", &key, w));
        assert!(v.held.contains_key(&key));
        v.replace(Part::Pods, "a", [(key.as_str(), w.as_slice())]);
        assert_eq!(v.pods.len(), 1);
        assert!(
            v.held.contains_key(&key),
            "a relisting of every pod keeps it held"
        );
        assert!(v.delete(Part::Pods, "a", &key));
        assert!(v.held.contains_key(&key));
    }

    #[test]
    fn the_live_view_is_complete_once_every_part_was_listed() {
        let live = LiveView::default();
        let (last, first) = Part::ALL.split_last().unwrap();
        for part in first {
            live.listed(*part, "a", []);
            assert!(live.current().is_none());
        }
        live.listed(*last, "a", []);
        let before = live.current().unwrap();
        live.update(|v| v.put(Part::Nodes, "a", "nodes/b", &node_doc("b", "10.0.0.2/24")));
        // A pass holding the view it took sees it unchanged; the next one sees the change.
        assert!(before.view.nodes.is_empty());
        let after = live.current().unwrap();
        assert_eq!(after.view.nodes.len(), 1);
        assert_ne!(after.generation, before.generation);
        // A put that changes nothing is no new generation.
        live.update(|v| v.put(Part::Nodes, "a", "nodes/b", &node_doc("b", "10.0.0.2/24")));
        assert_eq!(live.current().unwrap().generation, after.generation);
    }
}
