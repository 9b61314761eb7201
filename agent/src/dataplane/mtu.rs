//! MTUs of pods and tunnels, derived from the underlay.
//!
//! An encapsulated packet is the pod's packet plus the tunnel's headers, and it must still fit
//! the underlay's MTU, or it is fragmented or dropped. So a tunnel device's MTU is the
//! underlay's minus its overhead, and a pod's interface gets the smallest MTU of any path its
//! traffic may take: the pod cannot know which destinations are encapsulated, so whenever a
//! pool in use encapsulates, every pod gets the tunnel's MTU. Pods and tunnels then agree, and
//! a packet too large for the path is refused at the pod's own interface with "message too
//! long" instead of vanishing inside the tunnel.
//!
//! The same goes for the largest packets the segmentation offloads build (GSO) and accept
//! (GRO). Above the standard 64 KiB (BIG TCP) a packet crossing a tunnel device is cut into
//! MTU-sized segments in software, so pods only take the underlay's larger limits when none of
//! their traffic is encapsulated; then a pod's stream crosses the node in as few packets as the
//! node's own traffic does.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::LinkUnspec;

use super::link::{self, LinkState};
use super::netlink::{Netlink, NetlinkError, family_of};

/// Bytes VXLAN adds to a packet: outer IPv4 (20), UDP (8), VXLAN (8) and inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes IP-in-IP adds to a packet: the outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;
/// The smallest MTU an IPv4 interface may have (RFC 791).
pub const MIN_MTU: u32 = 68;

/// The encapsulations wren builds tunnels for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TunnelKind {
    /// VXLAN through `wren.vxlan`.
    Vxlan,
    /// IP-in-IP through `wrentunl0`.
    Ipip,
}

impl TunnelKind {
    /// Bytes this encapsulation adds to every packet.
    pub fn overhead(self) -> u32 {
        match self {
            TunnelKind::Vxlan => VXLAN_OVERHEAD,
            TunnelKind::Ipip => IPIP_OVERHEAD,
        }
    }
}

/// MTUs the configuration fixes instead of deriving them; they serialize under the keys of
/// the agent's configuration.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MtuOverrides {
    /// Pod interfaces (when the CNI network configuration gives no `mtu`).
    #[serde(rename = "podMtu", skip_serializing_if = "Option::is_none")]
    pub pod: Option<u32>,
    /// The `wren.vxlan` device.
    #[serde(rename = "vxlanMtu", skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<u32>,
    /// The `wrentunl0` device.
    #[serde(rename = "ipipMtu", skip_serializing_if = "Option::is_none")]
    pub ipip: Option<u32>,
}

/// The MTUs a node uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mtus {
    /// The underlay interface's MTU they derive from.
    pub underlay: u32,
    /// Pod interfaces.
    pub pod: u32,
    /// The `wren.vxlan` device.
    pub vxlan: u32,
    /// The `wrentunl0` device.
    pub ipip: u32,
}

impl Mtus {
    /// MTUs over an underlay of `underlay` bytes when the tunnels in `in_use` carry pod
    /// traffic: each tunnel gets the underlay minus its overhead, and pods the smallest MTU of
    /// any path (the underlay's when nothing is encapsulated). Overrides win.
    pub fn derive(underlay: u32, in_use: &[TunnelKind], overrides: MtuOverrides) -> Mtus {
        let tunnel = |kind: TunnelKind| underlay.saturating_sub(kind.overhead()).max(MIN_MTU);
        let vxlan = overrides.vxlan.unwrap_or(tunnel(TunnelKind::Vxlan));
        let ipip = overrides.ipip.unwrap_or(tunnel(TunnelKind::Ipip));
        let path = in_use
            .iter()
            .map(|kind| match kind {
                TunnelKind::Vxlan => vxlan,
                TunnelKind::Ipip => ipip,
            })
            .fold(underlay, u32::min);
        Mtus {
            underlay,
            pod: overrides.pod.unwrap_or(path),
            vxlan,
            ipip,
        }
    }

    /// MTUs for a node whose underlay is not known yet: assume a 1500-byte underlay and the
    /// largest overhead, so that a pod made before the first look-up is never too large.
    pub fn cautious(overrides: MtuOverrides) -> Mtus {
        Mtus::derive(1500, &[TunnelKind::Vxlan, TunnelKind::Ipip], overrides)
    }
}

/// The largest packets the kernel's segmentation offloads build for an interface and
/// aggregate from it, in bytes (`gso_max_size`, `gro_max_size` and their IPv4 counterparts);
/// zero is "not reported". Interfaces start at 64 KiB; above that is BIG TCP.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct OffloadSizes {
    /// `IFLA_GSO_MAX_SIZE` (IPv6 and other protocols).
    pub gso_max_size: u32,
    /// `IFLA_GRO_MAX_SIZE`.
    pub gro_max_size: u32,
    /// `IFLA_GSO_IPV4_MAX_SIZE`.
    pub gso_ipv4_max_size: u32,
    /// `IFLA_GRO_IPV4_MAX_SIZE`.
    pub gro_ipv4_max_size: u32,
}

impl OffloadSizes {
    /// The limit every interface starts with.
    pub const STANDARD: u32 = 65536;

    /// Reads the sizes from the kernel's description of an interface.
    pub(crate) fn from_attributes<'a>(attrs: impl IntoIterator<Item = &'a LinkAttribute>) -> Self {
        let mut sizes = OffloadSizes::default();
        for attr in attrs {
            match attr {
                LinkAttribute::GsoMaxSize(v) => sizes.gso_max_size = *v,
                LinkAttribute::GroMaxSize(v) => sizes.gro_max_size = *v,
                LinkAttribute::GsoIpv4MaxSize(v) => sizes.gso_ipv4_max_size = *v,
                LinkAttribute::GroIpv4MaxSize(v) => sizes.gro_ipv4_max_size = *v,
                _ => {}
            }
        }
        sizes
    }

    /// Whether any size goes beyond the standard 64 KiB.
    pub fn is_big(&self) -> bool {
        self.largest() > Self::STANDARD
    }

    /// The largest of the four sizes.
    pub fn largest(&self) -> u32 {
        [
            self.gso_max_size,
            self.gro_max_size,
            self.gso_ipv4_max_size,
            self.gro_ipv4_max_size,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// The link attributes that set these sizes (those that are reported).
    pub(crate) fn attributes(&self) -> Vec<LinkAttribute> {
        [
            (
                self.gso_max_size,
                LinkAttribute::GsoMaxSize as fn(u32) -> LinkAttribute,
            ),
            (self.gro_max_size, LinkAttribute::GroMaxSize),
            (self.gso_ipv4_max_size, LinkAttribute::GsoIpv4MaxSize),
            (self.gro_ipv4_max_size, LinkAttribute::GroIpv4MaxSize),
        ]
        .into_iter()
        .filter(|(size, _)| *size > 0)
        .map(|(size, attribute)| attribute(size))
        .collect()
    }

    /// What pods get over an underlay with `underlay`'s sizes when the tunnels in `in_use`
    /// carry pod traffic: the underlay's sizes when they are big and nothing is encapsulated,
    /// otherwise nothing (the kernel's standard 64 KiB).
    pub fn for_pods(underlay: OffloadSizes, in_use: &[TunnelKind]) -> Option<OffloadSizes> {
        (in_use.is_empty() && underlay.is_big()).then_some(underlay)
    }
}

/// The interface carrying the node's address: the tunnels' parent and their MTU's source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
    /// Its offload packet-size limits.
    pub offload: OffloadSizes,
}

/// Why the underlay could not be found.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// No interface carries the node address.
    #[error("no interface carries the node address {0}")]
    NotFound(IpAddr),
    /// Talking to the kernel failed.
    #[error("looking up the underlay interface: {0}")]
    Netlink(#[from] NetlinkError),
}

/// Finds the interface holding `node_ip` in the calling thread's network namespace.
pub fn detect_underlay(node_ip: IpAddr) -> Result<Underlay, UnderlayError> {
    let mut netlink = Netlink::open()?;
    find_underlay(&mut netlink, node_ip)
}

/// The underlay as one pass finds it: looked up by the first of the pass's programmers that
/// needs it (tunnels, the fast path), on that programmer's blocking thread, and the same
/// answer handed to the others, so a pass reads the kernel's addresses for it once.
#[derive(Clone, Debug)]
pub struct PassUnderlay {
    node_ip: IpAddr,
    found: Arc<OnceLock<Result<Underlay, UnderlayError>>>,
}

impl PassUnderlay {
    /// A lookup of the interface holding `node_ip`, not made yet.
    pub fn new(node_ip: IpAddr) -> Self {
        Self {
            node_ip,
            found: Arc::new(OnceLock::new()),
        }
    }

    /// The underlay: looked up on the first call (netlink, blocking), what that call found on
    /// the others.
    pub fn get(&self) -> &Result<Underlay, UnderlayError> {
        self.found.get_or_init(|| detect_underlay(self.node_ip))
    }
}

/// [`detect_underlay`] on an open socket.
pub(crate) fn find_underlay(
    netlink: &mut Netlink,
    node_ip: IpAddr,
) -> Result<Underlay, UnderlayError> {
    let index = interface_of(netlink, node_ip)?.ok_or(UnderlayError::NotFound(node_ip))?;
    let message = link::find(netlink, LinkUnspec::new_with_index(index).build())?
        .ok_or(UnderlayError::NotFound(node_ip))?;
    let state = LinkState::from_message(&message);
    Ok(Underlay {
        name: state.name,
        index,
        mtu: state.mtu.unwrap_or(1500),
        offload: OffloadSizes::from_attributes(&message.attributes),
    })
}

/// The index of the interface that holds `ip` as a local address.
fn interface_of(netlink: &mut Netlink, ip: IpAddr) -> Result<Option<u32>, NetlinkError> {
    let mut request = AddressMessage::default();
    request.header.family = family_of(ip);
    let mut found = None;
    netlink.dump(RouteNetlinkMessage::GetAddress(request), |msg| {
        if let RouteNetlinkMessage::NewAddress(a) = msg
            && found.is_none()
            && a.attributes.iter().any(|attr| {
                matches!(attr, AddressAttribute::Local(l) | AddressAttribute::Address(l) if *l == ip)
            })
        {
            found = Some(a.header.index);
        }
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_underlay_is_looked_up_once_for_every_copy() {
        // Copies made before the lookup, as the pass hands one to each programmer: the
        // second answers from the first's lookup (192.0.2.0/24 is held by no interface, so
        // the answer is the same error, read once; only an address dump, nothing changed).
        let pass = PassUnderlay::new(IpAddr::from([192, 0, 2, 1]));
        let (tunnels, fast_path) = (pass.clone(), pass.clone());
        let first = tunnels.get();
        assert!(
            matches!(first, Err(UnderlayError::NotFound(_))),
            "{first:?}"
        );
        assert!(std::ptr::eq(first, fast_path.get()));
        assert!(std::ptr::eq(first, pass.get()));
    }

    #[test]
    fn tunnels_take_their_overhead_off_the_underlay() {
        let m = Mtus::derive(1500, &[TunnelKind::Vxlan], MtuOverrides::default());
        assert_eq!((m.vxlan, m.ipip, m.pod), (1450, 1480, 1450));
        let m = Mtus::derive(9000, &[TunnelKind::Ipip], MtuOverrides::default());
        assert_eq!((m.vxlan, m.ipip, m.pod), (8950, 8980, 8980));
    }

    #[test]
    fn pods_follow_the_smallest_path_and_the_underlay_without_tunnels() {
        let both = [TunnelKind::Ipip, TunnelKind::Vxlan];
        assert_eq!(Mtus::derive(1500, &both, MtuOverrides::default()).pod, 1450);
        assert_eq!(Mtus::derive(1500, &[], MtuOverrides::default()).pod, 1500);
        assert_eq!(Mtus::cautious(MtuOverrides::default()).pod, 1450);
    }

    #[test]
    fn overrides_win_and_pods_follow_an_overridden_tunnel() {
        let o = MtuOverrides {
            pod: None,
            vxlan: Some(1400),
            ipip: None,
        };
        let m = Mtus::derive(1500, &[TunnelKind::Vxlan], o);
        assert_eq!((m.vxlan, m.pod), (1400, 1400));
        let o = MtuOverrides {
            pod: Some(1300),
            ..o
        };
        assert_eq!(Mtus::derive(1500, &[TunnelKind::Vxlan], o).pod, 1300);
    }

    #[test]
    fn pods_take_big_offload_sizes_only_when_nothing_is_encapsulated() {
        let big = OffloadSizes {
            gso_max_size: 65536,
            gro_max_size: 65536,
            gso_ipv4_max_size: 262144,
            gro_ipv4_max_size: 262144,
        };
        assert_eq!(OffloadSizes::for_pods(big, &[]), Some(big));
        assert_eq!(OffloadSizes::for_pods(big, &[TunnelKind::Vxlan]), None);
        assert_eq!(OffloadSizes::for_pods(big, &[TunnelKind::Ipip]), None);
        let standard = OffloadSizes {
            gso_ipv4_max_size: 65536,
            ..big
        };
        let standard = OffloadSizes {
            gro_ipv4_max_size: 65536,
            ..standard
        };
        assert_eq!(OffloadSizes::for_pods(standard, &[]), None);
        assert_eq!(OffloadSizes::for_pods(OffloadSizes::default(), &[]), None);
    }

    #[test]
    fn only_reported_sizes_become_attributes() {
        let sizes = OffloadSizes {
            gso_ipv4_max_size: 196608,
            ..OffloadSizes::default()
        };
        assert_eq!(
            sizes.attributes(),
            vec![LinkAttribute::GsoIpv4MaxSize(196608)]
        );
        let read = OffloadSizes::from_attributes(&[
            LinkAttribute::Mtu(1500),
            LinkAttribute::GsoIpv4MaxSize(196608),
        ]);
        assert_eq!(read, sizes);
        assert_eq!(read.largest(), 196608);
    }

    #[test]
    fn a_tiny_underlay_never_yields_an_impossible_mtu() {
        let m = Mtus::derive(60, &[TunnelKind::Vxlan], MtuOverrides::default());
        assert_eq!(m.vxlan, MIN_MTU);
    }
}
