//! The programmers: one per kind of kernel object, each taking its part of the desired state
//! (see `daemon::plan`) and returning a typed outcome.
//!
//! - [`routes`]: the main table's routes of wren's protocols.

pub mod routes;
