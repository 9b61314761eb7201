//! The RIB end to end without sockets: import checks, export rules (split horizon, route
//! reflection, eBGP rewrites), policy hooks, Adj-RIB-Out packing, graceful restart.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use wren_bgp::rib::{
    AcceptAll, AdjRibOut, Attributes, PeerId, PeerRef, PeerSettings, Policy, Rib, RibConfig,
    RouteAttributes, RouteEvent, Session, Source, Verdict,
};
use wren_bgp::wire::{Afi, AsPath, AsSegment, Codec, GracefulRestart, PathAttributes, Update};

const LOCAL_AS: u32 = 64512;
const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

struct Peer {
    id: PeerId,
    out: AdjRibOut,
    address: IpAddr,
}

fn rib_with(policy: Arc<dyn Policy>, defer: bool) -> Rib {
    let mut config = RibConfig::new(LOCAL_AS, ROUTER_ID);
    config.defer = defer;
    Rib::new(config, policy)
}

fn rib() -> Rib {
    rib_with(Arc::new(AcceptAll), false)
}

fn add(rib: &mut Rib, n: u8, remote_as: u32, rr_client: bool) -> Peer {
    let address = IpAddr::V4(Ipv4Addr::new(192, 168, 0, n));
    let settings = PeerSettings {
        address,
        remote_as,
        local_as: None,
        rr_client,
        next_hop_self: false,
        next_hop_keep: false,
    };
    let (id, out) = rib.add_peer(settings);
    Peer { id, out, address }
}

fn session(n: u8, gr: Option<GracefulRestart>) -> Session {
    Session {
        router_id: Ipv4Addr::new(10, 0, 0, n),
        local_address: "192.168.0.1".parse().unwrap(),
        families: vec![Afi::Ipv4Unicast, Afi::Ipv6Unicast],
        epoch: u64::from(n),
        graceful_restart: gr,
    }
}

fn up(rib: &mut Rib, peer: &Peer, n: u8) {
    rib.peer_up(peer.id, session(n, None));
}

/// A RIB with one established iBGP peer.
fn rib_with_one_peer() -> (Rib, Peer) {
    let mut rib = rib();
    let a = add(&mut rib, 2, LOCAL_AS, false);
    up(&mut rib, &a, 2);
    (rib, a)
}

fn originate_local(rib: &mut Rib, prefix: &str) {
    rib.originate(net(prefix), Attributes::local(None, Afi::Ipv4Unicast));
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn announce(prefixes: &[&str], path: &[u32], next_hop: &str) -> Update {
    Update {
        withdrawn: vec![],
        attributes: PathAttributes {
            origin: Some(Default::default()),
            as_path: Some(AsPath {
                segments: vec![AsSegment::Sequence(path.to_vec())],
            }),
            next_hop: Some(next_hop.parse().unwrap()),
            local_pref: Some(100),
            ..PathAttributes::default()
        },
        nlri: prefixes.iter().map(|p| net(p)).collect(),
    }
}

/// What a peer's writer would send now: (prefix, attributes) announced, prefixes withdrawn.
fn drain(rib: &mut Rib, peer: &Peer) -> (Vec<(IpNet, Arc<Attributes>)>, Vec<IpNet>) {
    rib.flush();
    let batch = peer.out.take_batch(usize::MAX);
    let announced = batch
        .announced
        .iter()
        .flat_map(|(a, ps)| ps.iter().map(move |p| (*p, a.clone())))
        .collect();
    (announced, batch.withdrawn)
}

#[test]
fn rib_ibgp_split_horizon_and_ebgp_rewrites() {
    let mut rib = rib();
    let a = add(&mut rib, 2, LOCAL_AS, false);
    let b = add(&mut rib, 3, LOCAL_AS, false);
    let c = add(&mut rib, 4, 65010, false);
    up(&mut rib, &a, 2);
    up(&mut rib, &b, 3);
    up(&mut rib, &c, 4);
    let mut update = announce(&["10.1.0.0/24"], &[65100], "192.168.0.2");
    update.attributes.med = Some(50);
    rib.update(a.id, &update);
    let best = rib.best(&net("10.1.0.0/24")).expect("imported");
    assert!(matches!(best.source, Source::Peer(PeerRef { address, .. }) if address == a.address));

    let (to_b, _) = drain(&mut rib, &b);
    assert!(to_b.is_empty(), "iBGP routes are not passed to iBGP peers");
    let (to_a, _) = drain(&mut rib, &a);
    assert!(to_a.is_empty(), "nor sent back to where they came from");
    let (to_c, _) = drain(&mut rib, &c);
    let (_, sent) = &to_c[0];
    assert_eq!(sent.neighbour_as(), Some(LOCAL_AS), "our AS prepended");
    assert_eq!(sent.as_path_len(), 2);
    assert_eq!(
        sent.next_hop_addr(),
        Some("192.168.0.1".parse().unwrap()),
        "next hop self"
    );
    assert_eq!(sent.local_pref, None);
    assert_eq!(sent.med, None, "a MED is not passed to another AS");
    assert_eq!(rib.counts(c.id).sent, 1);
}

#[test]
fn rib_local_routes_get_next_hop_self_and_default_local_pref() {
    let (mut rib, a) = rib_with_one_peer();
    originate_local(&mut rib, "10.244.0.0/26");
    rib.originate(
        net("2001:db8:44::/64"),
        Attributes::local(Some("2001:db8::9".parse().unwrap()), Afi::Ipv6Unicast),
    );
    let (sent, _) = drain(&mut rib, &a);
    let v4 = sent
        .iter()
        .find(|(p, _)| *p == net("10.244.0.0/26"))
        .unwrap();
    assert_eq!(v4.1.next_hop_addr(), Some("192.168.0.1".parse().unwrap()));
    assert_eq!(v4.1.local_pref, Some(100));
    let v6 = sent
        .iter()
        .find(|(p, _)| *p == net("2001:db8:44::/64"))
        .unwrap();
    assert_eq!(v6.1.next_hop_addr(), Some("2001:db8::9".parse().unwrap()));

    rib.withdraw(net("10.244.0.0/26"));
    let (_, withdrawn) = drain(&mut rib, &a);
    assert_eq!(withdrawn, vec![net("10.244.0.0/26")]);
}

#[test]
fn rib_route_reflection_follows_client_rules() {
    let mut rib = rib();
    let client = add(&mut rib, 2, LOCAL_AS, true);
    let client2 = add(&mut rib, 3, LOCAL_AS, true);
    let non_client = add(&mut rib, 4, LOCAL_AS, false);
    let non_client2 = add(&mut rib, 5, LOCAL_AS, false);
    for (peer, n) in [
        (&client, 2),
        (&client2, 3),
        (&non_client, 4),
        (&non_client2, 5),
    ] {
        up(&mut rib, peer, n);
    }
    // From a client: to every other iBGP peer, with ORIGINATOR_ID and CLUSTER_LIST.
    rib.update(client.id, &announce(&["10.1.0.0/24"], &[], "192.168.0.2"));
    for peer in [&client2, &non_client, &non_client2] {
        let (sent, _) = drain(&mut rib, peer);
        assert_eq!(sent.len(), 1, "reflected to {}", peer.address);
        let attrs = &sent[0].1;
        assert_eq!(attrs.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(attrs.cluster_list, vec![ROUTER_ID]);
        assert_eq!(
            attrs.next_hop_addr(),
            Some("192.168.0.2".parse().unwrap()),
            "unchanged"
        );
    }
    // From a non-client: to clients only.
    rib.update(
        non_client.id,
        &announce(&["10.2.0.0/24"], &[], "192.168.0.4"),
    );
    assert_eq!(drain(&mut rib, &client).0.len(), 1);
    assert_eq!(drain(&mut rib, &client2).0.len(), 1);
    assert!(drain(&mut rib, &non_client2).0.is_empty());
}

#[test]
fn rib_import_drops_loops() {
    let mut rib = rib();
    let ibgp = add(&mut rib, 2, LOCAL_AS, true);
    let ebgp = add(&mut rib, 3, 65010, false);
    up(&mut rib, &ibgp, 2);
    up(&mut rib, &ebgp, 3);
    rib.update(
        ebgp.id,
        &announce(&["10.1.0.0/24"], &[65010, LOCAL_AS, 7], "192.168.0.3"),
    );
    let mut own = announce(&["10.2.0.0/24"], &[], "192.168.0.2");
    own.attributes.originator_id = Some(ROUTER_ID);
    rib.update(ibgp.id, &own);
    let mut cluster = announce(&["10.3.0.0/24"], &[], "192.168.0.2");
    cluster.attributes.originator_id = Some(Ipv4Addr::new(10, 9, 9, 9));
    cluster.attributes.cluster_list = vec![Ipv4Addr::new(7, 7, 7, 7), ROUTER_ID];
    rib.update(ibgp.id, &cluster);
    assert!(
        rib.is_empty(),
        "AS path, ORIGINATOR_ID and CLUSTER_LIST loops are dropped"
    );

    // A looped re-announcement withdraws the earlier, clean route.
    rib.update(
        ebgp.id,
        &announce(&["10.4.0.0/24"], &[65010], "192.168.0.3"),
    );
    assert_eq!(rib.len(), 1);
    rib.update(
        ebgp.id,
        &announce(&["10.4.0.0/24"], &[65010, LOCAL_AS], "192.168.0.3"),
    );
    assert!(rib.is_empty());
}

struct TagAndFilter;

impl Policy for TagAndFilter {
    fn import(&self, _peer: &PeerRef, prefix: IpNet, _attrs: &Attributes) -> Verdict {
        if prefix == net("10.66.0.0/16") {
            Verdict::Reject
        } else {
            Verdict::Accept
        }
    }

    fn export(&self, peer: &PeerRef, prefix: IpNet, attrs: &Attributes, src: &Source) -> Verdict {
        match (peer.ibgp, src, prefix.prefix_len()) {
            (false, Source::Peer(_), _) => Verdict::Reject,
            (_, _, 32) => {
                let mut tagged = attrs.clone();
                tagged.communities.push(0xfde8_0020);
                Verdict::Modify(tagged)
            }
            _ => Verdict::Accept,
        }
    }
}

#[test]
fn rib_policy_hooks_accept_reject_and_modify() {
    let mut rib = rib_with(Arc::new(TagAndFilter), false);
    let ibgp = add(&mut rib, 2, LOCAL_AS, false);
    let ebgp = add(&mut rib, 3, 65010, false);
    up(&mut rib, &ibgp, 2);
    up(&mut rib, &ebgp, 3);
    rib.update(
        ibgp.id,
        &announce(&["10.66.0.0/16", "10.7.0.0/16"], &[], "192.168.0.2"),
    );
    assert!(
        rib.best(&net("10.66.0.0/16")).is_none(),
        "import policy rejected it"
    );
    assert!(rib.best(&net("10.7.0.0/16")).is_some());
    let (sent, _) = drain(&mut rib, &ebgp);
    assert!(
        sent.is_empty(),
        "export policy keeps learned routes from eBGP"
    );
    originate_local(&mut rib, "10.244.1.7/32");
    let (sent, _) = drain(&mut rib, &ebgp);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.communities, vec![0xfde8_0020]);
}

#[test]
fn rib_adj_out_packs_shared_attributes_and_coalesces_changes() {
    let mut rib = rib();
    let source = add(&mut rib, 2, 65010, false);
    let sink = add(&mut rib, 3, LOCAL_AS, false);
    up(&mut rib, &source, 2);
    up(&mut rib, &sink, 3);
    let prefixes: Vec<String> = (0..2000)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    rib.update(source.id, &announce(&refs, &[65010], "192.168.0.2"));
    // Announced and withdrawn again before the writer ran: nothing to send for it.
    rib.update(
        source.id,
        &Update {
            withdrawn: vec![net("10.0.5.0/24")],
            ..Update::default()
        },
    );
    rib.flush();
    let batch = sink.out.take_batch(usize::MAX);
    assert_eq!(batch.announced.len(), 1, "one attribute set, one group");
    assert_eq!(batch.prefixes(), 1999);
    assert!(batch.withdrawn.is_empty());
    assert_eq!(batch.end_of_rib, vec![Afi::Ipv4Unicast, Afi::Ipv6Unicast]);
    let messages = batch.encode(&Codec::default());
    // 1999 /24s at 4 octets fit in 2 UPDATEs, plus the two End-of-RIB markers.
    assert_eq!(messages.len(), 4);
    assert!(messages.iter().all(|m| m.len() <= 4096));
}

#[test]
fn rib_peer_removal_withdraws_its_routes() {
    let (mut rib, a) = rib_with_one_peer();
    rib.update(
        a.id,
        &announce(&["10.1.0.0/24", "10.2.0.0/24"], &[], "192.168.0.2"),
    );
    rib.take_events();
    rib.remove_peer(a.id);
    let events = rib.take_events();
    let withdrawn = events
        .iter()
        .filter(|e| matches!(e, RouteEvent::Withdrawn { .. }))
        .count();
    assert_eq!(withdrawn, 2);
    assert!(rib.is_empty());
}

#[test]
fn rib_route_refresh_resends_what_was_sent() {
    let (mut rib, a) = rib_with_one_peer();
    originate_local(&mut rib, "10.244.0.0/26");
    assert_eq!(drain(&mut rib, &a).0.len(), 1);
    assert!(drain(&mut rib, &a).0.is_empty());
    rib.route_refresh(a.id, Afi::Ipv4Unicast);
    rib.flush();
    let batch = a.out.take_batch(usize::MAX);
    assert_eq!(batch.prefixes(), 1);
    assert_eq!(batch.end_of_rib, vec![Afi::Ipv4Unicast]);
}

fn restart_capability(preserved: bool) -> GracefulRestart {
    GracefulRestart {
        restarting: false,
        restart_time: 120,
        families: vec![(Afi::Ipv4Unicast, preserved)],
    }
}

#[test]
fn rib_graceful_restart_keeps_stale_routes_until_end_of_rib() {
    let mut rib = rib();
    let a = add(&mut rib, 2, LOCAL_AS, false);
    rib.peer_up(a.id, session(2, Some(restart_capability(true))));
    rib.update(
        a.id,
        &announce(&["10.1.0.0/24", "10.2.0.0/24"], &[], "192.168.0.2"),
    );
    rib.take_events();

    rib.peer_down(a.id, &[Afi::Ipv4Unicast]);
    assert_eq!(rib.len(), 2, "routes stay while the peer restarts");
    assert_eq!(rib.counts(a.id).stale, 2);
    assert!(rib.take_events().is_empty(), "forwarding is not disturbed");

    rib.peer_up(a.id, session(2, Some(restart_capability(true))));
    rib.update(a.id, &announce(&["10.1.0.0/24"], &[], "192.168.0.2"));
    assert_eq!(
        rib.counts(a.id).stale,
        1,
        "refreshed routes are no longer stale"
    );
    rib.update(a.id, &Update::end_of_rib_marker(Afi::Ipv4Unicast));
    assert_eq!(rib.len(), 1, "End-of-RIB sweeps what was not refreshed");
    assert!(rib.take_events().contains(&RouteEvent::Withdrawn {
        prefix: net("10.2.0.0/24")
    }));
}

#[test]
fn rib_graceful_restart_without_preserved_forwarding_flushes_at_once() {
    let mut rib = rib();
    let a = add(&mut rib, 2, LOCAL_AS, false);
    rib.peer_up(a.id, session(2, Some(restart_capability(true))));
    rib.update(a.id, &announce(&["10.1.0.0/24"], &[], "192.168.0.2"));
    rib.peer_down(a.id, &[Afi::Ipv4Unicast]);
    rib.peer_up(a.id, session(2, Some(restart_capability(false))));
    assert!(
        rib.is_empty(),
        "the F bit is clear: the peer lost its forwarding state"
    );

    // The restart timer running out flushes too.
    rib.update(a.id, &announce(&["10.1.0.0/24"], &[], "192.168.0.2"));
    rib.peer_down(a.id, &[Afi::Ipv4Unicast]);
    rib.flush_stale(a.id, None);
    assert!(rib.is_empty());
}

#[test]
fn rib_restarting_speaker_defers_selection_until_end_of_rib() {
    let mut rib = rib_with(Arc::new(AcceptAll), true);
    let a = add(&mut rib, 2, LOCAL_AS, false);
    let b = add(&mut rib, 3, LOCAL_AS, false);
    rib.peer_up(a.id, session(2, Some(restart_capability(true))));
    rib.peer_up(b.id, session(3, None));
    originate_local(&mut rib, "10.244.0.0/26");
    rib.update(a.id, &announce(&["10.1.0.0/24"], &[], "192.168.0.2"));
    assert!(rib.is_deferring());
    assert!(rib.take_events().is_empty(), "no best path while deferring");
    assert!(drain(&mut rib, &a).0.is_empty(), "nor any advertisement");

    rib.update(a.id, &Update::end_of_rib_marker(Afi::Ipv4Unicast));
    assert!(rib.is_deferring(), "IPv6 End-of-RIB still missing");
    rib.update(a.id, &Update::end_of_rib_marker(Afi::Ipv6Unicast));
    assert!(!rib.is_deferring());
    let events = rib.take_events();
    assert_eq!(events.last(), Some(&RouteEvent::Synced));
    assert_eq!(events.len(), 3, "two routes then Synced");
    rib.flush();
    let batch = b.out.take_batch(usize::MAX);
    assert_eq!(
        batch.prefixes(),
        1,
        "only our own route goes to the other iBGP peer"
    );
    assert_eq!(batch.end_of_rib.len(), 2, "followed by End-of-RIB");
}

#[test]
fn rib_route_events_are_recorded_only_while_asked_for() {
    let (mut rib, a) = rib_with_one_peer();
    rib.take_events();
    rib.record_route_events(false);
    rib.update(a.id, &announce(&["10.1.0.0/24"], &[], "192.168.0.2"));
    assert!(rib.take_events().is_empty(), "no events while off");
    assert_eq!(rib.len(), 1, "the route is in all the same");
    rib.record_route_events(true);
    rib.update(a.id, &announce(&["10.2.0.0/24"], &[], "192.168.0.2"));
    let events = rib.take_events();
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0], RouteEvent::Best { prefix, .. } if *prefix == net("10.2.0.0/24")));
}

#[test]
fn rib_a_peer_whose_own_path_wins_gets_the_other_path_withdrawn_and_back() {
    let mut rib = rib();
    let a = add(&mut rib, 2, 65010, false);
    let b = add(&mut rib, 3, 65020, false);
    up(&mut rib, &a, 2);
    up(&mut rib, &b, 3);
    let prefix = "10.7.0.0/24";
    // A's route goes to B.
    rib.update(a.id, &announce(&[prefix], &[65010, 65100], "192.168.0.2"));
    assert_eq!(drain(&mut rib, &b).0.len(), 1);
    assert!(drain(&mut rib, &a).0.is_empty());
    // B's shorter path wins: B must lose A's route (nothing goes back to B), A gets B's.
    rib.update(b.id, &announce(&[prefix], &[65020], "192.168.0.3"));
    assert_eq!(drain(&mut rib, &b), (vec![], vec![net(prefix)]));
    assert_eq!(drain(&mut rib, &a).0.len(), 1);
    // B withdraws: A's path is best again and goes back to B; A loses B's route.
    let mut withdraw = announce(&[], &[], "192.168.0.3");
    withdraw.withdrawn = vec![net(prefix)];
    rib.update(b.id, &withdraw);
    let (to_b, _) = drain(&mut rib, &b);
    assert_eq!(to_b.len(), 1);
    assert_eq!(to_b[0].1.neighbour_as(), Some(LOCAL_AS));
    assert_eq!(drain(&mut rib, &a), (vec![], vec![net(prefix)]));
    // A withdraws too: B loses the route; A, which was never sent its own, gets nothing.
    let mut withdraw = announce(&[], &[], "192.168.0.2");
    withdraw.withdrawn = vec![net(prefix)];
    rib.update(a.id, &withdraw);
    assert_eq!(drain(&mut rib, &b), (vec![], vec![net(prefix)]));
    assert_eq!(drain(&mut rib, &a), (vec![], vec![]));
}

#[test]
fn rib_an_ebgp_peer_that_keeps_next_hops_gets_learned_routes_unchanged() {
    let mut rib = rib();
    let node = add(&mut rib, 2, LOCAL_AS, true);
    let settings = PeerSettings {
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 9)),
        remote_as: 65010,
        local_as: None,
        rr_client: false,
        next_hop_self: false,
        next_hop_keep: true,
    };
    let (tor, tor_out) = rib.add_peer(settings.clone());
    let tor = Peer {
        id: tor,
        out: tor_out,
        address: settings.address,
    };
    let (plain, plain_out) = rib.add_peer(PeerSettings {
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 10)),
        next_hop_keep: false,
        ..settings
    });
    let plain = Peer {
        id: plain,
        out: plain_out,
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 10)),
    };
    up(&mut rib, &node, 2);
    up(&mut rib, &tor, 9);
    up(&mut rib, &plain, 10);
    rib.update(node.id, &announce(&["10.65.1.0/26"], &[], "192.168.0.2"));
    originate_local(&mut rib, "10.65.0.0/26");

    let (sent, _) = drain(&mut rib, &tor);
    let learned = sent
        .iter()
        .find(|(p, _)| *p == net("10.65.1.0/26"))
        .unwrap();
    assert_eq!(
        learned.1.next_hop_addr(),
        Some("192.168.0.2".parse().unwrap()),
        "the node's own next hop, not ours"
    );
    assert_eq!(
        learned.1.neighbour_as(),
        Some(LOCAL_AS),
        "still our AS first"
    );
    let own = sent
        .iter()
        .find(|(p, _)| *p == net("10.65.0.0/26"))
        .unwrap();
    assert_eq!(own.1.next_hop_addr(), Some("192.168.0.1".parse().unwrap()));

    let (sent, _) = drain(&mut rib, &plain);
    assert!(
        sent.iter()
            .all(|(_, a)| a.next_hop_addr() == Some("192.168.0.1".parse().unwrap())),
        "next hop self toward an ordinary eBGP peer: {sent:?}"
    );
}

/// The Loc-RIB's next hop for `prefix`, if it has a best path.
fn best_next_hop(rib: &Rib, prefix: &str) -> Option<IpAddr> {
    rib.best(&net(prefix)).and_then(|b| b.attrs.next_hop_addr())
}

#[test]
fn rib_a_path_whose_next_hop_is_not_connected_is_never_best() {
    let mut rib = rib();
    rib.set_connected(Some(vec![net("192.168.0.0/24")]));
    let ebgp = add(&mut rib, 2, 65002, false);
    let ibgp = add(&mut rib, 3, LOCAL_AS, false);
    up(&mut rib, &ebgp, 2);
    up(&mut rib, &ibgp, 3);
    rib.take_events();

    // Re-announced with an off-link next hop: the path is replaced, and nothing is left.
    rib.update(
        ebgp.id,
        &announce(&["10.77.205.0/24"], &[65002], "192.168.0.2"),
    );
    assert_eq!(best_next_hop(&rib, "10.77.205.0/24"), Some(ebgp.address));
    let (announced, _) = drain(&mut rib, &ibgp);
    assert_eq!(announced.len(), 1);
    rib.update(
        ebgp.id,
        &announce(&["10.77.205.0/24"], &[65002], "10.77.5.5"),
    );
    assert_eq!(best_next_hop(&rib, "10.77.205.0/24"), None);
    let events = rib.take_events();
    assert_eq!(
        events.last(),
        Some(&RouteEvent::Withdrawn {
            prefix: net("10.77.205.0/24")
        }),
        "{events:?}"
    );
    // Nor is it passed on.
    let (_, withdrawn) = drain(&mut rib, &ibgp);
    assert_eq!(withdrawn, vec![net("10.77.205.0/24")]);

    // A shorter eBGP path with an unusable next hop does not beat an iBGP one that works,
    // and when the iBGP path goes, nothing is left.
    rib.update(
        ibgp.id,
        &announce(&["10.77.206.0/24"], &[65100, 65101, 65102], "192.168.0.3"),
    );
    rib.update(
        ebgp.id,
        &announce(&["10.77.206.0/24"], &[65002], "10.77.5.5"),
    );
    assert_eq!(best_next_hop(&rib, "10.77.206.0/24"), Some(ibgp.address));
    let mut withdraw = Update::default();
    withdraw.withdrawn.push(net("10.77.206.0/24"));
    rib.update(ibgp.id, &withdraw);
    assert_eq!(best_next_hop(&rib, "10.77.206.0/24"), None);

    // Loopback and link-local next hops are never on a connected network the host has.
    rib.update(
        ebgp.id,
        &announce(&["10.77.207.0/24"], &[65002], "127.0.0.1"),
    );
    assert_eq!(best_next_hop(&rib, "10.77.207.0/24"), None);

    // When the next hop's network becomes connected, the path is eligible again, and goes
    // again when it is not.
    rib.set_connected(Some(vec![net("192.168.0.0/24"), net("10.77.5.0/24")]));
    assert_eq!(
        best_next_hop(&rib, "10.77.205.0/24"),
        Some("10.77.5.5".parse().unwrap())
    );
    rib.set_connected(Some(vec![net("192.168.0.0/24")]));
    assert_eq!(best_next_hop(&rib, "10.77.205.0/24"), None);
    // Without a connected set every next hop counts as resolvable.
    rib.set_connected(None);
    assert_eq!(
        best_next_hop(&rib, "10.77.205.0/24"),
        Some("10.77.5.5".parse().unwrap())
    );
}

/// Filters everything inside 10.65.0.0/16, counting it.
struct FilterPods;

impl Policy for FilterPods {
    fn import(&self, _peer: &PeerRef, prefix: IpNet, _attrs: &Attributes) -> Verdict {
        if net("10.65.0.0/16").contains(&prefix) {
            Verdict::Filter("pods")
        } else {
            Verdict::Accept
        }
    }
}

#[test]
fn rib_filtered_prefixes_are_counted_while_announced() {
    let mut rib = rib_with(Arc::new(FilterPods), false);
    let a = add(&mut rib, 2, 65002, false);
    up(&mut rib, &a, 2);
    let update = announce(
        &["10.65.1.0/26", "10.65.2.7/32", "192.0.2.0/24"],
        &[65002],
        "192.168.0.2",
    );
    rib.update(a.id, &update);
    let counts = rib.counts(a.id);
    assert_eq!(counts.received, 1);
    assert_eq!(counts.filtered.get("pods"), Some(&2));
    assert!(rib.best(&net("10.65.1.0/26")).is_none());
    // Announced again: still counted once; withdrawn: no longer counted.
    rib.update(a.id, &update);
    assert_eq!(rib.counts(a.id).filtered.get("pods"), Some(&2));
    let mut withdraw = Update::default();
    withdraw.withdrawn.push(net("10.65.1.0/26"));
    rib.update(a.id, &withdraw);
    assert_eq!(rib.counts(a.id).filtered.get("pods"), Some(&1));
    // The session ends: nothing is announced any more.
    rib.peer_down(a.id, &[]);
    assert!(rib.counts(a.id).filtered.is_empty());
}

#[test]
fn rib_a_withdrawn_table_is_compacted_once() {
    let (mut rib, a) = rib_with_one_peer();
    let prefixes: Vec<String> = (0..20_000u32)
        .map(|i| format!("{}/32", Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    for chunk in prefixes.chunks(500) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        rib.update(a.id, &announce(&chunk, &[LOCAL_AS + 1], "192.168.0.2"));
    }
    assert_eq!(rib.len(), 20_000);
    assert!(
        !rib.compact(),
        "nothing to give back while the table is held"
    );
    let withdraw = Update {
        withdrawn: prefixes.iter().map(|p| net(p)).collect(),
        ..Update::default()
    };
    rib.update(a.id, &withdraw);
    assert!(rib.is_empty());
    // What the speaker does with a batch before it compacts.
    rib.flush();
    rib.take_events();
    assert!(rib.compact());
    assert_eq!(rib.attribute_sets(), 0, "unused attribute sets are dropped");
    assert!(!rib.compact(), "compacted already");
    // The compacted RIB works as before.
    rib.update(
        a.id,
        &announce(&["10.77.1.0/24"], &[LOCAL_AS + 1], "192.168.0.2"),
    );
    assert!(rib.best(&net("10.77.1.0/24")).is_some());
}

/// The next hops of a best-path event: the best path's first, then the equal ones.
fn event_next_hops(event: &RouteEvent) -> Vec<IpAddr> {
    let RouteEvent::Best { path, .. } = event else {
        return Vec::new();
    };
    std::iter::once(path)
        .chain(path.multipath.iter())
        .filter_map(|p| p.attrs.next_hop_addr())
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn rib_multipath_events_follow_the_equal_paths_while_peers_hear_the_best_only() {
    let mut config = RibConfig::new(LOCAL_AS, ROUTER_ID);
    config.max_paths = 8;
    let mut rib = Rib::new(config, Arc::new(AcceptAll));
    let node = add(&mut rib, 9, LOCAL_AS, false);
    up(&mut rib, &node, 9);
    // Three ToRs in their own ASes announcing one anycast prefix with equal paths.
    let tors: Vec<Peer> = (2..5)
        .map(|n| add(&mut rib, n, 65000 + u32::from(n), false))
        .collect();
    for (tor, n) in tors.iter().zip(2u8..) {
        up(&mut rib, tor, n);
    }
    rib.take_events();
    let prefix = "10.99.0.0/24";
    let announce_from = |rib: &mut Rib, tor: &Peer, n: u8| {
        let path = [65000 + u32::from(n)];
        rib.update(
            tor.id,
            &announce(&[prefix], &path, &format!("192.168.0.{n}")),
        );
    };
    announce_from(&mut rib, &tors[0], 2);
    drain(&mut rib, &node);
    rib.take_events();
    announce_from(&mut rib, &tors[1], 3);
    let events = rib.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        event_next_hops(&events[0]),
        [ip("192.168.0.2"), ip("192.168.0.3")]
    );
    let (sent, withdrawn) = drain(&mut rib, &node);
    assert!(
        sent.is_empty() && withdrawn.is_empty(),
        "the best path did not change, so the node hears nothing: {sent:?}"
    );
    announce_from(&mut rib, &tors[2], 4);
    let events = rib.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(event_next_hops(&events[0]).len(), 3);
    assert_eq!(
        rib.best(&net(prefix)).map(|b| b.multipath.len()),
        Some(2),
        "the Loc-RIB reads the same"
    );
    // A member going away shrinks the set, still without a word to the peers.
    rib.update(
        tors[1].id,
        &Update {
            withdrawn: vec![net(prefix)],
            attributes: PathAttributes::default(),
            nlri: vec![],
        },
    );
    let events = rib.take_events();
    assert_eq!(
        event_next_hops(&events[0]),
        [ip("192.168.0.2"), ip("192.168.0.4")]
    );
    let (sent, _) = drain(&mut rib, &node);
    assert!(sent.is_empty());
    // The best one going away: a new best, which the peers hear.
    rib.peer_down(tors[0].id, &[]);
    let events = rib.take_events();
    assert_eq!(event_next_hops(&events[0]), [ip("192.168.0.4")]);
    let (sent, _) = drain(&mut rib, &node);
    assert_eq!(sent.len(), 1);
    // A longer AS path from the returning ToR is not merged.
    rib.peer_up(tors[0].id, session(2, None));
    rib.update(
        tors[0].id,
        &announce(&[prefix], &[65002, 65002], "192.168.0.2"),
    );
    let events = rib.take_events();
    assert!(
        events.is_empty(),
        "nothing changed for the forwarding: {events:?}"
    );
    assert_eq!(rib.best(&net(prefix)).map(|b| b.multipath.len()), Some(0));
}

#[test]
fn rib_multipath_is_off_with_one_path() {
    let mut rib = rib();
    let a = add(&mut rib, 2, 65002, false);
    let b = add(&mut rib, 3, 65003, false);
    up(&mut rib, &a, 2);
    up(&mut rib, &b, 3);
    rib.update(a.id, &announce(&["10.99.0.0/24"], &[65002], "192.168.0.2"));
    rib.update(b.id, &announce(&["10.99.0.0/24"], &[65003], "192.168.0.3"));
    let best = rib.best(&net("10.99.0.0/24")).expect("a best path");
    assert!(best.multipath.is_empty());
}

#[test]
fn rib_a_peer_with_its_own_local_as_hears_that_as_and_loops_on_it() {
    let mut rib = rib();
    // The session speaks AS 65001 toward a peer in AS 65001: iBGP, however the RIB's AS.
    let settings = |n: u8, remote_as: u32| PeerSettings {
        address: IpAddr::V4(Ipv4Addr::new(192, 168, 0, n)),
        remote_as,
        local_as: Some(65001),
        rr_client: false,
        next_hop_self: false,
        next_hop_keep: false,
    };
    let (tor_id, tor_out) = rib.add_peer(settings(2, 65010));
    let (same_id, same_out) = rib.add_peer(settings(3, 65001));
    let tor = Peer {
        id: tor_id,
        out: tor_out,
        address: ip("192.168.0.2"),
    };
    let same = Peer {
        id: same_id,
        out: same_out,
        address: ip("192.168.0.3"),
    };
    up(&mut rib, &tor, 2);
    up(&mut rib, &same, 3);
    originate_local(&mut rib, "10.9.0.0/24");
    let (to_tor, _) = drain(&mut rib, &tor);
    let (_, sent) = &to_tor[0];
    assert_eq!(
        sent.neighbour_as(),
        Some(65001),
        "the session's AS, not the RIB's"
    );
    assert_eq!(sent.as_path_len(), 1);
    let (to_same, _) = drain(&mut rib, &same);
    let (_, sent) = &to_same[0];
    assert_eq!(
        sent.as_path_len(),
        0,
        "iBGP by the session's AS: nothing prepended"
    );
    assert_eq!(sent.local_pref, Some(100));

    rib.update(tor.id, &announce(&["10.1.0.0/24"], &[65010], "192.168.0.2"));
    rib.update(
        tor.id,
        &announce(&["10.2.0.0/24"], &[65010, 65001], "192.168.0.2"),
    );
    rib.update(
        tor.id,
        &announce(&["10.3.0.0/24"], &[65010, LOCAL_AS], "192.168.0.2"),
    );
    assert!(rib.best(&net("10.1.0.0/24")).is_some());
    assert!(
        rib.best(&net("10.2.0.0/24")).is_none(),
        "the session's AS on the path is a loop"
    );
    assert!(
        rib.best(&net("10.3.0.0/24")).is_none(),
        "and so is the RIB's"
    );
    let best = rib.best(&net("10.1.0.0/24")).expect("imported");
    assert!(matches!(
        best.source,
        Source::Peer(PeerRef {
            local_as: 65001,
            ibgp: false,
            ..
        })
    ));
}

#[test]
fn rib_reflector_clients_share_one_update_group_and_none_gets_its_own_route_back() {
    let mut rib = rib();
    let clients: Vec<Peer> = (2..=4).map(|n| add(&mut rib, n, LOCAL_AS, true)).collect();
    let non_client = add(&mut rib, 5, LOCAL_AS, false);
    for (n, client) in (2..).zip(&clients) {
        up(&mut rib, client, n);
    }
    up(&mut rib, &non_client, 5);
    assert_eq!(rib.update_groups(), 2, "the clients, and the non-client");
    let prefix = "10.7.0.0/24";
    let originator = |sent: &[(IpNet, Arc<Attributes>)]| {
        let ids: Vec<_> = sent.iter().map(|(_, a)| a.originator_id).collect();
        ids
    };
    rib.update(clients[0].id, &announce(&[prefix], &[], "192.168.0.2"));
    assert_eq!(drain(&mut rib, &clients[0]), (vec![], vec![]));
    for peer in [&clients[1], &clients[2], &non_client] {
        let (sent, _) = drain(&mut rib, peer);
        assert_eq!(originator(&sent), vec![Some(Ipv4Addr::new(10, 0, 0, 2))]);
    }
    // Client 2's path wins: client 1 gets it, client 2 loses client 1's route.
    let mut preferred = announce(&[prefix], &[], "192.168.0.3");
    preferred.attributes.local_pref = Some(200);
    rib.update(clients[1].id, &preferred);
    assert_eq!(drain(&mut rib, &clients[1]), (vec![], vec![net(prefix)]));
    for peer in [&clients[0], &clients[2]] {
        let (sent, withdrawn) = drain(&mut rib, peer);
        assert_eq!(originator(&sent), vec![Some(Ipv4Addr::new(10, 0, 0, 3))]);
        assert!(withdrawn.is_empty());
    }
    // Client 2 withdraws: client 1's path is back, for client 2 and not for client 1.
    let withdraw = Update {
        withdrawn: vec![net(prefix)],
        ..Update::default()
    };
    rib.update(clients[1].id, &withdraw);
    assert_eq!(drain(&mut rib, &clients[0]), (vec![], vec![net(prefix)]));
    assert_eq!(drain(&mut rib, &clients[1]).0.len(), 1);
    assert_eq!(drain(&mut rib, &clients[2]).0.len(), 1);
    // Client 1 withdraws: the others lose it; client 1, never sent its own, hears nothing.
    rib.update(clients[0].id, &withdraw);
    assert_eq!(drain(&mut rib, &clients[0]), (vec![], vec![]));
    for peer in [&clients[1], &clients[2], &non_client] {
        assert_eq!(drain(&mut rib, peer), (vec![], vec![net(prefix)]));
    }
    for peer in &clients {
        assert_eq!(rib.counts(peer.id).sent, 0);
    }
    // A route a reflector of another cluster reflected from client 3 (its ORIGINATOR_ID)
    // goes to every client but client 3 (RFC 4456 §8).
    let mut reflected = announce(&["10.8.0.0/24"], &[], "192.168.0.4");
    reflected.attributes.originator_id = Some(Ipv4Addr::new(10, 0, 0, 4));
    reflected.attributes.cluster_list = vec![Ipv4Addr::new(10, 255, 0, 1)];
    rib.update(non_client.id, &reflected);
    assert_eq!(drain(&mut rib, &clients[0]).0.len(), 1);
    assert_eq!(drain(&mut rib, &clients[1]).0.len(), 1);
    assert_eq!(drain(&mut rib, &clients[2]), (vec![], vec![]));
    // A client whose session comes up now gets exactly the table, from the same group.
    let late = add(&mut rib, 6, LOCAL_AS, true);
    up(&mut rib, &late, 6);
    assert_eq!(rib.update_groups(), 2);
    let (sent, withdrawn) = drain(&mut rib, &late);
    assert_eq!(
        sent.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![net("10.8.0.0/24")]
    );
    assert!(withdrawn.is_empty());
    assert_eq!(rib.counts(late.id).sent, 1);
    // A session that ends leaves the group to the others.
    rib.peer_down(clients[0].id, &[]);
    assert_eq!(rib.update_groups(), 2);
    rib.peer_down(non_client.id, &[]);
    assert_eq!(
        rib.update_groups(),
        1,
        "the non-client's group went with it"
    );
}

#[test]
fn rib_peers_under_a_policy_without_export_classes_have_groups_of_their_own() {
    let mut rib = rib_with(Arc::new(TagAndFilter), false);
    let peers: Vec<Peer> = (2..=4).map(|n| add(&mut rib, n, LOCAL_AS, true)).collect();
    for (n, peer) in (2..).zip(&peers) {
        up(&mut rib, peer, n);
    }
    assert_eq!(rib.update_groups(), 3);
    originate_local(&mut rib, "10.244.1.7/32");
    for peer in &peers {
        let (sent, _) = drain(&mut rib, peer);
        assert_eq!(sent[0].1.communities, vec![0xfde8_0020]);
    }
}

#[test]
fn rib_a_peer_whose_settings_change_mid_session_gets_its_new_groups_table() {
    let mut rib = rib();
    let source = add(&mut rib, 2, LOCAL_AS, false);
    let peer = add(&mut rib, 3, LOCAL_AS, false);
    up(&mut rib, &source, 2);
    up(&mut rib, &peer, 3);
    rib.update(source.id, &announce(&["10.7.0.0/24"], &[], "192.168.0.2"));
    originate_local(&mut rib, "10.244.0.0/26");
    assert_eq!(
        drain(&mut rib, &peer).0.len(),
        1,
        "a non-client: our own route only"
    );
    let settings = |rr_client| PeerSettings {
        address: peer.address,
        remote_as: LOCAL_AS,
        local_as: None,
        rr_client,
        next_hop_self: false,
        next_hop_keep: false,
    };
    // Made a client: the non-client's route is reflected to it now.
    rib.set_peer_settings(peer.id, settings(true));
    assert_eq!(rib.update_groups(), 2);
    let (sent, withdrawn) = drain(&mut rib, &peer);
    let mut prefixes: Vec<IpNet> = sent.iter().map(|(p, _)| *p).collect();
    prefixes.sort();
    assert_eq!(prefixes, vec![net("10.7.0.0/24"), net("10.244.0.0/26")]);
    assert!(withdrawn.iter().all(|p| prefixes.contains(p)));
    assert_eq!(rib.counts(peer.id).sent, 2);
    // And back: the reflected route is withdrawn, our own stays.
    rib.set_peer_settings(peer.id, settings(false));
    assert_eq!(rib.update_groups(), 1);
    drain(&mut rib, &peer);
    assert_eq!(rib.counts(peer.id).sent, 1);
    rib.withdraw(net("10.244.0.0/26"));
    assert_eq!(drain(&mut rib, &peer), (vec![], vec![net("10.244.0.0/26")]));
    assert_eq!(rib.counts(peer.id).sent, 0);
}
