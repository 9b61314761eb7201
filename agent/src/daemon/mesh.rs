//! Which BGP sessions this node runs, derived from the cluster view.
//!
//! - Node-to-node mesh (the default): one iBGP session to every other registered node.
//! - Mesh off: nodes with `routeReflectorClusterId` are route reflectors; every other node
//!   peers only with them, and they peer with every node, treating non-reflectors as clients.
//! - Explicit peers from `peers/`: global ones on every node, node-specific ones on theirs.
//!
//! Between two nodes exactly one side connects: the node with the lower address only accepts
//! (passive), so the two never race to open crossing connections. Explicit peers are always
//! dialled: the router on the other end may well be passive itself.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use wren_model::{Bfd, Filter, MaxPrefixes, Node};

use super::policy::ImportLimits;
use super::view::ClusterView;

/// Why a session exists; shown in `wren status` and as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// Another node, through the full mesh.
    NodeMesh,
    /// A route reflector node this node is a client of (or, on a reflector, another reflector).
    RouteReflector,
    /// A node this route reflector serves.
    RrClient,
    /// An explicit peer of every node.
    Global,
    /// An explicit peer of this node only.
    NodeSpecific,
}

impl PeerKind {
    /// The label used in tables and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::NodeMesh => "node-mesh",
            PeerKind::RouteReflector => "route-reflector",
            PeerKind::RrClient => "rr-client",
            PeerKind::Global => "global",
            PeerKind::NodeSpecific => "node-specific",
        }
    }
}

/// One BGP session this node should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The node or `peers/` entry the session comes from.
    pub name: String,
    /// The remote address.
    pub address: IpAddr,
    /// The remote AS.
    pub asn: u32,
    /// Why the session exists.
    pub kind: PeerKind,
    /// Only accept the connection, never dial.
    pub passive: bool,
    /// The remote is a route-reflector client of this node.
    pub rr_client: bool,
    /// TCP MD5 password.
    pub password: Option<String>,
    /// Keep the original next hop on routes sent to this peer.
    pub keep_original_next_hop: bool,
    /// What the peer may announce: `None` for another node (the mesh's routes are the
    /// truth), the explicit peer's limits otherwise.
    pub import_limits: Option<ImportLimits>,
    /// BFD on the session: the cluster's `nodeMeshBfd` toward other nodes, the peer's
    /// `bfd` toward an explicit peer.
    pub bfd: Option<Bfd>,
    /// Hold time to propose, when not the default.
    pub hold_time: Option<u16>,
    /// GTSM hops, when on.
    pub ttl_security: Option<u8>,
    /// Seconds between KEEPALIVEs, when not a third of the hold time.
    pub keepalive_time: Option<u16>,
    /// The AS the node speaks on the session, when not its own.
    pub local_as: Option<u32>,
    /// The node's address to open the session from, when not the node address.
    pub source_address: Option<IpAddr>,
    /// The most prefixes the peer may announce: the explicit peer's, or
    /// [`MaxPrefixes::DEFAULT`]; none toward another node (the cluster's own routes).
    pub max_prefixes: Option<MaxPrefixes>,
    /// The explicit peer's import and export filters.
    pub filters: PeerFilters,
}

/// An explicit peer's filters (`importFilter`, `exportFilter`); none for another node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerFilters {
    /// Which of the peer's routes are taken.
    pub import: Option<Filter>,
    /// Which announcements the peer gets, and their prepends.
    pub export: Option<Filter>,
}

/// This node's identity as the mesh needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// Node name.
    pub name: String,
    /// The node's IPv4 address (the session address and router id).
    pub address: Ipv4Addr,
    /// The AS from the agent's own configuration, if set.
    pub as_number: Option<u32>,
    /// Set when this node is a route reflector.
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

impl LocalNode {
    /// The AS this node speaks: configured, else the cluster's.
    pub fn asn(&self, view: &ClusterView) -> u32 {
        self.as_number.unwrap_or(view.cluster.as_number)
    }
}

fn node_session(
    me: &LocalNode,
    view: &ClusterView,
    node: &Node,
    kind: PeerKind,
    rr_client: bool,
) -> Option<PeerSpec> {
    let address = node.ipv4?.addr();
    Some(PeerSpec {
        name: node.name.clone(),
        address: IpAddr::V4(address),
        asn: view.as_of(node),
        kind,
        passive: me.address < address,
        rr_client,
        password: None,
        keep_original_next_hop: false,
        import_limits: None,
        filters: PeerFilters::default(),
        bfd: view.cluster.node_mesh_bfd,
        hold_time: None,
        ttl_security: None,
        keepalive_time: None,
        local_as: None,
        source_address: None,
        max_prefixes: None,
    })
}

/// The sessions this node should run, keyed by remote address (one session per address;
/// an explicit peer at a node's address replaces the mesh session to it).
pub fn desired_peers(me: &LocalNode, view: &ClusterView) -> BTreeMap<IpAddr, PeerSpec> {
    let mut out = BTreeMap::new();
    let others = view
        .nodes
        .values()
        .filter(|n| n.name != me.name && n.ipv4.is_some_and(|ip| ip.addr() != me.address));
    for node in others {
        let spec = if view.cluster.node_to_node_mesh {
            node_session(me, view, node, PeerKind::NodeMesh, false)
        } else {
            match (
                me.route_reflector_cluster_id,
                node.route_reflector_cluster_id,
            ) {
                (Some(_), Some(_)) => node_session(me, view, node, PeerKind::RouteReflector, false),
                (Some(_), None) => node_session(me, view, node, PeerKind::RrClient, true),
                (None, Some(_)) => node_session(me, view, node, PeerKind::RouteReflector, false),
                (None, None) => None,
            }
        };
        if let Some(spec) = spec {
            out.insert(spec.address, spec);
        }
    }
    // Without node sessions (mesh off, no wren route reflector) the other nodes' blocks and
    // borrowed addresses reach this node only through its explicit peers (a ToR or route
    // reflector that carries them): those peers are then trusted with the pools.
    let cluster_from_peers = out.is_empty();
    for (name, peer) in &view.peers {
        let kind = match peer.node.as_deref() {
            None => PeerKind::Global,
            Some(node) if node == me.name => PeerKind::NodeSpecific,
            Some(_) => continue,
        };
        if peer.peer_ip == IpAddr::V4(me.address) {
            continue;
        }
        out.insert(
            peer.peer_ip,
            PeerSpec {
                name: name.clone(),
                address: peer.peer_ip,
                asn: peer.as_number,
                kind,
                passive: false,
                rr_client: false,
                password: peer.password.clone(),
                keep_original_next_hop: peer.keep_original_next_hop,
                import_limits: Some(ImportLimits {
                    cluster_routes: peer.accept_cluster_routes || cluster_from_peers,
                    default_route: peer.accept_default_route,
                }),
                filters: PeerFilters {
                    import: peer.import_filter.clone(),
                    export: peer.export_filter.clone(),
                },
                bfd: peer.bfd,
                hold_time: peer.hold_time,
                ttl_security: peer.ttl_security,
                keepalive_time: peer.keepalive_time_secs,
                local_as: peer.local_as_number,
                source_address: peer.source_address,
                max_prefixes: Some(peer.max_prefixes.unwrap_or(MaxPrefixes::DEFAULT)),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wren_model::{ClusterConfig, Peer};

    fn node(name: &str, ip: &str) -> Node {
        Node::new(name, Some(ip.parse().unwrap()))
    }

    fn me(name: &str, ip: &str) -> LocalNode {
        LocalNode {
            name: name.into(),
            address: ip.parse().unwrap(),
            as_number: None,
            route_reflector_cluster_id: None,
        }
    }

    fn view(nodes: Vec<Node>) -> ClusterView {
        ClusterView {
            nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn full_mesh_peers_every_other_node_and_the_lower_address_is_passive() {
        let v = view(vec![
            node("a", "10.0.0.1/24"),
            node("b", "10.0.0.2/24"),
            node("c", "10.0.0.3/24"),
        ]);
        let from_b = desired_peers(&me("b", "10.0.0.2"), &v);
        assert_eq!(
            from_b.keys().copied().collect::<Vec<_>>(),
            vec![ip("10.0.0.1"), ip("10.0.0.3")]
        );
        assert!(
            !from_b[&ip("10.0.0.1")].passive,
            "b dials a, which has the lower address"
        );
        assert!(from_b[&ip("10.0.0.3")].passive, "b waits for c");
        let from_a = desired_peers(&me("a", "10.0.0.1"), &v);
        assert!(
            from_a[&ip("10.0.0.2")].passive,
            "exactly one side of a–b dials"
        );
        assert!(
            from_b
                .values()
                .all(|p| p.kind == PeerKind::NodeMesh && p.asn == wren_model::DEFAULT_AS)
        );
    }

    #[test]
    fn nodes_without_an_address_and_this_node_are_left_out() {
        let mut nameless = node("x", "10.0.0.9/24");
        nameless.ipv4 = None;
        let v = view(vec![
            node("a", "10.0.0.1/24"),
            nameless,
            node("a-old-name", "10.0.0.1/24"),
        ]);
        assert!(desired_peers(&me("a", "10.0.0.1"), &v).is_empty());
    }

    #[test]
    fn mesh_off_peers_only_with_route_reflectors_which_serve_clients() {
        let mut rr1 = node("rr1", "10.0.0.10/24");
        rr1.route_reflector_cluster_id = Some("1.0.0.1".parse().unwrap());
        let mut rr2 = node("rr2", "10.0.0.11/24");
        rr2.route_reflector_cluster_id = Some("1.0.0.1".parse().unwrap());
        let mut v = view(vec![
            node("a", "10.0.0.1/24"),
            node("b", "10.0.0.2/24"),
            rr1,
            rr2,
        ]);
        v.cluster = ClusterConfig {
            node_to_node_mesh: false,
            ..Default::default()
        };
        let from_a = desired_peers(&me("a", "10.0.0.1"), &v);
        assert_eq!(
            from_a.keys().copied().collect::<Vec<_>>(),
            vec![ip("10.0.0.10"), ip("10.0.0.11")]
        );
        assert!(
            from_a
                .values()
                .all(|p| p.kind == PeerKind::RouteReflector && !p.rr_client)
        );

        let mut rr_me = me("rr1", "10.0.0.10");
        rr_me.route_reflector_cluster_id = Some("1.0.0.1".parse().unwrap());
        let from_rr = desired_peers(&rr_me, &v);
        assert_eq!(from_rr.len(), 3);
        assert!(from_rr[&ip("10.0.0.1")].rr_client && from_rr[&ip("10.0.0.2")].rr_client);
        assert!(!from_rr[&ip("10.0.0.11")].rr_client);
        assert_eq!(from_rr[&ip("10.0.0.11")].kind, PeerKind::RouteReflector);

        let no_rr = view(vec![node("a", "10.0.0.1/24"), node("b", "10.0.0.2/24")]);
        let mut no_rr = no_rr;
        no_rr.cluster.node_to_node_mesh = false;
        assert!(desired_peers(&me("a", "10.0.0.1"), &no_rr).is_empty());
    }

    #[test]
    fn explicit_peers_are_global_or_for_their_node_and_replace_a_mesh_session() {
        let mut v = view(vec![node("a", "10.0.0.1/24"), node("b", "10.0.0.2/24")]);
        let peer = |ip: &str, asn: u32, node: Option<&str>| Peer {
            peer_ip: ip.parse().unwrap(),
            as_number: asn,
            node: node.map(str::to_owned),
            password: Some("s3cret".into()),
            keep_original_next_hop: false,
            accept_cluster_routes: false,
            accept_default_route: false,
            import_filter: None,
            export_filter: None,
            bfd: Some(Bfd::default()),
            hold_time: None,
            ttl_security: None,
            keepalive_time_secs: None,
            local_as_number: None,
            source_address: None,
            max_prefixes: None,
        };
        v.peers
            .insert("tor".into(), peer("10.0.0.254", 65000, None));
        v.peers
            .insert("only-b".into(), peer("10.0.0.253", 65001, Some("b")));
        v.peers
            .insert("b-as-peer".into(), peer("10.0.0.2", 64512, Some("a")));
        let from_a = desired_peers(&me("a", "10.0.0.1"), &v);
        assert_eq!(from_a.len(), 2);
        assert_eq!(from_a[&ip("10.0.0.254")].kind, PeerKind::Global);
        assert_eq!(
            from_a[&ip("10.0.0.254")].password.as_deref(),
            Some("s3cret")
        );
        assert!(!from_a[&ip("10.0.0.254")].passive);
        assert_eq!(from_a[&ip("10.0.0.2")].kind, PeerKind::NodeSpecific);
        let from_b = desired_peers(&me("b", "10.0.0.2"), &v);
        assert_eq!(from_b[&ip("10.0.0.253")].kind, PeerKind::NodeSpecific);
        assert_eq!(from_b[&ip("10.0.0.253")].asn, 65001);
        assert_eq!(from_a[&ip("10.0.0.254")].bfd, Some(Bfd::default()));
    }

    #[test]
    fn node_sessions_take_the_clusters_mesh_bfd() {
        let mut v = view(vec![node("a", "10.0.0.1/24"), node("b", "10.0.0.2/24")]);
        assert_eq!(
            desired_peers(&me("a", "10.0.0.1"), &v)[&ip("10.0.0.2")].bfd,
            None
        );
        let fast = Bfd {
            transmit_interval_ms: 100,
            receive_interval_ms: 100,
            multiplier: 3,
        };
        v.cluster.node_mesh_bfd = Some(fast);
        assert_eq!(
            desired_peers(&me("a", "10.0.0.1"), &v)[&ip("10.0.0.2")].bfd,
            Some(fast)
        );
    }

    #[test]
    fn explicit_peers_carry_the_cluster_only_where_no_node_session_does() {
        let mut v = view(vec![node("a", "10.0.0.1/24"), node("b", "10.0.0.2/24")]);
        v.peers.insert(
            "tor".into(),
            Peer {
                peer_ip: "10.0.0.254".parse().unwrap(),
                as_number: 64512,
                node: None,
                password: None,
                keep_original_next_hop: false,
                accept_cluster_routes: false,
                accept_default_route: false,
                import_filter: None,
                export_filter: None,
                bfd: None,
                hold_time: None,
                ttl_security: None,
                keepalive_time_secs: None,
                local_as_number: None,
                source_address: None,
                max_prefixes: None,
            },
        );
        let limits = |v: &ClusterView| {
            desired_peers(&me("a", "10.0.0.1"), v)[&ip("10.0.0.254")]
                .import_limits
                .expect("an explicit peer is limited")
        };
        // With the mesh, b's blocks come over the mesh: the ToR may not announce into pools.
        assert!(!limits(&v).cluster_routes);
        // Without it, and with no wren route reflector, the ToR is where they come from.
        v.cluster.node_to_node_mesh = false;
        let off = limits(&v);
        assert!(off.cluster_routes && !off.default_route);
    }

    #[test]
    fn per_node_as_numbers_are_used() {
        let mut b = node("b", "10.0.0.2/24");
        b.as_number = Some(65010);
        let v = view(vec![node("a", "10.0.0.1/24"), b]);
        assert_eq!(
            desired_peers(&me("a", "10.0.0.1"), &v)[&ip("10.0.0.2")].asn,
            65010
        );
    }
}
