//! Handles: the name a set of addresses is allocated under (`<network>.<containerID>` for a
//! pod, `vxlan-tunnel-addr-<node>` for a node's tunnel). The document at
//! `ipam/handles/<handle>` lists the addresses and their blocks, so release by handle goes
//! straight to the right blocks.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The stored handle document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handle {
    /// Node the addresses were allocated for.
    pub node: String,
    /// When the first address was allocated (seconds since the Unix epoch); the leak check
    /// leaves younger handles alone, as their workload may not be recorded yet.
    #[serde(default)]
    pub created_at: u64,
    /// The addresses held, with the block each lies in.
    #[serde(default)]
    pub addresses: Vec<HandleAddress>,
}

/// One address a handle holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleAddress {
    /// The address.
    pub address: IpAddr,
    /// The block it lies in.
    pub block: IpNet,
}

impl Handle {
    /// A handle without addresses yet, created now.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            created_at: now_secs(),
            addresses: Vec::new(),
        }
    }

    /// Drops `address`; true when it was there.
    pub fn remove(&mut self, address: IpAddr) -> bool {
        let before = self.addresses.len();
        self.addresses.retain(|a| a.address != address);
        self.addresses.len() != before
    }

    /// The blocks the handle has addresses in, each once.
    pub fn blocks(&self) -> Vec<IpNet> {
        let mut blocks: Vec<IpNet> = self.addresses.iter().map(|a| a.block).collect();
        blocks.sort();
        blocks.dedup();
        blocks
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
