//! wren's forwarding fast path: pod-to-pod IPv4 traffic forwarded by a tc BPF program, past
//! the host's IP stack, with the kernel's own FIB deciding where each packet goes.
//!
//! The fast path only accelerates: every decision it does not take (see [`program`]) falls
//! through to the host stack, and without it (old kernel, no privilege, agent stopped) pods
//! are routed by the kernel exactly as before. Programs are attached through tcx links held
//! by [`FastPath`]: when the agent exits, they detach.
//!
//! - [`asm`]: eBPF instructions and a builder (no I/O);
//! - [`btf`]: the few look-ups in the kernel's type information that kfunc calls need (no
//!   I/O);
//! - [`program`]: the forwarding program (no I/O);
//! - [`conntrack`]: finds the kernel's conntrack functions the program calls;
//! - [`sys`]: the `bpf(2)` calls.

pub mod asm;
pub mod btf;
pub mod conntrack;
pub mod program;
pub mod sys;

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::conntrack::{ConntrackError, KernelConntrack};
use crate::program::{
    COUNTER_ENCAPSULATED, COUNTER_FORWARDED, COUNTER_POLICED_CARRIED, COUNTER_TO_STACK,
    COUNTER_TRANSLATED, COUNTERS, MapFds, POLICY_MARK_LEN, VXLAN_CONFIG_LEN,
};
pub use crate::program::{PolicyMark, VxlanConfig};
use crate::sys::{Link, LoadError, Map, MapType, Program, TestContext};

/// Most pods one node's fast path tracks.
pub const MAX_PODS: u32 = 65_536;
/// Most pool prefixes.
pub const MAX_POOLS: u32 = 1_024;
/// Most remote VXLAN devices (other nodes).
pub const MAX_VTEPS: u32 = 16_384;
/// The license the program declares to the kernel: the helpers it calls are offered to
/// GPL-compatible programs only.
pub const PROGRAM_LICENSE: &str = "Dual MIT/GPL";

/// Why the fast path is not available or an operation on it failed.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// A map could not be created (no `CAP_BPF`/`CAP_SYS_ADMIN`, memory limits, …).
    #[error("creating BPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// The system call's error.
        source: io::Error,
    },
    /// The kernel cannot tell the program which connections netfilter translated.
    #[error("{0}")]
    Conntrack(#[from] ConntrackError),
    /// The program did not assemble (a defect in this crate).
    #[error("assembling the forwarding program: {0}")]
    Assemble(#[from] asm::AsmError),
    /// The kernel refused the program (a kernel older than 5.10 lacks `bpf_redirect_peer`).
    #[error("loading the forwarding program: {0}")]
    Load(#[from] LoadError),
    /// The program could not be attached to a device (tcx needs kernel 6.6 or later).
    #[error("attaching the forwarding program to ifindex {ifindex}: {source}")]
    Attach {
        /// The device.
        ifindex: u32,
        /// The system call's error.
        source: io::Error,
    },
    /// A map update or read failed.
    #[error("updating the fast path's {what}: {source}")]
    Update {
        /// What was being changed.
        what: &'static str,
        /// The system call's error.
        source: io::Error,
    },
}

/// What the program has done since it was loaded, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets forwarded past the host stack (a GSO packet counts once).
    pub forwarded: u64,
    /// Pool-to-pool packets left to the host stack.
    pub to_stack: u64,
    /// Of the forwarded packets, those the program wrapped in VXLAN.
    pub encapsulated: u64,
    /// Pool-to-pool packets left to the host stack because netfilter translated their
    /// connection.
    pub translated: u64,
    /// Packets from or to a policed endpoint that the program carried on, their connection
    /// marked as allowed by the current rules.
    pub policed_carried: u64,
}

/// How a device takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Pod,
    Uplink,
}

/// The loaded program and its maps, and the devices it is attached to.
#[derive(Debug)]
pub struct FastPath {
    program: Program,
    pods: Map,
    pools: Map,
    counters: Map,
    vxlan: Map,
    vteps: Map,
    policed: Map,
    policy_mark: Map,
    /// Whether the kernel keeps connection marks the program can read.
    reads_marks: bool,
    cpus: usize,
    links: HashMap<u32, (Role, Link)>,
    /// What the pod table holds, so an unchanged pod costs no system call per pass.
    pod_addresses: HashMap<u32, Ipv4Addr>,
    pool_set: Vec<Ipv4Net>,
    vxlan_config: Option<VxlanConfig>,
    vtep_set: HashMap<[u8; 6], Ipv4Addr>,
    policed_set: std::collections::HashSet<Ipv4Addr>,
    policy_mark_set: PolicyMark,
}

impl FastPath {
    /// Creates the maps and loads the program. Fails on kernels or privileges that cannot
    /// run it; nothing is attached yet.
    pub fn load() -> Result<Self, FastPathError> {
        let map = |name: &'static str, kind, key, value, entries| {
            Map::create(kind, name, key, value, entries)
                .map_err(|source| FastPathError::Map { name, source })
        };
        let pods = map("wren_pods", MapType::Hash, 4, 4, MAX_PODS)?;
        let pools = map("wren_pools", MapType::LpmTrie, 8, 4, MAX_POOLS)?;
        let counters = map("wren_counters", MapType::PerCpuArray, 4, 8, COUNTERS)?;
        let vxlan = map("wren_vxlan", MapType::Array, 4, VXLAN_CONFIG_LEN, 1)?;
        let vteps = map("wren_vteps", MapType::Hash, 8, 4, MAX_VTEPS)?;
        let policed = map("wren_policed", MapType::Hash, 4, 4, MAX_PODS)?;
        let policy_mark = map("wren_policy_mark", MapType::Array, 4, POLICY_MARK_LEN, 1)?;
        let conntrack = KernelConntrack::find()?;
        let reads_marks = conntrack.calls.mark_offset.is_some();
        let insns = program::forward(
            MapFds {
                pods: pods.raw_fd(),
                pools: pools.raw_fd(),
                counters: counters.raw_fd(),
                vxlan: vxlan.raw_fd(),
                vteps: vteps.raw_fd(),
                policed: policed.raw_fd(),
                policy_mark: policy_mark.raw_fd(),
            },
            conntrack.calls,
        )?;
        let program = Program::load_sched_cls(
            "wren_forward",
            &insns,
            PROGRAM_LICENSE,
            &conntrack.fd_array(),
        )?;
        let cpus = sys::possible_cpus().map_err(|source| FastPathError::Map {
            name: "wren_counters",
            source,
        })?;
        Ok(Self {
            program,
            pods,
            pools,
            counters,
            vxlan,
            vteps,
            policed,
            policy_mark,
            reads_marks,
            cpus,
            links: HashMap::new(),
            pod_addresses: HashMap::new(),
            pool_set: Vec::new(),
            vxlan_config: None,
            vtep_set: HashMap::new(),
            policed_set: std::collections::HashSet::new(),
            policy_mark_set: PolicyMark::default(),
        })
    }

    /// Attaches to a pod's host-side veth `ifindex`; the pod's packets are forwarded only
    /// with `address` as their source. Replaces an earlier attachment of the same device.
    pub fn attach_pod(&mut self, ifindex: u32, address: Ipv4Addr) -> Result<(), FastPathError> {
        if self.pod_addresses.get(&ifindex) != Some(&address) {
            self.pods
                .update(&ifindex.to_ne_bytes(), &address.octets())
                .map_err(|source| FastPathError::Update {
                    what: "pod table",
                    source,
                })?;
            self.pod_addresses.insert(ifindex, address);
        }
        if let Err(e) = self.attach(ifindex, Role::Pod) {
            self.forget_pod(ifindex)?;
            return Err(e);
        }
        Ok(())
    }

    fn forget_pod(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        self.pod_addresses.remove(&ifindex);
        self.pods
            .delete(&ifindex.to_ne_bytes())
            .map_err(|source| FastPathError::Update {
                what: "pod table",
                source,
            })
    }

    /// Attaches to an uplink or tunnel device, for traffic arriving there for local pods.
    pub fn attach_uplink(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        self.attach(ifindex, Role::Uplink)
    }

    fn attach(&mut self, ifindex: u32, role: Role) -> Result<(), FastPathError> {
        if matches!(self.links.get(&ifindex), Some((r, _)) if *r == role) {
            return Ok(());
        }
        // A device that changed role (an ifindex reused) loses its old link and entry first.
        if role == Role::Uplink {
            self.detach(ifindex)?;
        } else {
            self.links.remove(&ifindex);
        }
        let link = self
            .program
            .attach_tcx_ingress(ifindex)
            .map_err(|source| FastPathError::Attach { ifindex, source })?;
        self.links.insert(ifindex, (role, link));
        Ok(())
    }

    /// Detaches from `ifindex` (a pod that left, a tunnel removed). Unknown devices are
    /// ignored.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), FastPathError> {
        if let Some((Role::Pod, _)) = self.links.remove(&ifindex) {
            self.forget_pod(ifindex)?;
        }
        Ok(())
    }

    /// Keeps only the attachments whose device is in `present` (devices deleted behind the
    /// agent's back).
    pub fn retain(&mut self, present: impl Fn(u32) -> bool) -> Result<(), FastPathError> {
        let gone: Vec<u32> = self
            .links
            .keys()
            .copied()
            .filter(|&ifindex| !present(ifindex))
            .collect();
        for ifindex in gone {
            self.detach(ifindex)?;
        }
        Ok(())
    }

    /// Sets the policed endpoints: local pods' IPv4 addresses whose packets, sent or
    /// received, go to the host stack, where network policy is enforced, unless their TCP
    /// connection carries the epoch of [`FastPath::set_policy_mark`].
    pub fn set_policed(&mut self, addresses: &[Ipv4Addr]) -> Result<(), FastPathError> {
        let update = |source| FastPathError::Update {
            what: "policed endpoints",
            source,
        };
        let wanted: std::collections::HashSet<Ipv4Addr> = addresses.iter().copied().collect();
        for address in wanted.difference(&self.policed_set) {
            self.policed
                .update(&address.octets(), &[0; 4])
                .map_err(update)?;
        }
        for old in self.policed_set.difference(&wanted) {
            self.policed.delete(&old.octets()).map_err(update)?;
        }
        self.policed_set = wanted;
        Ok(())
    }

    /// Sets the mark the node's policy rules put on connections they allowed: a policed
    /// endpoint's TCP packet is carried past the stack only in an established connection
    /// whose mark carries `mark.epoch` (and without SYN or FIN; a reset also after a reset
    /// carried before, where the kernel lets the program shorten the entry). Set it only
    /// after the rules that mark that epoch are in the kernel; [`PolicyMark::default`]
    /// (epoch 0) carries none.
    pub fn set_policy_mark(&mut self, mark: PolicyMark) -> Result<(), FastPathError> {
        if self.policy_mark_set == mark {
            return Ok(());
        }
        self.policy_mark
            .update(&0u32.to_ne_bytes(), &mark.to_bytes())
            .map_err(|source| FastPathError::Update {
                what: "policy mark",
                source,
            })?;
        self.policy_mark_set = mark;
        Ok(())
    }

    /// Whether the kernel keeps connection marks the program reads: without them a
    /// policed endpoint's packets all go to the stack.
    pub fn reads_connection_marks(&self) -> bool {
        self.reads_marks
    }

    /// Sets the pool prefixes: only traffic from one pool address to another is forwarded.
    pub fn set_pools(&mut self, pools: &[Ipv4Net]) -> Result<(), FastPathError> {
        let key = |net: &Ipv4Net| {
            let mut key = [0u8; 8];
            key[..4].copy_from_slice(&u32::from(net.prefix_len()).to_ne_bytes());
            key[4..].copy_from_slice(&net.network().octets());
            key
        };
        let update = |source| FastPathError::Update {
            what: "pool prefixes",
            source,
        };
        for net in pools {
            self.pools.update(&key(net), &[0; 4]).map_err(update)?;
        }
        for old in self.pool_set.iter().filter(|old| !pools.contains(old)) {
            self.pools.delete(&key(old)).map_err(update)?;
        }
        self.pool_set = pools.to_vec();
        Ok(())
    }

    /// Has the program encapsulate traffic routed into the VXLAN device `config.device`
    /// itself, or, with `None`, leaves VXLAN to the device. Remote devices must be known
    /// ([`FastPath::set_vxlan_peers`]); traffic to an unknown one goes to the device.
    pub fn set_vxlan(&mut self, config: Option<VxlanConfig>) -> Result<(), FastPathError> {
        if self.vxlan_config == config {
            return Ok(());
        }
        let value = config.map_or([0; VXLAN_CONFIG_LEN as usize], |c| c.to_bytes());
        self.vxlan
            .update(&0u32.to_ne_bytes(), &value)
            .map_err(|source| FastPathError::Update {
                what: "VXLAN settings",
                source,
            })?;
        self.vxlan_config = config;
        Ok(())
    }

    /// Sets the remote VXLAN devices: each one's MAC and the address of its node, exactly
    /// as the device's forwarding table has them.
    pub fn set_vxlan_peers(&mut self, peers: &[([u8; 6], Ipv4Addr)]) -> Result<(), FastPathError> {
        let key = |mac: &[u8; 6]| {
            let mut key = [0u8; 8];
            key[..6].copy_from_slice(mac);
            key
        };
        let update = |source| FastPathError::Update {
            what: "VXLAN peers",
            source,
        };
        let wanted: HashMap<[u8; 6], Ipv4Addr> = peers.iter().copied().collect();
        for (mac, node) in &wanted {
            if self.vtep_set.get(mac) != Some(node) {
                self.vteps
                    .update(&key(mac), &node.octets())
                    .map_err(update)?;
                self.vtep_set.insert(*mac, *node);
            }
        }
        let gone: Vec<[u8; 6]> = self
            .vtep_set
            .keys()
            .filter(|mac| !wanted.contains_key(*mac))
            .copied()
            .collect();
        for mac in gone {
            self.vteps.delete(&key(&mac)).map_err(update)?;
            self.vtep_set.remove(&mac);
        }
        Ok(())
    }

    /// Remote VXLAN devices known to the program.
    pub fn vxlan_peers(&self) -> usize {
        self.vtep_set.len()
    }

    /// Devices the program is attached to: pods and uplinks.
    pub fn attached(&self) -> (usize, usize) {
        let pods = self
            .links
            .values()
            .filter(|(role, _)| *role == Role::Pod)
            .count();
        (pods, self.links.len() - pods)
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, FastPathError> {
        let read = |slot: u32| -> Result<u64, FastPathError> {
            let mut values = vec![0u8; 8 * self.cpus];
            self.counters
                .lookup(&slot.to_ne_bytes(), &mut values)
                .map_err(|source| FastPathError::Update {
                    what: "counters",
                    source,
                })?;
            Ok(values
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .sum())
        };
        Ok(Counters {
            forwarded: read(COUNTER_FORWARDED)?,
            to_stack: read(COUNTER_TO_STACK)?,
            encapsulated: read(COUNTER_ENCAPSULATED)?,
            translated: read(COUNTER_TRANSLATED)?,
            policed_carried: read(COUNTER_POLICED_CARRIED)?,
        })
    }

    /// Runs the program on one packet arriving on `ifindex`, without attaching it (see
    /// [`Program::test_run`]).
    pub fn test_run(&self, packet: &[u8], ifindex: u32) -> io::Result<(i32, Vec<u8>)> {
        self.program.test_run(
            packet,
            TestContext {
                ifindex,
                ..TestContext::default()
            },
        )
    }

    /// Runs the program `repeat` times on one packet arriving on `ifindex` and returns the
    /// mean time per run (see [`Program::time_run`]).
    pub fn time_run(
        &self,
        packet: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> io::Result<std::time::Duration> {
        self.program.time_run(
            packet,
            TestContext {
                ifindex,
                ..TestContext::default()
            },
            repeat,
        )
    }

    /// As [`FastPath::test_run`], for a GSO packet of `gso_segs` segments of `gso_size`.
    pub fn test_run_gso(
        &self,
        packet: &[u8],
        ifindex: u32,
        gso_size: u32,
        gso_segs: u32,
    ) -> io::Result<(i32, Vec<u8>)> {
        self.program.test_run(
            packet,
            TestContext {
                ifindex,
                gso_size,
                gso_segs,
            },
        )
    }
}
