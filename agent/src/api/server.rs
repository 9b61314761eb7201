//! The local API socket: bound with mode 0600 in a directory only its owner can write, from
//! the first instant it exists, never stolen from a live agent, removed when serving stops.
//!
//! Serving is bounded so that no client can starve the CNI plugin: a request's header must
//! arrive within [`HEADER_READ_TIMEOUT`] and its body within [`BODY_READ_TIMEOUT`], bodies
//! are at most [`MAX_BODY`] bytes, and at most [`MAX_CONNECTIONS`] connections are served at
//! once (more wait in the listen backlog; each silent one ends within the header timeout).

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, watch};

/// How long a client may take to send a request's header before its connection is closed.
/// The plugin sends its request as soon as it connects.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's body (answered with 408 after).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body accepted (a CNI request is a few KiB; 413 above).
pub const MAX_BODY: usize = 1 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// A listening socket at its final path.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl BoundSocket {
    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the socket's directory (and any missing parent) with mode 0700, whatever the
/// umask; refuses an existing one that group or others may write, where another user could
/// move the socket away and listen in its place.
fn private_directory(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            if meta.mode() & 0o022 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the socket's directory {} is writable by others (mode {:o}): \
                         another user could replace the socket; use a directory only root \
                         can write",
                        dir.display(),
                        meta.mode() & 0o7777
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            // The umask may have taken bits away, never added any; say it exactly anyway.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

/// Binds the API socket at `path` (creating its directory, 0700), readable and writable by
/// the owner only.
///
/// The socket is bound under a temporary name, restricted to 0600, and then renamed into
/// place, so there is no moment at which another user could connect. A socket file left by
/// an agent that died is replaced; one that still accepts connections is an error, so two
/// agents never share a socket. Needs a tokio runtime.
pub fn bind_socket(path: &Path) -> io::Result<BoundSocket> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    private_directory(dir)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another agent is serving on {}", path.display()),
            ));
        }
    }
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let staging = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener = std::os::unix::net::UnixListener::bind(&staging)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    listener.set_nonblocking(true)?;
    Ok(BoundSocket {
        listener: UnixListener::from_std(listener)?,
        path: path.to_path_buf(),
    })
}

/// Reads the whole request body within [`BODY_READ_TIMEOUT`] and [`MAX_BODY`] before the
/// route sees it, so a client that stalls mid-body holds nothing for long.
async fn read_body_within(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body unreadable or over {MAX_BODY} bytes: {e}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {BODY_READ_TIMEOUT:?}"),
        )
            .into_response(),
    }
}

/// Serves `router` on `socket` until `shutdown` completes, then lets the open connections
/// finish and removes the socket file.
pub async fn serve(
    socket: BoundSocket,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let BoundSocket { listener, path } = socket;
    tracing::info!(socket = %path.display(), "local API listening");
    let router = router.layer(axum::middleware::from_fn(read_body_within));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (closing, closing_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: wait for connections to end.
                    tracing::warn!(error = %e, "local API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "local API connection ended");
                    }
                }
                _ = closing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    let _ = closing.send(true);
    // Every slot back means every connection has ended.
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_and_not_stolen_from_a_live_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        let first = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = bind_socket(&path).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
        drop(first);
        // The file is left behind by a "dead" agent: it is replaced.
        let second = bind_socket(&path).unwrap();
        assert_eq!(second.path(), path);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no staging file is left");
    }

    #[tokio::test]
    async fn the_directory_is_private_whatever_the_umask_and_a_shared_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/wren/agent.sock");
        // The process-wide umask: other tests may create files meanwhile, only more openly.
        let before = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let bound = bind_socket(&path);
        nix::sys::stat::umask(before);
        let _bound = bound.unwrap();
        for made in [dir.path().join("run/wren"), dir.path().join("run")] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", made.display());
        }
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind_socket(&shared.join("agent.sock")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("writable by others"), "{err}");
        assert!(!shared.join("agent.sock").exists());
    }

    /// A client that connects and sends part of a header, then nothing.
    async fn stall(path: &Path) -> tokio::net::UnixStream {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
        stream
            .write_all(b"POST /v1/cni/add HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stream
    }

    /// One whole request; the status code of the reply.
    async fn request(path: &Path) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
        stream
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
        let text = String::from_utf8_lossy(&reply);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn stalled_clients_are_cut_off_and_others_still_answered() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let socket = bind_socket(&path).unwrap();
        let router = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(socket, router, async {
            let _ = stopped.await;
        }));
        let mut stalled = Vec::new();
        for _ in 0..200 {
            stalled.push(stall(&path).await);
        }
        // Answered at once although 200 connections hold partial headers.
        let started = std::time::Instant::now();
        assert_eq!(request(&path).await, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Each stalled connection is closed by the agent after the header timeout.
        let mut first = stalled.remove(0);
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(3),
            first.read(&mut buf),
        )
        .await;
        assert!(
            matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
            "still open after {HEADER_READ_TIMEOUT:?}"
        );
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_is_answered_408() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let socket = bind_socket(&path).unwrap();
        let router = Router::new().route(
            "/in",
            axum::routing::post(|body: String| async move { body }),
        );
        let _server = tokio::spawn(serve(socket, router, std::future::pending()));
        let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        stream
            .write_all(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(
            BODY_READ_TIMEOUT + Duration::from_secs(3),
            stream.read_to_end(&mut reply),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        std::fs::write(&path, b"data").unwrap();
        assert_eq!(
            bind_socket(&path).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
    }
}
