//! The controller end to end on the in-memory store, with a scripted speaker and a fake kernel:
//! documents written through IPAM and the model go in, sessions, exports and kernel routes
//! come out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use wren_ipam::{AllocateRequest, Ipam, PoolSpec};
use wren_model::{ClusterConfig, Node, keys};
use wren_store::Store;
use wren_store::json::JsonStore;
use wren_store::memory::MemoryStore;

use super::bgp::{ScriptedBgp, SessionInfo};
use super::{Controller, Pass, Shared, Trigger};
use crate::cli::{Cli, Command};
use crate::config::{AgentConfig, Settings, SystemHost};
use crate::dataplane::program::routes::fake::FakeKernel;
use crate::dataplane::{NextHop, Protocol, Route};
use crate::metrics::Metrics;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(name: &str, node_ip: &str, sync_timeout: &str) -> AgentConfig {
    let argv = [
        "wren",
        "agent",
        "--node-name",
        name,
        "--node-ip",
        node_ip,
        "--bgp-sync-timeout",
        sync_timeout,
        // A unit test runs on whatever host: the address need not be local.
        "--node-ip-not-local",
        "true",
    ];
    let Command::Agent(args) = <Cli as clap::Parser>::try_parse_from(argv).unwrap().command else {
        unreachable!("parsed as `wren agent`")
    };
    AgentConfig::resolve(&args, Settings::default(), &SystemHost).unwrap()
}

fn node(name: &str, ipv4: &str) -> Node {
    Node::new(name, Some(ipv4.parse().unwrap()))
}

/// An Established session whose peer has sent End-of-RIB.
fn synced_session(address: &str) -> SessionInfo {
    SessionInfo {
        address: ip(address),
        state: "Established".into(),
        in_state_for: Some(Duration::from_secs(1)),
        prefixes_received: 0,
        prefixes_filtered: Default::default(),
        prefixes_sent: 1,
        last_error: None,
        end_of_rib: true,
        bfd: None,
        local_as: 64512,
        timers: None,
    }
}

struct Rig {
    store: Arc<dyn Store>,
    bgp: Arc<ScriptedBgp>,
    kernel: Arc<FakeKernel>,
    controller: Controller,
}

async fn rig(sync_timeout: &str) -> Rig {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .put_json(&keys::node("a"), &node("a", "10.0.0.1/24"), None)
        .await
        .unwrap();
    store
        .put_json(&keys::node("b"), &node("b", "10.0.0.2/24"), None)
        .await
        .unwrap();
    let cfg = config("a", "10.0.0.1/24", sync_timeout);
    let bgp = Arc::new(ScriptedBgp::default());
    let kernel = Arc::new(FakeKernel::default());
    let shared = Shared::new(&cfg, Arc::new(Metrics::new()));
    let controller = Controller::new(&cfg, store.clone(), bgp.clone(), kernel.clone(), shared);
    Rig {
        store,
        bgp,
        kernel,
        controller,
    }
}

impl Rig {
    /// Runs passes until `done` holds (each pass follows a change of the view), or panics.
    async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if self.controller.pass().await != Pass::Waiting && done(self) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            let _ =
                tokio::time::timeout(Duration::from_millis(50), self.controller.changed()).await;
        }
    }

    /// A route learned over BGP by an earlier run of the agent, left in the kernel.
    fn learned_in_kernel(&self, dst: &str, via: &str) {
        self.kernel
            .table
            .lock()
            .unwrap()
            .insert(net(dst), Route::via(net(dst), ip(via)));
    }

    fn route(&self, dst: &str) -> Option<Route> {
        self.kernel.table.lock().unwrap().get(&net(dst)).cloned()
    }
}

/// Claims a block for `node` the way a pod ADD does.
async fn claim(store: &Arc<dyn Store>, node: &str, handle: &str) -> IpAddr {
    let ipam = Ipam::new(store.clone());
    if ipam.list_pools().await.unwrap().is_empty() {
        ipam.add_pool(&PoolSpec::new("default", "10.65.0.0/16").block_size(26))
            .await
            .unwrap();
    }
    let allocation = ipam
        .allocate(AllocateRequest::new(handle, node))
        .await
        .unwrap();
    allocation.ipv4().unwrap().address
}

#[tokio::test]
async fn nothing_is_touched_before_the_store_is_listed_and_then_the_node_is_programmed() {
    let r = rig("30s").await;
    let address = claim(&r.store, "a", "k8s.c1").await;
    let block = IpNet::new(address, 26).unwrap().trunc();
    r.until("a's block exported", |r| {
        r.bgp.originated().contains(&block)
    })
    .await;

    // The mesh: one session, to b, which has the higher address and so dials us.
    let peers = r.bgp.peers();
    assert_eq!(
        peers.keys().copied().collect::<Vec<_>>(),
        vec![ip("10.0.0.2")]
    );
    assert!(peers[&ip("10.0.0.2")].passive);
    // Export is the block and nothing else.
    assert_eq!(r.bgp.originated(), BTreeSet::from([block]));
    // Kernel: the block's blackhole, stamped as wren's.
    let route = r.route(&block.to_string()).unwrap();
    assert_eq!(route, Route::blackhole(block));
    assert_eq!(route.protocol, Protocol::WREN);
}

#[tokio::test]
async fn learned_routes_are_installed_except_our_own_blocks() {
    let r = rig("30s").await;
    let mine = claim(&r.store, "a", "k8s.c1").await;
    let my_block = IpNet::new(mine, 26).unwrap().trunc();
    r.bgp.change_paths(|paths| {
        *paths = BTreeMap::from([
            (net("10.65.9.0/26"), ip("10.0.0.2")),
            (my_block, ip("10.0.0.2")),
        ])
    });
    r.until("b's block installed", |r| r.route("10.65.9.0/26").is_some())
        .await;
    let learned = r.route("10.65.9.0/26").unwrap();
    assert_eq!(learned, Route::via(net("10.65.9.0/26"), ip("10.0.0.2")));
    assert_eq!(learned.protocol, Protocol::BGP);
    assert_eq!(
        r.route(&my_block.to_string()).unwrap().next_hop,
        NextHop::Blackhole
    );
}

#[tokio::test]
async fn drift_is_repaired_and_foreign_routes_are_left_alone() {
    let r = rig("30s").await;
    r.bgp.set_sessions(vec![synced_session("10.0.0.2")]);
    let mine = claim(&r.store, "a", "k8s.c1").await;
    let my_block = IpNet::new(mine, 26).unwrap().trunc();
    r.until("blackhole installed", |r| {
        r.route(&my_block.to_string()).is_some()
    })
    .await;
    {
        let mut table = r.kernel.table.lock().unwrap();
        table.remove(&my_block);
        table.insert(net("10.99.0.0/24"), Route::blackhole(net("10.99.0.0/24")));
        table.insert(
            net("10.98.0.0/24"),
            Route::via(net("10.98.0.0/24"), ip("10.0.0.2")),
        );
        table.insert(
            net("192.0.2.0/24"),
            Route::via(net("192.0.2.0/24"), ip("10.0.0.254")).with_protocol(Protocol(4)),
        );
    }
    assert!(matches!(
        r.controller.pass().await,
        Pass::Done { error: None, .. }
    ));
    let table = r.kernel.table.lock().unwrap();
    assert!(table.contains_key(&my_block), "deleted route restored");
    assert!(
        !table.contains_key(&net("10.99.0.0/24")),
        "stale wren route removed"
    );
    assert!(
        !table.contains_key(&net("10.98.0.0/24")),
        "stale BGP route removed once synced"
    );
    assert_eq!(
        table[&net("192.0.2.0/24")].protocol,
        Protocol(4),
        "someone else's route untouched"
    );
}

#[tokio::test]
async fn learned_routes_in_the_kernel_survive_until_bgp_has_synced() {
    let r = rig("30s").await;
    r.learned_in_kernel("10.65.7.0/26", "10.0.0.2");
    r.until("first pass", |_| true).await;
    assert!(
        r.route("10.65.7.0/26").is_some(),
        "kept while b has not sent End-of-RIB"
    );
    r.bgp.set_sessions(vec![synced_session("10.0.0.2")]);
    r.controller.pass().await;
    assert!(
        r.route("10.65.7.0/26").is_none(),
        "withdrawn once b is synced and did not re-announce it"
    );
    let status = r.controller.shared.status();
    assert!(status.readiness.bgp_synced);
    assert_eq!(status.peers.len(), 1);
    assert_eq!(status.peers[0].name, "b");
}

#[tokio::test]
async fn the_sync_timeout_counts_from_the_first_view_not_from_start_up() {
    // The agent started while the datastore was away: no pass had a view for longer than
    // the sync timeout. Its first pass must still keep the learned routes for the sessions.
    // The shortest sync timeout the configuration accepts.
    let r = rig("1s").await;
    r.learned_in_kernel("10.65.7.0/26", "10.0.0.2");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    r.until("first pass", |_| true).await;
    assert!(
        r.route("10.65.7.0/26").is_some(),
        "learned route removed by the first pass after the datastore returned"
    );
    assert!(!r.controller.shared.readiness().bgp_synced);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.controller.pass().await;
    assert!(
        r.route("10.65.7.0/26").is_none(),
        "withdrawn once the sessions had their time and b announced nothing"
    );
    assert!(r.controller.shared.readiness().bgp_synced);
}

#[tokio::test]
async fn mesh_follows_nodes_and_cluster_config() {
    let r = rig("30s").await;
    r.until("b peered", |r| r.bgp.peers().len() == 1).await;
    r.store
        .put_json(&keys::node("c"), &node("c", "10.0.0.3/24"), None)
        .await
        .unwrap();
    r.until("c peered", |r| r.bgp.peers().len() == 2).await;
    r.store.delete(&keys::node("b"), None).await.unwrap();
    r.until("b gone", |r| !r.bgp.peers().contains_key(&ip("10.0.0.2")))
        .await;
    let off = ClusterConfig {
        node_to_node_mesh: false,
        ..Default::default()
    };
    r.store
        .put_json(keys::CLUSTER_CONFIG, &off, None)
        .await
        .unwrap();
    r.until("mesh off", |r| r.bgp.peers().is_empty()).await;
}

#[tokio::test]
async fn borrowed_addresses_are_exported_as_host_routes() {
    let r = rig("30s").await;
    let ipam = Ipam::new(r.store.clone());
    // A pool with exactly one block, claimed by b: a must borrow.
    ipam.add_pool(&PoolSpec::new("tiny", "10.66.0.0/26").block_size(26))
        .await
        .unwrap();
    ipam.allocate(AllocateRequest::new("k8s.b1", "b"))
        .await
        .unwrap();
    let borrowed = ipam
        .allocate(AllocateRequest::new("k8s.a1", "a"))
        .await
        .unwrap();
    let host = IpNet::from(borrowed.ipv4().unwrap().address);
    r.until("borrowed /32 exported", |r| {
        r.bgp.originated().contains(&host)
    })
    .await;
    assert_eq!(
        r.bgp.originated().len(),
        1,
        "b's block is not ours to announce"
    );
}

#[tokio::test]
async fn a_change_sends_only_what_changed_and_a_drift_pass_reads_the_kernel() {
    let r = rig("30s").await;
    r.bgp.set_sessions(vec![synced_session("10.0.0.2")]);
    r.bgp
        .change_paths(|paths| *paths = BTreeMap::from([(net("10.65.9.0/26"), ip("10.0.0.2"))]));
    r.until("b's block installed", |r| r.route("10.65.9.0/26").is_some())
        .await;
    let full_passes = *r.kernel.passes.lock().unwrap();
    // A best path changes: the change goes in without a full reconcile.
    r.bgp.change_paths(|paths| {
        *paths = BTreeMap::from([
            (net("10.65.9.0/26"), ip("10.0.0.3")),
            (net("10.65.10.0/26"), ip("10.0.0.2")),
        ])
    });
    r.kernel
        .table
        .lock()
        .unwrap()
        .insert(net("10.99.0.0/24"), Route::blackhole(net("10.99.0.0/24")));
    assert_eq!(
        r.controller.pass_on(Trigger::Change).await,
        Pass::Done {
            desired: 2,
            error: None
        }
    );
    assert_eq!(*r.kernel.passes.lock().unwrap(), full_passes);
    assert_eq!(
        r.route("10.65.9.0/26").unwrap(),
        Route::via(net("10.65.9.0/26"), ip("10.0.0.3"))
    );
    assert!(r.route("10.65.10.0/26").is_some());
    assert!(
        r.route("10.99.0.0/24").is_some(),
        "drift waits for the drift pass"
    );
    // The drift pass reads the kernel and removes the stale route of ours.
    r.controller.pass_on(Trigger::Drift).await;
    assert_eq!(*r.kernel.passes.lock().unwrap(), full_passes + 1);
    assert!(r.route("10.99.0.0/24").is_none());
    // A path withdrawn: the change removes its route.
    r.bgp.change_paths(|paths| {
        paths.remove(&net("10.65.10.0/26"));
    });
    r.controller.pass_on(Trigger::Change).await;
    assert!(r.route("10.65.10.0/26").is_none());
    assert_eq!(*r.kernel.passes.lock().unwrap(), full_passes + 1);
}

#[tokio::test]
async fn a_failed_pass_makes_the_next_one_read_the_kernel() {
    let r = rig("30s").await;
    r.until("first pass", |_| true).await;
    let full_passes = *r.kernel.passes.lock().unwrap();
    r.kernel
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = r.controller.pass_on(Trigger::Change).await;
    assert!(
        matches!(failed, Pass::Done { error: Some(_), .. }),
        "{failed:?}"
    );
    assert!(r.controller.shared.status().last_reconcile_error.is_some());
    r.kernel
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let passes_before = *r.kernel.passes.lock().unwrap();
    assert!(
        passes_before > full_passes,
        "the change fell back to a reconcile"
    );
    r.controller.pass_on(Trigger::Change).await;
    assert_eq!(
        *r.kernel.passes.lock().unwrap(),
        passes_before + 1,
        "after a failure the next pass reconciles in full"
    );
    assert!(r.controller.shared.status().last_reconcile_error.is_none());
}

#[tokio::test]
async fn a_tick_reads_the_kernel_only_after_the_kernel_reported_a_change() {
    let plain = rig("30s").await;
    plain.until("first pass", |_| true).await;
    assert_eq!(
        plain.controller.tick(),
        Trigger::Drift,
        "without notifications every tick reads the kernel"
    );
    let changes = Arc::new(crate::dataplane::watch::KernelChanges::default());
    let Rig {
        store,
        bgp,
        kernel,
        controller,
    } = rig("30s").await;
    let r = Rig {
        store,
        bgp,
        kernel,
        controller: controller.with_kernel_changes(Some(changes.clone())),
    };
    r.until("first pass", |_| true).await;
    let full_passes = *r.kernel.passes.lock().unwrap();
    assert_eq!(r.controller.tick(), Trigger::Quiet);
    // A route of ours the kernel did not report (it always does): a quiet tick leaves it.
    r.kernel
        .table
        .lock()
        .unwrap()
        .insert(net("10.99.0.0/24"), Route::blackhole(net("10.99.0.0/24")));
    r.controller.pass_on(r.controller.tick()).await;
    assert_eq!(*r.kernel.passes.lock().unwrap(), full_passes);
    assert!(r.route("10.99.0.0/24").is_some());
    // Reported: the next tick reads the kernel and removes it.
    changes.routing_changed();
    assert_eq!(r.controller.tick(), Trigger::Drift);
    r.controller.pass_on(r.controller.tick()).await;
    assert_eq!(*r.kernel.passes.lock().unwrap(), full_passes + 1);
    assert!(r.route("10.99.0.0/24").is_none());
    assert_eq!(r.controller.tick(), Trigger::Quiet);
    // A read that failed is made again at the next tick.
    r.kernel
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    r.controller.pass_on(Trigger::Drift).await;
    r.kernel
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(r.controller.tick(), Trigger::Drift);
    r.controller.pass_on(Trigger::Drift).await;
    assert_eq!(r.controller.tick(), Trigger::Quiet);
    // The kernel's silence is trusted for FULL_READ_PERIOD, no longer.
    if let Some(read) = super::lock(&r.controller.kernel_read).as_mut() {
        read.at -= super::FULL_READ_PERIOD;
    }
    assert_eq!(r.controller.tick(), Trigger::Drift);
}

/// Passes until one returns something other than `Pass::Waiting` and `done` holds of it.
async fn pass_until(r: &Rig, what: &str, done: impl Fn(&Pass) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pass = r.controller.pass().await;
        if done(&pass) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what} (last pass: {pass:?})"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), r.controller.changed()).await;
    }
}

#[tokio::test]
async fn a_datastore_that_lost_its_data_changes_nothing_and_is_rebuilt_from_what_the_node_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    for (name, ip) in [("a", "10.0.0.1/24"), ("b", "10.0.0.2/24")] {
        store
            .put_json(&keys::node(name), &node(name, ip), None)
            .await
            .unwrap();
    }
    let cfg = config("a", "10.0.0.1/24", "30s");
    let bgp = Arc::new(ScriptedBgp::default());
    let kernel = Arc::new(FakeKernel::default());
    let shared = Shared::new(&cfg, Arc::new(Metrics::new()));
    let identity = Arc::new(
        super::identity::DatastoreIdentity::open("a", dir.path(), Duration::from_secs(3)).unwrap(),
    );
    shared.set_identity(identity.clone());
    let controller = Controller::new(
        &cfg,
        store.clone(),
        bgp.clone(),
        kernel.clone(),
        shared.clone(),
    );
    let r = Rig {
        store,
        bgp,
        kernel,
        controller,
    };
    let address = claim(&r.store, "a", "k8s.c1").await;
    let block = IpNet::new(address, 26).unwrap().trunc();
    r.until("a's block exported and blackholed", |r| {
        r.bgp.originated().contains(&block) && r.route(&block.to_string()).is_some()
    })
    .await;
    let id = r.store.get(keys::CLUSTER_ID).await.unwrap().unwrap().value;
    let peers = r.bgp.peers();

    // The datastore comes back empty.
    for kv in r.store.list("").await.unwrap().items {
        r.store.delete(&kv.key, None).await.unwrap();
    }
    pass_until(&r, "a held pass", |p| *p == Pass::Held).await;
    assert!(r.bgp.originated().contains(&block), "withdrawn");
    assert_eq!(r.bgp.peers(), peers, "sessions changed");
    assert_eq!(
        r.route(&block.to_string()).map(|r| r.next_hop),
        Some(NextHop::Blackhole),
        "blackhole removed"
    );
    let why = shared.readiness().cluster_data.expect("a reason");
    assert!(why.contains("lost the cluster's data"), "{why}");
    assert!(shared.datastore_distrusted());
    // What the node holds is written back before the identity.
    assert!(r.store.get(&keys::block(&block)).await.unwrap().is_some());
    assert!(r.store.get(&keys::pool("default")).await.unwrap().is_some());
    let handle = r.store.get(&keys::handle("k8s.c1")).await.unwrap();
    assert!(
        handle.is_none(),
        "a handle without a workload is not rebuilt"
    );
    assert!(r.store.get(&keys::rebuild("a")).await.unwrap().is_some());
    // Node b writes its part back too.
    r.store
        .put_json(&keys::node("b"), &node("b", "10.0.0.2/24"), None)
        .await
        .unwrap();

    // Once the settling time has passed, the same identity is back and passes resume.
    pass_until(&r, "passes to resume", |p| matches!(p, Pass::Done { .. })).await;
    let back = r.store.get(keys::CLUSTER_ID).await.unwrap().unwrap().value;
    assert_eq!(back, id, "another identity was written");
    assert!(shared.readiness().cluster_data.is_none());
    assert!(r.bgp.originated().contains(&block));
    assert_eq!(r.bgp.peers(), peers);
    assert!(r.store.get(&keys::rebuild("a")).await.unwrap().is_none());
}
