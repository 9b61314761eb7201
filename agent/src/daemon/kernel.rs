//! [`RouteProgrammer`] on the kernel, through the dataplane's [`RouteManager`].
//!
//! The manager blocks while the kernel applies a batch, so every pass runs on the blocking
//! pool; one manager (one netlink socket) serves the agent's whole life.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;

use super::routes::{DesiredRoutes, ProgramError, ReconcileReport, RouteProgrammer, RouteTarget};
use crate::dataplane::{Protocol, Route, RouteError, RouteManager};

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

fn reconcile_blocking(
    manager: &Mutex<RouteManager>,
    desired: &DesiredRoutes,
    keep_learned: bool,
) -> Result<ReconcileReport, ProgramError> {
    let mut manager = manager
        .lock()
        .map_err(|_| ProgramError("route manager poisoned".into()))?;
    let mut routes: Vec<Route> = desired.iter().map(|(dst, t)| to_route(*dst, t)).collect();
    if keep_learned {
        // Until BGP has re-learned what it knew before a restart, the BGP routes already in
        // the kernel are kept (they are re-stated so the reconcile leaves them alone).
        let wanted: BTreeSet<IpNet> = desired.keys().copied().collect();
        let installed = manager
            .installed()
            .map_err(|e| ProgramError(e.to_string()))?;
        routes.extend(
            installed
                .into_iter()
                .filter(|r| r.protocol == Protocol::BGP && !wanted.contains(&r.dst)),
        );
    }
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
}
