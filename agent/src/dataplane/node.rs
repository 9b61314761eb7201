//! Node-wide kernel settings wren relies on, applied in the agent's own network namespace.
//!
//! `/proc/sys/net` shows the namespace of the thread that opens a file there, so these are
//! the settings of the calling thread's namespace, like every other function of this module.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Forwarding switches, IPv4 first. Writing `ip_forward` also sets it on every interface and
/// on the defaults that new interfaces copy; `conf/all/forwarding` does the same for IPv6.
const FORWARDING: [&str; 2] = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"];

/// Why the node could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A sysctl could not be written.
    #[error("cannot set {path} to {value}: {source}")]
    Sysctl {
        /// The file under /proc/sys.
        path: PathBuf,
        /// The value wanted.
        value: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// What [`prepare_node`] did and what it could not fix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSetup {
    /// Settings changed (`/proc/sys` paths); empty when all were right already.
    pub changed: Vec<String>,
    /// Conditions that will break pods and that wren does not change itself.
    pub warnings: Vec<String>,
}

/// Turns on IPv4 and IPv6 forwarding in the calling thread's network namespace (the node's),
/// writing only what differs. Call once at agent start. Pods need no default route on the
/// node: their gateway is a permanent neighbour entry inside the pod.
pub fn prepare_node() -> Result<NodeSetup, NodeError> {
    prepare_node_at(Path::new("/proc/sys"))
}

fn prepare_node_at(root: &Path) -> Result<NodeSetup, NodeError> {
    let mut setup = NodeSetup::default();
    for (i, key) in FORWARDING.iter().enumerate() {
        let path = root.join(key);
        if i > 0 && !path.exists() {
            setup
                .warnings
                .push("IPv6 is disabled in this kernel: IPv6 pods will not work".into());
            continue;
        }
        if ensure(&path, "1")? {
            setup.changed.push(path.display().to_string());
        }
    }
    Ok(setup)
}

/// Writes `value` unless the file already holds it; returns whether it wrote.
fn ensure(path: &Path, value: &'static str) -> Result<bool, NodeError> {
    let error = |source| NodeError::Sysctl {
        path: path.to_path_buf(),
        value,
        source,
    };
    if fs::read_to_string(path).map_err(error)?.trim() == value {
        return Ok(false);
    }
    fs::write(path, value).map_err(error)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_writes_only_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip_forward");
        fs::write(&path, "0\n").unwrap();
        assert!(ensure(&path, "1").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "1");
        assert!(!ensure(&path, "1").unwrap());
        let missing = dir.path().join("nope");
        assert!(matches!(
            ensure(&missing, "1"),
            Err(NodeError::Sysctl { .. })
        ));
    }
}
