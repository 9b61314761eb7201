//! UPDATE error handling: which malformations reset the session (with which NOTIFICATION),
//! which are treat-as-withdraw and which are attribute-discard (RFC 4271 §6.3, RFC 7606,
//! RFC 6793 §6, RFC 7607).

use std::net::Ipv4Addr;

use ipnet::IpNet;
use wren_bgp::wire::{
    Afi, AsSegment, Codec, ErrorCode, MpUnreach, Notification, ParsedMessage, ParsedUpdate,
    UpdateAction, UpdateError, WireError, parse_message,
};

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];
/// NLRI 10.1.0.0/16 and 10.2.0.0/16.
const NLRI: [u8; 6] = [16, 10, 1, 16, 10, 2];
/// MP_REACH_NLRI for 2001:db8::/32 via 2001:db8::1.
#[rustfmt::skip]
const MP_REACH_V6: [u8; 30] = [
    0x90, 14, 0, 26, 0, 2, 1, 16,
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0, 32, 0x20, 0x01, 0x0d, 0xb8,
];

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

/// An UPDATE message from its fields.
fn update(withdrawn: &[u8], attrs: &[&[u8]], nlri: &[u8]) -> Vec<u8> {
    let attrs: Vec<u8> = attrs.concat();
    let mut out = vec![0xff; 16];
    let len = 19 + 2 + withdrawn.len() + 2 + attrs.len() + nlri.len();
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push(2);
    out.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    out.extend_from_slice(withdrawn);
    out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&attrs);
    out.extend_from_slice(nlri);
    out
}

/// A valid IPv4 announcement with `extra` appended to the mandatory attributes.
fn announcement(extra: &[u8]) -> Vec<u8> {
    update(&[], &[&ORIGIN, &AS_PATH, &NEXT_HOP, extra], &NLRI)
}

fn parse_with(bytes: &[u8], codec: &Codec) -> Result<ParsedUpdate, WireError> {
    match parse_message(bytes, codec)? {
        ParsedMessage::Update(u) => Ok(u),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

fn parse(bytes: &[u8]) -> Result<ParsedUpdate, WireError> {
    parse_with(bytes, &Codec::default())
}

/// The NOTIFICATION a session-resetting UPDATE produces.
fn reset(bytes: &[u8]) -> Notification {
    parse(bytes).expect_err("session reset").notification()
}

fn notification(subcode: UpdateError, data: &[u8]) -> Notification {
    Notification::new(ErrorCode::Update(subcode), data.to_vec())
}

/// Asserts the UPDATE was turned into withdrawals of its prefixes, for the given reason.
fn assert_withdrawn(parsed: &ParsedUpdate, attribute: u8, subcode: UpdateError) {
    assert!(parsed.treated_as_withdraw(), "{:?}", parsed.actions);
    let fault = parsed.actions.iter().find_map(|a| match a {
        UpdateAction::TreatAsWithdraw(f) => Some(f),
        UpdateAction::AttributeDiscard(_) => None,
    });
    let fault = fault.expect("a treat-as-withdraw action");
    assert_eq!(
        (fault.attribute, fault.subcode),
        (Some(attribute), subcode),
        "{fault:?}"
    );
    assert_eq!(
        parsed.update.withdrawn,
        vec![net("10.1.0.0/16"), net("10.2.0.0/16")]
    );
    assert!(parsed.update.nlri.is_empty());
    assert_eq!(parsed.update.announced().count(), 0);
    assert_eq!(
        parsed.update.attributes.origin, None,
        "attributes are dropped"
    );
    assert_eq!(parsed.end_of_rib(), None);
}

/// Asserts one attribute was discarded and the routes kept.
fn assert_discarded(parsed: &ParsedUpdate, attribute: u8) {
    assert!(!parsed.treated_as_withdraw(), "{:?}", parsed.actions);
    let [UpdateAction::AttributeDiscard(fault)] = parsed.actions[..] else {
        panic!("{:?}", parsed.actions)
    };
    assert_eq!(fault.attribute, Some(attribute));
    assert_eq!(
        parsed.update.nlri,
        vec![net("10.1.0.0/16"), net("10.2.0.0/16")]
    );
    assert!(parsed.update.attributes.origin.is_some());
}

#[test]
fn a_clean_update_has_no_actions() {
    let parsed = parse(&announcement(&[])).unwrap();
    assert_eq!(parsed.actions, vec![]);
    assert_eq!(parsed.update.nlri.len(), 2);
}

#[test]
fn malformed_origin_is_treat_as_withdraw() {
    let bad_value = update(&[], &[&[0x40, 1, 1, 3], &AS_PATH, &NEXT_HOP], &NLRI);
    assert_withdrawn(
        &parse(&bad_value).unwrap(),
        1,
        UpdateError::InvalidOriginAttribute,
    );
    let bad_length = update(&[], &[&[0x40, 1, 2, 0, 0], &AS_PATH, &NEXT_HOP], &NLRI);
    assert_withdrawn(
        &parse(&bad_length).unwrap(),
        1,
        UpdateError::AttributeLengthError,
    );
}

#[test]
fn malformed_as_path_is_treat_as_withdraw() {
    let cases: [&[u8]; 5] = [
        &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe9], // segment overruns the attribute
        &[0x40, 2, 2, 2, 0],                   // empty segment
        &[0x40, 2, 6, 5, 1, 0, 0, 0xfd, 0xe9], // undefined segment type
        &[0x40, 2, 6, 3, 1, 0, 0, 0xfd, 0xe9], // AS_CONFED_SEQUENCE
        &[0x40, 2, 6, 2, 1, 0, 0, 0, 0],       // AS 0 (RFC 7607)
    ];
    for as_path in cases {
        let bytes = update(&[], &[&ORIGIN, as_path, &NEXT_HOP], &NLRI);
        assert_withdrawn(&parse(&bytes).unwrap(), 2, UpdateError::MalformedAsPath);
    }
}

#[test]
fn malformed_next_hop_is_treat_as_withdraw() {
    let long = update(
        &[],
        &[&ORIGIN, &AS_PATH, &[0x40, 3, 5, 192, 0, 2, 1, 0]],
        &NLRI,
    );
    assert_withdrawn(&parse(&long).unwrap(), 3, UpdateError::AttributeLengthError);
    for addr in [[0, 0, 0, 0], [224, 0, 0, 5], [255, 255, 255, 255]] {
        let nh = [0x40, 3, 4, addr[0], addr[1], addr[2], addr[3]];
        let bytes = update(&[], &[&ORIGIN, &AS_PATH, &nh], &NLRI);
        assert_withdrawn(
            &parse(&bytes).unwrap(),
            3,
            UpdateError::InvalidNextHopAttribute,
        );
    }
}

#[test]
fn malformed_med_local_pref_communities_originator_and_cluster_list_are_treat_as_withdraw() {
    let cases: [(&[u8], u8); 7] = [
        (&[0x80, 4, 3, 0, 0, 1], 4),
        (&[0x40, 5, 2, 0, 1], 5),
        (&[0xc0, 8, 6, 0, 0, 0, 1, 0, 2], 8),
        (&[0xc0, 8, 0], 8),
        (&[0x80, 9, 3, 1, 2, 3], 9),
        (&[0x80, 10, 5, 1, 2, 3, 4, 5], 10),
        (&[0x80, 10, 0], 10),
    ];
    for (attr, code) in cases {
        let parsed = parse(&announcement(attr)).unwrap();
        assert_withdrawn(&parsed, code, UpdateError::AttributeLengthError);
    }
}

#[test]
fn malformed_atomic_aggregate_and_aggregator_are_discarded() {
    let cases: [(&[u8], u8); 4] = [
        (&[0x40, 6, 1, 0], 6),
        (&[0xc0, 7, 6, 0xfd, 0xe9, 192, 0, 2, 1], 7), // 2-octet layout on a 4-octet session
        (&[0xc0, 7, 8, 0, 0, 0, 0, 192, 0, 2, 1], 7), // AS 0 (RFC 7607)
        (&[0x40, 7, 8, 0, 0, 0xfd, 0xe9, 192, 0, 2, 1], 7), // flags: not optional
    ];
    for (attr, code) in cases {
        let parsed = parse(&announcement(attr)).unwrap();
        assert_discarded(&parsed, code);
        assert_eq!(parsed.update.attributes.aggregator, None);
        assert!(!parsed.update.attributes.atomic_aggregate);
    }
}

#[test]
fn attribute_flag_errors_use_the_attribute_s_approach() {
    // ORIGIN marked optional: treat-as-withdraw.
    let bytes = update(&[], &[&[0xc0, 1, 1, 0], &AS_PATH, &NEXT_HOP], &NLRI);
    assert_withdrawn(&parse(&bytes).unwrap(), 1, UpdateError::AttributeFlagsError);
    // MED marked transitive: treat-as-withdraw.
    let parsed = parse(&announcement(&[0xc0, 4, 4, 0, 0, 0, 1])).unwrap();
    assert_withdrawn(&parsed, 4, UpdateError::AttributeFlagsError);
    // MP_REACH_NLRI marked transitive: session reset, the attribute as data.
    let mut mp = MP_REACH_V6;
    mp[0] = 0xd0;
    let bytes = update(&[], &[&mp, &ORIGIN, &AS_PATH], &[]);
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::AttributeFlagsError, &mp)
    );
}

#[test]
fn repeated_attributes() {
    // A second MP_REACH_NLRI or MP_UNREACH_NLRI resets the session: Malformed Attribute List.
    let bytes = update(&[], &[&MP_REACH_V6, &ORIGIN, &AS_PATH, &MP_REACH_V6], &[]);
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::MalformedAttributeList, &[])
    );
    let unreach = [0x80, 15, 3, 0, 2, 1];
    let bytes = update(&[], &[&unreach, &unreach], &[]);
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::MalformedAttributeList, &[])
    );
    // Any other repeat: the first is kept, the rest discarded.
    let parsed = parse(&announcement(&[0x40, 1, 1, 2])).unwrap();
    assert_discarded(&parsed, 1);
    assert_eq!(
        parsed.update.attributes.origin,
        Some(wren_bgp::wire::Origin::Igp)
    );
}

#[test]
fn nlri_and_withdrawn_routes_errors_reset_the_session() {
    let invalid_network = notification(UpdateError::InvalidNetworkField, &[]);
    // Prefix longer than 32 bits.
    let bytes = update(&[], &[&ORIGIN, &AS_PATH, &NEXT_HOP], &[33, 10, 0, 0, 0, 0]);
    assert_eq!(reset(&bytes), invalid_network);
    // Last prefix overruns the field.
    let bytes = update(&[], &[&ORIGIN, &AS_PATH, &NEXT_HOP], &[24, 10, 1]);
    assert_eq!(reset(&bytes), invalid_network);
    let bytes = update(&[16, 10], &[], &[]);
    assert_eq!(reset(&bytes), invalid_network);
    // Even when an attribute error would have been treat-as-withdraw (strongest wins).
    let bytes = update(&[], &[&[0x40, 1, 1, 9], &AS_PATH, &NEXT_HOP], &[24, 10, 1]);
    assert_eq!(reset(&bytes), invalid_network);
}

#[test]
fn malformed_mp_attributes_reset_the_session_with_optional_attribute_error() {
    // Next hop length 12 is not an IPv6 next hop.
    #[rustfmt::skip]
    let bad_next_hop = [0x80, 14, 18, 0, 2, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let bytes = update(&[], &[&bad_next_hop, &ORIGIN, &AS_PATH], &[]);
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::OptionalAttributeError, &bad_next_hop)
    );
    // Prefix overruns MP_REACH_NLRI.
    let mut overrun = MP_REACH_V6;
    overrun[25] = 48; // a /48 needs 6 octets, 4 are left
    let bytes = update(&[], &[&overrun, &ORIGIN, &AS_PATH], &[]);
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::OptionalAttributeError, &overrun)
    );
    // MP_UNREACH_NLRI with a /129.
    let unreach = [0x80, 15, 4, 0, 2, 1, 129];
    let bytes = update(&[], &[&unreach], &[]);
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::OptionalAttributeError, &unreach)
    );
}

#[test]
fn length_fields_inconsistent_with_the_message() {
    // Withdrawn Routes Length + Total Attribute Length + 23 exceeds the message length.
    let mut bytes = announcement(&[]);
    bytes[21] += 1;
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::MalformedAttributeList, &[])
    );
    let mut bytes = update(&[8, 10], &[], &[]);
    bytes[20] = 9;
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::MalformedAttributeList, &[])
    );
}

#[test]
fn attribute_overrunning_the_attribute_list_is_treat_as_withdraw() {
    // NEXT_HOP claims 5 octets where 4 remain: RFC 7606 §4.
    let mut nh = NEXT_HOP.to_vec();
    nh[2] = 5;
    let parsed = parse(&update(&[], &[&ORIGIN, &AS_PATH, &nh], &NLRI)).unwrap();
    assert_withdrawn(&parsed, 3, UpdateError::AttributeLengthError);
    // Fewer than three octets left for an attribute header.
    let parsed = parse(&update(
        &[],
        &[&ORIGIN, &AS_PATH, &NEXT_HOP, &[0x40, 5]],
        &NLRI,
    ))
    .unwrap();
    assert!(parsed.treated_as_withdraw());
    assert_eq!(parsed.update.withdrawn.len(), 2);
    // An MP_REACH_NLRI that overruns cannot be located: session reset.
    let mp = &MP_REACH_V6[..20];
    let bytes = update(&[], &[mp], &[]);
    assert_eq!(
        reset(&bytes),
        notification(UpdateError::AttributeLengthError, mp)
    );
}

#[test]
fn missing_mandatory_attributes_are_treat_as_withdraw() {
    let no_next_hop = update(&[], &[&ORIGIN, &AS_PATH], &NLRI);
    assert_withdrawn(
        &parse(&no_next_hop).unwrap(),
        3,
        UpdateError::MissingWellKnownAttribute,
    );
    let no_origin = update(&[], &[&AS_PATH, &NEXT_HOP], &NLRI);
    assert_withdrawn(
        &parse(&no_origin).unwrap(),
        1,
        UpdateError::MissingWellKnownAttribute,
    );
    // IPv6 through MP_REACH_NLRI without AS_PATH: its prefixes become MP_UNREACH withdrawals.
    let parsed = parse(&update(&[], &[&MP_REACH_V6, &ORIGIN], &[])).unwrap();
    assert!(parsed.treated_as_withdraw());
    assert_eq!(
        parsed.update.attributes.mp_unreach,
        Some(MpUnreach {
            afi: Afi::Ipv6Unicast,
            withdrawn: vec![net("2001:db8::/32")]
        })
    );
    assert_eq!(parsed.update.attributes.mp_reach, None);
    // NEXT_HOP is not needed when only MP_REACH_NLRI announces.
    let parsed = parse(&update(&[], &[&MP_REACH_V6, &ORIGIN, &AS_PATH], &[])).unwrap();
    assert_eq!(parsed.actions, vec![]);
    // A pure withdrawal needs no attributes at all.
    let parsed = parse(&update(&[16, 10, 1], &[], &[])).unwrap();
    assert_eq!(parsed.actions, vec![]);
}

#[test]
fn treat_as_withdraw_covers_every_family_in_the_update() {
    let bytes = update(
        &[24, 10, 9, 9],
        &[&MP_REACH_V6, &[0x40, 1, 1, 7], &AS_PATH, &NEXT_HOP],
        &NLRI,
    );
    let parsed = parse(&bytes).unwrap();
    assert!(parsed.treated_as_withdraw());
    assert_eq!(
        parsed.update.withdrawn,
        vec![net("10.9.9.0/24"), net("10.1.0.0/16"), net("10.2.0.0/16")]
    );
    let withdrawn: Vec<_> = parsed.update.withdrawals().copied().collect();
    assert_eq!(withdrawn.len(), 4);
    assert!(withdrawn.contains(&net("2001:db8::/32")));
}

#[test]
fn unknown_attributes() {
    // Unknown well-known attribute: session reset with the attribute as data.
    let attr = [0x40, 99, 2, 7, 7];
    assert_eq!(
        reset(&announcement(&attr)),
        notification(UpdateError::UnrecognizedWellKnownAttribute, &attr)
    );
    // Unknown optional non-transitive: dropped without an action.
    let parsed = parse(&announcement(&[0x80, 99, 2, 7, 7])).unwrap();
    assert_eq!(parsed.actions, vec![]);
    assert!(parsed.update.attributes.unknown.is_empty());
}

#[test]
fn strongest_action_wins_and_all_are_reported() {
    let bytes = update(
        &[],
        &[&[0x40, 1, 1, 9], &AS_PATH, &NEXT_HOP, &[0x40, 6, 1, 0]],
        &NLRI,
    );
    let parsed = parse(&bytes).unwrap();
    assert!(parsed.treated_as_withdraw());
    assert_eq!(parsed.actions.len(), 2);
    assert!(
        matches!(parsed.actions[1], UpdateAction::AttributeDiscard(f) if f.attribute == Some(6))
    );
}

#[test]
fn malformed_as4_attributes_are_discarded_on_two_octet_sessions() {
    let two = Codec {
        four_octet_as: false,
        external_peer: false,
    };
    let as_path = [0x40, 2, 4, 2, 1, 0xfd, 0xe9];
    let bad_as4_path = [0xc0, 17, 5, 2, 1, 0, 1, 0x86];
    let bytes = update(&[], &[&ORIGIN, &as_path, &NEXT_HOP, &bad_as4_path], &NLRI);
    let parsed = parse_with(&bytes, &two).unwrap();
    assert_discarded(&parsed, 17);
    let path = parsed.update.attributes.as_path.unwrap();
    assert_eq!(path.segments, vec![AsSegment::Sequence(vec![65001])]);

    let bad_as4_aggregator = [0xc0, 18, 6, 0, 1, 0x86, 0xa0, 1, 2];
    let bytes = update(
        &[],
        &[&ORIGIN, &as_path, &NEXT_HOP, &bad_as4_aggregator],
        &NLRI,
    );
    assert_discarded(&parse_with(&bytes, &two).unwrap(), 18);

    // Between 4-octet speakers the AS4 attributes must not appear: discarded.
    let as4_path = [0xc0, 17, 6, 2, 1, 0, 1, 0x86, 0xa0];
    let parsed = parse(&announcement(&as4_path)).unwrap();
    assert_discarded(&parsed, 17);
    let path = parsed.update.attributes.as_path.unwrap();
    assert_eq!(path.segments, vec![AsSegment::Sequence(vec![65001])]);
}

const EXTERNAL: Codec = Codec {
    four_octet_as: true,
    external_peer: true,
};

#[test]
fn external_peer_rules() {
    let with_ibgp_attrs = announcement(
        &[
            &[0x40u8, 5, 4, 0, 0, 0, 200][..],
            &[0x80, 9, 4, 10, 0, 0, 1],
            &[0x80, 10, 4, 10, 0, 0, 2],
        ]
        .concat(),
    );
    let mut parsed = parse_with(&with_ibgp_attrs, &EXTERNAL).unwrap();
    parsed.apply_external_rules(65001, true);
    assert!(!parsed.treated_as_withdraw());
    assert_eq!(parsed.actions.len(), 3);
    let attrs = &parsed.update.attributes;
    assert_eq!((attrs.local_pref, attrs.originator_id), (None, None));
    assert!(attrs.cluster_list.is_empty());
    assert_eq!(attrs.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));

    // The AS_PATH must start with the peer's AS.
    let mut parsed = parse_with(&announcement(&[]), &EXTERNAL).unwrap();
    parsed.apply_external_rules(65002, true);
    assert_withdrawn(&parsed, 2, UpdateError::MalformedAsPath);
    // Unless the peer is a route server.
    let mut parsed = parse_with(&announcement(&[]), &EXTERNAL).unwrap();
    parsed.apply_external_rules(65002, false);
    assert_eq!(parsed.actions, vec![]);
}

#[test]
fn malformed_local_pref_originator_and_cluster_list_from_an_external_peer_are_discarded() {
    // RFC 7606 §7.5, §7.9, §7.10: the same bytes that withdraw the routes from an internal
    // peer lose only the attribute from an external one, whatever is wrong with it.
    let cases: [(&[u8], u8); 5] = [
        (&[0x40, 5, 2, 0, 1], 5),
        (&[0x80, 5, 4, 0, 0, 0, 1], 5),
        (&[0x80, 9, 3, 1, 2, 3], 9),
        (&[0x80, 10, 5, 1, 2, 3, 4, 5], 10),
        (&[0x80, 10, 0], 10),
    ];
    for (attr, code) in cases {
        let mut parsed = parse_with(&announcement(attr), &EXTERNAL).unwrap();
        parsed.apply_external_rules(65001, true);
        assert_discarded(&parsed, code);
        let attrs = &parsed.update.attributes;
        assert_eq!((attrs.local_pref, attrs.originator_id), (None, None));
        assert!(attrs.cluster_list.is_empty());
    }
}

/// MP_REACH_NLRI of `afi` (1 or 2) for `nlri` via the next hop octets `nh`.
fn mp_reach(afi: u8, nh: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut value = vec![0, afi, 1, nh.len() as u8];
    value.extend_from_slice(nh);
    value.push(0);
    value.extend_from_slice(nlri);
    let mut out = vec![0x80, 14, value.len() as u8];
    out.extend_from_slice(&value);
    out
}

#[test]
fn next_hops_that_are_no_host_address_are_treat_as_withdraw_in_every_family() {
    // Classic NEXT_HOP: "this network" too.
    for addr in [[0, 1, 2, 3], [240, 0, 0, 1]] {
        let nh = [0x40, 3, 4, addr[0], addr[1], addr[2], addr[3]];
        let bytes = update(&[], &[&ORIGIN, &AS_PATH, &nh], &NLRI);
        assert_withdrawn(
            &parse(&bytes).unwrap(),
            3,
            UpdateError::InvalidNextHopAttribute,
        );
    }
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    let ll = v6("fe80::1");
    let cases: Vec<(u8, Vec<u8>)> = vec![
        (1, vec![0, 0, 0, 0]),
        (1, vec![224, 0, 0, 1]),
        (2, v6("::")),
        (2, v6("ff02::1")),
        (2, v6("::ffff:192.0.2.1")),
        (2, [v6("::"), ll.clone()].concat()),
    ];
    for (afi, nh) in cases {
        let nlri: &[u8] = if afi == 1 {
            &[24, 10, 77, 1]
        } else {
            &[32, 0x20, 0x01, 0x0d, 0xb8]
        };
        let bytes = update(&[], &[&ORIGIN, &AS_PATH, &mp_reach(afi, &nh, nlri)], &[]);
        let parsed = parse(&bytes).expect("not a session reset");
        let faults: Vec<_> = parsed
            .actions
            .iter()
            .map(|a| match a {
                UpdateAction::TreatAsWithdraw(f) => (true, f.attribute, f.subcode),
                UpdateAction::AttributeDiscard(f) => (false, f.attribute, f.subcode),
            })
            .collect();
        let expected = (true, Some(14), UpdateError::InvalidNextHopAttribute);
        assert_eq!(faults, vec![expected], "{nh:?}");
        assert_eq!(parsed.update.announced().count(), 0, "{nh:?}");
        assert_eq!(parsed.update.withdrawals().count(), 1, "{nh:?}");
    }
    // A link-local next hop is well formed; whether it can be used is the RIB's question.
    for nh in [ll.clone(), [v6("2001:db8::1"), ll].concat()] {
        let bytes = update(
            &[],
            &[
                &ORIGIN,
                &AS_PATH,
                &mp_reach(2, &nh, &[32, 0x20, 0x01, 0x0d, 0xb8]),
            ],
            &[],
        );
        assert_eq!(parse(&bytes).unwrap().actions, vec![]);
    }
}

#[test]
fn a_malformed_update_without_routes_is_not_an_end_of_rib() {
    let parsed = parse(&update(&[], &[&[0x40, 1, 1, 9]], &[])).unwrap();
    assert!(parsed.treated_as_withdraw());
    assert_eq!(parsed.update.withdrawals().count(), 0);
    assert_eq!(parsed.end_of_rib(), None);
}

#[test]
fn large_communities_decode_and_a_bad_length_is_treat_as_withdraw() {
    #[rustfmt::skip]
    let good = [
        0xc0, 32, 24,
        0, 0, 0xfd, 0xe8, 0, 0, 0, 1, 0, 0, 0, 2,                   // 65000:1:2
        0xfa, 0x56, 0xea, 0x00, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, // 4200000000:4294967295:0
    ];
    let parsed = parse(&announcement(&good)).unwrap();
    assert_eq!(parsed.actions, vec![]);
    let large: Vec<(u32, u32, u32)> = parsed
        .update
        .attributes
        .large_communities
        .iter()
        .map(|c| (c.global_admin, c.local_data_1, c.local_data_2))
        .collect();
    assert_eq!(large, [(65000, 1, 2), (4_200_000_000, u32::MAX, 0)]);
    // RFC 8092 §5: a length that is not a non-zero multiple of 12.
    for bad in [
        &[0xc0, 32, 0][..],
        &[0xc0, 32, 8, 0, 0, 0xfd, 0xe8, 0, 0, 0, 1],
    ] {
        let parsed = parse(&announcement(bad)).unwrap();
        assert_withdrawn(&parsed, 32, UpdateError::AttributeLengthError);
    }
}
