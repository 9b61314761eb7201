//! `wren-bgp`: an embeddable BGP-4 speaker.
//!
//! - [`wire`]: the message model and its parser (nom) and encoder; no I/O.
//! - [`fsm`]: the session state machine (RFC 4271 §8): events in, actions out; no I/O.
//! - [`rib`]: Adj-RIB-In, Loc-RIB and the decision process, Adj-RIB-Out, policy hooks,
//!   route reflection and graceful restart; no I/O.
//! - [`speaker`]: the tokio speaker: listener, sessions, timers, TCP MD5, GTSM, and the API
//!   of the embedding program ([`speaker::Speaker::start`]).
//!
//! The crate knows nothing of pods or nodes: the embedding program tells the speaker which
//! peers to run and which prefixes to originate, and subscribes to best-path changes.

pub mod fsm;
pub mod rib;
pub mod speaker;
pub mod wire;
