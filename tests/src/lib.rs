//! `wren-tests`: the test harness and the lab.
//!
//! The harness has no dependency on other wren crates, so every crate's integration tests can
//! use it: a real `etcd` on a free loopback port, network namespaces that clean up after
//! themselves, and child processes that are ended by their id when the guard drops.
//!
//! - [`prereq`]: root, commands and kernel features a test needs; skip or fail (`CI=true`).
//! - [`process`]: a guard that owns a child process and ends it by its pid.
//! - [`etcd`]: a real single-member etcd with a temporary data directory.
//! - [`netns`]: network namespaces, veth pairs and bridges that remove themselves.
//! - [`echo`]: a TCP and UDP server that answers with a name, and its client.
//! - [`http`]: a plain HTTP GET from inside a namespace (health checks).
//! - [`cri`]: containerd's CRI plugin per lab node and a CRI client, standing in for kubelet.
//! - [`lab`]: a whole cluster in namespaces, driving the `wren` and `wren-cni` binaries.
//! - [`bench`](mod@bench): settings the bench binaries share.
//! - [`daemons`]: BIRD 2, FRR and GoBGP as BGP peers inside those namespaces.
//! - [`vm`]: a virtual machine booting the distribution's kernel, for what the host's kernel
//!   cannot show (IPIP, kernels before tcx).

pub mod bench;
pub mod cri;
pub mod daemons;
pub mod echo;
pub mod etcd;
pub mod http;
pub mod lab;
pub mod netns;
pub mod offload;
pub mod prereq;
pub mod process;
pub mod routes;
pub mod vm;
