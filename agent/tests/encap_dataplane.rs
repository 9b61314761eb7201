//! The tunnel devices, their neighbour and forwarding entries, the underlay MTU look-up and
//! the NAT tables, against a real kernel in network namespaces made by each test.

use std::net::Ipv4Addr;

use ipnet::IpNet;
use wren_agent::dataplane::ipip::{IPIP_DEVICE, IpipManager, IpipSupport};
use wren_agent::dataplane::mtu::detect_underlay;
use wren_agent::dataplane::nat::{NatFamily, NatManager, NatRules};
use wren_agent::dataplane::vxlan::{VXLAN_DEVICE, VxlanDevice, VxlanManager, VxlanPeer};
use wren_tests::netns::NetNs;
use wren_tests::prereq;

fn ready() -> bool {
    prereq::require_root() && prereq::require_command("ip")
}

/// A namespace with an underlay `eth0` (a bridge stands in for it) at 192.0.2.1/24, MTU
/// 9000.
fn node(tag: &str) -> NetNs {
    let ns = NetNs::new(tag).unwrap();
    ns.ip(&["link", "add", "eth0", "mtu", "9000", "type", "bridge"])
        .unwrap();
    ns.configure("eth0", Some("192.0.2.1/24")).unwrap();
    ns
}

fn ip(ns: &NetNs, args: &str) -> String {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default()
}

fn peer(n: u8) -> VxlanPeer {
    VxlanPeer {
        node_ip: Ipv4Addr::new(198, 51, 100, n),
        tunnel_address: Ipv4Addr::new(10, 65, n, 0),
        mac: [0x66, 0x10, 0, 0, 0, n],
    }
}

#[test]
fn the_underlay_is_the_interface_holding_the_node_address() {
    if !ready() {
        return;
    }
    let ns = node("mtu");
    let underlay = ns
        .enter(|| detect_underlay("192.0.2.1".parse().unwrap()))
        .unwrap()
        .unwrap();
    assert_eq!((underlay.name.as_str(), underlay.mtu), ("eth0", 9000));
    let missing = ns
        .enter(|| detect_underlay("192.0.2.9".parse().unwrap()))
        .unwrap();
    assert!(missing.is_err(), "{missing:?}");
}

#[test]
fn vxlan_device_neighbours_and_fdb_are_reconciled_and_removed() {
    if !ready() {
        return;
    }
    let ns = node("vx");
    let parent = ns
        .enter(|| detect_underlay("192.0.2.1".parse().unwrap()))
        .unwrap()
        .unwrap()
        .index;
    let mut manager = ns.enter(|| VxlanManager::new().unwrap()).unwrap();
    let device = VxlanDevice {
        local: Ipv4Addr::new(192, 0, 2, 1),
        parent,
        mac: [0x66, 0x10, 0xaa, 0, 0, 1],
        address: Ipv4Addr::new(10, 65, 0, 0),
        mtu: 8950,
    };
    let peers = [peer(2), peer(3)];
    let report = manager.reconcile(Some((&device, &peers))).unwrap();
    assert!(report.created && report.failures.is_empty(), "{report:?}");
    assert_eq!(report.entries_added, 4);

    let link = ip(&ns, &format!("-d link show {VXLAN_DEVICE}"));
    for want in [
        "mtu 8950",
        "66:10:aa:00:00:01",
        "vxlan id 4096",
        "local 192.0.2.1",
        "dev eth0",
        "dstport 4789",
        "nolearning",
    ] {
        assert!(link.contains(want), "missing {want:?} in\n{link}");
    }
    assert!(link.contains(",UP"), "device is down:\n{link}");
    let addr = ip(&ns, &format!("-4 addr show dev {VXLAN_DEVICE}"));
    assert!(addr.contains("inet 10.65.0.0/32"), "{addr}");
    let neigh = ip(&ns, &format!("neigh show dev {VXLAN_DEVICE}"));
    assert!(
        neigh.contains("10.65.2.0 lladdr 66:10:00:00:00:02 PERMANENT"),
        "{neigh}"
    );
    let fdb = ns
        .exec("bridge", &["fdb", "show", "dev", VXLAN_DEVICE])
        .unwrap();
    assert!(
        fdb.contains("66:10:00:00:00:03 dst 198.51.100.3 self permanent"),
        "{fdb}"
    );

    // Nothing to do the second time.
    let again = manager.reconcile(Some((&device, &peers))).unwrap();
    assert!(!again.changed(), "{again:?}");

    // A node leaves, one joins, the MTU changes, a stray address appears: only the
    // difference is written, and the device is not made again.
    ip(&ns, &format!("addr add 10.99.0.1/32 dev {VXLAN_DEVICE}"));
    let device = VxlanDevice {
        mtu: 1450,
        ..device
    };
    let peers = [peer(3), peer(4)];
    let report = manager.reconcile(Some((&device, &peers))).unwrap();
    assert!(!report.created && report.updated, "{report:?}");
    assert_eq!((report.entries_added, report.entries_removed), (2, 2));
    let neigh = ip(&ns, &format!("neigh show dev {VXLAN_DEVICE}"));
    assert!(
        !neigh.contains("10.65.2.0") && neigh.contains("10.65.4.0"),
        "{neigh}"
    );
    let fdb = ns
        .exec("bridge", &["fdb", "show", "dev", VXLAN_DEVICE])
        .unwrap();
    assert!(
        !fdb.contains("198.51.100.2") && fdb.contains("198.51.100.4"),
        "{fdb}"
    );
    assert!(ip(&ns, &format!("link show {VXLAN_DEVICE}")).contains("mtu 1450"));
    let addr = ip(&ns, &format!("-4 addr show dev {VXLAN_DEVICE}"));
    assert!(!addr.contains("10.99.0.1"), "stray address stays: {addr}");

    // A new node address cannot be changed in place: the device is made again.
    ip(&ns, "addr add 192.0.2.7/24 dev eth0");
    let moved = VxlanDevice {
        local: Ipv4Addr::new(192, 0, 2, 7),
        ..device
    };
    let report = manager.reconcile(Some((&moved, &peers))).unwrap();
    assert!(report.created, "{report:?}");
    assert!(ip(&ns, &format!("-d link show {VXLAN_DEVICE}")).contains("local 192.0.2.7"));
    assert!(ip(&ns, &format!("neigh show dev {VXLAN_DEVICE}")).contains("10.65.4.0"));

    // Not wanted any more: gone, and the underlay untouched.
    let report = manager.reconcile(None).unwrap();
    assert!(report.removed, "{report:?}");
    assert!(ns.ip(&["link", "show", VXLAN_DEVICE]).is_err());
    assert!(!manager.reconcile(None).unwrap().changed());
    assert!(ip(&ns, "link show eth0").contains("mtu 9000"));
}

/// The probe tells a kernel with IPIP from one without, and leaves nothing behind. The device
/// itself is tested on a kernel that has it, in the VM (`kernel_matrix.rs`).
#[test]
fn ipip_support_is_probed_as_the_kernel_has_it() {
    if !ready() {
        return;
    }
    let ns = node("ipip");
    let mut manager = ns.enter(|| IpipManager::new().unwrap()).unwrap();
    let support = manager.probe(Ipv4Addr::new(192, 0, 2, 1));
    assert!(
        ns.ip(&["link", "show", IPIP_DEVICE]).is_err(),
        "the probe leaves no device behind"
    );
    match support {
        IpipSupport::Available => assert!(
            prereq::have_kernel_module("ipip"),
            "probe says IPIP works on a kernel without the module"
        ),
        // The probe must say exactly that, so the agent can report it.
        IpipSupport::Missing { reason } => {
            assert!(!prereq::have_kernel_module("ipip"), "{reason}");
            assert!(reason.contains("no `ipip` module"), "{reason}");
        }
    }
}

#[test]
fn nat_tables_are_written_repaired_and_removed_without_touching_others() {
    if !ready() || !prereq::require_command("nft") {
        return;
    }
    let ns = NetNs::new("nat").unwrap();
    let nft = |args: &str| {
        ns.exec("nft", &args.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // Somebody else's table, with a chain on the same hook.
    nft("add table ip other");
    nft("add chain ip other post { type nat hook postrouting priority 100 ; }");
    let mut manager = NatManager::new();
    let net = |s: &str| s.parse::<IpNet>().unwrap();
    let rules = NatRules {
        pools: vec![
            net("10.65.0.0/16"),
            net("10.66.0.0/16"),
            net("fd00:65::/48"),
        ],
        masquerade: vec![net("10.65.0.0/16")],
    };
    let report = ns.enter(|| manager.reconcile(&rules)).unwrap().unwrap();
    assert_eq!(report.written, vec![NatFamily::V4]);
    let table = nft("list table ip wren");
    assert!(
        table.contains("ip saddr @masquerade_pools ip daddr != @pools masquerade"),
        "{table}"
    );
    assert!(table.contains("10.66.0.0/16"), "{table}");
    assert!(ns.exec("nft", &["list", "table", "ip6", "wren"]).is_err());

    let again = ns.enter(|| manager.reconcile(&rules)).unwrap().unwrap();
    assert!(!again.changed(), "{again:?}");

    // Someone flushes wren's chain: the next reconcile puts the rule back.
    nft("flush chain ip wren postrouting");
    let repaired = ns.enter(|| manager.reconcile(&rules)).unwrap().unwrap();
    assert_eq!(repaired.written, vec![NatFamily::V4]);
    assert!(nft("list table ip wren").contains("masquerade"));

    // No pool masquerades any more: the table goes, the other one stays.
    let none = NatRules {
        masquerade: vec![],
        ..rules
    };
    let removed = ns.enter(|| manager.reconcile(&none)).unwrap().unwrap();
    assert_eq!(removed.removed, vec![NatFamily::V4]);
    assert!(ns.exec("nft", &["list", "table", "ip", "wren"]).is_err());
    let other = nft("list table ip other");
    assert!(other.contains("chain post"), "{other}");
}
