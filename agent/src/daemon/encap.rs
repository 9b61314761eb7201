//! Encapsulation and egress: which tunnels the pools call for, how each learned route is
//! shaped to use them, the node's VXLAN identity in etcd, MTUs, and outgoing NAT.
//!
//! Every pass starts from the view. A pool that encapsulates and is in use (enabled, or still
//! holding blocks) makes the node want the tunnel of its kind. For VXLAN the node needs an
//! identity the other nodes can reach it by: a tunnel address from the pool (IPAM handle
//! `vxlan-tunnel-addr-<node>`) and a MAC derived from its name, both published in
//! `nodes/<node>`. The kernel side ([`EncapProgrammer`]) then builds the devices, one
//! neighbour and one forwarding entry per remote node, and the NAT tables, and reports the
//! MTUs and which tunnels are up. Last, every route learned over BGP whose prefix lies in an
//! encapsulating pool is reshaped ([`shape_routes`]):
//!
//! | pool | remote node | route |
//! |---|---|---|
//! | none, or no pool holds the prefix, or the next hop is no known node | — | `via <node ip>` |
//! | `vxlan`, `always`, or `cross-subnet` and the node is outside our subnet | has a tunnel address and MAC | `via <its tunnel address> dev wren.vxlan onlink` |
//! | `ipip`, `always`, or `cross-subnet` and the node is outside our subnet | — | `via <node ip> dev wrentunl0 onlink` |
//! | `cross-subnet`, node inside our subnet | — | `via <node ip>` |
//!
//! "Our subnet" is this node's IPv4 address and prefix length. Tunnels carry IPv4 only: an
//! IPv6 prefix keeps its plain route. A route that needs a tunnel this node cannot build (IPIP
//! on a kernel without it) is left out rather than installed in a shape that cannot work, and
//! counted in the status.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wren_ipam::{AllocateRequest, Ipam};
use wren_model::{Encapsulation, EncapsulationMode, Node, Pool, keys, vxlan_tunnel_handle};
use wren_store::Store;
use wren_store::json::JsonStore;

use super::view::ClusterView;
use crate::dataplane::PodDefaults;
use crate::dataplane::ipip::{IPIP_DEVICE, IpipDevice, IpipManager, IpipSupport};
use crate::dataplane::mtu::{MtuOverrides, Mtus, OffloadSizes, PassUnderlay, TunnelKind};
use crate::dataplane::nat::{NatManager, NatRules};
use crate::dataplane::pod::format_mac;
use crate::dataplane::program::routes::DesiredRoutes;
use crate::dataplane::vxlan::{VXLAN_DEVICE, VxlanDevice, VxlanManager, VxlanPeer};
use crate::dataplane::{Gateway, NetlinkError, NextHop, Protocol};
use crate::metrics::{Metrics, TunnelLabels};
use crate::sync::lock;

/// The MAC of a node's `wren.vxlan`: the first six bytes of a SHA-256 of its name, marked
/// locally administered and unicast. The same name gives the same MAC on every start.
pub fn tunnel_mac(node: &str) -> [u8; 6] {
    let digest = Sha256::digest(format!("wren.vxlan/{node}").as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] | 0x02) & !0x01;
    mac
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// Whether a pool carries traffic: enabled, or still holding blocks of pods made before it
/// was disabled.
fn in_use(pool: &Pool, view: &ClusterView) -> bool {
    !pool.disabled || view.blocks.keys().any(|block| pool.cidr.contains(block))
}

/// The pool holding `prefix`, if any.
fn pool_of<'a>(view: &'a ClusterView, prefix: &IpNet) -> Option<&'a Pool> {
    view.pools.values().find(|p| p.cidr.contains(prefix))
}

/// The tunnels the pools call for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// A pool in use encapsulates with VXLAN.
    pub vxlan: bool,
    /// A pool in use encapsulates with IPIP.
    pub ipip: bool,
    /// Enabled IPv4 VXLAN pools, by name: where the tunnel address comes from.
    pub vxlan_pools: Vec<String>,
}

impl Wanted {
    /// Reads what the pools ask for.
    pub fn of(view: &ClusterView) -> Wanted {
        let mut w = Wanted::default();
        for (name, pool) in &view.pools {
            if !in_use(pool, view) {
                continue;
            }
            match pool.encapsulation {
                Encapsulation::Vxlan => {
                    w.vxlan = true;
                    if !pool.disabled && pool.cidr.addr().is_ipv4() {
                        w.vxlan_pools.push(name.clone());
                    }
                }
                Encapsulation::Ipip => w.ipip = true,
                Encapsulation::None => {}
            }
        }
        w
    }

    /// The tunnel kinds that carry pod traffic, for the MTUs.
    pub fn kinds(&self) -> Vec<TunnelKind> {
        let mut kinds = Vec::new();
        if self.vxlan {
            kinds.push(TunnelKind::Vxlan);
        }
        if self.ipip {
            kinds.push(TunnelKind::Ipip);
        }
        kinds
    }
}

/// What to masquerade: sources in `natOutgoing` pools toward anything outside every pool.
pub fn nat_rules(view: &ClusterView) -> NatRules {
    NatRules {
        pools: view.pools.values().map(|p| p.cidr).collect(),
        masquerade: view
            .pools
            .values()
            .filter(|p| p.nat_outgoing && in_use(p, view))
            .map(|p| p.cidr)
            .collect(),
    }
}

/// The other nodes reachable through VXLAN: those with an IPv4 address and a published
/// tunnel address and MAC.
pub fn vxlan_peers(me: &str, view: &ClusterView) -> Vec<VxlanPeer> {
    view.nodes
        .values()
        .filter(|n| n.name != me)
        .filter_map(|n| {
            let IpAddr::V4(tunnel_address) = n.vxlan_address? else {
                return None;
            };
            Some(VxlanPeer {
                node_ip: n.ipv4?.addr(),
                tunnel_address,
                mac: parse_mac(n.vxlan_mac.as_deref()?)?,
            })
        })
        .collect()
}

/// Which tunnels this node can send through right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tunnels {
    /// `wren.vxlan` is up with the node's tunnel address.
    pub vxlan: bool,
    /// `wrentunl0` is up.
    pub ipip: bool,
}

/// How many routes [`shape_routes`] sent where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shaped {
    /// Routes through `wren.vxlan`.
    pub vxlan: usize,
    /// Routes through `wrentunl0`.
    pub ipip: usize,
    /// Routes left out: they need a tunnel this node cannot build now.
    pub left_out: usize,
}

/// Reshapes the learned routes in `routes` (see the module table). `node_ip` is this node's
/// address with its prefix length: it decides which nodes share its subnet.
pub fn shape_routes(
    node_ip: Ipv4Net,
    view: &ClusterView,
    tunnels: Tunnels,
    routes: &mut DesiredRoutes,
) -> Shaped {
    let by_address: HashMap<IpAddr, &Node> = view
        .nodes
        .values()
        .flat_map(|n| {
            let v4 = n.ipv4.map(|a| (IpAddr::V4(a.addr()), n));
            let v6 = n.ipv6.map(|a| (IpAddr::V6(a.addr()), n));
            v4.into_iter().chain(v6)
        })
        .collect();
    let mut shaped = Shaped::default();
    let mut left_out = Vec::new();
    for (prefix, route) in routes.iter_mut() {
        if route.protocol != Protocol::BGP {
            continue;
        }
        let gateways = route.next_hop.gateway_list();
        if gateways.is_empty() || gateways.iter().any(|g| g.dev.is_some() || g.onlink) {
            continue; // shaped already, or not a learned route's plain gateways
        }
        let Some(pool) = pool_of(view, prefix) else {
            continue;
        };
        let hops: Vec<Hop> = gateways
            .iter()
            .map(|g| shape_hop(node_ip, pool, by_address.get(&g.via).copied(), tunnels, g))
            .collect();
        // A multipath route is one device's: where some next hops share this node's segment
        // and others need a tunnel, the ones on the segment carry it.
        let (mut plain, mut through_tunnel) = (Vec::new(), Vec::new());
        for hop in &hops {
            match hop {
                Hop::Plain(g) => plain.push(g.clone()),
                Hop::Tunnel(g) => through_tunnel.push(g.clone()),
                Hop::LeftOut => {}
            }
        }
        let tunnelled = plain.is_empty();
        let next_hop = if tunnelled {
            NextHop::gateways(through_tunnel)
        } else if plain.len() == hops.len() {
            continue;
        } else {
            NextHop::gateways(plain)
        };
        match next_hop {
            Some(next_hop) => {
                if tunnelled {
                    match pool.encapsulation {
                        Encapsulation::Vxlan => shaped.vxlan += 1,
                        Encapsulation::Ipip => shaped.ipip += 1,
                        Encapsulation::None => {}
                    }
                }
                route.next_hop = next_hop;
            }
            None => left_out.push(*prefix),
        }
    }
    for prefix in &left_out {
        routes.remove(prefix);
    }
    shaped.left_out = left_out.len();
    shaped
}

/// Where one next hop of a learned route goes once the pool's encapsulation is applied.
enum Hop {
    /// Straight to the gateway, unencapsulated.
    Plain(Gateway),
    /// Into a tunnel device.
    Tunnel(Gateway),
    /// Nowhere: it needs a tunnel this node cannot build now.
    LeftOut,
}

/// Shapes one next hop of a route into `pool` (see the module table); `node` is the node
/// at that address, if one is.
fn shape_hop(
    node_ip: Ipv4Net,
    pool: &Pool,
    node: Option<&Node>,
    tunnels: Tunnels,
    gateway: &Gateway,
) -> Hop {
    let plain = Hop::Plain(gateway.clone());
    let (IpAddr::V4(address), Some(node)) = (gateway.via, node) else {
        return plain; // tunnels carry IPv4 only, and only to nodes
    };
    let encapsulate = match pool.encapsulation_mode {
        EncapsulationMode::Always => true,
        EncapsulationMode::CrossSubnet => !node_ip.contains(&address),
    };
    if !encapsulate {
        return plain;
    }
    let onlink = |via: IpAddr, dev: &str| {
        Hop::Tunnel(Gateway {
            via,
            dev: Some(dev.to_owned()),
            onlink: true,
        })
    };
    match pool.encapsulation {
        Encapsulation::None => plain,
        Encapsulation::Vxlan => {
            let peer = node
                .vxlan_address
                .filter(|a| a.is_ipv4())
                .zip(node.vxlan_mac.as_deref().and_then(parse_mac));
            // Without both ends of the tunnel (the remote node has not published its
            // tunnel, or ours is not up) the plain route is the only chance, and the
            // right one on a shared segment.
            match (tunnels.vxlan, peer) {
                (true, Some((via, _))) => onlink(via, VXLAN_DEVICE),
                _ => plain,
            }
        }
        Encapsulation::Ipip if tunnels.ipip => onlink(gateway.via, IPIP_DEVICE),
        Encapsulation::Ipip => Hop::LeftOut,
    }
}

/// The node's VXLAN identity, as the kernel side needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanIdentity {
    /// The tunnel address (on the device as /32).
    pub address: Ipv4Addr,
    /// The device's MAC.
    pub mac: [u8; 6],
}

/// What the kernel side is asked for in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncapDesired {
    /// `wren.vxlan` with this identity; removed when `None`.
    pub vxlan: Option<VxlanIdentity>,
    /// The other nodes' VXLAN ends.
    pub peers: Vec<VxlanPeer>,
    /// `wrentunl0` wanted.
    pub ipip: bool,
    /// Outgoing NAT.
    pub nat: NatRules,
    /// Tunnels that carry pod traffic (for the pods' MTU).
    pub in_use: Vec<TunnelKind>,
}

/// What the kernel side did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncapOutcome {
    /// The MTUs in force (derived from the underlay, or cautious when it is unknown).
    pub mtus: Mtus,
    /// The pods' GSO/GRO sizes: the underlay's when they are big and nothing is encapsulated.
    pub pod_offload: Option<OffloadSizes>,
    /// The underlay interface's name, when found.
    pub underlay: Option<String>,
    /// Which tunnels are up.
    pub tunnels: Tunnels,
    /// Whether the kernel can make IPIP devices.
    pub ipip_support: IpipSupport,
    /// Whether outgoing NAT is in place.
    pub nat: bool,
    /// Whether anything was changed.
    pub changed: bool,
    /// What failed, in words.
    pub errors: Vec<String>,
}

/// Puts tunnels and NAT into the kernel.
#[async_trait]
pub trait EncapProgrammer: Send + Sync {
    /// Brings devices, entries and NAT tables to `desired` over `underlay` (the pass's
    /// lookup, shared with the fast path) and reports the result.
    async fn program(&self, desired: &EncapDesired, underlay: &PassUnderlay) -> EncapOutcome;
}

/// The managers the kernel programmer drives, on the blocking pool.
struct Managers {
    vxlan: VxlanManager,
    ipip: IpipManager,
    nat: NatManager,
}

/// [`EncapProgrammer`] on the kernel of the network namespace it was opened in.
pub struct KernelEncap {
    node_ip: Ipv4Addr,
    overrides: MtuOverrides,
    ipip_support: IpipSupport,
    managers: Arc<Mutex<Managers>>,
}

impl KernelEncap {
    /// Opens netlink sockets in the calling thread's network namespace and probes for IPIP.
    pub fn open(node_ip: Ipv4Addr, overrides: MtuOverrides) -> Result<Self, NetlinkError> {
        let mut ipip = IpipManager::new()?;
        let ipip_support = ipip.probe(node_ip);
        match &ipip_support {
            IpipSupport::Available => tracing::info!("IPIP is available"),
            IpipSupport::Missing { reason } => tracing::warn!(
                "IPIP is not available: {reason}; pools with encapsulation ipip cannot carry \
                 traffic to or from this node"
            ),
        }
        Ok(Self {
            node_ip,
            overrides,
            ipip_support,
            managers: Arc::new(Mutex::new(Managers {
                vxlan: VxlanManager::new()?,
                ipip,
                nat: NatManager::new(),
            })),
        })
    }

    /// What the start-up probe found about IPIP.
    pub fn ipip_support(&self) -> &IpipSupport {
        &self.ipip_support
    }
}

fn program_blocking(
    managers: &mut Managers,
    node_ip: Ipv4Addr,
    overrides: MtuOverrides,
    ipip_support: IpipSupport,
    desired: &EncapDesired,
    underlay: &PassUnderlay,
) -> EncapOutcome {
    let mut errors = Vec::new();
    let mut changed = false;
    let underlay = match underlay.get() {
        Ok(u) => Some(u.clone()),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let mtus = match &underlay {
        Some(u) => Mtus::derive(u.mtu, &desired.in_use, overrides),
        None => Mtus::cautious(overrides),
    };
    let pod_offload = underlay
        .as_ref()
        .and_then(|u| OffloadSizes::for_pods(u.offload, &desired.in_use));
    let mut tunnels = Tunnels::default();
    let vxlan_want = desired
        .vxlan
        .zip(underlay.as_ref())
        .map(|(id, u)| VxlanDevice {
            local: node_ip,
            parent: u.index,
            mac: id.mac,
            address: id.address,
            mtu: mtus.vxlan,
        });
    // Without an underlay the device cannot be made; one that exists is left as it is.
    if vxlan_want.is_some() || desired.vxlan.is_none() {
        match managers
            .vxlan
            .reconcile(vxlan_want.as_ref().map(|d| (d, desired.peers.as_slice())))
        {
            Ok(report) => {
                changed |= report.changed();
                tunnels.vxlan = vxlan_want.is_some();
                errors.extend(report.failures);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if ipip_support.available() {
        let want = desired.ipip.then_some(IpipDevice {
            local: node_ip,
            mtu: mtus.ipip,
        });
        match managers.ipip.reconcile(want.as_ref()) {
            Ok(report) => {
                changed |= report.changed();
                tunnels.ipip = want.is_some();
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let nat = match managers.nat.reconcile(&desired.nat) {
        Ok(report) => {
            changed |= report.changed();
            !desired.nat.masquerade.is_empty()
        }
        Err(e) => {
            errors.push(e.to_string());
            false
        }
    };
    EncapOutcome {
        mtus,
        pod_offload,
        underlay: underlay.map(|u| u.name),
        tunnels,
        ipip_support,
        nat,
        changed,
        errors,
    }
}

#[async_trait]
impl EncapProgrammer for KernelEncap {
    async fn program(&self, desired: &EncapDesired, underlay: &PassUnderlay) -> EncapOutcome {
        let managers = self.managers.clone();
        let underlay = underlay.clone();
        let (node_ip, overrides) = (self.node_ip, self.overrides);
        let support = self.ipip_support.clone();
        let desired = desired.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut managers = lock(&managers);
            program_blocking(
                &mut managers,
                node_ip,
                overrides,
                support,
                &desired,
                &underlay,
            )
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(e) => EncapOutcome {
                mtus: Mtus::cautious(self.overrides),
                pod_offload: None,
                underlay: None,
                tunnels: Tunnels::default(),
                ipip_support: self.ipip_support.clone(),
                nat: false,
                changed: false,
                errors: vec![format!("tunnel programming task failed: {e}")],
            },
        }
    }
}

/// One tunnel in the status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    /// A pool in use calls for it.
    pub wanted: bool,
    /// The device is up.
    pub up: bool,
    /// Its MTU.
    pub mtu: u32,
}

/// The encapsulation part of `wren status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncapStatus {
    /// `wren.vxlan`.
    pub vxlan: TunnelStatus,
    /// This node's tunnel address, when it has one.
    pub vxlan_address: Option<Ipv4Addr>,
    /// This node's tunnel MAC, when it has a tunnel address.
    pub vxlan_mac: Option<String>,
    /// Other nodes reachable through VXLAN.
    pub vxlan_peers: usize,
    /// `wrentunl0`.
    pub ipip: TunnelStatus,
    /// Why IPIP cannot work on this kernel; `None` when it can.
    pub ipip_unavailable: Option<String>,
    /// The underlay interface and its MTU.
    pub underlay: Option<String>,
    /// The underlay's MTU.
    pub underlay_mtu: u32,
    /// The MTU pods get when their network configuration sets none.
    pub pod_mtu: u32,
    /// The largest GSO/GRO packet pods get, when beyond the standard 64 KiB (BIG TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_offload_size: Option<u32>,
    /// Outgoing NAT is in place.
    pub nat_outgoing: bool,
    /// Where learned routes go.
    pub routes: Shaped,
    /// What failed in the last pass.
    pub errors: Vec<String>,
}

impl EncapStatus {
    /// Whether this node can carry every pool's traffic: false when a pool in use needs IPIP
    /// and the kernel has none.
    pub fn healthy(&self) -> bool {
        !(self.ipip.wanted && self.ipip_unavailable.is_some())
    }

    /// The lines `wren status` prints.
    pub fn render(&self) -> String {
        let tunnel = |t: &TunnelStatus, device: &str| match (t.wanted, t.up) {
            (false, _) => "not used".to_owned(),
            (true, true) => format!("{device} up, MTU {}", t.mtu),
            (true, false) => format!("{device} wanted but not up"),
        };
        let mut out = String::new();
        let mut vxlan = tunnel(&self.vxlan, VXLAN_DEVICE);
        if let (true, Some(address), Some(mac)) =
            (self.vxlan.up, self.vxlan_address, &self.vxlan_mac)
        {
            vxlan.push_str(&format!(
                ", tunnel address {address}, MAC {mac}, {} peer(s), {} route(s)",
                self.vxlan_peers, self.routes.vxlan
            ));
        }
        out.push_str(&format!("VXLAN: {vxlan}\n"));
        let ipip = match &self.ipip_unavailable {
            Some(reason) if self.ipip.wanted => {
                format!("NEEDED BY A POOL BUT UNAVAILABLE: {reason}")
            }
            Some(reason) => format!("unavailable ({reason})"),
            None if self.ipip.up => format!(
                "{}, {} route(s)",
                tunnel(&self.ipip, IPIP_DEVICE),
                self.routes.ipip
            ),
            None => tunnel(&self.ipip, IPIP_DEVICE),
        };
        out.push_str(&format!("IPIP: {ipip}\n"));
        if self.routes.left_out > 0 {
            out.push_str(&format!(
                "Routes left out (their tunnel cannot be built): {}\n",
                self.routes.left_out
            ));
        }
        out.push_str(&format!(
            "MTU: pods {}, underlay {} {}\n",
            self.pod_mtu,
            self.underlay.as_deref().unwrap_or("(not found)"),
            self.underlay_mtu
        ));
        if let Some(size) = self.pod_offload_size {
            out.push_str(&format!(
                "Pod GSO/GRO: up to {size} bytes, as the underlay (BIG TCP; no tunnel in use)\n"
            ));
        }
        out.push_str(&format!(
            "Outgoing NAT: {}\n",
            if self.nat_outgoing { "on" } else { "off" }
        ));
        for e in &self.errors {
            out.push_str(&format!("Encapsulation error: {e}\n"));
        }
        out
    }

    /// Sets the encapsulation metrics.
    pub fn publish(&self, metrics: &Metrics) {
        for (kind, tunnel, available) in [
            ("vxlan", &self.vxlan, true),
            ("ipip", &self.ipip, self.ipip_unavailable.is_none()),
        ] {
            let labels = TunnelLabels {
                r#type: kind.to_owned(),
            };
            metrics
                .tunnel_available
                .get_or_create(&labels)
                .set(i64::from(available));
            metrics
                .tunnel_up
                .get_or_create(&labels)
                .set(i64::from(tunnel.up));
            let routes = match kind {
                "vxlan" => self.routes.vxlan,
                _ => self.routes.ipip,
            };
            metrics
                .tunnel_routes
                .get_or_create(&labels)
                .set(i64::try_from(routes).unwrap_or(i64::MAX));
        }
        metrics.pod_mtu.set(i64::from(self.pod_mtu));
    }
}

/// The daemon's encapsulation work: one [`Encap::pass`] per controller pass.
pub struct Encap {
    node: String,
    node_ip: Ipv4Net,
    store: Arc<dyn Store>,
    ipam: Arc<Ipam>,
    kernel: Arc<dyn EncapProgrammer>,
    pod_defaults: Arc<PodDefaults>,
    /// The tunnel address this run holds, once allocated.
    tunnel_address: Mutex<Option<Ipv4Addr>>,
    /// The errors of the previous pass, so each is logged when it appears, not every pass.
    last_errors: Mutex<Vec<String>>,
}

impl Encap {
    /// Encapsulation for node `node` at `node_ip`; `pod_defaults` is where the pods' MTU and
    /// offload sizes are published for the CNI handler (they start cautious).
    pub fn new(
        node: impl Into<String>,
        node_ip: Ipv4Net,
        store: Arc<dyn Store>,
        ipam: Arc<Ipam>,
        kernel: Arc<dyn EncapProgrammer>,
        pod_defaults: Arc<PodDefaults>,
    ) -> Self {
        Self {
            node: node.into(),
            node_ip,
            store,
            ipam,
            kernel,
            pod_defaults,
            tunnel_address: Mutex::new(None),
            last_errors: Mutex::new(Vec::new()),
        }
    }

    fn cached_address(&self) -> Option<Ipv4Addr> {
        *lock(&self.tunnel_address)
    }

    fn cache_address(&self, address: Option<Ipv4Addr>) {
        *lock(&self.tunnel_address) = address;
    }

    /// Makes tunnels, entries and NAT follow the view over `underlay` (the pass's lookup),
    /// reshapes `routes`, and returns the status of it all.
    pub async fn pass(
        &self,
        view: &ClusterView,
        wanted: &Wanted,
        routes: &mut DesiredRoutes,
        underlay: &PassUnderlay,
    ) -> EncapStatus {
        let mut errors = Vec::new();
        let identity = if wanted.vxlan {
            match self.claim_identity(view, &wanted.vxlan_pools).await {
                Ok(identity) => Some(identity),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        } else {
            if let Err(e) = self.retire_identity(view).await {
                errors.push(e);
            }
            None
        };
        let desired = EncapDesired {
            vxlan: identity,
            peers: if identity.is_some() {
                vxlan_peers(&self.node, view)
            } else {
                Vec::new()
            },
            ipip: wanted.ipip,
            nat: nat_rules(view),
            in_use: wanted.kinds(),
        };
        let outcome = self.kernel.program(&desired, underlay).await;
        if outcome.changed {
            tracing::info!(
                vxlan = outcome.tunnels.vxlan,
                ipip = outcome.tunnels.ipip,
                nat = outcome.nat,
                pod_mtu = outcome.mtus.pod,
                "tunnels and NAT reconciled"
            );
        }
        errors.extend(outcome.errors.iter().cloned());
        self.pod_defaults.set(outcome.mtus.pod, outcome.pod_offload);
        let shaped = shape_routes(self.node_ip, view, outcome.tunnels, routes);
        self.log_new_errors(&errors);
        EncapStatus {
            vxlan: TunnelStatus {
                wanted: wanted.vxlan,
                up: outcome.tunnels.vxlan,
                mtu: outcome.mtus.vxlan,
            },
            vxlan_address: identity.map(|i| i.address),
            vxlan_mac: identity.map(|i| format_mac(&i.mac)),
            vxlan_peers: desired.peers.len(),
            ipip: TunnelStatus {
                wanted: wanted.ipip,
                up: outcome.tunnels.ipip,
                mtu: outcome.mtus.ipip,
            },
            ipip_unavailable: match &outcome.ipip_support {
                IpipSupport::Available => None,
                IpipSupport::Missing { reason } => Some(reason.clone()),
            },
            underlay: outcome.underlay.clone(),
            underlay_mtu: outcome.mtus.underlay,
            pod_mtu: outcome.mtus.pod,
            pod_offload_size: outcome.pod_offload.map(|o| o.largest()),
            nat_outgoing: outcome.nat,
            routes: shaped,
            errors,
        }
    }

    /// Reshapes `routes` through the tunnels a previous pass left up (as its `status`
    /// says), without touching the kernel: for a pass whose view has not changed since.
    pub fn reshape(
        &self,
        view: &ClusterView,
        status: &mut EncapStatus,
        routes: &mut DesiredRoutes,
    ) {
        let tunnels = Tunnels {
            vxlan: status.vxlan.up,
            ipip: status.ipip.up,
        };
        status.routes = shape_routes(self.node_ip, view, tunnels, routes);
    }

    fn log_new_errors(&self, errors: &[String]) {
        let mut last = lock(&self.last_errors);
        for e in errors.iter().filter(|e| !last.contains(e)) {
            tracing::warn!(error = %e, "encapsulation");
        }
        *last = errors.to_vec();
    }

    /// Holds a tunnel address for this node and publishes it with the MAC in `nodes/<node>`.
    async fn claim_identity(
        &self,
        view: &ClusterView,
        pools: &[String],
    ) -> Result<VxlanIdentity, String> {
        let mac = tunnel_mac(&self.node);
        let address = match self.cached_address() {
            Some(address) => address,
            None => {
                if pools.is_empty() {
                    return Err("no enabled IPv4 VXLAN pool to take a tunnel address from".into());
                }
                let request = AllocateRequest::new(vxlan_tunnel_handle(&self.node), &self.node)
                    .pools(pools.iter().cloned());
                let allocation = self
                    .ipam
                    .allocate(request)
                    .await
                    .map_err(|e| format!("cannot allocate the VXLAN tunnel address: {e}"))?;
                let Some(IpAddr::V4(address)) = allocation.ipv4().map(|a| a.address) else {
                    return Err("IPAM gave no IPv4 tunnel address".into());
                };
                tracing::info!(%address, "VXLAN tunnel address allocated");
                self.cache_address(Some(address));
                address
            }
        };
        let mac_text = format_mac(&mac);
        let published = view.nodes.get(&self.node).is_some_and(|n| {
            n.vxlan_address == Some(IpAddr::V4(address))
                && n.vxlan_mac.as_deref() == Some(&mac_text)
        });
        if !published {
            self.publish(Some((IpAddr::V4(address), mac_text))).await?;
        }
        Ok(VxlanIdentity { address, mac })
    }

    /// Gives the tunnel address back and clears it from `nodes/<node>`, when VXLAN is no
    /// longer wanted.
    async fn retire_identity(&self, view: &ClusterView) -> Result<(), String> {
        let published = view
            .nodes
            .get(&self.node)
            .is_some_and(|n| n.vxlan_address.is_some() || n.vxlan_mac.is_some());
        if self.cached_address().is_none() && !published {
            return Ok(());
        }
        let handle = vxlan_tunnel_handle(&self.node);
        self.ipam
            .release_handle(&handle)
            .await
            .map_err(|e| format!("cannot release the VXLAN tunnel address: {e}"))?;
        self.cache_address(None);
        if published {
            self.publish(None).await?;
        }
        tracing::info!("VXLAN no longer used: tunnel address released");
        Ok(())
    }

    /// Writes (or, with `None`, clears) the VXLAN fields of `nodes/<node>`, compare-and-swap.
    async fn publish(&self, identity: Option<(IpAddr, String)>) -> Result<(), String> {
        let key = keys::node(&self.node);
        for _ in 0..5 {
            let current = self
                .store
                .get_json::<Node>(&key)
                .await
                .map_err(|e| format!("cannot read {key}: {e}"))?
                .ok_or_else(|| format!("{key} is not registered yet"))?;
            let mut node = current.value.clone();
            node.vxlan_address = identity.as_ref().map(|(a, _)| *a);
            node.vxlan_mac = identity.as_ref().map(|(_, m)| m.clone());
            if node == current.value {
                return Ok(());
            }
            match self.store.update_read(&current, &node).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(format!("cannot write {key}: {e}")),
            }
        }
        Err(format!(
            "{key} kept changing while the tunnel was published"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::view::BlockInfo;
    use crate::dataplane::Route;
    use wren_ipam::PoolSpec;
    use wren_store::memory::MemoryStore;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool(cidr: &str, encapsulation: Encapsulation, mode: EncapsulationMode) -> Pool {
        Pool {
            cidr: net(cidr),
            block_size: 26,
            encapsulation,
            encapsulation_mode: mode,
            nat_outgoing: false,
            disabled: false,
            communities: Vec::new(),
        }
    }

    fn node(name: &str, address: &str, tunnel: Option<&str>) -> Node {
        let mut n = Node::new(name, Some(address.parse().unwrap()));
        if let Some(t) = tunnel {
            n.vxlan_address = Some(ip(t));
            n.vxlan_mac = Some(format_mac(&tunnel_mac(name)));
        }
        n
    }

    /// `a` at 10.0.1.11/24; `b` on the same subnet, `c` and `d` on 10.0.2.0/24. Pools:
    /// `vx` (VXLAN, cross-subnet), `ip` (IPIP, always), `plain` (none).
    fn view() -> ClusterView {
        let mut v = ClusterView::default();
        for n in [
            node("a", "10.0.1.11/24", Some("10.65.0.0")),
            node("b", "10.0.1.12/24", Some("10.65.0.64")),
            node("c", "10.0.2.13/24", Some("10.65.0.128")),
            node("d", "10.0.2.14/24", None),
        ] {
            v.nodes.insert(n.name.clone(), n);
        }
        let cross = EncapsulationMode::CrossSubnet;
        v.pools.insert(
            "vx".into(),
            pool("10.65.0.0/16", Encapsulation::Vxlan, cross),
        );
        v.pools.insert(
            "ip".into(),
            pool(
                "10.66.0.0/16",
                Encapsulation::Ipip,
                EncapsulationMode::Always,
            ),
        );
        v.pools.insert(
            "plain".into(),
            pool(
                "10.67.0.0/16",
                Encapsulation::None,
                EncapsulationMode::Always,
            ),
        );
        v
    }

    fn learned(pairs: &[(&str, &str)]) -> DesiredRoutes {
        pairs
            .iter()
            .map(|(p, nh)| (net(p), Route::via(net(p), ip(nh))))
            .collect()
    }

    fn me() -> Ipv4Net {
        "10.0.1.11/24".parse().unwrap()
    }

    fn tunnel(via: &str, dev: &str) -> NextHop {
        NextHop::Gateway {
            via: ip(via),
            dev: Some(dev.into()),
            onlink: true,
        }
    }

    fn plain(via: &str) -> NextHop {
        NextHop::Gateway {
            via: ip(via),
            dev: None,
            onlink: false,
        }
    }

    #[test]
    fn tunnel_macs_are_stable_local_unicast_and_distinct() {
        let a = tunnel_mac("node-a");
        assert_eq!(a, tunnel_mac("node-a"));
        assert_ne!(a, tunnel_mac("node-b"));
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(parse_mac(&format_mac(&a)), Some(a));
        for bad in [
            "",
            "66:10:00:00:00",
            "66:10:00:00:00:0g",
            "661:0:00:00:00:00:00",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn cross_subnet_vxlan_encapsulates_only_toward_other_subnets() {
        let v = view();
        let mut routes = learned(&[
            ("10.65.0.64/26", "10.0.1.12"),  // b, same subnet
            ("10.65.0.128/26", "10.0.2.13"), // c, other subnet
            ("10.65.0.70/32", "10.0.2.13"),  // an address c borrowed from b's block
        ]);
        let tunnels = Tunnels {
            vxlan: true,
            ipip: true,
        };
        let shaped = shape_routes(me(), &v, tunnels, &mut routes);
        assert_eq!(routes[&net("10.65.0.64/26")].next_hop, plain("10.0.1.12"));
        assert_eq!(
            routes[&net("10.65.0.128/26")].next_hop,
            tunnel("10.65.0.128", VXLAN_DEVICE)
        );
        assert_eq!(
            routes[&net("10.65.0.70/32")].next_hop,
            tunnel("10.65.0.128", VXLAN_DEVICE)
        );
        assert_eq!(
            shaped,
            Shaped {
                vxlan: 2,
                ipip: 0,
                left_out: 0
            }
        );
        assert_eq!(routes[&net("10.65.0.128/26")].protocol, Protocol::BGP);
    }

    #[test]
    fn a_multipath_route_is_shaped_hop_by_hop_and_stays_on_one_device() {
        let v = view();
        let tunnels = Tunnels {
            vxlan: true,
            ipip: true,
        };
        let multipath = |prefix: &str, hops: &[&str]| {
            let route = Route::via_all(net(prefix), hops.iter().map(|h| ip(h))).unwrap();
            (net(prefix), route)
        };
        let mut routes: DesiredRoutes = [
            // An address announced by c and d, IPIP always: both through the tunnel.
            multipath("10.66.9.9/32", &["10.0.2.13", "10.0.2.14"]),
            // One announced by b (this subnet) and c (another), VXLAN across subnets: the
            // path on the segment carries it.
            multipath("10.65.9.9/32", &["10.0.1.12", "10.0.2.13"]),
            // Outside the pools: left as it is.
            multipath("198.51.100.0/24", &["10.0.2.13", "10.0.2.14"]),
        ]
        .into();
        let outside = routes[&net("198.51.100.0/24")].clone();
        let shaped = shape_routes(me(), &v, tunnels, &mut routes);
        let through_ipip = |via: &str| Gateway {
            via: ip(via),
            dev: Some(IPIP_DEVICE.into()),
            onlink: true,
        };
        assert_eq!(
            Some(routes[&net("10.66.9.9/32")].next_hop.clone()),
            NextHop::gateways([through_ipip("10.0.2.13"), through_ipip("10.0.2.14")])
        );
        assert_eq!(routes[&net("10.65.9.9/32")].next_hop, plain("10.0.1.12"));
        assert_eq!(routes[&net("198.51.100.0/24")], outside);
        assert_eq!(shaped.ipip, 1);
        for route in routes.values() {
            assert_eq!(route.validate(), Ok(()), "{route}");
        }
        // Without the IPIP tunnel, no next hop of the first can be reached.
        let mut routes: DesiredRoutes =
            [multipath("10.66.9.9/32", &["10.0.2.13", "10.0.2.14"])].into();
        let shaped = shape_routes(me(), &v, Tunnels::default(), &mut routes);
        assert!(routes.is_empty());
        assert_eq!(shaped.left_out, 1);
    }

    #[test]
    fn always_mode_encapsulates_same_subnet_nodes_too() {
        let mut v = view();
        v.pools.get_mut("vx").unwrap().encapsulation_mode = EncapsulationMode::Always;
        let mut routes = learned(&[("10.65.0.64/26", "10.0.1.12")]);
        let tunnels = Tunnels {
            vxlan: true,
            ipip: false,
        };
        shape_routes(me(), &v, tunnels, &mut routes);
        assert_eq!(
            routes[&net("10.65.0.64/26")].next_hop,
            tunnel("10.65.0.64", VXLAN_DEVICE)
        );
    }

    #[test]
    fn ipip_routes_go_via_the_node_or_are_left_out_without_the_device() {
        let v = view();
        let pairs = [
            ("10.66.0.0/26", "10.0.1.12"),
            ("10.66.0.64/26", "10.0.2.13"),
        ];
        let mut routes = learned(&pairs);
        let with = Tunnels {
            vxlan: false,
            ipip: true,
        };
        let shaped = shape_routes(me(), &v, with, &mut routes);
        assert_eq!(
            routes[&net("10.66.0.0/26")].next_hop,
            tunnel("10.0.1.12", IPIP_DEVICE)
        );
        assert_eq!(
            routes[&net("10.66.0.64/26")].next_hop,
            tunnel("10.0.2.13", IPIP_DEVICE)
        );
        assert_eq!(shaped.ipip, 2);
        let mut routes = learned(&pairs);
        let shaped = shape_routes(me(), &v, Tunnels::default(), &mut routes);
        assert!(routes.is_empty(), "{routes:?}");
        assert_eq!(shaped.left_out, 2);
    }

    #[test]
    fn plain_pools_unknown_next_hops_ipv6_and_unpublished_tunnels_stay_plain() {
        let v = view();
        let mut routes = learned(&[
            ("10.67.0.0/26", "10.0.2.13"),  // pool without encapsulation
            ("10.68.0.0/26", "10.0.2.13"),  // in no pool
            ("10.65.1.0/26", "192.0.2.99"), // next hop is no node (a ToR's route)
            ("10.65.1.64/26", "10.0.2.14"), // d has published no tunnel
            ("fd00:65::/122", "fd00::13"),  // IPv6
        ]);
        let before = routes.clone();
        let tunnels = Tunnels {
            vxlan: true,
            ipip: true,
        };
        assert_eq!(
            shape_routes(me(), &v, tunnels, &mut routes),
            Shaped::default()
        );
        assert_eq!(routes, before);
        // Our own device not up: no VXLAN route, plain instead.
        let mut routes = learned(&[("10.65.0.128/26", "10.0.2.13")]);
        shape_routes(me(), &v, Tunnels::default(), &mut routes);
        assert_eq!(routes[&net("10.65.0.128/26")].next_hop, plain("10.0.2.13"));
    }

    #[test]
    fn local_routes_are_never_touched() {
        let v = view();
        let mut routes: DesiredRoutes = [
            Route::blackhole(net("10.65.0.0/26")),
            Route::device(net("10.65.0.5/32"), "wren0123456789a"),
        ]
        .into_iter()
        .map(|r| (r.dst, r))
        .collect();
        let before = routes.clone();
        let tunnels = Tunnels {
            vxlan: true,
            ipip: true,
        };
        shape_routes(me(), &v, tunnels, &mut routes);
        assert_eq!(routes, before);
    }

    #[test]
    fn tunnels_are_wanted_by_pools_in_use_and_peers_need_a_published_tunnel() {
        let mut v = view();
        let w = Wanted::of(&v);
        assert!(w.vxlan && w.ipip);
        assert_eq!(w.vxlan_pools, vec!["vx".to_owned()]);
        assert_eq!(w.kinds(), vec![TunnelKind::Vxlan, TunnelKind::Ipip]);
        // A disabled pool without blocks carries nothing; with a block it still does.
        v.pools.get_mut("ip").unwrap().disabled = true;
        assert!(!Wanted::of(&v).ipip);
        v.blocks.insert(net("10.66.0.0/26"), BlockInfo::default());
        assert!(Wanted::of(&v).ipip);
        let peers = vxlan_peers("a", &v);
        let names: Vec<Ipv4Addr> = peers.iter().map(|p| p.node_ip).collect();
        assert_eq!(
            names,
            vec![Ipv4Addr::new(10, 0, 1, 12), Ipv4Addr::new(10, 0, 2, 13)],
            "itself and d (no tunnel) are not peers"
        );
        assert_eq!(peers[1].mac, tunnel_mac("c"));
    }

    #[test]
    fn nat_masquerades_only_nat_pools_in_use_and_exempts_every_pool() {
        let mut v = view();
        assert!(nat_rules(&v).masquerade.is_empty());
        v.pools.get_mut("plain").unwrap().nat_outgoing = true;
        let rules = nat_rules(&v);
        assert_eq!(rules.masquerade, vec![net("10.67.0.0/16")]);
        assert_eq!(rules.pools.len(), 3);
    }

    #[test]
    fn status_names_big_pod_offload_sizes_only_when_pods_have_them() {
        let mut s = EncapStatus {
            pod_mtu: 1500,
            underlay: Some("eth0".into()),
            underlay_mtu: 1500,
            ..EncapStatus::default()
        };
        assert!(!s.render().contains("GSO"), "{}", s.render());
        s.pod_offload_size = Some(196_608);
        assert!(
            s.render()
                .contains("Pod GSO/GRO: up to 196608 bytes, as the underlay"),
            "{}",
            s.render()
        );
    }

    #[test]
    fn a_pool_needing_missing_ipip_makes_the_node_unhealthy_and_says_why() {
        let mut s = EncapStatus {
            ipip: TunnelStatus {
                wanted: true,
                up: false,
                mtu: 1480,
            },
            ipip_unavailable: Some("this kernel has no IPIP support".into()),
            pod_mtu: 1480,
            underlay: Some("eth0".into()),
            underlay_mtu: 1500,
            ..EncapStatus::default()
        };
        assert!(!s.healthy());
        let text = s.render();
        assert!(
            text.contains("IPIP: NEEDED BY A POOL BUT UNAVAILABLE: this kernel has no IPIP"),
            "{text}"
        );
        assert!(
            text.contains("MTU: pods 1480, underlay eth0 1500"),
            "{text}"
        );
        s.ipip.wanted = false;
        assert!(
            s.healthy(),
            "IPIP that no pool needs is no reason to be unready"
        );
        assert!(s.render().contains("IPIP: unavailable ("));
        let m = Metrics::new();
        s.publish(&m);
        let text = m.encode();
        assert!(
            text.contains("wren_tunnel_available{type=\"ipip\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("wren_tunnel_available{type=\"vxlan\"} 1"),
            "{text}"
        );
        assert!(text.contains("wren_pod_mtu 1480"), "{text}");
    }

    /// Records what it is asked and answers with every tunnel up.
    #[derive(Default)]
    struct FakeTunnels {
        asked: Mutex<Vec<EncapDesired>>,
    }

    /// An underlay that takes BIG TCP packets.
    const BIG_UNDERLAY: OffloadSizes = OffloadSizes {
        gso_max_size: 65536,
        gro_max_size: 65536,
        gso_ipv4_max_size: 196608,
        gro_ipv4_max_size: 196608,
    };

    /// An underlay lookup the fake programmer never makes.
    fn unlooked() -> PassUnderlay {
        PassUnderlay::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
    }

    #[async_trait]
    impl EncapProgrammer for FakeTunnels {
        async fn program(&self, desired: &EncapDesired, _: &PassUnderlay) -> EncapOutcome {
            self.asked.lock().unwrap().push(desired.clone());
            EncapOutcome {
                mtus: Mtus::derive(1500, &desired.in_use, MtuOverrides::default()),
                pod_offload: OffloadSizes::for_pods(BIG_UNDERLAY, &desired.in_use),
                underlay: Some("eth0".into()),
                tunnels: Tunnels {
                    vxlan: desired.vxlan.is_some(),
                    ipip: desired.ipip,
                },
                ipip_support: IpipSupport::Available,
                nat: !desired.nat.masquerade.is_empty(),
                changed: true,
                errors: Vec::new(),
            }
        }
    }

    #[tokio::test]
    async fn the_tunnel_address_is_allocated_published_and_released_with_the_pool() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ipam = Arc::new(Ipam::new(store.clone()));
        let mut spec = PoolSpec::new("vx", "10.65.0.0/16");
        spec.encapsulation = Encapsulation::Vxlan;
        ipam.add_pool(&spec).await.unwrap();
        store
            .create_json(&keys::node("a"), &node("a", "10.0.1.11/24", None), None)
            .await
            .unwrap();
        let kernel = Arc::new(FakeTunnels::default());
        let pod_defaults = Arc::new(PodDefaults::new(0));
        let encap = Encap::new(
            "a",
            me(),
            store.clone(),
            ipam.clone(),
            kernel.clone(),
            pod_defaults.clone(),
        );
        let mut v = view();
        v.nodes.insert("a".into(), node("a", "10.0.1.11/24", None));
        v.pools.retain(|name, _| name == "vx");
        let mut routes = learned(&[("10.65.0.128/26", "10.0.2.13")]);

        let status = encap
            .pass(&v, &Wanted::of(&v), &mut routes, &unlooked())
            .await;
        let address = status.vxlan_address.expect("a tunnel address");
        assert!(net("10.65.0.0/16").contains(&IpAddr::V4(address)));
        assert_eq!(status.vxlan_mac, Some(format_mac(&tunnel_mac("a"))));
        assert!(status.vxlan.up && status.healthy(), "{status:?}");
        assert_eq!(status.routes.vxlan, 1);
        assert_eq!(
            pod_defaults.current(),
            (1450, None),
            "no BIG TCP through a tunnel"
        );
        let held = ipam
            .handle_addresses(&vxlan_tunnel_handle("a"))
            .await
            .unwrap();
        assert_eq!(held, vec![IpAddr::V4(address)]);
        let doc = store
            .get_json::<Node>(&keys::node("a"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(doc.value.vxlan_address, Some(IpAddr::V4(address)));
        assert_eq!(doc.value.vxlan_mac, status.vxlan_mac);
        let asked = kernel.asked.lock().unwrap().last().cloned().unwrap();
        assert_eq!(asked.peers.len(), 2, "b and c have tunnels");

        // The same address on the next pass, and after a restart (a new Encap).
        let again = Encap::new(
            "a",
            me(),
            store.clone(),
            ipam.clone(),
            kernel.clone(),
            pod_defaults.clone(),
        );
        let status = again
            .pass(&v, &Wanted::of(&v), &mut learned(&[]), &unlooked())
            .await;
        assert_eq!(status.vxlan_address, Some(address));

        // The pool stops encapsulating: the address is released and unpublished.
        v.pools.get_mut("vx").unwrap().encapsulation = Encapsulation::None;
        v.nodes.insert("a".into(), doc.value.clone());
        let status = again
            .pass(&v, &Wanted::of(&v), &mut learned(&[]), &unlooked())
            .await;
        assert!(
            !status.vxlan.wanted && status.vxlan_address.is_none(),
            "{status:?}"
        );
        assert!(
            ipam.handle_addresses(&vxlan_tunnel_handle("a"))
                .await
                .unwrap()
                .is_empty()
        );
        let doc = store
            .get_json::<Node>(&keys::node("a"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((doc.value.vxlan_address, doc.value.vxlan_mac), (None, None));
        assert_eq!(kernel.asked.lock().unwrap().last().unwrap().vxlan, None);
        assert_eq!(pod_defaults.current(), (1500, Some(BIG_UNDERLAY)));
    }
}
