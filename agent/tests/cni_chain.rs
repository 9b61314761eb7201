//! wren at the head of a chain with the reference `portmap` and `bandwidth` plugins (Debian's
//! containernetworking-plugins, run from /usr/lib/cni inside the node as a runtime would):
//! each accepts wren's result as `prevResult`, a port on the node reaches the pod over IPv4 and
//! IPv6, wren's CHECK passes with the chain's result, and DEL in reverse order leaves nothing.

#[path = "cni_support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Call, NETWORK, NODE_IP, Node, Reply, address, invoke, wren};
use wren_tests::prereq;
use wren_tests::process::wait_until;

const PORTMAP: &str = "/usr/lib/cni/portmap";
const BANDWIDTH: &str = "/usr/lib/cni/bandwidth";
const HOST_PORT: u16 = 18080;
const POD_PORT: u16 = 8080;

/// The plugin configurations after wren, as a conflist lists them.
fn portmap_config() -> Value {
    json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "portmap",
        "capabilities": {"portMappings": true}, "snat": true,
        "runtimeConfig": {"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}
        ]}
    })
}

fn bandwidth_config() -> Value {
    json!({
        "cniVersion": "1.0.0", "name": NETWORK, "type": "bandwidth",
        "capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {
            "ingressRate": 100_000_000, "ingressBurst": 1_000_000,
            "egressRate": 100_000_000, "egressBurst": 1_000_000
        }}
    })
}

fn with_prev(mut config: Value, prev: &Value) -> Value {
    config["prevResult"] = prev.clone();
    config
}

/// Fetches `/` from `host:port` inside `ns`; true on an HTTP 200.
fn http_ok(ns: &wren_tests::netns::NetNs, host: &str, port: u16) -> bool {
    let script = format!(
        "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://{host}:{port}/', timeout=2).status == 200 else 1)"
    );
    ns.exec("python3", &["-c", &script]).is_ok()
}

fn ok(reply: Reply, what: &str) -> Value {
    assert!(reply.ok, "{what} failed: {} {}", reply.json, reply.stderr);
    reply.json
}

#[test]
fn portmap_and_bandwidth_chain_after_wren_and_a_node_port_reaches_the_pod() {
    if !support::ready()
        || !prereq::require_command(PORTMAP)
        || !prereq::require_command(BANDWIDTH)
        || !prereq::require_command("python3")
    {
        return;
    }
    // Dual-stack: portmap sets up (and CHECKs) its IPv4 and IPv6 rules from wren's result.
    let node = Node::start(
        "cni-chain",
        &[("v4", "10.90.0.0/24", 26), ("v6", "fd00:90::/112", 122)],
    );
    let pod = node.pod("cni-chain-pod");
    let call = Call::new("ADD", "ctr-chain", Some(&pod));
    let wren_config = node.config(
        "1.0.0",
        json!({"ipam": {"assign_ipv4": true, "assign_ipv6": true}}),
    );

    // ADD along the chain, each plugin getting the previous result.
    let after_wren = ok(wren(&call, &wren_config), "wren ADD");
    let after_portmap = ok(
        invoke(
            Path::new(PORTMAP),
            Some(&node.ns),
            &call,
            &with_prev(portmap_config(), &after_wren),
        ),
        "portmap ADD",
    );
    let after_bandwidth = ok(
        invoke(
            Path::new(BANDWIDTH),
            Some(&node.ns),
            &call,
            &with_prev(bandwidth_config(), &after_portmap),
        ),
        "bandwidth ADD",
    );
    assert_eq!(
        address(&after_bandwidth, false),
        address(&after_wren, false)
    );
    // Later plugins append (bandwidth adds its ifb device) but keep wren's entries as they are.
    let wren_interfaces = after_wren["interfaces"].as_array().unwrap();
    let final_interfaces = after_bandwidth["interfaces"].as_array().unwrap();
    assert_eq!(
        &final_interfaces[..wren_interfaces.len()],
        &wren_interfaces[..]
    );

    // bandwidth found the host veth through wren's result and shaped it.
    let host_veth = after_wren["interfaces"][0]["name"].as_str().unwrap();
    let qdiscs = node
        .ns
        .exec("tc", &["qdisc", "show", "dev", host_veth])
        .unwrap();
    assert!(
        qdiscs.contains("tbf"),
        "no shaping on {host_veth}:\n{qdiscs}"
    );

    // A client outside the node reaches the pod through the node's port.
    let _server = pod
        .spawn(
            "http server",
            "python3",
            &["-m", "http.server", &POD_PORT.to_string(), "--bind", "::"],
        )
        .unwrap();
    let pod_ip = address(&after_wren, false);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            http_ok(&pod, &pod_ip, POD_PORT)
        }),
        "the pod's server did not come up"
    );
    assert!(
        http_ok(&node.uplink, NODE_IP, HOST_PORT),
        "{NODE_IP}:{HOST_PORT} does not reach the pod"
    );
    assert!(
        http_ok(&node.uplink, "[2001:db8::1]", HOST_PORT),
        "[2001:db8::1]:{HOST_PORT} does not reach the pod"
    );

    // CHECK of wren with the chain's final result as prevResult. (portmap's own CHECK is not
    // run: the Debian build, 1.1.1, looks for its IPv4 rules in the IPv6 table and fails on
    // any dual-stack pod, whoever made it.)
    let check = Call::new("CHECK", "ctr-chain", Some(&pod));
    ok(
        wren(&check, &with_prev(wren_config.clone(), &after_bandwidth)),
        "wren CHECK",
    );

    // DEL in reverse order, each with the final result.
    let del = Call::new("DEL", "ctr-chain", Some(&pod));
    ok(
        invoke(
            Path::new(BANDWIDTH),
            Some(&node.ns),
            &del,
            &with_prev(bandwidth_config(), &after_bandwidth),
        ),
        "bandwidth DEL",
    );
    ok(
        invoke(
            Path::new(PORTMAP),
            Some(&node.ns),
            &del,
            &with_prev(portmap_config(), &after_bandwidth),
        ),
        "portmap DEL",
    );
    ok(
        wren(&del, &with_prev(wren_config, &after_bandwidth)),
        "wren DEL",
    );
    assert!(
        !http_ok(&node.uplink, NODE_IP, HOST_PORT),
        "the port still answers"
    );
    let nat = node.ns.exec("iptables", &["-t", "nat", "-S"]).unwrap();
    assert!(!nat.contains("CNI-DN-"), "portmap rules left:\n{nat}");
    node.assert_empty();
}
