//! What the embedding program configures: the speaker and each of its peers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::fsm::SessionConfig;
use crate::rib::{AcceptAll, PeerSettings, Policy};
use crate::wire::{Afi, GracefulRestart};

/// The well-known BGP port.
pub const BGP_PORT: u16 = 179;

/// Settings of the speaker as a whole.
#[derive(Clone)]
pub struct SpeakerConfig {
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our AS.
    pub local_as: u32,
    /// Where to accept connections (port 0: any free port, see
    /// [`SpeakerHandle::local_addr`](super::SpeakerHandle::local_addr)); `None`: never accept,
    /// every peer must be active.
    pub listen: Option<SocketAddr>,
    /// Route-reflection cluster id (defaults to the router id).
    pub cluster_id: Option<Ipv4Addr>,
    /// Next hop "self" for IPv4 routes on IPv6 sessions.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop "self" for IPv6 routes on IPv4 sessions.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Graceful restart (RFC 4724); `None`: not advertised, and peers' routes are flushed as
    /// soon as their session drops.
    pub graceful_restart: Option<GracefulRestartConfig>,
    /// Import and export policy.
    pub policy: Arc<dyn Policy>,
    /// How many equal paths to a prefix the best-path events carry, the best counted
    /// ([`RibConfig::max_paths`](crate::rib::RibConfig::max_paths)); 1: the best path alone.
    pub max_paths: usize,
}

impl std::fmt::Debug for SpeakerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeakerConfig")
            .field("router_id", &self.router_id)
            .field("local_as", &self.local_as)
            .field("listen", &self.listen)
            .field("cluster_id", &self.cluster_id)
            .field("graceful_restart", &self.graceful_restart)
            .field("max_paths", &self.max_paths)
            .finish_non_exhaustive()
    }
}

impl SpeakerConfig {
    /// A speaker listening on port 179 of every address, graceful-restart aware (receiving
    /// role, 120 s restart time), accepting every route.
    pub fn new(router_id: Ipv4Addr, local_as: u32) -> Self {
        Self {
            router_id,
            local_as,
            listen: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), BGP_PORT)),
            cluster_id: None,
            next_hop_v4: None,
            next_hop_v6: None,
            graceful_restart: Some(GracefulRestartConfig::default()),
            policy: Arc::new(AcceptAll),
            max_paths: 1,
        }
    }
}

/// Graceful restart (RFC 4724), both roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Seconds peers should keep our routes while we restart (at most 4095).
    pub restart_time: u16,
    /// This speaker has just restarted: advertise the Restart State bit, and defer best-path
    /// selection and our End-of-RIB until the peers' routes are in.
    pub restarting: bool,
    /// The embedding program kept its forwarding state (the kernel routes) across the
    /// restart: advertise the Forwarding State bit, so peers keep our routes meanwhile.
    pub forwarding_preserved: bool,
    /// Longest wait for the peers' End-of-RIB when restarting (RFC 4724's selection deferral).
    pub selection_deferral: Duration,
    /// Longest wait for a restarted peer's End-of-RIB before its stale routes go.
    pub stale_time: Duration,
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        Self {
            restart_time: 120,
            restarting: false,
            forwarding_preserved: false,
            selection_deferral: Duration::from_secs(360),
            stale_time: Duration::from_secs(360),
        }
    }
}

impl GracefulRestartConfig {
    /// The capability advertised for `families`; the Restart State bit while `restarting`.
    pub fn capability(&self, families: &[Afi], restarting: bool) -> GracefulRestart {
        GracefulRestart {
            restarting,
            restart_time: self.restart_time.min(0x0fff),
            families: families
                .iter()
                .map(|afi| (*afi, self.forwarding_preserved))
                .collect(),
        }
    }
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's address; incoming connections are matched to peers by it.
    pub address: IpAddr,
    /// The peer's port for outgoing connections.
    pub port: u16,
    /// The peer's AS (the one this session speaks: iBGP).
    pub remote_as: u32,
    /// The AS this session speaks instead of the speaker's (BIRD's `local as`): sent in our
    /// OPEN, put first on the AS path the peer hears, and the AS the peer's routes must not
    /// already carry; whether the session is iBGP follows it. `None`: the speaker's AS.
    pub local_as: Option<u32>,
    /// Our source address for outgoing connections; default: the listen address when it is a
    /// specific one of the peer's family.
    pub local_address: Option<IpAddr>,
    /// Only wait for the peer to connect.
    pub passive: bool,
    /// Hold time we propose, in seconds (0, or at least 3).
    pub hold_time: u16,
    /// Seconds between our KEEPALIVEs; `None`: a third of the negotiated hold time, which
    /// also bounds a longer setting.
    pub keepalive_time: Option<u16>,
    /// Time between connection attempts.
    pub connect_retry: Duration,
    /// First delay before reconnecting after an error (doubles on repeated errors, up to 120 s).
    pub idle_hold: Duration,
    /// TCP MD5 signature key (RFC 2385), at most 80 octets.
    pub password: Option<String>,
    /// GTSM (RFC 5082): send with TTL 255 and accept only packets that crossed at most this
    /// many hops (usually 1, for a directly connected eBGP peer).
    pub ttl_security: Option<u8>,
    /// The peer is our route-reflector client (RFC 4456).
    pub rr_client: bool,
    /// Put our address as next hop on eBGP-learned routes sent to this iBGP peer.
    pub next_hop_self: bool,
    /// Send routes learned from other peers with their next hop unchanged, to an eBGP peer
    /// too (BIRD's `next hop keep`); our own routes still carry our address.
    pub next_hop_keep: bool,
    /// Advertise graceful restart to this peer (when the speaker has it configured).
    pub graceful_restart: bool,
    /// Families to exchange.
    pub families: Vec<Afi>,
    /// The most prefixes the peer may announce; `None`: no limit.
    pub max_prefixes: Option<PrefixLimit>,
}

/// A bound on the prefixes one peer announces (those taken and those import policy holds
/// back alike: both take the node's memory), so a peer that floods routes cannot take the
/// node's memory or its kernel table with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLimit {
    /// Above this many the session ends with Cease / Maximum Number of Prefixes Reached
    /// (RFC 4486) and the peer's routes go.
    pub limit: usize,
    /// At this many a warning is logged, once per session.
    pub warning: usize,
    /// How long the session stays down after the limit was passed before it is tried again.
    pub restart_after: Duration,
}

impl PeerConfig {
    /// An active peer on port 179: hold time 90 s, connect retry 30 s (the RFC suggests 120 s;
    /// a node network wants faster recovery), idle hold 5 s, IPv4 and IPv6 unicast, graceful
    /// restart, no password, no GTSM.
    pub fn new(address: IpAddr, remote_as: u32) -> Self {
        Self {
            address,
            port: BGP_PORT,
            remote_as,
            local_as: None,
            local_address: None,
            passive: false,
            hold_time: 90,
            keepalive_time: None,
            connect_retry: Duration::from_secs(30),
            idle_hold: Duration::from_secs(5),
            password: None,
            ttl_security: None,
            rr_client: false,
            next_hop_self: false,
            next_hop_keep: false,
            graceful_restart: true,
            families: vec![Afi::Ipv4Unicast, Afi::Ipv6Unicast],
            max_prefixes: None,
        }
    }

    /// The AS this session speaks: its own, else the speaker's.
    pub fn local_as(&self, speaker: &SpeakerConfig) -> u32 {
        self.local_as.unwrap_or(speaker.local_as)
    }

    /// Whether the peer is outside the AS this session speaks (eBGP).
    pub fn is_external(&self, speaker: &SpeakerConfig) -> bool {
        self.remote_as != self.local_as(speaker)
    }

    /// The state machine's settings for this peer.
    pub(crate) fn session(&self, speaker: &SpeakerConfig, restarting: bool) -> SessionConfig {
        let mut session =
            SessionConfig::new(self.local_as(speaker), speaker.router_id, self.remote_as);
        session.passive = self.passive;
        session.hold_time = self.hold_time;
        session.keepalive_time = self.keepalive_time;
        session.connect_retry = self.connect_retry;
        session.idle_hold = self.idle_hold;
        session.families = self.families.clone();
        session.graceful_restart = match (&speaker.graceful_restart, self.graceful_restart) {
            (Some(gr), true) => Some(gr.capability(&self.families, restarting)),
            _ => None,
        };
        session
    }

    /// What the RIB needs to know of this peer.
    pub(crate) fn rib_settings(&self) -> PeerSettings {
        PeerSettings {
            address: self.address,
            remote_as: self.remote_as,
            local_as: self.local_as,
            rr_client: self.rr_client,
            next_hop_self: self.next_hop_self,
            next_hop_keep: self.next_hop_keep,
        }
    }
}
