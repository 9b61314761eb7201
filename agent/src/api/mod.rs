//! The agent's local API: HTTP/1.1 + JSON over a unix socket (`/run/wren/agent.sock`, mode
//! 0600), which the `wren-cni` plugin calls.
//!
//! - [`service`]: what the API serves ([`CniService`]), independent of HTTP.
//! - [`routes`]: the axum router; [`routes::cni_routes`] gives the `/v1/cni/*` routes as a
//!   `Router` that other routes (`wren status`, …) can be merged with.
//! - [`server`]: binding the socket safely and serving a router on it.
//!
//! The request and response bodies are defined in [`wren_cni::wire`], shared with the plugin.

pub mod routes;
pub mod server;
pub mod service;

pub use routes::{RequestObserver, cni_routes};
pub use server::{bind_socket, serve};
pub use service::CniService;
