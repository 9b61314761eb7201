//! What a lab made, kept in `<state dir>/state.json` so another process can use or remove it.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{LabError, LabSpec, Result};

/// Everything a running lab consists of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The lab's shape.
    pub spec: LabSpec,
    /// State directory: state file, logs, agent sockets, etcd data.
    pub dir: PathBuf,
    /// The namespace joining the nodes (bridge, or router with one bridge per subnet); etcd
    /// runs here.
    pub fabric_ns: String,
    /// Every namespace made, in creation order.
    pub namespaces: Vec<String>,
    /// etcd client URLs, comma separated (one per member), reachable from every node.
    pub etcd_endpoint: String,
    /// etcd's members, in order.
    #[serde(default)]
    pub etcd_members: Vec<EtcdMemberState>,
    /// The CA and the client certificate, when etcd speaks TLS.
    #[serde(default)]
    pub etcd_tls: Option<crate::etcd::EtcdTls>,
    /// Client URLs of the etcd gRPC proxies, with `--etcd-proxies`.
    #[serde(default)]
    pub etcd_proxies: Vec<String>,
    /// Address of the ToR route reflector, with `--tor`.
    pub tor_ip: Option<Ipv4Addr>,
    /// BIRD's process id, with `--tor`.
    pub tor_pid: Option<u32>,
    /// The nodes.
    pub nodes: Vec<NodeState>,
    /// The pods.
    pub pods: Vec<PodState>,
    /// Sequence number of the next pod.
    pub next_pod: usize,
}

/// One member of the lab's etcd cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdMemberState {
    /// Member name (`lab0`, …).
    pub name: String,
    /// Its client URL.
    pub endpoint: String,
    /// Its process id, while it runs.
    pub pid: Option<u32>,
    /// Stopped with `SIGSTOP`.
    #[serde(default)]
    pub paused: bool,
}

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name (`n1`, …), also its name in etcd.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address with prefix length (`10.0.0.11/24`).
    pub address: String,
    /// Its IPv6 address with prefix length (`fd00:10::11/64`), in a dual-stack lab.
    #[serde(default)]
    pub address6: Option<String>,
    /// Its subnet (1 or 2).
    pub subnet: u8,
    /// Its agent's local API socket.
    pub socket: PathBuf,
    /// Its running agent.
    pub agent: Option<AgentState>,
}

impl NodeState {
    /// The node's address without prefix length.
    pub fn ip(&self) -> &str {
        self.address.split('/').next().unwrap_or(&self.address)
    }
}

/// A running agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    /// Its process id.
    pub pid: u32,
}

/// One pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name (`n1-p0`, …).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its namespace.
    pub ns: String,
    /// The container id given to the CNI plugin.
    pub container_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack lab.
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
}

impl LabState {
    /// A lab with nothing made yet.
    pub fn new(spec: LabSpec, dir: PathBuf) -> Self {
        Self {
            spec,
            dir,
            fabric_ns: String::new(),
            namespaces: Vec::new(),
            etcd_endpoint: String::new(),
            etcd_members: Vec::new(),
            etcd_tls: None,
            etcd_proxies: Vec::new(),
            tor_ip: None,
            tor_pid: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            next_pod: 0,
        }
    }

    /// The `--etcd-*` flags that reach the lab's etcd: every endpoint, and the CA and client
    /// certificate with TLS.
    pub fn etcd_flags(&self) -> Vec<String> {
        self.etcd_flags_for(&self.etcd_endpoint)
    }

    /// The etcd flags of node number `index`'s agent: through its gRPC proxy when the lab
    /// has proxies, otherwise as [`etcd_flags`](Self::etcd_flags).
    pub fn agent_etcd_flags(&self, index: usize) -> Vec<String> {
        match self.etcd_proxies.len() {
            0 => self.etcd_flags(),
            n => self.etcd_flags_for(&self.etcd_proxies[index % n]),
        }
    }

    fn etcd_flags_for(&self, endpoints: &str) -> Vec<String> {
        let mut flags = vec!["--etcd-endpoints".to_owned(), endpoints.to_owned()];
        if let Some(tls) = &self.etcd_tls {
            for (flag, path) in [
                ("--etcd-ca", &tls.ca),
                ("--etcd-cert", &tls.client_cert),
                ("--etcd-key", &tls.client_key),
            ] {
                flags.push(flag.to_owned());
                flags.push(path.to_string_lossy().into_owned());
            }
        }
        flags
    }

    fn file(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Writes the state file (atomically: write, then rename).
    pub fn save(&self) -> Result<()> {
        let path = Self::file(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Reads the state file of the lab in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::file(dir);
        let text = fs::read_to_string(&path).map_err(|e| {
            LabError::Lab(format!(
                "no lab state at {} ({e}); is the lab up? (`wren-lab up`)",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| LabError::State {
            path,
            reason: e.to_string(),
        })
    }
}
