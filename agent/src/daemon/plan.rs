//! The plan: everything this node wants, computed from the view, BGP's best paths and facts
//! about the node, with no I/O.
//!
//! [`plan`] is the pipeline's pure middle: the view (decoded by the watch tasks) and the best
//! paths (pushed by the speaker) go in; BGP sessions and exports, the kernel routes (of the
//! dataplane's one route type), the tunnels the pools call for and the fast path's entries
//! come out, for the programmers to put in place. The one step that needs the kernel's answer
//! first, which learned routes go through a tunnel, is [`super::encap::shape_routes`], run on
//! the plan's routes once the tunnel programmer has said which tunnels are up.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::bgp::BestPaths;
use super::encap::{Wanted, nat_rules, vxlan_peers};
use super::fastpath::FastPathDesired;
use super::mesh::{self, LocalNode, PeerSpec};
use super::policy::{self, ClusterSpace, Exports};
use super::view::ClusterView;
use crate::dataplane::Route;
use crate::dataplane::nat::NatRules;
use crate::dataplane::program::routes::DesiredRoutes;
use crate::dataplane::vxlan::VxlanPeer;

/// What the plan needs to know about the node beyond the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's identity in the mesh.
    pub node: LocalNode,
    /// The node's own addresses: a learned route leading to one of them is ours already.
    pub own_addresses: Vec<IpAddr>,
}

/// The desired state of one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The BGP sessions, by peer address.
    pub peers: BTreeMap<IpAddr, PeerSpec>,
    /// The prefixes this node announces (next hop self), with their communities.
    pub exports: Exports,
    /// The address space explicit peers may not announce into.
    pub cluster_space: ClusterSpace,
    /// The kernel routes, learned ones still plain (before [`super::encap::shape_routes`]).
    pub routes: DesiredRoutes,
    /// The tunnels the pools in use call for.
    pub tunnels: Wanted,
    /// Outgoing NAT.
    pub nat: NatRules,
    /// The other nodes' VXLAN ends (used while this node has a VXLAN identity).
    pub vxlan_peers: Vec<VxlanPeer>,
    /// What the fast path should cover.
    pub fast_path: FastPathDesired,
    /// Network policy on this node: its pods some policy isolates, with their rules.
    pub network_policy: wren_policy::NodePlan,
}

/// Computes the desired state from the view and the best paths (prefix → next hops).
pub fn plan(view: &ClusterView, best_paths: &BestPaths, facts: &NodeFacts) -> Plan {
    let name = facts.node.name.as_str();
    let imported = policy::import(best_paths, name, &facts.own_addresses, view);
    // Without a policy nothing is isolated: the cluster of every pod is not even built.
    let network_policy = if view.policies.is_empty() {
        wren_policy::NodePlan {
            node: name.to_owned(),
            endpoints: Vec::new(),
        }
    } else {
        view.policy_cluster().plan_node(name)
    };
    Plan {
        peers: mesh::desired_peers(&facts.node, view),
        exports: policy::exports(name, view),
        cluster_space: ClusterSpace::of(view),
        routes: routes(name, view, &imported),
        tunnels: Wanted::of(view),
        nat: nat_rules(view),
        vxlan_peers: vxlan_peers(name, view),
        fast_path: FastPathDesired::of(view, name).with_policed(&network_policy),
        network_policy,
    }
}

/// The kernel routes: imported BGP routes (`proto bgp`; one multipath route where several
/// equal paths lead to a prefix), then local blocks as blackholes, then local pods on their
/// host veths (both `proto wren`). Later entries win on the same destination: a pod's own
/// route is never replaced by anything learned.
pub fn routes(node: &str, view: &ClusterView, imported: &BestPaths) -> DesiredRoutes {
    let mut out: DesiredRoutes = imported
        .iter()
        .filter_map(|(prefix, next_hops)| {
            let route = Route::via_all(*prefix, next_hops.as_slice().iter().copied())?;
            Some((*prefix, route))
        })
        .collect();
    for block in view.local_blocks(node) {
        out.insert(block, Route::blackhole(block));
    }
    for workload in view.workloads.values() {
        for address in &workload.addresses {
            let dst = IpNet::from(address.addr());
            out.insert(dst, Route::device(dst, workload.host_interface.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::daemon::bgp::NextHops;
    use crate::daemon::view::BlockInfo;
    use crate::dataplane::{NextHop, Protocol};
    use wren_model::{Node, Workload};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn view() -> ClusterView {
        let mut v = ClusterView::default();
        v.blocks.insert(
            net("10.65.0.0/26"),
            BlockInfo {
                affinity: Some("a".into()),
                ..Default::default()
            },
        );
        v.confirmed_affinities.insert(net("10.65.0.0/26"));
        v.workloads.insert(
            "c1/eth0".into(),
            Workload {
                node: "a".into(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
                network: "k8s".into(),
                handle: "k8s.c1".into(),
                pod_namespace: None,
                pod_name: None,
                pod_uid: None,
                netns: "/var/run/netns/x".into(),
                addresses: vec![net("10.65.0.5/32"), net("fd00:65::5/128")],
                host_interface: "wren0123456789a".into(),
                mac: "ee:ee:ee:ee:ee:ee".into(),
            },
        );
        v
    }

    /// Node `a` at 10.0.0.1.
    fn facts_of_a() -> NodeFacts {
        NodeFacts {
            node: LocalNode {
                name: "a".into(),
                address: "10.0.0.1".parse().unwrap(),
                as_number: None,
                route_reflector_cluster_id: None,
            },
            own_addresses: vec![ip("10.0.0.1")],
        }
    }

    fn learned(pairs: &[(&str, &str)]) -> BestPaths {
        pairs
            .iter()
            .map(|(prefix, next_hop)| (net(prefix), NextHops::from(ip(next_hop))))
            .collect()
    }

    #[test]
    fn blackholes_pods_and_learned_routes_with_their_protocols() {
        let learned = learned(&[("10.65.0.64/26", "10.0.0.2"), ("10.65.0.5/32", "10.0.0.2")]);
        let d = routes("a", &view(), &learned);
        assert_eq!(d[&net("10.65.0.0/26")].next_hop, NextHop::Blackhole);
        assert_eq!(
            d[&net("10.65.0.64/26")],
            Route::via(net("10.65.0.64/26"), ip("10.0.0.2"))
        );
        for pod in ["10.65.0.5/32", "fd00:65::5/128"] {
            assert_eq!(d[&net(pod)], Route::device(net(pod), "wren0123456789a"));
        }
        assert_eq!(d.len(), 4);
        assert_eq!(d[&net("10.65.0.64/26")].protocol, Protocol::BGP);
        assert_eq!(d[&net("10.65.0.0/26")].protocol, Protocol::WREN);
        assert_eq!(d[&net("10.65.0.5/32")].protocol, Protocol::WREN);
    }

    #[test]
    fn equal_paths_are_one_multipath_route_and_one_path_a_plain_one() {
        let two = NextHops::new([ip("192.168.2.1"), ip("192.168.1.1")]).unwrap();
        let best: BestPaths = [
            (net("10.99.0.0/24"), two),
            (net("10.98.0.0/24"), NextHops::from(ip("192.168.1.1"))),
        ]
        .into();
        let p = plan(&view(), &best, &facts_of_a());
        let multipath = &p.routes[&net("10.99.0.0/24")];
        assert_eq!(
            multipath.to_string(),
            "10.99.0.0/24 nexthop via 192.168.1.1 nexthop via 192.168.2.1 proto bgp"
        );
        assert_eq!(
            p.routes[&net("10.98.0.0/24")],
            Route::via(net("10.98.0.0/24"), ip("192.168.1.1"))
        );
        // One path gone: the same destination with the path left, a change of the route
        // (a replace), not a removal.
        let mut shrunk = best.clone();
        shrunk.insert(net("10.99.0.0/24"), NextHops::from(ip("192.168.2.1")));
        let after = plan(&view(), &shrunk, &facts_of_a());
        let changes =
            crate::dataplane::program::routes::route_changes(&p.routes, &after.routes, false);
        assert_eq!(
            changes,
            [crate::dataplane::RouteChange::Replace(Route::via(
                net("10.99.0.0/24"),
                ip("192.168.2.1")
            ))]
        );
        // A path back: a replace again; the same set in another order: no change at all.
        let changes =
            crate::dataplane::program::routes::route_changes(&after.routes, &p.routes, false);
        assert!(matches!(
            changes.as_slice(),
            [crate::dataplane::RouteChange::Replace(_)]
        ));
        let again = plan(&view(), &best, &facts_of_a());
        assert!(
            crate::dataplane::program::routes::route_changes(&p.routes, &again.routes, false)
                .is_empty()
        );
    }

    #[test]
    fn one_plan_holds_sessions_exports_routes_and_the_fast_path() {
        let mut v = view();
        v.nodes.insert(
            "a".into(),
            Node::new("a", Some("10.0.0.1/24".parse().unwrap())),
        );
        v.nodes.insert(
            "b".into(),
            Node::new("b", Some("10.0.0.2/24".parse().unwrap())),
        );
        let facts = facts_of_a();
        // b's block, a block of ours b echoes back, and one that leads to us.
        let best = learned(&[
            ("10.65.0.64/26", "10.0.0.2"),
            ("10.65.0.0/26", "10.0.0.2"),
            ("10.65.1.0/26", "10.0.0.1"),
        ]);
        let p = plan(&v, &best, &facts);
        assert_eq!(
            p.peers.keys().copied().collect::<Vec<_>>(),
            [ip("10.0.0.2")]
        );
        assert_eq!(
            p.exports.keys().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([net("10.65.0.0/26")])
        );
        assert_eq!(p.routes[&net("10.65.0.0/26")].next_hop, NextHop::Blackhole);
        assert_eq!(p.routes[&net("10.65.0.64/26")].protocol, Protocol::BGP);
        assert!(!p.routes.contains_key(&net("10.65.1.0/26")));
        assert_eq!(p.routes.len(), 4);
        assert_eq!(p.fast_path.pods.len(), 1);
        assert_eq!(p.tunnels, Wanted::default());
        // No policy: nothing isolated, nothing policed.
        assert!(p.network_policy.endpoints.is_empty());
        assert!(p.fast_path.policed.is_empty());
    }

    #[test]
    fn a_policy_isolating_a_local_pod_is_planned_and_its_pod_policed() {
        let mut v = view();
        let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n";
        let key = |w: &str| format!("{}{w}", wren_model::keys::WORKLOADS);
        for (name, node, address) in [("web", "a", "10.65.0.5/32"), ("db", "b", "10.65.0.70/32")] {
            let mut w = v.workloads["c1/eth0"].clone();
            w.node = node.into();
            w.pod_namespace = Some("x".into());
            w.pod_name = Some(name.into());
            w.addresses = vec![net(address)];
            let doc = serde_json::to_vec(&w).unwrap();
            assert!(v.put(
                crate::daemon::view::Part::Pods,
                "a",
                &key(&format!("{node}/{name}/eth0")),
                &doc
            ));
            let meta = wren_model::PodMeta {
                labels: [("app".to_owned(), name.to_owned())].into(),
                ports: Vec::new(),
            };
            let doc = serde_json::to_vec(&meta).unwrap();
            assert!(v.put(
                crate::daemon::view::Part::PodMeta,
                "a",
                &wren_model::keys::pod("x", name),
                &doc
            ));
        }
        let stored = serde_json::to_vec(&wren_policy::decode_policies(policy).unwrap()[0]).unwrap();
        assert!(v.put(
            crate::daemon::view::Part::Policies,
            "a",
            &wren_model::keys::policy("x", "deny"),
            &stored
        ));
        // A policy that is not valid is left out.
        assert!(!v.put(
            crate::daemon::view::Part::Policies,
            "a",
            &wren_model::keys::policy("x", "bad"),
            br#"{"kind": "Deployment"}"#
        ));
        let facts = facts_of_a();
        let p = plan(&v, &BestPaths::new(), &facts);
        let pods: Vec<&str> = p
            .network_policy
            .endpoints
            .iter()
            .map(|e| e.pod.as_str())
            .collect();
        assert_eq!(pods, ["x/web"], "only the local pod the policy selects");
        assert_eq!(
            p.fast_path.policed,
            ["10.65.0.5".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }
}
