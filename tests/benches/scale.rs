//! A large cluster on one machine: real agents in network namespaces, real etcd, the node mesh
//! off and wren route reflectors (or a full mesh), one pod per node.
//!
//! `cargo bench -p wren-tests --bench scale -- --nodes 150 --reflectors 2 [--etcd-proxies 3]`
//! (root, etcd; `--reflectors 0` runs a full mesh). Other options: `--idle-secs` (30),
//! `--claims` (20), `--removals` (5), `--samples` (20 pod pairs).
//!
//! Measured:
//! - start: the agents all started together → every agent ready; then, after one pod per
//!   node, a sample of pod pairs (spread over the nodes) all reaching each other;
//! - idle: each agent's resident memory and CPU (reflectors apart), etcd's; etcd's requests
//!   per second, watchers and database size (etcd's own metrics);
//! - a burst: one pod ADD on every node at once: its wall time and etcd's requests per second
//!   meanwhile;
//! - a block claimed on one node (the node's first pod ADD from a pool of /30 blocks) → its
//!   route in every other node's kernel: p50, p99 and max over nodes and claims, from `ip monitor` in every
//!   node (each change stamped as the kernel reports it);
//! - a node removed (its agent stopped, `wren node rm`) → its block's route gone from every
//!   other kernel: p50, p99 and max;
//! - faults: a route reflector killed (`SIGKILL`) while sampled pod pairs ping each other
//!   (5 per second): the pings lost; then every agent stopped and started again at once:
//!   the time until all are ready, and afterwards no address held twice and a clean
//!   `wren ipam check`.

use std::time::{Duration, Instant};

use wren_tests::bench::{arg, invoked_as_bench, median};
use wren_tests::lab::{self, Lab, LabSpec, Pingers};
use wren_tests::process::usage;
use wren_tests::routes::RouteMonitor;

/// How long a route may take to reach every node before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    if !invoked_as_bench() || !lab::require_lab(false) {
        return;
    }
    let shape = Shape {
        nodes: arg("--nodes", 150),
        reflectors: arg("--reflectors", 2),
        proxies: arg("--etcd-proxies", 0),
    };
    let idle = Duration::from_secs(arg("--idle-secs", 30));
    println!("machine: {}", wren_tests::bench::machine());
    println!(
        "{} nodes, {}, {}",
        shape.nodes,
        if shape.reflectors == 0 {
            "full mesh".to_owned()
        } else {
            format!("{} route reflectors", shape.reflectors)
        },
        if shape.proxies == 0 {
            "agents on etcd directly".to_owned()
        } else {
            format!("{} etcd gRPC proxies", shape.proxies)
        }
    );
    let started = Instant::now();
    let mut spec = LabSpec::new(&lab::test_lab_name('s'), shape.nodes);
    spec.pods_per_node = 1;
    spec.route_reflectors = shape.reflectors;
    spec.etcd_proxies = shape.proxies;
    let mut lab = Lab::up(spec).expect("lab up");
    let up = started.elapsed();
    let reach = sample_reachable(&lab, arg("--samples", 20));
    println!(
        "start: agents started together → all ready {:.1} s; lab up (fabric, etcd, nodes, agents, one pod each) {:.1} s; then a sample of pod pairs all reachable after {:.1} s more",
        lab.agents_ready_after().unwrap_or_default().as_secs_f64(),
        up.as_secs_f64(),
        reach.as_secs_f64()
    );

    idle_figures(&lab, shape, idle);
    burst(&lab);
    let monitor = RouteMonitor::start(
        &lab.state()
            .nodes
            .iter()
            .map(|n| n.ns.clone())
            .collect::<Vec<_>>(),
    )
    .expect("route monitors");
    std::thread::sleep(Duration::from_millis(500));
    claims(&lab, &monitor, arg("--claims", 20));
    removals(&mut lab, &monitor, shape, arg("--removals", 5));
    drop(monitor);
    if shape.reflectors > 0 {
        reflector_killed(&mut lab, arg("--samples", 20));
    }
    restart_everything(&mut lab);
}

/// The cluster's shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    nodes: usize,
    reflectors: usize,
    proxies: usize,
}

/// Pings `samples` pod pairs spread over the nodes until every one answers; returns how long
/// that took.
fn sample_reachable(lab: &Lab, samples: usize) -> Duration {
    let pairs = sample_pairs(lab, samples);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (from, to) in &pairs {
            scope.spawn(move || {
                assert!(
                    lab::ping(from, to, 60),
                    "{from} does not reach {to} within a minute"
                );
            });
        }
    });
    started.elapsed()
}

/// One scrape of etcd's metrics: (requests handled so far, watchers, database bytes).
fn etcd_metrics(lab: &Lab) -> (f64, f64, f64) {
    let state = lab.state();
    let endpoint = state.etcd_endpoint.split(',').next().unwrap_or_default();
    let text = wren_tests::netns::run(
        std::process::Command::new("ip")
            .args(["netns", "exec", &state.fabric_ns, "curl", "-s"])
            .arg(format!("{endpoint}/metrics")),
    )
    .unwrap_or_default();
    let sum = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (
        sum("grpc_server_handled_total"),
        sum("etcd_debugging_mvcc_watcher_total"),
        sum("etcd_mvcc_db_total_size_in_bytes"),
    )
}

fn idle_figures(lab: &Lab, shape: Shape, idle: Duration) {
    let state = lab.state();
    let agents: Vec<u32> = state
        .nodes
        .iter()
        .filter_map(|n| n.agent.as_ref().map(|a| a.pid))
        .collect();
    let etcd: Vec<u32> = state.etcd_members.iter().filter_map(|m| m.pid).collect();
    let before: Vec<f64> = agents
        .iter()
        .chain(&etcd)
        .map(|p| usage(*p).cpu_seconds)
        .collect();
    let (requests_before, _, _) = etcd_metrics(lab);
    std::thread::sleep(idle);
    let (requests_after, watchers, db) = etcd_metrics(lab);
    let after: Vec<_> = agents.iter().chain(&etcd).map(|p| usage(*p)).collect();
    let cpu = |i: usize| (after[i].cpu_seconds - before[i]) / idle.as_secs_f64() * 100.0;
    let mib = |i: usize| after[i].rss_kib as f64 / 1024.0;
    let describe = |what: &str, range: std::ops::Range<usize>| {
        if range.is_empty() {
            return;
        }
        let rss: Vec<f64> = range.clone().map(mib).collect();
        let cpus: Vec<f64> = range.clone().map(cpu).collect();
        println!(
            "idle {what} ({}): RSS median {:.1} MiB, max {:.1} MiB; CPU median {:.2} %, max {:.2} % of a core",
            range.len(),
            median(rss.clone()),
            rss.iter().copied().fold(0.0, f64::max),
            median(cpus.clone()),
            cpus.iter().copied().fold(0.0, f64::max)
        );
    };
    let reflectors = shape.reflectors.min(agents.len());
    describe("route reflectors", 0..reflectors);
    describe("agents", reflectors..agents.len());
    describe("etcd", agents.len()..agents.len() + etcd.len());
    println!(
        "idle etcd: {:.1} requests/s over {} s, {watchers} watchers, database {:.0} KiB",
        (requests_after - requests_before) / idle.as_secs_f64(),
        idle.as_secs(),
        db / 1024.0
    );
}

/// A new pod's namespace and container id, `tag` and `i` making them unique.
fn new_pod(lab: &Lab, tag: &str, i: usize) -> (String, String) {
    let ns = lab::ns_name(&lab.state().spec.name, &format!("{tag}{i}"));
    let _ = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status();
    (ns, format!("{tag}-{i}"))
}

fn burst(lab: &Lab) {
    let nodes = &lab.state().nodes;
    let (requests_before, _, _) = etcd_metrics(lab);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, node) in nodes.iter().enumerate() {
            scope.spawn(move || {
                let (ns, id) = new_pod(lab, "b", i);
                lab.cni(node, "ADD", &id, &ns).expect("burst ADD");
            });
        }
    });
    let took = started.elapsed();
    let (requests_after, _, _) = etcd_metrics(lab);
    println!(
        "burst: {} pod ADDs at once (one per node) took {:.2} s; etcd handled {:.0} requests meanwhile ({:.0}/s)",
        nodes.len(),
        took.as_secs_f64(),
        requests_after - requests_before,
        (requests_after - requests_before) / took.as_secs_f64()
    );
}

/// `q` (0..1) of sorted `values`.
fn percentile(values: &[Duration], q: f64) -> f64 {
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn spread(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
        times.len()
    );
}

fn claims(lab: &Lab, monitor: &RouteMonitor, claims: usize) {
    lab.wren_cli(&[
        "pool",
        "add",
        "claims",
        "--cidr",
        "10.70.0.0/16",
        "--block-size",
        "30",
    ])
    .expect("pool of /30 blocks");
    let nodes = &lab.state().nodes;
    let mut times = Vec::new();
    let mut adds = Vec::new();
    // Each claim on a node that has no block of the pool yet: its first ADD claims one.
    for k in 0..claims.min(nodes.len()) {
        let owner = (k + 3) % nodes.len();
        let (ns, id) = new_pod(lab, "c", k);
        let started = Instant::now();
        let out = lab
            .cni_with(
                &nodes[owner],
                "ADD",
                &id,
                &ns,
                serde_json::json!({"ipam": {"pools": ["claims"]}}),
            )
            .expect("claim ADD");
        adds.push(started.elapsed());
        let ip: std::net::Ipv4Addr = out
            .split('"')
            .find_map(|s| s.strip_prefix("10.70.")?.strip_suffix("/32"))
            .and_then(|rest| format!("10.70.{rest}").parse().ok())
            .unwrap_or_else(|| panic!("no 10.70 address in {out}"));
        let block = format!("{}/30", std::net::Ipv4Addr::from(u32::from(ip) & !3));
        let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != owner).collect();
        times.extend(
            monitor
                .wait(&block, true, &others, started, PATIENCE)
                .expect("claimed block in every kernel"),
        );
    }
    spread("pod ADD claiming a /30 block", adds);
    spread(
        "block claimed (pod ADD started) → route in each other kernel",
        times,
    );
}

fn removals(lab: &mut Lab, monitor: &RouteMonitor, shape: Shape, removals: usize) {
    let mut times = Vec::new();
    let mut removed = Vec::new();
    for k in 0..removals {
        // Never a reflector; from the end, so the lab keeps its early nodes.
        let index = lab.state().nodes.len() - 1 - k;
        if index < shape.reflectors.max(1) {
            break;
        }
        let node = lab.state().nodes[index].name.clone();
        let block = lab
            .state()
            .pods
            .iter()
            .find(|p| p.node == node)
            .map(|p| format!("{}/26", std::net::Ipv4Addr::from(u32::from(p.ip) & !63)))
            .expect("a pod on the node");
        lab.stop_agent(&node).expect("agent stopped");
        removed.push(index);
        // A removed node's kernel keeps what it had: only the live nodes count.
        let others: Vec<usize> = (0..lab.state().nodes.len())
            .filter(|i| !removed.contains(i))
            .collect();
        let started = Instant::now();
        lab.wren_cli(&["node", "rm", &node]).expect("wren node rm");
        times.extend(
            monitor
                .wait(&block, false, &others, started, PATIENCE)
                .expect("removed node's block gone from every kernel"),
        );
    }
    spread(
        "node removed (`wren node rm`) → its block's route gone from each other kernel",
        times,
    );
}

/// `samples` pod pairs spread over the nodes whose agents run: source namespace, destination
/// address.
fn sample_pairs(lab: &Lab, samples: usize) -> Vec<(String, String)> {
    let live: Vec<&str> = lab
        .state()
        .nodes
        .iter()
        .filter(|n| n.agent.is_some())
        .map(|n| n.name.as_str())
        .collect();
    let pods: Vec<_> = lab
        .state()
        .pods
        .iter()
        .filter(|p| live.contains(&p.node.as_str()))
        .collect();
    let n = pods.len();
    (0..samples.min(n / 2))
        .map(|k| (pods[(k * 7) % n], pods[(k * 13 + n / 2) % n]))
        .filter(|(a, b)| a.ip != b.ip)
        .map(|(a, b)| (a.ns.clone(), b.ip.to_string()))
        .collect()
}

/// Kills the first route reflector's agent while sampled pairs ping (5/s for `seconds`);
/// returns (sent, received) over all pairs. The agent is started again afterwards.
fn reflector_killed(lab: &mut Lab, samples: usize) {
    let pairs = sample_pairs(lab, samples);
    let seconds = 20;
    let labelled: Vec<(String, String, String)> = pairs
        .iter()
        .map(|(from, to)| (format!("{from}→{to}"), from.clone(), to.clone()))
        .collect();
    let pingers = Pingers::between(&labelled);
    std::thread::sleep(Duration::from_secs(3));
    let reflector = lab.state().nodes[0].name.clone();
    lab.kill_agent(&reflector).expect("reflector killed");
    std::thread::sleep(Duration::from_secs(seconds - 3));
    let (mut sent, mut received) = (0u64, 0u64);
    // "<pair>: 100 packets transmitted, 100 received, 0% packet loss, time 19800ms"
    for summary in pingers.finish() {
        let count = |word: &str| {
            summary
                .split(',')
                .find(|part| part.contains(word))
                .and_then(|part| {
                    part.split_whitespace()
                        .rev()
                        .find_map(|word| word.parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        sent += count("transmitted");
        received += count("received");
    }
    println!(
        "route reflector {reflector} killed 3 s into {seconds} s of pings between {} sampled pod pairs: {} of {sent} lost ({:.2} %)",
        pairs.len(),
        sent - received,
        (sent - received) as f64 * 100.0 / sent.max(1) as f64
    );
    lab.start_agent(&reflector).expect("reflector back");
}

/// Stops every agent, starts them all at once, and checks what they hand out afterwards.
fn restart_everything(lab: &mut Lab) {
    let took = lab.restart_all_agents().expect("every agent restarted");
    let mut addresses: Vec<_> = lab.state().pods.iter().map(|p| p.ip).collect();
    let all = addresses.len();
    addresses.sort();
    addresses.dedup();
    let check = lab
        .wren_cli(&["ipam", "check", "--grace", "0s"])
        .expect("ipam check");
    // The removed nodes' pods still hold their addresses: leaks by the check's rules, which an
    // operator releases (`wren ipam release --from-check`). A live node's pod must not be one.
    let live: Vec<String> = lab
        .state()
        .pods
        .iter()
        .filter(|p| {
            lab.state()
                .nodes
                .iter()
                .any(|n| n.name == p.node && n.agent.is_some())
        })
        .map(|p| p.ip.to_string())
        .collect();
    let leaked: Vec<&str> = check
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|word| word.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    println!(
        "every agent stopped and started at once: all {} ready after {:.1} s; {} of {all} pod addresses held twice; ipam check: {} leaked, all of removed nodes",
        lab.state()
            .nodes
            .iter()
            .filter(|n| n.agent.is_some())
            .count(),
        took.as_secs_f64(),
        all - addresses.len(),
        leaked.len()
    );
    assert_eq!(all, addresses.len(), "an address held twice");
    assert!(
        leaked.iter().all(|a| !live.iter().any(|l| l == a)),
        "a live pod's address reported leaked:\n{check}"
    );
}
