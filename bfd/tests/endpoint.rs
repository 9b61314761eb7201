//! wren's endpoint against itself across a link in namespaces: sessions come up, packets
//! that did not arrive with TTL 255 or that name no session are counted and ignored, removal
//! tells the neighbour AdminDown (which is no path failure), link-local neighbours work, and
//! bad settings are refused.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::{A4, A6, B4, B6, Link, Wren, timing};
use wren_bfd::endpoint::{CONTROL_PORT, EndpointError, PeerSpec};
use wren_bfd::packet::{ControlPacket, Diagnostic, State};
use wren_tests::prereq;

const SETTLE: Duration = Duration::from_secs(10);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A Down packet with a discriminator nobody has, or an Up one for a discriminator.
fn packet(state: State, your: u32) -> ControlPacket {
    ControlPacket {
        diagnostic: Diagnostic::None,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        authentication: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: 0x5eed,
        your_discriminator: your,
        desired_min_tx: 1_000_000,
        required_min_rx: 1_000_000,
        required_min_echo_rx: 0,
    }
}

#[test]
fn two_endpoints_come_up_on_both_families_and_removal_is_no_failure() {
    if !prereq::require_root() {
        return;
    }
    let link = Link::new("bfd-ww").unwrap();
    let mut a = Wren::start(&link.a);
    let mut b = Wren::start(&link.b);
    a.add(B4, A4, timing(100, 3));
    b.add(A4, B4, timing(100, 3));
    a.wait(State::Up, SETTLE);
    b.wait(State::Up, SETTLE);
    a.add(B6, A6, timing(100, 3));
    b.add(A6, B6, timing(100, 3));
    a.wait(State::Up, SETTLE);
    b.wait(State::Up, SETTLE);
    for peer in [B4, B6] {
        let s = a.settled(peer, Duration::from_millis(300));
        assert!(s.packets_received > 0 && s.packets_sent > 0);
        assert_eq!(s.ups, 1);
    }
    assert_eq!(a.rt.block_on(a.handle.sessions()).unwrap().len(), 2);
    // Removing the session at `a` sends AdminDown: `b` goes Down but not as a failure.
    a.rt.block_on(a.handle.remove_session(ip(B4))).unwrap();
    let down = b.wait(State::Down, SETTLE);
    assert_eq!(
        down.change.diagnostic,
        Diagnostic::NeighborSignaledSessionDown
    );
    assert_eq!(down.remote_state, State::AdminDown);
    assert!(!down.is_failure());
    assert_eq!(b.state(A6), State::Up);
}

/// BGP unnumbered peers over IPv6 link-local addresses: the interface scopes them.
#[test]
fn link_local_neighbours_come_up_scoped_by_their_interface() {
    if !prereq::require_root() {
        return;
    }
    let link = Link::new("bfd-ll").unwrap();
    for (ns, address) in [(&link.a, "fe80::a/64"), (&link.b, "fe80::b/64")] {
        ns.ip(&["-6", "addr", "add", address, "dev", common::IFNAME, "nodad"])
            .unwrap();
    }
    let mut a = Wren::start(&link.a);
    let mut b = Wren::start(&link.b);
    a.add("fe80::b", "fe80::a", timing(100, 3));
    b.add("fe80::a", "fe80::b", timing(100, 3));
    a.wait(State::Up, SETTLE);
    b.wait(State::Up, SETTLE);
    a.settled("fe80::b", Duration::from_millis(300));
}

#[test]
fn packets_without_ttl_255_or_without_a_session_are_discarded() {
    if !prereq::require_root() {
        return;
    }
    let link = Link::new("bfd-ttl").unwrap();
    let a = Wren::start(&link.a);
    a.add(B4, A4, timing(300, 3));
    let to = SocketAddr::new(ip(A4), CONTROL_PORT);
    link.b
        .enter(|| {
            let socket = UdpSocket::bind((ip(B4), 49999)).unwrap();
            // From the session's own neighbour, but one hop away as far as TTL says.
            socket.set_ttl(254).unwrap();
            socket
                .send_to(&packet(State::Down, 0).encode(), to)
                .unwrap();
            // TTL 255, but for a discriminator the endpoint never gave out.
            socket.set_ttl(255).unwrap();
            socket
                .send_to(&packet(State::Up, 0xdead).encode(), to)
                .unwrap();
            // TTL 255, not a BFD packet at all.
            socket.send_to(b"hello", to).unwrap();
        })
        .unwrap();
    let discarded = common::poll(Duration::from_secs(5), || {
        let d = a.rt.block_on(a.handle.discarded()).unwrap();
        (d.ttl >= 1 && d.unknown_session >= 1 && d.invalid >= 1).then_some(d)
    });
    assert_eq!(
        (discarded.ttl, discarded.unknown_session, discarded.invalid),
        (1, 1, 1)
    );
    // The TTL-254 packet changed nothing: the session never heard its neighbour.
    let status = a.rt.block_on(a.handle.session(ip(B4))).unwrap();
    assert_eq!((status.state, status.packets_received), (State::Down, 0));
}

#[test]
fn bad_sessions_are_refused_naming_what_is_wrong() {
    if !prereq::require_root() {
        return;
    }
    let link = Link::new("bfd-bad").unwrap();
    let a = Wren::start(&link.a);
    a.add(B4, A4, timing(300, 3));
    let spec = |peer: &str, local: &str, mult| PeerSpec {
        peer: ip(peer),
        local: ip(local),
        interface: None,
        timing: timing(300, mult),
    };
    let add = |spec| a.rt.block_on(a.handle.add_session(spec));
    assert!(matches!(
        add(spec(B4, A4, 3)),
        Err(EndpointError::SessionExists(_))
    ));
    assert!(matches!(
        add(spec(B6, A4, 3)),
        Err(EndpointError::MixedFamilies(..))
    ));
    let error = add(spec(B6, A6, 0)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "session with 2001:db8::2: detect multiplier must be at least 1"
    );
    assert_eq!(a.rt.block_on(a.handle.sessions()).unwrap().len(), 1);
}
