//! A generated full-size IPv4 table and a minimal BGP speaker that replays it, for the
//! ingestion benchmarks.
//!
//! The table is deterministic for a seed: `/24` prefixes counted up from 32.0.0.0, in groups of
//! one to eight consecutive prefixes that share one attribute set, so an UPDATE carries a few
//! prefixes as on a real full-table session. Each set has ORIGIN, an AS_PATH of two to six
//! ASes (a tenth of them 4-octet) starting with the feeder's AS, NEXT_HOP, and on some a MED
//! and one to four communities.
//!
//! The encoder here is independent of wren's codec on purpose: the same bytes go to BIRD and
//! to wren, and BIRD accepting them is an outside check of the encoding. The [`Feeder`] does
//! what a BGP speaker must to get a session Established (OPEN with the multiprotocol,
//! route-refresh and 4-octet-AS capabilities, KEEPALIVEs, reading and discarding what the
//! receiver sends), then writes the pre-encoded UPDATEs and End-of-RIB as fast as the
//! receiver takes them, so the receiver, not the feeder, sets the pace.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Error;
use crate::netns::NetNs;

/// First address of the generated prefixes.
pub const FIRST_PREFIX: Ipv4Addr = Ipv4Addr::new(32, 0, 0, 0);

/// Message types (RFC 4271 §4.1).
const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;

/// What to generate.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    /// Number of IPv4 prefixes (at most 2^24, the /24s of the IPv4 space).
    pub prefixes: u32,
    /// Seed of the attribute choices.
    pub seed: u64,
    /// The feeder's AS (first on every AS_PATH).
    pub asn: u32,
    /// The feeder's BGP identifier.
    pub router_id: Ipv4Addr,
    /// NEXT_HOP of every route: the feeder's address on the link.
    pub next_hop: Ipv4Addr,
}

/// The encoded table.
#[derive(Debug, Clone)]
pub struct Feed {
    /// What it was generated from.
    pub spec: FeedSpec,
    /// Every UPDATE followed by the IPv4 End-of-RIB, as they go on the wire.
    pub stream: Vec<u8>,
    /// Number of UPDATE messages, End-of-RIB included.
    pub messages: usize,
    /// Number of distinct attribute sets.
    pub attribute_sets: usize,
}

/// Attributes of one group of prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attrs {
    origin: u8,
    as_path: Vec<u32>,
    med: Option<u32>,
    communities: Vec<u32>,
}

/// splitmix64: small, fast and good enough to spread attribute choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn range(&mut self, low: u32, high: u32) -> u32 {
        low + (self.next() % u64::from(high - low + 1)) as u32
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.range(0, 99) < percent
    }
}

impl Attrs {
    fn random(rng: &mut Rng, asn: u32) -> Self {
        let origin = match rng.range(0, 99) {
            0..=89 => 0,
            90..=97 => 2,
            _ => 1,
        };
        let hops = match rng.range(0, 99) {
            0..=9 => 1,
            10..=39 => 2,
            40..=74 => 3,
            75..=92 => 4,
            _ => 5,
        };
        let mut as_path = vec![asn];
        for _ in 0..hops {
            let a = if rng.chance(10) {
                rng.range(131_072, 400_000)
            } else {
                rng.range(1, 64_495)
            };
            as_path.push(a);
        }
        let med = rng.chance(30).then(|| rng.range(0, 1000));
        let communities = if rng.chance(50) {
            let n = rng.range(1, 4);
            let mut cs: Vec<u32> = (0..n)
                .map(|_| (rng.range(1, 65_534) << 16) | rng.range(1, 999))
                .collect();
            cs.sort_unstable();
            cs.dedup();
            cs
        } else {
            Vec::new()
        };
        Self {
            origin,
            as_path,
            med,
            communities,
        }
    }
}

impl Feed {
    /// Generates and encodes the table.
    pub fn generate(spec: FeedSpec) -> Self {
        let mut rng = Rng(spec.seed);
        let mut stream = Vec::with_capacity(spec.prefixes as usize * 24);
        let mut messages = 0;
        let mut attribute_sets = 0;
        let mut next = 0u32;
        while next < spec.prefixes {
            let group = rng.range(1, 8).min(spec.prefixes - next);
            let attrs = Attrs::random(&mut rng, spec.asn);
            let prefixes = (next..next + group).map(nth_prefix);
            encode_update(&mut stream, &attrs, spec.next_hop, prefixes);
            messages += 1;
            attribute_sets += 1;
            next += group;
        }
        // End-of-RIB for IPv4 unicast: an UPDATE with nothing in it (RFC 4724 §2).
        message(&mut stream, UPDATE, &[0, 0, 0, 0]);
        messages += 1;
        Self {
            spec,
            stream,
            messages,
            attribute_sets,
        }
    }
}

/// First address of the blocks of a [`Feed::cluster`].
pub const FIRST_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);

impl Feed {
    /// A cluster's routes as its route reflector hears them: `nodes` nodes, each announcing
    /// `blocks` consecutive `/block_len` blocks counted up from [`FIRST_BLOCK`], with itself
    /// as the next hop: node `i` is `spec.next_hop + i`. One UPDATE per node, as iBGP sends
    /// it (ORIGIN IGP, an empty AS_PATH, LOCAL_PREF 100), then the End-of-RIB. `spec.prefixes`
    /// is set to the number of blocks; its seed is unused.
    pub fn cluster(mut spec: FeedSpec, nodes: u32, blocks: u32, block_len: u8) -> Self {
        const WELL_KNOWN: u8 = 0x40;
        let mut stream = Vec::new();
        let first_node = u32::from(spec.next_hop);
        let block_size = 1u32 << (32 - u32::from(block_len));
        let octets = usize::from(block_len).div_ceil(8);
        for node in 0..nodes {
            let next_hop = Ipv4Addr::from(first_node + node);
            let attributes = [
                path_attribute(WELL_KNOWN, 1, &[0]),
                path_attribute(WELL_KNOWN, 2, &[]),
                path_attribute(WELL_KNOWN, 3, &next_hop.octets()),
                path_attribute(WELL_KNOWN, 5, &100u32.to_be_bytes()),
            ]
            .concat();
            let mut nlri = Vec::with_capacity(blocks as usize * (1 + octets));
            for block in 0..blocks {
                let index = node * blocks + block;
                let address = Ipv4Addr::from(u32::from(FIRST_BLOCK) + index * block_size);
                nlri.push(block_len);
                nlri.extend_from_slice(&address.octets()[..octets]);
            }
            stream.extend(update_message(&[], &attributes, &nlri));
        }
        message(&mut stream, UPDATE, &[0, 0, 0, 0]);
        spec.prefixes = nodes * blocks;
        Self {
            spec,
            stream,
            messages: nodes as usize + 1,
            attribute_sets: nodes as usize,
        }
    }
}

/// The `i`-th generated prefix: a /24 counted up from [`FIRST_PREFIX`].
pub fn nth_prefix(i: u32) -> (Ipv4Addr, u8) {
    (Ipv4Addr::from(u32::from(FIRST_PREFIX) + (i << 8)), 24)
}

/// Appends one message: marker, length, type, body.
fn message(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

/// Appends one path attribute, with the extended-length flag when the value needs it.
fn attribute(out: &mut Vec<u8>, flags: u8, kind: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend_from_slice(&[flags | 0x10, kind]);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, kind, value.len() as u8]);
    }
    out.extend_from_slice(value);
}

fn encode_update(
    out: &mut Vec<u8>,
    a: &Attrs,
    next_hop: Ipv4Addr,
    prefixes: impl Iterator<Item = (Ipv4Addr, u8)>,
) {
    const WELL_KNOWN: u8 = 0x40;
    const OPTIONAL: u8 = 0x80;
    const OPTIONAL_TRANSITIVE: u8 = 0xc0;
    let mut attrs = Vec::with_capacity(64);
    attribute(&mut attrs, WELL_KNOWN, 1, &[a.origin]);
    let mut path = vec![2, a.as_path.len() as u8];
    for asn in &a.as_path {
        path.extend_from_slice(&asn.to_be_bytes());
    }
    attribute(&mut attrs, WELL_KNOWN, 2, &path);
    attribute(&mut attrs, WELL_KNOWN, 3, &next_hop.octets());
    if let Some(med) = a.med {
        attribute(&mut attrs, OPTIONAL, 4, &med.to_be_bytes());
    }
    if !a.communities.is_empty() {
        let value: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        attribute(&mut attrs, OPTIONAL_TRANSITIVE, 8, &value);
    }
    let mut body = Vec::with_capacity(4 + attrs.len() + 40);
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    for (addr, len) in prefixes {
        body.push(len);
        body.extend_from_slice(&addr.octets()[..usize::from(len).div_ceil(8)]);
    }
    message(out, UPDATE, &body);
}

/// One whole UPDATE from its three fields, already encoded: for tests that send exactly the
/// bytes a misbehaving peer would.
pub fn update_message(withdrawn: &[u8], attributes: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + withdrawn.len() + attributes.len() + nlri.len());
    body.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    body.extend_from_slice(withdrawn);
    body.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
    body.extend_from_slice(attributes);
    body.extend_from_slice(nlri);
    let mut out = Vec::new();
    message(&mut out, UPDATE, &body);
    out
}

/// One encoded path attribute (flags, type code, value), for [`update_message`].
pub fn path_attribute(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    attribute(&mut out, flags, code, value);
    out
}

fn open_message(asn: u32, hold_time: u16, router_id: Ipv4Addr) -> Vec<u8> {
    let two_octet = u16::try_from(asn).unwrap_or(23_456);
    // IPv4 and IPv6 unicast, route refresh, 4-octet AS.
    let mut caps = vec![1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 2, 0, 65, 4];
    caps.extend_from_slice(&asn.to_be_bytes());
    let mut body = vec![4];
    body.extend_from_slice(&two_octet.to_be_bytes());
    body.extend_from_slice(&hold_time.to_be_bytes());
    body.extend_from_slice(&router_id.octets());
    body.push(caps.len() as u8 + 2);
    body.extend_from_slice(&[2, caps.len() as u8]);
    body.extend_from_slice(&caps);
    let mut out = Vec::new();
    message(&mut out, OPEN, &body);
    out
}

/// Reads one message; returns its type and body.
fn read_message(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 19];
    stream.read_exact(&mut header)?;
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    if !(19..=65_535).contains(&len) {
        return Err(std::io::Error::other(format!("bad message length {len}")));
    }
    let mut body = vec![0u8; len - 19];
    stream.read_exact(&mut body)?;
    Ok((header[18], body))
}

fn notification_text(body: &[u8]) -> String {
    format!(
        "NOTIFICATION code {} subcode {}",
        body.first().copied().unwrap_or(0),
        body.get(1).copied().unwrap_or(0)
    )
}

/// An Established session from the feeder to a receiver.
#[derive(Debug)]
pub struct Feeder {
    writer: Arc<Mutex<TcpStream>>,
    stop: Arc<AtomicBool>,
    notification: Arc<Mutex<Option<String>>>,
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// A TCP connection to `to` from `from` (any address if `None`), within `timeout`.
fn connect_stream(
    to: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect_timeout(&to, timeout);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

/// The number of IPv4 prefixes an UPDATE body announces in its NLRI field.
fn announced_prefixes(body: &[u8]) -> u64 {
    let field = |at: usize| {
        body.get(at..at + 2)
            .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let attributes_at = 2 + field(0);
    let mut at = attributes_at + 2 + field(attributes_at);
    let mut count = 0;
    while let Some(&bits) = body.get(at) {
        at += 1 + usize::from(bits).div_ceil(8);
        count += 1;
    }
    count
}

impl Feeder {
    /// Connects from inside `ns` to the receiver at `to`, exchanges OPENs and KEEPALIVEs, and
    /// returns once the session is Established.
    pub fn connect(
        ns: &NetNs,
        to: SocketAddr,
        spec: &FeedSpec,
        timeout: Duration,
    ) -> Result<Self, Error> {
        Self::connect_from(ns, None, to, spec, timeout)
    }

    /// [`connect`](Self::connect) from the local address `from` (one of several sessions
    /// from one namespace, each a different peer of the receiver).
    pub fn connect_from(
        ns: &NetNs,
        from: Option<IpAddr>,
        to: SocketAddr,
        spec: &FeedSpec,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let what = format!("feeder session to {to}");
        // The socket is created on a thread inside the namespace and keeps living there.
        let stream = ns
            .enter(|| connect_stream(to, from, timeout))
            .and_then(|r| r)
            .map_err(|e| Error::io(what.clone(), e))?;
        let io = |e| Error::io(what.clone(), e);
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        let mut reader = stream.try_clone().map_err(io)?;
        let mut writer = stream;
        writer
            .write_all(&open_message(spec.asn, 180, spec.router_id))
            .map_err(io)?;
        let mut hold_time = 180u16;
        let mut opened = false;
        loop {
            let (kind, body) = read_message(&mut reader).map_err(io)?;
            match kind {
                OPEN if !opened => {
                    opened = true;
                    if let Some(h) = body.get(3..5) {
                        hold_time = hold_time.min(u16::from_be_bytes([h[0], h[1]]));
                    }
                    let mut keepalive = Vec::new();
                    message(&mut keepalive, KEEPALIVE, &[]);
                    writer.write_all(&keepalive).map_err(io)?;
                }
                KEEPALIVE if opened => break,
                NOTIFICATION => {
                    return Err(Error::Command {
                        what,
                        detail: notification_text(&body),
                    });
                }
                other => {
                    return Err(Error::parse(
                        what,
                        format!("unexpected message type {other} before Established"),
                    ));
                }
            }
        }
        reader.set_read_timeout(None).map_err(io)?;
        let writer = Arc::new(Mutex::new(writer));
        let stop = Arc::new(AtomicBool::new(false));
        let notification = Arc::new(Mutex::new(None));
        let received = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        {
            // Drain what the receiver sends, counting the prefixes it announces; keep a
            // NOTIFICATION for the report.
            let notification = notification.clone();
            let received = received.clone();
            threads.push(std::thread::spawn(move || {
                while let Ok((kind, body)) = read_message(&mut reader) {
                    if kind == UPDATE {
                        received.fetch_add(announced_prefixes(&body), Ordering::Relaxed);
                    }
                    if kind == NOTIFICATION {
                        *notification.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(notification_text(&body));
                        break;
                    }
                }
            }));
        }
        if hold_time > 0 {
            let (writer, stop) = (writer.clone(), stop.clone());
            let interval = Duration::from_secs(u64::from(hold_time / 3).max(1));
            threads.push(std::thread::spawn(move || {
                let mut keepalive = Vec::new();
                message(&mut keepalive, KEEPALIVE, &[]);
                let tick = Duration::from_millis(100);
                let mut waited = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    waited += tick;
                    if waited >= interval {
                        waited = Duration::ZERO;
                        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                        if w.write_all(&keepalive).is_err() {
                            break;
                        }
                    }
                }
            }));
        }
        Ok(Self {
            writer,
            stop,
            notification,
            received,
            threads,
        })
    }

    /// How many IPv4 prefixes the receiver has announced on this session so far (a route
    /// reflector's client counts what was reflected to it).
    pub fn received_prefixes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Writes `bytes` (whole messages) as one burst; KEEPALIVEs wait until it is done, which
    /// is fine because UPDATEs reset the receiver's hold timer as well.
    pub fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(bytes).map_err(|e| Error::io("feeder write", e))
    }

    /// The NOTIFICATION the receiver sent, if it sent one.
    pub fn notification(&self) -> Option<String> {
        self.notification
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefixes: u32) -> FeedSpec {
        FeedSpec {
            prefixes,
            seed: 7,
            asn: 65000,
            router_id: Ipv4Addr::new(10, 90, 0, 1),
            next_hop: Ipv4Addr::new(10, 90, 0, 1),
        }
    }

    /// Walks the stream: every message is framed right; returns (updates, prefixes).
    fn walk(stream: &[u8]) -> (usize, usize) {
        let (mut at, mut updates, mut prefixes) = (0, 0, 0);
        while at < stream.len() {
            assert_eq!(&stream[at..at + 16], &[0xff; 16]);
            let len = usize::from(u16::from_be_bytes([stream[at + 16], stream[at + 17]]));
            assert_eq!(stream[at + 18], UPDATE);
            let body = &stream[at + 19..at + len];
            prefixes += announced_prefixes(body) as usize;
            updates += 1;
            at += len;
        }
        (updates, prefixes)
    }

    #[test]
    fn the_stream_holds_every_prefix_and_ends_with_end_of_rib() {
        let feed = Feed::generate(spec(10_000));
        let (updates, prefixes) = walk(&feed.stream);
        assert_eq!(prefixes, 10_000);
        assert_eq!(updates, feed.messages);
        assert_eq!(
            &feed.stream[feed.stream.len() - 23..],
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0, 23, 2, 0, 0, 0, 0
            ]
        );
        // One to eight prefixes per UPDATE: about 4.5 on average.
        let per_update = 10_000.0 / (feed.messages - 1) as f64;
        assert!((3.5..5.5).contains(&per_update), "{per_update}");
    }

    #[test]
    fn a_cluster_feed_has_one_update_per_node_with_its_blocks() {
        let feed = Feed::cluster(spec(0), 5_000, 4, 26);
        assert_eq!(walk(&feed.stream), (5_001, 20_000));
        assert_eq!(feed.spec.prefixes, 20_000);
        let first =
            &feed.stream[..usize::from(u16::from_be_bytes([feed.stream[16], feed.stream[17]]))];
        assert_eq!(announced_prefixes(&first[19..]), 4);
        // The last block of node 0 and the first of node 1 are neighbours.
        assert!(first.ends_with(&[26, 10, 64, 0, 192]));
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        assert_eq!(
            Feed::generate(spec(2_000)).stream,
            Feed::generate(spec(2_000)).stream
        );
        let mut other = spec(2_000);
        other.seed = 8;
        assert_ne!(
            Feed::generate(spec(2_000)).stream,
            Feed::generate(other).stream
        );
    }

    #[test]
    fn an_update_is_encoded_as_rfc_4271_says() {
        let attrs = Attrs {
            origin: 0,
            as_path: vec![65000, 131_072],
            med: Some(5),
            communities: vec![0xfde8_0001],
        };
        let mut out = Vec::new();
        encode_update(
            &mut out,
            &attrs,
            Ipv4Addr::new(10, 90, 0, 1),
            [nth_prefix(1)].into_iter(),
        );
        let expected: Vec<u8> = [
            &[0xff; 16][..],
            &[0, 65, 2],                                        // length 65, UPDATE
            &[0, 0, 0, 38],   // no withdrawn routes, 38 octets of attributes
            &[0x40, 1, 1, 0], // ORIGIN IGP
            &[0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe8, 0, 2, 0, 0], // AS_SEQUENCE 65000 131072
            &[0x40, 3, 4, 10, 90, 0, 1], // NEXT_HOP
            &[0x80, 4, 4, 0, 0, 0, 5], // MED 5
            &[0xc0, 8, 4, 0xfd, 0xe8, 0, 1], // COMMUNITIES 65000:1
            &[24, 32, 0, 1],  // 32.0.1.0/24
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn the_open_carries_the_capabilities() {
        let open = open_message(65000, 180, Ipv4Addr::new(10, 90, 0, 1));
        assert_eq!(open[18], OPEN);
        let body = &open[19..];
        assert_eq!(&body[..10], &[4, 0xfd, 0xe8, 0, 180, 10, 90, 0, 1, 22]);
        assert_eq!(
            &body[10..],
            &[
                2, 20, 1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 2, 0, 65, 4, 0, 0, 0xfd, 0xe8
            ]
        );
    }
}
