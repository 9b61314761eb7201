//! The prefix table: for every prefix, the paths each peer announced, best first.
//!
//! The Adj-RIBs-In of all peers and the Loc-RIB share this one table, the layout BIRD uses: a
//! path is a pointer to interned attributes and a peer number (16 bytes), and a prefix with a
//! single path keeps it inline, with no allocation of its own.
//!
//! IPv4 prefixes, the bulk of a full table, are spread over [`SHARDS`] hash tables by a few
//! bits of their hash. A hash table grows by moving into an array twice its size, holding both
//! while it moves; with one table, a million routes would briefly need three times the memory
//! of the array they end up in. Shards of equal share grow one after another, so the peak stays
//! within one shard's array of what the table holds. They are few, so their arrays are large
//! enough for the allocator to map and unmap them whole: many small shards leave the arrays
//! they grew out of as holes in the heap, and the resident size then depends on chance.
//!
//! Their hash is one multiplication of the prefix (address and length as one word), mixed
//! with a random seed per table so a peer cannot pick prefixes that collide.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smallvec::SmallVec;

use super::{Attributes, PeerId};

/// One peer's path to a prefix.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    pub attrs: Arc<Attributes>,
    pub peer: PeerId,
    /// Kept across the peer's graceful restart, awaiting refresh (RFC 4724).
    pub stale: bool,
    /// One of the paths after the best that are equal to it (the RIB keeps them right after
    /// the best path, see [`super::decision::select_multipath`]).
    pub multipath: bool,
}

/// The paths to one prefix; the first is the best.
pub(crate) type Paths = SmallVec<[Path; 1]>;

/// Number of IPv4 hash tables (a power of two).
const SHARDS: usize = 8;

/// Bits of the hash that pick the shard: above those a table of up to 2^40 buckets indexes
/// with, below the top seven it keeps in its control bytes.
const SHARD_SHIFT: u32 = 40;

/// Paths by prefix, one set of tables per family.
#[derive(Debug)]
pub(crate) struct Table {
    v4: Box<[HashTable<(Ipv4Net, Paths)>]>,
    v4_seed: u64,
    v6: HashTable<(Ipv6Net, Paths)>,
    v6_hasher: DefaultHashBuilder,
}

impl Default for Table {
    fn default() -> Self {
        let v6_hasher = DefaultHashBuilder::default();
        Self {
            v4: (0..SHARDS).map(|_| HashTable::new()).collect(),
            v4_seed: v6_hasher.hash_one(SHARDS),
            v6: HashTable::new(),
            v6_hasher,
        }
    }
}

/// The hash of an IPv4 prefix: its address and length as one word, mixed with the seed and
/// multiplied by an odd constant, the two halves of the product folded so both ends of the
/// hash vary.
fn hash_v4(seed: u64, prefix: &Ipv4Net) -> u64 {
    let key = (u64::from(prefix.addr().to_bits()) << 8) | u64::from(prefix.prefix_len());
    let product = u128::from(key ^ seed) * 0x9E37_79B9_7F4A_7C15_u128;
    (product as u64) ^ ((product >> 64) as u64)
}

fn shard_of(hash: u64) -> usize {
    (hash >> SHARD_SHIFT) as usize & (SHARDS - 1)
}

/// Runs `change` on the paths of an entry, inserting an empty one first when `create`, and
/// removes the entry when `change` leaves it without paths.
fn modify_in<K: Copy + Eq, R>(
    table: &mut HashTable<(K, Paths)>,
    prefix: K,
    hash: u64,
    rehash: impl Fn(&(K, Paths)) -> u64,
    create: bool,
    change: impl FnOnce(&mut Paths) -> R,
) -> Option<R> {
    let mut entry = match table.entry(hash, |(k, _)| *k == prefix, rehash) {
        Entry::Occupied(entry) => entry,
        Entry::Vacant(entry) if create => entry.insert((prefix, Paths::new())),
        Entry::Vacant(_) => return None,
    };
    let result = change(&mut entry.get_mut().1);
    if entry.get().1.is_empty() {
        entry.remove();
    }
    Some(result)
}

impl Table {
    pub fn len(&self) -> usize {
        self.v4.iter().map(HashTable::len).sum::<usize>() + self.v6.len()
    }

    pub fn get(&self, prefix: &IpNet) -> Option<&Paths> {
        match prefix {
            IpNet::V4(p) => {
                let hash = hash_v4(self.v4_seed, p);
                let found = self.v4[shard_of(hash)].find(hash, |(k, _)| k == p);
                found.map(|(_, paths)| paths)
            }
            IpNet::V6(p) => {
                let hash = self.v6_hasher.hash_one(p);
                self.v6.find(hash, |(k, _)| k == p).map(|(_, paths)| paths)
            }
        }
    }

    /// Runs `change` on a prefix's paths with one lookup: an absent prefix gets an empty list
    /// when `create` (otherwise `None` is returned and `change` not run), and a prefix left
    /// without paths is removed.
    pub fn modify<R>(
        &mut self,
        prefix: IpNet,
        create: bool,
        change: impl FnOnce(&mut Paths) -> R,
    ) -> Option<R> {
        match prefix {
            IpNet::V4(p) => {
                let seed = self.v4_seed;
                let hash = hash_v4(seed, &p);
                let shard = &mut self.v4[shard_of(hash)];
                modify_in(shard, p, hash, |(k, _)| hash_v4(seed, k), create, change)
            }
            IpNet::V6(p) => {
                let hasher = &self.v6_hasher;
                let hash = hasher.hash_one(p);
                let rehash = |(k, _): &(Ipv6Net, Paths)| hasher.hash_one(k);
                modify_in(&mut self.v6, p, hash, rehash, create, change)
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &Paths)> {
        let v4 = self.v4.iter().flat_map(HashTable::iter);
        let v4 = v4.map(|(p, paths)| (IpNet::V4(*p), paths));
        let v6 = self.v6.iter().map(|(p, paths)| (IpNet::V6(*p), paths));
        v4.chain(v6)
    }

    /// Shrinks the hash tables holding less than a quarter of what they have room for, so
    /// a table that was withdrawn gives its arrays back; returns whether any shrank.
    pub fn shrink_if_sparse(&mut self) -> bool {
        let mut shrank = false;
        let seed = self.v4_seed;
        for shard in self.v4.iter_mut() {
            if super::is_sparse(shard.len(), shard.capacity()) {
                shard.shrink_to_fit(|(k, _)| hash_v4(seed, k));
                shrank = true;
            }
        }
        if super::is_sparse(self.v6.len(), self.v6.capacity()) {
            let hasher = &self.v6_hasher;
            self.v6.shrink_to_fit(|(k, _)| hasher.hash_one(k));
            shrank = true;
        }
        shrank
    }

    /// Prefixes for which `peer` has a path matching `filter`.
    pub fn prefixes_of(&self, peer: PeerId, filter: impl Fn(IpNet, &Path) -> bool) -> Vec<IpNet> {
        self.iter()
            .filter(|(prefix, paths)| paths.iter().any(|p| p.peer == peer && filter(*prefix, p)))
            .map(|(prefix, _)| prefix)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(peer: u32) -> Path {
        Path {
            attrs: Arc::new(Attributes::default()),
            peer: PeerId(peer),
            stale: false,
            multipath: false,
        }
    }

    #[test]
    fn modify_creates_only_when_asked_and_removes_emptied_prefixes() {
        let mut table = Table::default();
        let v4: IpNet = "10.0.0.0/24".parse().unwrap();
        let v6: IpNet = "2001:db8::/48".parse().unwrap();
        for prefix in [v4, v6] {
            assert_eq!(table.modify(prefix, false, |paths| paths.len()), None);
            assert_eq!(table.len(), 0);
            table.modify(prefix, true, |paths| paths.push(path(1)));
            assert_eq!(table.get(&prefix).map(|p| p.len()), Some(1));
            table.modify(prefix, false, |paths| paths.clear());
            assert!(table.get(&prefix).is_none());
        }
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn prefixes_of_one_address_with_other_lengths_stay_apart() {
        let mut table = Table::default();
        let prefixes: Vec<IpNet> = (8..=32)
            .map(|len| IpNet::V4(Ipv4Net::new("10.0.0.0".parse().unwrap(), len).unwrap()))
            .collect();
        for (i, prefix) in prefixes.iter().enumerate() {
            table.modify(*prefix, true, |paths| paths.push(path(i as u32)));
        }
        assert_eq!(table.len(), prefixes.len());
        for (i, prefix) in prefixes.iter().enumerate() {
            assert_eq!(table.get(prefix).map(|p| p[0].peer), Some(PeerId(i as u32)));
        }
        let mut seen: Vec<IpNet> = table.iter().map(|(p, _)| p).collect();
        seen.sort();
        let mut expected = prefixes.clone();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn many_prefixes_spread_over_every_shard() {
        let mut table = Table::default();
        for i in 0..100_000u32 {
            let prefix = Ipv4Net::new((0x2000_0000 + (i << 8)).into(), 24).unwrap();
            table.modify(IpNet::V4(prefix), true, |paths| paths.push(path(1)));
        }
        assert_eq!(table.len(), 100_000);
        let smallest = table.v4.iter().map(HashTable::len).min().unwrap_or(0);
        let largest = table.v4.iter().map(HashTable::len).max().unwrap_or(0);
        // An even spread: 12,500 each; a hash that ignored the shard bits would leave shards
        // empty.
        assert!(
            smallest > 12_000 && largest < 13_000,
            "{smallest}..{largest}"
        );
    }
}
