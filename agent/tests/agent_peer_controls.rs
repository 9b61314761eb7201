//! Per-peer session controls of `wren peer add` against BIRD 2 ToRs, with a real `wren
//! agent`: the hold time the node proposes is the one the session runs with, and GTSM
//! (`--ttl-security 1`) peers with a neighbour that sends with TTL 255 and refuses one whose
//! packets arrive with less (as a neighbour beyond one hop's would), while the node's other
//! session carries on. A local AS per peer (2- and 4-octet) is the AS a BIRD and an FRR
//! ToR hear, with routes still taken from them, over sessions from a second address of the
//! node's (`--source-address`); a keepalive time of its own is the rate FRR counts; and GTSM
//! holds against FRR as against BIRD, also for connections the router opens.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::frr::Frr;
use wren_tests::daemons::{Announce, BgpDaemon, Config, Family, Peer, SessionState};

mod agent_rig;

use agent_rig::*;

const NEAR_IP: &str = "10.77.0.253";
const PLAIN_IP: &str = "10.77.0.252";
const TOR_AS: u32 = 65000;

/// The hold time of BIRD's session with `peer` once Established (`Hold timer: 2.3/5`).
fn bird_hold_time(bird: &Bird, peer: &str) -> Option<u16> {
    let name = Bird::protocol_name(peer.parse().unwrap());
    let text = bird.command(&format!("show protocols all {name}")).ok()?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Hold timer:"))?;
    line.rsplit('/').next()?.trim().parse().ok()
}

fn state(node: &Node, peer: &str) -> String {
    node.peers()
        .into_iter()
        .find(|(address, _, _)| address == peer)
        .map(|(_, _, state)| state)
        .unwrap_or_default()
}

#[test]
fn hold_time_is_negotiated_and_gtsm_refuses_what_did_not_arrive_with_ttl_255() {
    if !ready_with(["bird"]) {
        return;
    }
    let mut c = Cluster::new("ag-ctl", 1);
    let node_ip: IpAddr = c.node(0).ip.parse().unwrap();
    let start = |ns_name: &str, ip: &str, gtsm: bool| {
        let ns = c.attach_router(ns_name, ip);
        let mut peer = Peer::new(node_ip, 64512, ip.parse().unwrap()).hold_time(90);
        if gtsm {
            peer = peer.ttl_security();
        }
        let config = Config::new(ip.parse::<Ipv4Addr>().unwrap(), TOR_AS).peer(peer);
        (ns, config)
    };
    let (near_ns, near_config) = start("ag-ctl-near", NEAR_IP, true);
    let (plain_ns, plain_config) = start("ag-ctl-plain", PLAIN_IP, false);
    let near = Bird::start(&near_ns, near_config).unwrap();
    let plain = Bird::start(&plain_ns, plain_config).unwrap();
    c.add_peer(
        "near",
        NEAR_IP,
        TOR_AS,
        &["--hold-time", "6", "--ttl-security", "1"],
    );
    c.add_peer("plain", PLAIN_IP, TOR_AS, &["--ttl-security", "1"]);
    c.start_all();
    let node = c.node(0);
    wait_for("the GTSM session with the near ToR", || {
        state(node, NEAR_IP) == "Established"
    });
    // BIRD proposed 90 s, the node 6 s: the session runs with the smaller.
    wait_for("BIRD's hold timer", || {
        bird_hold_time(&near, &node.ip) == Some(6)
    });
    // The plain ToR sends with the default TTL (64): the node's GTSM drops its packets, so
    // no session comes up, however long BIRD and the node keep trying.
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(8) {
        assert_ne!(state(node, PLAIN_IP), "Established");
        assert_ne!(
            plain.neighbor(node_ip).map(|n| n.state).ok(),
            Some(SessionState::Established)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        state(node, NEAR_IP),
        "Established",
        "the other session carries on"
    );
}

const FRR_IP: &str = "10.77.0.251";
/// The node's second address, which its sessions with BIRD and FRR start from.
const SOURCE_IP: &str = "10.77.0.200";
const FRR_PLAIN_IP: &str = "10.77.0.250";

/// The AS path of the route a router holds for `prefix`, if it holds one.
fn as_path(daemon: &dyn BgpDaemon, prefix: IpNet) -> Option<Vec<u32>> {
    let routes = daemon.routes(Family::Ipv4).unwrap_or_default();
    let route = routes.into_iter().find(|r| r.prefix == Some(prefix))?;
    Some(route.as_path)
}

/// FRR's view of its session with `peer` (`show bgp neighbors PEER json`).
fn frr_neighbor(frr: &Frr, peer: &str) -> serde_json::Value {
    let text = frr
        .vtysh(&[&format!("show bgp neighbors {peer} json")])
        .unwrap_or_default();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    json[peer].take()
}

/// KEEPALIVEs FRR has received from `peer` on its session.
fn frr_keepalives_received(frr: &Frr, peer: &str) -> u64 {
    frr_neighbor(frr, peer)["messageStats"]["keepalivesRecv"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn local_as_keepalive_time_and_gtsm_against_bird_and_frr() {
    if !ready_with(
        ["bird"]
            .into_iter()
            .chain(wren_tests::daemons::frr::BINARIES),
    ) {
        return;
    }
    let mut c = Cluster::new("ag-las", 1);
    let node_ip: IpAddr = c.node(0).ip.parse().unwrap();
    // BIRD and FRR know the node by a second address of its, the sessions' source address.
    let source: IpAddr = SOURCE_IP.parse().unwrap();
    c.node(0)
        .ns
        .ip(&["addr", "add", &format!("{SOURCE_IP}/24"), "dev", "eth0"])
        .unwrap();
    // Each router expects the node in the AS the node speaks on that session, and waits for
    // the node to connect (so the source address is the node's choice, not the listener's).
    let router = |ip: &str, asn: u32, node: IpAddr, node_as: u32| {
        let peer = Peer::new(node, node_as, ip.parse().unwrap())
            .hold_time(9)
            .passive();
        Config::new(ip.parse::<Ipv4Addr>().unwrap(), asn).peer(peer)
    };
    let bird_ns = c.attach_router("ag-las-bird", NEAR_IP);
    let frr_ns = c.attach_router("ag-las-frr", FRR_IP);
    let plain_ns = c.attach_router("ag-las-plain", FRR_PLAIN_IP);
    let mut bird = Bird::start(&bird_ns, router(NEAR_IP, TOR_AS, source, 65001)).unwrap();
    let mut frr_config = router(FRR_IP, 65002, source, 4_200_000_001);
    frr_config.peers[0].ttl_security = true;
    let frr = Frr::start(&frr_ns, frr_config).unwrap();
    // FRR sends eBGP with TTL 1 unless told otherwise: what a router beyond the link sends.
    // It also connects itself: the node must refuse what arrives from it, too.
    let mut plain_config = router(FRR_PLAIN_IP, 65003, node_ip, 64512);
    plain_config.peers[0].passive = false;
    let plain = Frr::start(&plain_ns, plain_config).unwrap();
    c.add_peer(
        "bird",
        NEAR_IP,
        TOR_AS,
        &["--local-as", "65001", "--source-address", SOURCE_IP],
    );
    c.add_peer(
        "frr",
        FRR_IP,
        65002,
        &[
            "--local-as",
            "4200000001",
            "--hold-time",
            "9",
            "--keepalive-time",
            "1",
            "--ttl-security",
            "1",
            "--source-address",
            SOURCE_IP,
        ],
    );
    c.add_peer("plain", FRR_PLAIN_IP, 65003, &["--ttl-security", "1"]);
    c.start_all();
    let block = c.claim(&c.node(0).name, "k8s.pod0");
    let node = c.node(0);

    // The AS path each router hears starts (and ends) with the AS of its session.
    wait_for("BIRD to hear the block from AS 65001", || {
        as_path(&bird, block) == Some(vec![65001])
    });
    wait_for("FRR to hear the block from AS 4200000001", || {
        as_path(&frr, block) == Some(vec![4_200_000_001])
    });
    // Routes from a peer of a local AS are taken as from any eBGP peer.
    let learned: IpNet = "192.0.2.0/24".parse().unwrap();
    bird.announce(&Announce::new(learned)).unwrap();
    wait_for("the node to install BIRD's route", || {
        node.has_route("bgp", "192.0.2.0/24 via 10.77.0.253")
    });
    let status = node.status();
    assert!(status.contains(" 65000 (local 65001) "), "{status}");
    assert!(
        status.contains(&format!("Timers of {FRR_IP}: hold 9 s, keepalive 1 s")),
        "{status}"
    );

    // The node's own keepalive time (1 s) rather than a third of the hold time (3 s): FRR
    // counts at least 5 in 6 s (a third of the hold time would make it 2). Meanwhile the
    // router sending with TTL 1 never gets a session past the node's GTSM.
    let before = frr_keepalives_received(&frr, SOURCE_IP);
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(6) {
        assert_ne!(state(node, FRR_PLAIN_IP), "Established");
        assert_ne!(
            plain.neighbor(node_ip).map(|n| n.state).ok(),
            Some(SessionState::Established)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let keepalives = frr_keepalives_received(&frr, SOURCE_IP) - before;
    // Not even for a moment: the node took no OPEN from the router's connections, whose
    // handshake and first segments arrived with TTL 1 before the accepted socket's minimum
    // TTL could apply (FRR counts every session it ever established).
    assert_eq!(
        frr_neighbor(&plain, &node.ip)["connectionsEstablished"].as_u64(),
        Some(0),
        "the router beyond the link never had a session"
    );
    assert!(
        (5..=7).contains(&keepalives),
        "{keepalives} KEEPALIVEs in 6 s"
    );
    assert_eq!(
        state(node, FRR_IP),
        "Established",
        "the GTSM session with FRR holds"
    );
}
