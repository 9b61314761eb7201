//! A route reflector's RIB holds memory for its routes, not for its clients × routes: the
//! clients share one update group. One test in this binary, so that nothing else allocates
//! while it counts.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use wren_bgp::rib::{AcceptAll, AdjRibOut, PeerSettings, Rib, RibConfig, Session};
use wren_bgp::wire::{Afi, AsPath, PathAttributes, Update};
use wren_tests::bench::{CountingAllocator, live_bytes};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const LOCAL_AS: u32 = 64512;
const NODES: u32 = 2000;
const BLOCKS: u32 = 4;

/// Adds an iBGP route-reflector client 10.91.`n / 256`.`n % 256` with its session up.
fn client(rib: &mut Rib, n: u32) -> (wren_bgp::rib::PeerId, AdjRibOut) {
    let address = Ipv4Addr::from(0x0a5b_0000 + n);
    let settings = PeerSettings {
        address: IpAddr::V4(address),
        remote_as: LOCAL_AS,
        local_as: None,
        rr_client: true,
        next_hop_self: false,
        next_hop_keep: false,
    };
    let (id, out) = rib.add_peer(settings);
    let session = Session {
        router_id: address,
        local_address: "10.91.255.254".parse().unwrap(),
        families: vec![Afi::Ipv4Unicast],
        epoch: 1,
        graceful_restart: None,
    };
    rib.peer_up(id, session);
    (id, out)
}

/// What `NODES` nodes announce: each its `BLOCKS` /26 blocks with its address as next hop.
fn feed() -> Vec<Update> {
    (0..NODES)
        .map(|node| {
            let nlri = (0..BLOCKS)
                .map(|b| {
                    let base = 0x0a40_0000 + (node * BLOCKS + b) * 64;
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base), 26).unwrap())
                })
                .collect();
            Update {
                attributes: PathAttributes {
                    origin: Some(Default::default()),
                    as_path: Some(AsPath::default()),
                    next_hop: Some(Ipv4Addr::from(0x0a5c_0000 + node)),
                    local_pref: Some(100),
                    ..PathAttributes::default()
                },
                nlri,
                ..Update::default()
            }
        })
        .collect()
}

/// Live heap bytes of a reflector that reflected the feed to `clients` clients, every
/// client's writer having sent everything.
fn reflector_bytes(clients: u32, feed: &[Update]) -> usize {
    let before = live_bytes();
    let mut config = RibConfig::new(LOCAL_AS, Ipv4Addr::new(10, 91, 255, 254));
    config.cluster_id = Some(Ipv4Addr::new(10, 91, 255, 254));
    let mut rib = Rib::new(config, Arc::new(AcceptAll));
    rib.record_route_events(false);
    let (feeder, _) = client(&mut rib, 0);
    let outs: Vec<AdjRibOut> = (1..=clients).map(|n| client(&mut rib, n).1).collect();
    let mut delivered = 0;
    for update in feed {
        rib.update(feeder, update);
        rib.flush();
        for out in &outs {
            delivered += out.take_batch(usize::MAX).prefixes();
        }
    }
    let prefixes = (NODES * BLOCKS) as usize;
    assert_eq!(
        delivered,
        prefixes * clients as usize,
        "every client has everything"
    );
    for out in &outs {
        assert_eq!(out.sent_count(), prefixes);
    }
    let held = live_bytes().saturating_sub(before);
    drop((rib, outs));
    held
}

#[test]
fn a_reflectors_memory_does_not_grow_with_clients_times_routes() {
    let feed = feed();
    let one = reflector_bytes(1, &feed);
    let fifty = reflector_bytes(50, &feed);
    let routes = (NODES * BLOCKS) as usize;
    assert!(
        one > routes * 100,
        "the allocator counts: {one} B for {routes} routes"
    );
    let per_client_route = fifty.saturating_sub(one) as f64 / (49 * routes) as f64;
    eprintln!(
        "1 client: {one} B, 50 clients: {fifty} B, {per_client_route:.2} B per (client, route)"
    );
    // One Adj-RIB-Out per client held about 80 bytes per (client, route).
    assert!(
        per_client_route < 2.0,
        "{per_client_route:.1} bytes per (client, route): 1 client {one} B, 50 clients {fifty} B"
    );
}
