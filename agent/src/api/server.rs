//! The local API socket: bound with mode 0600 from the first instant it exists, never stolen
//! from a live agent, removed when serving stops.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::Router;
use tokio::net::UnixListener;

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

/// Binds the API socket at `path` (creating its directory), readable and writable by the
/// owner only.
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
    std::fs::create_dir_all(dir)?;
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

/// Serves `router` on `socket` until `shutdown` completes, then removes the socket file.
pub async fn serve(
    socket: BoundSocket,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let BoundSocket { listener, path } = socket;
    tracing::info!(socket = %path.display(), "local API listening");
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = std::fs::remove_file(&path);
    served
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
