//! Claiming a free block of a pool for a node.
//!
//! The block document (affine to the node) and the node's affinity record are created in one
//! transaction that requires both to be absent and the pool to be unchanged. On etcd v3 this
//! makes the claim atomic: a claim either wins whole or leaves nothing behind, so there is no
//! pending state to confirm or clean up after a lost race or a crash. (Calico writes the
//! affinity as pending, creates the block, then confirms, because the Kubernetes API it also
//! runs on has no multi-object transactions.)
//!
//! Nodes start their search at an offset derived from their name, so nodes claiming at the
//! same moment rarely race for the same block.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wren_model::keys;
use wren_store::{Compare, Revision, Store, StoreError, Txn, json};

use crate::affinity::Affinity;
use crate::block::Block;
use crate::error::{IpamError, Result};
use crate::pool::NamedPool;

/// Attempts at one block whose claim keeps failing for a reason that then goes away.
const CLAIM_ATTEMPTS: u32 = 4;

/// How a claim ended.
pub(crate) enum Claim {
    /// The block is now the node's.
    Won(Block, Revision),
    /// The block exists already; here it is, as read right after losing (`None` if it was
    /// deleted again in between).
    Taken(Option<(Block, Revision)>),
}

/// Claims a free block of `pool` for `node`, trying at most `attempts` blocks not known to
/// be taken. `taken` holds the blocks known to exist; the ones found taken on the way are
/// added. A block found taken by another allocator of the same node is returned as `Taken`:
/// the node has it already. `None` when no attempt won (or the pool is full).
///
/// With `taken` from a full listing, a few attempts suffice (only races lose); with what the
/// caller happens to know, a few attempts make the common case (a pool with room) cost one
/// transaction, and the caller lists the blocks when they all lose.
pub(crate) async fn claim(
    store: &dyn Store,
    node: &str,
    pool: &NamedPool,
    taken: &mut HashSet<IpNet>,
    attempts: u32,
) -> Result<Option<Claim>> {
    let count = block_count(&pool.pool.cidr, pool.pool.block_size);
    let in_pool = taken.iter().filter(|b| pool.pool.cidr.contains(*b)).count() as u128;
    if in_pool >= count {
        return Ok(None);
    }
    let offset = u128::from(name_hash(node)) % count;
    let mut tried = 0;
    for k in 0..count.min(in_pool + u128::from(attempts)) {
        let cidr = nth_block(&pool.pool.cidr, pool.pool.block_size, (offset + k) % count);
        if taken.contains(&cidr) {
            continue;
        }
        if tried == attempts {
            break;
        }
        tried += 1;
        match try_claim(store, node, pool, cidr).await? {
            Claim::Taken(Some((block, revision))) if block.affinity() == Some(node) => {
                return Ok(Some(Claim::Taken(Some((block, revision)))));
            }
            Claim::Taken(_) => {
                taken.insert(cidr);
            }
            won => return Ok(Some(won)),
        }
    }
    Ok(None)
}

/// Claims the block `cidr` of `pool` for `node`; a conflict error when the pool changed
/// meanwhile (re-read it and decide again).
pub(crate) async fn try_claim(
    store: &dyn Store,
    node: &str,
    pool: &NamedPool,
    cidr: IpNet,
) -> Result<Claim> {
    let block = Block::new(cidr, Some(node.to_owned())).map_err(|e| IpamError::InvalidData {
        key: keys::pool(&pool.name),
        reason: e.to_string(),
    })?;
    let block_key = keys::block(&cidr);
    let affinity_key = keys::affinity(node, &cidr);
    let pool_key = keys::pool(&pool.name);
    let affinity = json::encode(&affinity_key, &Affinity::CONFIRMED)?;
    for _ in 0..CLAIM_ATTEMPTS {
        let txn = Txn::new()
            .when(Compare::Absent(block_key.clone()))
            .when(Compare::Absent(affinity_key.clone()))
            .when(Compare::ModRevision(pool_key.clone(), pool.revision))
            .put(block_key.clone(), block.to_json())
            .put(affinity_key.clone(), affinity.clone());
        match store.txn(txn).await {
            Ok(revision) => return Ok(Claim::Won(block, revision)),
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        // Lost: find out which condition failed.
        if let Some(kv) = store.get(&block_key).await? {
            let block = crate::parse_block(&block_key, &kv.value)?;
            return Ok(Claim::Taken(Some((block, kv.mod_revision))));
        }
        if store.get(&pool_key).await?.map(|kv| kv.mod_revision) != Some(pool.revision) {
            return Err(StoreError::Conflict { key: pool_key }.into());
        }
        // An affinity of this node for a block that does not exist claims nothing (it was
        // left by a two-step claim that never finished); remove it and try again.
        if let Some(kv) = store.get(&affinity_key).await? {
            match store.delete(&affinity_key, Some(kv.mod_revision)).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Err(IpamError::ConflictRetriesExhausted {
        attempts: CLAIM_ATTEMPTS,
        key: block_key,
    })
}

/// Number of blocks in a pool (saturating for absurdly large IPv6 pools).
pub(crate) fn block_count(pool: &IpNet, block_size: u8) -> u128 {
    let bits = u32::from(block_size.saturating_sub(pool.prefix_len()));
    1u128
        .checked_shl(bits)
        .filter(|n| *n != 0)
        .unwrap_or(u128::MAX)
}

/// The `index`-th block of a pool.
pub(crate) fn nth_block(pool: &IpNet, block_size: u8, index: u128) -> IpNet {
    match pool {
        IpNet::V4(net) => {
            let step = 1u128 << (32 - u32::from(block_size));
            let base = u128::from(u32::from(net.network()));
            let addr = Ipv4Addr::from((base + index * step) as u32);
            IpNet::V4(Ipv4Net::new(addr, block_size).unwrap_or(*net))
        }
        IpNet::V6(net) => {
            let step = 1u128.checked_shl(128 - u32::from(block_size)).unwrap_or(0);
            let base = u128::from(net.network());
            let addr = Ipv6Addr::from(base.wrapping_add(index.wrapping_mul(step)));
            IpNet::V6(Ipv6Net::new(addr, block_size).unwrap_or(*net))
        }
    }
}

/// FNV-1a of a node name: a stable, well-spread starting point for its block search.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerates_the_blocks_of_a_pool() {
        let pool: IpNet = "10.65.0.0/24".parse().unwrap();
        assert_eq!(block_count(&pool, 26), 4);
        let all: Vec<String> = (0..4)
            .map(|i| nth_block(&pool, 26, i).to_string())
            .collect();
        assert_eq!(
            all,
            [
                "10.65.0.0/26",
                "10.65.0.64/26",
                "10.65.0.128/26",
                "10.65.0.192/26"
            ]
        );
        let v6: IpNet = "fd00:65::/120".parse().unwrap();
        assert_eq!(block_count(&v6, 122), 4);
        assert_eq!(nth_block(&v6, 122, 3).to_string(), "fd00:65::c0/122");
        assert_eq!(block_count(&"fd00::/8".parse().unwrap(), 128), 1u128 << 120);
        assert_eq!(block_count(&"::/0".parse().unwrap(), 128), u128::MAX);
    }
}
