//! The CNI result of an attachment, built from its workload record: the host veth, the pod
//! interface, the pod's addresses and its default routes via the link-local gateways.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use wren_cni::result::{CniResult, Dns, Interface, IpConfig, Route};
use wren_model::Workload;

use crate::dataplane::pod::{GATEWAY_V4, GATEWAY_V6, HOST_MAC, format_mac};

/// Index of the pod interface in the result (the host veth is 0).
const POD_INTERFACE: usize = 1;

/// The result for `record`: interfaces (host veth, pod interface with its sandbox and MTU),
/// one `ips` entry per address on the pod interface, and a default route per family.
pub fn attachment_result(record: &Workload, mtu: u32, dns: Option<&Dns>) -> CniResult {
    let interfaces = vec![
        Interface {
            name: record.host_interface.clone(),
            mac: Some(format_mac(&HOST_MAC)),
            mtu: Some(mtu),
            ..Default::default()
        },
        Interface {
            name: record.ifname.clone(),
            mac: Some(record.mac.clone()),
            mtu: Some(mtu),
            sandbox: Some(record.netns.clone()),
            ..Default::default()
        },
    ];
    let ips = record
        .addresses
        .iter()
        .map(|address| IpConfig {
            address: *address,
            gateway: None,
            interface: Some(POD_INTERFACE),
        })
        .collect();
    let mut routes = Vec::new();
    if record.addresses.iter().any(|a| a.addr().is_ipv4()) {
        routes.push(Route::via(default_route(false), IpAddr::V4(GATEWAY_V4)));
    }
    if record.addresses.iter().any(|a| a.addr().is_ipv6()) {
        routes.push(Route::via(default_route(true), IpAddr::V6(GATEWAY_V6)));
    }
    CniResult {
        interfaces,
        ips,
        routes,
        dns: dns.cloned().unwrap_or_default(),
    }
}

fn default_route(v6: bool) -> IpNet {
    let unspecified = if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    IpNet::new(unspecified, 0).unwrap_or_default()
}

/// The addresses a result says the pod interface named `ifname` carries.
pub fn sandbox_addresses(result: &CniResult, ifname: &str) -> Vec<IpNet> {
    result
        .ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| result.interfaces.get(i))
                .is_some_and(|i| i.name == ifname && i.sandbox.is_some())
        })
        .map(|ip| ip.address)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(addresses: &[&str]) -> Workload {
        Workload {
            node: "n1".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            network: "net".into(),
            handle: "net.c1".into(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            netns: "/run/netns/p".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            host_interface: "wren0123456789a".into(),
            mac: "0a:00:00:00:00:01".into(),
        }
    }

    #[test]
    fn dual_stack_result_has_both_default_routes() {
        let r = attachment_result(&record(&["10.65.0.1/32", "fd00::1/128"]), 1500, None);
        assert_eq!(r.interfaces[0].mac.as_deref(), Some("ee:ee:ee:ee:ee:ee"));
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/p"));
        assert!(r.ips.iter().all(|ip| ip.interface == Some(1)));
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.routes[0].gw, Some("169.254.1.1".parse().unwrap()));
        assert_eq!(r.routes[1].dst.to_string(), "::/0");
        assert_eq!(
            r.routes[1].gw,
            Some("fe80::ecee:eeff:feee:eeee".parse().unwrap())
        );
        assert_eq!(sandbox_addresses(&r, "eth0").len(), 2);
        assert!(sandbox_addresses(&r, "eth1").is_empty());
    }

    #[test]
    fn ipv4_only_result_has_no_ipv6_route() {
        let r = attachment_result(&record(&["10.65.0.1/32"]), 1400, None);
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.interfaces[1].mtu, Some(1400));
    }
}
