//! A burst of 100 concurrent ADDs on one node through the real plugin, agent, etcd and kernel:
//! every pod gets its own address, and 100 concurrent DELs leave nothing behind.

#[path = "cni_support/mod.rs"]
mod support;

use std::collections::BTreeSet;

use serde_json::json;
use support::{Call, Node, address, wren};

const PODS: usize = 100;

#[test]
fn a_hundred_concurrent_adds_get_distinct_addresses_and_a_hundred_dels_leave_nothing() {
    if !support::ready() {
        return;
    }
    let node = Node::start("cni-burst", &[("v4", "10.91.0.0/23", 26)]);
    let pods: Vec<_> = (0..PODS).map(|i| node.pod(&format!("cni-b{i}"))).collect();
    let config = node.config("1.0.0", json!({}));

    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let config = &config;
                scope.spawn(move || {
                    wren(&Call::new("ADD", &format!("burst-{i}"), Some(pod)), config)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<_> = results.iter().filter(|r| !r.ok).map(|r| &r.json).collect();
    assert!(
        failed.is_empty(),
        "{} ADDs failed: {failed:?}",
        failed.len()
    );
    let addresses: BTreeSet<String> = results.iter().map(|r| address(&r.json, false)).collect();
    assert_eq!(addresses.len(), PODS, "addresses handed out twice");
    assert_eq!(node.allocated(), PODS as u64);
    assert_eq!(node.workload_keys().len(), PODS);
    assert_eq!(node.wren_links().len(), PODS);
    assert_eq!(node.wren_routes().lines().count(), PODS);

    std::thread::scope(|scope| {
        for (i, pod) in pods.iter().enumerate() {
            let config = &config;
            scope.spawn(move || {
                let r = wren(&Call::new("DEL", &format!("burst-{i}"), Some(pod)), config);
                assert!(r.ok, "DEL burst-{i}: {}", r.json);
            });
        }
    });
    node.assert_empty();
}
