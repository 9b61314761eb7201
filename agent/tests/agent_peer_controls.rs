//! Per-peer session controls of `wren peer add` against BIRD 2 ToRs, with a real `wren
//! agent`: the hold time the node proposes is the one the session runs with, and GTSM
//! (`--ttl-security 1`) peers with a neighbour that sends with TTL 255 and refuses one whose
//! packets arrive with less (as a neighbour beyond one hop's would), while the node's other
//! session carries on.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::{BgpDaemon, Config, Peer, SessionState};
use wren_tests::prereq;

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
    if !ready() || !prereq::require_command("bird") {
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
