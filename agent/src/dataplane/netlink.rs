//! A synchronous rtnetlink socket that pipelines requests.
//!
//! The kernel handles an rtnetlink request inside the `sendmsg` call that carries it, one
//! message after another, so many requests can travel in one datagram and their outcomes are
//! known once the call returns. [`Netlink::batch`] packs up to [`CHUNK_MESSAGES`] requests per
//! datagram, asks for an acknowledgement only on the last one of each datagram and reads back
//! just the failures (each names the sequence number of the request it answers). That is one
//! `sendmsg` and usually one `recvmsg` per thousand routes, where `ip -batch` needs two system
//! calls per route.
//!
//! The socket lives in the network namespace of the thread that opened it, for its whole life,
//! whichever thread uses it later.

use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{SetSockOpt, setsockopt, sockopt};
use nix::sys::time::TimeVal;

/// Requests per datagram. The failures of one datagram must fit in the receive buffer at once;
/// a thousand error reports of a few hundred bytes each fit easily in [`RECEIVE_BUFFER`].
pub(crate) const CHUNK_MESSAGES: usize = 1024;
/// Bytes per datagram; under the default send buffer, in case the larger one is refused.
const CHUNK_BYTES: usize = 128 * 1024;
/// Socket buffers requested (the kernel doubles them for its bookkeeping).
const RECEIVE_BUFFER: usize = 8 * 1024 * 1024;
const SEND_BUFFER: usize = 1024 * 1024;
/// A dump datagram is at most 32 KiB; a larger buffer never truncates one.
const DATAGRAM_MAX: usize = 64 * 1024;
/// How long to wait for the kernel's answer before giving up on a request: the kernel answers
/// within the `sendmsg` call, so only a lost reply gets anywhere near this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `NLMSGERR_ATTR_MSG`: the human-readable reason the kernel attaches to an error report.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLM_F_CAPPED`: the error report quotes only the header of the failed request.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: the error report carries extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket itself failed (open, send, receive, timeout).
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request.
    #[error("{}", kernel_message(*errno, detail.as_deref()))]
    Kernel {
        /// The positive errno value.
        errno: i32,
        /// The kernel's extended-ack message, when it gave one.
        detail: Option<String>,
    },
    /// The kernel dropped replies because the receive buffer overflowed, so the outcome of
    /// some requests is unknown; a later reconcile repairs whatever did not happen.
    #[error("kernel replies were dropped (receive buffer overrun); outcome unknown")]
    Overrun,
    /// A dump changed while it was read; reading it again gives a consistent view.
    #[error("kernel table changed during the dump")]
    DumpInterrupted,
    /// The kernel sent something we could not decode.
    #[error("malformed netlink reply: {0}")]
    Decode(String),
}

fn kernel_message(errno: i32, detail: Option<&str>) -> String {
    let base = io::Error::from_raw_os_error(errno);
    match detail {
        Some(d) => format!("{base}: {d}"),
        None => base.to_string(),
    }
}

impl NetlinkError {
    /// The errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// The address family netlink messages about `ip` carry.
pub(crate) fn family_of(ip: std::net::IpAddr) -> AddressFamily {
    match ip {
        std::net::IpAddr::V4(_) => AddressFamily::Inet,
        std::net::IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// One request of a batch: the message and its `NLM_F_*` flags besides `NLM_F_REQUEST`.
pub(crate) struct Request {
    pub message: RouteNetlinkMessage,
    pub flags: u16,
}

impl Request {
    pub(crate) fn new(message: RouteNetlinkMessage, flags: u16) -> Self {
        Request { message, flags }
    }
}

/// A blocking rtnetlink socket bound to one network namespace.
pub(crate) struct Netlink {
    socket: Socket,
    next_seq: u32,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the network namespace of the calling thread.
    pub(crate) fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Extended acks name the reason of a refusal; capped acks keep error reports small.
        // Both are optional: old kernels answer without them.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        socket.set_netlink_get_strict_chk(true)?;
        grow_buffer(
            &socket,
            sockopt::RcvBufForce,
            sockopt::RcvBuf,
            RECEIVE_BUFFER,
        );
        grow_buffer(&socket, sockopt::SndBufForce, sockopt::SndBuf, SEND_BUFFER);
        set_receive_timeout(&socket, REPLY_TIMEOUT)?;
        Ok(Netlink {
            socket,
            next_seq: 1,
            tx: Vec::with_capacity(CHUNK_BYTES + 4096),
            rx: Vec::with_capacity(DATAGRAM_MAX),
        })
    }

    /// Sends every request, pipelined, and returns the failures as `(index, error)` pairs in
    /// request order; an index that is absent succeeded.
    pub(crate) fn batch(
        &mut self,
        requests: impl IntoIterator<Item = Request>,
    ) -> Result<Vec<(usize, NetlinkError)>, NetlinkError> {
        let mut failures = Vec::new();
        let mut requests = requests.into_iter().peekable();
        let mut index = 0usize;
        while requests.peek().is_some() {
            self.tx.clear();
            let first_seq = self.next_seq;
            let first_index = index;
            let mut count = 0usize;
            while let Some(request) = requests.next() {
                let last = count + 1 == CHUNK_MESSAGES
                    || requests.peek().is_none()
                    || self.tx.len() >= CHUNK_BYTES;
                let flags = request.flags | if last { NLM_F_ACK } else { 0 };
                self.encode(request.message, flags);
                count += 1;
                if last {
                    break;
                }
            }
            index += count;
            let last_seq = first_seq.wrapping_add(count as u32 - 1);
            self.socket.send(&self.tx, 0)?;
            self.collect_failures(first_seq, last_seq, first_index, &mut failures)?;
        }
        Ok(failures)
    }

    /// Sends one request and waits for its acknowledgement; replies that carry data (a `GET`
    /// of one object) are returned.
    pub(crate) fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send_one(message, flags | NLM_F_ACK)?;
        let mut replies = Vec::new();
        self.read_replies(seq, |header, payload| match payload {
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(()),
                Some(_) => Err(kernel_error(header, &e)),
            }),
            NetlinkPayload::InnerMessage(m) => {
                replies.push(m);
                None
            }
            _ => None,
        })?;
        Ok(replies)
    }

    /// Dumps a table, handing every object to `each`. Stops with
    /// [`NetlinkError::DumpInterrupted`] when the kernel says the table changed meanwhile.
    pub(crate) fn dump(
        &mut self,
        message: RouteNetlinkMessage,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetlinkError> {
        let seq = self.send_one(message, NLM_F_DUMP)?;
        let mut interrupted = false;
        self.read_replies(seq, |header, payload| {
            interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
            match payload {
                NetlinkPayload::Done(_) if interrupted => Some(Err(NetlinkError::DumpInterrupted)),
                NetlinkPayload::Done(_) => Some(Ok(())),
                NetlinkPayload::Error(e) if e.code.is_some() => Some(Err(kernel_error(header, &e))),
                NetlinkPayload::InnerMessage(m) => {
                    each(m);
                    None
                }
                _ => None,
            }
        })
    }

    /// Sends a single request, returning its sequence number.
    fn send_one(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        self.tx.clear();
        let seq = self.next_seq;
        self.encode(message, flags);
        self.socket.send(&self.tx, 0)?;
        Ok(seq)
    }

    /// Reads the replies to request `seq`, handing each to `on_reply` until it returns the
    /// outcome.
    fn read_replies(
        &mut self,
        seq: u32,
        mut on_reply: impl FnMut(
            &NetlinkHeader,
            NetlinkPayload<RouteNetlinkMessage>,
        ) -> Option<Result<(), NetlinkError>>,
    ) -> Result<(), NetlinkError> {
        loop {
            let end = self.receive()?;
            let mut offset = 0;
            while offset < end {
                let (header, payload, len) = parse_at(&self.rx[..end], offset)?;
                offset += len;
                if header.sequence_number != seq {
                    continue; // a late reply to an earlier, abandoned request
                }
                if let Some(outcome) = on_reply(&header, payload) {
                    return outcome;
                }
            }
        }
    }

    /// Appends one request to the transmit buffer and takes the next sequence number.
    fn encode(&mut self, message: RouteNetlinkMessage, flags: u16) {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let start = self.tx.len();
        let len = packet.buffer_len();
        // Netlink messages start on 4-byte boundaries.
        self.tx.resize(start + align4(len), 0);
        packet.serialize(&mut self.tx[start..start + len]);
    }

    /// Reads replies until the acknowledgement of `last_seq`, recording each failure of a
    /// request in `first_seq..=last_seq` under its index in the batch.
    fn collect_failures(
        &mut self,
        first_seq: u32,
        last_seq: u32,
        first_index: usize,
        failures: &mut Vec<(usize, NetlinkError)>,
    ) -> Result<(), NetlinkError> {
        let span = last_seq.wrapping_sub(first_seq);
        loop {
            let end = match self.receive() {
                Ok(end) => end,
                Err(NetlinkError::Io(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Error reports were lost: every request of this datagram whose outcome we
                    // have not seen is in doubt. The replies still queued are drained so the
                    // next batch starts clean.
                    self.drain();
                    let reported: std::collections::HashSet<usize> = failures
                        .iter()
                        .map(|(i, _)| *i)
                        .filter(|i| *i >= first_index)
                        .collect();
                    for i in 0..=span as usize {
                        let idx = first_index + i;
                        if !reported.contains(&idx) {
                            failures.push((idx, NetlinkError::Overrun));
                        }
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let mut offset = 0;
            let mut done = false;
            while offset < end {
                let (header, payload, len) = parse_at(&self.rx[..end], offset)?;
                offset += len;
                let rel = header.sequence_number.wrapping_sub(first_seq);
                if rel > span {
                    continue; // a late reply to an earlier, abandoned request
                }
                if let NetlinkPayload::Error(e) = payload {
                    if e.code.is_some() {
                        failures.push((first_index + rel as usize, kernel_error(&header, &e)));
                    }
                    done |= rel == span;
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Receives one datagram into `rx`, returning its length.
    fn receive(&mut self) -> Result<usize, NetlinkError> {
        self.rx.clear();
        // MSG_TRUNC makes the call return the datagram's real length, so truncation shows.
        let n = self.socket.recv(&mut self.rx, libc::MSG_TRUNC)?;
        if n > self.rx.len() {
            return Err(NetlinkError::Decode(format!(
                "datagram of {n} bytes truncated"
            )));
        }
        Ok(n)
    }

    /// Discards whatever is queued on the socket.
    fn drain(&mut self) {
        loop {
            self.rx.clear();
            if self.socket.recv(&mut self.rx, libc::MSG_DONTWAIT).is_err() {
                return;
            }
        }
    }
}

/// Parses the netlink message at `offset`, returning it and the aligned length it occupies.
fn parse_at(
    buf: &[u8],
    offset: usize,
) -> Result<(NetlinkHeader, NetlinkPayload<RouteNetlinkMessage>, usize), NetlinkError> {
    let slice = &buf[offset..];
    let nl = NetlinkBuffer::new_checked(slice).map_err(|e| NetlinkError::Decode(e.to_string()))?;
    let len = nl.length() as usize;
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&slice[..len])
        .map_err(|e| NetlinkError::Decode(e.to_string()))?;
    let (header, payload) = message.into_parts();
    Ok((header, payload, align4(len).min(slice.len())))
}

/// Builds the error for a refused request, with the kernel's extended-ack text if present.
fn kernel_error(header: &NetlinkHeader, e: &netlink_packet_core::ErrorMessage) -> NetlinkError {
    NetlinkError::Kernel {
        errno: e.raw_code().abs(),
        detail: ext_ack_message(header.flags, &e.header),
    }
}

/// Finds `NLMSGERR_ATTR_MSG` in an error report. The report quotes the failed request (its
/// header only when capped) and, when `NLM_F_ACK_TLVS` is set, attributes follow.
fn ext_ack_message(flags: u16, quoted: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || quoted.len() < 16 {
        return None;
    }
    let quoted_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        align4(u32::from_ne_bytes(quoted[0..4].try_into().ok()?) as usize)
    };
    let mut attrs = quoted.get(quoted_len..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &attrs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        attrs = attrs.get(align4(len)..)?;
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Asks for a bigger socket buffer, first past the `rmem_max`/`wmem_max` cap (needs
/// CAP_NET_ADMIN), then within it.
/// Asks for a buffer of `size` bytes: beyond the system's limit where the agent may (`force`,
/// with `CAP_NET_ADMIN`), else up to that limit (`plain`); the default stays when both fail.
fn grow_buffer<Force, Plain>(socket: &Socket, force: Force, plain: Plain, size: usize)
where
    Force: SetSockOpt<Val = usize>,
    Plain: SetSockOpt<Val = usize>,
{
    if setsockopt(socket, force, &size).is_err() {
        let _ = setsockopt(socket, plain, &size);
    }
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let timeout = TimeVal::new(
        timeout.as_secs() as libc::time_t,
        timeout.subsec_micros() as libc::suseconds_t,
    );
    setsockopt(socket, sockopt::ReceiveTimeout, &timeout).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn extended_ack_text_is_found_after_a_capped_quote() {
        let mut quoted = vec![0u8; 16];
        quoted.extend(nla(2, &7u32.to_ne_bytes()));
        quoted.extend(nla(NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0"));
        let text = ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &quoted);
        assert_eq!(text.as_deref(), Some("Nexthop has invalid gateway"));
    }

    #[test]
    fn extended_ack_text_is_found_after_a_full_quote() {
        let mut quoted = vec![0u8; 28];
        quoted[0..4].copy_from_slice(&28u32.to_ne_bytes());
        quoted.extend(nla(NLMSGERR_ATTR_MSG, b"Device not found\0"));
        assert_eq!(
            ext_ack_message(NLM_F_ACK_TLVS, &quoted).as_deref(),
            Some("Device not found")
        );
        assert_eq!(ext_ack_message(0, &quoted), None);
    }

    #[test]
    fn malformed_extended_ack_is_ignored() {
        let mut quoted = vec![0u8; 16];
        quoted.extend_from_slice(&[200, 0, 1, 0, b'x']);
        assert_eq!(
            ext_ack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &quoted),
            None
        );
    }

    #[test]
    fn kernel_errors_read_like_the_kernel() {
        let e = NetlinkError::Kernel {
            errno: libc::EEXIST,
            detail: Some("x".into()),
        };
        assert!(e.to_string().starts_with("File exists"), "{e}");
        assert!(e.to_string().ends_with(": x"), "{e}");
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }
}
