//! `wren-bgp`: an embeddable BGP-4 speaker.
//!
//! - [`wire`]: the message model and its parser (nom) and encoder; no I/O.
//!
//! The crate knows nothing of pods or nodes: the embedding program tells the speaker which
//! peers to run and which prefixes to originate, and subscribes to best-path changes.

pub mod wire;
