//! Shared by the randomized wire tests and the `cargo fuzz` target: seed messages and the
//! property every input must satisfy.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use wren_bgp::wire::{
    Afi, Aggregator, AsPath, AsSegment, Capability, Codec, FLAG_PARTIAL, GracefulRestart,
    LargeCommunity, Message, MpReach, MpUnreach, Notification, Open, Origin, ParsedMessage,
    PathAttributes, RawAttribute, Update, frame, parse_message,
};

/// Valid messages of every kind to mutate.
pub fn seeds() -> Vec<Vec<u8>> {
    let codec = Codec::default();
    let attrs = PathAttributes {
        origin: Some(Origin::Egp),
        as_path: Some(AsPath {
            segments: vec![
                AsSegment::Sequence(vec![65001, 4_200_000_000]),
                AsSegment::Set(vec![7, 8]),
            ],
        }),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        med: Some(5),
        local_pref: Some(100),
        atomic_aggregate: true,
        aggregator: Some(Aggregator {
            asn: 70000,
            address: Ipv4Addr::new(1, 2, 3, 4),
        }),
        communities: vec![1, 2, 3],
        originator_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
        cluster_list: vec![Ipv4Addr::new(10, 0, 0, 2)],
        mp_reach: Some(MpReach {
            afi: Afi::Ipv6Unicast,
            next_hop: IpAddr::V6("2001:db8::1".parse().unwrap()),
            link_local_next_hop: Some("fe80::1".parse().unwrap()),
            nlri: vec!["2001:db8:1::/48".parse().unwrap(), "::/0".parse().unwrap()],
        }),
        mp_unreach: Some(MpUnreach {
            afi: Afi::Ipv6Unicast,
            withdrawn: vec!["2001:db8:2::/64".parse().unwrap()],
        }),
        large_communities: vec![LargeCommunity {
            global_admin: 4_200_000_000,
            local_data_1: 1,
            local_data_2: 2,
        }],
        unknown: vec![RawAttribute {
            flags: 0xc0,
            type_code: 250,
            value: vec![0; 12],
        }],
    };
    let messages = [
        Message::Keepalive,
        Message::RouteRefresh(Afi::Ipv4Unicast),
        Message::Notification(Notification {
            code: 6,
            subcode: 2,
            data: vec![3, b'b', b'y', b'e'],
        }),
        Message::Open(Open {
            asn: 4_200_000_000,
            hold_time: 90,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            capabilities: vec![
                Capability::Multiprotocol(Afi::Ipv4Unicast),
                Capability::Multiprotocol(Afi::Ipv6Unicast),
                Capability::RouteRefresh,
                Capability::FourOctetAs(4_200_000_000),
                Capability::GracefulRestart(GracefulRestart {
                    restarting: true,
                    restart_time: 120,
                    families: vec![(Afi::Ipv4Unicast, true)],
                }),
                Capability::Unknown {
                    code: 73,
                    value: b"node-1".to_vec(),
                },
            ],
        }),
        Message::Update(Update {
            withdrawn: vec!["10.9.0.0/16".parse().unwrap()],
            attributes: attrs,
            nlri: vec![
                "10.1.2.0/24".parse().unwrap(),
                "10.1.3.128/25".parse().unwrap(),
            ],
        }),
        Message::Update(Update::end_of_rib_marker(Afi::Ipv6Unicast)),
    ];
    let mut out: Vec<Vec<u8>> = messages.iter().map(|m| m.encode(&codec).unwrap()).collect();
    // The same UPDATE as a 2-octet session writes it (AS_TRANS, AS4_PATH, AS4_AGGREGATOR).
    out.push(
        messages[4]
            .encode(&Codec {
                four_octet_as: false,
                external_peer: false,
            })
            .unwrap(),
    );
    out.push(CAPTURED_IBGP_UPDATE.to_vec());
    out.push(CAPTURED_VPN_UPDATE.to_vec());
    out
}

/// Parses `bytes` both ways; what is accepted must re-encode and read back the same.
pub fn check(bytes: &[u8]) {
    let _ = frame(bytes);
    for codec in [
        Codec {
            four_octet_as: true,
            external_peer: false,
        },
        Codec {
            four_octet_as: false,
            external_peer: false,
        },
    ] {
        let Ok(parsed) = parse_message(bytes, &codec) else {
            continue;
        };
        if let ParsedMessage::Update(u) = &parsed {
            let _ = u.end_of_rib();
        }
        let Some(message) = parsed.into_message() else {
            continue;
        };
        // Re-encoding may refuse (e.g. a message that grows past 4096 octets); it must not
        // panic, and what it writes must read back as the same message.
        let Ok(again) = message.encode(&codec) else {
            continue;
        };
        let reparsed = parse_message(&again, &codec)
            .unwrap_or_else(|e| panic!("re-encoded {bytes:02x?} does not parse: {e}"))
            .into_message();
        let mut expected = message;
        if let Message::Update(u) = &mut expected {
            u.attributes
                .unknown
                .iter_mut()
                .for_each(|a| a.flags |= FLAG_PARTIAL);
        }
        assert_eq!(reparsed, Some(expected), "input {bytes:02x?}");
    }
}

/// An UPDATE captured from a 2-octet AS session (the `__bgp2` vector of dpkt's BGP tests):
/// AS_SET + AS_SEQUENCE, ATOMIC_AGGREGATE, AGGREGATOR, COMMUNITIES and route reflection
/// attributes.
#[rustfmt::skip]
pub const CAPTURED_IBGP_UPDATE: [u8; 99] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x00, 0x63, 0x02, 0x00, 0x00, 0x00, 0x48, 0x40, 0x01, 0x01, 0x00, 0x40, 0x02, 0x0a, 0x01, 0x02,
    0x01, 0xf4, 0x01, 0xf4, 0x02, 0x01, 0xfe, 0xbb, 0x40, 0x03, 0x04, 0xc0, 0xa8, 0x00, 0x0f, 0x40,
    0x05, 0x04, 0x00, 0x00, 0x00, 0x64, 0x40, 0x06, 0x00, 0xc0, 0x07, 0x06, 0xfe, 0xba, 0xc0, 0xa8,
    0x00, 0x0a, 0xc0, 0x08, 0x0c, 0xfe, 0xbf, 0x00, 0x01, 0x03, 0x16, 0x00, 0x04, 0x01, 0x54, 0x00,
    0xfa, 0x80, 0x09, 0x04, 0xc0, 0xa8, 0x00, 0x0f, 0x80, 0x0a, 0x04, 0xc0, 0xa8, 0x00, 0xfa, 0x16,
    0xc0, 0xa8, 0x04,
];

/// A captured VPNv4 UPDATE (dpkt's `__bgp3`): extended communities and ATTR_SET are kept as
/// unknown transitive attributes and the MP_REACH_NLRI of a family wren does not speak is
/// dropped without touching the session.
#[rustfmt::skip]
pub const CAPTURED_VPN_UPDATE: [u8; 121] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x00, 0x79, 0x02, 0x00, 0x00, 0x00, 0x62, 0x40, 0x01, 0x01, 0x00, 0x40, 0x02, 0x00, 0x40, 0x05,
    0x04, 0x00, 0x00, 0x00, 0x64, 0xc0, 0x10, 0x08, 0x00, 0x02, 0x01, 0x2c, 0x00, 0x00, 0x01, 0x2c,
    0xc0, 0x80, 0x24, 0x00, 0x00, 0xfd, 0xe9, 0x40, 0x01, 0x01, 0x00, 0x40, 0x02, 0x04, 0x02, 0x01,
    0x15, 0xb3, 0x40, 0x05, 0x04, 0x00, 0x00, 0x00, 0x2c, 0x80, 0x09, 0x04, 0x16, 0x05, 0x05, 0x05,
    0x80, 0x0a, 0x04, 0x16, 0x05, 0x05, 0x05, 0x90, 0x0e, 0x00, 0x1e, 0x00, 0x01, 0x80, 0x0c, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x00, 0x60, 0x18, 0x77, 0x01,
    0x00, 0x00, 0x01, 0xf4, 0x00, 0x00, 0x01, 0xf4, 0x85,
];
