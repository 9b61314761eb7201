//! Route reflection (RFC 4456) with real daemons, all in AS 64512 on one bridge:
//!
//! ```text
//!   bird-c ─┐                         ┌─ (client) wren ── reflects for bird-c, frr-c
//!   frr-c ──┤ clients of wren         │
//!           └── wren ── bird-rr ──────┤  bird-rr reflects for wren and gobgp-c
//!                                     └─ (client) gobgp-c
//! ```
//!
//! wren reflects between its two clients (BIRD and FRR) and is itself a client of a BIRD
//! reflector, behind which GoBGP sits. Every check reads ORIGINATOR_ID and CLUSTER_LIST as the
//! receiving daemon (or wren) stores them.

mod interop_common;

use std::net::Ipv4Addr;

use interop_common::{PATIENCE, Wren, ip, net, step};
use wren_bgp::speaker::{PeerConfig, SpeakerConfig};
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::frr::{self, Frr};
use wren_tests::daemons::gobgp::Gobgp;
use wren_tests::daemons::{Announce, BgpDaemon, Config, Peer, Route, wait_route};
use wren_tests::netns::{Bridge, NetNs};
use wren_tests::prereq;

const AS: u32 = 64512;
const HOLD: u16 = 9;

fn id(text: &str) -> Ipv4Addr {
    text.parse().expect("router id")
}

/// An iBGP neighbour on the 10.78.0.0/24 segment, seen from the speaker at `local`.
fn peer(remote: u8, local: u8) -> Peer {
    Peer::new(
        ip(&format!("10.78.0.{remote}")),
        AS,
        ip(&format!("10.78.0.{local}")),
    )
    .hold_time(HOLD)
}

fn wren_peer(remote: u8, rr_client: bool) -> PeerConfig {
    let mut p = PeerConfig::new(ip(&format!("10.78.0.{remote}")), AS);
    p.hold_time = HOLD;
    p.connect_retry = std::time::Duration::from_secs(1);
    p.idle_hold = std::time::Duration::from_millis(500);
    p.rr_client = rr_client;
    p.families = vec![wren_bgp::wire::Afi::Ipv4Unicast];
    p
}

fn reflected(d: &dyn BgpDaemon, a: &Announce, originator: &str, clusters: &[&str]) -> Route {
    let originator = Some(id(originator));
    let clusters: Vec<Ipv4Addr> = clusters.iter().map(|c| id(c)).collect();
    wait_route(d, a.prefix, PATIENCE, |r| {
        r.originator_id == originator && r.cluster_list == clusters
    })
    .unwrap_or_else(|e| panic!("{e}\n--- {} log ---\n{}", d.kind(), d.log_tail()))
}

#[test]
fn wren_reflects_between_clients_and_is_a_client_of_a_bird_reflector() {
    let needs = ["ip", "bird", "gobgpd", "gobgp"];
    if !prereq::require_root()
        || !needs
            .iter()
            .chain(&frr::BINARIES)
            .all(|c| prereq::require_command(c))
    {
        return;
    }
    let bridge = Bridge::new("rr").expect("bridge");
    let names = ["wren", "bird-c", "frr-c", "bird-rr", "gobgp-c"];
    let ns: Vec<NetNs> = names
        .iter()
        .map(|n| NetNs::new(n).expect("namespace"))
        .collect();
    for (i, n) in ns.iter().enumerate() {
        let address = format!("10.78.0.{}/24", i + 1);
        bridge.attach(n, "eth0", Some(&address)).expect("attach");
    }

    let bird_c =
        Bird::start(&ns[1], Config::new(id("10.78.0.2"), AS).peer(peer(1, 2))).expect("bird-c");
    let frr_c =
        Frr::start(&ns[2], Config::new(id("10.78.0.3"), AS).peer(peer(1, 3))).expect("frr-c");
    let reflector = Config::new(id("10.78.0.4"), AS)
        .cluster_id(id("10.78.255.4"))
        .peer(peer(1, 4).rr_client())
        .peer(peer(5, 4).rr_client());
    // Held to the end of the test: the reflector of wren and gobgp-c.
    let _bird_rr = Bird::start(&ns[3], reflector).expect("bird-rr");
    let gobgp_c =
        Gobgp::start(&ns[4], Config::new(id("10.78.0.5"), AS).peer(peer(4, 5))).expect("gobgp-c");

    let mut config = SpeakerConfig::new(id("10.78.0.1"), AS);
    config.cluster_id = Some(id("10.78.255.1"));
    let wren = Wren::start(&ns[0], config);
    for (remote, client) in [(2, true), (3, true), (4, false)] {
        wren.call(wren.handle().add_peer(wren_peer(remote, client)))
            .expect("add peer");
    }
    let (mut bird_c, mut frr_c, mut gobgp_c) = (bird_c, frr_c, gobgp_c);

    step("rr", "sessions come up");
    for remote in [2, 3, 4] {
        wren.wait_established(ip(&format!("10.78.0.{remote}")));
    }

    step(
        "rr",
        "wren reflects a BIRD client's route to an FRR client, and back",
    );
    let from_bird = Announce::new(net("192.0.2.0/24")).community((64512, 2));
    bird_c.announce(&from_bird).expect("announce");
    let r = reflected(&frr_c, &from_bird, "10.78.0.2", &["10.78.255.1"]);
    assert_eq!(
        r.next_hop,
        Some(ip("10.78.0.2")),
        "a reflector leaves the next hop alone"
    );
    assert_eq!(r.communities, from_bird.communities);
    let from_frr = Announce::new(net("198.51.100.0/24"));
    frr_c.announce(&from_frr).expect("announce");
    let r = reflected(&bird_c, &from_frr, "10.78.0.3", &["10.78.255.1"]);
    assert_eq!(r.next_hop, Some(ip("10.78.0.3")));

    step(
        "rr",
        "wren as a client of BIRD: its routes reach the reflector's other client",
    );
    let from_wren = Announce::new(net("203.0.113.0/24"));
    wren.announce(&from_wren);
    let r = reflected(&gobgp_c, &from_wren, "10.78.0.1", &["10.78.255.4"]);
    assert_eq!(r.next_hop, Some(ip("10.78.0.1")));

    step(
        "rr",
        "wren as a client of BIRD: the other client's routes reach wren",
    );
    let from_gobgp = Announce::new(net("198.18.0.0/24"));
    gobgp_c.announce(&from_gobgp).expect("announce");
    let r = wren.wait_route(from_gobgp.prefix, |r| r.originator_id.is_some());
    assert_eq!(r.originator_id, Some(id("10.78.0.5")));
    assert_eq!(r.cluster_list, vec![id("10.78.255.4")]);
    assert_eq!(r.next_hop, Some(ip("10.78.0.5")));

    step(
        "rr",
        "two reflections: each reflector prepends its cluster id",
    );
    // bird-c → wren → bird-rr → gobgp-c, and gobgp-c → bird-rr → wren → frr-c.
    reflected(
        &gobgp_c,
        &from_bird,
        "10.78.0.2",
        &["10.78.255.4", "10.78.255.1"],
    );
    reflected(
        &frr_c,
        &from_gobgp,
        "10.78.0.5",
        &["10.78.255.1", "10.78.255.4"],
    );

    step("rr", "a withdraw travels the same way");
    bird_c.withdraw(from_bird.prefix).expect("withdraw");
    for d in [&frr_c as &dyn BgpDaemon, &gobgp_c] {
        wren_tests::daemons::wait_no_route(d, from_bird.prefix, PATIENCE)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
