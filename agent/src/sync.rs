//! Guards of the agent's locks that survive a panic of a thread holding them.
//!
//! Every value the agent keeps behind a `Mutex` or `RwLock` is whole between statements (a
//! status document, a table of routes, a set of rules), so a thread that panicked holding
//! the lock left nothing half-written. Refusing the value to every later caller would turn
//! one panic into a dead agent; these take the guard whether or not the lock is poisoned.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `mutex`'s guard, also after a thread panicked holding it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `rwlock`'s read guard, also after a thread panicked holding it.
pub fn read<T>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock.read().unwrap_or_else(PoisonError::into_inner)
}

/// `rwlock`'s write guard, also after a thread panicked holding it.
pub fn write<T>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_value() {
        let mutex = Mutex::new(1);
        let rwlock = RwLock::new(2);
        let _ = std::panic::catch_unwind(|| {
            let _held = (mutex.lock().unwrap(), rwlock.write().unwrap());
            panic!("poisons both");
        });
        assert!(mutex.is_poisoned() && rwlock.is_poisoned());
        *lock(&mutex) += 1;
        *write(&rwlock) += 1;
        assert_eq!((*lock(&mutex), *read(&rwlock)), (2, 3));
    }
}
