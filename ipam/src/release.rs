//! Releasing addresses (by handle, by address) and the blocks of a node that is gone.
//!
//! A block left empty by a release is given back to its pool when its node no longer exists,
//! or when the node has another block with room (as Calico does); a node's last block with
//! room is kept so the next pod does not pay for a claim.

use std::net::IpAddr;

use ipnet::IpNet;
use tokio::sync::oneshot;
use wren_model::{keys, vxlan_tunnel_handle};
use wren_store::json::JsonStore;
use wren_store::{Compare, Revision, Store};

use crate::affinity;
use crate::block::Assignment;
use crate::cache::BlockCache;
use crate::changeset::{Changeset, Expect, HandleWrite};
use crate::error::{IpamError, Result};
use crate::handle::Handle;
use crate::pool::{pool_of, read_pools};
use crate::worker::Job;
use crate::{Ipam, Stats, read_block, read_blocks};

/// An address that was freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasedAddress {
    /// The address.
    pub address: IpAddr,
    /// The handle that held it.
    pub handle: String,
    /// Its block.
    pub block: IpNet,
}

/// What [`Ipam::release_node_blocks`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRelease {
    /// Empty blocks given back to their pool.
    pub released_blocks: Vec<IpNet>,
    /// Blocks that still hold addresses: no longer affine to the node, deleted once empty.
    pub kept_blocks: Vec<(IpNet, u32)>,
    /// Affinity records removed that had no block.
    pub stale_affinities: usize,
    /// The node's tunnel addresses that were freed.
    pub tunnel_addresses: Vec<IpAddr>,
}

/// What became of one block of a node being removed.
enum NodeBlock {
    Released,
    Kept(u32),
    StaleAffinity,
    Gone,
}

impl Ipam {
    /// Frees every address held by `handle`. A handle that holds nothing is not an error (a
    /// CNI DEL may come twice); the freed addresses are returned.
    ///
    /// The release runs in the allocator of the handle's node, batched with that node's other
    /// requests, so a burst of pod deletions on one node costs one transaction per batch
    /// instead of one conflict-prone write each.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        let Some(found) = self
            .store()
            .get_json::<Handle>(&keys::handle(handle))
            .await?
        else {
            return Ok(Vec::new());
        };
        let node = found.value.node.clone();
        let (reply, answer) = oneshot::channel();
        let job = Job::Release {
            handle: handle.to_owned(),
            found: (found.value, found.mod_revision),
            reply,
        };
        self.submit(&node, job).await?;
        answer
            .await
            .map_err(|_| IpamError::AllocatorStopped(node))?
    }

    /// Frees one address, whoever holds it. An address that is not allocated is
    /// [`IpamError::NotAllocated`]; one outside every pool and block is
    /// [`IpamError::AddressNotInPool`].
    pub async fn release_address(&self, address: IpAddr) -> Result<ReleasedAddress> {
        self.release_address_if(address, &|_| true)
            .await?
            .ok_or(IpamError::NotAllocated(address))
    }

    /// Frees `address` if its holder passes `keep_going`; `None` when it does not.
    pub(crate) async fn release_address_if(
        &self,
        address: IpAddr,
        keep_going: &(dyn Fn(&Assignment) -> bool + Sync),
    ) -> Result<Option<ReleasedAddress>> {
        let cidr = self.block_containing(address).await?;
        let attempts = self.shared().options.max_attempts.max(1);
        for _ in 0..attempts {
            // Read afresh: "not allocated" must not come from a stale copy.
            let Some((block, revision)) = read_block(self.store(), &cidr).await? else {
                return Err(IpamError::NotAllocated(address));
            };
            let mut changes = Changeset::default();
            let staged = changes.stage_block(block, Expect::Revision(revision));
            match staged.block.assignment(address) {
                None => return Err(IpamError::NotAllocated(address)),
                Some(held) if !keep_going(held) => return Ok(None),
                Some(_) => {}
            }
            let Some(held) = staged.block.release(address) else {
                return Err(IpamError::NotAllocated(address));
            };
            let handle_key = keys::handle(&held.handle);
            if let Some(found) = self.store().get_json::<Handle>(&handle_key).await? {
                let mut handle = found.value;
                handle.remove(address);
                changes.handles.insert(
                    held.handle.clone(),
                    HandleWrite {
                        handle,
                        expect: Expect::Revision(found.mod_revision),
                    },
                );
            }
            match self.commit_release(&mut changes).await {
                Ok(_) => {
                    Stats::add(&self.shared().stats.released, 1);
                    return Ok(Some(ReleasedAddress {
                        address,
                        handle: held.handle,
                        block: cidr,
                    }));
                }
                Err(e) if e.is_conflict() => changes.forget(&self.shared().cache),
                Err(e) => return Err(e),
            }
        }
        Err(IpamError::ConflictRetriesExhausted {
            attempts,
            key: keys::block(&cidr),
        })
    }

    /// Gives back every block of `node` (for `wren node rm`): empty blocks are deleted with
    /// their affinity; blocks that still hold addresses lose their affinity and are deleted
    /// when their last address is released. The node's tunnel address is freed too.
    pub async fn release_node_blocks(&self, node: &str) -> Result<NodeRelease> {
        let mut cidrs: Vec<IpNet> = read_blocks(self.store())
            .await?
            .into_iter()
            .filter(|(_, b, _)| b.affinity() == Some(node))
            .map(|(_, b, _)| b.cidr())
            .collect();
        let existing = cidrs.clone();
        let affinities = self.store().list(&keys::node_affinities(node)).await?;
        for kv in &affinities.items {
            if let Some((_, cidr)) = affinity::parse_key(&kv.key)
                && !cidrs.contains(&cidr)
            {
                cidrs.push(cidr);
            }
        }
        let mut report = NodeRelease {
            tunnel_addresses: self.release_handle(&vxlan_tunnel_handle(node)).await?,
            ..NodeRelease::default()
        };
        for cidr in cidrs {
            match self.release_node_block(node, cidr).await? {
                NodeBlock::Released => report.released_blocks.push(cidr),
                NodeBlock::Kept(used) => report.kept_blocks.push((cidr, used)),
                NodeBlock::StaleAffinity => report.stale_affinities += 1,
                // Freeing the tunnel address emptied it, and that gave it back.
                NodeBlock::Gone if existing.contains(&cidr) => report.released_blocks.push(cidr),
                NodeBlock::Gone => {}
            }
        }
        report.released_blocks.sort();
        Ok(report)
    }

    async fn release_node_block(&self, node: &str, cidr: IpNet) -> Result<NodeBlock> {
        let affinity_key = keys::affinity(node, &cidr);
        let attempts = self.shared().options.max_attempts.max(1);
        for _ in 0..attempts {
            let mut changes = Changeset::default();
            match read_block(self.store(), &cidr).await? {
                Some((block, revision)) if block.affinity() == Some(node) => {
                    let (empty, used) = (block.is_empty(), block.used());
                    let staged = changes.stage_block(block, Expect::Revision(revision));
                    if empty {
                        staged.delete = true;
                    } else {
                        staged.block.set_affinity(None);
                        changes.deletes.push(affinity_key.clone());
                    }
                    match self.commit(&mut changes).await {
                        Ok(_) if empty => return Ok(NodeBlock::Released),
                        Ok(_) => return Ok(NodeBlock::Kept(used)),
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e),
                    }
                }
                // No block, or one that is not the node's: the affinity claims nothing.
                _ => {
                    let Some(kv) = self.store().get(&affinity_key).await? else {
                        return Ok(NodeBlock::Gone);
                    };
                    match self
                        .store()
                        .delete(&affinity_key, Some(kv.mod_revision))
                        .await
                    {
                        Ok(_) => return Ok(NodeBlock::StaleAffinity),
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(IpamError::ConflictRetriesExhausted {
            attempts,
            key: keys::block(&cidr),
        })
    }

    /// The block that holds (or would hold) `address`.
    async fn block_containing(&self, address: IpAddr) -> Result<IpNet> {
        let pools = read_pools(self.store()).await?;
        if let Some(pool) = pool_of(&pools, address)
            && let Ok(net) = IpNet::new(address, pool.pool.block_size)
        {
            return Ok(net.trunc());
        }
        // A block may outlive its pool.
        read_blocks(self.store())
            .await?
            .into_iter()
            .map(|(_, b, _)| b.cidr())
            .find(|c| c.contains(&address))
            .ok_or(IpamError::AddressNotInPool(address))
    }

    /// Commits a release, first deciding which blocks it empties go back to their pool.
    pub(crate) async fn commit_release(&self, changes: &mut Changeset) -> Result<Revision> {
        give_back_emptied(self.store(), &self.shared().cache, changes).await?;
        self.commit(changes).await
    }

    /// Commits a changeset and brings the cache up to date.
    pub(crate) async fn commit(&self, changes: &mut Changeset) -> Result<Revision> {
        let revision = self.store().txn(changes.txn()?).await?;
        changes.commit_to(&self.shared().cache, revision);
        Ok(revision)
    }
}

/// Marks for deletion the staged blocks that are empty and should go back to their pool: no
/// node, a node that is gone (the commit then requires it to stay gone), or a node with room
/// in another block.
pub(crate) async fn give_back_emptied(
    store: &dyn Store,
    cache: &BlockCache,
    changes: &mut Changeset,
) -> Result<()> {
    let emptied: Vec<(IpNet, Option<String>)> = changes
        .blocks
        .values()
        .filter(|w| !w.delete && w.block.is_empty())
        .map(|w| (w.block.cidr(), w.block.affinity().map(str::to_owned)))
        .collect();
    for (cidr, node) in emptied {
        let give_back = match &node {
            None => true,
            Some(node) => {
                let node_key = keys::node(node);
                if store.get(&node_key).await?.is_none() {
                    changes.compares.push(Compare::Absent(node_key));
                    true
                } else {
                    has_room_elsewhere(store, cache, changes, node, &cidr).await?
                }
            }
        };
        if let Some(staged) = changes.blocks.get_mut(&cidr) {
            staged.delete = give_back;
        }
    }
    Ok(())
}

/// True when `node` has a block other than `except` with a free address (counting what
/// `changes` stages).
async fn has_room_elsewhere(
    store: &dyn Store,
    cache: &BlockCache,
    changes: &Changeset,
    node: &str,
    except: &IpNet,
) -> Result<bool> {
    let listing = store.list(&keys::node_affinities(node)).await?;
    for kv in listing.items {
        let Some((_, cidr)) = affinity::parse_key(&kv.key) else {
            continue;
        };
        if cidr == *except {
            continue;
        }
        let block = match changes.blocks.get(&cidr) {
            Some(staged) if staged.delete => continue,
            Some(staged) => Some(staged.block.clone()),
            None => cache.get_or_read(store, &cidr).await?.map(|(b, _)| b),
        };
        if block.is_some_and(|b| b.affinity() == Some(node) && b.free() > 0) {
            return Ok(true);
        }
    }
    Ok(false)
}
