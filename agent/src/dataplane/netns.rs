//! Reaching into another network namespace (a pod's) without moving the calling thread.
//!
//! A netlink socket belongs to the namespace it was created in, so a short-lived thread joins
//! the target namespace, opens the socket and exits; the socket keeps working from any thread.
//! The caller's own thread never changes namespace, so nothing can leave it stranded in a
//! pod's namespace on an error path.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use super::netlink::{Netlink, NetlinkError};

/// Why a namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path cannot be opened (most often: the namespace is gone).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The namespace path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The path exists but is not a network namespace, or joining it was refused.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The namespace path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket inside the namespace could not be opened.
    #[error("netlink socket in network namespace {path}: {source}")]
    Socket {
        /// The namespace path given.
        path: PathBuf,
        /// Why.
        source: NetlinkError,
    },
}

impl NetnsError {
    /// Whether the namespace does not exist (any more).
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A network namespace opened by path (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`, ...).
/// Holding it keeps the namespace alive.
pub(crate) struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens the namespace file.
    pub(crate) fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Netns {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The open namespace file, for `IFLA_NET_NS_FD`.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Opens a netlink socket inside the namespace. This also proves the file is a network
    /// namespace: joining anything else fails.
    pub(crate) fn netlink(&self) -> Result<Netlink, NetnsError> {
        let path = self.path.clone();
        let fd = self.file.try_clone().map_err(|source| NetnsError::Enter {
            path: path.clone(),
            source,
        })?;
        let joined = std::thread::Builder::new()
            .name("wren-netns".into())
            .spawn(move || -> Result<Netlink, NetnsError> {
                setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
                    path: path.clone(),
                    source: io::Error::from(e),
                })?;
                Netlink::open().map_err(|source| NetnsError::Socket { path, source })
            })
            .map_err(|source| NetnsError::Enter {
                path: self.path.clone(),
                source,
            })?
            .join();
        match joined {
            Ok(result) => result,
            Err(_) => Err(NetnsError::Enter {
                path: self.path.clone(),
                source: io::Error::other("namespace thread panicked"),
            }),
        }
    }
}
