//! Real BGP daemons as test peers: BIRD 2, FRR (zebra + bgpd) and GoBGP.
//!
//! Each runner writes its configuration into a private temporary directory, starts the daemon
//! inside a network namespace the test created, and keeps every path the daemon uses (control
//! socket, pid file, state) inside that directory, so any number of daemons can run side by
//! side without touching the machine's own `/run/bird`, `/var/run/frr` or a gRPC port in the
//! root namespace. The control clients (`birdc`'s socket protocol, `vtysh --vty_socket`,
//! `gobgp --target unix://…`) talk over those unix sockets, so queries need no namespace switch.
//!
//! All three runners implement [`BgpDaemon`]: read a neighbour's session state, read the
//! routes the daemon holds, announce and withdraw prefixes, ask a neighbour to re-send
//! (route refresh), and stop, pause, kill or restart the daemon. Dropping a runner ends its
//! processes by pid.

pub mod bird;
pub mod feed;
pub mod frr;
pub mod gobgp;
mod run;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;

pub use nix::sys::signal::Signal;

/// Why a daemon operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A control command ran but reported failure.
    #[error("{what} failed: {detail}")]
    Command {
        /// The command.
        what: String,
        /// What the daemon or tool said.
        detail: String,
    },
    /// Output of a daemon could not be understood.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// Which output.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A daemon process ended on its own.
    #[error("{daemon} exited ({status}); its log:\n{log}")]
    Exited {
        /// Which daemon.
        daemon: String,
        /// Its exit status.
        status: String,
        /// The tail of its log.
        log: String,
    },
    /// The daemon has no way to do what was asked.
    #[error("{daemon} cannot {what}: {why}")]
    Unsupported {
        /// Which daemon.
        daemon: &'static str,
        /// What was asked.
        what: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long was waited.
        waited: Duration,
        /// The last observation, for the failure message.
        last: String,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Address family of a session's routes (unicast only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 unicast.
    Ipv4,
    /// IPv6 unicast.
    Ipv6,
}

impl Family {
    /// The family a prefix or address belongs to.
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    /// The family of a prefix.
    pub fn of_prefix(prefix: &IpNet) -> Self {
        Self::of(prefix.addr())
    }

    /// The name all three daemons use for the address family: `ipv4` or `ipv6`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// ORIGIN attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Origin {
    /// Learned from an interior protocol (the usual value for originated prefixes).
    #[default]
    Igp,
    /// Learned via EGP.
    Egp,
    /// Learned some other way.
    Incomplete,
}

/// A standard community `asn:value` (RFC 1997).
pub type Community = (u16, u16);

/// A large community `asn:value:value` (RFC 8092).
pub type LargeCommunity = (u32, u32, u32);

/// One BGP neighbour of a daemon, as configured.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The neighbour's address.
    pub address: IpAddr,
    /// The neighbour's AS.
    pub asn: u32,
    /// The daemon's own address on this session (also the source of the TCP connection).
    pub local_address: IpAddr,
    /// Hold time to propose, in seconds; the keepalive interval is a third of it.
    pub hold_time: u16,
    /// TCP MD5 password (RFC 2385).
    pub password: Option<String>,
    /// Only accept connections, never open one.
    pub passive: bool,
    /// Graceful restart (RFC 4724) with this restart time in seconds.
    pub graceful_restart: Option<u16>,
    /// The neighbour is a route-reflector client of this daemon.
    pub rr_client: bool,
    /// Families carried on the session.
    pub families: Vec<Family>,
    /// The session follows a BFD session with the neighbour (one of [`Config::bfd`]): BFD
    /// down takes it down.
    pub bfd: bool,
    /// GTSM (RFC 5082) for a directly connected neighbour: send with TTL 255, accept only
    /// 255. BIRD and FRR only.
    pub ttl_security: bool,
}

impl Peer {
    /// A neighbour at `address` in AS `asn`, reached from `local_address`; carries the
    /// family of its address, 9 s hold time, active open, no extras.
    pub fn new(address: IpAddr, asn: u32, local_address: IpAddr) -> Self {
        Self {
            address,
            asn,
            local_address,
            hold_time: 9,
            password: None,
            passive: false,
            graceful_restart: None,
            rr_client: false,
            families: vec![Family::of(address)],
            bfd: false,
            ttl_security: false,
        }
    }

    /// Sets the proposed hold time (seconds, at least 3).
    pub fn hold_time(mut self, seconds: u16) -> Self {
        self.hold_time = seconds;
        self
    }

    /// Sets a TCP MD5 password.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Makes the daemon wait for the neighbour to connect.
    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    /// Enables graceful restart with the given restart time.
    pub fn graceful_restart(mut self, restart_time: u16) -> Self {
        self.graceful_restart = Some(restart_time);
        self
    }

    /// Makes the neighbour a route-reflector client.
    pub fn rr_client(mut self) -> Self {
        self.rr_client = true;
        self
    }

    /// Sets the families carried on the session.
    pub fn families(mut self, families: &[Family]) -> Self {
        self.families = families.to_vec();
        self
    }

    /// Ties the session to the BFD session with the neighbour.
    pub fn bfd(mut self) -> Self {
        self.bfd = true;
        self
    }

    /// Turns GTSM on for a directly connected neighbour.
    pub fn ttl_security(mut self) -> Self {
        self.ttl_security = true;
        self
    }

    /// Keepalive interval: a third of the hold time, at least one second.
    pub fn keepalive(&self) -> u16 {
        (self.hold_time / 3).max(1)
    }
}

/// A single-hop BFD session (RFC 5880, 5881) of a daemon.
#[derive(Debug, Clone)]
pub struct BfdPeer {
    /// The neighbour's address.
    pub address: IpAddr,
    /// The daemon's own address on the link.
    pub local_address: IpAddr,
    /// The interface the neighbour is on.
    pub interface: String,
    /// Desired transmit and required receive interval once Up.
    pub interval: Duration,
    /// Detection multiplier.
    pub detect_mult: u8,
    /// Wait for the neighbour's first packet before sending.
    pub passive: bool,
}

impl BfdPeer {
    /// A session with `address` from `local_address` on `interface`: 300 ms × 3, active.
    pub fn new(address: IpAddr, local_address: IpAddr, interface: &str) -> Self {
        Self {
            address,
            local_address,
            interface: interface.to_owned(),
            interval: Duration::from_millis(300),
            detect_mult: 3,
            passive: false,
        }
    }

    /// Sets both intervals.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the detection multiplier.
    pub fn detect_mult(mut self, detect_mult: u8) -> Self {
        self.detect_mult = detect_mult;
        self
    }

    /// Makes the daemon wait for the neighbour to speak first.
    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    /// The interval in whole milliseconds, as both daemons configure it.
    pub fn interval_ms(&self) -> u128 {
        self.interval.as_millis()
    }
}

/// BFD session states (RFC 5880 §4.1) as a daemon reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BfdState {
    /// AdminDown (FRR: `shutdown`).
    AdminDown,
    /// Down.
    Down,
    /// Init.
    Init,
    /// Up.
    Up,
}

impl BfdState {
    /// Reads a state as BIRD (`Up`, `AdminDown`) and FRR (`up`, `shutdown`) print it.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "admindown" | "shutdown" => Self::AdminDown,
            "down" => Self::Down,
            "init" => Self::Init,
            "up" => Self::Up,
            _ => return None,
        })
    }
}

/// What the BFD interop tests need from a daemon.
pub trait BfdDaemon {
    /// Which implementation this is, for messages.
    fn kind(&self) -> &'static str;

    /// The state of the BFD session with `address`; `None` when the daemon has none.
    fn bfd_state(&self, address: IpAddr) -> Result<Option<BfdState>, Error>;
}

/// Waits until the daemon's BFD session with `address` is in `state`.
pub fn wait_bfd(
    daemon: &dyn BfdDaemon,
    address: IpAddr,
    state: BfdState,
    timeout: Duration,
) -> Result<(), Error> {
    let what = format!(
        "{} BFD session with {address} to be {state:?}",
        daemon.kind()
    );
    wait_for(&what, timeout, || {
        Ok(match daemon.bfd_state(address)? {
            Some(s) if s == state => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
}

/// What a daemon is told at start: who it is and whom it peers with.
#[derive(Debug, Clone)]
pub struct Config {
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Local AS.
    pub asn: u32,
    /// Route-reflector cluster id, when the daemon reflects (defaults to the router id).
    pub cluster_id: Option<Ipv4Addr>,
    /// The neighbours.
    pub peers: Vec<Peer>,
    /// Single-hop BFD sessions.
    pub bfd: Vec<BfdPeer>,
    /// Install the best routes in the daemon's kernel table, equal-cost paths merged into
    /// one multipath route (BIRD's `merge paths`).
    pub kernel_ecmp: bool,
}

impl Config {
    /// A daemon with identifier `router_id` in AS `asn` and no neighbours yet.
    pub fn new(router_id: Ipv4Addr, asn: u32) -> Self {
        Self {
            router_id,
            asn,
            cluster_id: None,
            peers: Vec::new(),
            bfd: Vec::new(),
            kernel_ecmp: false,
        }
    }

    /// Installs routes in the kernel, equal-cost paths as one multipath route.
    pub fn kernel_ecmp(mut self) -> Self {
        self.kernel_ecmp = true;
        self
    }

    /// Adds a neighbour.
    pub fn peer(mut self, peer: Peer) -> Self {
        self.peers.push(peer);
        self
    }

    /// Adds a single-hop BFD session.
    pub fn bfd(mut self, peer: BfdPeer) -> Self {
        self.bfd.push(peer);
        self
    }

    /// Sets the route-reflector cluster id.
    pub fn cluster_id(mut self, id: Ipv4Addr) -> Self {
        self.cluster_id = Some(id);
        self
    }

    /// Whether any neighbour uses graceful restart (some daemons enable it globally).
    pub(crate) fn graceful_restart_time(&self) -> Option<u16> {
        self.peers.iter().filter_map(|p| p.graceful_restart).max()
    }
}

/// A prefix for a daemon to originate, with the attributes it should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The prefix.
    pub prefix: IpNet,
    /// ORIGIN.
    pub origin: Origin,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (sent on iBGP sessions only).
    pub local_pref: Option<u32>,
    /// COMMUNITIES.
    pub communities: Vec<Community>,
    /// ASes put in front of the AS path at the origin, so the path is longer than the
    /// daemon's own AS alone (BIRD only).
    pub prepend: Vec<u32>,
}

impl Announce {
    /// `prefix` with origin IGP and no optional attributes.
    pub fn new(prefix: IpNet) -> Self {
        Self {
            prefix,
            origin: Origin::Igp,
            med: None,
            local_pref: None,
            communities: Vec::new(),
            prepend: Vec::new(),
        }
    }

    /// Lengthens the AS path by `asn` at the origin (BIRD only).
    pub fn prepend(mut self, asn: u32) -> Self {
        self.prepend.push(asn);
        self
    }

    /// Sets the MED.
    pub fn med(mut self, med: u32) -> Self {
        self.med = Some(med);
        self
    }

    /// Sets LOCAL_PREF.
    pub fn local_pref(mut self, local_pref: u32) -> Self {
        self.local_pref = Some(local_pref);
        self
    }

    /// Adds a community.
    pub fn community(mut self, community: Community) -> Self {
        self.communities.push(community);
        self
    }

    /// Sets ORIGIN.
    pub fn origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }
}

/// A route as a daemon holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The prefix.
    pub prefix: Option<IpNet>,
    /// Next hop (global address for IPv6).
    pub next_hop: Option<IpAddr>,
    /// AS_PATH as a flat list of AS numbers, leftmost first.
    pub as_path: Vec<u32>,
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// COMMUNITIES, sorted.
    pub communities: Vec<Community>,
    /// LARGE_COMMUNITY (RFC 8092), sorted.
    pub large_communities: Vec<LargeCommunity>,
    /// ORIGINATOR_ID (route reflection).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (route reflection).
    pub cluster_list: Vec<Ipv4Addr>,
    /// The daemon holds it as stale (graceful restart).
    pub stale: bool,
}

/// Session states of RFC 4271 §8.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Idle.
    Idle,
    /// Connect.
    Connect,
    /// Active.
    Active,
    /// OpenSent.
    OpenSent,
    /// OpenConfirm.
    OpenConfirm,
    /// Established.
    Established,
}

impl SessionState {
    /// Reads a state name as BIRD, FRR and GoBGP print it (case-insensitive, with or
    /// without the `BGP_FSM_` prefix).
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().to_ascii_lowercase();
        let t = t.strip_prefix("bgp_fsm_").unwrap_or(&t);
        Some(match t {
            "idle" | "down" => Self::Idle,
            "connect" => Self::Connect,
            "active" => Self::Active,
            "opensent" | "open_sent" => Self::OpenSent,
            "openconfirm" | "open_confirm" => Self::OpenConfirm,
            "established" => Self::Established,
            _ => return None,
        })
    }
}

/// A neighbour's session as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// Session state.
    pub state: SessionState,
    /// Prefixes accepted from the neighbour (all families).
    pub prefixes_received: u64,
    /// UPDATE messages (BIRD: route updates) received since the session came up; grows when
    /// the neighbour re-sends its routes after a route refresh.
    pub updates_received: u64,
    /// UPDATE messages (BIRD: route updates) sent since the session came up; grows when the
    /// daemon answers the neighbour's route refresh.
    pub updates_sent: u64,
}

/// How [`BgpDaemon::restart`] takes the daemon down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// SIGTERM: the daemon closes its sessions with a NOTIFICATION (Cease), peers drop its
    /// routes at once.
    Clean,
    /// SIGKILL, then start in graceful-restart mode where the daemon has one: the TCP
    /// connections just close, so peers that negotiated graceful restart keep its routes
    /// as stale until it is back.
    Crash,
}

/// What the interop tests need from a BGP daemon.
pub trait BgpDaemon {
    /// Which implementation this is ("bird", "frr", "gobgp"), for messages.
    fn kind(&self) -> &'static str;

    /// The pid of the process that speaks BGP.
    fn pid(&self) -> u32;

    /// State and counters of the session with `address`.
    fn neighbor(&self, address: IpAddr) -> Result<Neighbor, Error>;

    /// The best route the daemon holds for every prefix of `family`, locally originated
    /// routes included.
    fn routes(&self, family: Family) -> Result<Vec<Route>, Error>;

    /// Originates `announce.prefix` with the given attributes (replacing an earlier
    /// announcement of the same prefix).
    fn announce(&mut self, announce: &Announce) -> Result<(), Error>;

    /// Stops originating `prefix`.
    fn withdraw(&mut self, prefix: IpNet) -> Result<(), Error>;

    /// Asks the neighbour at `address` to send its routes again (ROUTE-REFRESH, RFC 2918);
    /// [`Error::Unsupported`] where the daemon's tools cannot make it send one.
    fn request_refresh(&self, address: IpAddr) -> Result<(), Error>;

    /// Sends a signal to the process that speaks BGP (SIGSTOP makes it go silent, so its
    /// peers' hold timers expire; SIGCONT brings it back).
    fn signal(&mut self, signal: Signal) -> Result<(), Error>;

    /// Takes the daemon down as `how` says and starts it again with the same configuration
    /// and the same announcements; returns once it answers on its control socket.
    fn restart(&mut self, how: Restart) -> Result<(), Error>;

    /// The tail of the daemon's log, for failure messages.
    fn log_tail(&self) -> String;
}

/// The best route the daemon holds for `prefix`, if any.
pub fn route_for(daemon: &dyn BgpDaemon, prefix: IpNet) -> Result<Option<Route>, Error> {
    let family = Family::of(prefix.addr());
    Ok(daemon
        .routes(family)?
        .into_iter()
        .find(|r| r.prefix == Some(prefix)))
}

/// Polls `check` every 100 ms until it yields a value or `timeout` passes; `check` returns
/// `Ok(Err(observation))` while waiting so a timeout can say what it last saw.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Result<T, String>, Error>,
) -> Result<T, Error> {
    let start = Instant::now();
    loop {
        let last = match check()? {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                waited: timeout,
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the session with `address` is Established.
pub fn wait_established(
    daemon: &dyn BgpDaemon,
    address: IpAddr,
    timeout: Duration,
) -> Result<Neighbor, Error> {
    let what = format!("{} session with {address} to be Established", daemon.kind());
    wait_for(&what, timeout, || {
        Ok(match daemon.neighbor(address) {
            Ok(n) if n.state == SessionState::Established => Ok(n),
            Ok(n) => Err(format!("{n:?}")),
            Err(e) => Err(e.to_string()),
        })
    })
}

/// Waits until the daemon's best route for `prefix` satisfies `accept`, and returns it.
pub fn wait_route(
    daemon: &dyn BgpDaemon,
    prefix: IpNet,
    timeout: Duration,
    accept: impl Fn(&Route) -> bool,
) -> Result<Route, Error> {
    let what = format!("{} to hold a matching route for {prefix}", daemon.kind());
    wait_for(&what, timeout, || {
        Ok(match route_for(daemon, prefix)? {
            Some(r) if accept(&r) => Ok(r),
            other => Err(format!("{other:?}")),
        })
    })
}

/// Waits until the daemon holds no route for `prefix`.
pub fn wait_no_route(
    daemon: &dyn BgpDaemon,
    prefix: IpNet,
    timeout: Duration,
) -> Result<(), Error> {
    let what = format!("{} to drop its route for {prefix}", daemon.kind());
    wait_for(&what, timeout, || {
        Ok(match route_for(daemon, prefix)? {
            None => Ok(()),
            Some(r) => Err(format!("{r:?}")),
        })
    })
}

/// Parses `asn:value` community text.
pub(crate) fn parse_community(text: &str) -> Option<Community> {
    // FRR names the well-known communities (RFC 1997, RFC 7999, RFC 8326).
    let named = match text.trim() {
        "gracefulShutdown" => Some(0),
        "blackhole" => Some(666),
        "noExport" => Some(0xFF01),
        "noAdvertise" => Some(0xFF02),
        "localAs" => Some(0xFF03),
        "noPeer" => Some(0xFF04),
        _ => None,
    };
    if let Some(value) = named {
        return Some((0xFFFF, value));
    }
    let (a, v) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, v.parse().ok()?))
}

/// A large community from its three parts as text (`65000`, `1`, `2`), trimmed.
pub(crate) fn large_community<'a>(
    mut parts: impl Iterator<Item = &'a str>,
) -> Option<LargeCommunity> {
    let mut next = || parts.next()?.trim().parse::<u32>().ok();
    let community = (next()?, next()?, next()?);
    next().is_none().then_some(community)
}

/// Splits a 32-bit community into its two halves.
pub(crate) fn community_of(raw: u32) -> Community {
    ((raw >> 16) as u16, (raw & 0xffff) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_names_of_all_three_daemons() {
        assert_eq!(
            SessionState::parse("Established"),
            Some(SessionState::Established)
        );
        assert_eq!(
            SessionState::parse("BGP_FSM_OPENCONFIRM"),
            Some(SessionState::OpenConfirm)
        );
        assert_eq!(SessionState::parse("active"), Some(SessionState::Active));
        assert_eq!(
            SessionState::parse("OpenSent"),
            Some(SessionState::OpenSent)
        );
        assert_eq!(SessionState::parse("Clearing"), None);
    }

    #[test]
    fn communities_split_into_halves() {
        assert_eq!(community_of(4259840001), (65000, 1));
        assert_eq!(parse_community("noExport"), Some((65535, 65281)));
        assert_eq!(parse_community("65000:7"), Some((65000, 7)));
        assert_eq!(parse_community("65000:70"), Some((65000, 70)));
        assert_eq!(parse_community("65000"), None);
    }

    #[test]
    fn keepalive_is_a_third_of_hold_time() {
        let p = Peer::new("10.0.0.1".parse().unwrap(), 1, "10.0.0.2".parse().unwrap());
        assert_eq!(p.clone().hold_time(9).keepalive(), 3);
        assert_eq!(p.hold_time(3).keepalive(), 1);
    }
}
