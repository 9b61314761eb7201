//! `wren-agent`: the node daemon and the admin CLI behind the `wren` binary.
//!
//! - [`api`]: the local HTTP/JSON API on the unix socket the CNI plugin calls.
//! - [`cli`]: the command-line contract (`wren agent|status|pool|peer|node|ipam|bgp`).
//! - [`cni`]: the agent side of the CNI commands (allocation, pod links, workload records).
//! - [`config`]: the agent's configuration (flags, `WREN_*` environment, TOML file).
//! - [`daemon`]: the node daemon (registration, BGP mesh and policy, route reconcile, health).
//! - [`dataplane`]: everything that touches the kernel (rtnetlink, nftables).
//! - [`metrics`]: the Prometheus metrics the daemon exports.

pub mod api;
pub mod cli;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
pub mod sync;
