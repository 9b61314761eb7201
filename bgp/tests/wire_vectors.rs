//! Byte vectors written by hand from the RFC message layouts, decoded and re-encoded.

use std::net::Ipv4Addr;

use wren_bgp::wire::{
    Afi, Capability, Codec, ErrorCode, GracefulRestart, HeaderError, Message, Notification, Open,
    OpenError, ParsedMessage, encode_message, frame, parse_message,
};

const MARKER: [u8; 16] = [0xff; 16];

/// A message: marker, length, type, body.
fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = MARKER.to_vec();
    out.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn parse(bytes: &[u8]) -> ParsedMessage {
    parse_message(bytes, &Codec::default()).expect("vector parses")
}

fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(m, &Codec::default(), &mut out).expect("vector encodes");
    out
}

/// OPEN from AS 65001, hold 90, id 192.0.2.1, with MP IPv4 + IPv6, route refresh, 4-octet AS
/// and graceful restart (120 s, IPv4 unicast with forwarding preserved).
#[rustfmt::skip]
const OPEN_BODY: [u8; 40] = [
    4,                      // version
    0xfd, 0xe9,             // my AS 65001
    0x00, 0x5a,             // hold time 90
    192, 0, 2, 1,           // BGP identifier
    30,                     // optional parameters length
    2, 28,                  // parameter: capabilities, 28 octets
    1, 4, 0, 1, 0, 1,       // multiprotocol IPv4 unicast
    1, 4, 0, 2, 0, 1,       // multiprotocol IPv6 unicast
    2, 0,                   // route refresh
    65, 4, 0, 0, 0xfd, 0xe9, // 4-octet AS 65001
    64, 6, 0x00, 120, 0, 1, 1, 0x80, // graceful restart
];

fn open_model() -> Open {
    Open {
        asn: 65001,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(Afi::Ipv4Unicast),
            Capability::Multiprotocol(Afi::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs(65001),
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: vec![(Afi::Ipv4Unicast, true)],
            }),
        ],
    }
}

#[test]
fn open_round_trips() {
    let bytes = msg(1, &OPEN_BODY);
    assert_eq!(frame(&bytes), Ok(Some(59)));
    assert_eq!(parse(&bytes), ParsedMessage::Open(open_model()));
    assert_eq!(encode(&Message::Open(open_model())), bytes);
}

#[test]
fn open_with_four_octet_as_uses_as_trans() {
    let mut open = open_model();
    open.asn = 4_200_000_000;
    open.capabilities = vec![Capability::FourOctetAs(4_200_000_000)];
    let bytes = encode(&Message::Open(open.clone()));
    #[rustfmt::skip]
    let body = [4, 0x5b, 0xa0, 0, 90, 192, 0, 2, 1, 8, 2, 6, 65, 4, 0xfa, 0x56, 0xea, 0x00];
    assert_eq!(bytes, msg(1, &body));
    assert_eq!(parse(&bytes), ParsedMessage::Open(open));
}

#[test]
fn open_with_unknown_capability_and_split_parameters() {
    // Capabilities may come one per parameter; unknown ones are kept.
    #[rustfmt::skip]
    let body = [
        4, 0, 100, 0, 0, 10, 0, 0, 1, 12,
        2, 2, 2, 0,                 // route refresh
        2, 6, 200, 4, 0, 1, 1, 3,   // capability 200, unknown to wren
    ];
    let ParsedMessage::Open(open) = parse(&msg(1, &body)) else {
        panic!("not an OPEN")
    };
    assert_eq!(open.asn, 100);
    assert_eq!(open.hold_time, 0);
    assert_eq!(
        open.capabilities,
        vec![
            Capability::RouteRefresh,
            Capability::Unknown {
                code: 200,
                value: vec![0, 1, 1, 3]
            }
        ]
    );
    assert_eq!(
        open.families(),
        vec![Afi::Ipv4Unicast],
        "no MP capability means IPv4"
    );
}

#[test]
fn open_with_extended_optional_parameters_length() {
    // RFC 9072: Non-Ext OP Len 255, Non-Ext OP Type 255, 2-octet length, 2-octet param lengths.
    #[rustfmt::skip]
    let body = [
        4, 0xfd, 0xe9, 0, 90, 192, 0, 2, 1,
        255, 255, 0, 9,
        2, 0, 6, 65, 4, 0, 0, 0xfd, 0xe9,
    ];
    let ParsedMessage::Open(open) = parse(&msg(1, &body)) else {
        panic!("not an OPEN")
    };
    assert_eq!(open.capabilities, vec![Capability::FourOctetAs(65001)]);

    // More than 255 octets of capabilities are encoded that way too, and read back.
    let mut big = open_model();
    big.capabilities = (0..40)
        .map(|i| Capability::Unknown {
            code: 200,
            value: vec![i; 6],
        })
        .collect();
    let bytes = encode(&Message::Open(big.clone()));
    assert_eq!(&bytes[28..30], &[255, 255]);
    assert_eq!(parse(&bytes), ParsedMessage::Open(big));
}

#[test]
fn open_errors_carry_the_rfc_data() {
    let mut v3 = OPEN_BODY;
    v3[0] = 3;
    let err = parse_message(&msg(1, &v3), &Codec::default()).unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::Open(OpenError::UnsupportedVersionNumber)
    );
    assert_eq!(
        err.notification(),
        Notification {
            code: 2,
            subcode: 1,
            data: vec![0, 4]
        }
    );

    // Optional parameter type 1 (authentication, deprecated).
    let auth = [4, 0, 100, 0, 90, 10, 0, 0, 1, 3, 1, 1, 0];
    let err = parse_message(&msg(1, &auth), &Codec::default()).unwrap_err();
    assert_eq!(
        err.notification(),
        Notification {
            code: 2,
            subcode: 4,
            data: vec![]
        }
    );

    // A 4-octet AS capability of the wrong length.
    let bad_cap = [4, 0, 100, 0, 90, 10, 0, 0, 1, 5, 2, 3, 65, 1, 0];
    let err = parse_message(&msg(1, &bad_cap), &Codec::default()).unwrap_err();
    assert_eq!(
        err.notification(),
        Notification {
            code: 2,
            subcode: 0,
            data: vec![65, 1, 0]
        }
    );
}

#[test]
fn keepalive_notification_and_route_refresh_round_trip() {
    let keepalive = msg(4, &[]);
    assert_eq!(keepalive.len(), 19);
    assert_eq!(parse(&keepalive), ParsedMessage::Keepalive);
    assert_eq!(encode(&Message::Keepalive), keepalive);

    // Cease / Administrative Shutdown with an RFC 9003 message "bye".
    let notification = msg(3, &[6, 2, 3, b'b', b'y', b'e']);
    let ParsedMessage::Notification(n) = parse(&notification) else {
        panic!()
    };
    assert_eq!(n.shutdown_message(), Some("bye"));
    assert_eq!(n.to_string(), "Cease / AdministrativeShutdown: \"bye\"");
    assert_eq!(encode(&Message::Notification(n)), notification);

    let refresh = msg(5, &[0, 2, 0, 1]);
    assert_eq!(
        parse(&refresh),
        ParsedMessage::RouteRefresh(Afi::Ipv6Unicast)
    );
    assert_eq!(encode(&Message::RouteRefresh(Afi::Ipv6Unicast)), refresh);
    // IPv4 multicast is not spoken: ignored, as RFC 2918 says.
    assert_eq!(
        parse(&msg(5, &[0, 1, 0, 2])),
        ParsedMessage::IgnoredRouteRefresh {
            afi: 1,
            safi: 2,
            subtype: 0
        }
    );
    // Wrong length: RFC 7313 ROUTE-REFRESH Message Error with the whole message as data.
    let long = msg(5, &[0, 1, 0, 1, 0]);
    let err = parse_message(&long, &Codec::default()).unwrap_err();
    assert_eq!(
        err.notification(),
        Notification {
            code: 7,
            subcode: 1,
            data: long
        }
    );
}

#[test]
fn framing_waits_for_whole_messages_and_reports_header_errors() {
    let keepalive = msg(4, &[]);
    let mut stream = msg(1, &OPEN_BODY);
    stream.extend_from_slice(&keepalive);
    for cut in 0..59 {
        assert_eq!(frame(&stream[..cut]), Ok(None), "{cut} octets");
    }
    assert_eq!(frame(&stream), Ok(Some(59)));
    assert_eq!(frame(&stream[59..]), Ok(Some(19)));

    let header_error = |bytes: &[u8]| {
        let err = frame(bytes).unwrap_err();
        let ErrorCode::MessageHeader(sub) = err.code else {
            panic!("{err}")
        };
        (sub, err.data)
    };
    // A broken marker is reported as soon as its octet arrives.
    assert_eq!(
        header_error(&[0xff, 0xff, 0xfe]),
        (HeaderError::ConnectionNotSynchronized, vec![])
    );
    let mut long = msg(4, &[]);
    long[16..18].copy_from_slice(&4097u16.to_be_bytes());
    assert_eq!(
        header_error(&long),
        (HeaderError::BadMessageLength, vec![0x10, 0x01])
    );
    assert_eq!(
        header_error(&msg(4, &[0])),
        (HeaderError::BadMessageLength, vec![0, 20])
    );
    assert_eq!(
        header_error(&msg(1, &[4])),
        (HeaderError::BadMessageLength, vec![0, 20])
    );
    assert_eq!(
        header_error(&msg(2, &[0, 0])),
        (HeaderError::BadMessageLength, vec![0, 21])
    );
    assert_eq!(
        header_error(&msg(3, &[6])),
        (HeaderError::BadMessageLength, vec![0, 20])
    );
    assert_eq!(
        header_error(&msg(9, &[])),
        (HeaderError::BadMessageType, vec![9])
    );
    let mut short = msg(4, &[]);
    short[17] = 18;
    assert_eq!(
        header_error(&short),
        (HeaderError::BadMessageLength, vec![0, 18])
    );
}
