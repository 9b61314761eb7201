//! The node's IP-in-IP device, `wrentunl0`.
//!
//! Traffic to a remote node's block is routed `via <node ip> dev wrentunl0 onlink`: the
//! kernel puts another IPv4 header in front (protocol 4) addressed to the gateway and sends it
//! over the underlay. The device has no remote of its own (any node can be the other end) and
//! its local address is the node's.
//!
//! Not every kernel has IPIP: without the `ipip` module, creating the device fails with
//! `EOPNOTSUPP` ("Unknown device type"). [`IpipManager::probe`] finds that out at start-up so
//! the agent can say so plainly instead of failing route by route.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::link::{InfoData, InfoIpTunnel, InfoKind, LinkInfo, LinkMessage};
use rtnetlink::LinkIpIp;

use super::netlink::{Netlink, NetlinkError};
use super::vxlan::{
    DeviceWant, TunnelError, TunnelReport, infos_of_kind, reconcile_device, remove_device,
};

/// Name of wren's IPIP device.
pub const IPIP_DEVICE: &str = "wrentunl0";

/// What the node's IPIP device should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpipDevice {
    /// The node's underlay address: the source of encapsulated packets.
    pub local: Ipv4Addr,
    /// The device's MTU.
    pub mtu: u32,
}

impl IpipDevice {
    /// `RTM_NEWLINK` body that creates the device, up. Path MTU discovery stays on, so the
    /// outer header carries DF and an oversized inner packet is answered with "fragmentation
    /// needed" instead of being fragmented.
    pub(crate) fn create_message(&self) -> LinkMessage {
        LinkIpIp::new(IPIP_DEVICE)
            .local(self.local)
            .pmtudisc(true)
            .mtu(self.mtu)
            .up()
            .build()
    }

    /// Whether `link` is an IPIP device with this local address.
    pub(crate) fn matches(&self, link: &LinkMessage) -> bool {
        ipip_local(link) == Some(Some(IpAddr::V4(self.local)))
    }
}

/// `Some(local)` when `link` is an IPIP device (`local` as it is set), `None` otherwise.
fn ipip_local(link: &LinkMessage) -> Option<Option<IpAddr>> {
    let infos = infos_of_kind(link, InfoKind::IpIp)?;
    Some(infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::IpTunnel(data)) => data.iter().find_map(|d| match d {
            InfoIpTunnel::Local(a) => Some(*a),
            _ => None,
        }),
        _ => None,
    }))
}

/// Whether this kernel can make IPIP devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpipSupport {
    /// It can.
    Available,
    /// It cannot; the reason names the kernel's answer.
    Missing {
        /// In words, for logs and status.
        reason: String,
    },
}

impl IpipSupport {
    /// Whether IPIP devices can be made.
    pub fn available(&self) -> bool {
        matches!(self, IpipSupport::Available)
    }

    /// Reads the outcome of creating an IPIP device.
    pub(crate) fn from_creation(outcome: Result<(), &NetlinkError>) -> IpipSupport {
        match outcome {
            Ok(()) => IpipSupport::Available,
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => IpipSupport::Missing {
                reason: format!(
                    "this kernel has no IPIP support (no `ipip` module): creating {IPIP_DEVICE} \
                     failed with EOPNOTSUPP ({e})"
                ),
            },
            Err(e) => IpipSupport::Missing {
                reason: format!("creating {IPIP_DEVICE} failed: {e}"),
            },
        }
    }
}

/// Keeps `wrentunl0` as wanted, on one netlink socket opened in the calling thread's network
/// namespace. Its calls block on the kernel: run them on a blocking thread.
pub struct IpipManager {
    netlink: Netlink,
}

impl IpipManager {
    /// Opens the manager's socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        Ok(Self {
            netlink: Netlink::open()?,
        })
    }

    /// Finds out whether the kernel can make IPIP devices: an existing `wrentunl0` says yes;
    /// otherwise one is made with `local` and removed again (the next reconcile makes it for
    /// good when a pool needs it).
    pub fn probe(&mut self, local: Ipv4Addr) -> IpipSupport {
        match super::link::get(&mut self.netlink, IPIP_DEVICE) {
            Ok(Some(_)) => return IpipSupport::Available,
            Ok(None) => {}
            Err(e) => {
                return IpipSupport::Missing {
                    reason: format!("cannot look {IPIP_DEVICE} up: {e}"),
                };
            }
        }
        let device = IpipDevice { local, mtu: 1480 };
        let outcome = self.netlink.request(
            netlink_packet_route::RouteNetlinkMessage::NewLink(device.create_message()),
            netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
        );
        let support = IpipSupport::from_creation(outcome.as_ref().map(|_| ()));
        if support.available() {
            let _ = super::link::delete(&mut self.netlink, IPIP_DEVICE);
        }
        support
    }

    /// With `Some`, makes `wrentunl0` as given (again when its local address changed); with
    /// `None`, removes it.
    pub fn reconcile(&mut self, want: Option<&IpipDevice>) -> Result<TunnelReport, TunnelError> {
        let mut report = TunnelReport::default();
        let Some(device) = want else {
            report.removed = remove_device(&mut self.netlink, IPIP_DEVICE)?;
            return Ok(report);
        };
        let matches = |link: &LinkMessage| device.matches(link);
        reconcile_device(
            &mut self.netlink,
            DeviceWant {
                name: IPIP_DEVICE,
                matches: &matches,
                create: device.create_message(),
                mtu: device.mtu,
                mac: None,
                addresses: Vec::new(),
            },
            &mut report,
        )?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::link::LinkState;
    use netlink_packet_route::link::LinkAttribute;

    fn device() -> IpipDevice {
        IpipDevice {
            local: Ipv4Addr::new(192, 0, 2, 1),
            mtu: 1480,
        }
    }

    #[test]
    fn the_creation_message_is_an_ipip_device_with_the_node_address() {
        let msg = device().create_message();
        let state = LinkState::from_message(&msg);
        assert_eq!(state.name, IPIP_DEVICE);
        assert_eq!(state.mtu, Some(1480));
        assert!(device().matches(&msg));
        assert_eq!(
            ipip_local(&msg),
            Some(Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))))
        );
        let pmtu = msg.attributes.iter().any(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| {
                matches!(i, LinkInfo::Data(InfoData::IpTunnel(d)) if d.contains(&InfoIpTunnel::PMtuDisc(true)))
            }),
            _ => false,
        });
        assert!(pmtu, "path MTU discovery must stay on");
    }

    #[test]
    fn another_local_address_or_kind_does_not_match() {
        let moved = IpipDevice {
            local: Ipv4Addr::new(192, 0, 2, 7),
            ..device()
        };
        assert!(!device().matches(&moved.create_message()));
        let vxlan = rtnetlink::LinkVxlan::new(IPIP_DEVICE, 1).build();
        assert!(!device().matches(&vxlan));
        assert_eq!(ipip_local(&vxlan), None);
    }

    #[test]
    fn a_kernel_without_ipip_is_reported_in_words() {
        let missing = NetlinkError::Kernel {
            errno: libc::EOPNOTSUPP,
            detail: Some("Unknown device type".into()),
        };
        let support = IpipSupport::from_creation(Err(&missing));
        let IpipSupport::Missing { reason } = &support else {
            panic!("reported as available");
        };
        assert!(reason.contains("no `ipip` module"), "{reason}");
        assert!(reason.contains("Unknown device type"), "{reason}");
        assert!(!support.available());
        let other = NetlinkError::Kernel {
            errno: libc::EPERM,
            detail: None,
        };
        let IpipSupport::Missing { reason } = IpipSupport::from_creation(Err(&other)) else {
            panic!("reported as available");
        };
        assert!(!reason.contains("module"), "{reason}");
        assert!(IpipSupport::from_creation(Ok(())).available());
    }
}
