//! The contract between the plugin and the agent's local API (HTTP/1.1 + JSON over the unix
//! socket).
//!
//! Every call is a `POST` of a JSON body to one of the [`paths`]. Success is a 2xx status:
//! ADD answers `200` with a [`CniResult`](crate::result::CniResult) in wren's version-neutral
//! form (the plugin renders it in the configuration's version); DEL, CHECK, GC and STATUS answer
//! `204` with no body. Failure is a 4xx/5xx status whose body is a [`CniError`](crate::CniError)
//! (`{code, msg, details}`), which the plugin prints as is with the `cniVersion` added.

use serde::{Deserialize, Serialize};

use crate::config::NetConf;
use crate::env::Attachment;

/// Request paths of the local API.
pub mod paths {
    /// ADD: body [`super::AttachmentRequest`], answer a result.
    pub const ADD: &str = "/v1/cni/add";
    /// DEL: body [`super::AttachmentRequest`].
    pub const DEL: &str = "/v1/cni/del";
    /// CHECK: body [`super::AttachmentRequest`].
    pub const CHECK: &str = "/v1/cni/check";
    /// GC: body [`super::NetworkRequest`].
    pub const GC: &str = "/v1/cni/gc";
    /// STATUS: body [`super::NetworkRequest`].
    pub const STATUS: &str = "/v1/cni/status";
}

/// ADD, DEL and CHECK: one attachment and the network configuration it is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRequest {
    /// Container, interface, netns and `CNI_ARGS`.
    pub attachment: Attachment,
    /// The parsed network configuration, `prevResult` included.
    pub config: NetConf,
}

/// GC and STATUS: a whole network (GC's valid attachments are inside the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRequest {
    /// The parsed network configuration.
    pub config: NetConf,
}
