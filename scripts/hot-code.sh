#!/usr/bin/env bash
# Records which functions a running `wren agent` executes, from start to idle, and writes
# them to agent/hot-code.txt, which the release build lays out first (agent/build.rs).
#
# Usage: scripts/hot-code.sh [ROUNDS]   (root; what `make demo` needs)
#
# It starts a two-node lab from the release build, then, ROUNDS times (default 8) or until a
# round finds nothing new: runs node n2's agent with first-touch.c preloaded for
# HOT_CODE_SECONDS (default 50), adds the functions it saw to the list, and rebuilds. Each
# round sees only the first function executed on each page; moving those into the hot
# section lets the next round see the ones that shared their pages. Run it after a toolchain
# or dependency update (their symbol hashes change) or when the idle footprint in
# BENCHMARKS.md grows.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-8}
seconds=${HOT_CODE_SECONDS:-50}
lab=hotcode
list=$PWD/agent/hot-code.txt
bin=$PWD/target/release/wren
work=$(mktemp -d)
agent_pid=

cleanup() {
  if [[ -n $agent_pid ]] && kill -0 "$agent_pid" 2>/dev/null; then
    kill "$agent_pid"
    while kill -0 "$agent_pid" 2>/dev/null; do sleep 0.1; done
  fi
  target/release/wren-lab --name "$lab" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cc -shared -fPIC -O2 -o "$work/first-touch.so" scripts/hot-code/first-touch.c -lpthread
cargo build --release -p wren-agent --bin wren -p wren-tests --bin wren-lab
target/release/wren-lab --name "$lab" up --nodes 2 --pods 1 >/dev/null

# Node n2's agent as the lab started it: its pid, namespace and arguments.
read -r agent_pid netns < <(python3 - "$lab" <<'EOF'
import json, sys
state = json.load(open(f"/run/wren-lab/{sys.argv[1]}/state.json"))
node = next(n for n in state["nodes"] if n["name"] == "n2")
print(node["agent"]["pid"], node["ns"])
EOF
)
mapfile -d '' -t args < <(tail -z -n +2 "/proc/$agent_pid/cmdline")

for ((round = 1; round <= rounds; round++)); do
  kill "$agent_pid"
  while kill -0 "$agent_pid" 2>/dev/null; do sleep 0.1; done
  ip netns exec "$netns" env LD_PRELOAD="$work/first-touch.so" FIRST_TOUCH_BINARY="$bin" \
    FIRST_TOUCH_SECONDS="$seconds" FIRST_TOUCH_OUT="$work/touches" \
    "$bin" "${args[@]}" </dev/null >"$work/agent.log" 2>&1 &
  agent_pid=$!
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
  cargo build --release -p wren-agent --bin wren 2>&1 | tail -1
done
