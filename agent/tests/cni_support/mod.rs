//! A one-node wren for CNI tests, built from real parts: a "node" network namespace with an
//! uplink and default routes, a real etcd inside it, the agent's local API (real IPAM, real
//! dataplane, real workload records) served from a thread that lives in the node's namespace,
//! and pod namespaces. The `wren-cni` binary is called the way a runtime calls it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use wren_agent::api::{bind_socket, cni_routes, serve};
use wren_agent::cni::{CniHandler, KernelPods};
use wren_agent::dataplane::prepare_node;
use wren_ipam::{Ipam, PoolSpec};
use wren_model::keys;
use wren_store::Store;
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_tests::etcd::{Etcd, EtcdOptions};
use wren_tests::netns::{NetNs, node_with_uplink, run_in};
use wren_tests::prereq;

/// The node's address on its uplink, and the uplink's.
pub const NODE_IP: &str = "192.0.2.1";
/// The uplink router's address (a client outside the node).
pub const UPLINK_IP: &str = "192.0.2.254";
/// Name the node registers its workloads under.
pub const NODE_NAME: &str = "node-a";
/// The network name of the test conflist.
pub const NETWORK: &str = "wrennet";

/// The `wren-cni` binary next to this test's executable (`target/<profile>/wren-cni`), built
/// by `cargo build` (the README's `make test` builds every binary first).
pub fn plugin_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let binary = profile_dir.join("wren-cni");
    binary.is_file().then_some(binary)
}

/// Checks everything these tests need; false (after a `skipped:` line) when something is
/// missing outside CI.
pub fn ready() -> bool {
    prereq::require_root()
        && prereq::require_command("ip")
        && prereq::require_command("ping")
        && prereq::require_command("etcd")
        && prereq::require(
            "the wren-cni binary is not built (cargo build -p wren-cni)",
            plugin_binary().is_some(),
        )
}

/// The agent's local API served from a thread inside the node's namespace.
pub struct Agent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    fn start(netns: &str, endpoint: String, socket: PathBuf) -> Agent {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let netns = netns.to_string();
        let thread = std::thread::spawn(move || {
            let ran = run_in(&netns, move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return ready_tx.send(Err(e.to_string())).unwrap_or(()),
                };
                runtime.block_on(async move {
                    let store: Arc<dyn Store> = match connect(endpoint).await {
                        Ok(s) => Arc::new(s),
                        Err(e) => return ready_tx.send(Err(e)).unwrap_or(()),
                    };
                    let ipam = Arc::new(Ipam::new(store.clone()));
                    let handler = CniHandler::new(NODE_NAME, store, ipam, Arc::new(KernelPods));
                    let bound = match bind_socket(&socket) {
                        Ok(b) => b,
                        Err(e) => return ready_tx.send(Err(e.to_string())).unwrap_or(()),
                    };
                    let _ = ready_tx.send(Ok(()));
                    let routes = cni_routes(Arc::new(handler), None);
                    let _ = serve(bound, routes, async {
                        let _ = stop_rx.await;
                    })
                    .await;
                });
            });
            if let Err(e) = ran {
                eprintln!("agent thread could not enter the node: {e}");
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("agent did not start: {e}"),
            Err(e) => panic!("agent did not start: {e}"),
        }
        Agent {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connect(endpoint: String) -> Result<EtcdStore, String> {
    EtcdStore::connect(EtcdConfig {
        endpoints: vec![endpoint],
        request_timeout: Duration::from_secs(5),
        dial_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// One node with etcd and the agent; pods are made with [`Node::pod`].
pub struct Node {
    // Field order is drop order: the agent and etcd stop before their namespace goes.
    pub agent: Option<Agent>,
    pub etcd: Etcd,
    pub ns: NetNs,
    pub uplink: NetNs,
    pub socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Node {
    /// A node whose IPAM has `pools` (name, CIDR, block size) before the agent starts.
    pub fn start(tag: &str, pools: &[(&str, &str, u8)]) -> Node {
        Self::start_with(tag, pools, EtcdOptions::default())
    }

    /// [`Node::start`] with etcd started as `etcd` says (its namespace is set to the node's).
    pub fn start_with(tag: &str, pools: &[(&str, &str, u8)], etcd: EtcdOptions) -> Node {
        let (ns, uplink) = node_with_uplink(tag).unwrap();
        let setup = ns.enter(prepare_node).unwrap().unwrap();
        assert!(setup.warnings.is_empty(), "{:?}", setup.warnings);
        let etcd = Etcd::start_with(EtcdOptions {
            netns: Some(ns.name().to_string()),
            ..etcd
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut node = Node {
            agent: None,
            etcd,
            ns,
            uplink,
            socket,
            dir,
        };
        let specs: Vec<PoolSpec> = pools
            .iter()
            .map(|(name, cidr, block)| PoolSpec::new(*name, *cidr).block_size(*block))
            .collect();
        node.query(async move |ipam: Ipam, _: Arc<dyn Store>| {
            for spec in &specs {
                ipam.add_pool(spec).await.unwrap();
            }
        });
        node.start_agent();
        node
    }

    /// Starts (or restarts) the agent.
    pub fn start_agent(&mut self) {
        self.agent = None;
        self.agent = Some(Agent::start(
            self.ns.name(),
            self.etcd.endpoint(),
            self.socket.clone(),
        ));
    }

    /// Stops the agent (its socket file goes with it).
    pub fn stop_agent(&mut self) {
        self.agent = None;
    }

    /// Runs `f` with a fresh IPAM and store connection from inside the node (where etcd is).
    pub fn query<R: Send + 'static>(
        &self,
        f: impl AsyncFnOnce(Ipam, Arc<dyn Store>) -> R + Send + 'static,
    ) -> R {
        let endpoint = self.etcd.endpoint();
        run_in(self.ns.name(), move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let store: Arc<dyn Store> = Arc::new(connect(endpoint).await.unwrap());
                f(Ipam::new(store.clone()), store).await
            })
        })
        .unwrap()
    }

    /// Keys of every workload record (`workloads/…`).
    pub fn workload_keys(&self) -> Vec<String> {
        self.query(async |_, store: Arc<dyn Store>| {
            store
                .list(keys::WORKLOADS)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|kv| kv.key)
                .collect()
        })
    }

    /// Addresses allocated in every pool together.
    pub fn allocated(&self) -> u64 {
        self.query(async |ipam: Ipam, _| {
            ipam.usage()
                .await
                .unwrap()
                .pools
                .iter()
                .map(|p| p.used())
                .sum()
        })
    }

    /// Addresses held by an IPAM handle.
    pub fn handle_addresses(&self, handle: &str) -> Vec<std::net::IpAddr> {
        let handle = handle.to_string();
        self.query(async move |ipam: Ipam, _| ipam.handle_addresses(&handle).await.unwrap())
    }

    /// Host-side links wren made (`wren…`), by name.
    pub fn wren_links(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            })
            .filter(|n| n.starts_with("wren"))
            .collect()
    }

    /// Routes wren installed in the node (protocol 201), both families.
    pub fn wren_routes(&self) -> String {
        let v4 = self
            .ns
            .ip(&["-4", "route", "show", "proto", "201"])
            .unwrap();
        let v6 = self
            .ns
            .ip(&["-6", "route", "show", "proto", "201"])
            .unwrap();
        format!("{v4}{v6}")
    }

    /// Asserts the node holds nothing for any pod: no links, routes, records or addresses.
    pub fn assert_empty(&self) {
        assert!(
            self.wren_links().is_empty(),
            "links left: {:?}",
            self.wren_links()
        );
        assert!(
            self.wren_routes().trim().is_empty(),
            "routes left:\n{}",
            self.wren_routes()
        );
        assert!(
            self.workload_keys().is_empty(),
            "records left: {:?}",
            self.workload_keys()
        );
        assert_eq!(self.allocated(), 0, "addresses left allocated");
    }

    /// A pod network namespace.
    pub fn pod(&self, tag: &str) -> NetNs {
        NetNs::new(tag).unwrap()
    }

    /// The network configuration of the test network, with `extra` keys merged in.
    pub fn config(&self, version: &str, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version, "name": NETWORK, "type": "wren",
            "agentSocket": self.socket.display().to_string(), "mtu": 1450,
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            conf[k] = v;
        }
        conf
    }
}

/// One CNI invocation's environment.
pub struct Call<'a> {
    pub command: &'a str,
    pub container: &'a str,
    pub netns: Option<PathBuf>,
    pub ifname: &'a str,
}

impl<'a> Call<'a> {
    /// `command` for `container`'s `eth0` in `pod`.
    pub fn new(command: &'a str, container: &'a str, pod: Option<&NetNs>) -> Self {
        Self {
            command,
            container,
            netns: pod.map(NetNs::path),
            ifname: "eth0",
        }
    }

    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::from([
            ("CNI_COMMAND".to_string(), self.command.to_string()),
            ("CNI_CONTAINERID".to_string(), self.container.to_string()),
            ("CNI_IFNAME".to_string(), self.ifname.to_string()),
            ("CNI_PATH".to_string(), "/usr/lib/cni".to_string()),
            (
                "CNI_ARGS".to_string(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
                    self.container
                ),
            ),
        ]);
        if let Some(netns) = &self.netns {
            env.insert("CNI_NETNS".into(), netns.display().to_string());
        }
        env
    }
}

/// What a plugin printed and whether it succeeded.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

/// Runs `program` (in `netns` when given, as a runtime running in that namespace would) with
/// the call's environment and `config` on stdin.
pub fn invoke(program: &Path, netns: Option<&NetNs>, call: &Call, config: &Value) -> Reply {
    let mut command = match netns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    };
    let mut child = command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(call.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    Reply {
        ok: out.status.success(),
        json: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `wren-cni` as a runtime does.
pub fn wren(call: &Call, config: &Value) -> Reply {
    invoke(
        &plugin_binary().expect("checked by ready()"),
        None,
        call,
        config,
    )
}

/// Pings `to` from `from`, allowing for neighbour resolution on the first try.
pub fn reachable(from: &NetNs, to: &str) -> bool {
    (0..3).any(|_| from.exec("ping", &["-c", "1", "-W", "2", to]).is_ok())
}

/// The pod's address of a family from an ADD result.
pub fn address(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| {
            panic!(
                "no {} address in {result}",
                if v6 { "IPv6" } else { "IPv4" }
            )
        })
        .split('/')
        .next()
        .unwrap()
        .to_string()
}
