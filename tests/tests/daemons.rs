//! The daemon runners against each other: two daemons in two namespaces joined by a veth
//! pair, one IPv4 and one IPv6 session, a prefix each way with its attributes, then a
//! withdraw. This proves the harness (configuration, start-up, queries, announcements) before
//! wren's own speaker is put between them.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::frr::{self, Frr};
use wren_tests::daemons::gobgp::Gobgp;
use wren_tests::daemons::{
    Announce, BgpDaemon, Config, Family, Origin, Peer, wait_established, wait_no_route, wait_route,
};
use wren_tests::netns::NetNs;
use wren_tests::prereq;

const WAIT: Duration = Duration::from_secs(30);

fn addr(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn net(text: &str) -> IpNet {
    text.parse().expect("test prefix")
}

type Start = for<'a> fn(&'a NetNs, Config) -> Box<dyn BgpDaemon + 'a>;

fn bird(ns: &NetNs, config: Config) -> Box<dyn BgpDaemon + '_> {
    Box::new(Bird::start(ns, config).expect("start BIRD"))
}

fn frr(ns: &NetNs, config: Config) -> Box<dyn BgpDaemon + '_> {
    Box::new(Frr::start(ns, config).expect("start FRR"))
}

fn gobgp(ns: &NetNs, config: Config) -> Box<dyn BgpDaemon + '_> {
    Box::new(Gobgp::start(ns, config).expect("start GoBGP"))
}

fn ready(commands: &[&str]) -> bool {
    prereq::require_root() && commands.iter().all(|c| prereq::require_command(c))
}

fn config(
    me: (&str, u32),
    local: (IpAddr, IpAddr),
    remote: (IpAddr, IpAddr),
    remote_as: u32,
) -> Config {
    Config::new(me.0.parse().expect("router id"), me.1)
        .peer(Peer::new(remote.0, remote_as, local.0).hold_time(6))
        .peer(Peer::new(remote.1, remote_as, local.1).hold_time(6))
}

/// Runs the exchange between `left` (AS 65001) and `right` (AS 65002).
fn exchange(left: Start, right: Start) {
    let (l4, l6, r4, r6) = (
        addr("10.31.0.1"),
        addr("fd00:31::1"),
        addr("10.31.0.2"),
        addr("fd00:31::2"),
    );
    let a = NetNs::new("left").expect("namespace");
    let b = NetNs::new("right").expect("namespace");
    a.veth(
        "eth0",
        Some("10.31.0.1/24"),
        &b,
        "eth0",
        Some("10.31.0.2/24"),
    )
    .expect("veth");
    a.ip(&["addr", "add", "fd00:31::1/64", "dev", "eth0", "nodad"])
        .expect("v6 address");
    b.ip(&["addr", "add", "fd00:31::2/64", "dev", "eth0", "nodad"])
        .expect("v6 address");

    let mut left = left(&a, config(("10.31.0.1", 65001), (l4, l6), (r4, r6), 65002));
    let mut right = right(&b, config(("10.31.0.2", 65002), (r4, r6), (l4, l6), 65001));
    let ctx = |d: &dyn BgpDaemon| format!("\n--- {} log ---\n{}", d.kind(), d.log_tail());

    for (d, peers) in [(&*left, [r4, r6]), (&*right, [l4, l6])] {
        for p in peers {
            if let Err(e) = wait_established(d, p, WAIT) {
                panic!("{e}{}{}", ctx(&*left), ctx(&*right));
            }
        }
    }

    let v4 = Announce::new(net("192.0.2.0/24"))
        .med(20)
        .community((65001, 7))
        .origin(Origin::Egp);
    let v6 = Announce::new(net("2001:db8:31::/48"))
        .med(30)
        .community((65001, 8));
    left.announce(&v4).expect("announce IPv4");
    left.announce(&v6).expect("announce IPv6");
    let back = Announce::new(net("198.51.100.0/24")).community((65002, 1));
    right.announce(&back).expect("announce IPv4 back");

    let got = wait_route(&*right, v4.prefix, WAIT, |r| r.as_path == [65001])
        .unwrap_or_else(|e| panic!("{e}{}{}", ctx(&*left), ctx(&*right)));
    assert_eq!(
        got.next_hop,
        Some(l4),
        "eBGP next hop is the sender's address"
    );
    assert_eq!(got.origin, Some(Origin::Egp));
    assert_eq!(got.med, Some(20));
    assert_eq!(got.communities, vec![(65001, 7)]);

    let got6 = wait_route(&*right, v6.prefix, WAIT, |r| r.as_path == [65001])
        .unwrap_or_else(|e| panic!("{e}{}{}", ctx(&*left), ctx(&*right)));
    assert_eq!(
        got6.next_hop,
        Some(l6),
        "IPv6 next hop is the sender's global address"
    );
    assert_eq!(got6.med, Some(30));
    assert_eq!(got6.communities, vec![(65001, 8)]);

    let got_back = wait_route(&*left, back.prefix, WAIT, |r| r.as_path == [65002])
        .unwrap_or_else(|e| panic!("{e}{}{}", ctx(&*left), ctx(&*right)));
    assert_eq!(got_back.next_hop, Some(r4));
    assert_eq!(got_back.communities, vec![(65002, 1)]);

    let n = right.neighbor(l4).expect("neighbor");
    assert!(n.prefixes_received >= 1, "{n:?}");

    left.withdraw(v4.prefix).expect("withdraw");
    wait_no_route(&*right, v4.prefix, WAIT)
        .unwrap_or_else(|e| panic!("{e}{}{}", ctx(&*left), ctx(&*right)));
    assert!(
        right
            .routes(Family::Ipv6)
            .expect("routes")
            .iter()
            .any(|r| r.prefix == Some(v6.prefix)),
        "withdrawing the IPv4 prefix must leave the IPv6 one"
    );
    drop((left, right));
}

#[test]
fn bird_and_gobgp_exchange_prefixes_both_ways() {
    if !ready(&["ip", "bird", "gobgpd", "gobgp"]) {
        return;
    }
    exchange(bird, gobgp);
}

#[test]
fn frr_and_gobgp_exchange_prefixes_both_ways() {
    if !ready(&["ip", "gobgpd", "gobgp"])
        || !frr::BINARIES.iter().all(|b| prereq::require_command(b))
    {
        return;
    }
    exchange(frr, gobgp);
}

#[test]
fn bird_and_frr_exchange_prefixes_both_ways() {
    if !ready(&["ip", "bird"]) || !frr::BINARIES.iter().all(|b| prereq::require_command(b)) {
        return;
    }
    exchange(frr, bird);
}
