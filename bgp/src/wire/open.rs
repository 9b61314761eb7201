//! OPEN: optional parameters and capabilities (RFC 4271 §4.2, RFC 5492, RFC 9072), and the
//! checks and negotiation a session applies to a received OPEN (RFC 4271 §6.2).

use std::net::Ipv4Addr;

use super::num::{be8, be16, be32};
use nom::Parser;
use nom::bytes::complete::take;

use super::error::{EncodeError, OpenError, WireError};
use super::frame::{MessageType, finish_header, start_header};
use super::{Afi, Capability, Codec, GracefulRestart, Open};

/// The 2-octet AS number that stands in for a 4-octet one (RFC 6793).
pub const AS_TRANS: u32 = 23456;

/// Optional parameter type for capabilities (RFC 5492).
const PARAM_CAPABILITIES: u8 = 2;
/// Marker of the extended optional parameters length (RFC 9072).
const PARAM_EXTENDED: u8 = 255;

const CAP_MULTIPROTOCOL: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GRACEFUL_RESTART: u8 = 64;
const CAP_FOUR_OCTET_AS: u8 = 65;

impl Afi {
    /// The (AFI, SAFI) numbers of this family.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Afi::Ipv4Unicast => (1, 1),
            Afi::Ipv6Unicast => (2, 1),
        }
    }

    /// The family for an (AFI, SAFI) pair, if wren speaks it.
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Afi> {
        match (afi, safi) {
            (1, 1) => Some(Afi::Ipv4Unicast),
            (2, 1) => Some(Afi::Ipv6Unicast),
            _ => None,
        }
    }
}

impl Capability {
    /// The capability code (RFC 5492).
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol(_) => CAP_MULTIPROTOCOL,
            Capability::RouteRefresh => CAP_ROUTE_REFRESH,
            Capability::GracefulRestart(_) => CAP_GRACEFUL_RESTART,
            Capability::FourOctetAs(_) => CAP_FOUR_OCTET_AS,
            Capability::Unknown { code, .. } => *code,
        }
    }

    /// Appends the capability as code, length, value.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.code());
        let len_at = out.len();
        out.push(0);
        match self {
            Capability::Multiprotocol(afi) => {
                let (a, s) = afi.afi_safi();
                out.extend_from_slice(&a.to_be_bytes());
                out.extend_from_slice(&[0, s]);
            }
            Capability::RouteRefresh => {}
            Capability::GracefulRestart(gr) => {
                if gr.restart_time > 0x0fff {
                    return Err(EncodeError::Invalid(
                        "graceful restart time exceeds 12 bits",
                    ));
                }
                let flags = if gr.restarting { 0x8000 } else { 0 };
                out.extend_from_slice(&(flags | gr.restart_time).to_be_bytes());
                for (afi, forwarding) in &gr.families {
                    let (a, s) = afi.afi_safi();
                    out.extend_from_slice(&a.to_be_bytes());
                    out.extend_from_slice(&[s, if *forwarding { 0x80 } else { 0 }]);
                }
            }
            Capability::FourOctetAs(asn) => out.extend_from_slice(&asn.to_be_bytes()),
            Capability::Unknown { value, .. } => out.extend_from_slice(value),
        }
        let len = out.len() - len_at - 1;
        out[len_at] = u8::try_from(len).map_err(|_| EncodeError::Invalid("capability too long"))?;
        Ok(())
    }

    /// Whether `self` (a capability one side requires) is satisfied by `offered`.
    fn satisfied_by(&self, offered: &Capability) -> bool {
        match (self, offered) {
            (Capability::Multiprotocol(a), Capability::Multiprotocol(b)) => a == b,
            (Capability::Unknown { code, value }, Capability::Unknown { code: c, value: v }) => {
                code == c && value == v
            }
            _ => self.code() == offered.code(),
        }
    }
}

impl Open {
    /// The AS carried in the 4-octet AS capability, if the sender advertised it.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// Families the sender can exchange: its multiprotocol capabilities, or IPv4 unicast
    /// alone when it advertised none (RFC 4760 §8).
    pub fn families(&self) -> Vec<Afi> {
        let mut families: Vec<Afi> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(afi) => Some(*afi),
                _ => None,
            })
            .collect();
        let any_mp = self
            .capabilities
            .iter()
            .any(|c| c.code() == CAP_MULTIPROTOCOL);
        if !any_mp {
            families.push(Afi::Ipv4Unicast);
        }
        families.sort();
        families.dedup();
        families
    }

    /// The sender's graceful-restart capability, if any.
    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    /// Whether the sender supports ROUTE-REFRESH.
    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }
}

/// A malformed OPEN for which RFC 4271 names no specific subcode.
fn malformed(detail: &'static str) -> WireError {
    WireError::open(OpenError::Unspecific, Vec::new(), detail)
}

/// Decodes the body of an OPEN (everything after the header).
pub(crate) fn parse_open(body: &[u8]) -> Result<Open, WireError> {
    let fixed = (be8, be16, be16, be32, be8).parse(body);
    let Ok((rest, (version, my_as, hold_time, router_id, opt_len))) = fixed else {
        return Err(malformed("OPEN shorter than its fixed fields"));
    };
    if version != 4 {
        // The data is the largest version we support (RFC 4271 §6.2).
        return Err(WireError::open(
            OpenError::UnsupportedVersionNumber,
            vec![0, 4],
            "BGP version is not 4",
        ));
    }
    let params = optional_parameters(rest, opt_len)?;
    let mut capabilities = Vec::new();
    for (kind, value) in params {
        if kind != PARAM_CAPABILITIES {
            return Err(WireError::open(
                OpenError::UnsupportedOptionalParameter,
                Vec::new(),
                "optional parameter other than capabilities",
            ));
        }
        parse_capabilities(value, &mut capabilities)?;
    }
    let mut open = Open {
        asn: u32::from(my_as),
        hold_time,
        router_id: Ipv4Addr::from(router_id),
        capabilities,
    };
    if let Some(asn) = open.four_octet_as() {
        open.asn = asn;
    }
    Ok(open)
}

/// Splits the optional parameters into (type, value) pairs, in the classic layout or the
/// RFC 9072 extended one.
fn optional_parameters(rest: &[u8], opt_len: u8) -> Result<Vec<(u8, &[u8])>, WireError> {
    let extended = opt_len != 0 && rest.first() == Some(&PARAM_EXTENDED);
    let (mut params, long_lengths) = if extended {
        let Ok((after, (_, ext_len))) = (be8, be16).parse(rest) else {
            return Err(malformed("truncated extended optional parameters length"));
        };
        if after.len() != usize::from(ext_len) {
            return Err(malformed("extended optional parameters length mismatch"));
        }
        (after, true)
    } else {
        if rest.len() != usize::from(opt_len) {
            return Err(malformed("optional parameters length mismatch"));
        }
        (rest, false)
    };
    let mut out = Vec::new();
    while !params.is_empty() {
        let parsed = if long_lengths {
            (be8, be16)
                .parse(params)
                .map(|(r, (t, l))| (r, (t, usize::from(l))))
        } else {
            (be8, be8)
                .parse(params)
                .map(|(r, (t, l))| (r, (t, usize::from(l))))
        };
        let Ok((after, (kind, len))) = parsed else {
            return Err(malformed("truncated optional parameter header"));
        };
        let Ok((after, value)) = take::<_, _, nom::error::Error<&[u8]>>(len).parse(after) else {
            return Err(malformed("optional parameter overruns the OPEN"));
        };
        out.push((kind, value));
        params = after;
    }
    Ok(out)
}

/// Decodes the capabilities in one capabilities parameter.
fn parse_capabilities(mut input: &[u8], out: &mut Vec<Capability>) -> Result<(), WireError> {
    while !input.is_empty() {
        let Ok((after, (code, len))) = (be8, be8).parse(input) else {
            return Err(malformed("truncated capability header"));
        };
        let Ok((after, value)) = take::<_, _, nom::error::Error<&[u8]>>(len).parse(after) else {
            return Err(malformed("capability overruns its parameter"));
        };
        let tlv = &input[..2 + usize::from(len)];
        out.push(parse_capability(code, value).ok_or_else(|| {
            WireError::open(OpenError::Unspecific, tlv.to_vec(), "malformed capability")
        })?);
        input = after;
    }
    Ok(())
}

/// One capability; `None` when a capability wren knows has a malformed value.
fn parse_capability(code: u8, value: &[u8]) -> Option<Capability> {
    Some(match code {
        CAP_MULTIPROTOCOL => {
            let [a0, a1, _, safi] = *value else {
                return None;
            };
            match Afi::from_afi_safi(u16::from_be_bytes([a0, a1]), safi) {
                Some(afi) => Capability::Multiprotocol(afi),
                None => Capability::Unknown {
                    code,
                    value: value.to_vec(),
                },
            }
        }
        CAP_ROUTE_REFRESH if value.is_empty() => Capability::RouteRefresh,
        CAP_FOUR_OCTET_AS => {
            let octets: [u8; 4] = value.try_into().ok()?;
            Capability::FourOctetAs(u32::from_be_bytes(octets))
        }
        CAP_GRACEFUL_RESTART => {
            if value.len() < 2 || !(value.len() - 2).is_multiple_of(4) {
                return None;
            }
            let head = u16::from_be_bytes([value[0], value[1]]);
            // Families wren does not speak are left out: they cannot be negotiated.
            let families = value[2..]
                .chunks_exact(4)
                .filter_map(|f| {
                    let afi = Afi::from_afi_safi(u16::from_be_bytes([f[0], f[1]]), f[2])?;
                    Some((afi, f[3] & 0x80 != 0))
                })
                .collect();
            Capability::GracefulRestart(GracefulRestart {
                restarting: head & 0x8000 != 0,
                restart_time: head & 0x0fff,
                families,
            })
        }
        CAP_ROUTE_REFRESH => return None,
        _ => Capability::Unknown {
            code,
            value: value.to_vec(),
        },
    })
}

/// Appends an OPEN. The 2-octet AS field holds AS_TRANS when the AS needs 4 octets; the
/// capabilities go in as few parameters as fit, switching to the RFC 9072 layout only when
/// they exceed 255 octets.
pub(crate) fn encode_open(open: &Open, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = start_header(out, MessageType::Open);
    let my_as = u16::try_from(open.asn).unwrap_or(AS_TRANS as u16);
    out.push(4);
    out.extend_from_slice(&my_as.to_be_bytes());
    out.extend_from_slice(&open.hold_time.to_be_bytes());
    out.extend_from_slice(&open.router_id.octets());

    let mut caps = Vec::with_capacity(open.capabilities.len());
    for cap in &open.capabilities {
        let mut one = Vec::new();
        cap.encode(&mut one)?;
        caps.push(one);
    }
    // Classic layout: parameters of at most 255 octets, each holding whole capabilities.
    let mut params: Vec<Vec<u8>> = Vec::new();
    for cap in &caps {
        match params.last_mut() {
            Some(p) if p.len() + cap.len() <= 255 => p.extend_from_slice(cap),
            _ => params.push(cap.clone()),
        }
    }
    let classic_len: usize = params.iter().map(|p| 2 + p.len()).sum();
    if let Ok(len) = u8::try_from(classic_len) {
        out.push(len);
        for p in &params {
            out.push(PARAM_CAPABILITIES);
            out.push(p.len() as u8);
            out.extend_from_slice(p);
        }
    } else {
        let all: Vec<u8> = caps.concat();
        let param_len = u16::try_from(all.len()).map_err(|_| EncodeError::TooLong(all.len()))?;
        let ext_len = param_len
            .checked_add(3)
            .ok_or(EncodeError::TooLong(all.len()))?;
        out.extend_from_slice(&[255, PARAM_EXTENDED]);
        out.extend_from_slice(&ext_len.to_be_bytes());
        out.push(PARAM_CAPABILITIES);
        out.extend_from_slice(&param_len.to_be_bytes());
        out.extend_from_slice(&all);
    }
    finish_header(out, start)
}

/// What the local side requires of a peer's OPEN, beyond RFC 4271's own checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenPolicy {
    /// The AS the peer must have; `None` accepts any AS (other than 0).
    pub peer_as: Option<u32>,
    /// Capabilities the peer must offer, or the session is refused with Unsupported Capability.
    /// Multiprotocol entries must match the family; others match by capability code.
    pub required_capabilities: Vec<Capability>,
}

/// The session parameters agreed from the two OPENs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's (4-octet) AS.
    pub peer_as: u32,
    /// The peer's BGP identifier.
    pub peer_router_id: Ipv4Addr,
    /// Hold time: the smaller of the two proposals; 0 means no hold timer and no KEEPALIVEs.
    pub hold_time: u16,
    /// KEEPALIVE interval: a third of the hold time.
    pub keepalive_time: u16,
    /// How UPDATEs are encoded on this session.
    pub codec: Codec,
    /// Families both sides advertised.
    pub families: Vec<Afi>,
    /// Both sides support ROUTE-REFRESH.
    pub route_refresh: bool,
    /// The peer's graceful-restart capability, if it sent one.
    pub peer_graceful_restart: Option<GracefulRestart>,
}

/// Checks a peer's OPEN against ours and the local policy (RFC 4271 §6.2, RFC 5492,
/// RFC 6286, RFC 6793, RFC 7607) and returns what the session runs with.
///
/// Errors carry the NOTIFICATION to send: Bad Peer AS (AS 0 or not the configured one), Bad
/// BGP Identifier (0, or equal to ours on an iBGP session), Unacceptable Hold Time (1 or 2 s),
/// Unsupported Capability (data: the required capabilities the peer lacks). An unsupported
/// version is rejected earlier, by the parser, because the rest of such a message cannot be
/// trusted.
pub fn negotiate(
    local: &Open,
    remote: &Open,
    policy: &OpenPolicy,
) -> Result<Negotiated, WireError> {
    if remote.asn == 0 || policy.peer_as.is_some_and(|asn| asn != remote.asn) {
        return Err(WireError::open(
            OpenError::BadPeerAs,
            Vec::new(),
            "unexpected peer AS",
        ));
    }
    let id_clash = remote.router_id == local.router_id && remote.asn == local.asn;
    if remote.router_id.is_unspecified() || id_clash {
        return Err(WireError::open(
            OpenError::BadBgpIdentifier,
            Vec::new(),
            "BGP identifier is zero or equal to ours on an iBGP session",
        ));
    }
    if matches!(remote.hold_time, 1 | 2) {
        return Err(WireError::open(
            OpenError::UnacceptableHoldTime,
            Vec::new(),
            "hold time of 1 or 2 seconds",
        ));
    }
    let mut missing = Vec::new();
    for required in &policy.required_capabilities {
        if !remote.capabilities.iter().any(|c| required.satisfied_by(c)) {
            required
                .encode(&mut missing)
                .map_err(|_| malformed("required capability cannot be encoded"))?;
        }
    }
    if !missing.is_empty() {
        return Err(WireError::open(
            OpenError::UnsupportedCapability,
            missing,
            "peer lacks a required capability",
        ));
    }
    let hold_time = local.hold_time.min(remote.hold_time);
    let remote_families = remote.families();
    Ok(Negotiated {
        peer_as: remote.asn,
        peer_router_id: remote.router_id,
        hold_time,
        keepalive_time: hold_time / 3,
        codec: Codec {
            four_octet_as: local.four_octet_as().is_some() && remote.four_octet_as().is_some(),
            external_peer: local.asn != remote.asn,
        },
        families: local
            .families()
            .into_iter()
            .filter(|f| remote_families.contains(f))
            .collect(),
        route_refresh: local.route_refresh() && remote.route_refresh(),
        peer_graceful_restart: remote.graceful_restart().cloned(),
    })
}
