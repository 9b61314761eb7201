//! `wren-tests`: the test harness and the lab.
//!
//! The harness has no dependency on other wren crates, so every crate's integration tests can
//! use it: a real `etcd` on a free loopback port, network namespaces that clean up after
//! themselves, and child processes that are ended by their id when the guard drops.
