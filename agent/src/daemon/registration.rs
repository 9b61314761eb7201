//! Registration and ownership of a node name: `nodes/<name>` (kept across clean shutdowns)
//! and `liveness/<name>` (attached to a lease the agent keeps alive, so it vanishes on its own
//! when the agent dies).
//!
//! A node name has one owner: the agent whose lease holds `liveness/<name>`. The key's value
//! names the holder (its node address and an id of the agent process), so a second agent
//! started under the same name sees a live holder and refuses to start instead of rewriting
//! the node and drawing the other nodes' traffic to itself. An agent writes `nodes/<name>`
//! only in a transaction that checks it still holds the liveness key, deletes liveness only by
//! revoking its own lease (which never carries another holder's key), and puts the key and a
//! lease back whenever either disappears. [`plan_claim`] is the decision, without I/O;
//! [`Ownership`] carries it out against the store.
//!
//! The node document is merged, not overwritten: fields this agent does not own (the VXLAN
//! tunnel details written by the encapsulation code, labels set by an admin) are kept.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use wren_model::{Node, keys};
use wren_store::json::JsonStore;
use wren_store::{Compare, LeaseId, Revision, Store, StoreError, Txn, TxnOp, WatchStream};

use super::reflector::DatastoreHealth;
use crate::config::AgentConfig;

/// The value of `liveness/<node>`: who holds the node name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    /// The agent's version.
    pub version: String,
    /// Unix time the holder took the name.
    pub since: u64,
    /// The holder's node address (absent in values older agents wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Identifies the holding agent process: unique per start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The TTL of the holder's lease, in seconds; it renews the lease and checks the key every
    /// third of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl Liveness {
    /// The holder's address for messages.
    pub fn address_text(&self) -> String {
        self.address
            .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string())
    }

    /// Decodes a stored value; a value that does not parse still marks the name as held, by
    /// someone unknown, so nothing is ever taken on doubt.
    pub fn decode(value: &[u8]) -> Self {
        serde_json::from_slice(value).unwrap_or(Self {
            version: String::new(),
            since: 0,
            address: None,
            instance: None,
            ttl_secs: None,
        })
    }
}

/// Why this agent may not (or may no longer) use its node name.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// Another live agent held the name when this one started.
    #[error(
        "node {node} is held by a live agent at {address} (liveness/{node}, for {held_for}s); \
         stop that agent or let its lease expire, or start this one with --take-over to take \
         the name over deliberately"
    )]
    HeldByAnother {
        /// The node name.
        node: String,
        /// The holder's address.
        address: String,
        /// Seconds since the holder took the name.
        held_for: u64,
    },
    /// Another agent took the name over while this one ran.
    #[error("node {node} was taken over by the agent at {address}; this agent stops")]
    TakenOver {
        /// The node name.
        node: String,
        /// The new holder's address.
        address: String,
    },
    /// The datastore failed; retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OwnershipError {
    /// True when the agent must stop rather than retry.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, OwnershipError::Store(_))
    }
}

/// Who holds the name, as seen by this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: the key is absent.
    Nobody,
    /// This agent process.
    Me,
    /// An earlier agent of this node (same address, another process): one that crashed or is
    /// being replaced on the same host; the local socket check has already made sure it no
    /// longer serves there.
    Predecessor(Liveness),
    /// An agent somewhere else.
    Other(Liveness),
}

impl Holder {
    /// Classifies the stored value against this agent's own.
    pub fn of(stored: Option<Liveness>, me: &Liveness) -> Self {
        match stored {
            None => Holder::Nobody,
            Some(l) if l.instance.is_some() && l.instance == me.instance => Holder::Me,
            Some(l) if l.address.is_some() && l.address == me.address => Holder::Predecessor(l),
            Some(l) => Holder::Other(l),
        }
    }
}

/// What to do about `liveness/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimStep {
    /// This agent holds it: nothing to write.
    Keep,
    /// Write it (with this agent's lease) if it is still as it was read.
    Write,
}

/// Decides whether this agent may write the liveness key. `held_before` is whether it has held
/// the name since it started: an agent that held it and finds someone else there was taken
/// over, and stops; one that never held it refuses a live holder elsewhere unless told to
/// take over.
pub fn plan_claim(
    node: &str,
    holder: Holder,
    held_before: bool,
    take_over: bool,
) -> Result<ClaimStep, OwnershipError> {
    match holder {
        Holder::Me => Ok(ClaimStep::Keep),
        Holder::Nobody => Ok(ClaimStep::Write),
        Holder::Predecessor(_) if !held_before => Ok(ClaimStep::Write),
        Holder::Other(_) if !held_before && take_over => Ok(ClaimStep::Write),
        Holder::Other(l) if !held_before => Err(OwnershipError::HeldByAnother {
            node: node.to_owned(),
            address: l.address_text(),
            held_for: unix_now().saturating_sub(l.since),
        }),
        Holder::Predecessor(l) | Holder::Other(l) => Err(OwnershipError::TakenOver {
            node: node.to_owned(),
            address: l.address_text(),
        }),
    }
}

/// This agent's hold on its node name: its lease and the revision of the liveness key it
/// wrote.
#[derive(Debug)]
pub struct Ownership {
    node: String,
    me: Liveness,
    ttl_secs: i64,
    take_over: bool,
    lease: Option<LeaseId>,
    held: Option<Revision>,
    held_before: bool,
}

impl Ownership {
    /// The hold of the agent `config` describes; nothing is written until [`Ownership::ensure`].
    pub fn new(config: &AgentConfig) -> Self {
        let ttl_secs = config.liveness_ttl.as_secs().max(2);
        Self {
            node: config.node_name.clone(),
            me: Liveness {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                since: unix_now(),
                address: Some(config.node_ip.addr()),
                instance: Some(instance_id()),
                ttl_secs: Some(ttl_secs),
            },
            ttl_secs: ttl_secs as i64,
            take_over: config.take_over,
            lease: None,
            held: None,
            held_before: false,
        }
    }

    /// How often the lease is renewed and the key checked.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.ttl_secs as u64 * 1000 / 3)
    }

    /// The mod revision of the liveness key this agent holds, once it holds it.
    pub fn held_revision(&self) -> Option<Revision> {
        self.held
    }

    /// Renews the lease of a name this agent holds, and nothing else: for a period in which
    /// neither its liveness key nor its node document changed (both watched). `false` when
    /// there is no hold to renew or the lease is gone: then [`Ownership::ensure`] is due.
    pub async fn renew(&mut self, store: &dyn Store) -> Result<bool, OwnershipError> {
        let (Some(lease), Some(_)) = (self.lease, self.held) else {
            return Ok(false);
        };
        match store.keep_alive(lease).await {
            Ok(()) => Ok(true),
            Err(StoreError::LeaseNotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes sure this agent holds its name: renews the lease (granting a new one when it
    /// expired), and writes the liveness key when it is absent or not on the lease. Refuses
    /// (a fatal error) when another agent holds the name.
    pub async fn ensure(&mut self, store: &dyn Store) -> Result<Revision, OwnershipError> {
        if let Some(id) = self.lease {
            match store.keep_alive(id).await {
                Ok(()) => {}
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!(
                        node = self.node,
                        "the liveness lease is gone; taking a new one"
                    );
                    self.lease = None;
                    self.held = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let lease = match self.lease {
            Some(id) => id,
            None => {
                let id = store.grant_lease(self.ttl_secs).await?;
                self.lease = Some(id);
                id
            }
        };
        let key = keys::liveness(&self.node);
        loop {
            let stored = store.get(&key).await?;
            let holder = Holder::of(
                stored.as_ref().map(|kv| Liveness::decode(&kv.value)),
                &self.me,
            );
            let on_my_lease = stored.as_ref().is_some_and(|kv| kv.lease == Some(lease));
            let step = plan_claim(&self.node, holder.clone(), self.held_before, self.take_over)?;
            if step == ClaimStep::Keep
                && on_my_lease
                && let Some(kv) = &stored
            {
                self.held = Some(kv.mod_revision);
                return Ok(kv.mod_revision);
            }
            match &holder {
                Holder::Predecessor(_) => tracing::info!(
                    node = self.node,
                    "replacing the liveness of this node's previous agent"
                ),
                Holder::Other(l) => tracing::warn!(
                    node = self.node,
                    holder = l.address_text(),
                    "taking the node name over from a live agent (--take-over)"
                ),
                Holder::Nobody if self.held_before => tracing::warn!(
                    node = self.node,
                    "liveness/{} disappeared; putting it back",
                    self.node
                ),
                _ => {}
            }
            let condition = match &stored {
                None => Compare::Absent(key.clone()),
                Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
            };
            let value = serde_json::to_vec(&self.me).map_err(|e| StoreError::InvalidData {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            let mut txn = Txn::new().when(condition);
            txn.ops.push(TxnOp::Put {
                key: key.clone(),
                value,
                lease: Some(lease),
            });
            match store.txn(txn).await {
                Ok(revision) => {
                    self.held = Some(revision);
                    self.held_before = true;
                    return Ok(revision);
                }
                // Someone wrote the key since it was read: look again.
                Err(e) if e.is_conflict() => continue,
                Err(StoreError::LeaseNotFound(_)) => {
                    self.lease = None;
                    self.held = None;
                    return Err(StoreError::LeaseNotFound(lease).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Revokes this agent's lease. That deletes only the keys attached to it: this agent's
    /// liveness, never a key another holder has written since.
    pub async fn release(&mut self, store: &dyn Store) {
        self.held = None;
        if let Some(id) = self.lease.take()
            && let Err(e) = store.revoke_lease(id).await
        {
            tracing::warn!(error = %e, "could not revoke the liveness lease; it will expire");
        }
    }
}

/// An id for this agent process: its pid, its start time and its address, enough to tell two
/// agents (or two starts of one) apart.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
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

/// Writes `nodes/<name>` if it differs from what is stored, in a transaction that also checks
/// this agent still holds `liveness/<name>` at `held` (so an agent that lost its name never
/// rewrites the node). A conflict on the node document (the tunnel code wrote it) is retried;
/// one on the liveness key is returned.
pub async fn register_node(
    store: &dyn Store,
    config: &AgentConfig,
    held: Revision,
) -> Result<(), StoreError> {
    let key = keys::node(&config.node_name);
    let liveness = keys::liveness(&config.node_name);
    loop {
        let existing = store.get_json::<Node>(&key).await?;
        let (wanted, condition) = match existing {
            None => (node_document(config, None), Compare::Absent(key.clone())),
            Some(current) => {
                let wanted = node_document(config, Some(current.value.clone()));
                if wanted == current.value {
                    return Ok(());
                }
                (
                    wanted,
                    Compare::ModRevision(key.clone(), current.mod_revision),
                )
            }
        };
        let value = serde_json::to_vec(&wanted).map_err(|e| StoreError::InvalidData {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let txn = Txn::new()
            .when(Compare::ModRevision(liveness.clone(), held))
            .when(condition)
            .put(key.clone(), value);
        match store.txn(txn).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { key: failed }) if failed == key => continue,
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

/// The next change of `key` itself; never, while there is no watch. A watch that ends is
/// dropped, to be made again.
async fn next_change(changes: &mut Option<WatchStream>, key: &str) {
    let Some(stream) = changes else {
        return std::future::pending().await;
    };
    // The watch is by prefix: `liveness/node1` also reports `liveness/node10`, which is
    // another node's business.
    loop {
        match stream.next().await {
            Some(Ok(event)) if event.key() == key => return,
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    *changes = None;
}

/// Keeps the node registered and its name held until `shutdown` fires: every third of the
/// liveness TTL, and at once when `liveness/<name>` or the node document changes, it renews
/// the lease, puts the key back if it went, and rewrites the node document if it differs.
/// A period in which both were watched and neither changed since they were last found right
/// only renews the lease: one request, not three. Datastore failures are
/// retried with backoff (the node simply shows as not live meanwhile). Losing the name to
/// another agent ends the loop with that error. Either way the lease is revoked at the end
/// (the node document stays).
pub async fn keep_registered(
    store: Arc<dyn Store>,
    config: AgentConfig,
    mut ownership: Ownership,
    registered: Arc<Registered>,
    health: Arc<DatastoreHealth>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), OwnershipError> {
    let period = ownership.period();
    let key = keys::liveness(&config.node_name);
    let node_key = keys::node(&config.node_name);
    let mut backoff = Duration::from_millis(200);
    let mut changes: Option<WatchStream> = None;
    let mut node_changes: Option<WatchStream> = None;
    // Both keys were found right, and both watched ever since without a change.
    let mut settled = false;
    let mut logged = false;
    let outcome = loop {
        for (stream, key) in [(&mut changes, &key), (&mut node_changes, &node_key)] {
            if stream.is_none() {
                // A watch made now misses nothing after the check below.
                settled = false;
                *stream = store.watch(key, 0).await.ok();
            }
        }
        let attempt: Result<(), OwnershipError> = async {
            if settled
                && changes.is_some()
                && node_changes.is_some()
                && ownership.renew(store.as_ref()).await?
            {
                return Ok(());
            }
            let held = ownership.ensure(store.as_ref()).await?;
            register_node(store.as_ref(), &config, held).await?;
            Ok(())
        }
        .await;
        let failing = attempt.is_err();
        settled = !failing;
        let wait = match attempt {
            Ok(()) => {
                if !logged {
                    tracing::info!(node = config.node_name, "registered");
                    logged = true;
                }
                registered.set(true);
                health.set(true);
                backoff = Duration::from_millis(200);
                period
            }
            Err(e) if e.is_fatal() => {
                tracing::error!(error = %e, "node name lost");
                break Err(e);
            }
            Err(OwnershipError::Store(e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "registration failed");
                if matches!(e, StoreError::Unavailable { .. }) {
                    health.set(false);
                }
                registered.set(false);
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                wait
            }
            Err(e) => break Err(e),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // The datastore answers again: register now rather than a backoff later.
            _ = health.changed(), if failing => {}
            _ = next_change(&mut changes, &key) => settled = false,
            _ = next_change(&mut node_changes, &node_key) => settled = false,
            _ = shutdown.changed() => break Ok(()),
        }
    };
    registered.set(false);
    // A clean stop or a lost name: this agent is no longer live, but the node stays registered.
    ownership.release(store.as_ref()).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_wakes_for_its_own_key_only() {
        let store = wren_store::memory::MemoryStore::new();
        let mine = keys::liveness("node1");
        let mut watch = Some(store.watch(&mine, 0).await.unwrap());
        store
            .put(&keys::liveness("node10"), b"{}".to_vec(), None)
            .await
            .unwrap();
        let woke =
            tokio::time::timeout(Duration::from_millis(200), next_change(&mut watch, &mine)).await;
        assert!(woke.is_err(), "another node's key woke the watch");
        store.put(&mine, b"{}".to_vec(), None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), next_change(&mut watch, &mine))
            .await
            .expect("the watch's own key wakes it");
        assert!(watch.is_some(), "the watch goes on");
    }

    fn liveness(address: &str, instance: &str) -> Liveness {
        Liveness {
            version: "0".into(),
            since: unix_now(),
            address: Some(address.parse().unwrap()),
            instance: Some(instance.into()),
            ttl_secs: Some(30),
        }
    }

    #[test]
    fn the_holder_is_told_apart_by_process_then_address() {
        let me = liveness("10.0.0.2", "a");
        assert_eq!(Holder::of(None, &me), Holder::Nobody);
        assert_eq!(Holder::of(Some(me.clone()), &me), Holder::Me);
        let earlier = liveness("10.0.0.2", "b");
        assert_eq!(
            Holder::of(Some(earlier.clone()), &me),
            Holder::Predecessor(earlier)
        );
        let elsewhere = liveness("10.0.0.20", "c");
        assert_eq!(
            Holder::of(Some(elsewhere.clone()), &me),
            Holder::Other(elsewhere)
        );
        // Unreadable or old values name no address: another holder, never this node.
        let unknown = Liveness::decode(b"not json");
        assert_eq!(
            Holder::of(Some(unknown.clone()), &me),
            Holder::Other(unknown)
        );
    }

    #[test]
    fn a_live_holder_elsewhere_is_refused_unless_taken_over() {
        let other = Holder::Other(liveness("10.0.0.20", "c"));
        let err = plan_claim("n2", other.clone(), false, false).unwrap_err();
        let text = err.to_string();
        assert!(err.is_fatal());
        assert!(
            text.contains("10.0.0.20") && text.contains("--take-over") && !text.contains('\n'),
            "{text}"
        );
        assert_eq!(
            plan_claim("n2", other, false, true).unwrap(),
            ClaimStep::Write
        );
    }

    #[test]
    fn an_agent_that_held_the_name_and_lost_it_stops() {
        for holder in [
            Holder::Other(liveness("10.0.0.20", "c")),
            Holder::Predecessor(liveness("10.0.0.2", "b")),
        ] {
            let err = plan_claim("n2", holder, true, true).unwrap_err();
            assert!(matches!(err, OwnershipError::TakenOver { .. }), "{err}");
        }
        // A key that vanished is put back; one that is ours is kept.
        assert_eq!(
            plan_claim("n2", Holder::Nobody, true, false).unwrap(),
            ClaimStep::Write
        );
        assert_eq!(
            plan_claim("n2", Holder::Me, true, false).unwrap(),
            ClaimStep::Keep
        );
        // At start, this node's earlier agent is replaced.
        assert_eq!(
            plan_claim(
                "n2",
                Holder::Predecessor(liveness("10.0.0.2", "b")),
                false,
                false
            )
            .unwrap(),
            ClaimStep::Write
        );
    }
}
