//! Helpers and scenarios shared by the in-memory and the etcd tests: each scenario takes an
//! empty store, so the same behaviour is proven on both backends.

#![allow(dead_code)]

pub mod scenarios;

/// Calls `$on!(name, …)` with every scenario of [`scenarios`] that takes only a store, so
/// each backend's test file declares them all.
macro_rules! every_scenario {
    ($on:ident) => {
        $on!(
            fills_a_block_then_claims_another,
            a_released_address_is_reused,
            release_by_handle_is_idempotent,
            ipv6_and_dual_stack,
            dual_stack_is_both_or_neither,
            borrows_when_every_block_is_claimed,
            strict_affinity_refuses_to_borrow,
            block_limit_per_node,
            static_addresses,
            pool_lifecycle,
            bad_input_changes_nothing,
            empty_blocks_go_back_to_the_pool,
            leak_check_and_release,
            release_node_blocks,
            allocate_is_idempotent_per_handle,
            usage_and_lookup,
        );
    };
}
pub(crate) use every_scenario;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use wren_ipam::block::Block;
use wren_ipam::{Ipam, NamedPool, PoolSpec};
use wren_model::{ClusterConfig, Node, Workload, keys};
use wren_store::Store;
use wren_store::json::JsonStore;

/// Adds a pool or fails the test.
pub async fn pool(ipam: &Ipam, name: &str, cidr: &str, block_size: u8) -> NamedPool {
    ipam.add_pool(&PoolSpec::new(name, cidr).block_size(block_size))
        .await
        .unwrap_or_else(|e| panic!("adding pool {name}: {e}"))
}

/// Registers a node.
pub async fn node(store: &dyn Store, name: &str) {
    let node = Node {
        name: name.into(),
        ipv4: None,
        ipv6: None,
        as_number: None,
        route_reflector_cluster_id: None,
        vxlan_mac: None,
        vxlan_address: None,
        labels: BTreeMap::new(),
    };
    store
        .put_json(&keys::node(name), &node, None)
        .await
        .unwrap();
}

/// Removes a node registration.
pub async fn remove_node(store: &dyn Store, name: &str) {
    store.delete(&keys::node(name), None).await.unwrap();
}

/// Records a workload holding `handle` on `node`, as the agent does after CNI ADD.
pub async fn workload(store: &dyn Store, node: &str, handle: &str, addresses: &[IpAddr]) {
    let container = handle.rsplit('.').next().unwrap_or(handle);
    let w = Workload {
        node: node.into(),
        container_id: container.into(),
        ifname: "eth0".into(),
        network: "wren".into(),
        handle: handle.into(),
        pod_namespace: Some("default".into()),
        pod_name: Some(format!("pod-{container}")),
        pod_uid: None,
        netns: format!("/var/run/netns/{container}"),
        addresses: addresses.iter().map(|a| ipnet::IpNet::from(*a)).collect(),
        host_interface: "wren0123456789a".into(),
        mac: "ee:ee:ee:ee:ee:ee".into(),
    };
    store
        .put_json(&keys::workload(node, container, "eth0"), &w, None)
        .await
        .unwrap();
}

/// Writes the cluster configuration.
pub async fn config(store: &dyn Store, strict_affinity: bool, max_blocks_per_node: u32) {
    let c = ClusterConfig {
        strict_affinity,
        max_blocks_per_node,
        ..ClusterConfig::default()
    };
    store
        .put_json(keys::CLUSTER_CONFIG, &c, None)
        .await
        .unwrap();
}

/// Every key and value in the store, to compare before and after an operation.
pub async fn snapshot(store: &dyn Store) -> Vec<(String, Vec<u8>)> {
    store
        .list("")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// Every allocated address with its handle, straight from the block documents. Panics if an
/// address appears twice.
pub async fn allocated(store: &dyn Store) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for kv in store.list(keys::BLOCKS).await.unwrap().items {
        let block = Block::from_json(&kv.value).unwrap();
        for (address, a) in block.assignments() {
            assert!(
                out.insert(address, a.handle.clone()).is_none(),
                "{address} appears in two blocks"
            );
        }
    }
    out
}

/// Every block document.
pub async fn blocks(store: &dyn Store) -> Vec<Block> {
    store
        .list(keys::BLOCKS)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| Block::from_json(&kv.value).unwrap())
        .collect()
}

/// Checks that handle documents and blocks agree: every address a handle lists is held by it,
/// and every held address is listed by its handle.
pub async fn assert_consistent(store: &dyn Store) {
    let held = allocated(store).await;
    let mut listed = HashSet::new();
    for v in store
        .list_json::<wren_ipam::handle::Handle>(keys::HANDLES)
        .await
        .unwrap()
        .items
    {
        let name = v.key.strip_prefix(keys::HANDLES).unwrap().to_owned();
        assert!(
            !v.value.addresses.is_empty(),
            "handle {name} is empty but stored"
        );
        for a in &v.value.addresses {
            assert_eq!(
                held.get(&a.address),
                Some(&name),
                "handle {name} lists {} which it does not hold",
                a.address
            );
            assert!(a.block.contains(&a.address));
            listed.insert(a.address);
        }
    }
    for (address, handle) in &held {
        assert!(
            listed.contains(address),
            "{address} held by {handle} is missing from its handle"
        );
    }
}

/// A store handle as the library takes it.
pub fn shared<S: Store>(store: S) -> Arc<dyn Store> {
    Arc::new(store)
}
