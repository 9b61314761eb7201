//! What the conntrack lookup costs per packet: the forwarding program's mean run time
//! (`BPF_PROG_TEST_RUN`, the kernel's own clock, helpers and kfuncs included) on a pod's TCP
//! packet, which the program looks up in conntrack before forwarding, against an ICMP echo
//! packet on the very same path, which it forwards without the lookup.
//!
//! Both packets go from a pod (10.90.0.2, on `wp1`) to a remote block routed through the
//! node's uplink with a resolved neighbour: pod and pool look-ups, the FIB, the header
//! rewrite and the redirect are the same; the difference between the two is the lookup and
//! the release of what it found (nothing, for a flow conntrack never saw: the fast path's
//! normal case).
//!
//! Run with `cargo bench -p wren-fastpath --bench verdict_cost` as root on a kernel with tcx.
//! `WREN_BENCH_ROUNDS` sets the rounds (default 3) of 1,000,000 runs per packet.

use std::net::Ipv4Addr;

use wren_fastpath::FastPath;
use wren_tests::bench::{BenchSettings, invoked_as_bench, machine, median};
use wren_tests::netns::{NetNs, node_with_uplink};
use wren_tests::prereq;

const POD: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 90, 1, 5);
const RUNS: u32 = 1_000_000;
const TCX_REDIRECT: i32 = 7;

/// Ethernet + IPv4 (no options) + a transport header of `header` bytes.
fn frame(protocol: u8, header: &[u8]) -> Vec<u8> {
    let mut f = vec![0xaa; 6];
    f.extend_from_slice(&[0xbb; 6]);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + header.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
    f.extend_from_slice(&POD.octets());
    f.extend_from_slice(&REMOTE_POD.octets());
    f.extend_from_slice(header);
    f
}

/// The device's index in `ns` (`ip netns exec` mounts that namespace's sysfs).
fn ifindex(ns: &NetNs, name: &str) -> u32 {
    let text = ns
        .exec("cat", &[format!("/sys/class/net/{name}/ifindex")])
        .expect("ifindex");
    text.trim().parse().expect("a number")
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !prereq::require_root() || !prereq::kernel_has_tcx() {
        return;
    }
    let settings = BenchSettings::from_env();
    let (node, uplink) = node_with_uplink("fp-cost").expect("namespaces");
    let pod = NetNs::new("fp-cost-pod").expect("pod namespace");
    node.veth("wp1", None, &pod, "eth0", Some("10.90.0.2/32"))
        .expect("pod veth");
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .expect("forwarding");
    node.ip(&["route", "add", "10.90.0.2/32", "dev", "wp1"])
        .expect("pod route");
    node.ip(&["route", "add", "10.90.1.0/26", "via", "192.0.2.254"])
        .expect("remote block");
    let gateway_mac = uplink.ip(&["-br", "link", "show", "eth0"]).expect("mac");
    let gateway_mac = gateway_mac.split_whitespace().nth(2).unwrap_or_default();
    node.ip(&[
        "neigh",
        "replace",
        "192.0.2.254",
        "lladdr",
        gateway_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .expect("neighbour");
    let wp1 = ifindex(&node, "wp1");

    // TCP: source and destination ports, sequence numbers, data offset 5.
    let mut tcp = vec![
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff,
    ];
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    let echo = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let (tcp, echo) = (frame(6, &tcp), frame(1, &echo));

    let (with_lookup, without) = node
        .enter(move || {
            let mut fast = FastPath::load().expect("loading the program");
            fast.set_pools(&["10.90.0.0/16".parse().unwrap()]).unwrap();
            fast.attach_pod(wp1, POD).unwrap();
            for packet in [&tcp, &echo] {
                let (verdict, _) = fast.test_run(packet, wp1).unwrap();
                assert_eq!(verdict, TCX_REDIRECT, "both packets are forwarded");
            }
            let (mut with_lookup, mut without) = (Vec::new(), Vec::new());
            for _ in 0..settings.rounds {
                let nanos =
                    |packet: &[u8]| fast.time_run(packet, wp1, RUNS).unwrap().as_nanos() as f64;
                with_lookup.push(nanos(&tcp));
                without.push(nanos(&echo));
            }
            (median(with_lookup), median(without))
        })
        .expect("entering the node");
    println!(
        "forwarding program, mean ns per packet over {RUNS} runs, median of {} rounds; {}",
        settings.rounds,
        machine()
    );
    println!("| packet | ns | anchor | anchor ns | the lookup's cost |");
    println!("|---|---|---|---|---|");
    println!(
        "| pod TCP → remote pod (conntrack lookup, not found) | {with_lookup:.0} | pod ICMP echo, same path (no lookup) | {without:.0} | {:.0} ns |",
        with_lookup - without
    );
}
