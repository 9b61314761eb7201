//! What this node tells its BGP peers, and which learned routes it accepts.
//!
//! Export is a closed list: the node's confirmed affine blocks and the single addresses it
//! borrowed from other nodes' blocks, with itself as next hop. Nothing learned is passed on
//! (the speaker reflects only on route reflectors), so a node can never become a transit path
//! for a ToR's routes or another node's blocks.
//!
//! Import takes every best path except the ones that describe this node itself: its own
//! blocks and addresses (a reflector or a misconfigured peer echoing them back must not pull
//! local traffic off the node) and anything whose next hop is this node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::view::ClusterView;

/// The prefixes this node originates.
pub fn export_set(node: &str, view: &ClusterView) -> BTreeSet<IpNet> {
    let mut out = view.local_blocks(node);
    out.extend(view.borrowed_addresses(node));
    out
}

/// The prefixes of this node's workloads (host routes).
pub fn local_workload_addresses(view: &ClusterView) -> BTreeSet<IpNet> {
    view.workloads
        .iter()
        .flat_map(|w| w.addresses.iter())
        .map(|net| IpNet::from(net.addr()))
        .collect()
}

/// Filters learned best paths (prefix → next hop) down to the ones to install.
pub fn import(
    learned: &BTreeMap<IpNet, IpAddr>,
    node: &str,
    own_addresses: &[IpAddr],
    view: &ClusterView,
) -> BTreeMap<IpNet, IpAddr> {
    let own = export_set(node, view);
    let pods = local_workload_addresses(view);
    learned
        .iter()
        .filter(|(prefix, next_hop)| {
            !own.contains(prefix) && !pods.contains(prefix) && !own_addresses.contains(next_hop)
        })
        .map(|(prefix, next_hop)| (*prefix, *next_hop))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::view::BlockInfo;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn block(affinity: &str, borrowed: &[(&str, &str)]) -> BlockInfo {
        BlockInfo {
            affinity: Some(affinity.into()),
            borrowed: borrowed
                .iter()
                .map(|(a, n)| (a.parse().unwrap(), (*n).to_owned()))
                .collect(),
            used: 1 + borrowed.len() as u32,
        }
    }

    fn view() -> ClusterView {
        let mut v = ClusterView::default();
        v.blocks
            .insert(net("10.65.0.0/26"), block("a", &[("10.65.0.7", "b")]));
        v.blocks
            .insert(net("10.65.0.64/26"), block("b", &[("10.65.0.70", "a")]));
        v.blocks.insert(net("10.65.0.128/26"), block("a", &[]));
        v.blocks.insert(net("fd00:65::/122"), block("a", &[]));
        // a's affinity to .128 is not confirmed; a claims .0 and the v6 block.
        v.confirmed_affinities = [
            net("10.65.0.0/26"),
            net("fd00:65::/122"),
            net("10.65.1.0/26"),
        ]
        .into();
        v
    }

    #[test]
    fn export_is_confirmed_blocks_and_borrowed_addresses_only() {
        let exported = export_set("a", &view());
        let expected: BTreeSet<IpNet> = [
            net("10.65.0.0/26"),
            net("fd00:65::/122"),
            net("10.65.0.70/32"),
        ]
        .into();
        // Not .128 (affinity unconfirmed), not 10.65.1.0/26 (no block document), not b's block.
        assert_eq!(exported, expected);
    }

    #[test]
    fn export_follows_the_documents_ipam_writes() {
        // The same rule end to end through the documents IPAM writes.
        use wren_ipam::affinity::Affinity;
        use wren_ipam::block::{Assignment, Block};
        let mut mine = Block::new(net("10.70.0.0/26"), Some("a".into())).unwrap();
        mine.assign_next(Assignment {
            handle: "k8s.c1".into(),
            borrowed_by: None,
        })
        .unwrap();
        let mut theirs = Block::new(net("10.70.0.64/26"), Some("b".into())).unwrap();
        let borrowed = theirs
            .assign_next(Assignment {
                handle: "k8s.c2".into(),
                borrowed_by: Some("a".into()),
            })
            .unwrap();
        let mut blocks = crate::daemon::view::Snapshot::new();
        blocks.insert(wren_model::keys::block(&mine.cidr()), mine.to_json());
        blocks.insert(wren_model::keys::block(&theirs.cidr()), theirs.to_json());
        let mut affinities = crate::daemon::view::Snapshot::new();
        affinities.insert(
            wren_model::keys::affinity("a", &mine.cidr()),
            serde_json::to_vec(&Affinity::CONFIRMED).unwrap(),
        );
        let mut v = ClusterView::default();
        v.set_blocks(&blocks);
        v.set_affinities("a", &affinities);
        let expected: BTreeSet<IpNet> = [mine.cidr(), IpNet::from(borrowed)].into();
        assert_eq!(export_set("a", &v), expected);
        assert_eq!(v.addresses_in_use("a"), 2);
        assert!(v.local_blocks("a").contains(&mine.cidr()));
    }

    #[test]
    fn import_drops_routes_about_this_node() {
        let v = view();
        let me: IpAddr = "10.0.0.1".parse().unwrap();
        let learned: BTreeMap<IpNet, IpAddr> = [
            (net("10.65.0.64/26"), "10.0.0.2".parse().unwrap()),
            (net("10.65.0.7/32"), "10.0.0.2".parse().unwrap()),
            (net("10.65.0.0/26"), "10.0.0.2".parse().unwrap()),
            (net("10.65.0.70/32"), "10.0.0.3".parse().unwrap()),
            (net("192.0.2.0/24"), me),
            (net("0.0.0.0/0"), "10.0.0.254".parse().unwrap()),
        ]
        .into();
        let imported = import(&learned, "a", &[me], &v);
        let expected: BTreeMap<IpNet, IpAddr> = [
            (net("10.65.0.64/26"), "10.0.0.2".parse().unwrap()),
            // b borrowed .7 from a's block: the /32 must win over a's blackhole.
            (net("10.65.0.7/32"), "10.0.0.2".parse().unwrap()),
            (net("0.0.0.0/0"), "10.0.0.254".parse().unwrap()),
        ]
        .into();
        assert_eq!(imported, expected);
    }
}
