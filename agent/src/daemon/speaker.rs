//! [`BgpControl`] on the embedded `wren-bgp` speaker.
//!
//! The speaker runs the sessions and the RIB; this adapter turns the daemon's desired state
//! into speaker calls (adding, updating and removing peers, originating and withdrawing
//! prefixes), keeps a copy of the best paths learned from peers (fed by the speaker's
//! subscription) and of every session's state (polled once a second), and applies wren's
//! export rule inside the speaker: only what this node originates leaves it, except that a
//! route reflector reflects to its iBGP peers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::sync::{lock, read, write};

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::{Notify, watch};
use wren_bgp::fsm::State;
use wren_bgp::rib::{
    Attributes, BestPath, PeerRef, Policy, RouteAttributes, RouteEvent, Source, Verdict,
};
use wren_bgp::speaker::{
    GracefulRestartConfig, PeerConfig, PeerStatus, PrefixLimit, Speaker, SpeakerConfig,
    SpeakerError, SpeakerHandle,
};
use wren_bgp::wire::{Afi, LargeCommunity};
use wren_model::{Community, Decision, Filter};

use super::bfd::{BfdSession, BfdSessions};
use super::bgp::{BestPaths, BgpControl, NextHops, SessionInfo, SessionTimers};
use super::mesh::{PeerKind, PeerSpec};
use super::policy::{ClusterSpace, Export, Exports, ImportLimits};
use crate::config::AgentConfig;

/// Connect retry toward other nodes: they are one hop away and restart quickly.
const NODE_CONNECT_RETRY: Duration = Duration::from_secs(5);

/// What explicit peers may announce: the cluster's space, each peer's limits and import
/// filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ImportRules {
    space: ClusterSpace,
    limits: BTreeMap<IpAddr, ImportLimits>,
    filters: BTreeMap<IpAddr, Filter>,
}

/// wren's export rule, the export filters and the import limits and filters for explicit
/// peers, inside the speaker.
struct NodePolicy {
    reflector: bool,
    import: RwLock<ImportRules>,
    export_filters: RwLock<BTreeMap<IpAddr, Filter>>,
    /// Originated prefixes only explicit peers hear (the service ranges).
    external_only: RwLock<BTreeSet<IpNet>>,
}

/// The reason `wren status` counts a route an import filter rejected under.
const IMPORT_FILTER: &str = "import filter";

/// Whether a route's attributes carry `community`.
fn carries(attrs: &Attributes, community: &Community) -> bool {
    match *community {
        Community::Standard(value) => attrs.communities.contains(&value),
        Community::Large(asn, first, second) => attrs.large_communities.contains(&LargeCommunity {
            global_admin: asn,
            local_data_1: first,
            local_data_2: second,
        }),
    }
}

impl Policy for NodePolicy {
    fn import(&self, peer: &PeerRef, prefix: IpNet, attrs: &Attributes) -> Verdict {
        let rules = read(&self.import);
        // Another node (no limits): the mesh's routes are the truth.
        let Some(limits) = rules.limits.get(&peer.address) else {
            return Verdict::Accept;
        };
        if let Some(held) = rules.space.hold(&prefix, *limits) {
            return Verdict::Filter(held.as_str());
        }
        let filter = rules.filters.get(&peer.address);
        match filter.map(|f| f.decide(&prefix, &|c| carries(attrs, c))) {
            Some(Decision::Reject) => Verdict::Filter(IMPORT_FILTER),
            _ => Verdict::Accept,
        }
    }

    fn export(
        &self,
        peer: &PeerRef,
        prefix: IpNet,
        attrs: &Attributes,
        source: &Source,
    ) -> Verdict {
        let verdict = self.export_rule(peer, source);
        if verdict != Verdict::Accept {
            return verdict;
        }
        // Service ranges go to the fabric, not to the other nodes (which announce them too).
        if matches!(source, Source::Local)
            && read(&self.external_only).contains(&prefix)
            && !read(&self.import).limits.contains_key(&peer.address)
        {
            return Verdict::Reject;
        }
        let filters = read(&self.export_filters);
        let Some(filter) = filters.get(&peer.address) else {
            return Verdict::Accept;
        };
        match filter.decide(&prefix, &|c| carries(attrs, c)) {
            Decision::Reject => Verdict::Reject,
            Decision::Accept { prepend: 0 } => Verdict::Accept,
            // Toward a peer inside the session's AS the path stays as it is (RFC 4271
            // §5.1.2): the peer would find its own AS on it and drop the route as a loop.
            Decision::Accept { .. } if peer.ibgp => Verdict::Accept,
            Decision::Accept { prepend } => {
                let mut out = attrs.clone();
                // The AS the session speaks: the node's, or the peer's own local AS.
                for _ in 0..prepend {
                    out.prepend(peer.local_as);
                }
                Verdict::Modify(out)
            }
        }
    }

    fn export_class(&self, peer: &PeerRef) -> Option<u64> {
        // Another node: its verdicts depend on the kind of session alone, which the speaker
        // groups by itself. An explicit peer (import limits, an export filter) is judged by
        // its address: its exports are its own.
        let explicit = read(&self.import).limits.contains_key(&peer.address)
            || read(&self.export_filters).contains_key(&peer.address);
        (!explicit).then_some(0)
    }
}

impl NodePolicy {
    /// wren's export rule: what this node may send a peer at all, before its filter.
    fn export_rule(&self, peer: &PeerRef, source: &Source) -> Verdict {
        match source {
            Source::Local => Verdict::Accept,
            // Reflection is what a route reflector is for; nobody else passes routes on, so a
            // node never becomes a transit path between its peers.
            Source::Peer(_) if self.reflector && peer.ibgp => Verdict::Accept,
            // A peer that keeps next hops (`keepOriginalNextHop`) learns the other nodes'
            // blocks with their own nodes as next hops: it forwards to them directly, so this
            // node is no transit path either. Only what came from inside the AS: the nodes.
            Source::Peer(from) if peer.next_hop_keep && from.ibgp => Verdict::Accept,
            Source::Peer(_) => Verdict::Reject,
        }
    }
}

/// Whether the agent restarts on a node it already programmed: wren's routes in the kernel
/// mean the forwarding state survived, so peers are asked to keep our routes (RFC 4724) and
/// the speaker defers its own End-of-RIB until it has heard from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// No wren route in the kernel: a first start.
    Fresh,
    /// The kernel holds wren routes from a previous run.
    WithForwardingState,
}

/// The speaker's configuration for this node.
pub fn speaker_config(config: &AgentConfig, restart: Restart) -> SpeakerConfig {
    let mut speaker = SpeakerConfig::new(
        config.node_ip.addr(),
        config.as_number.unwrap_or(wren_model::DEFAULT_AS),
    );
    speaker.listen = Some(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        config.bgp_port,
    ));
    speaker.cluster_id = config.route_reflector_cluster_id;
    speaker.max_paths = config.max_paths;
    speaker.next_hop_v4 = Some(config.node_ip.addr());
    speaker.next_hop_v6 = config.node_ipv6.map(|n| n.addr());
    speaker.graceful_restart = Some(GracefulRestartConfig {
        restart_time: config.graceful_restart_time.as_secs().min(4095) as u16,
        restarting: restart == Restart::WithForwardingState,
        // The agent never flushes the kernel: whatever it programmed stays through a restart.
        forwarding_preserved: true,
        selection_deferral: config.bgp_sync_timeout,
        ..GracefulRestartConfig::default()
    });
    speaker
}

/// The policy for a node's speaker, with no import rules yet (every route is accepted until
/// the first pass sets them, which happens before any session is configured).
fn node_policy(config: &AgentConfig) -> Arc<NodePolicy> {
    Arc::new(NodePolicy {
        reflector: config.route_reflector_cluster_id.is_some(),
        import: RwLock::default(),
        export_filters: RwLock::default(),
        external_only: RwLock::default(),
    })
}

/// The speaker's settings for one desired session.
fn peer_config(spec: &PeerSpec, config: &AgentConfig) -> PeerConfig {
    let mut peer = PeerConfig::new(spec.address, spec.asn);
    peer.port = config.bgp_port;
    peer.passive = spec.passive;
    peer.password = spec.password.clone();
    peer.rr_client = spec.rr_client;
    peer.next_hop_keep = spec.keep_original_next_hop;
    peer.local_address = spec.source_address.or(match spec.address {
        IpAddr::V4(_) => Some(IpAddr::V4(config.node_ip.addr())),
        IpAddr::V6(_) => config.node_ipv6.map(|n| IpAddr::V6(n.addr())),
    });
    if let Some(hold_time) = spec.hold_time {
        peer.hold_time = hold_time;
    }
    peer.ttl_security = spec.ttl_security;
    peer.keepalive_time = spec.keepalive_time;
    peer.local_as = spec.local_as;
    peer.max_prefixes = spec.max_prefixes.map(|max| PrefixLimit {
        limit: max.limit as usize,
        warning: max.warning() as usize,
        restart_after: Duration::from_secs(u64::from(max.restart_after_secs)),
    });
    if matches!(
        spec.kind,
        PeerKind::NodeMesh | PeerKind::RouteReflector | PeerKind::RrClient
    ) {
        peer.connect_retry = NODE_CONNECT_RETRY;
    }
    peer
}

/// The attributes this node originates `prefix` with: next hop self and its communities.
fn originated_attributes(prefix: &IpNet, export: &Export) -> Attributes {
    let afi = match prefix {
        IpNet::V4(_) => Afi::Ipv4Unicast,
        IpNet::V6(_) => Afi::Ipv6Unicast,
    };
    let mut attrs = Attributes::local(None, afi);
    for community in &export.communities {
        match *community {
            Community::Standard(value) => attrs.communities.push(value),
            Community::Large(asn, first, second) => attrs.large_communities.push(LargeCommunity {
                global_admin: asn,
                local_data_1: first,
                local_data_2: second,
            }),
        }
    }
    attrs
}

fn session_info(p: &PeerStatus) -> SessionInfo {
    let end_of_rib = p.state == State::Established
        && p.negotiated
            .as_ref()
            .is_some_and(|n| n.families.iter().all(|f| p.end_of_rib_received.contains(f)));
    SessionInfo {
        address: p.address,
        state: p.state.name().to_owned(),
        in_state_for: Some(p.for_duration()),
        prefixes_received: p.prefixes_received as u64,
        prefixes_filtered: p
            .prefixes_filtered
            .iter()
            .map(|(reason, n)| ((*reason).to_owned(), *n as u64))
            .collect(),
        prefixes_sent: p.prefixes_sent as u64,
        last_error: p.last_error.clone(),
        end_of_rib,
        bfd: None,
        local_as: p.local_as,
        timers: p.negotiated.as_ref().map(|n| SessionTimers {
            hold_time_secs: n.hold_time,
            keepalive_time_secs: n.keepalive_time,
        }),
    }
}

/// The next hops of a best path and of the paths equal to it (the speaker keeps those to
/// the configured maximum).
fn learned_next_hops(path: &BestPath) -> Option<NextHops> {
    let all = std::iter::once(path).chain(path.multipath.iter());
    NextHops::new(all.filter_map(|p| p.attrs.next_hop_addr()))
}

/// What the adapter last told the speaker.
#[derive(Default)]
struct Applied {
    peers: BTreeMap<IpAddr, PeerConfig>,
    originated: Exports,
    connected: Option<Vec<IpNet>>,
}

/// The embedded speaker behind [`BgpControl`].
pub struct SpeakerBgp {
    handle: SpeakerHandle,
    policy: Arc<NodePolicy>,
    config: AgentConfig,
    applied: tokio::sync::Mutex<Applied>,
    best: Arc<RwLock<BestPaths>>,
    sessions: Arc<Mutex<Vec<SessionInfo>>>,
    bfd: Arc<BfdSessions>,
    changes: Arc<watch::Sender<u64>>,
}

fn bump(changes: &watch::Sender<u64>) {
    changes.send_modify(|n| *n = n.wrapping_add(1));
}

impl SpeakerBgp {
    /// Starts the speaker (binding the BGP port) and the tasks that follow its best paths
    /// and sessions.
    pub async fn start(config: &AgentConfig, restart: Restart) -> Result<Arc<Self>, SpeakerError> {
        let policy = node_policy(config);
        let mut speaker = speaker_config(config, restart);
        speaker.policy = policy.clone();
        let (handle, _task) = Speaker::start(speaker).await?;
        let mut subscription = handle.subscribe().await?;
        let changes = Arc::new(watch::channel(0).0);
        let bfd_changed = Arc::new(Notify::new());
        let bfd = Arc::new(BfdSessions::new(
            handle.clone(),
            config.node_ip.addr(),
            config.node_ipv6.map(|n| n.addr()),
            bfd_changed.clone(),
        ));
        let this = Arc::new(Self {
            handle: handle.clone(),
            policy,
            config: config.clone(),
            applied: tokio::sync::Mutex::default(),
            best: Arc::default(),
            sessions: Arc::default(),
            bfd,
            changes,
        });
        let (best, changes) = (this.best.clone(), this.changes.clone());
        tokio::spawn(async move {
            while let Some(batch) = subscription.recv().await {
                {
                    let mut best = write(&best);
                    for event in batch {
                        match event {
                            RouteEvent::Best { prefix, path } => {
                                match (&path.source, learned_next_hops(&path)) {
                                    (Source::Peer(_), Some(next_hops)) => {
                                        best.insert(prefix, next_hops);
                                    }
                                    _ => {
                                        best.remove(&prefix);
                                    }
                                }
                            }
                            RouteEvent::Withdrawn { prefix } => {
                                best.remove(&prefix);
                            }
                            RouteEvent::Synced => tracing::debug!("BGP speaker synced"),
                        }
                    }
                }
                bump(&changes);
            }
        });
        // Sessions are read when the speaker says one changed, and at once on a BFD state
        // change (which may have ended a BGP session); counters are read when shown.
        let mut session_changes = handle.session_changes();
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut bfd_woke = false;
            loop {
                let Some(this) = weak.upgrade() else { return };
                match this.read_sessions().await {
                    Ok(()) if bfd_woke => bump(&this.changes),
                    Ok(()) => {}
                    Err(SpeakerError::Stopped) => return,
                    Err(e) => tracing::warn!(error = %e, "cannot read BGP sessions"),
                }
                drop(this);
                bfd_woke = tokio::select! {
                    changed = session_changes.changed() => match changed {
                        Ok(()) => false,
                        Err(_) => return,
                    },
                    () = bfd_changed.notified() => true,
                };
            }
        });
        Ok(this)
    }

    /// Reads every session (and its BFD) from the speaker into what
    /// [`sessions`](BgpControl::sessions) shows, and wakes the daemon when more than their
    /// ages and counters changed. Whichever read sees a change wakes it: a status read that
    /// comes between a session's change and the follower's read must not swallow it.
    async fn read_sessions(&self) -> Result<(), SpeakerError> {
        self.bfd.poll().await;
        let peers = self.handle.peers().await?;
        let now: Vec<SessionInfo> = peers.iter().map(session_info).collect();
        let mut held = lock(&self.sessions);
        let changed =
            held.len() != now.len() || held.iter().zip(&now).any(|(a, b)| !a.same_session_state(b));
        *held = now;
        drop(held);
        if changed {
            bump(&self.changes);
        }
        Ok(())
    }

    /// Changes the import rules; when that changes what a peer may announce, asks the
    /// peers with limits to send their routes again, so routes accepted under the old rules
    /// are judged by the new ones (peers without route refresh are judged from their next
    /// UPDATE on).
    async fn change_import_rules(&self, change: impl FnOnce(&mut ImportRules)) {
        let refresh: Vec<IpAddr> = {
            let mut rules = write(&self.policy.import);
            let before = rules.clone();
            change(&mut rules);
            if *rules == before {
                return;
            }
            let space_changed = rules.space != before.space;
            rules
                .limits
                .iter()
                .filter(|(address, limits)| {
                    space_changed
                        || before.limits.get(*address) != Some(*limits)
                        || before.filters.get(*address) != rules.filters.get(*address)
                })
                .map(|(address, _)| *address)
                .collect()
        };
        for address in refresh {
            for afi in [Afi::Ipv4Unicast, Afi::Ipv6Unicast] {
                if let Err(e) = self.handle.request_refresh(address, afi).await {
                    tracing::debug!(peer = %address, error = %e, "no route refresh");
                }
            }
        }
    }

    /// Stops every session (Cease) and the speaker; BFD first, with AdminDown, so the
    /// neighbours do not take the stop for a failure of the path.
    pub async fn shutdown(&self) {
        self.bfd.shutdown().await;
        if let Err(e) = self.handle.shutdown().await {
            tracing::debug!(error = %e, "BGP speaker already stopped");
        }
    }
}

#[async_trait]
impl BgpControl for SpeakerBgp {
    async fn set_peers(&self, peers: &BTreeMap<IpAddr, PeerSpec>) {
        let limits = peers
            .iter()
            .filter_map(|(address, spec)| Some((*address, spec.import_limits?)))
            .collect();
        let import_filters = peers
            .iter()
            .filter_map(|(address, spec)| Some((*address, spec.filters.import.clone()?)))
            .collect();
        self.change_import_rules(|rules| {
            rules.limits = limits;
            rules.filters = import_filters;
        })
        .await;
        let export_filters: BTreeMap<IpAddr, Filter> = peers
            .iter()
            .filter_map(|(address, spec)| Some((*address, spec.filters.export.clone()?)))
            .collect();
        // What a peer was sent under the old export filter is not judged again until its
        // session restarts: restart the sessions whose filter changed.
        let reexport: Vec<IpAddr> = {
            let mut current = write(&self.policy.export_filters);
            let changed = peers
                .keys()
                .filter(|a| current.get(*a) != export_filters.get(*a))
                .copied()
                .collect();
            *current = export_filters;
            changed
        };
        let mut applied = self.applied.lock().await;
        for address in reexport {
            if applied.peers.remove(&address).is_some() {
                if let Err(e) = self.handle.remove_peer(address).await {
                    tracing::warn!(peer = %address, error = %e, "cannot restart BGP peer");
                }
                tracing::info!(peer = %address, "export filter changed: session restarts");
            }
        }
        let stale: Vec<IpAddr> = applied
            .peers
            .keys()
            .filter(|a| !peers.contains_key(a))
            .copied()
            .collect();
        for address in stale {
            if let Err(e) = self.handle.remove_peer(address).await {
                tracing::warn!(peer = %address, error = %e, "cannot remove BGP peer");
            }
            applied.peers.remove(&address);
            tracing::info!(peer = %address, "BGP peer removed");
        }
        let mut reconfigured = BTreeSet::new();
        for (address, spec) in peers {
            let wanted = peer_config(spec, &self.config);
            let result = match applied.peers.get(address) {
                Some(current) if *current == wanted => continue,
                Some(_) => self.handle.update_peer(wanted.clone()).await,
                None => match self.handle.add_peer(wanted.clone()).await {
                    Err(SpeakerError::PeerExists(_)) => {
                        self.handle.update_peer(wanted.clone()).await
                    }
                    other => other,
                },
            };
            match result {
                Ok(()) => {
                    tracing::info!(peer = %address, asn = spec.asn, kind = spec.kind.as_str(), passive = spec.passive, "BGP peer configured");
                    applied.peers.insert(*address, wanted);
                    reconfigured.insert(*address);
                }
                Err(e) => tracing::warn!(peer = %address, error = %e, "cannot configure BGP peer"),
            }
        }
        drop(applied);
        let bfd = peers
            .iter()
            .filter_map(|(address, spec)| {
                let session = BfdSession {
                    timing: spec.bfd?,
                    source: spec.source_address,
                };
                Some((*address, session))
            })
            .collect();
        self.bfd.set(&bfd, &reconfigured).await;
    }

    async fn set_originated(&self, exports: &Exports) {
        let external_only: BTreeSet<IpNet> = exports
            .iter()
            .filter(|(_, e)| e.external_only)
            .map(|(p, _)| *p)
            .collect();
        *write(&self.policy.external_only) = external_only;
        let mut applied = self.applied.lock().await;
        let stale: Vec<IpNet> = applied
            .originated
            .keys()
            .filter(|p| !exports.contains_key(p))
            .copied()
            .collect();
        for prefix in stale {
            match self.handle.withdraw(prefix).await {
                Ok(()) => {
                    applied.originated.remove(&prefix);
                    tracing::info!(%prefix, "withdrawn");
                }
                Err(e) => tracing::warn!(%prefix, error = %e, "cannot withdraw"),
            }
        }
        let changed: Vec<(&IpNet, &Export)> = exports
            .iter()
            .filter(|(prefix, export)| applied.originated.get(prefix) != Some(*export))
            .collect();
        for (prefix, export) in changed {
            let attrs = originated_attributes(prefix, export);
            match self.handle.originate_with(*prefix, attrs).await {
                Ok(()) => {
                    applied.originated.insert(*prefix, export.clone());
                    tracing::info!(%prefix, communities = export.communities.len(), "announced");
                }
                Err(e) => tracing::warn!(%prefix, error = %e, "cannot announce"),
            }
        }
    }

    async fn set_cluster_space(&self, space: ClusterSpace) {
        self.change_import_rules(|rules| rules.space = space).await;
    }

    async fn set_connected(&self, networks: Vec<IpNet>) {
        let mut applied = self.applied.lock().await;
        let networks = Some(networks);
        if applied.connected == networks {
            return;
        }
        match self.handle.set_connected(networks.clone()).await {
            Ok(()) => applied.connected = networks,
            Err(e) => tracing::warn!(error = %e, "cannot hand the connected networks to BGP"),
        }
    }

    fn best_paths(&self) -> BestPaths {
        read(&self.best).clone()
    }

    fn sessions(&self) -> Vec<SessionInfo> {
        let mut sessions = lock(&self.sessions).clone();
        for session in &mut sessions {
            session.bfd = self.bfd.status(session.address);
        }
        sessions
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn refresh_sessions(&self) {
        if let Err(e) = self.read_sessions().await {
            tracing::debug!(error = %e, "cannot read BGP sessions");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use wren_model::FilterAction;

    use super::*;

    fn peer(address: [u8; 4], ibgp: bool, next_hop_keep: bool) -> PeerRef {
        PeerRef {
            address: IpAddr::V4(Ipv4Addr::from(address)),
            remote_as: if ibgp { 64512 } else { 65000 },
            local_as: 64512,
            ibgp,
            rr_client: false,
            next_hop_keep,
            router_id: Ipv4Addr::from(address),
        }
    }

    fn verdict(policy: &NodePolicy, to: &PeerRef, source: &Source) -> bool {
        let prefix: IpNet = "10.65.1.0/26".parse().unwrap();
        let attrs = Attributes::local(None, Afi::Ipv4Unicast);
        matches!(policy.export(to, prefix, &attrs, source), Verdict::Accept)
    }

    #[test]
    fn learned_routes_go_only_to_reflected_or_next_hop_keeping_peers() {
        let node = Source::Peer(peer([10, 0, 0, 2], true, false));
        let outside = Source::Peer(peer([10, 0, 0, 254], false, false));
        let policy = |reflector| NodePolicy {
            reflector,
            import: RwLock::default(),
            export_filters: RwLock::default(),
            external_only: RwLock::default(),
        };
        let (plain, reflector) = (policy(false), policy(true));
        let tor = peer([10, 0, 0, 254], false, false);
        let keeping_tor = peer([10, 0, 0, 253], false, true);
        let other_node = peer([10, 0, 0, 3], true, false);

        for policy in [&plain, &reflector] {
            assert!(verdict(policy, &tor, &Source::Local), "own blocks always");
            assert!(!verdict(policy, &tor, &node), "no transit through a node");
            assert!(verdict(policy, &keeping_tor, &node), "keepOriginalNextHop");
            assert!(
                !verdict(policy, &keeping_tor, &outside),
                "nothing from outside the AS"
            );
        }
        assert!(!verdict(&plain, &other_node, &node));
        assert!(verdict(&reflector, &other_node, &node), "reflection");
    }

    #[test]
    fn filters_reject_count_and_prepend() {
        let tor = peer([10, 0, 0, 254], false, false);
        let filter = |rules: &[&str], default| Filter {
            rules: rules.iter().map(|r| r.parse().unwrap()).collect(),
            default_action: default,
        };
        let policy = NodePolicy {
            // A route reflector, which passes its clients' routes on to the peers in its AS.
            reflector: true,
            import: RwLock::new(ImportRules {
                limits: [(tor.address, ImportLimits::default())].into(),
                filters: [(
                    tor.address,
                    filter(&["accept prefix 192.0.2.0/24 le 32"], FilterAction::Reject),
                )]
                .into(),
                ..ImportRules::default()
            }),
            export_filters: RwLock::new(
                [(
                    tor.address,
                    filter(
                        &[
                            "reject community 65000:666",
                            "accept prefix 10.65.0.0/16 le 26 prepend 2",
                        ],
                        FilterAction::Reject,
                    ),
                )]
                .into(),
            ),
            external_only: RwLock::new(["10.96.0.0/12".parse().unwrap()].into()),
        };
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        let mut attrs = Attributes::local(None, Afi::Ipv4Unicast);
        attrs.prepend(64512);
        let import = |prefix| policy.import(&tor, net(prefix), &attrs);
        assert_eq!(import("192.0.2.128/25"), Verdict::Accept);
        assert_eq!(import("198.51.100.0/24"), Verdict::Filter(IMPORT_FILTER));
        let export =
            |prefix, attrs: &Attributes| policy.export(&tor, net(prefix), attrs, &Source::Local);
        let Verdict::Modify(prepended) = export("10.65.1.0/26", &attrs) else {
            panic!("no prepend");
        };
        assert_eq!(prepended.as_path_len(), 3, "{prepended:?}");
        // The same filter toward an iBGP peer (a route reflector's explicit peer in the AS)
        // decides alike but leaves the path alone.
        let inside = PeerRef {
            ibgp: true,
            remote_as: 64512,
            ..tor.clone()
        };
        let reflected = Source::Peer(peer([10, 0, 0, 3], true, false));
        assert_eq!(
            policy.export(&inside, net("10.65.1.0/26"), &attrs, &reflected),
            Verdict::Accept
        );
        assert_eq!(
            policy.export(&inside, net("10.65.1.7/32"), &attrs, &reflected),
            Verdict::Reject
        );
        assert_eq!(export("10.65.1.7/32", &attrs), Verdict::Reject, "default");
        let mut tagged = attrs.clone();
        tagged.communities.push(0xFDE8_029A);
        assert_eq!(export("10.65.1.0/26", &tagged), Verdict::Reject);
        // Another node, with no filters: untouched, but no service range.
        let other_node = peer([10, 0, 0, 3], true, false);
        assert_eq!(
            policy.export(&other_node, net("10.65.1.7/32"), &attrs, &Source::Local),
            Verdict::Accept
        );
        assert_eq!(
            policy.export(&other_node, net("10.96.0.0/12"), &attrs, &Source::Local),
            Verdict::Reject
        );
        assert_eq!(
            export("10.96.0.0/12", &attrs),
            Verdict::Reject,
            "the ToR's filter has its say too"
        );
        // The nodes share their exports; the ToR, judged by its address, does not.
        assert_eq!(policy.export_class(&other_node), Some(0));
        assert_eq!(policy.export_class(&tor), None);
    }
}
