//! Pod → Service → pod TCP throughput (iperf3) with the fast path on, against the same flow
//! with the fast path off, in one two-node lab and one run; with the direct pod-to-pod and
//! the host-to-host throughput over the same path measured alongside.
//!
//! The Service is a DNAT in kube-proxy's shape on the client's node (n2): 10.96.0.10:5201 →
//! the pod on n1. Its replies are pool-to-pool packets the fast path must leave to the stack
//! (which un-translates them), so the goal is "no slower than off": the conntrack lookup that
//! finds them must not cost more than it saves on the rest.
//!
//! | row | measured |
//! |---|---|
//! | Service, fast path on | pod on n2 → 10.96.0.10 → pod on n1 |
//! | Service, fast path off (anchor) | the same, agents restarted with `--fast-path false` |
//! | direct, fast path on | pod on n2 → pod on n1 |
//! | host to host (anchor of the direct row) | node n2 → node n1 |
//!
//! Rounds alternate the four so that a noisy neighbour hits all alike; medians are reported.
//! Run with `cargo bench -p wren-agent --bench service_iperf` as root, with `etcd`, `iperf3`,
//! `iptables` and the built binaries (`cargo build --release --bins`). `WREN_BENCH_SECS` sets
//! the seconds per round (default 3), `WREN_BENCH_ROUNDS` the rounds (default 3).

use std::time::Duration;

use wren_tests::bench::{BenchSettings, invoked_as_bench, iperf, machine, median};
use wren_tests::lab::{self, Lab, LabSpec};
use wren_tests::netns::{command_in, run};

const SERVICE: &str = "10.96.0.10";
const PORT: &str = "5201";

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !lab::require_lab(false)
        || !wren_tests::prereq::require_command("iperf3")
        || !wren_tests::prereq::require_command("iptables")
    {
        return;
    }
    let settings = BenchSettings::from_env();
    let mut spec = LabSpec::new("bench24", 2);
    spec.pods_per_node = 1;
    let mut lab = Lab::up(spec).expect("lab up");
    lab.wait_full_matrix(Duration::from_secs(30), "n1")
        .expect("pods reach each other");
    let pod = |n: &str| {
        let pod = lab.state().pods.iter().find(|p| p.node == n).expect("pod");
        (pod.ns.clone(), pod.ip.to_string())
    };
    let node = |n: &str| {
        let node = lab.node(n).expect("node");
        (node.ns.clone(), node.ip().to_owned())
    };
    let ((client, _), (server, server_ip)) = (pod("n2"), pod("n1"));
    let ((client_node, _), (server_node, server_node_ip)) = (node("n2"), node("n1"));
    run(command_in(&client_node, "iptables").args([
        "-w",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        SERVICE,
        "-p",
        "tcp",
        "--dport",
        PORT,
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{server_ip}:{PORT}"),
    ]))
    .expect("the Service's rule");

    let seconds = settings.round.as_secs();
    let (mut service_on, mut service_off, mut direct, mut hosts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..settings.rounds {
        hosts.push(
            iperf(
                &client_node,
                &server_node,
                &server_node_ip,
                &server_node_ip,
                seconds,
            )
            .expect("host to host"),
        );
        direct.push(iperf(&client, &server, &server_ip, &server_ip, seconds).expect("direct"));
        service_on.push(iperf(&client, &server, &server_ip, SERVICE, seconds).expect("Service"));
        lab.set_fast_path(false).expect("fast path off");
        service_off
            .push(iperf(&client, &server, &server_ip, SERVICE, seconds).expect("Service, off"));
        lab.set_fast_path(true).expect("fast path on");
        assert!(lab.fast_path("n1").expect("status").on, "fast path back on");
    }
    let gbits = |figures: Vec<f64>| median(figures) / 1e9;
    let (on, off, direct, hosts) = (
        gbits(service_on),
        gbits(service_off),
        gbits(direct),
        gbits(hosts),
    );
    println!(
        "iperf3, one TCP stream, {seconds} s per round, median of {} rounds; {}",
        settings.rounds,
        machine()
    );
    println!("| path | Gbit/s | anchor | anchor Gbit/s | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| pod n2 → Service → pod n1, fast path on | {on:.2} | the same, fast path off | {off:.2} | {:.2} | ≥ 1.00 |",
        on / off
    );
    println!(
        "| pod n2 → pod n1, fast path on | {direct:.2} | node n2 → node n1 | {hosts:.2} | {:.2} | ≥ 0.95 |",
        direct / hosts
    );
    lab.down().expect("lab down");
}
