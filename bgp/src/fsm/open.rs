//! Our OPEN, and the graceful-restart consequences of what was negotiated.

use std::time::Duration;

use crate::wire::{Afi, Capability, Negotiated, Open};

use super::SessionConfig;

/// The OPEN we send: our AS, hold time, identifier and capabilities.
pub(super) fn local_open(config: &SessionConfig) -> Open {
    let mut capabilities: Vec<Capability> = config
        .families
        .iter()
        .map(|afi| Capability::Multiprotocol(*afi))
        .collect();
    capabilities.push(Capability::RouteRefresh);
    capabilities.push(Capability::FourOctetAs(config.local_as));
    if let Some(gr) = &config.graceful_restart {
        capabilities.push(Capability::GracefulRestart(gr.clone()));
    }
    Open {
        asn: config.local_as,
        hold_time: config.hold_time,
        router_id: config.router_id,
        capabilities,
    }
}

/// Families whose routes a receiving speaker keeps as stale when this session drops without
/// a NOTIFICATION, and for how long (RFC 4724 §4.2). Empty unless both sides advertised
/// graceful restart.
pub fn retained(config: &SessionConfig, negotiated: &Negotiated) -> (Vec<Afi>, Duration) {
    match (&negotiated.peer_graceful_restart, &config.graceful_restart) {
        (Some(peer), Some(_)) => {
            let families = peer
                .families
                .iter()
                .map(|(afi, _)| *afi)
                .filter(|afi| negotiated.families.contains(afi))
                .collect();
            (families, Duration::from_secs(u64::from(peer.restart_time)))
        }
        _ => (Vec::new(), Duration::ZERO),
    }
}

/// The seconds between our KEEPALIVEs for a negotiated hold time: the configured time, at
/// most a third of the hold time (as FRR clamps it); a third when none is configured; 0 with
/// no hold time (no KEEPALIVEs).
pub(super) fn keepalive_time(config: &SessionConfig, hold_time: u16) -> u16 {
    let third = hold_time / 3;
    match config.keepalive_time {
        Some(configured) if hold_time != 0 => configured.clamp(1, third.max(1)),
        _ => third,
    }
}

/// The interval between our KEEPALIVEs on a session (at least one second).
pub fn keepalive(negotiated: &Negotiated) -> Duration {
    Duration::from_secs(u64::from(negotiated.keepalive_time).max(1))
}
