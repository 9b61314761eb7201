//! BFD in the agent, against a BIRD 2 ToR running `bfd on`: two `wren agent`s peer with the
//! ToR through `wren peer add --bfd`, and a link that stops carrying packets (every packet
//! on the ToR's port dropped, carrier up: what `tc netem loss 100%` does) takes the sessions
//! and their routes down on both sides within about the detection time, where the 90 s hold
//! timer alone would keep them. The link back brings sessions and routes back. The agents'
//! `wren status` and metrics show the BFD state, the diagnostic and the counters. The same
//! between two agents over the node mesh (`wren bgp config --mesh-bfd on`): a node that falls
//! silent loses its routes on the other within the detection time.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::{Announce, BfdPeer, BgpDaemon, Config, Family, Peer};

mod agent_rig;

use agent_rig::*;

const TOR_IP: &str = "10.77.0.253";
const TOR_AS: u32 = 65000;
const TOR_PREFIX: &str = "192.0.2.0/24";
/// The status document's entry for the ToR's session on `node`.
fn tor_session(node: &Node) -> serde_json::Value {
    let status = node.status_json();
    status["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["address"] == TOR_IP).cloned())
        .unwrap_or(serde_json::Value::Null)
}

fn metrics(node: &Node) -> String {
    http_get(node, "/metrics").1
}

#[test]
fn bfd_takes_a_tors_sessions_and_routes_down_within_the_detection_time_and_back() {
    if !ready_with(["bird", "nft"]) {
        return;
    }
    let mut c = Cluster::new("ag-bfd", 2);
    let tor = c.attach_router("ag-bfd-tor", TOR_IP);
    let tor_ip: IpAddr = TOR_IP.parse().unwrap();
    let mut config = Config::new(TOR_IP.parse::<Ipv4Addr>().unwrap(), TOR_AS);
    for node in &c.nodes {
        let ip: IpAddr = node.ip.parse().unwrap();
        config = config
            .peer(Peer::new(ip, 64512, tor_ip).hold_time(90).bfd())
            .bfd(BfdPeer::new(ip, tor_ip, "eth0").interval(Duration::from_millis(100)));
    }
    let mut bird = Bird::start(&tor, config).unwrap();
    bird.announce(&Announce::new(TOR_PREFIX.parse().unwrap()))
        .unwrap();
    let added = c.add_peer(
        "tor",
        TOR_IP,
        TOR_AS,
        &[
            "--bfd",
            "--bfd-transmit-interval",
            "100ms",
            "--bfd-receive-interval",
            "100ms",
            "--bfd-multiplier",
            "3",
        ],
    );
    assert!(added.contains("peer tor added"), "{added}");
    c.start_all();
    let blocks: Vec<IpNet> = (0..2)
        .map(|i| c.claim(&c.node(i).name, &format!("k8s.pod{i}")))
        .collect();
    let tor_has_blocks = |bird: &Bird| {
        let routes = bird.routes(Family::Ipv4).unwrap_or_default();
        blocks
            .iter()
            .all(|b| routes.iter().any(|r| r.prefix == Some(*b)))
    };
    let nodes_have_route = |c: &Cluster| {
        c.nodes
            .iter()
            .all(|n| n.has_route("bgp", &format!("{TOR_PREFIX} via {TOR_IP}")))
    };
    let bfd_up = |c: &Cluster| {
        c.nodes
            .iter()
            .all(|n| tor_session(n)["bfd"]["state"] == "Up")
    };
    wait_for("BFD Up and the routes in", || {
        bfd_up(&c) && nodes_have_route(&c) && tor_has_blocks(&bird)
    });
    let session = tor_session(c.node(0));
    assert_eq!(session["state"], "Established", "{session}");
    assert_eq!(session["bfd"]["configured"]["transmitIntervalMs"], 100);
    assert_eq!(session["bfd"]["detectionTimeMs"], 300, "{session}");
    let text = c.node(0).status();
    assert!(
        text.lines()
            .any(|l| l.starts_with(TOR_IP) && l.contains("Up") && l.contains("100/100 ms x3")),
        "{text}"
    );

    cut_port(&tor, true);
    let at = Instant::now();
    // Every 10 ms: the figure is the time the route was seen gone.
    wait_every(
        "the nodes to drop the ToR's route",
        Duration::from_millis(10),
        || c.nodes.iter().all(|n| !n.has_route("bgp", TOR_PREFIX)),
    );
    let nodes_took = at.elapsed();
    wait_every(
        "the ToR to drop the blocks",
        Duration::from_millis(10),
        || {
            let routes = bird.routes(Family::Ipv4).unwrap_or_default();
            blocks
                .iter()
                .all(|b| routes.iter().all(|r| r.prefix != Some(*b)))
        },
    );
    let tor_took = at.elapsed();
    eprintln!("route gone from the nodes {nodes_took:?}, blocks from the ToR {tor_took:?}");
    // 300 ms of detection, a step through the speaker and a kernel write; the hold timer
    // (90 s) is far beyond.
    assert!(nodes_took < Duration::from_secs(2), "{nodes_took:?}");
    assert!(tor_took < Duration::from_secs(2), "{tor_took:?}");
    for node in &c.nodes {
        // The session's state is read from the speaker on BFD's word, a moment after the
        // routes went.
        wait_for("the session to leave Established", || {
            tor_session(node)["state"] != "Established"
        });
        let session = tor_session(node);
        assert_eq!(session["lastError"], "BFD session down", "{session}");
        let bfd = &session["bfd"];
        assert_eq!(bfd["state"], "Down", "{session}");
        assert_eq!(
            bfd["diagnostic"], "Control Detection Time Expired",
            "{session}"
        );
        assert_eq!(bfd["downs"], 1, "{session}");
    }
    wait_for("the metrics to show BFD down", || {
        metrics(c.node(0)).contains(&format!(
            "wren_bfd_session_up{{peer=\"{TOR_IP}\",type=\"global\"}} 0"
        ))
    });
    // The other nodes' sessions carry on: each still routes to the other's block.
    for (i, node) in c.nodes.iter().enumerate() {
        let other = blocks[1 - i].to_string();
        assert!(node.has_route("bgp", &other), "{}", node.routes("bgp"));
    }

    cut_port(&tor, false);
    wait_for("BFD, the sessions and the routes back", || {
        bfd_up(&c) && nodes_have_route(&c) && tor_has_blocks(&bird)
    });
    wait_for("the session Established again", || {
        tor_session(c.node(0))["state"] == "Established"
    });
    let session = tor_session(c.node(0));
    assert_eq!(session["bfd"]["ups"], 2, "{session}");
    let m = metrics(c.node(0));
    assert!(
        m.contains(&format!(
            "wren_bfd_session_downs_total{{peer=\"{TOR_IP}\",type=\"global\"}} 1"
        )),
        "{m}"
    );
}

#[test]
fn mesh_bfd_takes_a_silent_nodes_routes_down_and_brings_them_back() {
    if !ready_with(["nft"]) {
        return;
    }
    let mut c = Cluster::new("ag-mbfd", 2);
    c.cli_ok(&[
        "bgp",
        "config",
        "--mesh-bfd",
        "on",
        "--bfd-transmit-interval",
        "100ms",
        "--bfd-receive-interval",
        "100ms",
    ]);
    c.start_all();
    c.wait_mesh();
    let blocks: Vec<IpNet> = (0..2)
        .map(|i| c.claim(&c.node(i).name, &format!("k8s.pod{i}")))
        .collect();
    let (one, two) = (c.node(0), c.node(1));
    let mesh_bfd = |node: &Node, other: &Node| {
        node.status_json()["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|p| p["address"] == other.ip.as_str()))
            .map(|p| p["bfd"].clone())
            .unwrap_or(serde_json::Value::Null)
    };
    let routed = || one.has_route("bgp", &blocks[1].to_string());
    wait_for("mesh BFD Up and the blocks routed", || {
        mesh_bfd(one, two)["state"] == "Up" && mesh_bfd(two, one)["state"] == "Up" && routed()
    });
    assert_eq!(mesh_bfd(one, two)["detectionTimeMs"], 300);

    // node2 falls silent (its port drops everything, carrier up).
    cut_port(&two.ns, true);
    let at = Instant::now();
    wait_every(
        "node1 to drop node2's block",
        Duration::from_millis(10),
        || !routed(),
    );
    let took = at.elapsed();
    eprintln!("node2's block gone from node1's kernel {took:?} after the cut");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let bfd = mesh_bfd(one, two);
    assert_eq!(bfd["diagnostic"], "Control Detection Time Expired", "{bfd}");

    cut_port(&two.ns, false);
    wait_for("mesh BFD and node2's block back", || {
        mesh_bfd(one, two)["state"] == "Up" && routed()
    });
}
