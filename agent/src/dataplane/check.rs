//! CNI CHECK for a pod's interface: compares both ends of the veth, their addresses and
//! routes with what [`setup_pod`](super::pod::setup_pod) makes, and says what differs.

use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;
use netlink_packet_route::AddressFamily;

use super::link::{self, LinkState};
use super::manager::{RouteFilter, dump_routes};
use super::neigh::{self, Entry, Table};
use super::netlink::Netlink;
use super::netns::Netns;
use super::pod::{
    ALIAS_PREFIX, GATEWAY_V4, HOST_MAC, PodError, PodSpec, alias_id, at, format_mac, host_ifname,
    host_routes, pod_routes,
};
use super::route::{KernelRoute, MAIN_TABLE, Route};

/// Which end of the veth a problem is on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// The node's end, in the node's namespace.
    Host,
    /// The pod's end, in the pod's namespace.
    Pod,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Host => "host",
            Side::Pod => "pod",
        })
    }
}

/// One thing wrong with a pod's interface.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// An end of the veth does not exist.
    #[error("{side} interface {name} is missing")]
    InterfaceMissing {
        /// Which end.
        side: Side,
        /// Its expected name.
        name: String,
    },
    /// The host interface of this name is not this workload's.
    #[error("host interface {name} is not this workload's (alias {alias:?})")]
    NotOurs {
        /// The interface name.
        name: String,
        /// Its alias, which names its owner.
        alias: Option<String>,
    },
    /// An end is administratively down.
    #[error("{side} interface {name} is down")]
    Down {
        /// Which end.
        side: Side,
        /// The interface name.
        name: String,
    },
    /// An end has another MTU than configured.
    #[error("{side} interface {name} has MTU {actual}, expected {expected}")]
    Mtu {
        /// Which end.
        side: Side,
        /// The interface name.
        name: String,
        /// Configured.
        expected: u32,
        /// Found.
        actual: u32,
    },
    /// The host end's MAC is not `ee:ee:ee:ee:ee:ee`.
    #[error("host interface {name} has MAC {actual}, expected ee:ee:ee:ee:ee:ee")]
    HostMac {
        /// The interface name.
        name: String,
        /// Found.
        actual: String,
    },
    /// Proxy ARP is off on the host end, so the pod cannot resolve its gateway.
    #[error("proxy ARP is off on host interface {0}")]
    ProxyArpOff(String),
    /// The pod's namespace cannot be entered.
    #[error("pod network namespace {path} cannot be entered: {reason}")]
    NetnsUnreachable {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The pod end lacks one of the pod's addresses.
    #[error("pod interface {name} lacks address {address}")]
    AddressMissing {
        /// The interface name.
        name: String,
        /// The missing address.
        address: IpNet,
    },
    /// The pod's permanent entry for its IPv4 gateway (169.254.1.1 → ee:ee:ee:ee:ee:ee) is
    /// gone, so the pod depends on proxy ARP, which only answers while the node has a route
    /// toward 169.254.1.1.
    #[error("pod interface {0} has no permanent neighbour entry 169.254.1.1 → ee:ee:ee:ee:ee:ee")]
    GatewayNeighbourMissing(String),
    /// A route that should be there is not.
    #[error("{side} route {route} is missing")]
    RouteMissing {
        /// Whose table.
        side: Side,
        /// The route, in `ip route` syntax.
        route: String,
    },
}

/// Checks a pod's interface against `spec` and lists what is wrong (empty: all is well).
/// An error means the check itself could not be done.
pub fn check_pod(spec: &PodSpec) -> Result<Vec<Problem>, PodError> {
    spec.validate()?;
    let mut problems = Vec::new();
    let host_name = host_ifname(&spec.workload_id);
    let mut host = Netlink::open().map_err(at("open a netlink socket in the node's namespace"))?;
    match link::get(&mut host, &host_name).map_err(at("look up host interface"))? {
        None => problems.push(Problem::InterfaceMissing {
            side: Side::Host,
            name: host_name,
        }),
        Some(h) => {
            check_host_link(&h, spec, &mut problems);
            let wanted = host_routes(&host_name, &spec.host_networks());
            check_routes(&mut host, Side::Host, h.index, &wanted, &mut problems)?;
        }
    }

    let mut pod = match Netns::open(&spec.netns).and_then(|ns| ns.netlink()) {
        Ok(pod) => pod,
        Err(e) => {
            let reason = e.to_string();
            problems.push(Problem::NetnsUnreachable {
                path: spec.netns.clone(),
                reason,
            });
            return Ok(problems);
        }
    };
    let Some(p) = link::get(&mut pod, &spec.ifname).map_err(at("look up pod interface"))? else {
        problems.push(Problem::InterfaceMissing {
            side: Side::Pod,
            name: spec.ifname.clone(),
        });
        return Ok(problems);
    };
    check_common(&p, Side::Pod, spec.mtu, &mut problems);
    let present = link::addresses(&mut pod, p.index).map_err(at("list pod addresses"))?;
    for address in spec.host_networks() {
        if !present.contains(&address) {
            problems.push(Problem::AddressMissing {
                name: p.name.clone(),
                address,
            });
        }
    }
    if spec.has_v4() {
        let gateway = Entry {
            ip: GATEWAY_V4.into(),
            mac: HOST_MAC,
        };
        let entries = neigh::permanent_entries(&mut pod, Table::Arp, p.index)
            .map_err(at("list pod neighbours"))?;
        if !entries.contains(&gateway) {
            problems.push(Problem::GatewayNeighbourMissing(p.name.clone()));
        }
    }
    check_routes(
        &mut pod,
        Side::Pod,
        p.index,
        &pod_routes(spec),
        &mut problems,
    )?;
    Ok(problems)
}

fn check_host_link(h: &LinkState, spec: &PodSpec, problems: &mut Vec<Problem>) {
    let expected_alias = format!("{ALIAS_PREFIX}{}", alias_id(&spec.workload_id));
    if h.alias.as_deref() != Some(expected_alias.as_str()) {
        problems.push(Problem::NotOurs {
            name: h.name.clone(),
            alias: h.alias.clone(),
        });
    }
    check_common(h, Side::Host, spec.mtu, problems);
    if h.mac != Some(HOST_MAC) {
        let actual = h
            .mac
            .as_ref()
            .map(format_mac)
            .unwrap_or_else(|| "none".into());
        problems.push(Problem::HostMac {
            name: h.name.clone(),
            actual,
        });
    }
    if h.proxy_arp != Some(1) {
        problems.push(Problem::ProxyArpOff(h.name.clone()));
    }
}

fn check_common(link: &LinkState, side: Side, mtu: u32, problems: &mut Vec<Problem>) {
    if !link.up {
        problems.push(Problem::Down {
            side,
            name: link.name.clone(),
        });
    }
    if let Some(actual) = link.mtu
        && actual != mtu
    {
        problems.push(Problem::Mtu {
            side,
            name: link.name.clone(),
            expected: mtu,
            actual,
        });
    }
}

/// Reports each wanted route (through interface `oif`) that the table lacks.
fn check_routes(
    netlink: &mut Netlink,
    side: Side,
    oif: u32,
    wanted: &[Route],
    problems: &mut Vec<Problem>,
) -> Result<(), PodError> {
    let mut present: Vec<KernelRoute> = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let filter = RouteFilter {
            family,
            table: MAIN_TABLE,
            protocol: None,
            oif: Some(oif),
        };
        dump_routes(netlink, &filter, &mut present).map_err(at("list routes"))?;
    }
    for route in wanted {
        let shape = route.shape(Some(oif));
        if !present
            .iter()
            .any(|k| k.dst == route.dst && k.satisfies(route, &shape))
        {
            problems.push(Problem::RouteMissing {
                side,
                route: route.to_string(),
            });
        }
    }
    Ok(())
}
