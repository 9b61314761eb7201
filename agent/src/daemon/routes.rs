//! The kernel routes this node wants, and the interface to whatever puts them in the kernel.
//!
//! Desired state is computed from scratch every time (it is small: one route per block and
//! per local pod) and handed to a [`RouteProgrammer`], which compares it with the kernel and
//! fixes the difference in both directions, touching only routes carrying wren's protocol
//! numbers. Keeping the computation pure and the programmer behind a trait lets the daemon's
//! logic be tested without a kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;

use super::view::ClusterView;

/// Route protocol of routes learned over BGP (`bgp` in `/etc/iproute2/rt_protos`).
pub const PROTO_BGP: u8 = 186;
/// Route protocol of routes wren makes itself (blackholes, pod routes).
pub const PROTO_WREN: u8 = 201;

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteTarget {
    /// Drop: a local block's covering route, so addresses not (yet) in use do not leak out
    /// through the default route.
    Blackhole,
    /// Through a neighbour (another node or a router), learned over BGP.
    Gateway(IpAddr),
    /// Straight out of an interface, scope link: a local pod's host-side veth.
    Device(String),
    /// Into a tunnel device, `via <gateway> dev <dev> onlink`: a learned route that the pool's
    /// encapsulation sends through `wren.vxlan` or `wrentunl0` (see [`super::encap`]).
    Tunnel {
        /// The next hop: the remote node's tunnel address (VXLAN) or its address (IPIP).
        via: IpAddr,
        /// The tunnel device.
        dev: String,
    },
}

impl RouteTarget {
    /// The protocol number the route carries in the kernel.
    pub fn protocol(&self) -> u8 {
        match self {
            // A reshaped route is still a learned one: a restart keeps it like the others.
            RouteTarget::Gateway(_) | RouteTarget::Tunnel { .. } => PROTO_BGP,
            RouteTarget::Blackhole | RouteTarget::Device(_) => PROTO_WREN,
        }
    }
}

/// Every route wren wants in the main table, by destination.
pub type DesiredRoutes = BTreeMap<IpNet, RouteTarget>;

/// Computes the desired routes: imported BGP routes, then local blocks as blackholes, then
/// local pods. Later entries win on the same destination: a pod's own route is never
/// replaced by anything learned.
pub fn desired_routes(
    node: &str,
    view: &ClusterView,
    imported: &BTreeMap<IpNet, IpAddr>,
) -> DesiredRoutes {
    let mut out: DesiredRoutes = imported
        .iter()
        .map(|(prefix, next_hop)| (*prefix, RouteTarget::Gateway(*next_hop)))
        .collect();
    for block in view.local_blocks(node) {
        out.insert(block, RouteTarget::Blackhole);
    }
    for workload in &view.workloads {
        for address in &workload.addresses {
            out.insert(
                IpNet::from(address.addr()),
                RouteTarget::Device(workload.host_interface.clone()),
            );
        }
    }
    out
}

/// What one reconcile pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Routes added or replaced.
    pub changed: usize,
    /// Stale routes of ours removed.
    pub removed: usize,
}

/// A reconcile pass that failed (entirely or for some routes).
#[derive(Debug, thiserror::Error)]
#[error("route reconcile failed: {0}")]
pub struct ProgramError(pub String);

/// Puts desired routes into the kernel.
#[async_trait]
pub trait RouteProgrammer: Send + Sync {
    /// Makes the kernel's wren routes (protocols 186 and 201) exactly `desired`: adds and
    /// replaces what differs, removes ours that are not desired, leaves every other route.
    /// With `keep_learned`, stale protocol-186 routes stay: after a restart, until BGP has
    /// re-learned them, the routes in the kernel are the best knowledge there is.
    async fn reconcile(
        &self,
        desired: &DesiredRoutes,
        keep_learned: bool,
    ) -> Result<ReconcileReport, ProgramError>;

    /// The networks the node reaches directly (its connected routes), where the next hop of
    /// a learned route must lie; `None` when the programmer cannot tell, which leaves every
    /// next hop usable.
    async fn connected_networks(&self) -> Result<Option<Vec<IpNet>>, ProgramError> {
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A kernel stand-in: a table of routes with their protocol numbers.
    use super::*;
    use std::sync::Mutex;

    /// One route in the fake table.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FakeRoute {
        pub target: RouteTarget,
        pub protocol: u8,
    }

    /// Reconciles into an in-memory table with the real programmer's rules.
    #[derive(Default)]
    pub struct FakeKernel {
        pub table: Mutex<BTreeMap<IpNet, FakeRoute>>,
        pub passes: Mutex<usize>,
        pub fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl RouteProgrammer for FakeKernel {
        async fn reconcile(
            &self,
            desired: &DesiredRoutes,
            keep_learned: bool,
        ) -> Result<ReconcileReport, ProgramError> {
            *self.passes.lock().unwrap() += 1;
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ProgramError("netlink said no".into()));
            }
            let mut table = self.table.lock().unwrap();
            let mut report = ReconcileReport::default();
            let ours = |r: &FakeRoute| {
                r.protocol == PROTO_WREN || (r.protocol == PROTO_BGP && !keep_learned)
            };
            let stale: Vec<IpNet> = table
                .iter()
                .filter(|(dst, r)| ours(r) && !desired.contains_key(dst))
                .map(|(dst, _)| *dst)
                .collect();
            for dst in stale {
                table.remove(&dst);
                report.removed += 1;
            }
            for (dst, target) in desired {
                let want = FakeRoute {
                    target: target.clone(),
                    protocol: target.protocol(),
                };
                if table.get(dst) != Some(&want) {
                    table.insert(*dst, want);
                    report.changed += 1;
                }
            }
            Ok(report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::view::BlockInfo;
    use wren_model::Workload;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn blackholes_pods_and_learned_routes_with_their_protocols() {
        let mut v = ClusterView::default();
        v.blocks.insert(
            net("10.65.0.0/26"),
            BlockInfo {
                affinity: Some("a".into()),
                ..Default::default()
            },
        );
        v.confirmed_affinities.insert(net("10.65.0.0/26"));
        v.workloads.push(Workload {
            node: "a".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            network: "k8s".into(),
            handle: "k8s.c1".into(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            netns: "/var/run/netns/x".into(),
            addresses: vec![net("10.65.0.5/32"), net("fd00:65::5/128")],
            host_interface: "wren0123456789a".into(),
            mac: "ee:ee:ee:ee:ee:ee".into(),
        });
        let learned: BTreeMap<IpNet, IpAddr> = [
            (net("10.65.0.64/26"), "10.0.0.2".parse().unwrap()),
            (net("10.65.0.5/32"), "10.0.0.2".parse().unwrap()),
        ]
        .into();
        let d = desired_routes("a", &v, &learned);
        assert_eq!(d[&net("10.65.0.0/26")], RouteTarget::Blackhole);
        assert_eq!(
            d[&net("10.65.0.64/26")],
            RouteTarget::Gateway("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            d[&net("10.65.0.5/32")],
            RouteTarget::Device("wren0123456789a".into())
        );
        assert_eq!(
            d[&net("fd00:65::5/128")],
            RouteTarget::Device("wren0123456789a".into())
        );
        assert_eq!(d.len(), 4);
        assert_eq!(d[&net("10.65.0.64/26")].protocol(), PROTO_BGP);
        assert_eq!(d[&net("10.65.0.0/26")].protocol(), PROTO_WREN);
    }
}
