//! The behavioural suite every backend must pass, written once against `dyn Store`.
//!
//! [`run`] executes each case with a fresh, empty keyspace and reports every failing case
//! by name, so one broken operation does not hide the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use wren_store::json::JsonStore;
use wren_store::{
    Compare, KeyValue, Revision, Store, StoreError, Txn, TxnOp, WatchEvent, WatchStream,
    keep_alive_task,
};

/// A backend under test: hands out stores over fresh, empty keyspaces.
pub trait Backend: Sync {
    /// A store over an empty keyspace named after `case`.
    fn fresh(&self, case: &str) -> Pin<Box<dyn Future<Output = Subject> + Send + '_>>;
}

/// The compaction entry point of each backend (not part of the trait: only tests and
/// operators compact).
pub type Compactor = Arc<
    dyn Fn(Revision) -> Pin<Box<dyn Future<Output = wren_store::Result<()>> + Send>> + Send + Sync,
>;

/// One store to run a case against.
pub struct Subject {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Compacts the store's history up to a revision.
    pub compact: Compactor,
}

type Case = fn(Subject) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), (|s| Box::pin($name(s))) as Case)),*]
    };
}

const CASES: &[(&str, Case)] = cases![
    get_and_list_read_what_was_written,
    create_only_creates_absent_keys,
    put_keeps_the_create_revision_and_moves_the_mod_revision,
    update_is_a_compare_and_swap_on_the_mod_revision,
    delete_checks_existence_and_the_expected_revision,
    a_txn_applies_all_or_nothing,
    a_txn_names_the_condition_that_failed,
    a_txn_that_writes_a_key_twice_is_refused,
    failed_writes_do_not_move_the_revision,
    watch_sees_every_change_under_its_prefix_in_order,
    watch_from_zero_sees_only_later_changes,
    a_compacted_start_revision_fails_the_watch,
    revoking_a_lease_deletes_its_keys_in_one_revision,
    a_lease_expires_unless_kept_alive,
    update_keeps_the_lease_and_put_without_one_detaches,
    a_value_that_does_not_parse_names_its_key,
    contended_cas_increments_are_never_lost,
];

/// Runs every case against `backend`; panics listing the cases that failed.
pub async fn run(backend: &dyn Backend) {
    let mut failed = Vec::new();
    for (name, case) in CASES {
        let subject = backend.fresh(name).await;
        let outcome = std::panic::AssertUnwindSafe(case(subject))
            .catch_unwind()
            .await;
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{name}: {message}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        CASES.len(),
        failed.join("\n")
    );
}

/// How long a case waits for a watch event before calling it missing.
const EVENT_WAIT: Duration = Duration::from_secs(10);

async fn next_event(watch: &mut WatchStream) -> wren_store::Result<WatchEvent> {
    match tokio::time::timeout(EVENT_WAIT, watch.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no watch event within {EVENT_WAIT:?}"),
    }
}

/// (key, value or `None` for a delete, revision): what a watch event says, for comparisons.
type Seen = (String, Option<Vec<u8>>, Revision);

fn seen(event: &WatchEvent) -> Seen {
    match event {
        WatchEvent::Put(kv) => (kv.key.clone(), Some(kv.value.clone()), kv.mod_revision),
        WatchEvent::Delete { key, revision } => (key.clone(), None, *revision),
    }
}

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

async fn get_and_list_read_what_was_written(s: Subject) {
    let store = s.store;
    assert_eq!(store.get("pools/a").await.unwrap(), None);
    let ra = store.put("pools/a", v("A"), None).await.unwrap();
    let rc = store.put("pools/c", v("C"), None).await.unwrap();
    let rb = store.put("pools/b", v("B"), None).await.unwrap();
    store
        .put("poolsx", v("not under pools/"), None)
        .await
        .unwrap();
    store.put("nodes/n1", v("N"), None).await.unwrap();
    let a = store.get("pools/a").await.unwrap().unwrap();
    assert_eq!(
        a,
        KeyValue {
            key: "pools/a".into(),
            value: v("A"),
            create_revision: ra,
            mod_revision: ra,
            lease: None
        }
    );
    let listing = store.list("pools/").await.unwrap();
    let keys: Vec<_> = listing.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["pools/a", "pools/b", "pools/c"],
        "lexical order, prefix only"
    );
    let revs: Vec<_> = listing.items.iter().map(|kv| kv.mod_revision).collect();
    assert_eq!(revs, [ra, rb, rc]);
    assert_eq!(listing.revision, store.revision().await.unwrap());
    assert!(store.list("absent/").await.unwrap().items.is_empty());
    assert_eq!(
        store.list("").await.unwrap().items.len(),
        5,
        "the empty prefix lists all"
    );
}

async fn create_only_creates_absent_keys(s: Subject) {
    let store = s.store;
    let rev = store.create("nodes/n1", v("first"), None).await.unwrap();
    match store.create("nodes/n1", v("second"), None).await {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "nodes/n1"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let kv = store.get("nodes/n1").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (v("first"), rev));
}

async fn put_keeps_the_create_revision_and_moves_the_mod_revision(s: Subject) {
    let store = s.store;
    let r1 = store.put("config/cluster", v("1"), None).await.unwrap();
    let r2 = store.put("config/cluster", v("2"), None).await.unwrap();
    assert!(r2 > r1);
    let kv = store.get("config/cluster").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
    assert_eq!(kv.value, v("2"));
}

async fn update_is_a_compare_and_swap_on_the_mod_revision(s: Subject) {
    let store = s.store;
    let r1 = store.create("ipam/blocks/b", v("1"), None).await.unwrap();
    let r2 = store.update("ipam/blocks/b", v("2"), r1).await.unwrap();
    assert!(r2 > r1);
    match store.update("ipam/blocks/b", v("stale"), r1).await {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "ipam/blocks/b"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.get("ipam/blocks/b").await.unwrap().unwrap().value,
        v("2")
    );
    for expected in [r2, 0] {
        match store.update("ipam/blocks/missing", v("x"), expected).await {
            Err(StoreError::NotFound { key }) => assert_eq!(key, "ipam/blocks/missing"),
            other => panic!("expected not found for revision {expected}, got {other:?}"),
        }
    }
    assert_eq!(store.get("ipam/blocks/missing").await.unwrap(), None);
}

async fn delete_checks_existence_and_the_expected_revision(s: Subject) {
    let store = s.store;
    match store.delete("peers/p", None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "peers/p"),
        other => panic!("expected not found, got {other:?}"),
    }
    let r1 = store.put("peers/p", v("1"), None).await.unwrap();
    let r2 = store.put("peers/p", v("2"), None).await.unwrap();
    match store.delete("peers/p", Some(r1)).await {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "peers/p"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store.get("peers/p").await.unwrap().is_some());
    let r3 = store.delete("peers/p", Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(store.get("peers/p").await.unwrap(), None);
    store.put("peers/q", v("1"), None).await.unwrap();
    store.delete("peers/q", None).await.unwrap();
    assert_eq!(store.get("peers/q").await.unwrap(), None);
    match store.delete("peers/q", Some(0)).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

async fn a_txn_applies_all_or_nothing(s: Subject) {
    let store = s.store;
    let rb = store.put("b", v("old b"), None).await.unwrap();
    let txn = Txn::new()
        .when(Compare::Absent("a".into()))
        .when(Compare::Present("b".into()))
        .when(Compare::ModRevision("b".into(), rb))
        .put("a", v("new a"))
        .put("c", v("new c"))
        .delete("b");
    let rev = store.txn(txn).await.unwrap();
    let a = store.get("a").await.unwrap().unwrap();
    let c = store.get("c").await.unwrap().unwrap();
    assert_eq!(
        (a.mod_revision, c.mod_revision),
        (rev, rev),
        "one revision for all"
    );
    assert_eq!(store.get("b").await.unwrap(), None);
    // The same transaction again fails on its first condition and changes nothing.
    let again = Txn::new()
        .when(Compare::Absent("a".into()))
        .put("d", v("d"))
        .delete("c");
    assert!(store.txn(again).await.unwrap_err().is_conflict());
    assert_eq!(store.get("d").await.unwrap(), None);
    assert!(store.get("c").await.unwrap().is_some());
    assert_eq!(store.revision().await.unwrap(), rev);
}

async fn a_txn_names_the_condition_that_failed(s: Subject) {
    let store = s.store;
    let rx = store.put("x", v("x"), None).await.unwrap();
    store.put("y", v("y"), None).await.unwrap();
    let cases = [
        (
            vec![Compare::Present("x".into()), Compare::Absent("y".into())],
            "y",
        ),
        (
            vec![
                Compare::ModRevision("x".into(), rx),
                Compare::Present("z".into()),
            ],
            "z",
        ),
        (vec![Compare::ModRevision("x".into(), rx + 100)], "x"),
        (vec![Compare::ModRevision("z".into(), rx)], "z"),
    ];
    for (compares, culprit) in cases {
        let txn = Txn {
            compares: compares.clone(),
            ops: vec![TxnOp::Delete { key: "x".into() }],
        };
        match store.txn(txn).await {
            Err(StoreError::Conflict { key }) => assert_eq!(key, culprit, "{compares:?}"),
            other => panic!("expected a conflict on {culprit}, got {other:?}"),
        }
    }
    assert!(store.get("x").await.unwrap().is_some());
}

async fn a_txn_that_writes_a_key_twice_is_refused(s: Subject) {
    let store = s.store;
    let before = store.revision().await.unwrap();
    let txn = Txn::new().put("k", v("1")).delete("k");
    match store.txn(txn).await {
        Err(StoreError::InvalidData { key, .. }) => assert_eq!(key, "k"),
        other => panic!("expected invalid data, got {other:?}"),
    }
    assert_eq!(store.revision().await.unwrap(), before);
}

async fn failed_writes_do_not_move_the_revision(s: Subject) {
    let store = s.store;
    let rev = store.put("k", v("1"), None).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), rev);
    let _ = store.create("k", v("2"), None).await;
    let _ = store.update("k", v("2"), rev - 1).await;
    let _ = store.delete("gone", None).await;
    assert_eq!(store.revision().await.unwrap(), rev);
    // A transaction whose only write deletes nothing changes nothing, as in etcd.
    assert_eq!(store.txn(Txn::new().delete("gone")).await.unwrap(), rev);
    assert_eq!(store.revision().await.unwrap(), rev);
}

async fn watch_sees_every_change_under_its_prefix_in_order(s: Subject) {
    let store = s.store;
    store.put("w/seed", v("0"), None).await.unwrap();
    let listing = store.list("w/").await.unwrap();
    let mut watch = store.watch("w/", listing.revision + 1).await.unwrap();

    let mut expected: Vec<Seen> = Vec::new();
    for i in 0..20 {
        let key = format!("w/k{}", i % 4);
        let value = v(&format!("v{i}"));
        let rev = match store.get(&key).await.unwrap() {
            Some(kv) if i % 5 == 0 => {
                let rev = store.delete(&key, Some(kv.mod_revision)).await.unwrap();
                expected.push((key, None, rev));
                continue;
            }
            Some(kv) => store
                .update(&key, value.clone(), kv.mod_revision)
                .await
                .unwrap(),
            None => store.create(&key, value.clone(), None).await.unwrap(),
        };
        expected.push((key, Some(value), rev));
        // A neighbour outside the prefix must never show up.
        store.put("wx/other", v("noise"), None).await.unwrap();
    }
    let rev = store
        .txn(
            Txn::new()
                .put("w/t2", v("t2"))
                .put("w/t1", v("t1"))
                .delete("w/seed"),
        )
        .await
        .unwrap();
    expected.extend([
        ("w/t2".into(), Some(v("t2")), rev),
        ("w/t1".into(), Some(v("t1")), rev),
        ("w/seed".into(), None, rev),
    ]);

    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(seen(&next_event(&mut watch).await.unwrap()));
    }
    assert_eq!(got, expected);

    // A second watch from the middle replays exactly the tail.
    let middle = expected[expected.len() / 2].2;
    let tail: Vec<_> = expected.iter().filter(|e| e.2 >= middle).cloned().collect();
    let mut late = store.watch("w/", middle).await.unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < tail.len() {
        replayed.push(seen(&next_event(&mut late).await.unwrap()));
    }
    assert_eq!(replayed, tail);
}

async fn watch_from_zero_sees_only_later_changes(s: Subject) {
    let store = s.store;
    store.put("z/before", v("b"), None).await.unwrap();
    let mut watch = store.watch("z/", 0).await.unwrap();
    let rev = store.put("z/after", v("a"), None).await.unwrap();
    let event = next_event(&mut watch).await.unwrap();
    assert_eq!(seen(&event), ("z/after".into(), Some(v("a")), rev));
}

async fn a_compacted_start_revision_fails_the_watch(s: Subject) {
    let store = s.store;
    let r1 = store.put("c/1", v("1"), None).await.unwrap();
    store.put("c/2", v("2"), None).await.unwrap();
    let r3 = store.put("c/3", v("3"), None).await.unwrap();
    let r4 = store.put("c/4", v("4"), None).await.unwrap();
    (s.compact)(r3).await.unwrap();
    let mut old = store.watch("c/", r1).await.unwrap();
    match next_event(&mut old).await {
        Err(StoreError::Compacted {
            requested,
            compact_revision,
        }) => assert_eq!((requested, compact_revision), (r1, r3)),
        other => panic!("expected the watch to report compaction, got {other:?}"),
    }
    let ended = tokio::time::timeout(EVENT_WAIT, old.next()).await;
    assert!(matches!(ended, Ok(None)), "a compacted watch must end");
    // From the compaction revision on, history is still there.
    let mut kept = store.watch("c/", r3).await.unwrap();
    assert_eq!(seen(&next_event(&mut kept).await.unwrap()).2, r3);
    assert_eq!(seen(&next_event(&mut kept).await.unwrap()).2, r4);
    // Compacting again to the same revision is refused as already compacted.
    assert!(matches!(
        (s.compact)(r3).await,
        Err(StoreError::Compacted { .. })
    ));
}

async fn revoking_a_lease_deletes_its_keys_in_one_revision(s: Subject) {
    let store = s.store;
    let lease = store.grant_lease(30).await.unwrap();
    store.put("l/b", v("b"), Some(lease)).await.unwrap();
    store.create("l/a", v("a"), Some(lease)).await.unwrap();
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![TxnOp::Put {
                key: "l/c".into(),
                value: v("c"),
                lease: Some(lease),
            }],
        })
        .await
        .unwrap();
    store.put("l/free", v("free"), None).await.unwrap();
    assert_eq!(store.get("l/a").await.unwrap().unwrap().lease, Some(lease));
    store.keep_alive(lease).await.unwrap();
    let from = store.revision().await.unwrap() + 1;
    let mut watch = store.watch("l/", from).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    let mut deletes = Vec::new();
    for _ in 0..3 {
        deletes.push(seen(&next_event(&mut watch).await.unwrap()));
    }
    let rev = deletes[0].2;
    let expected: Vec<Seen> = ["l/a", "l/b", "l/c"]
        .iter()
        .map(|k| (k.to_string(), None, rev))
        .collect();
    assert_eq!(deletes, expected, "key order, one revision");
    let left: Vec<_> = store
        .list("l/")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, ["l/free"]);
    for result in [
        store.keep_alive(lease).await,
        store.revoke_lease(lease).await,
    ] {
        assert!(
            matches!(result, Err(StoreError::LeaseNotFound(id)) if id == lease),
            "{result:?}"
        );
    }
    for result in [
        store.put("l/late", v("x"), Some(lease)).await,
        store.create("l/late", v("x"), Some(lease)).await,
    ] {
        assert!(
            matches!(result, Err(StoreError::LeaseNotFound(id)) if id == lease),
            "{result:?}"
        );
    }
    assert_eq!(store.get("l/late").await.unwrap(), None);
}

async fn a_lease_expires_unless_kept_alive(s: Subject) {
    let store = s.store;
    let kept = store.grant_lease(2).await.unwrap();
    let lapsing = store.grant_lease(2).await.unwrap();
    store.put("e/kept", v("k"), Some(kept)).await.unwrap();
    let rev = store.put("e/lapsing", v("l"), Some(lapsing)).await.unwrap();
    let keeper = keep_alive_task(store.clone(), kept, 2);
    let mut watch = store.watch("e/", rev + 1).await.unwrap();
    let event = next_event(&mut watch).await.unwrap();
    assert_eq!(event.key(), "e/lapsing");
    assert!(matches!(event, WatchEvent::Delete { .. }), "{event:?}");
    assert_eq!(store.get("e/lapsing").await.unwrap(), None);
    assert!(
        store.get("e/kept").await.unwrap().is_some(),
        "the kept-alive lease expired with the other one"
    );
    keeper.abort();
    assert!(matches!(
        store.keep_alive(lapsing).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    store.revoke_lease(kept).await.unwrap();
}

async fn update_keeps_the_lease_and_put_without_one_detaches(s: Subject) {
    let store = s.store;
    let lease = store.grant_lease(30).await.unwrap();
    let r1 = store.put("u/updated", v("1"), Some(lease)).await.unwrap();
    store.update("u/updated", v("2"), r1).await.unwrap();
    store.put("u/detached", v("1"), Some(lease)).await.unwrap();
    store.put("u/detached", v("2"), None).await.unwrap();
    assert_eq!(
        store.get("u/updated").await.unwrap().unwrap().lease,
        Some(lease)
    );
    assert_eq!(store.get("u/detached").await.unwrap().unwrap().lease, None);
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get("u/updated").await.unwrap(), None);
    assert!(store.get("u/detached").await.unwrap().is_some());
}

async fn a_value_that_does_not_parse_names_its_key(s: Subject) {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Pool {
        cidr: String,
    }
    let store = s.store;
    store
        .put("pools/bad", v("{\"cidr\": 7"), None)
        .await
        .unwrap();
    for result in [
        store.get_json::<Pool>("pools/bad").await.map(|_| ()),
        store.list_json::<Pool>("pools/").await.map(|_| ()),
    ] {
        match result {
            Err(StoreError::InvalidData { key, .. }) => assert_eq!(key, "pools/bad"),
            other => panic!("expected invalid data at pools/bad, got {other:?}"),
        }
    }
}

/// Tasks and increments of the contention case.
const TASKS: usize = 16;
const INCREMENTS: usize = 25;

async fn contended_cas_increments_are_never_lost(s: Subject) {
    let store = s.store;
    store.put_json("counter", &0u64, None).await.unwrap();
    let successes = Arc::new(AtomicUsize::new(0));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, successes, conflicts) =
                (store.clone(), successes.clone(), conflicts.clone());
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let current = store.get_json::<u64>("counter").await.unwrap().unwrap();
                        // Let the other tasks in between read and write, as a network
                        // round trip would, so the memory backend is contended too.
                        tokio::task::yield_now().await;
                        match store
                            .update_json("counter", &(current.value + 1), current.mod_revision)
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("increment failed: {e}"),
                        }
                    }
                    successes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = successes.load(Ordering::Relaxed);
    assert_eq!(total, TASKS * INCREMENTS);
    let counter = store.get_json::<u64>("counter").await.unwrap().unwrap();
    assert_eq!(
        counter.value as usize, total,
        "an increment was lost or doubled"
    );
    // Every success moved the revision exactly once; conflicts moved nothing.
    let created = store.get("counter").await.unwrap().unwrap().create_revision;
    assert_eq!((counter.mod_revision - created) as usize, total);
    eprintln!(
        "contention: {total} increments, {} conflicts retried",
        conflicts.load(Ordering::Relaxed)
    );
}
