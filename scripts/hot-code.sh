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
# Each round, ROUNDS times (default 8) or until one finds nothing new, starts a two-node lab
# with two pods a node and every agent traced from its start by first-touch.c (so the pods'
# CNI ADDs are seen too), restarts n1's agent and adds a VXLAN pool while n2's goes on,
# adds the functions n2's agent ran within HOT_CODE_SECONDS (default 330: the agent's
# slowest periodic work, the leak release every 300 s, included) to the list, takes the lab
# down and rebuilds. A traced agent runs with only the HOT_CODE_OPEN_PAGES (default
# 64) pages of code it entered last open, so nearly every function it enters is seen in one
# round; one the open pages hid shows up in the next, once its neighbours have moved. Run it
# after a toolchain or dependency update (their symbol hashes change) or when the idle
# footprint in BENCHMARKS.md grows.
#
# Another program's agents are recorded the same way: build scripts/hot-code/first-touch.c
# into a shared object, run the program with it in LD_PRELOAD and FIRST_TOUCH_BINARY,
# FIRST_TOUCH_OPEN_PAGES, FIRST_TOUCH_SECONDS and FIRST_TOUCH_OUT (a "%d" in it takes each
# process's id) set, then `scripts/hot-code/functions.py BINARY TOUCHES agent/hot-code.txt`
# for each record. The benchmark's agents, for instance, over its 60 s window and a little
# more (the record is written before the bench ends its agents):
#   LD_PRELOAD=$PWD/first-touch.so FIRST_TOUCH_BINARY=$PWD/target/release/wren \
#   FIRST_TOUCH_OPEN_PAGES=64 FIRST_TOUCH_SECONDS=72 FIRST_TOUCH_OUT=/tmp/touches.%d \
#   WREN_BENCH_IDLE_SECS=75 WREN_BENCH_ROUNDS=3 cargo bench -p wren-agent --bench agent_idle
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-8}
seconds=${HOT_CODE_SECONDS:-330}
open_pages=${HOT_CODE_OPEN_PAGES:-64}
lab=hotcode
list=$PWD/agent/hot-code.txt
bin=$PWD/target/release/wren
work=$(mktemp -d)
peer_pid=

# Ends the process with pid $1 (if there is one and it runs) and waits until it is gone.
stop() {
  [[ -n $1 ]] && kill "$1" 2>/dev/null || return 0
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
}

cleanup() {
  stop "$peer_pid"
  target/release/wren-lab --name "$lab" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cc -shared -fPIC -O2 -o "$work/first-touch.so" scripts/hot-code/first-touch.c -lpthread
build=${HOT_CODE_BUILD:-cargo build --release --workspace --bins}
cargo build --release -p wren-tests --bin wren-lab
$build

for ((round = 1; round <= rounds; round++)); do
  # The lab inherits the environment: every agent it starts is traced (the other programs
  # it starts are not the binary named and are left alone).
  rm -f "$work"/touches.*
  env LD_PRELOAD="$work/first-touch.so" FIRST_TOUCH_BINARY="$bin" \
    FIRST_TOUCH_OPEN_PAGES="$open_pages" FIRST_TOUCH_SECONDS="$seconds" \
    FIRST_TOUCH_OUT="$work/touches.%d" \
    target/release/wren-lab --name "$lab" up --nodes 2 --pods 2 >/dev/null

  # The lab's agents: pid and namespace of n1 and n2, and the etcd endpoint.
  read -r peer_pid peer_netns agent_pid netns etcd < <(python3 - "$lab" <<'EOF'
import json, sys
state = json.load(open(f"/run/wren-lab/{sys.argv[1]}/state.json"))
nodes = {n["name"]: n for n in state["nodes"]}
print(nodes["n1"]["agent"]["pid"], nodes["n1"]["ns"], nodes["n2"]["agent"]["pid"], nodes["n2"]["ns"],
      state["etcd_endpoint"])
EOF
  )
  mapfile -d '' -t peer_args < <(tail -z -n +2 "/proc/$peer_pid/cmdline")

  # What a node's agent meets in a cluster besides pods and idling, while n2's is traced:
  # its peer restarting (a BGP session lost and regained, routes withdrawn and learned
  # again) and a pool with VXLAN added (tunnels planned and programmed).
  sleep 10
  stop "$peer_pid"
  ip netns exec "$peer_netns" "$bin" "${peer_args[@]}" </dev/null >"$work/peer.log" 2>&1 &
  peer_pid=$!
  sleep 10
  ip netns exec "$netns" "$bin" pool add --etcd-endpoints "$etcd" --cidr 10.99.0.0/16 \
    --encap vxlan hotcode >/dev/null

  record=$work/touches.$agent_pid
  for ((waited = 0; waited < seconds + 10; waited++)); do
    [[ -s $record ]] && break
    sleep 1
  done
  [[ -s $record ]] || { echo "round $round: n2's agent wrote no record" >&2; exit 1; }
  sleep 1
  new=$(python3 scripts/hot-code/functions.py "$bin" "$record" "$list")
  stop "$peer_pid"
  peer_pid=
  target/release/wren-lab --name "$lab" down >/dev/null
  echo "round $round: $new new functions, $(grep -vc '^#' "$list") in the list"
  [[ $new -eq 0 ]] && break
  $build 2>&1 | tail -1
done
