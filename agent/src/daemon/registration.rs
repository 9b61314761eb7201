//! Registration: `nodes/<name>` (kept across clean shutdowns) and `liveness/<name>` (attached to
//! a lease the agent keeps alive, so it vanishes on its own when the agent dies).
//!
//! The node document is merged, not overwritten: fields this agent does not own (the VXLAN
//! tunnel details written by the encapsulation code, labels set by an admin) are kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wren_model::{Node, keys};
use wren_store::json::JsonStore;
use wren_store::{LeaseId, Store, StoreError};

use super::reflector::DatastoreHealth;
use crate::config::AgentConfig;

/// The value of `liveness/<node>`: who holds it, for people reading etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    /// The agent's version.
    pub version: String,
    /// Unix time the lease was granted.
    pub since: u64,
}

/// Applies this agent's fields to a node document (a fresh one or the stored one).
pub fn node_document(config: &AgentConfig, existing: Option<Node>) -> Node {
    let mut node = existing.unwrap_or_else(|| Node::new(config.node_name.clone(), None));
    node.name = config.node_name.clone();
    node.ipv4 = Some(config.node_ip);
    node.ipv6 = config.node_ipv6;
    node.as_number = config.as_number;
    node.route_reflector_cluster_id = config.route_reflector_cluster_id;
    node
}

/// Writes `nodes/<name>` if it differs from what is stored (compare-and-swap, retried on
/// conflict with another writer such as the tunnel code).
pub async fn register_node(store: &dyn Store, config: &AgentConfig) -> Result<(), StoreError> {
    let key = keys::node(&config.node_name);
    loop {
        let existing = store.get_json::<Node>(&key).await?;
        let result = match existing {
            None => {
                store
                    .create_json(&key, &node_document(config, None), None)
                    .await
            }
            Some(current) => {
                let wanted = node_document(config, Some(current.value.clone()));
                if wanted == current.value {
                    return Ok(());
                }
                store.update_json(&key, &wanted, current.mod_revision).await
            }
        };
        match result {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether the node is registered and its liveness key held; read by `/readyz`.
#[derive(Debug, Default)]
pub struct Registered(AtomicBool);

impl Registered {
    /// Current value.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self, v: bool) {
        self.0.store(v, Ordering::SeqCst);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Registers the node and keeps its liveness lease alive until `shutdown` fires; then revokes
/// the lease (the node document stays). Failures are retried with backoff: while etcd is
/// away the node simply shows as not live.
pub async fn keep_registered(
    store: Arc<dyn Store>,
    config: AgentConfig,
    registered: Arc<Registered>,
    health: Arc<DatastoreHealth>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let ttl = config.liveness_ttl.as_secs().max(2) as i64;
    let period = Duration::from_millis(ttl as u64 * 1000 / 3);
    let mut backoff = Duration::from_millis(200);
    let mut lease: Option<LeaseId> = None;
    loop {
        let attempt: Result<LeaseId, StoreError> = async {
            register_node(store.as_ref(), &config).await?;
            let id = match lease {
                Some(id) => {
                    store.keep_alive(id).await?;
                    id
                }
                None => {
                    let id = store.grant_lease(ttl).await?;
                    let value = Liveness {
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        since: unix_now(),
                    };
                    store
                        .put_json(&keys::liveness(&config.node_name), &value, Some(id))
                        .await?;
                    id
                }
            };
            Ok(id)
        }
        .await;
        let failing = attempt.is_err();
        let wait = match attempt {
            Ok(id) => {
                if lease.is_none() {
                    tracing::info!(node = config.node_name, lease = id, "registered");
                }
                lease = Some(id);
                registered.set(true);
                health.set(true);
                backoff = Duration::from_millis(200);
                period
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "registration failed");
                if matches!(e, StoreError::LeaseNotFound(_)) {
                    lease = None;
                }
                if matches!(e, StoreError::Unavailable { .. }) {
                    health.set(false);
                }
                registered.set(false);
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // The datastore answers again: register now rather than a backoff later.
            _ = health.changed(), if failing => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Some(id) = lease {
        // A clean stop: the node is no longer live, but stays registered.
        if let Err(e) = store.revoke_lease(id).await {
            tracing::warn!(error = %e, "could not revoke the liveness lease; it will expire");
        }
    }
    registered.set(false);
}
