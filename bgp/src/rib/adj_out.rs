//! Adj-RIB-Out in update groups: peers whose export is the same share one table.
//!
//! Peers with the same [`GroupKey`] (same kind of session, next-hop handling, families, our
//! address and export policy class) get the same route for every prefix, so the RIB computes
//! it once per group and the group stores it once ([`Outgoing::apply`]). The one difference
//! inside a group is who a route must not go back to ([`Exclusion`]: the peer it came from,
//! and the reflected route's originator), which each member's writer applies as it reads.
//!
//! Every change of the group's table gets the next sequence number and goes to the end of the
//! group's log. A member keeps a cursor: every change up to it has been taken. A new session
//! starts its cursor at zero (its initial dump is a walk of the group's table) and then
//! follows the changes. A prefix that changes again before a member read it is read once,
//! with its latest route: a slow member costs no queue of stale messages and never blocks
//! the others. Withdrawn prefixes stay in the table as tombstones until every member's
//! cursor has passed them.
//!
//! To withdraw exactly, a member must know what it holds for a prefix when it reads a change.
//! Each entry remembers its previous state, which a member that read that state holds; a
//! member that had not read it when the entry changed again gets a record of what it holds
//! ([`Member::lag`]). Those records exist only for prefixes that changed twice while a member
//! lagged, so a member that keeps up costs a cursor and a few counters.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashMap;
use ipnet::IpNet;

use crate::wire::{Afi, Codec, Message, Update, pack_announcements, pack_withdrawals};

use super::{Attributes, PeerId, family, is_sparse};

/// Names an update group.
pub(crate) type GroupId = u64;

/// What peers must have in common to share an Adj-RIB-Out: everything the standard export
/// rules and the policy look at, but the peer's identity. What only changes the encoding
/// (4-octet AS numbers) is not in it: a group stores attributes, and each session's writer
/// encodes them with its own codec.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    /// The peers' AS (iBGP where it is `session_as`).
    pub remote_as: u32,
    /// The AS the peers' sessions speak: the RIB's, or the peers' own local AS.
    pub session_as: u32,
    /// Route-reflector clients.
    pub rr_client: bool,
    /// See [`PeerSettings::next_hop_self`](super::PeerSettings::next_hop_self).
    pub next_hop_self: bool,
    /// See [`PeerSettings::next_hop_keep`](super::PeerSettings::next_hop_keep).
    pub next_hop_keep: bool,
    /// Negotiated families, sorted.
    pub families: Vec<Afi>,
    /// Our address on the sessions: the next hop "self".
    pub local_address: IpAddr,
    /// The export policy's class of the peers.
    pub policy: ExportClass,
}

/// Which export policy verdicts a peer shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ExportClass {
    /// Those of every peer the policy put in this class
    /// ([`Policy::export_class`](super::Policy::export_class)).
    Shared(u64),
    /// Its own: the policy may decide differently for this peer alone.
    Own(PeerId),
}

/// Members of a group a route must not go to: RFC 4271 §9.2's "never back to the peer it
/// came from" and RFC 4456 §8's "never to its originator".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Exclusion {
    /// The peer the route was learned from.
    pub source: Option<PeerId>,
    /// The ORIGINATOR_ID of a reflected route.
    pub originator: Option<Ipv4Addr>,
}

impl Exclusion {
    fn excludes(&self, peer: PeerId, router_id: Ipv4Addr) -> bool {
        self.source == Some(peer) || self.originator == Some(router_id)
    }
}

/// A state of a group's route for a prefix that a member may still hold.
#[derive(Debug, Clone, Copy)]
struct Former {
    announced: bool,
    exclusion: Exclusion,
}

impl Former {
    fn held_by(&self, member: &Member, peer: PeerId) -> bool {
        self.announced && !self.exclusion.excludes(peer, member.router_id)
    }
}

/// A group's route for one prefix.
#[derive(Debug)]
struct Entry {
    /// `None`: withdrawn, kept until every member has read it.
    attrs: Option<Arc<Attributes>>,
    exclusion: Exclusion,
    /// The change that wrote it.
    seq: u64,
    /// The state it replaced (`None`: the entry is new).
    prev: Option<Former>,
}

impl Entry {
    fn visible_to(&self, member: &Member, peer: PeerId) -> Option<&Arc<Attributes>> {
        let excluded = self.exclusion.excludes(peer, member.router_id);
        self.attrs.as_ref().filter(|_| !excluded)
    }

    /// Whether a member that has not read this state, and has no [`Member::lag`] record for
    /// the prefix, holds a route for it: the previous state if the member read it (the
    /// entry changed while it was a member and it was not left a record), else none.
    fn held_before(&self, member: &Member, peer: PeerId) -> bool {
        match self.prev {
            Some(prev) if self.seq > member.joined => prev.held_by(member, peer),
            _ => false,
        }
    }
}

/// The shared Adj-RIB-Out of the peers with one [`GroupKey`].
#[derive(Debug)]
struct Group {
    key: GroupKey,
    routes: HashMap<IpNet, Entry>,
    /// (change, prefix) in change order; a change the prefix has had since is skipped.
    log: VecDeque<(u64, IpNet)>,
    /// Withdrawals in change order, to drop the tombstones every member has read.
    tombstones: VecDeque<(u64, IpNet)>,
    /// The last change.
    seq: u64,
    members: Vec<PeerId>,
}

impl Group {
    fn new(key: GroupKey) -> Self {
        Self {
            key,
            routes: HashMap::new(),
            log: VecDeque::new(),
            tombstones: VecDeque::new(),
            seq: 0,
            members: Vec::new(),
        }
    }

    /// Drops the log's skipped changes once they outnumber the live ones: a prefix that
    /// keeps changing keeps one place in the log, however slow a member.
    fn compact_log(&mut self) {
        if self.log.len() > 2 * self.routes.len() + 1024 {
            let routes = &self.routes;
            self.log
                .retain(|(seq, prefix)| routes.get(prefix).is_some_and(|e| e.seq == *seq));
            self.log.shrink_to_fit();
        }
    }

    /// Drops the tombstones every member has read, and the log's skipped changes once they
    /// outnumber the live ones.
    fn collect(&mut self, members: &HashMap<PeerId, Member>) {
        let read = self
            .members
            .iter()
            .filter_map(|p| members.get(p))
            .map(|m| m.cursor)
            .min()
            .unwrap_or(self.seq);
        while let Some(&(seq, prefix)) = self.tombstones.front() {
            if seq > read {
                break;
            }
            self.tombstones.pop_front();
            if self
                .routes
                .get(&prefix)
                .is_some_and(|e| e.seq == seq && e.attrs.is_none())
            {
                self.routes.remove(&prefix);
            }
        }
        self.compact_log();
        if is_sparse(self.routes.len(), self.routes.capacity()) {
            self.routes.shrink_to_fit();
        }
    }
}

/// One peer's place in its group.
#[derive(Debug)]
struct Member {
    group: GroupId,
    /// The session generation; a writer of another session must not read.
    epoch: u64,
    /// The peer's BGP identifier, for the originator exclusion.
    router_id: Ipv4Addr,
    families: Vec<Afi>,
    /// The group's last change when the member joined.
    joined: u64,
    /// Every change up to this one has been read.
    cursor: u64,
    /// Prefixes the peer holds a route for.
    sent: usize,
    /// Whether the peer holds a route, for prefixes that changed twice since it last read
    /// them (see the module's notes).
    lag: HashMap<IpNet, bool>,
    /// Prefixes to announce again (ROUTE-REFRESH) whatever the cursor says.
    refresh: Vec<IpNet>,
    /// Prefixes to withdraw before reading the group (held from a group the peer left).
    withdraw: Vec<IpNet>,
    /// End-of-RIB markers, sent once everything before them is out.
    end_of_rib: Vec<Afi>,
}

impl Member {
    fn caught_up(&self, group: &Group) -> bool {
        self.cursor >= group.seq && self.refresh.is_empty() && self.withdraw.is_empty()
    }
}

/// Every update group and its members: what the RIB writes and the sessions' writers read.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    groups: HashMap<GroupId, Group>,
    by_key: HashMap<GroupKey, GroupId>,
    members: HashMap<PeerId, Member>,
    next_group: GroupId,
}

impl Outgoing {
    /// Puts a peer with a new session into the group of `key` (created if there is none);
    /// returns the group and whether it is new (and so empty: the RIB must fill it).
    pub fn join(
        &mut self,
        peer: PeerId,
        key: GroupKey,
        epoch: u64,
        router_id: Ipv4Addr,
    ) -> (GroupId, bool) {
        self.leave(peer);
        let (id, created) = match self.by_key.get(&key) {
            Some(id) => (*id, false),
            None => {
                self.next_group += 1;
                let id = self.next_group;
                self.by_key.insert(key.clone(), id);
                self.groups.insert(id, Group::new(key.clone()));
                (id, true)
            }
        };
        let Some(group) = self.groups.get_mut(&id) else {
            return (id, created);
        };
        group.members.push(peer);
        self.members.insert(
            peer,
            Member {
                group: id,
                epoch,
                router_id,
                families: key.families,
                joined: group.seq,
                cursor: 0,
                sent: 0,
                lag: HashMap::new(),
                refresh: Vec::new(),
                withdraw: Vec::new(),
                end_of_rib: Vec::new(),
            },
        );
        (id, created)
    }

    /// Moves a peer whose export settings changed mid-session to the group of `key`: it is
    /// sent that group's table, after withdrawals of everything it held. Returns what
    /// [`Outgoing::join`] does.
    pub fn regroup(&mut self, peer: PeerId, key: GroupKey) -> Option<(GroupId, bool)> {
        let member = self.members.get(&peer)?;
        if self.groups.get(&member.group)?.key == key {
            return None;
        }
        let held = self.held(peer);
        let (epoch, router_id) = (member.epoch, member.router_id);
        let joined = self.join(peer, key, epoch, router_id);
        if let Some(member) = self.members.get_mut(&peer) {
            member.sent = held.len();
            member.withdraw = held;
        }
        Some(joined)
    }

    /// The prefixes a member holds a route for.
    fn held(&self, peer: PeerId) -> Vec<IpNet> {
        let Some(member) = self.members.get(&peer) else {
            return Vec::new();
        };
        let Some(group) = self.groups.get(&member.group) else {
            return Vec::new();
        };
        let holds = |prefix: &IpNet, entry: &Entry| {
            if let Some(&held) = member.lag.get(prefix) {
                held
            } else if entry.seq <= member.cursor {
                entry.visible_to(member, peer).is_some()
            } else {
                entry.held_before(member, peer)
            }
        };
        let mut held: Vec<IpNet> = group
            .routes
            .iter()
            .filter(|(prefix, entry)| holds(prefix, entry))
            .map(|(prefix, _)| *prefix)
            .collect();
        held.extend(member.withdraw.iter().copied());
        held
    }

    /// Takes a peer out of its group (its session ended); a group left empty goes.
    /// Returns the group that went, if one did.
    pub fn leave(&mut self, peer: PeerId) -> Option<GroupId> {
        let member = self.members.remove(&peer)?;
        let group = self.groups.get_mut(&member.group)?;
        group.members.retain(|p| *p != peer);
        if group.members.is_empty() {
            let key = group.key.clone();
            self.groups.remove(&member.group);
            self.by_key.remove(&key);
            return Some(member.group);
        }
        group.collect(&self.members);
        None
    }

    /// The group of a peer with a session.
    #[cfg(test)]
    pub fn group_of(&self, peer: PeerId) -> Option<GroupId> {
        self.members.get(&peer).map(|m| m.group)
    }

    /// Every group with one of its members, whose settings stand for the group's.
    pub fn representatives(&self) -> Vec<(GroupId, PeerId)> {
        let mut out: Vec<(GroupId, PeerId)> = self
            .groups
            .iter()
            .filter_map(|(id, g)| Some((*id, *g.members.first()?)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Number of groups.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Members of a group.
    pub fn members_of(&self, group: GroupId) -> &[PeerId] {
        self.groups.get(&group).map_or(&[], |g| &g.members)
    }

    /// Records the route a group's members should have for a prefix (`None`: none).
    pub fn apply(
        &mut self,
        group: GroupId,
        prefix: IpNet,
        attrs: Option<Arc<Attributes>>,
        exclusion: Exclusion,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let next = g.seq + 1;
        match g.routes.get_mut(&prefix) {
            None => {
                if attrs.is_none() {
                    return;
                }
                g.routes.insert(
                    prefix,
                    Entry {
                        attrs,
                        exclusion,
                        seq: next,
                        prev: None,
                    },
                );
            }
            Some(entry) => {
                let same = match (&entry.attrs, &attrs) {
                    (Some(old), Some(new)) => Arc::ptr_eq(old, new) && entry.exclusion == exclusion,
                    (None, None) => true,
                    _ => false,
                };
                if same {
                    return;
                }
                // Members that have not read the state being replaced keep a record of what
                // they hold instead.
                for peer in &g.members {
                    if let Some(member) = self.members.get_mut(peer)
                        && member.cursor < entry.seq
                        && !member.lag.contains_key(&prefix)
                    {
                        let held = entry.held_before(member, *peer);
                        member.lag.insert(prefix, held);
                    }
                }
                entry.prev = Some(Former {
                    announced: entry.attrs.is_some(),
                    exclusion: entry.exclusion,
                });
                if attrs.is_none() {
                    g.tombstones.push_back((next, prefix));
                }
                entry.attrs = attrs;
                entry.exclusion = exclusion;
                entry.seq = next;
            }
        }
        g.seq = next;
        g.log.push_back((next, prefix));
        g.compact_log();
    }

    /// Drops the tombstones every member of their group has read. Once per batch of the
    /// RIB's, not per read: a read that would look at every member's position would cost
    /// members² per withdrawal.
    pub fn collect(&mut self) {
        for group in self.groups.values_mut() {
            if !group.tombstones.is_empty() {
                group.collect(&self.members);
            }
        }
    }

    /// Queues End-of-RIB markers for every family of a peer's session.
    pub fn queue_end_of_rib(&mut self, peer: PeerId) {
        if let Some(member) = self.members.get_mut(&peer) {
            member.end_of_rib = member.families.clone();
        }
    }

    /// Queues every route of a family a peer holds again, for a ROUTE-REFRESH (RFC 2918).
    pub fn refresh(&mut self, peer: PeerId, afi: Afi) {
        let held = self.held(peer);
        if let Some(member) = self.members.get_mut(&peer) {
            member.refresh = held.into_iter().filter(|p| family(p) == afi).collect();
            member.end_of_rib = vec![afi];
        }
    }

    /// Whether a peer's writer has something to take.
    pub fn has_work(&self, peer: PeerId) -> bool {
        let Some(member) = self.members.get(&peer) else {
            return false;
        };
        let caught_up = self
            .groups
            .get(&member.group)
            .is_none_or(|g| member.caught_up(g));
        !caught_up || !member.end_of_rib.is_empty()
    }

    /// Number of prefixes a peer holds from us.
    pub fn sent(&self, peer: PeerId) -> usize {
        self.members.get(&peer).map_or(0, |m| m.sent)
    }

    /// Number of prefixes a peer has not read yet: its lag behind its group.
    pub fn lag(&self, peer: PeerId) -> usize {
        let Some(member) = self.members.get(&peer) else {
            return 0;
        };
        let Some(group) = self.groups.get(&member.group) else {
            return 0;
        };
        let start = group.log.partition_point(|(seq, _)| *seq <= member.cursor);
        group.log.len() - start + member.refresh.len() + member.withdraw.len()
    }

    /// Takes up to `max_prefixes` changes for a peer's session `epoch` (any session: `None`);
    /// `None` when the peer has no session or another one.
    pub fn take_batch(
        &mut self,
        peer: PeerId,
        epoch: Option<u64>,
        max_prefixes: usize,
    ) -> Option<Taken> {
        let member = self.members.get_mut(&peer)?;
        if epoch.is_some_and(|e| e != member.epoch) {
            return None;
        }
        let group = self.groups.get_mut(&member.group)?;
        let mut batch = Taken::default();
        while batch.len() < max_prefixes {
            let Some(prefix) = member.withdraw.pop() else {
                break;
            };
            batch.withdraw(prefix);
            member.sent = member.sent.saturating_sub(1);
        }
        while batch.len() < max_prefixes {
            let Some(prefix) = member.refresh.pop() else {
                break;
            };
            let entry = group.routes.get(&prefix);
            // What changed since is read from the log; the rest goes again as it is.
            let read = entry.filter(|e| e.seq <= member.cursor);
            if let Some(attrs) = read.and_then(|e| e.visible_to(member, peer)) {
                batch.announce(prefix, attrs.clone());
            }
        }
        let start = group.log.partition_point(|(seq, _)| *seq <= member.cursor);
        // Skipped changes and routes the member must not get count too, so that one call
        // stays bounded.
        let mut budget = max_prefixes.saturating_mul(4);
        for &(seq, prefix) in group.log.range(start..) {
            if batch.len() >= max_prefixes || budget == 0 {
                break;
            }
            budget -= 1;
            member.cursor = seq;
            let Some(entry) = group.routes.get(&prefix) else {
                continue;
            };
            if entry.seq != seq {
                continue;
            }
            // Records are rare: most members keep up.
            let recorded = if member.lag.is_empty() {
                None
            } else {
                member.lag.remove(&prefix)
            };
            let held = recorded.unwrap_or_else(|| entry.held_before(member, peer));
            match entry.visible_to(member, peer) {
                Some(attrs) => {
                    batch.announce(prefix, attrs.clone());
                    if !held {
                        member.sent += 1;
                    }
                }
                None if held => {
                    batch.withdraw(prefix);
                    member.sent = member.sent.saturating_sub(1);
                }
                None => {}
            }
        }
        if !member.caught_up(group) {
            return Some(batch);
        }
        batch.end_of_rib = std::mem::take(&mut member.end_of_rib);
        if is_sparse(member.lag.len(), member.lag.capacity()) {
            member.lag.shrink_to_fit();
        }
        Some(batch)
    }

    /// Shrinks the maps that hold less than a quarter of what they have room for.
    pub fn shrink_if_sparse(&mut self) {
        for group in self.groups.values_mut() {
            group.collect(&self.members);
        }
        for member in self.members.values_mut() {
            if is_sparse(member.lag.len(), member.lag.capacity()) {
                member.lag.shrink_to_fit();
            }
        }
    }
}

/// Changes taken for a peer, in the order read: packed into an [`OutBatch`] once the group's
/// lock is released, so that the other writers wait for the reading only.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    changes: Vec<(IpNet, Option<Arc<Attributes>>)>,
    end_of_rib: Vec<Afi>,
}

impl Taken {
    fn len(&self) -> usize {
        self.changes.len()
    }

    fn withdraw(&mut self, prefix: IpNet) {
        self.changes.push((prefix, None));
    }

    fn announce(&mut self, prefix: IpNet, attrs: Arc<Attributes>) {
        self.changes.push((prefix, Some(attrs)));
    }

    /// The batch, with announcements that share attributes together.
    pub fn pack(self) -> OutBatch {
        let mut batch = OutBatch {
            end_of_rib: self.end_of_rib,
            ..OutBatch::default()
        };
        let mut packs: HashMap<(Afi, *const Attributes), usize> = HashMap::new();
        for (prefix, attrs) in self.changes {
            let Some(attrs) = attrs else {
                batch.withdrawn.push(prefix);
                continue;
            };
            let key = (family(&prefix), Arc::as_ptr(&attrs));
            let announced = &mut batch.announced;
            let index = *packs.entry(key).or_insert_with(|| {
                announced.push((attrs, Vec::new()));
                announced.len() - 1
            });
            announced[index].1.push(prefix);
        }
        batch
    }
}

/// A peer's Adj-RIB-Out as its session's writer sees it: the changes it has to send, read
/// from the peer's update group.
#[derive(Debug, Clone)]
pub struct AdjRibOut {
    shared: Arc<Mutex<Outgoing>>,
    peer: PeerId,
}

impl AdjRibOut {
    pub(crate) fn new(shared: Arc<Mutex<Outgoing>>, peer: PeerId) -> Self {
        Self { shared, peer }
    }

    /// Takes up to `max_prefixes` changes for session `epoch` and whether more wait; `None`
    /// when the peer's session is not that one (a writer of another session must not read).
    /// Prefixes that share attributes come out together, so they can be packed into few
    /// UPDATEs; End-of-RIB markers follow once nothing else is queued.
    pub fn take_for(&self, epoch: u64, max_prefixes: usize) -> Option<(OutBatch, bool)> {
        let (taken, more) = {
            let mut out = lock(&self.shared);
            let taken = out.take_batch(self.peer, Some(epoch), max_prefixes)?;
            (taken, out.has_work(self.peer))
        };
        Some((taken.pack(), more))
    }

    /// Takes up to `max_prefixes` changes for whatever session the peer has.
    pub fn take_batch(&self, max_prefixes: usize) -> OutBatch {
        let taken = lock(&self.shared).take_batch(self.peer, None, max_prefixes);
        taken.unwrap_or_default().pack()
    }

    /// Whether [`AdjRibOut::take_batch`] has something to return.
    pub fn has_work(&self) -> bool {
        lock(&self.shared).has_work(self.peer)
    }

    /// Number of prefixes the peer holds from us.
    pub fn sent_count(&self) -> usize {
        lock(&self.shared).sent(self.peer)
    }

    /// Number of changes the peer has not read yet.
    pub fn pending_count(&self) -> usize {
        lock(&self.shared).lag(self.peer)
    }
}

pub(crate) fn lock(out: &Mutex<Outgoing>) -> MutexGuard<'_, Outgoing> {
    // A writer that panicked mid-read leaves consistent maps behind (every change is a
    // single insert or remove), so a poisoned lock is still usable.
    out.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Changes taken from an Adj-RIB-Out, ready to be encoded.
#[derive(Debug, Default)]
pub struct OutBatch {
    /// Prefixes to withdraw.
    pub withdrawn: Vec<IpNet>,
    /// Prefixes to announce, grouped by their attributes (each group of one family).
    pub announced: Vec<(Arc<Attributes>, Vec<IpNet>)>,
    /// Families whose End-of-RIB marker follows.
    pub end_of_rib: Vec<Afi>,
}

impl OutBatch {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.withdrawn.is_empty() && self.announced.is_empty() && self.end_of_rib.is_empty()
    }

    /// Number of prefixes in the batch.
    pub fn prefixes(&self) -> usize {
        self.withdrawn.len() + self.announced.iter().map(|(_, p)| p.len()).sum::<usize>()
    }

    /// The UPDATE messages, encoded for a session: withdrawals first, then announcements
    /// packed as many to a message as fit, then End-of-RIB markers. A group whose
    /// attributes cannot be encoded is left out (and logged) rather than ending the session.
    pub fn encode(&self, codec: &Codec) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match pack_withdrawals(&self.withdrawn) {
            Ok(messages) => out.extend(messages),
            Err(error) => tracing::warn!(%error, "cannot encode withdrawals"),
        }
        for (attrs, prefixes) in &self.announced {
            // Attributes in the RIB's normal form are the packer's template as they are.
            match pack_announcements(attrs, prefixes, codec) {
                Ok(messages) => out.extend(messages),
                Err(error) => {
                    tracing::warn!(%error, prefixes = prefixes.len(), "cannot encode routes")
                }
            }
        }
        for afi in &self.end_of_rib {
            let marker = Message::Update(Update::end_of_rib_marker(*afi));
            match marker.encode(codec) {
                Ok(message) => out.push(message),
                Err(error) => tracing::warn!(%error, "cannot encode End-of-RIB"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::RouteAttributes;

    const ALL: usize = usize::MAX;

    fn key(rr_client: bool, policy: ExportClass) -> GroupKey {
        GroupKey {
            remote_as: 64512,
            session_as: 64512,
            rr_client,
            next_hop_self: false,
            next_hop_keep: false,
            families: vec![Afi::Ipv4Unicast],
            local_address: "10.0.0.1".parse().unwrap(),
            policy,
        }
    }

    fn clients() -> GroupKey {
        key(true, ExportClass::Shared(0))
    }

    fn router(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    /// Peer `n`, router id 10.0.0.`n`, joins the group of `key`.
    fn join(out: &mut Outgoing, n: u32, key: GroupKey) -> (GroupId, bool) {
        out.join(PeerId(n), key, 1, router(n as u8))
    }

    fn attrs(next_hop: &str) -> Arc<Attributes> {
        let nh = next_hop.parse().unwrap();
        Arc::new(Attributes::local(Some(nh), Afi::Ipv4Unicast))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn from(n: u32) -> Exclusion {
        Exclusion {
            source: Some(PeerId(n)),
            originator: None,
        }
    }

    /// (announced prefixes, with their next hop; withdrawn prefixes), sorted.
    fn take(out: &mut Outgoing, n: u32) -> (Vec<(IpNet, String)>, Vec<IpNet>) {
        let batch = out.take_batch(PeerId(n), None, ALL).unwrap().pack();
        let mut withdrawn = batch.withdrawn.clone();
        withdrawn.sort();
        (announcements(&batch), withdrawn)
    }

    /// A batch's announced prefixes with their next hop, sorted.
    fn announcements(batch: &OutBatch) -> Vec<(IpNet, String)> {
        let mut announced: Vec<(IpNet, String)> = batch
            .announced
            .iter()
            .flat_map(|(a, ps)| {
                let nh = a.next_hop_addr().unwrap().to_string();
                ps.iter().map(move |p| (*p, nh.clone()))
            })
            .collect();
        announced.sort();
        announced
    }

    fn announced(prefixes: &[(&str, &str)]) -> Vec<(IpNet, String)> {
        prefixes
            .iter()
            .map(|(p, nh)| (net(p), nh.to_string()))
            .collect()
    }

    #[test]
    fn peers_share_a_group_only_with_the_same_key() {
        let mut out = Outgoing::default();
        let (a, created) = join(&mut out, 1, clients());
        assert!(created);
        assert_eq!(join(&mut out, 2, clients()), (a, false));
        let (non_client, _) = join(&mut out, 3, key(false, ExportClass::Shared(0)));
        let (own, _) = join(&mut out, 4, key(true, ExportClass::Own(PeerId(4))));
        let mut ebgp = clients();
        ebgp.remote_as = 65001;
        let (other_as, _) = join(&mut out, 5, ebgp);
        let mut v6 = clients();
        v6.families.push(Afi::Ipv6Unicast);
        let (families, _) = join(&mut out, 6, v6);
        let mut ids = vec![a, non_client, own, other_as, families];
        ids.dedup();
        assert_eq!(ids.len(), 5);
        assert_eq!(out.group_count(), 5);
        assert_eq!(out.members_of(a), &[PeerId(1), PeerId(2)]);
    }

    #[test]
    fn a_group_holds_each_route_once_whatever_its_size() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        for n in 2..=50 {
            join(&mut out, n, clients());
        }
        for i in 0..100u32 {
            let prefix = IpNet::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).unwrap();
            out.apply(group, prefix, Some(attrs("10.9.0.1")), from(99));
        }
        assert_eq!(out.groups[&group].routes.len(), 100);
        for n in 1..=50 {
            assert_eq!(take(&mut out, n).0.len(), 100);
            assert_eq!(out.sent(PeerId(n)), 100);
            assert!(out.members[&PeerId(n)].lag.is_empty());
        }
    }

    #[test]
    fn a_member_joining_mid_stream_gets_exactly_the_current_table() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        out.apply(group, net("10.1.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        out.apply(group, net("10.2.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        out.apply(group, net("10.3.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        take(&mut out, 1);
        out.apply(group, net("10.2.0.0/24"), None, Exclusion::default());
        out.apply(group, net("10.3.0.0/24"), Some(attrs("10.9.0.3")), from(9));
        // Joins with a withdrawal and a change waiting for the first member, and more
        // changes come before it reads anything.
        join(&mut out, 2, clients());
        out.queue_end_of_rib(PeerId(2));
        out.apply(group, net("10.1.0.0/24"), Some(attrs("10.9.0.4")), from(9));
        out.apply(group, net("10.3.0.0/24"), None, Exclusion::default());
        out.apply(group, net("10.3.0.0/24"), Some(attrs("10.9.0.5")), from(9));
        out.apply(group, net("10.4.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        let batch = out.take_batch(PeerId(2), Some(1), ALL).unwrap().pack();
        assert!(
            batch.withdrawn.is_empty(),
            "nothing to withdraw on a new session"
        );
        assert_eq!(batch.end_of_rib, vec![Afi::Ipv4Unicast]);
        let table = announced(&[
            ("10.1.0.0/24", "10.9.0.4"),
            ("10.3.0.0/24", "10.9.0.5"),
            ("10.4.0.0/24", "10.9.0.1"),
        ]);
        assert_eq!(announcements(&batch), table);
        assert_eq!(out.sent(PeerId(2)), 3);
        // The first member reads the differences only.
        assert_eq!(take(&mut out, 1), (table, vec![net("10.2.0.0/24")]));
        assert_eq!(out.sent(PeerId(1)), 3);
        assert!(!out.has_work(PeerId(1)) && !out.has_work(PeerId(2)));
        out.collect();
        assert!(
            out.groups[&group].tombstones.is_empty(),
            "read by all: the tombstone went"
        );
        assert!(!out.groups[&group].routes.contains_key(&net("10.2.0.0/24")));
    }

    #[test]
    fn a_route_never_goes_back_to_its_source_nor_to_its_originator() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        join(&mut out, 2, clients());
        join(&mut out, 3, clients());
        let reflected = Exclusion {
            source: Some(PeerId(9)),
            originator: Some(router(2)),
        };
        out.apply(group, net("10.1.0.0/24"), Some(attrs("10.9.0.1")), from(1));
        out.apply(
            group,
            net("10.2.0.0/24"),
            Some(attrs("10.9.0.2")),
            reflected,
        );
        let p1 = announced(&[("10.2.0.0/24", "10.9.0.2")]);
        let p2 = announced(&[("10.1.0.0/24", "10.9.0.1")]);
        let both = announced(&[("10.1.0.0/24", "10.9.0.1"), ("10.2.0.0/24", "10.9.0.2")]);
        assert_eq!(take(&mut out, 1), (p1, vec![]));
        assert_eq!(take(&mut out, 2), (p2, vec![]));
        assert_eq!(take(&mut out, 3), (both, vec![]));
        // Withdrawn: only those that had them hear it.
        out.apply(group, net("10.1.0.0/24"), None, Exclusion::default());
        out.apply(group, net("10.2.0.0/24"), None, Exclusion::default());
        assert_eq!(take(&mut out, 1), (vec![], vec![net("10.2.0.0/24")]));
        assert_eq!(take(&mut out, 2), (vec![], vec![net("10.1.0.0/24")]));
        let all = vec![net("10.1.0.0/24"), net("10.2.0.0/24")];
        assert_eq!(take(&mut out, 3), (vec![], all));
        for n in 1..=3 {
            assert_eq!(out.sent(PeerId(n)), 0);
        }
    }

    #[test]
    fn a_member_whose_own_route_loses_gets_the_winner_and_loses_it_again() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        join(&mut out, 2, clients());
        let prefix = net("10.1.0.0/24");
        out.apply(group, prefix, Some(attrs("10.9.0.1")), from(1));
        assert_eq!(take(&mut out, 1), (vec![], vec![]));
        out.apply(group, prefix, Some(attrs("10.9.0.2")), from(2));
        assert_eq!(
            take(&mut out, 1).0,
            announced(&[("10.1.0.0/24", "10.9.0.2")])
        );
        out.apply(group, prefix, Some(attrs("10.9.0.1")), from(1));
        assert_eq!(take(&mut out, 1), (vec![], vec![prefix]));
        // Peer 1 withdraws its own: it was never sent it, so it hears nothing.
        out.apply(group, prefix, None, Exclusion::default());
        assert_eq!(take(&mut out, 1), (vec![], vec![]));
        // Peer 2 read nothing meanwhile: it still holds nothing, and hears nothing.
        assert_eq!(take(&mut out, 2), (vec![], vec![]));
    }

    #[test]
    fn a_lagging_member_reads_the_latest_state_once_and_withdraws_exactly() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        join(&mut out, 2, clients());
        let (held, excluded, flapping) =
            (net("10.1.0.0/24"), net("10.2.0.0/24"), net("10.3.0.0/24"));
        out.apply(group, held, Some(attrs("10.9.0.1")), from(9));
        out.apply(group, excluded, Some(attrs("10.9.0.1")), from(1));
        out.apply(group, flapping, Some(attrs("10.9.0.1")), from(9));
        take(&mut out, 1);
        take(&mut out, 2);
        // Peer 2 stops reading while every prefix changes several times; peer 1 keeps up.
        for round in 0..5 {
            out.apply(
                group,
                held,
                Some(attrs(&format!("10.9.1.{round}"))),
                from(9),
            );
            // Goes to peer 1 (now from 2), back to being peer 1's own, then away.
            out.apply(group, excluded, Some(attrs("10.9.0.2")), from(2));
            take(&mut out, 1);
            out.apply(group, excluded, Some(attrs("10.9.0.1")), from(1));
            out.apply(group, flapping, None, Exclusion::default());
            take(&mut out, 1);
            out.apply(group, flapping, Some(attrs("10.9.0.9")), from(9));
        }
        out.apply(group, excluded, None, Exclusion::default());
        out.apply(group, flapping, None, Exclusion::default());
        assert!(out.lag(PeerId(2)) > 0);
        // Peer 2 held all three as first sent: one announcement and two withdrawals, each
        // once.
        assert_eq!(
            take(&mut out, 2),
            (
                announced(&[("10.1.0.0/24", "10.9.1.4")]),
                vec![excluded, flapping]
            )
        );
        assert_eq!(out.sent(PeerId(2)), 1);
        // Peer 1 lost `excluded` when it became its own again, and read `flapping`'s last
        // withdrawal before its last flap: it hears nothing more of either.
        let (_, withdrawn) = take(&mut out, 1);
        assert_eq!(withdrawn, vec![]);
        assert_eq!(out.sent(PeerId(1)), 1);
        assert!(out.members.values().all(|m| m.lag.is_empty()));
        out.collect();
        assert!(out.groups[&group].tombstones.is_empty());
        assert_eq!(out.groups[&group].routes.len(), 1);
    }

    #[test]
    fn a_slow_member_is_read_in_bounded_batches_and_keeps_no_queue() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        join(&mut out, 2, clients());
        for round in 0..10 {
            for i in 0..1000u32 {
                let prefix = IpNet::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24);
                let nh = format!("10.9.0.{round}");
                out.apply(group, prefix.unwrap(), Some(attrs(&nh)), from(9));
            }
            take(&mut out, 1);
        }
        // Ten versions of a thousand prefixes: the log keeps about one per prefix.
        assert!(out.groups[&group].log.len() <= 2 * 1000 + 1024);
        let mut reads = 0;
        while out.has_work(PeerId(2)) {
            let batch = out.take_batch(PeerId(2), None, 300).unwrap().pack();
            assert!(batch.prefixes() <= 300);
            reads += batch.prefixes();
        }
        assert_eq!(reads, 1000, "each prefix once, at its latest");
        assert_eq!(out.sent(PeerId(2)), 1000);
    }

    #[test]
    fn a_session_of_another_generation_reads_nothing() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        out.apply(group, net("10.1.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        assert!(out.take_batch(PeerId(1), Some(2), ALL).is_none());
        assert_eq!(out.take_batch(PeerId(1), Some(1), ALL).unwrap().len(), 1);
    }

    #[test]
    fn leaving_keeps_the_group_for_the_others_and_drops_it_with_the_last() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        join(&mut out, 2, clients());
        out.apply(group, net("10.1.0.0/24"), None, Exclusion::default());
        out.apply(group, net("10.1.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        out.apply(group, net("10.1.0.0/24"), None, Exclusion::default());
        take(&mut out, 1);
        assert_eq!(
            out.groups[&group].tombstones.len(),
            1,
            "peer 2 has not read it"
        );
        assert_eq!(out.leave(PeerId(2)), None);
        assert!(
            out.groups[&group].routes.is_empty(),
            "no reader left for it"
        );
        assert_eq!(out.leave(PeerId(1)), Some(group));
        assert_eq!(out.group_count(), 0);
        assert!(!out.has_work(PeerId(1)));
        // The same key later makes a new, empty group.
        let (again, created) = join(&mut out, 1, clients());
        assert!(created && again != group);
        assert_eq!(out.group_of(PeerId(1)), Some(again));
    }

    #[test]
    fn a_refresh_resends_what_the_member_holds() {
        let mut out = Outgoing::default();
        let (group, _) = join(&mut out, 1, clients());
        out.apply(group, net("10.1.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        out.apply(group, net("10.2.0.0/24"), Some(attrs("10.9.0.1")), from(1));
        take(&mut out, 1);
        out.refresh(PeerId(1), Afi::Ipv4Unicast);
        let batch = out.take_batch(PeerId(1), None, ALL).unwrap().pack();
        assert_eq!(batch.prefixes(), 1);
        assert_eq!(batch.end_of_rib, vec![Afi::Ipv4Unicast]);
        assert_eq!(out.sent(PeerId(1)), 1);
    }

    #[test]
    fn a_member_moved_to_another_group_loses_what_the_new_one_lacks() {
        let mut out = Outgoing::default();
        let (old, _) = join(&mut out, 1, clients());
        join(&mut out, 2, clients());
        let (new, _) = join(&mut out, 3, key(false, ExportClass::Shared(0)));
        out.apply(old, net("10.1.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        out.apply(old, net("10.2.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        out.apply(new, net("10.1.0.0/24"), Some(attrs("10.9.0.1")), from(9));
        take(&mut out, 1);
        assert_eq!(out.regroup(PeerId(1), clients()), None, "same key: stays");
        assert_eq!(
            out.regroup(PeerId(1), key(false, ExportClass::Shared(0))),
            Some((new, false))
        );
        let (announced_now, withdrawn) = take(&mut out, 1);
        assert_eq!(withdrawn, vec![net("10.1.0.0/24"), net("10.2.0.0/24")]);
        assert_eq!(announced_now, announced(&[("10.1.0.0/24", "10.9.0.1")]));
        assert_eq!(out.sent(PeerId(1)), 1);
        assert_eq!(out.members_of(old), &[PeerId(2)]);
    }
}
