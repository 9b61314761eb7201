//! The forwarding program: pod-to-pod IPv4 past the host stack.
//!
//! Attached at tc ingress (tcx) of every pod's host-side veth and of the node's uplinks and
//! tunnel devices. For a packet whose source and destination both lie in a pool, it asks the
//! kernel's FIB where the packet goes (`bpf_fib_lookup`, so routes, rules and neighbours
//! stay the kernel's), rewrites the Ethernet header, decrements the TTL and
//! - into a local pod: hands the packet straight to the pod's side of the veth
//!   (`bpf_redirect_peer`: no backlog queue, no second pass through the host stack);
//! - from a pod into the VXLAN device, when VXLAN is configured in the program: wraps the
//!   frame in the very headers the device would put around it and transmits it on the
//!   underlay (see below);
//! - from a pod to anywhere else: transmits it on the egress device (`bpf_redirect`).
//!
//! Everything else goes on through the host stack unchanged (`TCX_NEXT`): traffic that
//! leaves the pools (outgoing NAT), packets whose TTL runs out, IP options, fragments after
//! the first, a destination without a resolved neighbour, a packet (or a GSO packet's
//! segments) too big for the egress device, a pod's packet whose source is not the pod's own
//! address (the stack's reverse-path filter drops it), every packet of a connection that
//! netfilter translated, and the packets from or to a policed endpoint (a pod some network
//! policy isolates) that the policy rules have not judged since they last changed (below).
//!
//! Translated connections: a hostPort, a Service's DNAT or an SNAT rewrites a connection's
//! first packet in the host stack, and only the stack can rewrite the rest and the replies
//! (a reply that skipped it would reach the client from an address it never asked). So for
//! TCP and UDP the program asks the kernel's connection tracking about the packet's
//! 4-tuple (`bpf_skb_ct_lookup`, a kfunc: the tuple matches either direction of a tracked
//! connection) and leaves the packet to the stack when the connection carries a source or
//! destination NAT. A connection conntrack does not know (the fast path's own flows never
//! reach it) is forwarded. Other protocols are not looked up, so they are not forwarded:
//! ICMP echo excepted, since an ICMP error quotes a packet whose addresses NAT may have
//! changed.
//!
//! Policed endpoints: netfilter holds the policy verdicts (`inet wren_policy`), and every
//! TCP packet its rules let through stamps the rules' current epoch into its connection's
//! mark. A policed endpoint's TCP packet with SYN or FIN goes to the stack before any
//! look-up (counted there, not as translated); for the others the same conntrack look-up
//! decides: a policed endpoint's packet is carried
//! only when conntrack knows the connection, it is TCP and assured (the handshake went
//! through the stack), the packet has no SYN or FIN (the handshake and the close stay with
//! conntrack, so it follows every connection's state; the rules keep the stamp through a
//! FIN, so the bare ACKs of a close are carried), and `mark & mask` is the epoch in the
//! policy mark map, which the agent sets only once the rules stamping it are in the
//! kernel. A reset is carried on the same conditions, or when the mark is the epoch with
//! the map's reset bit (an earlier reset was carried), and the program then does what
//! conntrack would have: it gives the entry conntrack's timeout for a reset connection
//! (`bpf_ct_change_timeout`) and sets the reset bit in the mark (a write the kernel allows
//! to `mark` only), so the connection's next packet other than a reset goes to the stack;
//! a kernel without the function sends resets to the stack. A change of the rules is a new
//! epoch: every connection's next packet
//! goes to the stack, meets the new rules once and, still allowed, is stamped and carried
//! again; no longer allowed, it is dropped there. UDP and ICMP of policed endpoints stay on the stack:
//! conntrack's short timeouts for them are refreshed only by packets it sees.
//!
//! VXLAN: the FIB's answer for a remote block is `wren.vxlan` with the remote device's MAC
//! (the tunnel address's permanent neighbour). The program finds the remote node's address
//! by that MAC, as the device's forwarding table would, looks up the outer route from the
//! node's own address out of the device's parent interface, and builds outer Ethernet, IPv4
//! (no DF, the device's TTL, ECN copied from the inner header), UDP (source port from the
//! inner flow's hash over the local port range, as `udp_flow_src_port()` picks it; checksum
//! zero, as RFC 7348 recommends), the VXLAN header and the inner Ethernet header. GSO packets
//! stay GSO packets, marked as UDP-tunnelled. Decapsulation stays with the kernel's device,
//! whose output the program then forwards into the pod.
//!
//! Maps, all created by [`crate::FastPath`]:
//! - pods: hash, host-side ifindex (u32) → the pod's IPv4 address (4 bytes, network order);
//! - pools: LPM trie, `{prefix length: u32, IPv4 address}` → unused u32;
//! - counters: per-CPU array of u64, [`COUNTER_FORWARDED`], [`COUNTER_TO_STACK`],
//!   [`COUNTER_ENCAPSULATED`], [`COUNTER_TRANSLATED`] and [`COUNTER_POLICED_CARRIED`];
//! - vxlan: array of one [`VxlanConfig`] (device ifindex 0: VXLAN is left to the device);
//! - vteps: hash, a remote device's MAC (6 bytes, 2 zero bytes) → the node's IPv4 address;
//! - policed: hash, an IPv4 address (4 bytes, network order) of a local pod some network
//!   policy isolates → unused u32;
//! - policy mark: array of one [`PolicyMark`] (epoch 0: no policed packet is carried).

use crate::asm::{Alu, Asm, AsmError, Cond, Insn, Label, Reg, Size};

/// Counter slot: packets (GSO packets count once) forwarded past the host stack.
pub const COUNTER_FORWARDED: u32 = 0;
/// Counter slot: pool-to-pool packets left to the host stack (no neighbour yet, TTL, size,
/// spoofed source, a destination the FIB does not forward to).
pub const COUNTER_TO_STACK: u32 = 1;
/// Counter slot: of the forwarded packets, those the program wrapped in VXLAN.
pub const COUNTER_ENCAPSULATED: u32 = 2;
/// Counter slot: pool-to-pool packets left to the host stack because netfilter translated
/// their connection (hostPort, Service, SNAT).
pub const COUNTER_TRANSLATED: u32 = 3;
/// Counter slot: of the forwarded packets, those from or to a policed endpoint, carried
/// because their connection's mark says the current rules allowed it.
pub const COUNTER_POLICED_CARRIED: u32 = 4;
/// Number of counter slots.
pub const COUNTERS: u32 = 5;

/// A kernel function (kfunc) the program calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kfunc {
    /// Its BTF type id.
    pub btf_id: u32,
    /// Where that id is defined: 0 for the kernel's own BTF, or the index in the program's
    /// fd array of the module BTF that holds it.
    pub btf_index: i16,
}

/// The connection-tracking look-up the program makes, as the running kernel lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackCalls {
    /// `bpf_skb_ct_lookup(skb, tuple, tuple_len, opts, opts_len)`: a referenced
    /// `struct nf_conn *`, or NULL.
    pub lookup: Kfunc,
    /// `bpf_ct_release(ct)`: drops the look-up's reference.
    pub release: Kfunc,
    /// `sizeof(struct bpf_ct_opts)` in this kernel (12 before zone ids were added, 16 after).
    pub opts_len: i32,
    /// Byte offset of `status` (an `unsigned long`) in this kernel's `struct nf_conn`.
    pub status_offset: i16,
    /// Byte offset of `mark` (a `u32`) in this kernel's `struct nf_conn`; `None` when the
    /// kernel has no connection marks (`CONFIG_NF_CONNTRACK_MARK` off): policed endpoints'
    /// packets then all go to the stack.
    pub mark_offset: Option<i16>,
    /// `bpf_ct_change_timeout(ct, msecs)` (Linux 6.0+): with it, a policed connection's
    /// reset is carried and shortens the entry itself; `None`: resets go to the stack.
    pub change_timeout: Option<Kfunc>,
}

/// File descriptors of the maps the program reads.
#[derive(Clone, Copy, Debug)]
pub struct MapFds {
    /// Pods by host-side ifindex.
    pub pods: i32,
    /// Pool prefixes.
    pub pools: i32,
    /// Per-CPU counters.
    pub counters: i32,
    /// VXLAN settings (one [`VxlanConfig`]).
    pub vxlan: i32,
    /// Remote VXLAN devices by MAC.
    pub vteps: i32,
    /// Policed endpoints' addresses.
    pub policed: i32,
    /// The policy mark: one [`PolicyMark`].
    pub policy_mark: i32,
}

/// What the node's policy rules mark on a connection they allowed, as the program reads
/// it: the one value of the policy mark map. A policed endpoint's packet is carried only
/// when its connection's `ct mark & mask` equals `epoch`; a reset also when it equals
/// `epoch | reset` (an earlier reset of the connection was carried).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyMark {
    /// The current epoch, already shifted into `mask`'s bits; 0 carries nothing.
    pub epoch: u32,
    /// The bits of the connection mark the epoch lives in.
    pub mask: u32,
    /// The bit of `mask` (no epoch has it) a carried reset sets in its connection's mark,
    /// so that the connection's next packet other than a reset goes to the stack; 0 carries
    /// no reset.
    pub reset: u32,
    /// What a carried reset leaves of its connection's entry, in milliseconds: conntrack's
    /// timeout for a reset connection (`nf_conntrack_tcp_timeout_close`).
    pub reset_timeout_ms: u32,
}

/// Size of [`PolicyMark::to_bytes`].
pub const POLICY_MARK_LEN: u32 = 16;
const MARK_EPOCH: i16 = 0;
const MARK_MASK: i16 = 4;
const MARK_RESET: i16 = 8;
const MARK_RESET_TIMEOUT: i16 = 12;

impl PolicyMark {
    /// The map value: epoch, mask, reset bit and reset timeout, each in host order.
    pub fn to_bytes(&self) -> [u8; POLICY_MARK_LEN as usize] {
        let mut out = [0u8; POLICY_MARK_LEN as usize];
        for (at, value) in [
            (MARK_EPOCH, self.epoch),
            (MARK_MASK, self.mask),
            (MARK_RESET, self.reset),
            (MARK_RESET_TIMEOUT, self.reset_timeout_ms),
        ] {
            let at = at as usize;
            out[at..at + 4].copy_from_slice(&value.to_ne_bytes());
        }
        out
    }
}

/// The VXLAN device's settings as the program reads them: the one value of the vxlan map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// The VXLAN device; routes through it are encapsulated by the program.
    pub device: u32,
    /// The underlay interface the device sends through (the outer route's output device).
    pub parent: u32,
    /// The node's underlay address: the outer source.
    pub local: std::net::Ipv4Addr,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// The lowest and highest UDP source port (the kernel's local port range).
    pub source_ports: (u16, u16),
    /// Outer TTL.
    pub ttl: u8,
}

/// Size of [`VxlanConfig::to_bytes`].
pub const VXLAN_CONFIG_LEN: u32 = 32;
const CFG_DEVICE: i16 = 0;
const CFG_PARENT: i16 = 4;
const CFG_LOCAL: i16 = 8;
const CFG_VNI: i16 = 12;
const CFG_PORT_MIN: i16 = 16;
const CFG_PORT_SPAN: i16 = 20;
const CFG_TTL: i16 = 24;
const CFG_PORT: i16 = 28;

impl VxlanConfig {
    /// The map value: numbers the program computes with in host order, header fields in
    /// network order so that they are copied as they are.
    pub fn to_bytes(&self) -> [u8; VXLAN_CONFIG_LEN as usize] {
        let mut out = [0u8; VXLAN_CONFIG_LEN as usize];
        let mut put = |at: i16, bytes: &[u8]| {
            let at = at as usize;
            out[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(CFG_DEVICE, &self.device.to_ne_bytes());
        put(CFG_PARENT, &self.parent.to_ne_bytes());
        put(CFG_LOCAL, &self.local.octets());
        put(CFG_VNI, &(self.vni << 8).to_be_bytes());
        let (low, high) = self.source_ports;
        put(CFG_PORT_MIN, &u32::from(low).to_ne_bytes());
        put(
            CFG_PORT_SPAN,
            &u32::from(high.saturating_sub(low)).to_ne_bytes(),
        );
        put(CFG_TTL, &u32::from(self.ttl).to_ne_bytes());
        put(CFG_PORT, &self.port.to_be_bytes());
        out
    }
}

/// The UDP source port the kernel's VXLAN device picks for a flow hash: the hash folded and
/// scaled into `low..high` (`udp_flow_src_port()`); the program computes the same.
pub fn vxlan_source_port(hash: u32, (low, high): (u16, u16)) -> u16 {
    let hash = hash ^ (hash << 16);
    let span = u64::from(high.saturating_sub(low));
    ((u64::from(hash) * span) >> 32) as u16 + low
}

// Kernel helper numbers (`enum bpf_func_id`).
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_GET_PRANDOM_U32: i32 = 7;
const HELPER_REDIRECT: i32 = 23;
const HELPER_GET_HASH_RECALC: i32 = 34;
const HELPER_SKB_ADJUST_ROOM: i32 = 50;
const HELPER_FIB_LOOKUP: i32 = 69;
const HELPER_REDIRECT_PEER: i32 = 155;

// `struct __sk_buff` fields.
const SKB_LEN: i16 = 0;
const SKB_PROTOCOL: i16 = 16;
const SKB_IFINDEX: i16 = 40;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
const SKB_GSO_SIZE: i16 = 176;

// Packet layout: Ethernet, then an IPv4 header without options.
const ETH_LEN: i16 = 14;
const IP_LEN: i16 = 20;
const IP_VERSION_IHL: i16 = ETH_LEN;
const IP_PROTOCOL: i16 = 9;
const IP_SADDR: i16 = ETH_LEN + 12;
const IP_DADDR: i16 = ETH_LEN + 16;
const HEADERS_LEN: i32 = ETH_LEN as i32 + IP_LEN as i32;
const TCP_DATA_OFFSET: i16 = ETH_LEN + IP_LEN + 12;
const UDP_LEN: i16 = 8;
const IPPROTO_ICMP: i32 = 1;
const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
const ICMP_ECHO_REPLY: i32 = 0;
const ICMP_ECHO_REQUEST: i32 = 8;
/// IPv4 flags and fragment offset, less the DF bit: non-zero for every fragment.
const IP_FRAGMENT_MASK: [u8; 2] = [0x3f, 0xff];

// VXLAN frame: outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet, inner IPv4.
const VXLAN_LEN: i16 = 8;
const VXLAN_OVERHEAD: i16 = IP_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN;
const OUTER_UDP: i16 = ETH_LEN + IP_LEN;
const OUTER_VXLAN: i16 = OUTER_UDP + UDP_LEN;
const INNER_ETH: i16 = OUTER_VXLAN + VXLAN_LEN;
const INNER_IP: i16 = INNER_ETH + ETH_LEN;
const VXLAN_FRAME_LEN: i32 = INNER_IP as i32 + IP_LEN as i32;
const BPF_ADJ_ROOM_MAC: i32 = 1;
/// `bpf_skb_adjust_room()` flags: keep the GSO size (the pod's MTU already leaves room),
/// outer IPv4 and UDP, inner Ethernet of 14 bytes (so GSO segments the inner frames).
const ADJ_ROOM_VXLAN: u64 = 1 | (1 << 1) | (1 << 4) | (1 << 6) | ((ETH_LEN as u64) << 56);

// Stack frame (offsets from R10). `struct bpf_fib_lookup` is 64 bytes.
const FIB: i16 = -64;
const FIB_LEN: i32 = 64;
const FIB_FAMILY: i16 = FIB;
const FIB_L4_PROTOCOL: i16 = FIB + 1;
const FIB_MTU_RESULT: i16 = FIB + 6;
const FIB_IFINDEX: i16 = FIB + 8;
const FIB_TOS: i16 = FIB + 12;
const FIB_SRC: i16 = FIB + 16;
const FIB_DST: i16 = FIB + 32;
const FIB_SMAC: i16 = FIB + 52;
const FIB_DMAC: i16 = FIB + 58;
const LPM_KEY: i16 = -72;
const LPM_KEY_ADDR: i16 = LPM_KEY + 4;
const IFINDEX_KEY: i16 = -76;
/// An address looked up in the policed map (the slot is free again once it is answered).
const POLICED_KEY: i16 = IFINDEX_KEY;
/// Index into an array map: a counter slot, or the one VXLAN settings element.
const ARRAY_KEY: i16 = -80;
const VTEP_KEY: i16 = -88;
const REMOTE_NODE: i16 = -92;
const SOURCE_PORT: i16 = -94;
const IP_ID: i16 = -96;
/// The inner frame's source and destination MACs, as the first lookup gave them.
const INNER_MACS: i16 = -108;
/// `struct bpf_sock_tuple` for IPv4: addresses and ports as the packet has them.
const CT_TUPLE: i16 = -120;
const CT_TUPLE_LEN: i32 = 12;
/// `struct bpf_ct_opts` (room for the 16-byte layout).
const CT_OPTS: i16 = -136;
const CT_OPTS_NETNS: i16 = CT_OPTS;
const CT_OPTS_L4PROTO: i16 = CT_OPTS + 8;
/// The tracked connection's status, kept across the release call.
const CT_STATUS: i16 = -144;
/// The tracked connection's mark, kept across the release call.
const CT_MARK: i16 = -148;
/// 1 when the packet's source or destination is a policed endpoint, else 0.
const POLICED: i16 = -152;
/// A policed endpoint's TCP packet: its RST flag (0 for every other packet).
const RESET: i16 = -156;
/// `BPF_F_CURRENT_NETNS`: look up in the namespace the packet is in.
const CURRENT_NETNS: i32 = -1;
/// `IPS_SRC_NAT | IPS_DST_NAT` of `enum ip_conntrack_status`.
const IPS_NAT_MASK: i32 = (1 << 4) | (1 << 5);
/// `IPS_ASSURED`: conntrack saw the connection's setup through (for TCP, the handshake's
/// last ACK).
const IPS_ASSURED: i32 = 1 << 2;
/// The TCP header's flags byte, and FIN, SYN and RST in it.
const TCP_FLAGS: i16 = ETH_LEN + IP_LEN + 13;
const TCP_FIN_SYN: i32 = 0x01 | 0x02;
const TCP_RST: i32 = 0x04;
const TCP_FIN_SYN_RST: i32 = TCP_FIN_SYN | TCP_RST;

const AF_INET: i32 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i32 = 0;
const BPF_FIB_LOOKUP_OUTPUT: i32 = 1 << 1;
/// `TCX_NEXT`: let the next program, or the host stack, have the packet.
const TCX_NEXT: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

/// Values compared against raw packet bytes are built from their bytes in memory, so the
/// program is right for the host's byte order.
fn ne16(bytes: [u8; 2]) -> i32 {
    i32::from(u16::from_ne_bytes(bytes))
}

fn ne32(bytes: [u8; 4]) -> i32 {
    i32::from_ne_bytes(bytes)
}

/// Assembles the program against the given maps and the kernel's conntrack functions.
pub fn forward(maps: MapFds, conntrack: ConntrackCalls) -> Result<Vec<Insn>, AsmError> {
    use Reg::*;
    let mut a = Asm::new();
    let exits = Exits::new(&mut a);
    let Exits { next, to_stack, .. } = exits;
    let [from_uplink, ttl, transport_known, fits] =
        ["from_uplink", "ttl", "transport_known", "fits"].map(|name| a.new_label(name));
    let [into_pod, routed, rewrite, peer, encapsulated] =
        ["into_pod", "routed", "rewrite", "peer", "encapsulate"].map(|name| a.new_label(name));
    // R6 = skb, R7 = packet start, R8 = packet end,
    // R9 = the pod's address if the packet came from a pod (else 0), later 1 if it goes
    // into a pod, or the VXLAN settings when it is to be encapsulated.
    a.mov(R6, R1);
    a.load(Size::W, R2, R6, SKB_PROTOCOL)
        .jump_imm(Cond::Ne, R2, ne16([0x08, 0x00]), next);
    load_packet(&mut a, HEADERS_LEN, next);
    a.load(Size::B, R2, R7, IP_VERSION_IHL)
        .jump_imm(Cond::Ne, R2, 0x45, next);

    // Only traffic between pools: everything else is the host stack's business. A pod's own
    // address is a pool address, so from a pod only the destination is looked up.
    a.mov_imm(R9, 0)
        .load(Size::W, R2, R6, SKB_IFINDEX)
        .store(Size::W, R10, IFINDEX_KEY, R2);
    lookup(&mut a, maps.pods, IFINDEX_KEY);
    a.jump_imm(Cond::Eq, R0, 0, from_uplink)
        .load(Size::W, R9, R0, 0);
    in_pools(&mut a, maps.pools, &[IP_DADDR], next);
    // From a pod, the source must be the pod's own address.
    a.load(Size::W, R3, R7, IP_SADDR)
        .jump_reg(Cond::Ne, R9, R3, to_stack)
        .jump(ttl);
    a.place(from_uplink)?;
    in_pools(&mut a, maps.pools, &[IP_DADDR, IP_SADDR], next);

    // A TTL about to run out needs an ICMP error: the stack sends it.
    a.place(ttl)?;
    note_policed(&mut a, maps.policed)?;
    a.load(Size::B, R2, R7, ETH_LEN + 8)
        .jump_imm(Cond::Le, R2, 1, to_stack);
    untranslated(&mut a, maps, conntrack, exits)?;

    clear_fib(&mut a);
    a.load(Size::B, R2, R7, ETH_LEN + IP_PROTOCOL)
        .store(Size::B, R10, FIB_L4_PROTOCOL, R2)
        .load(Size::W, R2, R6, SKB_IFINDEX)
        .store(Size::W, R10, FIB_IFINDEX, R2)
        .load(Size::B, R2, R7, ETH_LEN + 1)
        .store(Size::B, R10, FIB_TOS, R2)
        .load(Size::W, R2, R7, IP_SADDR)
        .store(Size::W, R10, FIB_SRC, R2)
        .load(Size::W, R2, R7, IP_DADDR)
        .store(Size::W, R10, FIB_DST, R2);
    // tot_len stays 0: the kernel then checks the packet against the egress device's MTU
    // and answers "fragmentation needed" for one that does not fit, GSO packets excepted.
    fib_lookup(&mut a, 0, to_stack);

    // A GSO packet's segments must fit the egress MTU too; the stack segments (or answers
    // "fragmentation needed" for) those that do not.
    a.load(Size::W, R2, R6, SKB_GSO_SIZE)
        .jump_imm(Cond::Eq, R2, 0, fits)
        .load(Size::B, R3, R7, ETH_LEN + IP_PROTOCOL)
        .mov_imm(R4, i32::from(UDP_LEN))
        .jump_imm(Cond::Eq, R3, IPPROTO_UDP, transport_known)
        .jump_imm(Cond::Ne, R3, IPPROTO_TCP, to_stack)
        .mov(R5, R7)
        .add_imm(R5, i32::from(TCP_DATA_OFFSET) + 1)
        .jump_reg(Cond::Gt, R5, R8, to_stack)
        .load(Size::B, R4, R7, TCP_DATA_OFFSET)
        .alu_imm(Alu::And, R4, 0xf0)
        .alu_imm(Alu::Rsh, R4, 2);
    a.place(transport_known)?;
    a.alu_reg(Alu::Add, R2, R4)
        .add_imm(R2, i32::from(IP_LEN))
        .load(Size::H, R3, R10, FIB_MTU_RESULT)
        .jump_reg(Cond::Gt, R2, R3, to_stack);
    a.place(fits)?;

    // Into a local pod: straight to its side of the veth. From an uplink to anything else:
    // the stack's (this is not a general router).
    a.load(Size::W, R2, R10, FIB_IFINDEX)
        .store(Size::W, R10, IFINDEX_KEY, R2);
    lookup(&mut a, maps.pods, IFINDEX_KEY);
    a.jump_imm(Cond::Ne, R0, 0, into_pod)
        .jump_imm(Cond::Eq, R9, 0, to_stack);
    // From a pod into the VXLAN device: encapsulated here, if VXLAN is set up.
    a.store_imm(Size::W, R10, ARRAY_KEY, 0);
    lookup(&mut a, maps.vxlan, ARRAY_KEY);
    a.jump_imm(Cond::Eq, R0, 0, routed)
        .load(Size::W, R2, R0, CFG_DEVICE)
        .load(Size::W, R3, R10, FIB_IFINDEX)
        .mov(R9, R0)
        .jump_reg(Cond::Eq, R2, R3, encapsulated);
    a.place(routed)?;
    a.mov_imm(R9, 0).jump(rewrite);
    a.place(into_pod)?;
    a.mov_imm(R9, 1);

    a.place(rewrite)?;
    load_packet(&mut a, HEADERS_LEN, next);
    for (to, from) in [(0, FIB_DMAC), (6, FIB_SMAC)] {
        copy(&mut a, R7, to, R10, from, 6);
    }
    decrement_ttl(&mut a, ETH_LEN)?;
    count(&mut a, maps.counters, COUNTER_FORWARDED)?;
    a.load(Size::W, R1, R10, FIB_IFINDEX)
        .mov_imm(R2, 0)
        .jump_imm(Cond::Ne, R9, 0, peer)
        .call(HELPER_REDIRECT)
        .exit();
    a.place(peer)?;
    a.call(HELPER_REDIRECT_PEER).exit();

    a.place(encapsulated)?;
    encapsulate(&mut a, maps, exits)?;

    a.place(to_stack)?;
    count(&mut a, maps.counters, COUNTER_TO_STACK)?;
    a.place(next)?;
    a.mov_imm(R0, TCX_NEXT).exit();
    a.place(exits.drop)?;
    a.mov_imm(R0, TC_ACT_SHOT).exit();
    a.finish()
}

/// The ends every part of the program may jump to.
#[derive(Clone, Copy)]
struct Exits {
    /// On to the next program or the host stack, uncounted: traffic that is not the fast
    /// path's business.
    next: Label,
    /// To the host stack, counted: traffic the fast path looked at and leaves to the stack.
    to_stack: Label,
    /// Dropped: a packet already rewritten that can no longer go on.
    drop: Label,
}

impl Exits {
    fn new(a: &mut Asm) -> Self {
        Self {
            next: a.new_label("next"),
            to_stack: a.new_label("to_stack"),
            drop: a.new_label("drop"),
        }
    }
}

/// Falls through when the packet's connection was not translated by netfilter (see the
/// module's documentation) and, for a policed endpoint's packet, when the node's policy
/// rules allowed its connection since they last changed; otherwise the packet goes to the
/// stack. R7, R8 = the packet, with the IPv4 header proven inside; they are reloaded on
/// the way out.
fn untranslated(
    a: &mut Asm,
    maps: MapFds,
    conntrack: ConntrackCalls,
    exits: Exits,
) -> Result<(), AsmError> {
    use Reg::*;
    let Exits { next, to_stack, .. } = exits;
    let [tcp, tracked, untracked, translated, done] =
        ["tcp", "tracked", "untracked", "translated", "untranslated"].map(|name| a.new_label(name));
    // Resets are carried only where the kernel lets the program shorten the entry, as
    // conntrack would have on seeing the reset.
    let carry_resets = conntrack
        .change_timeout
        .zip(conntrack.mark_offset)
        .map(|(change_timeout, mark)| (change_timeout, mark, a.new_label("reset")));
    if carry_resets.is_some() {
        a.store_imm(Size::W, R10, RESET, 0);
    }
    // Later fragments carry no ports: the stack reassembles them for conntrack.
    a.load(Size::H, R2, R7, ETH_LEN + 6)
        .alu_imm(Alu::And, R2, ne16(IP_FRAGMENT_MASK))
        .jump_imm(Cond::Ne, R2, 0, to_stack)
        .load(Size::B, R2, R7, ETH_LEN + IP_PROTOCOL)
        .jump_imm(Cond::Eq, R2, IPPROTO_TCP, tcp);
    // A policed endpoint's other traffic stays with the stack: conntrack's timeouts for
    // UDP and ICMP are refreshed only by the packets it sees.
    a.load(Size::W, R3, R10, POLICED)
        .jump_imm(Cond::Ne, R3, 0, to_stack)
        .jump_imm(Cond::Eq, R2, IPPROTO_UDP, tracked)
        .jump_imm(Cond::Ne, R2, IPPROTO_ICMP, to_stack)
        .mov(R3, R7)
        .add_imm(R3, HEADERS_LEN + 1)
        .jump_reg(Cond::Gt, R3, R8, to_stack)
        .load(Size::B, R3, R7, HEADERS_LEN as i16)
        .jump_imm(Cond::Eq, R3, ICMP_ECHO_REPLY, done)
        .jump_imm(Cond::Eq, R3, ICMP_ECHO_REQUEST, done)
        .jump(to_stack);

    // A policed endpoint's SYN or FIN goes to the stack whatever conntrack holds (below):
    // it is spared the look-up, which costs as much as the rest of the program. So does
    // its RST, unless the program may carry it.
    a.place(tcp)?;
    a.load(Size::W, R3, R10, POLICED)
        .jump_imm(Cond::Eq, R3, 0, tracked)
        .mov(R3, R7)
        .add_imm(R3, i32::from(TCP_FLAGS) + 1)
        .jump_reg(Cond::Gt, R3, R8, to_stack)
        .load(Size::B, R3, R7, TCP_FLAGS);
    if carry_resets.is_some() {
        a.jump_imm(Cond::Set, R3, TCP_FIN_SYN, to_stack)
            .alu_imm(Alu::And, R3, TCP_RST)
            .store(Size::W, R10, RESET, R3);
    } else {
        a.jump_imm(Cond::Set, R3, TCP_FIN_SYN_RST, to_stack);
    }

    // R2 = the protocol. The tuple: both addresses, then both ports, as on the wire.
    a.place(tracked)?;
    a.mov(R3, R7)
        .add_imm(R3, HEADERS_LEN + 4)
        .jump_reg(Cond::Gt, R3, R8, to_stack)
        .load(Size::W, R3, R7, IP_SADDR)
        .store(Size::W, R10, CT_TUPLE, R3)
        .load(Size::W, R3, R7, IP_DADDR)
        .store(Size::W, R10, CT_TUPLE + 4, R3)
        .load(Size::W, R3, R7, HEADERS_LEN as i16)
        .store(Size::W, R10, CT_TUPLE + 8, R3)
        .store_imm(Size::DW, R10, CT_OPTS, 0)
        .store_imm(Size::DW, R10, CT_OPTS + 8, 0)
        .store_imm(Size::W, R10, CT_OPTS_NETNS, CURRENT_NETNS)
        .store(Size::B, R10, CT_OPTS_L4PROTO, R2)
        .store_imm(Size::W, R10, CT_MARK, 0)
        .mov(R1, R6)
        .mov(R2, R10)
        .add_imm(R2, i32::from(CT_TUPLE))
        .mov_imm(R3, CT_TUPLE_LEN)
        .mov(R4, R10)
        .add_imm(R4, i32::from(CT_OPTS))
        .mov_imm(R5, conntrack.opts_len)
        .call_kfunc(conntrack.lookup.btf_id, conntrack.lookup.btf_index)
        .jump_imm(Cond::Eq, R0, 0, untracked)
        .load(Size::DW, R2, R0, conntrack.status_offset)
        .store(Size::DW, R10, CT_STATUS, R2);
    if let Some(mark) = conntrack.mark_offset {
        a.load(Size::W, R2, R0, mark)
            .store(Size::W, R10, CT_MARK, R2);
    }
    if let Some((_, _, reset)) = carry_resets {
        a.load(Size::W, R2, R10, RESET)
            .jump_imm(Cond::Ne, R2, 0, reset);
    }
    release(a, conntrack, R0);
    a.load(Size::DW, R2, R10, CT_STATUS)
        .jump_imm(Cond::Set, R2, IPS_NAT_MASK, translated);
    load_packet(a, HEADERS_LEN, next);
    a.load(Size::W, R3, R10, POLICED)
        .jump_imm(Cond::Eq, R3, 0, done);

    // A policed endpoint's TCP packet: carried only in an established connection whose
    // mark carries the current epoch (the rules allowed it since they last changed), and
    // never with SYN or FIN (those left above), so that conntrack sees every connection's
    // setup and teardown and leaves no entry behind.
    stamped_with_epoch(a, maps, false, to_stack)?;
    count(a, maps.counters, COUNTER_POLICED_CARRIED)?;
    load_packet(a, HEADERS_LEN, next);
    a.jump(done);

    // A policed endpoint's reset, R0 = its connection (referenced). Carried on the same
    // conditions as the connection's other packets, or after a reset carried before (the
    // answer to a FIN that crossed the first, or the exact reset a challenge ACK asked
    // for). Carrying it, the program does what conntrack would have done: the entry is
    // left the timeout of a reset connection (conntrack keeps its TCP state, which a
    // program cannot set, but nothing of the connection is carried past the stack any
    // more), and the mark gets the reset bit, so that the connection's next packet other
    // than a reset (a challenge ACK, when the reset missed the window's edge) goes to the
    // stack, refreshes the entry there and is judged and stamped again.
    if let Some((change_timeout, mark, reset)) = carry_resets {
        let reset_to_stack = a.new_label("reset_to_stack");
        a.place(reset)?;
        // R8 holds the reference across the calls; the packet is reloaded after.
        a.mov(R8, R0).load(Size::DW, R2, R10, CT_STATUS).jump_imm(
            Cond::Set,
            R2,
            IPS_NAT_MASK,
            reset_to_stack,
        );
        stamped_with_epoch(a, maps, true, reset_to_stack)?;
        a.load(Size::W, R4, R10, CT_MARK)
            .alu_reg(Alu::Or, R4, R5)
            .store(Size::W, R8, mark, R4)
            .load(Size::W, R2, R0, MARK_RESET_TIMEOUT)
            .mov(R1, R8)
            .call_kfunc(change_timeout.btf_id, change_timeout.btf_index);
        release(a, conntrack, R8);
        count(a, maps.counters, COUNTER_POLICED_CARRIED)?;
        load_packet(a, HEADERS_LEN, next);
        a.jump(done);
        a.place(reset_to_stack)?;
        release(a, conntrack, R8);
        // A translated connection's reset is counted as such, like its other packets.
        a.load(Size::DW, R2, R10, CT_STATUS)
            .jump_imm(Cond::Set, R2, IPS_NAT_MASK, translated)
            .jump(to_stack);
    }

    // Not tracked: the fast path's own flows, unless the endpoint is policed.
    a.place(untracked)?;
    load_packet(a, HEADERS_LEN, next);
    a.load(Size::W, R3, R10, POLICED)
        .jump_imm(Cond::Ne, R3, 0, to_stack)
        .jump(done);

    a.place(translated)?;
    count(a, maps.counters, COUNTER_TRANSLATED)?;
    a.jump(next);
    a.place(done)?;
    Ok(())
}

/// Goes to `otherwise` unless the connection whose status and mark the stack holds
/// (`CT_STATUS`, `CT_MARK`) is assured and stamped with the current epoch: `mark & mask`
/// equal to it, or with `after_reset` equal to it once the reset bit is left out (and only
/// when the policy mark map names a reset bit). Leaves R0 = the map's value and, with
/// `after_reset`, R5 = the reset bit.
fn stamped_with_epoch(
    a: &mut Asm,
    maps: MapFds,
    after_reset: bool,
    otherwise: Label,
) -> Result<(), AsmError> {
    use Reg::*;
    let assured = a.new_label("assured");
    a.load(Size::DW, R2, R10, CT_STATUS)
        .jump_imm(Cond::Set, R2, IPS_ASSURED, assured)
        .jump(otherwise);
    a.place(assured)?;
    a.store_imm(Size::W, R10, ARRAY_KEY, 0);
    lookup(a, maps.policy_mark, ARRAY_KEY);
    a.jump_imm(Cond::Eq, R0, 0, otherwise)
        .load(Size::W, R2, R0, MARK_EPOCH)
        .jump_imm(Cond::Eq, R2, 0, otherwise)
        .load(Size::W, R3, R0, MARK_MASK)
        .load(Size::W, R4, R10, CT_MARK)
        .alu_reg(Alu::And, R4, R3);
    if after_reset {
        a.load(Size::W, R5, R0, MARK_RESET)
            .jump_imm(Cond::Eq, R5, 0, otherwise)
            .mov(R3, R5)
            .alu_imm(Alu::Xor, R3, -1)
            .alu_reg(Alu::And, R4, R3);
    }
    a.jump_reg(Cond::Ne, R4, R2, otherwise);
    Ok(())
}

/// Drops the reference the conntrack look-up took on the connection in `ct`.
fn release(a: &mut Asm, conntrack: ConntrackCalls, ct: Reg) {
    a.mov(Reg::R1, ct)
        .call_kfunc(conntrack.release.btf_id, conntrack.release.btf_index);
}

/// The VXLAN branch: R9 = the VXLAN settings, the first FIB answer on the stack (egress =
/// the VXLAN device, MACs of the two tunnel ends).
fn encapsulate(a: &mut Asm, maps: MapFds, exits: Exits) -> Result<(), AsmError> {
    use Reg::*;
    let to_stack = exits.to_stack;
    let ecn_done = a.new_label("ecn_done");
    // The remote node, by its device's MAC: what the device's forwarding entry says.
    a.store_imm(Size::DW, R10, VTEP_KEY, 0);
    copy(a, R10, VTEP_KEY, R10, FIB_DMAC, 6);
    lookup(a, maps.vteps, VTEP_KEY);
    a.jump_imm(Cond::Eq, R0, 0, to_stack)
        .load(Size::W, R2, R0, 0)
        .store(Size::W, R10, REMOTE_NODE, R2);
    copy(a, R10, INNER_MACS, R10, FIB_SMAC, 12);

    // The outer route, as the device finds it: from the node's address, out of its parent.
    clear_fib(a);
    a.store_imm(Size::B, R10, FIB_L4_PROTOCOL, IPPROTO_UDP)
        .load(Size::W, R2, R9, CFG_PARENT)
        .store(Size::W, R10, FIB_IFINDEX, R2)
        .load(Size::W, R2, R9, CFG_LOCAL)
        .store(Size::W, R10, FIB_SRC, R2)
        .load(Size::W, R2, R10, REMOTE_NODE)
        .store(Size::W, R10, FIB_DST, R2);
    fib_lookup(a, BPF_FIB_LOOKUP_OUTPUT, to_stack);

    // Source port: the inner flow's hash, folded and scaled into the port range.
    a.mov(R1, R6)
        .call(HELPER_GET_HASH_RECALC)
        .mov(R2, R0)
        .alu_imm(Alu::Lsh, R2, 16)
        .alu_reg(Alu::Xor, R0, R2)
        .alu_imm(Alu::Lsh, R0, 32)
        .alu_imm(Alu::Rsh, R0, 32)
        .load(Size::W, R2, R9, CFG_PORT_SPAN)
        .alu_reg(Alu::Mul, R0, R2)
        .alu_imm(Alu::Rsh, R0, 32)
        .load(Size::W, R2, R9, CFG_PORT_MIN)
        .alu_reg(Alu::Add, R0, R2)
        .to_be16(R0)
        .store(Size::H, R10, SOURCE_PORT, R0)
        .call(HELPER_GET_PRANDOM_U32)
        .store(Size::H, R10, IP_ID, R0);

    // Room for outer IPv4, UDP, VXLAN and the inner Ethernet header behind the Ethernet
    // header, which becomes the outer one. Refused (a packet already tunnelled by the pod,
    // say): the packet is unchanged and the device has it.
    a.mov(R1, R6)
        .mov_imm(R2, i32::from(VXLAN_OVERHEAD))
        .mov_imm(R3, BPF_ADJ_ROOM_MAC)
        .mov_imm64(R4, ADJ_ROOM_VXLAN)
        .call(HELPER_SKB_ADJUST_ROOM)
        .jump_imm(Cond::Ne, R0, 0, to_stack);
    // From here the packet is committed; the bound check only satisfies the verifier.
    load_packet(a, VXLAN_FRAME_LEN, exits.drop);

    copy(a, R7, 0, R10, FIB_DMAC, 6);
    copy(a, R7, 6, R10, FIB_SMAC, 6);
    // Outer IPv4: ECN as the inner packet's (congestion experienced becomes ECT(0)).
    a.store_imm(Size::B, R7, ETH_LEN, 0x45)
        .load(Size::B, R2, R7, INNER_IP + 1)
        .alu_imm(Alu::And, R2, 3)
        .jump_imm(Cond::Ne, R2, 3, ecn_done)
        .mov_imm(R2, 2);
    a.place(ecn_done)?;
    a.store(Size::B, R7, ETH_LEN + 1, R2)
        .load(Size::W, R2, R6, SKB_LEN)
        .sub_imm(R2, i32::from(ETH_LEN))
        .mov(R3, R2)
        .to_be16(R2)
        .store(Size::H, R7, ETH_LEN + 2, R2)
        .load(Size::H, R2, R10, IP_ID)
        .store(Size::H, R7, ETH_LEN + 4, R2)
        .store_imm(Size::H, R7, ETH_LEN + 6, 0)
        .load(Size::W, R2, R9, CFG_TTL)
        .store(Size::B, R7, ETH_LEN + 8, R2)
        .store_imm(Size::B, R7, ETH_LEN + IP_PROTOCOL, IPPROTO_UDP)
        .store_imm(Size::H, R7, ETH_LEN + 10, 0)
        .load(Size::W, R2, R9, CFG_LOCAL)
        .store(Size::W, R7, IP_SADDR, R2)
        .load(Size::W, R2, R10, REMOTE_NODE)
        .store(Size::W, R7, IP_DADDR, R2);
    // UDP: length = IPv4 total length - 20, no checksum.
    a.load(Size::H, R2, R10, SOURCE_PORT)
        .store(Size::H, R7, OUTER_UDP, R2)
        .load(Size::H, R2, R9, CFG_PORT)
        .store(Size::H, R7, OUTER_UDP + 2, R2)
        .sub_imm(R3, i32::from(IP_LEN))
        .to_be16(R3)
        .store(Size::H, R7, OUTER_UDP + 4, R3)
        .store_imm(Size::H, R7, OUTER_UDP + 6, 0);
    // VXLAN: the I flag and the VNI.
    a.store_imm(Size::W, R7, OUTER_VXLAN, ne32([0x08, 0, 0, 0]))
        .load(Size::W, R2, R9, CFG_VNI)
        .store(Size::W, R7, OUTER_VXLAN + 4, R2);
    // Inner Ethernet: to the remote device's MAC, from ours.
    copy(a, R7, INNER_ETH, R10, INNER_MACS + 6, 6);
    copy(a, R7, INNER_ETH + 6, R10, INNER_MACS, 6);
    a.store_imm(Size::H, R7, INNER_ETH + 12, ne16([0x08, 0x00]));
    // The outer header checksum: the ones' complement sum is the same in either byte
    // order, so the halfwords are added as loaded.
    a.mov_imm(R2, 0);
    for half in 0..IP_LEN / 2 {
        a.load(Size::H, R3, R7, ETH_LEN + half * 2)
            .alu_reg(Alu::Add, R2, R3);
    }
    for _ in 0..2 {
        a.mov(R3, R2)
            .alu_imm(Alu::Rsh, R3, 16)
            .alu_imm(Alu::And, R2, 0xffff)
            .alu_reg(Alu::Add, R2, R3);
    }
    a.alu_imm(Alu::Xor, R2, 0xffff)
        .store(Size::H, R7, ETH_LEN + 10, R2);
    decrement_ttl(a, INNER_IP)?;

    count(a, maps.counters, COUNTER_FORWARDED)?;
    count(a, maps.counters, COUNTER_ENCAPSULATED)?;
    a.load(Size::W, R1, R10, FIB_IFINDEX)
        .mov_imm(R2, 0)
        .call(HELPER_REDIRECT)
        .exit();
    Ok(())
}

/// Zeroes the `struct bpf_fib_lookup` on the stack and sets its family.
fn clear_fib(a: &mut Asm) {
    use Reg::*;
    for slot in 0..FIB_LEN / 8 {
        a.store_imm(Size::DW, R10, FIB + (slot * 8) as i16, 0);
    }
    a.store_imm(Size::B, R10, FIB_FAMILY, AF_INET);
}

/// `bpf_fib_lookup(skb, FIB, 64, flags)`; anything but success goes to `failed`.
fn fib_lookup(a: &mut Asm, flags: i32, failed: Label) {
    use Reg::*;
    a.mov(R1, R6)
        .mov(R2, R10)
        .add_imm(R2, i32::from(FIB))
        .mov_imm(R3, FIB_LEN)
        .mov_imm(R4, flags)
        .call(HELPER_FIB_LOOKUP)
        .jump_imm(Cond::Ne, R0, BPF_FIB_LKUP_RET_SUCCESS, failed);
}

/// `R0 = bpf_map_lookup_elem(map, R10 + key)`
fn lookup(a: &mut Asm, map: i32, key: i16) {
    use Reg::*;
    a.load_map_fd(R1, map)
        .mov(R2, R10)
        .add_imm(R2, i32::from(key))
        .call(HELPER_MAP_LOOKUP_ELEM);
}

/// Goes to `outside` unless the IPv4 addresses at `fields` all lie in a pool. R7 = packet
/// start.
fn in_pools(a: &mut Asm, pools: i32, fields: &[i16], outside: Label) {
    use Reg::*;
    a.store_imm(Size::W, R10, LPM_KEY, 32);
    for &field in fields {
        a.load(Size::W, R2, R7, field)
            .store(Size::W, R10, LPM_KEY_ADDR, R2);
        lookup(a, pools, LPM_KEY);
        a.jump_imm(Cond::Eq, R0, 0, outside);
    }
}

/// Notes in the POLICED slot whether the packet's source or destination is a policed
/// endpoint, whose packets are carried only on the conditions of [`untranslated`].
/// R7 = packet start.
fn note_policed(a: &mut Asm, policed: i32) -> Result<(), AsmError> {
    use Reg::*;
    let [policed_found, noted] = ["policed", "policed_noted"].map(|name| a.new_label(name));
    a.store_imm(Size::W, R10, POLICED, 0);
    for field in [IP_SADDR, IP_DADDR] {
        a.load(Size::W, R2, R7, field)
            .store(Size::W, R10, POLICED_KEY, R2);
        lookup(a, policed, POLICED_KEY);
        a.jump_imm(Cond::Ne, R0, 0, policed_found);
    }
    a.jump(noted);
    a.place(policed_found)?;
    a.store_imm(Size::W, R10, POLICED, 1);
    a.place(noted)?;
    Ok(())
}

/// Copies `len` (even) bytes, two at a time, through R2.
fn copy(a: &mut Asm, to: Reg, to_off: i16, from: Reg, from_off: i16, len: i16) {
    for half in 0..len / 2 {
        a.load(Size::H, Reg::R2, from, from_off + half * 2).store(
            Size::H,
            to,
            to_off + half * 2,
            Reg::R2,
        );
    }
}

/// TTL - 1 of the IPv4 header at `ip` (R7-relative), with the checksum patched as the
/// kernel's `ip_decrease_ttl()` does.
fn decrement_ttl(a: &mut Asm, ip: i16) -> Result<(), AsmError> {
    use Reg::*;
    let done = a.new_label("checksum_done");
    a.load(Size::B, R2, R7, ip + 8)
        .sub_imm(R2, 1)
        .store(Size::B, R7, ip + 8, R2)
        .load(Size::H, R2, R7, ip + 10)
        .add_imm(R2, ne16([0x01, 0x00]))
        .jump_imm(Cond::Lt, R2, 0xffff, done)
        .add_imm(R2, 1);
    a.place(done)?;
    a.store(Size::H, R7, ip + 10, R2);
    Ok(())
}

/// R7, R8 = packet start and end, with `len` bytes proven inside (the verifier insists,
/// and helpers may have moved the data); a shorter packet goes to `short`.
fn load_packet(a: &mut Asm, len: i32, short: Label) {
    use Reg::*;
    a.load(Size::W, R7, R6, SKB_DATA)
        .load(Size::W, R8, R6, SKB_DATA_END)
        .mov(R2, R7)
        .add_imm(R2, len)
        .jump_reg(Cond::Gt, R2, R8, short);
}

/// Adds one to counter `slot`.
fn count(a: &mut Asm, counters: i32, slot: u32) -> Result<(), AsmError> {
    use Reg::*;
    let done = a.new_label("counted");
    a.store_imm(Size::W, R10, ARRAY_KEY, slot as i32);
    lookup(a, counters, ARRAY_KEY);
    a.jump_imm(Cond::Eq, R0, 0, done)
        .load(Size::DW, R2, R0, 0)
        .add_imm(R2, 1)
        .store(Size::DW, R0, 0, R2);
    a.place(done)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(change_timeout: Option<Kfunc>) -> ConntrackCalls {
        ConntrackCalls {
            lookup: Kfunc {
                btf_id: 1001,
                btf_index: 0,
            },
            release: Kfunc {
                btf_id: 1002,
                btf_index: 0,
            },
            opts_len: 12,
            status_offset: 128,
            mark_offset: Some(136),
            change_timeout,
        }
    }

    fn kfunc_called(insns: &[Insn], id: i32) -> bool {
        insns
            .iter()
            .any(|i| i.code == 0x85 && i.regs >> 4 == 2 && i.imm == id)
    }

    #[test]
    fn assembles_and_every_path_ends_in_exit() {
        let maps = MapFds {
            pods: 3,
            pools: 4,
            counters: 5,
            vxlan: 6,
            vteps: 7,
            policed: 8,
            policy_mark: 9,
        };
        let change_timeout = Kfunc {
            btf_id: 1003,
            btf_index: 0,
        };
        for with_resets in [false, true] {
            let insns = forward(maps, calls(with_resets.then_some(change_timeout))).unwrap();
            assert!(
                insns.len() < 4096,
                "the verifier's limit for unprivileged users"
            );
            assert_eq!(insns.last().unwrap().code, 0x95);
            // Every jump lands inside the program (the second slot of a wide load is no
            // instruction of its own).
            let mut wide = false;
            for (at, insn) in insns.iter().enumerate() {
                if std::mem::take(&mut wide) {
                    continue;
                }
                wide = insn.code == 0x18;
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
            // Every map is referenced.
            for fd in [3, 4, 5, 6, 7, 8, 9] {
                assert!(insns.iter().any(|i| i.code == 0x18 && i.imm == fd));
            }
            // Both conntrack functions are called as kfuncs (src 2), and the status is
            // read at the kernel's offset.
            assert!(kfunc_called(&insns, 1001) && kfunc_called(&insns, 1002));
            assert!(insns.iter().any(|i| i.code == 0x79 && i.off == 128));
            // A policed endpoint's connection mark is read (a word) at the kernel's
            // offset; it is written (the reset bit) and the entry's timeout changed only
            // where resets are carried.
            assert!(insns.iter().any(|i| i.code == 0x61 && i.off == 136));
            let writes_mark = insns.iter().any(|i| i.code == 0x63 && i.off == 136);
            assert_eq!(writes_mark, with_resets);
            assert_eq!(kfunc_called(&insns, 1003), with_resets);
        }
    }

    #[test]
    fn policy_mark_bytes() {
        let mark = PolicyMark {
            epoch: 0x0002_0000,
            mask: 0xffff_0000,
            reset: 0x0001_0000,
            reset_timeout_ms: 10_000,
        };
        let bytes = mark.to_bytes();
        assert_eq!(bytes[0..4], 0x0002_0000u32.to_ne_bytes());
        assert_eq!(bytes[4..8], 0xffff_0000u32.to_ne_bytes());
        assert_eq!(bytes[8..12], 0x0001_0000u32.to_ne_bytes());
        assert_eq!(bytes[12..16], 10_000u32.to_ne_bytes());
    }
}

#[cfg(test)]
mod vxlan_tests {
    use super::*;

    #[test]
    fn settings_bytes() {
        let config = VxlanConfig {
            device: 7,
            parent: 2,
            local: std::net::Ipv4Addr::new(192, 0, 2, 1),
            vni: 4096,
            port: 4789,
            source_ports: (32768, 60999),
            ttl: 64,
        };
        let bytes = config.to_bytes();
        assert_eq!(bytes[0..4], 7u32.to_ne_bytes());
        assert_eq!(bytes[4..8], 2u32.to_ne_bytes());
        assert_eq!(bytes[8..12], [192, 0, 2, 1]);
        // VNI 4096 as the header carries it: three bytes, then a reserved zero byte.
        assert_eq!(bytes[12..16], [0x00, 0x10, 0x00, 0x00]);
        assert_eq!(bytes[16..20], 32768u32.to_ne_bytes());
        assert_eq!(bytes[20..24], 28231u32.to_ne_bytes());
        assert_eq!(bytes[24..28], 64u32.to_ne_bytes());
        assert_eq!(bytes[28..30], [0x12, 0xb5]);
    }

    #[test]
    fn source_ports_spread_over_the_range() {
        let range = (32768, 60999);
        assert_eq!(vxlan_source_port(0, range), 32768);
        let ports: Vec<u16> = (0..1000u32)
            .map(|i| vxlan_source_port(i.wrapping_mul(0x9e37_79b9), range))
            .collect();
        assert!(ports.iter().all(|p| (32768..60999).contains(p)));
        let (low, high) = (ports.iter().min().unwrap(), ports.iter().max().unwrap());
        assert!(*low < 34000 && *high > 59000, "{low}..{high}");
        // The hash is folded (hash ^ hash << 16) before scaling, as the kernel does.
        assert_eq!(vxlan_source_port(0x8000, range), 46883);
    }
}
