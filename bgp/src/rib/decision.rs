//! The decision process: which of the paths to a prefix is best (RFC 4271 §9.1.2.2, with the
//! route-reflection tie-breakers of RFC 4456 §9). Paths whose next hop does not resolve are
//! not candidates at all (§9.1.2.1).
//!
//! It runs as the RFC writes it, eliminating candidates step by step, rather than as a pairwise
//! comparison: MED is only compared between paths from the same neighbouring AS, which is not a
//! total order, and elimination keeps the result independent of the order of the paths.

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
    keep_min(&mut alive, |i| candidates[i].router_id());
    keep_min(&mut alive, |i| candidates[i].attrs.cluster_list.len());
    keep_min(&mut alive, |i| candidates[i].peer_address);
    alive.first().copied()
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
