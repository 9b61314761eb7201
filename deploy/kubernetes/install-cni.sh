#!/bin/sh
# Init container of the wren DaemonSet: installs the CNI plugin and its network config on the
# host. Atomic (write then rename) so kubelet never reads a half-written file.
set -eu
BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
NET_DIR=${CNI_NET_DIR:-/host/etc/cni/net.d}
CONFLIST=${CNI_CONFLIST:-/usr/share/wren/10-wren.conflist}

mkdir -p "$BIN_DIR" "$NET_DIR"
cp /usr/local/bin/wren-cni "$BIN_DIR/.wren.tmp"
chmod 0755 "$BIN_DIR/.wren.tmp"
mv -f "$BIN_DIR/.wren.tmp" "$BIN_DIR/wren"
cp "$CONFLIST" "$NET_DIR/.10-wren.conflist.tmp"
mv -f "$NET_DIR/.10-wren.conflist.tmp" "$NET_DIR/10-wren.conflist"
echo "installed $BIN_DIR/wren and $NET_DIR/10-wren.conflist"
