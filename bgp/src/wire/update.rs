//! UPDATE (RFC 4271 §4.3) with RFC 7606 error handling, and the End-of-RIB marker
//! (RFC 4724 §2).

use super::num::be16;
use ipnet::IpNet;
use nom::Parser;
use nom::bytes::complete::take;

use super::attributes::{self, type_code as tc, write_mp_reach, write_mp_unreach};
use super::error::{EncodeError, UpdateError, WireError};
use super::frame::{MessageType, finish_header, start_header};
use super::nlri::{encode_prefix, parse_prefixes};
use super::{Afi, Codec, MpUnreach, PathAttributes, Update};

/// Why part of an UPDATE was not taken as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpdateFault {
    /// Type code of the attribute concerned (for a missing attribute: the one missing);
    /// `None` when the attribute list itself is broken.
    pub attribute: Option<u8>,
    /// The "UPDATE Message Error" subcode RFC 4271 would have sent.
    pub subcode: UpdateError,
    /// What was wrong, for logs.
    pub detail: &'static str,
}

/// An RFC 7606 outcome that did not end the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// Every route in the UPDATE is withdrawn (RFC 7606 §2 "treat-as-withdraw").
    TreatAsWithdraw(UpdateFault),
    /// One attribute was dropped and the rest of the UPDATE kept (RFC 7606 §2
    /// "attribute discard"; also a repeated attribute, RFC 7606 §3(g), and AS4 attributes
    /// between 4-octet speakers, RFC 6793).
    AttributeDiscard(UpdateFault),
}

/// A received UPDATE after RFC 7606 handling.
///
/// `update` is what the RIB should apply: when any action is [`UpdateAction::TreatAsWithdraw`]
/// it holds no attributes and every prefix the peer sent (reachable or not) is a withdrawal,
/// IPv4 ones in `update.withdrawn` and IPv6 ones in `attributes.mp_unreach`; discarded
/// attributes are simply absent. `actions` says what happened, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedUpdate {
    /// The UPDATE to apply.
    pub update: Update,
    /// What RFC 7606 handling did, in the order found; empty for a clean UPDATE.
    pub actions: Vec<UpdateAction>,
}

impl ParsedUpdate {
    /// Whether the UPDATE was turned into withdrawals.
    pub fn treated_as_withdraw(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, UpdateAction::TreatAsWithdraw(_)))
    }

    /// The family this UPDATE marks End-of-RIB for. A malformed UPDATE emptied by
    /// treat-as-withdraw is not a marker.
    pub fn end_of_rib(&self) -> Option<Afi> {
        if self.treated_as_withdraw() {
            return None;
        }
        self.update.end_of_rib()
    }

    /// Applies the check that needs to know the UPDATE came from an external peer in AS
    /// `peer_as`: an AS_PATH whose first AS is not the peer's is treated as withdraw
    /// (RFC 4271 §6.3, RFC 7606 §7.2). Skip it for route servers, which do not prepend their
    /// AS. (What must not cross an AS border, LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST, the
    /// parser already discarded: see [`Codec::external_peer`](super::Codec::external_peer).)
    pub fn apply_external_rules(&mut self, peer_as: u32, check_first_as: bool) {
        let attrs = &self.update.attributes;
        let first_as = attrs
            .as_path
            .as_ref()
            .and_then(|p| match p.segments.first() {
                Some(super::AsSegment::Sequence(v)) => v.first().copied(),
                _ => None,
            });
        let announces = !self.update.nlri.is_empty() || attrs.mp_reach.is_some();
        if check_first_as && announces && first_as != Some(peer_as) {
            self.actions
                .push(UpdateAction::TreatAsWithdraw(UpdateFault {
                    attribute: Some(tc::AS_PATH),
                    subcode: UpdateError::MalformedAsPath,
                    detail: "AS_PATH does not start with the external peer's AS",
                }));
            withdraw_all(&mut self.update);
        }
    }
}

impl Update {
    /// The End-of-RIB marker for a family: an empty UPDATE for IPv4 unicast, an UPDATE with
    /// only an empty MP_UNREACH_NLRI for the others (RFC 4724 §2).
    pub fn end_of_rib_marker(afi: Afi) -> Update {
        let mut update = Update::default();
        if afi != Afi::Ipv4Unicast {
            update.attributes.mp_unreach = Some(MpUnreach {
                afi,
                withdrawn: Vec::new(),
            });
        }
        update
    }

    /// The family this UPDATE is the End-of-RIB marker for, if it is one.
    pub fn end_of_rib(&self) -> Option<Afi> {
        // Listing every field makes a new attribute a compile error here, not a silent
        // false marker.
        let PathAttributes {
            origin,
            as_path,
            next_hop,
            med,
            local_pref,
            atomic_aggregate,
            aggregator,
            communities,
            originator_id,
            cluster_list,
            mp_reach,
            mp_unreach,
            large_communities,
            unknown,
        } = &self.attributes;
        let nothing_else = self.withdrawn.is_empty()
            && self.nlri.is_empty()
            && origin.is_none()
            && as_path.is_none()
            && next_hop.is_none()
            && med.is_none()
            && local_pref.is_none()
            && !atomic_aggregate
            && aggregator.is_none()
            && communities.is_empty()
            && originator_id.is_none()
            && cluster_list.is_empty()
            && mp_reach.is_none()
            && large_communities.is_empty()
            && unknown.is_empty();
        match mp_unreach {
            _ if !nothing_else => None,
            None => Some(Afi::Ipv4Unicast),
            Some(u) => u.withdrawn.is_empty().then_some(u.afi),
        }
    }

    /// Every prefix this UPDATE announces: the classic NLRI then MP_REACH_NLRI's.
    pub fn announced(&self) -> impl Iterator<Item = &IpNet> {
        let mp = self.attributes.mp_reach.iter().flat_map(|r| r.nlri.iter());
        self.nlri.iter().chain(mp)
    }

    /// Every prefix this UPDATE withdraws: the classic field then MP_UNREACH_NLRI's.
    pub fn withdrawals(&self) -> impl Iterator<Item = &IpNet> {
        let mp = self
            .attributes
            .mp_unreach
            .iter()
            .flat_map(|u| u.withdrawn.iter());
        self.withdrawn.iter().chain(mp)
    }
}

/// Turns every route of `update` into a withdrawal and drops its attributes.
fn withdraw_all(update: &mut Update) {
    let attrs = std::mem::take(&mut update.attributes);
    let mut v6 = Vec::new();
    let nlri = std::mem::take(&mut update.nlri);
    let mp_reach = attrs.mp_reach.into_iter().flat_map(|r| r.nlri);
    let mp_unreach = attrs.mp_unreach.into_iter().flat_map(|u| u.withdrawn);
    for net in nlri.into_iter().chain(mp_reach).chain(mp_unreach) {
        match net {
            IpNet::V4(_) => update.withdrawn.push(net),
            IpNet::V6(_) => v6.push(net),
        }
    }
    if !v6.is_empty() {
        update.attributes.mp_unreach = Some(MpUnreach {
            afi: Afi::Ipv6Unicast,
            withdrawn: v6,
        });
    }
}

fn malformed_list(detail: &'static str) -> WireError {
    WireError::update(UpdateError::MalformedAttributeList, Vec::new(), detail)
}

/// Decodes the body of an UPDATE (everything after the header).
pub(crate) fn parse_update(body: &[u8], codec: &Codec) -> Result<ParsedUpdate, WireError> {
    let lengths_too_large = "withdrawn routes or attribute lengths exceed the message";
    let (rest, withdrawn) = be16
        .flat_map(take)
        .parse(body)
        .map_err(|_| malformed_list(lengths_too_large))?;
    let (nlri, attrs) = be16
        .flat_map(take)
        .parse(rest)
        .map_err(|_| malformed_list(lengths_too_large))?;

    let invalid_network =
        |detail| WireError::update(UpdateError::InvalidNetworkField, Vec::new(), detail);
    let mut update = Update::default();
    parse_prefixes(withdrawn, Afi::Ipv4Unicast, &mut update.withdrawn)
        .map_err(|()| invalid_network("withdrawn routes field cannot be parsed"))?;
    parse_prefixes(nlri, Afi::Ipv4Unicast, &mut update.nlri)
        .map_err(|()| invalid_network("NLRI field cannot be parsed"))?;

    let mut decoded = attributes::decode(attrs, codec)?;
    if !codec.four_octet_as {
        attributes::merge_as4(&mut decoded);
    }
    let mut actions = std::mem::take(&mut decoded.actions);
    // Mandatory attributes, when there is something to announce (RFC 4271 §5, RFC 4760 §3;
    // missing ones are treat-as-withdraw, RFC 7606 §3(d)).
    let classic = !update.nlri.is_empty();
    let mp = decoded.seen(tc::MP_REACH_NLRI);
    if classic || mp {
        let required: &[u8] = if classic {
            &[tc::ORIGIN, tc::AS_PATH, tc::NEXT_HOP]
        } else {
            &[tc::ORIGIN, tc::AS_PATH]
        };
        for &code in required {
            if !decoded.seen(code) {
                actions.push(UpdateAction::TreatAsWithdraw(UpdateFault {
                    attribute: Some(code),
                    subcode: UpdateError::MissingWellKnownAttribute,
                    detail: "mandatory well-known attribute missing",
                }));
            }
        }
    }
    update.attributes = decoded.attrs;
    let mut parsed = ParsedUpdate { update, actions };
    if parsed.treated_as_withdraw() {
        withdraw_all(&mut parsed.update);
    }
    Ok(parsed)
}

/// Appends an UPDATE. IPv4 prefixes must be in the classic fields, MP attributes first (RFC
/// 7606 §5.1) then the others in type order.
pub(crate) fn encode_update(
    update: &Update,
    codec: &Codec,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = start_header(out, MessageType::Update);
    write_prefix_field(out, &update.withdrawn)?;
    let attrs_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let attrs = &update.attributes;
    if let Some(reach) = &attrs.mp_reach {
        write_mp_reach(out, reach)?;
    }
    if let Some(unreach) = &attrs.mp_unreach {
        write_mp_unreach(out, unreach)?;
    }
    attributes::write_path_attributes(out, attrs, codec)?;
    let attrs_len = out.len() - attrs_at - 2;
    let attrs_len = u16::try_from(attrs_len).map_err(|_| EncodeError::TooLong(attrs_len))?;
    out[attrs_at..attrs_at + 2].copy_from_slice(&attrs_len.to_be_bytes());
    for net in &update.nlri {
        if !matches!(net, IpNet::V4(_)) {
            return Err(EncodeError::Invalid(
                "IPv6 prefix in the classic NLRI field",
            ));
        }
        encode_prefix(net, out);
    }
    finish_header(out, start)
}

/// A 2-octet length then IPv4 prefixes.
fn write_prefix_field(out: &mut Vec<u8>, prefixes: &[IpNet]) -> Result<(), EncodeError> {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    for net in prefixes {
        if !matches!(net, IpNet::V4(_)) {
            return Err(EncodeError::Invalid(
                "IPv6 prefix in the classic withdrawn field",
            ));
        }
        encode_prefix(net, out);
    }
    let len = out.len() - at - 2;
    let len = u16::try_from(len).map_err(|_| EncodeError::TooLong(len))?;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
    Ok(())
}
