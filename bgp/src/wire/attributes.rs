//! Path attributes (RFC 4271 §4.3, §5): decoding with the RFC 7606 error classification, and
//! encoding for a given [`Codec`].
//!
//! Each attribute wren knows has one way of handling a malformation, from RFC 7606 §7 (and
//! RFC 6793 §6 for AS4_PATH / AS4_AGGREGATOR): session reset, treat-as-withdraw or
//! attribute-discard. Flag errors use the same approach as the attribute's other
//! malformations; RFC 7606 §3(c) allows an attribute's own rules to take precedence and the
//! MP_REACH/MP_UNREACH and discard-class attributes have them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::num::{be8, be16};
use nom::Parser;

use super::error::{EncodeError, UpdateError, WireError};
use super::nlri::{encode_prefix, parse_prefixes};
use super::open::AS_TRANS;
use super::{
    Afi, Aggregator, AsPath, AsSegment, Codec, LargeCommunity, MpReach, MpUnreach, Origin,
    PathAttributes, RawAttribute, UpdateAction, UpdateFault,
};

/// Attribute flag: optional.
pub const FLAG_OPTIONAL: u8 = 0x80;
/// Attribute flag: transitive.
pub const FLAG_TRANSITIVE: u8 = 0x40;
/// Attribute flag: partial (an optional transitive attribute some speaker did not recognise).
pub const FLAG_PARTIAL: u8 = 0x20;
/// Attribute flag: the length field is two octets.
pub const FLAG_EXTENDED_LENGTH: u8 = 0x10;

const WELL_KNOWN: u8 = FLAG_TRANSITIVE;
const OPTIONAL_TRANSITIVE: u8 = FLAG_OPTIONAL | FLAG_TRANSITIVE;
const OPTIONAL_NON_TRANSITIVE: u8 = FLAG_OPTIONAL;

/// Attribute type codes wren decodes.
pub mod type_code {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MED: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
    /// LARGE_COMMUNITY (RFC 8092).
    pub const LARGE_COMMUNITY: u8 = 32;
}
use type_code as tc;

/// How a malformed attribute is handled (RFC 7606 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Approach {
    SessionReset,
    TreatAsWithdraw,
    AttributeDiscard,
}

/// For a type code wren knows: the optional/transitive flags it must carry and the approach
/// for its malformations.
fn known(type_code: u8) -> Option<(u8, Approach)> {
    use Approach::*;
    Some(match type_code {
        tc::ORIGIN | tc::AS_PATH | tc::NEXT_HOP | tc::LOCAL_PREF => (WELL_KNOWN, TreatAsWithdraw),
        tc::MED | tc::ORIGINATOR_ID | tc::CLUSTER_LIST => {
            (OPTIONAL_NON_TRANSITIVE, TreatAsWithdraw)
        }
        tc::COMMUNITIES | tc::LARGE_COMMUNITY => (OPTIONAL_TRANSITIVE, TreatAsWithdraw),
        tc::ATOMIC_AGGREGATE => (WELL_KNOWN, AttributeDiscard),
        tc::AGGREGATOR | tc::AS4_PATH | tc::AS4_AGGREGATOR => {
            (OPTIONAL_TRANSITIVE, AttributeDiscard)
        }
        tc::MP_REACH_NLRI | tc::MP_UNREACH_NLRI => (OPTIONAL_NON_TRANSITIVE, SessionReset),
        _ => return None,
    })
}

/// LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST: attributes that never cross an AS border.
fn is_internal_only(type_code: u8) -> bool {
    matches!(
        type_code,
        tc::LOCAL_PREF | tc::ORIGINATOR_ID | tc::CLUSTER_LIST
    )
}

/// Whether an address can be a next hop at all: a unicast address of a host, not "this
/// network" (0/8, `::`), multicast, the reserved 240/4 with the broadcast address, or an
/// IPv4-mapped IPv6 address (RFC 4291 §2.5.5.2), which no IPv6 route can have as gateway.
/// Loopback addresses pass (two speakers on one host use them); whether a next hop is
/// reachable from here, which a loopback one never is from another host, is the decision
/// process's question (see [`Rib::set_connected`](crate::rib::Rib::set_connected)).
pub fn is_usable_next_hop(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let first = v4.octets()[0];
            first != 0 && !v4.is_multicast() && first < 240
        }
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_multicast() && v6.to_ipv4_mapped().is_none()
        }
    }
}

/// Whether a type code is one the decoder interprets (and the encoder writes from fields).
pub(crate) fn is_known(type_code: u8) -> bool {
    known(type_code).is_some()
}

/// The decoded attribute list of one UPDATE, before the RFC 6793 merge.
#[derive(Default)]
pub(crate) struct DecodedAttributes {
    pub attrs: PathAttributes,
    pub actions: Vec<UpdateAction>,
    /// Attribute types present (even if malformed), to detect duplicates and missing ones.
    seen: [u64; 4],
    as4_path: Option<AsPath>,
    as4_aggregator: Option<Aggregator>,
}

impl DecodedAttributes {
    /// Whether an attribute of this type appeared, well-formed or not.
    pub fn seen(&self, type_code: u8) -> bool {
        self.seen[usize::from(type_code / 64)] & (1 << (type_code % 64)) != 0
    }

    fn mark_seen(&mut self, type_code: u8) {
        self.seen[usize::from(type_code / 64)] |= 1 << (type_code % 64);
    }

    fn act(&mut self, approach: Approach, fault: UpdateFault) {
        match approach {
            Approach::AttributeDiscard => self.actions.push(UpdateAction::AttributeDiscard(fault)),
            _ => self.actions.push(UpdateAction::TreatAsWithdraw(fault)),
        }
    }
}

/// One attribute's problem: the subcode RFC 4271 would use and why.
struct Malformed(UpdateError, &'static str);

/// Decodes the path attributes field. Session-reset conditions return the error; softer ones
/// are recorded as actions and decoding goes on, so the strongest action wins (RFC 7606 §3(i)).
pub(crate) fn decode(mut input: &[u8], codec: &Codec) -> Result<DecodedAttributes, WireError> {
    let mut out = DecodedAttributes::default();
    while !input.is_empty() {
        let header = (be8, be8).parse(input);
        let Ok((after, (flags, code))) = header else {
            // Fewer than three octets left: RFC 7606 §4, treat-as-withdraw.
            out.act(
                Approach::TreatAsWithdraw,
                fault(
                    None,
                    UpdateError::MalformedAttributeList,
                    "attribute list ends inside an attribute header",
                ),
            );
            break;
        };
        let extended = flags & FLAG_EXTENDED_LENGTH != 0;
        let length = if extended {
            be16(after).map(|(r, l)| (r, usize::from(l)))
        } else {
            be8(after).map(|(r, l)| (r, usize::from(l)))
        };
        let Ok((after, len)) = length else {
            out.act(
                Approach::TreatAsWithdraw,
                fault(
                    Some(code),
                    UpdateError::MalformedAttributeList,
                    "attribute list ends inside an attribute header",
                ),
            );
            break;
        };
        let header_len = input.len() - after.len();
        if after.len() < len {
            // The attribute overruns the field (RFC 7606 §4). Without the MP attributes the
            // routes cannot all be located, so those reset the session.
            if matches!(code, tc::MP_REACH_NLRI | tc::MP_UNREACH_NLRI) {
                return Err(WireError::update(
                    UpdateError::AttributeLengthError,
                    input.to_vec(),
                    "MP_REACH/MP_UNREACH overruns the attribute list",
                ));
            }
            out.act(
                Approach::TreatAsWithdraw,
                fault(
                    Some(code),
                    UpdateError::AttributeLengthError,
                    "attribute overruns the attribute list",
                ),
            );
            break;
        }
        let raw = &input[..header_len + len];
        let value = &after[..len];
        input = &after[len..];

        if out.seen(code) {
            if matches!(code, tc::MP_REACH_NLRI | tc::MP_UNREACH_NLRI) {
                return Err(WireError::update(
                    UpdateError::MalformedAttributeList,
                    Vec::new(),
                    "MP_REACH_NLRI or MP_UNREACH_NLRI appears twice",
                ));
            }
            out.act(
                Approach::AttributeDiscard,
                fault(
                    Some(code),
                    UpdateError::MalformedAttributeList,
                    "repeated attribute; the first one is kept",
                ),
            );
            continue;
        }
        out.mark_seen(code);

        if codec.external_peer && is_internal_only(code) {
            // RFC 7606 §7.5, §7.9, §7.10: from an external peer these are discarded, well
            // formed or not; only an internal peer's malformed one withdraws the routes.
            out.act(
                Approach::AttributeDiscard,
                fault(
                    Some(code),
                    UpdateError::OptionalAttributeError,
                    "LOCAL_PREF, ORIGINATOR_ID or CLUSTER_LIST from an external peer",
                ),
            );
            continue;
        }
        let Some((expected_flags, approach)) = known(code) else {
            unknown(flags, code, value, raw, &mut out)?;
            continue;
        };
        let result = if flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != expected_flags {
            Err(Malformed(
                UpdateError::AttributeFlagsError,
                "optional/transitive flags conflict with the type",
            ))
        } else {
            decode_known(code, value, codec, &mut out)
        };
        if let Err(Malformed(subcode, detail)) = result {
            if approach == Approach::SessionReset {
                return Err(WireError::update(subcode, raw.to_vec(), detail));
            }
            out.act(approach, fault(Some(code), subcode, detail));
        }
    }
    // In type order, as they are sent on: equal attribute sets compare equal.
    out.attrs.unknown.sort_by_key(|a| a.type_code);
    Ok(out)
}

fn fault(attribute: Option<u8>, subcode: UpdateError, detail: &'static str) -> UpdateFault {
    UpdateFault {
        attribute,
        subcode,
        detail,
    }
}

/// An attribute wren does not interpret: optional transitive ones are kept (flags reduced to
/// optional/transitive/partial), optional non-transitive ones are dropped quietly as RFC 4271
/// §5 requires, and an unknown well-known attribute resets the session.
fn unknown(
    flags: u8,
    code: u8,
    value: &[u8],
    raw: &[u8],
    out: &mut DecodedAttributes,
) -> Result<(), WireError> {
    if flags & FLAG_OPTIONAL == 0 {
        return Err(WireError::update(
            UpdateError::UnrecognizedWellKnownAttribute,
            raw.to_vec(),
            "unrecognized well-known attribute",
        ));
    }
    if flags & FLAG_TRANSITIVE != 0 {
        out.attrs.unknown.push(RawAttribute {
            flags: flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE | FLAG_PARTIAL),
            type_code: code,
            value: value.to_vec(),
        });
    }
    Ok(())
}

fn u32_value(value: &[u8]) -> Result<u32, Malformed> {
    let octets: [u8; 4] = value
        .try_into()
        .map_err(|_| Malformed(UpdateError::AttributeLengthError, "length is not 4"))?;
    Ok(u32::from_be_bytes(octets))
}

fn ipv4_list(value: &[u8]) -> Result<impl Iterator<Item = [u8; 4]> + '_, Malformed> {
    if value.is_empty() || !value.len().is_multiple_of(4) {
        return Err(Malformed(
            UpdateError::AttributeLengthError,
            "length is not a non-zero multiple of 4",
        ));
    }
    Ok(value.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]))
}

/// Decodes one attribute wren knows into `out.attrs`.
fn decode_known(
    code: u8,
    value: &[u8],
    codec: &Codec,
    out: &mut DecodedAttributes,
) -> Result<(), Malformed> {
    let attrs = &mut out.attrs;
    match code {
        tc::ORIGIN => {
            let [v] = *value else {
                return Err(Malformed(
                    UpdateError::AttributeLengthError,
                    "ORIGIN length is not 1",
                ));
            };
            attrs.origin = Some(match v {
                0 => Origin::Igp,
                1 => Origin::Egp,
                2 => Origin::Incomplete,
                _ => {
                    return Err(Malformed(
                        UpdateError::InvalidOriginAttribute,
                        "undefined ORIGIN",
                    ));
                }
            });
        }
        tc::AS_PATH => {
            let width = if codec.four_octet_as { 4 } else { 2 };
            attrs.as_path = Some(decode_as_path(value, width)?);
        }
        tc::NEXT_HOP => {
            let addr = Ipv4Addr::from(u32_value(value)?);
            if !is_usable_next_hop(IpAddr::V4(addr)) {
                return Err(Malformed(
                    UpdateError::InvalidNextHopAttribute,
                    "NEXT_HOP is not a unicast address of a host",
                ));
            }
            attrs.next_hop = Some(addr);
        }
        tc::MED => attrs.med = Some(u32_value(value)?),
        tc::LOCAL_PREF => attrs.local_pref = Some(u32_value(value)?),
        tc::ATOMIC_AGGREGATE => {
            if !value.is_empty() {
                return Err(Malformed(
                    UpdateError::AttributeLengthError,
                    "ATOMIC_AGGREGATE length is not 0",
                ));
            }
            attrs.atomic_aggregate = true;
        }
        tc::AGGREGATOR => {
            let width = if codec.four_octet_as { 4 } else { 2 };
            attrs.aggregator = Some(decode_aggregator(value, width)?);
        }
        tc::COMMUNITIES => {
            attrs.communities = ipv4_list(value)?.map(u32::from_be_bytes).collect();
        }
        tc::LARGE_COMMUNITY => {
            // RFC 8092 §5: a length that is not a non-zero multiple of 12 is treat-as-withdraw.
            if value.is_empty() || !value.len().is_multiple_of(12) {
                return Err(Malformed(
                    UpdateError::AttributeLengthError,
                    "LARGE_COMMUNITY length is not a non-zero multiple of 12",
                ));
            }
            let word =
                |c: &[u8], i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
            attrs.large_communities = value
                .chunks_exact(12)
                .map(|c| LargeCommunity {
                    global_admin: word(c, 0),
                    local_data_1: word(c, 4),
                    local_data_2: word(c, 8),
                })
                .collect();
        }
        tc::ORIGINATOR_ID => attrs.originator_id = Some(Ipv4Addr::from(u32_value(value)?)),
        tc::CLUSTER_LIST => attrs.cluster_list = ipv4_list(value)?.map(Ipv4Addr::from).collect(),
        tc::MP_REACH_NLRI => match decode_mp_reach(value)? {
            Some(reach) => {
                if !is_usable_next_hop(reach.next_hop) {
                    // The attribute is well formed, so its routes can all be located: they
                    // are withdrawn (RFC 7606 §7.11 leaves the next hop's meaning to RFC
                    // 4271 §6.3, treat-as-withdraw) rather than the session reset.
                    out.actions.push(UpdateAction::TreatAsWithdraw(fault(
                        Some(code),
                        UpdateError::InvalidNextHopAttribute,
                        "MP_REACH_NLRI next hop is not a unicast address of a host",
                    )));
                }
                attrs.mp_reach = Some(reach);
            }
            None => out.actions.push(unsupported_family(code)),
        },
        tc::MP_UNREACH_NLRI => match decode_mp_unreach(value)? {
            Some(unreach) => attrs.mp_unreach = Some(unreach),
            None => out.actions.push(unsupported_family(code)),
        },
        tc::AS4_PATH | tc::AS4_AGGREGATOR if codec.four_octet_as => {
            // RFC 6793 §4.1: between 4-octet speakers these must not appear; discard them.
            out.actions.push(UpdateAction::AttributeDiscard(fault(
                Some(code),
                UpdateError::OptionalAttributeError,
                "AS4 attribute on a 4-octet AS session",
            )));
        }
        tc::AS4_PATH => out.as4_path = Some(decode_as_path(value, 4)?),
        tc::AS4_AGGREGATOR => out.as4_aggregator = Some(decode_aggregator(value, 4)?),
        _ => {}
    }
    Ok(())
}

fn unsupported_family(code: u8) -> UpdateAction {
    UpdateAction::AttributeDiscard(fault(
        Some(code),
        UpdateError::OptionalAttributeError,
        "address family wren does not speak",
    ))
}

fn read_asn(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
}

/// AS_PATH / AS4_PATH segments with `width`-octet AS numbers. Confederation segments are
/// rejected along with the RFC 4271 malformations: wren is never a confederation member.
fn decode_as_path(mut value: &[u8], width: usize) -> Result<AsPath, Malformed> {
    let bad = |detail| Malformed(UpdateError::MalformedAsPath, detail);
    let mut segments = Vec::new();
    while !value.is_empty() {
        let [kind, count, rest @ ..] = value else {
            return Err(bad("truncated AS_PATH segment header"));
        };
        let len = usize::from(*count) * width;
        if *count == 0 || rest.len() < len {
            return Err(bad("AS_PATH segment is empty or overruns the attribute"));
        }
        let asns: Vec<u32> = rest[..len].chunks_exact(width).map(read_asn).collect();
        if asns.contains(&0) {
            return Err(bad("AS_PATH contains AS 0 (RFC 7607)"));
        }
        segments.push(match kind {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            _ => return Err(bad("AS_PATH segment type is not AS_SET or AS_SEQUENCE")),
        });
        value = &rest[len..];
    }
    Ok(AsPath { segments })
}

fn decode_aggregator(value: &[u8], width: usize) -> Result<Aggregator, Malformed> {
    if value.len() != width + 4 {
        return Err(Malformed(
            UpdateError::AttributeLengthError,
            "AGGREGATOR length is wrong",
        ));
    }
    let asn = read_asn(&value[..width]);
    if asn == 0 {
        return Err(Malformed(
            UpdateError::OptionalAttributeError,
            "AGGREGATOR AS is 0 (RFC 7607)",
        ));
    }
    let a = &value[width..];
    Ok(Aggregator {
        asn,
        address: Ipv4Addr::new(a[0], a[1], a[2], a[3]),
    })
}

fn mp_error(detail: &'static str) -> Malformed {
    Malformed(UpdateError::OptionalAttributeError, detail)
}

/// MP_REACH_NLRI; `None` for a family wren does not speak.
fn decode_mp_reach(value: &[u8]) -> Result<Option<MpReach>, Malformed> {
    let [a0, a1, safi, nh_len, rest @ ..] = value else {
        return Err(mp_error("MP_REACH_NLRI too short"));
    };
    let Some(afi) = Afi::from_afi_safi(u16::from_be_bytes([*a0, *a1]), *safi) else {
        return Ok(None);
    };
    let nh_len = usize::from(*nh_len);
    // The next hop is followed by one reserved octet (RFC 4760 §3).
    if rest.len() < nh_len + 1 {
        return Err(mp_error("MP_REACH_NLRI next hop overruns the attribute"));
    }
    let nh = &rest[..nh_len];
    let (next_hop, link_local_next_hop) = match (afi, nh_len) {
        (Afi::Ipv4Unicast, 4) => (IpAddr::from([nh[0], nh[1], nh[2], nh[3]]), None),
        (Afi::Ipv6Unicast, 16) => (IpAddr::V6(ipv6(&nh[..16])), None),
        (Afi::Ipv6Unicast, 32) => (IpAddr::V6(ipv6(&nh[..16])), Some(ipv6(&nh[16..32]))),
        _ => return Err(mp_error("next hop length does not fit the address family")),
    };
    let mut nlri = Vec::new();
    parse_prefixes(&rest[nh_len + 1..], afi, &mut nlri)
        .map_err(|()| mp_error("MP_REACH_NLRI prefixes cannot be parsed"))?;
    Ok(Some(MpReach {
        afi,
        next_hop,
        link_local_next_hop,
        nlri,
    }))
}

fn ipv6(bytes: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    Ipv6Addr::from(octets)
}

/// MP_UNREACH_NLRI; `None` for a family wren does not speak.
fn decode_mp_unreach(value: &[u8]) -> Result<Option<MpUnreach>, Malformed> {
    let [a0, a1, safi, rest @ ..] = value else {
        return Err(mp_error("MP_UNREACH_NLRI too short"));
    };
    let Some(afi) = Afi::from_afi_safi(u16::from_be_bytes([*a0, *a1]), *safi) else {
        return Ok(None);
    };
    let mut withdrawn = Vec::new();
    parse_prefixes(rest, afi, &mut withdrawn)
        .map_err(|()| mp_error("MP_UNREACH_NLRI prefixes cannot be parsed"))?;
    Ok(Some(MpUnreach { afi, withdrawn }))
}

/// Number of ASes a path counts for (RFC 4271 §9.1.2.2: an AS_SET counts as one).
fn path_count(path: &AsPath) -> usize {
    path.segments
        .iter()
        .map(|s| match s {
            AsSegment::Sequence(v) => v.len(),
            AsSegment::Set(_) => 1,
        })
        .sum()
}

/// Reconstructs the 4-octet AS_PATH and AGGREGATOR from a 2-octet session's attributes
/// (RFC 6793 §4.2.3) and leaves the result in `attrs`.
pub(crate) fn merge_as4(decoded: &mut DecodedAttributes) {
    let as4_path = decoded.as4_path.take();
    let as4_aggregator = decoded.as4_aggregator.take();
    let attrs = &mut decoded.attrs;
    // An AGGREGATOR from a speaker that could write its AS in 2 octets means the AS4
    // attributes were added along the way by others and cannot be trusted.
    if attrs.aggregator.is_some_and(|a| a.asn != AS_TRANS) {
        return;
    }
    if let (Some(agg), Some(agg4)) = (attrs.aggregator.as_mut(), as4_aggregator) {
        *agg = agg4;
    }
    let (Some(path), Some(path4)) = (attrs.as_path.as_mut(), as4_path) else {
        return;
    };
    let keep = path_count(path).checked_sub(path_count(&path4));
    let Some(mut keep) = keep else {
        // AS4_PATH longer than AS_PATH: ignore it.
        return;
    };
    let mut merged: Vec<AsSegment> = Vec::new();
    for segment in &path.segments {
        if keep == 0 {
            break;
        }
        match segment {
            AsSegment::Set(v) => {
                merged.push(AsSegment::Set(v.clone()));
                keep -= 1;
            }
            AsSegment::Sequence(v) => {
                let take = keep.min(v.len());
                merged.push(AsSegment::Sequence(v[..take].to_vec()));
                keep -= take;
            }
        }
    }
    // The kept 2-octet ASes and the AS4_PATH are one sequence where they meet.
    let mut path4 = path4.segments.into_iter();
    if let Some(first) = path4.next() {
        match (merged.last_mut(), first) {
            (Some(AsSegment::Sequence(tail)), AsSegment::Sequence(head)) => tail.extend(head),
            (_, first) => merged.push(first),
        }
    }
    merged.extend(path4);
    path.segments = merged;
}

/// Appends one attribute: the body is written by `body`; the length field is one octet
/// unless the body exceeds 255 octets or `always_extended` is set.
fn attribute(
    out: &mut Vec<u8>,
    flags: u8,
    code: u8,
    always_extended: bool,
    body: impl FnOnce(&mut Vec<u8>),
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[flags | FLAG_EXTENDED_LENGTH, code, 0, 0]);
    body(out);
    let len = out.len() - start - 4;
    if len <= 255 && !always_extended {
        out[start] = flags & !FLAG_EXTENDED_LENGTH;
        out[start + 2] = len as u8;
        out.copy_within(start + 4.., start + 3);
        out.truncate(out.len() - 1);
    } else {
        let len = u16::try_from(len).map_err(|_| EncodeError::TooLong(len))?;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

fn write_asn(out: &mut Vec<u8>, asn: u32, four_octet: bool) {
    if four_octet {
        out.extend_from_slice(&asn.to_be_bytes());
    } else {
        out.extend_from_slice(&u16::try_from(asn).unwrap_or(AS_TRANS as u16).to_be_bytes());
    }
}

/// AS_PATH segments, split into runs of at most 255 ASes; empty segments are left out.
fn write_as_path(out: &mut Vec<u8>, path: &AsPath, four_octet: bool) {
    for segment in &path.segments {
        let (kind, asns) = match segment {
            AsSegment::Set(v) => (1, v),
            AsSegment::Sequence(v) => (2, v),
        };
        for run in asns.chunks(255) {
            out.extend_from_slice(&[kind, run.len() as u8]);
            for &asn in run {
                write_asn(out, asn, four_octet);
            }
        }
    }
}

/// Starts MP_REACH_NLRI: everything before its prefixes, with a 2-octet length to be filled
/// in by [`finish_mp`] (extended length always, as other speakers do for this attribute, so
/// the packer knows its header size in advance). Returns where the attribute starts.
pub(crate) fn start_mp_reach(out: &mut Vec<u8>, reach: &MpReach) -> Result<usize, EncodeError> {
    let (afi, safi) = reach.afi.afi_safi();
    let mut nh = [0u8; 32];
    let nh_len = match (reach.afi, reach.next_hop, reach.link_local_next_hop) {
        (Afi::Ipv4Unicast, IpAddr::V4(v4), None) => {
            nh[..4].copy_from_slice(&v4.octets());
            4
        }
        (Afi::Ipv6Unicast, IpAddr::V6(v6), ll) => {
            nh[..16].copy_from_slice(&v6.octets());
            match ll {
                Some(ll) => {
                    nh[16..].copy_from_slice(&ll.octets());
                    32
                }
                None => 16,
            }
        }
        _ => {
            return Err(EncodeError::Invalid(
                "MP_REACH next hop does not fit its family",
            ));
        }
    };
    let start = out.len();
    out.extend_from_slice(&[
        OPTIONAL_NON_TRANSITIVE | FLAG_EXTENDED_LENGTH,
        tc::MP_REACH_NLRI,
    ]);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&afi.to_be_bytes());
    out.extend_from_slice(&[safi, nh_len as u8]);
    out.extend_from_slice(&nh[..nh_len]);
    out.push(0);
    Ok(start)
}

/// Starts MP_UNREACH_NLRI: everything before its prefixes (see [`start_mp_reach`]).
pub(crate) fn start_mp_unreach(out: &mut Vec<u8>, afi: Afi) -> usize {
    let (a, s) = afi.afi_safi();
    let start = out.len();
    out.extend_from_slice(&[
        OPTIONAL_NON_TRANSITIVE | FLAG_EXTENDED_LENGTH,
        tc::MP_UNREACH_NLRI,
    ]);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&a.to_be_bytes());
    out.push(s);
    start
}

/// Fills in the length of an MP attribute started at `start`, now that its prefixes are
/// written.
pub(crate) fn finish_mp(out: &mut [u8], start: usize) -> Result<(), EncodeError> {
    let len = out.len() - start - 4;
    let len = u16::try_from(len).map_err(|_| EncodeError::TooLong(len))?;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends MP_REACH_NLRI with its prefixes.
pub(crate) fn write_mp_reach(out: &mut Vec<u8>, reach: &MpReach) -> Result<(), EncodeError> {
    if reach
        .nlri
        .iter()
        .any(|n| super::nlri::afi_of(n) != reach.afi)
    {
        return Err(EncodeError::Invalid("MP_REACH prefix of another family"));
    }
    let start = start_mp_reach(out, reach)?;
    reach.nlri.iter().for_each(|net| encode_prefix(net, out));
    finish_mp(out, start)
}

/// Appends MP_UNREACH_NLRI with its prefixes.
pub(crate) fn write_mp_unreach(out: &mut Vec<u8>, unreach: &MpUnreach) -> Result<(), EncodeError> {
    if unreach
        .withdrawn
        .iter()
        .any(|n| super::nlri::afi_of(n) != unreach.afi)
    {
        return Err(EncodeError::Invalid("MP_UNREACH prefix of another family"));
    }
    let start = start_mp_unreach(out, unreach.afi);
    unreach
        .withdrawn
        .iter()
        .for_each(|net| encode_prefix(net, out));
    finish_mp(out, start)
}

/// Appends every attribute except MP_REACH/MP_UNREACH, in ascending type order. On a 2-octet
/// session, AS numbers that need 4 octets become AS_TRANS and AS4_PATH / AS4_AGGREGATOR carry
/// the real ones (RFC 6793 §4.2.2). Unknown attributes get the partial bit, since wren only
/// ever holds them on behalf of another speaker; non-transitive ones and ones whose type wren
/// interprets itself are not written.
pub(crate) fn write_path_attributes(
    out: &mut Vec<u8>,
    attrs: &PathAttributes,
    codec: &Codec,
) -> Result<(), EncodeError> {
    let four = codec.four_octet_as;
    let needs_as4 = |asn: u32| !four && asn > u32::from(u16::MAX);
    let as4_path = attrs.as_path.as_ref().filter(|p| {
        p.segments.iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.iter().any(|&a| needs_as4(a)),
        })
    });
    // With AS4_PATH present the aggregator always travels as AS_TRANS + AS4_AGGREGATOR: a
    // 2-octet AS other than AS_TRANS in AGGREGATOR makes the receiver ignore AS4_PATH
    // (RFC 6793 §4.2.3).
    let as4_aggregator = attrs
        .aggregator
        .filter(|a| needs_as4(a.asn) || as4_path.is_some());

    let fixed = |out: &mut Vec<u8>, flags, code, bytes: &[u8]| {
        attribute(out, flags, code, false, |o| o.extend_from_slice(bytes))
    };
    if let Some(origin) = attrs.origin {
        fixed(out, WELL_KNOWN, tc::ORIGIN, &[origin as u8])?;
    }
    if let Some(path) = &attrs.as_path {
        attribute(out, WELL_KNOWN, tc::AS_PATH, false, |o| {
            write_as_path(o, path, four)
        })?;
    }
    if let Some(nh) = attrs.next_hop {
        fixed(out, WELL_KNOWN, tc::NEXT_HOP, &nh.octets())?;
    }
    if let Some(med) = attrs.med {
        fixed(out, OPTIONAL_NON_TRANSITIVE, tc::MED, &med.to_be_bytes())?;
    }
    if let Some(lp) = attrs.local_pref {
        fixed(out, WELL_KNOWN, tc::LOCAL_PREF, &lp.to_be_bytes())?;
    }
    if attrs.atomic_aggregate {
        fixed(out, WELL_KNOWN, tc::ATOMIC_AGGREGATE, &[])?;
    }
    if let Some(agg) = attrs.aggregator {
        let asn = if as4_aggregator.is_some() {
            AS_TRANS
        } else {
            agg.asn
        };
        attribute(out, OPTIONAL_TRANSITIVE, tc::AGGREGATOR, false, |o| {
            write_asn(o, asn, four);
            o.extend_from_slice(&agg.address.octets());
        })?;
    }
    if !attrs.communities.is_empty() {
        attribute(out, OPTIONAL_TRANSITIVE, tc::COMMUNITIES, false, |o| {
            attrs
                .communities
                .iter()
                .for_each(|c| o.extend_from_slice(&c.to_be_bytes()));
        })?;
    }
    if let Some(id) = attrs.originator_id {
        fixed(
            out,
            OPTIONAL_NON_TRANSITIVE,
            tc::ORIGINATOR_ID,
            &id.octets(),
        )?;
    }
    if !attrs.cluster_list.is_empty() {
        attribute(out, OPTIONAL_NON_TRANSITIVE, tc::CLUSTER_LIST, false, |o| {
            attrs
                .cluster_list
                .iter()
                .for_each(|c| o.extend_from_slice(&c.octets()));
        })?;
    }

    let mut unknown: Vec<&RawAttribute> = attrs
        .unknown
        .iter()
        .filter(|a| a.flags & OPTIONAL_TRANSITIVE == OPTIONAL_TRANSITIVE && !is_known(a.type_code))
        .collect();
    unknown.sort_by_key(|a| a.type_code);
    let mut unknown = unknown.into_iter().peekable();
    let mut write_unknown_below = |out: &mut Vec<u8>, limit: u16| -> Result<(), EncodeError> {
        while let Some(a) = unknown.next_if(|a| u16::from(a.type_code) < limit) {
            let flags = a.flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) | FLAG_PARTIAL;
            fixed(out, flags, a.type_code, &a.value)?;
        }
        Ok(())
    };
    write_unknown_below(out, u16::from(tc::AS4_PATH))?;
    if let Some(path) = as4_path {
        attribute(out, OPTIONAL_TRANSITIVE, tc::AS4_PATH, false, |o| {
            write_as_path(o, path, true)
        })?;
    }
    if let Some(agg) = as4_aggregator {
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&agg.asn.to_be_bytes());
        value[4..].copy_from_slice(&agg.address.octets());
        fixed(out, OPTIONAL_TRANSITIVE, tc::AS4_AGGREGATOR, &value)?;
    }
    write_unknown_below(out, u16::from(tc::LARGE_COMMUNITY))?;
    if !attrs.large_communities.is_empty() {
        attribute(out, OPTIONAL_TRANSITIVE, tc::LARGE_COMMUNITY, false, |o| {
            for c in &attrs.large_communities {
                o.extend_from_slice(&c.global_admin.to_be_bytes());
                o.extend_from_slice(&c.local_data_1.to_be_bytes());
                o.extend_from_slice(&c.local_data_2.to_be_bytes());
            }
        })?;
    }
    write_unknown_below(out, 256)
}
