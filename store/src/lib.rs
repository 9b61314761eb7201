//! `wren-store`: the datastore every other wren crate stands on.
//!
//! One trait, [`Store`], with the operations wren needs from etcd v3: point reads, prefix
//! listings at a consistent revision, create-if-absent, compare-and-swap on a key's mod
//! revision, multi-key transactions, ordered watches that resume from a revision, and leases
//! for liveness. Two backends implement it with the same semantics: [`etcd::EtcdStore`]
//! (production) and [`memory::MemoryStore`] (unit tests and single-node use).
//!
//! Keys handed to a [`Store`] are relative to the backend's configured prefix
//! (`/wren/v1/` by default), so callers write `nodes/n1`, never the full etcd key.
//! Values are bytes; [`json`] has the typed helpers that turn a value that does not parse into
//! [`StoreError::InvalidData`] naming the key.

#![warn(missing_docs)]

pub mod etcd;
pub mod json;
pub mod memory;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

/// An etcd revision: a cluster-wide, monotonically increasing version number.
pub type Revision = i64;

/// Identifier of a lease; keys attached to a lease vanish when it expires or is revoked.
pub type LeaseId = i64;

/// One stored key with its value and the revisions etcd keeps for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// The raw value (JSON for every wren document).
    pub value: Vec<u8>,
    /// Revision at which the key was created.
    pub create_revision: Revision,
    /// Revision of the last change; the token for compare-and-swap.
    pub mod_revision: Revision,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, read at one consistent revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The keys in lexical order.
    pub items: Vec<KeyValue>,
    /// Store revision at which the listing was taken; watch from `revision + 1` to follow it.
    pub revision: Revision,
}

/// A condition a transaction checks before it applies its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key must not exist.
    Absent(String),
    /// The key must exist (any revision).
    Present(String),
    /// The key must exist with exactly this mod revision.
    ModRevision(String, Revision),
}

impl Compare {
    /// The key the condition is about.
    pub fn key(&self) -> &str {
        match self {
            Compare::Absent(key) | Compare::Present(key) | Compare::ModRevision(key, _) => key,
        }
    }
}

/// One write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write `value` at `key`, attached to `lease` if given.
    Put {
        /// Key to write.
        key: String,
        /// Value to store.
        value: Vec<u8>,
        /// Lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Remove `key` (no error if it is absent).
    Delete {
        /// Key to remove.
        key: String,
    },
}

/// A multi-key transaction: all `compares` must hold, then all `ops` apply atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Writes applied together when every condition holds.
    pub ops: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }
    /// Adds a put without a lease.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        });
        self
    }
    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(TxnOp::Delete { key: key.into() });
        self
    }
}

impl TxnOp {
    /// The key the operation writes.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// Rejects a transaction that writes one key twice, as etcd does, so both backends refuse
/// it the same way before anything is sent.
pub(crate) fn validate_txn(txn: &Txn) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    match txn.ops.iter().find(|op| !seen.insert(op.key())) {
        Some(op) => Err(StoreError::InvalidData {
            key: op.key().to_owned(),
            reason: "written more than once in one transaction".into(),
        }),
        None => Ok(()),
    }
}

/// What happened to a key, as seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or changed; carries the new value and revisions.
    Put(KeyValue),
    /// The key was removed at `revision` (explicitly or by lease expiry).
    Delete {
        /// The removed key, relative to the prefix.
        key: String,
        /// Revision of the delete.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
    /// The revision at which the event happened.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// A stream of watch events in revision order. It ends with an error (for example
/// [`StoreError::Compacted`] or [`StoreError::Unavailable`]) when it cannot go on; the caller
/// then re-lists and watches again from the listing's revision.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-swap or create lost: the key changed (or exists) since it was read.
    #[error("conflict on {key}: it changed since it was read")]
    Conflict {
        /// The key whose condition failed (the first one, for multi-key transactions).
        key: String,
    },
    /// The key does not exist.
    #[error("{key} not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// The datastore cannot be reached.
    #[error("datastore unavailable (tried {endpoints}): {reason}")]
    Unavailable {
        /// The endpoints that were tried, comma separated.
        endpoints: String,
        /// What went wrong on the last attempt.
        reason: String,
    },
    /// A watch asked for a revision that the store has already compacted away.
    #[error(
        "revision {requested} has been compacted (oldest available is {compact_revision}); re-list and watch again"
    )]
    Compacted {
        /// The revision the watch asked to start from.
        requested: Revision,
        /// The oldest revision still available.
        compact_revision: Revision,
    },
    /// A stored value does not parse (or a value to store does not serialize).
    #[error("invalid data at {key}: {reason}")]
    InvalidData {
        /// The key holding the bad value.
        key: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The lease does not exist or has expired.
    #[error("lease {0:x} not found or expired")]
    LeaseNotFound(LeaseId),
    /// The datastore understood the request and refused it (a transaction over etcd's
    /// operation limit, a value over its size limit, a full database); retrying the same
    /// request will not help.
    #[error("datastore refused the request: {0}")]
    Rejected(String),
    /// The backend's configuration is unusable (bad endpoint, unreadable TLS file, …).
    #[error("datastore configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// True when retrying the same read-modify-write may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The datastore: etcd v3 semantics, backend-neutral.
///
/// Every write returns the store revision it was committed at. Conditional writes fail with
/// [`StoreError::Conflict`] and change nothing when their condition does not hold.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads every key that starts with `prefix`, at one consistent revision.
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// Writes `value` at `key` only if the key does not exist yet.
    async fn create(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;

    /// Writes `value` at `key` unconditionally (configuration documents, registrations).
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;

    /// Replaces `key` only if its mod revision is still `expected` (compare-and-swap).
    /// A missing key is [`StoreError::NotFound`]; a changed one is [`StoreError::Conflict`].
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision>;

    /// Deletes `key`; with `expected` set, only if its mod revision is still that.
    /// A missing key is [`StoreError::NotFound`].
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision>;

    /// Applies a multi-key transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<Revision>;

    /// Streams every change under `prefix` from `from_revision` (inclusive) on, in order.
    ///
    /// A `from_revision` of 0 or less means "changes after now". A start revision that has been
    /// compacted away is reported as the stream's first item, [`StoreError::Compacted`], after
    /// which the stream ends.
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream>;

    /// Grants a lease of `ttl_secs` seconds.
    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId>;

    /// Renews a lease once; call it well inside the TTL (see [`keep_alive_task`]).
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Revokes a lease, deleting every key attached to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// The current store revision.
    async fn revision(&self) -> Result<Revision>;
}

/// Spawns a task that renews `lease` every `ttl_secs / 3` seconds until the returned handle
/// is aborted or the lease is gone; transient errors are logged and retried.
pub fn keep_alive_task(
    store: std::sync::Arc<dyn Store>,
    lease: LeaseId,
    ttl_secs: i64,
) -> tokio::task::JoinHandle<Result<()>> {
    let period = std::time::Duration::from_millis((ttl_secs.max(1) as u64) * 1000 / 3);
    tokio::spawn(async move {
        loop {
            match store.keep_alive(lease).await {
                Ok(()) => {}
                Err(StoreError::LeaseNotFound(id)) => return Err(StoreError::LeaseNotFound(id)),
                Err(e) => tracing::warn!(lease, error = %e, "lease keep-alive failed; retrying"),
            }
            tokio::time::sleep(period).await;
        }
    })
}
