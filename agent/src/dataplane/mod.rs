//! The kernel side of wren: routes, pod veths, tunnels and NAT. The only module that touches
//! netlink.
//!
//! - [`route`]: the route model (destination, next hop, table, owning protocol).
//! - [`RouteManager`]: reconciles the kernel's routes of wren's protocols with a desired set on
//!   one netlink socket, pipelined.
//! - [`pod`]: the veth pair of a pod ([`setup_pod`], [`teardown_pod`], [`check_pod`]).
//! - [`program`]: the programmers the daemon's passes drive, one per kind of kernel object.
//! - [`prepare_node`]: forwarding on, at agent start.
//! - [`vxlan`], [`ipip`]: the tunnel devices, with [`fdb`] and neighbour entries for VXLAN;
//!   [`mtu`]: the MTUs of pods and tunnels; [`nat`]: outgoing NAT in nftables.
//! - [`watch`]: the kernel's change notifications, which tell a reconcile tick whether to read.
//!
//! Everything works in the network namespace of the calling thread (the agent runs inside its
//! node's namespace), except where a function takes a namespace path. Calls block for as long
//! as the kernel takes (no network round trip): run them on a blocking-capable thread.

mod check;
pub mod fdb;
pub mod ipip;
mod link;
mod manager;
pub mod mtu;
pub mod nat;
mod neigh;
mod netlink;
mod netns;
mod node;
pub mod pod;
pub mod program;
mod reconcile;
pub mod route;
pub mod vxlan;
pub mod watch;

pub use check::{Problem, Side, check_pod};
pub use manager::{
    RouteAction, RouteChange, RouteCounters, RouteError, RouteFailure, RouteFailureReason,
    RouteManager, RouteReport,
};
pub use netlink::NetlinkError;
pub use netns::NetnsError;
pub use node::{NodeError, NodeSetup, prepare_node};
pub use pod::{
    HostVeth, PodDefaults, PodError, PodInterface, PodSpec, host_ifname, host_veths,
    remove_host_veth, setup_pod, teardown_pod,
};
pub use route::{Gateway, Gateways, InvalidRoute, MAIN_TABLE, NextHop, Protocol, Route};
