//! What an allocation asks for and what it returns, and the entry point that hands a request
//! to its node's allocator.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::{mpsc, oneshot};

use crate::error::{IpamError, Result};
use crate::worker::{Job, Worker};
use crate::{Family, Ipam};

/// An allocation request: addresses for `handle` on `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateRequest {
    /// The handle the addresses are held under (`<network>.<containerID>`).
    pub handle: String,
    /// The node the addresses are for; its blocks are used first.
    pub node: String,
    /// Wants an IPv4 address.
    pub ipv4: bool,
    /// Wants an IPv6 address.
    pub ipv6: bool,
    /// Only these pools (by name); every enabled pool when empty.
    pub pools: Vec<String>,
    /// These exact addresses (static IPs); they count for their family.
    pub addresses: Vec<IpAddr>,
    /// Upper bound on blocks the node may hold; the cluster's `maxBlocksPerNode` when absent
    /// (0 = unlimited).
    pub max_blocks_per_node: Option<u32>,
}

impl AllocateRequest {
    /// One IPv4 address from any enabled pool.
    pub fn new(handle: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            handle: handle.into(),
            node: node.into(),
            ipv4: true,
            ipv6: false,
            pools: Vec::new(),
            addresses: Vec::new(),
            max_blocks_per_node: None,
        }
    }

    /// Asks for these families instead.
    pub fn families(mut self, ipv4: bool, ipv6: bool) -> Self {
        self.ipv4 = ipv4;
        self.ipv6 = ipv6;
        self
    }

    /// Restricts the pools.
    pub fn pools<S: Into<String>>(mut self, pools: impl IntoIterator<Item = S>) -> Self {
        self.pools = pools.into_iter().map(Into::into).collect();
        self
    }

    /// Asks for a specific address (of its family).
    pub fn address(mut self, address: IpAddr) -> Self {
        self.addresses.push(address);
        self
    }

    /// The families to allocate automatically: those asked for without a static address.
    pub(crate) fn automatic_families(&self) -> Vec<Family> {
        let statics = |f: Family| self.addresses.iter().any(|a| Family::of_addr(a) == f);
        [(Family::V4, self.ipv4), (Family::V6, self.ipv6)]
            .into_iter()
            .filter(|&(f, wanted)| wanted && !statics(f))
            .map(|(f, _)| f)
            .collect()
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(IpamError::InvalidRequest(why.to_owned()));
        if !is_segment(&self.handle) {
            return bad("the handle must be non-empty, without '/' or whitespace");
        }
        if !is_segment(&self.node) {
            return bad("the node name must be non-empty, without '/' or whitespace");
        }
        if !self.ipv4 && !self.ipv6 && self.addresses.is_empty() {
            return bad("ask for IPv4, IPv6 or a specific address");
        }
        let mut seen = self.addresses.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.addresses.len() {
            return bad("the same address is asked for twice");
        }
        Ok(())
    }
}

fn is_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_whitespace)
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedAddress {
    /// The address.
    pub address: IpAddr,
    /// The block it comes from.
    pub block: IpNet,
    /// The pool it comes from.
    pub pool: String,
    /// True when the block is affine to another node: this node must announce the address
    /// as a host route.
    pub borrowed: bool,
}

impl AllocatedAddress {
    /// The address as a host network (/32 or /128), as a pod's interface carries it.
    pub fn host_net(&self) -> IpNet {
        match self.address {
            IpAddr::V4(a) => Ipv4Net::from(a).into(),
            IpAddr::V6(a) => Ipv6Net::from(a).into(),
        }
    }
}

/// The result of an allocation: every address the handle now holds for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The handle.
    pub handle: String,
    /// The addresses, static ones first, then IPv4, then IPv6.
    pub addresses: Vec<AllocatedAddress>,
}

impl Allocation {
    /// The IPv4 address, if any.
    pub fn ipv4(&self) -> Option<&AllocatedAddress> {
        self.addresses.iter().find(|a| a.address.is_ipv4())
    }

    /// The IPv6 address, if any.
    pub fn ipv6(&self) -> Option<&AllocatedAddress> {
        self.addresses.iter().find(|a| a.address.is_ipv6())
    }
}

impl Ipam {
    /// Allocates addresses for a handle on a node: from the node's blocks, else from a newly
    /// claimed block, else (without strict affinity) borrowed from another node's block.
    /// Dual-stack requests get both addresses or neither.
    ///
    /// Idempotent per handle: a handle that already holds an address of a requested family
    /// (or the requested static address) gets it back instead of a second one.
    ///
    /// Cancel-safe: the work runs in the node's allocator task, so dropping this future never
    /// leaves half a write behind; an allocation that commits after its caller went away is
    /// held by its handle and found by [`Ipam::check`].
    pub async fn allocate(&self, request: AllocateRequest) -> Result<Allocation> {
        request.validate()?;
        let node = request.node.clone();
        let (reply, answer) = oneshot::channel();
        self.submit(&node, Job::Allocate { request, reply }).await?;
        answer
            .await
            .map_err(|_| IpamError::AllocatorStopped(node))?
    }

    /// Hands a job to the allocator of `node`, starting it if needed.
    pub(crate) async fn submit(&self, node: &str, mut job: Job) -> Result<()> {
        for _ in 0..2 {
            match self.worker(node).send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => {
                    // The allocator task is gone (its runtime ended); start a new one.
                    job = back;
                    self.lock_workers().remove(node);
                }
            }
        }
        Err(IpamError::AllocatorStopped(node.to_owned()))
    }

    fn lock_workers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, mpsc::UnboundedSender<Job>>>
    {
        self.inner.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker(&self, node: &str) -> mpsc::UnboundedSender<Job> {
        let mut workers = self.lock_workers();
        if let Some(sender) = workers.get(node).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(Worker::new(node, self.shared().clone()).run(receiver));
        workers.insert(node.to_owned(), sender.clone());
        sender
    }
}
