//! A blocking HTTP/1.1 client for the agent's unix socket: one connection, one request.
//!
//! hyper does the HTTP; a current-thread tokio runtime drives it for the one request, which
//! costs a few tens of microseconds and no threads.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;

/// What the agent answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
}

/// Why a call did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing accepts connections on the socket (absent, refused, or no permission).
    #[error("cannot connect to the wren agent at {socket}: {source}")]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// What connect said.
        source: io::Error,
    },
    /// Connected, but the exchange broke off.
    #[error("the wren agent at {socket} broke off the request: {reason}")]
    Broken {
        /// The socket used.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The agent did not answer in time.
    #[error("the wren agent at {socket} did not answer within {timeout:?}")]
    Timeout {
        /// The socket used.
        socket: PathBuf,
        /// How long the plugin waited.
        timeout: Duration,
    },
}

/// Something that can carry one request to the agent. The plugin logic is written against
/// this so it can be exercised without a socket.
pub trait AgentTransport {
    /// POSTs `body` (JSON) to `path` and returns the reply.
    fn post(&self, path: &str, body: Vec<u8>) -> Result<Reply, TransportError>;
}

/// The real transport: HTTP/1.1 over a unix socket.
#[derive(Debug, Clone)]
pub struct UnixHttpClient {
    socket: PathBuf,
    timeout: Duration,
}

impl UnixHttpClient {
    /// A client for the agent at `socket`; each request gives up after `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn exchange(&self, path: &str, body: Vec<u8>) -> Result<Reply, TransportError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| TransportError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let broken = |e: &dyn std::fmt::Display| TransportError::Broken {
            socket: self.socket.clone(),
            reason: e.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| broken(&e))?;
        let request = hyper::Request::post(path)
            .header(HOST, "wren-agent")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| broken(&e))?;
        // The connection does the socket I/O on its own task; the request and its body are
        // answered through it. Errors on the connection surface as errors of the exchange.
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| broken(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| broken(&e))?
            .to_bytes();
        Ok(Reply {
            status,
            body: body.to_vec(),
        })
    }
}

impl AgentTransport for UnixHttpClient {
    fn post(&self, path: &str, body: Vec<u8>) -> Result<Reply, TransportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| TransportError::Broken {
                socket: self.socket.clone(),
                reason: format!("cannot start the I/O runtime: {e}"),
            })?;
        runtime.block_on(async {
            match tokio::time::timeout(self.timeout, self.exchange(path, body)).await {
                Ok(reply) => reply,
                Err(_) => Err(TransportError::Timeout {
                    socket: self.socket.clone(),
                    timeout: self.timeout,
                }),
            }
        })
    }
}
