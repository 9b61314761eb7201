//! A set of block and handle changes committed as one transaction, each document guarded by
//! the revision it was read at.

use std::collections::BTreeMap;

use ipnet::IpNet;
use wren_model::keys;
use wren_store::{Compare, Revision, Txn, TxnOp, json};

use crate::block::Block;
use crate::cache::BlockCache;
use crate::error::Result;
use crate::handle::Handle;

/// What a document must look like for the transaction to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// It must not exist.
    Absent,
    /// It must be unchanged since this revision.
    Revision(Revision),
}

impl Expect {
    fn compare(self, key: &str) -> Compare {
        match self {
            Expect::Absent => Compare::Absent(key.to_owned()),
            Expect::Revision(r) => Compare::ModRevision(key.to_owned(), r),
        }
    }
}

/// A block as it will be written, or deleted.
#[derive(Debug, Clone)]
pub(crate) struct BlockWrite {
    pub(crate) block: Block,
    pub(crate) expect: Expect,
    /// Delete the block (and its affinity) instead of writing it.
    pub(crate) delete: bool,
}

/// A handle as it will be written; one without addresses is deleted.
#[derive(Debug, Clone)]
pub(crate) struct HandleWrite {
    pub(crate) handle: Handle,
    pub(crate) expect: Expect,
}

/// Changes to commit together.
#[derive(Debug, Default)]
pub(crate) struct Changeset {
    pub(crate) blocks: BTreeMap<IpNet, BlockWrite>,
    pub(crate) handles: BTreeMap<String, HandleWrite>,
    /// Further conditions: pools unchanged, a node still absent, …
    pub(crate) compares: Vec<Compare>,
    /// Further keys to delete (affinities of blocks that stay).
    pub(crate) deletes: Vec<String>,
}

impl Changeset {
    /// Stages `block` (read at `expect`) for writing, returning the staged copy.
    pub(crate) fn stage_block(&mut self, block: Block, expect: Expect) -> &mut BlockWrite {
        self.blocks.entry(block.cidr()).or_insert(BlockWrite {
            block,
            expect,
            delete: false,
        })
    }

    /// True when committing would write nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.handles.is_empty() && self.deletes.is_empty()
    }

    /// The transaction: every compare first, then every write. Each key appears once.
    pub(crate) fn txn(&self) -> Result<Txn> {
        let mut txn = Txn::new();
        txn.compares.extend(self.compares.iter().cloned());
        for (cidr, w) in &self.blocks {
            let key = keys::block(cidr);
            txn = txn.when(w.expect.compare(&key));
            if w.delete {
                txn = txn.delete(key);
                if let Some(node) = w.block.affinity() {
                    txn = txn.delete(keys::affinity(node, cidr));
                }
            } else {
                txn = txn.put(key, w.block.to_json());
            }
        }
        for key in &self.deletes {
            if !txn
                .ops
                .iter()
                .any(|op| matches!(op, TxnOp::Delete { key: k } if k == key))
            {
                txn = txn.delete(key.clone());
            }
        }
        for (name, w) in &self.handles {
            let key = keys::handle(name);
            if w.handle.addresses.is_empty() {
                if w.expect != Expect::Absent {
                    txn = txn.when(w.expect.compare(&key)).delete(key);
                }
            } else {
                let value = json::encode(&key, &w.handle)?;
                txn = txn.when(w.expect.compare(&key)).put(key, value);
            }
        }
        Ok(txn)
    }

    /// After a commit at `revision`, brings the cache up to date.
    pub(crate) fn commit_to(&self, cache: &BlockCache, revision: Revision) {
        for (cidr, w) in &self.blocks {
            if w.delete {
                cache.remove(cidr);
            } else {
                cache.put(w.block.clone(), revision);
            }
        }
    }

    /// After a lost compare, drops every block this changeset read from the cache.
    pub(crate) fn forget(&self, cache: &BlockCache) {
        for cidr in self.blocks.keys() {
            cache.remove(cidr);
        }
    }
}
