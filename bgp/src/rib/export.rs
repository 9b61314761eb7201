//! The BGP rules for what a peer may be sent and how the route changes on the way: iBGP split
//! horizon, route reflection (RFC 4456 §6, §8), and the eBGP rewrites (AS prepended, next hop
//! self unless the peer keeps next hops, LOCAL_PREF and MED stripped).

use std::net::{IpAddr, Ipv4Addr};

use crate::wire::Afi;

use super::adj_out::GroupKey;
use super::{Attributes, PeerSlot, RibConfig, RouteAttributes};

/// Who a route came from, for the export rules.
#[derive(Debug, Clone, Copy)]
pub(super) enum Src<'a> {
    Local,
    Peer(&'a PeerSlot),
}

/// The route the peers of an update group `to` are sent for a best path with `attrs` learned
/// `from`, before the embedding program's policy, with the ORIGINATOR_ID of a reflected route
/// (the one peer of the group it must not go to, RFC 4456 §8); `None` when the BGP rules
/// forbid sending it to any of them. The source peer itself never gets its route back: the
/// group's [`Exclusion`](super::adj_out::Exclusion) says so.
pub(super) fn standard(
    config: &RibConfig,
    from: Src<'_>,
    to: &GroupKey,
    afi: Afi,
    attrs: &Attributes,
) -> Option<(Attributes, Option<Ipv4Addr>)> {
    if !to.families.contains(&afi) {
        return None;
    }
    let to_ibgp = to.remote_as == to.session_as;
    let mut reflected = None;
    if let Src::Peer(src) = from {
        let from_ibgp = src.settings.is_ibgp(config.local_as);
        if from_ibgp && to_ibgp {
            // Split horizon, relaxed by reflection: a client's routes go to every iBGP peer,
            // a non-client's only to clients (RFC 4456 §6).
            if !(src.settings.rr_client || to.rr_client) {
                return None;
            }
            reflected = Some(attrs.originator_id.unwrap_or(src.router_id));
        }
    }
    let mut out = attrs.clone();
    // Our address for the family; a route that needs it cannot go when there is none.
    let self_next_hop = next_hop_self(to.local_address, afi, config);
    let local_route = matches!(from, Src::Local);
    let unspecified = attrs.next_hop_addr().is_none_or(|nh| nh.is_unspecified());
    if to_ibgp {
        out.local_pref = Some(attrs.local_pref.unwrap_or(super::DEFAULT_LOCAL_PREF));
        if let Some(originator) = reflected {
            out.originator_id = Some(originator);
            out.cluster_list.insert(0, config.cluster_id());
        } else if unspecified || (!local_route && to.next_hop_self && !to.next_hop_keep) {
            out.set_next_hop(afi, self_next_hop?);
        }
    } else {
        out.prepend(to.session_as);
        if local_route || unspecified || !to.next_hop_keep {
            out.set_next_hop(afi, self_next_hop?);
        }
        out.local_pref = None;
        out.originator_id = None;
        out.cluster_list.clear();
        if !local_route {
            // A MED received from one AS is not passed to another (RFC 4271 §5.1.4).
            out.med = None;
        }
    }
    Some((out, reflected))
}

/// Our next hop for a family on sessions from `local_address`.
fn next_hop_self(local_address: IpAddr, afi: Afi, config: &RibConfig) -> Option<IpAddr> {
    match (afi, local_address) {
        (Afi::Ipv4Unicast, IpAddr::V4(a)) => Some(IpAddr::V4(a)),
        (Afi::Ipv6Unicast, IpAddr::V6(a)) => Some(IpAddr::V6(a)),
        (Afi::Ipv4Unicast, IpAddr::V6(_)) => config.next_hop_v4.map(IpAddr::V4),
        (Afi::Ipv6Unicast, IpAddr::V4(_)) => config.next_hop_v6.map(IpAddr::V6),
    }
}
