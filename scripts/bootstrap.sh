#!/usr/bin/env bash
# Installs what building and testing wren needs on a Debian machine. Idempotent: it only
# installs what is missing, and does nothing at all when everything is there.
set -euo pipefail

# command (or file) -> Debian package that provides it
declare -A NEED=(
  [protoc]=protobuf-compiler
  # protoc's well-known types (etcd's API imports them); only recommended by protobuf-compiler
  [/usr/include/google/protobuf/descriptor.proto]=libprotobuf-dev
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [bird]=bird2
  [birdc]=bird2
  [/usr/lib/frr/bgpd]=frr
  [/usr/lib/frr/zebra]=frr
  [/usr/lib/frr/bfdd]=frr
  [gobgpd]=gobgpd
  [gobgp]=gobgpd
  [ip]=iproute2
  [bridge]=iproute2
  [nft]=nftables
  [iperf3]=iperf3
  [tcpdump]=tcpdump
  [ping]=iputils-ping
  [curl]=curl
  [ss]=iproute2
  [pkill]=procps
  # portmap programs the node's hostPort rules through iptables
  [iptables]=iptables
  [/usr/lib/cni/portmap]=containernetworking-plugins
  [/usr/lib/cni/bandwidth]=containernetworking-plugins
  [/usr/lib/cni/ptp]=containernetworking-plugins
  [/usr/lib/cni/host-local]=containernetworking-plugins
  [hyperfine]=hyperfine
  # the kubelet-side rig: containerd's CRI plugin with runc, and a static busybox for the
  # locally built sandbox (pause) image
  [containerd]=containerd
  [ctr]=containerd
  [runc]=runc
  [/bin/busybox]=busybox-static
  [python3]=python3
  [systemd-analyze]=systemd
  # The test VM (wren-tests' vm module): QEMU, Debian's own kernel for the guest (it does not
  # change the kernel this machine runs), and busybox for virtme-ng's initramfs.
  [qemu-system-x86_64]=qemu-system-x86
  [/boot/vmlinuz-*-amd64]=linux-image-amd64
  [busybox]=busybox-static
)

missing=()
for cmd in "${!NEED[@]}"; do
  if [[ "$cmd" == /* ]]; then
    # A path may be a pattern (the kernel's file name carries its version).
    compgen -G "$cmd" >/dev/null || missing+=("${NEED[$cmd]}")
  else
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
  fi
done

if ((${#missing[@]})); then
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "bootstrap: installing ${pkgs[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: need root to install ${pkgs[*]} (run as root or install them yourself)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Daemons from these packages must not start on the host: tests run their own copies
  # inside network namespaces.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
  if ((created_policy)); then rm -f "$policy"; fi
fi

# The Kubernetes manifest validator (schema-aware, offline schemas) lives in its own venv.
TOOLS=${WREN_TOOLS:-/opt/wren-tools}
if [[ ! -x $TOOLS/venv/bin/kubernetes-validate ]]; then
  echo "bootstrap: installing kubernetes-validate into $TOOLS/venv"
  dpkg -s python3-venv >/dev/null 2>&1 || python3 -m venv --help >/dev/null 2>&1 || apt-get install -y -qq python3-venv
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q 'kubernetes-validate==1.37.0'
fi

# virtme-ng boots the test VM; it lives in a venv of its own.
if [[ ! -x $TOOLS/virtme-ng/bin/vng ]]; then
  echo "bootstrap: installing virtme-ng into $TOOLS/virtme-ng"
  python3 -m venv "$TOOLS/virtme-ng"
  "$TOOLS/virtme-ng/bin/pip" install -q 'virtme-ng==1.42'
fi

# Rust components the test command uses.
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
echo "bootstrap: all prerequisites present"
