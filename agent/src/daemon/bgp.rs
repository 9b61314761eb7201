//! The daemon's view of the BGP speaker: desired sessions and originated prefixes in, best
//! paths and session states out.
//!
//! The daemon drives the speaker through [`BgpControl`] so that its mesh, export and import
//! logic can be exercised with a stand-in ([`ScriptedBgp`]), and so that the speaker crate stays free of
//! anything wren-specific.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use smallvec::SmallVec;
use tokio::sync::watch;

use super::bfd::BfdStatus;
use super::mesh::PeerSpec;
use super::policy::{ClusterSpace, Exports};
use crate::sync::lock;

/// One session as the speaker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The peer's address.
    pub address: IpAddr,
    /// FSM state name (`Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`, `Established`).
    pub state: String,
    /// Time spent in the current state.
    pub in_state_for: Option<Duration>,
    /// Prefixes accepted from the peer.
    pub prefixes_received: u64,
    /// Prefixes of the peer's that import policy holds back, by reason.
    pub prefixes_filtered: BTreeMap<String, u64>,
    /// Prefixes announced to the peer.
    pub prefixes_sent: u64,
    /// The last error on the session.
    pub last_error: Option<String>,
    /// The peer sent End-of-RIB for every family since the session came up.
    pub end_of_rib: bool,
    /// The session's BFD, when it runs one.
    pub bfd: Option<BfdStatus>,
    /// The AS the node speaks on the session.
    pub local_as: u32,
    /// Hold and keepalive time in force, in seconds, while Established.
    pub timers: Option<SessionTimers>,
}

/// The hold and keepalive time an established session runs with, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionTimers {
    /// The hold time both sides agreed on (0: none).
    pub hold_time_secs: u16,
    /// The interval between the node's KEEPALIVEs (0: none).
    pub keepalive_time_secs: u16,
}

impl SessionInfo {
    /// Whether `other` is the same session in the same standing: everything but the time in
    /// the state and the counters, which change without anything to act on.
    pub fn same_session_state(&self, other: &SessionInfo) -> bool {
        self.address == other.address
            && self.state == other.state
            && self.last_error == other.last_error
            && self.end_of_rib == other.end_of_rib
    }
}

/// The next hops of a learned prefix: its best path's and those of the paths equal to it
/// (ECMP, up to the speaker's maximum), sorted, none twice, never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHops(SmallVec<[IpAddr; 1]>);

impl NextHops {
    /// The set of `next_hops`; `None` when there are none.
    pub fn new(next_hops: impl IntoIterator<Item = IpAddr>) -> Option<Self> {
        let mut all: SmallVec<[IpAddr; 1]> = next_hops.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        (!all.is_empty()).then_some(NextHops(all))
    }

    /// The next hops, in address order.
    pub fn as_slice(&self) -> &[IpAddr] {
        &self.0
    }

    /// The set without the next hops `drop` names; `None` when none is left.
    pub fn without(&self, drop: impl Fn(&IpAddr) -> bool) -> Option<Self> {
        if !self.0.iter().any(&drop) {
            return Some(self.clone());
        }
        Self::new(self.0.iter().copied().filter(|nh| !drop(nh)))
    }
}

impl From<IpAddr> for NextHops {
    fn from(next_hop: IpAddr) -> Self {
        NextHops(SmallVec::from_buf([next_hop]))
    }
}

/// Best paths learned from peers: prefix → the next hops to forward over.
pub type BestPaths = BTreeMap<IpNet, NextHops>;

/// What the daemon needs from a BGP speaker.
#[async_trait]
pub trait BgpControl: Send + Sync {
    /// Makes the running sessions exactly `peers`: starts new ones, stops removed ones and
    /// restarts ones whose parameters changed.
    async fn set_peers(&self, peers: &BTreeMap<IpAddr, PeerSpec>);
    /// Makes the originated prefixes exactly `exports` (next hop self), each with its
    /// communities.
    async fn set_originated(&self, exports: &Exports);
    /// The address space explicit peers may not announce into (see [`ClusterSpace`]).
    async fn set_cluster_space(&self, space: ClusterSpace) {
        let _ = space;
    }
    /// The networks a learned route's next hop must lie in for the route to be used: the
    /// node's connected networks and the other nodes' addresses.
    async fn set_connected(&self, networks: Vec<IpNet>) {
        let _ = networks;
    }
    /// Best paths learned from peers, with the paths equal to them: prefix → next hops.
    fn best_paths(&self) -> BestPaths;
    /// Every session's state.
    fn sessions(&self) -> Vec<SessionInfo>;
    /// A receiver that changes whenever best paths or session states change.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// Reads the sessions' counters and ages afresh, for a status or a scrape: what
    /// [`sessions`](Self::sessions) holds between changes is as of the last change.
    async fn refresh_sessions(&self) {}
}

/// Stands in for the speaker where no session runs: serves the best paths and sessions its
/// owner sets, and keeps the peers and exports the controller last asked for. What tests and
/// benchmarks drive a controller with.
pub struct ScriptedBgp {
    peers: Mutex<BTreeMap<IpAddr, PeerSpec>>,
    originated: Mutex<BTreeSet<IpNet>>,
    paths: Mutex<BTreeMap<IpNet, IpAddr>>,
    sessions: Mutex<Vec<SessionInfo>>,
    changes: watch::Sender<u64>,
}

impl Default for ScriptedBgp {
    fn default() -> Self {
        Self {
            peers: Mutex::default(),
            originated: Mutex::default(),
            paths: Mutex::default(),
            sessions: Mutex::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl ScriptedBgp {
    /// Changes the best paths (prefix → next hop) with `change` and tells the subscribers,
    /// as the speaker does after a batch.
    pub fn change_paths(&self, change: impl FnOnce(&mut BTreeMap<IpNet, IpAddr>)) {
        change(&mut lock(&self.paths));
        self.changes.send_modify(|n| *n += 1);
    }

    /// Sets the sessions [`BgpControl::sessions`] reports.
    pub fn set_sessions(&self, sessions: Vec<SessionInfo>) {
        *lock(&self.sessions) = sessions;
        self.changes.send_modify(|n| *n += 1);
    }

    /// The peers the controller last asked for.
    pub fn peers(&self) -> BTreeMap<IpAddr, PeerSpec> {
        lock(&self.peers).clone()
    }

    /// The prefixes the controller last asked to originate.
    pub fn originated(&self) -> BTreeSet<IpNet> {
        lock(&self.originated).clone()
    }
}

#[async_trait]
impl BgpControl for ScriptedBgp {
    async fn set_peers(&self, peers: &BTreeMap<IpAddr, PeerSpec>) {
        *lock(&self.peers) = peers.clone();
    }
    async fn set_originated(&self, exports: &Exports) {
        *lock(&self.originated) = exports.keys().copied().collect();
    }
    fn best_paths(&self) -> BestPaths {
        lock(&self.paths)
            .iter()
            .map(|(prefix, next_hop)| (*prefix, NextHops::from(*next_hop)))
            .collect()
    }
    fn sessions(&self) -> Vec<SessionInfo> {
        lock(&self.sessions).clone()
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
