//! IPAM behaviour on the in-memory store: every scenario, plus property tests over random
//! sequences of allocations and releases across nodes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use common::scenarios;
use proptest::prelude::*;
use wren_ipam::{AllocateRequest, Ipam, IpamError};
use wren_store::Store;
use wren_store::memory::MemoryStore;

fn store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

macro_rules! on_memory {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                scenarios::$name(store()).await;
            }
        )*
    };
}

common::every_scenario!(on_memory);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocators_for_one_node() {
    scenarios::two_allocators_for_one_node(store(), 150).await;
}

/// One step of a random workload.
#[derive(Debug, Clone)]
enum Op {
    Allocate { node: usize, dual: bool },
    ReleaseHandle { pick: usize },
    ReleaseAddress { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, any::<bool>()).prop_map(|(node, dual)| Op::Allocate { node, dual }),
        2 => any::<usize>().prop_map(|pick| Op::ReleaseHandle { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ReleaseAddress { pick }),
    ]
}

/// IPv4 pool of 64 addresses in 8 blocks, IPv6 pool of 32 in 4.
const V4_CAPACITY: usize = 64;
const V6_CAPACITY: usize = 32;

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = store();
    let ipam = Ipam::new(store.clone());
    common::pool(&ipam, "v4", "10.65.0.0/26", 29).await;
    common::pool(&ipam, "v6", "fd00:65::/123", 125).await;
    for n in ["n0", "n1", "n2"] {
        common::node(store.as_ref(), n).await;
    }
    // The model: what each live handle holds.
    let mut model: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Allocate { node, dual } => {
                let handle = format!("h{step}");
                let used4 = model.values().flatten().filter(|a| a.is_ipv4()).count();
                let used6 = model.values().flatten().filter(|a| a.is_ipv6()).count();
                let fits = used4 < V4_CAPACITY && (!dual || used6 < V6_CAPACITY);
                let request =
                    AllocateRequest::new(&handle, format!("n{node}")).families(true, dual);
                match ipam.allocate(request).await {
                    Ok(a) => {
                        prop_assert!(fits, "allocated beyond capacity");
                        prop_assert_eq!(a.addresses.len(), if dual { 2 } else { 1 });
                        model.insert(handle, a.addresses.iter().map(|x| x.address).collect());
                    }
                    Err(IpamError::Exhausted { .. }) => {
                        prop_assert!(!fits, "exhausted with room left")
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("allocate: {e}"))),
                }
            }
            Op::ReleaseHandle { pick } if !model.is_empty() => {
                let handle = model
                    .keys()
                    .nth(pick % model.len())
                    .cloned()
                    .unwrap_or_default();
                let mut freed = ipam
                    .release_handle(&handle)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut expected = model.remove(&handle).unwrap_or_default();
                freed.sort();
                expected.sort();
                prop_assert_eq!(freed, expected);
            }
            Op::ReleaseAddress { pick } if !model.is_empty() => {
                let all: Vec<(String, IpAddr)> = model
                    .iter()
                    .flat_map(|(h, a)| a.iter().map(move |a| (h.clone(), *a)))
                    .collect();
                let (handle, address) = all[pick % all.len()].clone();
                let freed = ipam
                    .release_address(address)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&freed.handle, &handle);
                let left = model.get_mut(&handle).map(|v| {
                    v.retain(|a| *a != address);
                    v.is_empty()
                });
                if left == Some(true) {
                    model.remove(&handle);
                }
                prop_assert!(matches!(
                    ipam.release_address(address).await,
                    Err(IpamError::NotAllocated(_))
                ));
            }
            _ => {}
        }
        // The store holds exactly the model: no address twice, counts add up.
        let held = common::allocated(store.as_ref()).await;
        let expected: BTreeMap<IpAddr, String> = model
            .iter()
            .flat_map(|(h, a)| a.iter().map(move |a| (*a, h.clone())))
            .collect();
        prop_assert_eq!(&held, &expected);
        let usage = ipam
            .usage()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let counted: u64 = usage.pools.iter().map(|p| p.used()).sum();
        prop_assert_eq!(counted as usize, expected.len());
        let distinct: BTreeSet<IpAddr> = model.values().flatten().copied().collect();
        prop_assert_eq!(distinct.len(), expected.len());
    }
    common::assert_consistent(store.as_ref()).await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random allocations and releases across three nodes: no address is ever handed out
    /// twice, and what the store holds is exactly what the callers were given.
    #[test]
    fn random_allocate_and_release_across_nodes(ops in prop::collection::vec(op(), 1..160)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_ops(ops))?;
    }
}
