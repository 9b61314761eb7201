//! Agent footprint and convergence on a 3-node cluster, each against BIRD 2 measured in the
//! same run.
//!
//! - Idle: three `wren agent`s in a full mesh, one block each, left alone; three BIRD 2
//!   daemons in a full mesh, one static prefix each, on the same bridge at the same time.
//!   Resident memory (VmRSS, and its anonymous part) and CPU (utime + stime over the window) of each process.
//! - Convergence: a node claims a block through IPAM (one client connected for all rounds);
//!   time from the allocation's start until the route is in both other nodes' kernels, as
//!   `ip monitor route` in each node reports it. Anchor: a BIRD announces a prefix
//!   (`configure`); time until both other BIRDs hold it in their routing table (BIRD's own
//!   propagation; it programs no kernel).
//!
//! `cargo bench -p wren-agent --bench agent_idle` (root, etcd and bird needed). Environment:
//! `WREN_BENCH_IDLE_SECS` (default 30), `WREN_BENCH_ROUNDS` (default 20).

#[path = "../tests/agent_rig/mod.rs"]
mod agent_rig;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use agent_rig::{Cluster, wait_every, wait_for};
use ipnet::IpNet;
use wren_ipam::{AllocateRequest, PoolSpec};
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::{Announce, BgpDaemon, Config, Family, Peer};
use wren_tests::netns::NetNs;
use wren_tests::prereq;
use wren_tests::process::{Usage, usage};
use wren_tests::routes::RouteMonitor;

/// Polling interval of the convergence measurements (their resolution).
const POLL: Duration = Duration::from_millis(2);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !agent_rig::ready() || !prereq::require_command("bird") {
        return;
    }
    let idle = Duration::from_secs(env_or("WREN_BENCH_IDLE_SECS", 30));
    let rounds = env_or("WREN_BENCH_ROUNDS", 20) as usize;

    let mut cluster = Cluster::new("ag-bench", 3);
    cluster.start_all();
    cluster.wait_mesh();
    for i in 0..3 {
        cluster.claim(&cluster.node(i).name, &format!("k8s.idle{i}"));
    }

    // The anchor: three BIRDs in a full mesh on the same bridge, one prefix each.
    let bird_ns: Vec<NetNs> = (0..3)
        .map(|i| NetNs::new(&format!("ag-bench-b{i}")).unwrap())
        .collect();
    let bird_ip = |i: usize| format!("10.77.0.{}", 11 + i);
    for (i, ns) in bird_ns.iter().enumerate() {
        cluster
            .fabric
            .attach(ns, "eth0", Some(&format!("{}/24", bird_ip(i))))
            .unwrap();
    }
    let mut birds: Vec<Bird> = bird_ns
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let me: IpAddr = bird_ip(i).parse().unwrap();
            let mut config = Config::new(bird_ip(i).parse::<Ipv4Addr>().unwrap(), 64512);
            for j in (0..3).filter(|j| *j != i) {
                config =
                    config.peer(Peer::new(bird_ip(j).parse().unwrap(), 64512, me).hold_time(90));
            }
            Bird::start(ns, config).unwrap()
        })
        .collect();
    for (i, bird) in birds.iter_mut().enumerate() {
        bird.announce(&Announce::new(format!("10.66.{i}.0/26").parse().unwrap()))
            .unwrap();
    }
    wait_for("the BIRD mesh to converge", || {
        birds.iter().all(|b| {
            b.routes(Family::Ipv4)
                .map(|r| r.len() >= 3)
                .unwrap_or(false)
        })
    });

    // Settle, then measure both meshes over the same window.
    std::thread::sleep(Duration::from_secs(5));
    let agent_pids: Vec<u32> = cluster
        .nodes
        .iter()
        .map(|n| n.agent.as_ref().unwrap().pid())
        .collect();
    let bird_pids: Vec<u32> = birds.iter().map(|b| b.pid()).collect();
    let mut all = agent_pids.clone();
    all.extend(&bird_pids);
    let before: Vec<f64> = all.iter().map(|p| usage(*p).cpu_seconds).collect();
    std::thread::sleep(idle);
    let after: Vec<Usage> = all.iter().map(|p| usage(*p)).collect();
    let stats = |range: std::ops::Range<usize>| {
        let n = range.len() as f64;
        let rss = range
            .clone()
            .map(|i| after[i].rss_kib as f64 / 1024.0)
            .sum::<f64>()
            / n;
        let anon = range
            .clone()
            .map(|i| after[i].rss_anon_kib as f64 / 1024.0)
            .sum::<f64>()
            / n;
        let cpu = range
            .map(|i| (after[i].cpu_seconds - before[i]) / idle.as_secs_f64() * 100.0)
            .sum::<f64>()
            / n;
        (rss, anon, cpu)
    };
    let (agent_rss, agent_anon, agent_cpu) = stats(0..3);
    let (bird_rss, bird_anon, bird_cpu) = stats(3..6);

    // Convergence: claim a block, then wait for its route in both other kernels. A pool of
    // /32 blocks makes every allocation a claim. One IPAM client, connected once, makes every
    // claim (as an agent's does), and `ip monitor` in each node stamps the route's arrival, so
    // neither a new etcd connection nor a polling `ip route` is in the figure.
    let monitor = RouteMonitor::start(
        &(0..3)
            .map(|i| cluster.node(i).ns.name().to_owned())
            .collect::<Vec<_>>(),
    )
    .expect("ip monitor in every node");
    std::thread::sleep(Duration::from_millis(300));
    let names: Vec<String> = (0..3).map(|i| cluster.node(i).name.clone()).collect();
    let (wren_times, claim_times) = cluster.ipam(|ipam| async move {
        ipam.add_pool(&PoolSpec::new("conv", "10.70.0.0/16").block_size(32))
            .await
            .unwrap();
        let mut wren_times = Vec::new();
        let mut claim_times = Vec::new();
        for round in 0..rounds {
            let owner = round % 3;
            let start = Instant::now();
            let request = AllocateRequest::new(format!("k8s.conv{round}"), names[owner].clone())
                .pools(vec!["conv".to_owned()]);
            let allocation = ipam.allocate(request).await.unwrap();
            claim_times.push(start.elapsed());
            let address = allocation.ipv4().unwrap().address;
            let others: Vec<usize> = (0..3).filter(|j| *j != owner).collect();
            let seen = monitor
                .wait(
                    &format!("{address}/32"),
                    true,
                    &others,
                    start,
                    Duration::from_secs(30),
                )
                .expect("the block in every other kernel");
            wren_times.push(seen.into_iter().max().unwrap_or_default());
            // Rounds apart, as the anchor's are: each change is measured on a quiet cluster.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (wren_times, claim_times)
    });
    let mut bird_times = Vec::new();
    for round in 0..rounds {
        let owner = round % 3;
        let prefix: IpNet = format!("10.67.{round}.0/24").parse().unwrap();
        let start = Instant::now();
        birds[owner].announce(&Announce::new(prefix)).unwrap();
        wait_every("the prefix in every other BIRD", POLL, || {
            (0..3).filter(|j| *j != owner).all(|j| {
                birds[j]
                    .routes(Family::Ipv4)
                    .map(|r| r.iter().any(|r| r.prefix == Some(prefix)))
                    .unwrap_or(false)
            })
        });
        bird_times.push(start.elapsed());
    }
    let (mut wren_times, mut claim_times) = (wren_times, claim_times);
    wren_times.sort();
    claim_times.sort();
    bird_times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (w50, w90, b50, b90) = (
        percentile(&wren_times, 0.5),
        percentile(&wren_times, 0.9),
        percentile(&bird_times, 0.5),
        percentile(&bird_times, 0.9),
    );

    println!("| measure | wren agent | BIRD 2 (anchor, same run) | ratio wren/BIRD |");
    println!("|---|---|---|---|");
    println!(
        "| idle RSS per node, MiB (mean of 3) | {agent_rss:.1} | {bird_rss:.1} | {:.2} |",
        agent_rss / bird_rss
    );
    println!(
        "| of which anonymous (heap, stacks), MiB | {agent_anon:.1} | {bird_anon:.1} | {:.2} |",
        agent_anon / bird_anon
    );
    println!(
        "| idle CPU per node, % of one core over {}s (mean of 3) | {agent_cpu:.3} | {bird_cpu:.3} | {} |",
        idle.as_secs(),
        if bird_cpu > 0.0 {
            format!("{:.2}", agent_cpu / bird_cpu)
        } else {
            "n/a (BIRD used 0 ticks)".into()
        }
    );
    println!(
        "| convergence p50, ms ({rounds} rounds) | {:.1} | {:.1} | {:.2} |",
        ms(w50),
        ms(b50),
        ms(w50) / ms(b50)
    );
    println!(
        "| convergence p90, ms ({rounds} rounds) | {:.1} | {:.1} | {:.2} |",
        ms(w90),
        ms(b90),
        ms(w90) / ms(b90)
    );
    println!();
    println!(
        "Of wren's convergence, the allocation itself (the claim and the address, on etcd) took p50 {:.1} ms.",
        ms(percentile(&claim_times, 0.5))
    );
}
