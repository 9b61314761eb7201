//! A route reflector for a large cluster: wren's speaker against BIRD 2, same feed, same
//! clients, same run.
//!
//! Run (root, BIRD 2 installed): `cargo bench -p wren-bgp --bench reflect`
//! (options after `--`: `--nodes N` (default 5000), `--blocks B` blocks per node (default 4),
//! `--clients C` (default 50), `--runs R` (default 3)).
//!
//! The reflector runs in a network namespace of its own; its clients and the feeder share a
//! second one, joined to it by a veth pair, each session from its own address. The clients
//! (raw sessions that count the prefixes reflected to them) connect first. Then the feeder,
//! another client, announces the routes of `N` nodes as each node would over iBGP: one
//! UPDATE per node with its `B` /26 blocks and the node's address as next hop (addresses in
//! the link's subnet, so BIRD resolves them), then the End-of-RIB. Measured, from the first
//! UPDATE written:
//! - the time until every client holds every prefix (polled every 20 ms);
//! - the CPU time (user + system, every thread) the reflector spent meanwhile: BIRD runs on one
//!   thread, wren's tokio runtime on as many as there are cores;
//! - the reflector's resident memory before the feed, at its peak (`VmHWM`) and once every
//!   client holds everything.
//!
//! wren runs in a child process of this benchmark (the same executable, started with
//! `WREN_REFLECT_NETNS` set) so that its figures hold nothing but the speaker.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::feed::{Feed, FeedSpec, Feeder};
use wren_tests::daemons::{BgpDaemon, Config, Peer};
use wren_tests::netns::NetNs;
use wren_tests::process::{ChildGuard, Usage, usage};
use wren_tests::{bench, prereq};

const CHILD_NETNS: &str = "WREN_REFLECT_NETNS";
const CHILD_CLIENTS: &str = "WREN_REFLECT_CLIENTS";
const REFLECTOR: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
const FEEDER: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 2);
/// Client `i` (from 0) is `FIRST_CLIENT + i`.
const FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 91, 1, 1);
/// Node `i`'s next hop is `FIRST_NODE + i`: in the link's /16, on no interface.
const FIRST_NODE: Ipv4Addr = Ipv4Addr::new(10, 91, 100, 1);
const CLUSTER_AS: u32 = 64512;
const BLOCK_LEN: u8 = 26;
const POLL: Duration = Duration::from_millis(20);
const PATIENCE: Duration = Duration::from_secs(600);

/// One reflector's result in one run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// First UPDATE written → every client holds every prefix.
    seconds: f64,
    /// CPU time of the reflector over the same span, seconds.
    cpu: f64,
    /// Resident memory before the feed, KiB.
    base_kib: u64,
    /// Peak resident memory, KiB.
    peak_kib: u64,
    /// Resident memory once every client holds everything, KiB.
    held_kib: u64,
}

/// What to feed and to how many.
#[derive(Debug, Clone, Copy)]
struct Shape {
    nodes: u32,
    blocks: u32,
    clients: u32,
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD_NETNS).is_some() {
        return speaker::child();
    }
    let shape = Shape {
        nodes: bench::arg("--nodes", 5000),
        blocks: bench::arg("--blocks", 4),
        clients: bench::arg("--clients", 50),
    };
    let runs = bench::arg("--runs", 3usize);
    if !prereq::is_root() || !prereq::have_command("bird") {
        eprintln!("skipped: the reflector benchmark needs root and BIRD 2 (`bird`)");
        return ExitCode::SUCCESS;
    }
    match run(shape, runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reflect: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(shape: Shape, runs: usize) -> Result<(), String> {
    let spec = FeedSpec {
        prefixes: 0,
        seed: 0,
        asn: CLUSTER_AS,
        router_id: FEEDER,
        next_hop: FIRST_NODE,
    };
    let feed = Feed::cluster(spec, shape.nodes, shape.blocks, BLOCK_LEN);
    println!(
        "feed: {} nodes × {} /{BLOCK_LEN} blocks = {} prefixes in {} UPDATEs, {:.2} MB; {} clients",
        shape.nodes,
        shape.blocks,
        feed.spec.prefixes,
        feed.messages,
        feed.stream.len() as f64 / 1e6,
        shape.clients
    );
    let reflector_ns = NetNs::new("rr").map_err(|e| e.to_string())?;
    let nodes_ns = NetNs::new("rrc").map_err(|e| e.to_string())?;
    nodes_ns
        .veth(
            "eth0",
            Some(&format!("{FEEDER}/16")),
            &reflector_ns,
            "eth0",
            Some(&format!("{REFLECTOR}/16")),
        )
        .map_err(|e| e.to_string())?;
    for client in clients(shape.clients) {
        nodes_ns
            .ip(&["addr", "add", &format!("{client}/16"), "dev", "eth0"])
            .map_err(|e| e.to_string())?;
    }

    let mut bird = Vec::new();
    let mut wren = Vec::new();
    for run in 1..=runs {
        let b = bird_run(&reflector_ns, &nodes_ns, &feed, shape)?;
        println!("run {run} BIRD: {}", describe(&b));
        bird.push(b);
        let w = wren_run(&reflector_ns, &nodes_ns, &feed, shape)?;
        println!("run {run} wren: {}", describe(&w));
        wren.push(w);
    }
    let (b, w) = (median(&bird), median(&wren));
    let deliveries = f64::from(feed.spec.prefixes) * f64::from(shape.clients);
    println!();
    println!(
        "| reflector | every client holds every prefix | prefixes delivered/s | CPU time | RSS before | peak RSS | RSS when all held |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, s) in [("BIRD 2 (anchor)", &b), ("wren", &w)] {
        println!(
            "| {name} | {:.2} s | {:.0} | {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            s.seconds,
            deliveries / s.seconds,
            s.cpu,
            s.base_kib as f64 / 1024.0,
            s.peak_kib as f64 / 1024.0,
            s.held_kib as f64 / 1024.0,
        );
    }
    println!(
        "| wren / BIRD | {:.2} | | {:.2} | {:.2} | {:.2} | {:.2} |",
        w.seconds / b.seconds,
        w.cpu / b.cpu,
        w.base_kib as f64 / b.base_kib as f64,
        w.peak_kib as f64 / b.peak_kib as f64,
        w.held_kib as f64 / b.held_kib as f64,
    );
    println!("(median of {runs} runs; lower is better in every column but prefixes delivered/s)");
    Ok(())
}

fn clients(count: u32) -> impl Iterator<Item = Ipv4Addr> {
    (0..count).map(|i| Ipv4Addr::from(u32::from(FIRST_CLIENT) + i))
}

fn describe(s: &Sample) -> String {
    format!(
        "{:.2} s, CPU {:.2} s, RSS {:.1} → {:.1} MiB (peak {:.1})",
        s.seconds,
        s.cpu,
        s.base_kib as f64 / 1024.0,
        s.held_kib as f64 / 1024.0,
        s.peak_kib as f64 / 1024.0,
    )
}

/// Per column median: each figure is the middle of its own runs.
fn median(samples: &[Sample]) -> Sample {
    let mid = |f: fn(&Sample) -> f64| bench::median(samples.iter().map(f).collect());
    Sample {
        seconds: mid(|s| s.seconds),
        cpu: mid(|s| s.cpu),
        base_kib: mid(|s| s.base_kib as f64) as u64,
        peak_kib: mid(|s| s.peak_kib as f64) as u64,
        held_kib: mid(|s| s.held_kib as f64) as u64,
    }
}

/// A session from `from` to the reflector, retried while the reflector is still starting.
fn session(nodes_ns: &NetNs, from: Ipv4Addr) -> Result<Feeder, String> {
    let spec = FeedSpec {
        prefixes: 0,
        seed: 0,
        asn: CLUSTER_AS,
        router_id: from,
        next_hop: from,
    };
    let to = SocketAddr::new(IpAddr::V4(REFLECTOR), 179);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Feeder::connect_from(
            nodes_ns,
            Some(IpAddr::V4(from)),
            to,
            &spec,
            Duration::from_secs(10),
        ) {
            Ok(f) => return Ok(f),
            Err(e) if Instant::now() > deadline => return Err(format!("session from {from}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Connects the clients and the feeder to the reflector `pid`, writes the feed and waits
/// until every client holds every prefix.
fn measure(nodes_ns: &NetNs, pid: u32, feed: &Feed, shape: Shape) -> Result<Sample, String> {
    let clients = clients(shape.clients)
        .map(|c| session(nodes_ns, c))
        .collect::<Result<Vec<_>, _>>()?;
    let feeder = session(nodes_ns, FEEDER)?;
    let before = usage(pid);
    let expected = u64::from(feed.spec.prefixes);
    let start = Instant::now();
    let seconds = std::thread::scope(|scope| {
        let writer = scope.spawn(|| feeder.send(&feed.stream));
        loop {
            let least = clients.iter().map(Feeder::received_prefixes).min();
            if least.is_none_or(|n| n >= expected) {
                break;
            }
            if start.elapsed() > PATIENCE {
                let notes: Vec<String> = clients.iter().filter_map(Feeder::notification).collect();
                return Err(format!(
                    "a client holds {least:?} of {expected} prefixes after {PATIENCE:?} {notes:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
        let seconds = start.elapsed().as_secs_f64();
        writer
            .join()
            .map_err(|_| "feeder thread panicked".to_string())?
            .map_err(|e| format!("feeder: {e}"))?;
        Ok(seconds)
    })?;
    let after: Usage = usage(pid);
    Ok(Sample {
        seconds,
        cpu: after.cpu_seconds - before.cpu_seconds,
        base_kib: before.rss_kib,
        peak_kib: after.peak_kib,
        held_kib: after.rss_kib,
    })
}

fn bird_run(
    reflector_ns: &NetNs,
    nodes_ns: &NetNs,
    feed: &Feed,
    shape: Shape,
) -> Result<Sample, String> {
    let mut config = Config::new(REFLECTOR, CLUSTER_AS).cluster_id(REFLECTOR);
    for peer in clients(shape.clients).chain([FEEDER]) {
        config = config.peer(
            Peer::new(IpAddr::V4(peer), CLUSTER_AS, IpAddr::V4(REFLECTOR))
                .passive()
                .rr_client()
                .hold_time(240),
        );
    }
    let bird = Bird::start(reflector_ns, config).map_err(|e| e.to_string())?;
    measure(nodes_ns, bird.pid(), feed, shape)
}

fn wren_run(
    reflector_ns: &NetNs,
    nodes_ns: &NetNs,
    feed: &Feed,
    shape: Shape,
) -> Result<Sample, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_NETNS, reflector_ns.name())
        .env(CHILD_CLIENTS, shape.clients.to_string())
        .stdout(Stdio::piped());
    let mut child =
        ChildGuard::spawn_keep_stdout("wren speaker", &mut cmd).map_err(|e| e.to_string())?;
    let stdout = child
        .child_mut()
        .stdout
        .take()
        .ok_or("no stdout from the wren child")?;
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .ok_or("wren child ended before it was ready")?
        .map_err(|e| e.to_string())?;
    if line != "ready" {
        return Err(format!("wren child said {line:?}, expected `ready`"));
    }
    measure(nodes_ns, child.pid(), feed, shape)
}

/// The wren side: runs in the child process.
mod speaker {
    use std::io::Write;
    use std::net::{IpAddr, SocketAddr};
    use std::process::ExitCode;

    use wren_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
    use wren_bgp::wire::Afi;

    use super::{CHILD_CLIENTS, CHILD_NETNS, CLUSTER_AS, FEEDER, REFLECTOR, clients};

    pub fn child() -> ExitCode {
        match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wren child: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn serve() -> Result<(), String> {
        let ns = std::env::var(CHILD_NETNS).map_err(|e| e.to_string())?;
        let count: u32 = std::env::var(CHILD_CLIENTS)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or("no client count")?;
        wren_tests::netns::enter_for_good(&ns).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut config = SpeakerConfig::new(REFLECTOR, CLUSTER_AS);
            config.listen = Some(SocketAddr::new(IpAddr::V4(REFLECTOR), 179));
            config.cluster_id = Some(REFLECTOR);
            let (speaker, _task) = Speaker::start(config).await.map_err(|e| e.to_string())?;
            for peer in clients(count).chain([FEEDER]) {
                let mut peer = PeerConfig::new(IpAddr::V4(peer), CLUSTER_AS);
                peer.passive = true;
                peer.rr_client = true;
                peer.families = vec![Afi::Ipv4Unicast];
                speaker.add_peer(peer).await.map_err(|e| e.to_string())?;
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready")
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())?;
            drop(out);
            // Until the benchmark ends this process.
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        })
    }
}
