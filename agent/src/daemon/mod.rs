//! The node daemon behind `wren agent`: one pipeline, view → plan → program → report.
//!
//! 1. **View**: local copies of the documents it cares about ([`reflector`]), decoded into a
//!    [`view::ClusterView`]; BGP's best paths, pushed by the speaker ([`speaker`], behind
//!    [`bgp::BgpControl`]).
//! 2. **Plan** ([`plan`]): from the view and the best paths alone, the BGP sessions
//!    ([`mesh`]), what the node announces and accepts ([`policy`]), the kernel routes, the
//!    tunnels ([`encap`]) and the fast path's entries ([`fastpath`]). No I/O.
//! 3. **Program**: the programmers in [`crate::dataplane::program`] put their part in the
//!    kernel and return typed outcomes; the speaker takes sessions and exports.
//! 4. **Report** ([`status`]): `wren status` and the metrics, built in one place from the
//!    outcomes.
//!
//! One [`Controller`] pass runs the pipeline. A pass after a change of the view or of the best
//! paths sends the kernel only the routes that changed since the last pass; every reconcile
//! interval a full pass reads the kernel once and undoes drift. Registration and liveness
//! ([`registration`]) and the HTTP surfaces ([`health`]) run beside it.
//!
//! While etcd is away the view stays as it was, so passes keep programming the same routes;
//! `/readyz` reports the datastore down from a failed listing until the datastore answers
//! again. While it answers without the cluster's identity (its data lost), passes change
//! nothing at all until the data is rebuilt ([`identity`]); beside the controller run the
//! orphan sweep ([`orphans`]) and the leak release ([`leaks`]).

pub mod bfd;
pub mod bgp;
pub mod encap;
pub mod fastpath;
pub mod health;
pub mod identity;
pub mod leaks;
pub mod mesh;
pub mod orphans;
pub mod plan;
pub mod policy;
pub mod reflector;
pub mod registration;
pub mod speaker;
pub mod status;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::{Mutex, watch};
use wren_store::Store;

use crate::config::AgentConfig;
use crate::dataplane::mtu::PassUnderlay;
use crate::dataplane::program::policy::{PolicyProgrammer, PolicyStatus};
use crate::dataplane::program::routes::{
    DesiredRoutes, RouteProgrammer, RoutesError, RoutesOutcome, route_changes,
};
use crate::dataplane::watch::{KernelChanges, KernelGeneration};
use crate::metrics::{BfdSample, PeerLabels, PeerSample, SharedMetrics};
use bgp::BgpControl;
use mesh::{LocalNode, PeerSpec};
use plan::NodeFacts;
use reflector::DatastoreHealth;
use registration::Registered;
use status::{AgentStatus, PeerStatus, Readiness};
use view::{ClusterView, LiveView, Part, ViewSnapshot};

/// How long a change that follows a pass waits for the rest of its burst: a pod ADD writes
/// several documents within a few milliseconds, and one more pass should see them all. A
/// block claim writes the block and the affinity in one transaction, but they arrive on two
/// watches: the second waits this long, and it is on the path of every new block's route
/// (5 ms here put the claim-to-kernel p50 at 11 ms, 2 ms at 7).
const COALESCE: Duration = Duration::from_millis(2);

/// How long the first pass after a rebuild waits for the watches to deliver what this node
/// wrote back.
const CATCH_UP: Duration = Duration::from_secs(5);

/// The longest a reconcile tick trusts the kernel's silence: with change notifications
/// watched ([`KernelChanges`]), a tick reads the kernel only when it reported a change since
/// the last read, and at least this often whatever it reported, for what no notification
/// covers (a BPF map edited by hand).
pub const FULL_READ_PERIOD: Duration = Duration::from_secs(60);

/// How long a quiet tick trusts the datastore's identity read by an earlier pass (a datastore
/// that lost its data shows up in the view's next change, which is checked at once; this
/// bounds how long a datastore that lost it without any change goes unnoticed).
const IDENTITY_PERIOD: Duration = Duration::from_secs(10);

use crate::sync::{lock, read, write};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A listening socket could not be opened.
    #[error("cannot listen on {what} {addr}: {source}")]
    Listen {
        /// Which surface.
        what: &'static str,
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node name is held by another agent, or was taken over.
    #[error(transparent)]
    Ownership(#[from] registration::OwnershipError),
}

/// State shared by the controller and the HTTP surfaces.
pub struct Shared {
    /// Every metric.
    pub metrics: SharedMetrics,
    /// Datastore reachability.
    pub datastore: Arc<DatastoreHealth>,
    /// Registration state.
    pub registered: Arc<Registered>,
    bgp_synced: AtomicBool,
    /// False while a pool in use needs a tunnel this kernel cannot make.
    encap_healthy: AtomicBool,
    status: RwLock<AgentStatus>,
    /// The speaker, once the controller runs: `wren status` reads session state from it live
    /// rather than from the last pass.
    live_sessions: std::sync::OnceLock<Arc<dyn BgpControl>>,
    /// The policy programmer, once the controller runs: its counters are read at a scrape.
    live_policy: std::sync::OnceLock<Arc<PolicyProgrammer>>,
    /// The fast path, once the controller runs: its counters are read live too.
    live_fast_path: std::sync::OnceLock<Arc<fastpath::FastPathControl>>,
    /// The cluster identity check, once the daemon runs: whether the datastore may be
    /// trusted.
    identity: std::sync::OnceLock<Arc<identity::DatastoreIdentity>>,
}

impl Shared {
    /// Fresh state for the node `config` describes.
    pub fn new(config: &AgentConfig, metrics: SharedMetrics) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            datastore: Arc::default(),
            registered: Arc::default(),
            bgp_synced: AtomicBool::new(false),
            encap_healthy: AtomicBool::new(true),
            live_sessions: std::sync::OnceLock::new(),
            live_fast_path: std::sync::OnceLock::new(),
            live_policy: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
            status: RwLock::new(AgentStatus {
                node: config.node_name.clone(),
                ipv4: Some(config.node_ip),
                ipv6: config.node_ipv6,
                as_number: config.as_number.unwrap_or(wren_model::DEFAULT_AS),
                route_reflector_cluster_id: config.route_reflector_cluster_id,
                node_to_node_mesh: true,
                readiness: Readiness::default(),
                blocks: Vec::new(),
                borrowed: Vec::new(),
                routes_desired: 0,
                last_reconcile_error: None,
                peers: Vec::new(),
                encapsulation: encap::EncapStatus::default(),
                fast_path: fastpath::FastPathStatus::default(),
                network_policy: PolicyStatus::default(),
                multipath_routes: Vec::new(),
            }),
        })
    }

    /// The readiness checks as of now.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            datastore: self.datastore.is_up(),
            registered: self.registered.get(),
            bgp_synced: self.bgp_synced.load(Ordering::SeqCst),
            encapsulation: self.encap_healthy.load(Ordering::SeqCst),
            cluster_data: self.identity.get().and_then(|i| i.state().problem()),
        }
    }

    /// Whether the datastore is known to hold this cluster's data (its identity checked).
    pub fn datastore_trusted(&self) -> bool {
        self.identity.get().is_some_and(|i| i.state().trusted())
    }

    /// Whether the datastore is known not to hold this cluster's data: nothing may be
    /// allocated from it.
    pub fn datastore_distrusted(&self) -> bool {
        self.identity.get().is_some_and(|i| i.state().distrusted())
    }

    /// Uses `identity` for readiness and for [`Shared::datastore_trusted`].
    pub fn set_identity(&self, identity: Arc<identity::DatastoreIdentity>) {
        let _ = self.identity.set(identity);
    }

    /// Brings the per-peer metrics up to date with the live sessions (before a scrape).
    pub async fn refresh_peer_metrics(&self) {
        if self.live_sessions.get().is_some() {
            self.refresh_sessions().await;
            self.metrics.set_peers(&peer_samples(&self.status().peers));
        }
    }

    /// Reads the sessions' counters and ages from the speaker (before a status is shown):
    /// between changes of their state the daemon keeps what the last change left.
    pub async fn refresh_sessions(&self) {
        if let Some(bgp) = self.live_sessions.get() {
            bgp.refresh_sessions().await;
        }
    }

    /// Brings the network policy counters up to date with the kernel's (before a scrape).
    pub async fn refresh_policy_metrics(&self) {
        let Some(programmer) = self.live_policy.get() else {
            return;
        };
        match programmer.denied().await {
            Ok(totals) => self.metrics.set_policy_denied(&totals),
            Err(e) => tracing::debug!(error = %e, "cannot read the policy counters"),
        }
    }

    /// The status document as of now.
    pub fn status(&self) -> AgentStatus {
        let mut status = read(&self.status).clone();
        status.readiness = self.readiness();
        if let Some(bgp) = self.live_sessions.get() {
            refresh_sessions(&mut status.peers, &bgp.sessions());
        }
        if let Some(fast_path) = self.live_fast_path.get() {
            fast_path.refresh(&mut status.fast_path);
        }
        status
    }

    fn set_status(&self, status: AgentStatus) {
        *write(&self.status) = status;
    }
}

/// What one controller pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Not every prefix has been listed yet: nothing was touched.
    Waiting,
    /// The datastore does not hold this cluster's data (see [`identity`]): nothing was
    /// touched, and the dataplane stays exactly as it is.
    Held,
    /// Routes were programmed (or programming failed and is retried next pass).
    Done {
        /// Number of desired routes.
        desired: usize,
        /// The programming error, if any.
        error: Option<String>,
    },
}

/// Why a pass runs, which decides how much of the kernel it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The view or the best paths changed: the routes that changed since the last pass go to
    /// the kernel, and nothing is read back (unless that fails, or the last pass did).
    Change,
    /// The reconcile interval passed: the kernel's routes are read once and every difference
    /// (drift) fixed.
    Drift,
    /// The reconcile interval passed, and the kernel reported no change since the last full
    /// read (within [`FULL_READ_PERIOD`]): a pass as after a [`Trigger::Change`], with the
    /// datastore's identity read again once the last answer is 10 s old.
    Quiet,
}

/// The last full read of the kernel that found nothing it could not fix.
#[derive(Debug, Clone, Copy)]
struct KernelRead {
    /// The kernel's change counts when the read started (nftables' after wren's own writes
    /// of its policy table): any later report calls for another.
    generation: KernelGeneration,
    at: Instant,
}

/// The routes the last pass left in the kernel, so that the next one sends only changes.
#[derive(Default)]
struct Programmed {
    /// What the kernel holds of ours, as far as the last successful pass knows; `None`
    /// after a failure or before the first pass, which makes the next pass a full one.
    routes: Option<DesiredRoutes>,
    /// Whether that pass kept learned routes it did not want (BGP not yet synced).
    keep_learned: bool,
}

/// What the tunnel and fast path programmers were last given and returned: a pass after a
/// change that leaves their part of the plan as it was only reuses what they did.
#[derive(Default)]
struct KernelSide {
    tunnels: Option<(TunnelsPart, Option<encap::EncapStatus>)>,
    fast_path: Option<(fastpath::FastPathDesired, Option<fastpath::FastPathStatus>)>,
    /// The policy plan last given to the policy programmer, and its outcome.
    network_policy: Option<(wren_policy::NodePlan, PolicyStatus)>,
    /// The connection mark and reset timeout last handed to the fast path.
    policy_mark: Option<(
        Option<wren_policy::nft::ConnectionMark>,
        std::time::Duration,
    )>,
}

/// The tunnels' part of a plan.
#[derive(PartialEq)]
struct TunnelsPart {
    wanted: encap::Wanted,
    nat: crate::dataplane::nat::NatRules,
    vxlan_peers: Vec<crate::dataplane::vxlan::VxlanPeer>,
}

/// Runs the pipeline: view → plan → program → report.
pub struct Controller {
    facts: NodeFacts,
    view: Arc<LiveView>,
    bgp: Arc<dyn BgpControl>,
    routes: Arc<dyn RouteProgrammer>,
    encap: Option<encap::Encap>,
    fast_path: Option<Arc<fastpath::FastPathControl>>,
    network_policy: Option<Arc<PolicyProgrammer>>,
    shared: Arc<Shared>,
    /// When the first pass had a view: the BGP sync timeout counts from there, so sessions
    /// get their time after a datastore that was away at start-up returns.
    first_view: std::sync::OnceLock<Instant>,
    sync_timeout: Duration,
    /// The most routes desired since freed memory was last given back to the system.
    routes_peak: AtomicUsize,
    programmed: Mutex<Programmed>,
    kernel_side: Mutex<KernelSide>,
    /// The node's connected networks as the last full pass read them.
    connected: std::sync::Mutex<Option<Vec<IpNet>>>,
    /// When the last pass after a change started: changes that follow within [`COALESCE`]
    /// wait for the rest of their burst.
    last_change_pass: std::sync::Mutex<Option<Instant>>,
    /// The datastore, for the identity check.
    store: Arc<dyn Store>,
    /// The identity check; without one every listing is trusted.
    identity: Option<Arc<identity::DatastoreIdentity>>,
    /// The last pass was held: the next trusted one first waits for the view to hold what
    /// this node recorded.
    held: AtomicBool,
    /// When the datastore was first trusted again after a hold.
    trusted_again: std::sync::Mutex<Option<Instant>>,
    /// The generation of the view whose holdings were last recorded.
    recorded: std::sync::Mutex<Option<u64>>,
    /// The generation of the view the identity check last found trustworthy.
    checked: std::sync::Mutex<Option<u64>>,
    /// When the datastore last answered the identity check.
    identity_read: std::sync::Mutex<Option<Instant>>,
    /// The kernel's change notifications; without, every tick reads the kernel.
    kernel_changes: Option<Arc<KernelChanges>>,
    /// The last full read of the kernel that left nothing to retry.
    kernel_read: std::sync::Mutex<Option<KernelRead>>,
}

/// The per-peer metric samples of a status table.
fn peer_samples(peers: &[PeerStatus]) -> Vec<PeerSample> {
    peers
        .iter()
        .map(|p| PeerSample {
            labels: PeerLabels {
                peer: p.address.to_string(),
                r#type: p.kind.as_str().to_owned(),
            },
            state: p.state.clone(),
            received: p.prefixes_received,
            sent: p.prefixes_sent,
            bfd: p.bfd.as_ref().map(|b| BfdSample {
                up: b.is_up(),
                downs: b.downs,
                sent: b.packets_sent,
                received: b.packets_received,
            }),
        })
        .collect()
}

/// Brings each peer's session state, age, prefix counts and last error up to date.
fn refresh_sessions(peers: &mut [PeerStatus], sessions: &[bgp::SessionInfo]) {
    for peer in peers {
        if let Some(s) = sessions.iter().find(|s| s.address == peer.address) {
            peer.state = s.state.clone();
            peer.since_secs = s.in_state_for.map(|d| d.as_secs());
            peer.prefixes_received = s.prefixes_received;
            peer.prefixes_filtered = s.prefixes_filtered.clone();
            peer.prefixes_sent = s.prefixes_sent;
            peer.last_error = s.last_error.clone();
            peer.bfd = s.bfd.clone();
        }
    }
}

/// What the programmers of one pass returned, for the report.
struct Outcomes {
    peers: BTreeMap<IpAddr, PeerSpec>,
    sessions: Vec<bgp::SessionInfo>,
    routes_desired: usize,
    routes: Result<RoutesOutcome, RoutesError>,
    encapsulation: Option<encap::EncapStatus>,
    fast_path: Option<fastpath::FastPathStatus>,
    network_policy: Option<PolicyStatus>,
    multipath_routes: Vec<status::MultipathRoute>,
}

impl Controller {
    /// Starts the reflectors for this node; passes run when [`Controller::pass`] is called.
    pub fn new(
        config: &AgentConfig,
        store: Arc<dyn Store>,
        bgp: Arc<dyn BgpControl>,
        routes: Arc<dyn RouteProgrammer>,
        shared: Arc<Shared>,
    ) -> Self {
        let _ = shared.live_sessions.set(bgp.clone());
        let view = Arc::new(LiveView::default());
        let identity = shared.identity.get().cloned();
        for part in Part::ALL {
            let (node, health) = (config.node_name.clone(), shared.datastore.clone());
            reflector::spawn(store.clone(), part, node, health, &view);
        }
        let mut own_addresses = vec![IpAddr::V4(config.node_ip.addr())];
        own_addresses.extend(config.node_ipv6.map(|n| IpAddr::V6(n.addr())));
        Self {
            facts: NodeFacts {
                node: LocalNode {
                    name: config.node_name.clone(),
                    address: config.node_ip.addr(),
                    as_number: config.as_number,
                    route_reflector_cluster_id: config.route_reflector_cluster_id,
                },
                own_addresses,
            },
            view,
            bgp,
            routes,
            encap: None,
            fast_path: None,
            network_policy: None,
            shared,
            first_view: std::sync::OnceLock::new(),
            sync_timeout: config.bgp_sync_timeout,
            routes_peak: AtomicUsize::new(0),
            programmed: Mutex::new(Programmed::default()),
            kernel_side: Mutex::new(KernelSide::default()),
            connected: std::sync::Mutex::new(None),
            last_change_pass: std::sync::Mutex::new(None),
            store,
            identity,
            held: AtomicBool::new(false),
            trusted_again: std::sync::Mutex::new(None),
            recorded: std::sync::Mutex::new(None),
            checked: std::sync::Mutex::new(None),
            identity_read: std::sync::Mutex::new(None),
            kernel_changes: None,
            kernel_read: std::sync::Mutex::new(None),
        }
    }

    /// Lets reconcile ticks skip reading the kernel while `changes` reports it quiet.
    pub fn with_kernel_changes(mut self, changes: Option<Arc<KernelChanges>>) -> Self {
        self.kernel_changes = changes;
        self
    }

    /// What a reconcile tick does: a full read of the kernel ([`Trigger::Drift`]) unless the
    /// kernel reported no change since the last one, which was recent ([`Trigger::Quiet`]).
    fn tick(&self) -> Trigger {
        let last = *lock(&self.kernel_read);
        let now = self.kernel_changes.as_ref().and_then(|c| c.generation());
        match (last, now) {
            (Some(last), Some(now))
                if last.generation == now && last.at.elapsed() < FULL_READ_PERIOD =>
            {
                Trigger::Quiet
            }
            _ => Trigger::Drift,
        }
    }

    /// Adds tunnels, MTUs and outgoing NAT to every pass; without, learned routes stay plain.
    pub fn with_encap(mut self, encap: Option<encap::Encap>) -> Self {
        self.encap = encap;
        self
    }

    /// Adds the BPF fast path to every pass; without, pods are routed by the host stack.
    pub fn with_fast_path(mut self, fast_path: Option<fastpath::FastPathControl>) -> Self {
        self.fast_path = fast_path.map(Arc::new);
        if let Some(control) = &self.fast_path {
            let _ = self.shared.live_fast_path.set(control.clone());
        }
        self
    }

    /// Adds network policy to every pass; without, no pod's traffic is filtered.
    pub fn with_network_policy(mut self, programmer: Option<PolicyProgrammer>) -> Self {
        self.network_policy = programmer.map(Arc::new);
        if let Some(programmer) = &self.network_policy {
            let _ = self.shared.live_policy.set(programmer.clone());
        }
        self
    }

    /// Waits until the view changes (or returns at once if it changed since the last call).
    pub async fn changed(&self) {
        self.view.changed().await;
    }

    /// BGP is synced once every desired session is up and sent End-of-RIB, or once the sync
    /// timeout has passed since the first pass with a view (the sessions exist only from
    /// then: a datastore away at start-up must not use up their time); it stays synced from
    /// then on (a later flap is a routing event, not a reason to pull the node out of
    /// service).
    fn update_bgp_synced(
        &self,
        peers: &BTreeMap<IpAddr, PeerSpec>,
        sessions: &[bgp::SessionInfo],
    ) -> bool {
        if self.shared.bgp_synced.load(Ordering::SeqCst) {
            return true;
        }
        let all_eor = peers.keys().all(|address| {
            sessions
                .iter()
                .any(|s| s.address == *address && s.end_of_rib)
        });
        let since_view = self.first_view.get_or_init(Instant::now).elapsed();
        let synced = all_eor || since_view >= self.sync_timeout;
        if synced {
            tracing::info!(
                end_of_rib = all_eor,
                after = ?since_view,
                "BGP synced"
            );
            self.shared.bgp_synced.store(true, Ordering::SeqCst);
        }
        synced
    }

    /// Tells BGP where learned next hops may lie: the connected networks (as the last full
    /// pass read them), and the other nodes' addresses, which the mesh's routes lead to
    /// through a tunnel when a node is on another subnet. Nothing before the first read.
    async fn update_connected(&self, view: &ClusterView) {
        let connected = lock(&self.connected).clone();
        let Some(connected) = connected else {
            return;
        };
        let nodes = view
            .nodes
            .values()
            .filter(|n| n.name != self.facts.node.name)
            .flat_map(|n| {
                let v4 = n.ipv4.map(|a| IpNet::from(IpAddr::V4(a.addr())));
                v4.into_iter()
                    .chain(n.ipv6.map(|a| IpNet::from(IpAddr::V6(a.addr()))))
            });
        self.bgp
            .set_connected(connected.into_iter().chain(nodes).collect())
            .await;
    }

    /// Once the desired routes have fallen to a quarter of their peak (a peer's table went),
    /// gives the memory the pass and BGP freed back to the system; the allocator keeps it
    /// otherwise.
    fn release_memory_after_a_drop(&self, desired: usize) {
        let peak = self
            .routes_peak
            .fetch_max(desired, Ordering::Relaxed)
            .max(desired);
        if peak > 4096 && desired < peak / 4 {
            wren_bgp::speaker::release_freed_memory();
            self.routes_peak.store(desired, Ordering::Relaxed);
        }
    }

    /// Puts the desired routes in the kernel: only the changes since the last pass on a
    /// [`Trigger::Change`], the whole set (one read of the kernel) on [`Trigger::Drift`], on
    /// the first pass, after a failure, when BGP has just synced, and when the changes
    /// alone do not go in cleanly (a destination somebody else holds, a device not there).
    async fn program_routes(
        &self,
        trigger: Trigger,
        desired: DesiredRoutes,
        keep_learned: bool,
    ) -> Result<RoutesOutcome, RoutesError> {
        let mut programmed = self.programmed.lock().await;
        let previous = programmed.routes.take();
        if let (Trigger::Change, Some(previous)) = (trigger, &previous)
            && programmed.keep_learned == keep_learned
        {
            let changes = route_changes(previous, &desired, keep_learned);
            match self.routes.apply(changes).await {
                Ok(outcome) => {
                    programmed.routes = Some(desired);
                    return Ok(outcome);
                }
                Err(e) => tracing::debug!(error = %e, "route changes did not apply; reconciling"),
            }
        }
        let outcome = self.routes.reconcile(&desired, keep_learned).await;
        if outcome.is_ok() {
            programmed.routes = Some(desired);
            programmed.keep_learned = keep_learned;
        }
        outcome
    }

    /// Whether this pass may act on `view`: the datastore holds this cluster's identity (read
    /// after the view was taken, so a datastore that lost its data is never acted on), and
    /// after a hold, the view holds what this node recorded. A datastore that does not answer
    /// leaves the last conclusion: the view is then the one from before.
    ///
    /// A pass after a change of the best paths alone, on the view the last check found
    /// trustworthy, reads nothing new from the datastore and is not checked again: BGP's
    /// routes reach the kernel without waiting on etcd. A quiet tick on that view checks
    /// again once the last answer is [`IDENTITY_PERIOD`] old; drift passes always check.
    async fn may_act(&self, snapshot: &ViewSnapshot, trigger: Trigger) -> bool {
        let Some(identity) = &self.identity else {
            return true;
        };
        let view = &snapshot.view;
        let last_checked = *lock(&self.checked);
        let recently_read =
            || lock(&self.identity_read).is_some_and(|at| at.elapsed() < IDENTITY_PERIOD);
        if (trigger == Trigger::Change || trigger == Trigger::Quiet && recently_read())
            && last_checked == Some(snapshot.generation)
            && !self.held.load(Ordering::SeqCst)
        {
            return true;
        }
        // While the datastore is down the view is the one from before, and a pass must not
        // wait on a request that cannot be answered (learned routes still change).
        let answered = if self.shared.datastore.is_up() {
            identity.check(self.store.as_ref()).await
        } else {
            Err(wren_store::StoreError::Unavailable {
                endpoints: String::new(),
                reason: "reported down".to_owned(),
            })
        };
        let trusted = match answered {
            Ok(state) => {
                *lock(&self.identity_read) = Some(Instant::now());
                state.trusted()
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster identity; keeping the last conclusion");
                !identity.state().distrusted()
            }
        };
        let mut trusted_again = lock(&self.trusted_again);
        if !trusted {
            self.held.store(true, Ordering::SeqCst);
            *trusted_again = None;
            return false;
        }
        if self.held.load(Ordering::SeqCst) {
            let caught_up = identity.view_holds_holdings(view);
            // A recorded document another agent changed since (once it resumed) never comes
            // back as it was: the wait for the watches is bounded.
            let waited = trusted_again.get_or_insert_with(Instant::now).elapsed();
            if !caught_up && waited < CATCH_UP {
                return false;
            }
            tracing::info!(
                caught_up,
                "the datastore holds this cluster's data again: resuming"
            );
            self.held.store(false, Ordering::SeqCst);
            *trusted_again = None;
        }
        *lock(&self.checked) = Some(snapshot.generation);
        true
    }

    /// One full pass: view → plan → program → report, reading the kernel's routes once.
    pub async fn pass(&self) -> Pass {
        self.pass_on(Trigger::Drift).await
    }

    /// One pass, as much of the kernel read as `trigger` calls for.
    pub async fn pass_on(&self, trigger: Trigger) -> Pass {
        let Some(snapshot) = self.view.current() else {
            return Pass::Waiting;
        };
        if !self.may_act(&snapshot, trigger).await {
            return Pass::Held;
        }
        let view = snapshot.view;
        // Read before the kernel is: whatever it reports from here on calls for another read.
        let mut kernel_generation = self.kernel_changes.as_ref().and_then(|c| c.generation());
        let read_at = Instant::now();
        // A quiet tick programs the kernel as after a change: only what changed.
        let trigger_kernel = match trigger {
            Trigger::Quiet => Trigger::Change,
            other => other,
        };
        self.update_connected(&view).await;
        let mut plan = plan::plan(&view, &self.bgp.best_paths(), &self.facts);
        self.bgp.set_cluster_space(plan.cluster_space.clone()).await;
        self.bgp.set_peers(&plan.peers).await;
        self.bgp.set_originated(&plan.exports).await;
        let sessions = self.bgp.sessions();
        let synced = self.update_bgp_synced(&plan.peers, &sessions);
        let mut kernel_side = self.kernel_side.lock().await;
        let tunnels = TunnelsPart {
            wanted: plan.tunnels.clone(),
            nat: plan.nat.clone(),
            vxlan_peers: plan.vxlan_peers.clone(),
        };
        // The fast path attaches to the tunnel devices that exist: it follows the tunnels too.
        let mut tunnels_programmed = false;
        let underlay = PassUnderlay::new(IpAddr::V4(self.facts.node.address));
        let encapsulation = match (trigger_kernel, kernel_side.tunnels.take(), &self.encap) {
            (_, _, None) => None,
            (Trigger::Change, Some((last, Some(mut status))), Some(encap)) if last == tunnels => {
                encap.reshape(&view, &mut status, &mut plan.routes);
                Some(status)
            }
            (_, _, Some(encap)) => {
                tunnels_programmed = true;
                Some(
                    encap
                        .pass(&view, &plan.tunnels, &mut plan.routes, &underlay)
                        .await,
                )
            }
        };
        kernel_side.tunnels = Some((tunnels, encapsulation.clone()));
        let fast_path = match (
            trigger_kernel,
            kernel_side.fast_path.take(),
            &self.fast_path,
        ) {
            (_, _, None) => None,
            (Trigger::Change, Some((last, status)), Some(_))
                if last == plan.fast_path && !tunnels_programmed =>
            {
                status
            }
            (_, _, Some(control)) => Some(control.pass(plan.fast_path.clone(), &underlay).await),
        };
        kernel_side.fast_path = Some((plan.fast_path.clone(), fast_path.clone()));
        // A quiet tick gives the programmer the rules again: it renews the epoch when due.
        let network_policy = match (
            trigger,
            kernel_side.network_policy.take(),
            &self.network_policy,
        ) {
            (_, _, None) => None,
            (Trigger::Change, Some((last, status)), Some(_))
                if last == plan.network_policy && status.error.is_none() =>
            {
                Some(status)
            }
            (_, _, Some(programmer)) => {
                let rules = plan.network_policy.nft_rules();
                let outcome = programmer.program(&rules, trigger == Trigger::Drift).await;
                if let Ok(change) = &outcome
                    && *change != crate::dataplane::program::policy::PolicyChange::None
                {
                    tracing::info!(
                        ?change,
                        isolated = plan.network_policy.endpoints.len(),
                        "network policy programmed"
                    );
                }
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, "network policy programming failed; retrying next pass");
                }
                // wren's own write of its table is no drift of anyone else's: the count the
                // next tick compares with is taken after it. Otherwise every epoch renewal
                // (a delta on a quiet tick) would make the next tick a full pass, and every
                // full pass a reload of the whole table.
                if let (Ok(change), Some(changes)) = (&outcome, &self.kernel_changes)
                    && *change != crate::dataplane::program::policy::PolicyChange::None
                {
                    let now = changes.nftables_now();
                    if trigger == Trigger::Drift {
                        match (now, kernel_generation.as_mut()) {
                            (Some(now), Some(generation)) => generation.nftables = now,
                            _ => kernel_generation = None,
                        }
                    } else {
                        // Only if nothing else had been reported when the pass began: a
                        // report from before is still the next tick's to read.
                        let mut read = lock(&self.kernel_read);
                        match (now, read.as_mut()) {
                            (Some(now), Some(last))
                                if Some(last.generation) == kernel_generation =>
                            {
                                last.generation.nftables = now;
                            }
                            _ => {}
                        }
                    }
                }
                Some(PolicyStatus::of(
                    &plan.network_policy,
                    outcome.as_ref().copied(),
                ))
            }
        };
        if let Some(status) = &network_policy {
            kernel_side.network_policy = Some((plan.network_policy.clone(), status.clone()));
        }
        // Only once the table stamping it is in the kernel: the epoch the fast path carries
        // (written again by a full pass, and whenever it changed).
        if let (Some(programmer), Some(control)) = (&self.network_policy, &self.fast_path) {
            let mark = (
                programmer.connection_mark().await,
                programmer.reset_timeout(),
            );
            if trigger == Trigger::Drift || kernel_side.policy_mark != Some(mark) {
                control.set_policy_mark(mark.0, mark.1).await;
                kernel_side.policy_mark = Some(mark);
            }
        }
        drop(kernel_side);
        let routes_desired = plan.routes.len();
        let multipath_routes = status::MultipathRoute::of(plan.routes.values());
        let routes = self
            .program_routes(trigger_kernel, plan.routes, !synced)
            .await;
        if let Ok(RoutesOutcome {
            connected: Some(connected),
            ..
        }) = &routes
        {
            *lock(&self.connected) = Some(connected.clone());
            self.update_connected(&view).await;
        }
        self.release_memory_after_a_drop(routes_desired);
        if trigger == Trigger::Drift {
            // A read that left something to retry is made again at the next tick.
            let clean = routes.is_ok()
                && encapsulation.as_ref().is_none_or(|e| e.errors.is_empty())
                && fast_path.as_ref().is_none_or(|f| f.errors.is_empty())
                && network_policy.as_ref().is_none_or(|p| p.error.is_none());
            *lock(&self.kernel_read) =
                kernel_generation
                    .filter(|_| clean)
                    .map(|generation| KernelRead {
                        generation,
                        at: read_at,
                    });
        }
        let error = routes.as_ref().err().map(ToString::to_string);
        self.report(
            &view,
            Outcomes {
                peers: plan.peers,
                sessions,
                routes_desired,
                routes,
                encapsulation,
                fast_path,
                network_policy,
                multipath_routes,
            },
        );
        if let Some(identity) = &self.identity {
            let mut recorded = lock(&self.recorded);
            if *recorded != Some(snapshot.generation) {
                identity.record(identity::Holdings::of(&view));
                *recorded = Some(snapshot.generation);
            }
        }
        Pass::Done {
            desired: routes_desired,
            error,
        }
    }

    /// Status and metrics, from the view and the outcomes of one pass.
    fn report(&self, view: &ClusterView, outcomes: Outcomes) {
        let metrics = &self.shared.metrics;
        let node = self.facts.node.name.as_str();
        metrics.route_reconciles.inc();
        match &outcomes.routes {
            Ok(outcome) => {
                metrics.routes_changed.inc_by(outcome.changed as u64);
                metrics.routes_removed.inc_by(outcome.removed as u64);
                if outcome.changed + outcome.removed > 0 {
                    tracing::info!(
                        changed = outcome.changed,
                        removed = outcome.removed,
                        "kernel routes programmed"
                    );
                }
            }
            Err(e) => {
                metrics.route_reconcile_errors.inc();
                tracing::warn!(error = %e, "route programming failed; retrying next pass");
            }
        }
        let local_blocks = view.local_blocks(node);
        metrics.routes_desired.set(outcomes.routes_desired as i64);
        metrics.ipam_blocks.set(local_blocks.len() as i64);
        metrics
            .ipam_addresses_in_use
            .set(i64::try_from(view.addresses_in_use(node)).unwrap_or(i64::MAX));
        let peer_status: Vec<PeerStatus> = outcomes
            .sessions
            .iter()
            .filter_map(|s| {
                let spec = outcomes.peers.get(&s.address)?;
                Some(PeerStatus {
                    name: spec.name.clone(),
                    address: s.address,
                    asn: spec.asn,
                    kind: spec.kind,
                    state: s.state.clone(),
                    since_secs: s.in_state_for.map(|d| d.as_secs()),
                    prefixes_received: s.prefixes_received,
                    prefixes_filtered: s.prefixes_filtered.clone(),
                    prefixes_sent: s.prefixes_sent,
                    last_error: s.last_error.clone(),
                    import_filter: spec.filters.import.as_ref().map(|f| f.summary()),
                    export_filter: spec.filters.export.as_ref().map(|f| f.summary()),
                    bfd: s.bfd.clone(),
                    local_as: spec.local_as,
                    timers: s.timers,
                })
            })
            .collect();
        metrics.set_peers(&peer_samples(&peer_status));
        let mut status = self.shared.status();
        status.as_number = self.facts.node.asn(view);
        status.node_to_node_mesh = view.cluster.node_to_node_mesh;
        status.blocks = local_blocks.into_iter().collect();
        status.borrowed = view.borrowed_addresses(node).into_iter().collect();
        status.routes_desired = outcomes.routes_desired;
        let next_hops: usize = outcomes
            .multipath_routes
            .iter()
            .map(|r| r.next_hops.len())
            .sum();
        metrics
            .routes_multipath
            .set(i64::try_from(outcomes.multipath_routes.len()).unwrap_or(i64::MAX));
        metrics
            .routes_multipath_next_hops
            .set(i64::try_from(next_hops).unwrap_or(i64::MAX));
        status.multipath_routes = outcomes.multipath_routes;
        status.last_reconcile_error = outcomes.routes.as_ref().err().map(ToString::to_string);
        status.peers = peer_status;
        if let Some(encapsulation) = outcomes.encapsulation {
            encapsulation.publish(metrics);
            self.shared
                .encap_healthy
                .store(encapsulation.healthy(), Ordering::SeqCst);
            status.encapsulation = encapsulation;
        }
        if let (Some(fast_path), Some(control)) = (outcomes.fast_path, &self.fast_path) {
            control.publish(&fast_path, metrics);
            status.fast_path = fast_path;
        }
        if let Some(network_policy) = outcomes.network_policy {
            status.network_policy = network_policy;
        }
        self.shared.set_status(status);
    }

    /// Runs passes on every change and every `interval` until `shutdown` fires.
    pub async fn run(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut bgp_changes = self.bgp.subscribe();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // While the datastore is not trusted, the rebuild's steps are taken every second.
        let mut rebuild_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let trigger = tokio::select! {
                _ = tick.tick() => self.tick(),
                _ = rebuild_tick.tick(), if self.held.load(Ordering::SeqCst) => Trigger::Change,
                _ = self.changed() => {
                    // The first change after a quiet spell goes through at once; one that
                    // follows a pass within COALESCE waits for the rest of its burst (a pod
                    // ADD writes several documents), so a burst costs a few passes, not one
                    // per document.
                    let last = *lock(&self.last_change_pass);
                    if let Some(wait) = last.and_then(|l| COALESCE.checked_sub(l.elapsed())) {
                        tokio::time::sleep(wait).await;
                    }
                    *lock(&self.last_change_pass) = Some(Instant::now());
                    Trigger::Change
                }
                r = bgp_changes.changed() => {
                    if r.is_err() {
                        // The speaker is gone; keep reconciling on the timer.
                        bgp_changes = watch::channel(0).1;
                    }
                    // The speaker hands over a whole batch of best-path changes at once:
                    // no wait.
                    Trigger::Change
                }
                _ = shutdown.changed() => return,
            };
            self.pass_on(trigger).await;
            // One-off work leaves megabytes freed but kept by the allocator in an agent that
            // then idles: the fast path's reading of the kernel's BTF at start, a full pass's
            // read of the kernel's routes. A full pass ends such work; the walk over the
            // allocator's free lists costs microseconds at an idle agent's heap.
            if trigger == Trigger::Drift {
                wren_bgp::speaker::release_freed_memory();
            }
        }
    }
}

/// Binds the metrics server.
pub async fn bind_metrics(addr: SocketAddr) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            what: "metrics address",
            addr: addr.to_string(),
            source,
        })
}

/// Binds the local API socket.
pub fn bind_socket(path: &std::path::Path) -> Result<crate::api::server::BoundSocket, DaemonError> {
    crate::api::bind_socket(path).map_err(|source| DaemonError::Listen {
        what: "socket",
        addr: path.display().to_string(),
        source,
    })
}

/// The pieces the daemon is assembled from.
pub struct Parts {
    /// The metrics server's listener, bound before anything changed.
    pub metrics_listener: tokio::net::TcpListener,
    /// The local API socket, bound before anything changed.
    pub socket: crate::api::server::BoundSocket,
    /// This agent's hold on its node name (claimed at start when etcd answered).
    pub ownership: registration::Ownership,
    /// The datastore.
    pub store: Arc<dyn Store>,
    /// The BGP speaker.
    pub bgp: Arc<dyn BgpControl>,
    /// The kernel route programmer.
    pub routes: Arc<dyn RouteProgrammer>,
    /// The CNI plugin's API, served on the local socket next to `/v1/status`.
    pub local_api: axum::Router,
    /// Tunnels, MTUs and outgoing NAT; `None` leaves learned routes plain.
    pub encap: Option<encap::Encap>,
    /// The BPF fast path; `None` leaves pods to the host stack.
    pub fast_path: Option<fastpath::FastPathControl>,
    /// Network policy's nftables table; `None` filters nothing.
    pub network_policy: Option<PolicyProgrammer>,
    /// Removes what an ADD cut short left on this node; `None` leaves it.
    pub orphan_sweep: Option<orphans::OrphanSweep>,
    /// The automatic leak release and the IPAM it frees through; `None` leaves it to
    /// `wren ipam release`.
    pub leak_release: Option<(leaks::LeakRelease, Arc<wren_ipam::Ipam>)>,
}

/// Runs the daemon until `shutdown` fires, or until another agent takes the node name over:
/// registration, controller, metrics and local API. At the end the liveness lease is revoked;
/// kernel routes and the node document stay.
pub async fn run(
    config: AgentConfig,
    parts: Parts,
    shared: Arc<Shared>,
    outer_shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let Parts {
        metrics_listener,
        socket,
        ownership,
        store,
        bgp,
        routes,
        local_api,
        encap,
        fast_path,
        network_policy,
        orphan_sweep,
        leak_release,
    } = parts;
    // Everything stops on the signal, and also when registration loses the node name.
    let (stop_tx, shutdown) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        let mut outer = outer_shutdown;
        tokio::spawn(async move {
            let _ = outer.changed().await;
            let _ = stop_tx.send(true);
        });
    }
    tracing::info!(
        node = config.node_name,
        ip = %config.node_ip,
        metrics = %config.metrics_addr,
        socket = %config.socket.display(),
        "wren agent starting"
    );

    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    let metrics_server = axum::serve(metrics_listener, health::metrics_router(shared.clone()))
        .with_graceful_shutdown(stop(shutdown.clone()));
    let api = local_api.merge(health::status_router(shared.clone()));
    let api_server = crate::api::serve(socket, api, stop(shutdown.clone()));
    let registration = {
        let registering = registration::keep_registered(
            store.clone(),
            config.clone(),
            ownership,
            shared.registered.clone(),
            shared.datastore.clone(),
            shutdown.clone(),
        );
        async move {
            let outcome = registering.await;
            let _ = stop_tx.send(true);
            outcome
        }
    };
    let probe = tokio::spawn(reflector::probe_while_down(
        store.clone(),
        shared.datastore.clone(),
    ));
    let housekeeping = {
        let mut tasks = Vec::new();
        if let Some(sweep) = orphan_sweep {
            tasks.push(tokio::spawn(sweep.run(shared.clone(), shutdown.clone())));
        }
        if let Some((release, ipam)) = leak_release {
            tasks.push(tokio::spawn(release.run(
                store.clone(),
                ipam,
                shared.clone(),
                shutdown.clone(),
            )));
        }
        tasks
    };
    let kernel_changes = match KernelChanges::watch() {
        Ok(changes) => Some(changes),
        Err(e) => {
            tracing::warn!(error = %e, "every reconcile reads the kernel");
            None
        }
    };
    let controller = Controller::new(&config, store, bgp, routes, shared.clone())
        .with_encap(encap)
        .with_fast_path(fast_path)
        .with_network_policy(network_policy)
        .with_kernel_changes(kernel_changes);

    let (m, a, registered, ()) = tokio::join!(
        async { metrics_server.await },
        api_server,
        registration,
        controller.run(config.reconcile_interval, shutdown.clone()),
    );
    probe.abort();
    for task in housekeeping {
        task.abort();
    }
    if let Err(e) = m.and(a) {
        tracing::warn!(error = %e, "HTTP server ended with an error");
    }
    registered.map_err(DaemonError::from)
}
