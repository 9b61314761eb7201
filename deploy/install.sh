#!/bin/sh
# Installs wren on a systemd host from a source checkout:
#   cargo build --release --bins && sudo deploy/install.sh [--prefix /usr/local] [--no-start]
# Installs: <prefix>/bin/wren, the CNI plugin and conflist (deploy/cni/install.sh), the systemd
# unit, the rt_protos.d entry naming protocol 201 "wren", and /etc/wren/wren.toml (only when it
# does not exist yet: an existing configuration is never overwritten).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/usr/local
start=1
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 1 ;;
  esac
done

release=$here/../target/release
[ -x "$release/wren" ] || { echo "install.sh: build first: cargo build --release --bins" >&2; exit 1; }

install -D -m 0755 "$release/wren" "$prefix/bin/wren"
"$here/cni/install.sh" --binary "$release/wren-cni"
install -D -m 0644 "$here/iproute2/rt_protos.d/wren.conf" /etc/iproute2/rt_protos.d/wren.conf
if [ ! -e /etc/wren/wren.toml ]; then
  install -D -m 0644 "$here/config/wren.toml" /etc/wren/wren.toml
fi
sed "s#/usr/local/bin/wren#$prefix/bin/wren#" "$here/systemd/wren-agent.service" \
  > /etc/systemd/system/wren-agent.service
systemctl daemon-reload
if [ "$start" = 1 ]; then
  systemctl enable --now wren-agent.service
  echo "wren-agent started; check it with: wren status"
else
  echo "installed; start it with: systemctl enable --now wren-agent"
fi
