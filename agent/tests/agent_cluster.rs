//! `wren agent` as a cluster: one network namespace per node on a shared bridge, a real etcd
//! on that bridge, the built `wren` binary running in each node's namespace, and the real
//! kernel routing tables of those namespaces. Blocks are claimed through IPAM on the same
//! etcd, as a pod ADD does.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use wren_tests::netns::NetNs;
use wren_tests::prereq;

mod agent_rig;
mod cni_support;

use agent_rig::*;
use cni_support::{Call, address, plugin_binary, reachable};
use serde_json::Value;

#[test]
fn two_agents_install_each_others_blocks_and_drop_a_removed_node() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("ag-two", 2);
    c.start_all();
    c.wait_mesh();
    let b1 = c.claim("node1", "k8s.pod-a");
    let took = wait_for("node2 to route node1's block", || {
        c.node(1)
            .has_route("bgp", &format!("{b1} via {} ", c.node(0).ip))
    });
    eprintln!("block {b1} of node1 reached node2's kernel in {took:?}");
    let b2 = c.claim("node2", "k8s.pod-b");
    wait_for("node1 to route node2's block", || {
        c.node(0)
            .has_route("bgp", &format!("{b2} via {} ", c.node(1).ip))
    });
    // Each node blackholes its own block, with wren's protocol number.
    assert!(
        c.node(0).has_route("201", &format!("blackhole {b1}")),
        "{}",
        c.node(0).routes("201")
    );
    assert!(
        c.node(1).has_route("201", &format!("blackhole {b2}")),
        "{}",
        c.node(1).routes("201")
    );

    // A live node cannot be removed: its agent would keep announcing it.
    let refused = c.cli(&["node", "rm", "node2"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("live") && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
    // Remove node2: its pod goes, its agent stops, the admin removes it.
    c.ipam(|ipam| async move {
        ipam.release_handle("k8s.pod-b").await.unwrap();
    });
    if let Some(mut agent) = c.nodes[1].agent.take() {
        agent.stop().unwrap();
    }
    let out = c.cli_ok(&["node", "rm", "node2"]);
    assert!(out.contains("node node2 removed"), "{out}");
    assert!(out.contains(&format!("block {b2} freed")), "{out}");
    wait_for("node1 to drop node2's block", || {
        !c.node(0).has_route("bgp", &b2.to_string())
    });
    let list = c.cli_ok(&["node", "list"]);
    assert!(list.contains("node1") && !list.contains("node2"), "{list}");
}

#[test]
fn three_agents_mesh_and_every_block_reaches_every_node() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("ag-three", 3);
    c.start_all();
    c.wait_mesh();
    let blocks: Vec<IpNet> = (0..3)
        .map(|i| c.claim(&c.node(i).name, &format!("k8s.pod{i}")))
        .collect();
    for (i, block) in blocks.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            wait_for(&format!("{block} on node{}", j + 1), || {
                c.node(j)
                    .has_route("bgp", &format!("{block} via {} ", c.node(i).ip))
            });
        }
    }
    // `wren node list` shows every node live with its block.
    let list = c.cli_ok(&["node", "list"]);
    for (i, block) in blocks.iter().enumerate() {
        let line = list
            .lines()
            .find(|l| l.starts_with(&c.node(i).name))
            .unwrap();
        assert!(
            line.contains("yes") && line.contains(&block.to_string()),
            "{list}"
        );
    }
    // The same in JSON, for programs.
    let listed: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["node", "list", "-o", "json"])).unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let node = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == c.node(i).name.as_str())
            .unwrap();
        assert_eq!(node["live"], true, "{listed}");
        assert_eq!(node["blocks"], serde_json::json!([block.to_string()]));
    }
    // `wren status` shows the node, its block and two Established mesh peers.
    let status = c.node(0).status();
    assert!(
        status.contains(&format!("Blocks: {}", blocks[0])),
        "{status}"
    );
    assert_eq!(status.matches("node-mesh").count(), 2, "{status}");
    let document = c.node(0).status_json();
    assert_eq!(document["node"], c.node(0).name.as_str());
    assert_eq!(
        document["blocks"],
        serde_json::json!([blocks[0].to_string()])
    );
    let peers = c.node(0).peers();
    assert_eq!(peers.len(), 2, "{document}");
    assert!(
        peers
            .iter()
            .all(|(_, kind, state)| kind == "node-mesh" && state == "Established"),
        "{document}"
    );
}

#[test]
fn drift_is_repaired_within_one_reconcile_interval() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("ag-drift", 2);
    c.start_all();
    c.wait_mesh();
    let b1 = c.claim("node1", "k8s.pod-a");
    let b2 = c.claim("node2", "k8s.pod-b");
    let n1 = c.node(0);
    wait_for("node1 routes", || n1.has_route("bgp", &b2.to_string()));
    // Someone deletes a wren route, leaves a stale one of ours, and adds their own.
    n1.ns.ip(&["route", "del", &b2.to_string()]).unwrap();
    n1.ns
        .ip(&["route", "del", "blackhole", &b1.to_string()])
        .unwrap();
    n1.ns
        .ip(&["route", "add", "blackhole", "10.99.0.0/24", "proto", "201"])
        .unwrap();
    n1.ns
        .ip(&[
            "route",
            "add",
            "10.98.0.0/24",
            "via",
            FABRIC_IP,
            "proto",
            "static",
        ])
        .unwrap();
    // One reconcile interval is 1 s; allow for a busy machine.
    std::thread::sleep(Duration::from_millis(1500));
    let took = wait_for("drift repaired", || {
        n1.has_route("bgp", &format!("{b2} via {}", c.node(1).ip))
            && n1.has_route("201", &format!("blackhole {b1}"))
            && !n1.has_route("201", "10.99.0.0/24")
    });
    assert!(
        took < Duration::from_secs(2),
        "repair took {took:?} beyond the interval"
    );
    assert!(
        n1.has_route("static", "10.98.0.0/24 via 10.77.0.254"),
        "someone else's route was touched"
    );
}

#[test]
fn a_killed_agent_leaves_the_kernel_alone_and_converges_on_restart() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("ag-kill", 2);
    c.start_all();
    c.wait_mesh();
    let b1 = c.claim("node1", "k8s.pod-a");
    let b2 = c.claim("node2", "k8s.pod-b");
    wait_for("routes in", || {
        c.node(0).has_route("bgp", &b2.to_string()) && c.node(1).has_route("bgp", &b1.to_string())
    });
    let before: Vec<String> = (0..2)
        .map(|i| c.node(i).ns.ip(&["route"]).unwrap())
        .collect();

    // Watch both kernels continuously from SIGKILL to convergence after the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = (0..2)
        .map(|i| {
            let ns = c.node(i).ns.name().to_owned();
            let want = [b1.to_string(), b2.to_string()];
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut samples = 0;
                let mut missing = BTreeMap::new();
                while !stop.load(Ordering::SeqCst) {
                    let out = std::process::Command::new("ip")
                        .args(["-n", &ns, "route"])
                        .output()
                        .unwrap();
                    let table = String::from_utf8_lossy(&out.stdout).into_owned();
                    for w in &want {
                        if !table.contains(w.as_str()) {
                            *missing.entry(w.clone()).or_insert(0) += 1;
                        }
                    }
                    samples += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                (samples, missing)
            })
        })
        .collect();

    c.nodes[0]
        .agent
        .as_mut()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.start_agent(0);
    c.wait_mesh();
    // Another reconcile pass or two after the restart.
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::SeqCst);
    for (i, w) in watchers.into_iter().enumerate() {
        let (samples, missing) = w.join().unwrap();
        assert!(samples > 50, "too few samples ({samples}) to say anything");
        assert!(
            missing.is_empty(),
            "node{} lost routes during the restart: {missing:?}",
            i + 1
        );
    }
    let after: Vec<String> = (0..2)
        .map(|i| c.node(i).ns.ip(&["route"]).unwrap())
        .collect();
    assert_eq!(before, after, "state after restart differs");
    assert!(
        c.node(0).log().contains("adopting them"),
        "{}",
        c.node(0).log()
    );
}

#[test]
fn a_bird_tor_learns_every_block_and_its_route_reaches_the_nodes() {
    use wren_tests::daemons::bird::Bird;
    use wren_tests::daemons::{Announce, BgpDaemon, Config, Family, Peer};
    if !ready() || !prereq::require_command("bird") {
        return;
    }
    const TOR_AS: u32 = 65000;
    // Sessions to the ToR are signed with TCP MD5 (RFC 2385).
    const TOR_PASSWORD: &str = "wren-tor-secret";
    const TOR_IP: &str = "10.77.0.253";
    let mut c = Cluster::new("ag-tor", 2);
    let tor = c.attach_router("ag-tor-tor", TOR_IP);
    let tor_ip: IpAddr = TOR_IP.parse().unwrap();
    let mut config = Config::new(TOR_IP.parse::<Ipv4Addr>().unwrap(), TOR_AS);
    for node in &c.nodes {
        config = config.peer(
            Peer::new(node.ip.parse().unwrap(), 64512, tor_ip)
                .hold_time(9)
                .password(TOR_PASSWORD),
        );
    }
    let mut bird = Bird::start(&tor, config).unwrap();
    bird.announce(&Announce::new("192.0.2.0/24".parse().unwrap()))
        .unwrap();
    let add_tor = |c: &Cluster, extra: &[&str]| {
        let args = [&["--password", TOR_PASSWORD][..], extra].concat();
        c.add_peer("tor", TOR_IP, TOR_AS, &args)
    };
    add_tor(&c, &[]);
    let peers = c.cli_ok(&["peer", "list"]);
    assert!(
        !peers.contains(TOR_PASSWORD),
        "the password is not shown: {peers}"
    );
    let listed = c.cli_ok(&["peer", "list", "-o", "json"]);
    assert!(!listed.contains(TOR_PASSWORD), "nor in JSON: {listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["name"], "tor", "{listed}");
    assert_eq!(listed[0]["password"], true, "{listed}");
    assert_eq!(listed[0]["node"], serde_json::Value::Null, "{listed}");
    assert!(
        peers.contains("tor")
            && peers.contains("65000")
            && peers.contains("(all)")
            && peers.contains("yes"),
        "{peers}"
    );
    c.start_all();
    let blocks: Vec<IpNet> = (0..2)
        .map(|i| c.claim(&c.node(i).name, &format!("k8s.pod{i}")))
        .collect();
    // The ToR holds every node's block, next hop the node that owns it.
    wait_for("the ToR to learn every block", || {
        let routes = bird.routes(Family::Ipv4).unwrap_or_default();
        blocks.iter().enumerate().all(|(i, b)| {
            routes
                .iter()
                .any(|r| r.prefix == Some(*b) && r.next_hop == Some(c.node(i).ip.parse().unwrap()))
        })
    });
    // Nothing else: no node passes on what it learned.
    let routes = bird.routes(Family::Ipv4).unwrap();
    let mut from_nodes: Vec<IpNet> = routes
        .iter()
        .filter(|r| r.as_path == [64512])
        .filter_map(|r| r.prefix)
        .collect();
    from_nodes.sort();
    let mut expected = blocks.clone();
    expected.sort();
    assert_eq!(from_nodes, expected, "{routes:?}");
    // The ToR's route is in every node's kernel, via the ToR.
    for node in &c.nodes {
        wait_for(&format!("{} to route via the ToR", node.name), || {
            node.has_route("bgp", &format!("192.0.2.0/24 via {TOR_IP}"))
        });
        let status = node.status();
        assert!(
            status.lines().any(|l| l.starts_with(TOR_IP)
                && l.contains("global")
                && l.contains("Established")),
            "{status}"
        );
    }
    // With keepOriginalNextHop the ToR also hears each block from the node that does not
    // own it, still with the owner as next hop: no node becomes a transit path.
    add_tor(&c, &["--keep-original-next-hop"]);
    // `show route <block>` lists every path BIRD holds for it (the parsed table keeps only
    // the best of each prefix).
    let paths = |block: &IpNet| -> Vec<String> {
        let text = bird
            .command(&format!("show route {block} table master4"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("via "))
            .map(|via| via.split_whitespace().next().unwrap_or_default().to_owned())
            .collect()
    };
    wait_for("the ToR to hear every block from both nodes", || {
        blocks.iter().all(|b| paths(b).len() == 2)
    });
    for (i, block) in blocks.iter().enumerate() {
        let owner = &c.node(i).ip;
        assert_eq!(paths(block), vec![owner.clone(), owner.clone()], "{block}");
    }
    // Removing the peer ends the sessions, and the ToR's route goes with them.
    let out = c.cli_ok(&["peer", "rm", "tor"]);
    assert!(out.contains("peer tor removed"), "{out}");
    for node in &c.nodes {
        wait_for(&format!("{} to drop the ToR", node.name), || {
            !node.status().contains(TOR_IP) && !node.has_route("bgp", "192.0.2.0/24")
        });
    }
    let missing = c.cli(&["peer", "rm", "tor"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no peer named tor"));
}

/// Runs the real CNI plugin against `node`'s agent for the pod namespace `pod`.
fn cni(node: &Node, command: &str, container: &str, pod: &NetNs) -> Value {
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s",
        "type": "wren",
        "agentSocket": node.socket,
    });
    let reply = cni_support::wren(&Call::new(command, container, Some(pod)), &config);
    assert!(
        reply.ok,
        "wren-cni {command} failed: {} {}",
        reply.json, reply.stderr
    );
    reply.json
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_the_agents_routes() {
    if !ready() || !prereq::require_command("ping") {
        return;
    }
    if !prereq::require(
        "the wren-cni binary is built (make build)",
        plugin_binary().is_some(),
    ) {
        return;
    }
    let mut c = Cluster::new("ag-pods", 2);
    c.start_all();
    c.wait_mesh();
    let pod1 = NetNs::new("ag-pods-p1").unwrap();
    let pod2 = NetNs::new("ag-pods-p2").unwrap();
    let ip1 = address(&cni(c.node(0), "ADD", "ctr1", &pod1), false);
    let ip2 = address(&cni(c.node(1), "ADD", "ctr2", &pod2), false);
    // Each pod has its /32 on its node, owned by wren, and survives reconcile passes.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        c.node(0).has_route("201", &format!("{ip1} dev wren")),
        "{}",
        c.node(0).routes("201")
    );
    assert!(
        c.node(1).has_route("201", &format!("{ip2} dev wren")),
        "{}",
        c.node(1).routes("201")
    );
    assert!(reachable(&pod1, &ip2), "pod1 cannot reach pod2 at {ip2}");
    // The latency of the two ADDs is in the histogram.
    let (code, metrics) = http_get(c.node(0), "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics
            .contains("wren_cni_request_duration_seconds_count{command=\"ADD\",result=\"ok\"} 1"),
        "{metrics}"
    );
    // DEL takes the pod route away, and it stays away.
    cni(c.node(0), "DEL", "ctr1", &pod1);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !c.node(0).has_route("201", &format!("{ip1} dev")),
        "{}",
        c.node(0).routes("201")
    );
}

#[test]
fn an_etcd_outage_keeps_the_dataplane_and_the_agents_resume() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("ag-etcd", 2);
    c.start_all();
    c.wait_mesh();
    let b1 = c.claim("node1", "k8s.pod-a");
    wait_for("node2 routes node1's block", || {
        c.node(1).has_route("bgp", &b1.to_string())
    });
    let before: Vec<String> = (0..2)
        .map(|i| c.node(i).ns.ip(&["route"]).unwrap())
        .collect();

    c.etcd.stop().unwrap();
    for node in &c.nodes {
        wait_for(
            &format!("{} to report the datastore down", node.name),
            || node.status_json()["readiness"]["datastore"] == false,
        );
        let (code, body) = http_get(node, "/readyz");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("datastore unreachable"), "{body}");
    }
    // Several reconcile intervals with etcd gone: the kernel is left as it was.
    std::thread::sleep(Duration::from_secs(3));
    let during: Vec<String> = (0..2)
        .map(|i| c.node(i).ns.ip(&["route"]).unwrap())
        .collect();
    assert_eq!(before, during);

    c.etcd.restart().unwrap();
    for node in &c.nodes {
        wait_for(&format!("{} ready again", node.name), || node.ready());
    }
    let b2 = c.claim("node2", "k8s.pod-b");
    wait_for("node1 routes node2's new block", || {
        c.node(0).has_route("bgp", &b2.to_string())
    });
}

#[test]
fn with_the_mesh_off_nodes_learn_each_other_through_a_route_reflector() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("ag-rr", 3);
    let out = c.cli_ok(&["bgp", "config", "--mesh", "off"]);
    assert!(out.contains("Node-to-node mesh:  off"), "{out}");
    assert!(c.cli_ok(&["bgp", "config"]).contains("off"));
    c.start_agent_with(2, &["--route-reflector-cluster-id", "1.0.0.1"]);
    c.start_agent(0);
    c.start_agent(1);
    let b1 = c.claim("node1", "k8s.pod-a");
    let b2 = c.claim("node2", "k8s.pod-b");
    // Reflected routes keep the originating node as next hop.
    wait_for("node1 learns node2's block", || {
        c.node(0)
            .has_route("bgp", &format!("{b2} via {} ", c.node(1).ip))
    });
    wait_for("node2 learns node1's block", || {
        c.node(1)
            .has_route("bgp", &format!("{b1} via {} ", c.node(0).ip))
    });
    let peers = c.node(0).peers();
    assert_eq!(
        peers.len(),
        1,
        "a client peers with the reflector only: {peers:?}"
    );
    assert_eq!(peers[0].1, "route-reflector", "{peers:?}");
    wait_for("the reflector's two clients in its status", || {
        let rr = c.node(2).peers();
        rr.len() == 2 && rr.iter().all(|(_, kind, _)| kind == "rr-client")
    });
}
