//! `wren-bfd`: Bidirectional Forwarding Detection for wren's BGP sessions.
//!
//! - [`packet`]: the RFC 5880 Control packet, its encoder and its decoder with the checks of
//!   §6.8.6; no I/O.
//! - [`session`]: one session's state machine in asynchronous mode (RFC 5880 §6): events in,
//!   actions out; no I/O.
//! - [`endpoint`]: the tokio edge of RFC 5881 (single hop): one receiving socket per address
//!   family on port 3784 for every session, packets sent from ports 49152–65535 with TTL (hop
//!   limit) 255 and accepted only with 255, sessions found by discriminator, and state changes
//!   on channels a BGP speaker subscribes to.
//!
//! The crate knows nothing of BGP: the embedding program tells the BGP speaker when a peer's
//! BFD session goes down or comes back.

pub mod endpoint;
pub mod packet;
pub mod session;
