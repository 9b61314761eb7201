//! End to end: four nodes on two subnets joined by a router that knows no pod routes, pool
//! with VXLAN in cross-subnet mode. Every pod reaches every pod; same-subnet routes are plain,
//! cross-subnet routes go through `wren.vxlan`.

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
    lab.down().unwrap();
}
