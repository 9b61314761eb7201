//! The kernel matrix, each row tested on its kernel: the machine's own, and Debian 12's 6.1
//! booted in a VM (`wren_tests::vm`), which has the `ipip` module but no tcx.
//!
//! Cases marked `#[ignore]` need a kernel with IPIP; the host run leaves them out and a
//! scenario test runs them inside the VM, all in one boot, reporting each case by name.
//! The core lab runs on both: on the host with the fast path on, in the VM without it.

mod agent_rig;
mod lab_rig;

use std::net::Ipv4Addr;
use std::time::Duration;

use wren_agent::dataplane::ipip::{IPIP_DEVICE, IpipDevice, IpipManager};
use wren_model::{Encapsulation, EncapsulationMode};
use wren_tests::lab::{self, Encap, Lab, LabSpec};
use wren_tests::netns::NetNs;
use wren_tests::{prereq, vm};

use lab_rig::{
    agent_http, lab_up, mtu_of, packets_during, ping_df, pod_on, run_in_ns, update_pool, wait_for,
    wait_full_matrix,
};

/// The longest one VM scenario may take, boot included, under TCG on two busy cores.
const VM_TIME_LIMIT: Duration = Duration::from_secs(1500);

/// The IPIP cases, run inside the VM.
const IPIP_CASES: &[&str] = &[
    "ipip_device_follows_the_node_address",
    "ipip_cross_subnet_encapsulates_only_between_subnets",
    "ipip_always_and_a_pool_switched_to_vxlan_and_back_with_pods_running",
];

#[test]
fn ipip_on_debian_6_1() {
    if !vm::require_vm() {
        return;
    }
    let vm = vm::Vm::debian(VM_TIME_LIMIT).unwrap();
    let report = vm.run_cases(IPIP_CASES, true).unwrap();
    report.assert_passed();
}

#[test]
fn core_lab_on_debian_6_1() {
    if !vm::require_vm() {
        return;
    }
    let vm = vm::Vm::debian(VM_TIME_LIMIT).unwrap();
    let report = vm.run_cases(&["core_lab_fits_the_kernel"], false).unwrap();
    report.assert_passed();
}

/// The core lab: three nodes, a BIRD top-of-rack reflecting every node's routes, two pods
/// each. Every pod reaches every pod on any kernel; the fast path carries them where the
/// kernel has tcx (6.6 and later) and says why it is off where it does not.
#[test]
fn core_lab_fits_the_kernel() {
    if !lab::require_lab(true) {
        return;
    }
    let mut spec = LabSpec::new(&lab::test_lab_name('k'), 3);
    spec.tor = true;
    let lab = Lab::up(spec).expect("lab up");
    wait_full_matrix(&lab);
    lab.wait_fast_paths(lab_rig::DEADLINE, "eth0")
        .unwrap_or_else(|e| panic!("{e}"));
    if prereq::kernel_has_tcx() {
        let before = lab.fast_path("n1").unwrap().forwarded;
        wait_full_matrix(&lab);
        let after = lab.fast_path("n1").unwrap().forwarded;
        assert!(
            after > before,
            "n1's fast path forwarded nothing of the ping matrix ({before} → {after})"
        );
    } else {
        for node in ["n1", "n2", "n3"] {
            let status = lab.node_status(node).unwrap();
            let line = status
                .lines()
                .find(|l| l.starts_with("Fast path: "))
                .unwrap_or_else(|| panic!("no fast path line:\n{status}"));
            let reason = line
                .strip_prefix("Fast path: unavailable, pods are routed by the host stack: ")
                .unwrap_or_else(|| panic!("{node}: {line}"));
            assert!(
                reason.contains("tcx"),
                "{node} names another reason: {line}"
            );
        }
    }
    lab.down().unwrap();
}

#[test]
#[ignore = "needs a kernel with IPIP: runs inside the VM (ipip_on_debian_6_1)"]
fn ipip_device_follows_the_node_address() {
    assert!(prereq::require_root());
    let ns = NetNs::new("ipip").unwrap();
    ns.ip(&["link", "add", "eth0", "mtu", "9000", "type", "bridge"])
        .unwrap();
    ns.configure("eth0", Some("192.0.2.1/24")).unwrap();
    let mut manager = ns.enter(|| IpipManager::new().unwrap()).unwrap();
    let support = manager.probe(Ipv4Addr::new(192, 0, 2, 1));
    assert!(support.available(), "{support:?}");
    let show = || {
        ns.ip(&["-d", "link", "show", IPIP_DEVICE])
            .unwrap_or_default()
    };
    let mut device = IpipDevice {
        local: Ipv4Addr::new(192, 0, 2, 1),
        mtu: 8980,
    };
    let report = manager.reconcile(Some(&device)).unwrap();
    assert!(report.created, "{report:?}");
    let link = show();
    assert!(
        link.contains("ipip") && link.contains("local 192.0.2.1") && link.contains("mtu 8980"),
        "{link}"
    );
    assert!(!manager.reconcile(Some(&device)).unwrap().changed());
    // The node's address moves: the device follows.
    device.local = Ipv4Addr::new(192, 0, 2, 7);
    assert!(manager.reconcile(Some(&device)).unwrap().changed());
    let link = show();
    assert!(link.contains("local 192.0.2.7"), "{link}");
    assert!(manager.reconcile(None).unwrap().removed);
    assert!(ns.ip(&["link", "show", IPIP_DEVICE]).is_err());
}

/// IP protocol 4 packets seen on `ifname` in `ns` while `traffic` runs.
fn ipip_packets_during(ns: &str, ifname: &str, traffic: impl FnOnce()) -> Vec<String> {
    packets_during(ns, ifname, &["ip", "proto", "4"], traffic)
}

/// Asserts that `packets` (tcpdump lines of IP protocol 4) hold a pod's ping wrapped from
/// node address `from` to node address `to`, as captured at `place`.
fn assert_pings_wrapped(packets: &[String], from: &str, to: &str, place: &str) {
    let outer = format!("{from} > {to}");
    assert!(
        packets
            .iter()
            .any(|l| l.contains(&outer) && l.contains("ICMP echo")),
        "no IPIP packets {outer} on {place}:\n{}",
        packets.join("\n")
    );
}

/// `from` pings `to` three times; asserts every echo came back.
fn ping_ok(lab: &Lab, from: &str, to: &str) {
    let (from, to) = (pod_on(lab, from), pod_on(lab, to));
    assert!(
        lab::ping(&from.ns, &to.ip.to_string(), 3),
        "{} cannot reach {}",
        from.name,
        to.name
    );
}

/// Two subnets joined by a router that knows no pod routes, an IPIP pool in cross-subnet
/// mode: n1 and n3 share subnet 1, n2 is on subnet 2.
#[test]
#[ignore = "needs a kernel with IPIP: runs inside the VM (ipip_on_debian_6_1)"]
fn ipip_cross_subnet_encapsulates_only_between_subnets() {
    assert!(lab::require_lab(false) && prereq::require_command("tcpdump"));
    let lab = lab_up('c', 3, Encap::Ipip, 2, 1);
    wait_full_matrix(&lab);
    let n1 = lab.node("n1").unwrap().clone();
    let (n2_ip, n3_ip) = (
        lab.node("n2").unwrap().ip().to_owned(),
        lab.node("n3").unwrap().ip().to_owned(),
    );
    let routes = lab.routes("n1").unwrap();
    assert!(
        routes.contains(&format!("via {n2_ip} dev wrentunl0")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("via {n3_ip} dev eth0")),
        "{routes}"
    );

    // Across the router: IPIP, seen on the router's leg into subnet 1.
    let router = lab.state().fabric_ns.clone();
    let across = ipip_packets_during(&router, "gw1", || ping_ok(&lab, "n1", "n2"));
    assert_pings_wrapped(&across, n1.ip(), &n2_ip, "the router");
    // Within subnet 1: plain packets on n1's underlay.
    let within = ipip_packets_during(&n1.ns, "eth0", || ping_ok(&lab, "n1", "n3"));
    assert!(
        within.is_empty(),
        "same-subnet traffic was encapsulated:\n{}",
        within.join("\n")
    );

    // The tunnel is the underlay's 1500 less IPIP's 20, and pods take the same.
    assert_eq!(mtu_of(&n1.ns, IPIP_DEVICE), 1480);
    let (p1, p2) = (pod_on(&lab, "n1"), pod_on(&lab, "n2"));
    assert_eq!(mtu_of(&p1.ns, "eth0"), 1480);
    let (ok, text) = ping_df(p1, p2, 1480 - 28);
    assert!(ok, "a full-size packet did not cross IPIP:\n{text}");
    let (ok, text) = ping_df(p1, p2, 1480 - 27);
    assert!(
        !ok && text.contains("message too long"),
        "a packet over the MTU with DF set was not refused with an error:\n{text}"
    );

    // Status, readiness and metrics report IPIP as available and in use.
    let status = lab.node_status("n1").unwrap();
    assert!(
        status.contains("IPIP: wrentunl0 up, MTU 1480, 1 route(s)"),
        "{status}"
    );
    assert_eq!(agent_http(&n1.ns, "/readyz").0, 200);
    let (_, metrics) = agent_http(&n1.ns, "/metrics");
    assert!(
        metrics.contains("wren_tunnel_available{type=\"ipip\"} 1"),
        "{metrics}"
    );
    lab.down().unwrap();
}

/// IPIP in always mode encapsulates between nodes on one subnet. Then the pool's
/// encapsulation changes under running pods, to VXLAN and back: they keep reaching each other,
/// and the routes and devices follow.
#[test]
#[ignore = "needs a kernel with IPIP: runs inside the VM (ipip_on_debian_6_1)"]
fn ipip_always_and_a_pool_switched_to_vxlan_and_back_with_pods_running() {
    assert!(lab::require_lab(false) && prereq::require_command("tcpdump"));
    let lab = lab_up('a', 2, Encap::Ipip, 1, 1);
    wait_full_matrix(&lab);
    let n1 = lab.node("n1").unwrap().clone();
    let n2_ip = lab.node("n2").unwrap().ip().to_owned();
    let through_ipip = format!("via {n2_ip} dev wrentunl0");
    let routes = lab.routes("n1").unwrap();
    assert!(routes.contains(&through_ipip), "{routes}");
    let packets = ipip_packets_during(&n1.ns, "eth0", || ping_ok(&lab, "n1", "n2"));
    assert_pings_wrapped(&packets, n1.ip(), &n2_ip, "n1's underlay");

    let set = |encapsulation| {
        update_pool(&lab, |pool| {
            pool.encapsulation = encapsulation;
            pool.encapsulation_mode = EncapsulationMode::Always;
        })
    };
    let device_exists = |device: &str| run_in_ns(&n1.ns, "ip", &["link", "show", device]).0;
    let routes_contain = |text: &str| lab.routes("n1").unwrap_or_default().contains(text);
    set(Encapsulation::Vxlan);
    wait_for("n1's routes through wren.vxlan", || {
        routes_contain("dev wren.vxlan")
    });
    wait_for("wrentunl0 to go", || !device_exists(IPIP_DEVICE));
    wait_full_matrix(&lab);

    set(Encapsulation::Ipip);
    wait_for("n1's routes through wrentunl0", || {
        routes_contain(&through_ipip)
    });
    wait_for("wren.vxlan to go", || !device_exists("wren.vxlan"));
    wait_full_matrix(&lab);
    lab.down().unwrap();
}
