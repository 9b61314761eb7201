//! Route attributes as the RIB keeps them, and their interning.
//!
//! The RIB stores the wire's [`PathAttributes`] in a normal form: no prefixes in it, the next
//! hop of an IPv4 route in NEXT_HOP and that of an IPv6 route in an MP_REACH_NLRI with an empty
//! prefix list, no MP_UNREACH_NLRI. That form is also what the UPDATE packer takes as a
//! template, so an exported route goes out without conversion.
//!
//! A full table has far fewer distinct attribute sets than prefixes (one UPDATE carries many
//! prefixes with one set), so every set is stored once behind an [`Arc`] and each path holds a
//! pointer to it. That sharing is most of what keeps a path to a few dozen bytes.

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::wire::{Afi, AsSegment, MpReach, Origin, PathAttributes};

/// The attributes of a path, in the RIB's normal form (see the module documentation).
pub type Attributes = PathAttributes;

/// What the RIB asks of a path's attributes.
pub trait RouteAttributes {
    /// Attributes of a locally originated route of `afi`: ORIGIN IGP, empty AS_PATH, the given
    /// next hop (`None`: this speaker's address on each session, written as the unspecified
    /// address).
    fn local(next_hop: Option<IpAddr>, afi: Afi) -> Self;

    /// The attributes of an UPDATE in normal form for its prefixes of `afi`, or `None` when
    /// the UPDATE carries no usable next hop for that family.
    fn for_family(&self, afi: Afi) -> Option<Self>
    where
        Self: Sized;

    /// The next hop.
    fn next_hop_addr(&self) -> Option<IpAddr>;

    /// Replaces the next hop (and drops an IPv6 link-local one) for a route of `afi`.
    fn set_next_hop(&mut self, afi: Afi, next_hop: IpAddr);

    /// Number of ASes the path counts for in best-path selection: an AS_SET counts as one
    /// (RFC 4271 §9.1.2.2).
    fn as_path_len(&self) -> usize;

    /// The neighbouring AS the route came from: the first AS of the path.
    fn neighbour_as(&self) -> Option<u32>;

    /// Whether `asn` appears anywhere in the AS path (loop detection).
    fn as_path_contains(&self, asn: u32) -> bool;

    /// Puts `asn` in front of the AS path, as a speaker does when sending to an eBGP peer.
    fn prepend(&mut self, asn: u32);
}

impl RouteAttributes for PathAttributes {
    fn local(next_hop: Option<IpAddr>, afi: Afi) -> Self {
        let unspecified = match afi {
            Afi::Ipv4Unicast => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Afi::Ipv6Unicast => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let mut attrs = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(Default::default()),
            ..PathAttributes::default()
        };
        attrs.set_next_hop(afi, next_hop.unwrap_or(unspecified));
        attrs
    }

    fn for_family(&self, afi: Afi) -> Option<Self> {
        let (next_hop, link_local) = match (&self.mp_reach, self.next_hop) {
            (Some(mp), _) if mp.afi == afi => (mp.next_hop, mp.link_local_next_hop),
            (_, Some(v4)) if afi == Afi::Ipv4Unicast => (IpAddr::V4(v4), None),
            _ => return None,
        };
        if afi == Afi::Ipv4Unicast && !next_hop.is_ipv4() {
            // IPv4 routes over an IPv6 next hop (RFC 8950) are not supported.
            return None;
        }
        let mut attrs = PathAttributes {
            mp_reach: None,
            mp_unreach: None,
            ..self.clone()
        };
        attrs.set_next_hop(afi, next_hop);
        if let Some(mp) = &mut attrs.mp_reach {
            mp.link_local_next_hop = link_local;
        }
        Some(attrs)
    }

    fn next_hop_addr(&self) -> Option<IpAddr> {
        match (&self.mp_reach, self.next_hop) {
            (Some(mp), _) => Some(mp.next_hop),
            (None, v4) => v4.map(IpAddr::V4),
        }
    }

    fn set_next_hop(&mut self, afi: Afi, next_hop: IpAddr) {
        match (afi, next_hop) {
            (Afi::Ipv4Unicast, IpAddr::V4(v4)) => {
                self.next_hop = Some(v4);
                self.mp_reach = None;
            }
            _ => {
                self.next_hop = None;
                self.mp_reach = Some(MpReach {
                    afi,
                    next_hop,
                    link_local_next_hop: None,
                    nlri: Vec::new(),
                });
            }
        }
    }

    fn as_path_len(&self) -> usize {
        let segments = self.as_path.iter().flat_map(|p| p.segments.iter());
        segments
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
            })
            .sum()
    }

    fn neighbour_as(&self) -> Option<u32> {
        match self.as_path.as_ref()?.segments.first() {
            Some(AsSegment::Sequence(v)) => v.first().copied(),
            _ => None,
        }
    }

    fn as_path_contains(&self, asn: u32) -> bool {
        let segments = self.as_path.iter().flat_map(|p| p.segments.iter());
        segments.into_iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.contains(&asn),
        })
    }

    fn prepend(&mut self, asn: u32) {
        let path = self.as_path.get_or_insert_with(Default::default);
        match path.segments.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, asn),
            _ => path.segments.insert(0, AsSegment::Sequence(vec![asn])),
        }
    }
}

/// Interns attribute sets: equal sets share one allocation.
#[derive(Default)]
pub struct Interner {
    table: HashTable<Arc<Attributes>>,
    hasher: DefaultHashBuilder,
    /// Table size after the last sweep, to sweep again once it has doubled.
    swept_at: usize,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("len", &self.table.len())
            .finish()
    }
}

impl Interner {
    /// The shared copy of `attrs`.
    pub fn intern(&mut self, attrs: Attributes) -> Arc<Attributes> {
        let hash = self.hasher.hash_one(&attrs);
        if let Some(found) = self.table.find(hash, |a| **a == attrs) {
            return found.clone();
        }
        if self.table.len() >= 1024 && self.table.len() >= 2 * self.swept_at {
            self.sweep();
        }
        let shared = Arc::new(attrs);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, shared.clone(), |a| hasher.hash_one(&**a));
        shared
    }

    /// Drops sets no path uses any more.
    pub fn sweep(&mut self) {
        self.table.retain(|a| Arc::strong_count(a) > 1);
        self.swept_at = self.table.len();
    }

    /// Drops the sets no path uses and shrinks the table when it is mostly empty.
    pub fn compact(&mut self) {
        self.sweep();
        if super::is_sparse(self.table.len(), self.table.capacity()) {
            let hasher = &self.hasher;
            self.table.shrink_to_fit(|a| hasher.hash_one(&**a));
        }
    }

    /// Number of distinct sets held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no set is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
