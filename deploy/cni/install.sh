#!/bin/sh
# Installs the wren CNI plugin on a node that is not managed by the Kubernetes DaemonSet
# (systemd-managed agent, bare metal, a lab VM): the plugin binary as <bin-dir>/wren (the name
# kubelet, containerd, CRI-O and podman look up from "type": "wren") and the network
# configuration list into <conf-dir>. Both are written under a temporary name and renamed into
# place, so a runtime never reads half a file.
#
#   deploy/cni/install.sh [--binary target/release/wren-cni] [--bin-dir /opt/cni/bin]
#                         [--conf-dir /etc/cni/net.d] [--conflist deploy/cni/10-wren.conflist]
#                         [--socket /run/wren/agent.sock] [--mtu N] [--no-conflist]
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary=${WREN_CNI_BINARY:-$here/../../target/release/wren-cni}
bin_dir=/opt/cni/bin
conf_dir=/etc/cni/net.d
conflist=$here/10-wren.conflist
socket=
mtu=
write_conflist=1

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "$1"; }
die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --conf-dir) conf_dir=$2; shift 2 ;;
    --conflist) conflist=$2; shift 2 ;;
    --socket) socket=$2; shift 2 ;;
    --mtu) mtu=$2; shift 2 ;;
    --no-conflist) write_conflist=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 1 ;;
  esac
done

[ -x "$binary" ] || die "$binary is not an executable; build it with: cargo build --release -p wren-cni"
case $mtu in ''|*[!0-9]*) [ -z "$mtu" ] || die "--mtu wants a number, not $mtu" ;; esac

# The binary must answer VERSION before it replaces a working one.
echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION "$binary" >/dev/null \
  || die "$binary does not answer CNI VERSION; not installing it"

mkdir -p "$bin_dir"
cp "$binary" "$bin_dir/.wren.tmp.$$"
chmod 0755 "$bin_dir/.wren.tmp.$$"
mv -f "$bin_dir/.wren.tmp.$$" "$bin_dir/wren"
echo "installed $bin_dir/wren"

for chained in portmap bandwidth; do
  if [ ! -x "$bin_dir/$chained" ]; then
    echo "install.sh: warning: $bin_dir/$chained is missing; the conflist chains it after wren" >&2
    echo "install.sh: install the reference CNI plugins (containernetworking-plugins) there" >&2
  fi
done

[ "$write_conflist" -eq 1 ] || exit 0
[ -r "$conflist" ] || die "cannot read $conflist"
mkdir -p "$conf_dir"
tmp="$conf_dir/.10-wren.conflist.tmp.$$"
# Optional per-node settings are spliced into the wren plugin entry (the first "type": "wren").
# Any spacing around the colon: a conflist written by a program is often compact.
sp='[[:space:]]*'
sed -e "${socket:+s|\"agentSocket\"$sp:$sp\"[^\"]*\"|\"agentSocket\": \"$socket\"|}" \
    -e "${mtu:+s|\"type\"$sp:$sp\"wren\"$sp,|\"type\": \"wren\", \"mtu\": $mtu,|}" \
    "$conflist" >"$tmp"
if [ -n "$socket" ] && ! grep -q "\"agentSocket\": \"$socket\"" "$tmp"; then
  rm -f "$tmp"; die "$conflist has no \"agentSocket\" in the wren entry for --socket to set"
fi
if command -v python3 >/dev/null 2>&1; then
  python3 -m json.tool "$tmp" >/dev/null || { rm -f "$tmp"; die "the resulting conflist is not valid JSON"; }
fi
chmod 0644 "$tmp"
mv -f "$tmp" "$conf_dir/10-wren.conflist"
echo "installed $conf_dir/10-wren.conflist"
