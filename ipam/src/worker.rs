//! The allocator of one node: a task that takes the allocation and release requests for the
//! node as they arrive and commits all those that arrived together in one transaction.
//!
//! Planning happens on copies of the node's blocks kept in the cache with their revisions, so
//! the common case (a free address in one of the node's blocks) reads nothing and writes once:
//! the block and the handle documents, each compared with the revision it is based on. A lost
//! compare re-reads just the documents involved and plans again. The slow paths (claiming a
//! block, borrowing) read what they need and run inside the same loop, so a request that needs
//! two addresses gets both in one commit or neither.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use wren_model::{ClusterConfig, keys};
use wren_store::json::JsonStore;
use wren_store::{Compare, Revision, Store, StoreError};

use crate::affinity::{self, Affinity, AffinityState};
use crate::allocate::{AllocateRequest, AllocatedAddress, Allocation};
use crate::block::{Assignment, Block, BlockError};
use crate::changeset::{Changeset, Expect, HandleWrite};
use crate::claim::{self, Claim};
use crate::error::{IpamError, Result};
use crate::handle::{Handle, HandleAddress};
use crate::pool::{NamedPool, pool_of, read_pools};
use crate::release::give_back_emptied;
use crate::{Family, Shared, Stats, read_block, read_blocks};

/// One request and where its answer goes.
pub(crate) enum Job {
    /// Allocate addresses.
    Allocate {
        request: AllocateRequest,
        reply: oneshot::Sender<Result<Allocation>>,
    },
    /// Free every address of a handle, as read at the given revision.
    Release {
        handle: String,
        found: (Handle, Revision),
        reply: oneshot::Sender<Result<Vec<IpAddr>>>,
    },
}

impl Job {
    fn is_abandoned(&self) -> bool {
        match self {
            // A caller that has gone away would never learn its address: skip it.
            Job::Allocate { reply, .. } => reply.is_closed(),
            // A release is carried out even when nobody waits for the answer.
            Job::Release { .. } => false,
        }
    }
}

/// What planning one job produced.
enum Outcome {
    Allocated(Result<Allocation>),
    Released(Result<Vec<IpAddr>>),
}

impl Outcome {
    fn error(&self) -> Option<&IpamError> {
        match self {
            Outcome::Allocated(Err(e)) | Outcome::Released(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// The same outcome, but failed with `error` if it had succeeded.
    fn fail(self, error: &IpamError) -> Self {
        match self {
            Outcome::Allocated(r) => Outcome::Allocated(r.and(Err(error.clone()))),
            Outcome::Released(r) => Outcome::Released(r.and(Err(error.clone()))),
        }
    }
}

/// The allocator state of one node.
pub(crate) struct Worker {
    node: String,
    shared: Arc<Shared>,
    /// Blocks affine to this node as last seen; their contents live in the shared cache.
    affine: BTreeSet<IpNet>,
    affine_loaded: bool,
    /// Blocks known to exist (this node's and those lost claims ran into): where a claim
    /// does not bother trying.
    seen_taken: HashSet<IpNet>,
    pools: Option<Vec<NamedPool>>,
}

/// Claim attempts guided by what the allocator has seen, before listing every block.
const GUESSES: u32 = 4;
/// Claim attempts guided by a full listing (only concurrent claims make them lose).
const LISTED_ATTEMPTS: u32 = 64;

/// What one planning pass over a batch has staged and read.
#[derive(Default)]
struct Round {
    changes: Changeset,
    /// Pools allocated from, with the revision the plan relied on.
    pools_used: BTreeMap<String, Revision>,
    pools_refreshed: bool,
    affinity_refreshed: bool,
    config: Option<ClusterConfig>,
    /// Every block, read once per pass by the slow paths.
    blocks: Option<Vec<(Block, Revision)>>,
    taken: Option<HashSet<IpNet>>,
    /// Addresses the round hands out, and how many of them are borrowed.
    new_addresses: u64,
    new_borrowed: u64,
    /// Addresses the round frees.
    released: u64,
}

impl Worker {
    pub(crate) fn new(node: &str, shared: Arc<Shared>) -> Self {
        Self {
            node: node.to_owned(),
            shared,
            affine: BTreeSet::new(),
            affine_loaded: false,
            seen_taken: HashSet::new(),
            pools: None,
        }
    }

    /// Serves requests until every sender is gone.
    pub(crate) async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.shared.options.max_batch.max(1) {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.process(batch).await;
        }
    }

    async fn process(&mut self, mut batch: Vec<Job>) {
        batch.retain(|job| !job.is_abandoned());
        if batch.is_empty() {
            return;
        }
        let max_attempts = self.shared.options.max_attempts.max(1);
        let mut known: HashMap<String, (Handle, Revision)> = HashMap::new();
        for job in &batch {
            if let Job::Release { handle, found, .. } = job {
                known.insert(handle.clone(), found.clone());
            }
        }
        let mut contended = String::new();
        for attempt in 1..=max_attempts {
            if attempt > 2 {
                backoff(attempt).await;
            }
            let mut round = Round::default();
            let mut outcomes = Vec::with_capacity(batch.len());
            for job in &batch {
                outcomes.push(match job {
                    Job::Allocate { request, .. } => {
                        Outcome::Allocated(self.plan(&mut round, request, &known).await)
                    }
                    Job::Release { handle, .. } => {
                        Outcome::Released(self.plan_release(&mut round, handle, &known).await)
                    }
                });
            }
            let lost = outcomes
                .iter()
                .filter_map(Outcome::error)
                .find(|e| e.is_conflict())
                .cloned();
            let committed = match lost {
                Some(e) => Err(e),
                None => self.commit(&mut round).await,
            };
            match committed {
                Ok(()) => return reply(batch, outcomes),
                Err(e) if e.is_conflict() => {
                    Stats::add(&self.shared.stats.conflicts, 1);
                    contended = e.conflict_key().unwrap_or_default();
                    if let Err(e) = self.refresh(&round, &mut known).await {
                        return reply_all(batch, e);
                    }
                }
                Err(e) => {
                    let outcomes = outcomes.into_iter().map(|o| o.fail(&e)).collect();
                    return reply(batch, outcomes);
                }
            }
        }
        reply_all(
            batch,
            IpamError::ConflictRetriesExhausted {
                attempts: max_attempts,
                key: contended,
            },
        );
    }

    /// Commits what the round staged (if anything) and updates the cache.
    async fn commit(&mut self, round: &mut Round) -> Result<()> {
        if round.changes.is_empty() {
            return Ok(());
        }
        give_back_emptied(
            self.shared.store.as_ref(),
            &self.shared.cache,
            &mut round.changes,
        )
        .await?;
        for (name, revision) in &round.pools_used {
            round
                .changes
                .compares
                .push(Compare::ModRevision(keys::pool(name), *revision));
        }
        let txn = round.changes.txn()?;
        let revision = self.shared.store.txn(txn).await?;
        round.changes.commit_to(&self.shared.cache, revision);
        let stats = &self.shared.stats;
        Stats::add(&stats.transactions, 1);
        Stats::add(&stats.allocated, round.new_addresses);
        Stats::add(&stats.borrows, round.new_borrowed);
        Stats::add(&stats.released, round.released);
        Ok(())
    }

    /// Plans freeing every address of `handle` into the round.
    async fn plan_release(
        &mut self,
        round: &mut Round,
        name: &str,
        known: &HashMap<String, (Handle, Revision)>,
    ) -> Result<Vec<IpAddr>> {
        let (mut handle, expect) = match round.changes.handles.get(name) {
            Some(w) => (w.handle.clone(), w.expect),
            None => match known.get(name) {
                Some((h, revision)) => (h.clone(), Expect::Revision(*revision)),
                // Gone since it was read: released by someone else.
                None => return Ok(Vec::new()),
            },
        };
        let mut released = Vec::new();
        for cidr in handle.blocks() {
            if !round.changes.blocks.contains_key(&cidr) {
                let cached = self
                    .shared
                    .cache
                    .get_or_read(self.shared.store.as_ref(), &cidr);
                let Some((block, revision)) = cached.await? else {
                    continue;
                };
                round.changes.stage_block(block, Expect::Revision(revision));
            }
            if let Some(staged) = round.changes.blocks.get_mut(&cidr) {
                released.extend(staged.block.release_handle(name));
            }
        }
        handle.addresses.clear();
        round.released += released.len() as u64;
        round
            .changes
            .handles
            .insert(name.to_owned(), HandleWrite { handle, expect });
        Ok(released)
    }

    /// After a lost compare: re-reads the documents the round relied on. Blocks and pools
    /// first; only when none of them moved can a handle be what changed, so handles are read
    /// only then.
    async fn refresh(
        &mut self,
        round: &Round,
        known: &mut HashMap<String, (Handle, Revision)>,
    ) -> Result<()> {
        let store = self.shared.store.as_ref();
        let mut moved = false;
        let reads = join_all(
            round
                .changes
                .blocks
                .keys()
                .map(|cidr| read_block(store, cidr)),
        )
        .await;
        for ((cidr, staged), read) in round.changes.blocks.iter().zip(reads) {
            match read? {
                Some((block, revision)) => {
                    moved |= staged.expect != Expect::Revision(revision);
                    if block.affinity() == Some(self.node.as_str()) {
                        self.affine.insert(*cidr);
                    } else {
                        self.affine.remove(cidr);
                    }
                    self.shared.cache.replace(block, revision);
                }
                None => {
                    moved |= staged.expect != Expect::Absent;
                    self.shared.cache.remove(cidr);
                    self.affine.remove(cidr);
                }
            }
        }
        let pools = read_pools(store).await?;
        moved |= round.pools_used.iter().any(|(name, revision)| {
            pools.iter().find(|p| &p.name == name).map(|p| p.revision) != Some(*revision)
        });
        self.pools = Some(pools);
        if !moved {
            let names: Vec<&String> = round.changes.handles.keys().collect();
            let reads = join_all(names.iter().map(|n| {
                let key = keys::handle(n);
                async move { store.get_json::<Handle>(&key).await }
            }))
            .await;
            for (name, read) in names.into_iter().zip(reads) {
                match read? {
                    Some(v) => {
                        known.insert(name.clone(), (v.value, v.mod_revision));
                    }
                    None => {
                        known.remove(name);
                    }
                }
            }
        }
        Ok(())
    }

    /// Plans one request into the round. On failure nothing of it stays staged.
    async fn plan(
        &mut self,
        round: &mut Round,
        request: &AllocateRequest,
        known: &HashMap<String, (Handle, Revision)>,
    ) -> Result<Allocation> {
        let (mut handle, expect) = match round.changes.handles.get(&request.handle) {
            Some(w) => (w.handle.clone(), w.expect),
            None => match known.get(&request.handle) {
                Some((h, revision)) => (h.clone(), Expect::Revision(*revision)),
                None => (Handle::new(&self.node), Expect::Absent),
            },
        };
        let mut added = Vec::new();
        let mut addresses = Vec::new();
        let planned = self
            .plan_addresses(round, request, &handle, &mut added, &mut addresses)
            .await;
        if let Err(e) = planned {
            for a in &added {
                if let Some(staged) = round.changes.blocks.get_mut(&a.block) {
                    staged.block.release(a.address);
                }
            }
            return Err(e);
        }
        if !added.is_empty() {
            round.new_addresses += added.len() as u64;
            round.new_borrowed += addresses
                .iter()
                .filter(|a| a.borrowed && added.iter().any(|h| h.address == a.address))
                .count() as u64;
            handle.addresses.extend(added);
            round
                .changes
                .handles
                .insert(request.handle.clone(), HandleWrite { handle, expect });
        }
        Ok(Allocation {
            handle: request.handle.clone(),
            addresses,
        })
    }

    async fn plan_addresses(
        &mut self,
        round: &mut Round,
        request: &AllocateRequest,
        handle: &Handle,
        added: &mut Vec<HandleAddress>,
        out: &mut Vec<AllocatedAddress>,
    ) -> Result<()> {
        for &address in &request.addresses {
            let held = handle.addresses.iter().find(|a| a.address == address);
            let got = match held {
                Some(held) => self.describe(round, held).await?,
                None => self.plan_static(round, request, address).await?,
            };
            if held.is_none() {
                added.push(HandleAddress {
                    address: got.address,
                    block: got.block,
                });
            }
            out.push(got);
        }
        for family in request.automatic_families() {
            let held = handle
                .addresses
                .iter()
                .find(|a| Family::of_addr(&a.address) == family);
            let got = match held {
                Some(held) => self.describe(round, held).await?,
                None => self.plan_automatic(round, request, family).await?,
            };
            if held.is_none() {
                added.push(HandleAddress {
                    address: got.address,
                    block: got.block,
                });
            }
            out.push(got);
        }
        Ok(())
    }

    /// An address the handle holds already, as an allocation result.
    async fn describe(
        &mut self,
        round: &mut Round,
        held: &HandleAddress,
    ) -> Result<AllocatedAddress> {
        let pool = self
            .pools(round, false)
            .await?
            .iter()
            .find(|p| p.pool.cidr.contains(&held.address))
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let affinity = match self.shared.cache.get(&held.block) {
            Some((b, _)) => b.affinity().map(str::to_owned),
            None => read_block(self.shared.store.as_ref(), &held.block)
                .await?
                .and_then(|(b, _)| b.affinity().map(str::to_owned)),
        };
        Ok(AllocatedAddress {
            address: held.address,
            block: held.block,
            pool,
            borrowed: affinity.as_deref() != Some(self.node.as_str()),
        })
    }

    /// A specific address: from its block, claiming the block first when nobody has.
    async fn plan_static(
        &mut self,
        round: &mut Round,
        request: &AllocateRequest,
        address: IpAddr,
    ) -> Result<AllocatedAddress> {
        let pools = self.pools(round, false).await?;
        let pool = match pool_of(pools, address) {
            Some(p) => p.clone(),
            None => pool_of(self.pools(round, true).await?, address)
                .cloned()
                .ok_or(IpamError::AddressNotInPool(address))?,
        };
        if !request.pools.is_empty() && !request.pools.contains(&pool.name) {
            return Err(IpamError::InvalidRequest(format!(
                "{address} is in pool {}, which the request does not name",
                pool.name
            )));
        }
        if pool.pool.disabled {
            return Err(IpamError::PoolDisabled(pool.name));
        }
        let cidr = IpNet::new(address, pool.pool.block_size)
            .map(|n| n.trunc())
            .map_err(|e| IpamError::InvalidData {
                key: keys::pool(&pool.name),
                reason: e.to_string(),
            })?;
        if !round.changes.blocks.contains_key(&cidr) {
            let store = self.shared.store.as_ref();
            let (block, revision) = match read_block(store, &cidr).await? {
                Some(found) => found,
                None => match claim::try_claim(store, &self.node, &pool, cidr).await? {
                    Claim::Won(block, revision) => {
                        Stats::add(&self.shared.stats.claims, 1);
                        self.affine.insert(cidr);
                        round.blocks = None;
                        round.taken = None;
                        (block, revision)
                    }
                    Claim::Taken(Some(found)) => found,
                    Claim::Taken(None) => {
                        return Err(StoreError::Conflict {
                            key: keys::block(&cidr),
                        }
                        .into());
                    }
                },
            };
            self.shared.cache.put(block.clone(), revision);
            round.changes.stage_block(block, Expect::Revision(revision));
        }
        let staged = round.changes.blocks.get_mut(&cidr).ok_or_else(|| {
            IpamError::from(StoreError::Conflict {
                key: keys::block(&cidr),
            })
        })?;
        let borrowed = staged.block.affinity() != Some(self.node.as_str());
        let assignment = Assignment {
            handle: request.handle.clone(),
            borrowed_by: borrowed.then(|| self.node.clone()),
        };
        staged
            .block
            .assign(address, assignment)
            .map_err(|e| match e {
                BlockError::Taken { address, handle } => {
                    IpamError::AlreadyAllocated { address, handle }
                }
                other => IpamError::InvalidData {
                    key: keys::block(&cidr),
                    reason: other.to_string(),
                },
            })?;
        round.pools_used.insert(pool.name.clone(), pool.revision);
        Ok(AllocatedAddress {
            address,
            block: cidr,
            pool: pool.name,
            borrowed,
        })
    }

    /// An address of `family`: affine blocks, then a new block, then borrowing.
    async fn plan_automatic(
        &mut self,
        round: &mut Round,
        request: &AllocateRequest,
        family: Family,
    ) -> Result<AllocatedAddress> {
        let pools = self.candidate_pools(round, request, family).await?;
        if !self.affine_loaded {
            self.load_affine().await?;
            round.affinity_refreshed = true;
        }
        if let Some(got) = self.take_affine(round, request, &pools) {
            return Ok(got);
        }
        if !round.affinity_refreshed {
            // Another process may have claimed a block for this node: look before claiming.
            round.affinity_refreshed = true;
            self.load_affine().await?;
            if let Some(got) = self.take_affine(round, request, &pools) {
                return Ok(got);
            }
        }
        let store = self.shared.store.clone();
        let store = store.as_ref();
        let config = match &round.config {
            Some(c) => c.clone(),
            None => {
                let c = store
                    .get_json::<ClusterConfig>(keys::CLUSTER_CONFIG)
                    .await?
                    .map(|v| v.value)
                    .unwrap_or_default();
                round.config = Some(c.clone());
                c
            }
        };
        let limit = request
            .max_blocks_per_node
            .unwrap_or(config.max_blocks_per_node);
        let held = |affine: &BTreeSet<IpNet>| {
            affine
                .iter()
                .filter(|b| Family::of_net(b) == family)
                .count()
        };
        let may_claim = |affine: &BTreeSet<IpNet>| limit == 0 || held(affine) < limit as usize;
        for pool in &pools {
            while may_claim(&self.affine) {
                // Guess first from the blocks this allocator has seen; list them all only
                // when the guesses lose.
                let listed = round.taken.is_some();
                let attempts = if listed { LISTED_ATTEMPTS } else { GUESSES };
                let taken = round.taken.as_mut().unwrap_or(&mut self.seen_taken);
                let (block, revision) = match claim::claim(store, &self.node, pool, taken, attempts)
                    .await?
                {
                    Some(Claim::Won(block, revision)) => {
                        Stats::add(&self.shared.stats.claims, 1);
                        (block, revision)
                    }
                    // Another allocator of this node claimed it first: ours as well.
                    Some(Claim::Taken(Some(found))) => found,
                    _ if listed => break,
                    _ => {
                        let blocks = all_blocks(store, round).await?;
                        let all: HashSet<IpNet> = blocks.iter().map(|(b, _)| b.cidr()).collect();
                        // What was seen may have been given back since: start afresh.
                        self.seen_taken.clone_from(&all);
                        round.taken = Some(all);
                        continue;
                    }
                };
                taken.insert(block.cidr());
                self.seen_taken.insert(block.cidr());
                self.affine.insert(block.cidr());
                self.shared.cache.replace(block, revision);
                round.blocks = None;
                if let Some(got) = self.take_affine(round, request, &pools) {
                    return Ok(got);
                }
            }
        }
        let may_claim = may_claim(&self.affine);
        if config.strict_affinity {
            let reason = if may_claim {
                "every block of the pool is claimed and strict affinity forbids borrowing"
                    .to_owned()
            } else {
                format!(
                    "the node holds its limit of {limit} blocks and strict affinity forbids borrowing"
                )
            };
            return Err(IpamError::PoolExhaustedForNode {
                node: self.node.clone(),
                family,
                reason,
            });
        }
        if let Some(got) = self.borrow(round, request, &pools).await? {
            return Ok(got);
        }
        Err(IpamError::Exhausted {
            family,
            pools: pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The enabled pools of `family` the request may use.
    async fn candidate_pools(
        &mut self,
        round: &mut Round,
        request: &AllocateRequest,
        family: Family,
    ) -> Result<Vec<NamedPool>> {
        let mut fresh = false;
        loop {
            let pools = self.pools(round, fresh).await?;
            let unknown = request
                .pools
                .iter()
                .find(|name| !pools.iter().any(|p| &p.name == *name));
            let of_family: Vec<&NamedPool> = pools
                .iter()
                .filter(|p| Family::of_net(&p.pool.cidr) == family)
                .filter(|p| request.pools.is_empty() || request.pools.contains(&p.name))
                .collect();
            let enabled: Vec<NamedPool> = of_family
                .iter()
                .filter(|p| !p.pool.disabled)
                .map(|p| (*p).clone())
                .collect();
            if unknown.is_none() && !enabled.is_empty() {
                return Ok(enabled);
            }
            if !fresh && !round.pools_refreshed {
                // The cached list may predate a pool added since: read again once.
                fresh = true;
                continue;
            }
            if let Some(name) = unknown {
                return Err(IpamError::UnknownPool(name.clone()));
            }
            if let (false, Some(p)) = (request.pools.is_empty(), of_family.first()) {
                return Err(IpamError::PoolDisabled(p.name.clone()));
            }
            return Err(IpamError::NoPools { family });
        }
    }

    /// The pools, read when not cached or when `fresh` is asked for (once per round).
    async fn pools(&mut self, round: &mut Round, fresh: bool) -> Result<&Vec<NamedPool>> {
        if self.pools.is_none() || (fresh && !round.pools_refreshed) {
            round.pools_refreshed = true;
            self.pools = Some(read_pools(self.shared.store.as_ref()).await?);
        }
        Ok(self.pools.get_or_insert_with(Vec::new))
    }

    /// Reads the node's confirmed affinities and their blocks into the cache.
    async fn load_affine(&mut self) -> Result<()> {
        let store = self.shared.store.as_ref();
        let listing = store.list(&keys::node_affinities(&self.node)).await?;
        let mut affine = BTreeSet::new();
        let mut unknown = Vec::new();
        for kv in &listing.items {
            let confirmed = wren_store::json::decode::<Affinity>(&kv.key, &kv.value)
                .is_ok_and(|a| a.state == AffinityState::Confirmed);
            let Some((_, cidr)) = affinity::parse_key(&kv.key) else {
                continue;
            };
            if !confirmed {
                continue;
            }
            // A cached copy may be stale, but every write compares its revision: only
            // blocks never seen need reading.
            match self.shared.cache.affinity_of(&cidr) {
                Some(Some(node)) if node == self.node => {
                    affine.insert(cidr);
                }
                Some(_) => {}
                None => unknown.push(cidr),
            }
        }
        let reads = join_all(unknown.iter().map(|c| read_block(store, c))).await;
        for read in reads {
            if let Some((block, revision)) = read?
                && block.affinity() == Some(self.node.as_str())
            {
                affine.insert(block.cidr());
                self.shared.cache.put(block, revision);
            }
        }
        self.seen_taken.extend(affine.iter().copied());
        self.affine = affine;
        self.affine_loaded = true;
        Ok(())
    }

    /// The next free address in the node's blocks of the given pools, lowest block first.
    fn take_affine(
        &mut self,
        round: &mut Round,
        request: &AllocateRequest,
        pools: &[NamedPool],
    ) -> Option<AllocatedAddress> {
        let node = self.node.as_str();
        // One pass under one lock of the cache: the first block with room (a staged copy
        // counts over the cached one), and the blocks that are no longer this node's.
        let (pick, gone) = self.shared.cache.with(|cached| {
            let mut gone = Vec::new();
            for cidr in &self.affine {
                let Some(pool) = pools.iter().find(|p| p.pool.cidr.contains(cidr)) else {
                    continue;
                };
                let block = match round.changes.blocks.get(cidr) {
                    Some(staged) => Some(&staged.block),
                    None => cached.get(cidr).map(|(b, _)| b),
                };
                match block {
                    Some(b) if b.affinity() == Some(node) => {
                        if b.free() > 0 {
                            return (Some((*cidr, pool)), gone);
                        }
                    }
                    _ => gone.push(*cidr),
                }
            }
            (None, gone)
        });
        for cidr in gone {
            self.affine.remove(&cidr);
        }
        let (cidr, pool) = pick?;
        if !round.changes.blocks.contains_key(&cidr) {
            let (block, revision) = self.shared.cache.get(&cidr)?;
            round.changes.stage_block(block, Expect::Revision(revision));
        }
        let staged = round.changes.blocks.get_mut(&cidr)?;
        let address = staged.block.assign_next(Assignment {
            handle: request.handle.clone(),
            borrowed_by: None,
        })?;
        round.pools_used.insert(pool.name.clone(), pool.revision);
        Some(AllocatedAddress {
            address,
            block: cidr,
            pool: pool.name.clone(),
            borrowed: false,
        })
    }

    /// A free address from another node's block (the one with most room), recorded as
    /// borrowed by this node.
    async fn borrow(
        &mut self,
        round: &mut Round,
        request: &AllocateRequest,
        pools: &[NamedPool],
    ) -> Result<Option<AllocatedAddress>> {
        let node = self.node.clone();
        let blocks = all_blocks(self.shared.store.as_ref(), round).await?.clone();
        let free_of = |round: &Round, block: &Block| match round.changes.blocks.get(&block.cidr()) {
            Some(staged) => staged.block.free(),
            None => block.free(),
        };
        let best = blocks
            .iter()
            .filter(|(b, _)| b.affinity() != Some(node.as_str()))
            .filter_map(|(b, r)| {
                let pool = pools.iter().find(|p| p.pool.cidr.contains(&b.cidr()))?;
                let free = free_of(round, b);
                (free > 0).then_some((free, b, *r, pool))
            })
            .max_by_key(|(free, b, _, _)| (*free, std::cmp::Reverse(b.cidr())));
        let Some((_, block, revision, pool)) = best else {
            return Ok(None);
        };
        let staged = round
            .changes
            .stage_block(block.clone(), Expect::Revision(revision));
        let assignment = Assignment {
            handle: request.handle.clone(),
            borrowed_by: Some(node),
        };
        let Some(address) = staged.block.assign_next(assignment) else {
            return Ok(None);
        };
        round.pools_used.insert(pool.name.clone(), pool.revision);
        Ok(Some(AllocatedAddress {
            address,
            block: block.cidr(),
            pool: pool.name.clone(),
            borrowed: true,
        }))
    }
}

/// Every block, read once per round.
async fn all_blocks<'r>(
    store: &dyn Store,
    round: &'r mut Round,
) -> Result<&'r Vec<(Block, Revision)>> {
    if round.blocks.is_none() {
        let blocks = read_blocks(store)
            .await?
            .into_iter()
            .map(|(_, b, r)| (b, r))
            .collect();
        round.blocks = Some(blocks);
    }
    Ok(round.blocks.get_or_insert_with(Vec::new))
}

fn reply(batch: Vec<Job>, outcomes: Vec<Outcome>) {
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        // The caller may have gone away; its allocation stays held by its handle.
        match (job, outcome) {
            (Job::Allocate { reply, .. }, Outcome::Allocated(r)) => {
                let _ = reply.send(r);
            }
            (Job::Release { reply, .. }, Outcome::Released(r)) => {
                let _ = reply.send(r);
            }
            (job, _) => job.answer_error(IpamError::InvalidRequest("mismatched reply".into())),
        }
    }
}

fn reply_all(batch: Vec<Job>, error: IpamError) {
    for job in batch {
        job.answer_error(error.clone());
    }
}

impl Job {
    fn answer_error(self, error: IpamError) {
        match self {
            Job::Allocate { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Release { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// A short random pause, growing with the attempt, so two writers that keep colliding on
/// one block fall out of step.
async fn backoff(attempt: u32) {
    let ceiling_ms = 1u64 << attempt.min(6);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    tokio::time::sleep(Duration::from_millis(random % ceiling_ms + 1)).await;
}
