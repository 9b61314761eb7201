//! wren's BFD against FRR's bfdd and BIRD 2's `bfd` protocol, in namespaces the test creates:
//! both sides reach Up, with either side speaking first; a cut link (`ip link set down`, or
//! every packet dropped while the carrier stays up) takes both down, wren within its detection time and with the
//! diagnostic that says so; both come back when the link returns. IPv4 and IPv6.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{A4, A6, B4, B6, Cut, IFNAME, Link, Wren, timing};
use wren_bfd::packet::{Diagnostic, State};
use wren_bfd::session::SessionConfig;
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::frr::{self, Frr};
use wren_tests::daemons::{BfdDaemon, BfdPeer, BfdState, Config, wait_bfd, wait_for};
use wren_tests::prereq;

/// Time for either side to see the other, from a cold start (slow packets are 1 s apart).
const SETTLE: Duration = Duration::from_secs(15);
/// Scheduling allowance on top of the detection time, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(250);

fn ready_frr() -> bool {
    prereq::require_root()
        && prereq::require_command("nft")
        && frr::BINARIES
            .iter()
            .chain(frr::BFD_BINARIES.iter())
            .all(|c| prereq::require_command(c))
}

fn ready_bird() -> bool {
    prereq::require_root() && prereq::require_command("nft") && prereq::require_command("bird")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The daemon's config: one BFD session with wren.
fn daemon_config(wren: &str, local: &str, ms: u64, mult: u8, passive: bool) -> Config {
    let mut peer = BfdPeer::new(ip(wren), ip(local), IFNAME)
        .interval(Duration::from_millis(ms))
        .detect_mult(mult);
    if passive {
        peer = peer.passive();
    }
    Config::new("192.0.2.2".parse().unwrap(), 65002).bfd(peer)
}

/// Up on both sides; cut; Down on both sides, wren within the detection time; heal; Up again.
fn exercise(
    link: &Link,
    daemon: &dyn BfdDaemon,
    wren: &mut Wren,
    (peer, local): (&str, &str),
    timing: SessionConfig,
    cut: Cut,
) {
    wren.add(peer, local, timing);
    wren.wait(State::Up, SETTLE);
    wait_bfd(daemon, ip(local), BfdState::Up, SETTLE).unwrap();
    let detection = timing.required_min_rx * u32::from(timing.detect_mult);
    let status = wren.settled(peer, detection);
    assert_ne!(status.remote_discriminator, 0);

    let at = link.cut(cut);
    let down = wren.wait(State::Down, detection + Duration::from_secs(3));
    assert_eq!(down.change.from, State::Up);
    assert_eq!(
        down.change.diagnostic,
        Diagnostic::ControlDetectionTimeExpired
    );
    assert!(down.is_failure());
    let took = down.at.duration_since(at.instant);
    assert!(
        took <= detection + SLACK,
        "{} {cut:?}: down after {took:?}, detection time {detection:?}",
        daemon.kind()
    );
    // The daemon notices too (BIRD may drop a session whose interface went away entirely).
    wait_for(&format!("{} to leave Up", daemon.kind()), SETTLE, || {
        Ok(match daemon.bfd_state(ip(local))? {
            Some(BfdState::Up) => Err("Up".to_owned()),
            _ => Ok(()),
        })
    })
    .unwrap();

    link.heal(cut);
    wren.wait(State::Up, SETTLE);
    wait_bfd(daemon, ip(local), BfdState::Up, SETTLE).unwrap();
}

fn passive(config: SessionConfig) -> SessionConfig {
    SessionConfig {
        passive: true,
        ..config
    }
}

#[test]
fn frr_ipv4_wren_speaks_first_and_a_downed_link_is_detected() {
    if !ready_frr() {
        return;
    }
    let link = Link::new("bfd-frr4").unwrap();
    let frr = Frr::start(&link.b, daemon_config(A4, B4, 300, 3, true)).unwrap();
    let mut wren = Wren::start(&link.a);
    let timing = timing(300, 3);
    exercise(&link, &frr, &mut wren, (B4, A4), timing, Cut::LinkDown);
}

#[test]
fn frr_ipv6_frr_speaks_first_and_total_loss_is_detected() {
    if !ready_frr() {
        return;
    }
    let link = Link::new("bfd-frr6").unwrap();
    let frr = Frr::start(&link.b, daemon_config(A6, B6, 100, 3, false)).unwrap();
    let mut wren = Wren::start(&link.a);
    let timing = passive(timing(100, 3));
    exercise(&link, &frr, &mut wren, (B6, A6), timing, Cut::Loss);
}

#[test]
fn bird_ipv4_bird_speaks_first_and_total_loss_is_detected() {
    if !ready_bird() {
        return;
    }
    let link = Link::new("bfd-bird4").unwrap();
    let bird = Bird::start(&link.b, daemon_config(A4, B4, 100, 3, false)).unwrap();
    let mut wren = Wren::start(&link.a);
    let timing = passive(timing(100, 3));
    exercise(&link, &bird, &mut wren, (B4, A4), timing, Cut::Loss);
}

#[test]
fn bird_ipv6_wren_speaks_first_and_total_loss_is_detected() {
    if !ready_bird() {
        return;
    }
    let link = Link::new("bfd-bird6").unwrap();
    let bird = Bird::start(&link.b, daemon_config(A6, B6, 300, 3, true)).unwrap();
    let mut wren = Wren::start(&link.a);
    let timing = timing(300, 3);
    exercise(&link, &bird, &mut wren, (B6, A6), timing, Cut::Loss);
}

#[test]
fn bird_ipv4_downed_link_is_detected() {
    if !ready_bird() {
        return;
    }
    let link = Link::new("bfd-birdld").unwrap();
    let bird = Bird::start(&link.b, daemon_config(A4, B4, 300, 3, false)).unwrap();
    let mut wren = Wren::start(&link.a);
    let timing = timing(300, 3);
    exercise(&link, &bird, &mut wren, (B4, A4), timing, Cut::LinkDown);
}
