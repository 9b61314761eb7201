//! The kernel side of wren: routes, pod veths, tunnels and NAT. The only module that touches
//! netlink.
