//! Read-only views: usage per pool (`wren ipam show`), who holds an address
//! (`wren ipam show --ip`), a node's blocks and the addresses it borrowed (what the agent
//! announces over BGP).

use std::net::IpAddr;

use ipnet::IpNet;
use wren_model::{Pool, Workload, keys};
use wren_store::json::JsonStore;

use crate::affinity::{self, Affinity, AffinityState};
use crate::block::{Assignment, Block};
use crate::claim::block_count;
use crate::error::{IpamError, Result};
use crate::handle::Handle;
use crate::pool::{pool_of, read_pools};
use crate::{Ipam, read_blocks};

/// Usage of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockUsage {
    /// The block.
    pub block: IpNet,
    /// The node it is affine to.
    pub node: Option<String>,
    /// Allocated addresses.
    pub used: u32,
    /// Addresses in the block.
    pub size: u32,
    /// Allocated addresses borrowed by other nodes.
    pub borrowed: u32,
}

impl BlockUsage {
    fn of(block: &Block) -> Self {
        Self {
            block: block.cidr(),
            node: block.affinity().map(str::to_owned),
            used: block.used(),
            size: block.size(),
            borrowed: block
                .assignments()
                .filter(|(_, a)| a.borrowed_by.is_some())
                .count() as u32,
        }
    }
}

/// Usage of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// The pool's name.
    pub name: String,
    /// The pool.
    pub pool: Pool,
    /// Its blocks in address order.
    pub blocks: Vec<BlockUsage>,
    /// Blocks the pool can be cut into.
    pub block_capacity: u128,
}

impl PoolUsage {
    /// Allocated addresses in the pool.
    pub fn used(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.used)).sum()
    }
}

/// Usage of every pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Each pool in name order.
    pub pools: Vec<PoolUsage>,
    /// Blocks that lie in no pool (their pool was removed while they held addresses).
    pub orphan_blocks: Vec<BlockUsage>,
}

/// Everything known about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressInfo {
    /// The address.
    pub address: IpAddr,
    /// The pool it lies in.
    pub pool: Option<String>,
    /// The block it lies in, if that block exists.
    pub block: Option<IpNet>,
    /// The node that block is affine to.
    pub block_node: Option<String>,
    /// Who holds the address; `None` when it is free.
    pub assignment: Option<Assignment>,
    /// The workload whose handle holds it, if recorded.
    pub workload: Option<Workload>,
}

/// An address a node took from another node's block; the node announces it as a host route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorrowedAddress {
    /// The address.
    pub address: IpAddr,
    /// The block it lies in.
    pub block: IpNet,
    /// The node that block is affine to.
    pub block_node: Option<String>,
    /// The handle holding it.
    pub handle: String,
}

impl Ipam {
    /// Blocks and usage per pool.
    pub async fn usage(&self) -> Result<Usage> {
        let pools = read_pools(self.store()).await?;
        let blocks = read_blocks(self.store()).await?;
        let mut usage = Usage {
            pools: pools
                .iter()
                .map(|p| PoolUsage {
                    name: p.name.clone(),
                    pool: p.pool.clone(),
                    blocks: Vec::new(),
                    block_capacity: block_count(&p.pool.cidr, p.pool.block_size),
                })
                .collect(),
            orphan_blocks: Vec::new(),
        };
        for (_, block, _) in &blocks {
            let row = BlockUsage::of(block);
            match usage
                .pools
                .iter_mut()
                .find(|p| p.pool.cidr.contains(&block.cidr()))
            {
                Some(pool) => pool.blocks.push(row),
                None => usage.orphan_blocks.push(row),
            }
        }
        for pool in &mut usage.pools {
            pool.blocks.sort_by_key(|b| b.block);
        }
        Ok(usage)
    }

    /// Who holds `address`: pool, block, node, handle and workload.
    pub async fn lookup(&self, address: IpAddr) -> Result<AddressInfo> {
        let pools = read_pools(self.store()).await?;
        let pool = pool_of(&pools, address).map(|p| p.name.clone());
        let block = read_blocks(self.store())
            .await?
            .into_iter()
            .map(|(_, b, _)| b)
            .find(|b| b.contains(address));
        if pool.is_none() && block.is_none() {
            return Err(IpamError::AddressNotInPool(address));
        }
        let assignment = block.as_ref().and_then(|b| b.assignment(address).cloned());
        let workload = match &assignment {
            Some(a) => self
                .store()
                .list_json::<Workload>(keys::WORKLOADS)
                .await?
                .items
                .into_iter()
                .map(|v| v.value)
                .find(|w| w.handle == a.handle),
            None => None,
        };
        Ok(AddressInfo {
            address,
            pool,
            block: block.as_ref().map(Block::cidr),
            block_node: block.as_ref().and_then(|b| b.affinity().map(str::to_owned)),
            assignment,
            workload,
        })
    }

    /// The blocks affine to `node` (confirmed affinity, and the block names the node): what
    /// the node announces.
    pub async fn affine_blocks(&self, node: &str) -> Result<Vec<IpNet>> {
        let listing = self.store().list(&keys::node_affinities(node)).await?;
        let mut blocks = Vec::new();
        for kv in listing.items {
            let confirmed = wren_store::json::decode::<Affinity>(&kv.key, &kv.value)
                .is_ok_and(|a| a.state == AffinityState::Confirmed);
            let Some((_, cidr)) = affinity::parse_key(&kv.key) else {
                continue;
            };
            if !confirmed {
                continue;
            }
            if let Some((block, _)) = crate::read_block(self.store(), &cidr).await?
                && block.affinity() == Some(node)
            {
                blocks.push(cidr);
            }
        }
        Ok(blocks)
    }

    /// The addresses `handle` holds now (empty when it holds none).
    pub async fn handle_addresses(&self, handle: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .store()
            .get_json::<Handle>(&keys::handle(handle))
            .await?
            .map(|v| v.value.addresses.iter().map(|a| a.address).collect())
            .unwrap_or_default())
    }

    /// The addresses `node` borrowed from other nodes' blocks: the node announces each as a
    /// host route (/32 or /128). To follow changes, watch `ipam/blocks/` and apply
    /// [`Block::borrowed_by`] to each block.
    pub async fn borrowed_addresses(&self, node: &str) -> Result<Vec<BorrowedAddress>> {
        let mut out = Vec::new();
        for (_, block, _) in read_blocks(self.store()).await? {
            for (address, a) in block.borrowed_by(node) {
                out.push(BorrowedAddress {
                    address,
                    block: block.cidr(),
                    block_node: block.affinity().map(str::to_owned),
                    handle: a.handle.clone(),
                });
            }
        }
        Ok(out)
    }
}
