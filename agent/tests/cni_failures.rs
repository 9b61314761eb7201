//! Failure injection through the real plugin and agent: a namespace that does not exist, an
//! interface name that is taken (in the pod and on the node), a pod whose default route
//! another network holds, an exhausted pool, the agent down, etcd down. Each returns the CNI
//! error the runtime acts on and leaves no interface, route, allocation or record behind.

#[path = "cni_support/mod.rs"]
mod support;

use serde_json::json;
use support::{Call, Node, wren};
use wren_agent::dataplane::host_ifname;

#[test]
fn a_namespace_that_does_not_exist_is_an_unknown_container_and_leaks_nothing() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-nons", &[("v4", "10.80.0.0/24", 26)]);
    let mut call = Call::new("ADD", "ctr-nons", None);
    call.netns = Some(format!("/run/netns/wren-absent-{}", std::process::id()).into());
    let r = wren(&call, &node.config("1.0.0", json!({})));
    assert!(!r.ok);
    assert_eq!(r.json["code"], 3, "{}", r.json);
    assert!(
        r.json["msg"].as_str().unwrap().contains("wren-absent"),
        "{}",
        r.json
    );
    node.assert_empty();
}

#[test]
fn a_taken_interface_name_fails_and_leaves_the_other_interface_alone() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-taken", &[("v4", "10.81.0.0/24", 26)]);
    let config = node.config("1.0.0", json!({}));

    // In the pod: a bridge already called eth0.
    let pod = node.pod("cni-taken-pod");
    pod.ip(&["link", "add", "eth0", "type", "bridge"]).unwrap();
    let r = wren(&Call::new("ADD", "ctr-pod", Some(&pod)), &config);
    assert!(!r.ok);
    assert_eq!(r.json["code"], 102, "{}", r.json);
    assert!(
        pod.ip(&["-d", "link", "show", "eth0"])
            .unwrap()
            .contains("bridge"),
        "the pod's eth0 was touched"
    );
    node.assert_empty();

    // On the node: a bridge, not wren's, holds the name this attachment's veth would get.
    let pod2 = node.pod("cni-taken-pod2");
    let squatter = host_ifname("ctr-host/eth0");
    node.ns
        .ip(&["link", "add", &squatter, "type", "bridge"])
        .unwrap();
    let r = wren(&Call::new("ADD", "ctr-host", Some(&pod2)), &config);
    assert!(!r.ok);
    assert_eq!(r.json["code"], 102, "{}", r.json);
    assert!(
        node.ns
            .ip(&["-d", "link", "show", &squatter])
            .unwrap()
            .contains("bridge"),
        "the node's {squatter} was touched"
    );
    assert_eq!(
        pod2.ip(&["-o", "link"]).unwrap().lines().count(),
        1,
        "pod end left"
    );
    assert!(node.workload_keys().is_empty());
    assert_eq!(node.allocated(), 0);
    node.ns.ip(&["link", "del", &squatter]).unwrap();
    node.assert_empty();
}

#[test]
fn an_exhausted_pool_fails_the_next_pod_only_and_leaks_nothing() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-full", &[("tiny", "10.82.0.0/29", 29)]);
    let config = node.config("1.0.0", json!({}));
    let pods: Vec<_> = (0..10)
        .map(|i| node.pod(&format!("cni-full-{i}")))
        .collect();
    let mut attached = 0;
    let mut failure = None;
    for (i, pod) in pods.iter().enumerate() {
        let r = wren(&Call::new("ADD", &format!("full-{i}"), Some(pod)), &config);
        if r.ok {
            attached += 1;
        } else {
            failure = Some((i, r));
            break;
        }
    }
    let (failed, r) = failure.expect("a /29 cannot hold ten pods");
    assert_eq!(r.json["code"], 100, "{}", r.json);
    assert!(attached > 0);
    assert_eq!(node.allocated(), attached as u64);
    assert_eq!(node.workload_keys().len(), attached);
    assert_eq!(node.wren_links().len(), attached);
    assert_eq!(pods[failed].ip(&["-o", "link"]).unwrap().lines().count(), 1);

    for (i, pod) in pods.iter().enumerate().take(attached) {
        assert!(wren(&Call::new("DEL", &format!("full-{i}"), Some(pod)), &config).ok);
    }
    node.assert_empty();
}

#[test]
fn agent_down_is_try_again_later_naming_the_socket_and_changes_nothing() {
    if !support::ready() {
        return;
    }
    let mut node = Node::start("cni-down", &[("v4", "10.83.0.0/24", 26)]);
    let pod = node.pod("cni-down-pod");
    let config = node.config("1.0.0", json!({}));
    node.stop_agent();
    let socket = node.socket.display().to_string();
    for command in ["ADD", "DEL"] {
        let r = wren(&Call::new(command, "ctr-down", Some(&pod)), &config);
        assert!(!r.ok);
        assert_eq!(r.json["code"], 11, "{command}: {}", r.json);
        assert!(
            r.json["msg"].as_str().unwrap().contains(&socket),
            "{}",
            r.json
        );
    }
    assert_eq!(pod.ip(&["-o", "link"]).unwrap().lines().count(), 1);
    node.assert_empty();

    // Back up: the runtime's retry succeeds.
    node.start_agent();
    assert!(wren(&Call::new("ADD", "ctr-down", Some(&pod)), &config).ok);
    assert!(wren(&Call::new("DEL", "ctr-down", Some(&pod)), &config).ok);
    node.assert_empty();
}

#[test]
fn etcd_down_is_try_again_later_and_leaves_no_interface() {
    if !support::ready() {
        return;
    }
    let mut node = Node::start("cni-etcd", &[("v4", "10.84.0.0/24", 26)]);
    let pod = node.pod("cni-etcd-pod");
    let config = node.config("1.1.0", json!({}));
    node.etcd.stop().unwrap();
    let r = wren(&Call::new("ADD", "ctr-etcd", Some(&pod)), &config);
    assert!(!r.ok);
    assert_eq!(r.json["code"], 11, "{}", r.json);
    assert!(node.wren_links().is_empty(), "{:?}", node.wren_links());
    assert_eq!(pod.ip(&["-o", "link"]).unwrap().lines().count(), 1);
    let status = wren(&Call::new("STATUS", "", None), &config);
    assert_eq!(status.json["code"], 50, "{}", status.json);

    node.etcd.restart().unwrap();
    let r = wren(&Call::new("ADD", "ctr-etcd", Some(&pod)), &config);
    assert!(r.ok, "{r:?}");
    assert!(wren(&Call::new("DEL", "ctr-etcd", Some(&pod)), &config).ok);
    node.assert_empty();
}

#[test]
fn a_pod_with_a_default_route_already_is_refused_by_name_and_keeps_it() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-second", &[("v4", "10.86.0.0/24", 26)]);
    let config = node.config("1.0.0", json!({}));

    // Another network attached eth0 and gave the pod its default route; wren is asked for a
    // second interface.
    let pod = node.pod("cni-second-pod");
    pod.add_foreign_interface("eth0").unwrap();
    pod.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])
        .unwrap();
    pod.ip(&["route", "add", "default", "via", "192.0.2.1"])
        .unwrap();
    let mut call = Call::new("ADD", "ctr-second", Some(&pod));
    call.ifname = "net1";
    let r = wren(&call, &config);
    assert!(!r.ok);
    assert_eq!(r.json["code"], 7, "{}", r.json);
    let msg = r.json["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("IPv4 default route (default via 192.0.2.1 dev eth0)")
            && msg.contains("first network"),
        "{}",
        r.json
    );
    assert_eq!(
        pod.ip(&["-4", "route", "show", "default"]).unwrap().trim(),
        "default via 192.0.2.1 dev eth0",
        "the pod's default route was touched"
    );
    assert!(
        !pod.ip(&["-o", "link"]).unwrap().contains("net1"),
        "an interface was left in the pod"
    );
    node.assert_empty();

    // Without the other network's route, the same ADD succeeds.
    pod.ip(&["route", "del", "default"]).unwrap();
    let r = wren(&call, &config);
    assert!(r.ok, "{}", r.json);
    assert!(
        pod.ip(&["-4", "route", "show", "default"])
            .unwrap()
            .contains("dev net1"),
        "no default route through net1"
    );
    call.command = "DEL";
    assert!(wren(&call, &config).ok);
    node.assert_empty();
}
