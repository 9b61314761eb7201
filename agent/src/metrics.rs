//! The agent's Prometheus metrics (served at `/metrics` in the text format).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `wren_bgp_session_up` | gauge | `peer`, `type` | 1 while the session is Established |
//! | `wren_bgp_session_state` | gauge | `peer`, `type`, `state` | 1 for the session's current FSM state |
//! | `wren_bgp_prefixes_received` | gauge | `peer`, `type` | prefixes accepted from the peer |
//! | `wren_bgp_prefixes_sent` | gauge | `peer`, `type` | prefixes announced to the peer |
//! | `wren_bfd_session_up` | gauge | `peer`, `type` | 1 while the session's BFD is Up (only sessions that run BFD) |
//! | `wren_bfd_session_downs_total` | counter | `peer`, `type` | times the session's BFD went from Up to Down |
//! | `wren_bfd_packets_sent_total` | counter | `peer`, `type` | BFD Control packets sent |
//! | `wren_bfd_packets_received_total` | counter | `peer`, `type` | BFD Control packets received |
//! | `wren_ipam_addresses_in_use` | gauge | | addresses allocated on this node (own blocks and borrowed) |
//! | `wren_ipam_blocks` | gauge | | blocks affine to this node |
//! | `wren_routes_desired` | gauge | | routes the agent wants in the kernel |
//! | `wren_routes_multipath` | gauge | | of those, routes over more than one next hop (ECMP) |
//! | `wren_routes_multipath_next_hops` | gauge | | the next hops of those routes, all counted |
//! | `wren_route_reconciles_total` | counter | | reconcile passes |
//! | `wren_route_reconcile_errors_total` | counter | | reconcile passes that failed |
//! | `wren_routes_changed_total` | counter | | routes added or replaced by reconciles |
//! | `wren_routes_removed_total` | counter | | stale routes removed by reconciles |
//! | `wren_datastore_up` | gauge | | 1 while etcd answers |
//! | `wren_ready` | gauge | | 1 while `/readyz` says ready |
//! | `wren_tunnel_available` | gauge | `type` | 1 when this kernel can make the tunnel (`vxlan`, `ipip`) |
//! | `wren_tunnel_up` | gauge | `type` | 1 while the tunnel device is up |
//! | `wren_tunnel_routes` | gauge | `type` | learned routes sent through the tunnel |
//! | `wren_pod_mtu` | gauge | | MTU given to pods whose network configuration sets none |
//! | `wren_fastpath_up` | gauge | | 1 while the BPF fast path is loaded and attached |
//! | `wren_fastpath_forwarded_packets_total` | counter | | packets the fast path forwarded past the host stack (a GSO packet counts once) |
//! | `wren_fastpath_to_stack_packets_total` | counter | | pool-to-pool packets the fast path left to the host stack |
//! | `wren_fastpath_encapsulated_packets_total` | counter | | of the forwarded packets, those the fast path wrapped in VXLAN itself |
//! | `wren_fastpath_translated_packets_total` | counter | | pool-to-pool packets left to the host stack because netfilter translated their connection |
//! | `wren_fastpath_policed_carried_packets_total` | counter | | packets of pods network policy isolates that the fast path carried, their connection allowed by the rules in force |
//! | `wren_policy_denied_packets_total` | counter | | packets network policy dropped on this node |
//! | `wren_policy_denied_connections_total` | counter | | connection attempts (packets conntrack saw as new) network policy dropped on this node |
//! | `wren_policy_denied_packets_by_policy_total` | counter | `policy` | packets dropped at a pod the policy isolates (a drop at a pod several policies isolate counts for each) |
//! | `wren_policy_denied_connections_by_policy_total` | counter | `policy` | connection attempts dropped at a pod the policy isolates |
//! | `wren_cni_request_duration_seconds` | histogram | `command`, `result` | time to serve a CNI request |

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-peer series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's address.
    pub peer: String,
    /// Why the session exists (`node-mesh`, `route-reflector`, `global`, …).
    pub r#type: String,
}

/// Labels of per-tunnel series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    /// `vxlan` or `ipip`.
    pub r#type: String,
}

/// Labels of per-policy series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy, `namespace/name`.
    pub policy: String,
}

/// Labels of the per-state series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerStateLabels {
    peer: String,
    r#type: String,
    state: String,
}

/// Labels of CNI request timings.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniLabels {
    command: String,
    result: String,
}

type HistogramFamily = Family<CniLabels, Histogram, fn() -> Histogram>;

fn cni_histogram() -> Histogram {
    // 1 ms to ~16 s: a pod ADD is a few milliseconds when warm, seconds when etcd is slow.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The handle the local API records CNI request latency into. Cheap to clone.
#[derive(Clone)]
pub struct CniMetrics {
    latency: HistogramFamily,
}

impl CniMetrics {
    /// Records one request: `command` is the CNI command (`ADD`, `DEL`, …), `ok` whether it
    /// succeeded.
    pub fn observe(&self, command: &str, ok: bool, elapsed: Duration) {
        let labels = CniLabels {
            command: command.to_owned(),
            result: if ok { "ok" } else { "error" }.to_owned(),
        };
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// One BGP session as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSample {
    /// Address and type.
    pub labels: PeerLabels,
    /// FSM state name (`Established`, `Active`, …).
    pub state: String,
    /// Prefixes accepted from the peer.
    pub received: u64,
    /// Prefixes announced to the peer.
    pub sent: u64,
    /// The session's BFD, when it runs one.
    pub bfd: Option<BfdSample>,
}

/// One BFD session as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdSample {
    /// Whether the session is Up.
    pub up: bool,
    /// Times it went from Up to Down.
    pub downs: u64,
    /// Control packets sent.
    pub sent: u64,
    /// Control packets received.
    pub received: u64,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    session_up: Family<PeerLabels, Gauge>,
    session_state: Family<PeerStateLabels, Gauge>,
    prefixes_received: Family<PeerLabels, Gauge>,
    prefixes_sent: Family<PeerLabels, Gauge>,
    bfd_up: Family<PeerLabels, Gauge>,
    bfd_downs: Family<PeerLabels, Counter>,
    bfd_sent: Family<PeerLabels, Counter>,
    bfd_received: Family<PeerLabels, Counter>,
    /// Addresses allocated on this node.
    pub ipam_addresses_in_use: Gauge,
    /// Blocks affine to this node.
    pub ipam_blocks: Gauge,
    /// Routes the agent wants in the kernel.
    pub routes_desired: Gauge,
    /// Of those, routes over more than one next hop.
    pub routes_multipath: Gauge,
    /// The next hops of the multipath routes, all counted.
    pub routes_multipath_next_hops: Gauge,
    /// Reconcile passes.
    pub route_reconciles: Counter,
    /// Failed reconcile passes.
    pub route_reconcile_errors: Counter,
    /// Routes added or replaced.
    pub routes_changed: Counter,
    /// Stale routes removed.
    pub routes_removed: Counter,
    /// 1 while etcd answers.
    pub datastore_up: Gauge,
    /// 1 while ready.
    pub ready: Gauge,
    /// 1 when the kernel can make the tunnel.
    pub tunnel_available: Family<TunnelLabels, Gauge>,
    /// 1 while the tunnel device is up.
    pub tunnel_up: Family<TunnelLabels, Gauge>,
    /// Learned routes through the tunnel.
    pub tunnel_routes: Family<TunnelLabels, Gauge>,
    /// The pods' MTU.
    pub pod_mtu: Gauge,
    /// 1 while the fast path runs.
    pub fast_path_up: Gauge,
    /// Packets the fast path forwarded.
    pub fast_path_forwarded: Counter,
    /// Pool-to-pool packets the fast path left to the host stack.
    pub fast_path_to_stack: Counter,
    /// Forwarded packets the fast path wrapped in VXLAN.
    pub fast_path_encapsulated: Counter,
    /// Pool-to-pool packets the fast path left to the host stack because netfilter
    /// translated their connection.
    pub fast_path_translated: Counter,
    /// Packets of isolated pods the fast path carried, their connection allowed by the
    /// rules in force.
    pub fast_path_policed_carried: Counter,
    /// Packets network policy dropped on this node.
    pub policy_denied_packets: Counter,
    /// Connection attempts network policy dropped on this node.
    pub policy_denied_connections: Counter,
    /// Packets dropped at pods each policy isolates.
    pub policy_denied_packets_by_policy: Family<PolicyLabels, Counter>,
    /// Connection attempts dropped at pods each policy isolates.
    pub policy_denied_connections_by_policy: Family<PolicyLabels, Counter>,
    /// Leaked addresses, blocks, affinities and handles the automatic leak release freed.
    pub ipam_leaks_released: Counter,
    /// Host veths of this node that no workload record explained, removed.
    pub orphan_interfaces_removed: Counter,
    /// Allocations of this node that no workload record explained, released.
    pub orphan_allocations_released: Counter,
    cni: CniMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wren");
        let m = Self {
            registry: Registry::default(),
            session_up: Family::default(),
            session_state: Family::default(),
            prefixes_received: Family::default(),
            prefixes_sent: Family::default(),
            bfd_up: Family::default(),
            bfd_downs: Family::default(),
            bfd_sent: Family::default(),
            bfd_received: Family::default(),
            ipam_addresses_in_use: Gauge::default(),
            ipam_blocks: Gauge::default(),
            routes_desired: Gauge::default(),
            routes_multipath: Gauge::default(),
            routes_multipath_next_hops: Gauge::default(),
            route_reconciles: Counter::default(),
            route_reconcile_errors: Counter::default(),
            routes_changed: Counter::default(),
            routes_removed: Counter::default(),
            datastore_up: Gauge::default(),
            ready: Gauge::default(),
            tunnel_available: Family::default(),
            tunnel_up: Family::default(),
            tunnel_routes: Family::default(),
            pod_mtu: Gauge::default(),
            fast_path_up: Gauge::default(),
            fast_path_forwarded: Counter::default(),
            fast_path_to_stack: Counter::default(),
            fast_path_encapsulated: Counter::default(),
            fast_path_translated: Counter::default(),
            fast_path_policed_carried: Counter::default(),
            policy_denied_packets: Counter::default(),
            policy_denied_connections: Counter::default(),
            policy_denied_packets_by_policy: Family::default(),
            policy_denied_connections_by_policy: Family::default(),
            ipam_leaks_released: Counter::default(),
            orphan_interfaces_removed: Counter::default(),
            orphan_allocations_released: Counter::default(),
            cni: CniMetrics {
                latency: HistogramFamily::new_with_constructor(cni_histogram),
            },
        };
        let r = &mut registry;
        r.register(
            "bgp_session_up",
            "1 while the BGP session is Established",
            m.session_up.clone(),
        );
        r.register(
            "bgp_session_state",
            "1 for the BGP session's current FSM state",
            m.session_state.clone(),
        );
        r.register(
            "bgp_prefixes_received",
            "Prefixes accepted from the peer",
            m.prefixes_received.clone(),
        );
        r.register(
            "bgp_prefixes_sent",
            "Prefixes announced to the peer",
            m.prefixes_sent.clone(),
        );
        r.register(
            "bfd_session_up",
            "1 while the BGP session's BFD is Up",
            m.bfd_up.clone(),
        );
        r.register(
            "bfd_session_downs",
            "Times the BGP session's BFD went from Up to Down",
            m.bfd_downs.clone(),
        );
        r.register(
            "bfd_packets_sent",
            "BFD Control packets sent",
            m.bfd_sent.clone(),
        );
        r.register(
            "bfd_packets_received",
            "BFD Control packets received",
            m.bfd_received.clone(),
        );
        r.register(
            "ipam_addresses_in_use",
            "Addresses allocated on this node",
            m.ipam_addresses_in_use.clone(),
        );
        r.register(
            "ipam_blocks",
            "Blocks affine to this node",
            m.ipam_blocks.clone(),
        );
        r.register(
            "routes_desired",
            "Routes the agent wants in the kernel",
            m.routes_desired.clone(),
        );
        r.register(
            "routes_multipath",
            "Routes the agent wants in the kernel over more than one next hop",
            m.routes_multipath.clone(),
        );
        r.register(
            "routes_multipath_next_hops",
            "Next hops of the multipath routes, all counted",
            m.routes_multipath_next_hops.clone(),
        );
        r.register(
            "route_reconciles",
            "Kernel route reconcile passes",
            m.route_reconciles.clone(),
        );
        r.register(
            "route_reconcile_errors",
            "Kernel route reconcile passes that failed",
            m.route_reconcile_errors.clone(),
        );
        r.register(
            "routes_changed",
            "Routes added or replaced by reconciles",
            m.routes_changed.clone(),
        );
        r.register(
            "routes_removed",
            "Stale routes removed by reconciles",
            m.routes_removed.clone(),
        );
        r.register(
            "datastore_up",
            "1 while the datastore answers",
            m.datastore_up.clone(),
        );
        r.register("ready", "1 while the agent is ready", m.ready.clone());
        r.register(
            "tunnel_available",
            "1 when this kernel can make the tunnel",
            m.tunnel_available.clone(),
        );
        r.register(
            "tunnel_up",
            "1 while the tunnel device is up",
            m.tunnel_up.clone(),
        );
        r.register(
            "tunnel_routes",
            "Learned routes sent through the tunnel",
            m.tunnel_routes.clone(),
        );
        r.register(
            "pod_mtu",
            "MTU given to pods whose network configuration sets none",
            m.pod_mtu.clone(),
        );
        r.register(
            "fastpath_up",
            "1 while the BPF fast path is loaded and attached",
            m.fast_path_up.clone(),
        );
        r.register(
            "fastpath_forwarded_packets",
            "Packets the fast path forwarded past the host stack",
            m.fast_path_forwarded.clone(),
        );
        r.register(
            "fastpath_to_stack_packets",
            "Pool-to-pool packets the fast path left to the host stack",
            m.fast_path_to_stack.clone(),
        );
        r.register(
            "fastpath_encapsulated_packets",
            "Of the forwarded packets, those the fast path wrapped in VXLAN itself",
            m.fast_path_encapsulated.clone(),
        );
        r.register(
            "fastpath_translated_packets",
            "Pool-to-pool packets the fast path left to the host stack because netfilter translated their connection (hostPort, Service, SNAT)",
            m.fast_path_translated.clone(),
        );
        r.register(
            "fastpath_policed_carried_packets",
            "Packets of pods network policy isolates that the fast path carried, their connection allowed by the rules in force",
            m.fast_path_policed_carried.clone(),
        );
        r.register(
            "policy_denied_packets",
            "Packets network policy dropped on this node",
            m.policy_denied_packets.clone(),
        );
        r.register(
            "policy_denied_connections",
            "Connection attempts (packets conntrack saw as new) network policy dropped on this node",
            m.policy_denied_connections.clone(),
        );
        r.register(
            "policy_denied_packets_by_policy",
            "Packets dropped at a pod the policy isolates (a drop at a pod several policies isolate counts for each)",
            m.policy_denied_packets_by_policy.clone(),
        );
        r.register(
            "policy_denied_connections_by_policy",
            "Connection attempts dropped at a pod the policy isolates",
            m.policy_denied_connections_by_policy.clone(),
        );
        r.register(
            "ipam_leaks_released",
            "Leaked addresses, blocks, affinities and handles freed by the automatic leak release run by this agent",
            m.ipam_leaks_released.clone(),
        );
        r.register(
            "orphan_interfaces_removed",
            "Host veths of this node that no workload record explained, removed after the orphan grace period",
            m.orphan_interfaces_removed.clone(),
        );
        r.register(
            "orphan_allocations_released",
            "Allocations of this node that no workload record explained, released after the orphan grace period",
            m.orphan_allocations_released.clone(),
        );
        r.register(
            "cni_request_duration_seconds",
            "Time to serve a CNI request",
            m.cni.latency.clone(),
        );
        Self { registry, ..m }
    }

    /// The handle for recording CNI request latency.
    pub fn cni(&self) -> CniMetrics {
        self.cni.clone()
    }

    /// Replaces every per-peer series with `peers` (sessions that went away disappear).
    pub fn set_peers(&self, peers: &[PeerSample]) {
        self.session_up.clear();
        self.session_state.clear();
        self.prefixes_received.clear();
        self.prefixes_sent.clear();
        self.bfd_up.clear();
        self.bfd_downs.clear();
        self.bfd_sent.clear();
        self.bfd_received.clear();
        for p in peers {
            if let Some(bfd) = p.bfd {
                self.bfd_up.get_or_create(&p.labels).set(i64::from(bfd.up));
                // Series start again with every replacement: a counter is its total.
                self.bfd_downs.get_or_create(&p.labels).inc_by(bfd.downs);
                self.bfd_sent.get_or_create(&p.labels).inc_by(bfd.sent);
                self.bfd_received
                    .get_or_create(&p.labels)
                    .inc_by(bfd.received);
            }
            let up = i64::from(p.state == "Established");
            self.session_up.get_or_create(&p.labels).set(up);
            let state = PeerStateLabels {
                peer: p.labels.peer.clone(),
                r#type: p.labels.r#type.clone(),
                state: p.state.clone(),
            };
            self.session_state.get_or_create(&state).set(1);
            self.prefixes_received
                .get_or_create(&p.labels)
                .set(to_gauge(p.received));
            self.prefixes_sent
                .get_or_create(&p.labels)
                .set(to_gauge(p.sent));
        }
    }

    /// Grows the network policy counters to `totals` (figures since the agent started, by
    /// what they count).
    pub fn set_policy_denied(
        &self,
        totals: &std::collections::BTreeMap<wren_policy::nft::DeniedCounter, u64>,
    ) {
        fn grow(counter: &Counter, total: u64) {
            let now = counter.get();
            if total > now {
                counter.inc_by(total - now);
            }
        }
        for (what, total) in totals {
            match (&what.policy, what.connections) {
                (None, false) => grow(&self.policy_denied_packets, *total),
                (None, true) => grow(&self.policy_denied_connections, *total),
                (Some(policy), connections) => {
                    let family = if connections {
                        &self.policy_denied_connections_by_policy
                    } else {
                        &self.policy_denied_packets_by_policy
                    };
                    let labels = PolicyLabels {
                        policy: policy.clone(),
                    };
                    grow(&family.get_or_create(&labels), *total);
                }
            }
        }
    }

    /// The text exposition (`/metrics`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn to_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Shared handle to the metrics.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_peers_ipam_routes_and_cni_latency() {
        let m = Metrics::new();
        let labels = PeerLabels {
            peer: "10.0.0.2".into(),
            r#type: "node-mesh".into(),
        };
        m.set_peers(&[PeerSample {
            labels: labels.clone(),
            state: "Established".into(),
            received: 3,
            sent: 2,
            bfd: Some(BfdSample {
                up: true,
                downs: 1,
                sent: 40,
                received: 39,
            }),
        }]);
        m.ipam_addresses_in_use.set(7);
        m.route_reconciles.inc();
        m.route_reconcile_errors.inc();
        m.cni().observe("ADD", true, Duration::from_millis(3));
        let text = m.encode();
        for line in [
            "wren_bgp_session_up{peer=\"10.0.0.2\",type=\"node-mesh\"} 1",
            "wren_bgp_session_state{peer=\"10.0.0.2\",type=\"node-mesh\",state=\"Established\"} 1",
            "wren_bgp_prefixes_received{peer=\"10.0.0.2\",type=\"node-mesh\"} 3",
            "wren_bgp_prefixes_sent{peer=\"10.0.0.2\",type=\"node-mesh\"} 2",
            "wren_bfd_session_up{peer=\"10.0.0.2\",type=\"node-mesh\"} 1",
            "wren_bfd_session_downs_total{peer=\"10.0.0.2\",type=\"node-mesh\"} 1",
            "wren_bfd_packets_sent_total{peer=\"10.0.0.2\",type=\"node-mesh\"} 40",
            "wren_bfd_packets_received_total{peer=\"10.0.0.2\",type=\"node-mesh\"} 39",
            "wren_ipam_addresses_in_use 7",
            "wren_route_reconciles_total 1",
            "wren_route_reconcile_errors_total 1",
            "wren_cni_request_duration_seconds_count{command=\"ADD\",result=\"ok\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // A session that is gone leaves no series behind.
        m.set_peers(&[]);
        assert!(!m.encode().contains("10.0.0.2"));
    }
}
