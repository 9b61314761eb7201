//! Fuzz target for the BFD Control packet decoder: no input may panic, and every packet the
//! decoder accepts must encode to a packet it reads back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wren_bfd::packet::ControlPacket;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = ControlPacket::decode(data) {
        assert_eq!(ControlPacket::decode(&packet.encode()), Ok(packet));
    }
});
