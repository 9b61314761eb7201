#!/usr/bin/env bash
# Runs the benchmarks whose figures are recorded in BENCHMARKS.md, each next to its anchor.
# One line per benchmark: add yours at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), kernel $(uname -r)"

# Datastore: etcd compare-and-swap tx/s, wren vs raw etcd-client (BENCHMARKS.md "Datastore").
cargo bench -p wren-store --bench cas

# IPAM: allocations/s for 1 and 3 nodes, vs raw etcd CAS in the same run (BENCHMARKS.md "IPAM").
cargo bench -p wren-ipam --bench allocate

# BGP: full-table ingestion over a session, wren vs BIRD 2 on the same feed (BENCHMARKS.md "full-table ingestion").
cargo bench -p wren-bgp --bench ingest -- --prefixes 1000000 --runs 9

# BGP wire format: UPDATE decode/encode rates vs a byte scan (BENCHMARKS.md "BGP wire format").
cargo bench -p wren-bgp --bench wire

# Agent: idle RSS/CPU and block convergence on 3 nodes, vs BIRD 2 in the same run (BENCHMARKS.md "Agent").
WREN_BENCH_IDLE_SECS=60 WREN_BENCH_ROUNDS=20 cargo bench -p wren-agent --bench agent_idle

# CNI: pod ADD/DEL latency, sequential and 100 at once, wren vs ptp+host-local (BENCHMARKS.md "CNI").
cargo build --release -p wren-cni
cargo bench -p wren-agent --bench cni

# Kernel routes: 100,000 routes in and out, wren's route manager vs `ip -batch` (BENCHMARKS.md "Kernel route programming").
cargo bench -p wren-agent --bench routes -- --routes 100000 --rounds 5

# Pod-to-pod iperf3: native routing and VXLAN vs host-to-host in the same labs (BENCHMARKS.md "Pod-to-pod throughput").
cargo build --release --bins
WREN_BENCH_ROUNDS=15 WREN_BENCH_SECS=4 cargo bench -p wren-agent --bench encap_iperf

# Pod → Service → pod iperf3 with the fast path on vs off, and direct pod → pod vs host → host, in one lab (BENCHMARKS.md "Translated connections").
WREN_BENCH_ROUNDS=7 WREN_BENCH_SECS=4 cargo bench -p wren-agent --bench service_iperf

# Network policy in the agent: throughput and connection rate a policy allows vs no policy, a change → enforced on all 3 nodes vs the CLI alone (BENCHMARKS.md "Network policy in the agent").
WREN_BENCH_ROUNDS=7 WREN_BENCH_SECS=3 WREN_BENCH_CHANGES=100 cargo bench -p wren-agent --bench policy_lab

# Fast path: the conntrack lookup's cost per packet, TCP (looked up) vs ICMP echo (not) on the same path (BENCHMARKS.md "Translated connections").
WREN_BENCH_ROUNDS=5 cargo bench -p wren-fastpath --bench verdict_cost

# CRI: RunPodSandbox through containerd, 20 pods one after another and 20 at once, wren vs ptp+host-local on the same containerd (BENCHMARKS.md "Pod sandbox ready through containerd").
WREN_BENCH_ROUNDS=8 cargo bench -p wren-tests --bench cri_sandbox

# Route reflector at cluster scale: 5,000 nodes × 4 blocks reflected to 50 clients, wren vs BIRD 2 as the reflector (BENCHMARKS.md "Route reflector at cluster scale").
cargo bench -p wren-bgp --bench reflect -- --nodes 5000 --blocks 4 --clients 50 --runs 3

# Scale: 150 agents in namespaces with two wren route reflectors, start, idle, burst, claim and removal figures (BENCHMARKS.md "Scale").
cargo build --release --bins
cargo bench -p wren-tests --bench scale -- --nodes 150 --reflectors 2

# BFD: link cut → session Down at 3 × 100 ms and 3 × 300 ms, wren vs BIRD–BIRD in the same run (BENCHMARKS.md "BFD").
WREN_BENCH_ROUNDS=15 cargo bench -p wren-bfd --bench detection

# Cold start: last agent started → full mesh and → every pod reaching every pod, in a 3-node lab (BENCHMARKS.md "Cold start").
# The anchor is another build's binaries (WREN_BENCH_ANCHOR_BIN_DIR); without it only this build is measured.
cargo build --bins
WREN_BENCH_BIN_DIR=target/debug WREN_BENCH_ROUNDS=5 cargo bench -p wren-tests --bench cold_start

# Network policy: programming a node of 1,000 policies over 1,000 workloads, from nothing and by deltas, vs the `nft -f` load itself (BENCHMARKS.md "Network policy").
cargo bench -p wren-policy --bench program -- --rounds 5 --changes 100
