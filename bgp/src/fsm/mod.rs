//! The BGP session state machine (RFC 4271 §8), without I/O.
//!
//! [`Fsm::handle`] takes an [`Event`] (an operator command, a TCP outcome, a received message,
//! a timer expiry) and returns the [`Action`]s the caller must carry out: open or close a
//! connection, send a message, start or stop a timer, report the session up or down, hand an
//! UPDATE to the RIB. The caller owns sockets and clocks; the machine owns the protocol.
//!
//! One machine serves one configured peer and tracks up to two TCP connections to it, because
//! both speakers may connect at once. The collision is resolved by BGP identifier as RFC 4271
//! §6.8 says: the connection opened by the speaker with the higher identifier survives. It is
//! resolved as soon as the peer's first OPEN tells its identifier, and no KEEPALIVE goes out on
//! the losing connection while the winning one may still come, so both speakers always keep
//! the same connection and the losing one never carries a session (see `resolve`). An OPEN on a
//! new connection while a session is up is a collision too, and the new connection is closed,
//! unless the peer opened it after the session came up and graceful restart was negotiated:
//! then, as RFC 4724 §4.2 asks, it tells that the peer restarted, and once the peer confirms
//! the new connection the old session ends, its routes kept stale, and the new one is up.
//!
//! Deviation from the letter of RFC 4271, as BIRD, FRR and GoBGP do too: when an outgoing
//! connection fails in Connect the machine waits in Active for the ConnectRetry timer instead of
//! falling back to Idle, and after an error the machine restarts by itself (RFC 4271 §8.1.1,
//! automatic start) once an idle-hold delay has passed; that delay doubles on every consecutive
//! failure so a broken peer is not hammered.
//!
//! Cold start: when nodes start together, a peer may refuse the connection (no listener yet),
//! or accept it and close it before sending its OPEN (it does not know us yet). Either way the
//! machine tries again after [`FAST_RETRY_FIRST`], doubling up to [`FAST_RETRY_MAX`] (never
//! beyond the ConnectRetry time) until an OPEN arrives, instead of after the full ConnectRetry
//! time: an attempt costs a few packets, and the session comes up within about a second of the
//! peer being ready, however long that took.
//!
//! BFD (RFC 5882 §4.3): [`Event::BfdDown`] ends the session at once with Cease / BFD Down
//! (RFC 9384), flushes the peer's routes (the path is gone; graceful restart does not apply),
//! and holds the session in Idle, refusing connections, until [`Event::BfdUp`]. That holds in
//! every state: when no session is up but routes of an earlier one are still kept stale for a
//! graceful restart, BFD Down flushes those too.

mod open;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::{Afi, GracefulRestart, Message, Negotiated, Notification, OpenPolicy, Update};
use crate::wire::{CeaseError, ErrorCode, FsmError};

pub use open::{keepalive, retained};

/// Hold time used while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// The first retry after a failed outgoing connection.
pub const FAST_RETRY_FIRST: Duration = Duration::from_millis(100);

/// The longest retry interval after failed outgoing connections (the ConnectRetry time, if
/// shorter, caps it instead).
pub const FAST_RETRY_MAX: Duration = Duration::from_secs(1);

/// Session states of RFC 4271 §8.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or waiting out the idle-hold delay after an error.
    Idle,
    /// An outgoing TCP connection is being set up.
    Connect,
    /// Waiting for the peer to connect (or for the ConnectRetry timer to try again).
    Active,
    /// Our OPEN is sent; waiting for the peer's.
    OpenSent,
    /// OPENs exchanged; waiting for the first KEEPALIVE.
    OpenConfirm,
    /// The session is up: UPDATEs flow.
    Established,
}

impl State {
    /// The state's name as RFC 4271 writes it (and `birdc`/`vtysh` show it).
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Names one TCP connection (or connection attempt) of a session. The machine hands out the
/// ids for outgoing attempts ([`Action::Connect`]); the caller picks them for incoming
/// connections, taking care not to reuse one the machine may still track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Who opened a connection; collision resolution keeps the one opened by the higher identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer connected to us.
    Inbound,
    /// We connected to the peer.
    Outbound,
}

/// The machine's timers. The caller runs them and reports expiry with [`Event::TimerExpired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Time between outgoing connection attempts.
    ConnectRetry,
    /// Time the peer may stay silent before the session is dropped.
    Hold,
    /// Time between our KEEPALIVEs.
    Keepalive,
    /// Delay before restarting after an error (automatic start).
    IdleHold,
    /// Time a connection the peer opened beside the established session has to come up
    /// (its OPEN, then its KEEPALIVE) before it is dropped, the session left alone: a
    /// connection that stays silent must not hold the one slot beside the session, which a
    /// restarted peer's connection needs.
    Newcomer,
}

/// Inputs of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
// Events are moved straight into `handle`, never stored; boxing messages would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The operator (or the embedding program) starts the session (RFC event 1).
    ManualStart,
    /// The operator stops the session; the Cease subcode (RFC 4486) says why (RFC event 2).
    ManualStop(CeaseError),
    /// A timer the machine started has expired (RFC events 9–12).
    TimerExpired(Timer),
    /// Our outgoing connection attempt succeeded (RFC event 16, Tcp_CR_Acked).
    TcpConnected(ConnId),
    /// The peer connected to us (RFC event 17, TcpConnectionConfirmed).
    TcpAccepted(ConnId),
    /// A connection or connection attempt failed or was closed by the peer (RFC event 18).
    TcpFailed(ConnId),
    /// A message arrived on a connection (RFC events 19–28).
    Message(ConnId, Message),
    /// A message on a connection could not be parsed; the NOTIFICATION says why (RFC events
    /// 21, 22, 28).
    MessageError(ConnId, Notification),
    /// The BFD session with the peer went down: end the session now and stay down.
    BfdDown,
    /// The BFD session with the peer is up (again): the session may come back.
    BfdUp,
    /// The peer announced more than `limit` prefixes: end the session with Cease / Maximum
    /// Number of Prefixes Reached (RFC 4486), flush its routes, and try again only after
    /// `restart_after`.
    PrefixLimitExceeded {
        /// The limit passed.
        limit: usize,
        /// How long the session stays down.
        restart_after: Duration,
    },
}

/// Outputs of the machine, to be carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open an outgoing TCP connection; report the outcome with `TcpConnected` / `TcpFailed`.
    Connect(ConnId),
    /// Send a message on a connection.
    Send(ConnId, Message),
    /// Close a connection (after sending what was queued) or abandon a connection attempt.
    Close(ConnId),
    /// (Re)start a timer to expire after the duration.
    StartTimer(Timer, Duration),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session reached Established on this connection, with these capabilities.
    SessionUp(ConnId, Negotiated),
    /// The established session ended; or, with [`DownReason::BfdDown`] and nothing retained,
    /// no session is up but the peer's routes kept stale from an earlier one must go.
    SessionDown(Down),
    /// An UPDATE arrived on the established session.
    Deliver(Update),
    /// The peer asked us to send our routes of a family again (RFC 2918).
    RouteRefresh(Afi),
}

/// Why a session is not (or no longer) up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The operator stopped the session with this Cease subcode.
    Stopped(CeaseError),
    /// The peer stayed silent for the hold time.
    HoldTimerExpired,
    /// The peer sent this NOTIFICATION.
    NotificationReceived(Notification),
    /// We sent this NOTIFICATION (a protocol error by the peer).
    NotificationSent(Notification),
    /// The TCP connection failed or was closed without a NOTIFICATION.
    ConnectionLost,
    /// The peer brought a new session up on a connection it opened while the old one was up:
    /// it restarted (RFC 4724 §4.2).
    PeerRestarted,
    /// The BFD session with the peer went down.
    BfdDown,
    /// The peer announced more prefixes than the limit.
    PrefixLimit(usize),
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let describe = |n: &Notification| match ErrorCode::from_pair(n.code, n.subcode) {
            Some(code) => code.to_string(),
            None => format!("code {} subcode {}", n.code, n.subcode),
        };
        match self {
            DownReason::Stopped(c) => write!(f, "stopped: Cease / {c:?}"),
            DownReason::HoldTimerExpired => f.write_str("hold timer expired"),
            DownReason::NotificationReceived(n) => write!(f, "received {}", describe(n)),
            DownReason::NotificationSent(n) => write!(f, "sent {}", describe(n)),
            DownReason::ConnectionLost => f.write_str("connection lost"),
            DownReason::PeerRestarted => f.write_str("peer restarted"),
            DownReason::BfdDown => f.write_str("BFD session down"),
            DownReason::PrefixLimit(limit) => write!(
                f,
                "sent Cease / Maximum Number of Prefixes Reached: more than {limit} prefixes"
            ),
        }
    }
}

/// The end of an established session (or of the stale routes it left: see
/// [`Action::SessionDown`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    /// Why it ended.
    pub reason: DownReason,
    /// The peer's routes of these families must be kept as stale (RFC 4724 §4.2): the peer
    /// advertised graceful restart and the session ended without a NOTIFICATION. Empty means
    /// flush the peer's routes.
    pub retain: Vec<Afi>,
    /// How long to keep them before flushing (the peer's advertised restart time).
    pub restart_time: Duration,
}

/// Per-session settings the machine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The AS the peer must present.
    pub remote_as: u32,
    /// Never connect out; wait for the peer.
    pub passive: bool,
    /// Hold time we propose, in seconds (0 = no keepalives; otherwise at least 3).
    pub hold_time: u16,
    /// Seconds between our KEEPALIVEs; `None`: a third of the negotiated hold time. A longer
    /// setting is cut to that third, so the peer never waits out its hold time between two.
    pub keepalive_time: Option<u16>,
    /// Time between outgoing connection attempts.
    pub connect_retry: Duration,
    /// First delay before an automatic restart after an error; doubles up to `idle_hold_max`.
    pub idle_hold: Duration,
    /// Longest delay before an automatic restart.
    pub idle_hold_max: Duration,
    /// Families we offer.
    pub families: Vec<Afi>,
    /// The graceful-restart capability we advertise, if any (RFC 4724).
    pub graceful_restart: Option<GracefulRestart>,
}

impl SessionConfig {
    /// Settings with the usual defaults: hold time 90 s, connect retry 30 s, idle hold 5 s
    /// doubling to 120 s, IPv4 and IPv6 unicast, active open, no graceful restart.
    pub fn new(local_as: u32, router_id: Ipv4Addr, remote_as: u32) -> Self {
        Self {
            local_as,
            router_id,
            remote_as,
            passive: false,
            hold_time: 90,
            keepalive_time: None,
            connect_retry: Duration::from_secs(30),
            idle_hold: Duration::from_secs(5),
            idle_hold_max: Duration::from_secs(120),
            families: vec![Afi::Ipv4Unicast, Afi::Ipv6Unicast],
            graceful_restart: None,
        }
    }

    /// Whether the peer is in our AS.
    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.remote_as
    }
}

/// Where a connection is in the OPEN exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    OpenSent,
    /// The peer's OPEN is accepted but our KEEPALIVE withheld: the connection loses the
    /// collision to the other one, still in OpenSent, and takes over only if that one fails
    /// (see [`resolve`]). Reported as OpenSent.
    OpenHeld,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone)]
struct Conn {
    id: ConnId,
    direction: Direction,
    state: ConnState,
    negotiated: Option<Negotiated>,
    /// The peer opened this connection while a session was up. Only such a connection can
    /// tell that the peer restarted (RFC 4724 §4.2: a "subsequent" connection); one opened
    /// before the session came up is the other half of a simultaneous open.
    after_up: bool,
    /// The peer's KEEPALIVE came while the connection was held in [`ConnState::OpenHeld`].
    keepalive_received: bool,
}

/// The state machine of one peer.
#[derive(Debug)]
pub struct Fsm {
    config: SessionConfig,
    /// Started by the operator and not stopped since.
    enabled: bool,
    /// Waiting out the idle-hold delay before an automatic start.
    holding: bool,
    /// The outgoing connection attempt in progress.
    connecting: Option<ConnId>,
    conns: Vec<Conn>,
    next_id: u64,
    /// Consecutive failures, for the idle-hold back-off (RFC 4271 ConnectRetryCounter).
    failures: u32,
    /// Connections that failed before the peer's OPEN since one last got that far, for the
    /// cold-start retry.
    connect_failures: u32,
    /// BFD reported the peer unreachable: stay in Idle until it says otherwise.
    bfd_down: bool,
    /// The last [`Action::SessionDown`] kept routes stale: the caller may still hold some of
    /// the peer's routes while no session is up.
    stale_kept: bool,
    state: State,
    since: Instant,
    last_error: Option<DownReason>,
}

impl Fsm {
    /// A machine in Idle; nothing happens until [`Event::ManualStart`].
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        Self {
            config,
            enabled: false,
            holding: false,
            connecting: None,
            conns: Vec::new(),
            next_id: 1,
            failures: 0,
            connect_failures: 0,
            bfd_down: false,
            stale_kept: false,
            state: State::Idle,
            since: now,
            last_error: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the machine entered the current state.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The session's settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Changes the graceful-restart capability advertised in OPENs sent from now on (the
    /// Restart State bit is cleared once a restarting speaker has resynchronised).
    pub fn set_graceful_restart(&mut self, capability: Option<GracefulRestart>) {
        self.config.graceful_restart = capability;
    }

    /// The capabilities of the established session.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.established().and_then(|c| c.negotiated.as_ref())
    }

    /// The connection carrying the established session.
    pub fn established_conn(&self) -> Option<ConnId> {
        self.established().map(|c| c.id)
    }

    /// Whether BFD holds the session down.
    pub fn bfd_down(&self) -> bool {
        self.bfd_down
    }

    /// Why the session last went down or failed to come up.
    pub fn last_error(&self) -> Option<&DownReason> {
        self.last_error.as_ref()
    }

    /// Hands out an id for an incoming connection that no tracked connection uses.
    pub fn next_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Feeds one event; returns what the caller must do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::ManualStart => {
                self.failures = 0;
                self.start(&mut out);
            }
            Event::ManualStop(cease) => self.stop(cease, &mut out),
            Event::TimerExpired(timer) => self.timer(timer, &mut out),
            Event::TcpConnected(id) => {
                if self.connecting == Some(id) {
                    self.connecting = None;
                    self.track(id, Direction::Outbound, &mut out);
                } else {
                    out.push(Action::Close(id));
                }
            }
            Event::TcpAccepted(id) => {
                if self.enabled && !self.holding {
                    self.track(id, Direction::Inbound, &mut out);
                } else {
                    out.push(Action::Close(id));
                }
            }
            Event::TcpFailed(id) => self.tcp_failed(id, &mut out),
            Event::Message(id, message) => self.message(id, message, &mut out),
            Event::MessageError(id, notification) => {
                if self.conn(id).is_some() {
                    self.protocol_error(id, notification, &mut out);
                }
            }
            Event::BfdDown => self.bfd_went_down(&mut out),
            Event::PrefixLimitExceeded {
                limit,
                restart_after,
            } => self.prefix_limit_exceeded(limit, restart_after, &mut out),
            Event::BfdUp => {
                if std::mem::take(&mut self.bfd_down) && self.enabled && self.holding {
                    self.start(&mut out);
                }
            }
        }
        self.release_held(&mut out);
        self.update_state(now);
        out
    }

    fn established(&self) -> Option<&Conn> {
        self.conns
            .iter()
            .find(|c| c.state == ConnState::Established)
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.iter().find(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let pos = self.conns.iter().position(|c| c.id == id)?;
        Some(self.conns.remove(pos))
    }

    fn update_state(&mut self, now: Instant) {
        let has = |s| self.conns.iter().any(|c| c.state == s);
        let state = if has(ConnState::Established) {
            State::Established
        } else if has(ConnState::OpenConfirm) {
            State::OpenConfirm
        } else if has(ConnState::OpenSent) || has(ConnState::OpenHeld) {
            State::OpenSent
        } else if self.connecting.is_some() {
            State::Connect
        } else if self.enabled && !self.holding {
            State::Active
        } else {
            State::Idle
        };
        if state != self.state {
            self.state = state;
            self.since = now;
        }
    }

    /// ManualStart and automatic start: leave Idle for Connect (or Active when passive).
    fn start(&mut self, out: &mut Vec<Action>) {
        if self.state != State::Idle && !self.holding {
            return;
        }
        self.enabled = true;
        if self.bfd_down {
            self.holding = true;
            return;
        }
        self.holding = false;
        self.connect_failures = 0;
        out.push(Action::StopTimer(Timer::IdleHold));
        out.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.config.connect_retry,
        ));
        if !self.config.passive {
            self.connect(out);
        }
    }

    fn connect(&mut self, out: &mut Vec<Action>) {
        let id = self.next_conn_id();
        self.connecting = Some(id);
        out.push(Action::Connect(id));
    }

    fn stop(&mut self, cease: CeaseError, out: &mut Vec<Action>) {
        let notification = cease_notification(cease);
        let was_up = self.established().is_some();
        for conn in std::mem::take(&mut self.conns) {
            out.push(Action::Send(
                conn.id,
                Message::Notification(notification.clone()),
            ));
            out.push(Action::Close(conn.id));
        }
        if let Some(id) = self.connecting.take() {
            out.push(Action::Close(id));
        }
        if was_up {
            self.session_down(
                Down {
                    reason: DownReason::Stopped(cease),
                    retain: Vec::new(),
                    restart_time: Duration::ZERO,
                },
                out,
            );
        }
        self.enabled = false;
        self.holding = false;
        self.failures = 0;
        stop_all_timers(out);
    }

    fn timer(&mut self, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::ConnectRetry => match self.state {
                State::Connect | State::Active => {
                    if let Some(id) = self.connecting.take() {
                        out.push(Action::Close(id));
                    }
                    out.push(Action::StartTimer(
                        Timer::ConnectRetry,
                        self.config.connect_retry,
                    ));
                    if !self.config.passive {
                        self.connect(out);
                    }
                }
                _ => {}
            },
            Timer::IdleHold => {
                if self.enabled && self.holding {
                    self.start(out);
                }
            }
            Timer::Newcomer => {
                // Only beside an established session: before it, the connections share
                // the hold timer.
                if self.established().is_some() {
                    let silent: Vec<ConnId> = self
                        .conns
                        .iter()
                        .filter(|c| c.state != ConnState::Established)
                        .map(|c| c.id)
                        .collect();
                    for id in silent {
                        self.close_with(id, error_notification(ErrorCode::HoldTimerExpired), out);
                    }
                }
            }
            Timer::Hold => {
                if matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) {
                    let notification = error_notification(ErrorCode::HoldTimerExpired);
                    for conn in &self.conns {
                        out.push(Action::Send(
                            conn.id,
                            Message::Notification(notification.clone()),
                        ));
                    }
                    self.fail(DownReason::HoldTimerExpired, out);
                }
            }
            Timer::Keepalive => {
                // Every connection past the OPEN exchange: a connection the peer opened while
                // the session is up waits in OpenConfirm beside it (see `open_received`), and
                // the peer must not time it out meanwhile.
                let mut interval = None;
                for conn in &self.conns {
                    if matches!(conn.state, ConnState::OpenConfirm | ConnState::Established) {
                        out.push(Action::Send(conn.id, Message::Keepalive));
                        interval = interval.or(conn.negotiated.as_ref().map(keepalive));
                    }
                }
                if let Some(interval) = interval {
                    out.push(Action::StartTimer(Timer::Keepalive, interval));
                }
            }
        }
    }

    /// A TCP connection is up: send our OPEN on it and wait for the peer's.
    fn track(&mut self, id: ConnId, direction: Direction, out: &mut Vec<Action>) {
        if self.conns.len() >= 2 {
            out.push(Action::Close(id));
            return;
        }
        if self.conns.is_empty() {
            out.push(Action::StopTimer(Timer::ConnectRetry));
            out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
        }
        let beside_session = self.established().is_some();
        let after_up = direction == Direction::Inbound && beside_session;
        if beside_session {
            out.push(Action::StartTimer(Timer::Newcomer, OPEN_HOLD_TIME));
        }
        self.conns.push(Conn {
            id,
            direction,
            state: ConnState::OpenSent,
            negotiated: None,
            after_up,
            keepalive_received: false,
        });
        out.push(Action::Send(
            id,
            Message::Open(open::local_open(&self.config)),
        ));
    }

    fn tcp_failed(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if self.connecting == Some(id) {
            // Stay in Active, and try again soon: the peer may only be starting.
            self.connecting = None;
            out.push(Action::StartTimer(Timer::ConnectRetry, self.fast_retry()));
            self.connect_failures = self.connect_failures.saturating_add(1);
            return;
        }
        let Some(conn) = self.remove(id) else {
            return;
        };
        out.push(Action::Close(id));
        match conn.state {
            ConnState::Established => {
                let (retain, restart_time) = match &conn.negotiated {
                    Some(n) => retained(&self.config, n),
                    None => (Vec::new(), Duration::ZERO),
                };
                self.fail_with(DownReason::ConnectionLost, retain, restart_time, out);
            }
            _ if !self.conns.is_empty() => {}
            // RFC 4271: OpenSent goes back to Active and retries; soon, as the peer closing
            // before its OPEN is most often a peer that does not know us yet.
            ConnState::OpenSent | ConnState::OpenHeld => self.retry_soon(out),
            ConnState::OpenConfirm => self.fail(DownReason::ConnectionLost, out),
        }
    }

    /// Back to Active with no connection left, to connect again after the fast retry.
    fn retry_soon(&mut self, out: &mut Vec<Action>) {
        out.push(Action::StopTimer(Timer::Hold));
        out.push(Action::StartTimer(Timer::ConnectRetry, self.fast_retry()));
        self.connect_failures = self.connect_failures.saturating_add(1);
    }

    fn message(&mut self, id: ConnId, message: Message, out: &mut Vec<Action>) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        let state = conn.state;
        match (state, message) {
            (_, Message::Notification(n)) => {
                self.remove(id);
                out.push(Action::Close(id));
                let collision = ErrorCode::from_pair(n.code, n.subcode)
                    == Some(ErrorCode::Cease(CeaseError::ConnectionCollisionResolution));
                let reason = DownReason::NotificationReceived(n);
                if state == ConnState::Established {
                    self.fail(reason, out);
                } else if collision {
                    // The peer resolved a collision for its other connection: no error. Its
                    // connection may not have reached us yet (or been seen by the peer task),
                    // so wait for it in Active, accepting, rather than hold in Idle and
                    // refuse it; if it never comes, connect again soon.
                    if self.conns.is_empty() {
                        self.retry_soon(out);
                    }
                } else if self.conns.is_empty() {
                    self.fail(reason, out);
                } else {
                    self.last_error = Some(reason);
                }
            }
            (ConnState::OpenSent, Message::Open(remote)) => {
                let local = open::local_open(&self.config);
                let policy = OpenPolicy {
                    peer_as: Some(self.config.remote_as),
                    required_capabilities: Vec::new(),
                };
                match crate::wire::negotiate(&local, &remote, &policy) {
                    Ok(mut negotiated) => {
                        negotiated.keepalive_time =
                            open::keepalive_time(&self.config, negotiated.hold_time);
                        self.open_received(id, negotiated, out)
                    }
                    Err(error) => self.protocol_error(id, error.notification(), out),
                }
            }
            (ConnState::OpenConfirm, Message::Keepalive) => self.session_up(id, out),
            (ConnState::OpenHeld, Message::Keepalive) => {
                // The peer confirmed first; the session comes up if this connection is
                // released.
                if let Some(conn) = self.conn_mut(id) {
                    conn.keepalive_received = true;
                }
            }
            (ConnState::Established, Message::Keepalive) => self.keep_alive(id, out),
            (ConnState::Established, Message::Update(update)) => {
                self.keep_alive(id, out);
                out.push(Action::Deliver(update));
            }
            (ConnState::Established, Message::RouteRefresh(afi)) => {
                self.keep_alive(id, out);
                out.push(Action::RouteRefresh(afi));
            }
            (state, _) => {
                let sub = match state {
                    ConnState::OpenSent | ConnState::OpenHeld => FsmError::UnexpectedInOpenSent,
                    ConnState::OpenConfirm => FsmError::UnexpectedInOpenConfirm,
                    ConnState::Established => FsmError::UnexpectedInEstablished,
                };
                self.protocol_error(id, error_notification(ErrorCode::Fsm(sub)), out);
            }
        }
    }

    /// The peer's OPEN on `id` is acceptable: resolve a collision with the peer's other
    /// connection, if any (RFC 4271 §6.8), then confirm with a KEEPALIVE.
    fn open_received(&mut self, id: ConnId, negotiated: Negotiated, out: &mut Vec<Action>) {
        let Some(this) = self.conn(id).cloned() else {
            return;
        };
        if let Some(up) = self.established().filter(|c| c.id != id).cloned() {
            let graceful = up
                .negotiated
                .as_ref()
                .is_some_and(|n| !retained(&self.config, n).0.is_empty());
            if this.after_up && graceful {
                // RFC 4724 §4.2: an OPEN on a connection the peer opened after the session
                // came up says the peer restarted and its end of the session is gone. Confirm
                // the new connection, and end the old session when the peer confirms too
                // (`session_up`): a peer that did not restart never does, because the
                // connection is a late half of a simultaneous open, which it closes with
                // Cease / Connection Collision Resolution as we would. The established
                // session's timers run on meanwhile.
                self.confirm(id, negotiated, false, out);
                return;
            }
            // RFC 4271 §6.8: a collision with an established session closes the newcomer.
            // Without graceful restart the peer's restart shows as the old connection failing.
            self.reject(id, out);
            return;
        }
        let winner = collision_winner(
            (self.config.router_id, self.config.local_as),
            (negotiated.peer_router_id, negotiated.peer_as),
        );
        let others: Vec<Conn> = self.conns.iter().filter(|c| c.id != id).cloned().collect();
        for other in others {
            match resolve(this.direction, &other, winner) {
                Keep::This => self.reject(other.id, out),
                Keep::Other => {
                    self.reject(id, out);
                    return;
                }
                Keep::Hold => {
                    if let Some(conn) = self.conn_mut(id) {
                        conn.state = ConnState::OpenHeld;
                        conn.negotiated = Some(negotiated);
                    }
                    return;
                }
            }
        }
        // As BIRD does: with an OPEN in hand, stop connecting. Our attempt, were it to
        // complete now, would only open a connection that one side refuses and the other
        // may already count on.
        if let Some(attempt) = self.connecting.take() {
            out.push(Action::Close(attempt));
        }
        self.connect_failures = 0;
        self.confirm(id, negotiated, true, out);
    }

    /// A connection held in [`ConnState::OpenHeld`], once the one it was held for is gone:
    /// confirmed after all, straight to Established if the peer's KEEPALIVE came meanwhile.
    fn release_held(&mut self, out: &mut Vec<Action>) {
        let [held] = self.conns.as_slice() else {
            return;
        };
        if held.state != ConnState::OpenHeld {
            return;
        }
        let (id, early) = (held.id, held.keepalive_received);
        let Some(negotiated) = held.negotiated.clone() else {
            return;
        };
        self.confirm(id, negotiated, true, out);
        if early {
            self.session_up(id, out);
        }
    }

    /// Closes a connection that lost a collision, with Cease / Connection Collision Resolution.
    fn reject(&mut self, id: ConnId, out: &mut Vec<Action>) {
        let collision = cease_notification(CeaseError::ConnectionCollisionResolution);
        self.close_with(id, collision, out);
    }

    /// Sends `notification` on connection `id` and closes it, if it is one of ours; the
    /// connection it was.
    fn close_with(
        &mut self,
        id: ConnId,
        notification: Notification,
        out: &mut Vec<Action>,
    ) -> Option<Conn> {
        let conn = self.remove(id)?;
        out.push(Action::Send(id, Message::Notification(notification)));
        out.push(Action::Close(id));
        Some(conn)
    }

    /// OpenConfirm on `id`: the peer's OPEN accepted, our KEEPALIVE sent. With `timers` the
    /// hold and keepalive timers follow this connection's negotiation; not while it waits
    /// beside an established session, whose timers they are.
    fn confirm(&mut self, id: ConnId, negotiated: Negotiated, timers: bool, out: &mut Vec<Action>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.state = ConnState::OpenConfirm;
        conn.negotiated = Some(negotiated.clone());
        out.push(Action::Send(id, Message::Keepalive));
        if timers {
            self.restart_hold(&negotiated, out);
            self.restart_keepalive(&negotiated, out);
        }
    }

    /// The peer's KEEPALIVE in OpenConfirm: the session is up on `id`.
    fn session_up(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if let Some(old) = self.established().filter(|c| c.id != id).cloned() {
            // The peer confirmed a connection it opened while this session was up (see
            // `open_received`): it restarted (RFC 4724 §4.2). The old session ends without a
            // NOTIFICATION, as the peer's end of it is gone, and its routes are kept stale.
            self.remove(old.id);
            out.push(Action::Close(old.id));
            let (retain, restart_time) = old
                .negotiated
                .as_ref()
                .map(|n| retained(&self.config, n))
                .unwrap_or_default();
            self.last_error = Some(DownReason::PeerRestarted);
            self.session_down(
                Down {
                    reason: DownReason::PeerRestarted,
                    retain,
                    restart_time,
                },
                out,
            );
            if let Some(n) = self.conn(id).and_then(|c| c.negotiated.clone()) {
                self.restart_keepalive(&n, out);
            }
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.state = ConnState::Established;
        let negotiated = conn.negotiated.clone();
        if let Some(n) = negotiated {
            self.restart_hold(&n, out);
            out.push(Action::SessionUp(id, n));
        }
        self.failures = 0;
    }

    fn keep_alive(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if let Some(n) = self.conn(id).and_then(|c| c.negotiated.clone()) {
            self.restart_hold(&n, out);
        }
    }

    fn restart_keepalive(&self, negotiated: &Negotiated, out: &mut Vec<Action>) {
        if negotiated.hold_time == 0 {
            out.push(Action::StopTimer(Timer::Keepalive));
        } else {
            out.push(Action::StartTimer(Timer::Keepalive, keepalive(negotiated)));
        }
    }

    fn restart_hold(&self, negotiated: &Negotiated, out: &mut Vec<Action>) {
        if negotiated.hold_time == 0 {
            out.push(Action::StopTimer(Timer::Hold));
        } else {
            let hold = Duration::from_secs(u64::from(negotiated.hold_time));
            out.push(Action::StartTimer(Timer::Hold, hold));
        }
    }

    /// Send a NOTIFICATION for the peer's protocol error and drop the connection.
    fn protocol_error(&mut self, id: ConnId, notification: Notification, out: &mut Vec<Action>) {
        let Some(conn) = self.close_with(id, notification.clone(), out) else {
            return;
        };
        let reason = DownReason::NotificationSent(notification);
        if conn.state == ConnState::Established || self.conns.is_empty() {
            self.fail(reason, out);
        } else {
            self.last_error = Some(reason);
        }
    }

    /// Back to Idle after an error, flushing the peer's routes; restart after the idle hold.
    fn fail(&mut self, reason: DownReason, out: &mut Vec<Action>) {
        self.fail_with(reason, Vec::new(), Duration::ZERO, out);
    }

    fn fail_with(
        &mut self,
        reason: DownReason,
        retain: Vec<Afi>,
        restart_time: Duration,
        out: &mut Vec<Action>,
    ) {
        // `state` still holds the state before this event.
        let was_up = self.state == State::Established;
        for conn in std::mem::take(&mut self.conns) {
            out.push(Action::Close(conn.id));
        }
        if let Some(id) = self.connecting.take() {
            out.push(Action::Close(id));
        }
        stop_all_timers(out);
        if was_up {
            self.session_down(
                Down {
                    reason: reason.clone(),
                    retain,
                    restart_time,
                },
                out,
            );
        }
        self.last_error = Some(reason);
        self.failures = self.failures.saturating_add(1);
        if self.enabled {
            self.holding = true;
            if !self.bfd_down {
                out.push(Action::StartTimer(Timer::IdleHold, self.idle_hold()));
            }
        }
    }

    /// Reports the end of the established session, and remembers whether it left routes
    /// stale.
    fn session_down(&mut self, down: Down, out: &mut Vec<Action>) {
        self.stale_kept = !down.retain.is_empty();
        out.push(Action::SessionDown(down));
    }

    /// A Cease NOTIFICATION with `subcode` on every connection.
    fn send_cease(&self, subcode: CeaseError, out: &mut Vec<Action>) {
        let notification = cease_notification(subcode);
        for conn in &self.conns {
            out.push(Action::Send(
                conn.id,
                Message::Notification(notification.clone()),
            ));
        }
    }

    /// BFD says the peer is unreachable: Cease / BFD Down on every connection, the peer's
    /// routes flushed, and no restart until [`Event::BfdUp`].
    fn bfd_went_down(&mut self, out: &mut Vec<Action>) {
        if self.bfd_down {
            return;
        }
        self.bfd_down = true;
        if !self.enabled {
            return;
        }
        self.send_cease(CeaseError::BfdDown, out);
        // Flushes the routes when a session was up (and clears `stale_kept`).
        self.fail(DownReason::BfdDown, out);
        if std::mem::take(&mut self.stale_kept) {
            // No session was up, but one that ended moments ago (a lost connection) left the
            // peer's routes stale for a graceful restart, to last the peer's restart time. The
            // path is gone: they go now.
            out.push(Action::SessionDown(Down {
                reason: DownReason::BfdDown,
                retain: Vec::new(),
                restart_time: Duration::ZERO,
            }));
        }
    }

    /// The peer passed its prefix limit: Cease / Maximum Number of Prefixes Reached on the
    /// established session, its routes flushed (graceful restart does not keep them), and the
    /// next attempt only after `restart_after`.
    fn prefix_limit_exceeded(
        &mut self,
        limit: usize,
        restart_after: Duration,
        out: &mut Vec<Action>,
    ) {
        if self.state != State::Established {
            return;
        }
        self.send_cease(CeaseError::MaximumPrefixesReached, out);
        self.fail(DownReason::PrefixLimit(limit), out);
        if self.enabled && !self.bfd_down {
            // Restarts the idle-hold timer `fail` started, with the limit's own delay.
            out.push(Action::StartTimer(Timer::IdleHold, restart_after));
        }
    }

    /// The delay before retrying after `connect_failures` failed attempts: doubling from
    /// [`FAST_RETRY_FIRST`], capped by [`FAST_RETRY_MAX`] and the ConnectRetry time.
    fn fast_retry(&self) -> Duration {
        let doublings = self.connect_failures.min(16);
        let delay = FAST_RETRY_FIRST.saturating_mul(1 << doublings);
        delay.min(FAST_RETRY_MAX).min(self.config.connect_retry)
    }

    /// The idle-hold delay after `failures` consecutive failures: doubling, capped.
    fn idle_hold(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        let delay = self.config.idle_hold.saturating_mul(1 << doublings);
        delay.min(self.config.idle_hold_max)
    }
}

/// The direction of the connection that survives a collision (RFC 4271 §6.8): the one
/// opened by the speaker with the higher BGP identifier, or with equal identifiers (possible
/// between ASes) the higher AS (RFC 6286 §2.3). Both speakers reach the same connection.
fn collision_winner(local: (Ipv4Addr, u32), remote: (Ipv4Addr, u32)) -> Direction {
    let (local_id, local_as) = local;
    let (remote_id, remote_as) = remote;
    if (u32::from(local_id), local_as) < (u32::from(remote_id), remote_as) {
        Direction::Inbound
    } else {
        Direction::Outbound
    }
}

/// What a collision leaves of two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// The connection whose OPEN just arrived; the other is closed.
    This,
    /// The other connection; this one is closed.
    Other,
    /// The other, which is still waiting for the peer's OPEN; this one is kept, unconfirmed,
    /// in case the other fails.
    Hold,
}

/// Resolves the collision between a connection whose OPEN just arrived, opened in direction
/// `this`, and `other`, not established, when connections opened in direction `winner`
/// survive.
///
/// The peer's identifier is known from the OPEN, so connections in OpenSent are weighed too
/// (RFC 4271 §6.8 allows it; FRR does it). What matters is that the losing connection never
/// reaches Established on either side: otherwise one side can weigh an established session
/// against the winner's OPEN (and keep the session) while the other weighs the same two
/// connections in OpenConfirm (and keep the winner), and both end up closed. So no KEEPALIVE
/// goes out on the losing connection while the winning one waits for the peer's OPEN: the
/// loser is held, and confirmed after all only if the winner fails (the peer may have
/// refused it, not knowing us yet, or given it up as it stops connecting once it has an
/// OPEN, as we do). The winner's OPEN, when it comes, closes the loser.
fn resolve(this: Direction, other: &Conn, winner: Direction) -> Keep {
    let other_has_open = matches!(other.state, ConnState::OpenConfirm | ConnState::OpenHeld);
    if this == other.direction {
        // Two connections from one side (the peer reconnected while an older one never
        // carried an OPEN): the first with an OPEN stays.
        return if other_has_open {
            Keep::Other
        } else {
            Keep::This
        };
    }
    if this == winner {
        Keep::This
    } else if other_has_open {
        Keep::Other
    } else {
        Keep::Hold
    }
}

fn stop_all_timers(out: &mut Vec<Action>) {
    for timer in [
        Timer::ConnectRetry,
        Timer::Hold,
        Timer::Keepalive,
        Timer::IdleHold,
        Timer::Newcomer,
    ] {
        out.push(Action::StopTimer(timer));
    }
}

/// The NOTIFICATION for an error code, without data.
pub fn error_notification(code: ErrorCode) -> Notification {
    Notification {
        code: code.code(),
        subcode: code.subcode(),
        data: Vec::new(),
    }
}

/// The Cease NOTIFICATION with a subcode (RFC 4486).
pub fn cease_notification(cease: CeaseError) -> Notification {
    error_notification(ErrorCode::Cease(cease))
}
