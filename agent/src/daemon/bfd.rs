//! BFD for the node's BGP sessions: one `wren-bfd` endpoint, a single-hop session per BGP
//! peer that asks for it, and the bridge from BFD to the speaker.
//!
//! A BFD session that fails (leaves Up for any reason but an administrative one) takes the
//! peer's BGP session down at once through [`SpeakerHandle::set_bfd`] (Cease / BFD Down,
//! routes withdrawn without graceful restart's stale period) and holds it down; the session
//! returns when BFD is Up again. A BFD session that has not come up yet holds nothing: BGP
//! does not wait for BFD (RFC 5882 §4.3 leaves that to configuration, and BIRD and FRR do
//! not wait either), so a peer without BFD on its side still peers, without protection.
//!
//! The endpoint starts with the first session, so a node without BFD binds no port 3784.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use wren_bfd::endpoint::{
    CONTROL_PORT, Endpoint, EndpointConfig, EndpointHandle, PeerSpec, SessionStatus,
};
use wren_bfd::packet::State;
use wren_bfd::session::SessionConfig;
use wren_bgp::speaker::SpeakerHandle;
use wren_model::Bfd;

/// One BFD session as `wren status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BfdStatus {
    /// `Up`, `Down`, `Init` or `AdminDown`.
    pub state: String,
    /// Seconds since the session entered its state.
    pub since_secs: u64,
    /// The neighbour's state, from its last packet.
    pub remote_state: String,
    /// Why the session last changed state (RFC 5880's diagnostic names).
    pub diagnostic: String,
    /// The diagnostic the neighbour last sent.
    pub remote_diagnostic: String,
    /// Detection time in force, in milliseconds, once the neighbour has been heard.
    pub detection_time_ms: Option<u64>,
    /// The configured timing.
    pub configured: Bfd,
    /// Control packets sent.
    pub packets_sent: u64,
    /// Control packets received.
    pub packets_received: u64,
    /// Times the session went Up.
    pub ups: u64,
    /// Times it went from Up to Down.
    pub downs: u64,
}

impl BfdStatus {
    fn new(s: &SessionStatus, configured: Bfd, now: Instant) -> Self {
        Self {
            state: s.state.name().to_owned(),
            since_secs: now.saturating_duration_since(s.since).as_secs(),
            remote_state: s.remote_state.name().to_owned(),
            diagnostic: s.diagnostic.to_string(),
            remote_diagnostic: s.remote_diagnostic.to_string(),
            detection_time_ms: s.detection_time.map(|d| d.as_millis() as u64),
            configured,
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            ups: s.ups,
            downs: s.downs,
        }
    }

    /// Whether the session is Up.
    pub fn is_up(&self) -> bool {
        self.state == State::Up.name()
    }
}

/// One BFD session the plan asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdSession {
    /// Intervals and multiplier.
    pub timing: Bfd,
    /// The address to send from, when not the node's address of the peer's family.
    pub source: Option<IpAddr>,
}

/// The timing a model document asks for, as the session takes it.
fn session_config(bfd: &Bfd) -> SessionConfig {
    SessionConfig {
        desired_min_tx: Duration::from_millis(u64::from(bfd.transmit_interval_ms)),
        required_min_rx: Duration::from_millis(u64::from(bfd.receive_interval_ms)),
        detect_mult: bfd.multiplier,
        passive: false,
    }
}

/// State shared with the task that follows the endpoint's events.
#[derive(Default)]
struct Shared {
    /// Every session the endpoint runs, with its timing.
    configured: Mutex<BTreeMap<IpAddr, BfdSession>>,
    /// Every session's last status, by neighbour.
    statuses: Mutex<BTreeMap<IpAddr, BfdStatus>>,
    /// Peers whose BFD failed and has not come back: their BGP sessions are held down.
    failed: Mutex<BTreeSet<IpAddr>>,
}

/// The node's BFD sessions, bridged to its BGP speaker.
pub struct BfdSessions {
    speaker: SpeakerHandle,
    local_v4: Ipv4Addr,
    local_v6: Option<Ipv6Addr>,
    /// The endpoint, once started; its lock also orders reconfigurations.
    endpoint: tokio::sync::Mutex<Option<EndpointHandle>>,
    shared: Arc<Shared>,
    changed: Arc<Notify>,
}

impl BfdSessions {
    /// Sessions sourced from the node's addresses; every state change, once passed to the
    /// speaker, wakes `changed`.
    pub fn new(
        speaker: SpeakerHandle,
        local_v4: Ipv4Addr,
        local_v6: Option<Ipv6Addr>,
        changed: Arc<Notify>,
    ) -> Self {
        Self {
            speaker,
            local_v4,
            local_v6,
            endpoint: tokio::sync::Mutex::default(),
            shared: Arc::default(),
            changed,
        }
    }

    /// Starts the endpoint and the task that tells the speaker about failures.
    async fn start(&self) -> Result<EndpointHandle, wren_bfd::endpoint::EndpointError> {
        let config = EndpointConfig {
            listen_v4: Some(Ipv4Addr::UNSPECIFIED),
            listen_v6: self.local_v6.map(|_| Ipv6Addr::UNSPECIFIED),
            port: CONTROL_PORT,
        };
        let (endpoint, _task) = Endpoint::start(config).await?;
        let mut events = endpoint.subscribe().await?;
        let (speaker, shared, changed) = (
            self.speaker.clone(),
            self.shared.clone(),
            self.changed.clone(),
        );
        let handle = endpoint.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let peer = event.peer;
                if event.is_failure() {
                    tracing::warn!(%peer, diagnostic = %event.change.diagnostic, "BFD session down: ending the BGP session");
                    lock(&shared.failed).insert(peer);
                    if let Err(e) = speaker.set_bfd(peer, false).await {
                        tracing::warn!(%peer, error = %e, "cannot take the BGP session down");
                    }
                } else if event.change.to == State::Up {
                    tracing::info!(%peer, "BFD session up");
                    lock(&shared.failed).remove(&peer);
                    if let Err(e) = speaker.set_bfd(peer, true).await {
                        tracing::debug!(%peer, error = %e, "no BGP session to release");
                    }
                } else {
                    tracing::debug!(%peer, from = %event.change.from, to = %event.change.to, "BFD session changed state");
                }
                refresh(&handle, &shared).await;
                changed.notify_one();
            }
        });
        Ok(endpoint)
    }

    /// Makes the BFD sessions exactly `wanted` (neighbour → timing). `reconfigured` are BGP
    /// peers the speaker has just added or changed: they start without BFD's hold, so the
    /// ones whose BFD is still down after a failure are held again.
    pub async fn set(
        &self,
        wanted: &BTreeMap<IpAddr, BfdSession>,
        reconfigured: &BTreeSet<IpAddr>,
    ) {
        let mut running = self.endpoint.lock().await;
        let endpoint = match running.as_ref() {
            Some(endpoint) => endpoint.clone(),
            None if wanted.is_empty() => return,
            None => match self.start().await {
                Ok(endpoint) => running.insert(endpoint).clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start BFD; sessions run without it");
                    return;
                }
            },
        };
        let current = lock(&self.shared.configured).clone();
        let stale: Vec<IpAddr> = current
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for peer in stale {
            if let Err(e) = endpoint.remove_session(peer).await {
                tracing::warn!(%peer, error = %e, "cannot remove BFD session");
            }
            lock(&self.shared.configured).remove(&peer);
            lock(&self.shared.statuses).remove(&peer);
            // BFD no longer speaks for the path: a hold it put on the session goes with it.
            if lock(&self.shared.failed).remove(&peer) {
                let _ = self.speaker.set_bfd(peer, true).await;
            }
            tracing::info!(%peer, "BFD session removed");
        }
        for (peer, session) in wanted {
            let bfd = &session.timing;
            let result = match current.get(peer) {
                Some(current) if current == session => continue,
                Some(current) if current.source == session.source => {
                    endpoint.reconfigure(*peer, session_config(bfd)).await
                }
                changed => {
                    if changed.is_some() {
                        // A new source address is a new session.
                        let _ = endpoint.remove_session(*peer).await;
                    }
                    let local = session.source.or(match peer {
                        IpAddr::V4(_) => Some(IpAddr::V4(self.local_v4)),
                        IpAddr::V6(_) => self.local_v6.map(IpAddr::V6),
                    });
                    let Some(local) = local else {
                        tracing::warn!(%peer, "no BFD session: the node has no IPv6 address");
                        continue;
                    };
                    endpoint
                        .add_session(PeerSpec {
                            peer: *peer,
                            local,
                            interface: None,
                            timing: session_config(bfd),
                        })
                        .await
                }
            };
            match result {
                Ok(()) => {
                    tracing::info!(%peer, transmit_ms = bfd.transmit_interval_ms, receive_ms = bfd.receive_interval_ms, multiplier = bfd.multiplier, "BFD session configured");
                    lock(&self.shared.configured).insert(*peer, *session);
                }
                Err(e) => tracing::warn!(%peer, error = %e, "cannot configure BFD session"),
            }
        }
        let held: Vec<IpAddr> = lock(&self.shared.failed)
            .intersection(reconfigured)
            .copied()
            .collect();
        for peer in held {
            if let Err(e) = self.speaker.set_bfd(peer, false).await {
                tracing::warn!(%peer, error = %e, "cannot hold the BGP session down");
            }
        }
        refresh(&endpoint, &self.shared).await;
    }

    /// Reads every session's counters from the endpoint.
    pub async fn poll(&self) {
        let endpoint = self.endpoint.lock().await.clone();
        if let Some(endpoint) = endpoint {
            refresh(&endpoint, &self.shared).await;
        }
    }

    /// The last status of the session with `peer`, if it has one.
    pub fn status(&self, peer: IpAddr) -> Option<BfdStatus> {
        lock(&self.shared.statuses).get(&peer).cloned()
    }

    /// Tells every neighbour AdminDown (so they do not take it for a failure) and stops.
    pub async fn shutdown(&self) {
        let endpoint = self.endpoint.lock().await.take();
        if let Some(endpoint) = endpoint {
            let _ = endpoint.shutdown().await;
        }
    }
}

/// Replaces the statuses with the endpoint's.
async fn refresh(endpoint: &EndpointHandle, shared: &Shared) {
    let Ok(sessions) = endpoint.sessions().await else {
        return;
    };
    let now = Instant::now();
    let configured = lock(&shared.configured).clone();
    let fresh: BTreeMap<IpAddr, BfdStatus> = sessions
        .iter()
        .filter_map(|s| {
            let session = configured.get(&s.peer)?;
            Some((s.peer, BfdStatus::new(s, session.timing, now)))
        })
        .collect();
    *lock(&shared.statuses) = fresh;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_timing_is_the_sessions() {
        let bfd = Bfd {
            transmit_interval_ms: 100,
            receive_interval_ms: 250,
            multiplier: 5,
        };
        let config = session_config(&bfd);
        assert_eq!(config.desired_min_tx, Duration::from_millis(100));
        assert_eq!(config.required_min_rx, Duration::from_millis(250));
        assert_eq!(config.detect_mult, 5);
        assert!(!config.passive);
        assert!(config.validate().is_ok());
    }
}
