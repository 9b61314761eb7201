//! The route programmer: the kernel's main table made to hold the desired routes.
//!
//! A pass hands it the whole desired set ([`RouteProgrammer::reconcile`]: one read of the
//! kernel's routes of wren's protocols, then the difference fixed in both directions), or
//! only what changed since the last pass ([`RouteProgrammer::apply`], made by
//! [`route_changes`]: no read at all, for a burst of BGP updates). Either way routes of other
//! protocols are never touched, and the same rule says which routes of ours stay although
//! they are not desired ([`kept_when_undesired`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;

use crate::dataplane::pod::is_host_ifname;
use crate::dataplane::{
    NextHop, Protocol, Route, RouteChange, RouteError, RouteFailure, RouteManager, RouteReport,
};
use crate::sync::lock;

/// Every route wren wants in the main table, by destination.
pub type DesiredRoutes = BTreeMap<IpNet, Route>;

/// What one programming of the routes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutesOutcome {
    /// Routes added or replaced.
    pub changed: usize,
    /// Stale routes of ours removed.
    pub removed: usize,
    /// The node's connected networks, when the kernel's tables were read for them (a full
    /// reconcile reads them in the same go).
    pub connected: Option<Vec<IpNet>>,
}

/// Why the routes could not be brought to the desired state.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The kernel's tables could not be read or written at all.
    #[error(transparent)]
    Table(#[from] RouteError),
    /// Some routes failed; the others are in place.
    #[error("{} route(s) failed: {}", .0.len(), first_failures(.0))]
    Routes(Vec<RouteFailure>),
    /// The blocking task that drives netlink ended abnormally.
    #[error("the route programming task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn first_failures(failures: &[RouteFailure]) -> String {
    let shown: Vec<String> = failures.iter().take(3).map(ToString::to_string).collect();
    let more = if failures.len() > 3 { "; …" } else { "" };
    format!("{}{more}", shown.join("; "))
}

impl RoutesOutcome {
    fn of(report: RouteReport, connected: Option<Vec<IpNet>>) -> Result<Self, RoutesError> {
        if !report.failures.is_empty() {
            return Err(RoutesError::Routes(report.failures));
        }
        Ok(RoutesOutcome {
            changed: report.added + report.replaced,
            removed: report.removed,
            connected,
        })
    }
}

/// Whether a route of ours that no pass desires stays in the kernel all the same:
///
/// - until BGP has re-learned what it knew before a restart (`keep_learned`), the BGP routes
///   already installed: they are the best knowledge there is;
/// - a pod's host route on its veth: the CNI plugin installs it before it records the
///   workload, and a pass in between must not take it away. It goes with the veth (the
///   kernel removes a device's routes with the device), so it cannot outlive its pod.
pub fn kept_when_undesired(route: &Route, keep_learned: bool) -> bool {
    match &route.next_hop {
        NextHop::Device { dev } => route.protocol == Protocol::WREN && is_host_ifname(dev),
        _ => keep_learned && route.protocol == Protocol::BGP,
    }
}

/// The changes that take the kernel from `programmed` (what the last pass left there) to
/// `desired`: new destinations are added (the kernel refuses where somebody else's route
/// is), changed ones replaced, undesired ones removed unless [`kept_when_undesired`].
pub fn route_changes(
    programmed: &DesiredRoutes,
    desired: &DesiredRoutes,
    keep_learned: bool,
) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    for (dst, route) in desired {
        match programmed.get(dst) {
            None => changes.push(RouteChange::Add(route.clone())),
            Some(old) if old != route => changes.push(RouteChange::Replace(route.clone())),
            Some(_) => {}
        }
    }
    changes.extend(
        programmed
            .iter()
            .filter(|(dst, old)| {
                !desired.contains_key(dst) && !kept_when_undesired(old, keep_learned)
            })
            .map(|(_, old)| RouteChange::Remove(old.clone())),
    );
    changes
}

/// Puts desired routes into the kernel.
#[async_trait]
pub trait RouteProgrammer: Send + Sync {
    /// Makes the kernel's wren routes (protocols 186 and 201) exactly `desired`, but for the
    /// routes [`kept_when_undesired`]: adds and replaces what differs, removes the rest of
    /// ours, leaves every other route. Reads the kernel's tables once, the node's connected
    /// networks with them.
    async fn reconcile(
        &self,
        desired: &DesiredRoutes,
        keep_learned: bool,
    ) -> Result<RoutesOutcome, RoutesError>;

    /// Applies `changes` without reading the kernel first.
    async fn apply(&self, changes: Vec<RouteChange>) -> Result<RoutesOutcome, RoutesError>;
}

/// The kernel's main table, programmed through one long-lived netlink socket.
///
/// The manager blocks while the kernel applies a batch, so every call runs on the blocking
/// pool; one manager (one netlink socket) serves the agent's whole life.
pub struct KernelRoutes {
    manager: Arc<Mutex<RouteManager>>,
}

impl KernelRoutes {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, RouteError> {
        Ok(Self {
            manager: Arc::new(Mutex::new(RouteManager::new()?)),
        })
    }

    /// Whether the kernel already holds routes of wren's protocols (left by a previous run,
    /// which this one adopts).
    pub fn has_routes(&self) -> Result<bool, RouteError> {
        Ok(!lock(&self.manager).installed()?.is_empty())
    }

    /// The route manager's totals (changes, failures, kernel dumps read).
    pub fn counters(&self) -> crate::dataplane::RouteCounters {
        lock(&self.manager).counters()
    }
}

#[async_trait]
impl RouteProgrammer for KernelRoutes {
    async fn reconcile(
        &self,
        desired: &DesiredRoutes,
        keep_learned: bool,
    ) -> Result<RoutesOutcome, RoutesError> {
        let manager = self.manager.clone();
        let routes: Vec<Route> = desired.values().cloned().collect();
        let (report, connected) = tokio::task::spawn_blocking(move || {
            lock(&manager).reconcile_keeping(&routes, |r| kept_when_undesired(r, keep_learned))
        })
        .await??;
        RoutesOutcome::of(report, Some(connected))
    }

    async fn apply(&self, changes: Vec<RouteChange>) -> Result<RoutesOutcome, RoutesError> {
        if changes.is_empty() {
            return Ok(RoutesOutcome::default());
        }
        let manager = self.manager.clone();
        let report = tokio::task::spawn_blocking(move || lock(&manager).apply(&changes)).await??;
        RoutesOutcome::of(report, None)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A kernel stand-in: a table of routes, programmed by the real programmer's rules.
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Reconciles into an in-memory table with the real programmer's rules.
    #[derive(Default)]
    pub struct FakeKernel {
        pub table: Mutex<BTreeMap<IpNet, Route>>,
        /// Full reconciles run.
        pub passes: Mutex<usize>,
        pub fail: AtomicBool,
    }

    fn refused() -> RoutesError {
        RoutesError::Table(RouteError::Netlink(
            crate::dataplane::NetlinkError::Kernel {
                errno: libc::EPERM,
                detail: None,
            },
        ))
    }

    #[async_trait]
    impl RouteProgrammer for FakeKernel {
        async fn reconcile(
            &self,
            desired: &DesiredRoutes,
            keep_learned: bool,
        ) -> Result<RoutesOutcome, RoutesError> {
            *self.passes.lock().unwrap() += 1;
            if self.fail.load(Ordering::SeqCst) {
                return Err(refused());
            }
            let mut table = self.table.lock().unwrap();
            let mut outcome = RoutesOutcome::default();
            let stale: Vec<IpNet> = table
                .iter()
                .filter(|(dst, r)| {
                    Protocol::OWNED.contains(&r.protocol)
                        && !desired.contains_key(dst)
                        && !kept_when_undesired(r, keep_learned)
                })
                .map(|(dst, _)| *dst)
                .collect();
            for dst in stale {
                table.remove(&dst);
                outcome.removed += 1;
            }
            for (dst, route) in desired {
                if table.get(dst) != Some(route) {
                    table.insert(*dst, route.clone());
                    outcome.changed += 1;
                }
            }
            Ok(outcome)
        }

        async fn apply(&self, changes: Vec<RouteChange>) -> Result<RoutesOutcome, RoutesError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(refused());
            }
            let mut table = self.table.lock().unwrap();
            let mut outcome = RoutesOutcome::default();
            for change in changes {
                match change {
                    RouteChange::Add(r) | RouteChange::Replace(r) => {
                        table.insert(r.dst, r);
                        outcome.changed += 1;
                    }
                    RouteChange::Remove(r) => {
                        if table.get(&r.dst).is_some_and(|t| t.protocol == r.protocol) {
                            table.remove(&r.dst);
                            outcome.removed += 1;
                        }
                    }
                }
            }
            Ok(outcome)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn pod_routes_and_learned_routes_before_sync_are_kept() {
        let pod = Route::device(net("10.65.0.5/32"), "wren0123456789a");
        let learned = Route::via(net("10.65.1.0/26"), "10.0.0.2".parse().unwrap());
        let foreign_device = Route::device(net("10.65.0.6/32"), "eth0");
        let blackhole = Route::blackhole(net("10.99.0.0/24"));
        // Synced: only the pod route the record has not caught up with yet.
        assert!(kept_when_undesired(&pod, false));
        assert!(!kept_when_undesired(&learned, false));
        assert!(!kept_when_undesired(&foreign_device, false));
        assert!(!kept_when_undesired(&blackhole, false));
        // Not yet synced: the learned route too; never a stale blackhole or a foreign device.
        assert!(kept_when_undesired(&learned, true));
        assert!(!kept_when_undesired(&blackhole, true));
        assert!(!is_host_ifname("wren.vxlan") && !is_host_ifname("wrentunl0"));
    }

    #[test]
    fn changes_add_replace_and_remove_only_what_differs() {
        let via = |dst: &str, gw: &str| Route::via(net(dst), gw.parse().unwrap());
        let programmed: DesiredRoutes = [
            via("10.65.1.0/26", "10.0.0.2"),
            via("10.65.2.0/26", "10.0.0.3"),
            via("10.65.3.0/26", "10.0.0.4"),
            Route::device(net("10.65.0.5/32"), "wren0123456789a"),
        ]
        .into_iter()
        .map(|r| (r.dst, r))
        .collect();
        let desired: DesiredRoutes = [
            via("10.65.1.0/26", "10.0.0.2"),
            via("10.65.2.0/26", "10.0.0.9"),
            via("10.65.4.0/26", "10.0.0.5"),
        ]
        .into_iter()
        .map(|r| (r.dst, r))
        .collect();
        assert_eq!(
            route_changes(&programmed, &desired, false),
            [
                RouteChange::Replace(via("10.65.2.0/26", "10.0.0.9")),
                RouteChange::Add(via("10.65.4.0/26", "10.0.0.5")),
                RouteChange::Remove(via("10.65.3.0/26", "10.0.0.4")),
            ]
        );
        // Before BGP has synced, the learned route stays.
        assert_eq!(route_changes(&programmed, &desired, true).len(), 2);
        assert!(route_changes(&desired, &desired, false).is_empty());
    }
}
