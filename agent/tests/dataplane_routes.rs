//! The route manager against a real kernel, in network namespaces made by each test.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use wren_agent::dataplane::{
    Protocol, Route, RouteAction, RouteChange, RouteFailureReason, RouteManager,
};
use wren_tests::netns::NetNs;
use wren_tests::prereq;

/// RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE: route change notifications of both families.
const ROUTE_GROUPS: u32 = 0x40 | 0x400;

fn ready() -> bool {
    prereq::require_root() && prereq::require_command("ip")
}

/// A namespace with `up0` (a bridge: no kernel module beyond what veths need) holding
/// 192.0.2.1/24 and 2001:db8::1/64, so gateways 192.0.2.x and 2001:db8::x resolve.
fn node(tag: &str) -> NetNs {
    let ns = NetNs::new(tag).unwrap();
    run_ip(&ns, "link add up0 type bridge");
    ns.configure("up0", Some("192.0.2.1/24")).unwrap();
    run_ip(&ns, "-6 addr add 2001:db8::1/64 dev up0 nodad");
    ns
}

/// Runs `ip <args>` in the namespace, the arguments given as one string; returns its output.
fn run_ip(ns: &NetNs, args: &str) -> String {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>()).unwrap()
}

/// A [`node`] and a route manager working in it, or `None` when the test cannot run here.
fn managed_node(tag: &str) -> Option<(NetNs, RouteManager)> {
    if !ready() {
        return None;
    }
    let ns = node(tag);
    // The socket stays bound to the namespace it was opened in, whichever thread uses it.
    let manager = ns.enter(|| RouteManager::new().unwrap()).unwrap();
    Some((ns, manager))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `ip route show` of both families, one route per line.
fn routes(ns: &NetNs) -> String {
    let v4 = run_ip(ns, "-4 route show table main");
    let v6 = run_ip(ns, "-6 route show table main");
    format!("{v4}{v6}")
}

fn line_for<'a>(table: &'a str, dst: &str) -> Option<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == dst))
}

fn desired() -> Vec<Route> {
    vec![
        Route::blackhole(net("10.10.0.0/26")),
        Route::via(net("10.20.0.0/26"), ip("192.0.2.2")),
        Route::device(net("10.10.0.5/32"), "up0"),
        Route::via_onlink(net("10.30.0.0/26"), ip("10.30.0.0"), "up0"),
        Route::blackhole(net("fd00:10::/122")),
        Route::via(net("fd00:20::/122"), ip("2001:db8::2")),
    ]
}

#[test]
fn reconcile_installs_every_kind_of_route_in_both_families() {
    if !ready() {
        return;
    }
    let ns = node("rt-kinds");
    let report = ns
        .enter(|| RouteManager::new().unwrap().reconcile(&desired()).unwrap())
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert_eq!(report.added, 6);
    let table = routes(&ns);
    for (dst, words) in [
        ("10.10.0.0/26", &["blackhole", "proto", "201"][..]),
        ("10.20.0.0/26", &["via", "192.0.2.2", "proto", "bgp"][..]),
        ("10.10.0.5", &["dev", "up0", "scope", "link", "201"][..]),
        (
            "10.30.0.0/26",
            &["via", "10.30.0.0", "dev", "up0", "onlink"][..],
        ),
        ("fd00:10::/122", &["blackhole", "201"][..]),
        ("fd00:20::/122", &["via", "2001:db8::2", "bgp"][..]),
    ] {
        let line = line_for(&table, dst).unwrap_or_else(|| panic!("no {dst} in\n{table}"));
        for w in words {
            assert!(
                line.split_whitespace().any(|x| x == *w),
                "{dst}: {w:?} not in {line:?}"
            );
        }
    }
}

#[test]
fn reconcile_repairs_drift_in_both_directions_and_leaves_other_routes_alone() {
    let Some((ns, mut manager)) = managed_node("rt-drift") else {
        return;
    };
    let first = manager.reconcile(&desired()).unwrap();
    assert!(first.is_clean(), "{:?}", first.failures);

    // Drift made by hand: one of ours deleted, a stale one of ours (each family), one of
    // somebody else's.
    run_ip(&ns, "route del 10.20.0.0/26");
    run_ip(&ns, "route add 10.99.0.0/26 via 192.0.2.3 proto 201");
    run_ip(&ns, "-6 route add fd00:99::/64 via 2001:db8::3 proto bgp");
    run_ip(&ns, "route add 10.77.0.0/26 via 192.0.2.4 proto static");
    run_ip(
        &ns,
        "-6 route add fd00:77::/64 via 2001:db8::4 proto static",
    );

    let report = manager.reconcile(&desired()).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert_eq!((report.added, report.removed, report.replaced), (1, 2, 0));
    assert_eq!(report.unchanged, 5);
    let table = routes(&ns);
    let back = line_for(&table, "10.20.0.0/26").expect("deleted route is back");
    assert!(
        back.contains("via 192.0.2.2") && back.contains("proto bgp"),
        "{back}"
    );
    assert!(
        line_for(&table, "10.99.0.0/26").is_none(),
        "stale route stayed:\n{table}"
    );
    assert!(
        line_for(&table, "fd00:99::/64").is_none(),
        "stale route stayed:\n{table}"
    );
    assert!(line_for(&table, "10.77.0.0/26").is_some_and(|l| l.contains("proto static")));
    assert!(line_for(&table, "fd00:77::/64").is_some_and(|l| l.contains("proto static")));

    // Nothing left to do: a second pass changes nothing.
    let again = manager.reconcile(&desired()).unwrap();
    assert!(!again.changed() && again.is_clean(), "{again:?}");
    assert_eq!(again.unchanged, 6);
    let counters = manager.counters();
    assert_eq!(
        (counters.added, counters.removed, counters.reconciles),
        (7, 2, 3)
    );
}

#[test]
fn a_changed_next_hop_is_replaced_and_never_overwrites_another_protocol() {
    let Some((ns, mut manager)) = managed_node("rt-replace") else {
        return;
    };
    run_ip(&ns, "route add 10.77.0.0/26 via 192.0.2.4 proto static");
    manager
        .reconcile(&[Route::via(net("10.20.0.0/26"), ip("192.0.2.2"))])
        .unwrap();

    let moved = [
        Route::via(net("10.20.0.0/26"), ip("192.0.2.9")),
        Route::via(net("10.77.0.0/26"), ip("192.0.2.2")),
    ];
    let report = manager.reconcile(&moved).unwrap();
    assert_eq!(report.replaced, 1, "{report:?}");
    assert_eq!(report.failures.len(), 1, "{report:?}");
    let failure = &report.failures[0];
    assert_eq!(failure.action, RouteAction::Add);
    assert!(failure.route.starts_with("10.77.0.0/26"), "{failure}");
    assert!(
        matches!(failure.reason, RouteFailureReason::Occupied),
        "{failure}"
    );
    let table = routes(&ns);
    assert!(line_for(&table, "10.20.0.0/26").is_some_and(|l| l.contains("via 192.0.2.9")));
    let theirs = line_for(&table, "10.77.0.0/26").unwrap();
    assert!(
        theirs.contains("via 192.0.2.4") && theirs.contains("proto static"),
        "{theirs}"
    );
}

/// Route add/delete notifications seen by a listener in a namespace.
struct RouteEvents(Socket);

impl RouteEvents {
    fn open() -> Self {
        let mut socket = Socket::new(NETLINK_ROUTE).unwrap();
        socket.bind(&SocketAddr::new(0, ROUTE_GROUPS)).unwrap();
        RouteEvents(socket)
    }

    /// (additions, deletions) notified so far; the kernel queues them before the change
    /// request returns, so nothing is still in flight.
    fn drain(&self) -> (usize, usize) {
        let (mut added, mut deleted) = (0, 0);
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            if self.0.recv(&mut buf, libc::MSG_DONTWAIT).is_err() {
                return (added, deleted);
            }
            let mut rest = &buf[..];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
                match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                    .map(|m| m.payload)
                {
                    Ok(netlink_packet_core::NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewRoute(_),
                    )) => added += 1,
                    Ok(netlink_packet_core::NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::DelRoute(_),
                    )) => deleted += 1,
                    _ => {}
                }
                rest = &rest[(len + 3) & !3..];
            }
        }
    }
}

#[test]
fn a_new_manager_adopts_the_kernel_state_without_removing_anything() {
    if !ready() {
        return;
    }
    let ns = node("rt-adopt");
    let (events, report) = ns
        .enter(|| {
            // The agent that ran before.
            RouteManager::new().unwrap().reconcile(&desired()).unwrap();
            let events = RouteEvents::open();
            // The agent restarts with the same desired state, and then with one route more.
            let mut restarted = RouteManager::new().unwrap();
            let installed = restarted.installed().unwrap();
            let mut wanted = desired();
            assert_eq!(installed.len(), wanted.len(), "{installed:?}");
            for route in &wanted {
                assert!(
                    installed.contains(route),
                    "{route} not adopted from {installed:?}"
                );
            }
            let same = restarted.reconcile(&wanted).unwrap();
            assert!(!same.changed() && same.is_clean(), "{same:?}");
            let quiet = events.drain();
            wanted.push(Route::blackhole(net("10.10.0.64/26")));
            let report = restarted.reconcile(&wanted).unwrap();
            ((quiet, events.drain()), report)
        })
        .unwrap();
    assert_eq!(events.0, (0, 0), "adopting changed kernel routes");
    assert_eq!(
        events.1,
        (1, 0),
        "the one new route was not the only change"
    );
    assert_eq!(report.added, 1);
}

#[test]
fn incremental_changes_report_failures_per_route_across_many_datagrams() {
    let Some((_ns, mut manager)) = managed_node("rt-apply") else {
        return;
    };
    // 3,000 routes span three datagrams; every 700th names a gateway that is not reachable.
    let unreachable = |i: u32| i.is_multiple_of(700);
    let routes: Vec<Route> = (0..3000u32)
        .map(|i| {
            let dst = IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 64)), 26).unwrap();
            let gateway = if unreachable(i) {
                "198.51.100.1"
            } else {
                "192.0.2.2"
            };
            Route::via(dst, ip(gateway))
        })
        .collect();
    let adds: Vec<RouteChange> = routes.iter().cloned().map(RouteChange::Add).collect();
    let report = manager.apply(&adds).unwrap();
    let expected: Vec<String> = routes
        .iter()
        .enumerate()
        .filter(|(i, _)| unreachable(*i as u32))
        .map(|(_, r)| r.to_string())
        .collect();
    let failed: Vec<String> = report.failures.iter().map(|f| f.route.clone()).collect();
    assert_eq!(failed, expected);
    assert_eq!(report.added, 3000 - expected.len());
    assert_eq!(manager.installed().unwrap().len(), report.added);

    // Removing everything, including the routes that never made it in, is not an error.
    let removes: Vec<RouteChange> = routes.iter().cloned().map(RouteChange::Remove).collect();
    let report = manager.apply(&removes).unwrap();
    assert!(report.is_clean(), "{:?}", &report.failures[..1]);
    assert_eq!(report.removed, 3000 - expected.len());
    assert!(manager.installed().unwrap().is_empty());
}

#[test]
fn a_removal_never_deletes_a_route_of_another_protocol() {
    let Some((ns, mut manager)) = managed_node("rt-owner") else {
        return;
    };
    run_ip(&ns, "route add 10.77.0.0/26 via 192.0.2.4 proto static");
    let theirs = Route::via(net("10.77.0.0/26"), ip("192.0.2.4"));
    for protocol in Protocol::OWNED {
        let report = manager
            .apply(&[RouteChange::Remove(theirs.clone().with_protocol(protocol))])
            .unwrap();
        assert!(report.is_clean() && report.removed == 0, "{report:?}");
    }
    assert!(line_for(&routes(&ns), "10.77.0.0/26").is_some());
}

#[test]
fn routes_naming_a_missing_device_or_an_unmanaged_table_are_reported_not_sent() {
    let Some((ns, mut manager)) = managed_node("rt-invalid") else {
        return;
    };
    let wanted = [
        Route::device(net("10.10.0.9/32"), "nosuchdev"),
        Route::blackhole(net("10.10.1.0/26")).in_table(100),
        Route::blackhole(net("10.10.2.1/26")),
        Route::blackhole(net("10.10.3.0/26")),
        Route::via(net("10.10.3.0/26"), ip("192.0.2.2")),
    ];
    let report = manager.reconcile(&wanted).unwrap();
    let reasons: Vec<String> = report
        .failures
        .iter()
        .map(|f| f.reason.to_string())
        .collect();
    assert_eq!(report.added, 1, "{reasons:?}");
    assert!(reasons[0].contains("nosuchdev"), "{reasons:?}");
    assert!(reasons[1].contains("table 100"), "{reasons:?}");
    assert!(reasons[2].contains("host bits"), "{reasons:?}");
    assert!(reasons[3].contains("same destination"), "{reasons:?}");

    manager.manage_table(100);
    let report = manager.reconcile(&wanted[1..2]).unwrap();
    assert!(report.is_clean() && report.added == 1, "{report:?}");
    let table100 = run_ip(&ns, "route show table 100");
    assert!(table100.contains("blackhole 10.10.1.0/26"), "{table100}");
    // The main table's route of ours is no longer wanted and goes.
    assert!(line_for(&routes(&ns), "10.10.3.0/26").is_none());
}

#[test]
fn of_several_changes_to_one_destination_the_last_one_counts() {
    let Some((_ns, mut manager)) = managed_node("rt-last") else {
        return;
    };
    let x = Route::blackhole(net("10.10.0.0/26"));
    let y = Route::via(net("10.10.0.0/26"), ip("192.0.2.2"));
    let report = manager
        .apply(&[RouteChange::Remove(x.clone()), RouteChange::Add(x.clone())])
        .unwrap();
    assert_eq!((report.added, report.removed), (1, 0));
    let report = manager
        .apply(&[
            RouteChange::Replace(y.clone()),
            RouteChange::Remove(x.clone()),
        ])
        .unwrap();
    assert_eq!((report.replaced, report.removed), (0, 1));
    assert!(manager.installed().unwrap().is_empty());
}

#[test]
fn a_replacement_the_kernel_refuses_leaves_no_stale_route_behind() {
    let Some((ns, mut manager)) = managed_node("dp-refused") else {
        return;
    };
    // Installed via a gateway on the link, then wanted via one that is not: the kernel
    // refuses the replace ("Nexthop has invalid gateway").
    let on_link = Route::via(net("10.77.205.0/24"), ip("192.0.2.2"));
    let off_link = Route::via(net("10.77.205.0/24"), ip("10.77.5.5"));
    let report = manager.reconcile(std::slice::from_ref(&on_link)).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert!(line_for(&routes(&ns), "10.77.205.0/24").is_some());

    let report = manager.reconcile(std::slice::from_ref(&off_link)).unwrap();
    let [failure] = &report.failures[..] else {
        panic!("one failure expected: {:?}", report.failures)
    };
    assert_eq!(failure.action, RouteAction::Replace, "{failure}");
    assert!(
        matches!(failure.reason, RouteFailureReason::Kernel(_)),
        "{failure}"
    );
    assert_eq!(report.removed, 1);
    let table = routes(&ns);
    assert!(line_for(&table, "10.77.205.0/24").is_none(), "{table}");

    // The same through an incremental replace.
    let report = manager.reconcile(std::slice::from_ref(&on_link)).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    let report = manager.apply(&[RouteChange::Replace(off_link)]).unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.removed, 1);
    let table = routes(&ns);
    assert!(line_for(&table, "10.77.205.0/24").is_none(), "{table}");
}

/// A multipath route over `gateways`.
fn multipath(dst: &str, gateways: &[&str]) -> Route {
    Route::via_all(net(dst), gateways.iter().map(|g| ip(g))).unwrap()
}

#[test]
fn a_multipath_route_reads_back_as_itself_shrinks_and_grows_in_place() {
    let Some((ns, mut manager)) = managed_node("rt-ecmp") else {
        return;
    };
    let both = [
        multipath("10.99.0.0/24", &["192.0.2.3", "192.0.2.2"]),
        multipath("fd00:99::/64", &["2001:db8::3", "2001:db8::2"]),
    ];
    let report = manager.reconcile(&both).unwrap();
    assert!(report.is_clean(), "{:?}", report.failures);
    assert_eq!(report.added, 2);
    let table = routes(&ns);
    for gateway in ["192.0.2.2", "192.0.2.3", "2001:db8::2", "2001:db8::3"] {
        assert!(
            table.contains(&format!("nexthop via {gateway} ")),
            "{gateway} in\n{table}"
        );
    }
    // The full pass reads them back as wanted: nothing to do.
    let again = manager.reconcile(&both).unwrap();
    assert_eq!((again.unchanged, again.added, again.replaced), (2, 0, 0));
    let mut installed = manager.installed().unwrap();
    installed.sort_by_key(|r| r.dst);
    assert_eq!(installed, both);

    // One path gone, then back: the route is replaced in place each time, never removed.
    let events = ns.enter(RouteEvents::open).unwrap();
    let one = [
        Route::via(net("10.99.0.0/24"), ip("192.0.2.3")),
        Route::via(net("fd00:99::/64"), ip("2001:db8::3")),
    ];
    let report = manager.reconcile(&one).unwrap();
    assert_eq!((report.replaced, report.removed), (2, 0));
    assert_eq!(manager.reconcile(&one).unwrap().unchanged, 2);
    let report = manager
        .apply(&both.clone().map(RouteChange::Replace))
        .unwrap();
    assert_eq!(report.replaced, 2);
    assert_eq!(manager.reconcile(&both).unwrap().unchanged, 2);
    let (_, deleted) = events.drain();
    assert_eq!(deleted, 0, "a replace never deletes the route first");
    // The last path gone removes it.
    let report = manager.reconcile(&[]).unwrap();
    assert_eq!(report.removed, 2);
    assert!(!routes(&ns).contains("nexthop"));
}
