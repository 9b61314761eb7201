//! `wren-cni`: CNI spec types (requests, results in every supported version, errors) shared by
//! the `wren-cni` plugin binary and the agent that serves it.
//!
//! - [`version`]: the spec versions wren speaks (0.3.0 through 1.1.0) and what each allows.
//! - [`env`](mod@env): the `CNI_*` environment, validated per command.
//! - [`config`]: the network configuration on stdin (`agentSocket`, `mtu`, `ipam`, `logLevel`).
//! - [`annotations`]: pool and address choices a pod makes through its annotations.
//! - [`result`]: the CNI result, read from and written in any supported version.
//! - [`error`]: CNI error codes and the error JSON.
//! - [`wire`]: the local API contract between plugin and agent.
//! - [`client`]: the plugin's HTTP client for the agent's unix socket.
//! - [`plugin`]: one invocation, end to end.

pub mod annotations;
pub mod client;
pub mod config;
pub mod env;
pub mod error;
pub mod plugin;
pub mod result;
pub mod version;
pub mod wire;

pub use config::NetConf;
pub use env::{Attachment, Command};
pub use error::{CniError, ErrorCode};
pub use result::CniResult;
pub use version::SpecVersion;
