//! Property tests: for generated messages, parse(encode(m)) == m on 4- and 2-octet sessions,
//! and packed UPDATEs carry exactly the routes given, within the size limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use wren_bgp::wire::{
    AS_TRANS, Afi, Aggregator, AsPath, AsSegment, Capability, Codec, EncodeError, FLAG_PARTIAL,
    GracefulRestart, LargeCommunity, MAX_MESSAGE_LEN, Message, MpReach, MpUnreach, Notification,
    Open, Origin, ParsedMessage, PathAttributes, RawAttribute, Update, frame, pack_announcements,
    pack_withdrawals, parse_message,
};

fn afi() -> impl Strategy<Value = Afi> {
    prop_oneof![Just(Afi::Ipv4Unicast), Just(Afi::Ipv6Unicast)]
}

fn v4_prefix() -> impl Strategy<Value = IpNet> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(a.into(), l).unwrap().trunc()))
}

fn v6_prefix() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(a.into(), l).unwrap().trunc()))
}

fn prefixes(afi: Afi, max: usize) -> BoxedStrategy<Vec<IpNet>> {
    match afi {
        Afi::Ipv4Unicast => prop::collection::vec(v4_prefix(), 0..max).boxed(),
        Afi::Ipv6Unicast => prop::collection::vec(v6_prefix(), 0..max).boxed(),
    }
}

fn asn() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=65535, 65536u32..=u32::MAX, Just(AS_TRANS)]
}

fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..224, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| Ipv4Addr::new(a, b, c, d))
}

fn as_path() -> impl Strategy<Value = AsPath> {
    let segment = prop_oneof![
        prop::collection::vec(asn(), 1..12).prop_map(AsSegment::Sequence),
        prop::collection::vec(asn(), 1..5).prop_map(AsSegment::Set),
    ];
    prop::collection::vec(segment, 0..4).prop_map(|segments| AsPath { segments })
}

fn mp_reach() -> impl Strategy<Value = MpReach> {
    afi().prop_flat_map(|afi| {
        let next_hop = match afi {
            Afi::Ipv4Unicast => unicast_v4().prop_map(IpAddr::V4).boxed(),
            // Global unicast (2000::/3): a next hop a route can be installed through. Next
            // hops that cannot be used parse as treat-as-withdraw, tested in `wire_rfc7606`.
            Afi::Ipv6Unicast => any::<u128>()
                .prop_map(|a| IpAddr::V6(Ipv6Addr::from((a >> 3) | (1u128 << 125))))
                .boxed(),
        };
        let link_local = match afi {
            Afi::Ipv4Unicast => Just(None).boxed(),
            Afi::Ipv6Unicast => prop::option::of(any::<u64>())
                .prop_map(|o| o.map(|iid| Ipv6Addr::from((0xfe80u128 << 112) | u128::from(iid))))
                .boxed(),
        };
        (next_hop, link_local, prefixes(afi, 30)).prop_map(move |(next_hop, ll, nlri)| MpReach {
            afi,
            next_hop,
            link_local_next_hop: ll,
            nlri,
        })
    })
}

fn mp_unreach() -> impl Strategy<Value = MpUnreach> {
    afi().prop_flat_map(|afi| {
        prefixes(afi, 30).prop_map(move |withdrawn| MpUnreach { afi, withdrawn })
    })
}

fn unknown_attributes() -> impl Strategy<Value = Vec<RawAttribute>> {
    let one = (
        prop_oneof![11u8..=13, 16u8..=16, 19u8..=31, 33u8..=255],
        prop_oneof![Just(0xc0u8), Just(0xe0u8)],
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(type_code, flags, value)| RawAttribute {
            flags,
            type_code,
            value,
        });
    prop::collection::vec(one, 0..3).prop_map(|mut v| {
        // Carried attributes come back in type order, one per type.
        v.sort_by_key(|a| a.type_code);
        v.dedup_by_key(|a| a.type_code);
        v
    })
}

fn attributes() -> impl Strategy<Value = PathAttributes> {
    let base = (
        prop::option::of(prop_oneof![
            Just(Origin::Igp),
            Just(Origin::Egp),
            Just(Origin::Incomplete)
        ]),
        prop::option::of(as_path()),
        prop::option::of(unicast_v4()),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<u32>()),
        any::<bool>(),
        prop::option::of((asn(), any::<u32>()).prop_map(|(asn, a)| Aggregator {
            asn,
            address: a.into(),
        })),
    );
    let more = (
        prop::collection::vec(any::<u32>(), 0..8),
        prop::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
        prop::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 0..4),
        prop::option::of(mp_reach()),
        prop::option::of(mp_unreach()),
        prop::collection::vec(
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c)| LargeCommunity {
                global_admin: a,
                local_data_1: b,
                local_data_2: c,
            }),
            0..4,
        ),
        unknown_attributes(),
    );
    (base, more).prop_map(
        |(
            (origin, as_path, next_hop, med, local_pref, atomic_aggregate, aggregator),
            (
                communities,
                originator_id,
                cluster_list,
                mp_reach,
                mp_unreach,
                large_communities,
                unknown,
            ),
        )| PathAttributes {
            origin,
            as_path,
            next_hop,
            med,
            local_pref,
            atomic_aggregate,
            aggregator,
            communities,
            originator_id,
            cluster_list,
            mp_reach,
            mp_unreach,
            large_communities,
            unknown,
        },
    )
}

/// A well-formed UPDATE: announcements carry the mandatory attributes.
fn update() -> impl Strategy<Value = Update> {
    (
        prefixes(Afi::Ipv4Unicast, 40),
        attributes(),
        prefixes(Afi::Ipv4Unicast, 40),
    )
        .prop_map(|(withdrawn, mut attributes, nlri)| {
            if !nlri.is_empty() || attributes.mp_reach.is_some() {
                attributes.origin.get_or_insert(Origin::Igp);
                attributes.as_path.get_or_insert_with(AsPath::default);
            }
            if !nlri.is_empty() {
                attributes
                    .next_hop
                    .get_or_insert(Ipv4Addr::new(192, 0, 2, 1));
            }
            Update {
                withdrawn,
                attributes,
                nlri,
            }
        })
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        afi().prop_map(Capability::Multiprotocol),
        Just(Capability::RouteRefresh),
        (
            any::<bool>(),
            0u16..=0x0fff,
            prop::collection::vec((afi(), any::<bool>()), 0..3)
        )
            .prop_map(|(restarting, restart_time, families)| {
                Capability::GracefulRestart(GracefulRestart {
                    restarting,
                    restart_time,
                    families,
                })
            }),
        (3u8..=63, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ]
}

fn open() -> impl Strategy<Value = Open> {
    (
        asn(),
        any::<u16>(),
        any::<u32>(),
        prop::collection::vec(capability(), 0..50),
        any::<bool>(),
    )
        .prop_map(|(asn, hold_time, id, mut capabilities, four)| {
            // The 4-octet AS capability carries the AS; without it the AS must fit 2 octets.
            if four || asn > 65535 {
                capabilities.push(Capability::FourOctetAs(asn));
            }
            Open {
                asn,
                hold_time,
                router_id: id.into(),
                capabilities,
            }
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        1 => open().prop_map(Message::Open),
        4 => update().prop_map(Message::Update),
        1 => (any::<u8>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(code, subcode, data)| Message::Notification(Notification { code, subcode, data })),
        1 => Just(Message::Keepalive),
        1 => afi().prop_map(Message::RouteRefresh),
    ]
}

/// What a message looks like after a trip through a peer: unknown attributes gain the
/// partial bit.
fn as_received(mut m: Message) -> Message {
    if let Message::Update(u) = &mut m {
        u.attributes
            .unknown
            .iter_mut()
            .for_each(|a| a.flags |= FLAG_PARTIAL);
    }
    m
}

fn round_trip(m: &Message, codec: &Codec) -> Result<(), TestCaseError> {
    let bytes = match m.encode(codec) {
        Ok(bytes) => bytes,
        Err(EncodeError::TooLong(_)) => return Err(TestCaseError::reject("over 4096 octets")),
        Err(e) => return Err(TestCaseError::fail(format!("encode: {e}"))),
    };
    prop_assert_eq!(frame(&bytes), Ok(Some(bytes.len())));
    let parsed = parse_message(&bytes, codec).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if let ParsedMessage::Update(u) = &parsed {
        prop_assert_eq!(&u.actions, &vec![]);
    }
    prop_assert_eq!(parsed.into_message(), Some(as_received(m.clone())));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_parse_is_identity_on_four_octet_sessions(m in message()) {
        round_trip(&m, &Codec { four_octet_as: true, ..Codec::default() })?;
    }

    #[test]
    fn encode_then_parse_is_identity_on_two_octet_sessions(m in message()) {
        round_trip(&m, &Codec { four_octet_as: false, ..Codec::default() })?;
    }

    #[test]
    fn packed_updates_carry_every_route_and_fit(
        v4 in prop::collection::vec(v4_prefix(), 0..1500),
        v6 in prop::collection::vec(v6_prefix(), 0..800),
        communities in prop::collection::vec(any::<u32>(), 0..200),
        four in any::<bool>(),
    ) {
        let codec = Codec { four_octet_as: four, ..Codec::default() };
        let attributes = PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath { segments: vec![AsSegment::Sequence(vec![65001, 4_200_000_000])] }),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            communities,
            mp_reach: Some(MpReach {
                afi: Afi::Ipv6Unicast,
                next_hop: IpAddr::V6("2001:db8::1".parse().unwrap()),
                link_local_next_hop: Some("fe80::1".parse().unwrap()),
                nlri: vec![],
            }),
            ..Default::default()
        };
        let all: Vec<IpNet> = v4.iter().chain(&v6).copied().collect();
        let messages = pack_announcements(&attributes, &all, &codec).unwrap();
        let mut announced = Vec::new();
        let mut families = Vec::new();
        for bytes in &messages {
            prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
            let Ok(ParsedMessage::Update(u)) = parse_message(bytes, &codec) else {
                return Err(TestCaseError::fail("packed UPDATE does not parse"));
            };
            prop_assert_eq!(&u.actions, &vec![]);
            prop_assert_eq!(&u.update.attributes.as_path, &attributes.as_path);
            prop_assert_eq!(&u.update.attributes.communities, &attributes.communities);
            families.push(u.update.nlri.is_empty());
            announced.extend(u.update.announced().copied());
        }
        prop_assert_eq!(&announced, &all);
        // As few messages as the sizes allow: a message followed by another of its family is
        // full to within one prefix (at most 17 octets).
        for i in 1..messages.len() {
            if families[i - 1] == families[i] {
                prop_assert!(messages[i - 1].len() + 17 > MAX_MESSAGE_LEN);
            }
        }

        let messages = pack_withdrawals(&all).unwrap();
        let mut withdrawn = Vec::new();
        for bytes in &messages {
            prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
            let Ok(ParsedMessage::Update(u)) = parse_message(bytes, &codec) else {
                return Err(TestCaseError::fail("packed withdrawal does not parse"));
            };
            prop_assert_eq!(u.end_of_rib(), None);
            withdrawn.extend(u.update.withdrawals().copied());
        }
        prop_assert_eq!(&withdrawn, &all);
    }
}

#[test]
fn packing_refuses_what_cannot_be_sent() {
    let codec = Codec::default();
    let v4 = ["10.0.0.0/8".parse::<IpNet>().unwrap()];
    let v6 = ["2001:db8::/32".parse::<IpNet>().unwrap()];
    let no_next_hop = PathAttributes {
        origin: Some(Origin::Igp),
        ..Default::default()
    };
    assert!(matches!(
        pack_announcements(&no_next_hop, &v4, &codec),
        Err(EncodeError::Invalid(_))
    ));
    assert!(matches!(
        pack_announcements(&no_next_hop, &v6, &codec),
        Err(EncodeError::Invalid(_))
    ));
    // Attributes that leave no room for a prefix.
    let huge = PathAttributes {
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        communities: vec![7; 1020],
        ..Default::default()
    };
    assert!(matches!(
        pack_announcements(&huge, &v4, &codec),
        Err(EncodeError::TooLong(_))
    ));
    // Nothing to send: no messages.
    assert_eq!(pack_announcements(&huge, &[], &codec), Ok(vec![]));
    assert_eq!(pack_withdrawals(&[]), Ok(vec![]));
}
