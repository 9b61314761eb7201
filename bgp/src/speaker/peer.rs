//! One task per peer: it runs the peer's state machine, its timers and connection attempts,
//! and passes what the session delivers to the speaker's core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::fsm::{Action, ConnId, Event, Fsm, State, Timer};
use crate::rib::{AdjRibOut, PeerId, Session};
use crate::wire::{Afi, CeaseError, Message, Negotiated, ParsedMessage, Update, WireError};

use super::SessionChanges;
use super::config::{PeerConfig, PrefixLimit, SpeakerConfig};
use super::connection::{ConnEvent, Connection};
use super::core::{CoreMsg, UPDATE_QUEUE};
use super::socket::{self, ConnectOptions};

/// How long a stopping peer waits for its NOTIFICATION to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Commands from the core to a peer task.
#[derive(Debug)]
pub(super) enum PeerCmd {
    /// The listener accepted a connection from this peer.
    Incoming(TcpStream),
    /// Send a ROUTE-REFRESH for a family.
    RequestRefresh(Afi),
    /// Stop the session with this Cease subcode and end the task.
    Stop(CeaseError),
    /// The BFD session with the peer went down (`false`) or is up (`true`).
    Bfd(bool),
    /// The peer passed its prefix limit.
    PrefixLimit(PrefixLimit),
}

/// What the state machine last reported, for status queries.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Live {
    pub state: State,
    pub since: Instant,
    pub last_error: Option<String>,
    pub negotiated: Option<Negotiated>,
    pub bfd_down: bool,
}

/// Everything a peer task needs.
pub(super) struct PeerTask {
    pub id: PeerId,
    pub config: PeerConfig,
    pub speaker: SpeakerConfig,
    pub restarting: Arc<AtomicBool>,
    pub core: mpsc::Sender<CoreMsg>,
    /// One permit per UPDATE waiting for the core, shared by all peers: it bounds what waits
    /// parsed in memory now that UPDATEs travel in batches.
    pub update_permits: Arc<Semaphore>,
    pub commands: mpsc::UnboundedReceiver<PeerCmd>,
    pub adj_out: AdjRibOut,
    pub notify: Arc<Notify>,
    pub live: Arc<Mutex<Live>>,
    /// Told when what [`Live`] holds changes (other than the time).
    pub session_changes: Arc<SessionChanges>,
}

struct Runner {
    task: PeerTask,
    fsm: Fsm,
    advertised_restarting: bool,
    events_tx: mpsc::Sender<ConnEvent>,
    timers: HashMap<Timer, tokio::time::Instant>,
    conns: HashMap<ConnId, Connection>,
    attempts: HashMap<ConnId, JoinHandle<()>>,
    closing: Vec<JoinHandle<()>>,
    /// Why the last outgoing connection did not come up, until a session does: the state
    /// machine records nothing for a connection that never opened, which is all a TCP MD5
    /// password mismatch ever shows (the peer's kernel drops every segment unanswered).
    connect_error: Option<String>,
    epoch: u64,
    /// UPDATEs delivered by the state machine, sent to the core together.
    delivered: Vec<Update>,
}

impl PeerTask {
    /// Runs the peer until it is stopped.
    pub async fn run(self) {
        let restarting = self.restarting.load(Ordering::Acquire);
        let session = self.config.session(&self.speaker, restarting);
        // Messages come in batches of up to a few hundred: a few batches keep the reader busy.
        let (events_tx, mut events) = mpsc::channel(4);
        let mut runner = Runner {
            fsm: Fsm::new(session, Instant::now()),
            task: self,
            advertised_restarting: restarting,
            events_tx,
            timers: HashMap::new(),
            conns: HashMap::new(),
            attempts: HashMap::new(),
            closing: Vec::new(),
            connect_error: None,
            epoch: 0,
            delivered: Vec::new(),
        };
        runner.handle(Event::ManualStart).await;
        loop {
            let deadline = runner.timers.values().min().copied();
            tokio::select! {
                command = runner.task.commands.recv() => match command {
                    Some(PeerCmd::Incoming(stream)) => runner.incoming(stream).await,
                    Some(PeerCmd::RequestRefresh(afi)) => runner.request_refresh(afi),
                    Some(PeerCmd::Bfd(up)) => {
                        runner.handle(if up { Event::BfdUp } else { Event::BfdDown }).await
                    }
                    Some(PeerCmd::PrefixLimit(limit)) => {
                        runner
                            .handle(Event::PrefixLimitExceeded {
                                limit: limit.limit,
                                restart_after: limit.restart_after,
                            })
                            .await
                    }
                    Some(PeerCmd::Stop(cease)) => {
                        runner.handle(Event::ManualStop(cease)).await;
                        break;
                    }
                    None => {
                        runner.handle(Event::ManualStop(CeaseError::PeerDeconfigured)).await;
                        break;
                    }
                },
                Some(event) = events.recv() => runner.connection_event(event).await,
                _ = sleep_until(deadline) => runner.expire_timers().await,
            }
            runner.send_delivered().await;
        }
        runner.finish().await;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Runner {
    async fn handle(&mut self, event: Event) {
        self.step(event).await;
        self.report();
    }

    /// Runs the state machine on one event, without updating the status the core reads.
    async fn step(&mut self, event: Event) {
        let actions = self.fsm.handle(event, Instant::now());
        for action in actions {
            self.act(action).await;
        }
    }

    /// Notes why an outgoing connection did not come up; with a TCP MD5 password set, says
    /// what a mismatch looks like.
    fn connect_failed(&mut self, reason: &str) {
        self.connect_error = Some(if self.task.config.password.is_some() {
            format!(
                "{reason} (TCP MD5 is on: a password mismatch makes the peer drop every segment)"
            )
        } else {
            reason.to_owned()
        });
    }

    /// Publishes the state machine's state for status queries, and says so when it changed.
    fn report(&self) {
        let now = Live {
            state: self.fsm.state(),
            since: self.fsm.since(),
            last_error: self.fsm.last_error().map(ToString::to_string).or_else(|| {
                (self.fsm.state() != State::Established)
                    .then(|| self.connect_error.clone())
                    .flatten()
            }),
            negotiated: self.fsm.negotiated().cloned(),
            bfd_down: self.fsm.bfd_down(),
        };
        let mut live = self.task.live.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *live != now;
        *live = now;
        drop(live);
        if changed {
            self.task.session_changes.bump();
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Connect(id) => self.connect(id),
            Action::Send(id, message) => {
                if let Some(conn) = self.conns.get(&id) {
                    conn.send(message);
                }
            }
            Action::Close(id) => {
                if let Some(conn) = self.conns.remove(&id) {
                    self.closing.push(conn.close());
                }
                if let Some(attempt) = self.attempts.remove(&id) {
                    attempt.abort();
                    // Only a retry says the attempt went unanswered; the machine also gives
                    // up an attempt once the peer's own connection brought an OPEN.
                    if self.fsm.state() == State::Connect {
                        self.connect_failed("TCP connect not answered before the retry");
                    }
                }
            }
            Action::StartTimer(timer, after) => {
                self.timers
                    .insert(timer, tokio::time::Instant::now() + after);
            }
            Action::StopTimer(timer) => {
                self.timers.remove(&timer);
            }
            Action::SessionUp(id, negotiated) => self.session_up(id, negotiated).await,
            Action::SessionDown(down) => {
                tracing::info!(peer = %self.task.config.address, reason = %down.reason, "session down");
                let peer = self.task.id;
                self.send_core(CoreMsg::Down { peer, down }).await;
            }
            Action::Deliver(update) => self.delivered.push(update),
            Action::RouteRefresh(afi) => {
                let peer = self.task.id;
                self.send_core(CoreMsg::RefreshRequested { peer, afi })
                    .await;
            }
        }
    }

    async fn send_core(&mut self, message: CoreMsg) {
        // UPDATEs delivered before this message go first.
        self.send_delivered().await;
        // The core only goes away when the speaker shuts down, which stops this task too.
        let _ = self.task.core.send(message).await;
    }

    /// Hands the delivered UPDATEs to the core, waiting while the core has its fill queued.
    async fn send_delivered(&mut self) {
        let peer = self.task.id;
        while !self.delivered.is_empty() {
            let rest = self
                .delivered
                .split_off(self.delivered.len().min(UPDATE_QUEUE));
            let updates = std::mem::replace(&mut self.delivered, rest);
            let permits = self.task.update_permits.clone();
            // `updates` is at most UPDATE_QUEUE long, the semaphore's size, so this fits.
            let Ok(permit) = permits.acquire_many_owned(updates.len() as u32).await else {
                return;
            };
            let message = CoreMsg::Updates {
                peer,
                updates,
                permit,
            };
            let _ = self.task.core.send(message).await;
        }
    }

    async fn session_up(&mut self, id: ConnId, negotiated: Negotiated) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        tracing::info!(peer = %self.task.config.address, "session established");
        self.connect_error = None;
        self.epoch += 1;
        conn.established(self.epoch, negotiated.codec);
        let session = Session {
            router_id: negotiated.peer_router_id,
            local_address: conn.local.ip().to_canonical(),
            families: negotiated.families.clone(),
            epoch: self.epoch,
            graceful_restart: negotiated.peer_graceful_restart.clone(),
        };
        let peer = self.task.id;
        self.send_core(CoreMsg::Up { peer, session }).await;
    }

    fn connect(&mut self, id: ConnId) {
        let config = &self.task.config;
        let listen_ip = self.task.speaker.listen.map(|l| l.ip());
        let same_family = |ip: &std::net::IpAddr| ip.is_ipv4() == config.address.is_ipv4();
        let local = config
            .local_address
            .or(listen_ip.filter(|ip| !ip.is_unspecified() && same_family(ip)));
        let options = ConnectOptions {
            remote: SocketAddr::new(config.address, config.port),
            local,
            password: config.password.clone(),
            ttl_security: ttl_security(config, &self.task.speaker),
            timeout: config.connect_retry,
        };
        let events = self.events_tx.clone();
        let attempt = tokio::spawn(async move {
            let result = socket::connect(&options).await;
            let _ = events.send(ConnEvent::Connected(id, result)).await;
        });
        self.attempts.insert(id, attempt);
    }

    async fn incoming(&mut self, stream: TcpStream) {
        if let Some(hops) = ttl_security(&self.task.config, &self.task.speaker) {
            // The socket's minimum TTL applies from here on; the handshake, and whatever the
            // peer sent before this, were let in by the listener. The SYN's TTL says whether
            // the connection came from within the hops allowed.
            match socket::syn_hops(SockRef::from(&stream)) {
                Ok(Some(arrived)) if socket::gtsm_admits(arrived, hops) => {}
                Ok(arrived) => {
                    tracing::warn!(
                        peer = %self.task.config.address,
                        ttl = ?arrived,
                        hops,
                        "connection refused by TTL security: its SYN came from farther than the hops allowed"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read an accepted connection's SYN for TTL security");
                    return;
                }
            }
            let ipv6 = self.task.config.address.is_ipv6();
            if let Err(error) = socket::set_ttl_security(SockRef::from(&stream), ipv6, hops) {
                tracing::warn!(%error, "cannot set TTL security on an accepted connection");
                return;
            }
        }
        self.refresh_capability();
        let id = self.fsm.next_conn_id();
        if self.register(id, stream) {
            self.handle(Event::TcpAccepted(id)).await;
        }
    }

    /// Makes the connection's tasks; false (and nothing to undo) when the socket is unusable.
    fn register(&mut self, id: ConnId, stream: TcpStream) -> bool {
        let events = self.events_tx.clone();
        let (adj_out, notify) = (self.task.adj_out.clone(), self.task.notify.clone());
        match Connection::spawn(id, stream, events, adj_out, notify) {
            Ok(conn) => {
                self.conns.insert(id, conn);
                true
            }
            Err(error) => {
                tracing::debug!(%error, "connection lost before it was set up");
                false
            }
        }
    }

    /// Clears the Restart State bit from future OPENs once the speaker has resynchronised.
    fn refresh_capability(&mut self) {
        let restarting = self.task.restarting.load(Ordering::Acquire);
        if restarting != self.advertised_restarting {
            self.advertised_restarting = restarting;
            let session = self.task.config.session(&self.task.speaker, restarting);
            self.fsm.set_graceful_restart(session.graceful_restart);
        }
    }

    fn request_refresh(&mut self, afi: Afi) {
        let supported = self.fsm.negotiated().is_some_and(|n| n.route_refresh);
        if let (true, Some(id)) = (supported, self.fsm.established_conn())
            && let Some(conn) = self.conns.get(&id)
        {
            conn.send(Message::RouteRefresh(afi));
        }
    }

    async fn connection_event(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Connected(id, Ok(stream)) => {
                if self.attempts.remove(&id).is_none() {
                    return;
                }
                self.refresh_capability();
                if self.register(id, stream) {
                    self.handle(Event::TcpConnected(id)).await;
                } else {
                    self.handle(Event::TcpFailed(id)).await;
                }
            }
            ConnEvent::Connected(id, Err(error)) => {
                tracing::debug!(peer = %self.task.config.address, %error, "connect failed");
                self.attempts.remove(&id);
                self.connect_failed(&format!("TCP connect failed: {error}"));
                self.handle(Event::TcpFailed(id)).await;
            }
            ConnEvent::Closed(id) => {
                if self.conns.contains_key(&id) {
                    self.handle(Event::TcpFailed(id)).await;
                }
            }
            ConnEvent::Messages(id, batch) => {
                for parsed in batch {
                    self.message(id, parsed).await;
                }
                self.report();
            }
        }
    }

    async fn message(&mut self, id: ConnId, parsed: Result<ParsedMessage, WireError>) {
        match parsed {
            Err(error) => {
                if self.conns.contains_key(&id) {
                    tracing::warn!(peer = %self.task.config.address, %error, "bad message");
                    self.step(Event::MessageError(id, error.notification()))
                        .await;
                }
            }
            Ok(parsed) => {
                if let Some(message) = self.accept_message(id, parsed) {
                    self.step(Event::Message(id, message)).await;
                }
            }
        }
    }

    /// Turns a parsed message into the state machine's input, applying what depends on the
    /// peer: the codec of the session, and RFC 7606's rules for UPDATEs from eBGP peers.
    fn accept_message(&mut self, id: ConnId, parsed: ParsedMessage) -> Option<Message> {
        let conn = self.conns.get(&id)?;
        match parsed {
            ParsedMessage::Open(open) => {
                conn.set_codec(crate::wire::Codec {
                    four_octet_as: open.four_octet_as().is_some(),
                    external_peer: self.task.config.is_external(&self.task.speaker),
                });
                Some(Message::Open(open))
            }
            ParsedMessage::Update(mut update) => {
                let config = &self.task.config;
                if config.is_external(&self.task.speaker) {
                    update.apply_external_rules(config.remote_as, true);
                }
                for action in &update.actions {
                    tracing::debug!(peer = %config.address, ?action, "UPDATE error handling");
                }
                if update.treated_as_withdraw() && update.update.end_of_rib().is_some() {
                    // Emptied by error handling: neither routes nor an End-of-RIB marker.
                    return None;
                }
                Some(Message::Update(update.update))
            }
            ParsedMessage::IgnoredRouteRefresh { .. } => None,
            other => other.into_message(),
        }
    }

    async fn expire_timers(&mut self) {
        let now = tokio::time::Instant::now();
        let mut due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(timer, _)| *timer)
            .collect();
        due.sort();
        for timer in due {
            // An earlier expiry in this round may have stopped or restarted it.
            if self.timers.get(&timer).is_some_and(|d| *d <= now) {
                self.timers.remove(&timer);
                self.handle(Event::TimerExpired(timer)).await;
            }
        }
    }

    /// Lets the last NOTIFICATIONs go out before the task ends.
    async fn finish(self) {
        for attempt in self.attempts.values() {
            attempt.abort();
        }
        let closing = self.closing;
        let _ = tokio::time::timeout(CLOSE_GRACE, async move {
            for task in closing {
                let _ = task.await;
            }
        })
        .await;
    }
}

/// The GTSM hop count for a peer: only eBGP sessions use it.
fn ttl_security(config: &PeerConfig, speaker: &SpeakerConfig) -> Option<u8> {
    config.ttl_security.filter(|_| config.is_external(speaker))
}
