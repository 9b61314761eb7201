#!/usr/bin/env bash
# Records which functions a running `wren agent` executes, from start to idle, and writes
# them to agent/hot-code.txt, which the release build lays out first (agent/build.rs).
#
# Usage: scripts/hot-code.sh [ROUNDS]   (root; what `make demo` needs)
#
# HOT_CODE_BUILD is the command that builds target/release/wren (default: the Makefile's
# `cargo build --release --workspace --bins`). Which packages a build selects changes the
# features cargo unifies, hence the hashes in the symbol names: record each build that
# matters into the one list (the Makefile's, and the benchmark's `cargo bench -p wren-agent
# --bench agent_idle --no-run`). To start afresh (after a toolchain update), empty the list
# but for its comment lines.
#
# It starts a two-node lab from the release build, then, ROUNDS times (default 8) or until a
# round finds nothing new: runs node n2's agent with first-touch.c preloaded for
# HOT_CODE_SECONDS (default 50) while n1's agent restarts and a VXLAN pool is added, adds
# the functions it saw to the list, and rebuilds. Each round sees only the first function
# executed on each page; moving those into the hot section lets the next round see the ones
# that shared their pages. Run it after a toolchain or dependency update (their symbol
# hashes change) or when the idle footprint in BENCHMARKS.md grows.
#
# Another program's agents are recorded the same way: build scripts/hot-code/first-touch.c
# into a shared object, run the program with it in LD_PRELOAD and FIRST_TOUCH_BINARY,
# FIRST_TOUCH_SECONDS and FIRST_TOUCH_OUT set (the benchmark's: `cargo bench -p wren-agent
# --bench agent_idle`), then `scripts/hot-code/functions.py BINARY TOUCHES agent/hot-code.txt`.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-8}
seconds=${HOT_CODE_SECONDS:-50}
lab=hotcode
list=$PWD/agent/hot-code.txt
bin=$PWD/target/release/wren
work=$(mktemp -d)
agent_pid=

# Ends the agent with pid $1 (if there is one and it runs) and waits until it is gone.
stop() {
  [[ -n $1 ]] && kill "$1" 2>/dev/null || return 0
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
}

cleanup() {
  stop "${peer_pid:-}"
  stop "$agent_pid"
  target/release/wren-lab --name "$lab" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cc -shared -fPIC -O2 -o "$work/first-touch.so" scripts/hot-code/first-touch.c -lpthread
build=${HOT_CODE_BUILD:-cargo build --release --workspace --bins}
cargo build --release -p wren-tests --bin wren-lab
$build
target/release/wren-lab --name "$lab" up --nodes 2 --pods 1 >/dev/null

# The lab's agents as it started them: pid and namespace of n1 and n2, and the etcd endpoint.
read -r peer_pid peer_netns agent_pid netns etcd < <(python3 - "$lab" <<'EOF'
import json, sys
state = json.load(open(f"/run/wren-lab/{sys.argv[1]}/state.json"))
nodes = {n["name"]: n for n in state["nodes"]}
print(nodes["n1"]["agent"]["pid"], nodes["n1"]["ns"], nodes["n2"]["agent"]["pid"], nodes["n2"]["ns"],
      state["etcd_endpoint"])
EOF
)
mapfile -d '' -t args < <(tail -z -n +2 "/proc/$agent_pid/cmdline")
mapfile -d '' -t peer_args < <(tail -z -n +2 "/proc/$peer_pid/cmdline")

# What a node's agent meets in a cluster besides idling, while n2 is traced: its peer
# restarting (a BGP session lost and regained, routes withdrawn and learned again) and a
# pool with VXLAN added (tunnels planned and programmed).
activity() {
  sleep 15
  stop "$peer_pid"
  ip netns exec "$peer_netns" "$bin" "${peer_args[@]}" </dev/null >"$work/peer.log" 2>&1 &
  peer_pid=$!
  sleep 10
  # Added once: from the next round on, the traced agent starts with its tunnel to program.
  ip netns exec "$netns" "$bin" pool list --etcd-endpoints "$etcd" | grep -qw hotcode ||
    ip netns exec "$netns" "$bin" pool add --etcd-endpoints "$etcd" --cidr 10.99.0.0/16 \
      --encap vxlan hotcode >/dev/null
}

for ((round = 1; round <= rounds; round++)); do
  stop "$agent_pid"
  ip netns exec "$netns" env LD_PRELOAD="$work/first-touch.so" FIRST_TOUCH_BINARY="$bin" \
    FIRST_TOUCH_SECONDS="$seconds" FIRST_TOUCH_OUT="$work/touches" \
    "$bin" "${args[@]}" </dev/null >"$work/agent.log" 2>&1 &
  agent_pid=$!
  activity
  for ((waited = 0; waited < seconds + 10; waited++)); do
    [[ -s $work/touches ]] && break
    sleep 1
  done
  [[ -s $work/touches ]] || { echo "round $round: the agent wrote no record" >&2; exit 1; }
  sleep 1
  new=$(python3 scripts/hot-code/functions.py "$bin" "$work/touches" "$list")
  rm -f "$work/touches"
  echo "round $round: $new new functions, $(grep -vc '^#' "$list") in the list"
  [[ $new -eq 0 ]] && break
  $build 2>&1 | tail -1
done
