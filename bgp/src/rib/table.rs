//! The prefix table: for every prefix, the paths each peer announced, best first.
//!
//! The Adj-RIBs-In of all peers and the Loc-RIB share this one table, the layout BIRD uses: a
//! path is a pointer to interned attributes and a peer number (16 bytes), and a prefix with a
//! single path keeps it inline, with no allocation of its own.

use std::sync::Arc;

use hashbrown::HashMap;
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
}

/// The paths to one prefix; the first is the best.
pub(crate) type Paths = SmallVec<[Path; 1]>;

/// Paths by prefix, one map per family so IPv4 keys stay 5 bytes.
#[derive(Debug, Default)]
pub(crate) struct Table {
    v4: HashMap<Ipv4Net, Paths>,
    v6: HashMap<Ipv6Net, Paths>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn get(&self, prefix: &IpNet) -> Option<&Paths> {
        match prefix {
            IpNet::V4(p) => self.v4.get(p),
            IpNet::V6(p) => self.v6.get(p),
        }
    }

    pub fn get_mut(&mut self, prefix: &IpNet) -> Option<&mut Paths> {
        match prefix {
            IpNet::V4(p) => self.v4.get_mut(p),
            IpNet::V6(p) => self.v6.get_mut(p),
        }
    }

    pub fn entry(&mut self, prefix: IpNet) -> &mut Paths {
        match prefix {
            IpNet::V4(p) => self.v4.entry(p).or_default(),
            IpNet::V6(p) => self.v6.entry(p).or_default(),
        }
    }

    pub fn remove(&mut self, prefix: &IpNet) {
        match prefix {
            IpNet::V4(p) => self.v4.remove(p),
            IpNet::V6(p) => self.v6.remove(p),
        };
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &Paths)> {
        let v4 = self.v4.iter().map(|(p, paths)| (IpNet::V4(*p), paths));
        let v6 = self.v6.iter().map(|(p, paths)| (IpNet::V6(*p), paths));
        v4.chain(v6)
    }

    /// Prefixes for which `peer` has a path matching `filter`.
    pub fn prefixes_of(&self, peer: PeerId, filter: impl Fn(IpNet, &Path) -> bool) -> Vec<IpNet> {
        self.iter()
            .filter(|(prefix, paths)| paths.iter().any(|p| p.peer == peer && filter(*prefix, p)))
            .map(|(prefix, _)| prefix)
            .collect()
    }
}
