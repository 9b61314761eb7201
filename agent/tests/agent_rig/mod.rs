//! The test bed of the agent's cluster tests and benchmarks: one network namespace per node
//! on a shared bridge, a real etcd on that bridge, the built `wren` binary in each node's
//! namespace, and IPAM on the same etcd to claim blocks as a pod ADD does.

#![allow(dead_code)] // each test crate that includes this uses a different part of it

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wren_ipam::{AllocateRequest, Ipam, PoolSpec};
use wren_store::Store;
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_tests::etcd::{Etcd, EtcdOptions};
use wren_tests::netns::{Bridge, NetNs, run_in};
use wren_tests::prereq;
use wren_tests::process::ChildGuard;

/// The fabric's address: etcd listens on it, and the ToR speaks BGP from it.
pub const FABRIC_IP: &str = "10.77.0.254";
/// Generous bound for anything asynchronous; the expected times are far shorter.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn wren_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wren"))
}

pub fn ready() -> bool {
    prereq::require_root() && prereq::require_command("etcd") && prereq::require_command("ip")
}

/// [`ready`], and every program of `commands` installed (under `CI=true` a missing one fails).
pub fn ready_with<'a>(commands: impl IntoIterator<Item = &'a str>) -> bool {
    ready() && commands.into_iter().all(prereq::require_command)
}

/// Polls `check` every 20 ms until it holds or `DEADLINE` passes; returns the time it took.
pub fn wait_for(what: &str, check: impl FnMut() -> bool) -> Duration {
    wait_every(what, Duration::from_millis(20), check)
}

/// Polls `check` every `interval` until it holds or `DEADLINE` passes; returns the time it
/// took.
pub fn wait_every(what: &str, interval: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(interval);
    }
    start.elapsed()
}

/// One node: its namespace, address and agent.
pub struct Node {
    pub name: String,
    pub ip: String,
    pub ns: NetNs,
    pub socket: PathBuf,
    pub agent: Option<ChildGuard>,
}

impl Node {
    /// The node's routes of one protocol (`bgp` = 186, `201` = wren's own), as `ip route` prints.
    pub fn routes(&self, proto: &str) -> String {
        self.ns
            .ip(&["route", "show", "proto", proto])
            .unwrap_or_default()
    }

    pub fn has_route(&self, proto: &str, needle: &str) -> bool {
        self.routes(proto).lines().any(|l| l.contains(needle))
    }

    pub fn status(&self) -> String {
        let out = std::process::Command::new(wren_bin())
            .args(["status", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// `wren status -o json`: the status document (`Null` when the agent does not answer).
    pub fn status_json(&self) -> serde_json::Value {
        let out = std::process::Command::new(wren_bin())
            .args(["status", "-o", "json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Whether every readiness check passes, from the status document.
    pub fn ready(&self) -> bool {
        self.status_json()["readiness"]
            .as_object()
            .is_some_and(|checks| checks.values().all(|v| v.as_bool() == Some(true)))
    }

    /// The kinds of the node's BGP sessions (`node-mesh`, `rr-client`, …), from the status
    /// document, with the session states.
    pub fn peers(&self) -> Vec<(String, String, String)> {
        let status = self.status_json();
        status["peers"]
            .as_array()
            .map(|peers| {
                peers
                    .iter()
                    .map(|p| {
                        let field = |f: &str| p[f].as_str().unwrap_or_default().to_owned();
                        (field("address"), field("kind"), field("state"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log(&self) -> String {
        self.agent.as_ref().map(|a| a.log()).unwrap_or_default()
    }
}

/// A cluster on one bridge with etcd on the fabric.
pub struct Cluster {
    // Field order: agents stop before the namespaces and etcd go.
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    pub fabric: Bridge,
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    /// Builds the fabric and `n` node namespaces, starts etcd, and creates the pool. Agents
    /// are started by [`Cluster::start_agent`].
    pub fn new(tag: &str, n: usize) -> Self {
        let fabric = Bridge::new(&format!("{tag}-sw")).unwrap();
        fabric
            .netns()
            .configure("br0", Some(&format!("{FABRIC_IP}/24")))
            .unwrap();
        let etcd = Etcd::start_with(EtcdOptions {
            netns: Some(fabric.netns().name().to_owned()),
            host: FABRIC_IP.parse().unwrap(),
            ..EtcdOptions::default()
        })
        .unwrap();
        let dir = tempfile::Builder::new()
            .prefix("wren-agent-test-")
            .tempdir()
            .unwrap();
        let mut nodes = Vec::new();
        for i in 1..=n {
            let ns = NetNs::new(&format!("{tag}-n{i}")).unwrap();
            let ip = format!("10.77.0.{i}");
            fabric
                .attach(&ns, "eth0", Some(&format!("{ip}/24")))
                .unwrap();
            // The pods' gateway (169.254.1.1) answers by proxy ARP only where it is routable.
            ns.ip(&["route", "add", "default", "via", FABRIC_IP])
                .unwrap();
            nodes.push(Node {
                name: format!("node{i}"),
                ip,
                ns,
                socket: dir.path().join(format!("node{i}.sock")),
                agent: None,
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cluster = Self {
            nodes,
            etcd,
            fabric,
            _dir: dir,
            runtime,
        };
        cluster.ipam(|ipam| async move {
            ipam.add_pool(&PoolSpec::new("default", "10.65.0.0/16").block_size(26))
                .await
                .unwrap();
        });
        cluster
    }

    pub fn endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    /// Runs `f` with IPAM on the cluster's etcd, from inside the fabric namespace (the only
    /// place that reaches it).
    pub fn ipam<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce(Ipam) -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        with_store_in(self.fabric.netns().name(), self.endpoint(), |store| {
            f(Ipam::new(store))
        })
    }

    /// Allocates one address for `handle` on `node` from `pools` (any pool when empty),
    /// claiming a block when the node has none with room.
    pub fn allocate(&self, node: &str, handle: &str, pools: &[&str]) -> std::net::IpAddr {
        let (node, handle) = (node.to_owned(), handle.to_owned());
        let pools: Vec<String> = pools.iter().map(|p| (*p).to_owned()).collect();
        self.ipam(|ipam| async move {
            let request = AllocateRequest::new(handle, node).pools(pools);
            let allocation = ipam.allocate(request).await.unwrap();
            allocation.ipv4().unwrap().address
        })
    }

    /// Allocates one address for `handle` on `node` from the default pool (/26 blocks);
    /// returns the block it came from.
    pub fn claim(&self, node: &str, handle: &str) -> IpNet {
        let address = self.allocate(node, handle, &[]);
        IpNet::new(address, 26).unwrap().trunc()
    }

    /// Runs `wren <args…> --etcd-endpoints …` in the fabric namespace.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.fabric
            .netns()
            .command(wren_bin())
            .args(args)
            .args(["--etcd-endpoints", &self.endpoint()])
            .output()
            .unwrap()
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "wren {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `wren peer add <name> --peer-ip <ip> --as <asn> <extra…>`; returns its output.
    pub fn add_peer(&self, name: &str, ip: &str, asn: u32, extra: &[&str]) -> String {
        let asn = asn.to_string();
        let mut args = vec!["peer", "add", name, "--peer-ip", ip, "--as", &asn];
        args.extend_from_slice(extra);
        self.cli_ok(&args)
    }

    /// A router's namespace `name` on the fabric at `ip` (without prefix length), its port
    /// `eth0`.
    pub fn attach_router(&self, name: &str, ip: &str) -> NetNs {
        let router = NetNs::new(name).unwrap();
        self.fabric
            .attach(&router, "eth0", Some(&format!("{ip}/24")))
            .unwrap();
        router
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Starts node `i`'s agent and waits until it reports ready.
    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// The arguments of `wren agent` for a node named `name` at `ip` (without prefix length)
    /// serving `socket`, with the rig's short intervals, plus `extra` (whose flags replace
    /// the rig's of the same name).
    pub fn agent_args(&self, name: &str, ip: &str, socket: &Path, extra: &[&str]) -> Vec<String> {
        let base = [
            "agent",
            "--node-name",
            name,
            "--node-ip",
            &format!("{ip}/24"),
            "--etcd-endpoints",
            &self.endpoint(),
            "--socket",
            socket.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:9099",
            "--reconcile-interval",
            "1s",
            "--bgp-sync-timeout",
            "5s",
            "--liveness-ttl",
            "6s",
        ];
        let mut args = vec![base[0].to_owned()];
        for pair in base[1..].chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend(pair.iter().map(|a| (*a).to_owned()));
            }
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    /// Starts node `i`'s agent with extra flags and waits until it reports ready.
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) {
        let node = &self.nodes[i];
        let args = self.agent_args(&node.name, &node.ip, &node.socket, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = node
            .ns
            .spawn(
                &format!("wren agent {}", node.name),
                wren_bin().to_str().unwrap(),
                &args,
            )
            .unwrap();
        self.nodes[i].agent = Some(agent);
        let node = &self.nodes[i];
        wait_for(&format!("{} ready", node.name), || {
            node.status().contains(": ready")
        });
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_agent(i);
        }
    }

    /// Waits until every pair of nodes has an Established session (shown by `wren status`).
    pub fn wait_mesh(&self) {
        for node in &self.nodes {
            let others = self.nodes.len() - 1;
            wait_for(&format!("{}'s sessions", node.name), || {
                node.status().matches("Established").count() == others
            });
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("--- {} status ---\n{}", node.name, node.status());
                eprintln!(
                    "--- {} routes ---\n{}",
                    node.name,
                    node.ns.ip(&["route"]).unwrap_or_default()
                );
                eprintln!("--- {} log ---\n{}", node.name, node.log());
            }
        }
        let _ = &self.runtime;
    }
}

/// Drops every packet in and out of `eth0` in `ns` (`true`: carrier stays up, as with `tc
/// netem loss 100%`, which this kernel lacks), or stops dropping (`false`).
pub fn cut_port(ns: &NetNs, on: bool) {
    const TABLE: &str = "wren_cut";
    let script = if on {
        format!(
            "table inet {TABLE} {{\n\
             chain input {{ type filter hook input priority 0; iifname \"eth0\" drop; }}\n\
             chain output {{ type filter hook output priority 0; oifname \"eth0\" drop; }}\n}}\n"
        )
    } else {
        format!("delete table inet {TABLE}\n")
    };
    wren_tests::netns::run_with_input(ns.command("nft").args(["-f", "-"]), script.as_bytes())
        .unwrap();
}

/// `GET path` on the agent's metrics address, from inside the node's namespace.
pub fn http_get(node: &Node, path: &str) -> (u16, String) {
    wren_tests::http::get_in_ns(node.ns.name(), 9099, path).unwrap()
}

/// Runs `f` with a store on the etcd at `endpoint` from inside the namespace named `ns` (a
/// rig's or lab's etcd listens only there), on a runtime of its own.
pub fn with_store_in<F, Fut, R>(ns: &str, endpoint: String, f: F) -> R
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send,
    Fut: std::future::Future<Output = R>,
    R: Send,
{
    run_in(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let config = EtcdConfig {
                endpoints: vec![endpoint],
                ..EtcdConfig::default()
            };
            let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(config).await.unwrap());
            f(store).await
        })
    })
    .unwrap()
}
