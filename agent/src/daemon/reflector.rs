//! The watch tasks: each keeps one part of the [`LiveView`] current by list-then-watch,
//! decoding each document once, as it arrives.
//!
//! When the watch ends (a member died or stalled, revision compacted) the copy is kept as it
//! is and the reflector lists again at once: the store sends the listing to a member that
//! answers. Only a listing that fails (every member tried within the request's deadline)
//! reports the datastore down; the reflector then retries with exponential backoff, cut
//! short as soon as the datastore answers again ([`probe_while_down`] asks it every
//! [`PROBE_PERIOD`]). The fresh listing replaces the copy wholesale, so deletes missed while
//! disconnected are not lost. The view is incomplete until every part has been listed, so
//! nothing acts on an empty view at start-up (which, for the route reconcile, would mean
//! deleting every route).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use wren_store::{Store, WatchEvent};

use super::view::{LiveView, Part};

/// Shared flag: did the datastore answer the last request of a reflector, of the
/// registration or of the probe?
#[derive(Debug, Default)]
pub struct DatastoreHealth {
    up: AtomicBool,
    changed: tokio::sync::Notify,
}

impl DatastoreHealth {
    /// Whether the datastore is reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
    /// Records the outcome of a request.
    pub fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::SeqCst) != up {
            self.changed.notify_waiters();
        }
    }
    /// Waits for the next change of the flag.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Waits until the flag is up, or at most `limit`.
    pub async fn up_or(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.until(true)).await;
    }

    /// Waits until the flag reads `up`.
    pub async fn until(&self, up: bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between is not missed.
            changed.as_mut().enable();
            if self.is_up() == up {
                return;
            }
            changed.await;
        }
    }
}

/// How often the datastore is asked whether it answers again while it is down.
pub const PROBE_PERIOD: Duration = Duration::from_millis(500);

/// While the datastore is reported down, asks it for its revision every [`PROBE_PERIOD`] and
/// reports it up as soon as it answers, which wakes every reflector and the registration
/// waiting out a backoff: readiness comes back with the datastore, not a backoff later.
/// Runs until the task is dropped.
pub async fn probe_while_down(store: Arc<dyn Store>, health: Arc<DatastoreHealth>) {
    loop {
        // Asleep while the datastore answers: an idle agent wakes for nothing.
        health.until(false).await;
        tokio::time::sleep(PROBE_PERIOD).await;
        if !health.is_up() && store.revision().await.is_ok() {
            tracing::info!("the datastore answers again");
            health.set(true);
        }
    }
}

/// First and largest wait between attempts after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Starts keeping `part` of `view` current for node `node`; the task ends once the view is
/// dropped.
pub fn spawn(
    store: Arc<dyn Store>,
    part: Part,
    node: String,
    health: Arc<DatastoreHealth>,
    view: &Arc<LiveView>,
) {
    tokio::spawn(run(store, part, node, health, Arc::downgrade(view)));
}

async fn run(
    store: Arc<dyn Store>,
    part: Part,
    node: String,
    health: Arc<DatastoreHealth>,
    view: Weak<LiveView>,
) {
    let prefix = part.prefix(&node);
    let mut backoff = BACKOFF_MIN;
    loop {
        if view.strong_count() == 0 {
            return;
        }
        let listing = match store.list(&prefix).await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(prefix, error = %e, retry_in = ?backoff, "listing failed");
                health.set(false);
                health.up_or(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        health.set(true);
        backoff = BACKOFF_MIN;
        let Some(live) = view.upgrade() else {
            return;
        };
        live.listed(
            part,
            &node,
            listing
                .items
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_slice())),
        );
        drop(live);
        let mut stream = match store.watch(&prefix, listing.revision + 1).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "watch failed; listing again");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        while let Some(event) = stream.next().await {
            let Some(live) = view.upgrade() else {
                return;
            };
            match event {
                Ok(WatchEvent::Put(kv)) => {
                    live.update(|v| v.put(part, &node, &kv.key, &kv.value));
                }
                Ok(WatchEvent::Delete { key, .. }) => {
                    live.update(|v| v.delete(part, &node, &key));
                }
                Err(e) => {
                    // Not a sign the datastore is down: the listing that follows says.
                    tracing::warn!(prefix, error = %e, "watch ended; listing again");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
