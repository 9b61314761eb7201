//! `wren-model`: the documents wren keeps in etcd and where they live.
//!
//! Every key here is relative to the store prefix (`/wren/v1/` by default). IPAM's own
//! documents (blocks, affinities, handles) are defined in `wren-ipam`; their key layout is
//! here so that every reader agrees on it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub mod community;
pub mod filter;

pub use community::{Community, CommunityError};
pub use filter::{Decision, Filter, FilterAction, FilterError, FilterRule, PrefixMatch};

/// Default private AS number of a wren cluster.
pub const DEFAULT_AS: u32 = 64512;

/// Key layout under the store prefix.
pub mod keys {
    use ipnet::IpNet;

    /// The cluster-wide configuration document ([`super::ClusterConfig`]).
    pub const CLUSTER_CONFIG: &str = "config/cluster";
    /// Prefix of every pool ([`super::Pool`]).
    pub const POOLS: &str = "pools/";
    /// Prefix of every node registration ([`super::Node`]).
    pub const NODES: &str = "nodes/";
    /// Prefix of every explicit BGP peer ([`super::Peer`]).
    pub const PEERS: &str = "peers/";
    /// Prefix of every IPAM block.
    pub const BLOCKS: &str = "ipam/blocks/";
    /// Prefix of every block affinity.
    pub const AFFINITY: &str = "ipam/affinity/";
    /// Prefix of every IPAM handle.
    pub const HANDLES: &str = "ipam/handles/";
    /// Prefix of every workload endpoint.
    pub const WORKLOADS: &str = "workloads/";
    /// Prefix of node liveness keys (attached to each node's lease).
    pub const LIVENESS: &str = "liveness/";
    /// Prefix of every network policy (the `wren-policy` crate's `NetworkPolicy`).
    pub const POLICIES: &str = "policies/";
    /// Prefix of every namespace's labels ([`super::Namespace`]).
    pub const NAMESPACES: &str = "namespaces/";
    /// Prefix of every pod's labels and named ports ([`super::PodMeta`]).
    pub const PODS: &str = "pods/";
    /// Prefix of the cluster's own documents: its identity and rebuild reports.
    pub const CLUSTER: &str = "cluster/";
    /// The cluster's identity ([`super::ClusterIdentity`]), written once.
    pub const CLUSTER_ID: &str = "cluster/id";
    /// Prefix of the nodes' reports while the cluster's data is rebuilt
    /// ([`super::RebuildReport`]).
    pub const REBUILD: &str = "cluster/rebuild/";
    /// The lock key the automatic leak release runs under, on its holder's lease.
    pub const LEAK_RELEASE_LOCK: &str = "locks/ipam-leak-release";

    /// `cluster/rebuild/<node>`
    pub fn rebuild(node: &str) -> String {
        format!("{REBUILD}{node}")
    }

    /// `pools/<name>`
    pub fn pool(name: &str) -> String {
        format!("{POOLS}{name}")
    }
    /// `nodes/<node>`
    pub fn node(name: &str) -> String {
        format!("{NODES}{name}")
    }
    /// `liveness/<node>`: exists while the node's agent keeps its lease alive.
    pub fn liveness(name: &str) -> String {
        format!("{LIVENESS}{name}")
    }
    /// `peers/<name>`
    pub fn peer(name: &str) -> String {
        format!("{PEERS}{name}")
    }
    /// The path segment for a CIDR: `/` becomes `-` (`10.65.0.0-26`, `fd00::-122`).
    pub fn cidr_segment(cidr: &IpNet) -> String {
        cidr.to_string().replace('/', "-")
    }
    /// Parses a segment made by [`cidr_segment`] back into a CIDR.
    pub fn parse_cidr_segment(segment: &str) -> Option<IpNet> {
        let (addr, len) = segment.rsplit_once('-')?;
        format!("{addr}/{len}").parse().ok()
    }
    /// `ipam/blocks/<cidr>`
    pub fn block(cidr: &IpNet) -> String {
        format!("{BLOCKS}{}", cidr_segment(cidr))
    }
    /// `ipam/affinity/<node>/` — every affinity of one node.
    pub fn node_affinities(node: &str) -> String {
        format!("{AFFINITY}{node}/")
    }
    /// `ipam/affinity/<node>/<cidr>`
    pub fn affinity(node: &str, cidr: &IpNet) -> String {
        format!("{AFFINITY}{node}/{}", cidr_segment(cidr))
    }
    /// `ipam/handles/<handle>`
    pub fn handle(handle: &str) -> String {
        format!("{HANDLES}{handle}")
    }
    /// `workloads/<node>/` — every workload of one node.
    pub fn node_workloads(node: &str) -> String {
        format!("{WORKLOADS}{node}/")
    }
    /// `policies/<namespace>/` — every policy of one namespace.
    pub fn namespace_policies(namespace: &str) -> String {
        format!("{POLICIES}{namespace}/")
    }
    /// `policies/<namespace>/<name>`
    pub fn policy(namespace: &str, name: &str) -> String {
        format!("{POLICIES}{namespace}/{name}")
    }
    /// `namespaces/<name>`
    pub fn namespace(name: &str) -> String {
        format!("{NAMESPACES}{name}")
    }
    /// `pods/<namespace>/<name>`: a Kubernetes pod's labels and named ports, by its
    /// identity rather than its attachment, so they outlive a sandbox and may be set
    /// before the pod starts.
    pub fn pod(namespace: &str, name: &str) -> String {
        format!("{PODS}{namespace}/{name}")
    }
    /// `workloads/<node>/<containerID>/<ifname>`
    pub fn workload(node: &str, container_id: &str, ifname: &str) -> String {
        format!("{WORKLOADS}{node}/{container_id}/{ifname}")
    }
}

/// Cluster-wide BGP and IPAM settings (`config/cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// AS number of every node that does not set its own.
    #[serde(default = "default_as")]
    pub as_number: u32,
    /// Whether every node peers with every other node (full iBGP mesh).
    #[serde(default = "default_true")]
    pub node_to_node_mesh: bool,
    /// Refuse to borrow addresses from other nodes' blocks.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Upper bound on blocks one node may claim (0 = unlimited).
    #[serde(default)]
    pub max_blocks_per_node: u32,
    /// BFD on every node-to-node session (mesh and route reflection); none when absent.
    /// Written only when set, so agents that predate it still read the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_bfd: Option<Bfd>,
    /// Communities on every prefix the nodes announce. Written only when set, so agents
    /// that predate them still read the configuration of clusters that do not use them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Communities for the announced prefixes inside given ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// The Services' cluster-IP ranges, which every node announces to its explicit peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_cluster_ips: Vec<IpNet>,
    /// The Services' external-IP ranges, announced as the cluster-IP ranges are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_external_ips: Vec<IpNet>,
    /// The Services' load-balancer ranges, announced as the cluster-IP ranges are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_load_balancer_ips: Vec<IpNet>,
}

impl ClusterConfig {
    /// Every service range, cluster-IP, external and load-balancer, in that order.
    pub fn service_ranges(&self) -> impl Iterator<Item = &IpNet> {
        self.service_cluster_ips
            .iter()
            .chain(&self.service_external_ips)
            .chain(&self.service_load_balancer_ips)
    }
}

/// Communities for every announced prefix inside `cidr` (a pool's blocks, a borrowed
/// address, a service range), on top of the cluster's and the pool's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixAdvertisement {
    /// The range.
    pub cidr: IpNet,
    /// The communities its prefixes carry.
    pub communities: Vec<Community>,
}

fn default_as() -> u32 {
    DEFAULT_AS
}
fn default_true() -> bool {
    true
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            as_number: DEFAULT_AS,
            node_to_node_mesh: true,
            strict_affinity: false,
            max_blocks_per_node: 0,
            communities: Vec::new(),
            prefix_advertisements: Vec::new(),
            service_cluster_ips: Vec::new(),
            service_external_ips: Vec::new(),
            service_load_balancer_ips: Vec::new(),
            node_mesh_bfd: None,
        }
    }
}

/// BFD (RFC 5880, single hop per RFC 5881) on a BGP session: a session that stops hearing
/// its neighbour for `multiplier` intervals takes the BGP session down at once, rather than
/// when the hold timer runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bfd {
    /// The fastest rate this node sends at (Desired Min TX Interval), in milliseconds.
    #[serde(default = "Bfd::default_interval")]
    pub transmit_interval_ms: u32,
    /// The fastest rate this node accepts packets at (Required Min RX Interval), in
    /// milliseconds.
    #[serde(default = "Bfd::default_interval")]
    pub receive_interval_ms: u32,
    /// Packets that may go missing before the session is declared down (Detect Mult).
    #[serde(default = "Bfd::default_multiplier")]
    pub multiplier: u8,
}

impl Bfd {
    /// Shortest interval accepted: 10 ms, as FRR's bfdd (a BFD session runs in the agent's
    /// process, not in a forwarding ASIC).
    pub const MIN_INTERVAL_MS: u32 = 10;
    /// Longest interval accepted: 60 s, as FRR's bfdd.
    pub const MAX_INTERVAL_MS: u32 = 60_000;

    fn default_interval() -> u32 {
        300
    }

    fn default_multiplier() -> u8 {
        3
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<(), InvalidBfd> {
        for (field, value) in [
            ("transmit interval", self.transmit_interval_ms),
            ("receive interval", self.receive_interval_ms),
        ] {
            if !(Self::MIN_INTERVAL_MS..=Self::MAX_INTERVAL_MS).contains(&value) {
                return Err(InvalidBfd::Interval { field, value });
            }
        }
        if self.multiplier == 0 {
            return Err(InvalidBfd::Multiplier);
        }
        Ok(())
    }
}

impl Default for Bfd {
    /// 300 ms both ways, multiplier 3: a failure is noticed within 900 ms.
    fn default() -> Self {
        Self {
            transmit_interval_ms: Self::default_interval(),
            receive_interval_ms: Self::default_interval(),
            multiplier: Self::default_multiplier(),
        }
    }
}

/// A BFD setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBfd {
    /// An interval outside 10–60000 ms.
    #[error("invalid BFD {field} {value} ms: must be 10 to 60000 ms")]
    Interval {
        /// Which interval.
        field: &'static str,
        /// The value given.
        value: u32,
    },
    /// A multiplier of zero.
    #[error("invalid BFD multiplier 0: must be 1 to 255")]
    Multiplier,
}

/// How traffic to a pool's addresses crosses between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encapsulation {
    /// Plain routing: the fabric (or the shared L2 segment) carries pod routes.
    #[default]
    None,
    /// VXLAN (VNI 4096, UDP 4789) through `wren.vxlan`.
    Vxlan,
    /// IP-in-IP through `wrentunl0`.
    Ipip,
}

/// When encapsulation is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncapsulationMode {
    /// Toward every other node.
    #[default]
    Always,
    /// Only toward nodes outside this node's subnet.
    CrossSubnet,
}

/// An address pool (`pools/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The pool's range.
    pub cidr: IpNet,
    /// Prefix length of the blocks nodes claim from it (26 for v4, 122 for v6 by default).
    pub block_size: u8,
    /// Encapsulation toward other nodes.
    #[serde(default)]
    pub encapsulation: Encapsulation,
    /// When encapsulation applies.
    #[serde(default)]
    pub encapsulation_mode: EncapsulationMode,
    /// Masquerade traffic from this pool to destinations outside every pool.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// A disabled pool hands out no new blocks; existing allocations stay.
    #[serde(default)]
    pub disabled: bool,
    /// Communities on every prefix of this pool the nodes announce (written only when set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
}

impl Pool {
    /// The default block size for a pool of this address family.
    pub fn default_block_size(cidr: &IpNet) -> u8 {
        match cidr {
            IpNet::V4(_) => 26,
            IpNet::V6(_) => 122,
        }
    }
}

/// A node registration (`nodes/<node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Node name (the hostname by default).
    pub name: String,
    /// The node's IPv4 address with its prefix length (e.g. `10.0.0.2/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Net>,
    /// The node's IPv6 address with its prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Net>,
    /// Per-node AS number; the cluster's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Set on route reflectors: their cluster id (dotted quad).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<std::net::Ipv4Addr>,
    /// MAC of the node's `wren.vxlan` device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mac: Option<String>,
    /// Address of the node's `wren.vxlan` device (allocated from the pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_address: Option<IpAddr>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Node {
    /// A registration with a name and an IPv4 address and nothing else set.
    pub fn new(name: impl Into<String>, ipv4: Option<Ipv4Net>) -> Self {
        Self {
            name: name.into(),
            ipv4,
            ipv6: None,
            as_number: None,
            route_reflector_cluster_id: None,
            vxlan_mac: None,
            vxlan_address: None,
            labels: BTreeMap::new(),
        }
    }
}

/// An explicit BGP peer (`peers/<name>`), e.g. a top-of-rack router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// The peer's address.
    pub peer_ip: IpAddr,
    /// The peer's AS number.
    pub as_number: u32,
    /// Only this node peers with it; every node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// TCP MD5 password (RFC 2385).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Do not rewrite the next hop toward this peer.
    #[serde(default)]
    pub keep_original_next_hop: bool,
    /// Accept routes from this peer inside the cluster's pools and for node addresses, which
    /// otherwise only the nodes themselves speak for. Written only when set, so agents that
    /// predate it still read the peers that do not use it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub accept_cluster_routes: bool,
    /// Accept a default route from this peer (otherwise filtered).
    #[serde(default, skip_serializing_if = "is_false")]
    pub accept_default_route: bool,
    /// Which of the peer's routes the node takes, after the limits above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_filter: Option<Filter>,
    /// Which of the node's announcements the peer gets, and their AS-path prepends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_filter: Option<Filter>,
    /// BFD on the session; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<Bfd>,
    /// Hold time proposed to the peer, in seconds (0: no keepalives, else 3–65535; the
    /// session runs with the smaller of both sides'); 90 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<u16>,
    /// GTSM (RFC 5082): send with TTL 255 and accept only packets that crossed at most this
    /// many hops (1: directly connected); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// Seconds between the node's KEEPALIVEs, 1 to a third of the hold time proposed (cut to
    /// a third of the hold time the session agrees on, if that is shorter); a third of it when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time_secs: Option<u16>,
    /// The AS the node speaks on this session instead of its own (Calico's
    /// `localASNumber`, BIRD's `local as`): in its OPEN and first on the AS path the peer
    /// hears; the node's AS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_as_number: Option<u32>,
    /// The node's address the session (and its BFD) is opened from; the node's address of
    /// the peer's family when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<IpAddr>,
    /// The most prefixes the peer may announce; [`MaxPrefixes::DEFAULT`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<MaxPrefixes>,
}

/// A bound on the prefixes a peer announces (taken or held back by import policy alike).
/// Past the limit the session ends with Cease / Maximum Number of Prefixes Reached (RFC 4486)
/// and the peer's routes go; it is tried again after `restartAfterSecs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaxPrefixes {
    /// The most prefixes the peer may announce.
    pub limit: u32,
    /// At this share of the limit, in percent, a warning is logged.
    #[serde(default = "MaxPrefixes::default_warning")]
    pub warning_percent: u8,
    /// Seconds the session stays down after the limit was passed.
    #[serde(default = "MaxPrefixes::default_restart")]
    pub restart_after_secs: u32,
}

impl MaxPrefixes {
    /// Every explicit peer's limit unless it names one: far above what a ToR or route
    /// reflector sends a node of a large cluster (its blocks and a default route), far below
    /// what takes a node's memory.
    pub const DEFAULT: MaxPrefixes = MaxPrefixes {
        limit: 100_000,
        warning_percent: 75,
        restart_after_secs: 60,
    };

    fn default_warning() -> u8 {
        Self::DEFAULT.warning_percent
    }

    fn default_restart() -> u32 {
        Self::DEFAULT.restart_after_secs
    }

    /// The prefix count at which the warning is logged.
    pub fn warning(&self) -> u32 {
        u32::try_from(u64::from(self.limit) * u64::from(self.warning_percent) / 100)
            .unwrap_or(self.limit)
    }
}

/// Why an AS cannot be the one a node speaks on a session; the wire would carry it wrong.
fn check_local_as(asn: u32) -> Result<(), &'static str> {
    match asn {
        0 => Err("AS 0 is reserved (RFC 7607)"),
        23456 => Err("AS_TRANS stands in for 4-octet ASes on the wire (RFC 6793)"),
        u32::MAX => Err("reserved (RFC 7300)"),
        _ => Ok(()),
    }
}

impl Peer {
    /// The hold time the node proposes when the peer names none, in seconds.
    pub const DEFAULT_HOLD_TIME: u16 = 90;

    /// Checks the session controls, naming the first field out of range.
    pub fn validate(&self) -> Result<(), InvalidPeer> {
        if let Some(max) = &self.max_prefixes {
            if max.limit == 0 {
                return Err(InvalidPeer::MaxPrefixes(
                    "limit 0: must be at least 1".into(),
                ));
            }
            if !(1..=100).contains(&max.warning_percent) {
                return Err(InvalidPeer::MaxPrefixes(format!(
                    "warning at {} %: must be 1 to 100",
                    max.warning_percent
                )));
            }
            if !(1..=86_400).contains(&max.restart_after_secs) {
                return Err(InvalidPeer::MaxPrefixes(format!(
                    "restart after {} s: must be 1 s to 1 day",
                    max.restart_after_secs
                )));
            }
        }
        if let Some(bfd) = &self.bfd {
            bfd.validate()?;
        }
        if let Some(hold) = self.hold_time
            && (hold == 1 || hold == 2)
        {
            return Err(InvalidPeer::HoldTime(hold));
        }
        if let Some(hops) = self.ttl_security
            && !(1..=254).contains(&hops)
        {
            return Err(InvalidPeer::TtlSecurity(hops));
        }
        if let Some(keepalive) = self.keepalive_time_secs {
            let hold = self.hold_time.unwrap_or(Self::DEFAULT_HOLD_TIME);
            if hold == 0 {
                return Err(InvalidPeer::KeepaliveWithoutHoldTime(keepalive));
            }
            if keepalive == 0 || keepalive > hold / 3 {
                return Err(InvalidPeer::KeepaliveTime { keepalive, hold });
            }
        }
        if let Some(asn) = self.local_as_number
            && let Err(why) = check_local_as(asn)
        {
            return Err(InvalidPeer::LocalAs(asn, why));
        }
        if let Some(source) = self.source_address {
            if source.is_unspecified() || source.is_multicast() || source.is_loopback() {
                return Err(InvalidPeer::SourceAddress(source, "not a unicast address"));
            }
            if source.is_ipv4() != self.peer_ip.is_ipv4() {
                return Err(InvalidPeer::SourceAddress(
                    source,
                    "of the other address family than the peer's",
                ));
            }
        }
        Ok(())
    }
}

/// A peer's session control out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPeer {
    /// A BFD setting.
    #[error(transparent)]
    Bfd(#[from] InvalidBfd),
    /// A hold time of 1 or 2 s (RFC 4271 §4.2).
    #[error("invalid hold time {0}: must be 0 (no keepalives) or 3 to 65535 seconds")]
    HoldTime(u16),
    /// A GTSM hop count of 0 or 255.
    #[error("invalid ttl security {0}: must be 1 to 254 hops")]
    TtlSecurity(u8),
    /// A keepalive time of 0, or longer than a third of the hold time proposed.
    #[error(
        "invalid keepalive time {keepalive}: must be 1 to a third of the hold time ({hold} s) in seconds"
    )]
    KeepaliveTime {
        /// The keepalive time given.
        keepalive: u16,
        /// The hold time proposed.
        hold: u16,
    },
    /// A keepalive time with hold time 0, which means no KEEPALIVEs at all.
    #[error("invalid keepalive time {0}: hold time 0 sends no keepalives")]
    KeepaliveWithoutHoldTime(u16),
    /// A local AS the node cannot speak.
    #[error("invalid local AS {0}: {1}")]
    LocalAs(u32, &'static str),
    /// A source address no session can be opened from.
    #[error("invalid source address {0}: {1}")]
    SourceAddress(IpAddr, &'static str),
    /// A prefix limit out of range.
    #[error("invalid max prefixes: {0}")]
    MaxPrefixes(String),
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A pod's endpoint on a node (`workloads/<node>/<containerID>/<ifname>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Node the pod runs on.
    pub node: String,
    /// Runtime container id.
    pub container_id: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// CNI network name.
    pub network: String,
    /// IPAM handle (`<network>.<containerID>`).
    pub handle: String,
    /// Kubernetes pod namespace, when the runtime says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// Kubernetes pod name, when the runtime says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Kubernetes pod uid, when the runtime says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// The pod's addresses (/32 and /128).
    pub addresses: Vec<IpNet>,
    /// Name of the host-side veth.
    pub host_interface: String,
    /// MAC of the pod-side interface.
    pub mac: String,
}

impl Workload {
    /// `namespace/name` of the Kubernetes pod (just the name without a namespace), when the
    /// runtime said.
    pub fn pod(&self) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(namespace), Some(name)) => Some(format!("{namespace}/{name}")),
            (None, Some(name)) => Some(name.clone()),
            _ => None,
        }
    }
}

/// A transport protocol of a port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The protocol's name in lower case, as nftables and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name that is not `tcp`, `udp` or `sctp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (tcp, udp or sctp)")]
pub struct UnknownProtocol(pub String);

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(UnknownProtocol(s.to_owned())),
        }
    }
}

/// A named container port, which a network policy's named port resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedPort {
    /// The port's name.
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// A namespace's labels (`namespaces/<name>`). Every namespace also carries
/// `kubernetes.io/metadata.name: <name>`, implied rather than stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// The labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A Kubernetes pod's labels and named ports (`pods/<namespace>/<name>`), which network
/// policy selects and resolves; its addresses are its workloads'.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMeta {
    /// The pod's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The pod's named container ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NamedPort>,
}

/// The cluster's identity (`cluster/id`): written once, by the first agent that finds neither
/// an identity nor a rebuild under way, and remembered by every agent that sees it. A
/// datastore that answers without it (or with another) has lost the cluster's data, and the
/// agents do not act on what it says until it is rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIdentity {
    /// A random UUID.
    pub id: String,
    /// When it was written (seconds since the Unix epoch).
    pub created_at: u64,
}

/// One node's part of a rebuild (`cluster/rebuild/<node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// The identity the node remembers; `None` for a node that never saw one (it has
    /// nothing to give back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The node has written back everything it holds.
    pub restored: bool,
}

/// IPAM handle of a pod's addresses: `<network>.<containerID>`.
pub fn workload_handle(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// IPAM handle of a node's VXLAN tunnel address.
pub fn vxlan_tunnel_handle(node: &str) -> String {
    format!("vxlan-tunnel-addr-{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_segments_round_trip() {
        for s in ["10.65.0.0/26", "fd00:10::/122"] {
            let net: IpNet = s.parse().unwrap();
            let seg = keys::cidr_segment(&net);
            assert!(!seg.contains('/'));
            assert_eq!(keys::parse_cidr_segment(&seg), Some(net));
        }
    }

    #[test]
    fn pool_document_matches_design() {
        let p: Pool = serde_json::from_str(
            r#"{"cidr":"10.65.0.0/16","blockSize":26,"encapsulation":"vxlan","encapsulationMode":"cross-subnet","natOutgoing":true,"disabled":false}"#,
        )
        .unwrap();
        assert_eq!(p.encapsulation, Encapsulation::Vxlan);
        assert_eq!(p.encapsulation_mode, EncapsulationMode::CrossSubnet);
        // A field of a newer version is no reason to refuse the pool: reads set it aside
        // (wren_store::json keeps it for writes).
        let newer: Pool =
            serde_json::from_str(r#"{"cidr":"10.0.0.0/8","blockSize":26,"futureField":1}"#)
                .unwrap();
        assert_eq!(newer.block_size, 26);
    }
}
