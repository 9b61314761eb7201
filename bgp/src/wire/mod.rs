//! BGP-4 messages as values, with their parser and encoder (no I/O).
//!
//! The model follows RFC 4271 with RFC 4760 (multiprotocol), RFC 6793 (4-octet AS),
//! RFC 2918 (route refresh), RFC 4724 (graceful restart), RFC 4456 (route reflection) and
//! RFC 7606 (revised error handling). AS paths are always held with 4-octet AS numbers; the
//! codec converts to and from 2-octet encodings (and AS4_PATH) per the session's [`Codec`]
//! settings.
//!
//! # Receiving
//! 1. [`frame`] tells the read loop whether the buffer starts with a whole message and how
//!    long it is (or which header error to send).
//! 2. [`parse_message`] decodes it into a [`ParsedMessage`]. `Err(WireError)` ends the
//!    session: send [`WireError::notification`]. An UPDATE comes back as a [`ParsedUpdate`]
//!    whose `update` is ready for the RIB (RFC 7606 treat-as-withdraw and attribute-discard
//!    already applied) and whose `actions` list what was done and why.
//! 3. A received OPEN is checked with [`negotiate`], which yields the session's [`Codec`],
//!    hold time and families, or the OPEN error to send.
//!
//! # Sending
//! [`encode_message`] / [`Message::encode`] for single messages; [`pack_announcements`] and
//! [`pack_withdrawals`] split any number of routes into UPDATEs that fit.

mod attributes;
mod error;
mod frame;
mod message;
mod nlri;
mod num;
mod open;
mod pack;
mod update;

pub use attributes::{
    FLAG_EXTENDED_LENGTH, FLAG_OPTIONAL, FLAG_PARTIAL, FLAG_TRANSITIVE, is_usable_next_hop,
    type_code,
};
pub use error::{
    CeaseError, EncodeError, ErrorCode, FsmError, HeaderError, OpenError, UpdateError, WireError,
};
pub use frame::{HEADER_LEN, MAX_MESSAGE_LEN, MessageType, frame};
pub use message::{MAX_SHUTDOWN_MESSAGE, ParsedMessage, encode_message, parse_message};
pub use open::{AS_TRANS, Negotiated, OpenPolicy, negotiate};
pub use pack::{pack_announcements, pack_withdrawals};
pub use update::{ParsedUpdate, UpdateAction, UpdateFault};

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Address family / subsequent address family pairs wren speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    /// IPv4 unicast (AFI 1, SAFI 1).
    Ipv4Unicast,
    /// IPv6 unicast (AFI 2, SAFI 1).
    Ipv6Unicast,
}

/// A BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
// An UPDATE is the common case and is moved, not stored: boxing it would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Message {
    /// OPEN (type 1).
    Open(Open),
    /// UPDATE (type 2).
    Update(Update),
    /// NOTIFICATION (type 3).
    Notification(Notification),
    /// KEEPALIVE (type 4).
    Keepalive,
    /// ROUTE-REFRESH (type 5, RFC 2918).
    RouteRefresh(Afi),
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The sender's AS: the real 4-octet AS (the codec writes AS_TRANS in the 2-octet field
    /// when it does not fit and carries the real one in the 4-octet AS capability).
    pub asn: u32,
    /// Proposed hold time in seconds (0 or ≥ 3).
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities advertised (RFC 5492).
    pub capabilities: Vec<Capability>,
}

/// A capability from an OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions (code 1).
    Multiprotocol(Afi),
    /// Route refresh (code 2).
    RouteRefresh,
    /// Graceful restart (code 64).
    GracefulRestart(GracefulRestart),
    /// 4-octet AS numbers (code 65), carrying the sender's AS.
    FourOctetAs(u32),
    /// Any other capability, kept as received.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

/// The graceful-restart capability (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Restart state bit (R): the sender has restarted.
    pub restarting: bool,
    /// Restart time in seconds (12 bits).
    pub restart_time: u16,
    /// Families with their forwarding-state-preserved (F) bit.
    pub families: Vec<(Afi, bool)>,
}

/// An UPDATE message. IPv4 unicast NLRI travel in `withdrawn`/`nlri`; every other family (and
/// IPv4 too, when a peer sends it that way) in the MP_REACH/MP_UNREACH attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 routes (classic field).
    pub withdrawn: Vec<IpNet>,
    /// Path attributes.
    pub attributes: PathAttributes,
    /// Reachable IPv4 prefixes (classic field).
    pub nlri: Vec<IpNet>,
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Origin {
    /// IGP (0).
    #[default]
    Igp,
    /// EGP (1).
    Egp,
    /// INCOMPLETE (2).
    Incomplete,
}

/// One segment of an AS_PATH.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    /// AS_SEQUENCE (type 2).
    Sequence(Vec<u32>),
    /// AS_SET (type 1).
    Set(Vec<u32>),
}

/// An AS_PATH held with 4-octet AS numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    /// The segments, leftmost (most recent) first.
    pub segments: Vec<AsSegment>,
}

/// MP_REACH_NLRI (RFC 4760).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    /// Family of the prefixes.
    pub afi: Afi,
    /// Next hop (global address first).
    pub next_hop: IpAddr,
    /// IPv6 link-local next hop, when the peer sent one.
    pub link_local_next_hop: Option<std::net::Ipv6Addr>,
    /// Reachable prefixes.
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI (RFC 4760). With no prefixes it is the End-of-RIB marker for its family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    /// Family of the prefixes.
    pub afi: Afi,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<IpNet>,
}

/// AGGREGATOR (and AS4_AGGREGATOR, merged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    /// Aggregating AS.
    pub asn: u32,
    /// Aggregating router.
    pub address: Ipv4Addr,
}

/// A large community (RFC 8092): the global administrator (an AS number) and two four-octet
/// values it defines, written `asn:value1:value2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    /// The AS that defines the values.
    pub global_admin: u32,
    /// The first value.
    pub local_data_1: u32,
    /// The second value.
    pub local_data_2: u32,
}

/// An attribute the parser does not know, carried through if optional transitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    /// Attribute flags as received (the codec sets the partial bit when passing it on).
    pub flags: u8,
    /// Attribute type code.
    pub type_code: u8,
    /// Attribute value.
    pub value: Vec<u8>,
}

/// The path attributes of an UPDATE. AS4_PATH and AS4_AGGREGATOR are merged into
/// `as_path` / `aggregator` by the parser (RFC 6793 §4.2.3) and produced by the encoder when
/// the session is 2-octet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttributes {
    /// ORIGIN (type 1).
    pub origin: Option<Origin>,
    /// AS_PATH (type 2).
    pub as_path: Option<AsPath>,
    /// NEXT_HOP (type 3).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC (type 4).
    pub med: Option<u32>,
    /// LOCAL_PREF (type 5).
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE (type 6).
    pub atomic_aggregate: bool,
    /// AGGREGATOR (type 7).
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES (type 8).
    pub communities: Vec<u32>,
    /// ORIGINATOR_ID (type 9).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (type 10).
    pub cluster_list: Vec<Ipv4Addr>,
    /// MP_REACH_NLRI (type 14).
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI (type 15).
    pub mp_unreach: Option<MpUnreach>,
    /// LARGE_COMMUNITY (type 32, RFC 8092).
    pub large_communities: Vec<LargeCommunity>,
    /// Unknown optional transitive attributes, carried through, in type-code order.
    pub unknown: Vec<RawAttribute>,
}

/// A NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code (RFC 4271 §4.5).
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Vec<u8>,
}

/// Session-dependent encoding settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Both sides advertised the 4-octet AS capability.
    pub four_octet_as: bool,
    /// The peer is in another AS. LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST from it are
    /// discarded whatever their form, where a malformed one from an internal peer withdraws
    /// the routes (RFC 7606 §7.5, §7.9, §7.10).
    pub external_peer: bool,
}

impl Default for Codec {
    /// Before OPENs are exchanged (and for the OPEN itself): 4-octet AS assumed, which
    /// only matters for UPDATEs; an internal peer.
    fn default() -> Self {
        Self {
            four_octet_as: true,
            external_peer: false,
        }
    }
}
