//! UPDATE decoding and encoding rates.
//!
//! Each workload is a set of UPDATE messages as a peer would send them. Every benchmark in a
//! group reports the same element count (prefixes), so criterion's rates compare directly:
//! `byte_scan` sums every octet of the same buffers and is the floor any decoder pays for
//! touching the input once (memory bandwidth plus a trivial loop); decoding and encoding are
//! reported as multiples of it.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wren_bgp::wire::{
    Afi, AsPath, AsSegment, Codec, MpReach, Origin, ParsedMessage, PathAttributes,
    pack_announcements, parse_message,
};

/// Attributes as a typical eBGP route carries them.
fn attributes() -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath {
            segments: vec![AsSegment::Sequence(vec![65001, 64512, 4_200_000_001, 3356])],
        }),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        med: Some(20),
        local_pref: Some(100),
        communities: vec![0xfde9_0064, 0xfde9_00c8],
        mp_reach: Some(MpReach {
            afi: Afi::Ipv6Unicast,
            next_hop: IpAddr::V6("2001:db8::1".parse().unwrap()),
            link_local_next_hop: Some("fe80::1".parse::<Ipv6Addr>().unwrap()),
            nlri: Vec::new(),
        }),
        ..Default::default()
    }
}

fn v4_prefixes(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap()))
        .collect()
}

fn v6_prefixes(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let addr = (0x2001_0db8u128 << 96) | (u128::from(i) << 80);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), 48).unwrap())
        })
        .collect()
}

/// `messages` UPDATEs of `per_message` prefixes each, all with the same attributes.
fn workload(prefixes: &[IpNet], per_message: usize) -> Vec<Vec<u8>> {
    let codec = Codec::default();
    prefixes
        .chunks(per_message)
        .flat_map(|chunk| pack_announcements(&attributes(), chunk, &codec).unwrap())
        .collect()
}

fn byte_scan(messages: &[Vec<u8>]) -> u8 {
    messages
        .iter()
        .map(|m| m.iter().fold(0u8, |acc, &b| acc.wrapping_add(b)))
        .fold(0, u8::wrapping_add)
}

fn decode(messages: &[Vec<u8>], codec: &Codec) -> usize {
    let mut prefixes = 0;
    for m in messages {
        if let Ok(ParsedMessage::Update(u)) = parse_message(m, codec) {
            prefixes += u.update.announced().count();
        }
    }
    prefixes
}

fn bench_decode(c: &mut Criterion) {
    let codec = Codec::default();
    let workloads = [
        ("ipv4_100x100", workload(&v4_prefixes(10_000), 100)),
        ("ipv4_full_messages", workload(&v4_prefixes(10_000), 10_000)),
        ("ipv6_100x100", workload(&v6_prefixes(10_000), 100)),
    ];
    for (name, messages) in &workloads {
        let prefixes = decode(messages, &codec);
        assert_eq!(prefixes, 10_000);
        let octets: usize = messages.iter().map(Vec::len).sum();
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Elements(prefixes as u64));
        println!(
            "{name}: {} messages, {octets} octets, 10000 prefixes",
            messages.len()
        );
        group.bench_function("byte_scan", |b| b.iter(|| byte_scan(black_box(messages))));
        group.bench_function("parse_message", |b| {
            b.iter(|| decode(black_box(messages), &codec))
        });
        group.finish();
    }
}

fn bench_encode(c: &mut Criterion) {
    let codec = Codec::default();
    for (name, prefixes) in [("ipv4", v4_prefixes(10_000)), ("ipv6", v6_prefixes(10_000))] {
        let messages = pack_announcements(&attributes(), &prefixes, &codec).unwrap();
        let mut group = c.benchmark_group(format!("encode/{name}_packed"));
        group.throughput(Throughput::Elements(prefixes.len() as u64));
        group.bench_function("byte_scan", |b| b.iter(|| byte_scan(black_box(&messages))));
        group.bench_function("pack_announcements", |b| {
            b.iter(|| pack_announcements(black_box(&attributes()), black_box(&prefixes), &codec))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = bench_decode, bench_encode
}
criterion_main!(benches);
