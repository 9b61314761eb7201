//! Pod interfaces against a real kernel: a "node" namespace with an uplink and default routes,
//! and "pod" namespaces joined to it by `setup_pod`, all made by each test.

use std::net::IpAddr;
use std::path::PathBuf;

use wren_agent::dataplane::mtu::OffloadSizes;
use wren_agent::dataplane::pod::{GATEWAY_V6, format_mac};
use wren_agent::dataplane::{
    PodError, PodInterface, PodSpec, Problem, Side, check_pod, host_ifname, prepare_node,
    setup_pod, teardown_pod,
};
use wren_tests::netns::{NetNs, node_with_uplink};
use wren_tests::offload;
use wren_tests::prereq;

fn ready() -> bool {
    prereq::require_root() && prereq::require_command("ip") && prereq::require_command("ping")
}

/// A node: `eth0` to an uplink namespace (192.0.2.1/24, 2001:db8::1/64) with default routes
/// through it, as every real node has; forwarding on through `prepare_node`.
struct Node {
    ns: NetNs,
    _uplink: NetNs,
}

impl Node {
    fn new(tag: &str) -> Node {
        let (ns, uplink) = node_with_uplink(tag).unwrap();
        let setup = ns.enter(prepare_node).unwrap().unwrap();
        assert!(setup.warnings.is_empty(), "{:?}", setup.warnings);
        Node {
            ns,
            _uplink: uplink,
        }
    }

    /// Runs a dataplane call from inside the node, as the agent does.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.ns.enter(f).unwrap()
    }

    fn links(&self) -> String {
        self.ns.ip(&["-o", "link", "show"]).unwrap()
    }

    fn routes(&self) -> String {
        let v4 = self.ns.ip(&["-4", "route"]).unwrap();
        let v6 = self.ns.ip(&["-6", "route"]).unwrap();
        format!("{v4}{v6}")
    }
}

/// A node and one pod namespace, or `None` when the test cannot run here.
fn fixture(tag: &str) -> Option<(Node, NetNs)> {
    if !ready() {
        return None;
    }
    Some((Node::new(tag), NetNs::new(&format!("{tag}-pod")).unwrap()))
}

fn spec(id: &str, pod: &NetNs, addresses: &[&str]) -> PodSpec {
    PodSpec {
        workload_id: id.to_string(),
        netns: pod.path(),
        ifname: "eth0".into(),
        addresses: addresses
            .iter()
            .map(|a| a.parse::<IpAddr>().unwrap())
            .collect(),
        mtu: 1450,
        offload: None,
    }
}

/// Pings `to` from `from`, allowing for neighbour resolution on the first try.
fn reachable(from: &NetNs, to: &str) -> bool {
    (0..3).any(|_| from.exec("ping", &["-c", "1", "-W", "2", to]).is_ok())
}

fn assert_reachable(from: &NetNs, to: &str) {
    assert!(
        reachable(from, to),
        "{to} not reachable from {}",
        from.name()
    );
}

/// No host interface `iface` in the node, and no route to any of `addresses`.
fn assert_no_host_side(node: &Node, iface: &str, addresses: &[&str]) {
    assert!(
        !node.links().contains(iface),
        "{iface} left in the node:\n{}",
        node.links()
    );
    let routes = node.routes();
    for a in addresses {
        assert!(
            !routes.lines().any(|l| l.starts_with(&format!("{a} "))),
            "{a} route left"
        );
    }
}

/// No interface but loopback in the pod.
fn assert_no_pod_side(pod: &NetNs) {
    let links = pod.ip(&["-o", "link", "show"]).unwrap();
    assert_eq!(
        links.lines().count(),
        1,
        "pod interface left behind:\n{links}"
    );
}

#[test]
fn prepare_node_turns_forwarding_on_only_inside_the_node() {
    if !ready() {
        return;
    }
    let outside = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let node = Node::new("pod-sysctl");
    for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
        let value = node.ns.exec("sysctl", &["-n", key]).unwrap();
        assert_eq!(value.trim(), "1", "{key}");
    }
    let again = node.run(prepare_node).unwrap();
    assert!(again.changed.is_empty(), "{again:?}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        outside
    );
}

#[test]
fn pods_reach_each_other_on_a_node_without_a_default_route() {
    if !ready() {
        return;
    }
    // A node with nothing but loopback: no uplink, no default route to answer ARP for.
    let bare = NetNs::new("pod-noroute-node").unwrap();
    let pod_a = NetNs::new("pod-noroute-a").unwrap();
    let pod_b = NetNs::new("pod-noroute-b").unwrap();
    bare.enter(prepare_node).unwrap().unwrap();
    let a = spec("ctr-na/eth0", &pod_a, &["10.65.9.2"]);
    let b = spec("ctr-nb/eth0", &pod_b, &["10.65.9.3"]);
    bare.enter(|| setup_pod(&a)).unwrap().unwrap();
    bare.enter(|| setup_pod(&b)).unwrap().unwrap();
    assert_reachable(&pod_a, "10.65.9.3");
    assert_reachable(&pod_b, "10.65.9.2");
}

#[test]
fn two_pods_reach_each_other_and_the_node_over_ipv4_and_ipv6() {
    if !ready() {
        return;
    }
    let node = Node::new("pod-ping");
    let pod_a = NetNs::new("pod-a").unwrap();
    let pod_b = NetNs::new("pod-b").unwrap();
    let a = spec("ctr-a/eth0", &pod_a, &["10.65.0.2", "fd00:65::2"]);
    let b = spec("ctr-b/eth0", &pod_b, &["10.65.0.3", "fd00:65::3"]);
    let ia: PodInterface = node.run(|| setup_pod(&a)).unwrap();
    let ib: PodInterface = node.run(|| setup_pod(&b)).unwrap();

    assert_eq!(ia.host_ifname, host_ifname("ctr-a/eth0"));
    assert_eq!(ia.host_ifname.len(), 15);
    assert!(ia.host_ifname.starts_with("wren"));
    assert_ne!(ia.host_ifname, ib.host_ifname);
    assert_eq!(
        ia.addresses,
        vec![
            "10.65.0.2/32".parse().unwrap(),
            "fd00:65::2/128".parse().unwrap()
        ]
    );

    // Host end: ee:ee:ee:ee:ee:ee, MTU, up, proxy ARP, the gateway's link-local, no IPv4.
    let host = node
        .ns
        .ip(&["-d", "addr", "show", &ia.host_ifname])
        .unwrap();
    assert!(host.contains("link/ether ee:ee:ee:ee:ee:ee"), "{host}");
    assert!(host.contains("mtu 1450") && host.contains(",UP"), "{host}");
    assert!(host.contains(&format!("inet6 {GATEWAY_V6}/64")), "{host}");
    assert!(
        !host.contains("inet "),
        "host end has an IPv4 address: {host}"
    );
    let proxy_arp = format!("net.ipv4.conf.{}.proxy_arp", ia.host_ifname);
    assert_eq!(
        node.ns.exec("sysctl", &["-n", &proxy_arp]).unwrap().trim(),
        "1"
    );
    let routes = node.routes();
    assert!(
        routes.contains(&format!(
            "10.65.0.2 dev {} proto 201 scope link",
            ia.host_ifname
        )),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("fd00:65::2 dev {} proto 201", ia.host_ifname)),
        "{routes}"
    );

    // Pod end: born in the pod, named eth0, with its addresses and gateway routes.
    let pod_link = pod_a.ip(&["addr", "show", "eth0"]).unwrap();
    assert!(
        pod_link.contains(&format!("link/ether {}", format_mac(&ia.pod_mac))),
        "{pod_link}"
    );
    assert!(pod_link.contains("inet 10.65.0.2/32") && pod_link.contains("inet6 fd00:65::2/128"));
    assert!(pod_link.contains("mtu 1450"), "{pod_link}");
    let pod_routes = format!(
        "{}{}",
        pod_a.ip(&["-4", "route"]).unwrap(),
        pod_a.ip(&["-6", "route"]).unwrap()
    );
    assert!(
        pod_routes.contains("default via 169.254.1.1 dev eth0"),
        "{pod_routes}"
    );
    assert!(pod_routes.contains("169.254.1.1 dev eth0"), "{pod_routes}");
    assert!(
        pod_routes.contains(&format!("default via {GATEWAY_V6} dev eth0")),
        "{pod_routes}"
    );

    for (from, to) in [
        (&pod_a, "10.65.0.3"),
        (&pod_b, "10.65.0.2"),
        (&pod_a, "fd00:65::3"),
    ] {
        assert_reachable(from, to);
    }
    for to in ["10.65.0.2", "10.65.0.3", "fd00:65::2", "fd00:65::3"] {
        assert_reachable(&node.ns, to);
    }
    assert_reachable(&pod_b, "192.0.2.1");
    assert_reachable(&pod_b, "2001:db8::1");

    assert_eq!(node.run(|| check_pod(&a)).unwrap(), vec![]);
    assert_eq!(node.run(|| check_pod(&b)).unwrap(), vec![]);
}

#[test]
fn check_says_what_is_wrong() {
    let Some((node, pod)) = fixture("pod-check") else {
        return;
    };
    let s = spec("ctr-c/eth0", &pod, &["10.65.1.2"]);
    let iface = node.run(|| setup_pod(&s)).unwrap();
    pod.ip(&["route", "del", "default"]).unwrap();
    pod.ip(&["neigh", "del", "169.254.1.1", "dev", "eth0"])
        .unwrap();
    pod.ip(&["addr", "del", "10.65.1.2/32", "dev", "eth0"])
        .unwrap();
    node.ns
        .ip(&["link", "set", &iface.host_ifname, "down"])
        .unwrap();
    node.ns
        .exec(
            "sysctl",
            &[
                "-w",
                &format!("net.ipv4.conf.{}.proxy_arp=0", iface.host_ifname),
            ],
        )
        .unwrap();
    let problems = node.run(|| check_pod(&s)).unwrap();
    let host = iface.host_ifname.clone();
    assert!(
        problems.contains(&Problem::Down {
            side: Side::Host,
            name: host.clone()
        }),
        "{problems:?}"
    );
    assert!(
        problems.contains(&Problem::ProxyArpOff(host)),
        "{problems:?}"
    );
    assert!(problems.contains(&Problem::AddressMissing {
        name: "eth0".into(),
        address: "10.65.1.2/32".parse().unwrap()
    }));
    let missing_route = |side: Side, start: &str| {
        problems.iter().any(|p| {
            matches!(p, Problem::RouteMissing { side: s, route } if *s == side && route.starts_with(start))
        })
    };
    // Removing an interface's last IPv4 address, or taking it down, makes the kernel drop the
    // IPv4 routes through it.
    for (side, route) in [
        (Side::Pod, "0.0.0.0/0 via 169.254.1.1"),
        (Side::Pod, "169.254.1.1/32"),
        (Side::Host, "10.65.1.2/32"),
    ] {
        assert!(missing_route(side, route), "{route}: {problems:?}");
    }
    assert!(
        problems.contains(&Problem::GatewayNeighbourMissing("eth0".into())),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 7, "{problems:?}");

    node.run(|| teardown_pod("ctr-c/eth0")).unwrap();
    let problems = node.run(|| check_pod(&s)).unwrap();
    assert_eq!(
        problems[0],
        Problem::InterfaceMissing {
            side: Side::Host,
            name: iface.host_ifname.clone()
        }
    );
    assert!(problems.contains(&Problem::InterfaceMissing {
        side: Side::Pod,
        name: "eth0".into()
    }));
}

#[test]
fn teardown_removes_everything_and_is_idempotent() {
    let Some((node, pod)) = fixture("pod-del") else {
        return;
    };
    let s = spec("ctr-d/eth0", &pod, &["10.65.2.2", "fd00:65:2::2"]);
    let iface = node.run(|| setup_pod(&s)).unwrap();
    assert!(node.run(|| teardown_pod("ctr-d/eth0")).unwrap());
    assert_no_host_side(&node, &iface.host_ifname, &["10.65.2.2", "fd00:65:2::2"]);
    assert_no_pod_side(&pod);
    assert!(
        !node.run(|| teardown_pod("ctr-d/eth0")).unwrap(),
        "second teardown"
    );

    // Setting up again after a teardown works, and so does a repeated setup (it replaces).
    node.run(|| setup_pod(&s)).unwrap();
    let again = node.run(|| setup_pod(&s)).unwrap();
    assert_eq!(node.run(|| check_pod(&s)).unwrap(), vec![]);
    assert_reachable(&node.ns, "10.65.2.2");
    assert_eq!(again.host_ifname, iface.host_ifname);
}

#[test]
fn teardown_after_the_pod_namespace_is_gone_succeeds() {
    let Some((node, pod)) = fixture("pod-gone") else {
        return;
    };
    let s = spec("ctr-e/eth0", &pod, &["10.65.3.2"]);
    let iface = node.run(|| setup_pod(&s)).unwrap();
    drop(pod);
    // The namespace's destruction takes the pair with it, in the kernel's own time; teardown
    // is right whether or not it got there first.
    node.run(|| teardown_pod("ctr-e/eth0")).unwrap();
    assert_no_host_side(&node, &iface.host_ifname, &["10.65.3.2"]);
    let problems = node.run(|| check_pod(&s)).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::NetnsUnreachable { .. })),
        "{problems:?}"
    );
}

#[test]
fn a_missing_namespace_fails_cleanly() {
    let Some((node, pod)) = fixture("pod-nons") else {
        return;
    };
    let mut s = spec("ctr-f/eth0", &pod, &["10.65.4.2"]);
    s.netns = PathBuf::from("/run/netns/wren-no-such-namespace");
    let err = node.run(|| setup_pod(&s)).unwrap_err();
    assert!(matches!(&err, PodError::Netns(e) if e.is_gone()), "{err}");
    assert!(err.to_string().contains("wren-no-such-namespace"), "{err}");
    // Not a namespace at all.
    s.netns = PathBuf::from("/proc/self/status");
    let err = node.run(|| setup_pod(&s)).unwrap_err();
    assert!(matches!(err, PodError::Netns(_)), "{err}");
    assert_no_host_side(&node, &host_ifname("ctr-f/eth0"), &["10.65.4.2"]);
    assert_no_pod_side(&pod);
}

#[test]
fn name_collisions_fail_and_leave_the_other_interface_alone() {
    let Some((node, pod)) = fixture("pod-clash") else {
        return;
    };
    let s = spec("ctr-g/eth0", &pod, &["10.65.5.2"]);
    let name = host_ifname("ctr-g/eth0");

    // Another workload's interface under the same name (a hash collision).
    node.ns
        .ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            "clash-peer",
        ])
        .unwrap();
    node.ns
        .ip(&["link", "set", &name, "alias", "wren:ctr-other/eth0"])
        .unwrap();
    let err = node.run(|| setup_pod(&s)).unwrap_err();
    assert!(
        matches!(&err, PodError::Collision { owner, .. } if owner.contains("ctr-other")),
        "{err}"
    );
    let err = node.run(|| teardown_pod("ctr-g/eth0")).unwrap_err();
    assert!(matches!(err, PodError::Collision { .. }), "{err}");
    assert!(
        node.links().contains(&name),
        "the other interface was removed"
    );
    assert_no_pod_side(&pod);
    assert!(!node.routes().contains("10.65.5.2"));
    node.ns.ip(&["link", "del", &name]).unwrap();

    // Something that is not wren's at all.
    node.ns
        .ip(&["link", "add", &name, "type", "bridge"])
        .unwrap();
    let err = node.run(|| setup_pod(&s)).unwrap_err();
    assert!(
        matches!(&err, PodError::Collision { owner, .. } if owner.contains("did not create")),
        "{err}"
    );
    assert!(node.links().contains(&name));
    node.ns.ip(&["link", "del", &name]).unwrap();

    // The pod already has an eth0.
    pod.ip(&["link", "add", "eth0", "type", "bridge"]).unwrap();
    let err = node.run(|| setup_pod(&s)).unwrap_err();
    assert!(matches!(err, PodError::PodInterfaceExists { .. }), "{err}");
    assert_no_host_side(&node, &name, &["10.65.5.2"]);
}

#[test]
fn a_failure_half_way_undoes_the_veth() {
    let Some((node, pod)) = fixture("pod-undo") else {
        return;
    };
    // Somebody else's route already holds the pod's address: the last step fails.
    node.ns
        .ip(&[
            "route",
            "add",
            "10.65.6.2/32",
            "via",
            "192.0.2.254",
            "proto",
            "static",
        ])
        .unwrap();
    let s = spec("ctr-h/eth0", &pod, &["10.65.6.2"]);
    let err = node.run(|| setup_pod(&s)).unwrap_err();
    assert!(err.to_string().contains("route to the pod"), "{err}");
    assert!(
        !node.links().contains(&host_ifname("ctr-h/eth0")),
        "host end left behind"
    );
    assert_no_pod_side(&pod);
    assert!(
        node.routes()
            .contains("10.65.6.2 via 192.0.2.254 dev eth0 proto static")
    );
}

#[test]
fn an_ipv6_only_pod_works() {
    let Some((node, pod)) = fixture("pod-v6") else {
        return;
    };
    let s = spec("ctr-i/eth0", &pod, &["fd00:65:7::2"]);
    node.run(|| setup_pod(&s)).unwrap();
    assert_reachable(&node.ns, "fd00:65:7::2");
    assert_reachable(&pod, "2001:db8::1");
    assert!(
        pod.ip(&["-4", "route"]).unwrap().trim().is_empty(),
        "IPv4 routes in a v6 pod"
    );
    assert_eq!(node.run(|| check_pod(&s)).unwrap(), vec![]);
}

#[test]
fn an_invalid_request_is_refused_before_anything_is_made() {
    let Some((node, pod)) = fixture("pod-bad") else {
        return;
    };
    for (ifname, addresses, mtu) in [
        ("a-name-far-too-long", &["10.65.8.2"][..], 1500),
        ("eth0", &["10.65.8.2", "10.65.8.3"][..], 1500),
        ("eth0", &["10.65.8.2"][..], 10),
    ] {
        let mut s = spec("ctr-j/eth0", &pod, addresses);
        s.ifname = ifname.into();
        s.mtu = mtu;
        let err = node.run(|| setup_pod(&s)).unwrap_err();
        assert!(matches!(err, PodError::Invalid(_)), "{err}");
    }
    assert_no_host_side(&node, &host_ifname("ctr-j/eth0"), &["10.65.8.2"]);
    assert_no_pod_side(&pod);
}

#[test]
fn a_pod_takes_the_offload_sizes_it_is_given_on_both_ends() {
    let Some((node, pod)) = fixture("pod-gso") else {
        return;
    };
    let big = OffloadSizes {
        gso_max_size: 131072,
        gro_max_size: 131072,
        gso_ipv4_max_size: 196608,
        gro_ipv4_max_size: 196608,
    };
    let mut want = spec("pod-gso/eth0", &pod, &["10.65.0.9"]);
    want.offload = Some(big);
    let interface = node.run(|| setup_pod(&want)).unwrap();
    let sizes = |ns: &str, ifname: &str| offload::sizes(ns, ifname).unwrap();
    let expected = offload::Sizes {
        gso: 131072,
        gro: 131072,
        gso_ipv4: 196608,
        gro_ipv4: 196608,
    };
    assert_eq!(sizes(pod.name(), "eth0"), expected);
    assert_eq!(sizes(node.ns.name(), &interface.host_ifname), expected);
    assert_reachable(&pod, "192.0.2.1");

    // Without sizes a pod keeps the kernel's standard 64 KiB.
    let other = NetNs::new("pod-gso-std").unwrap();
    let plain = spec("pod-gso-std/eth0", &other, &["10.65.0.10"]);
    let interface = node.run(|| setup_pod(&plain)).unwrap();
    assert_eq!(
        sizes(other.name(), "eth0"),
        offload::Sizes::all(offload::STANDARD)
    );
    assert_eq!(
        sizes(node.ns.name(), &interface.host_ifname),
        offload::Sizes::all(offload::STANDARD)
    );

    // Sizes beyond what a veth can take are refused by the kernel: the pod is still made,
    // with the standard sizes.
    let third = NetNs::new("pod-gso-huge").unwrap();
    let mut huge = spec("pod-gso-huge/eth0", &third, &["10.65.0.11"]);
    huge.offload = Some(OffloadSizes {
        gso_ipv4_max_size: u32::MAX,
        ..OffloadSizes::default()
    });
    node.run(|| setup_pod(&huge)).unwrap();
    assert_eq!(sizes(third.name(), "eth0").gso_ipv4, offload::STANDARD);
    assert_reachable(&third, "192.0.2.1");
}

#[test]
fn a_default_route_of_another_network_is_left_alone_per_family() {
    let Some((node, pod)) = fixture("pod-second") else {
        return;
    };
    // Another network's interface with an IPv6 default route only.
    pod.add_foreign_interface("eth0").unwrap();
    pod.ip(&["-6", "route", "add", "default", "dev", "eth0"])
        .unwrap();
    let mut s = spec("ctr-second/net1", &pod, &["10.65.8.2", "fd00:65::8:2"]);
    s.ifname = "net1".into();
    let err = node.run(|| setup_pod(&s)).unwrap_err();
    assert!(
        matches!(&err, PodError::DefaultRouteTaken { family: "IPv6", route, .. } if route == "default dev eth0"),
        "{err}"
    );
    assert_no_host_side(&node, &host_ifname("ctr-second/net1"), &["10.65.8.2"]);
    assert!(!pod.ip(&["-o", "link"]).unwrap().contains("net1"));

    // An IPv4-only attachment does not compete with it.
    let mut s = spec("ctr-second/net1", &pod, &["10.65.8.2"]);
    s.ifname = "net1".into();
    node.run(|| setup_pod(&s)).unwrap();
    assert!(
        pod.ip(&["-4", "route", "show", "default"])
            .unwrap()
            .contains("dev net1")
    );
    node.run(|| teardown_pod("ctr-second/net1")).unwrap();
    assert_no_host_side(&node, &host_ifname("ctr-second/net1"), &["10.65.8.2"]);
}

/// A pool of one-address blocks (`--block-size 32`): the agent's blackhole for the pod's
/// block is the pod's own destination, and is often in place before the ADD adds its route
/// (the block was claimed first). The pod's route takes its place; a route someone else holds
/// there still refuses the pod, and nothing of it is left.
#[test]
fn a_one_address_block_s_blackhole_gives_way_to_the_pod_route() {
    let Some((node, pod)) = fixture("pod-bh32") else {
        return;
    };
    node.ns
        .ip(&["route", "add", "blackhole", "10.65.9.7/32", "proto", "201"])
        .unwrap();
    let a = spec("ctr-bh32/eth0", &pod, &["10.65.9.7"]);
    let made = node
        .run(|| setup_pod(&a))
        .expect("the ADD succeeds over the block's blackhole");
    let routes = node.routes();
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("10.65.9.7 dev {} proto 201", made.host_ifname))),
        "no route to the pod:\n{routes}"
    );
    assert!(!routes.contains("blackhole 10.65.9.7"), "{routes}");
    assert_reachable(&node.ns, "10.65.9.7");

    let other = NetNs::new("pod-bh32-other").unwrap();
    node.ns
        .ip(&[
            "route",
            "add",
            "10.65.9.8/32",
            "via",
            "192.0.2.1",
            "proto",
            "static",
        ])
        .unwrap();
    let b = spec("ctr-bh32b/eth0", &other, &["10.65.9.8"]);
    let refused = node.run(|| setup_pod(&b));
    assert!(refused.is_err(), "a route another owner holds was replaced");
    assert_no_host_side(&node, &host_ifname("ctr-bh32b/eth0"), &[]);
    assert!(node.routes().contains("10.65.9.8 via 192.0.2.1"));
}
