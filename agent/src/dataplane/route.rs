//! wren's routes as data: what a node wants in its kernel routing table, and how those routes
//! look on the netlink wire in both directions.
//!
//! A [`Route`] is identified by its table and destination prefix: the desired table holds at
//! most one route per (table, destination). Its [`Protocol`] says who owns it, which is what
//! lets a reconcile remove stale routes of wren's without ever touching anyone else's.
//!
//! A route over several gateways at once (ECMP) is one kernel route with `RTA_MULTIPATH`
//! ([`NextHop::Multipath`]), its gateways kept sorted so that a set read back from the
//! kernel, in whatever order, compares equal to the one wanted.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::RouteMessageBuilder;

/// The routing protocol number stamped on a route (`proto` in `ip route`): who owns it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// Routes learned over BGP (`proto bgp`, 186 in `/etc/iproute2/rt_protos`).
    pub const BGP: Protocol = Protocol(186);
    /// Routes wren makes itself: block blackholes and pod routes (`proto 201`).
    pub const WREN: Protocol = Protocol(201);
    /// Routes the kernel makes itself, as for an interface's subnet (`proto kernel`).
    pub const KERNEL: Protocol = Protocol(2);
    /// Every protocol a reconcile treats as wren's own.
    pub const OWNED: [Protocol; 2] = [Protocol::BGP, Protocol::WREN];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::BGP => f.write_str("bgp"),
            Protocol::WREN => f.write_str("wren"),
            Protocol(n) => write!(f, "{n}"),
        }
    }
}

/// The kernel's main routing table (`table main`).
pub const MAIN_TABLE: u32 = 254;

/// Where a route sends its traffic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// `blackhole`: drop. A node's own blocks, so addresses it has not handed out go nowhere.
    Blackhole,
    /// `via <gateway> [dev <dev>] [onlink]`: another node's block, learned over BGP, or sent
    /// into a tunnel device (`onlink` when the gateway is not on a connected subnet, as for
    /// VXLAN next hops).
    Gateway {
        /// The next hop's address, of the destination's family.
        via: IpAddr,
        /// The device to leave through; `None` lets the kernel resolve it from the gateway.
        dev: Option<String>,
        /// Treat the gateway as directly attached to `dev` (needs `dev`).
        onlink: bool,
    },
    /// `dev <dev> scope link`: directly attached, as a pod's `/32` on its host veth.
    Device {
        /// The device name.
        dev: String,
    },
    /// `nexthop via <a> nexthop via <b> ...`: equal-cost paths, the kernel spreading flows
    /// over them by their hash (`net.ipv4.fib_multipath_hash_policy`). Made by
    /// [`NextHop::gateways`], which keeps one gateway as [`NextHop::Gateway`].
    Multipath(Gateways),
}

/// One gateway of a multipath route: `nexthop via <via> [dev <dev>] [onlink]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gateway {
    /// The next hop's address, of the destination's family.
    pub via: IpAddr,
    /// The device to leave through; `None` lets the kernel resolve it from the gateway.
    pub dev: Option<String>,
    /// Treat the gateway as directly attached to `dev` (needs `dev`).
    pub onlink: bool,
}

impl Gateway {
    /// `via <via>`, its device resolved by the kernel.
    pub fn plain(via: IpAddr) -> Self {
        Gateway {
            via,
            dev: None,
            onlink: false,
        }
    }
}

/// The gateways of a multipath route: at least two, sorted by address, no address twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gateways(Vec<Gateway>);

impl Gateways {
    /// The gateways, in address order.
    pub fn as_slice(&self) -> &[Gateway] {
        &self.0
    }
}

impl NextHop {
    /// The next hop over `gateways`: sorted, the first of two with the same address kept;
    /// `None` for none, [`NextHop::Gateway`] for one, [`NextHop::Multipath`] for more.
    pub fn gateways(gateways: impl IntoIterator<Item = Gateway>) -> Option<NextHop> {
        let mut all: Vec<Gateway> = gateways.into_iter().collect();
        all.sort();
        all.dedup_by_key(|g| g.via);
        match all.len() {
            0 => None,
            1 => all.pop().map(|g| NextHop::Gateway {
                via: g.via,
                dev: g.dev,
                onlink: g.onlink,
            }),
            _ => Some(NextHop::Multipath(Gateways(all))),
        }
    }

    /// The gateways this next hop sends to (none for a blackhole or a device).
    pub fn gateway_list(&self) -> Vec<Gateway> {
        match self {
            NextHop::Gateway { via, dev, onlink } => vec![Gateway {
                via: *via,
                dev: dev.clone(),
                onlink: *onlink,
            }],
            NextHop::Multipath(all) => all.0.clone(),
            NextHop::Blackhole | NextHop::Device { .. } => Vec::new(),
        }
    }
}

/// One route wren wants in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The destination prefix (no host bits set).
    pub dst: IpNet,
    /// Where traffic to `dst` goes.
    pub next_hop: NextHop,
    /// The routing table ([`MAIN_TABLE`] unless told otherwise).
    pub table: u32,
    /// The owner stamped on the route.
    pub protocol: Protocol,
}

/// Why a [`Route`] cannot be installed as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoute {
    /// The destination has bits set beyond its prefix length (`10.0.0.1/24`).
    #[error("destination {0} has host bits set (did you mean {trunc}?)", trunc = .0.trunc())]
    HostBits(IpNet),
    /// The gateway is not of the destination's address family.
    #[error("gateway {via} is not of the family of {dst}")]
    FamilyMismatch {
        /// The destination.
        dst: IpNet,
        /// The gateway.
        via: IpAddr,
    },
    /// `onlink` was asked for without a device to be on.
    #[error("onlink next hop {0} needs a device")]
    OnlinkWithoutDevice(IpAddr),
    /// A device name the kernel cannot have.
    #[error("invalid device name {0:?} (1 to 15 characters, no '/', ':' or whitespace)")]
    DeviceName(String),
    /// The gateways of a multipath route leave through different devices (wren resolves
    /// one device per route).
    #[error("the gateways of multipath route {0} name different devices")]
    MultipathDevices(IpNet),
    /// Table 0 is not a table.
    #[error("table 0 is not a routing table")]
    Table,
}

impl Route {
    /// `blackhole <dst> proto wren`: a block this node owns.
    pub fn blackhole(dst: IpNet) -> Self {
        Route::new(dst, NextHop::Blackhole, Protocol::WREN)
    }

    /// `<dst> via <gateway> proto bgp`: a block another node announced over BGP.
    pub fn via(dst: IpNet, gateway: IpAddr) -> Self {
        Route::new(
            dst,
            NextHop::Gateway {
                via: gateway,
                dev: None,
                onlink: false,
            },
            Protocol::BGP,
        )
    }

    /// `<dst> nexthop via <a> nexthop via <b> ... proto bgp`: a prefix learned over BGP from
    /// several peers with equal paths (one gateway: [`Route::via`]); `None` without gateways.
    pub fn via_all(dst: IpNet, gateways: impl IntoIterator<Item = IpAddr>) -> Option<Self> {
        let next_hop = NextHop::gateways(gateways.into_iter().map(Gateway::plain))?;
        Some(Route::new(dst, next_hop, Protocol::BGP))
    }

    /// `<dst> via <gateway> dev <dev> onlink proto bgp`: a block another node announced,
    /// reached through a tunnel device whose next hop is not on a connected subnet. Still a
    /// learned route: a restart keeps it like the others.
    pub fn via_onlink(dst: IpNet, gateway: IpAddr, dev: impl Into<String>) -> Self {
        let next_hop = NextHop::Gateway {
            via: gateway,
            dev: Some(dev.into()),
            onlink: true,
        };
        Route::new(dst, next_hop, Protocol::BGP)
    }

    /// `<dst> dev <dev> scope link proto wren`: a pod's address on its host veth.
    pub fn device(dst: IpNet, dev: impl Into<String>) -> Self {
        Route::new(dst, NextHop::Device { dev: dev.into() }, Protocol::WREN)
    }

    fn new(dst: IpNet, next_hop: NextHop, protocol: Protocol) -> Self {
        Route {
            dst,
            next_hop,
            table: MAIN_TABLE,
            protocol,
        }
    }

    /// The same route stamped with another owner.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// The same route in another table.
    pub fn in_table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// The device this route names, if any (a multipath route's gateways all name the same,
    /// see [`Route::validate`]).
    pub fn dev(&self) -> Option<&str> {
        match &self.next_hop {
            NextHop::Blackhole => None,
            NextHop::Gateway { dev, .. } => dev.as_deref(),
            NextHop::Device { dev } => Some(dev),
            NextHop::Multipath(all) => all.0.first().and_then(|g| g.dev.as_deref()),
        }
    }

    /// Checks what the kernel would otherwise refuse, or silently change.
    pub fn validate(&self) -> Result<(), InvalidRoute> {
        if self.dst.trunc() != self.dst {
            return Err(InvalidRoute::HostBits(self.dst));
        }
        if self.table == 0 {
            return Err(InvalidRoute::Table);
        }
        for Gateway { via, dev, onlink } in self.next_hop.gateway_list() {
            if via.is_ipv4() != self.dst.addr().is_ipv4() {
                return Err(InvalidRoute::FamilyMismatch { dst: self.dst, via });
            }
            if onlink && dev.is_none() {
                return Err(InvalidRoute::OnlinkWithoutDevice(via));
            }
            if dev.as_deref() != self.dev() {
                return Err(InvalidRoute::MultipathDevices(self.dst));
            }
        }
        match self.dev() {
            Some(dev) if !valid_ifname(dev) => Err(InvalidRoute::DeviceName(dev.to_string())),
            _ => Ok(()),
        }
    }

    /// The netlink message that creates or replaces this route, given the index of its device
    /// (when it names one).
    pub(crate) fn to_message(&self, oif: Option<u32>) -> RouteMessage {
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.addr(), self.dst.prefix_len())
            // The family comes from the destination itself, so this cannot mismatch.
            .unwrap_or_else(|_| RouteMessageBuilder::<IpAddr>::new())
            .table_id(self.table)
            .protocol(RouteProtocol::from(self.protocol.0));
        let builder = match &self.next_hop {
            NextHop::Blackhole => builder.kind(RouteType::BlackHole),
            NextHop::Gateway { via, onlink, .. } => {
                let mut b = builder.clone().gateway(*via).unwrap_or(builder);
                if *onlink {
                    b = b.onlink();
                }
                b
            }
            NextHop::Device { .. } => builder.scope(RouteScope::Link),
            NextHop::Multipath(all) => {
                let hops = all.0.iter().map(|g| {
                    let mut hop = RouteNextHop::default();
                    if g.onlink {
                        hop.flags |= RouteNextHopFlags::Onlink;
                    }
                    hop.interface_index = oif.unwrap_or(0);
                    hop.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::from(g.via)));
                    hop
                });
                // The device travels in each next hop, not on the route.
                return builder.multipath(hops.collect()).build();
            }
        };
        let builder = match oif {
            Some(index) => builder.output_interface(index),
            None => builder,
        };
        builder.build()
    }

    /// The routes's shape with its device resolved, as [`KernelRoute`] would read it back.
    pub(crate) fn shape(&self, oif: Option<u32>) -> Shape {
        match &self.next_hop {
            NextHop::Blackhole => Shape::Blackhole,
            NextHop::Gateway { via, onlink, .. } => Shape::Gateway {
                via: *via,
                oif,
                onlink: *onlink,
            },
            NextHop::Device { .. } => Shape::Device {
                oif: oif.unwrap_or(0),
            },
            NextHop::Multipath(all) => Shape::Multipath(
                all.0
                    .iter()
                    .map(|g| GatewayShape {
                        via: g.via,
                        oif,
                        onlink: g.onlink,
                    })
                    .collect(),
            ),
        }
    }

    /// The message that deletes the route of this destination, table and owner, whatever its
    /// next hop.
    pub(crate) fn removal(&self) -> RouteMessage {
        let kind = match self.next_hop {
            NextHop::Blackhole => RouteType::BlackHole,
            _ => RouteType::Unicast,
        };
        removal_message(self.dst, self.table, self.protocol, kind, 0, 0)
    }
}

impl fmt::Display for Route {
    /// The route in `ip route` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.next_hop {
            NextHop::Blackhole => write!(f, "blackhole {}", self.dst)?,
            NextHop::Gateway { via, dev, onlink } => {
                write!(f, "{} via {via}", self.dst)?;
                if let Some(dev) = dev {
                    write!(f, " dev {dev}")?;
                }
                if *onlink {
                    f.write_str(" onlink")?;
                }
            }
            NextHop::Device { dev } => write!(f, "{} dev {dev} scope link", self.dst)?,
            NextHop::Multipath(all) => {
                write!(f, "{}", self.dst)?;
                for g in all.as_slice() {
                    write!(f, " nexthop via {}", g.via)?;
                    if let Some(dev) = &g.dev {
                        write!(f, " dev {dev}")?;
                    }
                    if g.onlink {
                        f.write_str(" onlink")?;
                    }
                }
            }
        }
        write!(f, " proto {}", self.protocol)?;
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

/// Whether the kernel would take `name` as an interface name.
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// A route's next hop as the kernel states it, devices as indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Blackhole,
    Gateway {
        via: IpAddr,
        oif: Option<u32>,
        onlink: bool,
    },
    Device {
        oif: u32,
    },
    /// Several gateways, sorted by address.
    Multipath(Vec<GatewayShape>),
    /// Anything wren does not make (weighted next hops, unreachable, ...): never equal to a
    /// wanted route.
    Other,
}

/// One gateway of a multipath route as the kernel states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GatewayShape {
    pub via: IpAddr,
    pub oif: Option<u32>,
    pub onlink: bool,
}

impl GatewayShape {
    /// Whether the kernel's gateway `have` is this wanted one (a wanted gateway with no
    /// device takes whichever the kernel resolved).
    fn satisfied_by(&self, have: &GatewayShape) -> bool {
        self.via == have.via
            && self.onlink == have.onlink
            && (self.oif.is_none() || self.oif == have.oif)
    }
}

/// The gateways of an `RTA_MULTIPATH` attribute, sorted; `None` when one is not a plain
/// gateway of weight 1.
fn multipath_shape(hops: &[RouteNextHop]) -> Option<Vec<GatewayShape>> {
    let mut out = hops
        .iter()
        .map(|hop| {
            let via = hop.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(a) => ip_of(a),
                _ => None,
            })?;
            (hop.hops == 0).then_some(GatewayShape {
                via,
                oif: (hop.interface_index != 0).then_some(hop.interface_index),
                onlink: hop.flags.contains(RouteNextHopFlags::Onlink),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    out.sort_by_key(|g| g.via);
    Some(out)
}

/// A route of wren's protocols as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelRoute {
    pub dst: IpNet,
    pub table: u32,
    pub protocol: Protocol,
    pub priority: u32,
    pub tos: u8,
    pub scope: RouteScope,
    pub kind: RouteType,
    pub shape: Shape,
}

/// The metric the kernel gives a route added without one: 0 for IPv4, 1024 for IPv6.
pub(crate) fn default_priority(dst: &IpNet) -> u32 {
    if dst.addr().is_ipv4() { 0 } else { 1024 }
}

impl KernelRoute {
    /// Reads a route from a dump message; `None` for families other than IPv4/IPv6.
    pub(crate) fn from_message(msg: &RouteMessage) -> Option<KernelRoute> {
        let h = &msg.header;
        let mut dst = None;
        let mut gateway = None;
        let mut oif = None;
        let mut priority = 0;
        let mut table = u32::from(h.table);
        let mut multipath = None;
        let mut other = false;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = ip_of(a),
                RouteAttribute::Gateway(a) => gateway = ip_of(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => priority = *p,
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::MultiPath(hops) => match multipath_shape(hops) {
                    Some(shape) => multipath = Some(shape),
                    None => other = true,
                },
                RouteAttribute::Via(_) => other = true,
                _ => {}
            }
        }
        let any: IpAddr = match h.address_family {
            AddressFamily::Inet => IpAddr::from([0u8; 4]),
            AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
            _ => return None,
        };
        let dst = IpNet::new(dst.unwrap_or(any), h.destination_prefix_length).ok()?;
        let shape = match (h.kind, gateway, oif) {
            _ if other => Shape::Other,
            (RouteType::Unicast, _, _) if multipath.is_some() => {
                Shape::Multipath(multipath.unwrap_or_default())
            }
            (RouteType::BlackHole, _, _) => Shape::Blackhole,
            (RouteType::Unicast, Some(via), oif) => Shape::Gateway {
                via,
                oif,
                onlink: h.flags.contains(RouteFlags::Onlink),
            },
            (RouteType::Unicast, None, Some(oif)) => Shape::Device { oif },
            _ => Shape::Other,
        };
        Some(KernelRoute {
            dst,
            table,
            protocol: Protocol(u8::from(h.protocol)),
            priority,
            tos: h.tos,
            scope: h.scope,
            kind: h.kind,
            shape,
        })
    }

    /// Whether this kernel route is exactly `want` (with its device resolved to `want_shape`).
    pub(crate) fn satisfies(&self, want: &Route, want_shape: &Shape) -> bool {
        let next_hop_ok = match (want_shape, &self.shape) {
            (Shape::Blackhole, Shape::Blackhole) => true,
            (
                Shape::Gateway { via, oif, onlink },
                Shape::Gateway {
                    via: kvia,
                    oif: koif,
                    onlink: konlink,
                },
            ) => via == kvia && onlink == konlink && (oif.is_none() || oif == koif),
            (Shape::Device { oif }, Shape::Device { oif: koif }) => oif == koif,
            (Shape::Multipath(want), Shape::Multipath(have)) => {
                want.len() == have.len() && want.iter().zip(have).all(|(w, h)| w.satisfied_by(h))
            }
            _ => false,
        };
        // IPv6 reports every route with universe scope, so scope only tells for IPv4.
        let scope_ok = !self.dst.addr().is_ipv4() || self.scope == expected_scope(want);
        next_hop_ok && scope_ok && self.protocol == want.protocol && self.occupies_default_slot()
    }

    /// Whether this route sits where a route added without metric or TOS would, so that a
    /// replace request lands on it.
    pub(crate) fn occupies_default_slot(&self) -> bool {
        self.tos == 0 && self.priority == default_priority(&self.dst)
    }

    /// The message that deletes exactly this route and no other.
    pub(crate) fn removal(&self) -> RouteMessage {
        removal_message(
            self.dst,
            self.table,
            self.protocol,
            self.kind,
            self.tos,
            self.priority,
        )
    }
}

fn expected_scope(route: &Route) -> RouteScope {
    match route.next_hop {
        NextHop::Device { .. } => RouteScope::Link,
        _ => RouteScope::Universe,
    }
}

/// A delete request matched on destination, table, owner, type, TOS and metric. Naming the
/// protocol is what makes the kernel refuse to delete anybody else's route.
fn removal_message(
    dst: IpNet,
    table: u32,
    protocol: Protocol,
    kind: RouteType,
    tos: u8,
    priority: u32,
) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if dst.addr().is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.tos = tos;
    msg.header.table = table_header(table);
    msg.header.protocol = RouteProtocol::from(protocol.0);
    // "Any scope": scope must match exactly unless it is RT_SCOPE_NOWHERE.
    msg.header.scope = RouteScope::NoWhere;
    msg.header.kind = kind;
    msg.attributes
        .push(RouteAttribute::Destination(dst.addr().into()));
    msg.attributes.push(RouteAttribute::Table(table));
    if priority != 0 {
        msg.attributes.push(RouteAttribute::Priority(priority));
    }
    msg
}

/// The one-byte table field of the route header; larger ids travel in `RTA_TABLE`.
pub(crate) fn table_header(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC)
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn display_reads_like_ip_route() {
        assert_eq!(
            Route::blackhole(net("10.0.0.0/26")).to_string(),
            "blackhole 10.0.0.0/26 proto wren"
        );
        assert_eq!(
            Route::via(net("10.0.1.0/26"), ip("192.0.2.2")).to_string(),
            "10.0.1.0/26 via 192.0.2.2 proto bgp"
        );
        assert_eq!(
            Route::via_onlink(net("10.0.1.0/26"), ip("10.0.1.0"), "wren.vxlan")
                .in_table(100)
                .to_string(),
            "10.0.1.0/26 via 10.0.1.0 dev wren.vxlan onlink proto bgp table 100"
        );
        assert_eq!(
            Route::device(net("10.0.0.5/32"), "wren0123456789a").to_string(),
            "10.0.0.5/32 dev wren0123456789a scope link proto wren"
        );
    }

    #[test]
    fn validation_catches_what_the_kernel_would_refuse() {
        assert_eq!(
            Route::blackhole(net("10.0.0.1/24")).validate(),
            Err(InvalidRoute::HostBits(net("10.0.0.1/24")))
        );
        assert!(matches!(
            Route::via(net("10.0.0.0/24"), ip("fe80::1")).validate(),
            Err(InvalidRoute::FamilyMismatch { .. })
        ));
        let onlink = Route {
            next_hop: NextHop::Gateway {
                via: ip("10.0.0.1"),
                dev: None,
                onlink: true,
            },
            ..Route::blackhole(net("10.1.0.0/24"))
        };
        assert_eq!(
            onlink.validate(),
            Err(InvalidRoute::OnlinkWithoutDevice(ip("10.0.0.1")))
        );
        assert!(matches!(
            Route::device(net("10.0.0.5/32"), "a-name-far-too-long").validate(),
            Err(InvalidRoute::DeviceName(_))
        ));
        assert_eq!(
            Route::blackhole(net("10.0.0.0/24")).in_table(0).validate(),
            Err(InvalidRoute::Table)
        );
        assert_eq!(
            Route::via(net("2001:db8:1::/64"), ip("2001:db8::2")).validate(),
            Ok(())
        );
    }

    #[test]
    fn every_shape_reads_back_as_itself() {
        let cases = [
            (Route::blackhole(net("10.0.0.0/26")), None),
            (Route::via(net("10.0.1.0/26"), ip("192.0.2.2")), None),
            (
                Route::via_onlink(net("10.0.1.0/26"), ip("10.0.1.0"), "v"),
                Some(7),
            ),
            (Route::device(net("10.0.0.5/32"), "w"), Some(9)),
            (Route::blackhole(net("fd00::/122")), None),
            (Route::via(net("fd00:1::/122"), ip("fd00::2")), None),
            (
                Route::device(net("fd00::5/128"), "w").in_table(1000),
                Some(9),
            ),
            (
                Route::via_all(net("10.99.0.0/24"), [ip("192.0.2.9"), ip("192.0.2.2")]).unwrap(),
                None,
            ),
            (
                Route::via_all(net("fd00:99::/64"), [ip("fd00::9"), ip("fd00::2")]).unwrap(),
                None,
            ),
        ];
        for (route, oif) in cases {
            let msg = route.to_message(oif);
            let mut back = KernelRoute::from_message(&msg).unwrap();
            // The kernel fills in the IPv6 default metric; a request leaves it out.
            back.priority = default_priority(&route.dst);
            assert_eq!(back.dst, route.dst, "{route}");
            assert_eq!(back.table, route.table, "{route}");
            assert!(
                back.satisfies(&route, &route.shape(oif)),
                "{route}: {back:?}"
            );
        }
    }

    #[test]
    fn a_different_next_hop_owner_or_metric_is_not_the_same_route() {
        let want = Route::via(net("10.0.1.0/26"), ip("192.0.2.2"));
        let mut k = KernelRoute::from_message(&want.to_message(None)).unwrap();
        k.shape = Shape::Gateway {
            via: ip("192.0.2.2"),
            oif: Some(3),
            onlink: false,
        };
        assert!(
            k.satisfies(&want, &want.shape(None)),
            "unnamed device matches any"
        );
        assert!(
            !k.satisfies(&want, &want.shape(Some(4))),
            "named device must match"
        );
        let mut other_gw = k.clone();
        other_gw.shape = Shape::Gateway {
            via: ip("192.0.2.3"),
            oif: Some(3),
            onlink: false,
        };
        assert!(!other_gw.satisfies(&want, &want.shape(None)));
        let mut other_owner = k.clone();
        other_owner.protocol = Protocol::WREN;
        assert!(!other_owner.satisfies(&want, &want.shape(None)));
        let mut other_metric = k.clone();
        other_metric.priority = 10;
        assert!(!other_metric.satisfies(&want, &want.shape(None)));
        assert!(!other_metric.occupies_default_slot());
        let dev = Route::device(net("10.0.0.5/32"), "w");
        let mut wide = KernelRoute::from_message(&dev.to_message(Some(9))).unwrap();
        wide.scope = RouteScope::Universe;
        assert!(
            !wide.satisfies(&dev, &dev.shape(Some(9))),
            "IPv4 scope counts"
        );
    }

    #[test]
    fn a_gateway_set_is_sorted_and_one_gateway_is_a_plain_route() {
        let a = Route::via_all(net("10.99.0.0/24"), [ip("192.0.2.9"), ip("192.0.2.2")]);
        let b = Route::via_all(
            net("10.99.0.0/24"),
            [ip("192.0.2.2"), ip("192.0.2.9"), ip("192.0.2.2")],
        );
        assert_eq!(a, b, "equal sets compare equal, whatever the order");
        assert_eq!(
            a.as_ref().map(ToString::to_string).as_deref(),
            Some("10.99.0.0/24 nexthop via 192.0.2.2 nexthop via 192.0.2.9 proto bgp")
        );
        assert_eq!(
            Route::via_all(net("10.99.0.0/24"), [ip("192.0.2.2")]),
            Some(Route::via(net("10.99.0.0/24"), ip("192.0.2.2")))
        );
        assert_eq!(Route::via_all(net("10.99.0.0/24"), []), None);
        let mixed = Route {
            next_hop: NextHop::gateways([
                Gateway::plain(ip("192.0.2.2")),
                Gateway {
                    via: ip("192.0.2.3"),
                    dev: Some("wren.vxlan".into()),
                    onlink: true,
                },
            ])
            .unwrap(),
            ..Route::blackhole(net("10.99.0.0/24"))
        };
        assert_eq!(
            mixed.validate(),
            Err(InvalidRoute::MultipathDevices(net("10.99.0.0/24")))
        );
        let v6_over_v4 = Route::via_all(net("fd00:99::/64"), [ip("fd00::2"), ip("192.0.2.2")]);
        assert!(matches!(
            v6_over_v4.map(|r| r.validate()),
            Some(Err(InvalidRoute::FamilyMismatch { .. }))
        ));
    }

    #[test]
    fn a_multipath_route_read_back_in_any_order_is_the_wanted_one_and_no_other() {
        let want = Route::via_all(net("10.99.0.0/24"), [ip("192.0.2.2"), ip("192.0.2.9")]).unwrap();
        let mut msg = want.to_message(None);
        // The kernel reports each next hop with the device it resolved, in its own order.
        for attr in &mut msg.attributes {
            if let RouteAttribute::MultiPath(hops) = attr {
                hops.reverse();
                for (i, hop) in hops.iter_mut().enumerate() {
                    hop.interface_index = 3 + i as u32;
                }
            }
        }
        let back = KernelRoute::from_message(&msg).unwrap();
        assert!(back.satisfies(&want, &want.shape(None)), "{back:?}");
        for other in [
            Route::via_all(net("10.99.0.0/24"), [ip("192.0.2.2")]),
            Route::via_all(net("10.99.0.0/24"), [ip("192.0.2.2"), ip("192.0.2.8")]),
            Route::via_all(
                net("10.99.0.0/24"),
                [ip("192.0.2.2"), ip("192.0.2.9"), ip("192.0.2.10")],
            ),
        ] {
            let other = other.unwrap();
            assert!(!back.satisfies(&other, &other.shape(None)), "{other}");
        }
        // A weighted next hop is not of wren's making.
        for attr in &mut msg.attributes {
            if let RouteAttribute::MultiPath(hops) = attr {
                hops[0].hops = 1;
            }
        }
        let weighted = KernelRoute::from_message(&msg).unwrap();
        assert_eq!(weighted.shape, Shape::Other);
    }

    #[test]
    fn removal_names_the_owner() {
        let msg = Route::via(net("10.0.1.0/26"), ip("192.0.2.2")).removal();
        assert_eq!(u8::from(msg.header.protocol), 186);
        assert_eq!(msg.header.scope, RouteScope::NoWhere);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("wren0123456789a"));
        assert!(!valid_ifname("wren0123456789ab"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
    }
}
