//! The forwarding program: pod-to-pod IPv4 past the host stack.
//!
//! Attached at tc ingress (tcx) of every pod's host-side veth and of the node's uplinks and
//! tunnel devices. For a packet whose source and destination both lie in a pool, it asks the
//! kernel's FIB where the packet goes (`bpf_fib_lookup`, so routes, rules and neighbours
//! stay the kernel's), rewrites the Ethernet header, decrements the TTL and
//! - into a local pod: hands the packet straight to the pod's side of the veth
//!   (`bpf_redirect_peer`: no backlog queue, no second pass through the host stack);
//! - from a pod to anywhere else: transmits it on the egress device (`bpf_redirect`).
//!
//! Everything else goes on through the host stack unchanged (`TCX_NEXT`): traffic that
//! leaves the pools (outgoing NAT), packets whose TTL runs out, IP options, a destination
//! without a resolved neighbour, a packet too big for the egress device, and a pod's packet
//! whose source is not the pod's own address (the stack's reverse-path filter drops it).
//!
//! Maps, all created by [`crate::FastPath`]:
//! - pods: hash, host-side ifindex (u32) → the pod's IPv4 address (4 bytes, network order);
//! - pools: LPM trie, `{prefix length: u32, IPv4 address}` → unused u32;
//! - counters: per-CPU array of u64, [`COUNTER_FORWARDED`] and [`COUNTER_TO_STACK`].

use crate::asm::{Asm, AsmError, Cond, Insn, Reg, Size};

/// Counter slot: packets (GSO packets count once) forwarded past the host stack.
pub const COUNTER_FORWARDED: u32 = 0;
/// Counter slot: pool-to-pool packets left to the host stack (no neighbour yet, TTL, size,
/// spoofed source, a destination the FIB does not forward to).
pub const COUNTER_TO_STACK: u32 = 1;
/// Number of counter slots.
pub const COUNTERS: u32 = 2;

/// File descriptors of the maps the program reads.
#[derive(Clone, Copy, Debug)]
pub struct MapFds {
    /// Pods by host-side ifindex.
    pub pods: i32,
    /// Pool prefixes.
    pub pools: i32,
    /// Per-CPU counters.
    pub counters: i32,
}

// Kernel helper numbers (`enum bpf_func_id`).
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_REDIRECT: i32 = 23;
const HELPER_FIB_LOOKUP: i32 = 69;
const HELPER_REDIRECT_PEER: i32 = 155;

// `struct __sk_buff` fields.
const SKB_PROTOCOL: i16 = 16;
const SKB_IFINDEX: i16 = 40;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

// Packet layout: Ethernet, then an IPv4 header without options.
const ETH_LEN: i16 = 14;
const IP_VERSION_IHL: i16 = ETH_LEN;
const IP_TOS: i16 = ETH_LEN + 1;
const IP_TTL: i16 = ETH_LEN + 8;
const IP_PROTOCOL: i16 = ETH_LEN + 9;
const IP_CHECK: i16 = ETH_LEN + 10;
const IP_SADDR: i16 = ETH_LEN + 12;
const IP_DADDR: i16 = ETH_LEN + 16;
const HEADERS_LEN: i32 = ETH_LEN as i32 + 20;

// Stack frame (offsets from R10). `struct bpf_fib_lookup` is 64 bytes.
const FIB: i16 = -64;
const FIB_LEN: i32 = 64;
const FIB_FAMILY: i16 = FIB;
const FIB_L4_PROTOCOL: i16 = FIB + 1;
const FIB_IFINDEX: i16 = FIB + 8;
const FIB_TOS: i16 = FIB + 12;
const FIB_SRC: i16 = FIB + 16;
const FIB_DST: i16 = FIB + 32;
const FIB_SMAC: i16 = FIB + 52;
const FIB_DMAC: i16 = FIB + 58;
const LPM_KEY: i16 = -72;
const LPM_KEY_ADDR: i16 = LPM_KEY + 4;
const IFINDEX_KEY: i16 = -76;
const COUNTER_KEY: i16 = -80;

const AF_INET: i32 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i32 = 0;
/// `TCX_NEXT`: let the next program, or the host stack, have the packet.
const TCX_NEXT: i32 = -1;

/// Values compared against raw packet bytes are built from their bytes in memory, so the
/// program is right for the host's byte order.
fn ne16(bytes: [u8; 2]) -> i32 {
    i32::from(u16::from_ne_bytes(bytes))
}

/// Assembles the program against the given maps.
pub fn forward(maps: MapFds) -> Result<Vec<Insn>, AsmError> {
    use Reg::*;
    let mut a = Asm::new();
    // R6 = skb, R7 = packet start, R8 = packet end,
    // R9 = 1 if the packet came from a pod, later 1 if it goes into one.
    a.mov(R6, R1);
    a.load(Size::W, R2, R6, SKB_PROTOCOL)
        .jump_imm(Cond::Ne, R2, ne16([0x08, 0x00]), "next");
    load_packet(&mut a);
    a.load(Size::B, R2, R7, IP_VERSION_IHL)
        .jump_imm(Cond::Ne, R2, 0x45, "next");

    // Only traffic between pools: everything else is the host stack's business.
    a.store_imm(Size::W, R10, LPM_KEY, 32);
    for field in [IP_DADDR, IP_SADDR] {
        a.load(Size::W, R2, R7, field)
            .store(Size::W, R10, LPM_KEY_ADDR, R2)
            .load_map_fd(R1, maps.pools)
            .mov(R2, R10)
            .add_imm(R2, i32::from(LPM_KEY))
            .call(HELPER_MAP_LOOKUP_ELEM)
            .jump_imm(Cond::Eq, R0, 0, "next");
    }
    // A TTL about to run out needs an ICMP error: the stack sends it.
    a.load(Size::B, R2, R7, IP_TTL)
        .jump_imm(Cond::Le, R2, 1, "to_stack");

    // From a pod, the source must be the pod's own address.
    a.mov_imm(R9, 0)
        .load(Size::W, R2, R6, SKB_IFINDEX)
        .store(Size::W, R10, IFINDEX_KEY, R2)
        .load_map_fd(R1, maps.pods)
        .mov(R2, R10)
        .add_imm(R2, i32::from(IFINDEX_KEY))
        .call(HELPER_MAP_LOOKUP_ELEM)
        .jump_imm(Cond::Eq, R0, 0, "lookup")
        .load(Size::W, R2, R0, 0)
        .load(Size::W, R3, R7, IP_SADDR)
        .jump_reg(Cond::Ne, R2, R3, "to_stack")
        .mov_imm(R9, 1);

    a.label("lookup")?;
    for slot in 0..FIB_LEN / 8 {
        a.store_imm(Size::DW, R10, FIB + (slot * 8) as i16, 0);
    }
    a.store_imm(Size::B, R10, FIB_FAMILY, AF_INET)
        .load(Size::B, R2, R7, IP_PROTOCOL)
        .store(Size::B, R10, FIB_L4_PROTOCOL, R2)
        .load(Size::W, R2, R6, SKB_IFINDEX)
        .store(Size::W, R10, FIB_IFINDEX, R2)
        .load(Size::B, R2, R7, IP_TOS)
        .store(Size::B, R10, FIB_TOS, R2)
        .load(Size::W, R2, R7, IP_SADDR)
        .store(Size::W, R10, FIB_SRC, R2)
        .load(Size::W, R2, R7, IP_DADDR)
        .store(Size::W, R10, FIB_DST, R2);
    // tot_len stays 0: the kernel then checks the packet (GSO-aware) against the egress
    // device's MTU and answers "fragmentation needed" for one that does not fit.
    a.mov(R1, R6)
        .mov(R2, R10)
        .add_imm(R2, i32::from(FIB))
        .mov_imm(R3, FIB_LEN)
        .mov_imm(R4, 0)
        .call(HELPER_FIB_LOOKUP)
        .jump_imm(Cond::Ne, R0, BPF_FIB_LKUP_RET_SUCCESS, "to_stack");

    // Into a local pod: straight to its side of the veth. From an uplink to anything else:
    // the stack's (this is not a general router).
    a.load(Size::W, R2, R10, FIB_IFINDEX)
        .store(Size::W, R10, IFINDEX_KEY, R2)
        .load_map_fd(R1, maps.pods)
        .mov(R2, R10)
        .add_imm(R2, i32::from(IFINDEX_KEY))
        .call(HELPER_MAP_LOOKUP_ELEM)
        .jump_imm(Cond::Ne, R0, 0, "into_pod")
        .jump_imm(Cond::Eq, R9, 0, "to_stack")
        .mov_imm(R9, 0)
        .jump("rewrite");
    a.label("into_pod")?;
    a.mov_imm(R9, 1);

    a.label("rewrite")?;
    load_packet(&mut a);
    for (to, from) in [(0, FIB_DMAC), (6, FIB_SMAC)] {
        for half in 0..3 {
            a.load(Size::H, R2, R10, from + half * 2)
                .store(Size::H, R7, to + half * 2, R2);
        }
    }
    // TTL - 1 and the checksum patched as the kernel's ip_decrease_ttl() does.
    a.load(Size::B, R2, R7, IP_TTL)
        .sub_imm(R2, 1)
        .store(Size::B, R7, IP_TTL, R2)
        .load(Size::H, R2, R7, IP_CHECK)
        .add_imm(R2, ne16([0x01, 0x00]))
        .jump_imm(Cond::Lt, R2, 0xffff, "checksum_done")
        .add_imm(R2, 1);
    a.label("checksum_done")?;
    a.store(Size::H, R7, IP_CHECK, R2);

    count(&mut a, maps.counters, COUNTER_FORWARDED, "counted_forward")?;
    a.load(Size::W, R1, R10, FIB_IFINDEX)
        .mov_imm(R2, 0)
        .jump_imm(Cond::Ne, R9, 0, "peer")
        .call(HELPER_REDIRECT)
        .exit();
    a.label("peer")?;
    a.call(HELPER_REDIRECT_PEER).exit();

    a.label("to_stack")?;
    count(&mut a, maps.counters, COUNTER_TO_STACK, "counted_to_stack")?;
    a.label("next")?;
    a.mov_imm(R0, TCX_NEXT).exit();
    a.finish()
}

/// R7, R8 = packet start and end, with an Ethernet and an IPv4 header proven inside
/// (the verifier insists, and helpers may have moved the data).
fn load_packet(a: &mut Asm) {
    use Reg::*;
    a.load(Size::W, R7, R6, SKB_DATA)
        .load(Size::W, R8, R6, SKB_DATA_END)
        .mov(R2, R7)
        .add_imm(R2, HEADERS_LEN)
        .jump_reg(Cond::Gt, R2, R8, "next");
}

/// Adds one to counter `slot`; `done` is a label unique to this use.
fn count(a: &mut Asm, counters: i32, slot: u32, done: &'static str) -> Result<(), AsmError> {
    use Reg::*;
    a.store_imm(Size::W, R10, COUNTER_KEY, slot as i32)
        .load_map_fd(R1, counters)
        .mov(R2, R10)
        .add_imm(R2, i32::from(COUNTER_KEY))
        .call(HELPER_MAP_LOOKUP_ELEM)
        .jump_imm(Cond::Eq, R0, 0, done)
        .load(Size::DW, R2, R0, 0)
        .add_imm(R2, 1)
        .store(Size::DW, R0, 0, R2);
    a.label(done)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_and_every_path_ends_in_exit() {
        let maps = MapFds {
            pods: 3,
            pools: 4,
            counters: 5,
        };
        let insns = forward(maps).unwrap();
        assert!(
            insns.len() < 4096,
            "the verifier's limit for unprivileged users"
        );
        assert_eq!(insns.last().unwrap().code, 0x95);
        // Every jump lands inside the program.
        for (at, insn) in insns.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if class == 0x05 && op != 0x80 && op != 0x90 {
                let to = at as i64 + 1 + i64::from(insn.off);
                assert!(
                    (0..insns.len() as i64).contains(&to),
                    "jump at {at} to {to}"
                );
            }
        }
        // All three maps are referenced.
        for fd in [3, 4, 5] {
            assert!(insns.iter().any(|i| i.code == 0x18 && i.imm == fd));
        }
    }
}
