//! End to end: mesh off, every node peers only with a BIRD 2 top-of-rack route reflector, and
//! every pod still reaches every pod.

use std::process::Command;
use std::time::Duration;

use wren_tests::lab::{self, Lab, LabSpec};

#[test]
fn tor_route_reflector_carries_every_route() {
    if !lab::require_lab(true) {
        return;
    }
    let mut spec = LabSpec::new(&lab::test_lab_name('t'), 3);
    spec.tor = true;
    let lab = Lab::up(spec).expect("lab up");
    lab.wait_full_matrix(Duration::from_secs(25), "n1")
        .unwrap_or_else(|e| panic!("through the reflector: {e}"));
    // Each node has exactly one BGP session, to the ToR: no node-to-node sessions.
    let bird = Command::new("birdc")
        .arg("-s")
        .arg(lab.state().dir.join("bird.ctl"))
        .arg("show protocols")
        .output()
        .unwrap();
    let protocols = String::from_utf8_lossy(&bird.stdout);
    let established = protocols
        .lines()
        .filter(|l| l.contains("Established"))
        .count();
    assert_eq!(
        established, 3,
        "BIRD should have one session per node:\n{protocols}"
    );
    for node in ["n1", "n2", "n3"] {
        let sessions = lab
            .exec(
                node,
                "ss",
                &[
                    "-Htn",
                    "state",
                    "established",
                    "( dport = :179 or sport = :179 )",
                ],
            )
            .unwrap();
        let tor = lab.state().tor_ip.unwrap().to_string();
        assert!(
            sessions.lines().all(|l| l.contains(&tor)),
            "{node} has BGP sessions to something other than the ToR:\n{sessions}"
        );
    }
    lab.down().unwrap();
}
