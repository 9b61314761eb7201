//! The parser never panics on arbitrary bytes or on mutated valid messages, and whatever it
//! accepts re-encodes to something it reads back the same. Runs for a bounded time (4 s by
//! default, `WREN_WIRE_FUZZ_SECS` to change) so CI catches panics on malformed input; the
//! `cargo fuzz` target in `bgp/fuzz` explores further.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use wren_bgp::wire::{
    Afi, AsPath, AsSegment, Capability, Codec, GracefulRestart, Message, MpReach, MpUnreach,
    Notification, Open, Origin, ParsedMessage, PathAttributes, RawAttribute, Update, frame,
    parse_message,
};

/// Valid messages of every kind to mutate.
fn seeds() -> Vec<Vec<u8>> {
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
        aggregator: Some(wren_bgp::wire::Aggregator {
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
        unknown: vec![RawAttribute {
            flags: 0xc0,
            type_code: 32,
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
            })
            .unwrap(),
    );
    out
}

/// A random change to a valid message, keeping the header length right most of the time so
/// the body parsers are reached.
fn mutate(rng: &mut TestRng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..rng.random_range(1..6) {
        let len = bytes.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                bytes[i] = rng.random();
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            2 => {
                let i = rng.random_range(0..=len);
                bytes.insert(i, rng.random());
            }
            3 if len > 0 => {
                bytes.remove(rng.random_range(0..len));
            }
            4 if len > 19 => {
                // Small lengths are where the interesting boundaries are.
                let i = rng.random_range(19..len);
                bytes[i] = rng.random_range(0..8);
            }
            _ => bytes.truncate(rng.random_range(0..=len)),
        }
    }
    if bytes.len() >= 19 && rng.random_range(0..10) < 8 {
        let len = bytes.len().min(u16::MAX as usize) as u16;
        bytes[16..18].copy_from_slice(&len.to_be_bytes());
    }
    bytes
}

/// Parses `bytes` both ways; what is accepted must re-encode and read back the same.
fn check(bytes: &[u8]) {
    let _ = frame(bytes);
    for codec in [
        Codec {
            four_octet_as: true,
        },
        Codec {
            four_octet_as: false,
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
                .for_each(|a| a.flags |= wren_bgp::wire::FLAG_PARTIAL);
        }
        assert_eq!(reparsed, Some(expected), "input {bytes:02x?}");
    }
}

#[test]
fn parser_never_panics_on_random_or_mutated_input() {
    let secs = std::env::var("WREN_WIRE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let seed: u64 = std::env::var("WREN_WIRE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("seed {seed} (set WREN_WIRE_FUZZ_SEED to replay)");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
    let seeds = seeds();
    for s in &seeds {
        check(s);
    }
    let mut runs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..256 {
            let input = if rng.random_range(0..4) == 0 {
                // Random bytes behind a valid marker, so framing is passed now and then.
                let mut bytes = vec![0xff; 16];
                let len = rng.random_range(0..120);
                bytes.extend((0..len).map(|_| rng.random::<u8>()));
                bytes
            } else {
                let seed = &seeds[rng.random_range(0..seeds.len())];
                mutate(&mut rng, seed)
            };
            check(&input);
            runs += 1;
        }
    }
    println!("{runs} inputs checked");
    assert!(runs > 1000, "too few inputs checked in {secs} s: {runs}");
}
