//! The errors IPAM operations end with.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use wren_store::StoreError;

use crate::Family;

/// Why a pool definition was refused. Each variant is one thing the operator typed wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The name cannot be a key segment.
    #[error("invalid pool name {name:?}: use 1 to 253 letters, digits, '.', '-' or '_'")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The CIDR does not parse.
    #[error(
        "malformed CIDR {input:?}: expected an address and a prefix length, like 10.65.0.0/16 or fd00:65::/48"
    )]
    MalformedCidr {
        /// The CIDR as given.
        input: String,
    },
    /// The CIDR has host bits set.
    #[error("{input} is not a network address; did you mean {network}?")]
    NotNetworkAddress {
        /// The CIDR as given.
        input: String,
        /// The network it lies in.
        network: IpNet,
    },
    /// The block size is outside what the address family allows.
    #[error("block size /{block_size} is out of range for {family}: use /{min} to /{max}")]
    BlockSizeOutOfRange {
        /// The block size asked for.
        block_size: u8,
        /// The pool's address family.
        family: Family,
        /// Smallest prefix length allowed (largest block).
        min: u8,
        /// Largest prefix length allowed (smallest block).
        max: u8,
    },
    /// The block would be larger than the pool itself.
    #[error("block size /{block_size} is larger than the pool {cidr}; use a block size of /{} or more", cidr.prefix_len())]
    BlockLargerThanPool {
        /// The block size asked for.
        block_size: u8,
        /// The pool.
        cidr: IpNet,
    },
    /// The pool overlaps an existing one.
    #[error("{cidr} overlaps pool {other} ({other_cidr})")]
    Overlap {
        /// The new pool's range.
        cidr: IpNet,
        /// Name of the pool it overlaps.
        other: String,
        /// Range of that pool.
        other_cidr: IpNet,
    },
}

/// Everything an IPAM operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IpamError {
    /// A pool definition is invalid; nothing was written.
    #[error("pool {name}: {error}")]
    InvalidPool {
        /// The pool's name.
        name: String,
        /// What is wrong with it.
        error: PoolError,
    },
    /// A pool of that name exists already.
    #[error("pool {0} already exists")]
    PoolExists(String),
    /// No pool of that name.
    #[error("unknown pool {0}")]
    UnknownPool(String),
    /// A pool still holds addresses, so it cannot be removed.
    #[error("pool {name} still has {allocated} allocated address{}; release them first", if *allocated == 1 { "" } else { "es" })]
    PoolInUse {
        /// The pool's name.
        name: String,
        /// How many addresses are allocated from it.
        allocated: usize,
    },
    /// A pool that hands out nothing was asked for an address.
    #[error("pool {0} is disabled")]
    PoolDisabled(String),
    /// There is no enabled pool of the family asked for (among the pools asked for).
    #[error("no enabled {family} pool to allocate from")]
    NoPools {
        /// The address family asked for.
        family: Family,
    },
    /// Strict affinity (or the block limit) forbids borrowing and the node's blocks are full.
    #[error(
        "pool exhausted for node {node}: its {family} blocks are full and no block can be claimed ({reason})"
    )]
    PoolExhaustedForNode {
        /// The node that asked.
        node: String,
        /// The address family asked for.
        family: Family,
        /// Why nothing could be borrowed: strict affinity.
        reason: String,
    },
    /// Every address of every candidate pool is in use.
    #[error("no free {family} address left in {pools}")]
    Exhausted {
        /// The address family asked for.
        family: Family,
        /// The pools that were searched, comma separated.
        pools: String,
    },
    /// A specific address was asked for that lies in no pool.
    #[error("{0} is not in any pool")]
    AddressNotInPool(IpAddr),
    /// A specific address was asked for that another handle holds.
    #[error("{address} is already allocated (handle {handle})")]
    AlreadyAllocated {
        /// The address.
        address: IpAddr,
        /// The handle holding it.
        handle: String,
    },
    /// An address to release is not allocated.
    #[error("{0} is not allocated")]
    NotAllocated(IpAddr),
    /// The request itself makes no sense (no family, an empty handle, …).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Concurrent writers kept changing the same keys.
    #[error("gave up after {attempts} attempts: {key} kept changing under concurrent writers")]
    ConflictRetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// A key that kept changing.
        key: String,
    },
    /// The datastore holds a document IPAM cannot use.
    #[error("invalid IPAM data at {key}: {reason}")]
    InvalidData {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The node's allocator stopped (its runtime is shutting down).
    #[error("the allocator of node {0} has stopped")]
    AllocatorStopped(String),
}

impl From<StoreError> for IpamError {
    fn from(e: StoreError) -> Self {
        IpamError::Store(Arc::new(e))
    }
}

impl IpamError {
    /// True for a lost compare-and-swap that a retry may win.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, IpamError::Store(e) if e.is_conflict())
    }

    /// The key of a lost compare-and-swap.
    pub(crate) fn conflict_key(&self) -> Option<String> {
        match self {
            IpamError::Store(e) => match e.as_ref() {
                StoreError::Conflict { key } => Some(key.clone()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Result alias for IPAM operations.
pub type Result<T, E = IpamError> = std::result::Result<T, E>;
