//! Full-table ingestion over a real BGP session: wren's speaker against BIRD 2, same feed,
//! same run.
//!
//! Run (root, BIRD 2 installed): `cargo bench -p wren-bgp --bench ingest`
//! (options after `--`: `--prefixes N` (default 1000000), `--runs R` (default 3)).
//!
//! A generated table (`wren_tests::daemons::feed`: /24s with one to eight prefixes per
//! attribute set) is encoded once. For each run and each receiver, a fresh receiver starts in
//! its own network namespace, the feeder connects over a veth pair from another namespace,
//! and once the session is Established it writes every UPDATE and the End-of-RIB as fast as
//! the receiver reads. Measured:
//! - time from the first UPDATE written to the receiver holding every prefix: BIRD's
//!   `Routes: N imported` for the session, wren's accepted-prefix count for the peer (both
//!   polled every 20 ms; after it, wren's Loc-RIB size is checked too);
//! - the CPU time (user + system, all threads) the receiver spent meanwhile: BIRD runs on
//!   one thread, wren's tokio runtime on as many as there are cores, so on this two-core
//!   machine the wall time alone would flatter whichever can use both;
//! - the receiver's peak resident memory (`VmHWM`), its resident memory once every prefix is
//!   held (`VmRSS`), and the growth of the latter over what it had before the feed, per route.
//!
//! wren runs in a child process of this benchmark (the same executable, started with
//! `WREN_INGEST_NETNS` set) so that its memory figures hold nothing but the speaker.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::feed::{Feed, FeedSpec, Feeder};
use wren_tests::daemons::{Config, Peer};
use wren_tests::netns::NetNs;
use wren_tests::process::{ChildGuard, usage};
use wren_tests::{bench, prereq};

const CHILD_NETNS: &str = "WREN_INGEST_NETNS";
const CHILD_EXPECT: &str = "WREN_INGEST_PREFIXES";
const FEEDER: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
const FEEDER_AS: u32 = 65000;
const RECEIVER_AS: u32 = 64512;
const POLL: Duration = Duration::from_millis(20);
const PATIENCE: Duration = Duration::from_secs(600);

/// One receiver's result in one run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// First UPDATE written → all prefixes held.
    seconds: f64,
    /// First UPDATE written → the feeder's last byte accepted by the kernel.
    written: f64,
    /// Resident memory before the feed, KiB.
    base_kib: u64,
    /// Peak resident memory, KiB.
    peak_kib: u64,
    /// Resident memory once every prefix is held, KiB (below the peak by what was freed on
    /// the way, such as a hash table's old array after it grew).
    held_kib: u64,
    /// CPU time (user + system, all threads) the receiver spent from the first UPDATE to
    /// the last prefix held, seconds.
    cpu: f64,
}

impl Sample {
    fn bytes_per_route(&self, routes: u32) -> f64 {
        (self.held_kib.saturating_sub(self.base_kib) * 1024) as f64 / f64::from(routes)
    }
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD_NETNS).is_some() {
        return speaker::child();
    }
    let prefixes = bench::arg("--prefixes", 1_000_000u32);
    let runs = bench::arg("--runs", 3usize);
    if !prereq::is_root() || !prereq::have_command("bird") {
        eprintln!("skipped: the ingestion benchmark needs root and BIRD 2 (`bird`)");
        return ExitCode::SUCCESS;
    }
    match run(prefixes, runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(prefixes: u32, runs: usize) -> Result<(), String> {
    let spec = FeedSpec {
        prefixes,
        seed: 1,
        asn: FEEDER_AS,
        router_id: FEEDER,
        next_hop: FEEDER,
    };
    let started = Instant::now();
    let feed = Feed::generate(spec);
    println!(
        "feed: {} prefixes, {} attribute sets, {} UPDATEs, {:.1} MB (generated in {:.1} s)",
        feed.spec.prefixes,
        feed.attribute_sets,
        feed.messages,
        feed.stream.len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let feeder_ns = NetNs::new("feed").map_err(|e| e.to_string())?;
    let receiver_ns = NetNs::new("rx").map_err(|e| e.to_string())?;
    feeder_ns
        .veth(
            "eth0",
            Some("10.90.0.1/24"),
            &receiver_ns,
            "eth0",
            Some("10.90.0.2/24"),
        )
        .map_err(|e| e.to_string())?;

    let mut bird = Vec::new();
    let mut wren = Vec::new();
    for run in 1..=runs {
        let b = bird_run(&feeder_ns, &receiver_ns, &feed)?;
        println!("run {run} BIRD: {}", describe(&b, prefixes));
        bird.push(b);
        let w = wren_run(&feeder_ns, &receiver_ns, &feed)?;
        println!("run {run} wren: {}", describe(&w, prefixes));
        wren.push(w);
    }
    let (b, w) = (median(&bird), median(&wren));
    println!();
    println!(
        "| receiver | time to {prefixes} prefixes | prefixes/s | CPU time | peak RSS | RSS when all held | RSS growth per route |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, s) in [("BIRD 2 (anchor)", &b), ("wren", &w)] {
        println!(
            "| {name} | {:.2} s | {:.0} | {:.2} s | {:.1} MiB | {:.1} MiB | {:.0} B |",
            s.seconds,
            f64::from(prefixes) / s.seconds,
            s.cpu,
            s.peak_kib as f64 / 1024.0,
            s.held_kib as f64 / 1024.0,
            s.bytes_per_route(prefixes)
        );
    }
    println!(
        "| wren / BIRD | {:.2} | | {:.2} | {:.2} | {:.2} | {:.2} |",
        w.seconds / b.seconds,
        w.cpu / b.cpu,
        w.peak_kib as f64 / b.peak_kib as f64,
        w.held_kib as f64 / b.held_kib as f64,
        w.bytes_per_route(prefixes) / b.bytes_per_route(prefixes)
    );
    println!("(median of {runs} runs; lower is better in every column but prefixes/s)");
    Ok(())
}

fn describe(s: &Sample, prefixes: u32) -> String {
    format!(
        "{:.2} s (feed written after {:.2} s), CPU {:.2} s, RSS {:.1} → {:.1} MiB (peak {:.1}), {:.0} B/route",
        s.seconds,
        s.written,
        s.cpu,
        s.base_kib as f64 / 1024.0,
        s.held_kib as f64 / 1024.0,
        s.peak_kib as f64 / 1024.0,
        s.bytes_per_route(prefixes)
    )
}

/// Per column median: each figure is the middle of its own runs.
fn median(samples: &[Sample]) -> Sample {
    let mid = |f: fn(&Sample) -> f64| bench::median(samples.iter().map(f).collect());
    Sample {
        seconds: mid(|s| s.seconds),
        written: mid(|s| s.written),
        base_kib: mid(|s| s.base_kib as f64) as u64,
        peak_kib: mid(|s| s.peak_kib as f64) as u64,
        held_kib: mid(|s| s.held_kib as f64) as u64,
        cpu: mid(|s| s.cpu),
    }
}

/// `VmRSS` and `VmHWM` of a process, KiB.
fn memory(pid: u32) -> Result<(u64, u64), String> {
    let usage = usage(pid);
    Ok((usage.rss_kib, usage.peak_kib))
}

/// CPU time (user + system, every thread) a process has used, seconds.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    Ok(usage(pid).cpu_seconds)
}

/// Connects the feeder (retrying while the receiver is still binding its port).
fn connect(feeder_ns: &NetNs, feed: &Feed) -> Result<Feeder, String> {
    let to = SocketAddr::new(IpAddr::V4(RECEIVER), 179);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Feeder::connect(feeder_ns, to, &feed.spec, Duration::from_secs(10)) {
            Ok(f) => return Ok(f),
            Err(e) if Instant::now() > deadline => return Err(format!("feeder: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Writes the feed on a thread of its own and runs `wait` (which returns once the receiver
/// holds everything); returns (time to everything held, time to everything written).
fn blast(
    feeder: &Feeder,
    feed: &Feed,
    wait: impl FnOnce() -> Result<(), String>,
) -> Result<(f64, f64), String> {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            feeder
                .send(&feed.stream)
                .map(|()| start.elapsed().as_secs_f64())
        });
        let waited = wait().map(|()| start.elapsed().as_secs_f64());
        let written = writer
            .join()
            .map_err(|_| "feeder thread panicked".to_string())?;
        let written = written.map_err(|e| format!("feeder: {e}"))?;
        let waited = waited.map_err(|e| match feeder.notification() {
            Some(n) => format!("{e} (receiver sent {n})"),
            None => e,
        })?;
        Ok((waited, written))
    })
}

fn bird_run(feeder_ns: &NetNs, receiver_ns: &NetNs, feed: &Feed) -> Result<Sample, String> {
    let peer = Peer::new(IpAddr::V4(FEEDER), FEEDER_AS, IpAddr::V4(RECEIVER))
        .passive()
        .hold_time(240);
    let bird = Bird::start(receiver_ns, Config::new(RECEIVER, RECEIVER_AS).peer(peer))
        .map_err(|e| e.to_string())?;
    use wren_tests::daemons::BgpDaemon;
    let (base_kib, _) = memory(bird.pid())?;
    let feeder = connect(feeder_ns, feed)?;
    let cpu_before = cpu_seconds(bird.pid())?;
    let expected = u64::from(feed.spec.prefixes);
    let (seconds, written) = blast(&feeder, feed, || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let n = bird
                .imported(IpAddr::V4(FEEDER))
                .map_err(|e| e.to_string())?;
            if n >= expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "BIRD holds {n} of {expected} routes after {PATIENCE:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
    })?;
    let cpu = cpu_seconds(bird.pid())? - cpu_before;
    let (held_kib, peak_kib) = memory(bird.pid())?;
    // BIRD's own account, for reference: effective and allocator overhead.
    if let Ok(text) = bird.command("show memory") {
        let total = text
            .lines()
            .find(|l| l.starts_with("Total:"))
            .unwrap_or_default();
        println!(
            "      BIRD `show memory`: {}",
            total.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    Ok(Sample {
        seconds,
        written,
        base_kib,
        peak_kib,
        held_kib,
        cpu,
    })
}

fn wren_run(feeder_ns: &NetNs, receiver_ns: &NetNs, feed: &Feed) -> Result<Sample, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_NETNS, receiver_ns.name())
        .env(CHILD_EXPECT, feed.spec.prefixes.to_string())
        .stdout(Stdio::piped());
    let mut child =
        ChildGuard::spawn_keep_stdout("wren speaker", &mut cmd).map_err(|e| e.to_string())?;
    let stdout = child
        .child_mut()
        .stdout
        .take()
        .ok_or("no stdout from the wren child")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next = |want: &str| -> Result<Vec<u64>, String> {
        let line = lines
            .next()
            .ok_or_else(|| format!("wren child ended before `{want}`"))?
            .map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace();
        if words.next() != Some(want) {
            return Err(format!("wren child said {line:?}, expected `{want}`"));
        }
        Ok(words.filter_map(|w| w.parse().ok()).collect())
    };
    let base_kib = next("ready")?.first().copied().unwrap_or(0);
    let feeder = connect(feeder_ns, feed)?;
    let pid = child.pid();
    let cpu_before = cpu_seconds(pid)?;
    let (mut peak_kib, mut held_kib) = (0, 0);
    let mut cpu = 0.0;
    let (seconds, written) = blast(&feeder, feed, || {
        let done = next("done")?;
        peak_kib = done.first().copied().unwrap_or(0);
        held_kib = done.get(1).copied().unwrap_or(0);
        cpu = cpu_seconds(pid)? - cpu_before;
        Ok(())
    })?;
    let loc_rib = next("locrib")?.first().copied().unwrap_or(0);
    if loc_rib != u64::from(feed.spec.prefixes) {
        return Err(format!(
            "wren's Loc-RIB holds {loc_rib} of {} prefixes",
            feed.spec.prefixes
        ));
    }
    // The speaker goes first: a closed session would make it withdraw the whole table.
    drop(child);
    drop(feeder);
    Ok(Sample {
        seconds,
        written,
        base_kib,
        peak_kib,
        held_kib,
        cpu,
    })
}

/// The wren side: runs in the child process.
mod speaker {
    use std::io::Write;
    use std::net::{IpAddr, SocketAddr};
    use std::process::ExitCode;

    use wren_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
    use wren_bgp::wire::Afi;

    use super::{
        CHILD_EXPECT, CHILD_NETNS, FEEDER, FEEDER_AS, POLL, RECEIVER, RECEIVER_AS, memory,
    };

    pub fn child() -> ExitCode {
        match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wren child: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn say(line: &str) -> Result<(), String> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())
    }

    fn serve() -> Result<(), String> {
        let ns = std::env::var(CHILD_NETNS).map_err(|e| e.to_string())?;
        let expected: usize = std::env::var(CHILD_EXPECT)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or("no prefix count")?;
        wren_tests::netns::enter_for_good(&ns).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut config = SpeakerConfig::new(RECEIVER, RECEIVER_AS);
            config.listen = Some(SocketAddr::new(IpAddr::V4(RECEIVER), 179));
            let (speaker, _task) = Speaker::start(config).await.map_err(|e| e.to_string())?;
            let mut peer = PeerConfig::new(IpAddr::V4(FEEDER), FEEDER_AS);
            peer.passive = true;
            peer.families = vec![Afi::Ipv4Unicast];
            speaker.add_peer(peer).await.map_err(|e| e.to_string())?;
            let (rss, _) = memory(std::process::id())?;
            say(&format!("ready {rss}"))?;
            loop {
                tokio::time::sleep(POLL).await;
                let status = speaker
                    .peer(IpAddr::V4(FEEDER))
                    .await
                    .map_err(|e| e.to_string())?;
                if status.prefixes_received >= expected {
                    break;
                }
            }
            let (rss, hwm) = memory(std::process::id())?;
            say(&format!("done {hwm} {rss}"))?;
            let loc_rib = speaker.loc_rib().await.map_err(|e| e.to_string())?.len();
            say(&format!("locrib {loc_rib}"))?;
            // Until the benchmark ends this process.
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        })
    }
}
