//! Compare-and-swap throughput of the etcd backend against its anchor.
//!
//! For 1 and 16 concurrent clients, each client repeatedly replaces its own key on the
//! condition that its mod revision is still the one it last wrote, through
//! [`Store::update`](wren_store::Store::update), against a real local etcd. The anchor, in
//! the same run and against the same etcd, is the same loop written directly against
//! `etcd-client` (one `Txn` with a mod-revision compare and a put) without the wren layer.
//! Rounds alternate between the two so load from elsewhere on the machine hits both alike;
//! each row reports the median round. The figures are the ceiling for anything built on
//! compare-and-swap, such as IPAM.
//!
//! `cargo bench -p wren-store --bench cas` prints Markdown rows for BENCHMARKS.md; the
//! environment variables of [`wren_tests::bench`] set its length and storage.

mod raw_cas;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use wren_store::Store;
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_tests::bench::{self, BenchSettings, median};
use wren_tests::etcd::{Etcd, EtcdOptions};

/// Size of each value written; IPAM block documents are of this order.
const VALUE_BYTES: usize = 512;

/// Concurrent client counts measured.
const CLIENTS: [usize; 2] = [1, 16];

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Wren,
    Raw,
}

fn main() {
    if !bench::invoked_as_bench() || !wren_tests::prereq::require_command("etcd") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let settings = BenchSettings::from_env();
    println!("| etcd data | clients | wren CAS tx/s | anchor (raw etcd-client txn) tx/s | ratio |");
    println!("|---|---|---|---|---|");
    for (label, dir) in &settings.storages {
        let etcd = Etcd::start_with(EtcdOptions {
            data_parent: Some(dir.clone()),
            ..EtcdOptions::default()
        })
        .expect("start etcd");
        runtime.block_on(measure(&etcd, label, &settings));
    }
}

async fn measure(etcd: &Etcd, label: &str, settings: &BenchSettings) {
    let store = Arc::new(
        EtcdStore::connect(EtcdConfig {
            endpoints: etcd.endpoints(),
            prefix: "/wren-bench/".into(),
            ..EtcdConfig::default()
        })
        .await
        .expect("connect the store"),
    );
    let raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .expect("connect etcd-client");
    for clients in CLIENTS {
        let mut wren = Vec::new();
        let mut anchor = Vec::new();
        for _ in 0..settings.rounds {
            wren.push(run(Path::Wren, clients, settings.round, &store, &raw).await);
            anchor.push(run(Path::Raw, clients, settings.round, &store, &raw).await);
        }
        let (w, a) = (median(wren), median(anchor));
        println!("| {label} | {clients} | {w:.0} | {a:.0} | {:.2} |", w / a);
    }
}

/// Runs `clients` CAS loops for `duration` and returns successful transactions per second.
async fn run(
    path: Path,
    clients: usize,
    duration: Duration,
    store: &Arc<EtcdStore>,
    raw: &etcd_client::Client,
) -> f64 {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (store, raw, barrier) = (store.clone(), raw.clone(), barrier.clone());
            tokio::spawn(async move {
                let key = format!("cas/{i}");
                let value = vec![b'x'; VALUE_BYTES];
                let mut rev = store.put(&key, value.clone(), None).await.expect("seed");
                let mut kv = raw.kv_client();
                let full = format!("{}{key}", store.prefix());
                barrier.wait().await;
                let deadline = Instant::now() + duration;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    rev = match path {
                        Path::Wren => store.update(&key, value.clone(), rev).await.expect("cas"),
                        Path::Raw => raw_cas::cas(&mut kv, &full, value.clone(), rev).await,
                    };
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
        total += task.await.expect("bench task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}
