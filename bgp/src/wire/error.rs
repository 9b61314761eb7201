//! NOTIFICATION error codes (RFC 4271 §4.5 and later RFCs) and the errors of the codec.
//!
//! A [`WireError`] is a session-ending condition: it carries exactly the NOTIFICATION the
//! RFCs require the receiver to send. Softer RFC 7606 outcomes of an UPDATE (treat-as-withdraw,
//! attribute-discard) are not errors; they travel with the parsed UPDATE as
//! [`UpdateAction`](super::UpdateAction)s.

use std::fmt;

use super::Notification;

/// Subcodes of "Message Header Error" (code 1, RFC 4271 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderError {
    /// The marker is not all ones.
    ConnectionNotSynchronized = 1,
    /// The length field is out of range for the message type.
    BadMessageLength = 2,
    /// The type field is not a known message type.
    BadMessageType = 3,
}

/// Subcodes of "OPEN Message Error" (code 2, RFC 4271 §6.2, RFC 5492).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenError {
    /// No specific subcode applies (e.g. a malformed capability).
    Unspecific = 0,
    /// The version is not 4.
    UnsupportedVersionNumber = 1,
    /// The peer's AS is not the one configured (or is 0).
    BadPeerAs = 2,
    /// The BGP identifier is 0 or clashes with ours on an iBGP session.
    BadBgpIdentifier = 3,
    /// An optional parameter other than capabilities.
    UnsupportedOptionalParameter = 4,
    /// A hold time of 1 or 2 seconds.
    UnacceptableHoldTime = 6,
    /// A capability we require was not offered (RFC 5492).
    UnsupportedCapability = 7,
}

/// Subcodes of "UPDATE Message Error" (code 3, RFC 4271 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateError {
    /// Lengths inconsistent with the message, or a repeated MP_REACH/MP_UNREACH.
    MalformedAttributeList = 1,
    /// A well-known attribute we do not know.
    UnrecognizedWellKnownAttribute = 2,
    /// A mandatory well-known attribute is missing.
    MissingWellKnownAttribute = 3,
    /// The optional/transitive flags conflict with the attribute type.
    AttributeFlagsError = 4,
    /// The attribute's length is wrong for its type.
    AttributeLengthError = 5,
    /// ORIGIN has an undefined value.
    InvalidOriginAttribute = 6,
    /// NEXT_HOP is not a usable address.
    InvalidNextHopAttribute = 8,
    /// An optional attribute is malformed.
    OptionalAttributeError = 9,
    /// The NLRI or withdrawn routes field cannot be parsed.
    InvalidNetworkField = 10,
    /// AS_PATH is malformed.
    MalformedAsPath = 11,
}

/// Subcodes of "Finite State Machine Error" (code 5, RFC 6608).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsmError {
    /// No specific subcode.
    Unspecified = 0,
    /// Unexpected message in OpenSent.
    UnexpectedInOpenSent = 1,
    /// Unexpected message in OpenConfirm.
    UnexpectedInOpenConfirm = 2,
    /// Unexpected message in Established.
    UnexpectedInEstablished = 3,
}

/// Subcodes of "Cease" (code 6, RFC 4486, RFC 8538).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CeaseError {
    /// No specific subcode.
    Unspecified = 0,
    /// The peer sent more prefixes than allowed.
    MaximumPrefixesReached = 1,
    /// The operator shut the session down (may carry a message, RFC 9003).
    AdministrativeShutdown = 2,
    /// The peer was removed from the configuration.
    PeerDeconfigured = 3,
    /// The operator reset the session (may carry a message, RFC 9003).
    AdministrativeReset = 4,
    /// The connection was not accepted.
    ConnectionRejected = 5,
    /// A configuration change requires a new session.
    OtherConfigurationChange = 6,
    /// The connection lost collision detection (RFC 4271 §6.8).
    ConnectionCollisionResolution = 7,
    /// Out of resources.
    OutOfResources = 8,
    /// Hard reset: graceful restart must not keep routes (RFC 8538).
    HardReset = 9,
    /// The BFD session protecting the BGP session went down (RFC 9384).
    BfdDown = 10,
}

/// A NOTIFICATION error code with its subcode, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Code 1.
    MessageHeader(HeaderError),
    /// Code 2.
    Open(OpenError),
    /// Code 3.
    Update(UpdateError),
    /// Code 4 (no subcode).
    HoldTimerExpired,
    /// Code 5.
    Fsm(FsmError),
    /// Code 6.
    Cease(CeaseError),
    /// Code 7, subcode 1 (RFC 7313): a ROUTE-REFRESH of the wrong length.
    RouteRefreshInvalidLength,
}

impl ErrorCode {
    /// The error code octet.
    pub fn code(self) -> u8 {
        match self {
            ErrorCode::MessageHeader(_) => 1,
            ErrorCode::Open(_) => 2,
            ErrorCode::Update(_) => 3,
            ErrorCode::HoldTimerExpired => 4,
            ErrorCode::Fsm(_) => 5,
            ErrorCode::Cease(_) => 6,
            ErrorCode::RouteRefreshInvalidLength => 7,
        }
    }

    /// The error subcode octet.
    pub fn subcode(self) -> u8 {
        match self {
            ErrorCode::MessageHeader(s) => s as u8,
            ErrorCode::Open(s) => s as u8,
            ErrorCode::Update(s) => s as u8,
            ErrorCode::HoldTimerExpired => 0,
            ErrorCode::Fsm(s) => s as u8,
            ErrorCode::Cease(s) => s as u8,
            ErrorCode::RouteRefreshInvalidLength => 1,
        }
    }

    /// The typed form of a received code/subcode pair, if wren knows it.
    pub fn from_pair(code: u8, subcode: u8) -> Option<ErrorCode> {
        use ErrorCode as E;
        Some(match (code, subcode) {
            (1, 1) => E::MessageHeader(HeaderError::ConnectionNotSynchronized),
            (1, 2) => E::MessageHeader(HeaderError::BadMessageLength),
            (1, 3) => E::MessageHeader(HeaderError::BadMessageType),
            (2, 0) => E::Open(OpenError::Unspecific),
            (2, 1) => E::Open(OpenError::UnsupportedVersionNumber),
            (2, 2) => E::Open(OpenError::BadPeerAs),
            (2, 3) => E::Open(OpenError::BadBgpIdentifier),
            (2, 4) => E::Open(OpenError::UnsupportedOptionalParameter),
            (2, 6) => E::Open(OpenError::UnacceptableHoldTime),
            (2, 7) => E::Open(OpenError::UnsupportedCapability),
            (3, 1) => E::Update(UpdateError::MalformedAttributeList),
            (3, 2) => E::Update(UpdateError::UnrecognizedWellKnownAttribute),
            (3, 3) => E::Update(UpdateError::MissingWellKnownAttribute),
            (3, 4) => E::Update(UpdateError::AttributeFlagsError),
            (3, 5) => E::Update(UpdateError::AttributeLengthError),
            (3, 6) => E::Update(UpdateError::InvalidOriginAttribute),
            (3, 8) => E::Update(UpdateError::InvalidNextHopAttribute),
            (3, 9) => E::Update(UpdateError::OptionalAttributeError),
            (3, 10) => E::Update(UpdateError::InvalidNetworkField),
            (3, 11) => E::Update(UpdateError::MalformedAsPath),
            (4, _) => E::HoldTimerExpired,
            (5, 0) => E::Fsm(FsmError::Unspecified),
            (5, 1) => E::Fsm(FsmError::UnexpectedInOpenSent),
            (5, 2) => E::Fsm(FsmError::UnexpectedInOpenConfirm),
            (5, 3) => E::Fsm(FsmError::UnexpectedInEstablished),
            (6, 0) => E::Cease(CeaseError::Unspecified),
            (6, 1) => E::Cease(CeaseError::MaximumPrefixesReached),
            (6, 2) => E::Cease(CeaseError::AdministrativeShutdown),
            (6, 3) => E::Cease(CeaseError::PeerDeconfigured),
            (6, 4) => E::Cease(CeaseError::AdministrativeReset),
            (6, 5) => E::Cease(CeaseError::ConnectionRejected),
            (6, 6) => E::Cease(CeaseError::OtherConfigurationChange),
            (6, 7) => E::Cease(CeaseError::ConnectionCollisionResolution),
            (6, 8) => E::Cease(CeaseError::OutOfResources),
            (6, 9) => E::Cease(CeaseError::HardReset),
            (6, 10) => E::Cease(CeaseError::BfdDown),
            (7, 1) => E::RouteRefreshInvalidLength,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::MessageHeader(s) => write!(f, "Message Header Error / {s:?}"),
            ErrorCode::Open(s) => write!(f, "OPEN Message Error / {s:?}"),
            ErrorCode::Update(s) => write!(f, "UPDATE Message Error / {s:?}"),
            ErrorCode::HoldTimerExpired => write!(f, "Hold Timer Expired"),
            ErrorCode::Fsm(s) => write!(f, "Finite State Machine Error / {s:?}"),
            ErrorCode::Cease(s) => write!(f, "Cease / {s:?}"),
            ErrorCode::RouteRefreshInvalidLength => {
                write!(f, "ROUTE-REFRESH Message Error / InvalidMessageLength")
            }
        }
    }
}

/// A received message that ends the session: the NOTIFICATION to send is
/// [`WireError::notification`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct WireError {
    /// Error code and subcode.
    pub code: ErrorCode,
    /// The NOTIFICATION data field, as the RFC for this error prescribes.
    pub data: Vec<u8>,
    /// What was wrong, for logs.
    pub detail: &'static str,
}

impl WireError {
    /// An error with the given code, data and explanation.
    pub fn new(code: ErrorCode, data: Vec<u8>, detail: &'static str) -> Self {
        Self { code, data, detail }
    }

    pub(crate) fn header(sub: HeaderError, data: Vec<u8>, detail: &'static str) -> Self {
        Self::new(ErrorCode::MessageHeader(sub), data, detail)
    }

    pub(crate) fn open(sub: OpenError, data: Vec<u8>, detail: &'static str) -> Self {
        Self::new(ErrorCode::Open(sub), data, detail)
    }

    pub(crate) fn update(sub: UpdateError, data: Vec<u8>, detail: &'static str) -> Self {
        Self::new(ErrorCode::Update(sub), data, detail)
    }

    /// The NOTIFICATION message to send before closing the connection.
    pub fn notification(&self) -> Notification {
        Notification {
            code: self.code.code(),
            subcode: self.code.subcode(),
            data: self.data.clone(),
        }
    }
}

/// A message that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed the 4096-octet maximum.
    #[error("message of {0} octets exceeds the 4096-octet maximum")]
    TooLong(usize),
    /// A field holds a value its encoding cannot carry.
    #[error("cannot encode: {0}")]
    Invalid(&'static str),
}
