//! The speaker's core task: it owns the RIB, the peer registry and the subscribers, and is
//! the only place routes change. Peers, the listener and handles talk to it over one bounded
//! channel, so a flood of UPDATEs slows the peers that send them (TCP backpressure) instead of
//! growing a queue.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fsm::{Down, State};
use crate::rib::{Attributes, BestPath, PeerId, Rib, RibConfig, RouteEvent, Session};
use crate::wire::{Afi, CeaseError, Update};

use super::config::{PeerConfig, SpeakerConfig};
use super::peer::{Live, PeerCmd, PeerTask};
use super::{PeerStatus, SessionChanges, SpeakerError, socket};

/// Messages (an UPDATE counting as one) to process before handing results to writers and
/// subscribers.
const BATCH: usize = 64;
/// UPDATEs that may wait for the core, from all peers together.
pub(super) const UPDATE_QUEUE: usize = 1024;
/// Routes per message sent to a subscriber.
const EVENT_CHUNK: usize = 4096;
/// How long a shutdown waits for peers to send their NOTIFICATIONs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

type Reply<T> = oneshot::Sender<T>;

/// Requests from [`SpeakerHandle`](super::SpeakerHandle)s.
pub(super) enum Command {
    AddPeer(PeerConfig, Reply<Result<(), SpeakerError>>),
    UpdatePeer(PeerConfig, Reply<Result<(), SpeakerError>>),
    RemovePeer(IpAddr, Reply<Result<(), SpeakerError>>),
    Originate(IpNet, Attributes, Reply<()>),
    Withdraw(IpNet, Reply<()>),
    Subscribe(Reply<mpsc::Receiver<Vec<RouteEvent>>>),
    Peers(Reply<Vec<PeerStatus>>),
    LocRib(Reply<Vec<(IpNet, BestPath)>>),
    RequestRefresh(IpAddr, Afi, Reply<Result<(), SpeakerError>>),
    SetBfd(IpAddr, bool, Reply<Result<(), SpeakerError>>),
    SetConnected(Option<Vec<IpNet>>, Reply<()>),
    Shutdown(Reply<()>),
}

/// Everything the core task receives.
pub(super) enum CoreMsg {
    Command(Command),
    Up {
        peer: PeerId,
        session: Session,
    },
    Down {
        peer: PeerId,
        down: Down,
    },
    /// UPDATEs of one peer, in order; the permits go back once they are applied.
    Updates {
        peer: PeerId,
        updates: Vec<Update>,
        permit: OwnedSemaphorePermit,
    },
    RefreshRequested {
        peer: PeerId,
        afi: Afi,
    },
    Accepted(TcpStream, SocketAddr),
    StaleExpired(PeerId),
    DeferralExpired,
}

struct PeerEntry {
    id: PeerId,
    config: PeerConfig,
    commands: mpsc::UnboundedSender<PeerCmd>,
    notify: Arc<Notify>,
    live: Arc<Mutex<Live>>,
    task: JoinHandle<()>,
    stale_timer: Option<JoinHandle<()>>,
    /// How far this session's announcements went toward the peer's prefix limit.
    limit_reached: LimitReached,
}

/// A session's standing against its peer's prefix limit; back to `Under` when it goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum LimitReached {
    #[default]
    Under,
    /// The warning threshold was reached (and logged).
    Warned,
    /// The limit was passed: the session is being ended.
    Passed,
}

pub(super) struct Core {
    config: SpeakerConfig,
    rib: Rib,
    peers: HashMap<IpAddr, PeerEntry>,
    by_id: HashMap<PeerId, IpAddr>,
    subscribers: Vec<mpsc::Sender<Vec<RouteEvent>>>,
    listener: Option<Arc<TcpListener>>,
    restarting: Arc<AtomicBool>,
    tx: mpsc::Sender<CoreMsg>,
    update_permits: Arc<Semaphore>,
    deferral_timer: Option<JoinHandle<()>>,
    session_changes: Arc<SessionChanges>,
}

impl Core {
    pub fn new(
        config: SpeakerConfig,
        listener: Option<Arc<TcpListener>>,
        tx: mpsc::Sender<CoreMsg>,
        session_changes: Arc<SessionChanges>,
    ) -> Self {
        let gr = config.graceful_restart.as_ref();
        let restarting = gr.is_some_and(|gr| gr.restarting);
        let mut rib_config = RibConfig::new(config.local_as, config.router_id);
        rib_config.cluster_id = config.cluster_id;
        rib_config.next_hop_v4 = config.next_hop_v4;
        rib_config.next_hop_v6 = config.next_hop_v6;
        rib_config.defer = restarting;
        rib_config.max_paths = config.max_paths;
        let mut rib = Rib::new(rib_config, config.policy.clone());
        // Until someone subscribes: a subscriber starts from a snapshot of the Loc-RIB.
        rib.record_route_events(false);
        let deferral_timer = gr.filter(|gr| gr.restarting).map(|gr| {
            let after = gr.selection_deferral;
            spawn_timer(tx.clone(), after, CoreMsg::DeferralExpired)
        });
        Self {
            config,
            rib,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            subscribers: Vec::new(),
            listener,
            restarting: Arc::new(AtomicBool::new(restarting)),
            tx,
            update_permits: Arc::new(Semaphore::new(UPDATE_QUEUE)),
            deferral_timer,
            session_changes,
        }
    }

    /// Runs until shut down (or every handle is gone).
    pub async fn run(mut self, mut rx: mpsc::Receiver<CoreMsg>) {
        while let Some(message) = rx.recv().await {
            let mut handled = weight(&message);
            let mut shutdown = self.handle(message).await;
            while handled < BATCH && shutdown.is_none() {
                match rx.try_recv() {
                    Ok(message) => {
                        handled += weight(&message);
                        shutdown = self.handle(message).await;
                    }
                    Err(_) => break,
                }
            }
            self.publish().await;
            if let Some(reply) = shutdown {
                self.shutdown().await;
                let _ = reply.send(());
                return;
            }
        }
        self.shutdown().await;
    }

    /// Handles one message; returns the reply of a shutdown request.
    async fn handle(&mut self, message: CoreMsg) -> Option<Reply<()>> {
        match message {
            CoreMsg::Command(Command::Shutdown(reply)) => return Some(reply),
            CoreMsg::Command(command) => self.command(command).await,
            CoreMsg::Up { peer, session } => {
                self.rib.peer_up(peer, session);
                let stale_time = self
                    .config
                    .graceful_restart
                    .as_ref()
                    .map(|gr| gr.stale_time);
                match stale_time {
                    Some(after) if !self.rib.stale_families(peer).is_empty() => {
                        self.start_stale_timer(peer, after)
                    }
                    _ => self.stop_stale_timer(peer),
                }
            }
            CoreMsg::Down { peer, down } => {
                if let Some(entry) = self.entry_mut(peer) {
                    entry.limit_reached = LimitReached::Under;
                }
                self.rib.peer_down(peer, &down.retain);
                if down.retain.is_empty() {
                    // Nothing retained flushes every route of the peer, those an earlier
                    // session left stale too (BFD Down does that with no session up): the
                    // restart-time timer has nothing left to withdraw.
                    self.stop_stale_timer(peer);
                } else {
                    self.start_stale_timer(peer, down.restart_time);
                }
            }
            CoreMsg::Updates {
                peer,
                updates,
                permit,
            } => {
                let end_of_rib = self.rib.end_of_rib_received(peer).len();
                for update in &updates {
                    self.rib.update(peer, update);
                }
                if self.rib.end_of_rib_received(peer).len() != end_of_rib {
                    self.session_changes.bump();
                }
                drop(updates);
                drop(permit);
                self.check_prefix_limit(peer);
            }
            CoreMsg::RefreshRequested { peer, afi } => self.rib.route_refresh(peer, afi),
            CoreMsg::Accepted(stream, remote) => self.accepted(stream, remote),
            CoreMsg::StaleExpired(peer) => self.rib.flush_stale(peer, None),
            CoreMsg::DeferralExpired => self.rib.end_deferral(),
        }
        None
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::AddPeer(config, reply) => {
                let _ = reply.send(self.add_peer(config));
            }
            Command::UpdatePeer(config, reply) => {
                let result = match self.peers.get(&config.address) {
                    None => Err(SpeakerError::NoSuchPeer(config.address)),
                    Some(entry) if entry.config == config => Ok(()),
                    Some(_) => {
                        self.remove_peer(config.address, CeaseError::OtherConfigurationChange);
                        self.add_peer(config)
                    }
                };
                let _ = reply.send(result);
            }
            Command::RemovePeer(address, reply) => {
                let found = self.remove_peer(address, CeaseError::PeerDeconfigured);
                let result = if found {
                    Ok(())
                } else {
                    Err(SpeakerError::NoSuchPeer(address))
                };
                let _ = reply.send(result);
            }
            Command::Originate(prefix, attrs, reply) => {
                self.rib.originate(prefix, attrs);
                let _ = reply.send(());
            }
            Command::Withdraw(prefix, reply) => {
                self.rib.withdraw(prefix);
                let _ = reply.send(());
            }
            Command::Subscribe(reply) => self.subscribe(reply).await,
            Command::Peers(reply) => {
                let _ = reply.send(self.statuses());
            }
            Command::LocRib(reply) => {
                let _ = reply.send(self.rib.loc_rib());
            }
            Command::RequestRefresh(address, afi, reply) => {
                let result = match self.peers.get(&address) {
                    Some(entry) => {
                        let _ = entry.commands.send(PeerCmd::RequestRefresh(afi));
                        Ok(())
                    }
                    None => Err(SpeakerError::NoSuchPeer(address)),
                };
                let _ = reply.send(result);
            }
            Command::SetBfd(address, up, reply) => {
                let result = match self.peers.get(&address) {
                    Some(entry) => {
                        let _ = entry.commands.send(PeerCmd::Bfd(up));
                        Ok(())
                    }
                    None => Err(SpeakerError::NoSuchPeer(address)),
                };
                let _ = reply.send(result);
            }
            Command::SetConnected(networks, reply) => {
                self.rib.set_connected(networks);
                let _ = reply.send(());
            }
            Command::Shutdown(_) => {}
        }
    }

    fn add_peer(&mut self, config: PeerConfig) -> Result<(), SpeakerError> {
        if self.peers.contains_key(&config.address) {
            return Err(SpeakerError::PeerExists(config.address));
        }
        if let (Some(listener), Some(password)) = (&self.listener, &config.password) {
            let key = Some(password.as_bytes());
            socket::set_md5(SockRef::from(listener.as_ref()), config.address, key)?;
        }
        let (id, adj_out) = self.rib.add_peer(config.rib_settings());
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let notify = Arc::new(Notify::new());
        let live = Arc::new(Mutex::new(Live {
            state: State::Idle,
            since: Instant::now(),
            last_error: None,
            negotiated: None,
            bfd_down: false,
        }));
        let task = PeerTask {
            id,
            config: config.clone(),
            speaker: self.config.clone(),
            restarting: self.restarting.clone(),
            core: self.tx.clone(),
            update_permits: self.update_permits.clone(),
            commands: commands_rx,
            adj_out,
            notify: notify.clone(),
            live: live.clone(),
            session_changes: self.session_changes.clone(),
        };
        let task = tokio::spawn(task.run());
        self.by_id.insert(id, config.address);
        self.peers.insert(
            config.address,
            PeerEntry {
                id,
                config,
                commands,
                notify,
                live,
                task,
                stale_timer: None,
                limit_reached: LimitReached::Under,
            },
        );
        self.session_changes.bump();
        Ok(())
    }

    fn entry_mut(&mut self, peer: PeerId) -> Option<&mut PeerEntry> {
        let address = self.by_id.get(&peer)?;
        self.peers.get_mut(address)
    }

    /// Warns once when a peer's announcements reach its warning threshold, and ends the
    /// session when they pass its limit.
    fn check_prefix_limit(&mut self, peer: PeerId) {
        let counts = self.rib.counts(peer);
        let announced = counts.received + counts.filtered.values().sum::<usize>();
        let Some(entry) = self.entry_mut(peer) else {
            return;
        };
        let Some(limit) = entry.config.max_prefixes else {
            return;
        };
        let address = entry.config.address;
        if announced > limit.limit && entry.limit_reached != LimitReached::Passed {
            entry.limit_reached = LimitReached::Passed;
            tracing::warn!(
                peer = %address,
                announced,
                limit = limit.limit,
                restart_after = ?limit.restart_after,
                "peer passed its prefix limit: ending the session"
            );
            let _ = entry.commands.send(PeerCmd::PrefixLimit(limit));
        } else if announced >= limit.warning && entry.limit_reached == LimitReached::Under {
            entry.limit_reached = LimitReached::Warned;
            tracing::warn!(
                peer = %address,
                announced,
                limit = limit.limit,
                "peer nears its prefix limit"
            );
        }
    }

    /// Stops a peer's session and forgets its routes; false when there is no such peer.
    fn remove_peer(&mut self, address: IpAddr, cease: CeaseError) -> bool {
        let Some(entry) = self.peers.remove(&address) else {
            return false;
        };
        let _ = entry.commands.send(PeerCmd::Stop(cease));
        if let Some(timer) = entry.stale_timer {
            timer.abort();
        }
        self.by_id.remove(&entry.id);
        self.rib.remove_peer(entry.id);
        self.session_changes.bump();
        if let (Some(listener), Some(_)) = (&self.listener, &entry.config.password)
            && let Err(error) = socket::set_md5(SockRef::from(listener.as_ref()), address, None)
        {
            tracing::warn!(%error, %address, "cannot remove the TCP MD5 key");
        }
        true
    }

    fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        let address = remote.ip().to_canonical();
        match self.peers.get(&address) {
            Some(entry) => {
                let _ = entry.commands.send(PeerCmd::Incoming(stream));
            }
            None => tracing::debug!(%remote, "connection from an unknown peer refused"),
        }
    }

    async fn subscribe(&mut self, reply: Reply<mpsc::Receiver<Vec<RouteEvent>>>) {
        let (tx, rx) = mpsc::channel(256);
        if reply.send(rx).is_err() {
            return;
        }
        let mut snapshot: Vec<RouteEvent> = self
            .rib
            .loc_rib()
            .into_iter()
            .map(|(prefix, path)| RouteEvent::Best { prefix, path })
            .collect();
        if !self.rib.is_deferring() {
            snapshot.push(RouteEvent::Synced);
        }
        for chunk in snapshot.chunks(EVENT_CHUNK) {
            if tx.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
        self.subscribers.push(tx);
        self.rib.record_route_events(true);
    }

    fn statuses(&self) -> Vec<PeerStatus> {
        let mut statuses: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|entry| {
                let live = entry.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let counts = self.rib.counts(entry.id);
                PeerStatus {
                    address: entry.config.address,
                    remote_as: entry.config.remote_as,
                    local_as: entry.config.local_as(&self.config),
                    state: live.state,
                    since: live.since,
                    last_error: live.last_error,
                    negotiated: live.negotiated,
                    bfd_down: live.bfd_down,
                    prefixes_received: counts.received,
                    prefixes_filtered: counts.filtered,
                    prefixes_sent: counts.sent,
                    prefixes_stale: counts.stale,
                    end_of_rib_received: self.rib.end_of_rib_received(entry.id),
                }
            })
            .collect();
        statuses.sort_by_key(|s| s.address);
        statuses
    }

    /// Hands this batch's results to the writers and the subscribers, then gives back the
    /// memory of routes that went, if a table has mostly gone.
    async fn publish(&mut self) {
        self.hand_out().await;
        if self.rib.compact() {
            super::release_freed_memory();
        }
    }

    /// Hands this batch's results to the writers and the subscribers.
    async fn hand_out(&mut self) {
        if !self.rib.is_deferring()
            && self.restarting.swap(false, Ordering::AcqRel)
            && let Some(timer) = self.deferral_timer.take()
        {
            timer.abort();
        }
        for id in self.rib.flush() {
            if let Some(entry) = self.by_id.get(&id).and_then(|a| self.peers.get(a)) {
                entry.notify.notify_one();
            }
        }
        let events = self.rib.take_events();
        if events.is_empty() || self.subscribers.is_empty() {
            return;
        }
        let mut alive = Vec::with_capacity(self.subscribers.len());
        for subscriber in self.subscribers.drain(..) {
            let mut ok = true;
            for chunk in events.chunks(EVENT_CHUNK) {
                if subscriber.send(chunk.to_vec()).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if ok {
                alive.push(subscriber);
            }
        }
        self.subscribers = alive;
        if self.subscribers.is_empty() {
            self.rib.record_route_events(false);
        }
    }

    fn start_stale_timer(&mut self, peer: PeerId, after: Duration) {
        let tx = self.tx.clone();
        let Some(entry) = self.by_id.get(&peer).and_then(|a| self.peers.get_mut(a)) else {
            return;
        };
        if let Some(old) = entry.stale_timer.take() {
            old.abort();
        }
        entry.stale_timer = Some(spawn_timer(tx, after, CoreMsg::StaleExpired(peer)));
    }

    fn stop_stale_timer(&mut self, peer: PeerId) {
        let entry = self.by_id.get(&peer).and_then(|a| self.peers.get_mut(a));
        if let Some(timer) = entry.and_then(|e| e.stale_timer.take()) {
            timer.abort();
        }
    }

    async fn shutdown(&mut self) {
        let addresses: Vec<IpAddr> = self.peers.keys().copied().collect();
        let mut tasks = Vec::new();
        for address in addresses {
            if let Some(entry) = self.peers.remove(&address) {
                let _ = entry
                    .commands
                    .send(PeerCmd::Stop(CeaseError::AdministrativeShutdown));
                if let Some(timer) = entry.stale_timer {
                    timer.abort();
                }
                tasks.push(entry.task);
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
        if let Some(timer) = self.deferral_timer.take() {
            timer.abort();
        }
        self.subscribers.clear();
    }
}

/// How much of a batch a message counts for.
fn weight(message: &CoreMsg) -> usize {
    match message {
        CoreMsg::Updates { updates, .. } => updates.len(),
        _ => 1,
    }
}

fn spawn_timer(tx: mpsc::Sender<CoreMsg>, after: Duration, message: CoreMsg) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx.send(message).await;
    })
}

/// Accepts connections and hands them to the core.
pub(super) async fn accept_loop(listener: Arc<TcpListener>, tx: mpsc::Sender<CoreMsg>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                if tx.send(CoreMsg::Accepted(stream, remote)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
