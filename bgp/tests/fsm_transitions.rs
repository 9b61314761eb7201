//! The session state machine, transition by transition (RFC 4271 §8, §6.8; RFC 4724 §4.2).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use wren_bgp::fsm::{
    self, Action, ConnId, Down, DownReason, Event, Fsm, OPEN_HOLD_TIME, SessionConfig, State, Timer,
};
use wren_bgp::wire::{
    Afi, Capability, CeaseError, GracefulRestart, Message, Notification, Open, Update,
};

const LOCAL_AS: u32 = 64512;
const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

fn config() -> SessionConfig {
    let mut config = SessionConfig::new(LOCAL_AS, LOCAL_ID, LOCAL_AS);
    config.hold_time = 90;
    config
}

fn peer_open(router_id: Ipv4Addr, hold_time: u16) -> Open {
    Open {
        asn: LOCAL_AS,
        hold_time,
        router_id,
        capabilities: vec![
            Capability::Multiprotocol(Afi::Ipv4Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs(LOCAL_AS),
        ],
    }
}

fn gr(families: &[Afi]) -> GracefulRestart {
    GracefulRestart {
        restarting: false,
        restart_time: 120,
        families: families.iter().map(|f| (*f, true)).collect(),
    }
}

struct Harness {
    fsm: Fsm,
    now: Instant,
}

impl Harness {
    fn new(config: SessionConfig) -> Self {
        let now = Instant::now();
        Self {
            fsm: Fsm::new(config, now),
            now,
        }
    }

    fn on(&mut self, event: Event) -> Vec<Action> {
        self.now += Duration::from_millis(10);
        self.fsm.handle(event, self.now)
    }

    /// Starts an active session and returns the id of the connection attempt.
    fn start(&mut self) -> ConnId {
        let actions = self.on(Event::ManualStart);
        connect_id(&actions).expect("an active start connects")
    }

    /// Brings a session to Established over an outgoing connection.
    fn establish(&mut self, remote_id: Ipv4Addr, open: Open) -> ConnId {
        let id = self.start();
        self.on(Event::TcpConnected(id));
        self.on(Event::Message(id, Message::Open(open)));
        let actions = self.on(Event::Message(id, Message::Keepalive));
        assert!(
            session_up(&actions),
            "KEEPALIVE in OpenConfirm brings the session up"
        );
        assert_eq!(self.fsm.state(), State::Established);
        assert_eq!(
            self.fsm.negotiated().map(|n| n.peer_router_id),
            Some(remote_id)
        );
        id
    }
}

fn connect_id(actions: &[Action]) -> Option<ConnId> {
    actions.iter().find_map(|a| match a {
        Action::Connect(id) => Some(*id),
        _ => None,
    })
}

fn session_up(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::SessionUp(..)))
}

fn sent(actions: &[Action], on: ConnId) -> Vec<&Message> {
    let sent = actions.iter().filter_map(|a| match a {
        Action::Send(id, m) if *id == on => Some(m),
        _ => None,
    });
    sent.collect()
}

fn notification(actions: &[Action], on: ConnId) -> Option<(u8, u8)> {
    sent(actions, on).into_iter().find_map(|m| match m {
        Message::Notification(Notification { code, subcode, .. }) => Some((*code, *subcode)),
        _ => None,
    })
}

fn closes(actions: &[Action], id: ConnId) -> bool {
    actions.contains(&Action::Close(id))
}

fn timer_started(actions: &[Action], timer: Timer) -> Option<Duration> {
    actions.iter().rev().find_map(|a| match a {
        Action::StartTimer(t, d) if *t == timer => Some(*d),
        _ => None,
    })
}

fn session_down(actions: &[Action]) -> Option<&Down> {
    actions.iter().find_map(|a| match a {
        Action::SessionDown(down) => Some(down),
        _ => None,
    })
}

fn down_reason(actions: &[Action]) -> Option<&DownReason> {
    session_down(actions).map(|down| &down.reason)
}

#[test]
fn fsm_active_start_connects_and_passive_start_waits() {
    let mut active = Harness::new(config());
    let actions = active.on(Event::ManualStart);
    assert_eq!(active.fsm.state(), State::Connect);
    assert!(connect_id(&actions).is_some());
    assert_eq!(
        timer_started(&actions, Timer::ConnectRetry),
        Some(Duration::from_secs(30))
    );

    let mut passive_config = config();
    passive_config.passive = true;
    let mut passive = Harness::new(passive_config);
    let actions = passive.on(Event::ManualStart);
    assert_eq!(passive.fsm.state(), State::Active);
    assert!(
        connect_id(&actions).is_none(),
        "a passive peer never connects"
    );
}

#[test]
fn fsm_refuses_connections_while_idle() {
    let mut h = Harness::new(config());
    let id = h.fsm.next_conn_id();
    let actions = h.on(Event::TcpAccepted(id));
    assert!(closes(&actions, id));
    assert_eq!(h.fsm.state(), State::Idle);
}

#[test]
fn fsm_failed_connect_waits_in_active_then_retries() {
    let mut h = Harness::new(config());
    let id = h.start();
    let actions = h.on(Event::TcpFailed(id));
    assert_eq!(h.fsm.state(), State::Active);
    assert!(connect_id(&actions).is_none());
    let actions = h.on(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(h.fsm.state(), State::Connect);
    assert!(connect_id(&actions).is_some_and(|retry| retry != id));
}

/// Two nodes started together: the peer has no listener yet and refuses. The retries come
/// 100 ms, 200 ms, 400 ms, 800 ms, then every second, not after the 30 s ConnectRetry time.
#[test]
fn fsm_refused_connects_are_retried_soon_doubling_to_a_second() {
    let mut h = Harness::new(config());
    let mut id = h.start();
    let ms = Duration::from_millis;
    for expected in [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)] {
        let actions = h.on(Event::TcpFailed(id));
        assert_eq!(timer_started(&actions, Timer::ConnectRetry), Some(expected));
        let actions = h.on(Event::TimerExpired(Timer::ConnectRetry));
        id = connect_id(&actions).expect("the retry connects");
    }
    // A peer that accepts and closes before its OPEN (it does not know us yet) is retried on
    // the same schedule.
    h.on(Event::TcpConnected(id));
    let actions = h.on(Event::TcpFailed(id));
    assert_eq!(h.fsm.state(), State::Active);
    assert_eq!(timer_started(&actions, Timer::ConnectRetry), Some(ms(1000)));
    // Once an OPEN arrives the sequence starts over for the next failure.
    let id = connect_id(&h.on(Event::TimerExpired(Timer::ConnectRetry))).unwrap();
    h.on(Event::TcpConnected(id));
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    h.on(Event::Message(id, Message::Open(peer_open(remote, 90))));
    assert_eq!(h.fsm.state(), State::OpenConfirm);
    h.on(Event::TcpFailed(id));
    let id = connect_id(&h.on(Event::TimerExpired(Timer::IdleHold))).unwrap();
    let actions = h.on(Event::TcpFailed(id));
    assert_eq!(timer_started(&actions, Timer::ConnectRetry), Some(ms(100)));
}

#[test]
fn fsm_a_peer_closing_before_its_open_is_retried_soon() {
    let mut h = Harness::new(config());
    let id = h.start();
    h.on(Event::TcpConnected(id));
    let actions = h.on(Event::TcpFailed(id));
    assert_eq!(h.fsm.state(), State::Active);
    assert_eq!(
        timer_started(&actions, Timer::ConnectRetry),
        Some(Duration::from_millis(100)),
        "not the 30 s ConnectRetry time"
    );
}

#[test]
fn fsm_fast_retries_never_exceed_the_connect_retry_time() {
    let mut short = config();
    short.connect_retry = Duration::from_millis(300);
    let mut h = Harness::new(short);
    let mut id = h.start();
    let mut delays = Vec::new();
    for _ in 0..4 {
        let actions = h.on(Event::TcpFailed(id));
        delays.push(timer_started(&actions, Timer::ConnectRetry).unwrap());
        id = connect_id(&h.on(Event::TimerExpired(Timer::ConnectRetry))).unwrap();
    }
    let ms = Duration::from_millis;
    assert_eq!(delays, [ms(100), ms(200), ms(300), ms(300)]);
}

#[test]
fn fsm_bfd_down_ends_the_session_at_once_flushes_and_holds_until_bfd_up() {
    let mut gr = gr_config();
    gr.connect_retry = Duration::from_secs(30);
    let mut h = Harness::new(gr);
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, gr_open(remote));
    let actions = h.on(Event::BfdDown);
    // RFC 9384: Cease, subcode 10 (BFD Down).
    assert_eq!(notification(&actions, id), Some((6, 10)));
    assert_eq!(
        wren_bgp::wire::ErrorCode::from_pair(6, 10),
        Some(wren_bgp::wire::ErrorCode::Cease(
            wren_bgp::wire::CeaseError::BfdDown
        ))
    );
    assert!(closes(&actions, id));
    let down = session_down(&actions).expect("the session goes down");
    assert_eq!(down.reason, DownReason::BfdDown);
    assert!(
        down.retain.is_empty(),
        "graceful restart keeps nothing: the path is gone"
    );
    assert_eq!(h.fsm.state(), State::Idle);
    assert!(h.fsm.bfd_down());
    assert_eq!(timer_started(&actions, Timer::IdleHold), None, "no restart");
    assert_eq!(
        h.fsm.last_error().map(ToString::to_string).as_deref(),
        Some("BFD session down")
    );

    // Held down: the peer's connections are refused, stray timers and starts do nothing.
    let incoming = h.fsm.next_conn_id();
    assert!(closes(&h.on(Event::TcpAccepted(incoming)), incoming));
    assert!(connect_id(&h.on(Event::TimerExpired(Timer::IdleHold))).is_none());
    assert!(connect_id(&h.on(Event::ManualStart)).is_none());
    assert!(
        h.on(Event::BfdDown).is_empty(),
        "a second BFD Down changes nothing"
    );
    assert_eq!(h.fsm.state(), State::Idle);

    // BFD up again: the session starts over at once.
    let actions = h.on(Event::BfdUp);
    assert!(connect_id(&actions).is_some());
    assert_eq!(h.fsm.state(), State::Connect);
    assert!(!h.fsm.bfd_down());
}

#[test]
fn fsm_a_peer_past_its_prefix_limit_is_cut_off_flushed_and_retried_after_the_restart_time() {
    let mut h = Harness::new(gr_config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, gr_open(remote));
    let restart_after = Duration::from_secs(42);
    let actions = h.on(Event::PrefixLimitExceeded {
        limit: 10,
        restart_after,
    });
    // RFC 4486: Cease, subcode 1 (Maximum Number of Prefixes Reached).
    assert_eq!(notification(&actions, id), Some((6, 1)));
    assert!(closes(&actions, id));
    let down = session_down(&actions).expect("the session goes down");
    assert_eq!(down.reason, DownReason::PrefixLimit(10));
    assert!(down.retain.is_empty(), "graceful restart keeps nothing");
    assert_eq!(h.fsm.state(), State::Idle);
    // The last word on the idle-hold timer is the limit's restart time.
    let last_idle_hold = actions.iter().rev().find_map(|a| match a {
        Action::StartTimer(Timer::IdleHold, after) => Some(*after),
        _ => None,
    });
    assert_eq!(last_idle_hold, Some(restart_after));
    assert!(
        h.fsm
            .last_error()
            .map(ToString::to_string)
            .is_some_and(|e| e.contains("Maximum Number of Prefixes")),
        "{:?}",
        h.fsm.last_error()
    );
    // Held down until then; the timer brings the session back.
    let incoming = h.fsm.next_conn_id();
    assert!(closes(&h.on(Event::TcpAccepted(incoming)), incoming));
    assert!(connect_id(&h.on(Event::TimerExpired(Timer::IdleHold))).is_some());
    // Passing the limit when no session is up changes nothing.
    let mut idle = Harness::new(config());
    assert!(
        idle.on(Event::PrefixLimitExceeded {
            limit: 10,
            restart_after,
        })
        .is_empty()
    );
}

#[test]
fn fsm_bfd_down_before_the_session_is_up_keeps_it_from_connecting() {
    let mut h = Harness::new(config());
    let id = h.start();
    let actions = h.on(Event::BfdDown);
    assert!(closes(&actions, id), "the attempt in progress is abandoned");
    assert!(down_reason(&actions).is_none(), "no session was up");
    assert_eq!(h.fsm.state(), State::Idle);
    assert!(h.on(Event::TimerExpired(Timer::ConnectRetry)).is_empty());
    assert!(connect_id(&h.on(Event::BfdUp)).is_some());
}

/// Asserts that `actions` flush every route of the peer: a session-down report keeping
/// nothing stale.
fn assert_flushes_everything(actions: &[Action], when: &str) {
    let down = session_down(actions).unwrap_or_else(|| panic!("{when}: routes kept stale stay"));
    assert_eq!(down.reason, DownReason::BfdDown, "{when}");
    assert!(
        down.retain.is_empty(),
        "{when}: graceful restart keeps nothing"
    );
}

/// A graceful-restart session that just ended keeps the peer's routes as stale while the
/// machine is in Idle, Connect, OpenSent or OpenConfirm, and while the session that replaced
/// it after the peer restarted has not had the peer's End-of-RIB: BFD Down in any of those
/// states must flush them (the path is gone), hold the session down, and refuse the peer
/// meanwhile.
#[test]
fn fsm_bfd_down_flushes_routes_kept_stale_whatever_the_state() {
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let mut checked = Vec::new();
    // Idle (waiting out the idle hold), Connect, OpenSent and OpenConfirm after the lost
    // connection; Established on the new connection after the peer restarted.
    for case in 0..5 {
        let mut h = Harness::new(gr_config());
        let old = h.establish(remote, gr_open(remote));
        if case == 4 {
            let new = h.fsm.next_conn_id();
            h.on(Event::TcpAccepted(new));
            h.on(Event::Message(new, Message::Open(gr_open(remote))));
            let actions = h.on(Event::Message(new, Message::Keepalive));
            assert_eq!(down_reason(&actions), Some(&DownReason::PeerRestarted));
        } else {
            let actions = h.on(Event::TcpFailed(old));
            let kept = session_down(&actions).map(|d| d.retain.clone());
            assert_eq!(
                kept,
                Some(vec![Afi::Ipv4Unicast]),
                "the routes are kept stale"
            );
            if case >= 1 {
                let retry = h.on(Event::TimerExpired(Timer::IdleHold));
                let id = connect_id(&retry).expect("restarts after the idle hold");
                if case >= 2 {
                    h.on(Event::TcpConnected(id));
                }
                if case >= 3 {
                    h.on(Event::Message(id, Message::Open(gr_open(remote))));
                }
            }
        }
        let state = h.fsm.state();
        checked.push(state);
        let actions = h.on(Event::BfdDown);
        assert_flushes_everything(&actions, state.name());
        assert_eq!(h.fsm.state(), State::Idle);
        assert!(h.fsm.bfd_down());
        // Held down: the peer reconnecting is refused, and nothing is flushed twice.
        let incoming = h.fsm.next_conn_id();
        let actions = h.on(Event::TcpAccepted(incoming));
        assert!(
            closes(&actions, incoming),
            "{state}: refused while BFD is down"
        );
        assert!(connect_id(&h.on(Event::TimerExpired(Timer::IdleHold))).is_none());
        assert!(h.on(Event::BfdDown).is_empty(), "{state}");
        assert_eq!(h.fsm.state(), State::Idle);
        // Back once BFD is.
        assert!(connect_id(&h.on(Event::BfdUp)).is_some(), "{state}");
    }
    assert_eq!(
        checked,
        [
            State::Idle,
            State::Connect,
            State::OpenSent,
            State::OpenConfirm,
            State::Established
        ]
    );

    // Once a session ended with a NOTIFICATION the routes are gone already: BFD Down then
    // reports nothing more.
    let mut h = Harness::new(gr_config());
    h.establish(remote, gr_open(remote));
    let actions = h.on(Event::TimerExpired(Timer::Hold));
    assert!(session_down(&actions).is_some_and(|d| d.retain.is_empty()));
    assert!(down_reason(&h.on(Event::BfdDown)).is_none());
}

#[test]
fn fsm_bfd_up_without_a_down_changes_nothing() {
    let mut h = Harness::new(config());
    assert!(h.on(Event::BfdUp).is_empty());
    assert_eq!(h.fsm.state(), State::Idle);
    // Nor does a BFD Down of a stopped session start anything when BFD returns.
    h.on(Event::BfdDown);
    assert!(h.on(Event::BfdUp).is_empty());
    assert_eq!(h.fsm.state(), State::Idle);
}

#[test]
fn fsm_open_exchange_negotiates_hold_and_keepalive() {
    let mut h = Harness::new(config());
    let id = h.start();
    let actions = h.on(Event::TcpConnected(id));
    assert_eq!(h.fsm.state(), State::OpenSent);
    assert_eq!(timer_started(&actions, Timer::Hold), Some(OPEN_HOLD_TIME));
    let Some(Message::Open(ours)) = sent(&actions, id).first().copied() else {
        panic!("OPEN sent on connect");
    };
    assert_eq!(
        (ours.asn, ours.hold_time, ours.router_id),
        (LOCAL_AS, 90, LOCAL_ID)
    );
    assert!(
        ours.capabilities
            .contains(&Capability::FourOctetAs(LOCAL_AS))
    );
    assert!(
        ours.capabilities
            .contains(&Capability::Multiprotocol(Afi::Ipv6Unicast))
    );
    assert!(ours.capabilities.contains(&Capability::RouteRefresh));

    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let actions = h.on(Event::Message(id, Message::Open(peer_open(remote, 30))));
    assert_eq!(h.fsm.state(), State::OpenConfirm);
    assert_eq!(sent(&actions, id), vec![&Message::Keepalive]);
    assert_eq!(
        timer_started(&actions, Timer::Hold),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        timer_started(&actions, Timer::Keepalive),
        Some(Duration::from_secs(10))
    );

    let actions = h.on(Event::Message(id, Message::Keepalive));
    assert_eq!(h.fsm.state(), State::Established);
    let negotiated = actions.iter().find_map(|a| match a {
        Action::SessionUp(conn, n) if *conn == id => Some(n),
        _ => None,
    });
    let negotiated = negotiated.expect("session up");
    assert_eq!(negotiated.hold_time, 30);
    assert_eq!(
        negotiated.families,
        vec![Afi::Ipv4Unicast],
        "IPv6 was not offered"
    );
    assert!(negotiated.codec.four_octet_as && negotiated.route_refresh);

    let actions = h.on(Event::TimerExpired(Timer::Keepalive));
    assert_eq!(sent(&actions, id), vec![&Message::Keepalive]);
    assert_eq!(
        timer_started(&actions, Timer::Keepalive),
        Some(Duration::from_secs(10))
    );
}

#[test]
fn fsm_zero_hold_time_runs_no_timers() {
    let mut h = Harness::new(config());
    let id = h.start();
    h.on(Event::TcpConnected(id));
    let actions = h.on(Event::Message(
        id,
        Message::Open(peer_open(Ipv4Addr::new(10, 0, 0, 9), 0)),
    ));
    assert!(actions.contains(&Action::StopTimer(Timer::Hold)));
    assert!(actions.contains(&Action::StopTimer(Timer::Keepalive)));
    assert_eq!(timer_started(&actions, Timer::Hold), None);
}

/// The KEEPALIVE interval a session with `keepalive_time` runs with once the peer's OPEN
/// with `peer_hold` is in, and after one KEEPALIVE it sent.
fn keepalive_interval(keepalive_time: Option<u16>, peer_hold: u16) -> (Option<Duration>, u16) {
    let mut config = config();
    config.keepalive_time = keepalive_time;
    let mut h = Harness::new(config);
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.start();
    h.on(Event::TcpConnected(id));
    let opened = h.on(Event::Message(
        id,
        Message::Open(peer_open(remote, peer_hold)),
    ));
    h.on(Event::Message(id, Message::Keepalive));
    let expired = h.on(Event::TimerExpired(Timer::Keepalive));
    assert_eq!(
        timer_started(&opened, Timer::Keepalive),
        timer_started(&expired, Timer::Keepalive),
        "the interval holds from the OPEN on"
    );
    let negotiated = h.fsm.negotiated().map_or(0, |n| n.keepalive_time);
    (timer_started(&expired, Timer::Keepalive), negotiated)
}

#[test]
fn fsm_keepalive_time_is_its_own_up_to_a_third_of_the_hold_time() {
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(
        keepalive_interval(None, 30),
        (secs(10), 10),
        "a third by default"
    );
    assert_eq!(
        keepalive_interval(Some(2), 30),
        (secs(2), 2),
        "faster when set"
    );
    assert_eq!(keepalive_interval(Some(10), 30), (secs(10), 10));
    assert_eq!(
        keepalive_interval(Some(20), 30),
        (secs(10), 10),
        "never longer than a third of the negotiated hold time"
    );
    assert_eq!(
        keepalive_interval(Some(5), 6),
        (secs(2), 2),
        "the peer's shorter hold time bounds it too"
    );
    assert_eq!(keepalive_interval(Some(1), 3), (secs(1), 1));
}

#[test]
fn fsm_rejects_bad_opens_with_the_right_notification() {
    let cases = [
        (
            Open {
                asn: 65000,
                capabilities: vec![],
                ..peer_open(Ipv4Addr::new(1, 1, 1, 1), 90)
            },
            (2, 2),
        ),
        (peer_open(Ipv4Addr::new(1, 1, 1, 1), 2), (2, 6)),
        (peer_open(Ipv4Addr::UNSPECIFIED, 90), (2, 3)),
        (peer_open(LOCAL_ID, 90), (2, 3)),
    ];
    for (open, expected) in cases {
        let mut h = Harness::new(config());
        let id = h.start();
        h.on(Event::TcpConnected(id));
        let actions = h.on(Event::Message(id, Message::Open(open.clone())));
        assert_eq!(notification(&actions, id), Some(expected), "for {open:?}");
        assert!(closes(&actions, id));
        assert_eq!(h.fsm.state(), State::Idle);
        assert!(
            timer_started(&actions, Timer::IdleHold).is_some(),
            "restarts later"
        );
    }
}

#[test]
fn fsm_unexpected_messages_are_fsm_errors() {
    let mut h = Harness::new(config());
    let id = h.start();
    h.on(Event::TcpConnected(id));
    let actions = h.on(Event::Message(id, Message::Keepalive));
    assert_eq!(
        notification(&actions, id),
        Some((5, 1)),
        "KEEPALIVE in OpenSent"
    );

    let mut h = Harness::new(config());
    let id = h.start();
    h.on(Event::TcpConnected(id));
    h.on(Event::Message(
        id,
        Message::Open(peer_open(Ipv4Addr::new(10, 0, 0, 9), 90)),
    ));
    let actions = h.on(Event::Message(id, Message::Update(Update::default())));
    assert_eq!(
        notification(&actions, id),
        Some((5, 2)),
        "UPDATE in OpenConfirm"
    );

    let mut h = Harness::new(config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, peer_open(remote, 90));
    let actions = h.on(Event::Message(id, Message::Open(peer_open(remote, 90))));
    assert_eq!(
        notification(&actions, id),
        Some((5, 3)),
        "OPEN in Established"
    );
    assert!(down_reason(&actions).is_some());
}

#[test]
fn fsm_established_delivers_updates_and_restarts_hold() {
    let mut h = Harness::new(config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, peer_open(remote, 90));
    let update = Update {
        nlri: vec!["10.1.0.0/24".parse().unwrap()],
        ..Update::default()
    };
    let actions = h.on(Event::Message(id, Message::Update(update.clone())));
    assert!(actions.contains(&Action::Deliver(update)));
    assert_eq!(
        timer_started(&actions, Timer::Hold),
        Some(Duration::from_secs(90))
    );
    let actions = h.on(Event::Message(id, Message::RouteRefresh(Afi::Ipv4Unicast)));
    assert!(actions.contains(&Action::RouteRefresh(Afi::Ipv4Unicast)));
}

#[test]
fn fsm_hold_timer_expiry_notifies_drops_and_restarts_with_backoff() {
    let mut h = Harness::new(config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, peer_open(remote, 90));
    let actions = h.on(Event::TimerExpired(Timer::Hold));
    assert_eq!(notification(&actions, id), Some((4, 0)));
    assert!(closes(&actions, id));
    assert_eq!(down_reason(&actions), Some(&DownReason::HoldTimerExpired));
    assert_eq!(h.fsm.state(), State::Idle);
    assert_eq!(h.fsm.last_error(), Some(&DownReason::HoldTimerExpired));
    assert_eq!(
        timer_started(&actions, Timer::IdleHold),
        Some(Duration::from_secs(5))
    );

    // The automatic restart connects again; a second failure waits twice as long.
    let actions = h.on(Event::TimerExpired(Timer::IdleHold));
    let retry = connect_id(&actions).expect("automatic restart connects");
    h.on(Event::TcpConnected(retry));
    let actions = h.on(Event::TimerExpired(Timer::Hold));
    assert_eq!(
        notification(&actions, retry),
        Some((4, 0)),
        "OpenSent hold expiry"
    );
    assert_eq!(
        timer_started(&actions, Timer::IdleHold),
        Some(Duration::from_secs(10))
    );
}

#[test]
fn fsm_manual_stop_sends_cease_and_stays_down() {
    let mut h = Harness::new(config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, peer_open(remote, 90));
    let actions = h.on(Event::ManualStop(
        wren_bgp::wire::CeaseError::AdministrativeShutdown,
    ));
    assert_eq!(notification(&actions, id), Some((6, 2)));
    assert!(closes(&actions, id));
    assert!(matches!(
        down_reason(&actions),
        Some(DownReason::Stopped(_))
    ));
    assert_eq!(
        timer_started(&actions, Timer::IdleHold),
        None,
        "no automatic restart"
    );
    assert_eq!(h.fsm.state(), State::Idle);
}

#[test]
fn fsm_notification_from_peer_ends_session() {
    let mut h = Harness::new(config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, peer_open(remote, 90));
    let cease = Notification {
        code: 6,
        subcode: 4,
        data: vec![],
    };
    let actions = h.on(Event::Message(id, Message::Notification(cease.clone())));
    assert_eq!(
        down_reason(&actions),
        Some(&DownReason::NotificationReceived(cease))
    );
    assert!(
        notification(&actions, id).is_none(),
        "no NOTIFICATION in reply"
    );
    assert_eq!(h.fsm.state(), State::Idle);
}

/// Both sides connect at once: the outgoing attempt and an incoming connection, both in
/// OpenSent. Returns the state machine and the outgoing and incoming ids.
fn both_connected(config: SessionConfig) -> (Harness, ConnId, ConnId) {
    let mut h = Harness::new(config);
    let outbound = h.start();
    let inbound = h.fsm.next_conn_id();
    h.on(Event::TcpAccepted(inbound));
    h.on(Event::TcpConnected(outbound));
    assert_eq!(h.fsm.state(), State::OpenSent);
    (h, outbound, inbound)
}

/// Both sides connect at once; the outgoing connection carries the peer's OPEN first, then
/// the incoming one. Returns the state machine after both OPENs, the outgoing and incoming
/// ids, and the actions of each OPEN.
fn collide(remote_id: Ipv4Addr) -> (Harness, ConnId, ConnId, Vec<Action>, Vec<Action>) {
    let (mut h, outbound, inbound) = both_connected(config());
    let first = h.on(Event::Message(
        outbound,
        Message::Open(peer_open(remote_id, 90)),
    ));
    let second = h.on(Event::Message(
        inbound,
        Message::Open(peer_open(remote_id, 90)),
    ));
    (h, outbound, inbound, first, second)
}

#[test]
fn fsm_collision_keeps_our_connection_when_our_id_is_higher() {
    // The peer's identifier is known from the first OPEN: the losing connection is closed
    // then, before anything but our OPEN went out on it.
    let (mut h, outbound, inbound, first, second) = collide(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(h.fsm.state(), State::OpenConfirm);
    assert!(sent(&first, outbound).contains(&&Message::Keepalive));
    assert_eq!(notification(&first, inbound), Some((6, 7)));
    assert!(closes(&first, inbound));
    assert!(!closes(&first, outbound));
    assert!(
        second.is_empty(),
        "the closed connection is gone: {second:?}"
    );
    let actions = h.on(Event::Message(outbound, Message::Keepalive));
    assert!(session_up(&actions));
    assert_eq!(h.fsm.established_conn(), Some(outbound));
}

#[test]
fn fsm_collision_keeps_the_peers_connection_when_its_id_is_higher() {
    let (mut h, outbound, inbound, first, actions) = collide(Ipv4Addr::new(10, 0, 0, 200));
    assert!(
        sent(&first, outbound).is_empty(),
        "no KEEPALIVE on the losing connection while the winner may come: {first:?}"
    );
    assert_eq!(notification(&actions, outbound), Some((6, 7)));
    assert!(closes(&actions, outbound));
    assert!(sent(&actions, inbound).contains(&&Message::Keepalive));
    let actions = h.on(Event::Message(inbound, Message::Keepalive));
    assert!(session_up(&actions));
    assert_eq!(h.fsm.established_conn(), Some(inbound));
}

/// The peer's OPEN on the losing connection comes while the winning one is still in
/// OpenSent, whichever side opened it. No KEEPALIVE may go out on the loser, or the peer could
/// bring it up while we later pick the winner, and both would be closed; it is held, and takes
/// over only if the winner fails (the peer may have refused ours, not knowing us yet, or given
/// its own up once it had an OPEN).
#[test]
fn fsm_collision_never_confirms_the_losing_connection_while_the_winner_may_come() {
    for (remote, loser_is_ours) in [
        (Ipv4Addr::new(10, 0, 0, 1), false),
        (Ipv4Addr::new(10, 0, 0, 200), true),
    ] {
        for winner_fails in [false, true] {
            let case = format!("loser ours: {loser_is_ours}, winner fails: {winner_fails}");
            let (mut h, outbound, inbound) = both_connected(config());
            let (loser, winner) = if loser_is_ours {
                (outbound, inbound)
            } else {
                (inbound, outbound)
            };
            let actions = h.on(Event::Message(loser, Message::Open(peer_open(remote, 90))));
            assert!(
                sent(&actions, loser).is_empty() && !closes(&actions, loser),
                "{case}: held, unconfirmed: {actions:?}"
            );
            assert_eq!(h.fsm.state(), State::OpenSent, "{case}");
            // A peer that does not hold (BIRD keeps both in OpenSent) confirms the loser.
            assert!(h.on(Event::Message(loser, Message::Keepalive)).is_empty());
            if winner_fails {
                let actions = h.on(Event::TcpFailed(winner));
                assert!(
                    sent(&actions, loser).contains(&&Message::Keepalive),
                    "{case}"
                );
                assert!(session_up(&actions), "{case}: the peer already confirmed");
                assert_eq!(h.fsm.established_conn(), Some(loser), "{case}");
            } else {
                let actions = h.on(Event::Message(winner, Message::Open(peer_open(remote, 90))));
                assert_eq!(notification(&actions, loser), Some((6, 7)), "{case}");
                assert!(closes(&actions, loser), "{case}");
                assert!(sent(&actions, winner).contains(&&Message::Keepalive));
                assert!(session_up(
                    &h.on(Event::Message(winner, Message::Keepalive))
                ));
                assert_eq!(h.fsm.established_conn(), Some(winner), "{case}");
            }
            assert_eq!(h.fsm.last_error(), None, "{case}");
        }
    }
}

/// Once an OPEN arrived on one connection, the outgoing attempt still under way is given up
/// (as BIRD does), so that it cannot bring a second connection to the peer later.
#[test]
fn fsm_outgoing_attempt_is_given_up_once_an_open_arrives() {
    let remote = Ipv4Addr::new(10, 0, 0, 200);
    let mut h = Harness::new(config());
    let attempt = h.start();
    let inbound = h.fsm.next_conn_id();
    h.on(Event::TcpAccepted(inbound));
    let actions = h.on(Event::Message(
        inbound,
        Message::Open(peer_open(remote, 90)),
    ));
    assert!(closes(&actions, attempt), "attempt given up: {actions:?}");
    let actions = h.on(Event::TcpConnected(attempt));
    assert_eq!(actions, vec![Action::Close(attempt)]);
    assert!(session_up(
        &h.on(Event::Message(inbound, Message::Keepalive))
    ));
}

/// The peer closing our connection with Cease / Connection Collision Resolution means it keeps
/// its own, which may not have reached us yet: no error, no idle hold, and its connection is
/// accepted when it comes.
#[test]
fn fsm_collision_cease_on_our_only_connection_waits_for_the_peers() {
    let remote = Ipv4Addr::new(10, 0, 0, 200);
    let mut h = Harness::new(config());
    let outbound = h.start();
    h.on(Event::TcpConnected(outbound));
    h.on(Event::Message(
        outbound,
        Message::Open(peer_open(remote, 90)),
    ));
    let cease = fsm::cease_notification(CeaseError::ConnectionCollisionResolution);
    let actions = h.on(Event::Message(outbound, Message::Notification(cease)));
    assert!(closes(&actions, outbound));
    assert_eq!(timer_started(&actions, Timer::IdleHold), None);
    assert_eq!(h.fsm.state(), State::Active);
    assert_eq!(h.fsm.last_error(), None);
    let inbound = h.fsm.next_conn_id();
    let actions = h.on(Event::TcpAccepted(inbound));
    assert!(!closes(&actions, inbound), "the peer's connection refused");
    h.on(Event::Message(
        inbound,
        Message::Open(peer_open(remote, 90)),
    ));
    assert!(session_up(
        &h.on(Event::Message(inbound, Message::Keepalive))
    ));
}

#[test]
fn fsm_collision_with_established_session_rejects_the_newcomer() {
    let mut h = Harness::new(config());
    let remote = Ipv4Addr::new(10, 0, 0, 200);
    let established = h.establish(remote, peer_open(remote, 90));
    let newcomer = h.fsm.next_conn_id();
    h.on(Event::TcpAccepted(newcomer));
    let actions = h.on(Event::Message(
        newcomer,
        Message::Open(peer_open(remote, 90)),
    ));
    assert_eq!(notification(&actions, newcomer), Some((6, 7)));
    assert!(!closes(&actions, established));
    assert_eq!(h.fsm.established_conn(), Some(established));
}

fn gr_config() -> SessionConfig {
    let mut config = config();
    config.families = vec![Afi::Ipv4Unicast, Afi::Ipv6Unicast];
    config.graceful_restart = Some(gr(&[]));
    config
}

fn gr_open(remote: Ipv4Addr) -> Open {
    let mut open = peer_open(remote, 90);
    open.capabilities
        .push(Capability::Multiprotocol(Afi::Ipv6Unicast));
    open.capabilities
        .push(Capability::GracefulRestart(gr(&[Afi::Ipv4Unicast])));
    open
}

#[test]
fn fsm_graceful_restart_peer_losing_tcp_keeps_its_routes() {
    let mut h = Harness::new(gr_config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let id = h.establish(remote, gr_open(remote));
    let actions = h.on(Event::TcpFailed(id));
    let down = actions.iter().find_map(|a| match a {
        Action::SessionDown(down) => Some(down),
        _ => None,
    });
    let down = down.expect("session down");
    assert_eq!(down.reason, DownReason::ConnectionLost);
    assert_eq!(
        down.retain,
        vec![Afi::Ipv4Unicast],
        "only the families the peer listed"
    );
    assert_eq!(down.restart_time, Duration::from_secs(120));
}

#[test]
fn fsm_graceful_restart_notification_flushes_routes() {
    let mut h = Harness::new(gr_config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    h.establish(remote, gr_open(remote));
    let actions = h.on(Event::TimerExpired(Timer::Hold));
    let down = actions.iter().find_map(|a| match a {
        Action::SessionDown(down) => Some(down),
        _ => None,
    });
    assert!(
        down.is_some_and(|d| d.retain.is_empty()),
        "a NOTIFICATION ends GR"
    );
}

/// RFC 4724 §4.2: an OPEN on a connection the peer opened after the session came up means
/// the peer restarted. It is taken as such once the peer confirms that connection: the old
/// session ends then, silently, its routes kept stale, and the new one comes up at once.
#[test]
fn fsm_graceful_restart_new_open_while_established_means_restart() {
    let mut h = Harness::new(gr_config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let old = h.establish(remote, gr_open(remote));
    let new = h.fsm.next_conn_id();
    h.on(Event::TcpAccepted(new));
    let actions = h.on(Event::Message(new, Message::Open(gr_open(remote))));
    assert!(sent(&actions, new).contains(&&Message::Keepalive));
    assert!(!closes(&actions, old) && session_down(&actions).is_none());
    assert_eq!(h.fsm.established_conn(), Some(old));
    let actions = h.on(Event::Message(new, Message::Keepalive));
    assert!(closes(&actions, old));
    assert!(
        notification(&actions, old).is_none(),
        "the old session closes silently"
    );
    let down = session_down(&actions).expect("the old session ends");
    assert_eq!(down.reason, DownReason::PeerRestarted);
    assert_eq!(down.retain, vec![Afi::Ipv4Unicast], "its routes kept stale");
    assert_eq!(down.restart_time, Duration::from_secs(120));
    let up = actions
        .iter()
        .position(|a| matches!(a, Action::SessionUp(id, _) if *id == new));
    let down_at = actions
        .iter()
        .position(|a| matches!(a, Action::SessionDown(_)));
    assert!(
        up > down_at,
        "down, then up on the new connection: {actions:?}"
    );
    assert_eq!(h.fsm.state(), State::Established);
    assert_eq!(h.fsm.established_conn(), Some(new));
    assert!(timer_started(&actions, Timer::Keepalive).is_some());
}

/// At startup both sides connect; the peer's connection is accepted while ours is in
/// OpenConfirm, and the session comes up on ours before the OPEN on the peer's is read. That
/// OPEN is the other half of the simultaneous open, not a restart: the connection was there
/// before the session came up. It is closed with Cease / Connection Collision Resolution
/// (RFC 4271 §6.8) and the session stays up.
#[test]
fn fsm_open_on_the_other_startup_connection_is_a_collision_not_a_restart() {
    let remote = Ipv4Addr::new(10, 0, 0, 200);
    let mut h = Harness::new(gr_config());
    let outbound = h.start();
    h.on(Event::TcpConnected(outbound));
    h.on(Event::Message(outbound, Message::Open(gr_open(remote))));
    let inbound = h.fsm.next_conn_id();
    h.on(Event::TcpAccepted(inbound));
    assert!(session_up(
        &h.on(Event::Message(outbound, Message::Keepalive))
    ));
    let actions = h.on(Event::Message(inbound, Message::Open(gr_open(remote))));
    assert_eq!(session_down(&actions), None, "the session must stay up");
    assert_eq!(notification(&actions, inbound), Some((6, 7)));
    assert!(closes(&actions, inbound));
    assert!(!closes(&actions, outbound));
    assert_eq!(h.fsm.state(), State::Established);
    assert_eq!(h.fsm.established_conn(), Some(outbound));
    assert_eq!(h.fsm.last_error(), None);
}

/// A connection the peer opened just before it saw the session up, that reaches us just
/// after: its OPEN is answered, not taken for a restart, and the peer, which keeps the
/// session, closes it with Cease / Connection Collision Resolution. The session stays up.
#[test]
fn fsm_late_connection_the_peer_closes_as_a_collision_leaves_the_session_up() {
    let mut h = Harness::new(gr_config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let old = h.establish(remote, gr_open(remote));
    let late = h.fsm.next_conn_id();
    h.on(Event::TcpAccepted(late));
    let actions = h.on(Event::Message(late, Message::Open(gr_open(remote))));
    assert_eq!(session_down(&actions), None, "not a restart yet");
    assert!(!closes(&actions, old));
    let cease = fsm::cease_notification(CeaseError::ConnectionCollisionResolution);
    let actions = h.on(Event::Message(late, Message::Notification(cease)));
    assert!(closes(&actions, late));
    assert_eq!(session_down(&actions), None);
    assert!(!closes(&actions, old));
    assert_eq!(h.fsm.state(), State::Established);
    assert_eq!(h.fsm.established_conn(), Some(old));
    assert_eq!(h.fsm.last_error(), None);
}

/// A connection the peer opens beside the established session and never sends an OPEN on
/// (or never confirms) would hold the one slot beside the session for as long as the session
/// lasts, and a restarted peer's connection would be refused meanwhile. It gets the OPEN
/// hold time (RFC 4271's four minutes) to come up; then it is dropped with Hold Timer
/// Expired, the session left alone, and the next connection is taken.
#[test]
fn fsm_a_silent_connection_beside_the_session_is_dropped_and_frees_its_slot() {
    for confirms in [false, true] {
        let mut h = Harness::new(gr_config());
        let remote = Ipv4Addr::new(10, 0, 0, 9);
        let session = h.establish(remote, gr_open(remote));
        let silent = h.fsm.next_conn_id();
        let actions = h.on(Event::TcpAccepted(silent));
        assert_eq!(
            timer_started(&actions, Timer::Newcomer),
            Some(fsm::OPEN_HOLD_TIME)
        );
        if confirms {
            // An OPEN but no KEEPALIVE: OpenConfirm beside the session.
            h.on(Event::Message(silent, Message::Open(gr_open(remote))));
        }
        // Meanwhile a third connection finds no slot.
        let refused = h.fsm.next_conn_id();
        assert!(closes(&h.on(Event::TcpAccepted(refused)), refused));
        let actions = h.on(Event::TimerExpired(Timer::Newcomer));
        assert_eq!(notification(&actions, silent), Some((4, 0)), "{actions:?}");
        assert!(closes(&actions, silent));
        assert!(!closes(&actions, session) && session_down(&actions).is_none());
        assert_eq!(h.fsm.established_conn(), Some(session));
        // The slot is free again: a restarted peer's connection is taken, and comes up.
        let restarted = h.fsm.next_conn_id();
        let actions = h.on(Event::TcpAccepted(restarted));
        assert!(!closes(&actions, restarted), "{actions:?}");
        h.on(Event::Message(restarted, Message::Open(gr_open(remote))));
        let actions = h.on(Event::Message(restarted, Message::Keepalive));
        assert_eq!(
            down_reason(&actions),
            Some(&DownReason::PeerRestarted),
            "{actions:?}"
        );
        assert_eq!(h.fsm.established_conn(), Some(restarted));
    }
}

/// The newcomer's timer does nothing once its connection came up, or without a session.
#[test]
fn fsm_the_newcomer_timer_leaves_an_established_session_alone() {
    let mut h = Harness::new(gr_config());
    let remote = Ipv4Addr::new(10, 0, 0, 9);
    let session = h.establish(remote, gr_open(remote));
    let actions = h.on(Event::TimerExpired(Timer::Newcomer));
    assert!(
        actions
            .iter()
            .all(|a| !matches!(a, Action::Close(_) | Action::Send(..))),
        "{actions:?}"
    );
    assert_eq!(h.fsm.established_conn(), Some(session));
}
