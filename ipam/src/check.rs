//! The leak check: addresses whose workload is gone, blocks and affinities of nodes that no
//! longer exist, handle documents that hold nothing. [`Ipam::check`] only reads;
//! [`Ipam::release_from_check`] frees what a report lists, re-checking each item first and
//! guarding each write with the revisions it re-read, so a workload or node that came back
//! in between keeps its addresses.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use wren_model::{Workload, keys};
use wren_store::json::{self, JsonStore};
use wren_store::{Compare, Revision, Store};

use crate::affinity::{self, Affinity, AffinityState};
use crate::block::Assignment;
use crate::changeset::{Changeset, Expect};
use crate::error::{IpamError, Result};
use crate::handle::{Handle, now_secs};
use crate::{Ipam, read_block, read_blocks};

/// Prefix of the handles of node tunnel addresses; such a handle lives as long as its node.
const TUNNEL_HANDLE_PREFIX: &str = "vxlan-tunnel-addr-";

/// How the check judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Addresses allocated less than this long ago are not judged: their workload may not be
    /// recorded yet.
    pub grace: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(5 * 60),
        }
    }
}

/// Why an address counts as leaked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakReason {
    /// No workload record carries its handle.
    NoWorkload,
    /// Its node's workloads are gone with the node.
    NodeGone,
    /// No handle document names it.
    NoHandle,
}

/// An allocated address nobody uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakedAddress {
    /// The address.
    pub address: IpAddr,
    /// Its block.
    pub block: IpNet,
    /// The handle holding it.
    pub handle: String,
    /// The node it was allocated for (the borrower, or the block's node).
    pub node: Option<String>,
    /// Why it counts as leaked.
    pub reason: LeakReason,
}

/// A block affine to a node that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadNodeBlock {
    /// The block.
    pub block: IpNet,
    /// The node that is gone.
    pub node: String,
    /// Addresses still allocated in it.
    pub used: u32,
}

/// Why an affinity record claims nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// Its node no longer exists.
    NodeGone,
    /// Its block does not exist or is affine to another node.
    NoBlock,
}

/// An affinity record that claims nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleAffinity {
    /// The node it names.
    pub node: String,
    /// The block it names.
    pub block: IpNet,
    /// Its state.
    pub state: AffinityState,
    /// Why it is stale.
    pub reason: StaleReason,
}

/// A handle document none of whose addresses is held by it in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DanglingHandle {
    /// The handle.
    pub handle: String,
    /// Mod revision of its document when checked.
    pub revision: Revision,
}

/// What the leak check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Store revision the check read at (its first listing).
    pub revision: Revision,
    /// Allocated addresses in all.
    pub allocated: usize,
    /// Addresses without a live workload.
    pub leaked: Vec<LeakedAddress>,
    /// Addresses without a workload yet, too young to judge.
    pub too_young: usize,
    /// Blocks of nodes that no longer exist.
    pub dead_node_blocks: Vec<DeadNodeBlock>,
    /// Affinity records that claim nothing.
    pub stale_affinities: Vec<StaleAffinity>,
    /// Handle documents that hold nothing.
    pub dangling_handles: Vec<DanglingHandle>,
}

impl CheckReport {
    /// True when the check found nothing to free.
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty()
            && self.dead_node_blocks.is_empty()
            && self.stale_affinities.is_empty()
            && self.dangling_handles.is_empty()
    }
}

/// What [`Ipam::release_from_check`] freed, and what it left because it no longer qualified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseSummary {
    /// Addresses freed.
    pub addresses: Vec<IpAddr>,
    /// Blocks deleted (empty blocks of nodes that are gone).
    pub blocks_released: Vec<IpNet>,
    /// Blocks that lost the affinity of a node that is gone but still hold addresses.
    pub blocks_unaffined: Vec<IpNet>,
    /// Affinity records removed.
    pub affinities_removed: usize,
    /// Handle documents removed.
    pub handles_removed: usize,
    /// Items left alone, each with the reason.
    pub skipped: Vec<String>,
}

/// Which nodes exist and which handles have a live workload.
struct Liveness {
    nodes: HashSet<String>,
    handles: HashSet<String>,
}

impl Liveness {
    async fn read(store: &dyn Store) -> Result<(Self, Revision)> {
        let nodes = store.list(keys::NODES).await?;
        let revision = nodes.revision;
        let nodes: HashSet<String> = nodes
            .items
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(keys::NODES).map(str::to_owned))
            .collect();
        let mut handles = HashSet::new();
        for kv in store.list(keys::WORKLOADS).await?.items {
            // A workload on a node that is gone is gone with it.
            let on_live_node = kv
                .key
                .strip_prefix(keys::WORKLOADS)
                .and_then(|rest| rest.split('/').next())
                .is_some_and(|node| nodes.contains(node));
            if !on_live_node {
                continue;
            }
            match json::decode::<Workload>(&kv.key, &kv.value) {
                Ok(w) => {
                    handles.insert(w.handle);
                }
                // An unreadable record still marks its pod as present: never free on doubt.
                Err(e) => return Err(IpamError::from(e)),
            }
        }
        Ok((Self { nodes, handles }, revision))
    }

    /// Why `assignment` in a block affine to `block_node` is leaked, or `None` if it is live.
    fn judge(&self, assignment: &Assignment, block_node: Option<&str>) -> Option<LeakReason> {
        if let Some(node) = assignment.handle.strip_prefix(TUNNEL_HANDLE_PREFIX) {
            return (!self.nodes.contains(node)).then_some(LeakReason::NodeGone);
        }
        if self.handles.contains(&assignment.handle) {
            return None;
        }
        let holder = assignment.borrowed_by.as_deref().or(block_node);
        Some(match holder {
            Some(node) if !self.nodes.contains(node) => LeakReason::NodeGone,
            _ => LeakReason::NoWorkload,
        })
    }
}

impl Ipam {
    /// Finds leaked addresses, blocks and affinities of nodes that are gone, and handle
    /// documents that hold nothing. Reads only.
    pub async fn check(&self, options: CheckOptions) -> Result<CheckReport> {
        let store = self.store();
        let (live, revision) = Liveness::read(store).await?;
        let handles: BTreeMap<String, (Handle, Revision)> = store
            .list_json::<Handle>(keys::HANDLES)
            .await?
            .items
            .into_iter()
            .map(|v| {
                let name = v
                    .key
                    .strip_prefix(keys::HANDLES)
                    .unwrap_or(&v.key)
                    .to_owned();
                (name, (v.value, v.mod_revision))
            })
            .collect();
        let blocks = read_blocks(store).await?;
        let now = now_secs();
        let mut report = CheckReport {
            revision,
            ..CheckReport::default()
        };
        let mut held: HashSet<(String, IpAddr)> = HashSet::new();
        for (_, block, _) in &blocks {
            if let Some(node) = block.affinity().filter(|n| !live.nodes.contains(*n)) {
                report.dead_node_blocks.push(DeadNodeBlock {
                    block: block.cidr(),
                    node: node.to_owned(),
                    used: block.used(),
                });
            }
            for (address, assignment) in block.assignments() {
                report.allocated += 1;
                held.insert((assignment.handle.clone(), address));
                let Some(mut reason) = live.judge(assignment, block.affinity()) else {
                    continue;
                };
                match handles.get(&assignment.handle) {
                    None => reason = LeakReason::NoHandle,
                    // Its workload may not be recorded yet. (On a node that is gone none
                    // will be.)
                    Some((h, _))
                        if reason == LeakReason::NoWorkload
                            && now.saturating_sub(h.created_at) < options.grace.as_secs() =>
                    {
                        report.too_young += 1;
                        continue;
                    }
                    Some(_) => {}
                }
                report.leaked.push(LeakedAddress {
                    address,
                    block: block.cidr(),
                    handle: assignment.handle.clone(),
                    node: assignment
                        .borrowed_by
                        .clone()
                        .or_else(|| block.affinity().map(str::to_owned)),
                    reason,
                });
            }
        }
        for (name, (handle, handle_revision)) in &handles {
            let holds_any = handle
                .addresses
                .iter()
                .any(|a| held.contains(&(name.clone(), a.address)));
            let old_enough = now.saturating_sub(handle.created_at) >= options.grace.as_secs();
            if !holds_any && old_enough {
                report.dangling_handles.push(DanglingHandle {
                    handle: name.clone(),
                    revision: *handle_revision,
                });
            }
        }
        let affine: HashSet<(String, IpNet)> = blocks
            .iter()
            .filter_map(|(_, b, _)| b.affinity().map(|n| (n.to_owned(), b.cidr())))
            .collect();
        for kv in store.list(keys::AFFINITY).await?.items {
            let Some((node, cidr)) = affinity::parse_key(&kv.key) else {
                continue;
            };
            let state = json::decode::<Affinity>(&kv.key, &kv.value)
                .map(|a| a.state)
                .unwrap_or(AffinityState::Pending);
            let reason = if !live.nodes.contains(node) {
                StaleReason::NodeGone
            } else if !affine.contains(&(node.to_owned(), cidr)) {
                StaleReason::NoBlock
            } else {
                continue;
            };
            report.stale_affinities.push(StaleAffinity {
                node: node.to_owned(),
                block: cidr,
                state,
                reason,
            });
        }
        Ok(report)
    }

    /// Frees what `report` lists, re-checking each item against the store first: an address
    /// whose workload (or node) has come back, or that changed hands, is left alone, and so is
    /// a block or affinity of a node that has come back.
    pub async fn release_from_check(&self, report: &CheckReport) -> Result<ReleaseSummary> {
        let mut summary = ReleaseSummary::default();
        let (live, _) = Liveness::read(self.store()).await?;
        for leak in &report.leaked {
            let still_leaked = |held: &Assignment| {
                held.handle == leak.handle && live.judge(held, leak.node.as_deref()).is_some()
            };
            match self.release_address_if(leak.address, &still_leaked).await {
                Ok(Some(_)) => summary.addresses.push(leak.address),
                Ok(None) => summary.skipped.push(format!(
                    "{}: no longer leaked (its holder is live or changed)",
                    leak.address
                )),
                Err(IpamError::NotAllocated(a)) => {
                    summary.skipped.push(format!("{a}: already released"))
                }
                Err(e) => return Err(e),
            }
        }
        for dead in &report.dead_node_blocks {
            self.release_dead_node_block(dead, &mut summary).await?;
        }
        for stale in &report.stale_affinities {
            self.remove_stale_affinity(stale, &mut summary).await?;
        }
        for dangling in &report.dangling_handles {
            let key = keys::handle(&dangling.handle);
            match self.store().get_json::<Handle>(&key).await? {
                Some(v) if v.mod_revision == dangling.revision => {
                    match self.store().delete(&key, Some(v.mod_revision)).await {
                        Ok(_) => summary.handles_removed += 1,
                        Err(e) if e.is_conflict() => summary
                            .skipped
                            .push(format!("handle {}: changed meanwhile", dangling.handle)),
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(_) => summary
                    .skipped
                    .push(format!("handle {}: changed meanwhile", dangling.handle)),
                None => {}
            }
        }
        Ok(summary)
    }

    async fn release_dead_node_block(
        &self,
        dead: &DeadNodeBlock,
        summary: &mut ReleaseSummary,
    ) -> Result<()> {
        let skip = |why: &str| format!("block {} of {}: {why}", dead.block, dead.node);
        let node_key = keys::node(&dead.node);
        let Some((block, revision)) = read_block(self.store(), &dead.block).await? else {
            // Freeing its last leaked address above gave it back already.
            summary.blocks_released.push(dead.block);
            return Ok(());
        };
        if block.affinity() != Some(dead.node.as_str()) {
            summary.skipped.push(skip("no longer affine to that node"));
            return Ok(());
        }
        let empty = block.is_empty();
        let mut changes = Changeset::default();
        changes.compares.push(Compare::Absent(node_key));
        let staged = changes.stage_block(block, Expect::Revision(revision));
        if empty {
            staged.delete = true;
        } else {
            staged.block.set_affinity(None);
            changes
                .deletes
                .push(keys::affinity(&dead.node, &dead.block));
        }
        match self.commit(&mut changes).await {
            Ok(_) if empty => summary.blocks_released.push(dead.block),
            Ok(_) => summary.blocks_unaffined.push(dead.block),
            Err(e) if e.is_conflict() => summary
                .skipped
                .push(skip("the node came back or the block changed meanwhile")),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    async fn remove_stale_affinity(
        &self,
        stale: &StaleAffinity,
        summary: &mut ReleaseSummary,
    ) -> Result<()> {
        let key = keys::affinity(&stale.node, &stale.block);
        let Some(kv) = self.store().get(&key).await? else {
            return Ok(());
        };
        let node_key = keys::node(&stale.node);
        let block = read_block(self.store(), &stale.block).await?;
        let mut txn =
            wren_store::Txn::new().when(Compare::ModRevision(key.clone(), kv.mod_revision));
        match stale.reason {
            StaleReason::NodeGone => txn = txn.when(Compare::Absent(node_key)),
            StaleReason::NoBlock => {
                let block_key = keys::block(&stale.block);
                match &block {
                    Some((b, _)) if b.affinity() == Some(stale.node.as_str()) => {
                        summary.skipped.push(format!(
                            "affinity {} {}: its block is now affine to it",
                            stale.node, stale.block
                        ));
                        return Ok(());
                    }
                    Some((_, r)) => txn = txn.when(Compare::ModRevision(block_key, *r)),
                    None => txn = txn.when(Compare::Absent(block_key)),
                }
            }
        }
        match self.store().txn(txn.delete(key)).await {
            Ok(_) => summary.affinities_removed += 1,
            Err(e) if e.is_conflict() => summary.skipped.push(format!(
                "affinity {} {}: changed meanwhile",
                stale.node, stale.block
            )),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}
