//! The automatic leak release: what `wren ipam check` and `wren ipam release` do by hand,
//! run by the agents themselves, one agent of the cluster at a time.
//!
//! Every `leakReleaseInterval` each agent tries to create the lock key
//! (`locks/ipam-leak-release`) on a lease of its own; the one that succeeds runs the check
//! with `leakGracePeriod` as its grace, frees what it found (each item re-checked against the
//! store and written under the revisions it read, as `wren ipam release` does), logs each
//! release, counts it (`wren_ipam_leaks_released_total`) and deletes the key. The others
//! find the key present and skip that round. Should the holder die, the key goes with its
//! lease; should a release outlast the lease, two runs may overlap, which costs work but
//! frees nothing twice: each write is a compare-and-swap on what it re-read.
//!
//! Nothing runs while the datastore is not trusted to hold the cluster's data
//! ([`super::identity`]): on an emptied datastore every allocation would look leaked.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wren_ipam::{CheckOptions, Ipam, ReleaseSummary};
use wren_model::keys;
use wren_store::{Store, StoreError};

use super::Shared;

/// The lease behind the lock key, renewed while a release runs.
const LOCK_TTL_SECS: i64 = 30;

/// How one round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// The datastore is not trusted (or not checked yet): nothing was read.
    NotTrusted,
    /// Another agent holds the lock.
    Busy,
    /// This agent ran the check; the number of items freed.
    Released(usize),
}

/// The task's settings.
#[derive(Debug, Clone)]
pub struct LeakRelease {
    /// This node (written into the lock key, so an operator sees who runs it).
    pub node: String,
    /// Period between rounds; zero turns the task off.
    pub interval: Duration,
    /// Allocations younger than this are left alone.
    pub grace: Duration,
}

/// How many items a release freed.
fn freed(summary: &ReleaseSummary) -> usize {
    summary.addresses.len()
        + summary.blocks_released.len()
        + summary.blocks_unaffined.len()
        + summary.affinities_removed
        + summary.handles_removed
}

impl LeakRelease {
    /// One round: take the lock, check, release, give the lock back.
    pub async fn round(
        &self,
        store: &Arc<dyn Store>,
        ipam: &Ipam,
        shared: &Shared,
    ) -> Result<Round, wren_ipam::IpamError> {
        if !shared.datastore_trusted() {
            return Ok(Round::NotTrusted);
        }
        let lease = store.grant_lease(LOCK_TTL_SECS).await?;
        let holder = serde_json::json!({ "node": self.node, "pid": std::process::id() });
        let taken = store
            .create(
                keys::LEAK_RELEASE_LOCK,
                holder.to_string().into_bytes(),
                Some(lease),
            )
            .await;
        match taken {
            Ok(_) => {}
            Err(e) => {
                let _ = store.revoke_lease(lease).await;
                return match e {
                    e if e.is_conflict() => Ok(Round::Busy),
                    e => Err(e.into()),
                };
            }
        }
        let keep_alive = wren_store::keep_alive_task(store.clone(), lease, LOCK_TTL_SECS);
        let outcome = self.release(ipam, shared).await;
        keep_alive.abort();
        // Revoking the lease deletes the key.
        if let Err(e) = store.revoke_lease(lease).await
            && !matches!(e, StoreError::LeaseNotFound(_))
        {
            tracing::warn!(error = %e, "cannot give the leak release lock back; it expires with its lease");
        }
        outcome.map(Round::Released)
    }

    async fn release(&self, ipam: &Ipam, shared: &Shared) -> Result<usize, wren_ipam::IpamError> {
        let report = ipam.check(CheckOptions { grace: self.grace }).await?;
        if report.is_clean() {
            return Ok(0);
        }
        // The check read the store; trust it only if the identity still holds.
        if !shared.datastore_trusted() {
            return Ok(0);
        }
        let summary = ipam.release_from_check(&report).await?;
        for leak in report
            .leaked
            .iter()
            .filter(|l| summary.addresses.contains(&l.address))
        {
            tracing::info!(
                address = %leak.address,
                handle = leak.handle,
                node = leak.node.as_deref().unwrap_or("-"),
                reason = ?leak.reason,
                "leak release: freed an address"
            );
        }
        for block in &summary.blocks_released {
            tracing::info!(%block, "leak release: gave back the block of a node that is gone");
        }
        for block in &summary.blocks_unaffined {
            tracing::info!(%block, "leak release: took the affinity of a node that is gone off a block");
        }
        if summary.affinities_removed + summary.handles_removed > 0 {
            tracing::info!(
                affinities = summary.affinities_removed,
                handles = summary.handles_removed,
                "leak release: removed records that claimed nothing"
            );
        }
        for skipped in &summary.skipped {
            tracing::info!(reason = skipped, "leak release: left alone");
        }
        let n = freed(&summary);
        shared.metrics.ipam_leaks_released.inc_by(n as u64);
        Ok(n)
    }

    /// Runs a round every interval until `shutdown` fires; does nothing when the interval
    /// is zero.
    pub async fn run(
        self,
        store: Arc<dyn Store>,
        ipam: Arc<Ipam>,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if self.interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: let the agent settle for one interval first.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.round(&store, &ipam, &shared).await {
                Ok(Round::Released(n)) if n > 0 => {
                    tracing::info!(freed = n, "leak release done")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "leak release failed; retrying next interval"),
            }
        }
    }
}
