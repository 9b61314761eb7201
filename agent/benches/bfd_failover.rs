//! Link cut → route gone, with BFD at 3 × 100 ms and 3 × 300 ms and with the hold timer
//! alone: a `wren agent` against a BIRD 2 ToR, and BIRD–BIRD on the same bridge at the same
//! settings, in one run.
//!
//! - **wren**: one node's agent peers with a BIRD ToR (`wren peer add --bfd …`; BIRD `bfd
//!   on`) that announces a prefix. The ToR's port starts dropping every packet, both ways
//!   (carrier up, as with `tc netem loss 100%`); the figure is the time until the prefix is
//!   gone from the node's kernel (`ip route`, polled every 5 ms).
//! - **anchor**: two BIRDs on the same bridge, one announcing the same kind of prefix to the
//!   other with the same BGP and BFD settings; the announcing one's port is cut the same way,
//!   and the figure is the time until the prefix is gone from the other's routing table
//!   (`birdc show route`, polled every 5 ms; BIRD here programs no kernel, so the anchor
//!   leaves out the kernel write the wren figure includes).
//! - **hold timer alone**: the same without BFD, hold time 9 s (the default 90 s scales).
//!
//! Each round cuts at a random point between two BFD packets; wren and anchor rounds
//! alternate, so machine load falls on both alike. `cargo bench -p wren-agent --bench
//! bfd_failover` (root; etcd, bird, nft). `WREN_BENCH_ROUNDS` rounds per figure (default 5);
//! the table gives median, minimum and maximum.

#[path = "../tests/agent_rig/mod.rs"]
mod agent_rig;

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use agent_rig::{Cluster, cut_port};
use wren_tests::bench::{BenchSettings, invoked_as_bench};
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::{Announce, BfdPeer, BgpDaemon, Config, Family, Peer};
use wren_tests::prereq;

const TOR_IP: &str = "10.77.0.253";
const ANCHOR_A: &str = "10.77.0.241";
const ANCHOR_B: &str = "10.77.0.242";
const PREFIX: &str = "192.0.2.0/24";
const HOLD: u16 = 9;
const POLL: Duration = Duration::from_millis(5);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// BFD timing of one row; `None`: the hold timer alone.
type Timing = Option<(u64, u8)>;

/// BIRD at `local` (AS `asn`) peering with `peer` (AS `peer_as`), with BFD when `timing`.
fn bird_config(local: &str, asn: u32, peer: &str, peer_as: u32, timing: Timing) -> Config {
    let mut session = Peer::new(ip(peer), peer_as, ip(local)).hold_time(HOLD);
    let mut config = Config::new(local.parse::<Ipv4Addr>().unwrap(), asn);
    if let Some((interval, mult)) = timing {
        session = session.bfd();
        config = config.bfd(
            BfdPeer::new(ip(peer), ip(local), "eth0")
                .interval(Duration::from_millis(interval))
                .detect_mult(mult),
        );
    }
    config.peer(session)
}

/// A random point of an interval after the Poll Sequences of the way up ended.
fn settle(timing: Timing) {
    let interval = Duration::from_millis(timing.map_or(100, |(i, _)| i));
    let random = RandomState::new().hash_one(Instant::now());
    std::thread::sleep(Duration::from_secs(1) + interval.mul_f64((random % 1000) as f64 / 1000.0));
}

fn bird_has(bird: &Bird) -> bool {
    bird.routes(Family::Ipv4)
        .unwrap_or_default()
        .iter()
        .any(|r| r.prefix == Some(PREFIX.parse().unwrap()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut figures: Vec<Duration>) -> (f64, f64, f64) {
    figures.sort();
    let median = figures[figures.len() / 2];
    (ms(median), ms(figures[0]), ms(figures[figures.len() - 1]))
}

/// Polls `check` every [`POLL`] until it holds (at most a minute: the hold timer's rows).
fn wait_every_long(mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the route never went"
        );
        std::thread::sleep(POLL);
    }
}

/// Waits up to a minute (the hold-timer rows take their time coming back).
fn wait_long(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !agent_rig::ready() || !prereq::require_command("bird") || !prereq::require_command("nft") {
        return;
    }
    let rounds = BenchSettings::from_env().rounds.max(5);
    let mut c = Cluster::new("ag-bfdb", 1);
    let tor_ns = c.attach_router("ag-bfdb-tor", TOR_IP);
    let a_ns = c.attach_router("ag-bfdb-a", ANCHOR_A);
    let b_ns = c.attach_router("ag-bfdb-b", ANCHOR_B);
    c.start_all();
    let node_ip = c.node(0).ip.clone();
    println!(
        "| settings | wren: cut → route gone from the node's kernel, median (min–max) ms | \
         anchor BIRD–BIRD: cut → route gone from BIRD's table, median (min–max) ms | ratio (median) |"
    );
    println!("|---|---|---|---|");
    let rows: [Timing; 3] = [Some((100, 3)), Some((300, 3)), None];
    for timing in rows {
        let mut flags: Vec<String> = Vec::new();
        if let Some((interval, mult)) = timing {
            flags.extend([
                "--bfd".to_owned(),
                "--bfd-transmit-interval".into(),
                format!("{interval}ms"),
                "--bfd-receive-interval".into(),
                format!("{interval}ms"),
                "--bfd-multiplier".into(),
                mult.to_string(),
            ]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        c.add_peer("tor", TOR_IP, 65000, &flags);
        let mut tor =
            Bird::start(&tor_ns, bird_config(TOR_IP, 65000, &node_ip, 64512, timing)).unwrap();
        tor.announce(&Announce::new(PREFIX.parse().unwrap()))
            .unwrap();
        let a = Bird::start(&a_ns, bird_config(ANCHOR_A, 65001, ANCHOR_B, 65002, timing)).unwrap();
        let mut b =
            Bird::start(&b_ns, bird_config(ANCHOR_B, 65002, ANCHOR_A, 65001, timing)).unwrap();
        b.announce(&Announce::new(PREFIX.parse().unwrap())).unwrap();
        let node = c.node(0);
        let node_has = || node.has_route("bgp", &format!("{PREFIX} via {TOR_IP}"));
        let bfd_up = || {
            timing.is_none()
                || node.status_json()["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["address"] == TOR_IP && p["bfd"]["state"] == "Up")
        };
        let (mut wren, mut anchor) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let wren_round = || {
                wait_long("the node's route and BFD", || node_has() && bfd_up());
                settle(timing);
                cut_port(&tor_ns, true);
                let at = Instant::now();
                wait_every_long(|| !node_has());
                let took = at.elapsed();
                cut_port(&tor_ns, false);
                took
            };
            let anchor_round = || {
                wait_long("BIRD's route", || bird_has(&a));
                // BFD Up at both ends before the cut.
                settle(timing);
                cut_port(&b_ns, true);
                let at = Instant::now();
                wait_every_long(|| !bird_has(&a));
                let took = at.elapsed();
                cut_port(&b_ns, false);
                took
            };
            if round % 2 == 0 {
                wren.push(wren_round());
                anchor.push(anchor_round());
            } else {
                anchor.push(anchor_round());
                wren.push(wren_round());
            }
            eprintln!(
                "{timing:?}, round {}: wren {:.0} ms, anchor {:.0} ms",
                round + 1,
                ms(*wren.last().unwrap()),
                ms(*anchor.last().unwrap())
            );
        }
        let (w, wmin, wmax) = summary(wren);
        let (n, nmin, nmax) = summary(anchor);
        let settings = match timing {
            Some((interval, mult)) => format!("BFD {mult} × {interval} ms"),
            None => format!("hold timer alone ({HOLD} s)"),
        };
        println!(
            "| {settings} | {w:.0} ({wmin:.0}–{wmax:.0}) | {n:.0} ({nmin:.0}–{nmax:.0}) | {:.2} |",
            w / n
        );
        drop(tor);
        drop(a);
        drop(b);
    }
}
