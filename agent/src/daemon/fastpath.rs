//! The BPF fast path ([`wren_fastpath`]), kept in step with the view on every pass.
//!
//! What it should cover is a pure function of the view ([`FastPathDesired::of`]): the pools'
//! IPv4 prefixes, this node's pods (host-side veth → the pod's IPv4 address) and the other
//! nodes' VXLAN devices (MAC → node address, as in `wren.vxlan`'s forwarding table). The
//! kernel side adds the devices traffic for local pods arrives on: the underlay interface and
//! the tunnel devices that exist. Attachments of pods that left are dropped.
//!
//! While `wren.vxlan` exists, the program wraps pod traffic routed into it itself, with the
//! device's settings (its VNI and port, the node's address out of the underlay, the local
//! port range for source ports, the default TTL); the device still decapsulates, and still
//! carries whatever the program leaves to the stack.
//!
//! The fast path never owns correctness: if it cannot load or attach (no tcx before 6.6, no BPF
//! privilege) or is turned off (`fastPath = false`), or the agent stops, the host stack
//! routes pods exactly as before. Status says which and why.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use wren_fastpath::{FastPath, VxlanConfig};

use super::encap::vxlan_peers;
use super::view::ClusterView;
use crate::dataplane::ipip::IPIP_DEVICE;
use crate::dataplane::mtu::PassUnderlay;
use crate::dataplane::vxlan::{VXLAN_DEVICE, VXLAN_PORT, VXLAN_VNI};
use crate::metrics::Metrics;
use crate::sync::lock;

/// What the fast path should cover, from the view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastPathDesired {
    /// IPv4 prefixes of every pool, enabled or not (a disabled pool still has pods).
    pub pools: Vec<Ipv4Net>,
    /// This node's pods: host-side interface → the pod's IPv4 address.
    pub pods: BTreeMap<String, Ipv4Addr>,
    /// The other nodes' VXLAN devices: MAC → the node's underlay address.
    pub vxlan_peers: Vec<([u8; 6], Ipv4Addr)>,
    /// This node's pods some network policy isolates, by IPv4 address: their packets go
    /// to the host stack, where netfilter enforces the policy.
    pub policed: Vec<Ipv4Addr>,
}

impl FastPathDesired {
    /// The pools, the pods with an IPv4 address of node `me`, and the other nodes' VXLAN
    /// devices.
    pub fn of(view: &ClusterView, me: &str) -> Self {
        let pools = view
            .pools
            .values()
            .filter_map(|pool| match pool.cidr {
                IpNet::V4(net) => Some(net),
                IpNet::V6(_) => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let pods = view
            .workloads
            .values()
            .filter_map(|w| {
                let address = w.addresses.iter().find_map(|a| match a.addr() {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })?;
                Some((w.host_interface.clone(), address))
            })
            .collect();
        let vxlan_peers = vxlan_peers(me, view)
            .into_iter()
            .map(|peer| (peer.mac, peer.node_ip))
            .collect();
        Self {
            pools,
            pods,
            vxlan_peers,
            policed: Vec::new(),
        }
    }

    /// The same, with the pods `plan` isolates policed.
    pub fn with_policed(mut self, plan: &wren_policy::NodePlan) -> Self {
        self.policed = plan
            .policed_addresses()
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        self
    }
}

/// Whether the fast path runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastPathState {
    /// No pass has run yet: the agent waits for its first listing of the datastore (at
    /// start, or through an outage since). Pods are routed as the kernel already has them.
    #[default]
    Pending,
    /// Turned off by configuration.
    Off,
    /// Wanted, but this kernel or this process cannot run it.
    Unavailable,
    /// Loaded and attached.
    On,
}

/// The fast path as `wren status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FastPathStatus {
    /// Whether it runs.
    pub state: FastPathState,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Pods attached.
    pub pods: usize,
    /// Uplink and tunnel devices attached.
    pub uplinks: Vec<String>,
    /// Packets forwarded past the host stack since the agent started.
    pub forwarded: u64,
    /// Pool-to-pool packets left to the host stack since the agent started.
    #[serde(alias = "to_stack")]
    pub to_stack: u64,
    /// Remote VXLAN devices the program encapsulates for (0: VXLAN is left to the device).
    #[serde(default, alias = "vxlan_peers")]
    pub vxlan_peers: usize,
    /// Of the forwarded packets, those the program wrapped in VXLAN.
    #[serde(default)]
    pub encapsulated: u64,
    /// Pool-to-pool packets left to the host stack because netfilter translated their
    /// connection (hostPort, Service, SNAT).
    #[serde(default)]
    pub translated: u64,
    /// Packets from or to pods network policy isolates that the program carried, their
    /// connection allowed by the rules in force.
    #[serde(default)]
    pub policed_carried: u64,
    /// What failed in the last pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl FastPathStatus {
    /// The `wren status` line.
    pub fn render(&self) -> String {
        match self.state {
            FastPathState::Pending => {
                "Fast path: not set up yet, waiting for the datastore's first answer\n".to_owned()
            }
            FastPathState::Off => "Fast path: off (fastPath = false)\n".to_owned(),
            FastPathState::Unavailable => format!(
                "Fast path: unavailable, pods are routed by the host stack: {}\n",
                self.reason.as_deref().unwrap_or("unknown reason")
            ),
            FastPathState::On => {
                let mut line = format!(
                    "Fast path: on, {} pod{} and {} ({}); {} packets forwarded, {} left to the host stack\n",
                    self.pods,
                    if self.pods == 1 { "" } else { "s" },
                    if self.uplinks.is_empty() {
                        "no uplink".to_owned()
                    } else {
                        self.uplinks.join(", ")
                    },
                    if self.uplinks.len() == 1 {
                        "uplink"
                    } else {
                        "uplinks"
                    },
                    self.forwarded,
                    self.to_stack,
                );
                if self.translated > 0 {
                    line.push_str(&format!(
                        "  Connections translated by netfilter (hostPort, Service, SNAT): {} packets left to the host stack\n",
                        self.translated
                    ));
                }
                if self.policed_carried > 0 {
                    line.push_str(&format!(
                        "  Connections network policy allowed: {} packets carried\n",
                        self.policed_carried
                    ));
                }
                if self.vxlan_peers > 0 || self.encapsulated > 0 {
                    line.push_str(&format!(
                        "  VXLAN in the fast path: {} remote node{}, {} packets encapsulated\n",
                        self.vxlan_peers,
                        if self.vxlan_peers == 1 { "" } else { "s" },
                        self.encapsulated,
                    ));
                }
                for e in &self.errors {
                    line.push_str(&format!("  fast path error: {e}\n"));
                }
                line
            }
        }
    }
}

enum Kernel {
    Off,
    Unavailable(String),
    On(Box<FastPath>),
}

/// Index of the loopback device, present in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Checks that the loaded program can be attached at all, by attaching it to loopback and
/// detaching it at once. A kernel before 6.6 verifies and loads the program but has no tcx
/// links (`EINVAL`): without this, every pass would try and fail on every device, and the
/// status would say "on" with nothing attached.
fn attach_probed(mut fast: FastPath) -> Result<FastPath, String> {
    // Loopback carries no pool-to-pool traffic; for the moment it is attached, the program
    // hands whatever comes there to the stack unchanged.
    match fast.attach_uplink(LOOPBACK_IFINDEX) {
        Ok(()) => {
            fast.detach(LOOPBACK_IFINDEX).map_err(|e| e.to_string())?;
            Ok(fast)
        }
        Err(wren_fastpath::FastPathError::Attach { source, .. })
            if source.raw_os_error() == Some(libc::EINVAL) =>
        {
            Err(format!(
                "this kernel cannot attach tc programs through tcx links, which need Linux 6.6 \
                 or later ({source})"
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The loaded fast path, shared by the controller's passes.
pub struct FastPathControl {
    node_ip: Ipv4Addr,
    kernel: Arc<Mutex<Kernel>>,
    /// Kernel counters as last published, so metrics grow by the difference.
    published: Mutex<wren_fastpath::Counters>,
}

impl FastPathControl {
    /// Loads the program when `enabled`; a kernel that cannot run it is reported, not fatal.
    pub fn start(enabled: bool, node_ip: Ipv4Addr) -> Self {
        let kernel = if !enabled {
            tracing::info!("fast path off by configuration");
            Kernel::Off
        } else {
            match FastPath::load()
                .map_err(|e| e.to_string())
                .and_then(attach_probed)
            {
                Ok(fast) => {
                    tracing::info!("fast path loaded");
                    Kernel::On(Box::new(fast))
                }
                Err(reason) => {
                    tracing::warn!(%reason, "fast path unavailable; pods are routed by the host stack");
                    Kernel::Unavailable(reason)
                }
            }
        };
        Self {
            node_ip,
            kernel: Arc::new(Mutex::new(kernel)),
            published: Mutex::new(wren_fastpath::Counters::default()),
        }
    }

    /// Brings the attachments in line with `desired` over `underlay` (the pass's lookup,
    /// shared with the tunnels) and returns the status.
    pub async fn pass(&self, desired: FastPathDesired, underlay: &PassUnderlay) -> FastPathStatus {
        let kernel = self.kernel.clone();
        let node_ip = self.node_ip;
        let underlay = underlay.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut kernel = lock(&kernel);
            match &mut *kernel {
                Kernel::Off => FastPathStatus {
                    state: FastPathState::Off,
                    ..FastPathStatus::default()
                },
                Kernel::Unavailable(reason) => FastPathStatus {
                    state: FastPathState::Unavailable,
                    reason: Some(reason.clone()),
                    ..FastPathStatus::default()
                },
                Kernel::On(fast) => reconcile(fast, node_ip, &desired, &underlay),
            }
        });
        match job.await {
            Ok(status) => status,
            Err(e) => FastPathStatus {
                state: FastPathState::On,
                errors: vec![format!("fast path pass failed: {e}")],
                ..FastPathStatus::default()
            },
        }
    }

    /// Tells the program which epoch of the node's policy rules it may carry connections
    /// of (`None`: none), and what a reset it carries leaves of its connection's entry
    /// (`reset_timeout`, conntrack's own for a reset connection). Called after the table
    /// stamping that epoch is in the kernel.
    pub async fn set_policy_mark(
        &self,
        mark: Option<wren_policy::nft::ConnectionMark>,
        reset_timeout: std::time::Duration,
    ) {
        let kernel = self.kernel.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut kernel = lock(&kernel);
            if let Kernel::On(fast) = &mut *kernel {
                let mark = mark
                    .filter(|_| fast.reads_connection_marks())
                    .filter(|_| match tcp_window_tracking_liberal(Path::new(LIBERAL_SYSCTL)) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "policed connections stay on the host stack");
                            false
                        }
                    })
                    .map(|m| wren_fastpath::PolicyMark {
                        epoch: m.epoch,
                        mask: m.mask,
                        reset: m.reset(),
                        reset_timeout_ms: u32::try_from(reset_timeout.as_millis())
                            .unwrap_or(u32::MAX),
                    })
                    .unwrap_or_default();
                if let Err(e) = fast.set_policy_mark(mark) {
                    tracing::warn!(error = %e, "policed connections stay on the host stack");
                }
            }
        });
        if let Err(e) = job.await {
            tracing::warn!(error = %e, "setting the fast path's policy mark failed");
        }
    }

    /// Puts the kernel's counters as of now into `status` (a status read between passes).
    /// While a pass holds the program (waiting on the kernel, possibly for long), `status`
    /// keeps the counters that pass will bring: a status read or a scrape, which run on the
    /// async workers, never waits for it.
    pub fn refresh(&self, status: &mut FastPathStatus) {
        let kernel = match self.kernel.try_lock() {
            Ok(k) => k,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if let Kernel::On(fast) = &*kernel
            && let Ok(counters) = fast.counters()
        {
            status.forwarded = counters.forwarded;
            status.to_stack = counters.to_stack;
            status.encapsulated = counters.encapsulated;
            status.translated = counters.translated;
            status.policed_carried = counters.policed_carried;
        }
    }

    /// Grows the fast path's counters to the kernel's figures in `status`.
    pub fn publish(&self, status: &FastPathStatus, metrics: &Metrics) {
        let mut last = lock(&self.published);
        metrics
            .fast_path_up
            .set(i64::from(status.state == FastPathState::On));
        let grow =
            |counter: &prometheus_client::metrics::counter::Counter, now: u64, last: &mut u64| {
                counter.inc_by(now.saturating_sub(*last));
                *last = (*last).max(now);
            };
        grow(
            &metrics.fast_path_forwarded,
            status.forwarded,
            &mut last.forwarded,
        );
        grow(
            &metrics.fast_path_to_stack,
            status.to_stack,
            &mut last.to_stack,
        );
        grow(
            &metrics.fast_path_encapsulated,
            status.encapsulated,
            &mut last.encapsulated,
        );
        grow(
            &metrics.fast_path_translated,
            status.translated,
            &mut last.translated,
        );
        grow(
            &metrics.fast_path_policed_carried,
            status.policed_carried,
            &mut last.policed_carried,
        );
    }
}

/// conntrack's switch for checking TCP sequence numbers against the windows it saw.
const LIBERAL_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";

/// Turns conntrack's TCP window checks liberal in the agent's namespace (`sysctl` file
/// `path`). conntrack does not see the packets the fast path carries, so when a change of
/// the rules sends a carried connection's next packet to the stack, its sequence numbers
/// lie far past the windows conntrack last saw: strict, it would call the packet invalid
/// and the connection could never be judged (or stamped) again. Liberal, it still tracks
/// the connection's state and flags; only out-of-window resets stay invalid. The same
/// trade nftables' own flow offload makes, per connection, for the same reason.
fn tcp_window_tracking_liberal(path: &Path) -> Result<(), String> {
    let now = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if now.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(
        sysctl = %path.display(),
        "conntrack's TCP window checks made liberal: the fast path carries connections of policed pods"
    );
    Ok(())
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// One pass on the kernel, in the calling thread's namespace.
fn reconcile(
    fast: &mut FastPath,
    node_ip: Ipv4Addr,
    desired: &FastPathDesired,
    underlay: &PassUnderlay,
) -> FastPathStatus {
    let mut errors = Vec::new();
    // Before any pod is attached: an isolated pod's traffic never takes the fast path.
    if let Err(e) = fast.set_policed(&desired.policed) {
        errors.push(e.to_string());
    }
    if let Err(e) = fast.set_pools(&desired.pools) {
        errors.push(e.to_string());
    }
    let mut uplinks = Vec::new();
    let underlay = match underlay.get() {
        Ok(u) => {
            uplinks.push((u.name.clone(), u.index));
            Some(u.index)
        }
        Err(e) => {
            errors.push(format!("no uplink to attach to: {e}"));
            None
        }
    };
    for tunnel in [VXLAN_DEVICE, IPIP_DEVICE] {
        if let Some(index) = ifindex(tunnel) {
            uplinks.push((tunnel.to_owned(), index));
        }
    }
    // VXLAN in the program needs the device (whose settings it copies) and its parent.
    let vxlan = match (ifindex(VXLAN_DEVICE), underlay) {
        (Some(device), Some(parent)) => {
            match kernel_vxlan_defaults(Path::new("/proc/sys/net/ipv4")) {
                Ok((source_ports, ttl)) => Some(VxlanConfig {
                    device,
                    parent,
                    local: node_ip,
                    vni: VXLAN_VNI,
                    port: VXLAN_PORT,
                    source_ports,
                    ttl,
                }),
                Err(e) => {
                    errors.push(format!("VXLAN left to {VXLAN_DEVICE}: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    let peers: &[([u8; 6], Ipv4Addr)] = if vxlan.is_some() {
        &desired.vxlan_peers
    } else {
        &[]
    };
    // Either order is safe: a remote device the table does not know is left to the device.
    for result in [fast.set_vxlan_peers(peers), fast.set_vxlan(vxlan)] {
        if let Err(e) = result {
            errors.push(e.to_string());
        }
    }
    let mut keep = BTreeSet::new();
    let mut attached_uplinks = Vec::new();
    for (name, index) in uplinks {
        match fast.attach_uplink(index) {
            Ok(()) => {
                keep.insert(index);
                attached_uplinks.push(name);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut pods = 0;
    for (ifname, address) in &desired.pods {
        // A pod whose veth is not (or no longer) there is being set up or torn down.
        let Some(index) = ifindex(ifname) else {
            continue;
        };
        match fast.attach_pod(index, *address) {
            Ok(()) => {
                keep.insert(index);
                pods += 1;
            }
            Err(e) => errors.push(format!("{ifname}: {e}")),
        }
    }
    if let Err(e) = fast.retain(|index| keep.contains(&index)) {
        errors.push(e.to_string());
    }
    let counters = fast.counters().unwrap_or_else(|e| {
        errors.push(e.to_string());
        wren_fastpath::Counters::default()
    });
    FastPathStatus {
        state: FastPathState::On,
        reason: None,
        pods,
        uplinks: attached_uplinks,
        forwarded: counters.forwarded,
        to_stack: counters.to_stack,
        vxlan_peers: fast.vxlan_peers(),
        encapsulated: counters.encapsulated,
        translated: counters.translated,
        policed_carried: counters.policed_carried,
        errors,
    }
}

/// What the kernel's VXLAN device takes from the namespace when it is not told otherwise:
/// the local port range for source ports and the default TTL (`sysctl` directory `dir`).
fn kernel_vxlan_defaults(dir: &Path) -> Result<((u16, u16), u8), String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| format!("reading {name}: {e}"))
    };
    let ports = read("ip_local_port_range")?;
    let mut numbers = ports.split_whitespace().map(str::parse::<u16>);
    let source_ports = match (numbers.next(), numbers.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => (low, high),
        _ => return Err(format!("unreadable ip_local_port_range {:?}", ports.trim())),
    };
    let ttl = read("ip_default_ttl")?;
    let ttl = ttl
        .trim()
        .parse::<u8>()
        .map_err(|_| format!("unreadable ip_default_ttl {:?}", ttl.trim()))?;
    Ok((source_ports, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wren_model::{Pool, Workload};

    #[test]
    fn a_status_read_during_a_pass_keeps_its_counters_instead_of_waiting() {
        let control = Arc::new(FastPathControl::start(false, Ipv4Addr::LOCALHOST));
        let pass = control.kernel.lock().unwrap();
        let reader = control.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut status = FastPathStatus {
                forwarded: 7,
                ..FastPathStatus::default()
            };
            reader.refresh(&mut status);
            let _ = done.send(status.forwarded);
        });
        let forwarded = finished.recv_timeout(std::time::Duration::from_secs(10));
        drop(pass);
        assert_eq!(forwarded, Ok(7), "the status read waited for the pass");
    }

    fn workload(host: &str, addresses: &[&str]) -> Workload {
        Workload {
            node: "n1".into(),
            container_id: host.into(),
            ifname: "eth0".into(),
            network: "wren".into(),
            handle: format!("wren.{host}"),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            netns: "/run/netns/x".into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            host_interface: host.into(),
            mac: "02:00:00:00:00:01".into(),
        }
    }

    #[test]
    fn desired_takes_ipv4_pools_and_pods() {
        let mut view = ClusterView::default();
        for (name, cidr, disabled) in [
            ("a", "10.65.0.0/16", false),
            ("b", "10.66.0.0/16", true),
            ("v6", "fd00:65::/48", false),
        ] {
            let pool = Pool {
                cidr: cidr.parse().unwrap(),
                block_size: 26,
                encapsulation: Default::default(),
                encapsulation_mode: Default::default(),
                nat_outgoing: false,
                disabled,
                communities: Vec::new(),
            };
            view.pools.insert(name.into(), pool);
        }
        view.workloads = [
            workload("wren1", &["10.65.0.1/32", "fd00:65::1/128"]),
            workload("wren2", &["fd00:65::2/128"]),
            workload("wren3", &["10.66.0.9/32"]),
        ]
        .into_iter()
        .map(|w| (w.host_interface.clone(), w))
        .collect();
        let desired = FastPathDesired::of(&view, "n1");
        assert_eq!(
            desired.pools,
            vec![
                "10.65.0.0/16".parse::<Ipv4Net>().unwrap(),
                "10.66.0.0/16".parse().unwrap()
            ]
        );
        let pods: Vec<(&str, Ipv4Addr)> =
            desired.pods.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            pods,
            vec![
                ("wren1", Ipv4Addr::new(10, 65, 0, 1)),
                ("wren3", Ipv4Addr::new(10, 66, 0, 9))
            ]
        );
    }

    #[test]
    fn status_lines() {
        // Before the first pass (the datastore not listed yet) nothing says it is off.
        assert_eq!(
            FastPathStatus::default().render(),
            "Fast path: not set up yet, waiting for the datastore's first answer\n"
        );
        let off = FastPathStatus {
            state: FastPathState::Off,
            ..FastPathStatus::default()
        };
        assert_eq!(off.render(), "Fast path: off (fastPath = false)\n");
        let unavailable = FastPathStatus {
            state: FastPathState::Unavailable,
            reason: Some("loading the forwarding program: Operation not permitted".into()),
            ..FastPathStatus::default()
        };
        assert!(
            unavailable
                .render()
                .contains("unavailable, pods are routed by the host stack: loading")
        );
        let on = FastPathStatus {
            state: FastPathState::On,
            pods: 2,
            uplinks: vec!["eth0".into(), "wren.vxlan".into()],
            forwarded: 10,
            to_stack: 1,
            ..FastPathStatus::default()
        };
        assert_eq!(
            on.render(),
            "Fast path: on, 2 pods and eth0, wren.vxlan (uplinks); 10 packets forwarded, 1 left to the host stack\n"
        );
        let translating = FastPathStatus {
            translated: 7,
            ..on.clone()
        };
        assert_eq!(
            translating.render(),
            "Fast path: on, 2 pods and eth0, wren.vxlan (uplinks); 10 packets forwarded, 1 left to the host stack\n  Connections translated by netfilter (hostPort, Service, SNAT): 7 packets left to the host stack\n"
        );
        let wrapping = FastPathStatus {
            vxlan_peers: 3,
            encapsulated: 4,
            ..on
        };
        assert_eq!(
            wrapping.render(),
            "Fast path: on, 2 pods and eth0, wren.vxlan (uplinks); 10 packets forwarded, 1 left to the host stack\n  VXLAN in the fast path: 3 remote nodes, 4 packets encapsulated\n"
        );
    }

    #[test]
    fn kernel_vxlan_defaults_from_sysctl() {
        let dir = std::env::temp_dir().join(format!("wren-vxlan-defaults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ip_local_port_range"), "32768\t60999\n").unwrap();
        std::fs::write(dir.join("ip_default_ttl"), "64\n").unwrap();
        assert_eq!(kernel_vxlan_defaults(&dir), Ok(((32768, 60999), 64)));
        std::fs::write(dir.join("ip_local_port_range"), "60999 32768\n").unwrap();
        assert!(
            kernel_vxlan_defaults(&dir)
                .unwrap_err()
                .contains("unreadable ip_local_port_range")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            kernel_vxlan_defaults(&dir)
                .unwrap_err()
                .starts_with("reading ip_local_port_range")
        );
    }
}
