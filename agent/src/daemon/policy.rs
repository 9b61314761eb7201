//! What this node tells its BGP peers, and which learned routes it accepts.
//!
//! Export is a closed list: the node's confirmed affine blocks and the single addresses it
//! borrowed from other nodes' blocks, with itself as next hop. Nothing learned is passed on
//! (the speaker reflects only on route reflectors), so a node can never become a transit path
//! for a ToR's routes or another node's blocks. Each prefix carries the communities of the
//! cluster, of its pool and of every `prefixAdvertisements` range it lies in ([`exports`]).
//!
//! Import takes every best path except the ones that describe this node itself: its own
//! blocks and addresses (a reflector or a misconfigured peer echoing them back must not pull
//! local traffic off the node) and anything whose next hop is this node.
//!
//! An explicit peer (a ToR, a router: anything but another node) is held to more, inside the
//! speaker, before its routes compete for best path ([`ClusterSpace::hold`]): by default it
//! cannot announce routes inside the cluster's pools or for the nodes' addresses, where the
//! mesh's own routes are the truth, nor a default route. Each can be opened per peer
//! ([`ImportLimits`]); what is held back shows in `wren status` by reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use wren_model::Community;

use super::bgp::BestPaths;
use super::view::ClusterView;

/// How one announced prefix is marked, and who hears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Export {
    /// Its communities, standard and large.
    pub communities: BTreeSet<Community>,
    /// Announced to explicit peers only, never to other nodes: a service range, which
    /// every node announces so that the fabric spreads its traffic over all of them.
    pub external_only: bool,
}

/// Every prefix this node announces, with its marks.
pub type Exports = BTreeMap<IpNet, Export>;

/// What an explicit peer may announce beyond the default; both off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportLimits {
    /// Routes inside the pools and for node addresses (`acceptClusterRoutes`).
    pub cluster_routes: bool,
    /// A default route (`acceptDefaultRoute`).
    pub default_route: bool,
}

/// Why an explicit peer's route is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Inside one of the cluster's pools.
    Pool,
    /// For a node's address: a host route to it, or anything as specific as its subnet.
    NodeAddress,
    /// A default route (`0.0.0.0/0`, `::/0`).
    DefaultRoute,
}

impl Held {
    /// The reason as `wren status` counts it.
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Pool => "pool",
            Held::NodeAddress => "node address",
            Held::DefaultRoute => "default route",
        }
    }
}

/// The address space the cluster itself speaks for: its pools and its nodes' addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSpace {
    pools: Vec<IpNet>,
    /// Each node's address with the prefix length of its subnet.
    nodes: Vec<IpNet>,
}

impl ClusterSpace {
    /// The pools (disabled ones too: their addresses stay in use) and every node's
    /// addresses.
    pub fn of(view: &ClusterView) -> Self {
        let pools = view.pools.values().map(|p| p.cidr).collect();
        let nodes = view
            .nodes
            .values()
            .flat_map(|n| {
                let v4 = n.ipv4.map(IpNet::V4);
                v4.into_iter().chain(n.ipv6.map(IpNet::V6))
            })
            .collect();
        Self { pools, nodes }
    }

    /// Why an explicit peer with `limits` may not install `prefix`, if it may not.
    pub fn hold(&self, prefix: &IpNet, limits: ImportLimits) -> Option<Held> {
        if prefix.prefix_len() == 0 && !limits.default_route {
            return Some(Held::DefaultRoute);
        }
        if limits.cluster_routes {
            return None;
        }
        if self.pools.iter().any(|pool| pool.contains(prefix)) {
            return Some(Held::Pool);
        }
        // A route as specific as a node's own subnet would take its traffic off the link:
        // the /32 of another node's address is the case that ends the mesh session to it.
        let steals = |node: &IpNet| {
            prefix.contains(&node.addr()) && prefix.prefix_len() >= node.prefix_len()
        };
        self.nodes.iter().any(steals).then_some(Held::NodeAddress)
    }
}

/// The prefixes this node originates.
pub fn export_set(node: &str, view: &ClusterView) -> BTreeSet<IpNet> {
    let mut out = view.local_blocks(node);
    out.extend(view.borrowed_addresses(node));
    out
}

/// The prefixes this node announces, each with its communities.
pub fn exports(node: &str, view: &ClusterView) -> Exports {
    let services = view.cluster.service_ranges().map(|p| (*p, true));
    let own = export_set(node, view).into_iter().map(|p| (p, false));
    // A node's own prefix wins over a service range that happens to equal it.
    services
        .chain(own)
        .map(|(prefix, external_only)| {
            let communities = communities_for(&prefix, view);
            let export = Export {
                communities,
                external_only,
            };
            (prefix, export)
        })
        .collect()
}

/// The communities an announced prefix carries: the cluster's, those of the pool it lies
/// in, and those of every `prefixAdvertisements` range that holds it.
pub fn communities_for(prefix: &IpNet, view: &ClusterView) -> BTreeSet<Community> {
    let pools = view.pools.values().filter(|p| p.cidr.contains(prefix));
    let ranges = view.cluster.prefix_advertisements.iter();
    let ranges = ranges.filter(|a| a.cidr.contains(prefix));
    view.cluster
        .communities
        .iter()
        .chain(pools.flat_map(|p| p.communities.iter()))
        .chain(ranges.flat_map(|a| a.communities.iter()))
        .copied()
        .collect()
}

/// The prefixes of this node's workloads (host routes).
pub fn local_workload_addresses(view: &ClusterView) -> BTreeSet<IpNet> {
    view.workloads
        .values()
        .flat_map(|w| w.addresses.iter())
        .map(|net| IpNet::from(net.addr()))
        .collect()
}

/// Filters learned best paths (prefix → next hops) down to the ones to install: not this
/// node's own prefixes, and no next hop that is this node (a path leading back here is left
/// out of a multipath set, and a prefix with no other path is not installed).
pub fn import(
    learned: &BestPaths,
    node: &str,
    own_addresses: &[IpAddr],
    view: &ClusterView,
) -> BestPaths {
    let own = export_set(node, view);
    let pods = local_workload_addresses(view);
    learned
        .iter()
        .filter(|(prefix, _)| !own.contains(prefix) && !pods.contains(prefix))
        .filter_map(|(prefix, next_hops)| {
            let elsewhere = next_hops.without(|nh| own_addresses.contains(nh))?;
            Some((*prefix, elsewhere))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::bgp::NextHops;
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
        use crate::daemon::view::Part;
        let mut v = ClusterView::default();
        for block in [&mine, &theirs] {
            let key = wren_model::keys::block(&block.cidr());
            assert!(v.put(Part::Blocks, "a", &key, &block.to_json()));
        }
        let affinity = serde_json::to_vec(&Affinity::CONFIRMED).unwrap();
        let key = wren_model::keys::affinity("a", &mine.cidr());
        assert!(v.put(Part::Affinities, "a", &key, &affinity));
        let expected: BTreeSet<IpNet> = [mine.cidr(), IpNet::from(borrowed)].into();
        assert_eq!(export_set("a", &v), expected);
        assert_eq!(v.addresses_in_use("a"), 2);
        assert!(v.local_blocks("a").contains(&mine.cidr()));
    }

    #[test]
    fn exports_carry_the_cluster_s_the_pool_s_and_the_ranges_communities() {
        let mut v = view();
        let c = |s: &str| s.parse::<Community>().unwrap();
        v.cluster.communities = vec![c("65000:1")];
        v.cluster.prefix_advertisements = vec![
            wren_model::PrefixAdvertisement {
                cidr: net("10.65.0.0/26"),
                communities: vec![c("65000:100"), c("65000:1:2")],
            },
            wren_model::PrefixAdvertisement {
                cidr: net("192.0.2.0/24"),
                communities: vec![c("no-export")],
            },
        ];
        let mut pool: wren_model::Pool =
            serde_json::from_str(r#"{"cidr":"10.65.0.0/16","blockSize":26}"#).unwrap();
        pool.communities = vec![c("65000:65:65"), c("65000:1")];
        v.pools.insert("default".into(), pool);
        let exported = exports("a", &v);
        let of = |p: &str| -> Vec<String> {
            let e = &exported[&net(p)];
            e.communities.iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            of("10.65.0.0/26"),
            ["65000:1", "65000:100", "65000:1:2", "65000:65:65"]
        );
        // A borrowed address of another block: the cluster's and the pool's only.
        assert_eq!(of("10.65.0.70/32"), ["65000:1", "65000:65:65"]);
        // Outside every pool and range: the cluster's.
        assert_eq!(of("fd00:65::/122"), ["65000:1"]);
        assert_eq!(exported.len(), 3);
        assert!(exported.values().all(|e| !e.external_only));
    }

    #[test]
    fn service_ranges_are_exported_to_explicit_peers_only() {
        let mut v = view();
        v.cluster.service_cluster_ips = vec![net("10.96.0.0/12")];
        v.cluster.service_external_ips = vec![net("192.0.2.0/24")];
        v.cluster.service_load_balancer_ips = vec![net("198.51.100.0/24")];
        v.cluster.prefix_advertisements = vec![wren_model::PrefixAdvertisement {
            cidr: net("10.96.0.0/12"),
            communities: vec!["65000:96".parse().unwrap()],
        }];
        let exported = exports("a", &v);
        for range in ["10.96.0.0/12", "192.0.2.0/24", "198.51.100.0/24"] {
            assert!(exported[&net(range)].external_only, "{range}");
        }
        assert_eq!(exported[&net("10.96.0.0/12")].communities.len(), 1);
        assert!(!exported[&net("10.65.0.0/26")].external_only);
        assert_eq!(exported.len(), 6);
    }

    #[test]
    fn explicit_peers_are_held_off_the_pools_node_addresses_and_the_default_route() {
        let mut v = view();
        v.pools.insert(
            "default".into(),
            serde_json::from_str(r#"{"cidr":"10.65.0.0/16","blockSize":26}"#).unwrap(),
        );
        v.nodes.insert(
            "b".into(),
            wren_model::Node::new("b", Some("10.77.0.2/24".parse().unwrap())),
        );
        let space = ClusterSpace::of(&v);
        let strict = ImportLimits::default();
        let hold = |prefix: &str, limits| space.hold(&net(prefix), limits);
        assert_eq!(hold("10.65.0.64/26", strict), Some(Held::Pool));
        assert_eq!(hold("10.65.0.70/32", strict), Some(Held::Pool));
        assert_eq!(hold("10.77.0.2/32", strict), Some(Held::NodeAddress));
        assert_eq!(hold("10.77.0.0/24", strict), Some(Held::NodeAddress));
        assert_eq!(hold("0.0.0.0/0", strict), Some(Held::DefaultRoute));
        assert_eq!(hold("::/0", strict), Some(Held::DefaultRoute));
        // Wider routes that only cover the cluster lose to its own by longest match.
        assert_eq!(hold("10.0.0.0/8", strict), None);
        assert_eq!(hold("10.77.0.0/16", strict), None);
        assert_eq!(hold("192.0.2.0/24", strict), None);
        let open = ImportLimits {
            cluster_routes: true,
            default_route: false,
        };
        assert_eq!(hold("10.65.0.70/32", open), None);
        assert_eq!(hold("10.77.0.2/32", open), None);
        assert_eq!(hold("0.0.0.0/0", open), Some(Held::DefaultRoute));
        let default = ImportLimits {
            cluster_routes: false,
            default_route: true,
        };
        assert_eq!(hold("0.0.0.0/0", default), None);
        assert_eq!(hold("10.65.0.70/32", default), Some(Held::Pool));
    }

    #[test]
    fn import_drops_routes_about_this_node() {
        let v = view();
        let me: IpAddr = "10.0.0.1".parse().unwrap();
        let hops = |list: &[&str]| NextHops::new(list.iter().map(|a| a.parse().unwrap())).unwrap();
        let learned: BestPaths = [
            (net("10.65.0.64/26"), hops(&["10.0.0.2"])),
            (net("10.65.0.7/32"), hops(&["10.0.0.2"])),
            (net("10.65.0.0/26"), hops(&["10.0.0.2"])),
            (net("10.65.0.70/32"), hops(&["10.0.0.3"])),
            (net("192.0.2.0/24"), NextHops::from(me)),
            (net("0.0.0.0/0"), hops(&["10.0.0.254"])),
            // An anycast range this node is one of the next hops of: the others stay.
            (
                net("198.51.100.0/24"),
                hops(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
            ),
        ]
        .into();
        let imported = import(&learned, "a", &[me], &v);
        let expected: BestPaths = [
            (net("10.65.0.64/26"), hops(&["10.0.0.2"])),
            // b borrowed .7 from a's block: the /32 must win over a's blackhole.
            (net("10.65.0.7/32"), hops(&["10.0.0.2"])),
            (net("0.0.0.0/0"), hops(&["10.0.0.254"])),
            (net("198.51.100.0/24"), hops(&["10.0.0.3", "10.0.0.2"])),
        ]
        .into();
        assert_eq!(imported, expected);
    }
}
