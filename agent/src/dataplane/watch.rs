//! The kernel's own reports of change to what wren programs, so that a reconcile tick reads
//! the kernel only when something there may have drifted.
//!
//! Two netlink sockets, joined to the kernel's multicast groups: rtnetlink's links,
//! addresses, routes (both families), traffic control and the interfaces' IPv4/IPv6
//! settings (`proxy_arp`, forwarding), and nftables' ruleset changes. Every message counts as
//! a change: wren never parses them, it only learns that the kernel's state moved (its own
//! writes included, which costs one more read that then finds nothing to do). A receive
//! buffer that overflowed (`ENOBUFS`) counts as a change too: the messages lost were changes.
//! If the sockets cannot be opened, or reading them fails, the watch reports itself blind and
//! every tick reads the kernel, as without it.
//!
//! What no group reports (a BPF map edited by hand, a tcx program detached through its link)
//! is left to the full read the controller still makes at least every
//! [`FULL_READ_PERIOD`](crate::daemon::FULL_READ_PERIOD).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};
use netlink_sys::{Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

/// rtnetlink groups (`RTNLGRP_*`, numbered from 1) whose messages mean wren's part of the
/// kernel may have changed.
const ROUTE_GROUPS: [u32; 8] = [
    1,  // RTNLGRP_LINK
    4,  // RTNLGRP_TC
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
    24, // RTNLGRP_IPV4_NETCONF
    25, // RTNLGRP_IPV6_NETCONF
];
/// `NFNLGRP_NFTABLES`: every change of an nftables ruleset.
const NFTABLES_GROUP: u32 = 7;
/// Large enough for any one notification; a longer one is cut, which does not matter since
/// only its arrival counts.
const READ_BUFFER: usize = 16 * 1024;

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
#[error("watching the kernel's change notifications ({what}): {source}")]
pub struct WatchError {
    /// Which socket.
    what: &'static str,
    /// The socket call that failed.
    source: io::Error,
}

/// How many batches of reports each socket has brought since the watch started: two
/// generations are equal when the kernel reported nothing in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelGeneration {
    /// Links, addresses, routes, traffic control, interface settings.
    pub routing: u64,
    /// nftables rulesets.
    pub nftables: u64,
}

/// One subscribed socket and the count of what it brought.
#[derive(Debug, Default)]
struct Source {
    /// Which socket, for messages.
    what: &'static str,
    /// `None` for a watch made without the kernel (unit tests).
    socket: Option<AsyncFd<Socket>>,
    seen: AtomicU64,
}

impl Source {
    fn open(protocol: isize, groups: &[u32], what: &'static str) -> Result<Self, WatchError> {
        let error = |source| WatchError { what, source };
        let mut socket = Socket::new(protocol).map_err(error)?;
        socket.bind(&SocketAddr::new(0, 0)).map_err(error)?;
        for group in groups {
            socket.add_membership(*group).map_err(error)?;
        }
        socket.set_non_blocking(true).map_err(error)?;
        // SAFETY: the socket owns its descriptor until it is dropped with the `AsyncFd`, and
        // `as_raw_fd` always returns that one.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(|e| error(e.into_parts().1))?;
        Ok(Self {
            what,
            socket: Some(socket),
            seen: AtomicU64::new(0),
        })
    }

    /// Reads every message waiting, without blocking, and counts one change if there was
    /// any. Safe to call from any thread, also while the watch task reads.
    fn drain(&self) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let mut buffer = [0u8; READ_BUFFER];
        let mut any = false;
        loop {
            match socket
                .get_ref()
                .recv(&mut &mut buffer[..], libc::MSG_DONTWAIT)
            {
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Messages were dropped: they were changes.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if any {
            self.seen.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// The kernel's change reports, counted.
#[derive(Debug, Default)]
pub struct KernelChanges {
    routing: Arc<Source>,
    nftables: Arc<Source>,
    blind: Arc<AtomicBool>,
}

impl KernelChanges {
    /// Joins the groups in the calling thread's network namespace and counts their messages
    /// on the current tokio runtime for as long as it runs.
    pub fn watch() -> Result<Arc<Self>, WatchError> {
        let changes = Self {
            routing: Arc::new(Source::open(NETLINK_ROUTE, &ROUTE_GROUPS, "rtnetlink")?),
            nftables: Arc::new(Source::open(
                NETLINK_NETFILTER,
                &[NFTABLES_GROUP],
                "nftables",
            )?),
            blind: Arc::default(),
        };
        for source in [&changes.routing, &changes.nftables] {
            tokio::spawn(count(source.clone(), changes.blind.clone()));
        }
        Ok(Arc::new(changes))
    }

    /// The counts so far; `None` once the watch cannot tell (a socket failed), when the
    /// kernel has to be read every time.
    pub fn generation(&self) -> Option<KernelGeneration> {
        if self.blind.load(Ordering::Acquire) {
            return None;
        }
        Some(KernelGeneration {
            routing: self.routing.seen.load(Ordering::Acquire),
            nftables: self.nftables.seen.load(Ordering::Acquire),
        })
    }

    /// The nftables count with every report already sent counted: called right after wren
    /// committed a ruleset of its own, it includes that commit.
    pub fn nftables_now(&self) -> Option<u64> {
        if let Err(e) = self.nftables.drain() {
            go_blind(&self.blind, self.nftables.what, &e);
        }
        self.generation().map(|g| g.nftables)
    }

    /// Counts one batch of reports of routing changes.
    #[cfg(test)]
    pub(crate) fn routing_changed(&self) {
        self.routing.seen.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts one batch of reports of nftables changes.
    #[cfg(test)]
    pub(crate) fn nftables_changed(&self) {
        self.nftables.seen.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reads `source` as messages arrive until it fails.
async fn count(source: Arc<Source>, blind: Arc<AtomicBool>) {
    let Some(socket) = &source.socket else {
        return;
    };
    loop {
        let mut ready = match socket.readable().await {
            Ok(ready) => ready,
            Err(e) => return go_blind(&blind, source.what, &e),
        };
        if let Err(e) = source.drain() {
            return go_blind(&blind, source.what, &e);
        }
        // Only readiness seen before the drain is cleared: a message after it wakes us again.
        ready.clear_ready();
    }
}

/// Stops trusting the counts for good: from now on every tick reads the kernel.
fn go_blind(blind: &AtomicBool, what: &'static str, error: &io::Error) {
    if !blind.swap(true, Ordering::AcqRel) {
        tracing::warn!(what, %error, "kernel change notifications lost; every reconcile reads the kernel");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blind_watch_has_no_generation() {
        let changes = KernelChanges::default();
        let zero = KernelGeneration {
            routing: 0,
            nftables: 0,
        };
        assert_eq!(changes.generation(), Some(zero));
        changes.routing_changed();
        changes.nftables_changed();
        assert_eq!(
            changes.generation(),
            Some(KernelGeneration {
                routing: 1,
                nftables: 1
            })
        );
        go_blind(&changes.blind, "test", &io::Error::other("gone"));
        assert_eq!(changes.generation(), None);
        assert_eq!(changes.nftables_now(), None);
    }
}
