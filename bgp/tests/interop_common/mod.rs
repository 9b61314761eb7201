//! What the interop tests share: wren's speaker running inside a network namespace the test
//! created, translations between its API and the daemon harness's view of a route, and the
//! one topology and scenario list every daemon kind goes through.

#![allow(dead_code)] // Each test file uses its own part of this module.

pub mod suite;

use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::IpNet;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use wren_bgp::fsm::State;
use wren_bgp::rib::{Attributes, BestPath, RouteAttributes, family};
use wren_bgp::speaker::{PeerStatus, Speaker, SpeakerConfig, SpeakerHandle};
use wren_bgp::wire::{self, AsSegment};
use wren_tests::daemons::{self, Announce, Origin, Route};
use wren_tests::netns::{self, NetNs};

/// Longest wait for anything the tests expect to happen; they move on as soon as it does.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How the speaker thread ends.
enum Stop {
    /// Cease / Administrative Shutdown to every peer, as on an orderly stop.
    Clean,
    /// Drop everything: the kernel closes the connections, no NOTIFICATION is sent, as when
    /// the process is killed.
    Crash,
}

/// wren's speaker on a thread of its own inside a network namespace, so every socket it
/// opens (listener and outgoing connections) lives there. The test thread drives it through
/// the [`SpeakerHandle`].
pub struct Wren {
    handle: SpeakerHandle,
    client: Runtime,
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<JoinHandle<()>>,
}

impl Wren {
    /// Starts a speaker with `config` inside `ns`.
    pub fn start(ns: &NetNs, config: SpeakerConfig) -> Self {
        let path = netns::path_of(ns.name());
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let entered = File::open(&path).and_then(|f| {
                // SAFETY: setns(2) on a descriptor we own; it only changes this thread's
                // namespace, and the runtime's threads are spawned from here afterwards.
                match unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
            if let Err(e) = entered {
                let _ = ready_tx.send(Err(format!("enter {}: {e}", path.display())));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let handle = match Speaker::start(config).await {
                    Ok((handle, _task)) => handle,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("speaker start: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(handle.clone()));
                if let Ok(Stop::Clean) = stop_rx.await {
                    let _ = handle.shutdown().await;
                }
            });
            // Tasks still running are dropped here: their sockets close without a word.
            runtime.shutdown_background();
        });
        let handle = match ready_rx.recv() {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => panic!("wren speaker did not start: {e}"),
            Err(_) => panic!("wren speaker thread ended before starting"),
        };
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        Self {
            handle,
            client,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The handle, for calls this module has no shorthand for.
    pub fn handle(&self) -> &SpeakerHandle {
        &self.handle
    }

    /// Runs one API call to completion from the (synchronous) test.
    pub fn call<T>(&self, future: impl Future<Output = T>) -> T {
        self.client.block_on(future)
    }

    /// Ends the speaker as a crash would: sessions drop without NOTIFICATION.
    pub fn crash(mut self) {
        self.end(Stop::Crash);
    }

    fn end(&mut self, how: Stop) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// The state of the session with `address`.
    pub fn peer(&self, address: IpAddr) -> PeerStatus {
        self.call(self.handle.peer(address))
            .unwrap_or_else(|e| panic!("wren peer {address}: {e}"))
    }

    /// Waits until the session with `address` is Established.
    pub fn wait_established(&self, address: IpAddr) -> PeerStatus {
        let what = format!("wren's session with {address} to be Established");
        daemons::wait_for(&what, PATIENCE, || {
            let p = self.peer(address);
            Ok(match p.state {
                State::Established => Ok(p),
                _ => Err(format!("{:?}, last error {:?}", p.state, p.last_error)),
            })
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// wren's best route for `prefix`, in the harness's terms.
    pub fn route(&self, prefix: IpNet) -> Option<Route> {
        let rib = self
            .call(self.handle.loc_rib())
            .unwrap_or_else(|e| panic!("wren Loc-RIB: {e}"));
        rib.into_iter()
            .find(|(p, _)| *p == prefix)
            .map(|(p, best)| route_of(p, &best))
    }

    /// Waits until wren's best route for `prefix` satisfies `accept`.
    pub fn wait_route(&self, prefix: IpNet, accept: impl Fn(&Route) -> bool) -> Route {
        let what = format!("wren to hold a matching route for {prefix}");
        daemons::wait_for(&what, PATIENCE, || {
            Ok(match self.route(prefix) {
                Some(r) if accept(&r) => Ok(r),
                other => Err(format!("{other:?}")),
            })
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until wren holds no route for `prefix`.
    pub fn wait_no_route(&self, prefix: IpNet) {
        let what = format!("wren to drop its route for {prefix}");
        daemons::wait_for(&what, PATIENCE, || {
            Ok(match self.route(prefix) {
                None => Ok(()),
                Some(r) => Err(format!("{r:?}")),
            })
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Originates `announce.prefix` with its attributes.
    pub fn announce(&self, announce: &Announce) {
        let attrs = attributes_of(announce);
        self.call(self.handle.originate_with(announce.prefix, attrs))
            .unwrap_or_else(|e| panic!("wren originate {}: {e}", announce.prefix));
    }

    /// Stops originating `prefix`.
    pub fn withdraw(&self, prefix: IpNet) {
        self.call(self.handle.withdraw(prefix))
            .unwrap_or_else(|e| panic!("wren withdraw {prefix}: {e}"));
    }
}

impl Drop for Wren {
    fn drop(&mut self) {
        self.end(Stop::Clean);
    }
}

/// The attributes wren originates for an [`Announce`].
pub fn attributes_of(a: &Announce) -> Attributes {
    let mut attrs = Attributes::local(None, family(&a.prefix));
    attrs.origin = Some(match a.origin {
        Origin::Igp => wire::Origin::Igp,
        Origin::Egp => wire::Origin::Egp,
        Origin::Incomplete => wire::Origin::Incomplete,
    });
    attrs.med = a.med;
    attrs.local_pref = a.local_pref;
    attrs.communities = a
        .communities
        .iter()
        .map(|(asn, value)| (u32::from(*asn) << 16) | u32::from(*value))
        .collect();
    attrs
}

/// A best path of wren's Loc-RIB in the harness's terms, so wren and the daemons are checked
/// with the same assertions.
pub fn route_of(prefix: IpNet, best: &BestPath) -> Route {
    let a = &best.attrs;
    let as_path = a
        .as_path
        .iter()
        .flat_map(|p| p.segments.iter())
        .flat_map(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.iter().copied(),
        })
        .collect();
    let mut communities: Vec<_> = a
        .communities
        .iter()
        .map(|c| ((c >> 16) as u16, (c & 0xffff) as u16))
        .collect();
    communities.sort_unstable();
    let mut large_communities: Vec<_> = a
        .large_communities
        .iter()
        .map(|c| (c.global_admin, c.local_data_1, c.local_data_2))
        .collect();
    large_communities.sort_unstable();
    Route {
        prefix: Some(prefix),
        next_hop: a.next_hop_addr(),
        as_path,
        origin: a.origin.map(|o| match o {
            wire::Origin::Igp => Origin::Igp,
            wire::Origin::Egp => Origin::Egp,
            wire::Origin::Incomplete => Origin::Incomplete,
        }),
        med: a.med,
        local_pref: a.local_pref,
        communities,
        large_communities,
        originator_id: a.originator_id,
        cluster_list: a.cluster_list.clone(),
        stale: false,
    }
}

/// What a [`Watch`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// Samples taken.
    pub samples: u32,
    /// Samples in which wren had no route for the prefix.
    pub absent: u32,
    /// Samples in which wren held routes of the peer as stale.
    pub stale: u32,
}

/// Samples wren's Loc-RIB and one peer's stale count every 20 ms on a thread of its own,
/// while the test thread is busy restarting something.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Watch {
    /// Starts sampling `prefix` and the stale routes of `peer`.
    pub fn start(wren: &Wren, peer: IpAddr, prefix: IpNet) -> Self {
        let handle = wren.handle.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return seen;
            };
            while !stopped.load(Ordering::Relaxed) {
                let rib = rt.block_on(handle.loc_rib()).unwrap_or_default();
                let stale = rt
                    .block_on(handle.peer(peer))
                    .map(|p| p.prefixes_stale)
                    .unwrap_or(0);
                seen.samples += 1;
                seen.absent += u32::from(!rib.iter().any(|(p, _)| *p == prefix));
                seen.stale += u32::from(stale > 0);
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Self { stop, thread }
    }

    /// Stops sampling and returns what was seen.
    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Parses a literal address of the test topology.
pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// Parses a literal prefix of the test topology.
pub fn net(text: &str) -> IpNet {
    text.parse().expect("test prefix")
}

/// Prints the step about to run, so a failure's output says where it happened.
pub fn step(suite: &str, name: &str) {
    eprintln!("[{suite}] {name}");
}
