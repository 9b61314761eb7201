//! The two things a CNI request drives besides the workload records: address allocation and
//! the pod's links. Each is a narrow trait over the real component's own types, so the handler
//! can be tested with fakes and runs for real through the thin implementations here
//! ([`wren_ipam::Ipam`] and [`KernelPods`]).

use std::net::IpAddr;

use async_trait::async_trait;
use wren_ipam::error::IpamError;
use wren_ipam::pool::NamedPool;
use wren_ipam::{AllocateRequest, Ipam};

use crate::dataplane::{HostVeth, PodError, PodInterface, PodSpec, Problem};

/// Address allocation, as the CNI handler uses it.
#[async_trait]
pub trait Allocator: Send + Sync + 'static {
    /// Allocates the request's addresses under its handle, all or nothing. Asking again for a
    /// handle that already holds addresses returns those.
    async fn allocate(&self, request: AllocateRequest) -> Result<Vec<IpAddr>, IpamError>;

    /// Releases everything the handle holds and returns it; empty when it held nothing.
    async fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError>;

    /// The addresses the handle holds now.
    async fn holds(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError>;

    /// Every pool, enabled or not (STATUS decides from these whether ADD can work).
    async fn pools(&self) -> Result<Vec<NamedPool>, IpamError>;
}

#[async_trait]
impl Allocator for Ipam {
    async fn allocate(&self, request: AllocateRequest) -> Result<Vec<IpAddr>, IpamError> {
        let allocation = Ipam::allocate(self, request).await?;
        Ok(allocation.addresses.iter().map(|a| a.address).collect())
    }

    async fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.release_handle(handle).await
    }

    async fn holds(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.handle_addresses(handle).await
    }

    async fn pools(&self) -> Result<Vec<NamedPool>, IpamError> {
        self.list_pools().await
    }
}

/// The pod's links, as the CNI handler uses them.
#[async_trait]
pub trait PodNetwork: Send + Sync + 'static {
    /// Creates the veth with its pod end born in the pod's namespace, the addresses and
    /// routes on both sides. On error nothing it created is left; for a workload that already
    /// has an interface, the old one is replaced.
    async fn setup(&self, spec: PodSpec) -> Result<PodInterface, PodError>;

    /// Removes the workload's interface (both ends, the host routes). `Ok(false)` when there
    /// was nothing to remove.
    async fn teardown(&self, workload_id: &str) -> Result<bool, PodError>;

    /// What is wrong with the workload's interface compared with `spec`; empty when nothing.
    async fn check(&self, spec: PodSpec) -> Result<Vec<Problem>, PodError>;

    /// Every pod's host veth on the node.
    async fn host_interfaces(&self) -> Result<Vec<HostVeth>, PodError>;

    /// Removes the host veth `name` (with its pod end and routes); `Ok(false)` when there is
    /// none.
    async fn remove_host_interface(&self, name: &str) -> Result<bool, PodError>;
}

/// The kernel: [`crate::dataplane`]'s pod functions, run on tokio's blocking threads (they
/// wait on netlink), in the agent's network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPods;

async fn blocking<T: Send + 'static>(
    step: &'static str,
    f: impl FnOnce() -> Result<T, PodError> + Send + 'static,
) -> Result<T, PodError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(PodError::Invalid(format!("{step} did not finish: {e}"))))
}

#[async_trait]
impl PodNetwork for KernelPods {
    async fn setup(&self, spec: PodSpec) -> Result<PodInterface, PodError> {
        blocking("pod setup", move || crate::dataplane::setup_pod(&spec)).await
    }

    async fn teardown(&self, workload_id: &str) -> Result<bool, PodError> {
        let id = workload_id.to_string();
        blocking("pod teardown", move || crate::dataplane::teardown_pod(&id)).await
    }

    async fn check(&self, spec: PodSpec) -> Result<Vec<Problem>, PodError> {
        blocking("pod check", move || crate::dataplane::check_pod(&spec)).await
    }

    async fn host_interfaces(&self) -> Result<Vec<HostVeth>, PodError> {
        blocking("listing host interfaces", crate::dataplane::host_veths).await
    }

    async fn remove_host_interface(&self, name: &str) -> Result<bool, PodError> {
        let name = name.to_owned();
        blocking("removing a host interface", move || {
            crate::dataplane::remove_host_veth(&name)
        })
        .await
    }
}
