//! The tokio speaker: sessions over TCP, the RIB, and the API of the embedding program.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wren_bgp::speaker::SpeakerError> {
//! use std::net::Ipv4Addr;
//! use wren_bgp::rib::RouteEvent;
//! use wren_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
//!
//! let config = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 1), 64512);
//! let (speaker, _task) = Speaker::start(config).await?;
//! speaker.add_peer(PeerConfig::new("10.0.0.2".parse().unwrap(), 64512)).await?;
//! speaker.originate("10.244.1.0/26".parse().unwrap(), None).await?;
//! let mut routes = speaker.subscribe().await?;
//! while let Some(batch) = routes.recv().await {
//!     for event in batch {
//!         if let RouteEvent::Best { prefix, path } = event {
//!             println!("{prefix} via {:?}", path.source);
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Tasks: one core task owns the RIB ([`crate::rib`]); one task per peer runs its state
//! machine ([`crate::fsm`]) and timers; each TCP connection has a reader and a writer task.
//! Nothing holds a lock across I/O: a writer takes a batch out of its peer's Adj-RIB-Out under
//! that peer's lock, then writes without it.

mod config;
mod connection;
mod core;
mod peer;
pub mod socket;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::fsm::State;
use crate::rib::{Attributes, BestPath, RouteAttributes, RouteEvent, family};
use crate::wire::{Afi, Negotiated};

pub use config::{BGP_PORT, GracefulRestartConfig, PeerConfig, PrefixLimit, SpeakerConfig};

use self::core::{Command, Core, CoreMsg, accept_loop};

/// Messages the core can have queued before senders wait.
const CORE_QUEUE: usize = 1024;

/// Errors of the speaker API.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// A socket operation failed (binding the listener, setting a TCP MD5 key).
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A peer with this address is already configured.
    #[error("peer {0} is already configured")]
    PeerExists(IpAddr),
    /// No peer with this address is configured.
    #[error("no peer {0}")]
    NoSuchPeer(IpAddr),
    /// The speaker has shut down.
    #[error("the speaker has stopped")]
    Stopped,
}

/// Asks the C allocator to hand the pages of freed memory back to the system. glibc keeps
/// what a program frees for reuse, in each thread's arena and above the top of the heap, so
/// the memory of a table that came and went would otherwise stay resident; allocators that
/// return memory on their own need nothing, and this does nothing for them.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it works on the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A peer's state, for `wren status` and metrics.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS.
    pub remote_as: u32,
    /// The AS this session speaks (the speaker's unless the peer has its own).
    pub local_as: u32,
    /// Session state.
    pub state: State,
    /// When the session entered that state (the uptime, when Established).
    pub since: Instant,
    /// Why the session last went down or failed to come up.
    pub last_error: Option<String>,
    /// What the established session negotiated.
    pub negotiated: Option<Negotiated>,
    /// BFD reported the peer unreachable, and the session is held down until it is back.
    pub bfd_down: bool,
    /// Prefixes accepted from the peer.
    pub prefixes_received: usize,
    /// Prefixes of the peer's that import policy holds back, by the policy's reason.
    pub prefixes_filtered: std::collections::BTreeMap<&'static str, usize>,
    /// Prefixes the peer has from us.
    pub prefixes_sent: usize,
    /// Prefixes kept stale while the peer restarts.
    pub prefixes_stale: usize,
    /// Families whose End-of-RIB the peer sent on this session.
    pub end_of_rib_received: Vec<Afi>,
}

impl PeerStatus {
    /// How long the session has been in its state.
    pub fn for_duration(&self) -> Duration {
        self.since.elapsed()
    }
}

/// Best-path changes, in order: first the current Loc-RIB, then every change. Batches keep
/// the per-message cost low on a full table.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Vec<RouteEvent>>,
}

impl Subscription {
    /// The next batch of changes; `None` once the speaker has stopped.
    pub async fn recv(&mut self) -> Option<Vec<RouteEvent>> {
        self.rx.recv().await
    }
}

/// The speaker.
#[derive(Debug)]
pub struct Speaker;

impl Speaker {
    /// Binds the listener and starts the speaker. Returns the handle to drive it and the
    /// task that ends after [`SpeakerHandle::shutdown`].
    pub async fn start(
        config: SpeakerConfig,
    ) -> Result<(SpeakerHandle, JoinHandle<()>), SpeakerError> {
        let listener = match config.listen {
            Some(addr) => Some(Arc::new(socket::listen(addr)?)),
            None => None,
        };
        let local_addr = match &listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(CORE_QUEUE);
        let session_changes = Arc::new(SessionChanges::default());
        let sessions = session_changes.subscribe();
        let core = Core::new(config, listener.clone(), tx.clone(), session_changes);
        let acceptor = listener.map(|l| tokio::spawn(accept_loop(l, tx.clone())));
        let task = tokio::spawn(async move {
            core.run(rx).await;
            if let Some(acceptor) = acceptor {
                acceptor.abort();
            }
        });
        Ok((
            SpeakerHandle {
                tx,
                local_addr,
                sessions,
            },
            task,
        ))
    }
}

/// Drives a running speaker; cheap to clone.
#[derive(Debug, Clone)]
pub struct SpeakerHandle {
    tx: mpsc::Sender<CoreMsg>,
    local_addr: Option<SocketAddr>,
    sessions: watch::Receiver<u64>,
}

/// Tells those who show sessions that one changed: its state, its last error, what it
/// negotiated, its BFD hold, the families whose End-of-RIB arrived, or the set of peers.
/// Counters of prefixes are not changes: they are read when shown.
#[derive(Debug, Default)]
pub(crate) struct SessionChanges(watch::Sender<u64>);

impl SessionChanges {
    /// Records one change and wakes every waiter.
    pub(crate) fn bump(&self) {
        self.0.send_modify(|count| *count = count.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl SpeakerHandle {
    /// The address the speaker accepts connections on (with the port actually bound).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// A receiver that changes whenever a session does (its state, last error, negotiated
    /// capabilities, BFD hold or End-of-RIB) or a peer is added or removed: read
    /// [`peers`](Self::peers) after each change instead of asking on a timer.
    pub fn session_changes(&self) -> watch::Receiver<u64> {
        self.sessions.clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SpeakerError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(CoreMsg::Command(make(reply)))
            .await
            .map_err(|_| SpeakerError::Stopped)?;
        answer.await.map_err(|_| SpeakerError::Stopped)
    }

    /// Adds a peer and starts its session.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        self.ask(|r| Command::AddPeer(peer, r)).await?
    }

    /// Applies a changed configuration to a peer (matched by address); the session restarts
    /// (Cease / Other Configuration Change) when anything changed.
    pub async fn update_peer(&self, peer: PeerConfig) -> Result<(), SpeakerError> {
        self.ask(|r| Command::UpdatePeer(peer, r)).await?
    }

    /// Stops a peer's session (Cease / Peer De-configured) and withdraws its routes.
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.ask(|r| Command::RemovePeer(address, r)).await?
    }

    /// Originates a prefix with ORIGIN IGP; `next_hop` `None` means this speaker's address on
    /// each session.
    pub async fn originate(
        &self,
        prefix: IpNet,
        next_hop: Option<IpAddr>,
    ) -> Result<(), SpeakerError> {
        let attrs = Attributes::local(next_hop, family(&prefix));
        self.originate_with(prefix, attrs).await
    }

    /// Originates a prefix with the given attributes (start from
    /// [`RouteAttributes::local`] to add communities, MED and so on).
    pub async fn originate_with(
        &self,
        prefix: IpNet,
        attrs: Attributes,
    ) -> Result<(), SpeakerError> {
        self.ask(|r| Command::Originate(prefix, attrs, r)).await
    }

    /// Withdraws a prefix this speaker originated.
    pub async fn withdraw(&self, prefix: IpNet) -> Result<(), SpeakerError> {
        self.ask(|r| Command::Withdraw(prefix, r)).await
    }

    /// Subscribes to best-path changes: the current Loc-RIB first, then every change. A
    /// subscriber that does not keep up slows the speaker down rather than losing changes.
    pub async fn subscribe(&self) -> Result<Subscription, SpeakerError> {
        let rx = self.ask(Command::Subscribe).await?;
        Ok(Subscription { rx })
    }

    /// Every peer's state, ordered by address.
    pub async fn peers(&self) -> Result<Vec<PeerStatus>, SpeakerError> {
        self.ask(Command::Peers).await
    }

    /// One peer's state.
    pub async fn peer(&self, address: IpAddr) -> Result<PeerStatus, SpeakerError> {
        let peers = self.peers().await?;
        let found = peers.into_iter().find(|p| p.address == address);
        found.ok_or(SpeakerError::NoSuchPeer(address))
    }

    /// The Loc-RIB: every prefix with its best path.
    pub async fn loc_rib(&self) -> Result<Vec<(IpNet, BestPath)>, SpeakerError> {
        self.ask(Command::LocRib).await
    }

    /// Asks a peer to send its routes of a family again (RFC 2918), when it supports that.
    pub async fn request_refresh(&self, address: IpAddr, afi: Afi) -> Result<(), SpeakerError> {
        self.ask(|r| Command::RequestRefresh(address, afi, r))
            .await?
    }

    /// Tells the session what BFD says of the peer. Down ends an established session at once
    /// (Cease / BFD Down, RFC 9384), withdraws the peer's routes without waiting for graceful
    /// restart (those kept stale from a session that ended before are withdrawn too, whatever
    /// the state), and keeps the session down until BFD reports the peer up again. A peer
    /// re-added or reconfigured starts without this hold: tell it again.
    pub async fn set_bfd(&self, address: IpAddr, up: bool) -> Result<(), SpeakerError> {
        self.ask(|r| Command::SetBfd(address, up, r)).await?
    }

    /// Sets the networks next hops must lie in for a learned path to be eligible; `None`
    /// takes every next hop as resolvable (see [`Rib::set_connected`](crate::rib::Rib::set_connected)).
    pub async fn set_connected(&self, networks: Option<Vec<IpNet>>) -> Result<(), SpeakerError> {
        self.ask(|r| Command::SetConnected(networks, r)).await
    }

    /// Stops every session with Cease / Administrative Shutdown and ends the speaker.
    pub async fn shutdown(&self) -> Result<(), SpeakerError> {
        self.ask(Command::Shutdown).await
    }
}
