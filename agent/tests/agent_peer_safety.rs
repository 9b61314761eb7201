//! What an explicit peer's routes must get past before they reach a node's kernel: next hops
//! that cannot be used, RFC 7606 attribute-discard, and the import limits on the cluster's
//! own address space. The peers are raw BGP speakers in namespaces of their own on the
//! cluster's fabric, sending exactly the bytes of each case to a real `wren agent`; the
//! outcome is read from the node's kernel routing table and `wren status`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wren_tests::daemons::feed::{FeedSpec, Feeder, path_attribute, update_message};
use wren_tests::netns::NetNs;

mod agent_rig;

use agent_rig::*;

const TOR_IP: &str = "10.77.0.253";
const TOR_V6: &str = "fd77::fd";
const TOR_AS: u32 = 65000;
const IBGP_IP: &str = "10.77.0.252";
const CLUSTER_AS: u32 = 64512;

const WELL_KNOWN: u8 = 0x40;
const OPTIONAL: u8 = 0x80;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A prefix as NLRI encodes it.
fn nlri(prefix: &str) -> Vec<u8> {
    let prefix = net(prefix);
    let octets = match prefix.addr() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let len = prefix.prefix_len();
    let mut out = vec![len];
    out.extend_from_slice(&octets[..usize::from(len).div_ceil(8)]);
    out
}

/// ORIGIN IGP and an AS_SEQUENCE of `path`.
fn origin_and_path(path: &[u32]) -> Vec<u8> {
    let mut as_path = vec![2, path.len() as u8];
    for asn in path {
        as_path.extend_from_slice(&asn.to_be_bytes());
    }
    [
        path_attribute(WELL_KNOWN, 1, &[0]),
        path_attribute(WELL_KNOWN, 2, &as_path),
    ]
    .concat()
}

fn next_hop(address: &str) -> Vec<u8> {
    let address: Ipv4Addr = address.parse().unwrap();
    path_attribute(WELL_KNOWN, 3, &address.octets())
}

/// An IPv4 announcement from AS `path[0]` with `extra` attributes after the mandatory ones.
fn announce(prefix: &str, path: &[u32], via: &str, extra: &[u8]) -> Vec<u8> {
    let attrs = [origin_and_path(path), next_hop(via), extra.to_vec()].concat();
    update_message(&[], &attrs, &nlri(prefix))
}

/// An announcement in MP_REACH_NLRI (AFI `afi`) with the next hop octets `nh`.
fn announce_mp(afi: u8, prefix: &str, nh: &[u8]) -> Vec<u8> {
    let mut value = vec![0, afi, 1, nh.len() as u8];
    value.extend_from_slice(nh);
    value.push(0);
    value.extend_from_slice(&nlri(prefix));
    let attrs = [
        origin_and_path(&[TOR_AS]),
        path_attribute(OPTIONAL, 14, &value),
    ]
    .concat();
    update_message(&[], &attrs, &[])
}

fn v6(address: &str) -> Vec<u8> {
    address
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec()
}

/// A raw peer in a namespace of its own on the fabric, Established with node1's agent.
fn raw_peer(c: &Cluster, ns: &NetNs, address: &str, asn: u32) -> Feeder {
    let spec = FeedSpec {
        prefixes: 0,
        seed: 0,
        asn,
        router_id: address.parse().unwrap(),
        next_hop: address.parse().unwrap(),
    };
    let to = SocketAddr::new(c.node(0).ip.parse().unwrap(), 179);
    let start = Instant::now();
    loop {
        // Refused until node1's agent has the peer configured.
        match Feeder::connect(ns, to, &spec, Duration::from_secs(5)) {
            Ok(feeder) => return feeder,
            Err(e) if start.elapsed() > DEADLINE => panic!("peer {address}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// node1's routes of protocol `bgp`, both families.
fn bgp_routes(node: &Node) -> String {
    let v6 = node
        .ns
        .ip(&["-6", "route", "show", "proto", "bgp"])
        .unwrap_or_default();
    node.routes("bgp") + &v6
}

fn has_prefix(routes: &str, prefix: &str) -> bool {
    routes
        .lines()
        .any(|l| l.split_whitespace().next() == Some(prefix))
}

#[test]
fn an_explicit_peer_s_routes_are_checked_before_they_reach_the_kernel() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("ag-safe", 2);
    let tor = NetNs::new("ag-safe-tor").unwrap();
    c.fabric
        .attach(&tor, "eth0", Some(&format!("{TOR_IP}/24")))
        .unwrap();
    let ibgp = NetNs::new("ag-safe-ibgp").unwrap();
    c.fabric
        .attach(&ibgp, "eth0", Some(&format!("{IBGP_IP}/24")))
        .unwrap();
    // An IPv6 subnet between node1 and the ToR, for the IPv6 next hops.
    let v6_addr = format!("{TOR_V6}/64");
    tor.ip(&["-6", "addr", "add", &v6_addr, "dev", "eth0", "nodad"])
        .unwrap();
    c.node(0)
        .ns
        .ip(&["-6", "addr", "add", "fd77::1/64", "dev", "eth0", "nodad"])
        .unwrap();
    c.start_all();
    c.wait_mesh();
    let b2 = c.claim("node2", "k8s.pod-b");
    let n1 = c.node(0);
    let via_node2 = format!("{b2} via {} ", c.node(1).ip);
    wait_for("node1 to route node2's block", || {
        n1.has_route("bgp", &via_node2)
    });

    let add_tor = |extra: &[&str]| {
        let args = [&["--node", "node1"][..], extra].concat();
        c.add_peer("tor", TOR_IP, TOR_AS, &args);
    };
    add_tor(&[]);
    c.add_peer("ibgp", IBGP_IP, CLUSTER_AS, &["--node", "node1"]);
    let tor_peer = raw_peer(&c, &tor, TOR_IP, TOR_AS);
    let ibgp_peer = raw_peer(&c, &ibgp, IBGP_IP, CLUSTER_AS);
    let send = |peer: &Feeder, bytes: Vec<u8>| peer.send(&bytes).unwrap();
    let installed = |prefix: &str| has_prefix(&bgp_routes(n1), prefix);

    // 1. Installed via the peer; re-announced with an off-link next hop, the kernel route
    //    goes (the old path was replaced, the new one cannot be used).
    send(
        &tor_peer,
        announce("10.77.205.0/24", &[TOR_AS], TOR_IP, &[]),
    );
    wait_for("10.77.205.0/24 via the ToR", || {
        n1.has_route("bgp", &format!("10.77.205.0/24 via {TOR_IP} "))
    });
    send(
        &tor_peer,
        announce("10.77.205.0/24", &[TOR_AS], "10.77.5.5", &[]),
    );
    wait_for("10.77.205.0/24 to go", || !installed("10.77.205.0/24"));

    // 2. A shorter eBGP path with an unusable next hop does not beat a longer iBGP one, and
    //    when the iBGP path is withdrawn nothing is left in the kernel.
    let local_pref = path_attribute(WELL_KNOWN, 5, &100u32.to_be_bytes());
    send(
        &ibgp_peer,
        announce(
            "10.77.206.0/24",
            &[65100, 65101, 65102],
            IBGP_IP,
            &local_pref,
        ),
    );
    wait_for("10.77.206.0/24 via the iBGP peer", || {
        n1.has_route("bgp", &format!("10.77.206.0/24 via {IBGP_IP} "))
    });
    send(
        &tor_peer,
        announce("10.77.206.0/24", &[TOR_AS], "10.77.5.5", &[]),
    );

    // 3. Next hops no route can use, in every family: loopback, 0.0.0.0, `::`, multicast,
    //    IPv4-mapped, and a link-local one on a session whose interface is not known.
    send(
        &tor_peer,
        announce("10.77.207.0/24", &[TOR_AS], "127.0.0.1", &[]),
    );
    send(&tor_peer, announce_mp(1, "10.77.208.0/24", &[0, 0, 0, 0]));
    let unusable_v6 = [
        ("2001:db8:1::/48", v6("::")),
        ("2001:db8:2::/48", v6("ff02::1")),
        ("2001:db8:3::/48", v6("::ffff:10.77.0.253")),
        ("2001:db8:4::/48", v6("fe80::1")),
        ("2001:db8:5::/48", [v6("::"), v6("fe80::1")].concat()),
    ];
    for (prefix, nh) in &unusable_v6 {
        send(&tor_peer, announce_mp(2, prefix, nh));
    }

    // 4. The cluster's own space: another node's address, an address inside another node's
    //    block, and a default route the peer is not configured to give.
    let node2_ip = format!("{}/32", c.node(1).ip);
    let inside_b2 = IpNet::new(b2.hosts().nth(1).unwrap(), 32)
        .unwrap()
        .to_string();
    for prefix in [node2_ip.as_str(), inside_b2.as_str(), "0.0.0.0/0"] {
        send(&tor_peer, announce(prefix, &[TOR_AS], TOR_IP, &[]));
    }

    // 5. RFC 7606 §7.5, §7.9, §7.10: LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST of a wrong
    //    length from an external peer lose the attribute, not the route.
    let malformed = [
        path_attribute(WELL_KNOWN, 5, &[0, 1]),
        path_attribute(OPTIONAL, 9, &[1, 2, 3]),
        path_attribute(OPTIONAL, 10, &[1, 2, 3, 4, 5]),
    ];
    for (i, attr) in malformed.iter().enumerate() {
        let prefix = format!("10.77.{}.0/24", 211 + i);
        send(&tor_peer, announce(&prefix, &[TOR_AS], TOR_IP, attr));
    }

    // Controls, sent last on each session: usable routes of both families. Once they are in
    // the kernel, everything sent before them has been through the agent.
    send(
        &tor_peer,
        announce("10.77.210.0/24", &[TOR_AS], TOR_IP, &[]),
    );
    send(&tor_peer, announce_mp(2, "2001:db8:9::/48", &v6(TOR_V6)));
    wait_for("the controls", || {
        let routes = bgp_routes(n1);
        has_prefix(&routes, "10.77.210.0/24") && has_prefix(&routes, "2001:db8:9::/48")
    });
    let routes = bgp_routes(n1);
    assert!(
        routes.contains(&format!("2001:db8:9::/48 via {TOR_V6} ")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("10.77.206.0/24 via {IBGP_IP} ")),
        "the unusable eBGP path won: {routes}"
    );
    for prefix in ["10.77.207.0/24", "10.77.208.0/24", "0.0.0.0/0"]
        .into_iter()
        .chain(unusable_v6.iter().map(|(p, _)| *p))
        .chain([node2_ip.as_str(), inside_b2.as_str()])
    {
        assert!(!has_prefix(&routes, prefix), "{prefix} installed: {routes}");
    }
    for i in 0..malformed.len() {
        let prefix = format!("10.77.{}.0/24", 211 + i);
        assert!(
            routes.contains(&format!("{prefix} via {TOR_IP} ")),
            "{prefix}: {routes}"
        );
    }
    // The mesh's own route to node2's block is untouched, and the sessions stay up.
    assert!(n1.has_route("bgp", &via_node2), "{routes}");
    assert_eq!(tor_peer.notification(), None);
    assert_eq!(ibgp_peer.notification(), None);
    // What was held back shows in `wren status` (session counters are polled: wait).
    let tor_line = || {
        let status = n1.status();
        let line = status.lines().find(|l| l.starts_with(TOR_IP));
        line.unwrap_or_default().to_owned()
    };
    wait_for("the ToR's filtered counts", || {
        let line = tor_line();
        line.contains("Established") && line.contains("3 (default route 1, node address 1, pool 1)")
    });

    // The iBGP path goes: nothing usable is left.
    let withdraw = update_message(&nlri("10.77.206.0/24"), &[], &[]);
    send(&ibgp_peer, withdraw);
    wait_for("10.77.206.0/24 to go", || !installed("10.77.206.0/24"));

    // A default route, once the peer is configured to give one (sent again until the
    // changed configuration has reached the agent). The node's own default route, of
    // another protocol, keeps the kernel's slot; what counts is that BGP takes it.
    add_tor(&["--accept-default-route"]);
    wait_every(
        "the ToR's default route to be taken",
        Duration::from_millis(500),
        || {
            send(&tor_peer, announce("0.0.0.0/0", &[TOR_AS], TOR_IP, &[]));
            std::thread::sleep(Duration::from_millis(100));
            tor_line().contains("2 (node address 1, pool 1)")
        },
    );
    assert_eq!(tor_peer.notification(), None);
}
