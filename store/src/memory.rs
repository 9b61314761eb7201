//! In-memory backend with etcd semantics (revisions, compaction, leases, ordered watches).
//!
//! It keeps what an etcd member keeps: one global revision bumped by every write that changes
//! something, a create and mod revision per key, leases that expire on the tokio clock, and a
//! bounded history of events from which watches replay. A watch that asks for a revision the
//! history no longer holds fails with [`StoreError::Compacted`], exactly as etcd does after a
//! compaction, so callers exercise their re-list path in unit tests too.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch as notify;
use tokio::time::Instant;

use crate::{
    Compare, KeyValue, LeaseId, Listing, Result, Revision, Store, StoreError, Txn, TxnOp,
    WatchEvent, WatchStream,
};

/// Events kept for watches by default; older ones are compacted away.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Shortest lease etcd grants with its default election timeout (1 s): shorter requests are
/// raised to it, so a TTL behaves the same on both backends.
pub const MIN_LEASE_TTL: i64 = 2;

/// The in-memory backend. Cheap to clone; clones share the same data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Carries the current revision to waiting watch streams.
    changed: notify::Sender<Revision>,
}

struct Stored {
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    lease: Option<LeaseId>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct State {
    revision: Revision,
    /// Oldest revision a watch may start from; the history holds every event at or after it.
    compacted: Revision,
    keys: BTreeMap<String, Stored>,
    history: VecDeque<WatchEvent>,
    history_limit: usize,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 1 (like a fresh etcd) keeping [`DEFAULT_HISTORY`] events.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store that keeps at most `events` watch events; older ones are compacted.
    pub fn with_history(events: usize) -> Self {
        let (changed, _) = notify::channel(1);
        let state = State {
            revision: 1,
            compacted: 0,
            keys: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: events.max(1),
            leases: HashMap::new(),
            next_lease: 0x7772_656e_0000_0001,
        };
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                changed,
            }),
        }
    }

    /// Discards the history before `revision`, like `etcdctl compact`: watches from an older
    /// revision then fail with [`StoreError::Compacted`]. Compacting to a revision already
    /// compacted is [`StoreError::Compacted`]; to a future one, [`StoreError::Config`].
    pub fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.inner.lock();
        if revision <= state.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compact_revision: state.compacted,
            });
        }
        if revision > state.revision {
            return Err(StoreError::Config(format!(
                "cannot compact to revision {revision}: the store is at {}",
                state.revision
            )));
        }
        state.compact_like_etcd(revision);
        Ok(())
    }
}

impl Inner {
    /// Locks the state, first expiring every lease whose deadline has passed so that no
    /// operation ever sees a key that should already be gone.
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way later
        // operations could not cope with, so a poisoned lock is still usable.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let expired: Vec<LeaseId> = state
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke(&mut state, id);
        }
        state
    }

    /// Applies `ops` in one revision and wakes the watches. Returns the store revision after
    /// the writes (unchanged when nothing changed, as in etcd).
    fn commit(&self, state: &mut State, ops: Vec<TxnOp>) -> Result<Revision> {
        let missing_lease = ops.iter().find_map(|op| match op {
            TxnOp::Put {
                lease: Some(id), ..
            } if !state.leases.contains_key(id) => Some(*id),
            _ => None,
        });
        if let Some(id) = missing_lease {
            return Err(StoreError::LeaseNotFound(id));
        }
        let revision = state.revision + 1;
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Put { key, value, lease } => {
                    let old = state.keys.get(&key).map(|s| (s.create_revision, s.lease));
                    let create_revision = match old {
                        Some((created, old_lease)) => {
                            if old_lease != lease {
                                state.detach(&key, old_lease);
                            }
                            created
                        }
                        None => revision,
                    };
                    if let Some(l) = lease.and_then(|id| state.leases.get_mut(&id)) {
                        l.keys.insert(key.clone());
                    }
                    events.push(WatchEvent::Put(KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                        lease,
                    }));
                    state.keys.insert(
                        key,
                        Stored {
                            value,
                            create_revision,
                            mod_revision: revision,
                            lease,
                        },
                    );
                }
                TxnOp::Delete { key } => {
                    if let Some(old) = state.keys.remove(&key) {
                        state.detach(&key, old.lease);
                        events.push(WatchEvent::Delete { key, revision });
                    }
                }
            }
        }
        if !events.is_empty() {
            state.revision = revision;
            state.history.extend(events);
            state.trim_history();
            self.changed.send_replace(revision);
        }
        Ok(state.revision)
    }

    /// Removes a lease and deletes its keys in one revision (in key order, as etcd does).
    fn revoke(&self, state: &mut State, id: LeaseId) -> Option<Revision> {
        let lease = state.leases.remove(&id)?;
        let ops = lease
            .keys
            .into_iter()
            .map(|key| TxnOp::Delete { key })
            .collect();
        // Deletes never fail: only puts can name a missing lease.
        self.commit(state, ops).ok()
    }
}

impl State {
    fn detach(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
    }

    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.keys.contains_key(key),
            Compare::Present(key) => self.keys.contains_key(key),
            Compare::ModRevision(key, rev) => {
                self.keys.get(key).is_some_and(|s| s.mod_revision == *rev)
            }
        }
    }

    fn key_value(&self, key: &str) -> Option<KeyValue> {
        self.keys.get(key).map(|s| KeyValue {
            key: key.to_owned(),
            value: s.value.clone(),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
            lease: s.lease,
        })
    }

    /// Drops whole revisions from the front of the history until it fits its limit.
    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            let Some(oldest) = self.history.front().map(WatchEvent::revision) else {
                break;
            };
            self.compact_before(oldest + 1);
        }
    }

    /// Forgets the history before `revision`.
    fn compact_before(&mut self, revision: Revision) {
        while self
            .history
            .front()
            .is_some_and(|e| e.revision() < revision)
        {
            self.history.pop_front();
        }
        self.compacted = self.compacted.max(revision);
    }

    /// Compacts as etcd does: it keeps each key's latest version at the compaction revision
    /// unless that version is a tombstone, so the deletes made at `revision` itself go too.
    fn compact_like_etcd(&mut self, revision: Revision) {
        self.compact_before(revision);
        let at = self.history.partition_point(|e| e.revision() <= revision);
        let mut index = 0;
        self.history.retain(|e| {
            index += 1;
            index > at || matches!(e, WatchEvent::Put(_))
        });
    }

    /// The events under `prefix` at or after `from`, or the compaction error when the
    /// history no longer reaches back that far.
    fn events_since(&self, prefix: &str, from: Revision) -> Result<Vec<WatchEvent>> {
        if from < self.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: self.compacted,
            });
        }
        let start = self.history.partition_point(|e| e.revision() < from);
        Ok(self
            .history
            .range(start..)
            .filter(|e| e.key().starts_with(prefix))
            .cloned()
            .collect())
    }
}

/// Where one watch stream stands.
struct Cursor {
    inner: Arc<Inner>,
    prefix: String,
    next: Revision,
    pending: VecDeque<WatchEvent>,
    changed: notify::Receiver<Revision>,
    failed: bool,
}

impl Cursor {
    async fn next_event(mut self) -> Option<(Result<WatchEvent>, Self)> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            let fetched = {
                let state = self.inner.lock();
                let fetched = state.events_since(&self.prefix, self.next);
                if fetched.is_ok() {
                    self.next = state.revision + 1;
                }
                fetched
            };
            match fetched {
                Ok(events) if events.is_empty() => {
                    if self.changed.changed().await.is_err() {
                        return None;
                    }
                }
                Ok(events) => self.pending.extend(events),
                Err(e) => {
                    self.failed = true;
                    return Some((Err(e), self));
                }
            }
        }
    }
}

/// Expires one lease on time even when nobody touches the store, so that watches see the
/// deletes. Ends when the lease is gone or the store is dropped.
async fn expire_lease(inner: Weak<Inner>, id: LeaseId, mut deadline: Instant) {
    loop {
        tokio::time::sleep_until(deadline).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // `lock` revokes the lease if it is due.
        let state = inner.lock();
        match state.leases.get(&id) {
            Some(lease) => deadline = lease.deadline,
            None => return,
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.inner.lock().key_value(key))
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let state = self.inner.lock();
        let items = state
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, _)| state.key_value(k))
            .collect();
        Ok(Listing {
            items,
            revision: state.revision,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let mut state = self.inner.lock();
        if state.keys.contains_key(key) {
            return Err(StoreError::Conflict { key: key.into() });
        }
        let put = TxnOp::Put {
            key: key.into(),
            value,
            lease,
        };
        self.inner.commit(&mut state, vec![put])
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let mut state = self.inner.lock();
        let put = TxnOp::Put {
            key: key.into(),
            value,
            lease,
        };
        self.inner.commit(&mut state, vec![put])
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        let mut state = self.inner.lock();
        let lease = match state.keys.get(key) {
            None => return Err(StoreError::NotFound { key: key.into() }),
            Some(s) if s.mod_revision != expected => {
                return Err(StoreError::Conflict { key: key.into() });
            }
            Some(s) => s.lease,
        };
        // An update keeps the key's lease, as the etcd backend does with `ignore_lease`.
        let put = TxnOp::Put {
            key: key.into(),
            value,
            lease,
        };
        self.inner.commit(&mut state, vec![put])
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Revision> {
        let mut state = self.inner.lock();
        match (state.keys.get(key), expected) {
            (None, _) => return Err(StoreError::NotFound { key: key.into() }),
            (Some(s), Some(rev)) if s.mod_revision != rev => {
                return Err(StoreError::Conflict { key: key.into() });
            }
            _ => {}
        }
        let delete = TxnOp::Delete { key: key.into() };
        self.inner.commit(&mut state, vec![delete])
    }

    async fn txn(&self, txn: Txn) -> Result<Revision> {
        crate::validate_txn(&txn)?;
        let mut state = self.inner.lock();
        if let Some(failed) = txn.compares.iter().find(|c| !state.holds(c)) {
            return Err(StoreError::Conflict {
                key: failed.key().to_owned(),
            });
        }
        self.inner.commit(&mut state, txn.ops)
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        let (next, changed) = {
            let state = self.inner.lock();
            let next = if from_revision <= 0 {
                state.revision + 1
            } else {
                from_revision
            };
            // Subscribing under the lock means no commit can slip between the read of the
            // revision and the subscription.
            (next, self.inner.changed.subscribe())
        };
        let cursor = Cursor {
            inner: self.inner.clone(),
            prefix: prefix.to_owned(),
            next,
            pending: VecDeque::new(),
            changed,
            failed: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            cursor,
            Cursor::next_event,
        )))
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        let ttl = Duration::from_secs(ttl_secs.max(MIN_LEASE_TTL) as u64);
        let deadline = Instant::now() + ttl;
        let id = {
            let mut state = self.inner.lock();
            let id = state.next_lease;
            state.next_lease += 1;
            state.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline,
                    keys: BTreeSet::new(),
                },
            );
            id
        };
        tokio::spawn(expire_lease(Arc::downgrade(&self.inner), id, deadline));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.inner.lock();
        let l = state
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        l.deadline = Instant::now() + l.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.inner.lock();
        self.inner
            .revoke(&mut state, lease)
            .map(|_| ())
            .ok_or(StoreError::LeaseNotFound(lease))
    }

    async fn revision(&self) -> Result<Revision> {
        Ok(self.inner.lock().revision)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lease_expires_on_the_tokio_clock_and_watch_sees_the_delete() {
        let store = MemoryStore::new();
        let lease = store.grant_lease(5).await.unwrap();
        let rev = store
            .put("nodes/a", b"1".to_vec(), Some(lease))
            .await
            .unwrap();
        let mut watch = store.watch("nodes/", rev + 1).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        store.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            store.get("nodes/a").await.unwrap().is_some(),
            "renewed lease expired"
        );
        let event = watch.next().await.unwrap().unwrap();
        assert_eq!(
            event,
            WatchEvent::Delete {
                key: "nodes/a".into(),
                revision: rev + 1
            }
        );
        assert!(matches!(
            store.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(id)) if id == lease
        ));
    }

    #[tokio::test]
    async fn bounded_history_compacts_whole_revisions() {
        let store = MemoryStore::with_history(3);
        let first = store.put("a", b"1".to_vec(), None).await.unwrap();
        let txn = Txn::new().put("b", b"2".to_vec()).put("c", b"3".to_vec());
        let second = store.txn(txn).await.unwrap();
        store.put("d", b"4".to_vec(), None).await.unwrap();
        // Four events exceed the limit of three: the first revision goes as a whole.
        let mut old = store.watch("", first).await.unwrap();
        assert!(matches!(
            old.next().await,
            Some(Err(StoreError::Compacted { requested, compact_revision }))
                if requested == first && compact_revision == second
        ));
        assert!(old.next().await.is_none(), "a failed watch must end");
        let mut kept = store.watch("", second).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(kept.next().await.unwrap().unwrap().key().to_owned());
        }
        assert_eq!(seen, ["b", "c", "d"]);
    }

    #[tokio::test]
    async fn a_txn_that_changes_nothing_keeps_the_revision() {
        let store = MemoryStore::new();
        let before = store.revision().await.unwrap();
        let after = store.txn(Txn::new().delete("missing")).await.unwrap();
        assert_eq!(before, after);
    }
}
