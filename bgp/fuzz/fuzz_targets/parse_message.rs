//! Fuzz target for the BGP message parser: no input may panic, and every message the parser
//! accepts must re-encode to bytes it reads back as the same message (on 4- and 2-octet AS
//! sessions). Seeds: `bgp/fuzz/seeds`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/wire_common/mod.rs"]
mod wire_common;

fuzz_target!(|data: &[u8]| {
    wire_common::check(data);
});
