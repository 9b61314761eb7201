//! CNI ADD and DEL latency as the runtime sees it (plugin process started, request on stdin,
//! result on stdout), for wren (plugin → agent → etcd-backed IPAM → kernel) and, in the same
//! run on the same pod namespaces, for the reference `ptp` + `host-local` plugins doing the
//! same work (a veth with a /32 and routes; an address from a local file store).
//!
//! `cargo bench -p wren-agent --bench cni [-- --pods N]` (needs root, etcd, the reference
//! plugins in /usr/lib/cni and `cargo build --release -p wren-cni`). Rounds and etcd storage
//! follow `WREN_BENCH_ROUNDS` and `WREN_BENCH_STORAGE` (see `wren_tests::bench`). Prints
//! Markdown tables: p50/p99/max per operation, sequential and with N pods at once, and the
//! cost of starting each plugin (VERSION).
//!
//! Every plugin is started the same way, by a thread inside the node's network namespace (as a
//! runtime on that node would), so process start-up costs the same for both.

#[path = "../tests/cni_support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Call, Node};
use wren_cni::NetConf;
use wren_cni::client::{AgentTransport, UnixHttpClient};
use wren_cni::env::{Attachment, CniArgs};
use wren_cni::wire::{AttachmentRequest, paths};
use wren_tests::bench::arg;
use wren_tests::bench::{BenchSettings, invoked_as_bench};
use wren_tests::etcd::EtcdOptions;
use wren_tests::netns::{NetNs, run_in};

const PTP: &str = "/usr/lib/cni/ptp";
const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// The two plugin chains measured.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Plugin {
    Wren,
    Ptp,
}

/// Runs plugins inside the node's namespace.
struct Runner {
    wren_binary: PathBuf,
    wren_config: Value,
    ptp_config: Value,
}

impl Runner {
    fn program(&self, plugin: Plugin) -> &Path {
        match plugin {
            Plugin::Wren => &self.wren_binary,
            Plugin::Ptp => Path::new(PTP),
        }
    }

    fn config(&self, plugin: Plugin) -> &Value {
        match plugin {
            Plugin::Wren => &self.wren_config,
            Plugin::Ptp => &self.ptp_config,
        }
    }

    /// Runs one command and returns how long it took; panics when the plugin fails, since a
    /// failed operation has no meaningful latency.
    fn time(&self, plugin: Plugin, command: &str, container: &str, pod: &NetNs) -> Duration {
        let call = Call::new(command, container, Some(pod));
        let stdin = self.config(plugin).to_string();
        let started = Instant::now();
        let out = self.spawn(self.program(plugin), &call_env(&call), stdin.as_bytes());
        let elapsed = started.elapsed();
        assert!(
            out.status.success(),
            "{command} {container} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        elapsed
    }

    fn spawn(
        &self,
        program: &Path,
        env: &[(String, String)],
        stdin: &[u8],
    ) -> std::process::Output {
        let mut command = Command::new(program);
        command
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start plugin");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).expect("write stdin");
        }
        child.wait_with_output().expect("wait for plugin")
    }
}

fn call_env(call: &Call) -> Vec<(String, String)> {
    let mut env = vec![
        ("CNI_COMMAND".to_string(), call.command.to_string()),
        ("CNI_CONTAINERID".to_string(), call.container.to_string()),
        ("CNI_IFNAME".to_string(), call.ifname.to_string()),
        ("CNI_PATH".to_string(), "/usr/lib/cni".to_string()),
    ];
    if let Some(netns) = &call.netns {
        env.push(("CNI_NETNS".to_string(), netns.display().to_string()));
    }
    env
}

/// Latencies of one kind of operation, gathered over every round.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted
            .get(rank.saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    fn max(&self) -> Duration {
        self.0.iter().max().copied().unwrap_or_default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// ADD then DEL every pod one after the other.
fn sequential(
    runner: &Runner,
    plugin: Plugin,
    pods: &[NetNs],
    round: usize,
    add: &mut Samples,
    del: &mut Samples,
) {
    for (command, samples) in [("ADD", add), ("DEL", del)] {
        for (i, pod) in pods.iter().enumerate() {
            let container = format!("seq-{round}-{i}");
            samples
                .0
                .push(runner.time(plugin, command, &container, pod));
        }
    }
}

/// ADD every pod at once, then DEL every pod at once; returns the wall time of each burst.
fn concurrent(
    runner: &Runner,
    plugin: Plugin,
    pods: &[NetNs],
    round: usize,
    add: &mut Samples,
    del: &mut Samples,
) -> (Duration, Duration) {
    let mut walls = Vec::new();
    for (command, samples) in [("ADD", add), ("DEL", del)] {
        let start = Barrier::new(pods.len() + 1);
        let started = Instant::now();
        let latencies: Vec<Duration> = std::thread::scope(|scope| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, pod)| {
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        runner.time(plugin, command, &format!("burst-{round}-{i}"), pod)
                    })
                })
                .collect();
            start.wait();
            handles
                .into_iter()
                .map(|h| h.join().expect("plugin thread"))
                .collect()
        });
        walls.push(started.elapsed());
        samples.0.extend(latencies);
    }
    (walls[0], walls[1])
}

/// ADD and DEL through the agent's API alone (no plugin process): the agent's share.
fn api_only(node: &Node, pods: &[NetNs], round: usize, add: &mut Samples, del: &mut Samples) {
    let client = UnixHttpClient::new(&node.socket, Duration::from_secs(30));
    let config: NetConf = serde_json::from_value(node.config("1.0.0", json!({}))).expect("config");
    let request = |i: usize, pod: &NetNs| {
        serde_json::to_vec(&AttachmentRequest {
            attachment: Attachment {
                container_id: format!("api-{round}-{i}"),
                ifname: "eth0".into(),
                netns: Some(pod.path().display().to_string()),
                args: CniArgs::default(),
            },
            config: config.clone(),
        })
        .expect("request")
    };
    for (path, samples) in [(paths::ADD, add), (paths::DEL, del)] {
        for (i, pod) in pods.iter().enumerate() {
            let body = request(i, pod);
            let started = Instant::now();
            let reply = client.post(path, body).expect("agent reachable");
            samples.0.push(started.elapsed());
            assert!(
                (200..300).contains(&reply.status),
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    let missing = [
        (!nix::unistd::geteuid().is_root(), "root"),
        (!wren_tests::prereq::have_command("etcd"), "etcd"),
        (
            !Path::new(PTP).exists() || !Path::new(HOST_LOCAL).exists(),
            "ptp and host-local in /usr/lib/cni",
        ),
        (
            support::plugin_binary().is_none(),
            "target/release/wren-cni (cargo build --release -p wren-cni)",
        ),
    ];
    if let Some((_, what)) = missing.iter().find(|(m, _)| *m) {
        eprintln!("skipped: the CNI benchmark needs {what}");
        return;
    }
    let settings = BenchSettings::from_env();
    let pod_count = arg("--pods", 100);
    println!(
        "machine: {} cores, {}, kernel {}; {pod_count} pods, {} rounds",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        kernel(),
        settings.rounds
    );

    for (storage, dir) in &settings.storages {
        let node = Node::start_with(
            "bench-cni",
            &[("bench", "10.96.0.0/20", 26)],
            EtcdOptions {
                data_parent: Some(dir.clone()),
                ..Default::default()
            },
        );
        let pods: Vec<NetNs> = (0..pod_count)
            .map(|i| NetNs::new(&format!("bcp{i}")).expect("pod netns"))
            .collect();
        let host_local_dir = tempfile::tempdir().expect("host-local data dir");
        let runner = Runner {
            wren_binary: support::plugin_binary().expect("checked above"),
            wren_config: node.config("1.0.0", json!({})),
            ptp_config: json!({
                "cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "mtu": 1450, "ipMasq": false,
                "ipam": {
                    "type": "host-local", "dataDir": host_local_dir.path().display().to_string(),
                    "ranges": [[{"subnet": "10.97.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]
                }
            }),
        };

        // Plugins are started from threads inside the node's namespace (a plain fork/exec
        // inherits it), as a runtime on that node starts them.
        let in_node = |f: &mut (dyn FnMut() + Send)| run_in(node.ns.name(), f).expect("enter node");

        // Warm up both (page cache, etcd's first blocks, the agent's caches).
        in_node(&mut || {
            for plugin in [Plugin::Wren, Plugin::Ptp] {
                let warm = &pods[..pods.len().min(5)];
                let (mut add, mut del) = (Samples::default(), Samples::default());
                sequential(&runner, plugin, warm, 999, &mut add, &mut del);
            }
        });

        // [plugin][mode: 0 sequential, 1 concurrent][op: 0 ADD, 1 DEL]
        let mut samples: Vec<Vec<[Samples; 2]>> = (0..2)
            .map(|_| (0..2).map(|_| Default::default()).collect())
            .collect();
        let mut walls: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(), Vec::new()];
        let (mut api_add, mut api_del) = (Samples::default(), Samples::default());
        for round in 0..settings.rounds {
            // Interleaved, so drift of the machine hits both alike.
            in_node(&mut || {
                for (p, plugin) in [Plugin::Wren, Plugin::Ptp].into_iter().enumerate() {
                    let [add, del] = &mut samples[p][0];
                    sequential(&runner, plugin, &pods, round, add, del);
                    let [add, del] = &mut samples[p][1];
                    walls[p].push(concurrent(&runner, plugin, &pods, round, add, del));
                }
            });
            api_only(&node, &pods, round, &mut api_add, &mut api_del);
        }
        node.assert_empty();

        println!("\n### etcd on {storage}\n");
        println!(
            "| mode | op | wren p50 ms | wren p99 ms | wren max ms | ptp+host-local p50 ms | p99 ms | max ms | ratio p50 (ref / wren) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (m, mode) in ["sequential", &format!("{pod_count} at once")]
            .iter()
            .enumerate()
        {
            for (o, op) in ["ADD", "DEL"].iter().enumerate() {
                let (w, r) = (&samples[0][m][o], &samples[1][m][o]);
                println!(
                    "| {mode} | {op} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    ms(w.percentile(50.0)),
                    ms(w.percentile(99.0)),
                    ms(w.max()),
                    ms(r.percentile(50.0)),
                    ms(r.percentile(99.0)),
                    ms(r.max()),
                    ms(r.percentile(50.0)) / ms(w.percentile(50.0)),
                );
            }
        }
        let wall = |p: usize, add: bool| {
            let mut v: Vec<f64> = walls[p]
                .iter()
                .map(|(a, d)| ms(if add { *a } else { *d }))
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "\n{pod_count} pods at once, wall time (median round): wren ADD {:.0} ms / DEL {:.0} ms; ptp+host-local ADD {:.0} ms / DEL {:.0} ms",
            wall(0, true),
            wall(0, false),
            wall(1, true),
            wall(1, false)
        );
        println!(
            "agent alone (API over the socket, no plugin process), sequential: ADD p50 {:.2} ms p99 {:.2} ms; DEL p50 {:.2} ms p99 {:.2} ms",
            ms(api_add.percentile(50.0)),
            ms(api_add.percentile(99.0)),
            ms(api_del.percentile(50.0)),
            ms(api_del.percentile(99.0))
        );
        drop(pods);
    }

    // Plugin start-up: VERSION answered without touching the agent.
    let wren_binary = support::plugin_binary().expect("checked above");
    let mut startup = Vec::new();
    for program in [wren_binary.as_path(), Path::new(PTP)] {
        let mut s = Samples::default();
        for _ in 0..200 {
            let started = Instant::now();
            let mut child = Command::new(program)
                .env_clear()
                .env("CNI_COMMAND", "VERSION")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start plugin");
            if let Some(mut input) = child.stdin.take() {
                let _ = input.write_all(br#"{"cniVersion":"1.0.0"}"#);
            }
            let out = child.wait_with_output().expect("plugin");
            s.0.push(started.elapsed());
            assert!(out.status.success());
        }
        startup.push(s);
    }
    println!("\n### plugin start-up (VERSION, 200 runs)\n");
    println!("| plugin | p50 ms | p99 ms | ratio p50 (ptp / wren) |");
    println!("|---|---|---|---|");
    let anchor = ms(startup[1].percentile(50.0));
    for (name, s) in ["wren-cni", "ptp"].iter().zip(&startup) {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            ms(s.percentile(50.0)),
            ms(s.percentile(99.0)),
            anchor / ms(s.percentile(50.0))
        );
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
