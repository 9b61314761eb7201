//! The two things a CNI request drives besides the datastore: address allocation and the
//! pod's links. Each is a narrow trait so the handler can be tested with fakes and run with
//! the real IPAM and dataplane through small adapters.

use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use ipnet::IpNet;

/// What ADD asks the allocator for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRequest {
    /// IPAM handle (`<network>.<containerID>`).
    pub handle: String,
    /// This node.
    pub node: String,
    /// Wants an IPv4 address.
    pub ipv4: bool,
    /// Wants an IPv6 address.
    pub ipv6: bool,
    /// Only these pools, in order of preference; any enabled pool when empty.
    pub pools: Vec<String>,
    /// Exactly these addresses (the runtime's `ips` capability).
    pub addresses: Vec<IpAddr>,
    /// Recorded with the allocation so `wren ipam show --ip` can say who holds it.
    pub attributes: Vec<(String, String)>,
}

/// Why an allocation or release failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free address in the pools the request may use.
    #[error("{0}")]
    Exhausted(String),
    /// No enabled pool can serve the request.
    #[error("{0}")]
    NoUsablePool(String),
    /// A specific address was asked for that is taken or in no pool.
    #[error("{0}")]
    AddressUnavailable(String),
    /// The datastore cannot be reached (or kept changing); retrying may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The request makes no sense to the allocator.
    #[error("{0}")]
    Invalid(String),
    /// Anything else the allocator reports.
    #[error("{0}")]
    Other(String),
}

/// Address allocation, as the CNI handler uses it.
#[async_trait]
pub trait Allocator: Send + Sync + 'static {
    /// Allocates the request's addresses under its handle; all or nothing. Asking again for
    /// a handle that already holds addresses returns those.
    async fn allocate(&self, request: AddressRequest) -> Result<Vec<IpAddr>, AllocError>;

    /// Releases everything the handle holds; `Ok(0)` when it holds nothing.
    async fn release(&self, handle: &str) -> Result<usize, AllocError>;

    /// The addresses the handle holds now.
    async fn holds(&self, handle: &str) -> Result<Vec<IpAddr>, AllocError>;

    /// Whether an allocation for these pools and families could succeed now (STATUS): the
    /// datastore answers and an enabled pool exists for each family.
    async fn ready(&self, pools: &[String], ipv4: bool, ipv6: bool) -> Result<(), AllocError>;
}

/// Everything the dataplane needs to build a pod's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Stable id of the attachment; the host veth's name derives from it.
    pub workload_id: String,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Interface name inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The pod's addresses, as host prefixes (/32, /128).
    pub addresses: Vec<IpNet>,
    /// MTU of the pair.
    pub mtu: u32,
}

/// What the dataplane built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLinks {
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side MAC (`ee:ee:ee:ee:ee:ee`).
    pub host_mac: String,
    /// Pod-side MAC.
    pub pod_mac: String,
}

/// Why the dataplane could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// The pod's network namespace does not exist (or is not a network namespace).
    #[error("{0}")]
    NetnsMissing(String),
    /// An interface of that name exists already, in the pod or on the host.
    #[error("{0}")]
    NameTaken(String),
    /// The kernel refused a change.
    #[error("{0}")]
    Kernel(String),
}

/// The pod's links, as the CNI handler uses them.
#[async_trait]
pub trait PodNetwork: Send + Sync + 'static {
    /// The host-side veth name of an attachment (`wren` + 11 hex digits of a hash of the id).
    fn host_ifname(&self, workload_id: &str) -> String;

    /// Creates the veth with its pod end born in the pod's namespace, the addresses, the pod's
    /// routes and the host routes. On error nothing it created is left behind.
    async fn setup(&self, pod: &PodSpec) -> Result<PodLinks, DataplaneError>;

    /// Removes the host veth (and with it the pod end and the host routes). Succeeds when the
    /// link is already gone.
    async fn teardown(&self, host_ifname: &str) -> Result<(), DataplaneError>;

    /// What is wrong with the pod's links compared with `pod` and `links`; empty when nothing.
    async fn check(&self, pod: &PodSpec, links: &PodLinks) -> Result<Vec<String>, DataplaneError>;
}
