//! The forwarding program on a real kernel, in namespaces this test creates.
//!
//! A node namespace with a pod (veth `wp1` ↔ `eth0` in the pod's namespace, 10.90.0.2) and
//! an uplink (`up0`, 192.0.2.1/24) to a "remote" namespace that owns 10.90.1.5 and routes
//! the pod's block back. Both ends also have a kernel VXLAN device `vx0` (VNI 4096, port
//! 4789, tunnel addresses 10.91.0.1 and 10.91.0.2), set up as the agent sets `wren.vxlan`
//! up; the remote's 10.90.3.5 is reached through it. Pools: 10.90.0.0/16.
//!
//! - `verdicts`: `BPF_PROG_TEST_RUN` on crafted packets: what is forwarded (and how the
//!   headers come out) and what is left to the stack;
//! - `vxlan_frames`: the frame the program builds for the tunnel, field by field;
//! - `live_traffic`: the program attached, pings crossing it, the counters moving, a spoofed
//!   source still dropped, and the pod still reachable once the program is gone;
//! - `live_vxlan`: pings through the tunnel encapsulated by the program and decapsulated by
//!   the remote's kernel device, full-size packets included.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use wren_fastpath::{Counters, FastPath, VxlanConfig};
use wren_tests::netns::NetNs;
use wren_tests::prereq;

const POD: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 90, 1, 5);
/// Reached through the tunnel.
const TUNNEL_POD: Ipv4Addr = Ipv4Addr::new(10, 90, 3, 5);
const NODE_VTEP_MAC: &str = "02:00:00:00:01:01";
const REMOTE_VTEP_MAC: &str = "02:00:00:00:01:02";
const TUNNEL_MTU: &str = "1450";
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
    permanent_neighbour(&pod, "169.254.1.1", gateway_mac, "eth0")?;
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
    // The tunnel, both ends as the agent builds them: no learning, permanent neighbour and
    // forwarding entries, routes `via <tunnel address> onlink`.
    for (ns, local, parent, mac, address, peer_mac, peer_address, peer_node) in [
        (
            &node,
            "192.0.2.1",
            "up0",
            NODE_VTEP_MAC,
            "10.91.0.1/32",
            REMOTE_VTEP_MAC,
            "10.91.0.2",
            "192.0.2.2",
        ),
        (
            &remote,
            "192.0.2.2",
            "eth0",
            REMOTE_VTEP_MAC,
            "10.91.0.2/32",
            NODE_VTEP_MAC,
            "10.91.0.1",
            "192.0.2.1",
        ),
    ] {
        ns.ip(&[
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "4096",
            "dstport",
            "4789",
            "local",
            local,
            "dev",
            parent,
            "nolearning",
        ])?;
        ns.ip(&["link", "set", "vx0", "address", mac, "mtu", TUNNEL_MTU])?;
        ns.configure("vx0", Some(address))?;
        permanent_neighbour(ns, peer_address, peer_mac, "vx0")?;
        ns.exec(
            "bridge",
            &[
                "fdb",
                "append",
                peer_mac,
                "dev",
                "vx0",
                "dst",
                peer_node,
                "self",
                "permanent",
            ],
        )?;
    }
    pod.ip(&["link", "set", "eth0", "mtu", TUNNEL_MTU])?;
    node.ip(&[
        "route",
        "add",
        "10.90.3.0/26",
        "via",
        "10.91.0.2",
        "dev",
        "vx0",
        "onlink",
    ])?;
    remote.ip(&["addr", "add", "10.90.3.5/32", "dev", "lo"])?;
    // Replies from the tunnelled address go back through the tunnel.
    remote.ip(&["rule", "add", "from", "10.90.3.5", "table", "100"])?;
    remote.ip(&[
        "route",
        "add",
        "10.90.0.0/26",
        "via",
        "10.91.0.1",
        "dev",
        "vx0",
        "onlink",
        "table",
        "100",
    ])?;
    Ok(Rig { node, pod, remote })
}

/// A neighbour entry as a resolved ARP (or the agent, for tunnels) leaves it.
fn permanent_neighbour(ns: &NetNs, address: &str, mac: &str, dev: &str) -> std::io::Result<String> {
    ns.ip(&[
        "neigh",
        "replace",
        address,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
}

/// The program loaded and attached inside a namespace, on a thread of its own, for tests
/// that send real traffic; it unloads when dropped.
struct LiveProgram {
    ask: Option<std::sync::mpsc::Sender<()>>,
    answers: std::sync::mpsc::Receiver<Counters>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl LiveProgram {
    fn start(ns: &NetNs, setup: impl FnOnce(&mut FastPath) + Send + 'static) -> Self {
        let node = ns.name().to_owned();
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (answer, answers) = std::sync::mpsc::channel::<Counters>();
        let worker = std::thread::spawn(move || {
            wren_tests::netns::run_in(&node, move || {
                let mut fast = FastPath::load().expect("loading the program");
                setup(&mut fast);
                for () in asked {
                    answer.send(fast.counters().unwrap()).unwrap();
                }
            })
            .unwrap();
        });
        Self {
            ask: Some(ask),
            answers,
            worker: Some(worker),
        }
    }

    fn counters(&self) -> Counters {
        self.ask.as_ref().unwrap().send(()).unwrap();
        self.answers.recv().unwrap()
    }
}

impl Drop for LiveProgram {
    fn drop(&mut self) {
        self.ask.take();
        if let Some(worker) = self.worker.take() {
            let joined = worker.join();
            if !std::thread::panicking() {
                joined.unwrap();
            }
        }
    }
}

/// The program's VXLAN settings for the rig's node.
fn vxlan_config(node: &NetNs) -> VxlanConfig {
    VxlanConfig {
        device: ifindex(node, "vx0"),
        parent: ifindex(node, "up0"),
        local: Ipv4Addr::new(192, 0, 2, 1),
        vni: 4096,
        port: 4789,
        source_ports: (32768, 60999),
        ttl: 64,
    }
}

fn vxlan_peers() -> Vec<([u8; 6], Ipv4Addr)> {
    vec![(mac(REMOTE_VTEP_MAC), Ipv4Addr::new(192, 0, 2, 2))]
}

/// Bytes `at..at + 2` as a big-endian number.
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
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

/// An Ethernet + IPv4 frame carrying `protocol` with a transport header of `header` bytes
/// (TCP: its data offset says so) and `payload` bytes after it.
fn transport_frame(dst: Ipv4Addr, protocol: u8, header: usize, payload: usize) -> Vec<u8> {
    let mut f = frame(POD, dst, 64);
    f.truncate(34);
    let total = (20 + header + payload) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[23] = protocol;
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    let mut transport = vec![0u8; header];
    if protocol == 6 {
        transport[12] = ((header / 4) as u8) << 4;
    }
    f.extend_from_slice(&transport);
    f.resize(f.len() + payload, 0x5a);
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
    permanent_neighbour(&rig.node, "192.0.2.2", GATEWAY_MAC, "up0").unwrap();
    permanent_neighbour(&rig.node, "10.90.0.2", POD_MAC, "wp1").unwrap();
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

            // GSO packets: forwarded while each segment (IPv4 + transport header + gso_size)
            // fits the egress device's MTU, else left to the stack (which segments them or
            // answers "fragmentation needed"). The uplink has 1500, the tunnel 1450.
            let tunnelled = TUNNEL_POD;
            for (what, dst, protocol, header, gso_size, fits) in [
                ("TCP, full segments", REMOTE_POD, 6, 32, 1448, true),
                ("TCP, one byte over", REMOTE_POD, 6, 32, 1449, false),
                ("TCP into the tunnel", tunnelled, 6, 32, 1398, true),
                ("TCP over the tunnel's MTU", tunnelled, 6, 32, 1399, false),
                ("UDP, full datagrams", REMOTE_POD, 17, 8, 1472, true),
                ("UDP, one byte over", REMOTE_POD, 17, 8, 1473, false),
                ("neither TCP nor UDP", REMOTE_POD, 47, 4, 1000, false),
            ] {
                let packet = transport_frame(dst, protocol, header, 2 * gso_size);
                let before = fast.counters().unwrap();
                let (verdict, out) = fast.test_run_gso(&packet, wp1, gso_size as u32, 2).unwrap();
                let counted = delta(fast.counters().unwrap(), before);
                if fits {
                    assert_eq!((verdict, counted), (TC_ACT_REDIRECT, (1, 0)), "{what}");
                } else {
                    assert_eq!((verdict, counted), (TCX_NEXT, (0, 1)), "{what}");
                    assert_eq!(out, packet, "{what}: packet untouched");
                }
            }

            // A policed endpoint (a pod network policy isolates): every packet from or to
            // it is left to the stack, counted, in both directions; taken out of the map,
            // it is forwarded again.
            fast.set_policed(&[POD]).unwrap();
            for (what, packet, ifindex) in [
                ("from a policed pod", frame(POD, REMOTE_POD, 64), wp1),
                ("to a policed pod", frame(REMOTE_POD, POD, 64), up0),
            ] {
                let before = fast.counters().unwrap();
                let (verdict, out) = run(&fast, &packet, ifindex);
                assert_eq!(verdict, TCX_NEXT, "{what}: left to the stack");
                assert_eq!(out, packet, "{what}: packet untouched");
                assert_eq!(delta(fast.counters().unwrap(), before), (0, 1), "{what}");
            }
            // With an epoch in force, a policed pod's TCP segment of a connection conntrack
            // does not know (no rule ever judged it) still goes to the stack; the same
            // segment between unpoliced pods is the fast path's own and forwarded.
            fast.set_policy_mark(wren_fastpath::PolicyMark {
                epoch: 0x0002_0000,
                mask: 0xffff_0000,
                reset: 0x0001_0000,
                reset_timeout_ms: 10_000,
            })
            .unwrap();
            let segment = transport_frame(REMOTE_POD, 6, 20, 100);
            // The same segment with RST: no connection to carry it in either.
            let mut reset = segment.clone();
            reset[14 + 20 + 13] = 0x04;
            for (what, segment) in [("segment", &segment), ("reset", &reset)] {
                let before = fast.counters().unwrap();
                let (verdict, out) = run(&fast, segment, wp1);
                assert_eq!(
                    verdict, TCX_NEXT,
                    "an unjudged policed connection's {what}: the stack's"
                );
                assert_eq!(&out, segment, "policed {what} untouched");
                let after = fast.counters().unwrap();
                assert_eq!(delta(after, before), (0, 1), "{what}");
                assert_eq!(after.policed_carried, before.policed_carried, "{what}");
            }
            fast.set_policed(&[]).unwrap();
            let (verdict, _) = run(&fast, &segment, wp1);
            assert_eq!(verdict, TC_ACT_REDIRECT, "unpoliced: forwarded");
            fast.set_policy_mark(wren_fastpath::PolicyMark::default())
                .unwrap();

            fast.set_policed(&[REMOTE_POD]).unwrap();
            let (verdict, _) = run(&fast, &frame(POD, REMOTE_POD, 64), wp1);
            assert_eq!(verdict, TCX_NEXT, "to a policed address: left to the stack");
            fast.set_policed(&[]).unwrap();
            let (verdict, _) = run(&fast, &frame(POD, REMOTE_POD, 64), wp1);
            assert_eq!(verdict, TC_ACT_REDIRECT, "no longer policed: forwarded");

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

#[test]
fn vxlan_frames() {
    if !prerequisites() {
        return;
    }
    let rig = rig().expect("building the namespaces");
    permanent_neighbour(&rig.node, "192.0.2.2", GATEWAY_MAC, "up0").unwrap();
    let wp1 = ifindex(&rig.node, "wp1");
    let up0_mac = link_mac(&rig.node, "up0");
    let config = vxlan_config(&rig.node);
    let node = rig.node.name().to_owned();

    rig.node
        .enter(move || {
            let mut fast = FastPath::load().expect("loading the program");
            fast.set_pools(&pools()).unwrap();
            fast.attach_pod(wp1, POD).unwrap();
            fast.set_vxlan(Some(config)).unwrap();
            fast.set_vxlan_peers(&vxlan_peers()).unwrap();
            assert_eq!(fast.vxlan_peers(), 1);
            let run = |fast: &FastPath, packet: &[u8]| fast.test_run(packet, wp1).unwrap();

            // Congestion experienced on the inner packet: ECT(0) outside, as the kernel's
            // tunnels encapsulate ECN.
            let mut packet = frame(POD, TUNNEL_POD, 64);
            packet[15] = 0x03;
            packet[24..26].copy_from_slice(&[0, 0]);
            let sum = checksum(&packet[14..34]);
            packet[24..26].copy_from_slice(&sum.to_be_bytes());

            let before = fast.counters().unwrap();
            let (verdict, out) = run(&fast, &packet);
            assert_eq!(verdict, TC_ACT_REDIRECT, "pod → tunnelled pod is forwarded");
            let after = fast.counters().unwrap();
            assert_eq!(delta(after, before), (1, 0));
            assert_eq!(after.encapsulated - before.encapsulated, 1);
            assert_eq!(out.len(), packet.len() + 50, "outer headers: 50 bytes");
            // Outer Ethernet: to the underlay next hop, from the underlay device.
            assert_eq!(&out[0..6], &mac(GATEWAY_MAC));
            assert_eq!(&out[6..12], &up0_mac);
            assert_eq!(&out[12..14], &[0x08, 0x00]);
            // Outer IPv4.
            assert_eq!(out[14], 0x45);
            assert_eq!(out[15], 0x02, "CE inside is ECT(0) outside");
            assert_eq!(usize::from(be16(&out, 16)), out.len() - 14, "total length");
            assert_eq!(be16(&out, 20), 0, "no DF, no fragment");
            assert_eq!(out[22], 64, "the device's TTL");
            assert_eq!(out[23], 17, "UDP");
            assert_eq!(checksum(&out[14..34]), 0, "outer checksum valid");
            assert_eq!(&out[26..30], &[192, 0, 2, 1], "from the node");
            assert_eq!(&out[30..34], &[192, 0, 2, 2], "to the remote node");
            // UDP.
            let source_port = be16(&out, 34);
            assert!((32768..=60999).contains(&source_port), "{source_port}");
            assert_eq!(be16(&out, 36), 4789);
            assert_eq!(usize::from(be16(&out, 38)), out.len() - 34, "UDP length");
            assert_eq!(be16(&out, 40), 0, "no UDP checksum (RFC 7348)");
            // VXLAN: I flag, VNI 4096.
            assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0]);
            // Inner Ethernet: to the remote device, from ours.
            assert_eq!(&out[50..56], &mac(REMOTE_VTEP_MAC));
            assert_eq!(&out[56..62], &mac(NODE_VTEP_MAC));
            assert_eq!(&out[62..64], &[0x08, 0x00]);
            // The inner packet, routed once.
            assert_eq!(out[64 + 8], 63, "inner TTL decremented");
            assert_eq!(checksum(&out[64..84]), 0, "inner checksum valid");
            assert_eq!(out[65], 0x03, "inner ECN untouched");
            assert_eq!(&out[78..], &packet[28..], "addresses and payload as sent");

            // One flow, one source port.
            let (_, again) = run(&fast, &packet);
            assert_eq!(be16(&again, 34), source_port);

            // A remote device the program does not know, VXLAN left to the device, an
            // unresolved underlay next hop: the device has the packet, untouched.
            fast.set_vxlan_peers(&[]).unwrap();
            let before = fast.counters().unwrap();
            let (verdict, out) = run(&fast, &packet);
            assert_eq!(
                (verdict, &out),
                (TCX_NEXT, &packet),
                "unknown remote device"
            );
            assert_eq!(delta(fast.counters().unwrap(), before), (0, 1));
            fast.set_vxlan_peers(&vxlan_peers()).unwrap();

            fast.set_vxlan(None).unwrap();
            let before = fast.counters().unwrap();
            let (verdict, out) = run(&fast, &packet);
            assert_eq!(verdict, TC_ACT_REDIRECT, "routed into the device");
            assert_eq!(out.len(), packet.len(), "not encapsulated");
            assert_eq!(&out[0..6], &mac(REMOTE_VTEP_MAC));
            let after = fast.counters().unwrap();
            assert_eq!(delta(after, before), (1, 0));
            assert_eq!(after.encapsulated, before.encapsulated);
            fast.set_vxlan(Some(config)).unwrap();

            wren_tests::netns::command_in(&node, "ip")
                .args(["neigh", "del", "192.0.2.2", "dev", "up0"])
                .status()
                .unwrap();
            let (verdict, out) = run(&fast, &packet);
            assert_eq!((verdict, &out), (TCX_NEXT, &packet), "unresolved underlay");
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
    let program = LiveProgram::start(&rig.node, move |fast| {
        fast.set_pools(&pools()).unwrap();
        fast.attach_pod(wp1, POD).unwrap();
        fast.attach_uplink(up0).unwrap();
        assert_eq!(fast.attached(), (1, 1));
    });
    let counters = || program.counters();

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

    drop(program);
    ping(&rig.pod, &["10.90.1.5"]).expect("without the program the stack still routes");
    let _ = &rig.remote;
}

#[test]
fn live_vxlan() {
    if !prerequisites() || !prereq::require_command("ping") {
        return;
    }
    let rig = rig().expect("building the namespaces");
    let wp1 = ifindex(&rig.node, "wp1");
    let up0 = ifindex(&rig.node, "up0");
    let vx0 = ifindex(&rig.node, "vx0");
    let config = vxlan_config(&rig.node);
    let program = LiveProgram::start(&rig.node, move |fast| {
        fast.set_pools(&pools()).unwrap();
        fast.attach_pod(wp1, POD).unwrap();
        fast.attach_uplink(up0).unwrap();
        fast.attach_uplink(vx0).unwrap();
        fast.set_vxlan(Some(config)).unwrap();
        fast.set_vxlan_peers(&vxlan_peers()).unwrap();
    });
    let counters = || program.counters();
    let device_sent = || -> u64 {
        let text = rig
            .node
            .exec("cat", &["/sys/class/net/vx0/statistics/tx_packets"])
            .unwrap();
        text.trim().parse().unwrap()
    };

    // Three requests leave through the tunnel, each either wrapped by the program or, while
    // the underlay neighbour is unresolved, by the device; the remote's kernel device
    // unwraps them all and replies through its own tunnel.
    let (before, sent_before) = (counters(), device_sent());
    let out =
        ping(&rig.pod, &[&TUNNEL_POD.to_string()]).expect("pod reaches the pod behind the tunnel");
    assert!(out.contains("ttl=63"), "{out}");
    let encapsulated = counters().encapsulated - before.encapsulated;
    let by_device = device_sent() - sent_before;
    assert!(encapsulated >= 2, "the program wrapped {encapsulated} of 3");
    assert_eq!(encapsulated + by_device, 3, "every request left once");

    // The largest packet the pod's MTU allows crosses wrapped (1450 + 50 = the underlay's
    // 1500); one byte more is refused in the pod, loudly.
    let before = counters();
    ping(
        &rig.pod,
        &["-M", "do", "-s", "1422", &TUNNEL_POD.to_string()],
    )
    .expect("a full-size packet crosses the tunnel");
    assert_eq!(counters().encapsulated - before.encapsulated, 3);
    let too_big = rig
        .pod
        .command("ping")
        .args(["-c", "1", "-M", "do", "-s", "1423", &TUNNEL_POD.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&too_big.stderr).to_lowercase()
        + &String::from_utf8_lossy(&too_big.stdout).to_lowercase();
    assert!(
        !too_big.status.success() && text.contains("message too long"),
        "{text}"
    );

    // A pod whose MTU is larger than the tunnel's (made before the pool took VXLAN, say),
    // talking to a peer that accepts full segments: what does not fit the tunnel goes to the
    // stack, which answers "fragmentation needed"; the pod learns the tunnel's MTU, and the
    // program wraps the rest of the stream.
    if prereq::require_command("iperf3") {
        rig.pod.ip(&["link", "set", "eth0", "mtu", "1500"]).unwrap();
        // The remote's device may only be as large as its parent allows.
        rig.remote
            .ip(&["link", "set", "eth0", "mtu", "1550"])
            .unwrap();
        rig.remote
            .ip(&["link", "set", "vx0", "mtu", "1500"])
            .unwrap();
        let server = rig
            .remote
            .spawn("iperf3 server", "iperf3", &["-s", "-1", "-B", "10.90.3.5"])
            .unwrap();
        let before = counters();
        let sent = (0..50).any(|_| {
            let ok = rig
                .pod
                .exec("iperf3", &["-c", "10.90.3.5", "-n", "8M"])
                .is_ok();
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            ok
        });
        assert!(sent, "the stream crossed: {}", server.log());
        let after = counters();
        assert!(
            after.to_stack > before.to_stack,
            "oversize packets went to the stack"
        );
        assert!(
            after.encapsulated > before.encapsulated + 10,
            "the program wrapped the stream once the pod knew the MTU: {} → {}",
            before.encapsulated,
            after.encapsulated
        );
        let route = rig.pod.ip(&["route", "get", "10.90.3.5"]).unwrap();
        assert!(
            route.contains("mtu 1450"),
            "the pod learned the tunnel's MTU: {route}"
        );
    }

    drop(program);
    ping(&rig.pod, &[&TUNNEL_POD.to_string()]).expect("without the program the device carries it");
    let _ = &rig.remote;
}
