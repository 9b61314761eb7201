//! Packing many routes into as few UPDATEs as fit the 4096-octet limit.
//!
//! IPv4 unicast goes in the classic NLRI / withdrawn routes fields and IPv6 unicast in
//! MP_REACH_NLRI / MP_UNREACH_NLRI, which is what BIRD, FRR and GoBGP send and accept.

use ipnet::IpNet;

use super::attributes::{finish_mp, start_mp_reach, start_mp_unreach, write_path_attributes};
use super::error::EncodeError;
use super::frame::{HEADER_LEN, MAX_MESSAGE_LEN, MessageType, finish_header, start_header};
use super::nlri::{afi_of, encode_prefix, encoded_len};
use super::{Afi, Codec, PathAttributes};

/// Where the prefixes go in one message and what surrounds them.
trait Layout {
    /// Writes the message up to its first prefix.
    fn open(&self, out: &mut Vec<u8>) -> Result<(), EncodeError>;
    /// Completes the message once its prefixes are written.
    fn close(&self, out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

/// Fills messages with the prefixes of `afi`, starting a new one whenever the next prefix
/// would take the message past 4096 octets.
fn pack(
    prefixes: &[IpNet],
    afi: Afi,
    layout: &impl Layout,
    trailer: usize,
    messages: &mut Vec<Vec<u8>>,
) -> Result<(), EncodeError> {
    let mut current: Option<Vec<u8>> = None;
    for net in prefixes.iter().filter(|n| afi_of(n) == afi) {
        let len = encoded_len(net);
        if let Some(out) = current.take_if(|out| out.len() + len + trailer > MAX_MESSAGE_LEN) {
            messages.push(finish(out, layout)?);
        }
        let out = match &mut current {
            Some(out) => out,
            None => {
                // Room for a whole block written by `encode_prefix` before it is cut back.
                let mut out = Vec::with_capacity(MAX_MESSAGE_LEN + 16);
                layout.open(&mut out)?;
                if out.len() + len + trailer > MAX_MESSAGE_LEN {
                    return Err(EncodeError::TooLong(out.len() + len + trailer));
                }
                current.insert(out)
            }
        };
        encode_prefix(net, out);
    }
    if let Some(out) = current {
        messages.push(finish(out, layout)?);
    }
    Ok(())
}

fn finish(mut out: Vec<u8>, layout: &impl Layout) -> Result<Vec<u8>, EncodeError> {
    layout.close(&mut out)?;
    finish_header(&mut out, 0)?;
    Ok(out)
}

/// Writes the Total Path Attribute Length of an UPDATE whose attributes end at the end of
/// `out` (it has no withdrawn routes).
fn set_attributes_len(out: &mut [u8]) -> Result<(), EncodeError> {
    let len = out.len() - HEADER_LEN - 4;
    let len = u16::try_from(len).map_err(|_| EncodeError::TooLong(len))?;
    out[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// IPv4 announcements: shared attributes, then the NLRI field.
struct ClassicReach<'a>(&'a [u8]);

impl Layout for ClassicReach<'_> {
    fn open(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        start_header(out, MessageType::Update);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(self.0);
        set_attributes_len(out)
    }

    fn close(&self, _: &mut Vec<u8>) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// IPv6 announcements: MP_REACH_NLRI holding the prefixes, then the shared attributes.
struct MpReachLayout<'a> {
    reach: &'a super::MpReach,
    shared: &'a [u8],
}

/// Where MP_REACH_NLRI / MP_UNREACH_NLRI starts: right after the two length fields.
const MP_START: usize = HEADER_LEN + 4;

impl Layout for MpReachLayout<'_> {
    fn open(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        start_header(out, MessageType::Update);
        out.extend_from_slice(&[0, 0, 0, 0]);
        start_mp_reach(out, self.reach).map(|_| ())
    }

    fn close(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        finish_mp(out, MP_START)?;
        out.extend_from_slice(self.shared);
        set_attributes_len(out)
    }
}

/// IPv4 withdrawals: the withdrawn routes field, then an empty attribute list.
struct ClassicUnreach;

impl Layout for ClassicUnreach {
    fn open(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        start_header(out, MessageType::Update);
        out.extend_from_slice(&[0, 0]);
        Ok(())
    }

    fn close(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = (out.len() - HEADER_LEN - 2) as u16;
        out[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        Ok(())
    }
}

/// IPv6 withdrawals: MP_UNREACH_NLRI alone.
struct MpUnreachLayout;

impl Layout for MpUnreachLayout {
    fn open(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        start_header(out, MessageType::Update);
        out.extend_from_slice(&[0, 0, 0, 0]);
        start_mp_unreach(out, Afi::Ipv6Unicast);
        Ok(())
    }

    fn close(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        finish_mp(out, MP_START)?;
        set_attributes_len(out)
    }
}

/// Encodes UPDATEs announcing `prefixes`, all with `attributes`, in as few messages as fit.
///
/// IPv4 prefixes use `attributes.next_hop`; IPv6 prefixes go in MP_REACH_NLRI with the next
/// hops of `attributes.mp_reach` (its own prefix list is ignored, as is `mp_unreach`). A
/// family without its next hop is an error. The path attributes are encoded once and shared
/// by every message; prefixes keep their order within each family.
pub fn pack_announcements(
    attributes: &PathAttributes,
    prefixes: &[IpNet],
    codec: &Codec,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut shared = Vec::new();
    write_path_attributes(&mut shared, attributes, codec)?;
    let mut messages = Vec::new();
    if prefixes.iter().any(|n| matches!(n, IpNet::V4(_))) {
        if attributes.next_hop.is_none() {
            return Err(EncodeError::Invalid("IPv4 announcement without NEXT_HOP"));
        }
        pack(
            prefixes,
            Afi::Ipv4Unicast,
            &ClassicReach(&shared),
            0,
            &mut messages,
        )?;
    }
    if prefixes.iter().any(|n| matches!(n, IpNet::V6(_))) {
        let reach = match &attributes.mp_reach {
            Some(reach) if reach.afi == Afi::Ipv6Unicast => reach,
            _ => {
                return Err(EncodeError::Invalid(
                    "IPv6 announcement without an IPv6 next hop",
                ));
            }
        };
        let layout = MpReachLayout {
            reach,
            shared: &shared,
        };
        pack(
            prefixes,
            Afi::Ipv6Unicast,
            &layout,
            shared.len(),
            &mut messages,
        )?;
    }
    Ok(messages)
}

/// Encodes UPDATEs withdrawing `prefixes` in as few messages as fit: IPv4 in the withdrawn
/// routes field, IPv6 in MP_UNREACH_NLRI.
pub fn pack_withdrawals(prefixes: &[IpNet]) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut messages = Vec::new();
    // The empty attribute list follows the IPv4 withdrawn routes: 2 octets.
    pack(
        prefixes,
        Afi::Ipv4Unicast,
        &ClassicUnreach,
        2,
        &mut messages,
    )?;
    pack(
        prefixes,
        Afi::Ipv6Unicast,
        &MpUnreachLayout,
        0,
        &mut messages,
    )?;
    Ok(messages)
}
