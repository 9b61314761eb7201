//! Behaviour scenarios, each run on a fresh store of either backend.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use wren_ipam::affinity::{Affinity, AffinityState};
use wren_ipam::{
    AllocateRequest, CheckOptions, Family, Ipam, IpamError, LeakReason, PoolError, PoolSpec,
    StaleReason,
};
use wren_model::keys;
use wren_store::Store;
use wren_store::json::JsonStore;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

const NOW: CheckOptions = CheckOptions {
    grace: Duration::ZERO,
};

/// A node's first block fills completely before it claims a second; both are affine to it,
/// with confirmed affinity records.
pub async fn fills_a_block_then_claims_another(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "p", "10.65.0.0/24", 26).await;
    node(store.as_ref(), "n1").await;
    let mut first_block = None;
    let mut seen = HashSet::new();
    for i in 0..64 {
        let a = ipam
            .allocate(AllocateRequest::new(format!("net.c{i}"), "n1"))
            .await
            .unwrap();
        let v4 = a.ipv4().unwrap();
        assert!(!v4.borrowed);
        assert_eq!(v4.pool, "p");
        assert!(seen.insert(v4.address));
        assert_eq!(
            *first_block.get_or_insert(v4.block),
            v4.block,
            "allocation {i} left the first block"
        );
    }
    let next = ipam
        .allocate(AllocateRequest::new("net.c64", "n1"))
        .await
        .unwrap();
    let second = next.ipv4().unwrap().block;
    assert_ne!(Some(second), first_block);
    let mut affine = ipam.affine_blocks("n1").await.unwrap();
    affine.sort();
    let mut expected = vec![first_block.unwrap(), second];
    expected.sort();
    assert_eq!(affine, expected);
    for b in expected {
        let a = store
            .get_json::<Affinity>(&keys::affinity("n1", &b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.value.state, AffinityState::Confirmed);
    }
    assert_eq!(ipam.stats().claims, 2);
    assert_eq!(ipam.stats().allocated, 65);
    assert_consistent(store.as_ref()).await;
}

/// A released address is handed out again once the others are used.
pub async fn a_released_address_is_reused(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "tiny", "10.66.0.0/30", 30).await;
    node(store.as_ref(), "n1").await;
    let mut got = Vec::new();
    for i in 0..4 {
        got.push(
            ipam.allocate(AllocateRequest::new(format!("h{i}"), "n1"))
                .await
                .unwrap()
                .ipv4()
                .unwrap()
                .address,
        );
    }
    let full = ipam
        .allocate(AllocateRequest::new("h4", "n1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            full,
            IpamError::Exhausted {
                family: Family::V4,
                ..
            }
        ),
        "{full}"
    );
    let freed = ipam.release_address(got[2]).await.unwrap();
    assert_eq!((freed.address, freed.handle.as_str()), (got[2], "h2"));
    let again = ipam
        .allocate(AllocateRequest::new("h5", "n1"))
        .await
        .unwrap();
    assert_eq!(again.ipv4().unwrap().address, got[2]);
    assert!(store.get(&keys::handle("h2")).await.unwrap().is_none());
    assert_consistent(store.as_ref()).await;
}

/// Release by handle frees all of its addresses once; the second time there is nothing to do.
pub async fn release_by_handle_is_idempotent(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "v4", "10.65.0.0/24", 26).await;
    pool(&ipam, "v6", "fd00:65::/120", 122).await;
    node(store.as_ref(), "n1").await;
    let a = ipam
        .allocate(AllocateRequest::new("net.x", "n1").families(true, true))
        .await
        .unwrap();
    let mut released = ipam.release_handle("net.x").await.unwrap();
    released.sort();
    let mut expected: Vec<IpAddr> = a.addresses.iter().map(|a| a.address).collect();
    expected.sort();
    assert_eq!(released, expected);
    assert!(ipam.release_handle("net.x").await.unwrap().is_empty());
    assert!(allocated(store.as_ref()).await.is_empty());
    assert_eq!(ipam.stats().released, 2);
}

/// IPv6 pools work like IPv4 ones; a dual-stack request gets one of each.
pub async fn ipv6_and_dual_stack(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "v4", "10.65.0.0/24", 26).await;
    pool(&ipam, "v6", "fd00:65::/120", 122).await;
    node(store.as_ref(), "n1").await;
    let only6 = ipam
        .allocate(AllocateRequest::new("h6", "n1").families(false, true))
        .await
        .unwrap();
    assert_eq!(only6.addresses.len(), 1);
    let v6 = only6.ipv6().unwrap();
    assert!(net("fd00:65::/120").contains(&v6.address));
    assert_eq!(v6.block.prefix_len(), 122);
    assert_eq!(v6.host_net().prefix_len(), 128);
    let dual = ipam
        .allocate(AllocateRequest::new("hd", "n1").families(true, true))
        .await
        .unwrap();
    assert!(dual.ipv4().is_some() && dual.ipv6().is_some());
    assert_eq!(dual.ipv4().unwrap().host_net().prefix_len(), 32);
    assert_ne!(dual.ipv6().unwrap().address, v6.address);
    assert_consistent(store.as_ref()).await;
}

/// Dual-stack is both or neither: when the IPv6 half cannot be had, no IPv4 address stays
/// allocated either.
pub async fn dual_stack_is_both_or_neither(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "v4", "10.65.0.0/24", 26).await;
    pool(&ipam, "v6", "fd00:65::/122", 122).await;
    node(store.as_ref(), "n1").await;
    node(store.as_ref(), "n2").await;
    config(store.as_ref(), true, 0).await;
    // n2 takes the only IPv6 block; with strict affinity n1 may not borrow from it.
    ipam.allocate(AllocateRequest::new("other", "n2").families(false, true))
        .await
        .unwrap();
    let e = ipam
        .allocate(AllocateRequest::new("hd", "n1").families(true, true))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            IpamError::PoolExhaustedForNode {
                family: Family::V6,
                ..
            }
        ),
        "{e}"
    );
    let held = allocated(store.as_ref()).await;
    assert_eq!(
        held.len(),
        1,
        "only n2's address may be allocated: {held:?}"
    );
    assert!(store.get(&keys::handle("hd")).await.unwrap().is_none());
    // Without strict affinity it borrows, and gets both.
    config(store.as_ref(), false, 0).await;
    let both = ipam
        .allocate(AllocateRequest::new("hd", "n1").families(true, true))
        .await
        .unwrap();
    assert!(both.ipv6().unwrap().borrowed && !both.ipv4().unwrap().borrowed);
    assert_consistent(store.as_ref()).await;
}

/// When every block of the pool is claimed by other nodes, a node borrows a free address
/// from one of them, recorded so the borrower announces it.
pub async fn borrows_when_every_block_is_claimed(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "p", "10.65.0.0/26", 27).await;
    for n in ["n1", "n2", "n3"] {
        node(store.as_ref(), n).await;
    }
    let a1 = ipam
        .allocate(AllocateRequest::new("h1", "n1"))
        .await
        .unwrap();
    let a2 = ipam
        .allocate(AllocateRequest::new("h2", "n2"))
        .await
        .unwrap();
    assert_ne!(a1.ipv4().unwrap().block, a2.ipv4().unwrap().block);
    let b = ipam
        .allocate(AllocateRequest::new("h3", "n3"))
        .await
        .unwrap();
    let got = b.ipv4().unwrap();
    assert!(got.borrowed);
    assert!(ipam.affine_blocks("n3").await.unwrap().is_empty());
    let borrowed = ipam.borrowed_addresses("n3").await.unwrap();
    assert_eq!(borrowed.len(), 1);
    assert_eq!(
        (borrowed[0].address, borrowed[0].handle.as_str()),
        (got.address, "h3")
    );
    assert!(matches!(
        borrowed[0].block_node.as_deref(),
        Some("n1" | "n2")
    ));
    let info = ipam.lookup(got.address).await.unwrap();
    assert_eq!(info.assignment.unwrap().borrowed_by.as_deref(), Some("n3"));
    assert_eq!(ipam.stats().borrows, 1);
    ipam.release_handle("h3").await.unwrap();
    assert!(ipam.borrowed_addresses("n3").await.unwrap().is_empty());
}

/// With strict affinity a node whose blocks are full, in a pool without free blocks, gets a
/// clear error and nothing is written.
pub async fn strict_affinity_refuses_to_borrow(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "p", "10.65.0.0/26", 27).await;
    for n in ["n1", "n2", "n3"] {
        node(store.as_ref(), n).await;
    }
    config(store.as_ref(), true, 0).await;
    ipam.allocate(AllocateRequest::new("h1", "n1"))
        .await
        .unwrap();
    ipam.allocate(AllocateRequest::new("h2", "n2"))
        .await
        .unwrap();
    let before = snapshot(store.as_ref()).await;
    let e = ipam
        .allocate(AllocateRequest::new("h3", "n3"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, IpamError::PoolExhaustedForNode { ref node, .. } if node == "n3"),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("pool exhausted for node n3"),
        "{e}"
    );
    assert_eq!(snapshot(store.as_ref()).await, before);
}

/// The block limit per node stops claims; with strict affinity that is the end.
pub async fn block_limit_per_node(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "p", "10.65.0.0/24", 28).await;
    node(store.as_ref(), "n1").await;
    config(store.as_ref(), true, 1).await;
    for i in 0..16 {
        ipam.allocate(AllocateRequest::new(format!("h{i}"), "n1"))
            .await
            .unwrap();
    }
    let e = ipam
        .allocate(AllocateRequest::new("h16", "n1"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("limit of 1 blocks"), "{e}");
    // A request may raise the limit for itself.
    let mut more = AllocateRequest::new("h16", "n1");
    more.max_blocks_per_node = Some(2);
    assert!(!ipam.allocate(more).await.unwrap().ipv4().unwrap().borrowed);
    assert_eq!(ipam.affine_blocks("n1").await.unwrap().len(), 2);
}

/// Static addresses: taken from their block (claimed for the node if nobody has it), refused
/// when held, refused outside every pool, borrowed when the block is another node's.
pub async fn static_addresses(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "p", "10.65.0.0/24", 26).await;
    node(store.as_ref(), "n1").await;
    node(store.as_ref(), "n2").await;
    let a = ipam
        .allocate(AllocateRequest::new("s1", "n1").address(ip("10.65.0.77")))
        .await
        .unwrap();
    let got = a.ipv4().unwrap();
    assert_eq!(
        (got.address, got.block, got.borrowed),
        (ip("10.65.0.77"), net("10.65.0.64/26"), false)
    );
    assert_eq!(
        ipam.affine_blocks("n1").await.unwrap(),
        vec![net("10.65.0.64/26")]
    );
    let e = ipam
        .allocate(AllocateRequest::new("s2", "n2").address(ip("10.65.0.77")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, IpamError::AlreadyAllocated { ref handle, .. } if handle == "s1"),
        "{e}"
    );
    let e = ipam
        .allocate(AllocateRequest::new("s2", "n2").address(ip("192.168.9.9")))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::AddressNotInPool(_)), "{e}");
    let b = ipam
        .allocate(AllocateRequest::new("s2", "n2").address(ip("10.65.0.78")))
        .await
        .unwrap();
    assert!(b.ipv4().unwrap().borrowed);
    assert_consistent(store.as_ref()).await;
}

/// Pools: list, disable (no new addresses), enable, and removal refused while addresses are
/// allocated, saying how many; a removed pool leaves no block or affinity behind.
pub async fn pool_lifecycle(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "b", "10.66.0.0/24", 26).await;
    pool(&ipam, "a", "10.65.0.0/24", 26).await;
    node(store.as_ref(), "n1").await;
    let names: Vec<String> = ipam
        .list_pools()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let e = ipam
        .add_pool(&PoolSpec::new("a", "10.99.0.0/24"))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::PoolExists(_)), "{e}");

    node(store.as_ref(), "n2").await;
    ipam.allocate(AllocateRequest::new("x", "n2").pools(["a"]))
        .await
        .unwrap();
    ipam.allocate(AllocateRequest::new("y", "n2").pools(["a"]))
        .await
        .unwrap();
    ipam.set_pool_disabled("a", true).await.unwrap();
    let e = ipam
        .allocate(AllocateRequest::new("z", "n2").pools(["a"]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, IpamError::PoolDisabled(ref p) if p == "a"),
        "{e}"
    );
    let z = ipam
        .allocate(AllocateRequest::new("z", "n1"))
        .await
        .unwrap();
    assert_eq!(
        z.ipv4().unwrap().pool,
        "b",
        "a disabled pool hands out nothing"
    );
    ipam.set_pool_disabled("a", false).await.unwrap();
    ipam.allocate(AllocateRequest::new("w", "n2").pools(["a"]))
        .await
        .unwrap();

    let e = ipam.remove_pool("a").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "pool a still has 3 allocated addresses; release them first"
    );
    assert!(
        !ipam.get_pool("a").await.unwrap().pool.disabled,
        "a refused removal leaves the pool as it was"
    );
    for h in ["x", "y", "w"] {
        ipam.release_handle(h).await.unwrap();
    }
    // n2's block is empty but kept (its last); removing the pool deletes it.
    assert_eq!(ipam.affine_blocks("n2").await.unwrap().len(), 1);
    assert_eq!(ipam.remove_pool("a").await.unwrap(), 1);
    assert!(matches!(
        ipam.get_pool("a").await.unwrap_err(),
        IpamError::UnknownPool(_)
    ));
    assert!(
        blocks(store.as_ref())
            .await
            .iter()
            .all(|b| net("10.66.0.0/24").contains(&b.cidr()))
    );
    let affinities = store.list(keys::AFFINITY).await.unwrap().items;
    assert!(
        affinities.iter().all(|kv| !kv.key.contains("10.65.")),
        "{affinities:?}"
    );
}

/// Every kind of bad input is a clear error and changes nothing in the store.
pub async fn bad_input_changes_nothing(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "main", "10.65.0.0/16", 26).await;
    node(store.as_ref(), "n1").await;
    let held = ipam
        .allocate(AllocateRequest::new("h", "n1"))
        .await
        .unwrap();
    let before = snapshot(store.as_ref()).await;

    let pool_error = |e: IpamError| match e {
        IpamError::InvalidPool { error, .. } => error,
        other => panic!("expected a pool validation error, got {other}"),
    };
    let e = pool_error(
        ipam.add_pool(&PoolSpec::new("x", "10.300.0.0/16"))
            .await
            .unwrap_err(),
    );
    assert!(matches!(e, PoolError::MalformedCidr { .. }), "{e}");
    let e = pool_error(
        ipam.add_pool(&PoolSpec::new("x", "not-a-cidr"))
            .await
            .unwrap_err(),
    );
    assert!(matches!(e, PoolError::MalformedCidr { .. }), "{e}");
    let e = pool_error(
        ipam.add_pool(&PoolSpec::new("x", "10.65.128.0/17"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.to_string(),
        "10.65.128.0/17 overlaps pool main (10.65.0.0/16)"
    );
    let e = pool_error(
        ipam.add_pool(&PoolSpec::new("x", "10.70.0.1/16"))
            .await
            .unwrap_err(),
    );
    assert!(matches!(e, PoolError::NotNetworkAddress { .. }), "{e}");
    let e = pool_error(
        ipam.add_pool(&PoolSpec::new("x", "10.70.0.0/16").block_size(33))
            .await
            .unwrap_err(),
    );
    assert!(matches!(e, PoolError::BlockSizeOutOfRange { .. }), "{e}");

    let e = ipam
        .allocate(AllocateRequest::new("q", "n1").pools(["nope"]))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "unknown pool nope");
    let e = ipam
        .allocate(AllocateRequest::new("q", "n1").families(false, true))
        .await
        .unwrap_err();
    assert!(
        matches!(e, IpamError::NoPools { family: Family::V6 }),
        "{e}"
    );
    let e = ipam
        .allocate(AllocateRequest::new("", "n1"))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::InvalidRequest(_)), "{e}");

    let free = ip("10.65.200.1");
    assert_eq!(
        ipam.release_address(free).await.unwrap_err().to_string(),
        "10.65.200.1 is not allocated"
    );
    let next_to_held = match held.ipv4().unwrap().address {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        other => other,
    };
    assert!(matches!(
        ipam.release_address(next_to_held).await.unwrap_err(),
        IpamError::NotAllocated(_)
    ));
    assert!(matches!(
        ipam.release_address(ip("192.0.2.1")).await.unwrap_err(),
        IpamError::AddressNotInPool(_)
    ));
    assert!(matches!(
        ipam.remove_pool("nope").await.unwrap_err(),
        IpamError::UnknownPool(_)
    ));
    assert!(matches!(
        ipam.set_pool_disabled("nope", true).await.unwrap_err(),
        IpamError::UnknownPool(_)
    ));

    assert_eq!(
        snapshot(store.as_ref()).await,
        before,
        "a refused operation wrote something"
    );
}

/// A block emptied by a release goes back to the pool when its node is gone, or when the
/// node has another block with room; a node's last block is kept.
pub async fn empty_blocks_go_back_to_the_pool(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "p", "10.65.0.0/24", 28).await;
    node(store.as_ref(), "n1").await;
    node(store.as_ref(), "n2").await;
    let mut first = Vec::new();
    for i in 0..16 {
        first.push(
            ipam.allocate(AllocateRequest::new(format!("a{i}"), "n1"))
                .await
                .unwrap()
                .ipv4()
                .unwrap()
                .clone(),
        );
    }
    let spill = ipam
        .allocate(AllocateRequest::new("spill", "n1"))
        .await
        .unwrap()
        .ipv4()
        .unwrap()
        .clone();
    assert_ne!(spill.block, first[0].block);
    // The first block is full: emptying the second keeps it.
    ipam.release_handle("spill").await.unwrap();
    assert_eq!(ipam.affine_blocks("n1").await.unwrap().len(), 2);
    // Once the first block has room, the empty second one goes back.
    ipam.release_handle("a3").await.unwrap();
    let spill2 = ipam
        .allocate(AllocateRequest::new("spill2", "n1"))
        .await
        .unwrap()
        .ipv4()
        .unwrap()
        .clone();
    assert_eq!(
        spill2.block, first[0].block,
        "a node fills its lower block first"
    );
    ipam.release_handle("spill2").await.unwrap();
    ipam.release_handle("a4").await.unwrap();
    ipam.allocate(AllocateRequest::new("spill3", "n1"))
        .await
        .unwrap();
    let _ = spill;
    // Empty the first block entirely: it is now n1's only block with room, so it stays
    // even once empty; the other (empty) block went back.
    for i in 0..16 {
        ipam.release_handle(&format!("a{i}")).await.unwrap();
    }
    ipam.release_handle("spill3").await.unwrap();
    assert_eq!(
        ipam.affine_blocks("n1").await.unwrap().len(),
        1,
        "a node's last block is kept"
    );
    // A node that is gone loses its block when the block empties.
    let n2 = ipam
        .allocate(AllocateRequest::new("b", "n2"))
        .await
        .unwrap()
        .ipv4()
        .unwrap()
        .clone();
    remove_node(store.as_ref(), "n2").await;
    ipam.release_handle("b").await.unwrap();
    assert!(store.get(&keys::block(&n2.block)).await.unwrap().is_none());
    assert!(
        store
            .get(&keys::affinity("n2", &n2.block))
            .await
            .unwrap()
            .is_none()
    );
}

/// The leak check finds addresses without workload, blocks and affinities of nodes that are
/// gone, and handles that hold nothing; release re-checks each item first.
pub async fn leak_check_and_release(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    let s = store.as_ref();
    pool(&ipam, "p", "10.65.0.0/24", 26).await;
    node(s, "n1").await;
    node(s, "n2").await;
    let live = ipam
        .allocate(AllocateRequest::new("net.live", "n1"))
        .await
        .unwrap();
    workload(s, "n1", "net.live", &[live.ipv4().unwrap().address]).await;
    let leak = ipam
        .allocate(AllocateRequest::new("net.leak", "n1"))
        .await
        .unwrap();
    let comes_back = ipam
        .allocate(AllocateRequest::new("net.back", "n1"))
        .await
        .unwrap();
    let tunnel = ipam
        .allocate(AllocateRequest::new("vxlan-tunnel-addr-n1", "n1"))
        .await
        .unwrap();
    let gone = ipam
        .allocate(AllocateRequest::new("net.gone", "n2"))
        .await
        .unwrap();
    workload(s, "n2", "net.gone", &[gone.ipv4().unwrap().address]).await;
    remove_node(s, "n2").await;
    // An affinity for a block that does not exist, and a handle that holds nothing.
    let ghost = net("10.65.0.192/26");
    s.put_json(
        &keys::affinity("n1", &ghost),
        &Affinity {
            state: AffinityState::Pending,
        },
        None,
    )
    .await
    .unwrap();
    let empty_handle = wren_ipam::handle::Handle {
        node: "n1".into(),
        created_at: 0,
        addresses: vec![wren_ipam::handle::HandleAddress {
            address: ip("10.65.0.200"),
            block: ghost,
        }],
    };
    s.put_json(&keys::handle("net.dangling"), &empty_handle, None)
        .await
        .unwrap();

    // Within the grace period nothing young is judged.
    // Within the grace period the young addresses without workload are not judged; those of
    // a node that is gone are.
    let young = ipam
        .check(CheckOptions {
            grace: Duration::from_secs(3600),
        })
        .await
        .unwrap();
    let judged: Vec<&str> = young.leaked.iter().map(|l| l.handle.as_str()).collect();
    assert_eq!(judged, ["net.gone"]);
    assert_eq!(young.too_young, 2, "{young:?}");

    let report = ipam.check(NOW).await.unwrap();
    let mut leaked: Vec<(&str, LeakReason)> = report
        .leaked
        .iter()
        .map(|l| (l.handle.as_str(), l.reason))
        .collect();
    leaked.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        leaked,
        [
            ("net.back", LeakReason::NoWorkload),
            ("net.gone", LeakReason::NodeGone),
            ("net.leak", LeakReason::NoWorkload)
        ]
    );
    assert_eq!(report.allocated, 5);
    assert_eq!(report.dead_node_blocks.len(), 1);
    assert_eq!(report.dead_node_blocks[0].node, "n2");
    assert_eq!(report.dead_node_blocks[0].block, gone.ipv4().unwrap().block);
    let mut stale: Vec<(String, StaleReason)> = report
        .stale_affinities
        .iter()
        .map(|a| (a.node.clone(), a.reason))
        .collect();
    stale.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        stale,
        [
            ("n1".to_owned(), StaleReason::NoBlock),
            ("n2".to_owned(), StaleReason::NodeGone)
        ]
    );
    assert_eq!(report.dangling_handles.len(), 1);
    assert!(!report.is_clean());

    // The workload of net.back shows up between check and release: it keeps its address.
    workload(s, "n1", "net.back", &[comes_back.ipv4().unwrap().address]).await;
    let before_release = allocated(s).await;
    assert_eq!(before_release.len(), 5);
    let summary = ipam.release_from_check(&report).await.unwrap();
    let mut freed = summary.addresses.clone();
    freed.sort();
    let mut expected = vec![leak.ipv4().unwrap().address, gone.ipv4().unwrap().address];
    expected.sort();
    assert_eq!(freed, expected);
    assert_eq!(summary.skipped.len(), 1, "{summary:?}");
    assert_eq!(summary.blocks_released, vec![gone.ipv4().unwrap().block]);
    assert_eq!(summary.affinities_removed, 1, "{summary:?}");
    assert_eq!(summary.handles_removed, 1);
    let held = allocated(s).await;
    assert!(
        held.contains_key(&tunnel.ipv4().unwrap().address),
        "a live node's tunnel address stays"
    );
    assert!(held.contains_key(&comes_back.ipv4().unwrap().address));
    assert!(held.contains_key(&live.ipv4().unwrap().address));
    assert_eq!(held.len(), 3);
    assert!(ipam.check(NOW).await.unwrap().is_clean());
    assert_consistent(s).await;
}

/// `wren node rm`: a node's empty blocks go back, blocks still holding addresses lose the
/// node's affinity, and its tunnel address is freed.
pub async fn release_node_blocks(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    let s = store.as_ref();
    pool(&ipam, "p", "10.65.0.0/24", 28).await;
    node(s, "n1").await;
    let mut first_block = None;
    for i in 0..16 {
        let a = ipam
            .allocate(AllocateRequest::new(format!("a{i}"), "n1"))
            .await
            .unwrap();
        first_block = Some(a.ipv4().unwrap().block);
    }
    let t = ipam
        .allocate(AllocateRequest::new("vxlan-tunnel-addr-n1", "n1"))
        .await
        .unwrap();
    let second = t.ipv4().unwrap().block;
    ipam.allocate(AllocateRequest::new("late", "n1"))
        .await
        .unwrap();
    ipam.release_handle("late").await.unwrap();
    remove_node(s, "n1").await;
    let report = ipam.release_node_blocks("n1").await.unwrap();
    assert_eq!(report.tunnel_addresses, vec![t.ipv4().unwrap().address]);
    assert_eq!(report.released_blocks, vec![second]);
    assert_eq!(report.kept_blocks, vec![(first_block.unwrap(), 16)]);
    assert!(
        s.list(&keys::node_affinities("n1"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let kept = blocks(s).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].affinity(), None);
    // Freeing the rest deletes the unaffined block.
    for i in 0..16 {
        ipam.release_handle(&format!("a{i}")).await.unwrap();
    }
    assert!(blocks(s).await.is_empty());
}

/// Allocating twice for one handle returns what it holds; asking for another family adds it.
pub async fn allocate_is_idempotent_per_handle(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    pool(&ipam, "v4", "10.65.0.0/24", 26).await;
    pool(&ipam, "v6", "fd00:65::/120", 122).await;
    node(store.as_ref(), "n1").await;
    let first = ipam
        .allocate(AllocateRequest::new("h", "n1"))
        .await
        .unwrap();
    let again = ipam
        .allocate(AllocateRequest::new("h", "n1"))
        .await
        .unwrap();
    assert_eq!(first, again);
    let dual = ipam
        .allocate(AllocateRequest::new("h", "n1").families(true, true))
        .await
        .unwrap();
    assert_eq!(dual.ipv4(), first.ipv4());
    assert!(dual.ipv6().is_some());
    assert_eq!(allocated(store.as_ref()).await.len(), 2);
    assert_consistent(store.as_ref()).await;
}

/// Usage per pool and the owner of an address, with its workload.
pub async fn usage_and_lookup(store: Arc<dyn Store>) {
    let ipam = Ipam::new(store.clone());
    let s = store.as_ref();
    pool(&ipam, "p", "10.65.0.0/24", 26).await;
    pool(&ipam, "q", "10.66.0.0/24", 26).await;
    node(s, "n1").await;
    let a = ipam
        .allocate(AllocateRequest::new("net.c1", "n1"))
        .await
        .unwrap();
    ipam.allocate(AllocateRequest::new("net.c2", "n1"))
        .await
        .unwrap();
    let address = a.ipv4().unwrap().address;
    workload(s, "n1", "net.c1", &[address]).await;
    let usage = ipam.usage().await.unwrap();
    assert_eq!(usage.pools.len(), 2);
    assert_eq!(usage.pools[0].name, "p");
    assert_eq!(usage.pools[0].used(), 2);
    assert_eq!(usage.pools[0].blocks.len(), 1);
    assert_eq!(usage.pools[0].blocks[0].node.as_deref(), Some("n1"));
    assert_eq!(
        (usage.pools[0].blocks[0].used, usage.pools[0].blocks[0].size),
        (2, 64)
    );
    assert_eq!(usage.pools[0].block_capacity, 4);
    assert!(usage.pools[1].blocks.is_empty());
    let info = ipam.lookup(address).await.unwrap();
    assert_eq!(info.pool.as_deref(), Some("p"));
    assert_eq!(info.block, Some(a.ipv4().unwrap().block));
    assert_eq!(info.block_node.as_deref(), Some("n1"));
    assert_eq!(info.assignment.unwrap().handle, "net.c1");
    assert_eq!(info.workload.unwrap().pod_name.as_deref(), Some("pod-c1"));
    let free = ipam.lookup(ip("10.66.0.9")).await.unwrap();
    assert_eq!(
        (free.pool.as_deref(), free.block, free.assignment),
        (Some("q"), None, None)
    );
    assert!(matches!(
        ipam.lookup(ip("192.0.2.1")).await.unwrap_err(),
        IpamError::AddressNotInPool(_)
    ));
}

/// Two allocators (two processes) for the same node, plus a third node, all at once: every
/// address distinct, and the allocators did collide and recover.
pub async fn two_allocators_for_one_node(store: Arc<dyn Store>, per_allocator: usize) {
    let setup = Ipam::new(store.clone());
    pool(&setup, "p", "10.64.0.0/16", 26).await;
    for n in ["n1", "n2"] {
        node(store.as_ref(), n).await;
    }
    let allocators = [
        Ipam::new(store.clone()),
        Ipam::new(store.clone()),
        Ipam::new(store.clone()),
    ];
    let mut tasks = Vec::new();
    for (k, ipam) in allocators.iter().enumerate() {
        let node = if k == 2 { "n2" } else { "n1" };
        for i in 0..per_allocator {
            let ipam = ipam.clone();
            tasks.push(tokio::spawn(async move {
                ipam.allocate(AllocateRequest::new(format!("a{k}.{i}"), node))
                    .await
            }));
        }
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        assert!(
            seen.insert(a.ipv4().unwrap().address),
            "duplicate {}",
            a.ipv4().unwrap().address
        );
    }
    assert_eq!(seen.len(), 3 * per_allocator);
    assert_eq!(allocated(store.as_ref()).await.len(), 3 * per_allocator);
    let conflicts: u64 = allocators.iter().map(|a| a.stats().conflicts).sum();
    assert!(
        conflicts > 0,
        "two allocators on one node's blocks never collided"
    );
    assert_consistent(store.as_ref()).await;
}
