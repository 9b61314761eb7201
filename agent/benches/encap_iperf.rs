//! Pod-to-pod TCP throughput (iperf3) through wren's dataplane, against plain host-to-host
//! throughput over the same veths, in one lab and one run.
//!
//! Each lab has three nodes. Native routing is measured on one segment with a pool that does
//! not encapsulate; VXLAN on two subnets with a router between (cross-subnet mode: n1 and n3
//! on one subnet, n2 on the other) and on one segment (always mode). Each row has its anchor
//! over the very same path without wren:
//!
//! | row | measured | anchor |
//! |---|---|---|
//! | native routing | pod on n1 → pod on n2 | node n1 → node n2 (one bridge) |
//! | VXLAN | pod on n1 → pod on n2 | node n1 → node n2 (through the router) |
//!
//! Native routing runs twice: with the kernel's standard 64 KiB GSO packets on the lab's
//! links, and with BIG TCP links (196,608 bytes), which the agent passes on to the pods.
//!
//! Rounds alternate row and anchor so that a noisy neighbour hits both alike; the median of
//! each is reported. Run with `cargo bench -p wren-agent --bench encap_iperf` as root, with
//! `etcd`, `iperf3` and the built `wren`/`wren-cni` binaries (`cargo build --release --bins`).
//! `WREN_BENCH_SECS` sets the seconds per round (default 3), `WREN_BENCH_ROUNDS` the rounds
//! (default 3).

use std::time::Duration;

use wren_tests::bench::{BenchSettings, invoked_as_bench, iperf, machine, median};
use wren_tests::lab::{self, Encap, Lab, LabSpec};
use wren_tests::offload::BIG_TCP;

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("iperf3") {
        return;
    }
    let settings = BenchSettings::from_env();
    println!(
        "iperf3, one TCP stream, {} s per round, median of {} rounds; {}",
        settings.round.as_secs(),
        settings.rounds,
        machine()
    );
    println!("| path | fabric GSO | Gbit/s | anchor | anchor Gbit/s | ratio | goal |");
    println!("|---|---|---|---|---|---|---|");
    // Native routing: a pool without encapsulation on one segment, so pods have the node's
    // MTU; once with the kernel's standard 64 KiB GSO packets on the fabric, once with BIG TCP
    // links (which the pods then take on too).
    for offload in [None, Some(BIG_TCP)] {
        measure(
            &settings,
            "bench7n",
            Encap::None,
            1,
            offload,
            &[("native routing (pod n1 → pod n2)", "n1", "n2", Some(0.95))],
        );
    }
    // Two subnets, VXLAN in cross-subnet mode: n1 and n3 share a subnet, n2 is across the
    // router.
    measure(
        &settings,
        "bench7",
        Encap::Vxlan,
        2,
        None,
        &[
            (
                "VXLAN (pod n1 → pod n2, across the router)",
                "n1",
                "n2",
                Some(0.80),
            ),
            (
                "cross-subnet mode, same subnet: routed, tunnel MTU (pod n1 → pod n3)",
                "n1",
                "n3",
                // Native routing, but with pods at the tunnel's MTU: TCP's smaller segments
                // cost throughput host-to-host as well (BENCHMARKS.md).
                None,
            ),
        ],
    );
    // One segment, VXLAN always: the tunnel's own cost, without the router.
    measure(
        &settings,
        "bench7s",
        Encap::Vxlan,
        1,
        None,
        &[(
            "VXLAN (pod n1 → pod n2, one L2 segment)",
            "n1",
            "n2",
            Some(0.80),
        )],
    );
}

/// Builds a three-node lab (`encap`, `subnets`, fabric offload size `offload`) and prints one
/// row per `(name, from node, to node, goal)`: pod to pod, anchored by node to node. A row
/// without a goal is shown for information.
fn measure(
    settings: &BenchSettings,
    name: &str,
    encap: Encap,
    subnets: u8,
    offload: Option<u32>,
    rows: &[(&str, &str, &str, Option<f64>)],
) {
    let mut spec = LabSpec::new(name, 3);
    spec.encap = encap;
    spec.subnets = subnets;
    spec.pods_per_node = 1;
    spec.fabric_offload = offload;
    let lab = Lab::up(spec).expect("lab up");
    let ready = (0..100).any(|_| {
        let ok = lab::failures(&lab.ping_matrix()).is_empty();
        if !ok {
            std::thread::sleep(Duration::from_millis(300));
        }
        ok
    });
    assert!(ready, "pods cannot reach each other");
    let node = |n: &str| {
        let node = lab.node(n).expect("node");
        (node.ns.clone(), node.ip().to_owned())
    };
    let pod = |n: &str| {
        let pod = lab.state().pods.iter().find(|p| p.node == n).expect("pod");
        (pod.ns.clone(), pod.ip.to_string())
    };
    let seconds = settings.round.as_secs();
    for (row, from, to, goal) in rows {
        let ((pfrom, _), (pto, paddress)) = (pod(from), pod(to));
        let ((nfrom, _), (nto, naddress)) = (node(from), node(to));
        let mut measured = Vec::new();
        let mut anchor = Vec::new();
        for _ in 0..settings.rounds {
            anchor.push(iperf(&nfrom, &nto, &naddress, &naddress, seconds).expect("anchor"));
            measured.push(iperf(&pfrom, &pto, &paddress, &paddress, seconds).expect("measured"));
        }
        let (m, a) = (median(measured), median(anchor));
        let fabric = offload.map_or("64 KiB".to_owned(), |b| format!("{} KiB", b / 1024));
        let goal = goal.map_or("(information)".to_owned(), |g| format!("≥ {g:.2}"));
        println!(
            "| {row} | {fabric} | {:.2} | node {from} → node {to} | {:.2} | {:.2} | {goal} |",
            m / 1e9,
            a / 1e9,
            m / a
        );
    }
    lab.down().expect("lab down");
}
