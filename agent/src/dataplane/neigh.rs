//! Neighbour entries wren owns: permanent, so they never age out or get probed.
//!
//! Two tables share the `RTM_*NEIGH` messages: the ARP/NDP table (IP address → MAC) and a
//! device's forwarding database (MAC → where to send it, see [`super::fdb`]). Both are
//! reconciled the same way on devices wren owns: entries of ours that are not wanted go,
//! wanted ones that are missing come. Entries the kernel learned by itself (not permanent) are
//! left to age out, and no other device is ever looked at.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{Netlink, NetlinkError, Request, family_of};

/// `RTM_NEWNEIGH` for a permanent entry `ip → mac` on interface `index`.
pub(crate) fn permanent(index: u32, ip: IpAddr, mac: [u8; 6]) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewNeighbour(message(Table::Arp, index, Entry { ip, mac }))
}

/// Which neighbour table an entry lives in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    /// ARP (IPv4) or NDP (IPv6): the MAC of a next hop.
    Arp,
    /// A VXLAN device's forwarding database: the remote that receives frames for a MAC.
    Fdb,
}

/// One permanent entry: an IP address and a MAC. In the ARP table the address is the
/// neighbour's; in a forwarding database it is the remote end the MAC is reached through.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// What a reconcile of one device's entries did.
#[derive(Debug, Default)]
pub(crate) struct EntryReport {
    pub added: usize,
    pub removed: usize,
    /// Entries the kernel refused, in words.
    pub failures: Vec<String>,
}

/// The message body for `entry` on interface `index`.
pub(crate) fn message(table: Table, index: u32, entry: Entry) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.kind = RouteType::Unicast;
    let address = match entry.ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    };
    match table {
        Table::Arp => {
            message.header.family = family_of(entry.ip);
            message.header.flags = NeighbourFlags::empty();
        }
        Table::Fdb => {
            message.header.family = AddressFamily::Bridge;
            // `self`: the entry belongs to the device's own table, not to a bridge above it.
            message.header.flags = NeighbourFlags::Own;
        }
    }
    message.attributes = vec![
        NeighbourAttribute::Destination(address),
        NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()),
    ];
    message
}

/// Reads an entry back from a dump message; `None` for entries without an address or MAC.
fn entry_of(msg: &NeighbourMessage) -> Option<Entry> {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some((*a).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some((*a).into()),
            // The bridge family reports the remote's address as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(bytes.as_slice())
                        .ok()
                        .map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok()
            }
            _ => {}
        }
    }
    Some(Entry { ip: ip?, mac: mac? })
}

/// The permanent entries of `table` on interface `index`.
pub(crate) fn permanent_entries(
    netlink: &mut Netlink,
    table: Table,
    index: u32,
) -> Result<BTreeSet<Entry>, NetlinkError> {
    let families: &[AddressFamily] = match table {
        Table::Arp => &[AddressFamily::Inet, AddressFamily::Inet6],
        Table::Fdb => &[AddressFamily::Bridge],
    };
    let mut out = BTreeSet::new();
    for family in families {
        let mut request = NeighbourMessage::default();
        request.header.family = *family;
        match table {
            // The neighbour dump filters by this attribute (a strict dump refuses an index
            // in the header).
            Table::Arp => request.attributes.push(NeighbourAttribute::IfIndex(index)),
            // The forwarding-database dump takes the port's index in the header.
            Table::Fdb => request.header.ifindex = index,
        }
        netlink.dump(RouteNetlinkMessage::GetNeighbour(request), |msg| {
            if let RouteNetlinkMessage::NewNeighbour(n) = msg
                && n.header.ifindex == index
                && n.header.state == NeighbourState::Permanent
                && n.header.family == *family
                && let Some(entry) = entry_of(&n)
            {
                out.insert(entry);
            }
        })?;
    }
    Ok(out)
}

/// Makes the permanent entries of `table` on interface `index` exactly `wanted`: removes the
/// others, then adds what is missing. Only this interface is read or changed.
pub(crate) fn reconcile(
    netlink: &mut Netlink,
    table: Table,
    index: u32,
    wanted: &BTreeSet<Entry>,
) -> Result<EntryReport, NetlinkError> {
    let present = permanent_entries(netlink, table, index)?;
    let stale: Vec<Entry> = present.difference(wanted).copied().collect();
    let missing: Vec<Entry> = wanted.difference(&present).copied().collect();
    let requests = stale
        .iter()
        .map(|e| {
            Request::new(
                RouteNetlinkMessage::DelNeighbour(message(table, index, *e)),
                0,
            )
        })
        .chain(missing.iter().map(|e| {
            Request::new(
                RouteNetlinkMessage::NewNeighbour(message(table, index, *e)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
        }));
    let failed = netlink.batch(requests)?;
    let mut report = EntryReport::default();
    let changes = stale
        .iter()
        .map(|e| ("remove", e))
        .chain(missing.iter().map(|e| ("add", e)));
    let mut failed = failed.into_iter().peekable();
    for (i, (action, entry)) in changes.enumerate() {
        match failed.next_if(|(f, _)| *f == i) {
            // Already gone is what a removal wanted.
            Some((_, e)) if action == "remove" && e.errno() == Some(libc::ENOENT) => {
                report.removed += 1
            }
            Some((_, e)) => report.failures.push(format!(
                "{action} {} {} {}: {e}",
                match table {
                    Table::Arp => "neighbour",
                    Table::Fdb => "fdb entry",
                },
                entry.ip,
                super::pod::format_mac(&entry.mac)
            )),
            None if action == "remove" => report.removed += 1,
            None => report.added += 1,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str) -> Entry {
        Entry {
            ip: ip.parse().unwrap(),
            mac: [0x66, 0x10, 0, 0, 0, 2],
        }
    }

    #[test]
    fn arp_entries_are_permanent_and_of_the_address_family() {
        let m = message(Table::Arp, 7, entry("10.65.0.1"));
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert_eq!(m.header.ifindex, 7);
        assert!(m.header.flags.is_empty());
        assert_eq!(entry_of(&m), Some(entry("10.65.0.1")));
        let m = message(Table::Arp, 7, entry("fd00::1"));
        assert_eq!(m.header.family, AddressFamily::Inet6);
    }

    #[test]
    fn fdb_entries_are_self_permanent_in_the_bridge_family() {
        let m = message(Table::Fdb, 9, entry("192.0.2.2"));
        assert_eq!(m.header.family, AddressFamily::Bridge);
        assert_eq!(m.header.flags, NeighbourFlags::Own);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert_eq!(entry_of(&m), Some(entry("192.0.2.2")));
    }

    #[test]
    fn a_raw_bridge_destination_reads_back_as_an_address() {
        let mut m = message(Table::Fdb, 9, entry("192.0.2.2"));
        m.attributes[0] =
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![192, 0, 2, 3]));
        assert_eq!(
            entry_of(&m).map(|e| e.ip),
            Some("192.0.2.3".parse().unwrap())
        );
        m.attributes[0] = NeighbourAttribute::Destination(NeighbourAddress::Other(vec![1, 2]));
        assert_eq!(entry_of(&m), None);
    }
}
