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
    /// The socket or its directory could have been put there by someone other than root (or
    /// this plugin's user): talking to it could hand a pod's setup to an impostor.
    #[error("refusing the agent socket {socket}: {reason}")]
    Untrusted {
        /// The socket.
        socket: PathBuf,
        /// What is wrong with it.
        reason: String,
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
        trusted_socket(&self.socket, nix::unistd::geteuid().as_raw())?;
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

/// Checks that only root (or `euid`, the plugin's own user) can have put the socket at
/// `socket`: it is a socket owned by one of them, in a directory owned by one of them that
/// nobody else may write. A socket that does not exist is left to `connect` to report.
pub fn trusted_socket(socket: &Path, euid: u32) -> Result<(), TransportError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let untrusted = |reason: String| TransportError::Untrusted {
        socket: socket.to_path_buf(),
        reason,
    };
    let trusted_owner = |uid: u32| uid == 0 || uid == euid;
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err(untrusted("it is not a unix socket".to_owned()));
    }
    if !trusted_owner(meta.uid()) {
        return Err(untrusted(format!(
            "it is owned by uid {}, not root",
            meta.uid()
        )));
    }
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_meta = std::fs::metadata(dir)
        .map_err(|e| untrusted(format!("cannot read its directory {}: {e}", dir.display())))?;
    if !trusted_owner(dir_meta.uid()) {
        return Err(untrusted(format!(
            "its directory {} is owned by uid {}, not root",
            dir.display(),
            dir_meta.uid()
        )));
    }
    if dir_meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "its directory {} is writable by others (mode {:o}); the agent makes it 0700",
            dir.display(),
            dir_meta.mode() & 0o7777
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_a_socket_root_placed_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        chmod(&run, 0o700);
        let socket = run.join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        trusted_socket(&socket, me).unwrap();
        // Absent: connect says so.
        trusted_socket(&run.join("none.sock"), me).unwrap();

        chmod(&run, 0o777);
        let err = trusted_socket(&socket, me).unwrap_err().to_string();
        assert!(
            err.contains("writable by others") && err.contains("777"),
            "{err}"
        );
        chmod(&run, 0o700);

        // Put there by another user.
        if me == 0 {
            let nobody = Some(nix::unistd::Uid::from_raw(65534));
            nix::unistd::chown(&socket, nobody, None).unwrap();
            let err = trusted_socket(&socket, me).unwrap_err().to_string();
            assert!(err.contains("uid 65534, not root"), "{err}");
            nix::unistd::chown(&socket, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
            nix::unistd::chown(&run, nobody, None).unwrap();
            let err = trusted_socket(&socket, me).unwrap_err().to_string();
            assert!(
                err.contains("directory") && err.contains("not root"),
                "{err}"
            );
        }

        let file = run.join("file.sock");
        std::fs::write(&file, b"").unwrap();
        let err = trusted_socket(&file, me).unwrap_err().to_string();
        assert!(err.contains("not a unix socket"), "{err}");
    }
}
