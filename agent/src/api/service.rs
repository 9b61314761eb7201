//! What the local API serves for the CNI plugin, as a trait: the HTTP layer calls it, the
//! [`crate::cni::CniHandler`] implements it, tests substitute their own.

use async_trait::async_trait;
use wren_cni::wire::{AttachmentRequest, NetworkRequest};
use wren_cni::{CniError, CniResult};

/// The five CNI operations the agent performs for the plugin.
#[async_trait]
pub trait CniService: Send + Sync + 'static {
    /// ADD: attach the container; returns the result in wren's version-neutral form.
    async fn add(&self, request: AttachmentRequest) -> Result<CniResult, CniError>;
    /// DEL: detach the container; succeeds when there is nothing left to remove.
    async fn del(&self, request: AttachmentRequest) -> Result<(), CniError>;
    /// CHECK: verify the attachment; the error says what is wrong.
    async fn check(&self, request: AttachmentRequest) -> Result<(), CniError>;
    /// GC: remove this network's attachments that are not in the valid list.
    async fn gc(&self, request: NetworkRequest) -> Result<(), CniError>;
    /// STATUS: whether an ADD could succeed now.
    async fn status(&self, request: NetworkRequest) -> Result<(), CniError>;
}
