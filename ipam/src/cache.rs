//! The in-memory copy of blocks this process writes, with the revision each was read or
//! written at. A stale entry is harmless: every write compares the revision, a lost compare
//! drops the entry and the writer reads the block again.

use std::collections::HashMap;
use std::sync::Mutex;

use ipnet::IpNet;
use wren_store::Revision;

use wren_store::Store;

use crate::block::Block;
use crate::error::Result;
use crate::read_block;

/// Blocks by CIDR.
#[derive(Default)]
pub(crate) struct BlockCache {
    blocks: Mutex<HashMap<IpNet, (Block, Revision)>>,
}

impl BlockCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpNet, (Block, Revision)>> {
        // A panic while holding the lock leaves a map of whole entries; keep using it.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the cached block.
    pub(crate) fn get(&self, cidr: &IpNet) -> Option<(Block, Revision)> {
        self.lock().get(cidr).cloned()
    }

    /// The cached block, or the stored one (then cached) when none is cached.
    pub(crate) async fn get_or_read(
        &self,
        store: &dyn Store,
        cidr: &IpNet,
    ) -> Result<Option<(Block, Revision)>> {
        if let Some(found) = self.get(cidr) {
            return Ok(Some(found));
        }
        let read = read_block(store, cidr).await?;
        if let Some((block, revision)) = &read {
            self.put(block.clone(), *revision);
        }
        Ok(read)
    }

    /// Runs `f` over the cached blocks under one lock.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&HashMap<IpNet, (Block, Revision)>) -> R) -> R {
        f(&self.lock())
    }

    /// The node a cached block is affine to (`Some(None)`: to none); `None` when not cached.
    pub(crate) fn affinity_of(&self, cidr: &IpNet) -> Option<Option<String>> {
        self.lock()
            .get(cidr)
            .map(|(b, _)| b.affinity().map(str::to_owned))
    }

    /// Records a block as of `revision`, unless a newer copy is cached already.
    pub(crate) fn put(&self, block: Block, revision: Revision) {
        let mut map = self.lock();
        match map.get(&block.cidr()) {
            Some((_, cached)) if *cached > revision => {}
            _ => {
                map.insert(block.cidr(), (block, revision));
            }
        }
    }

    /// Records a block as read from the store after a lost compare: the store's copy wins
    /// even at a lower revision, as a datastore restored or rebuilt counts its revisions
    /// from the start again.
    pub(crate) fn replace(&self, block: Block, revision: Revision) {
        self.lock().insert(block.cidr(), (block, revision));
    }

    /// Forgets a block (deleted, or known to be stale).
    pub(crate) fn remove(&self, cidr: &IpNet) {
        self.lock().remove(cidr);
    }
}
