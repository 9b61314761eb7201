//! Block affinity: the record at `ipam/affinity/<node>/<cidr>` saying a node owns a block.
//!
//! wren writes an affinity in the same transaction that creates its block, so it is born
//! `confirmed`. `pending` is accepted when read (a claim written in two steps by another tool)
//! and never allocated from; the leak check reports a pending affinity whose block does not
//! name its node.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wren_model::keys;

/// State of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AffinityState {
    /// Claimed, block not yet confirmed.
    Pending,
    /// The block exists and is affine to the node.
    Confirmed,
}

/// The stored affinity document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    /// State of the claim.
    pub state: AffinityState,
}

impl Affinity {
    /// A confirmed affinity.
    pub const CONFIRMED: Affinity = Affinity {
        state: AffinityState::Confirmed,
    };
}

/// Splits an affinity key (`ipam/affinity/<node>/<cidr>`) into node and block.
pub fn parse_key(key: &str) -> Option<(&str, IpNet)> {
    let rest = key.strip_prefix(keys::AFFINITY)?;
    let (node, segment) = rest.rsplit_once('/')?;
    Some((node, keys::parse_cidr_segment(segment)?))
}
