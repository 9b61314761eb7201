//! Loc-RIB ingestion: insert rate and bytes per path for 1,000,000 IPv4 prefixes.
//!
//! Run: `cargo bench -p wren-bgp --bench rib`. The prefixes arrive as UPDATEs through
//! `Rib::update` (the speaker's import path: attribute normalisation, interning, the table,
//! the decision process, the Loc-RIB change events). Cases:
//! - one iBGP peer sends the table (1M paths, nobody to export to);
//! - two iBGP peers send the same prefixes (2M paths, two per prefix);
//! - one iBGP peer sends the table and an eBGP peer gets it: the Adj-RIB-Out then holds 1M
//!   routes with their rewritten attributes, drained as a writer would.
//!
//! One attribute set is shared by `PREFIXES_PER_SET` prefixes, about the sharing of a full
//! Internet table.
//!
//! The anchor, measured in the same run on the same input: a plain
//! `BTreeMap<IpNet, Vec<Arc<PathAttributes>>>` holding one attribute set per UPDATE (and a
//! second such map standing for the Adj-RIB-Out in the last case).
//!
//! Memory is counted by a global allocator that tracks live bytes; figures are bytes
//! requested from the allocator (malloc's own overhead is not included).
//!
//! Memory given back: runs first, while the process is fresh. One peer sends a table (the
//! 1,000,000 IPv4 /24s, and 200,000 IPv6 /128s) and withdraws all of it; the figure is the
//! process's resident size (`VmRSS`) after the withdrawal, against the anchor of the resident
//! size before the table arrived: first as the RIB leaves it, then after [`Rib::compact`]
//! and [`release_freed_memory`], which the speaker runs after each batch.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wren_bgp::rib::{AcceptAll, AdjRibOut, PeerId, PeerSettings, Rib, RibConfig, Session};
use wren_bgp::speaker::release_freed_memory;
use wren_bgp::wire::{Afi, AsPath, AsSegment, MpReach, MpUnreach, Origin, PathAttributes, Update};

const PREFIXES: usize = 1_000_000;
const PREFIXES_PER_SET: usize = 4;
const RUNS: usize = 3;
const LOCAL_AS: u32 = 64512;

#[global_allocator]
static ALLOCATOR: wren_tests::bench::CountingAllocator = wren_tests::bench::CountingAllocator;

fn live() -> usize {
    wren_tests::bench::live_bytes()
}

/// A deterministic pseudo-random sequence (xorshift), so every run sees the same table.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The feed: UPDATEs of `PREFIXES_PER_SET` /24s each, with AS paths of 2–6 hops and a
/// community or two, as a transit peer `peer_as` would send them.
fn feed(peer_as: u32, next_hop: Ipv4Addr) -> Vec<Update> {
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ u64::from(peer_as));
    (0..PREFIXES / PREFIXES_PER_SET)
        .map(|set| {
            let hops = 2 + (rng.next() % 5) as usize;
            let mut path = vec![peer_as];
            path.extend((1..hops).map(|_| 1 + (rng.next() % 60_000) as u32));
            let communities = (0..1 + rng.next() % 2).map(|_| rng.next() as u32).collect();
            let nlri = (0..PREFIXES_PER_SET)
                .map(|i| {
                    let n = (set * PREFIXES_PER_SET + i) as u32;
                    let addr = Ipv4Addr::from((1 << 24) + (n << 8));
                    IpNet::V4(Ipv4Net::new(addr, 24).expect("valid length"))
                })
                .collect();
            Update {
                withdrawn: Vec::new(),
                attributes: PathAttributes {
                    origin: Some(Origin::Igp),
                    as_path: Some(AsPath {
                        segments: vec![AsSegment::Sequence(path)],
                    }),
                    next_hop: Some(next_hop),
                    med: Some((rng.next() % 100) as u32),
                    communities,
                    ..PathAttributes::default()
                },
                nlri,
            }
        })
        .collect()
}

/// The same routes as `feed` would carry, as 200,000 IPv6 /128s (`prefixes` of them).
fn feed_v6(prefixes: usize) -> Vec<Update> {
    let v4 = feed(65000, Ipv4Addr::new(192, 0, 2, 1));
    v4.into_iter()
        .take(prefixes / PREFIXES_PER_SET)
        .enumerate()
        .map(|(set, mut update)| {
            let nlri = (0..PREFIXES_PER_SET)
                .map(|i| {
                    let n = (set * PREFIXES_PER_SET + i) as u128;
                    let addr = (0x2001_0db8_u128 << 96) | n;
                    IpNet::V6(Ipv6Net::new(addr.into(), 128).expect("valid length"))
                })
                .collect();
            update.nlri.clear();
            update.attributes.next_hop = None;
            update.attributes.mp_reach = Some(MpReach {
                afi: Afi::Ipv6Unicast,
                next_hop: IpAddr::V6("2001:db8::1".parse().expect("address")),
                link_local_next_hop: None,
                nlri,
            });
            update
        })
        .collect()
}

/// The UPDATEs that withdraw everything `updates` announced.
fn withdrawals(updates: &[Update]) -> Vec<Update> {
    updates
        .iter()
        .map(|u| {
            let mut out = Update {
                withdrawn: u.nlri.clone(),
                ..Update::default()
            };
            if let Some(reach) = &u.attributes.mp_reach {
                out.attributes.mp_unreach = Some(MpUnreach {
                    afi: reach.afi,
                    withdrawn: reach.nlri.clone(),
                });
            }
            out
        })
        .collect()
}

/// The process's resident size, KiB.
fn rss_kib() -> u64 {
    wren_tests::process::usage(std::process::id()).rss_kib
}

/// Adds peer `n` (192.0.2.n) in `remote_as` with an established session of `families`.
fn join(rib: &mut Rib, n: u8, remote_as: u32, families: &[Afi]) -> (PeerId, AdjRibOut) {
    let address = Ipv4Addr::new(192, 0, 2, n);
    let settings = PeerSettings {
        address: IpAddr::V4(address),
        remote_as,
        local_as: None,
        rr_client: false,
        next_hop_self: false,
        next_hop_keep: false,
    };
    let (peer, out) = rib.add_peer(settings);
    let session = Session {
        router_id: address,
        local_address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),
        families: families.to_vec(),
        epoch: 1,
        graceful_restart: None,
    };
    rib.peer_up(peer, session);
    (peer, out)
}

/// Resident sizes (KiB) around one peer's table coming and going.
struct Residency {
    before: u64,
    held: u64,
    withdrawn: u64,
    released: u64,
}

/// Feeds `updates` from one iBGP peer, withdraws them all, then compacts and releases.
fn residency(updates: &[Update], withdraw: &[Update]) -> Residency {
    let before = rss_kib();
    let config = RibConfig::new(LOCAL_AS, Ipv4Addr::new(10, 0, 0, 1));
    let mut rib = Rib::new(config, Arc::new(AcceptAll));
    rib.record_route_events(false);
    let (peer, _out) = join(&mut rib, 1, LOCAL_AS, &[Afi::Ipv4Unicast, Afi::Ipv6Unicast]);
    for update in updates {
        rib.update(peer, update);
        rib.flush();
    }
    let held = rss_kib();
    for update in withdraw {
        rib.update(peer, update);
        rib.flush();
    }
    assert!(rib.is_empty());
    let withdrawn = rss_kib();
    rib.compact();
    release_freed_memory();
    let released = rss_kib();
    drop(black_box(rib));
    Residency {
        before,
        held,
        withdrawn,
        released,
    }
}

struct Figures {
    elapsed: Duration,
    bytes: usize,
}

impl Figures {
    fn rate(&self, paths: usize) -> f64 {
        paths as f64 / self.elapsed.as_secs_f64()
    }
}

/// Feeds `feeds` (one per iBGP peer) into a fresh RIB, with an established eBGP peer to
/// export to when `export`; returns the time and the bytes the RIB holds.
fn wren(feeds: &[Vec<Update>], export: bool) -> Figures {
    let before = live();
    let start = Instant::now();
    let config = RibConfig::new(LOCAL_AS, Ipv4Addr::new(10, 0, 0, 1));
    let mut rib = Rib::new(config, Arc::new(AcceptAll));
    let sink = export.then(|| join(&mut rib, 200, 65200, &[Afi::Ipv4Unicast]).1);
    for (n, updates) in feeds.iter().enumerate() {
        let (peer, _) = join(&mut rib, 1 + n as u8, LOCAL_AS, &[Afi::Ipv4Unicast]);
        for update in updates {
            rib.update(peer, update);
            // What the speaker does after each batch; a subscriber would consume the events.
            black_box(rib.take_events());
            rib.flush();
            if let Some(sink) = &sink {
                black_box(sink.take_batch(usize::MAX).prefixes());
            }
        }
    }
    let elapsed = start.elapsed();
    let bytes = live() - before;
    assert_eq!(rib.len(), PREFIXES);
    drop(black_box((rib, sink)));
    Figures { elapsed, bytes }
}

/// The anchor: the same routes in `maps` BTreeMaps, one shared attribute set per UPDATE.
fn btree(feeds: &[Vec<Update>], maps: usize) -> Figures {
    let before = live();
    let start = Instant::now();
    let mut all: Vec<BTreeMap<IpNet, Vec<Arc<PathAttributes>>>> = vec![BTreeMap::new(); maps];
    for updates in feeds {
        for update in updates {
            for map in &mut all {
                let attrs = Arc::new(update.attributes.clone());
                for prefix in &update.nlri {
                    map.entry(*prefix).or_default().push(attrs.clone());
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let bytes = live() - before;
    assert_eq!(all[0].len(), PREFIXES);
    drop(black_box(all));
    Figures { elapsed, bytes }
}

fn best_of(runs: usize, f: impl Fn() -> Figures) -> Figures {
    let all: Vec<Figures> = (0..runs).map(|_| f()).collect();
    let fastest = all.iter().map(|f| f.elapsed).min().unwrap_or_default();
    Figures {
        elapsed: fastest,
        bytes: all.last().map_or(0, |f| f.bytes),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once, without it.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { RUNS };
    let one = vec![feed(65000, Ipv4Addr::new(192, 0, 2, 1))];
    let two = vec![one[0].clone(), feed(65001, Ipv4Addr::new(192, 0, 2, 2))];
    let v6 = feed_v6(200_000);
    let tables = [
        ("1,000,000 IPv4 /24s", &one[0], withdrawals(&one[0])),
        ("200,000 IPv6 /128s", &v6, withdrawals(&v6)),
    ];
    println!("resident memory (MiB) around one peer's table coming and going");
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>9}   after release / before",
        "table", "before", "held", "withdrawn", "released"
    );
    for (name, updates, withdraw) in &tables {
        let r = residency(updates, withdraw);
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "{name:<22} {:>8.1} {:>8.1} {:>10.1} {:>9.1}   {:.2}x ({:+.1} MiB)",
            mib(r.before),
            mib(r.held),
            mib(r.withdrawn),
            mib(r.released),
            r.released as f64 / r.before as f64,
            mib(r.released) - mib(r.before),
        );
    }
    drop(tables);
    println!("{PREFIXES} prefixes, {PREFIXES_PER_SET} per attribute set, best of {runs} runs");
    println!(
        "{:<40} {:>9} {:>11} {:>10}   wren / anchor",
        "case", "paths", "paths/s", "bytes/path"
    );
    let cases = [
        ("1 peer in", &one, false),
        ("2 peers in, same prefixes", &two, false),
        ("1 peer in, 1 eBGP peer out", &one, true),
    ];
    for (name, feeds, export) in cases {
        let paths = PREFIXES * feeds.len();
        let w = best_of(runs, || wren(feeds, export));
        let a = best_of(runs, || btree(feeds, 1 + usize::from(export)));
        let row = |who: &str, f: &Figures, ratio: String| {
            println!(
                "{:<40} {:>9} {:>11.0} {:>10.1}   {ratio}",
                format!("{who}: {name}"),
                paths,
                f.rate(paths),
                f.bytes as f64 / paths as f64,
            );
        };
        let rate = w.rate(paths) / a.rate(paths);
        let mem = w.bytes as f64 / a.bytes as f64;
        row("wren", &w, format!("rate {rate:.2}x, memory {mem:.2}x"));
        row("anchor", &a, String::new());
    }
}
