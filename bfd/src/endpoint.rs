//! The tokio edge of BFD for single-hop sessions (RFC 5881).
//!
//! One task runs every session of the node. It receives on one socket per address family,
//! bound to UDP port 3784, and finds a packet's session by Your Discriminator, or by the
//! sender's address while the sender does not know ours yet. Every packet must arrive with
//! TTL (IPv4) or hop limit (IPv6) 255, which only a directly connected sender can produce
//! (RFC 5881 §5); the kernel reports it with each datagram (`IP_RECVTTL`,
//! `IPV6_RECVHOPLIMIT`). Each session sends from its own socket, bound to the session's local
//! address and to a source port of its own in 49152–65535 (§4), with TTL 255 and the
//! network-control traffic class (CS6) that bfdd and BIRD use too.
//!
//! State changes go to every subscriber ([`EndpointHandle::subscribe`]) in order; a BGP
//! speaker takes a session down on [`SessionEvent::is_failure`] and lets it come back on Up.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::packet::{ControlPacket, Diagnostic, State};
use crate::session::{Action, Change, ConfigError, Event, Session, SessionConfig, Timer};

/// The destination port of single-hop Control packets (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;

/// Source ports of Control packets (RFC 5881 §4).
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// The TTL or hop limit sent, and required on receipt (RFC 5881 §5).
pub const TTL: u8 = 255;

/// IP precedence 6 (CS6), as routing protocols mark their packets.
const TOS_NETWORK_CONTROL: u32 = 0xc0;

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// IPv4 address to receive on (`0.0.0.0`: all); `None`: no IPv4 sessions.
    pub listen_v4: Option<Ipv4Addr>,
    /// IPv6 address to receive on (`::`: all); `None`: no IPv6 sessions.
    pub listen_v6: Option<Ipv6Addr>,
    /// The port to receive on: [`CONTROL_PORT`] except in tests.
    pub port: u16,
}

impl Default for EndpointConfig {
    /// Both families, every address, port 3784.
    fn default() -> Self {
        Self {
            listen_v4: Some(Ipv4Addr::UNSPECIFIED),
            listen_v6: Some(Ipv6Addr::UNSPECIFIED),
            port: CONTROL_PORT,
        }
    }
}

/// One single-hop session to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The neighbour's address; one session per address.
    pub peer: IpAddr,
    /// Our address on the link: the source of our packets.
    pub local: IpAddr,
    /// The interface the neighbour is on: packets leave through it (`SO_BINDTODEVICE`), and
    /// it scopes an IPv6 link-local neighbour.
    pub interface: Option<String>,
    /// Intervals, multiplier and role.
    pub timing: SessionConfig,
}

/// Errors of the endpoint API.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: io::Error,
    },
    /// The session's timing is out of range.
    #[error("session with {peer}: {source}")]
    Config {
        /// The neighbour.
        peer: IpAddr,
        /// What is wrong.
        source: ConfigError,
    },
    /// The session's peer and local addresses are of different families.
    #[error("session with {0}: local address {1} is of the other address family")]
    MixedFamilies(IpAddr, IpAddr),
    /// The endpoint does not receive on the session's address family.
    #[error("session with {0}: the endpoint does not listen on this address family")]
    FamilyNotListening(IpAddr),
    /// A session with this neighbour exists already.
    #[error("a session with {0} exists already")]
    SessionExists(IpAddr),
    /// No session with this neighbour.
    #[error("no session with {0}")]
    NoSuchSession(IpAddr),
    /// The endpoint has stopped.
    #[error("the BFD endpoint has stopped")]
    Stopped,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> EndpointError {
    let what = what.into();
    move |source| EndpointError::Io { what, source }
}

/// A session's state change, for subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEvent {
    /// The neighbour.
    pub peer: IpAddr,
    /// From, to, and our diagnostic.
    pub change: Change,
    /// The neighbour's state as its last packet said.
    pub remote_state: State,
    /// When the endpoint saw the change.
    pub at: Instant,
}

impl SessionEvent {
    /// Whether this is a forwarding failure a client protocol must act on: the session left
    /// Up, and not because either side's operator took it down (RFC 5882 §3.2: a neighbour's
    /// AdminDown says nothing about the path).
    pub fn is_failure(&self) -> bool {
        self.change.from == State::Up
            && self.change.to == State::Down
            && self.remote_state != State::AdminDown
    }
}

/// A session's state and counters, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The neighbour.
    pub peer: IpAddr,
    /// Our address.
    pub local: IpAddr,
    /// Session state.
    pub state: State,
    /// When it entered that state.
    pub since: Instant,
    /// The neighbour's state from its last packet.
    pub remote_state: State,
    /// Our discriminator.
    pub local_discriminator: u32,
    /// The neighbour's, 0 while unknown.
    pub remote_discriminator: u32,
    /// Why the session last changed state.
    pub diagnostic: Diagnostic,
    /// The diagnostic in the neighbour's last packet.
    pub remote_diagnostic: Diagnostic,
    /// Detection time now in force.
    pub detection_time: Option<Duration>,
    /// Interval between our packets now, before jitter.
    pub transmit_interval: Option<Duration>,
    /// Control packets sent.
    pub packets_sent: u64,
    /// Control packets received for this session.
    pub packets_received: u64,
    /// When the last of them arrived.
    pub last_received: Option<Instant>,
    /// Packets that could not be sent (the socket refused them).
    pub send_errors: u64,
    /// Times the session went Up.
    pub ups: u64,
    /// Times it went from Up to Down.
    pub downs: u64,
}

/// Packets the endpoint discarded before any session saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Failed the checks of RFC 5880 §6.8.6.
    pub invalid: u64,
    /// Arrived with a TTL or hop limit other than 255, or without one reported.
    pub ttl: u64,
    /// Matched no session (unknown discriminator or sender).
    pub unknown_session: u64,
}

/// The endpoint: every session of the node.
#[derive(Debug)]
pub struct Endpoint;

impl Endpoint {
    /// Binds the receiving sockets in the current network namespace and starts the task.
    pub async fn start(
        config: EndpointConfig,
    ) -> Result<(EndpointHandle, JoinHandle<()>), EndpointError> {
        let v4 = match config.listen_v4 {
            Some(a) => Some(listen(SocketAddr::new(a.into(), config.port))?),
            None => None,
        };
        let v6 = match config.listen_v6 {
            Some(a) => Some(listen(SocketAddr::new(a.into(), config.port))?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(64);
        let core = Core {
            v4,
            v6,
            sessions: HashMap::new(),
            by_peer: HashMap::new(),
            subscribers: Vec::new(),
            discarded: Discarded::default(),
            random: RandomState::new(),
            counter: 0,
            next_port: *SOURCE_PORTS.start(),
        };
        let task = tokio::spawn(core.run(rx));
        Ok((EndpointHandle { tx }, task))
    }
}

/// Drives a running endpoint; cheap to clone.
#[derive(Debug, Clone)]
pub struct EndpointHandle {
    tx: mpsc::Sender<Command>,
}

type Reply<T> = oneshot::Sender<T>;

#[derive(Debug)]
enum Command {
    Add(PeerSpec, Reply<Result<(), EndpointError>>),
    Remove(IpAddr, Reply<Result<(), EndpointError>>),
    Admin(IpAddr, bool, Reply<Result<(), EndpointError>>),
    Reconfigure(IpAddr, SessionConfig, Reply<Result<(), EndpointError>>),
    Subscribe(Reply<mpsc::UnboundedReceiver<SessionEvent>>),
    Sessions(Reply<Vec<SessionStatus>>),
    Discarded(Reply<Discarded>),
    Shutdown(Reply<()>),
}

impl EndpointHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EndpointError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| EndpointError::Stopped)?;
        answer.await.map_err(|_| EndpointError::Stopped)
    }

    /// Sets up a session and starts it.
    pub async fn add_session(&self, spec: PeerSpec) -> Result<(), EndpointError> {
        self.ask(|r| Command::Add(spec, r)).await?
    }

    /// Tells the neighbour AdminDown, then forgets the session.
    pub async fn remove_session(&self, peer: IpAddr) -> Result<(), EndpointError> {
        self.ask(|r| Command::Remove(peer, r)).await?
    }

    /// Holds a session in AdminDown (`up` false) or lets it run again.
    pub async fn set_admin(&self, peer: IpAddr, up: bool) -> Result<(), EndpointError> {
        self.ask(|r| Command::Admin(peer, up, r)).await?
    }

    /// Changes a session's timing (through a Poll Sequence).
    pub async fn reconfigure(
        &self,
        peer: IpAddr,
        timing: SessionConfig,
    ) -> Result<(), EndpointError> {
        timing
            .validate()
            .map_err(|source| EndpointError::Config { peer, source })?;
        self.ask(|r| Command::Reconfigure(peer, timing, r)).await?
    }

    /// Every state change from now on, in order.
    pub async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<SessionEvent>, EndpointError> {
        self.ask(Command::Subscribe).await
    }

    /// Every session's state and counters, ordered by neighbour.
    pub async fn sessions(&self) -> Result<Vec<SessionStatus>, EndpointError> {
        self.ask(Command::Sessions).await
    }

    /// One session's state and counters.
    pub async fn session(&self, peer: IpAddr) -> Result<SessionStatus, EndpointError> {
        let all = self.sessions().await?;
        all.into_iter()
            .find(|s| s.peer == peer)
            .ok_or(EndpointError::NoSuchSession(peer))
    }

    /// Packets discarded before reaching a session.
    pub async fn discarded(&self) -> Result<Discarded, EndpointError> {
        self.ask(Command::Discarded).await
    }

    /// Tells every neighbour AdminDown and ends the task.
    pub async fn shutdown(&self) -> Result<(), EndpointError> {
        self.ask(Command::Shutdown).await
    }
}

/// The receiving socket of one family, asking the kernel for each datagram's TTL.
fn listen(address: SocketAddr) -> Result<UdpSocket, EndpointError> {
    let what = format!("BFD socket on {address}");
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(io_error(what.clone()))?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(io_error(what.clone()))?;
        setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true)
            .map_err(|e| io_error(what.clone())(e.into()))?;
    } else {
        setsockopt(&socket, sockopt::Ipv4RecvTtl, &true)
            .map_err(|e| io_error(what.clone())(e.into()))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(io_error(what.clone()))?;
    socket
        .bind(&address.into())
        .map_err(io_error(what.clone()))?;
    UdpSocket::from_std(StdUdpSocket::from(socket)).map_err(io_error(what))
}

struct Entry {
    session: Session,
    spec: PeerSpec,
    destination: SocketAddr,
    socket: StdUdpSocket,
    transmit: Option<Instant>,
    detect: Option<Instant>,
    since: Instant,
    remote_diagnostic: Diagnostic,
    sent: u64,
    received: u64,
    last_received: Option<Instant>,
    send_errors: u64,
    ups: u64,
    downs: u64,
}

impl Entry {
    fn next_deadline(&self) -> Option<Instant> {
        match (self.transmit, self.detect) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn status(&self) -> SessionStatus {
        SessionStatus {
            peer: self.spec.peer,
            local: self.spec.local,
            state: self.session.state(),
            since: self.since,
            remote_state: self.session.remote_state(),
            local_discriminator: self.session.local_discriminator(),
            remote_discriminator: self.session.remote_discriminator(),
            diagnostic: self.session.local_diagnostic(),
            remote_diagnostic: self.remote_diagnostic,
            detection_time: self.session.detection_time(),
            transmit_interval: self.session.transmit_interval(),
            packets_sent: self.sent,
            packets_received: self.received,
            last_received: self.last_received,
            send_errors: self.send_errors,
            ups: self.ups,
            downs: self.downs,
        }
    }
}

struct Core {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// By local discriminator.
    sessions: HashMap<u32, Entry>,
    by_peer: HashMap<IpAddr, u32>,
    subscribers: Vec<mpsc::UnboundedSender<SessionEvent>>,
    discarded: Discarded,
    random: RandomState,
    counter: u64,
    next_port: u16,
}

/// A received datagram: payload length, sender, TTL or hop limit if reported.
type Datagram = (usize, SocketAddr, Option<i32>);

impl Core {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let (mut buf4, mut buf6) = ([0u8; 512], [0u8; 512]);
        loop {
            let deadline = self
                .sessions
                .values()
                .filter_map(Entry::next_deadline)
                .min();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown();
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                    None => {
                        self.shutdown();
                        return;
                    }
                },
                got = receive(self.v4.as_ref(), &mut buf4) => self.datagram(got, &buf4),
                got = receive(self.v6.as_ref(), &mut buf6) => self.datagram(got, &buf6),
                _ = sleep_until(deadline) => self.expire(),
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Add(spec, reply) => {
                let _ = reply.send(self.add(spec));
            }
            Command::Remove(peer, reply) => {
                let result = match self.by_peer.remove(&peer) {
                    Some(disc) => {
                        self.event(disc, Event::AdminDown);
                        self.sessions.remove(&disc);
                        Ok(())
                    }
                    None => Err(EndpointError::NoSuchSession(peer)),
                };
                let _ = reply.send(result);
            }
            Command::Admin(peer, up, reply) => {
                let event = if up { Event::AdminUp } else { Event::AdminDown };
                let _ = reply.send(self.deliver(peer, event));
            }
            Command::Reconfigure(peer, timing, reply) => {
                let result = self.deliver(peer, Event::Reconfigure(timing));
                if let Some(entry) = self
                    .by_peer
                    .get(&peer)
                    .and_then(|d| self.sessions.get_mut(d))
                {
                    entry.spec.timing = timing;
                }
                let _ = reply.send(result);
            }
            Command::Subscribe(reply) => {
                let (tx, rx) = mpsc::unbounded_channel();
                if reply.send(rx).is_ok() {
                    self.subscribers.push(tx);
                }
            }
            Command::Sessions(reply) => {
                let mut all: Vec<SessionStatus> =
                    self.sessions.values().map(Entry::status).collect();
                all.sort_by_key(|s| s.peer);
                let _ = reply.send(all);
            }
            Command::Discarded(reply) => {
                let _ = reply.send(self.discarded);
            }
            Command::Shutdown(_) => {}
        }
    }

    fn deliver(&mut self, peer: IpAddr, event: Event) -> Result<(), EndpointError> {
        let disc = *self
            .by_peer
            .get(&peer)
            .ok_or(EndpointError::NoSuchSession(peer))?;
        self.event(disc, event);
        Ok(())
    }

    fn add(&mut self, spec: PeerSpec) -> Result<(), EndpointError> {
        let peer = spec.peer;
        if self.by_peer.contains_key(&peer) {
            return Err(EndpointError::SessionExists(peer));
        }
        spec.timing
            .validate()
            .map_err(|source| EndpointError::Config { peer, source })?;
        if peer.is_ipv4() != spec.local.is_ipv4() {
            return Err(EndpointError::MixedFamilies(peer, spec.local));
        }
        let listening = if peer.is_ipv4() { &self.v4 } else { &self.v6 };
        if listening.is_none() {
            return Err(EndpointError::FamilyNotListening(peer));
        }
        let (socket, destination) = self.sender(&spec)?;
        let disc = self.discriminator();
        let seed = self.random.hash_one(("jitter", disc));
        let session = Session::new(spec.timing, disc, seed);
        self.sessions.insert(
            disc,
            Entry {
                session,
                spec,
                destination,
                socket,
                transmit: None,
                detect: None,
                since: Instant::now(),
                remote_diagnostic: Diagnostic::None,
                sent: 0,
                received: 0,
                last_received: None,
                send_errors: 0,
                ups: 0,
                downs: 0,
            },
        );
        self.by_peer.insert(peer, disc);
        if let Some(entry) = self.sessions.get_mut(&disc) {
            let actions = entry.session.start();
            self.apply(disc, actions);
        }
        Ok(())
    }

    /// A random discriminator, non-zero and unused (RFC 5880 §6.8.1 wants it unique and
    /// recommends it random).
    fn discriminator(&mut self) -> u32 {
        loop {
            self.counter += 1;
            let candidate = self.random.hash_one(self.counter) as u32;
            if candidate != 0 && !self.sessions.contains_key(&candidate) {
                return candidate;
            }
        }
    }

    /// The session's own sending socket: bound to its local address and a free port of
    /// 49152–65535, TTL 255, CS6, on its interface if one is given.
    fn sender(&mut self, spec: &PeerSpec) -> Result<(StdUdpSocket, SocketAddr), EndpointError> {
        let what = format!("BFD sending socket for {} from {}", spec.peer, spec.local);
        let domain = if spec.peer.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .map_err(io_error(what.clone()))?;
        let mut scope = 0;
        if let Some(ifname) = &spec.interface {
            socket
                .bind_device(Some(ifname.as_bytes()))
                .map_err(io_error(format!("{what}: interface {ifname}")))?;
            scope = nix::net::if_::if_nametoindex(ifname.as_str())
                .map_err(|e| io_error(format!("{what}: interface {ifname}"))(e.into()))?;
        }
        if spec.peer.is_ipv4() {
            socket
                .set_ttl_v4(u32::from(TTL))
                .map_err(io_error(what.clone()))?;
            socket
                .set_tos_v4(TOS_NETWORK_CONTROL)
                .map_err(io_error(what.clone()))?;
        } else {
            socket
                .set_unicast_hops_v6(u32::from(TTL))
                .map_err(io_error(what.clone()))?;
            socket
                .set_tclass_v6(TOS_NETWORK_CONTROL)
                .map_err(io_error(what.clone()))?;
        }
        socket
            .set_nonblocking(true)
            .map_err(io_error(what.clone()))?;
        let local_scope = |ip: IpAddr| match ip {
            IpAddr::V6(v6) if v6.is_unicast_link_local() => {
                SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, scope))
            }
            other => SocketAddr::new(other, 0),
        };
        let ports = usize::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
        let mut bound = false;
        let mut last = None;
        for _ in 0..ports {
            let port = self.next_port;
            self.next_port = if port == *SOURCE_PORTS.end() {
                *SOURCE_PORTS.start()
            } else {
                port + 1
            };
            let mut local = local_scope(spec.local);
            local.set_port(port);
            match socket.bind(&local.into()) {
                Ok(()) => {
                    bound = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(io_error(what)(e)),
            }
        }
        if !bound {
            let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse));
            return Err(io_error(format!("{what}: no free source port"))(e));
        }
        let mut destination = local_scope(spec.peer);
        destination.set_port(CONTROL_PORT);
        Ok((StdUdpSocket::from(socket), destination))
    }

    fn datagram(&mut self, got: io::Result<Datagram>, buf: &[u8]) {
        let (len, from, ttl) = match got {
            Ok(d) => d,
            Err(error) => {
                tracing::debug!(%error, "BFD receive failed");
                return;
            }
        };
        if ttl != Some(i32::from(TTL)) {
            self.discarded.ttl += 1;
            return;
        }
        let packet = match ControlPacket::decode(&buf[..len]) {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(%from, %error, "BFD packet discarded");
                self.discarded.invalid += 1;
                return;
            }
        };
        let source = from.ip().to_canonical();
        let disc = if packet.your_discriminator != 0 {
            Some(packet.your_discriminator)
                .filter(|d| self.sessions.get(d).is_some_and(|e| e.spec.peer == source))
        } else {
            self.by_peer.get(&source).copied()
        };
        let Some(disc) = disc else {
            self.discarded.unknown_session += 1;
            return;
        };
        if let Some(entry) = self.sessions.get_mut(&disc) {
            entry.received += 1;
            entry.last_received = Some(Instant::now());
            entry.remote_diagnostic = packet.diagnostic;
        }
        self.event(disc, Event::Received(packet));
    }

    fn event(&mut self, disc: u32, event: Event) {
        let Some(entry) = self.sessions.get_mut(&disc) else {
            return;
        };
        let actions = entry.session.handle(event);
        self.apply(disc, actions);
    }

    fn apply(&mut self, disc: u32, actions: Vec<Action>) {
        let Some(entry) = self.sessions.get_mut(&disc) else {
            return;
        };
        let now = Instant::now();
        for action in actions {
            match action {
                Action::Send(packet) => {
                    match entry.socket.send_to(&packet.encode(), entry.destination) {
                        Ok(_) => entry.sent += 1,
                        Err(error) => {
                            entry.send_errors += 1;
                            tracing::debug!(peer = %entry.spec.peer, %error, "BFD send failed");
                        }
                    }
                }
                Action::StartTimer(Timer::Transmit, after) => entry.transmit = Some(now + after),
                Action::StartTimer(Timer::Detect, after) => entry.detect = Some(now + after),
                Action::StopTimer(Timer::Transmit) => entry.transmit = None,
                Action::StopTimer(Timer::Detect) => entry.detect = None,
                Action::StateChanged(change) => {
                    entry.since = now;
                    if change.to == State::Up {
                        entry.ups += 1;
                    }
                    if change.from == State::Up {
                        entry.downs += 1;
                    }
                    let event = SessionEvent {
                        peer: entry.spec.peer,
                        change,
                        remote_state: entry.session.remote_state(),
                        at: now,
                    };
                    tracing::info!(peer = %event.peer, from = %change.from, to = %change.to,
                        diagnostic = %change.diagnostic, "BFD session state");
                    self.subscribers.retain(|s| s.send(event).is_ok());
                }
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (disc, entry) in &self.sessions {
            if entry.detect.is_some_and(|d| d <= now) {
                due.push((*disc, Timer::Detect));
            }
            if entry.transmit.is_some_and(|d| d <= now) {
                due.push((*disc, Timer::Transmit));
            }
        }
        for (disc, timer) in due {
            let Some(entry) = self.sessions.get_mut(&disc) else {
                continue;
            };
            // A detection expiry earlier in this round may have re-armed the transmit timer.
            let slot = match timer {
                Timer::Transmit => &mut entry.transmit,
                Timer::Detect => &mut entry.detect,
            };
            if slot.is_some_and(|d| d <= now) {
                *slot = None;
                self.event(disc, Event::TimerExpired(timer));
            }
        }
    }

    fn shutdown(&mut self) {
        let discs: Vec<u32> = self.sessions.keys().copied().collect();
        for disc in discs {
            self.event(disc, Event::AdminDown);
        }
        self.sessions.clear();
        self.by_peer.clear();
        self.subscribers.clear();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The next datagram on `socket` with its TTL or hop limit; never ready without a socket.
async fn receive(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<Datagram> {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    socket
        .async_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!(libc::c_int);
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            let mut ttl = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                            ttl = Some(t)
                        }
                        _ => {}
                    }
                }
            }
            let from = msg
                .address
                .and_then(|a: SockaddrStorage| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                        })
                })
                .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
            Ok((msg.bytes, from, ttl))
        })
        .await
}
