//! End to end: four nodes on two subnets joined by a router that knows no pod routes, pool
//! with VXLAN in cross-subnet mode. Every pod reaches every pod; same-subnet routes are plain,
//! cross-subnet routes go through `wren.vxlan`, and the fast path carries tunnelled pod
//! traffic at both ends: the sender's program wraps it in VXLAN itself, the receiver's
//! kernel device unwraps it.

use std::time::Duration;

use wren_tests::lab::{self, Encap, Lab, LabSpec};
use wren_tests::offload;

#[test]
fn four_nodes_two_subnets_vxlan_cross_subnet() {
    if !lab::require_lab(false) {
        return;
    }
    let mut spec = LabSpec::new(&lab::test_lab_name('v'), 4);
    spec.encap = Encap::Vxlan;
    spec.subnets = 2;
    // BIG TCP links: pods must still keep the standard 64 KiB, since a larger packet entering
    // the tunnel would be cut up in software.
    spec.fabric_offload = Some(offload::BIG_TCP);
    let lab = Lab::up(spec).expect("lab up");
    lab.wait_full_matrix(Duration::from_secs(25), "n1")
        .unwrap_or_else(|e| panic!("{e}"));
    for pod in &lab.state().pods {
        let sizes = offload::sizes(&pod.ns, "eth0").unwrap();
        assert_eq!(
            sizes,
            offload::Sizes::all(offload::STANDARD),
            "pod {}",
            pod.name
        );
    }
    // n1 (subnet 1) reaches n3 (subnet 1) directly and n2, n4 (subnet 2) through the tunnel.
    let routes = lab.routes("n1").unwrap();
    let n3 = lab.node("n3").unwrap().ip().to_owned();
    assert!(
        routes
            .lines()
            .any(|l| l.contains(&format!("via {n3} ")) && !l.contains("wren.vxlan")),
        "no plain route to same-subnet n3:\n{routes}"
    );
    assert!(
        routes
            .lines()
            .filter(|l| l.contains("dev wren.vxlan"))
            .count()
            >= 2,
        "no tunnel routes to the other subnet:\n{routes}"
    );

    // Through the tunnel, both ends forward on the fast path: the sender from its pod into
    // `wren.vxlan`, the receiver from `wren.vxlan` into its pod.
    let pod_on = |node: &str| {
        lab.state()
            .pods
            .iter()
            .find(|p| p.node == node)
            .unwrap()
            .clone()
    };
    let (from, to) = (pod_on("n1"), pod_on("n2"));
    if !wren_tests::prereq::kernel_has_tcx() {
        wren_tests::prereq::kernel_limitation(
            "no tcx (kernel 6.6 or later): the fast path through the tunnel cannot be tested here",
        );
        lab.down().unwrap();
        return;
    }
    lab.wait_fast_paths(Duration::from_secs(20), "wren.vxlan")
        .unwrap_or_else(|e| panic!("{e}"));
    let before: Vec<_> = ["n1", "n2"]
        .iter()
        .map(|n| lab.fast_path(n).unwrap())
        .collect();
    assert!(
        lab::ping(&from.ns, &to.ip.to_string(), 3),
        "n1's pod → n2's pod"
    );
    for (node, before) in ["n1", "n2"].iter().zip(before) {
        let after = lab.fast_path(node).unwrap();
        assert!(
            after.forwarded > before.forwarded,
            "{node}'s fast path forwarded no tunnelled ping ({} → {})",
            before.forwarded,
            after.forwarded
        );
        // Requests one way, replies the other: each sender's program wrapped its packets.
        assert!(
            after.encapsulated > before.encapsulated,
            "{node}'s fast path wrapped no ping in VXLAN ({} → {})",
            before.encapsulated,
            after.encapsulated
        );
    }
    lab.down().unwrap();
}
