//! The BGP rules for what a peer may be sent and how the route changes on the way: iBGP split
//! horizon, route reflection (RFC 4456 §6, §8), and the eBGP rewrites (AS prepended, next hop
//! self unless the peer keeps next hops, LOCAL_PREF and MED stripped).

use crate::wire::Afi;

use super::{Attributes, PeerSlot, RibConfig, RouteAttributes, Session};
/// Who a route came from, for the export rules.
#[derive(Debug, Clone, Copy)]
pub(super) enum Src<'a> {
    Local,
    Peer(&'a PeerSlot),
}

/// The route `to` is sent for a best path with `attrs` learned `from`, before the embedding
/// program's policy; `None` when the BGP rules forbid sending it.
pub(super) fn standard(
    config: &RibConfig,
    from: Src<'_>,
    to: &PeerSlot,
    session: &Session,
    afi: Afi,
    attrs: &Attributes,
) -> Option<Attributes> {
    if !session.families.contains(&afi) {
        return None;
    }
    let to_ibgp = to.settings.is_ibgp(config.local_as);
    let mut reflected = None;
    if let Src::Peer(src) = from {
        if std::ptr::eq(src, to) {
            return None;
        }
        let from_ibgp = src.settings.is_ibgp(config.local_as);
        if from_ibgp && to_ibgp {
            // Split horizon, relaxed by reflection: a client's routes go to every iBGP peer,
            // a non-client's only to clients (RFC 4456 §6).
            if !(src.settings.rr_client || to.settings.rr_client) {
                return None;
            }
            let originator = attrs.originator_id.unwrap_or(src.router_id);
            if originator == session.router_id {
                return None;
            }
            reflected = Some(originator);
        }
    }
    let mut out = attrs.clone();
    // Our address for the family; a route that needs it cannot go when there is none.
    let self_next_hop = session.next_hop(afi, config);
    let local_route = matches!(from, Src::Local);
    let unspecified = attrs.next_hop_addr().is_none_or(|nh| nh.is_unspecified());
    if to_ibgp {
        out.local_pref = Some(attrs.local_pref.unwrap_or(super::DEFAULT_LOCAL_PREF));
        if let Some(originator) = reflected {
            out.originator_id = Some(originator);
            out.cluster_list.insert(0, config.cluster_id());
        } else if unspecified
            || (!local_route && to.settings.next_hop_self && !to.settings.next_hop_keep)
        {
            out.set_next_hop(afi, self_next_hop?);
        }
    } else {
        out.prepend(to.settings.session_as(config.local_as));
        if local_route || unspecified || !to.settings.next_hop_keep {
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
    Some(out)
}
