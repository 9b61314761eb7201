//! A block: a power-of-two slice of a pool that one node claims and hands addresses out of.
//!
//! The document at `ipam/blocks/<cidr>` records the node the block is affine to, a cursor
//! and, per allocated address, the handle that holds it (and the node that borrowed it when
//! that is not the affine node). In memory a bitmap of used ordinals makes finding a free
//! address a word scan. Everything here is pure; the stores see only [`Block::to_json`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Family;

/// Largest number of host bits a block may have (4096 addresses): /20 for IPv4, /116 for IPv6.
pub const MAX_HOST_BITS: u8 = 12;

/// Who holds one address of a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The IPAM handle (`<network>.<containerID>`, `vxlan-tunnel-addr-<node>`, …).
    pub handle: String,
    /// Set when a node other than the block's affine node took the address; that node
    /// announces it as a host route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrowed_by: Option<String>,
}

/// Why a block cannot be built or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The CIDR has host bits set or is too large for a block.
    #[error(
        "{0} cannot be a block: it must be a network address with at most {MAX_HOST_BITS} host bits"
    )]
    BadCidr(IpNet),
    /// The address lies outside the block.
    #[error("{address} is not in block {block}")]
    NotInBlock {
        /// The address.
        address: IpAddr,
        /// The block.
        block: IpNet,
    },
    /// The address is held already.
    #[error("{address} is already held by handle {handle}")]
    Taken {
        /// The address.
        address: IpAddr,
        /// Its holder.
        handle: String,
    },
    /// The document does not parse or contradicts itself.
    #[error("{0}")]
    Malformed(String),
}

/// The stored form: only allocated addresses appear, keyed by address for people reading etcd.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDoc {
    cidr: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    affinity: Option<String>,
    #[serde(default)]
    next: u32,
    #[serde(default)]
    allocations: BTreeMap<IpAddr, Assignment>,
}

/// [`BlockDoc`] for writing, borrowing from the block instead of copying it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockDocRef<'a> {
    cidr: IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity: Option<&'a str>,
    next: u32,
    allocations: AllocationsRef<'a>,
}

/// The allocations of a block as a map from address to holder, in address order.
struct AllocationsRef<'a>(&'a Block);

impl Serialize for AllocationsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.assignments())
    }
}

/// One block with its allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    cidr: IpNet,
    affinity: Option<String>,
    /// Ordinal the next search starts at, so a released address is not handed out again at
    /// once (a stale conntrack entry or ARP cache toward it has time to age out).
    next: u32,
    slots: Vec<Option<Assignment>>,
    bits: Vec<u64>,
    used: u32,
}

impl Block {
    /// An empty block, affine to `affinity` when given.
    pub fn new(cidr: IpNet, affinity: Option<String>) -> Result<Self, BlockError> {
        let host_bits = cidr.max_prefix_len() - cidr.prefix_len();
        if cidr.trunc() != cidr || host_bits > MAX_HOST_BITS {
            return Err(BlockError::BadCidr(cidr));
        }
        let size = 1usize << host_bits;
        Ok(Self {
            cidr,
            affinity,
            next: 0,
            slots: vec![None; size],
            bits: vec![0; size.div_ceil(64)],
            used: 0,
        })
    }

    /// Parses a stored block, checking that it is consistent.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BlockError> {
        let doc: BlockDoc =
            serde_json::from_slice(bytes).map_err(|e| BlockError::Malformed(e.to_string()))?;
        let mut block = Self::new(doc.cidr, doc.affinity)?;
        block.next = if doc.next < block.size() { doc.next } else { 0 };
        for (address, assignment) in doc.allocations {
            block.assign(address, assignment)?;
        }
        Ok(block)
    }

    /// The stored form.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = BlockDocRef {
            cidr: self.cidr,
            affinity: self.affinity.as_deref(),
            next: self.next,
            allocations: AllocationsRef(self),
        };
        // A struct of strings, numbers and string-keyed maps always serialises.
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// The block's range.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// The block's address family.
    pub fn family(&self) -> Family {
        Family::of_net(&self.cidr)
    }

    /// The node the block is affine to, if any.
    pub fn affinity(&self) -> Option<&str> {
        self.affinity.as_deref()
    }

    /// Makes the block affine to another node, or to none.
    pub fn set_affinity(&mut self, node: Option<String>) {
        self.affinity = node;
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Number of allocated addresses.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Number of free addresses.
    pub fn free(&self) -> u32 {
        self.size() - self.used
    }

    /// True when no address is allocated.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// True when `address` lies in the block.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.ordinal(address).is_some()
    }

    /// Who holds `address`, if anyone.
    pub fn assignment(&self, address: IpAddr) -> Option<&Assignment> {
        self.ordinal(address)
            .and_then(|o| self.slots[o as usize].as_ref())
    }

    /// Every allocated address with its holder, in address order.
    pub fn assignments(&self) -> impl Iterator<Item = (IpAddr, &Assignment)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(o, s)| s.as_ref().map(|s| (self.address(o as u32), s)))
    }

    /// The addresses `node` borrowed from this block.
    pub fn borrowed_by<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (IpAddr, &'a Assignment)> + 'a {
        self.assignments()
            .filter(move |(_, s)| s.borrowed_by.as_deref() == Some(node))
    }

    /// Hands out the next free address after the cursor, or `None` when the block is full.
    pub fn assign_next(&mut self, assignment: Assignment) -> Option<IpAddr> {
        let ordinal = self.next_free()?;
        self.set(ordinal, assignment);
        self.next = (ordinal + 1) % self.size();
        Some(self.address(ordinal))
    }

    /// Hands out one specific address.
    pub fn assign(&mut self, address: IpAddr, assignment: Assignment) -> Result<(), BlockError> {
        let ordinal = self.ordinal(address).ok_or(BlockError::NotInBlock {
            address,
            block: self.cidr,
        })?;
        if let Some(held) = &self.slots[ordinal as usize] {
            return Err(BlockError::Taken {
                address,
                handle: held.handle.clone(),
            });
        }
        self.set(ordinal, assignment);
        Ok(())
    }

    /// Frees `address`, returning who held it.
    pub fn release(&mut self, address: IpAddr) -> Option<Assignment> {
        let ordinal = self.ordinal(address)?;
        let held = self.slots[ordinal as usize].take()?;
        self.bits[ordinal as usize / 64] &= !(1u64 << (ordinal % 64));
        self.used -= 1;
        Some(held)
    }

    /// Frees every address `handle` holds, returning them.
    pub fn release_handle(&mut self, handle: &str) -> Vec<IpAddr> {
        let held: Vec<IpAddr> = self
            .assignments()
            .filter(|(_, s)| s.handle == handle)
            .map(|(a, _)| a)
            .collect();
        for address in &held {
            self.release(*address);
        }
        held
    }

    fn set(&mut self, ordinal: u32, assignment: Assignment) {
        self.slots[ordinal as usize] = Some(assignment);
        self.bits[ordinal as usize / 64] |= 1u64 << (ordinal % 64);
        self.used += 1;
    }

    /// First free ordinal at or after the cursor, wrapping around.
    fn next_free(&self) -> Option<u32> {
        if self.used == self.size() {
            return None;
        }
        let size = self.size();
        let start = self.next % size;
        self.free_in(start, size).or_else(|| self.free_in(0, start))
    }

    /// First free ordinal in `from..to`, scanning the bitmap a word at a time.
    fn free_in(&self, from: u32, to: u32) -> Option<u32> {
        let mut ordinal = from;
        while ordinal < to {
            let word = ordinal / 64;
            let bit = ordinal % 64;
            let free = !self.bits[word as usize] & (u64::MAX << bit);
            if free != 0 {
                let found = word * 64 + free.trailing_zeros();
                return (found < to).then_some(found);
            }
            ordinal = (word + 1) * 64;
        }
        None
    }

    fn ordinal(&self, address: IpAddr) -> Option<u32> {
        match (self.cidr, address) {
            (IpNet::V4(net), IpAddr::V4(a)) if net.contains(&a) => {
                Some(u32::from(a) - u32::from(net.network()))
            }
            (IpNet::V6(net), IpAddr::V6(a)) if net.contains(&a) => {
                Some((u128::from(a) - u128::from(net.network())) as u32)
            }
            _ => None,
        }
    }

    fn address(&self, ordinal: u32) -> IpAddr {
        match self.cidr {
            IpNet::V4(net) => Ipv4Addr::from(u32::from(net.network()) + ordinal).into(),
            IpNet::V6(net) => {
                Ipv6Addr::from(u128::from(net.network()) + u128::from(ordinal)).into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(handle: &str) -> Assignment {
        Assignment {
            handle: handle.into(),
            borrowed_by: None,
        }
    }

    fn block(cidr: &str) -> Block {
        Block::new(cidr.parse().unwrap(), Some("n1".into())).unwrap()
    }

    #[test]
    fn hands_out_every_address_once_then_reports_full() {
        let mut b = block("10.65.0.0/26");
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            let a = b.assign_next(held(&format!("h{i}"))).unwrap();
            assert!(b.contains(a));
            assert!(seen.insert(a), "{a} handed out twice");
        }
        assert_eq!(b.assign_next(held("late")), None);
        assert_eq!((b.used(), b.free()), (64, 0));
    }

    #[test]
    fn a_released_address_comes_back_only_after_the_others() {
        let mut b = block("10.65.0.0/30");
        let first = b.assign_next(held("a")).unwrap();
        assert_eq!(first, "10.65.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(b.release(first).unwrap().handle, "a");
        let order: Vec<IpAddr> = (0..4)
            .map(|i| b.assign_next(held(&i.to_string())).unwrap())
            .collect();
        assert_eq!(
            order,
            ["10.65.0.1", "10.65.0.2", "10.65.0.3", "10.65.0.0"]
                .map(|s| s.parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn refuses_a_taken_or_foreign_address() {
        let mut b = block("fd00:65::/122");
        let a: IpAddr = "fd00:65::3f".parse().unwrap();
        b.assign(a, held("x")).unwrap();
        assert_eq!(
            b.assign(a, held("y")),
            Err(BlockError::Taken {
                address: a,
                handle: "x".into()
            })
        );
        let outside: IpAddr = "fd00:65::40".parse().unwrap();
        assert!(matches!(
            b.assign(outside, held("y")),
            Err(BlockError::NotInBlock { .. })
        ));
        assert!(matches!(
            b.assign("10.0.0.1".parse().unwrap(), held("y")),
            Err(BlockError::NotInBlock { .. })
        ));
    }

    #[test]
    fn round_trips_through_json_with_borrowers() {
        let mut b = block("10.65.1.0/26");
        b.assign_next(held("a")).unwrap();
        let borrowed = b
            .assign_next(Assignment {
                handle: "b".into(),
                borrowed_by: Some("n2".into()),
            })
            .unwrap();
        let back = Block::from_json(&b.to_json()).unwrap();
        assert_eq!(back, b);
        let got: Vec<IpAddr> = back.borrowed_by("n2").map(|(a, _)| a).collect();
        assert_eq!(got, vec![borrowed]);
        let text = String::from_utf8(b.to_json()).unwrap();
        assert!(
            text.contains(r#""10.65.1.1":{"handle":"b","borrowedBy":"n2"}"#),
            "{text}"
        );
    }

    #[test]
    fn rejects_documents_that_contradict_themselves() {
        for bad in [
            r#"{"cidr":"10.65.0.1/26"}"#,
            r#"{"cidr":"10.0.0.0/8"}"#,
            r#"{"cidr":"10.65.0.0/26","allocations":{"10.65.0.64":{"handle":"x"}}}"#,
            r#"{"cidr":"10.65.0.0/26","allocations":{"fd00::1":{"handle":"x"}}}"#,
            r#"{"cidr":"10.65.0.0/26","allocations":[1,2]}"#,
            r#"not json"#,
        ] {
            assert!(Block::from_json(bad.as_bytes()).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn release_handle_frees_all_of_its_addresses() {
        let mut b = block("10.65.0.0/28");
        let a1 = b.assign_next(held("a")).unwrap();
        b.assign_next(held("b")).unwrap();
        let a2 = b.assign_next(held("a")).unwrap();
        assert_eq!(b.release_handle("a"), vec![a1, a2]);
        assert_eq!(b.used(), 1);
        assert!(b.release_handle("a").is_empty());
    }

    #[test]
    fn the_cursor_wraps_across_bitmap_words() {
        let mut b = block("10.65.0.0/24");
        for i in 0..256 {
            b.assign_next(held(&i.to_string())).unwrap();
        }
        let freed: IpAddr = "10.65.0.70".parse().unwrap();
        b.release(freed);
        assert_eq!(b.assign_next(held("again")), Some(freed));
    }
}
