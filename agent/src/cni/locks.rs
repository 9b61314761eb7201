//! One lock per attachment, so requests for the same container never interleave while
//! requests for different containers run side by side. Entries vanish when nobody holds or
//! waits for them, so the map stays as small as the number of requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Slot = Arc<tokio::sync::Mutex<()>>;

/// A map of named async locks.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    slots: Mutex<HashMap<String, Slot>>,
}

/// Holds one key's lock; dropping it releases the lock (and the entry when unused).
#[derive(Debug)]
pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    // Declared before `slot` so the lock is released before the entry is inspected.
    guard: Option<OwnedMutexGuard<()>>,
    slot: Option<Slot>,
}

impl KeyedLocks {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for and takes the lock of `key`.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let slot = {
            let mut slots = crate::sync::lock(&self.slots);
            slots.entry(key.to_string()).or_default().clone()
        };
        let guard = slot.clone().lock_owned().await;
        KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(guard),
            slot: Some(slot),
        }
    }

    /// How many keys have a holder or a waiter.
    pub fn in_use(&self) -> usize {
        crate::sync::lock(&self.slots).len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let Some(slot) = self.slot.take() else { return };
        let mut slots = crate::sync::lock(&self.locks.slots);
        // Two references left (the map's and ours) means no one else holds or awaits it.
        if Arc::strong_count(&slot) == 2 {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_key_is_exclusive_and_entries_are_dropped() {
        let locks = Arc::new(KeyedLocks::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let _g = locks.lock("c1/eth0").await;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(locks.in_use(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let locks = KeyedLocks::new();
        let _a = locks.lock("a").await;
        let b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok());
        assert_eq!(locks.in_use(), 2);
    }
}
