//! The lab: a whole wren cluster on one machine, one network namespace per node.
//!
//! A lab is a set of namespaces named `wl-<lab>-<role>`: the segment (`sw`, a bridge with etcd
//! on it) or, with two subnets, a router (`rt`) with one bridge per subnet and etcd; one
//! namespace per node running `wren agent`; one per pod, set up through the real `wren-cni`
//! plugin; and with `--tor`, a BIRD 2 route reflector (`tor`). No namespace has a route out of
//! the lab.
//!
//! Everything the lab makes is recorded in a state file under [`STATE_ROOT`], so that `down`
//! works from another process (the `wren-lab` CLI) and after a crash. [`Lab::down`] also finds
//! namespaces by their name prefix and ends the processes inside them by pid, so leftovers of a
//! crashed run go too. A [`Lab`] made by a test removes itself when dropped.

mod names;
mod state;
mod topology;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use names::ns_name;
pub use state::{AgentState, EtcdMemberState, LabState, NodeState, PodState};

/// Where labs keep their state, logs and sockets.
pub const STATE_ROOT: &str = "/run/wren-lab";

/// The pool every lab creates.
pub const POOL_CIDR: &str = "10.65.0.0/16";

/// The IPv6 pool a dual-stack lab creates next to [`POOL_CIDR`].
pub const POOL6_CIDR: &str = "fd00:65::/112";

/// AS number of the lab cluster.
pub const LAB_AS: u32 = 64512;

/// How long a node's agent may take to become ready in a small lab; a large one allows
/// [`READY_TIMEOUT_PER_NODE`] more for each node (more peers to sync with, and every agent
/// starting on the same few cores).
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What each node adds to [`AGENT_READY_TIMEOUT`].
const READY_TIMEOUT_PER_NODE: Duration = Duration::from_millis(300);

/// What went wrong building or using a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command or file operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The lab's state file does not parse.
    #[error("lab state {path}: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// Why it does not parse.
        reason: String,
    },
    /// Something the lab needs is not there or not as expected.
    #[error("{0}")]
    Lab(String),
}

/// A node's fast path as `wren status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathReport {
    /// Loaded and attached.
    pub on: bool,
    /// Pods attached.
    pub pods: usize,
    /// Uplink and tunnel devices attached.
    pub uplinks: Vec<String>,
    /// Packets forwarded past the host stack.
    pub forwarded: u64,
    /// Pool-to-pool packets left to the host stack.
    pub to_stack: u64,
    /// Of the forwarded packets, those the program wrapped in VXLAN.
    pub encapsulated: u64,
    /// Pool-to-pool packets left to the stack because netfilter translated their connection.
    pub translated: u64,
    /// Packets of pods network policy isolates that the program carried.
    pub policed_carried: u64,
}

impl FastPathReport {
    /// Reads the `fastPath` object of a `wren status -o json` document.
    pub fn from_status(status: &serde_json::Value) -> Option<Self> {
        let fast_path = status.get("fastPath")?;
        let number = |field: &str| fast_path.get(field).and_then(serde_json::Value::as_u64);
        Some(Self {
            on: fast_path.get("state")?.as_str()? == "on",
            pods: usize::try_from(number("pods")?).ok()?,
            uplinks: fast_path
                .get("uplinks")?
                .as_array()?
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<_>>()?,
            forwarded: number("forwarded")?,
            to_stack: number("toStack")?,
            encapsulated: number("encapsulated").unwrap_or(0),
            translated: number("translated").unwrap_or(0),
            policed_carried: number("policedCarried").unwrap_or(0),
        })
    }
}

/// Result of lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Encapsulation of the lab's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// Plain routing between nodes.
    None,
    /// VXLAN (cross-subnet mode when the lab has two subnets).
    Vxlan,
    /// IP-in-IP (cross-subnet mode when the lab has two subnets).
    Ipip,
}

impl Encap {
    fn as_arg(self) -> &'static str {
        match self {
            Encap::None => "none",
            Encap::Vxlan => "vxlan",
            Encap::Ipip => "ipip",
        }
    }
}

/// The shape of a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabSpec {
    /// Lab name: part of every namespace name, so it must be short (≤ 8 characters).
    pub name: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Pool encapsulation.
    pub encap: Encap,
    /// One L2 segment (1) or two subnets joined by a router that knows no pod routes (2).
    pub subnets: u8,
    /// A BIRD 2 top-of-rack route reflector, with the node mesh off.
    pub tor: bool,
    /// Pods created on each node at start.
    pub pods_per_node: usize,
    /// The fabric's links take GSO/GRO packets up to this many bytes (above 65536: BIG TCP,
    /// as on NICs that support it); `None` leaves the kernel's standard 64 KiB.
    #[serde(default)]
    pub fabric_offload: Option<u32>,
    /// Members of the lab's etcd cluster (1, 3 or 5), all in the fabric namespace.
    #[serde(default = "one_member")]
    pub etcd_members: usize,
    /// etcd serves clients over TLS and requires a client certificate; the agents and the
    /// CLI get the lab's CA and a client certificate.
    #[serde(default)]
    pub etcd_tls: bool,
    /// Directory holding the `wren` and `wren-cni` binaries.
    pub bin_dir: PathBuf,
    /// Print what happens, in words.
    pub verbose: bool,
    /// The agents forward pod-to-pod traffic with the fast path (`--fast-path`).
    #[serde(default = "fast_path_default")]
    pub fast_path: bool,
    /// The first this many nodes are wren route reflectors (one cluster id), with the node
    /// mesh off: every other node peers with them only.
    #[serde(default)]
    pub route_reflectors: usize,
    /// etcd gRPC proxies (`etcd grpc-proxy`, which coalesces identical watches) in the fabric
    /// namespace; node `i`'s agent talks to proxy `i mod N`. 0: agents talk to etcd itself.
    #[serde(default)]
    pub etcd_proxies: usize,
    /// The agents' reconcile interval (`--reconcile-interval`, whole seconds); `None`: the
    /// agent's default.
    #[serde(default)]
    pub reconcile_interval: Option<Duration>,
    /// Pods get an IPv6 address too, from [`POOL6_CIDR`]; nodes have IPv6 addresses
    /// (`--node-ipv6`), and BGP carries the IPv6 blocks between them. One subnet only.
    #[serde(default)]
    pub dual_stack: bool,
}

/// The most nodes a lab holds: one /24 fabric subnet, addresses from .11.
pub const MAX_NODES: usize = 200;

/// The cluster id of the lab's wren route reflectors.
pub const REFLECTOR_CLUSTER_ID: &str = "10.0.255.1";

fn fast_path_default() -> bool {
    true
}

impl LabSpec {
    /// A lab named `name` with `nodes` nodes, one subnet, no encapsulation, two pods per node,
    /// and binaries next to the running executable.
    pub fn new(name: &str, nodes: usize) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            encap: Encap::None,
            subnets: 1,
            tor: false,
            pods_per_node: 2,
            fabric_offload: None,
            etcd_members: 1,
            etcd_tls: false,
            bin_dir: default_bin_dir(),
            verbose: false,
            fast_path: true,
            route_reflectors: 0,
            etcd_proxies: 0,
            reconcile_interval: None,
            dual_stack: false,
        }
    }
}

fn one_member() -> usize {
    1
}

/// The directory of the `wren` binaries: next to the running executable, or its parent (test
/// executables live in `target/<profile>/deps`).
pub fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("wren").exists() {
        return dir;
    }
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    /// Remove everything when dropped (labs made by tests); `wren-lab up` keeps its lab.
    remove_on_drop: bool,
    /// First agent started → last agent ready, when this process brought the lab up.
    agents_ready_after: Option<Duration>,
}

/// One pod-to-pod reachability result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Source pod name.
    pub from: String,
    /// Destination pod name.
    pub to: String,
    /// Whether the ping got an answer.
    pub ok: bool,
}

impl Lab {
    /// Builds and starts a lab as `spec` says. On failure everything made so far is removed.
    pub fn up(spec: LabSpec) -> Result<Self> {
        names::validate(&spec.name)?;
        if spec.nodes == 0 || spec.nodes > MAX_NODES {
            return Err(LabError::Lab(format!(
                "--nodes must be between 1 and {MAX_NODES} (got {})",
                spec.nodes
            )));
        }
        if spec.dual_stack && (spec.subnets != 1 || spec.tor) {
            return Err(LabError::Lab(
                "a dual-stack lab has one subnet and no ToR".to_owned(),
            ));
        }
        if spec.route_reflectors > spec.nodes || (spec.route_reflectors > 0 && spec.tor) {
            return Err(LabError::Lab(format!(
                "--route-reflectors must be at most --nodes ({}) and cannot go with --tor (got {})",
                spec.nodes, spec.route_reflectors
            )));
        }
        if spec.etcd_proxies > 8 || (spec.etcd_proxies > 0 && spec.etcd_tls) {
            return Err(LabError::Lab(format!(
                "--etcd-proxies must be at most 8 and cannot go with --etcd-tls (got {})",
                spec.etcd_proxies
            )));
        }
        if !matches!(spec.etcd_members, 1 | 3 | 5) {
            return Err(LabError::Lab(format!(
                "--etcd-members must be 1, 3 or 5 (got {})",
                spec.etcd_members
            )));
        }
        if !matches!(spec.subnets, 1 | 2) {
            return Err(LabError::Lab(format!(
                "--subnets must be 1 or 2 (got {})",
                spec.subnets
            )));
        }
        for bin in ["wren", "wren-cni"] {
            if !spec.bin_dir.join(bin).exists() {
                return Err(LabError::Lab(format!(
                    "{} not found: build the binaries first (cargo build --bins)",
                    spec.bin_dir.join(bin).display()
                )));
            }
        }
        // A previous run with the same name may have crashed: clear its leftovers first.
        down_by_name(&spec.name)?;
        let dir = Path::new(STATE_ROOT).join(&spec.name);
        fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            state: LabState::new(spec, dir),
            remove_on_drop: true,
            agents_ready_after: None,
        };
        match lab.build() {
            Ok(()) => Ok(lab),
            Err(e) => {
                let logs = lab.agent_log_tails();
                if std::env::var_os("WREN_LAB_KEEP_FAILED").is_none() {
                    let _ = lab.down_inner();
                }
                lab.remove_on_drop = false;
                Err(LabError::Lab(format!("{e}{logs}")))
            }
        }
    }

    /// Re-opens a lab started by another process (`wren-lab ping` after `wren-lab up`).
    pub fn open(name: &str) -> Result<Self> {
        let state = LabState::load(&Path::new(STATE_ROOT).join(name))?;
        Ok(Lab {
            state,
            remove_on_drop: false,
            agents_ready_after: None,
        })
    }

    /// Keeps the lab running after this value is dropped (for `wren-lab up`).
    pub fn keep(mut self) {
        self.remove_on_drop = false;
    }

    /// The lab's recorded state: nodes, pods, addresses.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    fn say(&self, message: impl AsRef<str>) {
        if self.state.spec.verbose {
            println!("{}", message.as_ref());
        }
    }

    fn build(&mut self) -> Result<()> {
        let spec = self.state.spec.clone();
        self.say(format!(
            "Building lab `{}`: {} node(s) on {} subnet(s), encapsulation {}{}.",
            spec.name,
            spec.nodes,
            spec.subnets,
            spec.encap.as_arg(),
            if spec.tor {
                ", a BIRD route reflector as top-of-rack"
            } else {
                ""
            }
        ));
        topology::build_fabric(&mut self.state)?;
        self.state.save()?;
        self.say(format!(
            "  etcd ({} member(s){}) listens on {} inside the fabric namespace {}.",
            spec.etcd_members,
            if spec.etcd_tls {
                ", TLS with client certificates"
            } else {
                ""
            },
            self.state.etcd_endpoint,
            self.state.fabric_ns
        ));
        topology::start_etcd(&mut self.state)?;
        self.state.save()?;
        if spec.etcd_proxies > 0 {
            topology::start_etcd_proxies(&mut self.state)?;
            self.state.save()?;
            self.say(format!(
                "  {} etcd gRPC proxies in the fabric namespace; the agents use them: {}.",
                spec.etcd_proxies,
                self.state.etcd_proxies.join(", ")
            ));
        }
        self.configure_cluster()?;
        if spec.tor {
            topology::start_tor(&mut self.state)?;
            self.state.save()?;
            self.say("  BIRD 2 runs in the ToR namespace as route reflector for every node.");
        }
        // All agents start together; then each is waited for.
        for index in 0..spec.nodes {
            topology::add_node(&mut self.state, index)?;
        }
        self.state.save()?;
        if spec.nodes > topology::PIN_NEIGHBOURS_ABOVE {
            topology::pin_neighbours(&self.state)?;
            self.say("  Neighbour entries pinned: one kernel's table serves every node here.");
        }
        let started = Instant::now();
        for index in 0..spec.nodes {
            let node = self.state.nodes[index].name.clone();
            self.spawn_agent(&node)?;
        }
        for index in 0..spec.nodes {
            let node = self.state.nodes[index].name.clone();
            self.wait_agent_ready(&node)?;
            self.announce_node(&node)?;
        }
        self.agents_ready_after = Some(started.elapsed());
        for index in 0..spec.nodes {
            let node = self.state.nodes[index].name.clone();
            for _ in 0..spec.pods_per_node {
                self.add_pod(&node)?;
            }
        }
        Ok(())
    }

    fn configure_cluster(&mut self) -> Result<()> {
        let spec = &self.state.spec;
        let mut pool = vec![
            "pool".to_owned(),
            "add".into(),
            "lab".into(),
            "--cidr".into(),
            POOL_CIDR.into(),
            "--encap".into(),
            spec.encap.as_arg().into(),
        ];
        if spec.encap != Encap::None {
            pool.push("--encap-mode".into());
            pool.push(
                if spec.subnets == 2 {
                    "cross-subnet"
                } else {
                    "always"
                }
                .into(),
            );
        }
        self.wren_cli(&pool)?;
        self.say(format!(
            "  Pool `lab` {POOL_CIDR}: nodes claim /26 blocks from it."
        ));
        if spec.dual_stack {
            self.wren_cli(&["pool", "add", "lab6", "--cidr", POOL6_CIDR])?;
            self.say(format!(
                "  Pool `lab6` {POOL6_CIDR}: nodes claim /122 blocks from it; pods get an address of each pool."
            ));
        }
        if spec.route_reflectors > 0 {
            self.wren_cli(&["bgp", "config", "--mesh", "off"])?;
            self.say(format!(
                "  Node-to-node mesh off; nodes n1 to n{} are route reflectors (cluster id {REFLECTOR_CLUSTER_ID}) for the others.",
                spec.route_reflectors
            ));
        }
        if spec.tor {
            let tor_ip = self
                .state
                .tor_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            self.wren_cli(&["bgp", "config", "--mesh", "off"])?;
            self.wren_cli(&[
                "peer",
                "add",
                "tor",
                "--peer-ip",
                &tor_ip,
                "--as",
                &LAB_AS.to_string(),
            ])?;
            self.say(format!(
                "  Node-to-node mesh off; every node peers with the ToR {tor_ip}."
            ));
        }
        Ok(())
    }

    /// Runs `wren <args> --etcd-endpoints <lab etcd>` inside the fabric namespace.
    pub fn wren_cli<S: AsRef<str>>(&self, args: &[S]) -> Result<String> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.state.fabric_ns])
            .arg(self.state.spec.bin_dir.join("wren"))
            .args(args.iter().map(AsRef::as_ref))
            .args(self.state.etcd_flags());
        Ok(crate::netns::run(&mut command)?)
    }

    /// Adds one more node (joining a running lab) and starts its agent; returns its name.
    pub fn add_node(&mut self) -> Result<String> {
        let index = self.state.nodes.len();
        self.add_node_at(index)?;
        Ok(self.state.nodes[index].name.clone())
    }

    fn add_node_at(&mut self, index: usize) -> Result<()> {
        let node = topology::add_node(&mut self.state, index)?;
        self.state.save()?;
        self.start_agent(&node)?;
        self.announce_node(&node)
    }

    fn announce_node(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.say(format!(
            "  Node {} ({}) is up: its wren agent registered in etcd and peers over BGP.",
            n.name, n.address
        ));
        Ok(())
    }

    /// How long the agents took, from the first started to the last ready, when the lab came
    /// up (all agents start together).
    pub fn agents_ready_after(&self) -> Option<Duration> {
        self.agents_ready_after
    }

    /// Node `name`'s place in the lab (0 for n1).
    fn node_index(&self, name: &str) -> Result<usize> {
        self.state
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| LabError::Lab(format!("no node {name}")))
    }

    /// The recorded state of node `name`.
    pub fn node(&self, name: &str) -> Result<&NodeState> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                LabError::Lab(format!("no node `{name}` in lab {}", self.state.spec.name))
            })
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut NodeState> {
        let lab = self.state.spec.name.clone();
        self.state
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Lab(format!("no node `{name}` in lab {lab}")))
    }

    /// Starts (or restarts) the agent of node `name` and waits until it is ready.
    pub fn start_agent(&mut self, name: &str) -> Result<()> {
        self.spawn_agent(name)?;
        self.wait_agent_ready(name)
    }

    fn spawn_agent(&mut self, name: &str) -> Result<()> {
        let node = self.node(name)?.clone();
        let reflector_flags: &[&str] = if self.node_index(name)? < self.state.spec.route_reflectors
        {
            &["--route-reflector-cluster-id", REFLECTOR_CLUSTER_ID]
        } else {
            &[]
        };
        let log = self.state.dir.join(format!("{}.log", node.name));
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &node.ns])
            .arg(self.state.spec.bin_dir.join("wren"))
            .args([
                "agent",
                "--node-name",
                &node.name,
                "--node-ip",
                &node.address,
                "--socket",
                &node.socket.to_string_lossy(),
                "--metrics-addr",
                &format!("127.0.0.1:{}", names::METRICS_PORT),
                "--fast-path",
                if self.state.spec.fast_path {
                    "true"
                } else {
                    "false"
                },
            ])
            .args(self.state.agent_etcd_flags(self.node_index(name)?))
            .args(reflector_flags)
            .args(
                node.address6
                    .iter()
                    .flat_map(|address6| ["--node-ipv6", address6.as_str()]),
            )
            .args(
                self.state
                    .spec
                    .reconcile_interval
                    .iter()
                    .flat_map(|interval| {
                        [
                            "--reconcile-interval".to_owned(),
                            format!("{}s", interval.as_secs().max(1)),
                        ]
                    }),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = spawn_detached(&mut command)?;
        self.node_mut(name)?.agent = Some(AgentState { pid: child });
        self.state.save()
    }

    /// Node `name`'s `/readyz` answer: whether it is ready, and its text.
    pub fn readiness(&self, name: &str) -> Result<(bool, String)> {
        let node = self.node(name)?;
        let (status, body) = crate::http::get_in_ns(&node.ns, names::METRICS_PORT, "/readyz")?;
        Ok((status == 200, body))
    }

    /// How long an agent may take to become ready in this lab.
    fn ready_timeout(&self) -> Duration {
        let nodes = u32::try_from(self.state.nodes.len()).unwrap_or(u32::MAX);
        crate::vm::scaled(AGENT_READY_TIMEOUT + READY_TIMEOUT_PER_NODE.saturating_mul(nodes))
    }

    fn wait_agent_ready(&self, name: &str) -> Result<()> {
        let node = self.node(name)?;
        let deadline = Instant::now() + self.ready_timeout();
        loop {
            let status = crate::http::get_in_ns(&node.ns, names::METRICS_PORT, "/readyz");
            if matches!(status, Ok((200, _))) {
                return Ok(());
            }
            if let Some(agent) = &node.agent
                && !pid_alive(agent.pid)
            {
                return Err(LabError::Lab(format!(
                    "the agent of {name} exited during start-up; its log:\n{}",
                    tail(&self.state.dir.join(format!("{name}.log")), 4000)
                )));
            }
            if Instant::now() > deadline {
                // The start of the log says more about a node that never got going than the
                // tail the caller prints.
                return Err(LabError::Lab(format!(
                    "the agent of {name} was not ready within {:?} (last answer: {status:?})\n\
                     --- start of {name}'s log ---\n{}\n{}",
                    self.ready_timeout(),
                    head(&self.state.dir.join(format!("{name}.log")), 3000),
                    self.network_diagnostics(node),
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What a node whose agent lost the datastore saw: its routes, neighbours and TCP sockets
    /// and counters, the fabric's neighbours and listen counters, and the end of etcd's log,
    /// which tell a broken path to etcd from an agent that never asked.
    fn network_diagnostics(&self, node: &NodeState) -> String {
        let show = |ns: &str, args: &[&str]| {
            crate::netns::run(crate::netns::command_in(ns, args[0]).args(&args[1..]))
                .unwrap_or_else(|e| e.to_string())
        };
        let (name, fabric) = (&node.name, &self.state.fabric_ns);
        let fabric_counters = [
            "nstat",
            "-asz",
            "TcpExtListen*",
            "TcpPassiveOpens",
            "TcpEstabResets",
        ];
        format!(
            "--- {name}'s routes ---\n{}--- {name}'s neighbours ---\n{}\
             --- {name}'s TCP sockets ---\n{}--- {name}'s TCP counters ---\n{}\
             --- the fabric's neighbours ---\n{}--- the fabric's TCP counters ---\n{}\
             --- end of etcd's log ---\n{}\n--- {name}'s agent threads (name, state, kernel wait) ---\n{}",
            show(&node.ns, &["ip", "route", "show"]),
            show(&node.ns, &["ip", "neigh", "show"]),
            show(&node.ns, &["ss", "-tanoi"]),
            show(&node.ns, &["nstat", "-asz", "Tcp*"]),
            show(fabric, &["ip", "neigh", "show"]),
            show(fabric, &fabric_counters),
            tail(&self.state.dir.join("etcd.log"), 2000),
            node.agent.as_ref().map_or_else(
                || "no agent running".to_owned(),
                |agent| thread_states(agent.pid)
            ),
        )
    }

    /// The Prometheus text exposition of `node`'s agent (`/metrics`).
    pub fn metrics(&self, node: &str) -> Result<String> {
        let node = self.node(node)?;
        let (_, body) = crate::http::get_in_ns(&node.ns, names::METRICS_PORT, "/metrics")?;
        Ok(body)
    }

    /// Restarts every agent with the fast path on or off (`--fast-path`) and waits until
    /// each is ready again; pods and routes stay as they are.
    pub fn set_fast_path(&mut self, on: bool) -> Result<()> {
        self.state.spec.fast_path = on;
        self.state.save()?;
        let names: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            self.kill_agent(&name)?;
            self.start_agent(&name)?;
        }
        Ok(())
    }

    /// Kills etcd member `index` with `SIGKILL` (its data stays for
    /// [`restart_etcd`](Self::restart_etcd)).
    pub fn kill_etcd(&mut self, index: usize) -> Result<()> {
        let member = self.etcd_member(index)?;
        if let Some(pid) = member.pid.take() {
            unsafe {
                libc::kill(pid as i32, libc::SIGCONT);
            }
            kill_and_wait(pid, libc::SIGKILL, Duration::from_secs(5));
        }
        member.paused = false;
        self.state.save()
    }

    /// Starts etcd member `index` again on its data and waits until the cluster is healthy.
    pub fn restart_etcd(&mut self, index: usize) -> Result<()> {
        self.kill_etcd(index)?;
        topology::spawn_etcd_member(&mut self.state, index)?;
        self.state.save()?;
        if crate::process::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            topology::etcd_healthy(&self.state)
        }) {
            Ok(())
        } else {
            Err(LabError::Lab(format!(
                "etcd member {index} did not rejoin within 20 s; see {}",
                topology::etcd_log(&self.state, index).display()
            )))
        }
    }

    /// Restarts a one-member etcd on an empty data directory (its data lost, as after a
    /// disk replaced or a data directory removed) and waits until it answers.
    pub fn wipe_etcd(&mut self) -> Result<()> {
        if self.state.etcd_members.len() != 1 {
            return Err(LabError::Lab(
                "only a one-member etcd can be wiped (the others would not take it back)".into(),
            ));
        }
        self.kill_etcd(0)?;
        let data = self.state.dir.join("etcd-data-0");
        if data.exists() {
            fs::remove_dir_all(&data)?;
        }
        self.restart_etcd(0)
    }

    /// Pauses etcd member `index` with `SIGSTOP` (connections stay open, nothing answers).
    pub fn pause_etcd(&mut self, index: usize) -> Result<()> {
        self.signal_etcd(index, libc::SIGSTOP, true)
    }

    /// Resumes etcd member `index` after [`pause_etcd`](Self::pause_etcd).
    pub fn resume_etcd(&mut self, index: usize) -> Result<()> {
        self.signal_etcd(index, libc::SIGCONT, false)
    }

    fn signal_etcd(&mut self, index: usize, signal: i32, paused: bool) -> Result<()> {
        let member = self.etcd_member(index)?;
        if let Some(pid) = member.pid {
            unsafe {
                libc::kill(pid as i32, signal);
            }
            member.paused = paused;
        }
        self.state.save()
    }

    fn etcd_member(&mut self, index: usize) -> Result<&mut EtcdMemberState> {
        let count = self.state.etcd_members.len();
        self.state
            .etcd_members
            .get_mut(index)
            .ok_or_else(|| LabError::Lab(format!("no etcd member {index} (of {count})")))
    }

    /// The index of the etcd member that leads, as the running, unpaused members say.
    pub fn etcd_leader(&self) -> Option<usize> {
        let endpoints: Vec<&str> = self
            .state
            .etcd_members
            .iter()
            .filter(|m| m.pid.is_some() && !m.paused)
            .map(|m| m.endpoint.as_str())
            .collect();
        let text = crate::netns::run(
            topology::etcdctl(&self.state, &endpoints.join(","))
                .args(["endpoint", "status", "-w", "json"]),
        )
        .ok()?;
        let leader = crate::etcd::leader_endpoint(&text)?;
        self.state
            .etcd_members
            .iter()
            .position(|m| m.endpoint == leader)
    }

    /// Stops every running agent (`SIGTERM`), then starts them all together, as after a
    /// cluster-wide upgrade; returns the time from the first started to the last ready.
    pub fn restart_all_agents(&mut self) -> Result<Duration> {
        let names: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.agent.is_some())
            .map(|n| n.name.clone())
            .collect();
        for name in &names {
            self.stop_agent(name)?;
        }
        let started = Instant::now();
        for name in &names {
            self.spawn_agent(name)?;
        }
        for name in &names {
            self.wait_agent_ready(name)?;
        }
        Ok(started.elapsed())
    }

    /// Stops node `name`'s agent with `SIGTERM`, as an operator would: it ends cleanly, gives
    /// up its liveness key and leaves its routes and pods in the kernel.
    pub fn stop_agent(&mut self, name: &str) -> Result<()> {
        if let Some(agent) = self.node_mut(name)?.agent.take() {
            kill_and_wait(agent.pid, libc::SIGTERM, Duration::from_secs(10));
        }
        self.state.save()
    }

    /// Kills node `name`'s agent with `SIGKILL` (its routes, pods and registration stay).
    pub fn kill_agent(&mut self, name: &str) -> Result<()> {
        if let Some(agent) = self.node_mut(name)?.agent.take() {
            kill_and_wait(agent.pid, libc::SIGKILL, Duration::from_secs(5));
        }
        self.state.save()
    }

    /// Stops node `name`'s agent, removes the node from the cluster (`wren node rm`) and
    /// deletes its namespace and pods.
    pub fn remove_node(&mut self, name: &str) -> Result<()> {
        let pods: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|p| p.node == name)
            .map(|p| p.name.clone())
            .collect();
        for pod in pods {
            self.delete_pod(&pod)?;
        }
        self.stop_agent(name)?;
        self.wren_cli(&["node", "rm", name])?;
        let ns = self.node(name)?.ns.clone();
        topology::delete_ns(&ns);
        self.state.nodes.retain(|n| n.name != name);
        self.state.namespaces.retain(|n| *n != ns);
        self.state.save()
    }

    /// Creates a pod on node `node` through the real CNI plugin; returns its name.
    pub fn add_pod(&mut self, node: &str) -> Result<String> {
        let seq = self.state.next_pod;
        self.add_pod_as(node, format!("{node}-p{seq}"), None)
    }

    /// Creates the Kubernetes pod `namespace/name` on node `node` through the real CNI
    /// plugin, which passes its identity as a runtime does (`K8S_POD_NAMESPACE`,
    /// `K8S_POD_NAME`); the lab calls it `<namespace>-<name>`, which it returns.
    pub fn add_k8s_pod(&mut self, node: &str, namespace: &str, name: &str) -> Result<String> {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        self.add_pod_as(node, format!("{namespace}-{name}"), Some(args))
    }

    /// Labels the Kubernetes pod `namespace/name` (`wren workload label`, `KEY=VALUE` each)
    /// and creates it on `node` as [`Lab::add_k8s_pod`] does; returns its lab namespace and
    /// address.
    pub fn add_labelled_k8s_pod(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        labels: &[&str],
    ) -> Result<(String, Ipv4Addr)> {
        let mut args = vec!["workload".to_owned(), "label".to_owned()];
        args.push(format!("{namespace}/{name}"));
        args.extend(labels.iter().map(|l| (*l).to_owned()));
        self.wren_cli(&args)?;
        let pod_name = self.add_k8s_pod(node, namespace, name)?;
        let pod = self
            .state
            .pods
            .iter()
            .find(|p| p.name == pod_name)
            .ok_or_else(|| LabError::Lab(format!("pod {pod_name} not recorded")))?;
        Ok((pod.ns.clone(), pod.ip))
    }

    fn add_pod_as(
        &mut self,
        node: &str,
        pod_name: String,
        cni_args: Option<String>,
    ) -> Result<String> {
        let n = self.node(node)?.clone();
        let seq = self.state.next_pod;
        self.state.next_pod += 1;
        let ns = ns_name(&self.state.spec.name, &pod_name);
        topology::create_ns(&ns)?;
        self.state.namespaces.push(ns.clone());
        self.state.save()?;
        let container_id = format!("{}{:06}", self.state.spec.name, seq);
        let result = self.cni_call(
            &n,
            "ADD",
            &container_id,
            &ns,
            serde_json::Value::Null,
            cni_args.as_deref(),
        )?;
        let ip6 = first_ip(&result);
        let ip = first_ip(&result).ok_or_else(|| {
            LabError::Lab(format!(
                "CNI ADD for {pod_name} returned no address: {result}"
            ))
        })?;
        self.say(format!(
            "  Pod {pod_name} on {node}: {ip} (veth made by the wren agent through wren-cni)."
        ));
        self.state.pods.push(PodState {
            name: pod_name.clone(),
            node: node.to_owned(),
            ns,
            container_id,
            ip,
            ip6,
        });
        self.state.save()?;
        Ok(pod_name)
    }

    /// Deletes pod `name` through the real CNI plugin and removes its namespace.
    pub fn delete_pod(&mut self, name: &str) -> Result<()> {
        let pod = self
            .state
            .pods
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| LabError::Lab(format!("no pod `{name}`")))?;
        let node = self.node(&pod.node)?.clone();
        self.cni(&node, "DEL", &pod.container_id, &pod.ns)?;
        topology::delete_ns(&pod.ns);
        self.state.pods.retain(|p| p.name != name);
        self.state.namespaces.retain(|n| *n != pod.ns);
        self.state.save()
    }

    /// Calls `wren-cni` as a runtime does (environment + network config on stdin) for a pod
    /// of `node`, and returns its stdout.
    pub fn cni(
        &self,
        node: &NodeState,
        command: &str,
        container_id: &str,
        pod_ns: &str,
    ) -> Result<String> {
        self.cni_with(node, command, container_id, pod_ns, serde_json::Value::Null)
    }

    /// [`cni`](Self::cni) with `extra` (a JSON object) merged into the lab's network
    /// configuration: `{"ipam": {"pools": ["fast"]}}` say.
    pub fn cni_with(
        &self,
        node: &NodeState,
        command: &str,
        container_id: &str,
        pod_ns: &str,
        extra: serde_json::Value,
    ) -> Result<String> {
        self.cni_call(node, command, container_id, pod_ns, extra, None)
    }

    fn cni_call(
        &self,
        node: &NodeState,
        command: &str,
        container_id: &str,
        pod_ns: &str,
        extra: serde_json::Value,
        cni_args: Option<&str>,
    ) -> Result<String> {
        let mut config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "wren-lab",
            "type": "wren",
            "agentSocket": node.socket,
        });
        if self.state.spec.dual_stack {
            config["ipam"] = serde_json::json!({"assign_ipv4": true, "assign_ipv6": true});
        }
        if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        let mut cni = Command::new(self.state.spec.bin_dir.join("wren-cni"));
        if let Some(args) = cni_args {
            cni.env("CNI_ARGS", args);
        }
        let mut child = cni
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", crate::netns::path_of(pod_ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(config.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(LabError::Lab(format!(
                "wren-cni {command} for {container_id} on {} failed: {stdout}{}\n{}",
                node.name,
                String::from_utf8_lossy(&out.stderr),
                self.network_diagnostics(node),
            )));
        }
        Ok(stdout)
    }

    /// Pings every pod from every other pod (one echo each, in parallel).
    pub fn ping_matrix(&self) -> Vec<Reach> {
        let pods = &self.state.pods;
        let pairs: Vec<(&PodState, &PodState)> = pods
            .iter()
            .flat_map(|a| {
                pods.iter()
                    .filter(move |b| b.name != a.name)
                    .map(move |b| (a, b))
            })
            .collect();
        let results = std::sync::Mutex::new(Vec::with_capacity(pairs.len()));
        std::thread::scope(|scope| {
            for chunk in pairs.chunks(8) {
                let results = &results;
                scope.spawn(move || {
                    for (a, b) in chunk {
                        let ok = ping(&a.ns, &b.ip.to_string(), 3);
                        if let Ok(mut r) = results.lock() {
                            r.push(Reach {
                                from: a.name.clone(),
                                to: b.name.clone(),
                                ok,
                            });
                        }
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_default();
        results.sort_by(|x, y| (&x.from, &x.to).cmp(&(&y.from, &y.to)));
        results
    }

    /// The matrix as a table: one row per source pod, one column per destination.
    pub fn render_matrix(&self, results: &[Reach]) -> String {
        let pods = &self.state.pods;
        let by_pair: BTreeMap<(&str, &str), bool> = results
            .iter()
            .map(|r| ((r.from.as_str(), r.to.as_str()), r.ok))
            .collect();
        let width = pods.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4) + 2;
        let mut out = format!("{:width$}", "from \\ to");
        for p in pods {
            out.push_str(&format!("{:>width$}", p.name));
        }
        out.push('\n');
        for a in pods {
            out.push_str(&format!("{:width$}", a.name));
            for b in pods {
                let cell = match by_pair.get(&(a.name.as_str(), b.name.as_str())) {
                    _ if a.name == b.name => "-",
                    Some(true) => "ok",
                    Some(false) => "FAIL",
                    None => "?",
                };
                out.push_str(&format!("{cell:>width$}"));
            }
            out.push('\n');
        }
        out
    }

    /// Runs `wren status` against every node's agent.
    pub fn status(&self) -> Result<String> {
        let mut out = String::new();
        for node in &self.state.nodes {
            let text = self.node_status(&node.name)?;
            out.push_str(&format!("=== {} ({})\n{text}\n", node.name, node.address));
        }
        Ok(out)
    }

    /// Runs `wren status` against node `node`'s agent.
    pub fn node_status(&self, node: &str) -> Result<String> {
        let socket = self.node(node)?.socket.clone();
        Ok(crate::netns::run(
            Command::new(self.state.spec.bin_dir.join("wren"))
                .args(["status", "--socket"])
                .arg(socket),
        )?)
    }

    /// Runs `wren status -o json` against node `node`'s agent: the status document.
    pub fn node_status_json(&self, node: &str) -> Result<serde_json::Value> {
        let socket = self.node(node)?.socket.clone();
        let text = crate::netns::run(
            Command::new(self.state.spec.bin_dir.join("wren"))
                .args(["status", "-o", "json", "--socket"])
                .arg(socket),
        )?;
        serde_json::from_str(&text).map_err(|e| {
            LabError::Lab(format!(
                "{node}'s `wren status -o json` does not parse: {e}\n{text}"
            ))
        })
    }

    /// Node `node`'s fast path, from its `wren status -o json`.
    pub fn fast_path(&self, node: &str) -> Result<FastPathReport> {
        let status = self.node_status_json(node)?;
        FastPathReport::from_status(&status)
            .ok_or_else(|| LabError::Lab(format!("no fast path in {node}'s status:\n{status}")))
    }

    /// Runs a command inside the namespace of node or pod `member` and returns its stdout.
    pub fn exec(&self, member: &str, program: &str, args: &[&str]) -> Result<String> {
        let ns = match self.state.pods.iter().find(|p| p.name == member) {
            Some(pod) => pod.ns.clone(),
            None => self.node(member)?.ns.clone(),
        };
        Ok(crate::netns::run(
            Command::new("ip")
                .args(["netns", "exec", &ns, program])
                .args(args),
        )?)
    }

    /// Node `node`'s routes (IPv4 main table), as `ip route` prints them.
    pub fn routes(&self, node: &str) -> Result<String> {
        let ns = self.node(node)?.ns.clone();
        Ok(crate::netns::run(
            Command::new("ip").args(["-n", &ns, "route", "show"]),
        )?)
    }

    /// Removes every namespace, process and file of the lab.
    pub fn down(mut self) -> Result<()> {
        self.remove_on_drop = false;
        self.down_inner()
    }

    fn down_inner(&mut self) -> Result<()> {
        let name = self.state.spec.name.clone();
        down_by_name(&name)
    }

    fn agent_log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.state.nodes {
            let path = self.state.dir.join(format!("{}.log", node.name));
            out.push_str(&format!(
                "\n--- log of {} ---\n{}",
                node.name,
                tail(&path, 3000)
            ));
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if std::thread::panicking() {
                eprintln!("{}", self.agent_log_tails());
            }
            if let Err(e) = self.down_inner() {
                eprintln!("lab {}: cleanup failed: {e}", self.state.spec.name);
            }
        }
    }
}

/// Removes everything of lab `name`: processes inside its namespaces (by pid), the
/// namespaces, and its state directory. Works without a state file.
pub fn down_by_name(name: &str) -> Result<()> {
    names::validate(name)?;
    let prefix = names::ns_prefix(name);
    let namespaces: Vec<String> = crate::netns::run(Command::new("ip").args(["netns", "list"]))?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    // Pods first, then nodes, then the fabric: processes end before their namespace goes.
    for ns in &namespaces {
        for pid in topology::pids_in(ns) {
            kill_and_wait(pid, libc::SIGTERM, Duration::from_secs(5));
        }
    }
    for ns in &namespaces {
        topology::delete_ns(ns);
    }
    let dir = Path::new(STATE_ROOT).join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Names of labs with state or namespaces on this machine.
pub fn list_labs() -> Vec<String> {
    let mut labs: Vec<String> = fs::read_dir(STATE_ROOT)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    labs.sort();
    labs
}

/// The first address of type `A` (IPv4 or IPv6) in a CNI result.
fn first_ip<A: std::str::FromStr>(result: &str) -> Option<A> {
    let value: serde_json::Value = serde_json::from_str(result).ok()?;
    value
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse::<A>().ok())
        .next()
}

/// Pings in the background from every pod of a lab to the next pod (the last to the first),
/// five a second; stopped, with their summaries read, by [`Pingers::finish`], or killed when
/// dropped.
#[derive(Debug)]
pub struct Pingers(Vec<(String, Child)>);

impl Pingers {
    /// Starts one `ping` per pod of `lab`.
    pub fn start(lab: &Lab) -> Self {
        let pods = &lab.state().pods;
        let pairs: Vec<(String, String, String)> = (0..pods.len())
            .map(|i| {
                let (from, to) = (&pods[i], &pods[(i + 1) % pods.len()]);
                let label = format!("{}→{}", from.name, to.name);
                (label, from.ns.clone(), to.ip.to_string())
            })
            .collect();
        Self::between(&pairs)
    }

    /// Starts one `ping` per (label, source namespace, destination address).
    pub fn between(pairs: &[(String, String, String)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(label, from, to)| {
                    let child = Command::new("ip")
                        .args(["netns", "exec", from, "ping", "-n", "-q", "-i", "0.2", to])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start ping");
                    (label.clone(), child)
                })
                .collect(),
        )
    }

    /// Stops the pings (`SIGINT`: ping prints its summary) and returns each pair's summary
    /// line (`n1-p0→n2-p1: 100 packets transmitted, 100 received, 0% packet loss, …`).
    pub fn finish(mut self) -> Vec<String> {
        std::mem::take(&mut self.0)
            .into_iter()
            .filter_map(|(pair, child)| {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
                let out = child.wait_with_output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let summary = text.lines().find(|l| l.contains("packets transmitted"))?;
                Some(format!("{pair}: {summary}"))
            })
            .collect()
    }
}

impl Drop for Pingers {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One ping from namespace `ns` to `ip`, retried `attempts` times.
pub fn ping(ns: &str, ip: &str, attempts: u32) -> bool {
    (0..attempts).any(|_| {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1", ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn spawn_detached(command: &mut Command) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    // A session of its own: the process outlives `wren-lab up` and no terminal signal
    // reaches it; `down` ends it by pid.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child.id();
    // Reaped by the kernel's init when this process exits; in tests, `kill_and_wait` reaps.
    std::mem::forget(child);
    Ok(pid)
}

fn pid_alive(pid: u32) -> bool {
    let mut status = 0;
    // Reap it if it is our exited child, so a zombie does not count as alive.
    let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    if reaped == pid as i32 {
        return false;
    }
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn kill_and_wait(pid: u32, signal: i32, grace: Duration) {
    unsafe {
        libc::kill(pid as i32, signal);
    }
    let deadline = Instant::now() + grace;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
            let _ = pid_alive(pid);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line per thread of process `pid`: its name, scheduler state (`D`: waiting in the
/// kernel, uninterruptibly) and the kernel function it waits in.
fn thread_states(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone\n");
    };
    let mut lines: Vec<String> = tasks
        .filter_map(|task| task.ok())
        .map(|task| {
            let read = |file: &str| {
                fs::read_to_string(task.path().join(file))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            // The state follows the parenthesised name, which may itself hold spaces.
            let stat = read("stat");
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            format!("{} {state} {}", read("comm"), read("wchan"))
        })
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

fn head(path: &Path, bytes: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let end = (0..=bytes.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[..end].to_owned()
}

fn tail(path: &Path, bytes: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// A lab name unique to this test process: `tag` (one letter) and the pid.
pub fn test_lab_name(tag: char) -> String {
    format!("{tag}{}", std::process::id() % 10_000_000)
}

/// Checks what an end-to-end test on the lab needs (see [`crate::prereq`]): root, etcd and
/// etcdctl, ping,
/// the built `wren` and `wren-cni` binaries, and BIRD when `tor` is set.
#[track_caller]
pub fn require_lab(tor: bool) -> bool {
    let bin = default_bin_dir();
    crate::prereq::require_root()
        && crate::prereq::require_command("etcd")
        && crate::prereq::require_command("etcdctl")
        && crate::prereq::require_command("ping")
        && (!tor || crate::prereq::require_command("bird"))
        && crate::prereq::require(
            &format!(
                "the wren binaries in {} (run `cargo build --bins` first)",
                bin.display()
            ),
            bin.join("wren").exists() && bin.join("wren-cni").exists(),
        )
}

impl Lab {
    /// Waits until every node's fast path covers exactly that node's pods and includes
    /// `uplink` among its uplinks (on a kernel without tcx: until each reports it unavailable,
    /// with no pod). The error names the nodes still short and shows every status.
    pub fn wait_fast_paths(&self, timeout: Duration, uplink: &str) -> Result<(), String> {
        let on = crate::prereq::kernel_has_tcx();
        let deadline = Instant::now() + crate::vm::scaled(timeout);
        loop {
            let mut pending = Vec::new();
            for node in &self.state.nodes {
                let pods = self
                    .state
                    .pods
                    .iter()
                    .filter(|p| p.node == node.name && on)
                    .count();
                let covered = self.fast_path(&node.name).is_ok_and(|r| {
                    r.on == on && r.pods == pods && (!on || r.uplinks.iter().any(|u| u == uplink))
                });
                if !covered {
                    pending.push(node.name.clone());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the fast path of {} does not cover its pods and {uplink}:\n{}",
                    pending.join(", "),
                    self.status().unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pings the full matrix until every pod reaches every pod, or `timeout` passes (routes may
    /// still be settling right after a change). The error lists the failing pairs, the matrix
    /// and `node`'s routing table.
    pub fn wait_full_matrix(&self, timeout: Duration, node: &str) -> Result<(), String> {
        let deadline = Instant::now() + crate::vm::scaled(timeout);
        loop {
            let results = self.ping_matrix();
            let failed = failures(&results);
            if failed.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pods cannot reach each other: {}\n{}\nroutes of {node}:\n{}",
                    failed.join(", "),
                    self.render_matrix(&results),
                    self.routes(node).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Pod pairs of a ping matrix that failed, as `from→to` strings.
pub fn failures(results: &[Reach]) -> Vec<String> {
    results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}→{}", r.from, r.to))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::FastPathReport;

    #[test]
    fn reads_the_fast_path_of_the_status_document() {
        let on = serde_json::json!({
            "node": "n1",
            "fastPath": {
                "state": "on", "pods": 2, "uplinks": ["eth0", "wren.vxlan"],
                "forwarded": 1234, "toStack": 5, "vxlanPeers": 3, "encapsulated": 1000,
                "translated": 42, "policedCarried": 7
            }
        });
        assert_eq!(
            FastPathReport::from_status(&on),
            Some(FastPathReport {
                on: true,
                pods: 2,
                uplinks: vec!["eth0".into(), "wren.vxlan".into()],
                forwarded: 1234,
                to_stack: 5,
                encapsulated: 1000,
                translated: 42,
                policed_carried: 7,
            })
        );
        let off = serde_json::json!({"fastPath": {
            "state": "unavailable", "reason": "no BPF", "pods": 0, "uplinks": [],
            "forwarded": 0, "toStack": 0
        }});
        assert!(!FastPathReport::from_status(&off).unwrap().on);
        assert_eq!(
            FastPathReport::from_status(&serde_json::json!({"node": "n1"})),
            None
        );
    }
}
