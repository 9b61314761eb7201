//! The etcd backend against a three-member cluster losing a member: killed (connections
//! refused), paused (connections open, nothing answers) or all gone. While a quorum answers,
//! no request may fail; when none does, requests fail promptly naming every member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_store::{Store, StoreError, WatchEvent};
use wren_tests::etcd::EtcdCluster;
use wren_tests::prereq;

/// Requests each case sends while a member is down: enough that a store spreading requests
/// over the members would send dozens to the dead one.
const REQUESTS: usize = 60;

/// The cases measure how long requests take while a member fails, so they run one at a time:
/// four three-member clusters at once on a small machine slow elections past what a case
/// allows.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether etcd is installed (a missing one fails under CI), and the turn of this case.
async fn have_cluster() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if prereq::require_command("etcd") && prereq::require_command("etcdctl") {
        Some(ONE_CLUSTER_AT_A_TIME.lock().await)
    } else {
        None
    }
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
    let Some(_turn) = have_cluster().await else {
        return;
    };
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
    let Some(_turn) = have_cluster().await else {
        return;
    };
    let mut cluster = EtcdCluster::start(3).unwrap();
    // A follower: stalling it costs no election, so what a request loses is the store's
    // doing alone (a stalled leader is the next case).
    cluster.move_leader(1, Duration::from_secs(10)).unwrap();
    let store = store_for(&cluster).await;
    let revision = store.put("watched/k", b"1".to_vec(), None).await.unwrap();
    // The watch is served by the first endpoint, the one about to stall.
    let mut watch = store.watch("watched/", revision + 1).await.unwrap();
    cluster.pause(0).unwrap();
    let slowest = every_request_succeeds(&store, "paused").await;
    assert!(
        slowest < Duration::from_secs(3),
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

/// A stalled leader: the other two elect a new one while requests wait on the stalled
/// member and then on members without a leader; none fails, each within its request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_fails_no_request_through_the_election() {
    let Some(_turn) = have_cluster().await else {
        return;
    };
    let mut cluster = EtcdCluster::start(3).unwrap();
    cluster.move_leader(0, Duration::from_secs(10)).unwrap();
    let store = store_for(&cluster).await;
    every_request_succeeds(&store, "before").await;
    cluster.pause(0).unwrap();
    every_request_succeeds(&store, "election").await;
    let elected = cluster.wait_leader(Duration::from_secs(10)).unwrap();
    assert_ne!(elected, 0, "the paused member is still named the leader");
    cluster.resume(0).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_gone_a_request_fails_at_once_naming_each() {
    let Some(_turn) = have_cluster().await else {
        return;
    };
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

/// A TCP relay in front of one member that can be told to stop passing the member's answers
/// on: the member still receives and carries out every request, and the client hears nothing.
struct AnswerDroppingRelay {
    endpoint: String,
    drop_answers: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerDroppingRelay {
    async fn start(member: &str) -> AnswerDroppingRelay {
        let target = member.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let drop_answers = Arc::new(AtomicBool::new(false));
        let flag = drop_answers.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let flag = flag.clone();
                tokio::spawn(async move {
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let requests = tokio::io::copy(&mut client_rx, &mut server_tx);
                    let answers = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = server_rx.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if !flag.load(Ordering::SeqCst) {
                                client_tx.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    let _ = tokio::join!(requests, answers);
                });
            }
        });
        AnswerDroppingRelay {
            endpoint,
            drop_answers,
            task,
        }
    }
}

impl AnswerDroppingRelay {
    /// Passes answers on again.
    fn pass(&self) {
        self.drop_answers.store(false, Ordering::SeqCst);
    }
}

impl Drop for AnswerDroppingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A store whose first (preferred) endpoint is `relay`, then the other members; from its
/// first write on, the relay drops the answers until [`AnswerDroppingRelay::pass`].
async fn store_losing_answers(relay: &AnswerDroppingRelay, cluster: &EtcdCluster) -> EtcdStore {
    let mut endpoints = vec![relay.endpoint.clone()];
    endpoints.extend(cluster.endpoints().into_iter().skip(1));
    let store = EtcdStore::connect(EtcdConfig {
        endpoints,
        prefix: "/wren-test/lost-answer/".into(),
        dial_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(8),
        attempt_timeout: Duration::from_millis(1000),
        ..EtcdConfig::default()
    })
    .await
    .unwrap();
    // Answers pass until the connection through the relay is up.
    store.get("warm-up").await.unwrap();
    relay.drop_answers.store(true, Ordering::SeqCst);
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_carried_out_whose_answer_was_lost_succeeds_on_retry() {
    let Some(_turn) = have_cluster().await else {
        return;
    };
    let cluster = EtcdCluster::start(3).unwrap();
    let relay = AnswerDroppingRelay::start(&cluster.endpoints()[0]).await;

    // Each write goes to the relay's member, which carries it out; its answer is lost, so the
    // store retries on the next member, where the condition no longer holds.
    let store = store_losing_answers(&relay, &cluster).await;
    let created = store.create("k", b"v1".to_vec(), None).await;
    relay.pass();
    let created = created.expect("a create carried out once is not a conflict");
    let read = store.get("k").await.unwrap().unwrap();
    assert_eq!(
        (read.value.as_slice(), read.mod_revision),
        (&b"v1"[..], created)
    );

    let store = store_losing_answers(&relay, &cluster).await;
    let updated = store.update("k", b"v2".to_vec(), created).await;
    relay.pass();
    let updated = updated.expect("an update carried out once is not a conflict");
    let read = store.get("k").await.unwrap().unwrap();
    assert_eq!(
        (read.value.as_slice(), read.mod_revision),
        (&b"v2"[..], updated)
    );

    let store = store_losing_answers(&relay, &cluster).await;
    let deleted = store.delete("k", Some(updated)).await;
    relay.pass();
    deleted.expect("a delete carried out once is not a conflict");
    assert!(store.get("k").await.unwrap().is_none());

    // A condition broken by someone else's write stays a conflict, retry or not.
    let other = store
        .create("taken", b"theirs".to_vec(), None)
        .await
        .unwrap();
    let store = store_losing_answers(&relay, &cluster).await;
    let ours = store.create("taken", b"ours".to_vec(), None).await;
    relay.pass();
    assert!(
        matches!(ours, Err(StoreError::Conflict { ref key }) if key == "taken"),
        "{ours:?}"
    );
    let read = store.get("taken").await.unwrap().unwrap();
    assert_eq!(
        (read.value.as_slice(), read.mod_revision),
        (&b"theirs"[..], other)
    );
}
