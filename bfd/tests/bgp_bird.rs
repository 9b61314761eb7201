//! BFD protecting a BGP session with BIRD 2, the whole chain in namespaces the test creates:
//! BIRD runs BGP with `bfd on`; wren runs its BFD endpoint and its BGP speaker, joined as the
//! agent will join them (a BFD failure → `set_bfd(peer, false)`, Up again → `true`). A link
//! that stops carrying packets takes BIRD's route out of wren's table within about the
//! detection time, where the 90 s hold timer alone would keep it; the session stays down
//! while BFD is, and both return when the link does.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{A4, B4, Cut, IFNAME, Link, Wren, poll, timing};
use ipnet::IpNet;
use wren_bfd::packet::State;
use wren_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig, SpeakerHandle};
use wren_tests::daemons::bird::Bird;
use wren_tests::daemons::{
    Announce, BfdPeer, BgpDaemon, Config, Peer, SessionState, wait_established, wait_for,
};
use wren_tests::prereq;

const SETTLE: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn has_route(wren: &Wren, speaker: &SpeakerHandle, prefix: IpNet) -> bool {
    let rib = wren.rt.block_on(speaker.loc_rib()).unwrap();
    rib.iter().any(|(p, _)| *p == prefix)
}

#[test]
fn bfd_takes_the_session_and_its_routes_down_long_before_the_hold_timer() {
    if !prereq::require_root()
        || !prereq::require_command("bird")
        || !prereq::require_command("nft")
    {
        return;
    }
    let link = Link::new("bfd-bgp").unwrap();
    let prefix: IpNet = "10.20.0.0/24".parse().unwrap();
    let config = Config::new(B4.parse().unwrap(), 65002)
        .peer(Peer::new(ip(A4), 65001, ip(B4)).hold_time(90).bfd())
        .bfd(BfdPeer::new(ip(A4), ip(B4), IFNAME).interval(Duration::from_millis(100)));
    let mut bird = Bird::start(&link.b, config).unwrap();
    bird.announce(&Announce::new(prefix)).unwrap();

    let mut wren = Wren::start(&link.a);
    wren.add(B4, A4, timing(100, 3));
    let speaker = wren.rt.block_on(async {
        tokio::spawn(async {
            let mut config = SpeakerConfig::new(A4.parse().unwrap(), 65001);
            config.listen = Some(SocketAddr::new(ip(A4), 179));
            Speaker::start(config).await.unwrap().0
        })
        .await
        .unwrap()
    });
    let mut peer = PeerConfig::new(ip(B4), 65002);
    peer.hold_time = 90;
    wren.rt.block_on(speaker.add_peer(peer)).unwrap();
    // The bridge the agent runs: BFD failures and recoveries go to the speaker.
    let mut events = wren.rt.block_on(wren.handle.subscribe()).unwrap();
    let bridged = speaker.clone();
    wren.rt.spawn(async move {
        while let Some(event) = events.recv().await {
            if event.is_failure() {
                let _ = bridged.set_bfd(event.peer, false).await;
            } else if event.change.to == State::Up {
                let _ = bridged.set_bfd(event.peer, true).await;
            }
        }
    });

    wren.wait(State::Up, SETTLE);
    wait_established(&bird, ip(A4), SETTLE).unwrap();
    poll(SETTLE, || has_route(&wren, &speaker, prefix).then_some(()));

    let cut = link.cut(Cut::Loss);
    let gone = poll(Duration::from_secs(10), || {
        (!has_route(&wren, &speaker, prefix)).then(Instant::now)
    });
    let took = gone.duration_since(cut.instant);
    eprintln!("route gone from the speaker {took:?} after the cut");
    // 300 ms of detection and a step through the speaker; the hold timer would take 90 s.
    assert!(took < Duration::from_secs(2), "route gone after {took:?}");
    let status = wren.rt.block_on(speaker.peer(ip(B4))).unwrap();
    assert!(status.bfd_down);
    assert_eq!(status.last_error.as_deref(), Some("BFD session down"));
    // BIRD's own BFD takes its side of the session down too.
    wait_for("BIRD to leave Established", SETTLE, || {
        Ok(match bird.neighbor(ip(A4))?.state {
            SessionState::Established => Err("Established".to_owned()),
            _ => Ok(()),
        })
    })
    .unwrap();

    link.heal(Cut::Loss);
    wren.wait(State::Up, SETTLE);
    poll(SETTLE, || has_route(&wren, &speaker, prefix).then_some(()));
    assert!(!wren.rt.block_on(speaker.peer(ip(B4))).unwrap().bfd_down);
    wait_established(&bird, ip(A4), SETTLE).unwrap();
    let _ = wren.rt.block_on(speaker.shutdown());
}
