//! What a crash leaves behind, and who cleans it up: a real agent SIGKILLed in the middle of
//! 20 concurrent ADDs through the real CNI plugin, restarted, and its orphan sweep; and the
//! cluster's automatic leak release, run by one agent at a time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use wren_model::keys;
use wren_tests::netns::NetNs;
use wren_tests::prereq;

mod agent_rig;
mod cni_support;

use agent_rig::*;
use cni_support::{Call, address, plugin_binary};

/// Concurrent ADDs the agent is killed in the middle of.
const PODS: usize = 20;
/// The orphan grace period the restarted agent runs with.
const GRACE: Duration = Duration::from_secs(4);

/// The host veths wren made in the node's namespace, by name.
fn host_veths(node: &Node) -> BTreeSet<String> {
    node.ns
        .ip(&["-o", "link", "show", "type", "veth"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .filter(|n| n.starts_with("wren"))
        .collect()
}

/// This node's workload records: (host interface, handle).
fn records(c: &Cluster, node: &str) -> Vec<(String, String)> {
    let prefix = keys::node_workloads(node);
    with_store_in(c.fabric.netns().name(), c.endpoint(), |store| async move {
        store
            .list(&prefix)
            .await
            .unwrap()
            .items
            .iter()
            .map(|kv| {
                let w: Value = serde_json::from_slice(&kv.value).unwrap();
                (
                    w["hostInterface"].as_str().unwrap().to_owned(),
                    w["handle"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    })
}

/// Host veths no workload record names.
fn orphan_veths(c: &Cluster, i: usize) -> BTreeSet<String> {
    let named: BTreeSet<String> = records(c, &c.node(i).name)
        .into_iter()
        .map(|(host, _)| host)
        .collect();
    host_veths(c.node(i))
        .into_iter()
        .filter(|v| !named.contains(v))
        .collect()
}

/// `wren ipam check --grace 0s`: its output, and whether it found nothing.
fn leak_check(c: &Cluster) -> (String, bool) {
    let out = c.cli_ok(&["ipam", "check", "--grace", "0s"]);
    let clean = out.contains("no leaks found");
    (out, clean)
}

/// A counter's value in the agent's `/metrics`.
fn counter(node: &Node, name: &str) -> u64 {
    let (_, text) = http_get(node, "/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn config(node: &Node) -> Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s",
        "type": "wren",
        "agentSocket": node.socket,
    })
}

#[test]
fn an_agent_killed_mid_add_leaves_no_orphan_once_restarted() {
    if !ready() || !prereq::require_command("ping") {
        return;
    }
    if !prereq::require("the wren-cni binary is built", plugin_binary().is_some()) {
        return;
    }
    let grace = format!("{}s", GRACE.as_secs());
    let flags = ["--orphan-grace-period", grace.as_str()];
    let mut c = Cluster::new("crash", 1);
    c.start_agent_with(0, &flags);
    let pods: Vec<NetNs> = (0..PODS)
        .map(|i| NetNs::new(&format!("crash-p{i}")).unwrap())
        .collect();
    let conf = config(c.node(0));

    // 20 ADDs at once; the agent is SIGKILLed 50 ms in, or as soon as the first veth exists
    // if none does yet, so some ADDs are cut off part-way.
    let replies = std::thread::scope(|scope| {
        let adds: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let conf = &conf;
                scope.spawn(move || {
                    cni_support::wren(&Call::new("ADD", &format!("crash-{i}"), Some(pod)), conf)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        while host_veths(c.node(0)).is_empty() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        c.nodes[0]
            .agent
            .as_mut()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        adds.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let completed: Vec<(usize, String)> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ok)
        .map(|(i, r)| (i, address(&r.json, false)))
        .collect();
    let orphans_before = orphan_veths(&c, 0);
    let down_before = c
        .node(0)
        .ns
        .ip(&["-o", "link", "show", "type", "veth"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("state DOWN") || !l.contains("UP"))
        .count();
    let (check_before, clean_before) = leak_check(&c);
    eprintln!(
        "after the kill: {} of {PODS} ADDs completed; orphaned host veths {} ({} down); leak check:\n{check_before}",
        completed.len(),
        orphans_before.len(),
        down_before,
    );
    assert!(
        !orphans_before.is_empty() || !clean_before,
        "the kill left nothing behind; it came too late to reproduce the crash"
    );

    // Restart: nothing is removed before the grace period, everything orphaned after it.
    let restarted = Instant::now();
    c.nodes[0].agent = None;
    c.start_agent_with(0, &flags);
    if restarted.elapsed() + Duration::from_millis(500) < GRACE {
        assert_eq!(
            orphan_veths(&c, 0),
            orphans_before,
            "orphans removed before the grace period"
        );
    }
    wait_every("the orphans to go", Duration::from_millis(250), || {
        orphan_veths(&c, 0).is_empty() && leak_check(&c).1
    });
    let swept_after = restarted.elapsed();
    assert!(
        swept_after >= GRACE,
        "swept after {swept_after:?}, inside the {GRACE:?} grace period"
    );
    eprintln!(
        "orphans gone {swept_after:?} after the restart (grace {GRACE:?}); removed: {} veths, {} allocations",
        counter(c.node(0), "wren_orphan_interfaces_removed_total"),
        counter(c.node(0), "wren_orphan_allocations_released_total"),
    );
    assert_eq!(
        counter(c.node(0), "wren_orphan_interfaces_removed_total") as usize,
        orphans_before.len()
    );

    // The pods whose ADD completed keep their interfaces, records and addresses, and work.
    // (An ADD may also have recorded its workload just before the kill, with its answer
    // lost: the record explains its interface, which stays for the runtime's retry or DEL.)
    let recorded = records(&c, "node1");
    for (i, _) in &completed {
        let handle = format!("k8s.crash-{i}");
        assert!(
            recorded.iter().any(|(_, h)| *h == handle),
            "{handle} lost its record: {recorded:?}"
        );
    }
    let interfaces: BTreeSet<String> = recorded.iter().map(|(host, _)| host.clone()).collect();
    assert_eq!(host_veths(c.node(0)), interfaces);
    if let [(a, _), (_, ip_b), ..] = completed.as_slice() {
        assert!(
            cni_support::reachable(&pods[*a], ip_b),
            "a pod whose ADD completed cannot reach another"
        );
    }
    // An ADD the runtime retries after the crash succeeds and keeps working.
    let retried = replies.iter().position(|r| !r.ok);
    if let Some(i) = retried {
        let again = cni_support::wren(
            &Call::new("ADD", &format!("crash-{i}"), Some(&pods[i])),
            &conf,
        );
        assert!(again.ok, "retried ADD: {}", again.json);
    }
    assert!(leak_check(&c).1);
}

#[test]
fn leaked_addresses_are_released_by_one_agent_of_the_cluster() {
    if !ready() {
        return;
    }
    let flags = [
        "--leak-release-interval",
        "1s",
        "--leak-grace-period",
        "5s",
        // The orphan sweep would free node1's own leaks first; this test is about the release.
        "--orphan-grace-period",
        "60m",
    ];
    let mut c = Cluster::new("leaks", 2);
    c.start_agent_with(0, &flags);
    c.start_agent_with(1, &flags);
    c.wait_mesh();
    // Three allocations without a workload on node1, one for a node that does not exist.
    let mut leaked: Vec<String> = (0..3)
        .map(|i| {
            c.allocate("node1", &format!("k8s.leaked-{i}"), &[])
                .to_string()
        })
        .collect();
    leaked.push(c.allocate("ghost", "k8s.ghost", &[]).to_string());
    let allocated = Instant::now();
    // Younger than the grace period: still there.
    let (young, _) = leak_check(&c);
    for address in &leaked[..3] {
        assert!(young.contains(address.as_str()), "{young}");
    }
    wait_every(
        "the leaks to be released",
        Duration::from_millis(250),
        || leak_check(&c).1,
    );
    let took = allocated.elapsed();
    eprintln!("released {took:?} after allocation (grace 5s, interval 1s)");
    // The grace counts whole seconds of the handle's creation time.
    assert!(
        took >= Duration::from_secs(4),
        "released inside the grace period"
    );

    // Each address freed once, by whichever agent held the lock, each logged and counted.
    let logs = c.node(0).log() + &c.node(1).log();
    for address in &leaked {
        let freed = logs
            .lines()
            .filter(|l| l.contains("leak release: freed an address") && l.contains(address))
            .count();
        assert_eq!(freed, 1, "{address} freed {freed} times:\n{logs}");
    }
    let counted = counter(c.node(0), "wren_ipam_leaks_released_total")
        + counter(c.node(1), "wren_ipam_leaks_released_total");
    // Four addresses and the ghost's block.
    assert!(counted >= 5, "counted {counted}");
    // The lock is given back after each round.
    let lock = keys::LEAK_RELEASE_LOCK.to_owned();
    wait_for("the lock to be free", || {
        let lock = lock.clone();
        with_store_in(c.fabric.netns().name(), c.endpoint(), |store| async move {
            store.get(&lock).await.unwrap().is_none()
        })
    });
}
