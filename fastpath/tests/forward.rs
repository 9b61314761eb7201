//! The forwarding program on a real kernel, in namespaces this test creates.
//!
//! A node namespace with a pod (veth `wp1` ↔ `eth0` in the pod's namespace, 10.90.0.2) and
//! an uplink (`up0`, 192.0.2.1/24) to a "remote" namespace that owns 10.90.1.5 and routes
//! the pod's block back. Pools: 10.90.0.0/16.
//!
//! - `verdicts`: `BPF_PROG_TEST_RUN` on crafted packets: what is forwarded (and how the
//!   headers come out) and what is left to the stack;
//! - `live_traffic`: the program attached, pings crossing it, the counters moving, a spoofed
//!   source still dropped, and the pod still reachable once the program is gone.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use wren_fastpath::{Counters, FastPath};
use wren_tests::netns::NetNs;
use wren_tests::prereq;

const POD: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 90, 1, 5);
const POD_MAC: &str = "02:00:00:00:00:02";
const GATEWAY_MAC: &str = "02:00:00:00:00:fe";
const TC_ACT_REDIRECT: i32 = 7;
const TCX_NEXT: i32 = -1;

struct Rig {
    // Field order is drop order: the node (and its links) go first.
    node: NetNs,
    pod: NetNs,
    remote: NetNs,
}

fn rig() -> std::io::Result<Rig> {
    let node = NetNs::new("fp-node")?;
    let pod = NetNs::new("fp-pod")?;
    let remote = NetNs::new("fp-remote")?;
    node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    node.exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=1"])?;
    node.ip(&[
        "link",
        "add",
        "wp1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    pod.ip(&["link", "set", "eth0", "address", POD_MAC])?;
    node.configure("wp1", None)?;
    pod.configure("eth0", Some("10.90.0.2/32"))?;
    // As the agent sets a pod up: a link-local gateway and a /32 route to the pod.
    pod.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ])?;
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])?;
    let gateway_mac = node.ip(&["-br", "link", "show", "wp1"])?;
    let gateway_mac = gateway_mac.split_whitespace().nth(2).unwrap_or_default();
    pod.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        gateway_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    node.exec("sysctl", &["-qw", "net.ipv4.conf.wp1.rp_filter=1"])?;
    node.ip(&["route", "add", "10.90.0.2/32", "dev", "wp1"])?;
    node.veth(
        "up0",
        Some("192.0.2.1/24"),
        &remote,
        "eth0",
        Some("192.0.2.2/24"),
    )?;
    remote.ip(&["link", "set", "eth0", "address", GATEWAY_MAC])?;
    remote.ip(&["addr", "add", "10.90.1.5/32", "dev", "lo"])?;
    remote.ip(&["route", "add", "10.90.0.0/26", "via", "192.0.2.1"])?;
    node.ip(&["route", "add", "10.90.1.0/26", "via", "192.0.2.2"])?;
    // A block whose next hop never answers ARP.
    node.ip(&["route", "add", "10.90.2.0/26", "via", "192.0.2.3"])?;
    Ok(Rig { node, pod, remote })
}

fn mac(text: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (slot, part) in out.iter_mut().zip(text.split(':')) {
        *slot = u8::from_str_radix(part, 16).unwrap();
    }
    out
}

fn link_mac(ns: &NetNs, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-br", "link", "show", ifname]).unwrap();
    mac(out.split_whitespace().nth(2).unwrap())
}

fn ifindex(ns: &NetNs, ifname: &str) -> u32 {
    let text = ns
        .exec("cat", &[format!("/sys/class/net/{ifname}/ifindex")])
        .unwrap();
    text.trim().parse().unwrap()
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + 8-byte UDP frame with a valid IP checksum.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xaa; 6]);
    f.extend_from_slice(&[0xbb; 6]);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0x12, 0x34, 0x40, 0, ttl, 17, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    f
}

fn pools() -> Vec<Ipv4Net> {
    vec!["10.90.0.0/16".parse().unwrap()]
}

fn delta(after: Counters, before: Counters) -> (u64, u64) {
    (
        after.forwarded - before.forwarded,
        after.to_stack - before.to_stack,
    )
}

/// Root, and a kernel that can run the program (tcx: 6.6 or later). On such a kernel the
/// program must load: a refusal there is a defect, not a skip.
fn prerequisites() -> bool {
    prereq::require_root()
        && (prereq::kernel_has_tcx()
            || prereq::kernel_limitation(
                "this kernel has no tcx (6.6 or later), so the fast path cannot be tested here",
            ))
}

#[test]
fn verdicts() {
    if !prerequisites() {
        return;
    }
    let rig = rig().expect("building the namespaces");
    // The gateway's and the pod's neighbour entries, as a resolved ARP would leave them.
    rig.node
        .ip(&[
            "neigh",
            "replace",
            "192.0.2.2",
            "lladdr",
            GATEWAY_MAC,
            "dev",
            "up0",
            "nud",
            "permanent",
        ])
        .unwrap();
    rig.node
        .ip(&[
            "neigh",
            "replace",
            "10.90.0.2",
            "lladdr",
            POD_MAC,
            "dev",
            "wp1",
            "nud",
            "permanent",
        ])
        .unwrap();
    let wp1 = ifindex(&rig.node, "wp1");
    let up0 = ifindex(&rig.node, "up0");
    let wp1_mac = link_mac(&rig.node, "wp1");
    let up0_mac = link_mac(&rig.node, "up0");

    rig.node
        .enter(move || {
            let mut fast = FastPath::load().expect("loading the program");
            fast.set_pools(&pools()).unwrap();
            fast.attach_pod(wp1, POD).unwrap();
            // The pod's attachment is not needed for a test run, but the pod table is.
            let run =
                |fast: &FastPath, packet: &[u8], ifindex| fast.test_run(packet, ifindex).unwrap();
            let start = fast.counters().unwrap();

            // Pod → remote pod: out of the uplink, headers rewritten.
            let (verdict, out) = run(&fast, &frame(POD, REMOTE_POD, 64), wp1);
            assert_eq!(verdict, TC_ACT_REDIRECT, "pod → remote pod is forwarded");
            assert_eq!(
                &out[0..6],
                &mac(GATEWAY_MAC),
                "destination MAC = the next hop's"
            );
            assert_eq!(&out[6..12], &up0_mac, "source MAC = the uplink's");
            assert_eq!(out[22], 63, "TTL decremented");
            assert_eq!(checksum(&out[14..34]), 0, "IP checksum still valid");
            assert_eq!(delta(fast.counters().unwrap(), start), (1, 0));

            // Remote pod → pod, arriving on the uplink: into the pod.
            let (verdict, out) = run(&fast, &frame(REMOTE_POD, POD, 1 + 1), up0);
            assert_eq!(
                verdict, TC_ACT_REDIRECT,
                "remote pod → local pod is forwarded"
            );
            assert_eq!(&out[0..6], &mac(POD_MAC), "destination MAC = the pod's");
            assert_eq!(
                &out[6..12],
                &wp1_mac,
                "source MAC = the host side of the veth"
            );
            assert_eq!(out[22], 1);
            assert_eq!(checksum(&out[14..34]), 0);
            assert_eq!(delta(fast.counters().unwrap(), start), (2, 0));

            // Left to the stack, counted: a spoofed source, a TTL about to expire, a next
            // hop without a neighbour entry, uplink to uplink.
            let spoofed = Ipv4Addr::new(10, 90, 0, 9);
            for (what, packet, ifindex) in [
                ("spoofed source", frame(spoofed, REMOTE_POD, 64), wp1),
                ("TTL 1", frame(POD, REMOTE_POD, 1), wp1),
                (
                    "unresolved next hop",
                    frame(POD, Ipv4Addr::new(10, 90, 2, 7), 64),
                    wp1,
                ),
                (
                    "uplink to uplink",
                    frame(REMOTE_POD, Ipv4Addr::new(10, 90, 1, 9), 64),
                    up0,
                ),
            ] {
                let before = fast.counters().unwrap();
                let (verdict, out) = run(&fast, &packet, ifindex);
                assert_eq!(verdict, TCX_NEXT, "{what}: left to the stack");
                assert_eq!(out, packet, "{what}: packet untouched");
                assert_eq!(delta(fast.counters().unwrap(), before), (0, 1), "{what}");
            }

            // Not pool-to-pool, not counted: out of the pools (outgoing NAT), into a pod
            // from outside, and not IPv4.
            let outside = Ipv4Addr::new(198, 51, 100, 7);
            let mut arp = frame(POD, REMOTE_POD, 64);
            arp[12..14].copy_from_slice(&[0x08, 0x06]);
            let mut options = frame(POD, REMOTE_POD, 64);
            options[14] = 0x46;
            for (what, packet, ifindex) in [
                ("to outside the pools", frame(POD, outside, 64), wp1),
                ("from outside the pools", frame(outside, POD, 64), up0),
                ("ARP", arp, wp1),
                ("IP options", options, wp1),
            ] {
                let before = fast.counters().unwrap();
                let (verdict, _) = run(&fast, &packet, ifindex);
                assert_eq!(verdict, TCX_NEXT, "{what}: left to the stack");
                assert_eq!(delta(fast.counters().unwrap(), before), (0, 0), "{what}");
            }

            // A pool removed: its traffic is no longer forwarded.
            fast.set_pools(&[]).unwrap();
            let (verdict, _) = run(&fast, &frame(POD, REMOTE_POD, 64), wp1);
            assert_eq!(verdict, TCX_NEXT, "no pools, nothing forwarded");
            // The pod's entry goes with its detachment.
            fast.set_pools(&pools()).unwrap();
            fast.detach(wp1).unwrap();
            let (verdict, _) = run(&fast, &frame(REMOTE_POD, POD, 64), up0);
            assert_eq!(verdict, TCX_NEXT, "a detached pod is the stack's again");
        })
        .unwrap();
    drop(rig);
}

fn ping(ns: &NetNs, args: &[&str]) -> Result<String, std::io::Error> {
    let mut all = vec!["-c", "3", "-i", "0.2", "-W", "1"];
    all.extend_from_slice(args);
    ns.exec("ping", &all)
}

#[test]
fn live_traffic() {
    if !prerequisites() || !prereq::require_command("ping") {
        return;
    }
    let rig = rig().expect("building the namespaces");
    let wp1 = ifindex(&rig.node, "wp1");
    let up0 = ifindex(&rig.node, "up0");
    let node = rig.node.name().to_owned();
    // The program lives on a thread inside the node; the test drives it over channels.
    let (ask, asked) = std::sync::mpsc::channel::<&'static str>();
    let (answer, answers) = std::sync::mpsc::channel::<Counters>();
    let worker = std::thread::spawn(move || {
        wren_tests::netns::run_in(&node, move || {
            let mut fast = FastPath::load().expect("loading the program");
            fast.set_pools(&pools()).unwrap();
            fast.attach_pod(wp1, POD).unwrap();
            fast.attach_uplink(up0).unwrap();
            assert_eq!(fast.attached(), (1, 1));
            for request in asked {
                if request == "unload" {
                    break;
                }
                answer.send(fast.counters().unwrap()).unwrap();
            }
        })
        .unwrap();
    });
    let counters = || {
        ask.send("counters").unwrap();
        answers.recv().unwrap()
    };

    let before = counters();
    let out = ping(&rig.pod, &["10.90.1.5"]).expect("pod reaches the remote pod");
    assert!(out.contains("ttl=63"), "one routed hop each way: {out}");
    let (forwarded, _) = delta(counters(), before);
    // Six packets; the very first may meet unresolved neighbours and take the stack.
    assert!(
        forwarded >= 4,
        "pings took the fast path: {forwarded} forwarded"
    );

    // A second address on the pod is not the pod's own: the stack's reverse-path filter
    // drops it, as without the program.
    rig.pod
        .ip(&["addr", "add", "10.90.0.9/32", "dev", "eth0"])
        .unwrap();
    let before = counters();
    assert!(
        ping(&rig.pod, &["-I", "10.90.0.9", "10.90.1.5"]).is_err(),
        "a spoofed source gets nowhere"
    );
    let (forwarded, to_stack) = delta(counters(), before);
    assert_eq!(forwarded, 0, "nothing spoofed was forwarded");
    assert!(
        to_stack >= 3,
        "spoofed packets went to the stack: {to_stack}"
    );

    ask.send("unload").unwrap();
    worker.join().unwrap();
    ping(&rig.pod, &["10.90.1.5"]).expect("without the program the stack still routes");
    let _ = &rig.remote;
}
