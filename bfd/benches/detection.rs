//! Link cut → BFD session Down, wren against BIRD–BIRD at the same intervals, in one run.
//!
//! Each round builds a fresh link between two namespaces, brings a session Up at the given
//! interval and multiplier, waits for the Poll Sequences to settle, then drops every packet on
//! the link at both ends (carrier stays up, as with `tc netem loss 100%`) and measures from
//! the moment the measuring side's drop rule was in place until its session left Up:
//! - **wren**: wren's endpoint in one namespace, BIRD 2 in the other; the time of wren's Down
//!   event.
//! - **anchor**: BIRD 2 in both namespaces; the time BIRD records for the change (the
//!   `Since` column of `show bfd sessions`, in milliseconds of the wall clock).
//!
//! Where between two packets the cut falls decides how much of the detection time has passed
//! already, so each round cuts at a random point of an interval: the figures spread between
//! the detection time minus one interval and the detection time. wren and anchor rounds
//! alternate, so machine load falls on both alike. `WREN_BENCH_ROUNDS`
//! rounds per figure (default 3); the table gives median, minimum and maximum.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{A4, B4, Cut, IFNAME, Link, Wren, timing};
use wren_bfd::packet::State;
use wren_tests::bench::{BenchSettings, invoked_as_bench};
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::{BfdPeer, BfdState, Config, wait_bfd};
use wren_tests::prereq;

const SETTLE: Duration = Duration::from_secs(15);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn bird_config(peer: &str, local: &str, interval: Duration, mult: u8, id: &str) -> Config {
    Config::new(id.parse().unwrap(), 65000).bfd(
        BfdPeer::new(ip(peer), ip(local), IFNAME)
            .interval(interval)
            .detect_mult(mult),
    )
}

/// Milliseconds since midnight on the wall clock (UTC, as BIRD prints local time here).
fn wall_ms_of_day(at: SystemTime) -> i64 {
    let ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    ms % 86_400_000
}

/// BIRD's `HH:MM:SS.mmm` as milliseconds since midnight.
fn parse_since(text: &str) -> Option<i64> {
    let (hms, millis) = text.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + millis.parse::<i64>().ok()?)
}

/// Waits for the Poll Sequences of the way up to end (well within a second), then a random
/// part of an interval more, so the cut falls at a random point between two packets: where
/// it falls decides how much of the detection time has already passed.
fn settle(interval: Duration) {
    let random = RandomState::new().hash_one(Instant::now());
    let extra = interval.mul_f64((random % 1000) as f64 / 1000.0);
    std::thread::sleep(Duration::from_secs(1) + extra);
}

/// One wren round: wren at `a`, BIRD at `b`; the time from cut to wren's Down.
fn wren_round(interval: Duration, mult: u8) -> Duration {
    let link = Link::new("bfdb-w").unwrap();
    let _bird = Bird::start(&link.b, bird_config(A4, B4, interval, mult, B4)).unwrap();
    let mut wren = Wren::start(&link.a);
    wren.add(B4, A4, timing(interval.as_millis() as u64, mult));
    wren.wait(State::Up, SETTLE);
    settle(interval);
    let cut = link.cut(Cut::Loss);
    let down = wren.wait(State::Down, Duration::from_secs(10));
    let status = wren.rt.block_on(wren.handle.session(ip(B4))).unwrap();
    if let Some(last) = status.last_received {
        eprintln!(
            "  wren: last packet {:?} before the cut, Down {:?} after it",
            cut.instant.saturating_duration_since(last),
            down.at.duration_since(last)
        );
    }
    down.at.duration_since(cut.instant)
}

/// One anchor round: BIRD at both ends; the time from cut to BIRD's Down at `a`.
fn anchor_round(interval: Duration, mult: u8) -> Duration {
    let link = Link::new("bfdb-b").unwrap();
    let a = Bird::start(&link.a, bird_config(B4, A4, interval, mult, A4)).unwrap();
    let _b = Bird::start(&link.b, bird_config(A4, B4, interval, mult, B4)).unwrap();
    wait_bfd(&a, ip(B4), BfdState::Up, SETTLE).unwrap();
    settle(interval);
    let wall = link.cut(Cut::Loss).wall;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = a.command("show bfd sessions").unwrap();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(B4))
            .expect("the session is listed")
            .to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if BfdState::parse(fields[2]) != Some(BfdState::Up) {
            let since = parse_since(fields[3]).expect("BIRD's Since column");
            let mut ms = since - wall_ms_of_day(wall);
            if ms < -43_200_000 {
                ms += 86_400_000;
            }
            return Duration::from_millis(ms.max(0) as u64);
        }
        assert!(Instant::now() < deadline, "BIRD never left Up: {line}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut figures: Vec<Duration>) -> (f64, f64, f64) {
    figures.sort();
    let median = figures[figures.len() / 2];
    (ms(median), ms(figures[0]), ms(figures[figures.len() - 1]))
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !prereq::require_root()
        || !prereq::require_command("bird")
        || !prereq::require_command("nft")
    {
        return;
    }
    let rounds = BenchSettings::from_env().rounds;
    println!(
        "| interval × multiplier | detection time | wren: cut → Down, median (min–max) ms | \
         anchor BIRD–BIRD: cut → Down, median (min–max) ms | ratio (median) |"
    );
    println!("|---|---|---|---|---|");
    for (interval_ms, mult) in [(100u64, 3u8), (300, 3)] {
        let interval = Duration::from_millis(interval_ms);
        let (mut wren, mut anchor) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so neither always meets the same load.
            if round % 2 == 0 {
                wren.push(wren_round(interval, mult));
                anchor.push(anchor_round(interval, mult));
            } else {
                anchor.push(anchor_round(interval, mult));
                wren.push(wren_round(interval, mult));
            }
            eprintln!(
                "{interval_ms} ms × {mult}, round {}: wren {:.0} ms, anchor {:.0} ms",
                round + 1,
                ms(*wren.last().unwrap()),
                ms(*anchor.last().unwrap())
            );
        }
        let (w, wmin, wmax) = summary(wren);
        let (b, bmin, bmax) = summary(anchor);
        println!(
            "| {interval_ms} ms × {mult} | {} ms | {w:.0} ({wmin:.0}–{wmax:.0}) | {b:.0} ({bmin:.0}–{bmax:.0}) | {:.2} |",
            interval_ms * u64::from(mult),
            w / b
        );
    }
}
