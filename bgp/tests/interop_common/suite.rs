//! The scenario list every daemon kind goes through, on one topology per test file:
//!
//! ```text
//!   wren (AS 64512)        ext (AS 65001, eBGP)     int (AS 64512, iBGP)
//!   10.77.0.1              10.77.0.2                10.77.0.3
//!   fd00:77::1             fd00:77::2               fd00:77::3
//!        └─────────────── one bridge ───────────────────┘
//! ```
//!
//! wren has an IPv4 and an IPv6 session with each daemon. The IPv4 sessions negotiate
//! graceful restart (and the eBGP one is signed with TCP MD5); the IPv6 sessions do not, so
//! a silent peer's IPv6 routes must go when the hold timer (6 s) expires.

use std::net::IpAddr;
use std::time::Duration;

use wren_bgp::speaker::{GracefulRestartConfig, PeerConfig, PrefixLimit, SpeakerConfig};
use wren_bgp::wire::Afi;
use wren_tests::daemons::{
    self, Announce, BgpDaemon, Config, Origin, Peer, Restart, Route, SessionState, Signal,
    route_for, wait_established, wait_no_route, wait_route,
};
use wren_tests::netns::{Bridge, NetNs};

use super::{PATIENCE, Wren, ip, net, step};

/// wren's AS, also the iBGP daemon's.
pub const WREN_AS: u32 = 64512;
/// The eBGP daemon's AS.
pub const EXT_AS: u32 = 65001;
/// Hold time of every session: short, so the hold-timer scenarios stay quick.
pub const HOLD: u16 = 6;
/// TCP MD5 key of the eBGP IPv4 session.
pub const PASSWORD: &str = "wren-interop";

/// Starts a daemon of the kind under test.
pub type Start = for<'a> fn(&'a NetNs, Config) -> Box<dyn BgpDaemon + 'a>;

/// The namespaces: a bridge and three speakers.
pub struct Lan {
    /// The segment joining them.
    pub bridge: Bridge,
    /// wren's namespace.
    pub wren: NetNs,
    /// The eBGP daemon's.
    pub ext: NetNs,
    /// The iBGP daemon's.
    pub int: NetNs,
}

impl Lan {
    /// Builds the segment; every address is added without duplicate detection so sessions
    /// can start at once.
    pub fn new() -> Self {
        let lan = Self {
            bridge: Bridge::new("lan").expect("bridge"),
            wren: NetNs::new("wren").expect("namespace"),
            ext: NetNs::new("ext").expect("namespace"),
            int: NetNs::new("int").expect("namespace"),
        };
        for (ns, n) in [(&lan.wren, 1), (&lan.ext, 2), (&lan.int, 3)] {
            lan.bridge.attach(ns, "eth0", None).expect("attach");
            for a in [format!("10.77.0.{n}/24"), format!("fd00:77::{n}/64")] {
                ns.ip(&["addr", "add", &a, "dev", "eth0", "nodad"])
                    .expect("address");
            }
        }
        lan
    }
}

/// Addresses of the topology.
pub struct Addr;

impl Addr {
    /// wren's IPv4 address.
    pub fn wren4() -> IpAddr {
        ip("10.77.0.1")
    }
    /// wren's IPv6 address.
    pub fn wren6() -> IpAddr {
        ip("fd00:77::1")
    }
    /// The eBGP daemon's IPv4 address.
    pub fn ext4() -> IpAddr {
        ip("10.77.0.2")
    }
    /// The eBGP daemon's IPv6 address.
    pub fn ext6() -> IpAddr {
        ip("fd00:77::2")
    }
    /// The iBGP daemon's IPv4 address.
    pub fn int4() -> IpAddr {
        ip("10.77.0.3")
    }
    /// The iBGP daemon's IPv6 address.
    pub fn int6() -> IpAddr {
        ip("fd00:77::3")
    }
}

/// wren's configuration: the four sessions, quick retries.
pub fn wren_config(restarting: bool) -> SpeakerConfig {
    let mut config = SpeakerConfig::new("10.77.0.1".parse().expect("id"), WREN_AS);
    config.graceful_restart = Some(GracefulRestartConfig {
        restart_time: 60,
        restarting,
        forwarding_preserved: true,
        selection_deferral: Duration::from_secs(10),
        ..GracefulRestartConfig::default()
    });
    config
}

/// One of wren's peers in this topology.
pub fn wren_peer(address: IpAddr, asn: u32) -> PeerConfig {
    let mut p = PeerConfig::new(address, asn);
    p.hold_time = HOLD;
    p.connect_retry = Duration::from_secs(1);
    p.idle_hold = Duration::from_millis(500);
    p.families = vec![if address.is_ipv4() {
        Afi::Ipv4Unicast
    } else {
        Afi::Ipv6Unicast
    }];
    p.graceful_restart = address.is_ipv4();
    if address == Addr::ext4() {
        p.password = Some(PASSWORD.to_owned());
    }
    p
}

fn add_peers(wren: &Wren) {
    for (a, asn) in [
        (Addr::ext4(), EXT_AS),
        (Addr::ext6(), EXT_AS),
        (Addr::int4(), WREN_AS),
        (Addr::int6(), WREN_AS),
    ] {
        wren.call(wren.handle().add_peer(wren_peer(a, asn)))
            .unwrap_or_else(|e| panic!("add peer {a}: {e}"));
    }
}

/// A daemon's configuration: a session over IPv4 (graceful restart; MD5 for eBGP) and one
/// over IPv6 to wren.
pub fn daemon_config(router_id: &str, asn: u32, v4: IpAddr, v6: IpAddr) -> Config {
    let mut p4 = Peer::new(Addr::wren4(), WREN_AS, v4)
        .hold_time(HOLD)
        .graceful_restart(60);
    if asn != WREN_AS {
        p4 = p4.password(PASSWORD);
    }
    Config::new(router_id.parse().expect("id"), asn)
        .peer(p4)
        .peer(Peer::new(Addr::wren6(), WREN_AS, v6).hold_time(HOLD))
}

// What each speaker announces.
fn wren_v4() -> Announce {
    Announce::new(net("203.0.113.0/24"))
        .med(10)
        .local_pref(200)
        .community((64512, 100))
}
fn wren_v6() -> Announce {
    Announce::new(net("2001:db8:77::/48"))
        .med(11)
        .local_pref(200)
        .community((64512, 101))
}
fn ext_v4() -> Announce {
    Announce::new(net("198.51.100.0/24"))
        .med(20)
        .community((65001, 1))
        .origin(Origin::Egp)
}
fn ext_v6() -> Announce {
    Announce::new(net("2001:db8:1::/48"))
        .med(21)
        .community((65001, 2))
}
fn int_v4() -> Announce {
    Announce::new(net("192.0.2.0/24"))
        .local_pref(300)
        .community((64512, 3))
}
fn int_v6() -> Announce {
    Announce::new(net("2001:db8:3::/48")).local_pref(300)
}

/// Runs every scenario against the daemon kind `start` makes.
pub fn run(kind: &str, start: Start) {
    let lan = Lan::new();
    let mut ext = start(
        &lan.ext,
        daemon_config("10.77.0.2", EXT_AS, Addr::ext4(), Addr::ext6()),
    );
    let mut int = start(
        &lan.int,
        daemon_config("10.77.0.3", WREN_AS, Addr::int4(), Addr::int6()),
    );
    let mut wren = Wren::start(&lan.wren, wren_config(false));
    add_peers(&wren);

    step(
        kind,
        "iBGP and eBGP sessions over IPv4 and IPv6 come up (eBGP IPv4 signed with MD5)",
    );
    sessions_come_up(&wren, &*ext, &*int);

    step(
        kind,
        "wren's IPv4 and IPv6 prefixes reach both daemons with their attributes",
    );
    wren_routes_reach_daemons(&wren, &*ext, &*int);

    step(
        kind,
        "the daemons' prefixes reach wren, and wren passes them on",
    );
    daemon_routes_reach_wren(&wren, &mut *ext, &mut *int);

    step(
        kind,
        "route refresh: each side re-sends when the other asks",
    );
    route_refresh(&wren, &*ext);

    step(kind, "withdraws are seen on the other side, both ways");
    withdraws(&wren, &mut *ext);

    step(
        kind,
        "a silent daemon's routes go when wren's hold timer expires",
    );
    silent_daemon(&wren, &mut *ext, &*int);

    step(
        kind,
        "a silent wren's routes go when the daemon's hold timer expires",
    );
    silent_wren(&wren, &lan, &*int);

    step(
        kind,
        "graceful restart: wren keeps a crashed daemon's routes until it is back",
    );
    daemon_restarts(&wren, &mut *ext);

    step(
        kind,
        "graceful restart: the daemon keeps wren's routes while wren restarts",
    );
    wren = wren_restarts(wren, &lan, &*int);

    step(
        kind,
        "a daemon announcing past wren's prefix limit is cut off (Cease / Maximum Number of Prefixes) and comes back after the restart time",
    );
    prefix_limit(&wren, &mut *ext);
    drop(wren);
}

fn prefix_limit(wren: &Wren, ext: &mut dyn BgpDaemon) {
    for a in [Addr::ext6(), Addr::int4(), Addr::int6()] {
        wren.wait_established(a);
    }
    let p = wren.wait_established(Addr::ext4());
    let announced = p.prefixes_received + p.prefixes_filtered.values().sum::<usize>();
    let mut config = wren_peer(Addr::ext4(), EXT_AS);
    config.max_prefixes = Some(PrefixLimit {
        limit: announced + 1,
        warning: announced + 1,
        restart_after: Duration::from_secs(3),
    });
    wren.call(wren.handle().update_peer(config.clone()))
        .expect("the limit set");
    wren.wait_established(Addr::ext4());
    let extra = [net("203.0.113.0/26"), net("203.0.113.64/26")];
    for prefix in extra {
        ext.announce(&Announce::new(prefix)).expect("announce");
    }
    daemons::wait_for("wren to cut the daemon off", PATIENCE, || {
        let p = wren.peer(Addr::ext4());
        Ok(match &p.last_error {
            Some(e) if e.contains("Maximum Number of Prefixes") => Ok(()),
            _ => Err(format!("{:?}: {:?}", p.state, p.last_error)),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", ext.log_tail()));
    assert_eq!(
        wren.peer(Addr::ext4()).prefixes_received,
        0,
        "the cut-off peer's routes are flushed"
    );
    for other in [Addr::ext6(), Addr::int4(), Addr::int6()] {
        assert_eq!(
            wren.peer(other).state,
            wren_bgp::fsm::State::Established,
            "{other}: the other sessions are unaffected"
        );
    }
    // Under the limit again, the session returns once the restart time has passed.
    for prefix in extra {
        ext.withdraw(prefix).expect("withdraw");
    }
    wren.wait_established(Addr::ext4());
    config.max_prefixes = None;
    wren.call(wren.handle().update_peer(config))
        .expect("the limit lifted");
}

fn sessions_come_up(wren: &Wren, ext: &dyn BgpDaemon, int: &dyn BgpDaemon) {
    for a in [Addr::ext4(), Addr::ext6(), Addr::int4(), Addr::int6()] {
        let p = wren.wait_established(a);
        let n = p
            .negotiated
            .expect("an Established session has negotiated parameters");
        assert!(n.codec.four_octet_as, "{a}: 4-octet AS not negotiated");
        assert!(n.route_refresh, "{a}: route refresh not negotiated");
        assert_eq!(n.hold_time, HOLD, "{a}: hold time");
        assert_eq!(
            n.peer_graceful_restart.is_some(),
            a.is_ipv4(),
            "{a}: graceful restart is configured on the IPv4 sessions only"
        );
    }
    for (d, a) in [
        (ext, Addr::wren4()),
        (ext, Addr::wren6()),
        (int, Addr::wren4()),
        (int, Addr::wren6()),
    ] {
        wait_established(d, a, PATIENCE).unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    }
}

fn wren_routes_reach_daemons(wren: &Wren, ext: &dyn BgpDaemon, int: &dyn BgpDaemon) {
    wren.announce(&wren_v4());
    wren.announce(&wren_v6());
    for (a, nh) in [(wren_v4(), Addr::wren4()), (wren_v6(), Addr::wren6())] {
        let got = wait(ext, &a, |r| r.as_path == [WREN_AS]);
        assert_eq!(got.next_hop, Some(nh), "eBGP next hop is wren's address");
        assert_eq!(got.med, a.med, "MED of an originated route reaches eBGP");
        assert_eq!(got.communities, a.communities);
        assert_eq!(got.origin, Some(Origin::Igp));

        let got = wait(int, &a, |r| r.as_path.is_empty());
        assert_eq!(got.next_hop, Some(nh), "iBGP next hop is wren's address");
        assert_eq!(got.local_pref, a.local_pref, "LOCAL_PREF reaches iBGP");
        assert_eq!(got.med, a.med);
        assert_eq!(got.communities, a.communities);
    }
}

fn daemon_routes_reach_wren(wren: &Wren, ext: &mut dyn BgpDaemon, int: &mut dyn BgpDaemon) {
    for a in [ext_v4(), ext_v6()] {
        ext.announce(&a).expect("ext announces");
    }
    for a in [int_v4(), int_v6()] {
        int.announce(&a).expect("int announces");
    }
    for (a, nh) in [(ext_v4(), Addr::ext4()), (ext_v6(), Addr::ext6())] {
        let got = wren.wait_route(a.prefix, |r| r.as_path == [EXT_AS]);
        assert_eq!(got.next_hop, Some(nh), "eBGP-learned next hop");
        assert_eq!(got.med, a.med);
        assert_eq!(got.communities, a.communities);
        assert_eq!(got.origin, Some(a.origin));
        // Passed on to the iBGP daemon unchanged but for LOCAL_PREF.
        let on = wait(int, &a, |r| r.as_path == [EXT_AS]);
        assert_eq!(on.next_hop, Some(nh), "eBGP next hop is kept towards iBGP");
        assert_eq!(on.communities, a.communities);
    }
    for (a, nh) in [(int_v4(), Addr::int4()), (int_v6(), Addr::int6())] {
        let got = wren.wait_route(a.prefix, |r| r.as_path.is_empty());
        assert_eq!(got.next_hop, Some(nh), "iBGP-learned next hop");
        assert_eq!(got.local_pref, a.local_pref, "LOCAL_PREF from iBGP");
        assert_eq!(got.communities, a.communities);
        // Passed on to the eBGP daemon with wren's AS in front.
        let on = wait(ext, &a, |r| r.as_path == [WREN_AS]);
        assert!(
            on.next_hop == Some(nh) || on.next_hop == Some(wren_address(nh)),
            "towards eBGP the next hop is wren's or, on the shared subnet, the original: {on:?}"
        );
        assert_eq!(on.communities, a.communities);
    }
}

fn wren_address(like: IpAddr) -> IpAddr {
    if like.is_ipv4() {
        Addr::wren4()
    } else {
        Addr::wren6()
    }
}

fn route_refresh(wren: &Wren, ext: &dyn BgpDaemon) {
    // wren asks: the daemon sends its routes again.
    let before = neighbor(ext, Addr::wren4());
    wren.call(
        wren.handle()
            .request_refresh(Addr::ext4(), Afi::Ipv4Unicast),
    )
    .expect("request refresh");
    daemons::wait_for(
        "the daemon to answer wren's ROUTE-REFRESH",
        PATIENCE,
        || {
            let now = neighbor(ext, Addr::wren4());
            Ok(if now.updates_sent > before.updates_sent {
                Ok(())
            } else {
                Err(format!("before {before:?}, now {now:?}"))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        wren.peer(Addr::ext4()).state,
        wren_bgp::fsm::State::Established
    );
    assert!(
        wren.route(ext_v4().prefix).is_some(),
        "a refresh must not lose routes"
    );

    // The daemon asks: wren sends its routes again.
    let before = neighbor(ext, Addr::wren4());
    match ext.request_refresh(Addr::wren4()) {
        Ok(()) => {}
        Err(e @ daemons::Error::Unsupported { .. }) => {
            eprintln!("note: {e}; only wren's request is exercised");
            return;
        }
        Err(e) => panic!("daemon asks for a refresh: {e}"),
    }
    daemons::wait_for(
        "wren to answer the daemon's ROUTE-REFRESH",
        PATIENCE,
        || {
            let now = neighbor(ext, Addr::wren4());
            Ok(if now.updates_received > before.updates_received {
                Ok(())
            } else {
                Err(format!("before {before:?}, now {now:?}"))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(route_for(ext, wren_v4().prefix).expect("routes").is_some());
}

fn withdraws(wren: &Wren, ext: &mut dyn BgpDaemon) {
    wren.withdraw(wren_v4().prefix);
    wait_no_route(ext, wren_v4().prefix, PATIENCE).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        route_for(ext, wren_v6().prefix).expect("routes").is_some(),
        "only the withdrawn prefix goes"
    );
    ext.withdraw(ext_v4().prefix).expect("ext withdraws");
    wren.wait_no_route(ext_v4().prefix);

    // And back, for the scenarios that follow.
    wren.announce(&wren_v4());
    ext.announce(&ext_v4()).expect("ext announces again");
    wait(ext, &wren_v4(), |_| true);
    wren.wait_route(ext_v4().prefix, |_| true);
}

fn silent_daemon(wren: &Wren, ext: &mut dyn BgpDaemon, int: &dyn BgpDaemon) {
    ext.signal(Signal::SIGSTOP).expect("pause");
    // The IPv6 session did not negotiate graceful restart: its routes go with the session.
    wren.wait_no_route(ext_v6().prefix);
    let p = wren.peer(Addr::ext6());
    assert_ne!(p.state, wren_bgp::fsm::State::Established);
    let why = p.last_error.unwrap_or_default().to_lowercase();
    assert!(
        why.contains("hold"),
        "the session ended by its hold timer, not {why:?}"
    );
    wait_no_route(int, ext_v6().prefix, PATIENCE).unwrap_or_else(|e| panic!("{e}"));

    ext.signal(Signal::SIGCONT).expect("resume");
    wren.wait_established(Addr::ext6());
    wren.wait_established(Addr::ext4());
    wren.wait_route(ext_v6().prefix, |_| true);
    wren.wait_route(ext_v4().prefix, |_| true);
}

/// nftables in wren's namespace drops everything to and from `peer`.
fn block(lan: &Lan, peer: &str, on: bool) {
    let nft = |args: &[&str]| {
        lan.wren
            .exec("nft", args)
            .unwrap_or_else(|e| panic!("nft {args:?}: {e}"))
    };
    if !on {
        nft(&["delete", "table", "inet", "wren_block"]);
        return;
    }
    nft(&["add", "table", "inet", "wren_block"]);
    for (chain, hook, dir) in [("o", "output", "daddr"), ("i", "input", "saddr")] {
        let spec = format!("{{ type filter hook {hook} priority 0 ; policy accept ; }}");
        nft(&["add", "chain", "inet", "wren_block", chain, &spec]);
        let family = if peer.contains(':') { "ip6" } else { "ip" };
        nft(&[
            "add",
            "rule",
            "inet",
            "wren_block",
            chain,
            family,
            dir,
            peer,
            "drop",
        ]);
    }
}

fn silent_wren(wren: &Wren, lan: &Lan, int: &dyn BgpDaemon) {
    block(lan, "fd00:77::3", true);
    wait_no_route(int, wren_v6().prefix, PATIENCE).unwrap_or_else(|e| panic!("{e}"));
    let n = neighbor(int, Addr::wren6());
    assert_ne!(n.state, SessionState::Established, "{n:?}");
    block(lan, "fd00:77::3", false);
    wren.wait_established(Addr::int6());
    wait(int, &wren_v6(), |_| true);
}

fn daemon_restarts(wren: &Wren, ext: &mut dyn BgpDaemon) {
    let prefix = ext_v4().prefix;
    let watch = super::Watch::start(wren, Addr::ext4(), prefix);
    ext.restart(Restart::Crash).expect("daemon restarts");
    wren.wait_established(Addr::ext4());
    // Wait for the restarted daemon's End-of-RIB to clear the stale marks.
    daemons::wait_for(
        "the daemon's routes to be refreshed after its restart",
        PATIENCE,
        || {
            let p = wren.peer(Addr::ext4());
            Ok(if p.prefixes_stale == 0 && p.prefixes_received > 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} stale of {}",
                    p.prefixes_stale, p.prefixes_received
                ))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = watch.finish();
    assert!(seen.samples > 0);
    assert_eq!(
        seen.absent, 0,
        "the route vanished during the restart: {seen:?}"
    );
    assert!(
        seen.stale > 0,
        "the routes were never held as stale: {seen:?}"
    );
    wren.wait_route(prefix, |r| r.as_path == [EXT_AS]);
}

fn wren_restarts(wren: Wren, lan: &Lan, int: &dyn BgpDaemon) -> Wren {
    let prefix = wren_v4().prefix;
    wren.crash();
    let mut absent = 0;
    let mut check = |int: &dyn BgpDaemon| {
        if route_for(int, prefix).expect("routes").is_none() {
            absent += 1;
        }
    };
    // The daemon notices the closed connection and holds wren's routes as stale.
    daemons::wait_for("the daemon to see wren's session drop", PATIENCE, || {
        check(int);
        let n = neighbor(int, Addr::wren4());
        Ok(if n.state == SessionState::Established {
            Err(format!("{n:?}"))
        } else {
            Ok(())
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let wren = Wren::start(&lan.wren, wren_config(true));
    add_peers(&wren);
    wren.announce(&wren_v4());
    wren.announce(&wren_v6());
    wren.wait_established(Addr::int4());
    daemons::wait_for(
        "the daemon to take wren's refreshed routes",
        PATIENCE,
        || {
            check(int);
            Ok(match route_for(int, prefix).expect("routes") {
                Some(r) if !r.stale && r.local_pref == Some(200) => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        absent, 0,
        "the daemon dropped wren's route while wren restarted"
    );
    wren
}

fn neighbor(d: &dyn BgpDaemon, a: IpAddr) -> daemons::Neighbor {
    d.neighbor(a)
        .unwrap_or_else(|e| panic!("{} neighbor {a}: {e}", d.kind()))
}

fn wait(d: &dyn BgpDaemon, a: &Announce, accept: impl Fn(&Route) -> bool) -> Route {
    wait_route(d, a.prefix, PATIENCE, accept)
        .unwrap_or_else(|e| panic!("{e}\n--- {} log ---\n{}", d.kind(), d.log_tail()))
}
