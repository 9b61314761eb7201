//! What the nodes tell the fabric and how it is marked, checked on real routers: two agents
//! on a bridge peer with a BIRD 2 and an FRR top-of-rack router in namespaces of their own.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::frr::Frr;
use wren_tests::daemons::{Announce, BgpDaemon, Config, Family, Peer, Route};
use wren_tests::netns::NetNs;

mod agent_rig;

use agent_rig::*;

const BIRD_IP: &str = "10.77.0.253";
const BIRD_AS: u32 = 65000;
const FRR_IP: &str = "10.77.0.252";
const FRR_AS: u32 = 65001;

/// A router on the cluster's bridge peering with every node.
fn router_config(c: &Cluster, ip: &str, asn: u32) -> Config {
    let me: IpAddr = ip.parse().unwrap();
    let mut config = Config::new(ip.parse::<Ipv4Addr>().unwrap(), asn);
    for node in &c.nodes {
        config = config.peer(Peer::new(node.ip.parse().unwrap(), 64512, me).hold_time(9));
    }
    config
}

/// The route a router holds for `prefix`, if any.
fn route_of(daemon: &dyn BgpDaemon, prefix: IpNet) -> Option<Route> {
    let routes = daemon.routes(Family::Ipv4).unwrap_or_default();
    routes.into_iter().find(|r| r.prefix == Some(prefix))
}

/// The first line of a failed command's error output.
fn refusal(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(!out.status.success(), "wren {args:?} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    stderr.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn communities_and_filters_on_bird_and_frr() {
    if !ready_with(
        ["bird"]
            .into_iter()
            .chain(wren_tests::daemons::frr::BINARIES),
    ) {
        return;
    }
    let mut c = Cluster::new("fx-comm", 2);
    let bird_ns = NetNs::new("fx-comm-bird").unwrap();
    let frr_ns = NetNs::new("fx-comm-frr").unwrap();
    c.fabric
        .attach(&bird_ns, "eth0", Some(&format!("{BIRD_IP}/24")))
        .unwrap();
    c.fabric
        .attach(&frr_ns, "eth0", Some(&format!("{FRR_IP}/24")))
        .unwrap();
    let mut bird = Bird::start(&bird_ns, router_config(&c, BIRD_IP, BIRD_AS)).unwrap();
    let frr = Frr::start(&frr_ns, router_config(&c, FRR_IP, FRR_AS)).unwrap();

    // Bad input is refused in one line naming the flag, and nothing is written.
    let line = refusal(&c, &["bgp", "config", "--community", "70000:1"]);
    assert!(
        line.contains("--community") && line.contains("70000 is out of range"),
        "{line}"
    );
    let line = refusal(&c, &["pool", "communities", "default", "1:2:4294967296"]);
    assert!(line.contains("4294967296 is out of range"), "{line}");
    let line = refusal(
        &c,
        &[
            "bgp",
            "config",
            "--prefix-advertisement",
            "10.65.0.0/16=65000:1,65000:x",
        ],
    );
    assert!(
        line.contains("--prefix-advertisement") && line.contains("65000:x"),
        "{line}"
    );
    let shown = c.cli_ok(&["bgp", "config"]);
    assert!(shown.contains("Communities:        none"), "{shown}");

    let shown = c.cli_ok(&[
        "bgp",
        "config",
        "--community",
        "65000:1",
        "--prefix-advertisement",
        "10.65.0.0/16=65000:100,64512:7:8",
    ]);
    assert!(shown.contains("Communities:        65000:1"), "{shown}");
    assert!(
        shown.contains("10.65.0.0/16 65000:100, 64512:7:8"),
        "{shown}"
    );
    let out = c.cli_ok(&["pool", "communities", "default", "65000:2", "64512:1:2"]);
    assert!(
        out.contains("pool default communities: 65000:2, 64512:1:2"),
        "{out}"
    );
    c.add_peer("bird", BIRD_IP, BIRD_AS, &[]);
    c.add_peer("frr", FRR_IP, FRR_AS, &[]);
    c.start_all();
    let blocks: Vec<IpNet> = (0..2)
        .map(|i| c.claim(&c.node(i).name, &format!("k8s.pod{i}")))
        .collect();

    let marked = |r: &Route| {
        r.communities == [(65000, 1), (65000, 2), (65000, 100)]
            && r.large_communities == [(64512, 1, 2), (64512, 7, 8)]
    };
    for (name, daemon) in [("BIRD", &bird as &dyn BgpDaemon), ("FRR", &frr)] {
        wait_for(&format!("{name} to hold every block, marked"), || {
            blocks
                .iter()
                .all(|b| route_of(daemon, *b).is_some_and(|r| marked(&r)))
        });
    }

    // A change of the pool's communities re-announces its prefixes with the new set.
    c.cli_ok(&["pool", "communities", "default", "no-export"]);
    let remarked = |r: &Route| {
        r.communities == [(65000, 1), (65000, 100), (65535, 65281)]
            && r.large_communities == [(64512, 7, 8)]
    };
    for (name, daemon) in [("BIRD", &bird as &dyn BgpDaemon), ("FRR", &frr)] {
        wait_for(&format!("{name} to hold the new marks"), || {
            blocks
                .iter()
                .all(|b| route_of(daemon, *b).is_some_and(|r| remarked(&r)))
        });
    }
    let out = c.cli_ok(&["pool", "communities", "default"]);
    assert!(out.contains("communities: no-export"), "{out}");
    let json = c.cli_ok(&["pool", "list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        listed[0]["communities"],
        serde_json::json!(["no-export"]),
        "{json}"
    );

    // Filters. A prefix list with `le` below its length, or `ge` above `le`, is refused in
    // one line naming the flag and the field.
    let tor_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["peer", "add", "bird", "--peer-ip", BIRD_IP, "--as", "65000"]
            .map(String::from)
            .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let bad = tor_args(&["--export-rule", "accept prefix 10.65.0.0/16 le 8"]);
    let line = refusal(&c, &bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        line.contains("--export-rule") && line.contains("le 8 is below the prefix length 16"),
        "{line}"
    );
    let bad = tor_args(&["--import-rule", "accept prefix 10.0.0.0/8 ge 28 le 24"]);
    let line = refusal(&c, &bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        line.contains("--import-rule") && line.contains("ge 28 is above le 24"),
        "{line}"
    );

    // BIRD: the blocks go out with the node's AS prepended twice more and nothing else;
    // of BIRD's two routes only the one the import rule accepts is taken.
    bird.announce(&Announce::new("192.0.2.0/24".parse().unwrap()))
        .unwrap();
    bird.announce(&Announce::new("198.51.100.0/24".parse().unwrap()))
        .unwrap();
    let good = tor_args(&[
        "--export-rule",
        "accept prefix 10.65.0.0/16 ge 26 le 26 prepend 2",
        "--export-default",
        "reject",
        "--import-rule",
        "accept prefix 192.0.2.0/24",
        "--import-default",
        "reject",
    ]);
    c.cli_ok(&good.iter().map(String::as_str).collect::<Vec<_>>());
    // FRR: an export filter that rejects everything.
    c.add_peer("frr", FRR_IP, FRR_AS, &["--export-default", "reject"]);
    wait_for("BIRD to hold the blocks with the prepends", || {
        blocks
            .iter()
            .all(|b| route_of(&bird, *b).is_some_and(|r| r.as_path == [64512, 64512, 64512]))
    });
    wait_for("FRR to lose every block", || {
        blocks.iter().all(|b| route_of(&frr, *b).is_none())
    });
    for node in &c.nodes {
        wait_for(&format!("{} to take only 192.0.2.0/24", node.name), || {
            node.has_route("bgp", &format!("192.0.2.0/24 via {BIRD_IP}"))
                && !node.has_route("bgp", "198.51.100.0/24")
        });
        let status = node.status();
        assert!(
            status.contains(&format!("Filters of {FRR_IP}: export rejects everything"))
                && status.contains(&format!(
                    "Filters of {BIRD_IP}: import 1 rule, else reject; export 1 rule, else reject"
                )),
            "{status}"
        );
        // The counters follow within a session poll or two.
        wait_for(
            &format!("{}'s status to count the filters' work", node.name),
            || {
                let json = node.status_json();
                let empty = Vec::new();
                let peers = json["peers"].as_array().unwrap_or(&empty);
                let row = |ip: &str| peers.iter().find(|p| p["address"] == ip).cloned();
                let (Some(frr_row), Some(bird_row)) = (row(FRR_IP), row(BIRD_IP)) else {
                    return false;
                };
                frr_row["exportFilter"] == "rejects everything"
                    && frr_row["prefixesSent"] == 0
                    && bird_row["prefixesFiltered"]["import filter"] == 1
                    && bird_row["prefixesReceived"] == 1
            },
        );
    }
}

#[test]
fn service_ranges_reach_the_tor_as_one_ecmp_route_over_every_node() {
    if !ready_with(["bird"]) {
        return;
    }
    let mut c = Cluster::new("fx-svc", 2);
    let bird_ns = NetNs::new("fx-svc-bird").unwrap();
    c.fabric
        .attach(&bird_ns, "eth0", Some(&format!("{BIRD_IP}/24")))
        .unwrap();
    let bird = Bird::start(&bird_ns, router_config(&c, BIRD_IP, BIRD_AS).kernel_ecmp()).unwrap();
    let line = refusal(
        &c,
        &["bgp", "config", "--service-cluster-ips", "10.96.0.1/12"],
    );
    assert!(
        line.contains("--service-cluster-ips") && line.contains("did you mean 10.96.0.0/12"),
        "{line}"
    );
    let shown = c.cli_ok(&[
        "bgp",
        "config",
        "--service-cluster-ips",
        "10.96.0.0/12",
        "--service-external-ips",
        "192.0.2.0/24",
        "--service-lb-ips",
        "198.51.100.0/24,203.0.113.0/24",
    ]);
    assert!(
        shown.contains("Service LB IPs:       198.51.100.0/24, 203.0.113.0/24"),
        "{shown}"
    );
    c.add_peer("bird", BIRD_IP, BIRD_AS, &[]);
    c.start_all();
    let ranges = [
        "10.96.0.0/12",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
    ];
    // The ToR's kernel holds each range once, with every node as a next hop.
    let next_hops = |range: &str| -> Vec<String> {
        let out = bird_ns
            .ip(&["-4", "route", "show", range])
            .unwrap_or_default();
        let mut hops: Vec<String> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect();
        hops.sort();
        hops
    };
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.ip.clone()).collect();
    wait_for("the ToR to hold an ECMP route over both nodes", || {
        ranges.iter().all(|r| next_hops(r) == nodes)
    });
    let text = bird_ns
        .ip(&["-4", "route", "show", "10.96.0.0/12"])
        .unwrap();
    assert_eq!(text.matches("nexthop via").count(), 2, "{text}");
    // The nodes do not tell each other: neither learns a range over the mesh, and the
    // ranges reach no node's kernel.
    for node in &c.nodes {
        let json = node.status_json();
        let peers = json["peers"].as_array().unwrap();
        let mesh = peers.iter().find(|p| p["kind"] == "node-mesh").unwrap();
        assert_eq!(mesh["prefixesReceived"], 0, "{json}");
        assert_eq!(mesh["prefixesSent"], 0, "{json}");
        for range in ranges {
            assert!(!node.has_route("bgp", range), "{}", node.routes("bgp"));
        }
    }
    // Taking a range away withdraws it from the ToR.
    c.cli_ok(&["bgp", "config", "--service-lb-ips", "none"]);
    wait_for("the ToR to drop the load-balancer ranges", || {
        next_hops("198.51.100.0/24").is_empty()
            && route_of(&bird, "203.0.113.0/24".parse().unwrap()).is_none()
    });
    assert_eq!(next_hops("10.96.0.0/12"), nodes);
}

#[test]
fn a_route_reflector_applies_an_ibgp_peers_export_filter_to_what_it_reflects() {
    if !ready_with(["bird"]) {
        return;
    }
    let mut c = Cluster::new("fx-refl", 2);
    let bird_ns = c.attach_router("fx-refl-bird", BIRD_IP);
    // BIRD is inside the cluster's AS and peers with the route reflector (node 0) only.
    let rr: IpAddr = c.node(0).ip.parse().unwrap();
    let me: IpAddr = BIRD_IP.parse().unwrap();
    let config = Config::new(BIRD_IP.parse::<Ipv4Addr>().unwrap(), 64512)
        .peer(Peer::new(rr, 64512, me).hold_time(9));
    let bird = Bird::start(&bird_ns, config).unwrap();
    c.cli_ok(&["bgp", "config", "--mesh", "off"]);
    let rr_name = c.node(0).name.clone();
    let peer_bird = |c: &Cluster, extra: &[&str]| {
        c.add_peer(
            "bird",
            BIRD_IP,
            64512,
            &[&["--node", &rr_name], extra].concat(),
        );
    };
    peer_bird(&c, &[]);
    c.start_agent_with(0, &["--route-reflector-cluster-id", "1.0.0.1"]);
    c.start_agent(1);
    let own = c.claim(&c.node(0).name, "k8s.pod0");
    let client = c.claim(&c.node(1).name, "k8s.pod1");
    let client_id: Ipv4Addr = c.node(1).ip.parse().unwrap();

    // Without a filter BIRD hears both: the reflector's own block and its client's,
    // reflected (ORIGINATOR_ID the client, CLUSTER_LIST the reflector's cluster).
    wait_for("BIRD to hold the client's block, reflected", || {
        route_of(&bird, client).is_some_and(|r| {
            r.originator_id == Some(client_id) && r.cluster_list == [Ipv4Addr::new(1, 0, 0, 1)]
        })
    });
    assert!(route_of(&bird, own).is_some());

    // A filter rejecting the client's block keeps the reflected route from BIRD, and only it.
    peer_bird(&c, &["--export-rule", &format!("reject prefix {client}")]);
    wait_for("BIRD to lose the reflected block", || {
        route_of(&bird, client).is_none() && route_of(&bird, own).is_some()
    });

    // A prepend toward a peer inside the AS leaves the path alone (RFC 4271 §5.1.2; with
    // the node's AS on it BIRD would drop the route as a loop): BIRD holds the reflected
    // block as the client sent it, and nothing the rule does not accept.
    peer_bird(
        &c,
        &[
            "--export-rule",
            &format!("accept prefix {client} prepend 2"),
            "--export-default",
            "reject",
        ],
    );
    wait_for(
        "BIRD to hold the reflected block, its path unchanged",
        || {
            route_of(&bird, client).is_some_and(|r| r.as_path.is_empty())
                && route_of(&bird, own).is_none()
        },
    );
}
