//! The 19-octet message header and message framing on a byte stream (RFC 4271 §4.1, §6.1).

use super::error::{ErrorCode, HeaderError, WireError};

/// Length of the message header: marker (16), length (2), type (1).
pub const HEADER_LEN: usize = 19;
/// Largest message RFC 4271 allows.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Message type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// OPEN (1).
    Open = 1,
    /// UPDATE (2).
    Update = 2,
    /// NOTIFICATION (3).
    Notification = 3,
    /// KEEPALIVE (4).
    Keepalive = 4,
    /// ROUTE-REFRESH (5, RFC 2918).
    RouteRefresh = 5,
}

impl MessageType {
    /// The type for a type octet, if it is one wren speaks.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => MessageType::Open,
            2 => MessageType::Update,
            3 => MessageType::Notification,
            4 => MessageType::Keepalive,
            5 => MessageType::RouteRefresh,
            _ => return None,
        })
    }

    /// Whether `len` (the whole message, header included) is allowed for this type
    /// (RFC 4271 §6.1; RFC 2918 for ROUTE-REFRESH).
    fn length_ok(self, len: usize) -> bool {
        match self {
            MessageType::Open => len >= HEADER_LEN + 10,
            MessageType::Update => len >= HEADER_LEN + 4,
            MessageType::Notification => len >= HEADER_LEN + 2,
            MessageType::Keepalive => len == HEADER_LEN,
            // Checked when the message is parsed: RFC 7313 gives it its own error code.
            MessageType::RouteRefresh => true,
        }
    }
}

/// Finds the first message in a received byte stream.
///
/// Returns `Ok(Some(len))` when `buf` starts with a whole message of `len` octets (header
/// included), `Ok(None)` when more bytes are needed, and an error (the NOTIFICATION to send)
/// when the header is invalid: a marker that is not all ones (Connection Not Synchronized), a
/// length out of range for the type (Bad Message Length, data = the length field) or an unknown
/// type (Bad Message Type, data = the type octet). The marker is checked as soon as its bytes
/// arrive, so a desynchronised stream is reported without waiting for a full header.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let marker_seen = buf.len().min(16);
    if buf[..marker_seen].iter().any(|&b| b != 0xff) {
        return Err(WireError::header(
            HeaderError::ConnectionNotSynchronized,
            Vec::new(),
            "marker is not all ones",
        ));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    let type_octet = buf[18];
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_length(len, "length outside 19..=4096"));
    }
    let Some(kind) = MessageType::from_u8(type_octet) else {
        return Err(WireError::new(
            ErrorCode::MessageHeader(HeaderError::BadMessageType),
            vec![type_octet],
            "unknown message type",
        ));
    };
    if !kind.length_ok(len) {
        return Err(bad_length(len, "length too small for the message type"));
    }
    Ok((buf.len() >= len).then_some(len))
}

/// Bad Message Length with the erroneous length field as data.
pub(crate) fn bad_length(len: usize, detail: &'static str) -> WireError {
    // Lengths come from a 16-bit field, so the cast cannot lose bits.
    let field = (len as u16).to_be_bytes().to_vec();
    WireError::header(HeaderError::BadMessageLength, field, detail)
}

/// Appends a header with a placeholder length; [`finish_header`] fills it in.
pub(crate) fn start_header(out: &mut Vec<u8>, kind: MessageType) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0, kind as u8]);
    start
}

/// Writes the length of the message that began at `start`, checking the maximum.
pub(crate) fn finish_header(out: &mut [u8], start: usize) -> Result<(), super::EncodeError> {
    let len = out.len() - start;
    if len > MAX_MESSAGE_LEN {
        return Err(super::EncodeError::TooLong(len));
    }
    out[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
    Ok(())
}
