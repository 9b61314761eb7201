//! Pods through the real `wren-cni` binary and a real agent (etcd, IPAM, kernel): addresses
//! from the pool, pod-to-pod and pod-to-node reachability over IPv4 and IPv6, CHECK, GC and
//! STATUS, and DEL removing interface, route, allocation and record (twice).

#[path = "cni_support/mod.rs"]
mod support;

use serde_json::json;
use std::time::Duration;

use support::{Call, NETWORK, NODE_IP, Node, address, reachable, wren};
use wren_tests::process::wait_until;

/// How long a route may take to follow a CNI call, and how often to look.
const PATIENCE: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_millis(50);

fn dual_stack() -> serde_json::Value {
    json!({"ipam": {"assign_ipv4": true, "assign_ipv6": true}})
}

#[test]
fn pods_get_addresses_reach_each_other_and_the_node_and_del_removes_everything() {
    if !support::ready() {
        return;
    }
    let node = Node::start(
        "cni-pods",
        &[("v4", "10.70.0.0/24", 28), ("v6", "fd00:70::/112", 122)],
    );
    let (pod_a, pod_b) = (node.pod("cni-pod-a"), node.pod("cni-pod-b"));
    let config = node.config("1.0.0", dual_stack());

    let a = wren(&Call::new("ADD", "ctr-a", Some(&pod_a)), &config);
    assert!(a.ok, "{:?}", a);
    let b = wren(&Call::new("ADD", "ctr-b", Some(&pod_b)), &config);
    assert!(b.ok, "{:?}", b);
    let (a4, a6, b4, b6) = (
        address(&a.json, false),
        address(&a.json, true),
        address(&b.json, false),
        address(&b.json, true),
    );
    assert!(
        a4.starts_with("10.70.0.") && b4.starts_with("10.70.0."),
        "{a4} {b4}"
    );
    assert!(
        a6.starts_with("fd00:70::") && b6.starts_with("fd00:70::"),
        "{a6} {b6}"
    );
    assert_ne!(a4, b4);
    assert_eq!(
        a.json["interfaces"][1]["sandbox"],
        pod_a.path().display().to_string()
    );
    let host_a = a.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        node.wren_links().contains(&host_a),
        "{:?}",
        node.wren_links()
    );

    // The addresses are held by the handle the design names, and the pod is recorded.
    let held = node.handle_addresses(&format!("{NETWORK}.ctr-a"));
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(node.workload_keys().len(), 2);

    for (from, to) in [
        (&pod_a, &b4),
        (&pod_a, &b6),
        (&pod_b, &a4),
        (&pod_a, &NODE_IP.to_string()),
    ] {
        assert!(
            reachable(from, to),
            "{to} not reachable from {}",
            from.name()
        );
    }
    assert!(
        reachable(&pod_b, "2001:db8::1"),
        "node not reachable over IPv6"
    );
    let pod_routes = pod_a.ip(&["route"]).unwrap();
    assert!(
        pod_routes.contains("default via 169.254.1.1 dev eth0"),
        "{pod_routes}"
    );

    // CHECK with the ADD result as prevResult passes.
    let mut check_config = node.config("1.0.0", dual_stack());
    check_config["prevResult"] = a.json.clone();
    let check = wren(&Call::new("CHECK", "ctr-a", Some(&pod_a)), &check_config);
    assert!(check.ok, "{:?}", check);

    // DEL removes A's interface, route, addresses and record; a second DEL succeeds.
    let del = wren(&Call::new("DEL", "ctr-a", Some(&pod_a)), &check_config);
    assert!(del.ok && del.json.is_null(), "{:?}", del);
    assert!(!node.wren_links().contains(&host_a));
    assert!(!node.wren_routes().contains(&a4), "{}", node.wren_routes());
    assert!(
        node.handle_addresses(&format!("{NETWORK}.ctr-a"))
            .is_empty()
    );
    assert_eq!(node.workload_keys().len(), 1);
    assert_eq!(
        pod_a.ip(&["-o", "link"]).unwrap().lines().count(),
        1,
        "pod end left"
    );
    let again = wren(&Call::new("DEL", "ctr-a", Some(&pod_a)), &config);
    assert!(again.ok, "{:?}", again);

    // CHECK of a pod that is gone fails and says so.
    let gone = wren(&Call::new("CHECK", "ctr-a", Some(&pod_a)), &check_config);
    assert!(!gone.ok);
    assert_eq!(gone.json["code"], 103);

    // DEL after the runtime removed the pod's namespace, without CNI_NETNS, still cleans up.
    drop(pod_b);
    let del_b = wren(&Call::new("DEL", "ctr-b", None), &config);
    assert!(del_b.ok, "{:?}", del_b);
    node.assert_empty();
}

#[test]
fn add_is_idempotent_and_check_finds_a_broken_pod() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-idem", &[("v4", "10.71.0.0/24", 26)]);
    let pod = node.pod("cni-idem-pod");
    let config = node.config("0.4.0", json!({}));
    let first = wren(&Call::new("ADD", "ctr-1", Some(&pod)), &config);
    let second = wren(&Call::new("ADD", "ctr-1", Some(&pod)), &config);
    assert!(first.ok && second.ok, "{first:?} {second:?}");
    assert_eq!(first.json, second.json);
    assert_eq!(
        first.json["ips"][0]["version"], "4",
        "0.4.0 results carry the IP version"
    );
    assert_eq!(node.allocated(), 1);

    // Someone deletes the pod's default route: CHECK names it.
    pod.ip(&["route", "del", "default"]).unwrap();
    let mut check_config = config.clone();
    check_config["prevResult"] = first.json.clone();
    let check = wren(&Call::new("CHECK", "ctr-1", Some(&pod)), &check_config);
    assert!(!check.ok);
    assert_eq!(check.json["code"], 103);
    assert!(
        check.json["details"]
            .as_str()
            .unwrap()
            .contains("0.0.0.0/0 via 169.254.1.1"),
        "{}",
        check.json
    );

    // ADD again repairs it (the broken attachment is rebuilt with the same address).
    let repaired = wren(&Call::new("ADD", "ctr-1", Some(&pod)), &config);
    assert!(repaired.ok, "{repaired:?}");
    assert_eq!(address(&repaired.json, false), address(&first.json, false));
    assert!(wren(&Call::new("CHECK", "ctr-1", Some(&pod)), &check_config).ok);
    assert!(wren(&Call::new("DEL", "ctr-1", Some(&pod)), &config).ok);
    node.assert_empty();
}

#[test]
fn gc_releases_what_the_runtime_no_longer_lists_and_status_tracks_the_pools() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-gc", &[("v4", "10.72.0.0/24", 26)]);
    let pods: Vec<_> = (0..3).map(|i| node.pod(&format!("cni-gc-{i}"))).collect();
    let config = node.config("1.1.0", json!({}));
    for (i, pod) in pods.iter().enumerate() {
        let r = wren(&Call::new("ADD", &format!("gc-{i}"), Some(pod)), &config);
        assert!(r.ok, "{r:?}");
    }
    let status = wren(&Call::new("STATUS", "", None), &config);
    assert!(status.ok && status.json.is_null(), "{status:?}");

    let gc_config = node.config(
        "1.1.0",
        json!({"cni.dev/valid-attachments": [{"containerID": "gc-1", "ifname": "eth0"}]}),
    );
    let gc = wren(&Call::new("GC", "", None), &gc_config);
    assert!(gc.ok && gc.json.is_null(), "{gc:?}");
    assert_eq!(
        node.workload_keys(),
        vec![format!("workloads/{}/gc-1/eth0", support::NODE_NAME)]
    );
    assert_eq!(node.wren_links().len(), 1);
    assert_eq!(node.allocated(), 1);
    assert!(wren(&Call::new("CHECK", "gc-1", Some(&pods[1])), &config).ok);

    // A configuration naming a pool that does not exist cannot allocate: STATUS says so.
    let missing_pool = node.config("1.1.0", json!({"ipam": {"pools": ["nope"]}}));
    let status = wren(&Call::new("STATUS", "", None), &missing_pool);
    assert!(!status.ok);
    assert_eq!(status.json["code"], 50);
    assert!(
        status.json["msg"].as_str().unwrap().contains("nope"),
        "{}",
        status.json
    );

    let gc_all = node.config("1.1.0", json!({"cni.dev/valid-attachments": []}));
    assert!(wren(&Call::new("GC", "", None), &gc_all).ok);
    node.assert_empty();
}

#[test]
fn the_runtime_can_ask_for_a_specific_address() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-static", &[("v4", "10.73.0.0/24", 26)]);
    let (pod_a, pod_b) = (node.pod("cni-static-a"), node.pod("cni-static-b"));
    let asking = node.config(
        "1.0.0",
        json!({"runtimeConfig": {"ips": ["10.73.0.77/24"]}}),
    );
    let a = wren(&Call::new("ADD", "ctr-static-a", Some(&pod_a)), &asking);
    assert!(a.ok, "{a:?}");
    assert_eq!(address(&a.json, false), "10.73.0.77");

    // The same address for another pod is refused, and that pod gets nothing.
    let b = wren(&Call::new("ADD", "ctr-static-b", Some(&pod_b)), &asking);
    assert!(!b.ok);
    assert_eq!(b.json["code"], 106, "{}", b.json);
    assert_eq!(node.allocated(), 1);
    assert_eq!(node.wren_links().len(), 1);
    assert_eq!(pod_b.ip(&["-o", "link"]).unwrap().lines().count(), 1);

    assert!(wren(&Call::new("DEL", "ctr-static-a", Some(&pod_a)), &asking).ok);
    node.assert_empty();
}

/// One-address blocks: each pod's block is claimed by the ADD, and the agent blackholes it at
/// once, on the pod's own destination. Every ADD succeeds, its pod is reached through its
/// veth, and a DEL leaves no route to the freed address.
#[test]
fn pods_in_one_address_blocks_get_their_route_over_the_blocks_blackhole() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-bs32", &[("v4", "10.71.0.0/24", 32)]);
    let config = node.config("1.0.0", json!({}));
    let pods: Vec<_> = (0..4).map(|i| node.pod(&format!("cni-bs32-{i}"))).collect();
    let mut addresses = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let added = wren(
            &Call::new("ADD", &format!("ctr-bs32-{i}"), Some(pod)),
            &config,
        );
        assert!(added.ok, "ADD {i}: {added:?}");
        let host = added.json["interfaces"][0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        let ip = address(&added.json, false);
        // The agent's pass has seen the block by now: the pod's route is the one left.
        let routed = format!("{ip} dev {host} ");
        wait_until(PATIENCE, STEP, || {
            node.wren_routes().lines().any(|l| l.starts_with(&routed))
        });
        let routes = node.wren_routes();
        assert!(
            routes.lines().any(|l| l.starts_with(&routed)),
            "no route to {ip} through {host}:\n{routes}"
        );
        assert!(reachable(&pods[0], &ip), "{ip} not reachable");
        addresses.push(ip);
    }
    let deleted = wren(&Call::new("DEL", "ctr-bs32-3", Some(&pods[3])), &config);
    assert!(deleted.ok, "{deleted:?}");
    // The DEL takes the pod's route; its emptied block goes back to the pool, blackhole and all.
    let freed = format!("{} ", addresses[3]);
    wait_until(PATIENCE, STEP, || !node.wren_routes().contains(&freed));
    assert!(
        !node.wren_routes().contains(&freed),
        "a route to the freed address is left:\n{}",
        node.wren_routes()
    );
    assert!(
        reachable(&pods[0], &addresses[2]),
        "the other pods lost their routes"
    );
}
