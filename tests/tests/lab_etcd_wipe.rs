//! etcd comes back with its data wiped, under a running cluster.
//!
//! Three nodes, one pod each, every pod pinging the next node's pod five times a second.
//! etcd is stopped, its data directory removed, and started empty. The agents must keep
//! the dataplane exactly as it is (not one ping lost), say why they are not ready, and
//! rebuild the cluster's data from what they hold before any address is handed out again.
//! Afterwards the pool is back, the leak check is clean, and new pods, on the old nodes and
//! on a node that joins after the rebuild, get addresses no live pod holds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wren_tests::lab::{self, Lab, LabSpec, Pingers};

/// How long the rebuild may take: the agents wait a third of the liveness TTL (30 s by
/// default) and a second after they saw the loss, so every live agent is back in etcd.
const REBUILD: Duration = Duration::from_secs(60);

#[test]
fn a_wiped_etcd_is_rebuilt_from_the_agents_and_no_pod_is_cut_off() {
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("etcdctl") {
        return;
    }
    let mut spec = LabSpec::new(&lab::test_lab_name('w'), 3);
    spec.pods_per_node = 1;
    let mut lab = Lab::up(spec).expect("lab up");
    lab.wait_full_matrix(Duration::from_secs(30), "n1")
        .expect("every pod reaches every pod before the wipe");
    let live: BTreeSet<String> = lab.state().pods.iter().map(|p| p.ip.to_string()).collect();
    let pools_before = lab.wren_cli(&["pool", "list"]).unwrap();

    let pingers = Pingers::start(&lab);
    std::thread::sleep(Duration::from_secs(2));
    let wiped = Instant::now();
    lab.wipe_etcd().expect("wipe etcd");

    // Every agent says why it is not ready, and hands out nothing meanwhile.
    let nodes = ["n1", "n2", "n3"];
    let mut said: BTreeSet<&str> = BTreeSet::new();
    let mut refused = None;
    let mut checked = None;
    let mut back = None;
    while wiped.elapsed() < REBUILD {
        let mut all_ready = true;
        for node in nodes {
            let (ready, text) = lab.readiness(node).unwrap_or((false, String::new()));
            all_ready &= ready;
            if text.contains("lost the cluster's data") {
                said.insert(node);
                if refused.is_none() {
                    let n = lab.node(node).unwrap().clone();
                    let out = lab.cni(&n, "ADD", "wipe-probe", &lab.state().pods[0].ns);
                    refused = Some(match out {
                        Ok(result) => format!("handed out: {result}"),
                        Err(e) => e.to_string(),
                    });
                    checked = Some(match lab.wren_cli(&["ipam", "check", "--grace", "0s"]) {
                        Ok(report) => format!("judged: {report}"),
                        Err(e) => e.to_string(),
                    });
                }
            }
        }
        if all_ready && said.len() == nodes.len() {
            back = Some(wiped.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let summaries = pingers.finish();
    let status = lab.node_status("n1").unwrap_or_default();
    eprintln!(
        "etcd wiped: every agent said so ({said:?}); ready again after {back:?}\n{}\n{status}",
        summaries.join("\n")
    );
    assert_eq!(
        said.len(),
        nodes.len(),
        "not every agent said why it was not ready"
    );
    let refused = refused.expect("an ADD was tried while the data was lost");
    assert!(
        refused.contains("lost the cluster's data") && refused.contains("`wren status`"),
        "an ADD during the loss: {refused}"
    );
    let checked = checked.expect("the leak check was run while the data was lost");
    assert!(
        checked.contains("the agents are rebuilding it"),
        "the leak check during the loss: {checked}"
    );
    let back = back.unwrap_or_else(|| panic!("not every agent was ready within {REBUILD:?}"));
    for summary in &summaries {
        assert!(summary.contains(" 0% packet loss"), "pings lost: {summary}");
    }

    // The pool came back with the rest, the leak check is clean, and new pods — on the old
    // nodes and on a node that joined after the rebuild — get addresses no live pod holds.
    let pools_after = lab.wren_cli(&["pool", "list"]).unwrap();
    assert_eq!(pools_after, pools_before);
    let check = lab.wren_cli(&["ipam", "check", "--grace", "0s"]).unwrap();
    assert!(check.contains("no leaks found"), "leak check:\n{check}");
    let joined = lab.add_node().expect("a node joins after the rebuild");
    let mut handed: BTreeSet<String> = live.clone();
    for node in ["n1", "n2", "n3", joined.as_str()] {
        let pod = lab.add_pod(node).expect("ADD after the rebuild");
        let ip = lab
            .state()
            .pods
            .iter()
            .find(|p| p.name == pod)
            .map(|p| p.ip.to_string())
            .unwrap();
        assert!(handed.insert(ip.clone()), "{ip} handed out twice");
    }
    lab.wait_full_matrix(Duration::from_secs(30), "n1")
        .expect("every pod reaches every pod after the rebuild");
    eprintln!(
        "rebuilt in {back:?}; new pods got {:?}",
        handed.difference(&live).collect::<Vec<_>>()
    );
    lab.down().unwrap();
}
