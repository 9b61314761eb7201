//! What the BFD tests and the detection bench share: a point-to-point link between two
//! namespaces the test creates, ways to cut it, and wren's endpoint running inside one end.

#![allow(dead_code)]

use std::fs::File;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use wren_bfd::endpoint::{
    Endpoint, EndpointConfig, EndpointHandle, PeerSpec, SessionEvent, SessionStatus,
};
use wren_bfd::packet::State;
use wren_bfd::session::SessionConfig;
use wren_tests::netns::NetNs;

/// Addresses of the two ends: `a` is where wren runs, `b` the other system.
pub const A4: &str = "192.0.2.1";
pub const B4: &str = "192.0.2.2";
pub const A6: &str = "2001:db8::1";
pub const B6: &str = "2001:db8::2";
/// The interface name at both ends.
pub const IFNAME: &str = "eth0";

/// How a test cuts the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `ip link set eth0 down` at `b` (both ends lose carrier; IPv4 only, as IPv6 addresses
    /// go with the link).
    LinkDown,
    /// Every packet through `eth0` dropped at both ends (an nftables rule on input and
    /// output): carrier stays up, as with `tc netem loss 100%`, which this kernel lacks.
    Loss,
}

/// When a cut took effect, on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct CutAt {
    pub instant: Instant,
    pub wall: std::time::SystemTime,
}

impl CutAt {
    fn now() -> Self {
        Self {
            instant: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses on both ends.
pub struct Link {
    pub a: NetNs,
    pub b: NetNs,
}

impl Link {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let a = NetNs::new(&format!("{tag}-a"))?;
        let b = NetNs::new(&format!("{tag}-b"))?;
        a.veth(
            IFNAME,
            Some(&format!("{A4}/24")),
            &b,
            IFNAME,
            Some(&format!("{B4}/24")),
        )?;
        a.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{A6}/64"),
            "dev",
            IFNAME,
            "nodad",
        ])?;
        b.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{B6}/64"),
            "dev",
            IFNAME,
            "nodad",
        ])?;
        let link = Self { a, b };
        link.pin_neighbours()?;
        Ok(link)
    }

    /// Permanent neighbour entries for the other end, both families. The kernel's neighbour
    /// table is shared by every namespace on the machine and overflows when other labs are
    /// large ("No route to host"); permanent entries are exempt from its limit.
    fn pin_neighbours(&self) -> std::io::Result<()> {
        let mac = |ns: &NetNs| -> std::io::Result<String> {
            let text = ns.ip(&["-o", "link", "show", IFNAME])?;
            let mac = text
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1);
            mac.map(str::to_owned)
                .ok_or_else(|| std::io::Error::other(format!("no MAC in {text}")))
        };
        for (ns, other, v4, v6) in [(&self.a, &self.b, B4, B6), (&self.b, &self.a, A4, A6)] {
            let lladdr = mac(other)?;
            for address in [v4, v6] {
                let args = [
                    "neigh", "replace", address, "lladdr", &lladdr, "dev", IFNAME,
                ];
                ns.ip(&[&args[..], &["nud", "permanent"]].concat())?;
            }
        }
        Ok(())
    }

    /// Cuts the link; returns when the cut took effect at `a`, the side that measures: after
    /// `b`'s link went down (which takes `a`'s carrier with it), or after `a` dropped
    /// everything (then `b` drops too, a moment later).
    pub fn cut(&self, how: Cut) -> CutAt {
        match how {
            Cut::LinkDown => {
                self.b.ip(&["link", "set", IFNAME, "down"]).unwrap();
                CutAt::now()
            }
            Cut::Loss => {
                let rules = format!(
                    "table inet {CUT_TABLE} {{\n\
                     chain input {{ type filter hook input priority 0; iifname \"{IFNAME}\" drop; }}\n\
                     chain output {{ type filter hook output priority 0; oifname \"{IFNAME}\" drop; }}\n}}\n"
                );
                nft(&self.a, &rules);
                let at = CutAt::now();
                nft(&self.b, &rules);
                at
            }
        }
    }

    /// Undoes [`Link::cut`].
    pub fn heal(&self, how: Cut) {
        match how {
            Cut::LinkDown => {
                self.b.ip(&["link", "set", IFNAME, "up"]).unwrap();
                // A link going down takes its neighbour entries with it.
                self.pin_neighbours().unwrap();
            }
            Cut::Loss => {
                for ns in [&self.a, &self.b] {
                    nft(ns, &format!("delete table inet {CUT_TABLE}\n"));
                }
            }
        }
    }
}

/// The nftables table that drops everything on `eth0`.
const CUT_TABLE: &str = "wren_cut";

/// Loads an nftables script inside `ns`.
fn nft(ns: &NetNs, script: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft failed on:\n{script}");
}

/// A multi-thread runtime whose threads all live in `ns`, so every socket the endpoint opens
/// (on any worker, at any time) is inside it.
pub fn runtime_in(ns: &NetNs) -> Runtime {
    let path = ns.path();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            let file = File::open(&path).expect("open the namespace");
            setns(file, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        })
        .build()
        .expect("runtime")
}

/// wren's endpoint inside a namespace, driven from the test's thread.
pub struct Wren {
    pub rt: Runtime,
    pub handle: EndpointHandle,
    pub events: mpsc::UnboundedReceiver<SessionEvent>,
}

impl Wren {
    pub fn start(ns: &NetNs) -> Self {
        let rt = runtime_in(ns);
        let (handle, events) = rt.block_on(async {
            tokio::spawn(async {
                let (handle, _task) = Endpoint::start(EndpointConfig::default()).await.unwrap();
                let events = handle.subscribe().await.unwrap();
                (handle, events)
            })
            .await
            .unwrap()
        });
        Self { rt, handle, events }
    }

    pub fn add(&self, peer: &str, local: &str, timing: SessionConfig) {
        let spec = PeerSpec {
            peer: peer.parse().unwrap(),
            local: local.parse().unwrap(),
            interface: Some(IFNAME.to_owned()),
            timing,
        };
        let handle = self.handle.clone();
        self.rt
            .block_on(async { tokio::spawn(async move { handle.add_session(spec).await }).await })
            .unwrap()
            .unwrap();
    }

    /// The next state change into `to`, within `timeout`; panics naming what it saw instead.
    pub fn wait(&mut self, to: State, timeout: Duration) -> SessionEvent {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.events.recv()).await });
            match next {
                Ok(Some(event)) if event.change.to == to => return event,
                Ok(Some(event)) => seen.push(event.change),
                _ => panic!("no change to {to} within {timeout:?}; saw {seen:?}"),
            }
        }
    }

    /// The session's status once both sides are Up and the detection time is `detection`:
    /// the Poll Sequences of the way up have ended (packets sent while not Up carry the 1 s
    /// slow rate, and the remote's first packets may still say Init).
    pub fn settled(&self, peer: &str, detection: Duration) -> SessionStatus {
        let peer: IpAddr = peer.parse().unwrap();
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.rt.block_on(self.handle.session(peer)).unwrap();
            if status.state == State::Up
                && status.remote_state == State::Up
                && status.detection_time == Some(detection)
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "session with {peer} not settled at {detection:?}: {last:?}"
            );
            last = Some(status);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn state(&self, peer: &str) -> State {
        let peer: IpAddr = peer.parse().unwrap();
        self.rt.block_on(self.handle.session(peer)).unwrap().state
    }
}

impl Drop for Wren {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let _ = self
            .rt
            .block_on(async { tokio::spawn(async move { handle.shutdown().await }).await });
    }
}

/// Session timing: `ms` intervals, multiplier `mult`.
pub fn timing(ms: u64, mult: u8) -> SessionConfig {
    SessionConfig::new(Duration::from_millis(ms), mult)
}

/// Polls `check` every 20 ms until it yields a value; panics after `timeout`.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
