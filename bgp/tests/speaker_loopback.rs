//! Two wren speakers talking over loopback, on free ports of 127.0.0.1, in one process.

mod speaker_common;

use std::time::Duration;

use speaker_common::*;
use wren_bgp::fsm::State;
use wren_bgp::rib::{RouteAttributes, RouteEvent, Source};

#[tokio::test]
async fn speaker_routes_flow_both_ways_and_go_with_the_peer() {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    let mut b_routes = b.subscribe().await.unwrap();
    a.add_peer(peer_to(&b, AS)).await.unwrap();
    b.add_peer(peer_to(&a, AS)).await.unwrap();
    a.originate(net("10.1.0.0/24"), None).await.unwrap();
    a.originate(net("2001:db8:1::/48"), None).await.unwrap();
    b.originate(net("10.2.0.0/24"), None).await.unwrap();

    eventually("both sessions established", || async {
        established(&a).await && established(&b).await
    })
    .await;
    eventually("B learns A's prefixes", || async {
        has_route(&b, net("10.1.0.0/24")).await && has_route(&b, net("2001:db8:1::/48")).await
    })
    .await;
    eventually("A learns B's prefix", || async {
        has_route(&a, net("10.2.0.0/24")).await
    })
    .await;

    // Next hop self: A's address on the session for IPv4, its configured IPv6 self address.
    let rib = b.loc_rib().await.unwrap();
    let (_, v4) = rib.iter().find(|(p, _)| *p == net("10.1.0.0/24")).unwrap();
    assert_eq!(v4.attrs.next_hop_addr(), Some(LOOPBACK));
    assert_eq!(v4.attrs.local_pref, Some(100));
    assert!(matches!(&v4.source, Source::Peer(p) if p.address == LOOPBACK && p.ibgp));
    let (_, v6) = rib
        .iter()
        .find(|(p, _)| *p == net("2001:db8:1::/48"))
        .unwrap();
    assert_eq!(
        v6.attrs.next_hop_addr(),
        Some("2001:db8:ffff::1".parse().unwrap())
    );

    let status = b.peer(LOOPBACK).await.unwrap();
    assert_eq!(status.prefixes_received, 2);
    assert_eq!(status.prefixes_sent, 1);

    a.withdraw(net("10.1.0.0/24")).await.unwrap();
    expect_event(
        &mut b_routes,
        |e| matches!(e, RouteEvent::Withdrawn { prefix } if *prefix == net("10.1.0.0/24")),
    )
    .await;
    assert!(has_route(&b, net("2001:db8:1::/48")).await);

    b.remove_peer(LOOPBACK).await.unwrap();
    assert!(
        !has_route(&b, net("2001:db8:1::/48")).await,
        "removal clears the peer's routes"
    );
    eventually("A sees the session go and drops B's routes", || async {
        !established(&a).await && !has_route(&a, net("10.2.0.0/24")).await
    })
    .await;
    let down = a.peer(LOOPBACK).await.unwrap();
    assert!(
        down.last_error
            .as_deref()
            .is_some_and(|e| e.contains("PeerDeconfigured")),
        "A was told why: {:?}",
        down.last_error
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn speaker_ebgp_prepends_and_detects_loops() {
    let a = speaker(1, 65001).await;
    let b = speaker(2, 65002).await;
    a.add_peer(peer_to(&b, 65002)).await.unwrap();
    b.add_peer(peer_to(&a, 65001)).await.unwrap();
    a.originate(net("10.1.0.0/24"), None).await.unwrap();
    eventually("B learns A's prefix over eBGP", || async {
        has_route(&b, net("10.1.0.0/24")).await
    })
    .await;
    let rib = b.loc_rib().await.unwrap();
    let (_, path) = rib.iter().find(|(p, _)| *p == net("10.1.0.0/24")).unwrap();
    assert_eq!(path.attrs.neighbour_as(), Some(65001));
    assert_eq!(
        path.attrs.local_pref, None,
        "LOCAL_PREF does not cross AS borders"
    );
    // B does not send A's route back to A: A's own AS is in the path.
    let status = a.peer(LOOPBACK).await.unwrap();
    assert_eq!(status.prefixes_received, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn speaker_a_peers_own_local_as_is_what_the_peer_sees() {
    // A speaks AS 65001 but 4200000001 (AS_TRANS in its OPEN's 2-octet field) toward B,
    // which expects that AS.
    let a = speaker(1, 65001).await;
    let b = speaker(2, 65002).await;
    let mut to_b = peer_to(&b, 65002);
    to_b.local_as = Some(4_200_000_001);
    a.add_peer(to_b).await.unwrap();
    b.add_peer(peer_to(&a, 4_200_000_001)).await.unwrap();
    a.originate(net("10.1.0.0/24"), None).await.unwrap();
    eventually("B learns A's prefix from AS 4200000001", || async {
        has_route(&b, net("10.1.0.0/24")).await
    })
    .await;
    let rib = b.loc_rib().await.unwrap();
    let (_, path) = rib.iter().find(|(p, _)| *p == net("10.1.0.0/24")).unwrap();
    assert_eq!(path.attrs.neighbour_as(), Some(4_200_000_001));
    assert_eq!(path.attrs.as_path_len(), 1, "the session's AS alone");
    let status = a.peer(LOOPBACK).await.unwrap();
    assert_eq!(status.local_as, 4_200_000_001);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Whether this kernel lets a socket carry a TCP MD5 key.
fn md5_supported() -> bool {
    let Ok(socket) = std::net::TcpListener::bind((LOOPBACK, 0)) else {
        return false;
    };
    let key = Some(&b"probe"[..]);
    wren_bgp::speaker::socket::set_md5(socket2::SockRef::from(&socket), LOOPBACK, key).is_ok()
}

#[tokio::test]
async fn speaker_md5_matching_passwords_up_mismatching_not() {
    if !md5_supported() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kernel lacks TCP MD5"
        );
        println!("skipped: this kernel does not support TCP MD5 signatures");
        return;
    }
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    let mut to_b = peer_to(&b, AS);
    to_b.password = Some("wren-secret".into());
    let mut to_a = peer_to(&a, AS);
    to_a.password = Some("wren-secret".into());
    a.add_peer(to_b).await.unwrap();
    b.add_peer(to_a).await.unwrap();
    eventually("MD5 session with matching keys", || async {
        established(&a).await && established(&b).await
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    let c = speaker(3, AS).await;
    let d = speaker(4, AS).await;
    let mut to_d = peer_to(&d, AS);
    to_d.password = Some("one".into());
    let mut to_c = peer_to(&c, AS);
    to_c.password = Some("another".into());
    c.add_peer(to_d).await.unwrap();
    d.add_peer(to_c).await.unwrap();
    // Segments with a wrong signature are dropped by the kernel: no connection completes, so
    // neither side ever gets past Connect/Active. Several connect retries fit in this window.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for speaker in [&c, &d] {
            let state = state_of(speaker).await;
            assert!(
                matches!(state, State::Idle | State::Connect | State::Active),
                "mismatched MD5 keys reached {state}"
            );
        }
    }
    // The status says what a mismatch looks like, on a side that tried to connect.
    let mut errors = Vec::new();
    for speaker in [&c, &d] {
        errors.push(speaker.peer(LOOPBACK).await.unwrap().last_error);
    }
    assert!(
        errors
            .iter()
            .flatten()
            .any(|e| e.contains("TCP MD5") && e.contains("password mismatch")),
        "{errors:?}"
    );
    c.shutdown().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn speaker_hold_timer_expires_when_the_peer_freezes() {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    // A waits for B; B reaches A only through the relay.
    let relay = peer_through_relay(&a, &b, |peer| peer.hold_time = 3).await;
    b.originate(net("10.2.0.0/24"), None).await.unwrap();
    eventually("A learns B's prefix through the relay", || async {
        has_route(&a, net("10.2.0.0/24")).await
    })
    .await;

    relay.freeze();
    eventually("A's hold timer expires and B's route goes", || async {
        let status = a.peer(LOOPBACK).await.unwrap();
        status.state != State::Established && !has_route(&a, net("10.2.0.0/24")).await
    })
    .await;
    let status = a.peer(LOOPBACK).await.unwrap();
    assert_eq!(status.last_error.as_deref(), Some("hold timer expired"));
    eventually("B's hold timer expires too", || async {
        let status = b.peer(LOOPBACK).await.unwrap();
        status.last_error.as_deref() == Some("hold timer expired")
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Waits for the next session change `changes` reports, then returns A's session with B.
async fn next_change(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    speaker: &wren_bgp::speaker::SpeakerHandle,
) -> wren_bgp::speaker::PeerStatus {
    tokio::time::timeout(PATIENCE, changes.changed())
        .await
        .expect("a session change is reported")
        .expect("the speaker runs");
    speaker.peer(LOOPBACK).await.unwrap()
}

#[tokio::test]
async fn session_changes_are_pushed_as_they_happen() {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    let mut changes = a.session_changes();
    changes.mark_unchanged();
    a.add_peer(peer_to(&b, AS)).await.unwrap();
    // Adding the peer is told (the session may already be trying to connect when read).
    assert_ne!(
        next_change(&mut changes, &a).await.state,
        State::Established
    );
    b.add_peer(peer_to(&a, AS)).await.unwrap();
    // Every transition up to Established is told: no status read on a timer is needed.
    let mut seen = Vec::new();
    while seen.last() != Some(&State::Established) {
        let state = next_change(&mut changes, &a).await.state;
        if seen.last() != Some(&state) {
            seen.push(state);
        }
    }
    assert!(
        seen.len() >= 2,
        "the session went up without the steps told: {seen:?}"
    );
    // End-of-RIB from B is a change too: it is what tells the agent the peer is synced.
    let synced = loop {
        let status = next_change(&mut changes, &a).await;
        if !status.end_of_rib_received.is_empty() {
            break status;
        }
    };
    assert_eq!(synced.state, State::Established);
    // Routes alone are not session changes.
    b.originate(net("10.2.0.0/24"), None).await.unwrap();
    eventually("A learns B's prefix", || async {
        has_route(&a, net("10.2.0.0/24")).await
    })
    .await;
    assert!(
        !changes.has_changed().unwrap(),
        "a route counted as a session change"
    );
    // The session going down is told, with its reason.
    b.remove_peer(LOOPBACK).await.unwrap();
    let down = loop {
        let status = next_change(&mut changes, &a).await;
        if status.state != State::Established {
            break status;
        }
    };
    assert!(down.last_error.is_some(), "no reason given: {down:?}");
    a.remove_peer(LOOPBACK).await.unwrap();
    assert!(
        changes.has_changed().unwrap(),
        "removing a peer is a change"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A's session with B as soon as it is Established (polled every millisecond).
async fn first_established(speaker: &wren_bgp::speaker::SpeakerHandle) -> std::time::Instant {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let status = speaker.peer(LOOPBACK).await.unwrap();
            if status.state == State::Established {
                return status.since;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("a session comes up")
}

/// Best-path events for `prefix` among whatever the subscription delivers within a short while.
async fn events_for(
    sub: &mut wren_bgp::speaker::Subscription,
    prefix: ipnet::IpNet,
) -> Vec<RouteEvent> {
    let mut events = Vec::new();
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await {
        events.extend(batch.into_iter().filter(|e| match e {
            RouteEvent::Best { prefix: p, .. } | RouteEvent::Withdrawn { prefix: p } => {
                *p == prefix
            }
            RouteEvent::Synced => false,
        }));
    }
    events
}

/// Two nodes of a full mesh start together and both connect (graceful restart on, as the
/// agent runs them). The collision must not end the first session that comes up: the
/// connection that loses is closed with Cease / Connection Collision Resolution (RFC 4271
/// §6.8), and RFC 4724 §4.2's "a new OPEN while Established means the peer restarted" is
/// for a connection the peer opens after the session is up, which neither did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_both_connecting_keeps_the_first_session_up() {
    first_session_stays_up(true).await;
}

/// The same with the peers added at once and no gate: whether both connections meet depends
/// on timing (one side may refuse the other's connection, not knowing it yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_added_together_keep_the_first_session_up() {
    first_session_stays_up(false).await;
}

/// Starts two speakers that connect to each other, `gated`: through gates opened together
/// once both have sent their OPENs. Checks that the first session stays up.
async fn first_session_stays_up(gated: bool) {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    let (a_prefix, b_prefix) = (net("10.1.0.0/24"), net("10.2.0.0/24"));
    a.originate(a_prefix, None).await.unwrap();
    b.originate(b_prefix, None).await.unwrap();
    let mut a_routes = a.subscribe().await.unwrap();
    let mut b_routes = b.subscribe().await.unwrap();
    // Each connects through a gate in front of the other, held until both are connected
    // (to the gate) with their OPENs sent; then both connections reach their peers at once.
    let (mut to_b, mut to_a) = (peer_to(&b, AS), peer_to(&a, AS));
    // Kept to the end: a gate passes connections on only while it lives.
    let mut gates = Vec::new();
    if gated {
        let (gate_a, gate_b) = (
            Gate::start(a.local_addr().unwrap()).await,
            Gate::start(b.local_addr().unwrap()).await,
        );
        to_b.port = gate_b.port;
        to_a.port = gate_a.port;
        a.add_peer(to_b).await.unwrap();
        b.add_peer(to_a).await.unwrap();
        eventually("both connected, OPENs sent", || async {
            state_of(&a).await == State::OpenSent && state_of(&b).await == State::OpenSent
        })
        .await;
        gate_a.open();
        gate_b.open();
        gates.extend([gate_a, gate_b]);
    } else {
        let (added_b, added_a) = tokio::join!(a.add_peer(to_b), b.add_peer(to_a));
        added_b.unwrap();
        added_a.unwrap();
    }

    let (a_up, b_up) = tokio::join!(first_established(&a), first_established(&b));
    eventually("each learns the other's prefix", || async {
        has_route(&a, b_prefix).await && has_route(&b, a_prefix).await
    })
    .await;
    // A flap shows within milliseconds; this is well past the 500 ms idle hold it leaves
    // behind, so a second session would be up again by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (name, speaker, up) in [("A", &a, a_up), ("B", &b, b_up)] {
        let status = speaker.peer(LOOPBACK).await.unwrap();
        assert_eq!(status.state, State::Established, "{name}");
        assert_eq!(
            status.since, up,
            "{name}: the first session went down and another came up"
        );
        assert_eq!(
            status.last_error, None,
            "{name}: a session went down or failed"
        );
        assert_eq!(status.prefixes_stale, 0, "{name}: routes kept stale");
        assert_eq!(status.prefixes_received, 1, "{name}");
    }
    for (name, sub, prefix) in [
        ("A", &mut a_routes, b_prefix),
        ("B", &mut b_routes, a_prefix),
    ] {
        let events = events_for(sub, prefix).await;
        assert!(
            matches!(events.as_slice(), [RouteEvent::Best { .. }]),
            "{name}: the peer's route learned once and kept: {events:?}"
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop(gates);
}
