//! One agent pass at the scale of a large cluster: 10,000 remote blocks (in the datastore,
//! and as best paths from a BGP feeder) programmed from nothing into a fresh network
//! namespace, then one of them changing its next hop (the pass that follows a change of the
//! best paths), then a full pass with nothing changed (the reconcile interval's drift check).
//! Each figure is the time of the pass and the number of kernel dumps it read. Anchor, in the
//! same namespace in the same round: `ip -batch` installing the same routes, and one
//! `ip route replace`.
//!
//! `cargo bench -p wren-agent --bench pass_scale [-- --blocks N --rounds R]` (needs root).
//! The controller runs in-process on the in-memory store, with a stand-in speaker that serves
//! the best paths; the kernel is real.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wren_agent::cli::{Cli, Command};
use wren_agent::config::{AgentConfig, Settings, SystemHost};
use wren_agent::daemon::bgp::ScriptedBgp;
use wren_agent::daemon::{Controller, Pass, Shared, Trigger};
use wren_agent::dataplane::program::routes::KernelRoutes;
use wren_agent::metrics::Metrics;
use wren_ipam::block::Block;
use wren_model::{Node, keys};
use wren_store::Store;
use wren_store::json::JsonStore;
use wren_store::memory::MemoryStore;
use wren_tests::bench::arg;
use wren_tests::netns::NetNs;

fn block(i: u32) -> IpNet {
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 64)), 26)
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const OTHER_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

fn config() -> AgentConfig {
    let argv = [
        "wren",
        "agent",
        "--node-name",
        "a",
        "--node-ip",
        "192.0.2.1/24",
        "--node-ip-not-local",
        "true",
    ];
    let Command::Agent(args) = <Cli as clap::Parser>::try_parse_from(argv).unwrap().command else {
        unreachable!("parsed as `wren agent`")
    };
    AgentConfig::resolve(&args, Settings::default(), &SystemHost).unwrap()
}

/// Time and kernel dumps of the three passes of one round.
#[derive(Clone, Copy, Default)]
struct Round {
    from_nothing: (Duration, u64),
    one_change: (Duration, u64),
    unchanged: (Duration, u64),
    anchor_install: Duration,
    anchor_replace: Duration,
}

async fn fill_store(store: &Arc<dyn Store>, blocks: u32) {
    store
        .put_json(
            &keys::node("a"),
            &Node::new("a", Some("192.0.2.1/24".parse().unwrap())),
            None,
        )
        .await
        .unwrap();
    for i in 0..blocks {
        let cidr = block(i);
        let doc = Block::new(cidr, Some(format!("n{}", i % 500))).unwrap();
        store
            .create(&keys::block(&cidr), doc.to_json(), None)
            .await
            .unwrap();
    }
}

fn run_round(ns: &NetNs, blocks: u32, dir: &std::path::Path) -> Round {
    let mut round = Round::default();
    ns.block_on(|| async {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        fill_store(&store, blocks).await;
        let feeder = Arc::new(ScriptedBgp::default());
        feeder.change_paths(|paths| {
            paths.extend((0..blocks).map(|i| (block(i), IpAddr::V4(GATEWAY))));
        });
        let kernel = Arc::new(KernelRoutes::open().unwrap());
        let cfg = config();
        let shared = Shared::new(&cfg, Arc::new(Metrics::new()));
        let controller = Controller::new(&cfg, store, feeder.clone(), kernel.clone(), shared);
        // The reflectors list the store first; the pass before that waits.
        while controller.pass().await == Pass::Waiting {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let measure = |before: u64| {
            let start = Instant::now();
            (start, before)
        };
        // The waiting passes may already have programmed; start from an empty kernel.
        let _ = std::process::Command::new("ip")
            .args(["route", "flush", "proto", "bgp"])
            .status();
        let (start, dumps) = measure(kernel.counters().dumps);
        let pass = controller.pass().await;
        round.from_nothing = (start.elapsed(), kernel.counters().dumps - dumps);
        assert_eq!(
            pass,
            Pass::Done {
                desired: blocks as usize,
                error: None
            }
        );
        feeder.change_paths(|paths| {
            paths.insert(block(blocks / 2), IpAddr::V4(OTHER_GATEWAY));
        });
        let (start, dumps) = measure(kernel.counters().dumps);
        controller.pass_on(Trigger::Change).await;
        round.one_change = (start.elapsed(), kernel.counters().dumps - dumps);
        let (start, dumps) = measure(kernel.counters().dumps);
        controller.pass().await;
        round.unchanged = (start.elapsed(), kernel.counters().dumps - dumps);
        let installed = std::process::Command::new("ip")
            .args(["route", "show", &block(blocks / 2).to_string()])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&installed.stdout).contains(&OTHER_GATEWAY.to_string()),
            "the changed block's route follows its new next hop"
        );
        let _ = std::process::Command::new("ip")
            .args(["route", "flush", "proto", "bgp"])
            .status();
    })
    .unwrap();
    // The anchor: iproute2 doing the kernel's part alone.
    let mut batch = String::new();
    for i in 0..blocks {
        let _ = writeln!(batch, "route add {} via {GATEWAY} proto bgp", block(i));
    }
    let file = dir.join("add.batch");
    std::fs::write(&file, batch).unwrap();
    let start = Instant::now();
    ns.exec("ip", &[std::ffi::OsStr::new("-batch"), file.as_os_str()])
        .unwrap();
    round.anchor_install = start.elapsed();
    let changed = block(blocks / 2).to_string();
    let other = OTHER_GATEWAY.to_string();
    let start = Instant::now();
    ns.ip(&["route", "replace", &changed, "via", &other, "proto", "bgp"])
        .unwrap();
    round.anchor_replace = start.elapsed();
    ns.ip(&["route", "flush", "proto", "bgp"]).unwrap();
    round
}

fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no root, quickly.
    if !nix::unistd::geteuid().is_root() || !wren_tests::prereq::have_command("ip") {
        eprintln!("skipped: the pass benchmark needs root and iproute2");
        return;
    }
    let blocks = arg("--blocks", 10_000u32);
    let rounds = arg("--rounds", 5usize);
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("bench-pass").unwrap();
    ns.ip(&["link", "add", "up0", "type", "bridge"]).unwrap();
    ns.configure("up0", Some("192.0.2.1/24")).unwrap();
    let results: Vec<Round> = (0..rounds)
        .map(|_| run_round(&ns, blocks, dir.path()))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let row = |what: &str, pick: fn(&Round) -> (Duration, u64), anchor: Option<Duration>| {
        let time = median(results.iter().map(|r| pick(r).0).collect());
        let dumps = median(results.iter().map(|r| pick(r).1).collect());
        let (anchor, ratio) = match anchor {
            Some(a) => (format!("{:.2}", ms(a)), format!("{:.2}", ms(time) / ms(a))),
            None => ("—".into(), "—".into()),
        };
        println!(
            "| {what} | {:.2} | {dumps} | {anchor} | {ratio} |",
            ms(time)
        );
    };
    let anchor_install = median(results.iter().map(|r| r.anchor_install).collect());
    let anchor_replace = median(results.iter().map(|r| r.anchor_replace).collect());
    println!(
        "| pass ({blocks} remote blocks, median of {rounds}) | ms | kernel dumps | anchor ms (`ip`) | ratio |"
    );
    println!("|---|---|---|---|---|");
    row("from nothing", |r| r.from_nothing, Some(anchor_install));
    row(
        "one block's next hop changes",
        |r| r.one_change,
        Some(anchor_replace),
    );
    row(
        "nothing changed (full pass: drift check)",
        |r| r.unchanged,
        None,
    );
}
