//! Watching kernel routes come and go in many namespaces at once, each change stamped with
//! the moment it was seen: for measuring how long a route takes to reach every node of a
//! large lab, where polling each node in turn would be too coarse.
//!
//! One `ip monitor route` per namespace; a thread per monitor reads its lines as the kernel
//! reports them (`ip monitor` writes each event as it happens).

use std::io::{self, BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::ChildGuard;

/// One route added or removed in one watched namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// Index of the namespace in the list given to [`RouteMonitor::start`].
    pub ns: usize,
    /// The destination as `ip` prints it, with the prefix length (`10.65.3.0/26`,
    /// `10.70.0.9/32`).
    pub destination: String,
    /// Added (or replaced); false: removed.
    pub added: bool,
    /// When the change was read.
    pub at: Instant,
}

/// Route changes in several namespaces, as they happen.
#[derive(Debug)]
pub struct RouteMonitor {
    changes: Arc<Mutex<Vec<RouteChange>>>,
    // Declared before the threads: the monitors end first, which ends the readers.
    monitors: Vec<ChildGuard>,
    readers: Vec<JoinHandle<()>>,
}

impl RouteMonitor {
    /// Starts watching IPv4 routes in each of `namespaces` (names as `ip netns` knows them).
    /// Returns once every monitor runs; give the monitors a moment before the change to
    /// measure.
    pub fn start(namespaces: &[String]) -> io::Result<Self> {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let mut monitors = Vec::new();
        let mut readers = Vec::new();
        for (ns, name) in namespaces.iter().enumerate() {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", name, "ip", "-4", "monitor", "route"])
                .stdout(Stdio::piped());
            let mut monitor =
                ChildGuard::spawn_keep_stdout(format!("ip monitor in {name}"), &mut command)?;
            let stdout = monitor
                .child_mut()
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("ip monitor without stdout"))?;
            let changes = changes.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some((destination, added)) = parse_change(&line) {
                        let change = RouteChange {
                            ns,
                            destination,
                            added,
                            at: Instant::now(),
                        };
                        changes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(change);
                    }
                }
            }));
            monitors.push(monitor);
        }
        Ok(Self {
            changes,
            monitors,
            readers,
        })
    }

    /// Waits until each namespace of `among` has seen `destination` added (or removed, with
    /// `added` false) after `since`; returns, in the order of `among`, how long after
    /// `since` each saw it. Fails after `timeout` naming the namespaces still waiting.
    pub fn wait(
        &self,
        destination: &str,
        added: bool,
        among: &[usize],
        since: Instant,
        timeout: Duration,
    ) -> Result<Vec<Duration>, String> {
        let deadline = Instant::now() + crate::vm::scaled(timeout);
        loop {
            let seen: Vec<Option<Duration>> = {
                let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
                among
                    .iter()
                    .map(|ns| {
                        changes
                            .iter()
                            .find(|c| {
                                c.ns == *ns
                                    && c.added == added
                                    && c.at >= since
                                    && c.destination == destination
                            })
                            .map(|c| c.at - since)
                    })
                    .collect()
            };
            if seen.iter().all(Option::is_some) {
                return Ok(seen.into_iter().flatten().collect());
            }
            if Instant::now() > deadline {
                let waiting: Vec<usize> = among
                    .iter()
                    .zip(&seen)
                    .filter(|(_, s)| s.is_none())
                    .map(|(ns, _)| *ns)
                    .collect();
                return Err(format!(
                    "{destination} not {} within {timeout:?} in namespaces {waiting:?}",
                    if added { "added" } else { "removed" }
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        // The guards stop the monitors; their readers then see the end of the pipe.
        self.monitors.clear();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// The destination of an `ip monitor route` line and whether it was added; `None` for lines
/// that are not route changes or are about local and broadcast routes.
fn parse_change(line: &str) -> Option<(String, bool)> {
    let (added, rest) = match line.strip_prefix("Deleted ") {
        Some(rest) => (false, rest),
        None => (true, line),
    };
    let mut words = rest.split_whitespace();
    let mut destination = words.next()?;
    // Route types come first when not unicast: `blackhole 10.65.3.0/26`, `local …`.
    if matches!(destination, "local" | "broadcast" | "multicast") {
        return None;
    }
    if matches!(destination, "blackhole" | "unreachable" | "prohibit") {
        destination = words.next()?;
    }
    if destination.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some((format!("{destination}/32"), added));
    }
    let (address, length) = destination.split_once('/')?;
    (address.parse::<std::net::Ipv4Addr>().is_ok() && length.parse::<u8>().is_ok())
        .then(|| (destination.to_owned(), added))
}

#[cfg(test)]
mod tests {
    use super::parse_change;

    #[test]
    fn reads_additions_and_removals_with_their_prefix_length() {
        let added = |d: &str| Some((d.to_owned(), true));
        assert_eq!(
            parse_change("10.65.9.128/26 via 10.0.0.13 dev eth0 proto bgp"),
            added("10.65.9.128/26")
        );
        assert_eq!(
            parse_change("10.70.0.9 via 10.0.0.13 dev eth0 proto bgp"),
            added("10.70.0.9/32")
        );
        assert_eq!(
            parse_change("Deleted 10.65.9.128/26 via 10.0.0.13 dev eth0 proto bgp"),
            Some(("10.65.9.128/26".to_owned(), false))
        );
        assert_eq!(
            parse_change("blackhole 10.65.9.128/26 proto 201"),
            added("10.65.9.128/26")
        );
        assert_eq!(
            parse_change("local 10.0.0.11 dev eth0 table local proto kernel"),
            None
        );
        assert_eq!(parse_change("default via 10.0.0.1 dev eth0"), None);
    }
}
