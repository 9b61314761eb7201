//! `wren-ipam`: pools, blocks, block affinity, handles, allocation, borrowing and leak checks,
//! as pure logic over a [`wren_store::Store`].
//!
//! The model is Calico's: a pool is cut into blocks; a node claims blocks (affinity) and
//! hands out their addresses; when its blocks are full it claims another, and when the pool has
//! none left it borrows an address from another node's block (unless strict affinity is set),
//! announcing that address as a host route. Release is by handle or by address.
//!
//! Every write is one etcd transaction that compares the mod revision of each document it
//! changes, so two writers can never hand out the same address. The allocator of each node
//! keeps the node's blocks and their revisions in memory and commits the allocations that
//! arrive together as one transaction (block and handle documents with their compares), so an
//! allocation costs one round trip, and many concurrent ones share it.
//!
//! Entry point: [`Ipam`]. Documents: [`block::Block`], [`handle::Handle`],
//! [`affinity::Affinity`]. Keys: [`wren_model::keys`].

pub mod affinity;
mod allocate;
pub mod block;
mod cache;
mod changeset;
mod check;
mod claim;
pub mod error;
pub mod handle;
pub mod pool;
mod release;
mod usage;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use wren_model::keys;
use wren_store::{Revision, Store};

pub use allocate::{AllocateRequest, AllocatedAddress, Allocation};
pub use check::{
    CheckOptions, CheckReport, DanglingHandle, DeadNodeBlock, LeakReason, LeakedAddress,
    ReleaseSummary, StaleAffinity, StaleReason,
};
pub use error::{IpamError, PoolError, Result};
pub use pool::{NamedPool, PoolSpec};
pub use release::{NodeRelease, ReleasedAddress};
pub use usage::{AddressInfo, BlockUsage, BorrowedAddress, PoolUsage, Usage};

use block::Block;
use cache::BlockCache;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The family of an address.
    pub fn of_addr(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Tuning of an [`Ipam`].
#[derive(Debug, Clone)]
pub struct IpamOptions {
    /// Attempts of one read-modify-write before [`IpamError::ConflictRetriesExhausted`].
    pub max_attempts: u32,
    /// Most allocations one node commits in one transaction (etcd allows 128 operations per
    /// transaction by default; each allocation writes its handle, and blocks come on top).
    pub max_batch: usize,
}

impl Default for IpamOptions {
    fn default() -> Self {
        Self {
            max_attempts: 24,
            max_batch: 48,
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpamStats {
    /// Addresses handed out.
    pub allocated: u64,
    /// Addresses freed.
    pub released: u64,
    /// Allocation transactions committed.
    pub transactions: u64,
    /// Transactions that lost a compare-and-swap and were retried.
    pub conflicts: u64,
    /// Blocks claimed.
    pub claims: u64,
    /// Addresses borrowed from other nodes' blocks.
    pub borrows: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    allocated: AtomicU64,
    released: AtomicU64,
    transactions: AtomicU64,
    conflicts: AtomicU64,
    claims: AtomicU64,
    borrows: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the node allocators share with the [`Ipam`] handle that made them.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cache: BlockCache,
    pub(crate) stats: Stats,
    pub(crate) options: IpamOptions,
}

/// The IPAM service over one store. Cheap to clone; clones share the per-node allocators and
/// the block cache. One instance per process is the intended use.
#[derive(Clone)]
pub struct Ipam {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// One allocator task per node; dropping the last [`Ipam`] clone ends them.
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<worker::Job>>>,
}

impl Ipam {
    /// IPAM over `store` with default options.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_options(store, IpamOptions::default())
    }

    /// IPAM over `store` with the given options.
    pub fn with_options(store: Arc<dyn Store>, options: IpamOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    store,
                    cache: BlockCache::default(),
                    stats: Stats::default(),
                    options,
                }),
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> IpamStats {
        let s = &self.inner.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IpamStats {
            allocated: get(&s.allocated),
            released: get(&s.released),
            transactions: get(&s.transactions),
            conflicts: get(&s.conflicts),
            claims: get(&s.claims),
            borrows: get(&s.borrows),
        }
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.shared.store.as_ref()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }
}

/// Reads and parses one block.
pub(crate) async fn read_block(
    store: &dyn Store,
    cidr: &IpNet,
) -> Result<Option<(Block, Revision)>> {
    let key = keys::block(cidr);
    match store.get(&key).await? {
        None => Ok(None),
        Some(kv) => Ok(Some((parse_block(&key, &kv.value)?, kv.mod_revision))),
    }
}

/// Parses a stored block, naming its key when it does not parse.
pub(crate) fn parse_block(key: &str, value: &[u8]) -> Result<Block> {
    Block::from_json(value).map_err(|e| IpamError::InvalidData {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Every block, with its key and mod revision.
pub(crate) async fn read_blocks(store: &dyn Store) -> Result<Vec<(String, Block, Revision)>> {
    store
        .list(keys::BLOCKS)
        .await?
        .items
        .into_iter()
        .map(|kv| {
            Ok((
                kv.key.clone(),
                parse_block(&kv.key, &kv.value)?,
                kv.mod_revision,
            ))
        })
        .collect()
}

/// The blocks inside `cidr`.
pub(crate) async fn blocks_in(
    store: &dyn Store,
    cidr: &IpNet,
) -> Result<Vec<(String, Block, Revision)>> {
    let mut blocks = read_blocks(store).await?;
    blocks.retain(|(_, b, _)| cidr.contains(&b.cidr()));
    Ok(blocks)
}
