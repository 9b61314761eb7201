//! `wren pool` and `wren ipam` as an operator runs them: the built `wren` binary against a
//! real etcd, with allocations made through the IPAM library as agents would make them.

// The IPAM tests' helpers: registering nodes and recording workloads as the agent does.
#[path = "../../ipam/tests/common/mod.rs"]
#[allow(unused_imports, unused_macros)]
mod common;

use wren_ipam::{AllocateRequest, Ipam};
use wren_model::keys;

// The `wren` runs.
#[allow(dead_code)]
mod cli_support;
use cli_support::*;

const PREFIX: &str = "/wren-cli-test/";

#[test]
fn pool_and_ipam_commands_against_etcd() {
    let Some(Datastore {
        etcd,
        runtime,
        store,
    }) = datastore()
    else {
        return;
    };
    let e = etcd.endpoint();
    let e = e.as_str();

    // Pools: add, then every kind of bad input refused with one line and nothing written.
    let added = ok(e, &["pool", "add", "main", "--cidr", "10.65.0.0/16"]);
    assert!(
        added.contains("pool main added: 10.65.0.0/16 in /26 blocks"),
        "{added}"
    );
    ok(
        e,
        &[
            "pool",
            "add",
            "six",
            "--cidr",
            "fd00:65::/48",
            "--encap",
            "vxlan",
        ],
    );
    let before = runtime.block_on(snapshot(store.as_ref()));
    fails(
        e,
        &["pool", "add", "x", "--cidr", "10.65.128.0/17"],
        "overlaps pool main (10.65.0.0/16)",
    );
    fails(
        e,
        &["pool", "add", "x", "--cidr", "10.66.0.0"],
        "malformed CIDR",
    );
    fails(
        e,
        &["pool", "add", "x", "--cidr", "10.66.1.0/16"],
        "did you mean 10.66.0.0/16?",
    );
    fails(
        e,
        &[
            "pool",
            "add",
            "x",
            "--cidr",
            "10.66.0.0/16",
            "--block-size",
            "12",
        ],
        "use /20 to /32",
    );
    fails(
        e,
        &["pool", "add", "main", "--cidr", "10.67.0.0/16"],
        "pool main already exists",
    );
    fails(e, &["pool", "rm", "nope"], "unknown pool nope");
    fails(
        e,
        &["ipam", "release", "--ip", "10.65.0.9"],
        "10.65.0.9 is not allocated",
    );
    fails(
        e,
        &["ipam", "release", "--ip", "192.0.2.1"],
        "192.0.2.1 is not in any pool",
    );
    assert_eq!(
        runtime.block_on(snapshot(store.as_ref())),
        before,
        "a refused command wrote"
    );

    // Two agents allocate; one pod's workload is recorded, one is not; node n2 goes away.
    let (live, leaked, gone) = runtime.block_on(async {
        let ipam = Ipam::new(store.clone());
        common::node(store.as_ref(), "n1").await;
        common::node(store.as_ref(), "n2").await;
        let alloc = |h: &str, n: &str| ipam.allocate(AllocateRequest::new(h, n));
        let live = alloc("net.c1", "n1").await.unwrap().ipv4().unwrap().address;
        common::workload(store.as_ref(), "n1", "net.c1", &[live]).await;
        let leaked = alloc("net.c2", "n1").await.unwrap().ipv4().unwrap().address;
        let gone = alloc("net.c3", "n2").await.unwrap().ipv4().unwrap().address;
        store.delete(&keys::node("n2"), None).await.unwrap();
        (live, leaked, gone)
    });

    let list = ok(e, &["pool", "list"]);
    assert!(list.lines().next().unwrap().starts_with("NAME"), "{list}");
    let main = list.lines().find(|l| l.starts_with("main")).unwrap();
    assert!(
        main.contains("2/1024") && main.ends_with("3/65536"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("six") && l.contains("vxlan (always)") && l.contains("/2^74")),
        "{list}"
    );

    // The same for programs: one JSON document, the pool's fields and its usage.
    let pools: serde_json::Value = serde_json::from_str(&ok(e, &["pool", "list", "-o", "json"]))
        .expect("`pool list -o json` is JSON");
    let main = pools
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "main")
        .unwrap();
    assert_eq!(
        (main["blocks"].as_u64(), main["used"].as_u64()),
        (Some(2), Some(3)),
        "{pools}"
    );
    assert_eq!(main["blockCapacity"].as_u64(), Some(1024), "{pools}");
    let workloads: serde_json::Value =
        serde_json::from_str(&ok(e, &["workload", "list", "--node", "n1", "-o", "json"])).unwrap();
    assert_eq!(workloads.as_array().map(Vec::len), Some(1), "{workloads}");

    let show = ok(e, &["ipam", "show"]);
    let n1 = show
        .lines()
        .find(|l| l.contains(" n1 "))
        .expect("a block of n1");
    assert!(n1.starts_with("main") && n1.contains("2/64"), "{show}");
    assert!(
        show.lines()
            .any(|l| l.contains(" n2 ") && l.contains("1/64")),
        "{show}"
    );

    let who = ok(e, &["ipam", "show", "--ip", &live.to_string()]);
    assert!(who.contains("pool:     main"), "{who}");
    assert!(who.contains("handle:   net.c1"), "{who}");
    assert!(who.contains("node:     n1"), "{who}");
    assert!(
        who.contains("workload: pod default/pod-c1, container c1 (eth0) on n1"),
        "{who}"
    );
    let orphan = ok(e, &["ipam", "show", "--ip", &leaked.to_string()]);
    assert!(orphan.contains("workload: none recorded"), "{orphan}");

    // The leak check names what is leaked; within the default grace period the young
    // address without a workload is not judged yet.
    let young = ok(e, &["ipam", "check"]);
    assert!(
        young.contains("without a workload yet is younger than 300s"),
        "{young}"
    );
    let check = ok(e, &["ipam", "check", "--grace", "0"]);
    assert!(check.contains("2 leaked addresses"), "{check}");
    assert!(
        check.contains(&leaked.to_string()) && check.contains("no workload holds its handle"),
        "{check}"
    );
    assert!(
        check.contains(&gone.to_string()) && check.contains("its node is gone"),
        "{check}"
    );
    assert!(check.contains("1 block of nodes that are gone"), "{check}");
    assert!(
        !check.contains(&format!("{live} ")),
        "a live address is reported: {check}"
    );

    let released = ok(e, &["ipam", "release", "--from-check", "--grace", "0"]);
    assert!(
        released.starts_with("released 2 addresses, 1 block"),
        "{released}"
    );
    let clean = ok(e, &["ipam", "check", "--grace", "0"]);
    assert!(
        clean.contains("checked 1 allocated address") && clean.contains("no leaks found"),
        "{clean}"
    );

    // Removing a pool that still holds an address is refused, saying how many.
    fails(
        e,
        &["pool", "rm", "main"],
        "pool main still has 1 allocated address; release them first",
    );
    let freed = ok(e, &["ipam", "release", "--ip", &live.to_string()]);
    assert_eq!(freed.trim(), format!("released {live} (handle net.c1)"));
    fails(
        e,
        &["ipam", "release", "--ip", &live.to_string()],
        "is not allocated",
    );
    ok(e, &["pool", "disable", "main"]);
    assert!(
        ok(e, &["pool", "list"])
            .lines()
            .any(|l| l.starts_with("main") && l.contains("disabled"))
    );
    ok(e, &["pool", "enable", "main"]);
    let removed = ok(e, &["pool", "rm", "main"]);
    assert!(removed.starts_with("pool main removed"), "{removed}");
    assert!(!ok(e, &["pool", "list"]).contains("main"));

    // An etcd that does not answer is one line naming it.
    fails(
        "http://127.0.0.1:1",
        &["pool", "list"],
        "cannot reach etcd at http://127.0.0.1:1",
    );
}
