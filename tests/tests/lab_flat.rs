//! End to end on one lab: three nodes on one L2 segment with BIG TCP links, no encapsulation,
//! BGP full mesh.
//! One lab serves every phase, in order: full matrix (through the fast path), node join, agent
//! restart under traffic, pod churn with a leak check, node leave. After each phase every
//! node's fast path covers exactly its pods.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wren_tests::lab::{self, Lab, LabSpec};
use wren_tests::offload::{self, BIG_TCP};
use wren_tests::prereq;

/// How long routes may take to appear or go everywhere.
const CONVERGENCE: Duration = Duration::from_secs(20);

fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + CONVERGENCE;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn full_matrix(lab: &Lab, phase: &str) {
    lab.wait_full_matrix(CONVERGENCE, "n1")
        .unwrap_or_else(|e| panic!("{phase}: {e}"));
}

/// Every node's fast path is on and attached to exactly that node's pods and its uplink
/// (on a kernel without tcx: reported unavailable, with no pod attached).
fn fast_path_covers_pods(lab: &Lab, phase: &str) {
    lab.wait_fast_paths(CONVERGENCE, "eth0")
        .unwrap_or_else(|e| panic!("{phase}: {e}"));
}

/// The /32 routes toward local pods on `node`, from its kernel.
fn pod_routes(lab: &Lab, node: &str) -> BTreeSet<String> {
    lab.routes(node)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" dev wren"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|dst| dst.trim_end_matches("/32").to_owned())
        .collect()
}

/// Remote blocks `node` routes via another node, with the next hop.
fn bgp_routes(lab: &Lab, node: &str) -> Vec<String> {
    lab.routes(node)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("proto bgp"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn three_nodes_one_segment() {
    if !lab::require_lab(false) {
        return;
    }
    // The fabric carries BIG TCP packets; with nothing encapsulated, pods take them on too.
    let mut spec = LabSpec::new(&lab::test_lab_name('f'), 3);
    spec.fabric_offload = Some(BIG_TCP);
    let mut lab = Lab::up(spec).expect("lab up");

    // Phase 1: every pod reaches every pod, and once the fast path has taken up the pods,
    // their traffic goes through it on both nodes.
    full_matrix(&lab, "3 nodes");
    for pod in &lab.state().pods {
        let sizes = offload::sizes(&pod.ns, "eth0").unwrap();
        assert_eq!(sizes, offload::Sizes::all(BIG_TCP), "pod {}", pod.name);
    }
    fast_path_covers_pods(&lab, "3 nodes");
    if !prereq::kernel_has_tcx() {
        prereq::kernel_limitation(
            "no tcx (kernel 6.6 or later): pods are routed without the fast path",
        );
    }
    let before: Vec<u64> = ["n1", "n2"]
        .iter()
        .map(|n| lab.fast_path(n).unwrap().forwarded)
        .collect();
    full_matrix(&lab, "3 nodes, fast path attached");
    for (node, before) in ["n1", "n2"].iter().zip(before) {
        let after = lab.fast_path(node).unwrap().forwarded;
        assert!(
            after > before || !prereq::kernel_has_tcx(),
            "{node}'s fast path forwarded nothing of the ping matrix ({before} → {after})"
        );
    }

    // Phase 2: a node joins; it gets routes to all and all reach its pods.
    let joined = lab.add_node().expect("add node");
    lab.add_pod(&joined).expect("pod on the new node");
    lab.add_pod(&joined).expect("second pod on the new node");
    full_matrix(&lab, "after join");
    let joined_ip = lab.node(&joined).unwrap().ip().to_owned();
    for node in ["n1", "n2", "n3"] {
        eventually(&format!("{node} routes via {joined}"), || {
            bgp_routes(&lab, node)
                .iter()
                .any(|r| r.contains(&format!("via {joined_ip} ")))
                .then_some(())
                .ok_or_else(|| format!("{:?}", bgp_routes(&lab, node)))
        });
    }

    // Phase 3: kill n2's agent with SIGKILL and restart it while n1's pod pings n2's pod;
    // not one echo may be lost.
    let src = lab
        .state()
        .pods
        .iter()
        .find(|p| p.node == "n1")
        .unwrap()
        .clone();
    let dst = lab
        .state()
        .pods
        .iter()
        .find(|p| p.node == "n2")
        .unwrap()
        .clone();
    let routes_before = bgp_routes(&lab, "n1");
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &src.ns, "ping", "-n", "-q", "-i", "0.05", "-w", "12",
        ])
        .arg(dst.ip.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ping");
    std::thread::sleep(Duration::from_secs(1));
    lab.kill_agent("n2").unwrap();
    let n2_routes_while_down = lab.routes("n2").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        bgp_routes(&lab, "n1"),
        routes_before,
        "n1 changed its routes while n2's agent was down (graceful restart should keep them)"
    );
    lab.start_agent("n2").unwrap();
    let out = pinger.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(" 0% packet loss"),
        "pings were lost across the agent restart:\n{summary}\nn2's routes while its agent was down:\n{n2_routes_while_down}"
    );
    assert!(
        n2_routes_while_down.contains("blackhole") && n2_routes_while_down.contains("proto bgp"),
        "n2's kernel lost its routes while the agent was down:\n{n2_routes_while_down}"
    );
    full_matrix(&lab, "after agent restart");
    // The killed agent's programs went with it (the pings above crossed n2 through the host
    // stack meanwhile); the restarted agent attaches again.
    fast_path_covers_pods(&lab, "after agent restart");

    // Phase 4: pod churn: 50 pods created and deleted per node; afterwards no leaks and every
    // node's pod routes match its pods.
    std::thread::scope(|scope| {
        let lab_ref = &lab;
        let nodes: Vec<_> = lab_ref
            .state()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        for node in nodes {
            scope.spawn(move || churn(lab_ref, &node, 50));
        }
    });
    let check = lab.wren_cli(&["ipam", "check", "--grace", "0s"]).unwrap();
    assert!(
        check.contains("no leaks found"),
        "leak check after churn:\n{check}"
    );
    for node in lab.state().nodes.clone() {
        let expected: BTreeSet<String> = lab
            .state()
            .pods
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| p.ip.to_string())
            .collect();
        eventually(
            &format!("{}'s pod routes match its pods", node.name),
            || {
                let actual = pod_routes(&lab, &node.name);
                (actual == expected)
                    .then_some(())
                    .ok_or_else(|| format!("kernel {actual:?}, pods {expected:?}"))
            },
        );
    }

    fast_path_covers_pods(&lab, "after churn");

    // Phase 5: the joined node leaves; its routes disappear everywhere.
    lab.remove_node(&joined).unwrap();
    for node in ["n1", "n2", "n3"] {
        eventually(&format!("{node} forgets {joined}"), || {
            let routes = bgp_routes(&lab, node);
            (!routes
                .iter()
                .any(|r| r.contains(&format!("via {joined_ip} "))))
            .then_some(())
            .ok_or_else(|| format!("{routes:?}"))
        });
    }
    full_matrix(&lab, "after leave");
    lab.down().unwrap();
}

/// Creates and deletes `count` pods on `node` through the CNI plugin, one after another,
/// with the same calls `Lab::add_pod`/`delete_pod` make (but without touching the lab's
/// recorded state, which other threads read).
fn churn(lab: &Lab, node: &str, count: usize) {
    let n = lab.node(node).unwrap().clone();
    for i in 0..count {
        let ns = lab::ns_name(&lab.state().spec.name, &format!("{node}-c{i}"));
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        let id = format!("churn-{node}-{i}");
        let added = lab.cni(&n, "ADD", &id, &ns);
        let deleted = lab.cni(&n, "DEL", &id, &ns);
        Command::new("ip")
            .args(["netns", "delete", &ns])
            .status()
            .unwrap();
        added.unwrap_or_else(|e| panic!("churn ADD {id}: {e}"));
        deleted.unwrap_or_else(|e| panic!("churn DEL {id}: {e}"));
    }
}
