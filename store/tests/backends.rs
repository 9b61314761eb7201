//! The behavioural suite against both backends, plus what only the etcd backend has: a
//! network between it and the data, key prefixes and TLS.

mod suite;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use suite::{Backend, Subject};
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_store::memory::MemoryStore;
use wren_store::{Store, StoreError};
use wren_tests::etcd::{Etcd, EtcdOptions, TestPki};
use wren_tests::prereq;

struct Memory;

impl Backend for Memory {
    fn fresh(&self, _case: &str) -> Pin<Box<dyn Future<Output = Subject> + Send + '_>> {
        Box::pin(async {
            let store = MemoryStore::new();
            let compactor = store.clone();
            Subject {
                store: Arc::new(store),
                compact: Arc::new(move |rev| {
                    let store = compactor.clone();
                    Box::pin(async move { store.compact(rev) })
                }),
            }
        })
    }
}

/// One real etcd shared by the cases, each under its own key prefix.
struct RealEtcd {
    etcd: Etcd,
}

fn config(endpoints: Vec<String>, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints,
        prefix: prefix.into(),
        dial_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        ..EtcdConfig::default()
    }
}

impl Backend for RealEtcd {
    fn fresh(&self, case: &str) -> Pin<Box<dyn Future<Output = Subject> + Send + '_>> {
        let prefix = format!("/wren-test/{case}/");
        Box::pin(async move {
            let store = EtcdStore::connect(config(self.etcd.endpoints(), &prefix))
                .await
                .unwrap();
            let compactor = store.clone();
            Subject {
                store: Arc::new(store),
                compact: Arc::new(move |rev| {
                    let store = compactor.clone();
                    Box::pin(async move { store.compact(rev).await })
                }),
            }
        })
    }
}

fn have_etcd() -> bool {
    prereq::require_command("etcd")
}

/// A fresh etcd and a store on it under `/wren/v1/`, when etcd is installed.
async fn etcd_and_store() -> Option<(Etcd, EtcdStore)> {
    if !have_etcd() {
        return None;
    }
    let etcd = Etcd::start().unwrap();
    let store = EtcdStore::connect(config(etcd.endpoints(), "/wren/v1/"))
        .await
        .unwrap();
    Some((etcd, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_backend_passes_the_suite() {
    suite::run(&Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_backend_passes_the_suite() {
    if !have_etcd() {
        return;
    }
    let etcd = Etcd::start().unwrap();
    suite::run(&RealEtcd { etcd }).await;
}

/// A loopback endpoint where nothing listens (the port was free a moment ago).
fn dead_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn an_unreachable_etcd_is_unavailable_naming_the_endpoint_within_the_dial_timeout() {
    let endpoint = dead_endpoint();
    let store = EtcdStore::connect(EtcdConfig {
        endpoints: vec![endpoint.clone()],
        dial_timeout: Duration::from_millis(300),
        // Far longer than the test may take: the dial timeout must be what ends the wait.
        request_timeout: Duration::from_secs(300),
        ..EtcdConfig::default()
    })
    .await
    .expect("connecting is lazy and only checks the configuration");
    let bound = Duration::from_secs(30);
    let get = tokio::time::timeout(bound, store.get("nodes/n1")).await;
    match get {
        Ok(Err(StoreError::Unavailable { endpoints, reason })) => {
            assert_eq!(endpoints, endpoint);
            assert!(reason.contains("refused"), "reason: {reason}");
        }
        Ok(other) => panic!("expected unavailable, got {other:?}"),
        Err(_) => panic!("the request hung past {bound:?} instead of failing on dial"),
    }
    let watch = tokio::time::timeout(bound, store.watch("nodes/", 0)).await;
    assert!(
        matches!(watch, Ok(Err(StoreError::Unavailable { .. }))),
        "watch: {:?}",
        watch.map(|r| r.map(|_| "a stream"))
    );
}

#[tokio::test]
async fn the_client_reconnects_after_etcd_restarts() {
    let Some((mut etcd, store)) = etcd_and_store().await else {
        return;
    };
    store.put("nodes/n1", b"up".to_vec(), None).await.unwrap();
    etcd.stop().unwrap();
    match store.get("nodes/n1").await {
        Err(StoreError::Unavailable { endpoints, .. }) => assert_eq!(endpoints, etcd.endpoint()),
        other => panic!("expected unavailable while etcd is down, got {other:?}"),
    }
    etcd.restart().unwrap();
    let mut last = None;
    for _ in 0..50 {
        match store.get("nodes/n1").await {
            Ok(kv) => {
                assert_eq!(kv.unwrap().value, b"up");
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the same client never reached the restarted etcd: {last:?}");
}

#[tokio::test]
async fn keys_live_under_the_prefix_and_prefixes_do_not_see_each_other() {
    if !have_etcd() {
        return;
    }
    let etcd = Etcd::start().unwrap();
    let a = EtcdStore::connect(config(etcd.endpoints(), "/cluster-a/"))
        .await
        .unwrap();
    let b = EtcdStore::connect(config(etcd.endpoints(), "/cluster-b/"))
        .await
        .unwrap();
    a.put("pools/p", b"a".to_vec(), None).await.unwrap();
    b.put("pools/p", b"b".to_vec(), None).await.unwrap();
    assert_eq!(a.get("pools/p").await.unwrap().unwrap().value, b"a");
    assert_eq!(a.list("").await.unwrap().items.len(), 1);

    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    let stored = raw.get("/cluster-a/pools/p", None).await.unwrap();
    assert_eq!(
        stored.kvs()[0].value(),
        b"a",
        "the prefix is part of the etcd key"
    );
    raw.put("/cluster-a/nodes/n1", "{}", None).await.unwrap();
    assert_eq!(
        a.get("nodes/n1").await.unwrap().unwrap().key,
        "nodes/n1",
        "keys come back relative to the prefix"
    );
}

#[tokio::test]
async fn mutual_tls_with_a_ca_and_a_client_certificate() {
    if !have_etcd() || !prereq::require_command("openssl") {
        return;
    }
    let pki = TestPki::generate(Ipv4Addr::LOCALHOST.into()).unwrap();
    let files = pki.files();
    let etcd = Etcd::start_with(EtcdOptions {
        tls: Some(files.clone()),
        ..EtcdOptions::default()
    })
    .unwrap();
    let tls = EtcdConfig {
        ca: Some(files.ca.clone()),
        cert: Some(files.client_cert.clone()),
        key: Some(files.client_key.clone()),
        ..config(etcd.endpoints(), "/wren/v1/")
    };
    let store = EtcdStore::connect(tls.clone()).await.unwrap();
    let rev = store
        .create("nodes/n1", b"{}".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        store.get("nodes/n1").await.unwrap().unwrap().mod_revision,
        rev
    );

    // Without the client certificate the server refuses the connection.
    let anonymous = EtcdStore::connect(EtcdConfig {
        cert: None,
        key: None,
        ..tls.clone()
    })
    .await
    .unwrap();
    match anonymous.get("nodes/n1").await {
        Err(StoreError::Unavailable { endpoints, .. }) => assert_eq!(endpoints, etcd.endpoint()),
        other => panic!("expected the server to refuse a client without certificate: {other:?}"),
    }

    // TLS settings with a plain-HTTP endpoint are a configuration mistake, said at once.
    let plain = EtcdConfig {
        endpoints: vec![etcd.endpoint().replace("https://", "http://")],
        ..tls
    };
    assert!(matches!(
        EtcdStore::connect(plain).await,
        Err(StoreError::Config(_))
    ));
}

/// etcd's counts, from its `/metrics`, of `LeaseKeepAlive` streams opened and of the
/// messages received on them.
fn keep_alive_counts(endpoint: &str) -> (u64, u64) {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    write!(
        connection,
        "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    connection.read_to_string(&mut page).unwrap();
    let count = |metric: &str| -> u64 {
        page.lines()
            .filter(|l| l.starts_with(metric) && l.contains("grpc_method=\"LeaseKeepAlive\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    (
        count("grpc_server_started_total"),
        count("grpc_server_msg_received_total"),
    )
}

/// A lease's renewals share one keep-alive stream; a stream broken by etcd restarting is
/// replaced at the next renewal; a revoked lease is reported as gone.
#[tokio::test]
async fn renewals_of_a_lease_share_one_keep_alive_stream() {
    let Some((mut etcd, store)) = etcd_and_store().await else {
        return;
    };
    let lease = store.grant_lease(30).await.unwrap();
    let (streams_before, messages_before) = keep_alive_counts(&etcd.endpoint());
    for _ in 0..5 {
        store.keep_alive(lease).await.unwrap();
    }
    let (streams, messages) = keep_alive_counts(&etcd.endpoint());
    assert_eq!(streams - streams_before, 1, "streams opened for 5 renewals");
    assert_eq!(messages - messages_before, 5, "renewals sent");

    etcd.stop().unwrap();
    etcd.restart().unwrap();
    let mut renewed = Err(StoreError::Config("not tried".into()));
    for _ in 0..50 {
        renewed = store.keep_alive(lease).await;
        if renewed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    renewed.expect("the lease renewed after etcd restarted");

    store.revoke_lease(lease).await.unwrap();
    assert!(
        matches!(store.keep_alive(lease).await, Err(StoreError::LeaseNotFound(id)) if id == lease)
    );
}
