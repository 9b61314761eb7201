//! Packing many routes into as few UPDATEs as fit the 4096-octet limit.
//!
//! IPv4 unicast goes in the classic NLRI / withdrawn routes fields and IPv6 unicast in
//! MP_REACH_NLRI / MP_UNREACH_NLRI, which is what BIRD, FRR and GoBGP send and accept.

use ipnet::IpNet;

use super::attributes::{write_mp_reach, write_mp_unreach, write_path_attributes};
use super::error::EncodeError;
use super::frame::{HEADER_LEN, MAX_MESSAGE_LEN, MessageType, finish_header, start_header};
use super::nlri::{encode_prefix, encoded_len};
use super::{Afi, Codec, MpReach, PathAttributes};

/// Octets of MP_REACH_NLRI before its prefixes: flags, type, 2-octet length, AFI, SAFI,
/// next hop length, next hop, reserved.
fn mp_reach_overhead(reach: &MpReach) -> usize {
    let next_hop = match (reach.next_hop, reach.link_local_next_hop) {
        (std::net::IpAddr::V4(_), _) => 4,
        (_, Some(_)) => 32,
        (_, None) => 16,
    };
    4 + 4 + next_hop + 1
}

/// Octets of MP_UNREACH_NLRI before its prefixes: flags, type, 2-octet length, AFI, SAFI.
const MP_UNREACH_OVERHEAD: usize = 4 + 3;

/// Splits `prefixes` into runs whose encodings each fit in `budget` octets.
fn runs(prefixes: &[IpNet], budget: usize) -> Result<Vec<&[IpNet]>, EncodeError> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, net) in prefixes.iter().enumerate() {
        let len = encoded_len(net);
        if used + len > budget {
            if i == start {
                return Err(EncodeError::TooLong(MAX_MESSAGE_LEN - budget + len));
            }
            out.push(&prefixes[start..i]);
            (start, used) = (i, 0);
        }
        used += len;
    }
    if start < prefixes.len() {
        out.push(&prefixes[start..]);
    }
    Ok(out)
}

/// Room left for prefixes in an UPDATE that already carries `fixed` octets besides the
/// header and the two 2-octet length fields.
fn budget(fixed: usize) -> Result<usize, EncodeError> {
    let used = HEADER_LEN + 4 + fixed;
    MAX_MESSAGE_LEN
        .checked_sub(used)
        .filter(|&room| room > 0)
        .ok_or(EncodeError::TooLong(used))
}

/// Encodes UPDATEs announcing `prefixes`, all with `attributes`, in as few messages as fit.
///
/// IPv4 prefixes use `attributes.next_hop`; IPv6 prefixes go in MP_REACH_NLRI with the next
/// hops of `attributes.mp_reach` (its own prefix list is ignored, as is `mp_unreach`). A
/// family without its next hop is an error. The path attributes are encoded once and shared
/// by every message.
pub fn pack_announcements(
    attributes: &PathAttributes,
    prefixes: &[IpNet],
    codec: &Codec,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut shared = Vec::new();
    write_path_attributes(&mut shared, attributes, codec)?;
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
        prefixes.iter().partition(|n| matches!(n, IpNet::V4(_)));
    let mut messages = Vec::new();
    if !v4.is_empty() {
        if attributes.next_hop.is_none() {
            return Err(EncodeError::Invalid("IPv4 announcement without NEXT_HOP"));
        }
        for run in runs(&v4, budget(shared.len())?)? {
            let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
            let start = start_header(&mut out, MessageType::Update);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(shared.len() as u16).to_be_bytes());
            out.extend_from_slice(&shared);
            run.iter().for_each(|net| encode_prefix(net, &mut out));
            finish_header(&mut out, start)?;
            messages.push(out);
        }
    }
    if !v6.is_empty() {
        let template = match &attributes.mp_reach {
            Some(reach) if reach.afi == Afi::Ipv6Unicast => reach,
            _ => {
                return Err(EncodeError::Invalid(
                    "IPv6 announcement without an IPv6 next hop",
                ));
            }
        };
        let overhead = mp_reach_overhead(template);
        for run in runs(&v6, budget(shared.len() + overhead)?)? {
            let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
            let start = start_header(&mut out, MessageType::Update);
            out.extend_from_slice(&[0, 0, 0, 0]);
            write_mp_reach(&mut out, template, run)?;
            out.extend_from_slice(&shared);
            let attrs_len = (out.len() - start - HEADER_LEN - 4) as u16;
            out[start + HEADER_LEN + 2..start + HEADER_LEN + 4]
                .copy_from_slice(&attrs_len.to_be_bytes());
            finish_header(&mut out, start)?;
            messages.push(out);
        }
    }
    Ok(messages)
}

/// Encodes UPDATEs withdrawing `prefixes` in as few messages as fit: IPv4 in the withdrawn
/// routes field, IPv6 in MP_UNREACH_NLRI.
pub fn pack_withdrawals(prefixes: &[IpNet]) -> Result<Vec<Vec<u8>>, EncodeError> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
        prefixes.iter().partition(|n| matches!(n, IpNet::V4(_)));
    let mut messages = Vec::new();
    for run in runs(&v4, budget(0)?)? {
        let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
        let start = start_header(&mut out, MessageType::Update);
        let len: usize = run.iter().map(encoded_len).sum();
        out.extend_from_slice(&(len as u16).to_be_bytes());
        run.iter().for_each(|net| encode_prefix(net, &mut out));
        out.extend_from_slice(&[0, 0]);
        finish_header(&mut out, start)?;
        messages.push(out);
    }
    for run in runs(&v6, budget(MP_UNREACH_OVERHEAD)?)? {
        let mut out = Vec::with_capacity(MAX_MESSAGE_LEN);
        let start = start_header(&mut out, MessageType::Update);
        out.extend_from_slice(&[0, 0, 0, 0]);
        write_mp_unreach(&mut out, Afi::Ipv6Unicast, run)?;
        let attrs_len = (out.len() - start - HEADER_LEN - 4) as u16;
        out[start + HEADER_LEN + 2..start + HEADER_LEN + 4]
            .copy_from_slice(&attrs_len.to_be_bytes());
        finish_header(&mut out, start)?;
        messages.push(out);
    }
    Ok(messages)
}
