//! The routing information bases and the decision process (RFC 4271 §3.2, §9), without I/O.
//!
//! - Adj-RIB-In and Loc-RIB share one table (`table`): per prefix, every peer's path, best
//!   first. Attributes are interned ([`Interner`]) so a path costs a pointer and a peer number.
//! - The [decision process](decision) picks the best path whenever a prefix's paths change.
//! - Peers whose export is the same share an update group: one Adj-RIB-Out the RIB writes
//!   once for all of them; each peer's session writer reads the group's changes from its own
//!   position ([`AdjRibOut`]) and sends them as packed UPDATEs.
//! - Import checks (AS-path loops, RFC 4456 reflection loops), the export rules (split horizon,
//!   reflection, eBGP rewrites) and the embedding program's [`Policy`] decide what enters and
//!   what leaves.
//! - Graceful restart (RFC 4724): a restarting peer's routes stay, marked stale, until it sends
//!   End-of-RIB or its restart time runs out; when this speaker itself restarts, best-path
//!   selection and our own End-of-RIB wait until the peers' initial updates are in.
//!
//! The speaker drives a [`Rib`] from one task: it feeds UPDATEs and session changes in, then
//! calls [`Rib::flush`] to hand the results to the writers and [`Rib::take_events`] for the
//! best-path changes its subscribers see.

mod adj_out;
mod attrs;
pub mod decision;
mod export;
mod policy;
mod table;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use hashbrown::{HashMap, HashSet};
use ipnet::IpNet;
use smallvec::SmallVec;

use crate::wire::{Afi, GracefulRestart, PathAttributes, Update};

pub use adj_out::{AdjRibOut, OutBatch};
use adj_out::{Exclusion, ExportClass, GroupId, GroupKey, Outgoing, lock};
pub use attrs::{Attributes, Interner, RouteAttributes};
pub use decision::DEFAULT_LOCAL_PREF;
pub use policy::{AcceptAll, PeerRef, Policy, Source, Verdict};

use table::{Path, Table};

/// Names a peer inside the RIB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u32);

/// The pseudo-peer of locally originated routes.
const LOCAL: PeerId = PeerId(0);

/// The family of a prefix.
pub fn family(prefix: &IpNet) -> Afi {
    match prefix {
        IpNet::V4(_) => Afi::Ipv4Unicast,
        IpNet::V6(_) => Afi::Ipv6Unicast,
    }
}

/// Settings of the RIB as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route-reflection cluster id; the router id when unset (RFC 4456 §7).
    pub cluster_id: Option<Ipv4Addr>,
    /// Next hop "self" for IPv4 routes on sessions over IPv6.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop "self" for IPv6 routes on sessions over IPv4.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// This speaker is restarting gracefully: defer best-path selection and our End-of-RIB
    /// until every graceful-restart peer has sent its End-of-RIB (RFC 4724 §4.1), or
    /// [`Rib::end_deferral`] is called when the selection-deferral timer runs out.
    pub defer: bool,
    /// How many paths to a prefix [`BestPath::multipath`] holds at most, the best path
    /// counted (BIRD's `merge paths ... limit`, FRR's `maximum-paths`); 1 (or 0): none but the
    /// best.
    pub max_paths: usize,
}

impl RibConfig {
    /// Settings with no reflection cluster, no cross-family next hops and no deferral.
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> Self {
        Self {
            local_as,
            router_id,
            cluster_id: None,
            next_hop_v4: None,
            next_hop_v6: None,
            defer: false,
            max_paths: 1,
        }
    }

    /// The cluster id in effect.
    pub fn cluster_id(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }
}

/// What the RIB needs to know of a configured peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS (equal to the one this session speaks: iBGP).
    pub remote_as: u32,
    /// The AS this session speaks instead of [`RibConfig::local_as`] (put on the AS path the
    /// peer hears, and a loop when the peer's routes carry it); `None`: the RIB's.
    pub local_as: Option<u32>,
    /// The peer is our route-reflector client (RFC 4456).
    pub rr_client: bool,
    /// Put our address as next hop on routes learned from eBGP when sending them to this iBGP
    /// peer (towards eBGP peers the next hop is ours unless `next_hop_keep`).
    pub next_hop_self: bool,
    /// Send routes learned from other peers with their next hop unchanged, to an eBGP peer too
    /// (BIRD's `next hop keep`): the peer then forwards straight to where the route leads,
    /// not through this speaker. Our own routes still carry our address.
    pub next_hop_keep: bool,
}

/// An established session, as the RIB needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our address on the connection: the next hop "self".
    pub local_address: IpAddr,
    /// Negotiated families.
    pub families: Vec<Afi>,
    /// Session generation, so a new session's writer never drains an old one's Adj-RIB-Out.
    pub epoch: u64,
    /// The peer's graceful-restart capability on this session.
    pub graceful_restart: Option<GracefulRestart>,
}

impl Session {
    fn preserved(&self, afi: Afi) -> bool {
        let gr = self.graceful_restart.as_ref();
        gr.is_some_and(|gr| gr.families.iter().any(|(a, f)| *a == afi && *f))
    }
}

/// The best path to a prefix and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestPath {
    /// Its attributes ([`RouteAttributes::next_hop_addr`] gives the next hop).
    pub attrs: Arc<Attributes>,
    /// Who announced it.
    pub source: Source,
    /// The other paths equal to it up to the tie-breakers that only pick one, in the
    /// decision's order, at most [`RibConfig::max_paths`] - 1 ([`decision::select_multipath`]):
    /// with the best path, the paths to forward over at once (ECMP). Only the best path is
    /// advertised; these are for the embedding program's forwarding. (Their own
    /// `multipath` is empty.)
    pub multipath: Vec<BestPath>,
}

/// A change of the Loc-RIB, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// The prefix has a new best path.
    Best {
        /// The prefix.
        prefix: IpNet,
        /// Its best path now.
        path: BestPath,
    },
    /// The prefix is no longer reachable.
    Withdrawn {
        /// The prefix.
        prefix: IpNet,
    },
    /// The initial routes are in: after a graceful restart, every peer's End-of-RIB (or the
    /// deferral timer); otherwise right at start. Sent once.
    Synced,
}

/// A configured peer.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    settings: PeerSettings,
    session: Option<Session>,
    /// Identifier of the last session, kept for the tie-break while its routes are stale.
    router_id: Ipv4Addr,
    received: usize,
    /// Prefixes the peer announces that import policy filtered, with the policy's reason.
    filtered: HashMap<IpNet, &'static str>,
    stale: Vec<Afi>,
    end_of_rib: Vec<Afi>,
}

impl PeerSettings {
    /// The AS this session speaks, the RIB's being `rib_as`.
    pub fn session_as(&self, rib_as: u32) -> u32 {
        self.local_as.unwrap_or(rib_as)
    }

    /// Whether the peer is in the AS this session speaks, the RIB's being `rib_as`.
    pub fn is_ibgp(&self, rib_as: u32) -> bool {
        self.remote_as == self.session_as(rib_as)
    }
}

impl PeerSlot {
    fn peer_ref(&self, local_as: u32) -> PeerRef {
        PeerRef {
            address: self.settings.address,
            remote_as: self.settings.remote_as,
            local_as: self.settings.session_as(local_as),
            ibgp: self.settings.is_ibgp(local_as),
            rr_client: self.settings.rr_client,
            next_hop_keep: self.settings.next_hop_keep,
            router_id: self.router_id,
        }
    }
}

/// Counters of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerCounts {
    /// Prefixes accepted from the peer (stale ones included).
    pub received: usize,
    /// Prefixes the peer announces that import policy holds back ([`Verdict::Filter`]), by
    /// the policy's reason.
    pub filtered: BTreeMap<&'static str, usize>,
    /// Prefixes the peer has from us.
    pub sent: usize,
    /// Prefixes kept stale across the peer's restart.
    pub stale: usize,
}

/// A prefix's route for an update group (`None`: withdraw), and who in it must not get it.
type OutChange = (IpNet, Option<Arc<Attributes>>, Exclusion);

/// Source attributes (by address), family, source peer, target group.
type MemoKey = (usize, Afi, PeerId, GroupId);

/// A group's route computed from a best path: the attributes, and who must not get them.
type GroupRoute = Option<(Arc<Attributes>, Exclusion)>;

/// Everything but the table, so the table can be walked while exports are computed.
struct Ctx {
    config: RibConfig,
    policy: Arc<dyn Policy>,
    interner: Interner,
    peers: Vec<Option<PeerSlot>>,
    events: Vec<RouteEvent>,
    /// Whether per-prefix events are recorded: not while nobody would read them.
    record_routes: bool,
    /// The update groups' tables and their members' positions, shared with the writers.
    out: Arc<Mutex<Outgoing>>,
    /// Changes of this batch, by group.
    outbox: HashMap<GroupId, Vec<OutChange>>,
    end_of_rib_after_flush: HashSet<PeerId>,
    /// Peers with something new to read besides their groups' changes.
    wake: HashSet<PeerId>,
    /// Exports computed in this batch: (source attrs, family, source peer, target group).
    memo: HashMap<MemoKey, (Arc<Attributes>, GroupRoute)>,
    deferring: bool,
    waiting: HashSet<PeerId>,
    /// Peers with an established session.
    up: Vec<PeerId>,
    /// The update groups exports go to, each with a member whose settings stand for it.
    targets: Vec<(GroupId, PeerId)>,
    /// The networks next hops must lie in (see [`Rib::set_connected`]); `None`: any.
    connected: Option<Vec<IpNet>>,
}

/// The RIB of one speaker.
pub struct Rib {
    table: Table,
    ctx: Ctx,
}

impl std::fmt::Debug for Rib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rib")
            .field("prefixes", &self.table.len())
            .field("attribute_sets", &self.ctx.interner.len())
            .field("deferring", &self.ctx.deferring)
            .finish()
    }
}

impl Rib {
    /// An empty RIB. Unless `config.defer`, [`RouteEvent::Synced`] is the first event.
    pub fn new(config: RibConfig, policy: Arc<dyn Policy>) -> Self {
        let deferring = config.defer;
        let mut ctx = Ctx {
            config,
            policy,
            interner: Interner::default(),
            peers: vec![None],
            events: Vec::new(),
            record_routes: true,
            out: Arc::default(),
            outbox: HashMap::new(),
            end_of_rib_after_flush: HashSet::new(),
            wake: HashSet::new(),
            memo: HashMap::new(),
            deferring,
            waiting: HashSet::new(),
            up: Vec::new(),
            targets: Vec::new(),
            connected: None,
        };
        if !deferring {
            ctx.events.push(RouteEvent::Synced);
        }
        Self {
            table: Table::default(),
            ctx,
        }
    }

    /// The RIB's settings.
    pub fn config(&self) -> &RibConfig {
        &self.ctx.config
    }

    /// Registers a peer; returns its Adj-RIB-Out, for the session's writer.
    pub fn add_peer(&mut self, settings: PeerSettings) -> (PeerId, AdjRibOut) {
        let slot = PeerSlot {
            settings,
            session: None,
            router_id: Ipv4Addr::UNSPECIFIED,
            received: 0,
            filtered: HashMap::new(),
            stale: Vec::new(),
            end_of_rib: Vec::new(),
        };
        // Ids are never reused, so a late message about a removed peer cannot hit a new one.
        let peers = &mut self.ctx.peers;
        peers.push(Some(slot));
        let index = peers.len() - 1;
        let id = PeerId(index as u32);
        if self.ctx.deferring {
            self.ctx.waiting.insert(id);
        }
        (id, AdjRibOut::new(self.ctx.out.clone(), id))
    }

    /// Changes a peer's settings; they apply to routes exported from now on. A peer with a
    /// session whose export they change moves to the update group of its new settings: it
    /// is sent that group's table, after withdrawals of what it held.
    pub fn set_peer_settings(&mut self, id: PeerId, settings: PeerSettings) {
        let Some(slot) = self.ctx.slot_mut(id) else {
            return;
        };
        slot.settings = settings;
        let Some(key) = self.ctx.group_key(id) else {
            return;
        };
        let moved = lock(&self.ctx.out).regroup(id, key);
        if let Some((group, created)) = moved {
            self.ctx.groups_changed();
            if created && !self.ctx.deferring {
                self.fill_group(group, id);
            }
            self.ctx.wake.insert(id);
        }
    }

    /// Forgets a peer and every route it announced.
    pub fn remove_peer(&mut self, id: PeerId) {
        if self.ctx.slot(id).is_none() {
            return;
        }
        self.peer_down(id, &[]);
        self.flush_stale(id, None);
        self.ctx.peers[id.0 as usize] = None;
        self.stop_waiting_for(id);
    }

    /// A session came up: send the peer our table, then End-of-RIB.
    pub fn peer_up(&mut self, id: PeerId, session: Session) {
        let Some(slot) = self.ctx.slot_mut(id) else {
            return;
        };
        slot.router_id = session.router_id;
        slot.end_of_rib.clear();
        let restarting = session.graceful_restart.as_ref().map(|gr| gr.restarting);
        // RFC 4724 §4.2: stale routes of a family the peer did not keep forwarding for go now.
        let dropped: Vec<Afi> = slot
            .stale
            .iter()
            .copied()
            .filter(|afi| !session.preserved(*afi))
            .collect();
        let (epoch, router_id) = (session.epoch, session.router_id);
        slot.session = Some(session);
        if !self.ctx.up.contains(&id) {
            self.ctx.up.push(id);
        }
        let Some(key) = self.ctx.group_key(id) else {
            return;
        };
        let (group, created) = lock(&self.ctx.out).join(id, key, epoch, router_id);
        self.ctx.groups_changed();
        for afi in dropped {
            self.flush_stale(id, Some(afi));
        }
        if self.ctx.deferring {
            // Peers without graceful restart, or restarting themselves, are not waited for.
            if restarting != Some(false) {
                self.stop_waiting_for(id);
            }
            return;
        }
        if created {
            self.fill_group(group, id);
        }
        self.ctx.end_of_rib_after_flush.insert(id);
    }

    /// A session went down. Routes of the `retain` families stay as stale (the peer is
    /// restarting gracefully, RFC 4724); the rest are withdrawn.
    pub fn peer_down(&mut self, id: PeerId, retain: &[Afi]) {
        self.ctx.up.retain(|p| *p != id);
        let Some(slot) = self.ctx.slot_mut(id) else {
            return;
        };
        slot.session = None;
        slot.filtered = HashMap::new();
        slot.stale = retain.to_vec();
        slot.end_of_rib.clear();
        let gone = lock(&self.ctx.out).leave(id);
        if let Some(group) = gone {
            self.ctx.outbox.remove(&group);
            self.ctx.memo.retain(|key, _| key.3 != group);
        }
        self.ctx.groups_changed();
        self.ctx.end_of_rib_after_flush.remove(&id);
        self.ctx.wake.remove(&id);
        for prefix in self.table.prefixes_of(id, |_, _| true) {
            if retain.contains(&family(&prefix)) {
                self.table.modify(prefix, false, |paths| {
                    paths
                        .iter_mut()
                        .filter(|p| p.peer == id)
                        .for_each(|p| p.stale = true);
                });
            } else {
                self.set_path(prefix, id, None);
            }
        }
    }

    /// Withdraws a peer's stale routes, of one family or all: its End-of-RIB arrived or its
    /// restart time ran out.
    pub fn flush_stale(&mut self, id: PeerId, afi: Option<Afi>) {
        let matches = |prefix: IpNet| afi.is_none_or(|a| family(&prefix) == a);
        for prefix in self
            .table
            .prefixes_of(id, |prefix, p| p.stale && matches(prefix))
        {
            self.set_path(prefix, id, None);
        }
        if let Some(slot) = self.ctx.slot_mut(id) {
            slot.stale.retain(|f| afi.is_some_and(|a| a != *f));
        }
    }

    /// Families of a peer whose routes are held stale.
    pub fn stale_families(&self, id: PeerId) -> Vec<Afi> {
        self.ctx
            .slot(id)
            .map(|s| s.stale.clone())
            .unwrap_or_default()
    }

    /// Applies an UPDATE received from a peer with an established session.
    pub fn update(&mut self, id: PeerId, update: &Update) {
        let Some(session) = self.ctx.session(id) else {
            return;
        };
        let attrs = &update.attributes;
        let classic = !update.nlri.is_empty() && session.families.contains(&Afi::Ipv4Unicast);
        let mp = attrs.mp_reach.as_ref();
        let mp = mp.filter(|mp| session.families.contains(&mp.afi));
        if let Some(afi) = update.end_of_rib() {
            self.on_end_of_rib(id, afi);
            return;
        }
        let unreach = attrs.mp_unreach.iter().flat_map(|mp| mp.withdrawn.iter());
        for prefix in update.withdrawn.iter().chain(unreach) {
            self.set_path(*prefix, id, None);
            self.unfilter(id, prefix);
        }
        if classic {
            self.announce(id, Afi::Ipv4Unicast, attrs, &update.nlri);
        }
        if let Some(mp) = mp {
            self.announce(id, mp.afi, attrs, &mp.nlri);
        }
    }

    /// Originates a prefix from this speaker (replacing an earlier origination of it).
    pub fn originate(&mut self, prefix: IpNet, attrs: Attributes) {
        let shared = self.ctx.interner.intern(attrs);
        self.set_path(prefix.trunc(), LOCAL, Some(shared));
    }

    /// Withdraws a prefix this speaker originated.
    pub fn withdraw(&mut self, prefix: IpNet) {
        self.set_path(prefix.trunc(), LOCAL, None);
    }

    /// Sets the networks this speaker reaches directly (the host's connected routes, and
    /// whatever else the embedding program can forward to without a route of BGP's own). A
    /// learned path whose next hop lies in none of them is not eligible (RFC 4271 §9.1.2.1):
    /// it stays in the Adj-RIB-In, but is never best, so it is neither installed nor passed
    /// on, and a prefix whose paths are all like that is withdrawn. `None`, the default,
    /// takes every next hop as resolvable. Every prefix is selected again when the set
    /// changes.
    pub fn set_connected(&mut self, networks: Option<Vec<IpNet>>) {
        let networks = networks.map(|mut n| {
            n.sort();
            n.dedup();
            n
        });
        if networks == self.ctx.connected {
            return;
        }
        self.ctx.connected = networks;
        let prefixes: Vec<IpNet> = self.table.iter().map(|(prefix, _)| prefix).collect();
        let ctx = &mut self.ctx;
        for prefix in prefixes {
            self.table.modify(prefix, false, |paths| {
                let old_best = ctx.selection_key(paths);
                ctx.settle(prefix, paths, old_best);
            });
        }
    }

    /// Queues every route of a family to a peer again (it sent a ROUTE-REFRESH).
    pub fn route_refresh(&mut self, id: PeerId, afi: Afi) {
        if self.ctx.slot(id).is_some() {
            lock(&self.ctx.out).refresh(id, afi);
            self.ctx.wake.insert(id);
        }
    }

    /// Whether best-path selection is deferred (graceful restart of this speaker).
    pub fn is_deferring(&self) -> bool {
        self.ctx.deferring
    }

    /// Ends the selection deferral: selects, exports and announces everything now.
    pub fn end_deferral(&mut self) {
        if !self.ctx.deferring {
            return;
        }
        self.ctx.deferring = false;
        self.ctx.waiting.clear();
        for (prefix, paths) in self.table.iter() {
            self.ctx.best_changed(prefix, paths, false);
        }
        for id in self.ctx.up.clone() {
            self.ctx.end_of_rib_after_flush.insert(id);
        }
        self.ctx.events.push(RouteEvent::Synced);
    }

    /// Hands the changes of this batch to the update groups; returns the peers whose
    /// writers have something to send.
    pub fn flush(&mut self) -> Vec<PeerId> {
        let ctx = &mut self.ctx;
        ctx.memo.clear();
        let mut out = lock(&ctx.out);
        out.collect();
        let mut candidates: HashSet<PeerId> = ctx.wake.drain().collect();
        for (group, changes) in ctx.outbox.drain() {
            for (prefix, attrs, exclusion) in changes {
                out.apply(group, prefix, attrs, exclusion);
            }
            candidates.extend(out.members_of(group));
        }
        for id in ctx.end_of_rib_after_flush.drain() {
            out.queue_end_of_rib(id);
            candidates.insert(id);
        }
        let mut touched: Vec<PeerId> = candidates
            .into_iter()
            .filter(|id| out.has_work(*id))
            .collect();
        touched.sort_unstable();
        touched
    }

    /// Number of update groups: sets of peers that share one Adj-RIB-Out.
    pub fn update_groups(&self) -> usize {
        lock(&self.ctx.out).group_count()
    }

    /// Whether [`Rib::take_events`] reports per-prefix changes (the default). A speaker with
    /// no subscriber turns them off, saving an event per route; [`RouteEvent::Synced`] is
    /// recorded either way.
    pub fn record_route_events(&mut self, on: bool) {
        self.ctx.record_routes = on;
        if !on {
            self.ctx.events.retain(|e| *e == RouteEvent::Synced);
        }
    }

    /// Takes the Loc-RIB changes since the last call, in order.
    pub fn take_events(&mut self) -> Vec<RouteEvent> {
        std::mem::take(&mut self.ctx.events)
    }

    /// The best path to a prefix.
    pub fn best(&self, prefix: &IpNet) -> Option<BestPath> {
        self.ctx.best_with_multipath(self.table.get(prefix)?)
    }

    /// The whole Loc-RIB: every prefix with its best path.
    pub fn loc_rib(&self) -> Vec<(IpNet, BestPath)> {
        let table = self.table.iter();
        table
            .filter_map(|(prefix, paths)| Some((prefix, self.ctx.best_with_multipath(paths)?)))
            .collect()
    }

    /// A peer's Adj-RIB-In (after import policy): its routes, with their stale flag.
    pub fn adj_rib_in(&self, id: PeerId) -> Vec<(IpNet, Arc<Attributes>, bool)> {
        let paths = self.table.iter().flat_map(|(prefix, paths)| {
            let mine = paths.iter().filter(move |p| p.peer == id);
            mine.map(move |p| (prefix, p.attrs.clone(), p.stale))
        });
        paths.collect()
    }

    /// Number of prefixes in the Loc-RIB.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the Loc-RIB is empty.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Number of distinct attribute sets held.
    pub fn attribute_sets(&self) -> usize {
        self.ctx.interner.len()
    }

    /// A peer's counters.
    pub fn counts(&self, id: PeerId) -> PeerCounts {
        let Some(slot) = self.ctx.slot(id) else {
            return PeerCounts::default();
        };
        let stale = if slot.stale.is_empty() {
            0
        } else {
            self.table.prefixes_of(id, |_, p| p.stale).len()
        };
        let mut filtered = BTreeMap::new();
        for reason in slot.filtered.values() {
            *filtered.entry(*reason).or_default() += 1;
        }
        PeerCounts {
            received: slot.received,
            filtered,
            sent: lock(&self.ctx.out).sent(id),
            stale,
        }
    }

    /// Families for which a peer's End-of-RIB arrived on its current session.
    pub fn end_of_rib_received(&self, id: PeerId) -> Vec<Afi> {
        self.ctx
            .slot(id)
            .map(|s| s.end_of_rib.clone())
            .unwrap_or_default()
    }

    /// Drops attribute sets no route uses any more.
    pub fn sweep(&mut self) {
        self.ctx.interner.sweep();
    }

    /// Gives back the space of routes that went: once the prefix table holds less than a
    /// quarter of what it has room for (a peer withdrew most of a table, or went away), the
    /// unused attribute sets are dropped and every map of the RIB that is as sparse is
    /// shrunk. Cheap while nothing shrank; returns whether anything did, after which the
    /// embedding program may ask the allocator to return the freed pages to the system.
    pub fn compact(&mut self) -> bool {
        if !self.table.shrink_if_sparse() {
            return false;
        }
        // The batch's export cache holds attribute sets too; it is only a cache.
        self.ctx.memo = HashMap::new();
        self.ctx.interner.compact();
        lock(&self.ctx.out).shrink_if_sparse();
        for slot in self.ctx.peers.iter_mut().flatten() {
            if is_sparse(slot.filtered.len(), slot.filtered.capacity()) {
                slot.filtered.shrink_to_fit();
            }
        }
        self.ctx.outbox.shrink_to_fit();
        true
    }

    fn announce(&mut self, id: PeerId, afi: Afi, attrs: &PathAttributes, prefixes: &[IpNet]) {
        let imported = attrs
            .for_family(afi)
            .and_then(|a| self.ctx.import_check(id, a));
        let Some(imported) = imported else {
            // RFC 7606 treat-as-withdraw, and loop detection: the routes go away.
            for prefix in prefixes {
                self.set_path(*prefix, id, None);
                self.unfilter(id, prefix);
            }
            return;
        };
        let shared = self.ctx.interner.intern(imported);
        let Some(peer) = self
            .ctx
            .slot(id)
            .map(|s| s.peer_ref(self.ctx.config.local_as))
        else {
            return;
        };
        for prefix in prefixes.iter().filter(|p| family(p) == afi) {
            let verdict = self.ctx.policy.import(&peer, *prefix, &shared);
            let attrs = match verdict {
                Verdict::Accept => Some(shared.clone()),
                Verdict::Reject => None,
                Verdict::Modify(changed) => Some(self.ctx.interner.intern(changed)),
                Verdict::Filter(reason) => {
                    if let Some(slot) = self.ctx.slot_mut(id) {
                        slot.filtered.insert(*prefix, reason);
                    }
                    self.set_path(*prefix, id, None);
                    continue;
                }
            };
            self.set_path(*prefix, id, attrs);
            self.unfilter(id, prefix);
        }
    }

    /// Forgets that import policy filtered a prefix of a peer: it was withdrawn or let in.
    fn unfilter(&mut self, id: PeerId, prefix: &IpNet) {
        if let Some(slot) = self.ctx.slot_mut(id)
            && !slot.filtered.is_empty()
        {
            slot.filtered.remove(prefix);
        }
    }

    fn on_end_of_rib(&mut self, id: PeerId, afi: Afi) {
        let Some(slot) = self.ctx.slot_mut(id) else {
            return;
        };
        if !slot.end_of_rib.contains(&afi) {
            slot.end_of_rib.push(afi);
        }
        let complete = slot
            .session
            .as_ref()
            .is_some_and(|s| s.families.iter().all(|f| slot.end_of_rib.contains(f)));
        if slot.stale.contains(&afi) {
            self.flush_stale(id, Some(afi));
        }
        if complete {
            self.stop_waiting_for(id);
        }
    }

    fn stop_waiting_for(&mut self, id: PeerId) {
        if self.ctx.waiting.remove(&id) && self.ctx.waiting.is_empty() {
            self.end_deferral();
        }
    }

    /// Fills a new update group with the whole table, as its member `representative` gets it.
    fn fill_group(&mut self, group: GroupId, representative: PeerId) {
        for (prefix, paths) in self.table.iter() {
            if let Some(best) = self.ctx.best_of(paths)
                && let Some((attrs, exclusion)) =
                    self.ctx.export(prefix, best, group, representative)
            {
                let changes = self.ctx.outbox.entry(group).or_default();
                changes.push((prefix, Some(attrs), exclusion));
            }
        }
    }

    /// Sets (or with `None` removes) one peer's path to a prefix, reselects the best path and
    /// propagates a change of it.
    fn set_path(&mut self, prefix: IpNet, id: PeerId, attrs: Option<Arc<Attributes>>) {
        let ctx = &mut self.ctx;
        let delta = self.table.modify(prefix, attrs.is_some(), |paths| {
            let old_best = ctx.selection_key(paths);
            let position = paths.iter().position(|p| p.peer == id);
            let delta: isize = match (position, attrs) {
                (Some(i), Some(attrs)) => {
                    paths[i].attrs = attrs;
                    paths[i].stale = false;
                    0
                }
                (None, Some(attrs)) => {
                    paths.push(Path {
                        attrs,
                        peer: id,
                        stale: false,
                        multipath: false,
                    });
                    1
                }
                (Some(i), None) => {
                    paths.remove(i);
                    -1
                }
                (None, None) => 0,
            };
            ctx.settle(prefix, paths, old_best);
            delta
        });
        if let Some(delta) = delta
            && let Some(slot) = self.ctx.slot_mut(id)
        {
            slot.received = slot.received.saturating_add_signed(delta);
        }
    }
}

/// What identifies a best path: its peer and its attribute set.
type BestKey = (PeerId, *const Attributes);

/// What identifies the outcome of a selection: the best path, then the other paths equal to
/// it, in order.
type SelectionKey = (Option<BestKey>, SmallVec<[BestKey; 2]>);

impl Ctx {
    fn slot(&self, id: PeerId) -> Option<&PeerSlot> {
        self.peers.get(id.0 as usize).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, id: PeerId) -> Option<&mut PeerSlot> {
        self.peers.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    fn session(&self, id: PeerId) -> Option<&Session> {
        self.slot(id).and_then(|s| s.session.as_ref())
    }

    fn source(&self, id: PeerId) -> Source {
        match self.slot(id) {
            Some(slot) if id != LOCAL => Source::Peer(slot.peer_ref(self.config.local_as)),
            _ => Source::Local,
        }
    }

    fn best_path(&self, path: &Path) -> BestPath {
        BestPath {
            attrs: path.attrs.clone(),
            source: self.source(path.peer),
            multipath: Vec::new(),
        }
    }

    /// The best path of a prefix with the paths equal to it.
    fn best_with_multipath(&self, paths: &[Path]) -> Option<BestPath> {
        let best = self.best_of(paths)?;
        let mut out = self.best_path(best);
        out.multipath = Self::multipath_of(paths)
            .iter()
            .map(|p| self.best_path(p))
            .collect();
        Some(out)
    }

    /// The paths equal to the best, which [`Ctx::reselect`] keeps right after it.
    fn multipath_of(paths: &[Path]) -> &[Path] {
        let rest = paths.get(1..).unwrap_or_default();
        let count = rest.iter().take_while(|p| p.multipath).count();
        &rest[..count]
    }

    /// Import checks: loops of the AS path and of reflection (ORIGINATOR_ID, CLUSTER_LIST,
    /// RFC 4456 §8). UPDATEs from eBGP peers must already have been through
    /// [`ParsedUpdate::apply_external_rules`](crate::wire::ParsedUpdate::apply_external_rules),
    /// which strips what must not cross an AS border.
    fn import_check(&self, id: PeerId, attrs: Attributes) -> Option<Attributes> {
        let slot = self.slot(id)?;
        let config = &self.config;
        let session_as = slot.settings.session_as(config.local_as);
        if attrs.as_path_contains(config.local_as) || attrs.as_path_contains(session_as) {
            return None;
        }
        let reflected_own = attrs.originator_id == Some(config.router_id);
        if reflected_own || attrs.cluster_list.contains(&config.cluster_id()) {
            return None;
        }
        Some(attrs)
    }

    /// Whether a path may be chosen: this speaker's own always; a learned one when its next
    /// hop lies in a connected network, or always while those are not known.
    fn resolvable(&self, path: &Path) -> bool {
        let Some(networks) = &self.connected else {
            return true;
        };
        path.peer == LOCAL
            || path
                .attrs
                .next_hop_addr()
                .is_some_and(|nh| networks.iter().any(|n| n.contains(&nh)))
    }

    /// The best path of a prefix: the first, when it is eligible ([`Ctx::reselect`] puts the
    /// best eligible path first, so a first path that is not eligible means none is).
    fn best_of<'p>(&self, paths: &'p [Path]) -> Option<&'p Path> {
        paths.first().filter(|p| self.resolvable(p))
    }

    /// What identifies the best path, to tell whether it changed.
    fn best_key(&self, paths: &[Path]) -> Option<BestKey> {
        self.best_of(paths).map(|p| (p.peer, Arc::as_ptr(&p.attrs)))
    }

    /// What identifies the best path and the paths equal to it, to tell whether either
    /// changed.
    fn selection_key(&self, paths: &[Path]) -> SelectionKey {
        let best = self.best_key(paths);
        let equal = match best {
            Some(_) => Self::multipath_of(paths)
                .iter()
                .map(|p| (p.peer, Arc::as_ptr(&p.attrs)))
                .collect(),
            None => SmallVec::new(),
        };
        (best, equal)
    }

    /// After a prefix's paths changed: selects again and, when the best path is another
    /// than before (and selection is not deferred), propagates the change; when only the
    /// paths equal to it changed, tells the subscribers alone (peers hear the best path
    /// only).
    fn settle(&mut self, prefix: IpNet, paths: &mut [Path], old: SelectionKey) {
        self.reselect(paths);
        if self.deferring {
            return;
        }
        let new = self.selection_key(paths);
        if new.0 != old.0 {
            let new = old.0.is_none();
            self.best_changed(prefix, paths, new);
        } else if new.1 != old.1
            && self.record_routes
            && let Some(path) = self.best_with_multipath(paths)
        {
            self.events.push(RouteEvent::Best { prefix, path });
        }
    }

    /// Runs the decision process and puts the best eligible path first, the paths equal to
    /// it right after (marked [`Path::multipath`]), the others after those.
    fn reselect(&self, paths: &mut [Path]) {
        if paths.len() < 2 {
            if let Some(only) = paths.first_mut() {
                only.multipath = false;
            }
            return;
        }
        let chosen = self.select(paths);
        let Some(&best) = chosen.first() else {
            // Nothing eligible: no best path, so no paths equal to it either.
            paths.iter_mut().for_each(|p| p.multipath = false);
            return;
        };
        if chosen.len() == 1 {
            // The common case, a single best path: no reordering beyond it.
            paths.swap(0, best);
            paths.iter_mut().for_each(|p| p.multipath = false);
            return;
        }
        // A prefix has at most one path per peer, so the peer names the path.
        let order: SmallVec<[PeerId; 8]> = chosen.iter().map(|&i| paths[i].peer).collect();
        let rank = |p: &Path| order.iter().position(|peer| *peer == p.peer);
        paths.sort_by_key(|p| rank(p).unwrap_or(usize::MAX));
        for (i, path) in paths.iter_mut().enumerate() {
            path.multipath = i > 0 && i < order.len();
        }
    }

    fn select(&self, paths: &[Path]) -> SmallVec<[usize; 8]> {
        let candidates: SmallVec<[decision::Candidate<'_>; 4]> = paths
            .iter()
            .map(|p| {
                let slot = self.slot(p.peer);
                decision::Candidate {
                    attrs: &p.attrs,
                    local: p.peer == LOCAL,
                    ebgp: slot.is_some_and(|s| !s.settings.is_ibgp(self.config.local_as)),
                    peer_router_id: slot.map_or(self.config.router_id, |s| s.router_id),
                    peer_address: slot
                        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |s| s.settings.address),
                    local_as: self.config.local_as,
                    resolvable: self.resolvable(p),
                }
            })
            .collect();
        decision::select_multipath(&candidates, self.config.max_paths)
    }

    /// The best path to `prefix` changed: tell subscribers and queue it for every update
    /// group. `new`: the prefix had no best path before, so no group holds a route for it and
    /// none needs a withdrawal queued (while a peer sends its table, that is every prefix).
    fn best_changed(&mut self, prefix: IpNet, paths: &[Path], new: bool) {
        let best = self.best_of(paths);
        if self.record_routes {
            self.events.push(match self.best_with_multipath(paths) {
                Some(path) => RouteEvent::Best { prefix, path },
                None => RouteEvent::Withdrawn { prefix },
            });
        }
        for i in 0..self.targets.len() {
            let (group, representative) = self.targets[i];
            let exported = best.and_then(|b| self.export(prefix, b, group, representative));
            if exported.is_none() && new {
                continue;
            }
            let change = match exported {
                Some((attrs, exclusion)) => (prefix, Some(attrs), exclusion),
                None => (prefix, None, Exclusion::default()),
            };
            self.outbox.entry(group).or_default().push(change);
        }
    }

    /// The update group key of a peer with a session.
    fn group_key(&self, id: PeerId) -> Option<GroupKey> {
        let slot = self.slot(id)?;
        let session = slot.session.as_ref()?;
        let mut families = session.families.clone();
        families.sort_unstable();
        families.dedup();
        let class = self
            .policy
            .export_class(&slot.peer_ref(self.config.local_as));
        Some(GroupKey {
            remote_as: slot.settings.remote_as,
            session_as: slot.settings.session_as(self.config.local_as),
            rr_client: slot.settings.rr_client,
            next_hop_self: slot.settings.next_hop_self,
            next_hop_keep: slot.settings.next_hop_keep,
            families,
            local_address: session.local_address,
            policy: class.map_or(ExportClass::Own(id), ExportClass::Shared),
        })
    }

    /// Takes the groups exports go to again, after a peer joined or left one.
    fn groups_changed(&mut self) {
        self.targets = lock(&self.out).representatives();
    }

    /// The route the members of update group `group` get for `prefix` whose best path is
    /// `best`, as `representative` (one of them) gets it, and who among them must not.
    fn export(
        &mut self,
        prefix: IpNet,
        best: &Path,
        group: GroupId,
        representative: PeerId,
    ) -> GroupRoute {
        let afi = family(&prefix);
        let key = (Arc::as_ptr(&best.attrs) as usize, afi, best.peer, group);
        let (standard, exclusion) = match self.memo.get(&key) {
            Some((_, exported)) => exported.clone(),
            None => {
                let exported = self.standard_export(best, afi, representative);
                let exported = exported.map(|(attrs, originator)| {
                    // Never back to where it came from, nor to its originator.
                    let source = (best.peer != LOCAL).then_some(best.peer);
                    (
                        self.interner.intern(attrs),
                        Exclusion { source, originator },
                    )
                });
                self.memo
                    .insert(key, (best.attrs.clone(), exported.clone()));
                exported
            }
        }?;
        let slot = self.slot(representative)?;
        let peer = slot.peer_ref(self.config.local_as);
        let source = self.source(best.peer);
        match self.policy.export(&peer, prefix, &standard, &source) {
            Verdict::Accept => Some((standard, exclusion)),
            Verdict::Reject | Verdict::Filter(_) => None,
            Verdict::Modify(changed) => Some((self.interner.intern(changed), exclusion)),
        }
    }

    fn standard_export(
        &self,
        best: &Path,
        afi: Afi,
        to: PeerId,
    ) -> Option<(Attributes, Option<Ipv4Addr>)> {
        let key = self.group_key(to)?;
        let from = match self.slot(best.peer) {
            Some(slot) if best.peer != LOCAL => export::Src::Peer(slot),
            _ => export::Src::Local,
        };
        export::standard(&self.config, from, &key, afi, &best.attrs)
    }
}

/// Whether a map holding `len` entries with room for `capacity` is worth shrinking: it is
/// larger than a page or two and less than a quarter full.
pub(crate) fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > 1024 && len < capacity / 4
}
