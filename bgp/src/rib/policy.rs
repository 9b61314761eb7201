//! Import and export policy: the embedding program's say over which routes enter the RIB and
//! which leave it, prefix by prefix.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::Attributes;

/// What a policy decides for one route.
#[derive(Debug, Clone, PartialEq, Eq)]
// A verdict is returned and consumed at once, never stored.
#[allow(clippy::large_enum_variant)]
pub enum Verdict {
    /// Take the route as it is.
    Accept,
    /// Drop the route (on import: as if withdrawn; on export: the peer does not get it).
    Reject,
    /// Take the route with these attributes instead.
    Modify(Attributes),
    /// On import: drop the route as [`Verdict::Reject`] does, and count it in the peer's
    /// [`PeerCounts::filtered`](super::PeerCounts::filtered) under this reason for as long as
    /// the peer announces it, so an operator sees what a policy holds back. On export: a
    /// plain reject.
    Filter(&'static str),
}

/// A peer as a policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRef {
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS.
    pub remote_as: u32,
    /// The AS this session speaks (the speaker's unless the peer has its own local AS).
    pub local_as: u32,
    /// Whether the peer is in the AS this session speaks.
    pub ibgp: bool,
    /// Whether we reflect routes to this peer as a route-reflector client.
    pub rr_client: bool,
    /// Whether routes passed on to this peer keep their next hop.
    pub next_hop_keep: bool,
    /// The peer's BGP identifier (unspecified while the session is down).
    pub router_id: Ipv4Addr,
}

/// Where a route in the Loc-RIB came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Originated by the embedding program.
    Local,
    /// Learned from this peer.
    Peer(PeerRef),
}

/// The embedding program's policy. Both methods default to accepting everything.
///
/// Export sees the route after the standard BGP rewriting for the peer (AS prepended, next
/// hop set, LOCAL_PREF stripped towards eBGP, reflection attributes added), so what it
/// returns is what is sent. Calls happen on the RIB's task: keep them quick and do not block.
pub trait Policy: Send + Sync {
    /// Decides whether a route received from `peer` enters the RIB.
    fn import(&self, peer: &PeerRef, prefix: IpNet, attrs: &Attributes) -> Verdict {
        let _ = (peer, prefix, attrs);
        Verdict::Accept
    }

    /// Decides whether the best route for `prefix` (learned from `source`) goes to `peer`.
    fn export(
        &self,
        peer: &PeerRef,
        prefix: IpNet,
        attrs: &Attributes,
        source: &Source,
    ) -> Verdict {
        let _ = (peer, prefix, attrs, source);
        Verdict::Accept
    }

    /// Which peers [`Policy::export`] treats alike. Peers of one class whose sessions the
    /// BGP rules treat alike too (same AS, reflection client or not, next-hop handling,
    /// families, our address) share one update group: the RIB asks `export` for one of them
    /// and sends every member the answer, so `export` must then depend on nothing else of
    /// the peer ([`PeerRef::address`] and [`PeerRef::router_id`] in particular). `None`, the
    /// default: the peer's exports are its own, computed and stored for it alone. Asked when
    /// the session comes up.
    fn export_class(&self, peer: &PeerRef) -> Option<u64> {
        let _ = peer;
        None
    }
}

/// The policy that accepts every route the BGP rules allow.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl Policy for AcceptAll {
    fn export_class(&self, _peer: &PeerRef) -> Option<u64> {
        Some(0)
    }
}
