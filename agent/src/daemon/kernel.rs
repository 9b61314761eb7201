//! [`RouteProgrammer`] on the kernel, through the dataplane's [`RouteManager`].
//!
//! The manager blocks while the kernel applies a batch, so every pass runs on the blocking
//! pool; one manager (one netlink socket) serves the agent's whole life.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;

use super::routes::{DesiredRoutes, ProgramError, ReconcileReport, RouteProgrammer, RouteTarget};
use crate::dataplane::{NextHop, Protocol, Route, RouteError, RouteManager};

/// The kernel's main table, programmed through one long-lived netlink socket.
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

    /// The route manager's totals (changes, failures, kernel dumps read).
    pub fn counters(&self) -> crate::dataplane::RouteCounters {
        match self.manager.lock() {
            Ok(m) => m.counters(),
            Err(poisoned) => poisoned.into_inner().counters(),
        }
    }

    /// Whether the kernel already holds routes of wren's protocols (left by a previous run,
    /// which this one adopts).
    pub fn has_routes(&self) -> Result<bool, RouteError> {
        let mut manager = match self.manager.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        Ok(!manager.installed()?.is_empty())
    }
}

/// The dataplane's form of one desired route.
pub fn to_route(dst: IpNet, target: &RouteTarget) -> Route {
    match target {
        RouteTarget::Blackhole => Route::blackhole(dst),
        RouteTarget::Gateway(via) => Route::via(dst, *via),
        RouteTarget::Device(dev) => Route::device(dst, dev.clone()),
        RouteTarget::Tunnel { via, dev } => {
            Route::via_onlink(dst, *via, dev.clone()).with_protocol(Protocol::BGP)
        }
    }
}

/// Whether `dev` is a pod's host-side veth: `wren` and 11 hex digits.
fn is_pod_veth(dev: &str) -> bool {
    dev.len() == 15 && dev.starts_with("wren") && dev[4..].chars().all(|c| c.is_ascii_hexdigit())
}

/// Routes of ours in the kernel that a pass leaves alone although it does not want them:
///
/// - until BGP has re-learned what it knew before a restart (`keep_learned`), the BGP routes
///   already installed: they are the best knowledge there is;
/// - a pod's host route on its veth: the CNI plugin installs it before it records the
///   workload, and a pass in between must not take it away. It goes with the veth (the
///   kernel removes a device's routes with the device), so it cannot outlive its pod.
fn kept(installed: Vec<Route>, desired: &DesiredRoutes, keep_learned: bool) -> Vec<Route> {
    installed
        .into_iter()
        .filter(|r| !desired.contains_key(&r.dst))
        .filter(|r| match &r.next_hop {
            NextHop::Device { dev } => r.protocol == Protocol::WREN && is_pod_veth(dev),
            _ => keep_learned && r.protocol == Protocol::BGP,
        })
        .collect()
}

fn reconcile_blocking(
    manager: &Mutex<RouteManager>,
    desired: &DesiredRoutes,
    keep_learned: bool,
) -> Result<ReconcileReport, ProgramError> {
    let mut manager = manager
        .lock()
        .map_err(|_| ProgramError("route manager poisoned".into()))?;
    let mut routes: Vec<Route> = desired.iter().map(|(dst, t)| to_route(*dst, t)).collect();
    let installed = manager
        .installed()
        .map_err(|e| ProgramError(e.to_string()))?;
    routes.extend(kept(installed, desired, keep_learned));
    let report = manager
        .reconcile(&routes)
        .map_err(|e| ProgramError(e.to_string()))?;
    if !report.failures.is_empty() {
        let shown: Vec<String> = report
            .failures
            .iter()
            .take(3)
            .map(ToString::to_string)
            .collect();
        return Err(ProgramError(format!(
            "{} route(s) failed: {}{}",
            report.failures.len(),
            shown.join("; "),
            if report.failures.len() > 3 {
                "; …"
            } else {
                ""
            }
        )));
    }
    Ok(ReconcileReport {
        changed: report.added + report.replaced,
        removed: report.removed,
    })
}

#[async_trait]
impl RouteProgrammer for KernelRoutes {
    async fn reconcile(
        &self,
        desired: &DesiredRoutes,
        keep_learned: bool,
    ) -> Result<ReconcileReport, ProgramError> {
        let manager = self.manager.clone();
        let desired = desired.clone();
        tokio::task::spawn_blocking(move || reconcile_blocking(&manager, &desired, keep_learned))
            .await
            .map_err(|e| ProgramError(format!("route reconcile task failed: {e}")))?
    }

    async fn connected_networks(&self) -> Result<Option<Vec<IpNet>>, ProgramError> {
        let manager = self.manager.clone();
        tokio::task::spawn_blocking(move || {
            let mut manager = manager
                .lock()
                .map_err(|_| ProgramError("route manager poisoned".into()))?;
            manager
                .connected_networks()
                .map(Some)
                .map_err(|e| ProgramError(e.to_string()))
        })
        .await
        .map_err(|e| ProgramError(format!("connected routes task failed: {e}")))?
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
        let installed = vec![
            Route::device(net("10.65.0.5/32"), "wren0123456789a"),
            Route::device(net("10.65.0.6/32"), "eth0"),
            Route::blackhole(net("10.99.0.0/24")),
            Route::via(net("10.65.1.0/26"), "10.0.0.2".parse().unwrap()),
            Route::device(net("10.65.0.7/32"), "wren0123456789b"),
        ];
        let mut desired = DesiredRoutes::new();
        desired.insert(
            net("10.65.0.7/32"),
            RouteTarget::Device("wrenfffffffffff".into()),
        );
        let dsts = |routes: Vec<Route>| {
            routes
                .into_iter()
                .map(|r| r.dst.to_string())
                .collect::<Vec<_>>()
        };
        // Synced: only the pod route the record has not caught up with yet.
        assert_eq!(
            dsts(kept(installed.clone(), &desired, false)),
            ["10.65.0.5/32"]
        );
        // Not yet synced: the learned route too; never a stale blackhole or a foreign device.
        assert_eq!(
            dsts(kept(installed, &desired, true)),
            ["10.65.0.5/32", "10.65.1.0/26"]
        );
        assert!(!is_pod_veth("wren.vxlan") && !is_pod_veth("wrentunl0"));
    }
}
