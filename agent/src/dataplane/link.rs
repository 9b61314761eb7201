//! Interfaces and their addresses over a [`Netlink`] socket: look-ups and the messages that
//! change them.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::LinkUnspec;

use super::manager::link_name;
use super::netlink::{Netlink, NetlinkError};

/// What wren checks about an interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkState {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub veth: bool,
    pub proxy_arp: Option<i32>,
}

impl LinkState {
    pub(crate) fn from_message(msg: &LinkMessage) -> LinkState {
        let mut state = LinkState {
            index: msg.header.index,
            name: link_name(msg).unwrap_or_default(),
            up: msg.header.flags.contains(LinkFlags::Up),
            ..LinkState::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfAlias(a) => state.alias = Some(a.clone()),
                LinkAttribute::Address(a) => state.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(m) => state.mtu = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    state.veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)))
                }
                LinkAttribute::AfSpecUnspec(specs) => {
                    for spec in specs {
                        if let AfSpecUnspec::Inet(inet) = spec {
                            for conf in inet {
                                if let AfSpecInet::DevConf(c) = conf {
                                    state.proxy_arp = Some(c.proxy_arp);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        state
    }
}

/// Looks an interface up by name; `None` when there is none.
pub(crate) fn get(netlink: &mut Netlink, name: &str) -> Result<Option<LinkState>, NetlinkError> {
    Ok(find(netlink, LinkUnspec::new_with_name(name).build())?
        .map(|link| LinkState::from_message(&link)))
}

/// Looks an interface up (by the name or index `request` carries) and returns the kernel's
/// whole description of it, kind-specific settings included; `None` when there is none.
pub(crate) fn find(
    netlink: &mut Netlink,
    request: LinkMessage,
) -> Result<Option<LinkMessage>, NetlinkError> {
    match netlink.request(RouteNetlinkMessage::GetLink(request), 0) {
        Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes an interface by name (for a veth: both ends). An interface already gone is not an
/// error.
pub(crate) fn delete(netlink: &mut Netlink, name: &str) -> Result<(), NetlinkError> {
    let request = LinkUnspec::new_with_name(name).build();
    match netlink.request(RouteNetlinkMessage::DelLink(request), 0) {
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The message that brings an interface up.
pub(crate) fn set_up(index: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build())
}

/// The message that puts an address on an interface. `nodad` skips duplicate address
/// detection, without which an IPv6 address is unusable for a second or more.
pub(crate) fn add_address(index: u32, address: IpNet, nodad: bool) -> RouteNetlinkMessage {
    let mut msg = match address.addr() {
        IpAddr::V4(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, address.prefix_len())
            .build(),
        IpAddr::V6(a) => rtnetlink::AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(a, address.prefix_len())
            .build(),
    };
    if nodad {
        use netlink_packet_route::address::{AddressFlags, AddressHeaderFlags};
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    RouteNetlinkMessage::NewAddress(msg)
}

/// The addresses on one interface, both families.
pub(crate) fn addresses(netlink: &mut Netlink, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
    let mut out = Vec::new();
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Unspec;
    request.header.index = index;
    netlink.dump(RouteNetlinkMessage::GetAddress(request), |msg| {
        if let RouteNetlinkMessage::NewAddress(a) = msg
            && a.header.index == index
        {
            let addr = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(net) = addr.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                out.push(net);
            }
        }
    })?;
    Ok(out)
}
