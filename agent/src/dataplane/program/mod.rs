//! The programmers: one per kind of kernel object, each taking its part of the desired state
//! (see `daemon::plan`) and returning a typed outcome.
//!
//! - [`routes`]: the main table's routes of wren's protocols.
//! - [`policy`]: network policy, as the `inet wren_policy` nftables table.

pub mod policy;
pub mod routes;
