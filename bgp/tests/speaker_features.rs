//! Speaker features over loopback: graceful restart (receiving side), route reflection
//! between three speakers, peer reconfiguration at run time, BFD taking a session down and
//! holding it, and two speakers started together (one before the other listens, or before it
//! knows the first).

mod speaker_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use speaker_common::*;
use wren_bgp::rib::{RouteAttributes, RouteEvent, Source};
use wren_bgp::speaker::{GracefulRestartConfig, SpeakerHandle, Subscription};

/// Whatever the subscription delivers within a short while.
async fn pending_events(sub: &mut Subscription) -> Vec<RouteEvent> {
    let mut events = Vec::new();
    while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
        events.extend(batch);
    }
    events
}

async fn stale(speaker: &SpeakerHandle) -> usize {
    speaker.peer(LOOPBACK).await.expect("peer").prefixes_stale
}

#[tokio::test]
async fn speaker_graceful_restart_keeps_routes_across_a_lost_connection() {
    // A advertises a 4 s restart time and that it keeps its forwarding state.
    let a = speaker_with(1, AS, |c| {
        c.graceful_restart = Some(GracefulRestartConfig {
            restart_time: 4,
            forwarding_preserved: true,
            ..GracefulRestartConfig::default()
        });
    })
    .await;
    let b = speaker(2, AS).await;
    let relay = peer_through_relay(&a, &b, |_| {}).await;
    a.originate(net("10.1.0.0/24"), None).await.unwrap();
    eventually("B learns A's prefix", || async {
        has_route(&b, net("10.1.0.0/24")).await
    })
    .await;
    let mut routes = b.subscribe().await.unwrap();
    pending_events(&mut routes).await;

    // The connection dies without a NOTIFICATION: A's routes stay, marked stale.
    relay.set_accepting(false);
    relay.cut();
    eventually("B keeps A's route as stale", || async {
        stale(&b).await == 1
    })
    .await;
    assert!(has_route(&b, net("10.1.0.0/24")).await);

    // A comes back in time: the route is refreshed, never withdrawn.
    relay.set_accepting(true);
    eventually("session back and route fresh", || async {
        established(&b).await && stale(&b).await == 0 && has_route(&b, net("10.1.0.0/24")).await
    })
    .await;
    let events = pending_events(&mut routes).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RouteEvent::Withdrawn { .. })),
        "a graceful restart must not disturb forwarding: {events:?}"
    );

    // A does not come back: its routes go when the restart time runs out.
    relay.set_accepting(false);
    relay.cut();
    eventually("B keeps A's route as stale again", || async {
        stale(&b).await == 1
    })
    .await;
    expect_event(
        &mut routes,
        |e| matches!(e, RouteEvent::Withdrawn { prefix } if *prefix == net("10.1.0.0/24")),
    )
    .await;
    assert_eq!(stale(&b).await, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A speaker listening on 127.0.0.`n`.
async fn speaker_on(n: u8) -> SpeakerHandle {
    let address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
    speaker_with(n, AS, |c| c.listen = Some(SocketAddr::new(address, 0))).await
}

#[tokio::test]
async fn speaker_reflects_routes_between_clients() {
    let reflector = speaker_on(1).await;
    let b = speaker_on(2).await;
    let c = speaker_on(3).await;
    for client in [&b, &c] {
        let mut entry = peer_to(client, AS);
        entry.rr_client = true;
        reflector.add_peer(entry).await.unwrap();
        client.add_peer(peer_to(&reflector, AS)).await.unwrap();
    }
    b.originate(net("10.2.0.0/24"), None).await.unwrap();
    eventually("C learns B's prefix through the reflector", || async {
        has_route(&c, net("10.2.0.0/24")).await
    })
    .await;
    let rib = c.loc_rib().await.unwrap();
    let (_, path) = rib.iter().find(|(p, _)| *p == net("10.2.0.0/24")).unwrap();
    assert_eq!(path.attrs.originator_id, Some(Ipv4Addr::new(10, 255, 0, 2)));
    assert_eq!(path.attrs.cluster_list, vec![Ipv4Addr::new(10, 255, 0, 1)]);
    assert_eq!(
        path.attrs.next_hop_addr(),
        Some("127.0.0.2".parse().unwrap()),
        "a reflector leaves the next hop alone"
    );
    assert!(matches!(&path.source, Source::Peer(p) if p.address == LOOPBACK));
    // B does not get its own route back: the reflector skips the originator.
    let b_status = b.peer(LOOPBACK).await.unwrap();
    assert_eq!(b_status.prefixes_received, 0);
    for speaker in [&reflector, &b, &c] {
        speaker.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn speaker_reconfigured_peer_restarts_its_session() {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    let to_b = peer_to(&b, AS);
    a.add_peer(to_b.clone()).await.unwrap();
    b.add_peer(peer_to(&a, AS)).await.unwrap();
    eventually("session up", || async {
        established(&a).await && established(&b).await
    })
    .await;
    assert!(
        a.add_peer(to_b.clone()).await.is_err(),
        "a peer is configured once"
    );

    let mut changed = to_b;
    changed.hold_time = 6;
    a.update_peer(changed).await.unwrap();
    eventually("B was told why the session restarted", || async {
        let status = b.peer(LOOPBACK).await.unwrap();
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("OtherConfigurationChange"))
    })
    .await;
    eventually("session up with the new hold time", || async {
        let status = a.peer(LOOPBACK).await.unwrap();
        status.negotiated.is_some_and(|n| n.hold_time == 6)
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn speaker_bfd_down_drops_the_session_and_its_routes_at_once_and_holds_it() {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    // Both connect: the startup collision leaves one session, which stays up.
    a.add_peer(peer_to(&b, AS)).await.unwrap();
    b.add_peer(peer_to(&a, AS)).await.unwrap();
    let prefix = net("10.9.0.0/24");
    b.originate(prefix, None).await.unwrap();
    eventually("A has B's route", || has_route(&a, prefix)).await;

    // The hold time is 9 s and graceful restart is on: only BFD can make this quick.
    a.set_bfd(LOOPBACK, false).await.unwrap();
    eventually("the route gone from A", || async {
        !has_route(&a, prefix).await
    })
    .await;
    let status = a.peer(LOOPBACK).await.unwrap();
    assert!(status.bfd_down);
    assert_eq!(status.state, wren_bgp::fsm::State::Idle);
    assert_eq!(
        status.prefixes_stale, 0,
        "nothing kept for graceful restart"
    );
    eventually("B told why: Cease / BFD Down", || async {
        let status = b.peer(LOOPBACK).await.unwrap();
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("BfdDown"))
    })
    .await;

    // B reconnects every idle hold (500 ms); A refuses while BFD is down.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state_of(&a).await, wren_bgp::fsm::State::Idle);
    assert!(!has_route(&a, prefix).await);

    a.set_bfd(LOOPBACK, true).await.unwrap();
    eventually("session back", || established(&a)).await;
    eventually("route back", || has_route(&a, prefix)).await;
    assert!(!a.peer(LOOPBACK).await.unwrap().bfd_down);
    assert!(
        a.set_bfd("10.0.0.99".parse().unwrap(), false)
            .await
            .is_err()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// BFD Down while the session is not up but graceful restart still holds the peer's routes
/// as stale (its connection was lost and it cannot reconnect) withdraws them at once, not
/// after the peer's 120 s restart time.
#[tokio::test]
async fn speaker_bfd_down_withdraws_routes_kept_for_a_graceful_restart() {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    // Only B connects, through the relay, so that cutting it ends the one connection.
    let relay = peer_through_relay(&a, &b, |_| {}).await;
    let prefix = net("10.9.0.0/24");
    b.originate(prefix, None).await.unwrap();
    eventually("A has B's route", || has_route(&a, prefix)).await;

    relay.set_accepting(false);
    relay.cut();
    eventually("A keeps B's route as stale", || async {
        stale(&a).await == 1
    })
    .await;
    assert_ne!(state_of(&a).await, wren_bgp::fsm::State::Established);

    a.set_bfd(LOOPBACK, false).await.unwrap();
    eventually("the stale route gone from A", || async {
        !has_route(&a, prefix).await
    })
    .await;
    let status = a.peer(LOOPBACK).await.unwrap();
    assert!(status.bfd_down);
    assert_eq!(status.state, wren_bgp::fsm::State::Idle);
    assert_eq!(status.prefixes_stale, 0);

    relay.set_accepting(true);
    a.set_bfd(LOOPBACK, true).await.unwrap();
    eventually("route back with the session", || has_route(&a, prefix)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Two nodes whose agents start together: the active side connects before the passive side
/// listens. With the default 30 s ConnectRetry the session must still come up within about a
/// second of the passive side starting, not 30 s later.
#[tokio::test]
async fn speaker_started_before_its_peer_connects_within_a_second_of_it_listening() {
    let port = {
        let probe = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        probe.local_addr().unwrap().port()
    };
    let a = speaker(1, AS).await;
    let mut to_b = wren_bgp::speaker::PeerConfig::new(LOOPBACK, AS);
    to_b.port = port;
    to_b.hold_time = 9;
    assert_eq!(to_b.connect_retry, Duration::from_secs(30));
    a.add_peer(to_b).await.unwrap();
    // A's connects are refused for a while, its retries growing meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_ne!(state_of(&a).await, wren_bgp::fsm::State::Established);

    let b = speaker_with(2, AS, |c| c.listen = Some(SocketAddr::new(LOOPBACK, port))).await;
    a_joins_promptly(&a, &b, "B listened").await;
}

/// B adds A as a passive peer; the session must be up within 3 s of that (the 30 s
/// ConnectRetry time is what A would otherwise wait). Ends both speakers.
async fn a_joins_promptly(a: &SpeakerHandle, b: &SpeakerHandle, what: &str) {
    let mut to_a = peer_to(a, AS);
    to_a.passive = true;
    b.add_peer(to_a).await.unwrap();
    let started = tokio::time::Instant::now();
    let established_in = tokio::time::timeout(Duration::from_secs(5), async {
        while !established(b).await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    })
    .await
    .unwrap_or_else(|_| panic!("no session within 5 s after {what}: A waits for ConnectRetry"));
    assert!(
        established_in < Duration::from_secs(3),
        "up {established_in:?} after {what}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The other cold-start case: the peer listens but does not know us yet (its agent has not
/// seen our node), so it accepts and closes before its OPEN. Once it adds us the session must
/// come up within about a second, not after the 30 s ConnectRetry time.
#[tokio::test]
async fn speaker_connects_within_a_second_of_the_peer_adding_it() {
    let a = speaker(1, AS).await;
    let b = speaker(2, AS).await;
    let mut to_b = peer_to(&b, AS);
    to_b.connect_retry = Duration::from_secs(30);
    a.add_peer(to_b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_ne!(state_of(&a).await, wren_bgp::fsm::State::Established);

    a_joins_promptly(&a, &b, "B added A").await;
}

#[tokio::test]
async fn speaker_restarting_defers_selection_until_end_of_rib() {
    let a = speaker_with(1, AS, |c| {
        c.graceful_restart = Some(GracefulRestartConfig {
            restarting: true,
            forwarding_preserved: true,
            selection_deferral: Duration::from_secs(60),
            ..GracefulRestartConfig::default()
        });
    })
    .await;
    let b = speaker(2, AS).await;
    let mut routes = a.subscribe().await.unwrap();
    assert!(
        pending_events(&mut routes).await.is_empty(),
        "not synced before the peers' routes are in"
    );
    b.originate(net("10.2.0.0/24"), None).await.unwrap();
    a.originate(net("10.1.0.0/24"), None).await.unwrap();
    a.add_peer(peer_to(&b, AS)).await.unwrap();
    // Both connect: the collision leaves one session, on a connection opened while A was
    // restarting, whose OPEN carries the Restart State bit.
    b.add_peer(peer_to(&a, AS)).await.unwrap();

    // The peer's route, then Synced once its End-of-RIB arrived; well before the 60 s timer.
    let mut seen = Vec::new();
    let synced = tokio::time::timeout(PATIENCE, async {
        while let Some(batch) = routes.recv().await {
            for event in batch {
                if event == RouteEvent::Synced {
                    return true;
                }
                seen.push(event);
            }
        }
        false
    })
    .await;
    assert_eq!(synced, Ok(true));
    let best = |prefix: &str| {
        let wanted = net(prefix);
        seen.iter()
            .any(|e| matches!(e, RouteEvent::Best { prefix, .. } if *prefix == wanted))
    };
    assert!(
        best("10.2.0.0/24") && best("10.1.0.0/24"),
        "routes precede Synced: {seen:?}"
    );

    // B saw the Restart State and Forwarding State bits, and gets A's route after deferral.
    // B's own view of the session may trail A's by a moment (A can hold B's End-of-RIB
    // before B's status reports the session).
    eventually("B reports the negotiated session", || async {
        b.peer(LOOPBACK).await.unwrap().negotiated.is_some()
    })
    .await;
    let status = b.peer(LOOPBACK).await.unwrap();
    let gr = status.negotiated.and_then(|n| n.peer_graceful_restart);
    assert!(gr.as_ref().is_some_and(|gr| gr.restarting), "R bit: {gr:?}");
    assert!(
        gr.is_some_and(|gr| gr.families.iter().all(|(_, f)| *f)),
        "F bits"
    );
    eventually("B learns A's route once A has selected", || async {
        has_route(&b, net("10.1.0.0/24")).await
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
