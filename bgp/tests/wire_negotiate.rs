//! Checks on a received OPEN and the session parameters agreed from the two OPENs.

use std::net::Ipv4Addr;

use wren_bgp::wire::{
    Afi, Capability, Codec, GracefulRestart, Notification, Open, OpenPolicy, negotiate,
};

fn open(asn: u32, id: [u8; 4], hold_time: u16, capabilities: Vec<Capability>) -> Open {
    Open {
        asn,
        hold_time,
        router_id: Ipv4Addr::from(id),
        capabilities,
    }
}

fn full_caps(asn: u32) -> Vec<Capability> {
    vec![
        Capability::Multiprotocol(Afi::Ipv4Unicast),
        Capability::Multiprotocol(Afi::Ipv6Unicast),
        Capability::RouteRefresh,
        Capability::FourOctetAs(asn),
    ]
}

fn refused(local: &Open, remote: &Open, policy: &OpenPolicy) -> Notification {
    negotiate(local, remote, policy)
        .expect_err("OPEN refused")
        .notification()
}

#[test]
fn agreed_parameters() {
    let local = open(65000, [10, 0, 0, 1], 90, full_caps(65000));
    let gr = GracefulRestart {
        restarting: true,
        restart_time: 120,
        families: vec![],
    };
    let mut caps = full_caps(4_200_000_000);
    caps.remove(1); // no IPv6
    caps.push(Capability::GracefulRestart(gr.clone()));
    let remote = open(4_200_000_000, [10, 0, 0, 2], 30, caps);
    let agreed = negotiate(&local, &remote, &OpenPolicy::default()).unwrap();
    assert_eq!(agreed.peer_as, 4_200_000_000);
    assert_eq!(agreed.peer_router_id, Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!((agreed.hold_time, agreed.keepalive_time), (30, 10));
    assert_eq!(
        agreed.codec,
        Codec {
            four_octet_as: true,
            external_peer: true,
        }
    );
    assert_eq!(agreed.families, vec![Afi::Ipv4Unicast]);
    assert!(agreed.route_refresh);
    assert_eq!(agreed.peer_graceful_restart, Some(gr));
}

#[test]
fn old_speaker_without_capabilities() {
    let local = open(65000, [10, 0, 0, 1], 90, full_caps(65000));
    let remote = open(65001, [10, 0, 0, 2], 0, vec![]);
    let agreed = negotiate(&local, &remote, &OpenPolicy::default()).unwrap();
    assert_eq!(
        agreed.codec,
        Codec {
            four_octet_as: false,
            external_peer: true,
        }
    );
    // No multiprotocol capability: IPv4 unicast only (RFC 4760 §8).
    assert_eq!(agreed.families, vec![Afi::Ipv4Unicast]);
    assert!(!agreed.route_refresh);
    // Hold time 0 on either side: no keepalives.
    assert_eq!((agreed.hold_time, agreed.keepalive_time), (0, 0));
}

#[test]
fn bad_peer_as() {
    let local = open(65000, [10, 0, 0, 1], 90, full_caps(65000));
    let remote = open(65001, [10, 0, 0, 2], 90, full_caps(65001));
    let policy = OpenPolicy {
        peer_as: Some(65002),
        ..Default::default()
    };
    assert_eq!(
        refused(&local, &remote, &policy),
        Notification {
            code: 2,
            subcode: 2,
            data: vec![]
        }
    );
    let zero = open(0, [10, 0, 0, 2], 90, vec![]);
    let notification = refused(&local, &zero, &OpenPolicy::default());
    assert_eq!((notification.code, notification.subcode), (2, 2));
}

#[test]
fn bad_bgp_identifier() {
    let local = open(65000, [10, 0, 0, 1], 90, full_caps(65000));
    let expected = Notification {
        code: 2,
        subcode: 3,
        data: vec![],
    };
    let zero = open(65001, [0, 0, 0, 0], 90, vec![]);
    assert_eq!(refused(&local, &zero, &OpenPolicy::default()), expected);
    // Same identifier on an iBGP session is refused, on eBGP it is allowed (RFC 6286).
    let ibgp_clash = open(65000, [10, 0, 0, 1], 90, vec![]);
    assert_eq!(
        refused(&local, &ibgp_clash, &OpenPolicy::default()),
        expected
    );
    let ebgp_same_id = open(65001, [10, 0, 0, 1], 90, vec![]);
    assert!(negotiate(&local, &ebgp_same_id, &OpenPolicy::default()).is_ok());
}

#[test]
fn unacceptable_hold_time() {
    let local = open(65000, [10, 0, 0, 1], 90, vec![]);
    for hold in [1, 2] {
        let remote = open(65001, [10, 0, 0, 2], hold, vec![]);
        assert_eq!(
            refused(&local, &remote, &OpenPolicy::default()),
            Notification {
                code: 2,
                subcode: 6,
                data: vec![]
            }
        );
    }
    assert!(
        negotiate(
            &local,
            &open(65001, [10, 0, 0, 2], 3, vec![]),
            &OpenPolicy::default()
        )
        .is_ok()
    );
}

#[test]
fn unsupported_capability_lists_what_is_missing() {
    let local = open(65000, [10, 0, 0, 1], 90, full_caps(65000));
    let remote = open(
        65001,
        [10, 0, 0, 2],
        90,
        vec![Capability::Multiprotocol(Afi::Ipv4Unicast)],
    );
    let policy = OpenPolicy {
        peer_as: None,
        required_capabilities: vec![
            Capability::Multiprotocol(Afi::Ipv4Unicast),
            Capability::Multiprotocol(Afi::Ipv6Unicast),
            Capability::FourOctetAs(0),
        ],
    };
    // Data: the missing capabilities as code, length, value (RFC 5492 §5).
    assert_eq!(
        refused(&local, &remote, &policy),
        Notification {
            code: 2,
            subcode: 7,
            data: vec![1, 4, 0, 2, 0, 1, 65, 4, 0, 0, 0, 0]
        }
    );
}
