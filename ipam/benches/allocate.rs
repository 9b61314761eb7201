//! Allocation throughput of wren IPAM on a real local etcd, against the raw compare-and-swap
//! rate of the same etcd measured in the same run.
//!
//! Rows: one node, and three nodes in parallel (each its own allocator with its own etcd
//! connection, as three agents would be), with one allocation in flight per node (a pod at a
//! time) and with 64 in flight per node (a burst of pods). Every allocation is a new handle;
//! block claims happen on the way, as in a real cluster. The anchor is the raw loop written
//! directly against `etcd-client`, one `Txn` comparing a key's mod revision and putting a
//! 512-byte value, run by as many clients as there are allocations in flight. Rounds
//! alternate between the two and each row reports the median round. After every round the
//! addresses handed out are checked: no address twice, and exactly what the store holds.
//!
//! `cargo bench -p wren-ipam --bench allocate` prints Markdown rows for BENCHMARKS.md.
//! Environment: `WREN_BENCH_SECS` (seconds per round, default 3), `WREN_BENCH_ROUNDS`
//! (default 3), `WREN_BENCH_STORAGE` (`disk`, `tmpfs` or `both`, default `both`).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports, unused_macros)]
mod common;
#[path = "../../store/benches/raw_cas/mod.rs"]
mod raw_cas;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use wren_ipam::{AllocateRequest, Ipam};
use wren_store::Store;
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_tests::etcd::{Etcd, EtcdOptions};

/// Size of the value the anchor writes (the store benchmark's).
const VALUE_BYTES: usize = 512;

/// (nodes, allocations in flight per node)
const SHAPES: [(usize, usize); 4] = [(1, 1), (3, 1), (1, 64), (3, 64)];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` only wants it to build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !wren_tests::prereq::require_command("etcd") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let secs = env_or("WREN_BENCH_SECS", 3);
    let rounds = env_or("WREN_BENCH_ROUNDS", 3) as usize;
    let storage = std::env::var("WREN_BENCH_STORAGE").unwrap_or_else(|_| "both".into());
    let mut dirs: Vec<(&str, PathBuf)> = Vec::new();
    if storage == "disk" || storage == "both" {
        dirs.push(("disk", std::env::temp_dir()));
    }
    if storage == "tmpfs" || storage == "both" {
        dirs.push(("tmpfs", PathBuf::from("/dev/shm")));
    }
    println!(
        "| etcd data | nodes | in flight per node | allocations/s | anchor: raw CAS tx/s (same number of clients) | ratio | allocations per txn | duplicates |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, dir) in dirs {
        let etcd = Etcd::start_with(EtcdOptions {
            data_parent: Some(dir.clone()),
            ..EtcdOptions::default()
        })
        .expect("start etcd");
        let label = format!("{label} ({})", dir.display());
        runtime.block_on(measure(&etcd, &label, Duration::from_secs(secs), rounds));
    }
}

async fn connect(etcd: &Etcd, prefix: String) -> Arc<dyn Store> {
    let config = EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix,
        ..EtcdConfig::default()
    };
    Arc::new(EtcdStore::connect(config).await.expect("connect the store"))
}

async fn measure(etcd: &Etcd, label: &str, round: Duration, rounds: usize) {
    let raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .expect("connect etcd-client");
    let mut run_id = 0;
    for (nodes, in_flight) in SHAPES {
        let mut wren = Vec::new();
        let mut anchor = Vec::new();
        let mut per_txn = Vec::new();
        for _ in 0..rounds {
            run_id += 1;
            let prefix = format!("/wren-ipam-bench/{run_id}/");
            let (rate, batching) = allocate(etcd, prefix, nodes, in_flight, round).await;
            wren.push(rate);
            per_txn.push(batching);
            anchor.push(raw_cas(&raw, run_id, nodes * in_flight, round).await);
        }
        let (w, a) = (median(wren), median(anchor));
        println!(
            "| {label} | {nodes} | {in_flight} | {w:.0} | {a:.0} | {:.2} | {:.1} | 0 |",
            w / a,
            median(per_txn)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Allocates for `duration` on `nodes` nodes with `in_flight` requests each; returns
/// allocations per second and allocations per transaction. Panics on a duplicate.
async fn allocate(
    etcd: &Etcd,
    prefix: String,
    nodes: usize,
    in_flight: usize,
    duration: Duration,
) -> (f64, f64) {
    let admin = connect(etcd, prefix.clone()).await;
    let setup = Ipam::new(admin.clone());
    common::pool(&setup, "bench", "10.0.0.0/8", 26).await;
    let mut allocators = Vec::new();
    for n in 0..nodes {
        let name = format!("node{n}");
        common::node(admin.as_ref(), &name).await;
        // Each node is its own agent: its own connection and allocator.
        allocators.push((name, Ipam::new(connect(etcd, prefix.clone()).await)));
    }
    let barrier = Arc::new(Barrier::new(nodes * in_flight + 1));
    let serial = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (name, ipam) in &allocators {
        for _ in 0..in_flight {
            let (name, ipam, barrier, serial) =
                (name.clone(), ipam.clone(), barrier.clone(), serial.clone());
            tasks.push(tokio::spawn(async move {
                let mut got: Vec<IpAddr> = Vec::new();
                barrier.wait().await;
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    let handle = format!("bench.{}", serial.fetch_add(1, Ordering::Relaxed));
                    let a = ipam
                        .allocate(AllocateRequest::new(handle, &name))
                        .await
                        .expect("allocate");
                    got.extend(a.addresses.iter().map(|a| a.address));
                }
                got
            }));
        }
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut given = HashSet::new();
    for task in tasks {
        for address in task.await.expect("bench task") {
            assert!(given.insert(address), "{address} handed out twice");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let held = common::allocated(admin.as_ref()).await;
    assert_eq!(
        held.len(),
        given.len(),
        "the store disagrees with the callers"
    );
    assert!(held.keys().all(|a| given.contains(a)));
    let txns: u64 = allocators.iter().map(|(_, i)| i.stats().transactions).sum();
    (
        given.len() as f64 / elapsed,
        given.len() as f64 / txns.max(1) as f64,
    )
}

/// The anchor: `clients` raw etcd-client CAS loops for `duration`; successful tx/s.
async fn raw_cas(
    raw: &etcd_client::Client,
    run_id: usize,
    clients: usize,
    duration: Duration,
) -> f64 {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (mut kv, barrier) = (raw.kv_client(), barrier.clone());
            tokio::spawn(async move {
                let key = format!("/wren-ipam-bench/anchor/{run_id}/{i}");
                let value = vec![b'x'; VALUE_BYTES];
                let put = kv
                    .put(key.as_str(), value.clone(), None)
                    .await
                    .expect("seed");
                let mut revision = put.header().map_or(0, |h| h.revision());
                barrier.wait().await;
                let deadline = Instant::now() + duration;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    revision = raw_cas::cas(&mut kv, &key, value.clone(), revision).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    barrier.wait().await;
    let start = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("anchor task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}
