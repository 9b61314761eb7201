//! The node's VXLAN device, `wren.vxlan`, with its address, neighbours and forwarding entries.
//!
//! Traffic to a remote node's block is routed `via <node's tunnel address> dev wren.vxlan
//! onlink`. The permanent neighbour entry of that tunnel address gives the remote device's
//! MAC, and the forwarding entry of that MAC gives the remote node's underlay address: the
//! kernel wraps the frame in UDP (port 4789, VNI 4096) and sends it there. Learning is off,
//! so nothing but these entries ever steers the tunnel.
//!
//! [`VxlanManager::reconcile`] brings the device, its address and both tables to the wanted
//! state and removes everything when VXLAN is no longer wanted. Settings that the kernel
//! cannot change on a live device (VNI, port, local address, parent) are fixed by making the
//! device again; MTU and MAC are changed in place.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkUnspec, LinkVxlan};

use super::fdb::{self, FdbEntry};
use super::link::{self, LinkState};
use super::neigh::{self, Entry, Table};
use super::netlink::{Netlink, NetlinkError, Request};

/// Name of wren's VXLAN device.
pub const VXLAN_DEVICE: &str = "wren.vxlan";
/// The VXLAN network identifier every wren node uses.
pub const VXLAN_VNI: u32 = 4096;
/// The UDP port VXLAN packets travel on (IANA's VXLAN port).
pub const VXLAN_PORT: u16 = 4789;

/// Why a tunnel device could not be brought to its wanted state.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The kernel refused a step; `step` says which.
    #[error("{device}: {step}: {source}")]
    Kernel {
        /// The device.
        device: &'static str,
        /// What was being done.
        step: &'static str,
        /// The kernel's answer.
        source: NetlinkError,
    },
    /// The device was made but cannot be found again.
    #[error("{0} vanished right after it was made")]
    Vanished(&'static str),
}

fn at(device: &'static str, step: &'static str) -> impl Fn(NetlinkError) -> TunnelError {
    move |source| TunnelError::Kernel {
        device,
        step,
        source,
    }
}

/// What the node's VXLAN device should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    /// The node's underlay address: the source of encapsulated packets.
    pub local: Ipv4Addr,
    /// Index of the underlay interface the device sends through.
    pub parent: u32,
    /// The device's MAC (other nodes' neighbour entries point at it).
    pub mac: [u8; 6],
    /// The node's tunnel address, put on the device as a /32.
    pub address: Ipv4Addr,
    /// The device's MTU.
    pub mtu: u32,
}

/// Another node reached through VXLAN.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanPeer {
    /// The node's underlay address (where its VXLAN packets go).
    pub node_ip: Ipv4Addr,
    /// The address of its `wren.vxlan` (the next hop of routes to its blocks).
    pub tunnel_address: Ipv4Addr,
    /// The MAC of its `wren.vxlan`.
    pub mac: [u8; 6],
}

/// What one reconcile changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TunnelReport {
    /// The device was created (or created again with new settings).
    pub created: bool,
    /// The device was removed.
    pub removed: bool,
    /// MTU, MAC, state or addresses were changed in place.
    pub updated: bool,
    /// Neighbour and forwarding entries added.
    pub entries_added: usize,
    /// Neighbour and forwarding entries removed.
    pub entries_removed: usize,
    /// Single entries the kernel refused (the device itself is fine).
    pub failures: Vec<String>,
}

impl TunnelReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.created
            || self.removed
            || self.updated
            || self.entries_added + self.entries_removed > 0
    }
}

/// The settings of an existing VXLAN device that can only be set at creation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VxlanSettings {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub parent: Option<u32>,
    pub learning: Option<bool>,
}

impl VxlanSettings {
    /// Reads the settings from a link description; `None` when it is not a VXLAN device.
    pub(crate) fn of(link: &LinkMessage) -> Option<VxlanSettings> {
        let infos = infos_of_kind(link, InfoKind::Vxlan)?;
        let mut s = VxlanSettings::default();
        for info in infos {
            if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                for d in data {
                    match d {
                        InfoVxlan::Id(v) => s.vni = Some(*v),
                        InfoVxlan::Port(p) => s.port = Some(*p),
                        InfoVxlan::Local(a) => s.local = Some(*a),
                        InfoVxlan::Link(i) => s.parent = Some(*i),
                        InfoVxlan::Learning(l) => s.learning = Some(*l),
                        _ => {}
                    }
                }
            }
        }
        Some(s)
    }
}

/// The kind-specific description of `link` when it is a device of `kind`.
pub(crate) fn infos_of_kind(link: &LinkMessage, kind: InfoKind) -> Option<&[LinkInfo]> {
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(k) if *k == kind))
        .then_some(infos.as_slice())
}

impl VxlanDevice {
    /// The creation-time settings this device must have.
    pub(crate) fn settings(&self) -> VxlanSettings {
        VxlanSettings {
            vni: Some(VXLAN_VNI),
            port: Some(VXLAN_PORT),
            local: Some(self.local),
            parent: Some(self.parent),
            learning: Some(false),
        }
    }

    /// `RTM_NEWLINK` body that creates the device, up.
    pub(crate) fn create_message(&self) -> LinkMessage {
        LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
            .port(VXLAN_PORT)
            .local(self.local)
            .dev(self.parent)
            .learning(false)
            .mtu(self.mtu)
            .address(self.mac.to_vec())
            .up()
            .build()
    }
}

/// What a tunnel device must be, for [`reconcile_device`]: kind-independent.
pub(crate) struct DeviceWant<'a> {
    pub name: &'static str,
    /// Whether an existing device of that name has every creation-time setting wanted.
    pub matches: &'a dyn Fn(&LinkMessage) -> bool,
    pub create: LinkMessage,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// The IPv4 addresses the device carries, exactly.
    pub addresses: Vec<Ipv4Net>,
}

/// Brings a tunnel device to `want`: makes it (again, when a creation-time setting differs),
/// fixes MTU, MAC, state and IPv4 addresses in place. Returns the device's index.
pub(crate) fn reconcile_device(
    netlink: &mut Netlink,
    want: DeviceWant<'_>,
    report: &mut TunnelReport,
) -> Result<u32, TunnelError> {
    let name = want.name;
    let by_name = || LinkUnspec::new_with_name(name).build();
    let mut existing = link::find(netlink, by_name()).map_err(at(name, "look-up"))?;
    if let Some(current) = &existing
        && !(want.matches)(current)
    {
        tracing::info!(
            device = name,
            "tunnel settings changed: making the device again"
        );
        link::delete(netlink, name).map_err(at(name, "remove for re-creation"))?;
        existing = None;
    }
    let link = match existing {
        Some(link) => link,
        None => {
            netlink
                .request(
                    RouteNetlinkMessage::NewLink(want.create),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .map_err(at(name, "create"))?;
            report.created = true;
            link::find(netlink, by_name())
                .map_err(at(name, "look-up"))?
                .ok_or(TunnelError::Vanished(name))?
        }
    };
    let state = LinkState::from_message(&link);
    let index = state.index;
    let mut set = LinkUnspec::new_with_index(index);
    let mut differs = false;
    if state.mtu != Some(want.mtu) {
        set = set.mtu(want.mtu);
        differs = true;
    }
    if let Some(mac) = want.mac
        && state.mac != Some(mac)
    {
        set = set.address(mac.to_vec());
        differs = true;
    }
    if !link.header.flags.contains(LinkFlags::Up) {
        set = set.up();
        differs = true;
    }
    if differs {
        netlink
            .request(RouteNetlinkMessage::SetLink(set.build()), 0)
            .map_err(at(name, "set MTU, MAC and state"))?;
        report.updated |= !report.created;
    }
    let present: BTreeSet<Ipv4Net> = link::addresses(netlink, index)
        .map_err(at(name, "read addresses"))?
        .into_iter()
        .filter_map(|n| match n {
            IpNet::V4(v4) => Some(v4),
            IpNet::V6(_) => None,
        })
        .collect();
    let wanted: BTreeSet<Ipv4Net> = want.addresses.into_iter().collect();
    let requests = present
        .difference(&wanted)
        .map(|net| Request::new(address_removal(index, *net), 0))
        .chain(wanted.difference(&present).map(|net| {
            Request::new(
                link::add_address(index, IpNet::V4(*net), false),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        }))
        .collect::<Vec<_>>();
    if !requests.is_empty() {
        let failed = netlink.batch(requests).map_err(at(name, "set addresses"))?;
        if let Some((_, e)) = failed.into_iter().next() {
            return Err(at(name, "set addresses")(e));
        }
        report.updated |= !report.created;
    }
    Ok(index)
}

/// `RTM_DELADDR` for `net` on interface `index`.
fn address_removal(index: u32, net: Ipv4Net) -> RouteNetlinkMessage {
    match link::add_address(index, IpNet::V4(net), false) {
        RouteNetlinkMessage::NewAddress(m) => RouteNetlinkMessage::DelAddress(m),
        other => other,
    }
}

/// Removes device `name` if it exists; reports whether it did.
pub(crate) fn remove_device(
    netlink: &mut Netlink,
    name: &'static str,
) -> Result<bool, TunnelError> {
    let present = link::get(netlink, name).map_err(at(name, "look-up"))?;
    if present.is_none() {
        return Ok(false);
    }
    link::delete(netlink, name).map_err(at(name, "remove"))?;
    Ok(true)
}

/// Keeps `wren.vxlan` and its entries as wanted, on one netlink socket opened in the calling
/// thread's network namespace. Its calls block on the kernel: run them on a blocking thread.
pub struct VxlanManager {
    netlink: Netlink,
}

impl VxlanManager {
    /// Opens the manager's socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        Ok(Self {
            netlink: Netlink::open()?,
        })
    }

    /// With `Some`, makes the device, its /32 address, one permanent neighbour (tunnel address
    /// → MAC) and one forwarding entry (MAC → node address) per peer exactly as given,
    /// removing entries of peers that are gone. With `None`, removes the device and with it
    /// everything on it. Runs again without changes when nothing differs.
    pub fn reconcile(
        &mut self,
        want: Option<(&VxlanDevice, &[VxlanPeer])>,
    ) -> Result<TunnelReport, TunnelError> {
        let mut report = TunnelReport::default();
        let Some((device, peers)) = want else {
            report.removed = remove_device(&mut self.netlink, VXLAN_DEVICE)?;
            return Ok(report);
        };
        let settings = device.settings();
        let matches = |link: &LinkMessage| VxlanSettings::of(link).as_ref() == Some(&settings);
        let index = reconcile_device(
            &mut self.netlink,
            DeviceWant {
                name: VXLAN_DEVICE,
                matches: &matches,
                create: device.create_message(),
                mtu: device.mtu,
                mac: Some(device.mac),
                addresses: vec![Ipv4Net::from(device.address)],
            },
            &mut report,
        )?;
        let neighbours: BTreeSet<Entry> = peers
            .iter()
            .map(|p| Entry {
                ip: IpAddr::V4(p.tunnel_address),
                mac: p.mac,
            })
            .collect();
        let n = neigh::reconcile(&mut self.netlink, Table::Arp, index, &neighbours)
            .map_err(at(VXLAN_DEVICE, "neighbours"))?;
        let f = fdb::reconcile(
            &mut self.netlink,
            index,
            peers.iter().map(|p| FdbEntry {
                mac: p.mac,
                remote: IpAddr::V4(p.node_ip),
            }),
        )
        .map_err(at(VXLAN_DEVICE, "forwarding entries"))?;
        report.entries_added = n.added + f.added;
        report.entries_removed = n.removed + f.removed;
        report.failures = n.failures.into_iter().chain(f.failures).collect();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> VxlanDevice {
        VxlanDevice {
            local: Ipv4Addr::new(192, 0, 2, 1),
            parent: 3,
            mac: [0x66, 0x10, 1, 2, 3, 4],
            address: Ipv4Addr::new(10, 65, 0, 1),
            mtu: 1450,
        }
    }

    #[test]
    fn the_creation_message_carries_every_setting_and_reads_back() {
        let d = device();
        let msg = d.create_message();
        assert_eq!(VxlanSettings::of(&msg), Some(d.settings()));
        let state = LinkState::from_message(&msg);
        assert_eq!(state.name, VXLAN_DEVICE);
        assert_eq!(state.mtu, Some(1450));
        assert_eq!(state.mac, Some(d.mac));
        assert!(msg.header.flags.contains(LinkFlags::Up));
    }

    #[test]
    fn a_device_with_another_vni_port_local_or_parent_does_not_match() {
        let want = device().settings();
        let other_local = VxlanDevice {
            local: Ipv4Addr::new(192, 0, 2, 9),
            ..device()
        };
        assert_ne!(
            VxlanSettings::of(&other_local.create_message()),
            Some(want.clone())
        );
        let other_parent = VxlanDevice {
            parent: 4,
            ..device()
        };
        assert_ne!(
            VxlanSettings::of(&other_parent.create_message()),
            Some(want.clone())
        );
        let vni = LinkVxlan::new(VXLAN_DEVICE, 1)
            .port(VXLAN_PORT)
            .local(device().local)
            .dev(3)
            .learning(false)
            .build();
        assert_ne!(VxlanSettings::of(&vni), Some(want.clone()));
        let learning = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
            .port(VXLAN_PORT)
            .local(device().local)
            .dev(3)
            .learning(true)
            .build();
        assert_ne!(VxlanSettings::of(&learning), Some(want));
        let veth = LinkUnspec::new_with_name(VXLAN_DEVICE).build();
        assert_eq!(VxlanSettings::of(&veth), None, "not a VXLAN device at all");
    }

    #[test]
    fn an_address_removal_names_the_same_address() {
        let net: Ipv4Net = "10.65.0.1/32".parse().unwrap();
        let RouteNetlinkMessage::DelAddress(m) = address_removal(5, net) else {
            panic!("not a removal");
        };
        assert_eq!(m.header.index, 5);
        assert_eq!(m.header.prefix_len, 32);
    }
}
