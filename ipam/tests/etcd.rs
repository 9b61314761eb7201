//! IPAM on a real etcd: every scenario of the in-memory tests, concurrent allocation on three
//! nodes with forced conflicts, and allocators killed at random points.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::scenarios;
use wren_ipam::block::Block;
use wren_ipam::{AllocateRequest, CheckOptions, Ipam};
use wren_model::{Workload, keys};
use wren_store::Store;
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_store::json::JsonStore;
use wren_tests::etcd::Etcd;
use wren_tests::prereq;

/// A fresh etcd and a store on it; `None` (skipped) without etcd installed.
async fn etcd() -> Option<(Etcd, Arc<dyn Store>)> {
    if !prereq::require_command("etcd") {
        return None;
    }
    let etcd = tokio::task::spawn_blocking(Etcd::start)
        .await
        .expect("etcd start task")
        .expect("etcd starts");
    let store = connect(&etcd).await;
    Some((etcd, store))
}

async fn connect(etcd: &Etcd) -> Arc<dyn Store> {
    let config = EtcdConfig {
        endpoints: etcd.endpoints(),
        ..EtcdConfig::default()
    };
    Arc::new(EtcdStore::connect(config).await.expect("etcd client"))
}

macro_rules! on_etcd {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((_etcd, store)) = etcd().await else { return };
                scenarios::$name(store).await;
            }
        )*
    };
}

common::every_scenario!(on_etcd);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocators_for_one_node() {
    let Some((_etcd, store)) = etcd().await else {
        return;
    };
    scenarios::two_allocators_for_one_node(store, 100).await;
}

/// Rewrites random blocks unchanged (new mod revision, same content) until stopped, so
/// allocators keep losing compare-and-swaps.
fn meddle(
    store: Arc<dyn Store>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rewrites = 0;
        let mut rng = Rng::seeded();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let blocks = store.list(keys::BLOCKS).await.unwrap().items;
            if let Some(kv) = blocks.get(rng.below(blocks.len().max(1)))
                && store
                    .update(&kv.key, kv.value.clone(), kv.mod_revision)
                    .await
                    .is_ok()
            {
                rewrites += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rewrites
    })
}

/// Three nodes allocate 200 addresses each, all at once, from two allocators per node, while
/// blocks are rewritten underneath them: 600 distinct addresses. Releasing them all leaves
/// every block free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_concurrent_allocations_on_three_nodes() {
    let Some((_etcd, store)) = etcd().await else {
        return;
    };
    let setup = Ipam::new(store.clone());
    common::pool(&setup, "p", "10.64.0.0/16", 26).await;
    let nodes = ["n1", "n2", "n3"];
    for n in nodes {
        common::node(store.as_ref(), n).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let meddler = meddle(store.clone(), stop.clone());
    let mut tasks = Vec::new();
    let mut allocators = Vec::new();
    for node in nodes {
        for half in 0..2 {
            let ipam = Ipam::new(store.clone());
            allocators.push(ipam.clone());
            for i in 0..100 {
                let ipam = ipam.clone();
                let handle = format!("net.{node}-{half}-{i}");
                tasks.push(tokio::spawn(async move {
                    let a = ipam.allocate(AllocateRequest::new(&handle, node)).await;
                    (handle, a)
                }));
            }
        }
    }
    let mut given: BTreeMap<IpAddr, String> = BTreeMap::new();
    for t in tasks {
        let (handle, a) = t.await.unwrap();
        let a = a.unwrap_or_else(|e| panic!("{handle}: {e}"));
        let address = a.ipv4().unwrap().address;
        assert!(
            given.insert(address, handle).is_none(),
            "{address} handed out twice"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rewrites = meddler.await.unwrap();
    assert_eq!(given.len(), 600);
    assert_eq!(
        common::allocated(store.as_ref()).await,
        given,
        "the store disagrees with the callers"
    );
    common::assert_consistent(store.as_ref()).await;
    let conflicts: u64 = allocators.iter().map(|a| a.stats().conflicts).sum();
    assert!(
        rewrites > 0 && conflicts > 0,
        "no conflict was forced ({rewrites} rewrites, {conflicts} conflicts)"
    );

    let releases: Vec<_> = given
        .values()
        .cloned()
        .enumerate()
        .map(|(i, handle)| {
            let ipam = allocators[i % allocators.len()].clone();
            tokio::spawn(async move { ipam.release_handle(&handle).await })
        })
        .collect();
    for r in releases {
        assert_eq!(r.await.unwrap().unwrap().len(), 1);
    }
    let blocks = common::blocks(store.as_ref()).await;
    assert!(!blocks.is_empty());
    assert!(
        blocks.iter().all(Block::is_empty),
        "a block still holds addresses"
    );
    assert!(store.list(keys::HANDLES).await.unwrap().items.is_empty());
    // Each node keeps one (empty) block; the rest went back to the pool.
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for b in &blocks {
        *per_node
            .entry(b.affinity().unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    assert!(per_node.values().all(|n| *n == 1), "{per_node:?}");
}

/// Allocators are killed at random points, as a crashing agent would be: their runtime is
/// shut down mid-flight, or their callers are aborted. No address is ever held twice or given
/// to two callers; the leak check finds exactly the allocations whose workload was never
/// recorded, and releasing them leaves only the recorded ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_allocators_leave_no_duplicates_and_the_leak_check_finds_their_leftovers() {
    let Some((etcd, store)) = etcd().await else {
        return;
    };
    let ipam = Ipam::new(store.clone());
    common::pool(&ipam, "p", "10.64.0.0/16", 26).await;
    for n in ["n1", "n2", "n3"] {
        common::node(store.as_ref(), n).await;
    }
    let mut rng = Rng::seeded();
    println!("seed {}", rng.0);
    for round in 0..6 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let endpoints = etcd.endpoints();
        for (k, node) in ["n1", "n2", "n3"].into_iter().enumerate() {
            let endpoints = endpoints.clone();
            runtime.spawn(async move {
                let config = EtcdConfig {
                    endpoints,
                    ..EtcdConfig::default()
                };
                let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(config).await.unwrap());
                let ipam = Ipam::new(store.clone());
                let mut pods = Vec::new();
                for i in 0..40 {
                    let (ipam, store) = (ipam.clone(), store.clone());
                    pods.push(tokio::spawn(async move {
                        let handle = format!("net.r{round}-{k}-{i}");
                        let a = ipam.allocate(AllocateRequest::new(&handle, node)).await?;
                        let address = a.ipv4().unwrap().address;
                        common::workload(store.as_ref(), node, &handle, &[address]).await;
                        Ok::<_, wren_ipam::IpamError>(())
                    }));
                }
                for p in pods {
                    let _ = p.await;
                }
            });
        }
        // Also abort single callers at random points through the test's own runtime.
        let mut callers = Vec::new();
        for i in 0..30 {
            let (ipam, store) = (ipam.clone(), store.clone());
            let node = ["n1", "n2", "n3"][i % 3];
            callers.push(tokio::spawn(async move {
                let handle = format!("net.a{round}-{i}");
                let a = ipam
                    .allocate(AllocateRequest::new(&handle, node))
                    .await
                    .unwrap();
                common::workload(store.as_ref(), node, &handle, &[a.ipv4().unwrap().address]).await;
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(60) as u64)).await;
        runtime.shutdown_background();
        for c in &callers {
            if rng.below(2) == 0 {
                c.abort();
            }
        }
        for c in callers {
            let _ = c.await;
        }
    }
    // Let in-flight requests of the dead runtimes land (or not) before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let held = common::allocated(store.as_ref()).await;
    common::assert_consistent(store.as_ref()).await;
    let workloads = store
        .list_json::<Workload>(keys::WORKLOADS)
        .await
        .unwrap()
        .items;
    let mut recorded: HashMap<String, IpAddr> = HashMap::new();
    let mut addresses = HashSet::new();
    for w in &workloads {
        let address = w.value.addresses[0].addr();
        assert!(
            addresses.insert(address),
            "{address} was given to two workloads"
        );
        assert_eq!(
            held.get(&address),
            Some(&w.value.handle),
            "a recorded workload's address is not held by it"
        );
        recorded.insert(w.value.handle.clone(), address);
    }
    let unrecorded: BTreeSet<String> = held
        .values()
        .filter(|h| !recorded.contains_key(*h))
        .cloned()
        .collect();
    println!(
        "{} held, {} recorded, {} left behind",
        held.len(),
        recorded.len(),
        unrecorded.len()
    );

    let report = ipam
        .check(CheckOptions {
            grace: Duration::ZERO,
        })
        .await
        .unwrap();
    let leaked: BTreeSet<String> = report.leaked.iter().map(|l| l.handle.clone()).collect();
    assert_eq!(
        leaked, unrecorded,
        "the leak check must find exactly the unrecorded allocations"
    );
    assert!(report.dead_node_blocks.is_empty() && report.stale_affinities.is_empty());
    ipam.release_from_check(&report).await.unwrap();
    let after = common::allocated(store.as_ref()).await;
    assert_eq!(after.len(), recorded.len());
    assert!(
        ipam.check(CheckOptions {
            grace: Duration::ZERO
        })
        .await
        .unwrap()
        .is_clean()
    );
}

/// A small deterministic generator, seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Rng(u64::from(nanos) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}
