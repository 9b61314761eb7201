//! The decision process: which of the paths to a prefix is best (RFC 4271 §9.1.2.2, with the
//! route-reflection tie-breakers of RFC 4456 §9). Paths whose next hop does not resolve are
//! not candidates at all (§9.1.2.1).
//!
//! It runs as the RFC writes it, eliminating candidates step by step, rather than as a pairwise
//! comparison: MED is only compared between paths from the same neighbouring AS, which is not a
//! total order, and elimination keeps the result independent of the order of the paths.
//!
//! The same elimination gives the paths a router may forward over at once (ECMP): those left
//! after every step that compares what a path is worth (local preference, AS-path length,
//! origin, MED where comparable, eBGP over iBGP), before the tie-breakers that only pick one
//! of equals (router id, cluster-list length, peer address), as BIRD's `merge paths` and
//! FRR's `maximum-paths` (with `as-path multipath-relax`) take them. The tie-breakers then
//! order that set, so its first path is the best path.

use std::net::{IpAddr, Ipv4Addr};

use smallvec::SmallVec;

use super::{Attributes, RouteAttributes};

/// LOCAL_PREF assumed for a path that has none (routes from eBGP peers, local routes).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// One path to a prefix, with what the decision process needs to know about where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The path's attributes.
    pub attrs: &'a Attributes,
    /// Originated by this speaker: preferred over any learned path.
    pub local: bool,
    /// Learned from an eBGP peer.
    pub ebgp: bool,
    /// BGP identifier of the peer it was learned from.
    pub peer_router_id: Ipv4Addr,
    /// Address of the peer it was learned from.
    pub peer_address: IpAddr,
    /// AS of this speaker, the neighbouring AS of paths with an empty AS_PATH.
    pub local_as: u32,
    /// The next hop can be reached (RFC 4271 §9.1.2.1); a path whose next hop cannot is
    /// never chosen, however good it is otherwise.
    pub resolvable: bool,
}

impl Candidate<'_> {
    fn local_pref(&self) -> u32 {
        self.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }

    fn neighbour_as(&self) -> u32 {
        self.attrs.neighbour_as().unwrap_or(self.local_as)
    }

    /// A missing MED counts as the lowest (RFC 4271 §9.1.2.2 c).
    fn med(&self) -> u32 {
        self.attrs.med.unwrap_or(0)
    }

    /// The identifier compared in step f: ORIGINATOR_ID when reflected (RFC 4456 §9).
    fn router_id(&self) -> u32 {
        u32::from(self.attrs.originator_id.unwrap_or(self.peer_router_id))
    }
}

/// Index of the best candidate, or `None` when none is resolvable.
pub fn select(candidates: &[Candidate<'_>]) -> Option<usize> {
    select_multipath(candidates, 1).first().copied()
}

/// Indices of the candidates to forward over, best first: the best path and the paths equal
/// to it up to the tie-breakers that only pick one (see the module documentation), in the
/// order those tie-breakers give, at most `max_paths` of them (0 counts as 1). Empty when no
/// candidate is resolvable.
pub fn select_multipath(candidates: &[Candidate<'_>], max_paths: usize) -> SmallVec<[usize; 8]> {
    let mut alive: SmallVec<[usize; 8]> = (0..candidates.len())
        .filter(|&i| candidates[i].resolvable)
        .collect();
    // Locally originated routes win, as a router's own routes beat BGP-learned ones.
    keep_min(&mut alive, |i| u8::from(!candidates[i].local));
    keep_min(&mut alive, |i| u32::MAX - candidates[i].local_pref());
    keep_min(&mut alive, |i| candidates[i].attrs.as_path_len());
    keep_min(&mut alive, |i| {
        candidates[i].attrs.origin.unwrap_or_default() as u8
    });
    // MED: drop a path when another from the same neighbouring AS has a lower MED.
    let med_beaten: SmallVec<[usize; 8]> = alive
        .iter()
        .copied()
        .filter(|&i| {
            let c = &candidates[i];
            alive.iter().any(|&j| {
                let o = &candidates[j];
                o.neighbour_as() == c.neighbour_as() && o.med() < c.med()
            })
        })
        .collect();
    alive.retain(|i| !med_beaten.contains(&*i));
    keep_min(&mut alive, |i| u8::from(!candidates[i].ebgp));
    // What is left is equal in worth. The remaining steps (RFC 4271 §9.1.2.2 f and g, RFC
    // 4456 §9) only pick one, so they order the set instead of cutting it: keeping the
    // smallest key step by step is keeping the smallest key tuple.
    alive.sort_by_key(|&i| {
        let c = &candidates[i];
        (c.router_id(), c.attrs.cluster_list.len(), c.peer_address)
    });
    // A local path is never merged with another: it is this speaker's own.
    let limit = if alive.first().is_some_and(|&i| candidates[i].local) {
        1
    } else {
        max_paths.max(1)
    };
    alive.truncate(limit);
    alive
}

/// Keeps the candidates with the smallest key.
fn keep_min<K: Ord + Copy>(alive: &mut SmallVec<[usize; 8]>, key: impl Fn(usize) -> K) {
    if alive.len() < 2 {
        return;
    }
    if let Some(min) = alive.iter().map(|&i| key(i)).min() {
        alive.retain(|i| key(*i) == min);
    }
}
