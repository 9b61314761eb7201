//! The parser never panics on arbitrary bytes or on mutated valid messages, and whatever it
//! accepts re-encodes to something it reads back the same. Runs for a bounded time (4 s by
//! default, `WREN_WIRE_FUZZ_SECS` to change) so CI catches panics on malformed input; the
//! `cargo fuzz` target in `bgp/fuzz` explores further.

mod wire_common;

use std::time::{Duration, Instant};

use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use wire_common::{check, seeds};

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

/// Writes the seed corpus of the fuzz target (`bgp/fuzz/seeds`) from the same messages.
#[test]
#[ignore = "writes bgp/fuzz/seeds; run by hand when the seed messages change"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, bytes) in seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}-type{}", bytes[18])), bytes).unwrap();
    }
}
