//! The etcd backend against a three-member cluster losing a member: killed (connections
//! refused), paused (connections open, nothing answers) or all gone. While a quorum answers,
//! no request may fail; when none does, requests fail promptly naming every member.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_store::{Store, StoreError, WatchEvent};
use wren_tests::etcd::EtcdCluster;
use wren_tests::prereq;

/// Requests each case sends while a member is down: enough that a store spreading requests
/// over the members would send dozens to the dead one.
const REQUESTS: usize = 60;

fn have_cluster() -> bool {
    prereq::require_command("etcd") && prereq::require_command("etcdctl")
}

async fn store_for(cluster: &EtcdCluster) -> Arc<EtcdStore> {
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: "/wren-test/cluster/".into(),
        dial_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(8),
        attempt_timeout: Duration::from_millis(1500),
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    Arc::new(store)
}

/// Sends `REQUESTS` read-modify-writes (a create, a read, a compare-and-swap, a delete, each
/// on its own key) eight at a time, and returns the slowest; panics naming the first failure.
async fn every_request_succeeds(store: &Arc<EtcdStore>, tag: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for chunk in (0..REQUESTS).collect::<Vec<_>>().chunks(8) {
        let rounds = chunk.iter().map(|i| {
            let store = store.clone();
            let key = format!("{tag}/{i}");
            async move {
                let started = Instant::now();
                let created = store.create(&key, b"a".to_vec(), None).await?;
                let read = store.get(&key).await?.expect("created just now");
                assert_eq!(read.mod_revision, created);
                let updated = store.update(&key, b"b".to_vec(), created).await?;
                store.delete(&key, Some(updated)).await?;
                Ok::<_, StoreError>(started.elapsed())
            }
        });
        for result in futures::future::join_all(rounds).await {
            match result {
                Ok(took) => slowest = slowest.max(took),
                Err(e) => panic!("a request failed while a quorum answered: {e}"),
            }
        }
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_fails_no_request() {
    if !have_cluster() {
        return;
    }
    let mut cluster = EtcdCluster::start(3).unwrap();
    let store = store_for(&cluster).await;
    every_request_succeeds(&store, "before").await;
    // The first endpoint is where requests go first: kill that one, then the leader.
    cluster.kill(0).unwrap();
    every_request_succeeds(&store, "follower-or-leader-0").await;
    cluster.restart(0).unwrap();
    let leader = cluster.wait_leader(Duration::from_secs(10)).unwrap();
    cluster.kill(leader).unwrap();
    // Requests start at once, during the election.
    let slowest = every_request_succeeds(&store, "election").await;
    assert!(
        slowest < Duration::from_secs(8),
        "a request took {slowest:?} through an election"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_costs_one_attempt_and_its_watch_moves() {
    if !have_cluster() {
        return;
    }
    let mut cluster = EtcdCluster::start(3).unwrap();
    let store = store_for(&cluster).await;
    let revision = store.put("watched/k", b"1".to_vec(), None).await.unwrap();
    // The watch is served by the first endpoint, the one about to stall.
    let mut watch = store.watch("watched/", revision + 1).await.unwrap();
    cluster.pause(0).unwrap();
    let slowest = every_request_succeeds(&store, "paused").await;
    assert!(
        slowest < Duration::from_secs(4),
        "a request took {slowest:?}: more than one attempt on the paused member"
    );
    let written = store.put("watched/k", b"2".to_vec(), None).await.unwrap();
    // The stalled watch ends (keep-alive) and one opened again from the last revision seen
    // goes to a member that answers and delivers the change.
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        let mut from = revision + 1;
        loop {
            match watch.next().await {
                Some(Ok(WatchEvent::Put(kv))) if kv.mod_revision == written => return kv.value,
                Some(Ok(event)) => from = event.revision() + 1,
                Some(Err(_)) | None => watch = store.watch("watched/", from).await.unwrap(),
            }
        }
    })
    .await
    .expect("the change reached no watch within 20 s of the member stalling");
    assert_eq!(seen, b"2");
    cluster.resume(0).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_gone_a_request_fails_at_once_naming_each() {
    if !have_cluster() {
        return;
    }
    let mut cluster = EtcdCluster::start(3).unwrap();
    let store = store_for(&cluster).await;
    store.put("k", b"v".to_vec(), None).await.unwrap();
    for index in 0..cluster.len() {
        cluster.kill(index).unwrap();
    }
    let started = Instant::now();
    match store.get("k").await {
        Err(StoreError::Unavailable { endpoints, reason }) => {
            assert_eq!(endpoints, cluster.endpoints().join(","));
            for endpoint in cluster.endpoints() {
                assert!(reason.contains(&endpoint), "{endpoint} not in: {reason}");
            }
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?} to say no member takes a connection",
        started.elapsed()
    );
}
