//! Whole messages: the entry points [`parse_message`] and [`encode_message`], and the small
//! message types (NOTIFICATION, KEEPALIVE, ROUTE-REFRESH).

use super::error::{CeaseError, EncodeError, ErrorCode, HeaderError, WireError};
use super::frame::{self, HEADER_LEN, MessageType, finish_header, start_header};
use super::open::{encode_open, parse_open};
use super::update::{ParsedUpdate, encode_update, parse_update};
use super::{Afi, Codec, Message, Notification, Open};

/// A received message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
// An UPDATE is the common case and is moved, not stored: boxing it would cost an allocation
// per message for nothing.
#[allow(clippy::large_enum_variant)]
pub enum ParsedMessage {
    /// OPEN; check it with [`negotiate`](super::negotiate).
    Open(Open),
    /// UPDATE, after RFC 7606 handling.
    Update(ParsedUpdate),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH for a family wren speaks.
    RouteRefresh(Afi),
    /// A well-formed ROUTE-REFRESH the RFCs say to ignore: a family wren does not speak
    /// (RFC 2918 §4) or an enhanced route refresh subtype (RFC 7313), which wren does not
    /// advertise.
    IgnoredRouteRefresh {
        /// AFI as received.
        afi: u16,
        /// SAFI as received.
        safi: u8,
        /// Message subtype (the RFC 2918 reserved octet).
        subtype: u8,
    },
}

/// Decodes the message at the start of `buf` (usually the slice [`frame`](super::frame)
/// measured). Bytes after the message are ignored.
///
/// `Err` means the session must end: send [`WireError::notification`] and close. An UPDATE
/// with softer problems is `Ok`, with its [`UpdateAction`](super::UpdateAction)s.
pub fn parse_message(buf: &[u8], codec: &Codec) -> Result<ParsedMessage, WireError> {
    let Some(len) = frame::frame(buf)? else {
        return Err(WireError::header(
            HeaderError::BadMessageLength,
            Vec::new(),
            "buffer holds less than one message",
        ));
    };
    let body = &buf[HEADER_LEN..len];
    // `frame` accepted the type octet, so it is one of ours.
    let Some(kind) = MessageType::from_u8(buf[18]) else {
        return Err(WireError::header(
            HeaderError::BadMessageType,
            vec![buf[18]],
            "unknown type",
        ));
    };
    Ok(match kind {
        MessageType::Open => ParsedMessage::Open(parse_open(body)?),
        MessageType::Update => ParsedMessage::Update(parse_update(body, codec)?),
        MessageType::Notification => {
            let [code, subcode, data @ ..] = body else {
                return Err(frame::bad_length(len, "NOTIFICATION too short"));
            };
            ParsedMessage::Notification(Notification {
                code: *code,
                subcode: *subcode,
                data: data.to_vec(),
            })
        }
        MessageType::Keepalive => ParsedMessage::Keepalive,
        MessageType::RouteRefresh => {
            let [a0, a1, subtype, safi] = *body else {
                return Err(WireError::new(
                    ErrorCode::RouteRefreshInvalidLength,
                    buf[..len].to_vec(),
                    "ROUTE-REFRESH length is not 23",
                ));
            };
            let afi = u16::from_be_bytes([a0, a1]);
            match Afi::from_afi_safi(afi, safi) {
                Some(family) if subtype == 0 => ParsedMessage::RouteRefresh(family),
                _ => ParsedMessage::IgnoredRouteRefresh { afi, safi, subtype },
            }
        }
    })
}

/// Appends the encoding of `msg` to `out`. UPDATEs are written as given (IPv4 prefixes in
/// the classic fields); to split a large set of routes into UPDATEs that fit, use
/// [`pack_announcements`](super::pack_announcements) / [`pack_withdrawals`](super::pack_withdrawals).
pub fn encode_message(msg: &Message, codec: &Codec, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let before = out.len();
    let result = match msg {
        Message::Open(open) => encode_open(open, out),
        Message::Update(update) => encode_update(update, codec, out),
        Message::Notification(n) => {
            let start = start_header(out, MessageType::Notification);
            out.extend_from_slice(&[n.code, n.subcode]);
            out.extend_from_slice(&n.data);
            finish_header(out, start)
        }
        Message::Keepalive => {
            let start = start_header(out, MessageType::Keepalive);
            finish_header(out, start)
        }
        Message::RouteRefresh(afi) => {
            let start = start_header(out, MessageType::RouteRefresh);
            let (a, s) = afi.afi_safi();
            out.extend_from_slice(&a.to_be_bytes());
            out.extend_from_slice(&[0, s]);
            finish_header(out, start)
        }
    };
    if result.is_err() {
        out.truncate(before);
    }
    result
}

impl Message {
    /// The message's encoding on a session with `codec`.
    pub fn encode(&self, codec: &Codec) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        encode_message(self, codec, &mut out)?;
        Ok(out)
    }
}

impl ParsedMessage {
    /// The message model, dropping the RFC 7606 report of an UPDATE. An ignored
    /// ROUTE-REFRESH has no model and gives `None`.
    pub fn into_message(self) -> Option<Message> {
        Some(match self {
            ParsedMessage::Open(o) => Message::Open(o),
            ParsedMessage::Update(u) => Message::Update(u.update),
            ParsedMessage::Notification(n) => Message::Notification(n),
            ParsedMessage::Keepalive => Message::Keepalive,
            ParsedMessage::RouteRefresh(afi) => Message::RouteRefresh(afi),
            ParsedMessage::IgnoredRouteRefresh { .. } => return None,
        })
    }
}

/// Longest shutdown communication RFC 9003 allows, in octets.
pub const MAX_SHUTDOWN_MESSAGE: usize = 255;

impl Notification {
    /// A NOTIFICATION with a typed code.
    pub fn new(code: ErrorCode, data: Vec<u8>) -> Self {
        Self {
            code: code.code(),
            subcode: code.subcode(),
            data,
        }
    }

    /// The typed code, when wren knows the pair.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_pair(self.code, self.subcode)
    }

    /// A Cease NOTIFICATION; for Administrative Shutdown and Reset the operator's message is
    /// attached as an RFC 9003 shutdown communication (UTF-8, cut to 255 octets at a
    /// character boundary).
    pub fn cease(subcode: CeaseError, message: &str) -> Self {
        let mut data = Vec::new();
        let carries_text = matches!(
            subcode,
            CeaseError::AdministrativeShutdown | CeaseError::AdministrativeReset
        );
        if carries_text && !message.is_empty() {
            let mut end = message.len().min(MAX_SHUTDOWN_MESSAGE);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            data.push(end as u8);
            data.extend_from_slice(&message.as_bytes()[..end]);
        }
        Self::new(ErrorCode::Cease(subcode), data)
    }

    /// The RFC 9003 shutdown communication of a Cease / Administrative Shutdown or Reset,
    /// if present and valid UTF-8.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != 6 || !matches!(self.subcode, 2 | 4) {
            return None;
        }
        let (&len, text) = self.data.split_first()?;
        let text = text.get(..usize::from(len))?;
        std::str::from_utf8(text).ok()
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error_code() {
            Some(code) => write!(f, "{code}")?,
            None => write!(f, "code {} subcode {}", self.code, self.subcode)?,
        }
        if let Some(text) = self.shutdown_message() {
            write!(f, ": {text:?}")?;
        }
        Ok(())
    }
}
