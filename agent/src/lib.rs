//! `wren-agent`: the node daemon and the admin CLI behind the `wren` binary.
//!
//! - [`cli`]: the command-line contract (`wren agent|status|pool|peer|node|ipam|bgp`).
//! - [`config`]: the agent's configuration (flags, `WREN_*` environment, TOML file).
//! - [`dataplane`]: everything that touches the kernel (rtnetlink, nftables).

pub mod cli;
pub mod config;
pub mod dataplane;
