//! The orphan sweep: what an ADD cut short (the agent killed part-way) leaves on this node —
//! a host veth with its pod end still in the pod's namespace, addresses allocated under the
//! pod's handle — with no workload record to explain it.
//!
//! The sweep runs at start and then every half `orphanGracePeriod` (at least every second, at
//! most every minute). Each round lists this node's workload records, the pods' host veths
//! (`wren` + 11 hex digits) and this node's handles; a veth no record names and a handle
//! no record carries is an orphan. An orphan is removed only once it has been one for the
//! whole grace period, which leaves the runtime its chance to retry the ADD (which builds the
//! same interface again under the same handle) or to DEL it. The removal itself takes the
//! lock an ADD of that interface or handle holds and reads the records again, so the sweep
//! never touches what an ADD is building and never removes what a record explains. A node's
//! tunnel address is not a pod's and is never swept. Nothing runs while the datastore is not
//! trusted to hold the cluster's data ([`super::identity`]).
//!
//! [`candidates`] and [`OrphanTracker`] are the pure core.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wren_ipam::handle::Handle;
use wren_model::{Workload, keys, vxlan_tunnel_handle};
use wren_store::Store;
use wren_store::json::JsonStore;

use super::Shared;
use crate::cni::{CniHandler, OrphanOutcome};
use crate::dataplane::HostVeth;

/// Something of this node that no workload record explains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Orphan {
    /// A pod's host veth.
    Interface(String),
    /// An IPAM handle of this node.
    Allocation(String),
}

/// The orphans among `veths` and `handles` (name → document), given this node's workload
/// records.
pub fn candidates<'a>(
    node: &str,
    workloads: &[Workload],
    veths: &[HostVeth],
    handles: impl IntoIterator<Item = (&'a str, &'a Handle)>,
) -> BTreeSet<Orphan> {
    let interfaces: BTreeSet<&str> = workloads
        .iter()
        .map(|w| w.host_interface.as_str())
        .collect();
    let held: BTreeSet<&str> = workloads.iter().map(|w| w.handle.as_str()).collect();
    let tunnel = vxlan_tunnel_handle(node);
    let mut found: BTreeSet<Orphan> = veths
        .iter()
        .filter(|v| !interfaces.contains(v.name.as_str()))
        .map(|v| Orphan::Interface(v.name.clone()))
        .collect();
    found.extend(
        handles
            .into_iter()
            .filter(|(name, h)| h.node == node && *name != tunnel && !held.contains(name))
            .map(|(name, _)| Orphan::Allocation(name.to_owned())),
    );
    found
}

/// Remembers since when each orphan has been one.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    first_seen: HashMap<Orphan, Instant>,
}

impl OrphanTracker {
    /// Records the orphans seen `now` (forgetting those no longer orphans) and returns those
    /// that have been orphans for at least `grace`.
    pub fn observe(
        &mut self,
        now: Instant,
        seen: BTreeSet<Orphan>,
        grace: Duration,
    ) -> Vec<Orphan> {
        self.first_seen.retain(|o, _| seen.contains(o));
        let mut ripe = Vec::new();
        for orphan in seen {
            let since = *self.first_seen.entry(orphan.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                ripe.push(orphan);
            }
        }
        ripe
    }

    /// Forgets `orphan` (removed, or explained after all).
    pub fn forget(&mut self, orphan: &Orphan) {
        self.first_seen.remove(orphan);
    }
}

/// The sweep task.
pub struct OrphanSweep {
    /// This node.
    pub node: String,
    /// How long an orphan is left to its runtime.
    pub grace: Duration,
    /// The CNI handler: its records, its locks and its kernel and IPAM backends.
    pub handler: Arc<CniHandler>,
    /// The datastore (this node's handles).
    pub store: Arc<dyn Store>,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepRound {
    /// Orphans seen.
    pub seen: usize,
    /// Host veths removed.
    pub interfaces: usize,
    /// Handles whose addresses were released.
    pub allocations: usize,
}

impl OrphanSweep {
    /// The period between rounds.
    pub fn period(&self) -> Duration {
        (self.grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// One round; `None` when the datastore is not trusted or did not answer (nothing is
    /// judged on a partial view).
    pub async fn round(&self, tracker: &mut OrphanTracker, shared: &Shared) -> Option<SweepRound> {
        if !shared.datastore_trusted() {
            return None;
        }
        // Kernel first, records after: a veth made between the two reads is then explained
        // by its record rather than taken for an orphan.
        let veths = match self.handler.host_interfaces().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "orphan sweep: cannot list the host interfaces");
                return None;
            }
        };
        let handles = self.store.list_json::<Handle>(keys::HANDLES).await;
        let workloads = self.handler.workloads().await;
        let (Ok(handles), Ok(workloads)) = (handles, workloads) else {
            return None;
        };
        let named: Vec<(String, Handle)> = handles
            .items
            .into_iter()
            .map(|v| {
                let name = v
                    .key
                    .strip_prefix(keys::HANDLES)
                    .unwrap_or(&v.key)
                    .to_owned();
                (name, v.value)
            })
            .collect();
        let seen = candidates(
            &self.node,
            &workloads,
            &veths,
            named.iter().map(|(n, h)| (n.as_str(), h)),
        );
        let mut round = SweepRound {
            seen: seen.len(),
            ..SweepRound::default()
        };
        for orphan in tracker.observe(Instant::now(), seen, self.grace) {
            // The datastore may have lost its data since the round began.
            if !shared.datastore_trusted() {
                return Some(round);
            }
            let outcome = match &orphan {
                Orphan::Interface(name) => self.handler.remove_orphan_interface(name).await,
                Orphan::Allocation(handle) => self.handler.release_orphan_handle(handle).await,
            };
            match (&orphan, outcome) {
                (Orphan::Interface(name), Ok(OrphanOutcome::Removed(_))) => {
                    let found = veths.iter().find(|v| v.name == *name);
                    tracing::info!(
                        interface = name,
                        workload = found.and_then(|v| v.workload_id.as_deref()).unwrap_or("(not named yet)"),
                        up = found.is_some_and(|v| v.up),
                        grace = ?self.grace,
                        "removed a host veth no workload record explains"
                    );
                    shared.metrics.orphan_interfaces_removed.inc();
                    round.interfaces += 1;
                }
                (Orphan::Allocation(handle), Ok(OrphanOutcome::Removed(freed))) => {
                    tracing::info!(handle, addresses = ?freed, grace = ?self.grace, "released an allocation no workload record explains");
                    shared.metrics.orphan_allocations_released.inc();
                    round.allocations += 1;
                }
                (_, Ok(_)) => {}
                (orphan, Err(e)) => {
                    tracing::warn!(?orphan, error = %e.msg, "orphan sweep: cannot remove; retrying next round");
                    continue;
                }
            }
            tracker.forget(&orphan);
        }
        Some(round)
    }

    /// Runs a round at once and then every [`OrphanSweep::period`] until `shutdown` fires.
    pub async fn run(self, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
        let mut tracker = OrphanTracker::default();
        let mut tick = tokio::time::interval(self.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.round(&mut tracker, &shared).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(host: &str, handle: &str) -> Workload {
        Workload {
            node: "n1".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            network: "net".into(),
            handle: handle.into(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            netns: "/run/netns/p".into(),
            addresses: Vec::new(),
            host_interface: host.into(),
            mac: String::new(),
        }
    }

    fn veth(name: &str) -> HostVeth {
        HostVeth {
            name: name.into(),
            workload_id: None,
            up: false,
        }
    }

    fn handle(node: &str) -> Handle {
        Handle {
            node: node.into(),
            created_at: 0,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn only_what_no_record_explains_is_an_orphan() {
        let workloads = [workload("wren00000000001", "net.c1")];
        let veths = [veth("wren00000000001"), veth("wren00000000002")];
        let (mine, other, tunnel) = (handle("n1"), handle("n2"), handle("n1"));
        let handles = [
            ("net.c1", &mine),
            ("net.c2", &mine),
            ("net.c3", &other),
            ("vxlan-tunnel-addr-n1", &tunnel),
        ];
        let found = candidates("n1", &workloads, &veths, handles);
        assert_eq!(
            found,
            BTreeSet::from([
                Orphan::Interface("wren00000000002".into()),
                Orphan::Allocation("net.c2".into()),
            ])
        );
    }

    #[test]
    fn an_orphan_ripens_after_the_grace_period_and_one_explained_meanwhile_starts_over() {
        let grace = Duration::from_secs(60);
        let mut tracker = OrphanTracker::default();
        let t0 = Instant::now();
        let a = Orphan::Interface("wren00000000001".into());
        let seen = || BTreeSet::from([a.clone()]);
        assert!(tracker.observe(t0, seen(), grace).is_empty());
        assert!(
            tracker
                .observe(t0 + Duration::from_secs(59), seen(), grace)
                .is_empty()
        );
        // Explained for one round (the runtime retried the ADD), orphaned again: it starts over.
        tracker.observe(t0 + Duration::from_secs(59), BTreeSet::new(), grace);
        assert!(
            tracker
                .observe(t0 + Duration::from_secs(61), seen(), grace)
                .is_empty()
        );
        assert_eq!(
            tracker.observe(t0 + Duration::from_secs(121), seen(), grace),
            vec![a]
        );
    }
}
