//! Encapsulation, MTU and outgoing NAT end to end, on labs of real agents (etcd, BGP, pods
//! through the CNI plugin) in network namespaces: two subnets joined by a router that knows no
//! pod routes, tcpdump on the nodes' underlay, and an "outside" namespace beyond every pool.
//! IPIP, which needs a kernel with the `ipip` module, is tested in `kernel_matrix.rs`.

mod agent_rig;
mod lab_rig;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use wren_tests::lab::{self, Encap, Lab};
use wren_tests::netns::{NetNs, command_in, run_in};
use wren_tests::prereq;

use lab_rig::{
    DEADLINE, agent_http, lab_up, mtu_of, packets_during, ping_df, pod_on, run_in_ns, update_pool,
    wait_for, wait_full_matrix,
};

/// The VXLAN packets tcpdump sees on `node`'s underlay while `traffic` runs.
fn vxlan_packets_during(lab: &Lab, node: &str, traffic: impl FnOnce()) -> Vec<String> {
    let ns = &lab.node(node).unwrap().ns;
    packets_during(ns, "eth0", &["udp", "port", "4789"], traffic)
        .into_iter()
        .filter(|l| l.contains(".4789:"))
        .collect()
}

#[test]
fn cross_subnet_vxlan_encapsulates_only_between_subnets_and_large_packets_cross() {
    if !lab::require_lab(false) || !prereq::require_command("tcpdump") {
        return;
    }
    let lab = lab_up('x', 3, Encap::Vxlan, 2, 2);
    wait_full_matrix(&lab);
    // n1 and n3 share subnet 1; n2 is on subnet 2.
    let (p1, p2, p3) = (pod_on(&lab, "n1"), pod_on(&lab, "n2"), pod_on(&lab, "n3"));

    let same = vxlan_packets_during(&lab, "n1", || {
        assert!(lab::ping(&p1.ns, &p3.ip.to_string(), 3));
    });
    assert!(
        same.is_empty(),
        "same-subnet traffic was encapsulated:\n{}",
        same.join("\n")
    );
    let across = vxlan_packets_during(&lab, "n1", || {
        assert!(lab::ping(&p1.ns, &p2.ip.to_string(), 3));
    });
    let n2_ip = lab.node("n2").unwrap().ip().to_owned();
    assert!(
        across
            .iter()
            .any(|l| l.contains(&format!("> {n2_ip}.4789:")) && l.contains("VXLAN")),
        "no VXLAN packets toward n2 ({n2_ip}):\n{}",
        across.join("\n")
    );

    // Pods and the tunnel agree on the MTU: the underlay's 1500 less VXLAN's 50.
    let n1 = &lab.node("n1").unwrap().ns;
    assert_eq!(mtu_of(n1, "wren.vxlan"), 1450);
    let pod_mtu = mtu_of(&p1.ns, "eth0");
    assert_eq!(pod_mtu, 1450);
    // The largest ICMP payload that fits: MTU less 20 (IPv4) and 8 (ICMP).
    let (ok, text) = ping_df(p1, p2, pod_mtu - 28);
    assert!(ok, "a full-size packet did not cross VXLAN:\n{text}");
    let (ok, text) = ping_df(p1, p2, pod_mtu - 27);
    assert!(
        !ok && text.contains("message too long"),
        "a packet over the MTU with DF set was not refused with an error:\n{text}"
    );
    lab.down().unwrap();
}

#[test]
fn without_encapsulation_pods_across_subnets_cannot_reach_each_other() {
    if !lab::require_lab(false) {
        return;
    }
    let lab = lab_up('o', 3, Encap::None, 2, 2);
    let (p1, p2, p3) = (pod_on(&lab, "n1"), pod_on(&lab, "n2"), pod_on(&lab, "n3"));
    // Same subnet: plain routes work.
    wait_for("same-subnet pods to reach each other", || {
        lab::ping(&p1.ns, &p3.ip.to_string(), 1) && lab::ping(&p3.ns, &p1.ip.to_string(), 1)
    });
    // Across the router, which knows no pod routes: nothing gets through.
    assert!(!lab::ping(&p1.ns, &p2.ip.to_string(), 2));
    assert!(!lab::ping(&p2.ns, &p3.ip.to_string(), 2));
    let routes = lab.routes("n1").unwrap();
    assert!(!routes.contains("wren.vxlan"), "{routes}");
    lab.down().unwrap();
}

/// Sets `natOutgoing` on the lab's pool.
fn set_nat_outgoing(lab: &Lab, on: bool) {
    update_pool(lab, |pool| pool.nat_outgoing = on);
}

/// Accepts one TCP connection on `addr` inside namespace `ns` while `connect` runs, and
/// returns the address it came from.
fn peer_of_one_connection(ns: &str, addr: SocketAddr, connect: impl FnOnce() + Send) -> IpAddr {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let listener = scope.spawn(|| {
            run_in(ns, move || {
                let listener = TcpListener::bind(addr).unwrap();
                listener.set_nonblocking(true).unwrap();
                bound_tx.send(()).unwrap();
                let start = Instant::now();
                loop {
                    match listener.accept() {
                        Ok((_, peer)) => return peer.ip(),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            assert!(start.elapsed() < DEADLINE, "no connection to {addr}");
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("accept on {addr}: {e}"),
                    }
                }
            })
            .unwrap()
        });
        bound_rx.recv().unwrap();
        connect();
        listener.join().unwrap()
    })
}

/// Opens a TCP connection from namespace `ns` to `addr` (bash's /dev/tcp), retrying briefly.
fn connect_from(ns: &str, addr: SocketAddr) {
    let script = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
    wait_for(&format!("a connection from {ns} to {addr}"), || {
        command_in(ns, "bash")
            .args(["-c", &script])
            .status()
            .is_ok_and(|s| s.success())
    });
}

#[test]
fn nat_outgoing_masquerades_toward_the_outside_and_never_between_pods() {
    if !lab::require_lab(false) || !prereq::require_command("nft") {
        return;
    }
    let lab = lab_up('n', 2, Encap::None, 1, 2);
    wait_full_matrix(&lab);
    // An outside host on the fabric, in no pool.
    let outside = NetNs::new("outside").unwrap();
    let fabric = lab.state().fabric_ns.clone();
    outside
        .ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "vout", "netns", &fabric,
        ])
        .unwrap();
    outside.configure("eth0", Some("10.0.0.250/24")).unwrap();
    for args in ["link set vout master br0", "link set vout up"] {
        let args: Vec<&str> = args.split_whitespace().collect();
        let ok = Command::new("ip")
            .args(["-n", &fabric])
            .args(&args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip -n {fabric} {args:?} failed");
    }

    let n1 = lab.node("n1").unwrap();
    let node_ip: IpAddr = n1.ip().parse().unwrap();
    set_nat_outgoing(&lab, true);
    wait_for("wren's NAT table on n1", || {
        run_in_ns(&n1.ns, "nft", &["list", "table", "ip", "wren"]).0
    });
    let (p1, p2) = (pod_on(&lab, "n1"), pod_on(&lab, "n2"));
    let to_outside: SocketAddr = "10.0.0.250:7001".parse().unwrap();
    let seen = peer_of_one_connection(outside.name(), to_outside, || {
        connect_from(&p1.ns, to_outside)
    });
    assert_eq!(seen, node_ip, "the outside saw the pod's own address");

    let to_pod = SocketAddr::new(IpAddr::V4(p2.ip), 7002);
    let seen = peer_of_one_connection(&p2.ns, to_pod, || connect_from(&p1.ns, to_pod));
    assert_eq!(
        seen,
        IpAddr::V4(p1.ip),
        "pod-to-pod traffic was masqueraded"
    );

    // Off again: wren's table goes.
    set_nat_outgoing(&lab, false);
    wait_for("wren's NAT table to go", || {
        !run_in_ns(&n1.ns, "nft", &["list", "table", "ip", "wren"]).0
    });
    drop(outside);
    lab.down().unwrap();
}

#[test]
fn an_ipip_pool_is_reported_plainly_where_the_kernel_cannot_carry_it() {
    if !lab::require_lab(false) || !prereq::require_command("curl") {
        return;
    }
    let lab = lab_up('i', 1, Encap::None, 1, 2);
    lab.wren_cli(&[
        "pool",
        "add",
        "tunnelled",
        "--cidr",
        "10.66.0.0/16",
        "--encap",
        "ipip",
    ])
    .unwrap();
    let n1 = lab.node("n1").unwrap().ns.clone();
    if prereq::have_kernel_module("ipip") {
        wait_for("wrentunl0", || {
            run_in_ns(&n1, "ip", &["link", "show", "wrentunl0"]).0
        });
        assert_eq!(agent_http(&n1, "/readyz").0, 200);
        lab.down().unwrap();
        return;
    }
    // No IPIP here: /readyz, the status and the metrics all say so.
    wait_for("/readyz to report the missing IPIP", || {
        let (code, body) = agent_http(&n1, "/readyz");
        code == 503 && body.contains("a pool needs IPIP, which this kernel lacks")
    });
    let status = lab.status().unwrap();
    assert!(
        status.contains("IPIP: NEEDED BY A POOL BUT UNAVAILABLE: this kernel has no IPIP support"),
        "{status}"
    );
    let (_, metrics) = agent_http(&n1, "/metrics");
    assert!(
        metrics.contains("wren_tunnel_available{type=\"ipip\"} 0"),
        "{metrics}"
    );
    // Removing the pool makes the node ready again.
    lab.wren_cli(&["pool", "rm", "tunnelled"]).unwrap();
    wait_for("/readyz to recover", || agent_http(&n1, "/readyz").0 == 200);
    lab.down().unwrap();
}
