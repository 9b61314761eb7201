//! Network policy in the agent, on a 3-node lab: what enforcing a policy costs the traffic
//! it allows, and how fast a change is enforced on every node.
//!
//! | row | measured | anchor (same run, rounds alternating) |
//! |---|---|---|
//! | throughput | iperf3, one TCP stream, pod x/client on n2 → pod x/server on n1, with a policy isolating the server and allowing the client | the same pods with no policy |
//! | connection rate | new TCP connections per second (connect, one byte each way, close) over the same pair, ended by a reset (the server's FIN first, the client's `SO_LINGER` 0) and closed by two FINs (the client's first) | the same pods with no policy |
//! | at scale: memory | n1's agent's resident memory with 1,000 policies over 1,000 more workloads in the view (50 namespaces of 20 pods on other nodes) | the same agent before they were written |
//! | at scale: from nothing | n1's agent started → its table programmed, with that cluster in etcd | the same start's readiness (the agent ready, before policy) |
//! | change → enforced | `wren policy apply` started → the last of the three agents logged the table programmed (a policy selecting a pod on every node, its rule changed each time) | the `wren policy apply` process alone (start to exit: validation, etcd transaction) |
//!
//! With the policy the server's node polices its traffic: the stream's setup goes through
//! the stack and the rules, and the rest rides the fast path once the rules stamped the
//! connection; the bench prints what n1's fast path carried for the isolated pod, and
//! per connection of the rate rounds what it carried and left to the stack. Run with
//! `cargo bench -p wren-agent --bench policy_lab` as root, with `etcd`, `iperf3`, `nft`
//! and the built binaries.
//! `WREN_BENCH_SECS` sets the seconds per throughput round (default 3), `WREN_BENCH_ROUNDS`
//! the rounds (default 3); `WREN_BENCH_CHANGES` the policy changes timed (default 40);
//! `WREN_BENCH_TRAFFIC_ONLY=1` measures the throughput and connection rate rows alone.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wren_tests::bench::{BenchSettings, invoked_as_bench, iperf, machine, median};
use wren_tests::lab::{self, Lab, LabSpec};
use wren_tests::netns::command_in;

/// Accepts connections on port 8080, answers one byte and closes (the server's FIN
/// first); and on port 8081, answers one byte and closes once the client closed (the
/// client's FIN first, so that the client, not the server, keeps the connection's
/// TIME_WAIT).
const ACCEPTOR: &str = r#"
import socket, threading
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1024)
    return s
def serve(s, wait_for_fin):
    while True:
        c, _ = s.accept()
        try:
            c.recv(1)
            c.sendall(b"x")
            if wait_for_fin:
                c.recv(1)
        except OSError:
            pass
        c.close()
first, second = listen(8080), listen(8081)
threading.Thread(target=serve, args=(second, True), daemon=True).start()
print("up", flush=True)
serve(first, False)
"#;

/// Opens connections to argv[1] one after the other for argv[2] seconds; prints how many
/// completed per second. Each ends in a reset (`SO_LINGER` 0) to port 8080, where the
/// server closes first, or with argv[3] `fins`, by the client's FIN and then the
/// server's, to port 8081 (with `net.ipv4.tcp_tw_reuse` on, so that the client reuses
/// its ports in TIME_WAIT).
const CONNECTOR: &str = r#"
import socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
reset = sys.argv[3:] != ["fins"]
port = 8080 if reset else 8081
done, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.create_connection((host, port), timeout=2)
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(b"x")
    s.recv(1)
    s.close()
    done += 1
print(done / seconds)
"#;

const ALLOW: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n";

/// Selects every pod of x (one on each node); `port` changes its rule, so every node
/// programs a delta.
fn every_node_policy(port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: all, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: {port}, protocol: TCP}}]}}, {{ports: [{{port: 5201, protocol: TCP}}, {{port: 8080, protocol: TCP}}]}}]\n"
    )
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !lab::require_lab(false)
        || !wren_tests::prereq::require_command("iperf3")
        || !wren_tests::prereq::require_command("nft")
    {
        return;
    }
    let settings = BenchSettings::from_env();
    let changes: usize = std::env::var("WREN_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let traffic_only = std::env::var("WREN_BENCH_TRAFFIC_ONLY").is_ok_and(|v| v == "1");
    let mut spec = LabSpec::new("benchpol", 3);
    spec.pods_per_node = 0;
    let mut lab = Lab::up(spec).expect("lab up");
    let dir = tempfile::tempdir().expect("temporary directory");
    let cli = |lab: &Lab, args: &[&str]| {
        lab.wren_cli(args)
            .unwrap_or_else(|e| panic!("wren {}: {e}", args.join(" ")))
    };
    let mut pods = Vec::new();
    for (node, name) in [("n1", "server"), ("n2", "client"), ("n3", "other")] {
        let label = format!("app={name}");
        pods.push(
            lab.add_labelled_k8s_pod(node, "x", name, &[&label])
                .expect("pod"),
        );
    }
    lab.wait_full_matrix(Duration::from_secs(30), "n1")
        .expect("pods reach each other");
    let (client, server, server_ip) = (pods[1].0.clone(), pods[0].0.clone(), pods[0].1.to_string());
    // The connections closed by two FINs leave TIME_WAIT to the client, which reuses
    // those ports (timestamps tell the old connection's segments from the new one's).
    let reuse = command_in(&client, "sysctl")
        .args(["-qw", "net.ipv4.tcp_tw_reuse=1"])
        .status()
        .expect("sysctl runs");
    assert!(reuse.success(), "TIME_WAIT reuse on in the client pod");
    let mut acceptor = command_in(&server, "python3")
        .args(["-c", ACCEPTOR])
        .stdout(Stdio::piped())
        .spawn()
        .expect("acceptor");
    let mut line = String::new();
    if let Some(out) = acceptor.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let apply = |lab: &Lab, yaml: &str| {
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, yaml).expect("policy written");
        let started = Instant::now();
        cli(
            lab,
            &["policy", "apply", "-f", file.to_str().unwrap_or_default()],
        );
        started.elapsed()
    };
    let rate = |close: &str| -> (f64, u64) {
        let out = wren_tests::netns::run(command_in(&client, "python3").args([
            "-c",
            CONNECTOR,
            &server_ip,
            &settings.round.as_secs().to_string(),
            close,
        ]))
        .expect("connector");
        let rate: f64 = out.trim().parse().expect("a rate");
        // The connector prints completed connections per second of the round.
        (rate, (rate * settings.round.as_secs_f64()).round() as u64)
    };

    // Throughput and connection rate, without and with the policy, rounds alternating.
    let seconds = settings.round.as_secs();
    let (mut bare, mut policed) = (Vec::new(), Vec::new());
    // n1's fast path while the policed rounds' streams run: what it carried of the
    // isolated pod's packets and what it left to the stack.
    let (mut carried, mut forwarded, mut to_stack) = (0, 0, 0);
    // The connection rate, for connections ending in a reset and in two FINs.
    let mut rates = [RateRounds::new("reset"), RateRounds::new("fins")];
    for _ in 0..settings.rounds {
        bare.push(iperf(&client, &server, &server_ip, &server_ip, seconds).expect("iperf"));
        for rounds in &mut rates {
            rounds.measure(&lab, false, || rate(rounds.close));
        }
        apply(&lab, ALLOW);
        std::thread::sleep(Duration::from_millis(500));
        let before = lab.fast_path("n1").expect("n1's fast path");
        policed.push(iperf(&client, &server, &server_ip, &server_ip, seconds).expect("iperf"));
        let after = lab.fast_path("n1").expect("n1's fast path");
        carried += after.policed_carried - before.policed_carried;
        forwarded += after.forwarded - before.forwarded;
        to_stack += after.to_stack - before.to_stack;
        for rounds in &mut rates {
            rounds.measure(&lab, true, || rate(rounds.close));
        }
        cli(&lab, &["policy", "rm", "x/server"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The traffic is measured; nothing after it connects to the server pod.
    let _ = acceptor.kill();
    let _ = acceptor.wait();

    let round_ratios = median_of_round_ratios(&policed, &bare);
    let gbits = |f: Vec<f64>| median(f) / 1e9;
    let (bare, policed) = (gbits(bare), gbits(policed));
    println!(
        "{} throughput rounds of {seconds} s and {} changes; {}",
        settings.rounds,
        if traffic_only { 0 } else { changes },
        machine()
    );
    println!("| measure | figure | anchor | anchor figure | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| pod n2 → pod n1 a policy allows, Gbit/s | {policed:.2} | no policy | {bare:.2} | {:.2} | ≥ 0.95 |",
        policed / bare
    );
    println!(
        "| the same, median of the rounds' ratios (each policed round against the round before) | {round_ratios:.2} | | | | ≥ 0.95 |"
    );
    println!(
        "| n1's fast path in the policed rounds: packets carried for the isolated pod / forwarded / left to the stack | {carried} / {forwarded} / {to_stack} | | | | |"
    );
    for rounds in rates {
        rounds.print();
    }
    if traffic_only {
        lab.down().expect("lab down");
        return;
    }

    // A change → enforced on every node.
    let nodes: Vec<String> = lab.state().nodes.iter().map(|n| n.name.clone()).collect();
    let logs: Vec<std::path::PathBuf> = nodes
        .iter()
        .map(|n| lab.state().dir.join(format!("{n}.log")))
        .collect();
    apply(&lab, &every_node_policy(1000));
    std::thread::sleep(Duration::from_secs(1));
    let (mut enforced, mut cli_alone) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let before: Vec<usize> = logs.iter().map(|l| programmed(l).len()).collect();
        let start = seconds_of_day(SystemTime::now());
        cli_alone.push(apply(&lab, &every_node_policy(1001 + i as u16)).as_secs_f64());
        let deadline = Instant::now() + Duration::from_secs(10);
        let last = loop {
            let seen: Vec<Option<f64>> = logs
                .iter()
                .zip(&before)
                .map(|(log, n)| programmed(log).get(*n).copied())
                .collect();
            if seen.iter().all(Option::is_some) {
                break seen.into_iter().flatten().fold(0.0, f64::max);
            }
            assert!(
                Instant::now() < deadline,
                "change {i} not enforced everywhere"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        enforced.push((last - start).rem_euclid(86_400.0));
    }

    // At scale: 1,000 policies over 1,000 more workloads, then one policy isolating
    // x/server on n1, so n1's plan is compiled from all of it.
    apply(&lab, &every_node_policy(999)); // keeps x isolated, as before
    let rss_before = resident_kib(agent_pid(&lab, "n1"));
    write_cluster(&lab);
    apply(
        &lab,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-ns0, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ns0}}}]}]\n",
    );
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = resident_kib(agent_pid(&lab, "n1"));
    let n1_log = lab.state().dir.join("n1.log");
    lab.kill_agent("n1").expect("n1 stopped");
    let lines_before = programmed(&n1_log).len();
    let started = seconds_of_day(SystemTime::now());
    let spawn = Instant::now();
    lab.start_agent("n1").expect("n1 started");
    let ready = spawn.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    let from_nothing = loop {
        if let Some(at) = programmed(&n1_log).get(lines_before) {
            break (at - started).rem_euclid(86_400.0);
        }
        assert!(Instant::now() < deadline, "n1 never programmed its table");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(2));
    let rss_restarted = resident_kib(agent_pid(&lab, "n1"));

    let ms = |f: &[f64], q: f64| {
        let mut f = f.to_vec();
        f.sort_by(f64::total_cmp);
        f[((f.len() as f64 - 1.0) * q).round() as usize] * 1e3
    };
    println!(
        "| policy change → enforced on all 3 nodes, p50 / p99 ms | {:.1} / {:.1} | `wren policy apply` alone, p50 / p99 ms | {:.1} / {:.1} | {:.2} (p50) | p50 < 100 ms |",
        ms(&enforced, 0.5),
        ms(&enforced, 0.99),
        ms(&cli_alone, 0.5),
        ms(&cli_alone, 0.99),
        ms(&enforced, 0.5) / ms(&cli_alone, 0.5)
    );
    println!(
        "| n1's agent, 1,000 policies over 1,000 workloads in the view, resident KiB | {rss_after} (after a restart: {rss_restarted}) | the same agent before | {rss_before} | {:.2} | |",
        rss_after as f64 / rss_before as f64
    );
    println!(
        "| n1's agent started → table programmed, with that cluster, ms | {:.0} | the agent's start → ready | {:.0} | {:.2} | |",
        from_nothing * 1e3,
        ready * 1e3,
        from_nothing / ready
    );
    lab.down().expect("lab down");
}

/// One kind of connection's rate rounds: the rates with the policy and without, and what
/// n1's fast path did meanwhile.
struct RateRounds {
    /// How the connections end: `reset` or `fins` (the connector's argument).
    close: &'static str,
    /// Connections per second, each round, without the policy and with it.
    rates: [Vec<f64>; 2],
    /// Connections made, without the policy and with it.
    connections: [u64; 2],
    /// Packets n1 left to the stack, without the policy and with it.
    to_stack: [u64; 2],
    /// Packets n1 carried for the isolated pod (with the policy).
    carried: u64,
}

impl RateRounds {
    fn new(close: &'static str) -> Self {
        Self {
            close,
            rates: [Vec::new(), Vec::new()],
            connections: [0; 2],
            to_stack: [0; 2],
            carried: 0,
        }
    }

    /// One round of `rate` (connections/s, connections made), `policed` or not.
    fn measure(&mut self, lab: &Lab, policed: bool, rate: impl FnOnce() -> (f64, u64)) {
        let side = usize::from(policed);
        let before = lab.fast_path("n1").expect("n1's fast path");
        let (figure, connections) = rate();
        let after = lab.fast_path("n1").expect("n1's fast path");
        self.rates[side].push(figure);
        self.connections[side] += connections;
        self.to_stack[side] += after.to_stack - before.to_stack;
        self.carried += after.policed_carried - before.policed_carried;
    }

    fn print(self) {
        let ending = if self.close == "fins" {
            "closed by two FINs"
        } else {
            "ended by a reset"
        };
        let round_ratios = median_of_round_ratios(&self.rates[1], &self.rates[0]);
        let [bare, policed] = self.rates.map(median);
        println!(
            "| new TCP connections/s {ending}, pod n2 → pod n1 a policy allows | {policed:.0} | no policy | {bare:.0} | {:.2} | ≥ 0.90 |",
            policed / bare
        );
        println!("| the same, median of the rounds' ratios | {round_ratios:.2} | | | | ≥ 0.90 |");
        let per = |packets: u64, side: usize| packets as f64 / self.connections[side].max(1) as f64;
        println!(
            "| n1's fast path in those rounds, per connection: packets left to the stack with the policy / carried for the isolated pod / left to the stack without | {:.2} / {:.2} / {:.2} | | | | |",
            per(self.to_stack[1], 1),
            per(self.carried, 1),
            per(self.to_stack[0], 0)
        );
    }
}

/// The median of each policed round's figure against the unpoliced round before it: the
/// load of the moment meets both of a pair, so their ratio varies less than the figures.
fn median_of_round_ratios(policed: &[f64], bare: &[f64]) -> f64 {
    median(policed.iter().zip(bare).map(|(p, b)| p / b).collect())
}

fn agent_pid(lab: &Lab, node: &str) -> u32 {
    lab.node(node)
        .ok()
        .and_then(|n| n.agent.as_ref())
        .map(|a| a.pid)
        .expect("the agent runs")
}

/// `VmRSS` of a process, in KiB.
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 50 namespaces of 20 pods (labels `app=a0..a9`, a named port) on nodes that are not in
/// the lab, and 20 policies per namespace: policy i isolates app a(i mod 10)'s ingress and
/// allows app a(i+1 mod 10) of the namespace and every pod of the next namespace on port
/// 8000 + i. Written straight into etcd, as the CNI plugin and `wren workload label` would.
fn write_cluster(lab: &Lab) {
    use wren_store::Store;
    let endpoint = lab.state().etcd_endpoint.clone();
    wren_tests::netns::run_in(&lab.state().fabric_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let store = wren_store::etcd::EtcdStore::connect(wren_store::etcd::EtcdConfig {
                endpoints: vec![endpoint],
                prefix: wren_store::etcd::DEFAULT_PREFIX.to_owned(),
                ca: None,
                cert: None,
                key: None,
                dial_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(10),
                attempt_timeout: Duration::from_secs(2),
            })
            .await
            .expect("etcd");
            for ns in 0..50 {
                for pod in 0..20u32 {
                    let name = format!("p{pod}");
                    let node = format!("ghost{}", pod % 3);
                    let workload = wren_model::Workload {
                        node: node.clone(),
                        container_id: format!("c{ns}x{pod}"),
                        ifname: "eth0".into(),
                        network: "k8s".into(),
                        handle: format!("k8s.c{ns}x{pod}"),
                        pod_namespace: Some(format!("ns{ns}")),
                        pod_name: Some(name.clone()),
                        pod_uid: None,
                        netns: String::new(),
                        addresses: vec![
                            format!("10.80.{ns}.{pod}/32").parse().expect("address"),
                        ],
                        host_interface: format!("wrng{ns}x{pod}"),
                        mac: "ee:ee:ee:ee:ee:ee".into(),
                    };
                    let key = wren_model::keys::workload(&node, &workload.container_id, "eth0");
                    let doc = serde_json::to_vec(&workload).expect("json");
                    store.put(&key, doc, None).await.expect("workload");
                    let meta = wren_model::PodMeta {
                        labels: [("app".to_owned(), format!("a{}", pod % 10))].into(),
                        ports: vec![wren_model::NamedPort {
                            name: "http".into(),
                            protocol: wren_model::Protocol::Tcp,
                            port: 8080,
                        }],
                    };
                    let key = wren_model::keys::pod(&format!("ns{ns}"), &name);
                    store
                        .put(&key, serde_json::to_vec(&meta).expect("json"), None)
                        .await
                        .expect("pod");
                }
                for i in 0..20 {
                    let yaml = format!(
                        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: a{}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}, {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: ns{}}}}}}}], ports: [{{port: {}, protocol: TCP}}, {{port: http}}]}}]\n",
                        i % 10,
                        (i + 1) % 10,
                        (ns + 1) % 50,
                        8000 + i
                    );
                    let policy = wren_policy::decode_policies(&yaml)
                        .expect("a valid policy")
                        .remove(0);
                    let key = wren_model::keys::policy(&format!("ns{ns}"), &format!("p{i}"));
                    store
                        .put(&key, serde_json::to_vec(&policy).expect("json"), None)
                        .await
                        .expect("policy");
                }
            }
        });
    })
    .expect("in the fabric namespace");
}

/// The times of day (seconds, UTC) of the agent's "network policy programmed" lines.
fn programmed(log: &std::path::Path) -> Vec<f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("network policy programmed"))
        .filter_map(|l| {
            // The line starts with the timestamp, possibly after a colour code:
            // `2026-12-05T03:18:43.386164Z`.
            let at = l.find('T')?;
            let clock = l.get(at + 1..at + 16)?;
            let (h, rest) = clock.split_once(':')?;
            let (m, s) = rest.split_once(':')?;
            let s: f64 = s.trim_end_matches('Z').parse().ok()?;
            Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s)
        })
        .collect()
}

fn seconds_of_day(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64().rem_euclid(86_400.0))
        .unwrap_or_default()
}
