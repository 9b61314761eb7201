//! Cold start of a lab cluster: the time from the last agent starting until every node has a
//! BGP session with every other (from the agents' own log timestamps), and until every pod
//! reaches every pod (the lab adds one pod per node as soon as each agent is ready, then the
//! full ping matrix is polled every 300 ms).
//!
//! `cargo build --bins && WREN_BENCH_BIN_DIR=target/debug
//! WREN_BENCH_ANCHOR_BIN_DIR=<the binaries of the build to compare with> WREN_BENCH_ROUNDS=5
//! cargo bench -p wren-tests --bench cold_start` (root). The lab starts all agents at once, as
//! a cluster whose nodes boot together. Rounds of the two builds alternate; without an anchor
//! directory only the subject is measured. Prints a Markdown table of medians, minima and
//! maxima, and the ratios of the medians.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wren_tests::bench::{BenchSettings, invoked_as_bench};
use wren_tests::lab::{Lab, LabSpec, default_bin_dir};
use wren_tests::prereq;

const NODES: usize = 3;

/// Milliseconds since midnight of a log line's RFC 3339 UTC timestamp
/// (`2026-12-05T00:39:49.525393Z …`).
fn log_ms(line: &str) -> Option<f64> {
    let clean: String = strip_ansi(line);
    let time = clean.split_whitespace().next()?.split_once('T')?.1;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    let seconds: f64 = s.parse().ok()?;
    Some(((h.parse::<f64>().ok()? * 60.0 + m.parse::<f64>().ok()?) * 60.0 + seconds) * 1000.0)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut escape = false;
    for c in line.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn now_ms() -> f64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_millis() % 86_400_000) as f64
}

/// Milliseconds from the last agent start to the last session up, read from the logs.
fn mesh_ms(dir: &Path) -> (f64, f64) {
    let (mut started, mut established, mut sessions) = (0f64, 0f64, 0);
    for n in 1..=NODES {
        let log = std::fs::read_to_string(dir.join(format!("n{n}.log"))).unwrap_or_default();
        for line in log.lines() {
            if line.contains("wren agent starting") {
                started = started.max(log_ms(line).expect("a timestamp"));
            } else if line.contains("session established") {
                established = established.max(log_ms(line).expect("a timestamp"));
                sessions += 1;
            }
        }
    }
    assert_eq!(
        sessions,
        NODES * (NODES - 1),
        "every node in session with every other"
    );
    (started, established - started)
}

/// One round: (last start → mesh, last start → every pod reaches every pod), in ms.
fn round(bin_dir: &Path, name: &str) -> (f64, f64) {
    let mut spec = LabSpec::new(name, NODES);
    spec.pods_per_node = 1;
    spec.bin_dir = bin_dir.to_owned();
    let lab = Lab::up(spec).expect("lab up");
    lab.wait_full_matrix(Duration::from_secs(60), "n1")
        .expect("full matrix");
    let reached = now_ms();
    let (started, mesh) = mesh_ms(&lab.state().dir);
    lab.down().expect("lab down");
    (mesh, reached - started)
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if !invoked_as_bench() || !prereq::require_root() {
        return;
    }
    let subject: PathBuf = std::env::var_os("WREN_BENCH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(default_bin_dir);
    let anchor = std::env::var_os("WREN_BENCH_ANCHOR_BIN_DIR").map(PathBuf::from);
    let rounds = BenchSettings::from_env().rounds;
    let name = format!("cs{}", std::process::id() % 100_000);
    let (mut s_mesh, mut s_pods, mut a_mesh, mut a_pods) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let mut order = vec![(true, subject.clone())];
        if let Some(anchor) = &anchor {
            order.push((false, anchor.clone()));
        }
        if r % 2 == 1 {
            order.reverse();
        }
        for (is_subject, dir) in order {
            let (mesh, pods) = round(&dir, &name);
            eprintln!(
                "round {} {}: mesh {mesh:.0} ms, every pod reaches every pod {pods:.0} ms",
                r + 1,
                if is_subject { "subject" } else { "anchor" }
            );
            if is_subject {
                s_mesh.push(mesh);
                s_pods.push(pods);
            } else {
                a_mesh.push(mesh);
                a_pods.push(pods);
            }
        }
    }
    println!(
        "| from the last agent started until | subject median (min–max) ms | anchor median (min–max) ms | ratio |"
    );
    println!("|---|---|---|---|");
    for (what, s, a) in [
        ("every session Established", s_mesh, a_mesh),
        ("every pod reaches every pod", s_pods, a_pods),
    ] {
        let (sm, smin, smax) = summary(s);
        if a.is_empty() {
            println!("| {what} | {sm:.0} ({smin:.0}–{smax:.0}) | – | – |");
        } else {
            let (am, amin, amax) = summary(a);
            println!(
                "| {what} | {sm:.0} ({smin:.0}–{smax:.0}) | {am:.0} ({amin:.0}–{amax:.0}) | {:.2} |",
                sm / am
            );
        }
    }
}
