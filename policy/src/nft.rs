//! A [`NodePlan`] as nftables rules: one table, `inet wren_policy`, loaded whole on a first
//! run ([`NftRules::script`]) and changed by deltas afterwards ([`NftRules::delta_script`]),
//! each in one transaction.
//!
//! ```text
//! table inet wren_policy {
//!     map egress_chains { type ifname : verdict; elements = { "wren…" : jump egress_wren… } }
//!     map ingress_chains { type ifname : verdict; elements = { "wren…" : jump ingress_wren… } }
//!     set ingress_isolated { type ifname; elements = { "wren…" } }   # the maps' keys
//!     set egress_isolated { type ifname; }
//!     set a5c1f… { type ipv4_addr; flags interval; elements = { 10.65.1.4, 10.65.2.0/31 } }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         tcp flags & rst != 0 ct mark set ct mark and 0x0000ffff   # a reset ends the stamp
//!         ct direction reply accept            # replies of connections let through
//!         ct state related accept              # ICMP errors of tracked connections
//!         ct state new tcp flags & (fin | syn | rst | ack) != syn iifname @ingress_isolated \
//!             counter … reject with tcp reset   # met mid-stream (and oifname @egress_…)
//!         iifname vmap @egress_chains          # from an isolated pod (if any)
//!         oifname vmap @ingress_chains         # to an isolated pod (if any)
//!         tcp flags & rst == 0 ct mark set ct mark and 0x0000ffff or 0x002e0000  # epoch
//!     }
//!     counter denied_packets { }  counter denied_connections { }
//!     counter p9e07… { }  counter c9e07… { }          # per isolating policy
//!     chain ingress_wren… {
//!         ip saddr @a5c1f… tcp dport { 80, 8000-8080 } return comment "y/web spec.ingress[0]"
//!         counter name "denied_packets" counter name "p9e07…"
//!         ct state new counter name "denied_connections" counter name "c9e07…"
//!         ct state new tcp flags & (fin | syn | rst | ack) != syn reject with tcp reset
//!         counter drop comment "y/b: isolated for ingress by y/web"
//!     }
//! }
//! ```
//!
//! Why it looks like this:
//! - Every packet in a connection's original direction meets the rules, not only the first:
//!   when a policy change takes an allowance away, the connection's next packet is dropped,
//!   without touching conntrack. Replies are accepted by conntrack's direction, so a reply
//!   never needs a rule of its own. The cost falls only on isolated pods' traffic: one
//!   hash lookup in the interface map and set lookups in the pod's chain.
//! - An allowing rule `return`s rather than accepts, so a packet between two isolated pods
//!   of the same node meets the sender's egress chain and then the receiver's ingress
//!   chain in the one forward hook.
//! - Traffic between a pod and its own node never crosses the forward hook (it goes
//!   through input and output), so the own-node exception needs no rule.
//! - Addresses are named sets, one per distinct set of addresses, shared by every rule and
//!   every pod that uses it: a policy selecting a hundred pods puts its peers in the table
//!   once, not a hundred times.
//! - Names are stable: a chain is named after its pod's interface, a set after a hash of
//!   its content. A change is then a delta: new sets added, the chains whose rules changed
//!   flushed and refilled, the interface maps' entries added or removed, unused chains and
//!   sets deleted. Loading a whole table of a thousand pods' chains costs the kernel far
//!   more than a delta (`BENCHMARKS.md`, *Network policy*).
//! - What is denied is counted in named counters, per node and per isolating policy, each
//!   for packets and for connections (a dropped packet conntrack saw as new: every attempt
//!   counts, retransmitted SYNs too). Named counters belong to the table, not to a chain,
//!   so a delta that refills a chain keeps them; a packet an isolating policy set drops
//!   counts for every policy isolating the pod in that direction.
//! - conntrack picks a TCP connection up from any packet (`nf_conntrack_tcp_loose`), and
//!   the first packet it sees sets the connection's direction. For an isolated pod that
//!   cannot be trusted blindly: a connection the fast path carried before the pod was
//!   isolated (conntrack never saw it), picked up from the receiver's packet, would let
//!   the sender's packets through as replies. Such a packet (new to conntrack, not a SYN)
//!   from a pod isolated for ingress, or to one isolated for egress, is answered with a
//!   TCP reset and counted as denied; each end is reset at its next packet, and a
//!   reconnect is judged from its SYN like any connection. One to a pod isolated for
//!   ingress (from one isolated for egress) goes through the pod's chain like any packet
//!   of that direction: allowed, the connection goes on; denied, it is reset there too.
//! - The table is the only thing wren writes, and an `accept` in it does not override
//!   another table's drop: a host firewall keeps its say.
//! - With a [`ConnectionMark`], a TCP packet that got through every rule stamps the
//!   current epoch into its connection's mark (bits of the mask only), and an RST that
//!   reaches the table clears it. The fast path carries a policed endpoint's packets only
//!   in a connection stamped with the epoch it was told, so every change of the table (a
//!   new epoch, in the same transaction) sends each connection's next packet through the
//!   new rules once. It never carries a SYN or FIN, so conntrack sees every connection
//!   open and close; a FIN leaves the stamp, so the bare ACKs of a close are carried, and
//!   the entry ends in `LAST_ACK` (conntrack's 30 s) rather than `TIME_WAIT` (its 120 s)
//!   when both FINs went through. A reset the fast path carries sets the mask's lowest
//!   bit, which no epoch has ([`ConnectionMark::reset`]); the next packet of the connection
//!   that is not a reset then comes here and is stamped with the bare epoch again.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::Protocol;
use crate::plan::{AddressMatch, DirectionPlan, NodePlan, PlannedRule, PortMatch, PortRange};

/// The nftables table wren's policy rules live in.
pub const TABLE: &str = "wren_policy";

/// Longest comment nftables keeps on a rule.
const COMMENT_MAX: usize = 127;

/// The map from a pod's interface to its egress chain.
const EGRESS_MAP: &str = "egress_chains";
/// The map from a pod's interface to its ingress chain.
const INGRESS_MAP: &str = "ingress_chains";
/// The set of the interfaces of the pods isolated for ingress.
const INGRESS_ISOLATED_SET: &str = "ingress_isolated";
/// The set of the interfaces of the pods isolated for egress.
const EGRESS_ISOLATED_SET: &str = "egress_isolated";
/// The type of the interface verdict maps, as every script declares them.
const INTERFACE_MAP_TYPE: &str = "type ifname : verdict;";
/// The type of the sets of isolated interfaces.
const INTERFACE_SET_TYPE: &str = "type ifname;";

/// The type and flags of an address set of `kind` (`ipv4_addr`, `ipv6_addr`), as every
/// script declares it: a declaration that differs fails against the set in the kernel.
fn address_set_type(kind: &str) -> String {
    format!("type {kind}; flags interval;")
}

/// A TCP packet conntrack meets mid-stream: new to it, and not a SYN.
const MID_STREAM: &str = "ct state new tcp flags & (fin | syn | rst | ack) != syn";

/// A node's plan as nftables objects with stable names: what a script loads and what a
/// delta compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftRules {
    /// Address sets by name: the type (`ipv4_addr` or `ipv6_addr`) and the elements.
    pub sets: BTreeMap<String, (&'static str, String)>,
    /// Per-pod chains by name: their rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Interface → egress chain.
    pub egress: BTreeMap<String, String>,
    /// Interface → ingress chain.
    pub ingress: BTreeMap<String, String>,
    /// Named counters of what is denied, by name.
    pub counters: BTreeMap<String, DeniedCounter>,
    /// The mark stamped on TCP connections the rules allowed, if any.
    pub connection_mark: Option<ConnectionMark>,
}

/// The epoch a table stamps into the connection mark of every TCP connection whose packet
/// got through its rules: what tells the fast path that the rules in force allowed it.
///
/// The lowest bit of the mask is no epoch's: it is the *reset bit*, which the fast path
/// sets in the mark of a connection whose reset it carried (the table's rules clear it
/// with the stamp when a reset reaches them, and stamp every other allowed packet with
/// the bare epoch again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionMark {
    /// The bits of the connection mark that are wren's; the others are left alone.
    pub mask: u32,
    /// The epoch, within `mask` (shifted into its bits, above the reset bit); never 0.
    pub epoch: u32,
}

impl ConnectionMark {
    /// Epoch `n` (counted from 1) of `mask`, shifted into its bits above the reset bit and
    /// wrapping within them, skipping 0 (which no table stamps). `None` unless the mask is
    /// one run of at least two contiguous bits.
    pub fn nth(mask: u32, n: u64) -> Option<Self> {
        if !Self::usable_mask(mask) {
            return None;
        }
        let shift = mask.trailing_zeros() + 1;
        let span = u64::from(mask >> shift);
        let value = (n.saturating_sub(1) % span) + 1;
        Some(Self {
            mask,
            epoch: (value as u32) << shift,
        })
    }

    /// Whether `mask` can hold epochs and the reset bit: one run of at least two
    /// contiguous bits.
    pub fn usable_mask(mask: u32) -> bool {
        if mask.count_ones() < 2 {
            return false;
        }
        let run = u64::from(mask >> mask.trailing_zeros());
        run & (run + 1) == 0
    }

    /// The reset bit: the lowest bit of the mask.
    pub fn reset(&self) -> u32 {
        self.mask & self.mask.wrapping_neg()
    }
}

/// What one named counter of denied traffic counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeniedCounter {
    /// The isolating policy (`namespace/name`); `None` for the node's total.
    pub policy: Option<String>,
    /// Connections (packets conntrack saw as new) rather than packets.
    pub connections: bool,
}

/// The node's counter of denied packets.
pub const DENIED_PACKETS: &str = "denied_packets";
/// The node's counter of denied connections.
pub const DENIED_CONNECTIONS: &str = "denied_connections";

impl NodePlan {
    /// The plan as nftables objects.
    pub fn nft_rules(&self) -> NftRules {
        let mut rules = NftRules::default();
        // The node's counters, which the forward chain's resets count in too.
        for (name, connections) in [(DENIED_PACKETS, false), (DENIED_CONNECTIONS, true)] {
            rules.counters.insert(
                name.to_owned(),
                DeniedCounter {
                    policy: None,
                    connections,
                },
            );
        }
        // The address part of a rule, by its shared peers (the plan shares one value among
        // every pod a policy rule is compiled for): each set is formatted and hashed once.
        let mut addresses = AddressParts::new();
        for endpoint in &self.endpoints {
            for (suffix, plan, peer_field) in [
                ("egress", &endpoint.egress, "daddr"),
                ("ingress", &endpoint.ingress, "saddr"),
            ] {
                let Some(plan) = plan else { continue };
                let chain = format!("{suffix}_{}", identifier(&endpoint.interface));
                let lines = render_direction(
                    &mut rules,
                    &mut addresses,
                    plan,
                    peer_field,
                    &endpoint.pod,
                    suffix,
                );
                rules.chains.insert(chain.clone(), lines);
                let map = if suffix == "egress" {
                    &mut rules.egress
                } else {
                    &mut rules.ingress
                };
                map.insert(endpoint.interface.clone(), chain);
            }
        }
        rules
    }

    /// The plan as an `nft -f` script that replaces `inet <table>` whole, atomically
    /// (creating it the first time).
    pub fn nft_script(&self, table: &str) -> String {
        self.nft_rules().script(table)
    }

    /// A script that removes `inet <table>` (and does not fail when it is absent).
    pub fn nft_remove_script(table: &str) -> String {
        format!("table inet {table}\ndelete table inet {table}\n")
    }
}

impl NftRules {
    /// An `nft -f` script that replaces `inet <table>` whole with these rules, in one
    /// transaction: the table is deleted and made again, whatever it held. Packets that
    /// cross the forward hook while such a transaction commits can be lost (the kernel
    /// unhooks one chain and hooks another), so this is for a table whose content is not
    /// known; [`NftRules::replace_script`] replaces a known one in place.
    pub fn script(&self, table: &str) -> String {
        let mut s = String::new();
        // Declaring the table before deleting it makes the delete valid on a first run;
        // both happen in the one transaction that also creates the new table.
        let _ = writeln!(s, "table inet {table}\ndelete table inet {table}");
        s.push_str(&self.table_block(table));
        s
    }

    /// An `nft -f` script that turns `inet <table>`, loaded with `previous` but perhaps
    /// changed since by someone else, into exactly these rules, in one transaction,
    /// without deleting the table: its forward chain stays hooked, so no packet is lost
    /// while the transaction commits, and the counters both hold keep their figures.
    /// Every chain is emptied and refilled and every set and map emptied and refilled;
    /// what `previous` held and these rules do not is deleted. Each object is declared
    /// (an `add`, which changes nothing where it exists) before it is emptied or deleted,
    /// so an object someone deleted is no obstacle. The script fails (and changes nothing)
    /// only when an object is of another type than the rules give it: the table is then
    /// replaced whole ([`NftRules::script`]).
    pub fn replace_script(&self, previous: &NftRules, table: &str) -> String {
        let mut s = String::new();
        // `flush table` empties the chains, not the sets and maps.
        let _ = writeln!(s, "table inet {table}\nflush table inet {table}");
        for (map, _) in self.interface_maps() {
            let _ = writeln!(
                s,
                "add map inet {table} {map} {{ {INTERFACE_MAP_TYPE} }}\nflush map inet {table} {map}"
            );
        }
        for (set, _) in self.isolated_sets() {
            let _ = writeln!(
                s,
                "add set inet {table} {set} {{ {INTERFACE_SET_TYPE} }}\nflush set inet {table} {set}"
            );
        }
        for (name, (kind, _)) in &self.sets {
            let _ = writeln!(
                s,
                "add set inet {table} {name} {{ {} }}\nflush set inet {table} {name}",
                address_set_type(kind)
            );
        }
        s.push_str(&self.table_block(table));
        // Nothing refers to these any more: the chains were emptied and the maps too.
        self.delete_what_is_gone(previous, table, &mut s);
        s
    }

    /// Appends the deletions of the chains, sets and counters `previous` held and these
    /// rules do not, once nothing refers to them; each declared first, so one already gone
    /// is no error. A set of unknown type (read back from the kernel, so there) is not.
    fn delete_what_is_gone(&self, previous: &NftRules, table: &str, s: &mut String) {
        for name in key_set(&previous.chains).difference(&key_set(&self.chains)) {
            let _ = writeln!(s, "add chain inet {table} {name}");
            let _ = writeln!(s, "delete chain inet {table} {name}");
        }
        for name in key_set(&previous.sets).difference(&key_set(&self.sets)) {
            if let Some((kind, _)) = previous
                .sets
                .get(*name)
                .filter(|(kind, _)| !kind.is_empty())
            {
                let _ = writeln!(
                    s,
                    "add set inet {table} {name} {{ {} }}",
                    address_set_type(kind)
                );
            }
            let _ = writeln!(s, "delete set inet {table} {name}");
        }
        for name in key_set(&previous.counters).difference(&key_set(&self.counters)) {
            let _ = writeln!(s, "add counter inet {table} {name}");
            let _ = writeln!(s, "delete counter inet {table} {name}");
        }
    }

    /// The table as one `table inet <table> { … }` block: adds what is missing, and fills
    /// the chains, sets and maps.
    fn table_block(&self, table: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "table inet {table} {{");
        for (name, entries) in self.interface_maps() {
            let _ = write!(s, "\tmap {name} {{ {INTERFACE_MAP_TYPE} ");
            if !entries.is_empty() {
                let _ = write!(s, "elements = {{ {} }} ", map_elements(entries).join(", "));
            }
            s.push_str("}\n");
        }
        for (name, map) in self.isolated_sets() {
            let _ = write!(s, "\tset {name} {{ {INTERFACE_SET_TYPE} ");
            if !map.is_empty() {
                let elements = quoted(map.keys().map(String::as_str));
                let _ = write!(s, "elements = {{ {} }} ", elements.join(", "));
            }
            s.push_str("}\n");
        }
        for (name, (kind, elements)) in &self.sets {
            let _ = writeln!(
                s,
                "\tset {name} {{ {} elements = {{ {elements} }} }}",
                address_set_type(kind)
            );
        }
        for name in self.counters.keys() {
            let _ = writeln!(s, "\tcounter {name} {{ }}");
        }
        s.push_str("\tchain forward {\n");
        s.push_str("\t\ttype filter hook forward priority filter; policy accept;\n");
        for line in self.forward_rules() {
            let _ = writeln!(s, "\t\t{line}");
        }
        s.push_str("\t}\n");
        for (name, lines) in &self.chains {
            let _ = writeln!(s, "\tchain {name} {{");
            for line in lines {
                let _ = writeln!(s, "\t\t{line}");
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        s
    }

    /// The rules of the `forward` chain, in order.
    fn forward_rules(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let keep = self
            .connection_mark
            .map(|m| format!("ct mark and {:#010x}", !m.mask));
        if let Some(keep) = &keep {
            // A reset that reaches the stack ends the stamp (and the fast path's reset
            // bit): conntrack may keep the entry (a reset not exactly at the window's edge
            // leaves it established for a challenge ACK), but the fast path carries nothing
            // more of it. A FIN keeps the stamp: the FINs themselves go to the stack (the
            // program never carries one), so conntrack still sees the connection close,
            // while the bare ACKs between and after them are carried.
            lines.push(format!("tcp flags & rst != 0 ct mark set {keep}"));
        }
        // Replies first: every packet of a reply direction stops here, after two rules.
        lines.push("ct direction reply accept".to_owned());
        lines.push("ct state related accept".to_owned());
        // A TCP connection conntrack first meets mid-stream (one the fast path carried before
        // its pod was isolated, or whose entry is gone) is taken to be opened by that packet's
        // sender. Where that would make an isolated direction the replies (a packet from a
        // pod isolated for ingress, to one isolated for egress), the rules could never judge
        // it: both ends are reset instead, each at its next packet, and a reconnect is judged
        // from its SYN. The other way round, the pod's chain judges the packet (below).
        // conntrack's state and the TCP flags come before the interface lookup: they rule
        // out nearly every packet, so the lookup is made only for the rare pickup.
        for (side, set, isolated) in [
            ("iifname", INGRESS_ISOLATED_SET, &self.ingress),
            ("oifname", EGRESS_ISOLATED_SET, &self.egress),
        ] {
            if isolated.is_empty() {
                continue;
            }
            lines.push(format!(
                "{MID_STREAM} {side} @{set} counter name \"{DENIED_PACKETS}\" \
                 counter name \"{DENIED_CONNECTIONS}\" reject with tcp reset"
            ));
        }
        // A map no pod is in would only cost every packet a lookup that finds nothing; the
        // forward chain is refilled whenever one of them becomes empty or stops being so.
        if !self.egress.is_empty() {
            lines.push(format!("iifname vmap @{EGRESS_MAP}"));
        }
        if !self.ingress.is_empty() {
            lines.push(format!("oifname vmap @{INGRESS_MAP}"));
        }
        if let (Some(keep), Some(mark)) = (&keep, self.connection_mark) {
            lines.push(format!(
                "tcp flags & rst == 0 ct mark set {keep} or {:#010x}",
                mark.epoch
            ));
        }
        lines
    }

    /// The interface verdict maps, each with its entries: interface → the pod's chain.
    fn interface_maps(&self) -> [(&'static str, &BTreeMap<String, String>); 2] {
        [(EGRESS_MAP, &self.egress), (INGRESS_MAP, &self.ingress)]
    }

    /// The sets of isolated pods' interfaces, each with the map whose keys it holds.
    fn isolated_sets(&self) -> [(&'static str, &BTreeMap<String, String>); 2] {
        [
            (INGRESS_ISOLATED_SET, &self.ingress),
            (EGRESS_ISOLATED_SET, &self.egress),
        ]
    }

    /// An `nft -f` script that turns `inet <table>`, loaded with `previous`, into these
    /// rules in one transaction, touching only what changed. Empty when nothing did.
    pub fn delta_script(&self, previous: &NftRules, table: &str) -> String {
        let mut s = String::new();
        // Additions first, so every reference resolves: sets, then chains, then map entries.
        for (name, (kind, elements)) in &self.sets {
            if !previous.sets.contains_key(name) {
                let _ = writeln!(
                    s,
                    "add set inet {table} {name} {{ {} elements = {{ {elements} }} }}",
                    address_set_type(kind)
                );
            }
        }
        for name in self.counters.keys() {
            if !previous.counters.contains_key(name) {
                let _ = writeln!(s, "add counter inet {table} {name}");
            }
        }
        for (name, lines) in &self.chains {
            if previous.chains.get(name) == Some(lines) {
                continue;
            }
            if previous.chains.contains_key(name) {
                let _ = writeln!(s, "flush chain inet {table} {name}");
            } else {
                let _ = writeln!(s, "add chain inet {table} {name}");
            }
            for line in lines {
                let _ = writeln!(s, "add rule inet {table} {name} {line}");
            }
        }
        for ((map, now), (_, before)) in self
            .interface_maps()
            .into_iter()
            .zip(previous.interface_maps())
        {
            let gone = quoted(
                before
                    .iter()
                    .filter(|(interface, chain)| now.get(*interface) != Some(*chain))
                    .map(|(interface, _)| interface.as_str()),
            );
            if !gone.is_empty() {
                let _ = writeln!(
                    s,
                    "delete element inet {table} {map} {{ {} }}",
                    gone.join(", ")
                );
            }
            let new: BTreeMap<String, String> = now
                .iter()
                .filter(|(interface, chain)| before.get(*interface) != Some(*chain))
                .map(|(i, c)| (i.clone(), c.clone()))
                .collect();
            if !new.is_empty() {
                let _ = writeln!(
                    s,
                    "add element inet {table} {map} {{ {} }}",
                    map_elements(&new).join(", ")
                );
            }
        }
        for ((set, now), (_, before)) in self
            .isolated_sets()
            .into_iter()
            .zip(previous.isolated_sets())
        {
            let added = quoted(
                now.keys()
                    .filter(|i| !before.contains_key(*i))
                    .map(String::as_str),
            );
            let removed = quoted(
                before
                    .keys()
                    .filter(|i| !now.contains_key(*i))
                    .map(String::as_str),
            );
            for (verb, names) in [("add", added), ("delete", removed)] {
                if !names.is_empty() {
                    let _ = writeln!(
                        s,
                        "{verb} element inet {table} {set} {{ {} }}",
                        names.join(", ")
                    );
                }
            }
        }
        // Then removals, once nothing refers to them any more.
        self.delete_what_is_gone(previous, table, &mut s);
        // The new epoch, in the same transaction as the rules it stands for; and the lookups
        // of a direction whose first pod was isolated, or whose last was freed.
        let forward = self.forward_rules();
        if forward != previous.forward_rules() {
            let _ = writeln!(s, "flush chain inet {table} forward");
            for line in forward {
                let _ = writeln!(s, "add rule inet {table} forward {line}");
            }
        }
        s
    }
}

/// A map's names, to compare with another's.
fn key_set<V>(map: &BTreeMap<String, V>) -> std::collections::BTreeSet<&str> {
    map.keys().map(String::as_str).collect()
}

/// Interface names as nft strings.
fn quoted<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names.into_iter().map(|n| format!("\"{n}\"")).collect()
}

fn map_elements(entries: &BTreeMap<String, String>) -> Vec<String> {
    entries
        .iter()
        .map(|(interface, chain)| format!("\"{interface}\" : jump {chain}"))
        .collect()
}

/// An interface name as part of an nft identifier: letters, digits and `_`.
fn identifier(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// FNV-1a, 64 bits: the same in every run, so names made from it are stable.
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The names of the counters of what `policy` denies (packets, connections), added to
/// `rules` on first use: `p`/`c` and a hash of the policy's id.
fn policy_counters(rules: &mut NftRules, policy: &str) -> (String, String) {
    let hash = fnv(policy.bytes());
    let names = (format!("p{hash:016x}"), format!("c{hash:016x}"));
    for (name, connections) in [(&names.0, false), (&names.1, true)] {
        rules
            .counters
            .entry(name.clone())
            .or_insert_with(|| DeniedCounter {
                policy: Some(policy.to_owned()),
                connections,
            });
    }
    names
}

/// The name of the set holding `nets` (all of one family), added to `rules` on first use:
/// `a` and a hash of the content, the same in every run.
fn set_name(rules: &mut NftRules, v4: bool, nets: &[IpNet]) -> String {
    let elements: Vec<String> = nets.iter().map(net_text).collect();
    let elements = elements.join(", ");
    let hash = fnv(std::iter::once(u8::from(v4)).chain(elements.bytes()));
    let name = format!("a{hash:016x}");
    let kind = if v4 { "ipv4_addr" } else { "ipv6_addr" };
    rules.sets.entry(name.clone()).or_insert((kind, elements));
    name
}

/// Rendered address matches by the address of the shared peers value and the field.
type AddressParts = HashMap<(usize, &'static str), Vec<String>>;

fn render_direction(
    rules: &mut NftRules,
    addresses: &mut AddressParts,
    plan: &DirectionPlan,
    peer_field: &'static str,
    pod: &str,
    direction: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    for rule in &plan.rules {
        let key = (Arc::as_ptr(&rule.peers) as usize, peer_field);
        let address_parts = addresses
            .entry(key)
            .or_insert_with(|| address_parts(&rule.peers, rules, peer_field))
            .clone();
        for line in rule_lines(rule, &address_parts) {
            lines.push(format!(
                "{line} return comment {}",
                comment(&rule.rule.to_string())
            ));
        }
    }
    let isolated_by: Vec<String> = plan.isolated_by.iter().map(ToString::to_string).collect();
    let (mut packets, mut connections) = (
        format!("counter name \"{DENIED_PACKETS}\""),
        format!("counter name \"{DENIED_CONNECTIONS}\""),
    );
    for policy in &isolated_by {
        let (p, c) = policy_counters(rules, policy);
        let _ = write!(packets, " counter name \"{p}\"");
        let _ = write!(connections, " counter name \"{c}\"");
    }
    lines.push(packets);
    lines.push(format!("ct state new {connections}"));
    // A connection met mid-stream that the rules deny is ended rather than left to stall.
    lines.push(format!("{MID_STREAM} reject with tcp reset"));
    lines.push(format!(
        "counter drop comment {}",
        comment(&format!(
            "{pod}: isolated for {direction} by {}",
            isolated_by.join(", ")
        ))
    ));
    lines
}

/// The address matches of a rule's peers, one per family that has addresses (one empty
/// match for any address); the sets they name are added to `sets`.
fn address_parts(peers: &AddressMatch, sets: &mut NftRules, peer_field: &str) -> Vec<String> {
    match peers {
        AddressMatch::Any => vec![String::new()],
        AddressMatch::Nets { include, except } => [("ip", true), ("ip6", false)]
            .into_iter()
            .filter_map(|(family, v4)| {
                let of_family = |nets: &[IpNet]| -> Vec<IpNet> {
                    nets.iter()
                        .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                        .copied()
                        .collect()
                };
                let include = of_family(include);
                if include.is_empty() {
                    return None;
                }
                let mut part = format!("{family} {peer_field} @{} ", set_name(sets, v4, &include));
                let except = of_family(except);
                if !except.is_empty() {
                    let _ = write!(
                        part,
                        "{family} {peer_field} != @{} ",
                        set_name(sets, v4, &except)
                    );
                }
                Some(part)
            })
            .collect(),
    }
}

/// The nft matches of one compiled rule: one line per address family and protocol.
fn rule_lines(rule: &PlannedRule, address_parts: &[String]) -> Vec<String> {
    let port_parts: Vec<String> = match &rule.ports {
        PortMatch::Any => vec![String::new()],
        PortMatch::Ranges(ranges) => [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .filter_map(|protocol| {
                let of: Vec<&PortRange> =
                    ranges.iter().filter(|r| r.protocol == protocol).collect();
                if of.is_empty() {
                    None
                } else if of.iter().any(|r| r.first == 0 && r.last == u16::MAX) {
                    Some(format!("meta l4proto {protocol} "))
                } else {
                    let list: Vec<String> = of
                        .iter()
                        .map(|r| {
                            if r.first == r.last {
                                r.first.to_string()
                            } else {
                                format!("{}-{}", r.first, r.last)
                            }
                        })
                        .collect();
                    Some(format!("{protocol} dport {{ {} }} ", list.join(", ")))
                }
            })
            .collect(),
    };
    let mut lines = Vec::new();
    for a in address_parts {
        for p in &port_parts {
            lines.push(format!("{a}{p}").trim_end().to_owned());
        }
    }
    lines
}

/// A host address as itself, a network as `addr/len`.
fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// A quoted nft comment, cut to what nftables keeps. Names that reach here are DNS names
/// and label-safe strings, so there is nothing to escape.
fn comment(text: &str) -> String {
    let mut text: String = text.chars().filter(|c| *c != '"').collect();
    if text.len() > COMMENT_MAX {
        let mut cut = COMMENT_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    format!("\"{text}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cluster, Pod, decode_policies};

    fn cluster(policies: &str) -> Cluster {
        let mut cluster = Cluster::new();
        for (name, address) in [("a", "10.65.0.1"), ("b", "10.65.0.2")] {
            cluster.add_pod(Pod {
                namespace: "x".into(),
                name: name.into(),
                node: "n1".into(),
                labels: [("pod".to_owned(), name.to_owned())].into(),
                addresses: vec![address.parse().unwrap()],
                ports: Vec::new(),
                host_interface: format!("wren-{name}"),
            });
        }
        for policy in decode_policies(policies).unwrap() {
            cluster.add_policy(policy);
        }
        cluster
    }

    const FROM_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n";

    #[test]
    fn names_are_stable_and_an_unchanged_plan_needs_no_delta() {
        let rules = cluster(FROM_B).plan_node("n1").nft_rules();
        assert_eq!(rules, cluster(FROM_B).plan_node("n1").nft_rules());
        assert_eq!(rules.delta_script(&rules, TABLE), "");
        // Interface names become identifiers; the map points at the chain.
        assert_eq!(
            rules.ingress.get("wren-a").map(String::as_str),
            Some("ingress_wren_a")
        );
        let chain = &rules.chains["ingress_wren_a"];
        assert_eq!(chain.len(), 5, "{chain:?}");
        assert!(
            chain[0].starts_with("ip saddr @a")
                && chain[0].ends_with("return comment \"x/p spec.ingress[0]\"")
        );
        // What reaches the end is counted for the node and the isolating policy, packets
        // and new connections, then dropped.
        assert!(chain[1].starts_with("counter name \"denied_packets\" counter name \"p"));
        // New connections counted, one met mid-stream reset, and everything dropped.
        assert!(
            chain[2]
                .starts_with("ct state new counter name \"denied_connections\" counter name \"c")
        );
        assert!(!chain[2].contains("drop") && !chain[2].contains("reject"));
        assert_eq!(chain[3], format!("{MID_STREAM} reject with tcp reset"));
        assert!(chain[4].starts_with("counter drop"));
        let policies: Vec<Option<&str>> = rules
            .counters
            .values()
            .map(|c| c.policy.as_deref())
            .collect();
        assert_eq!(policies.iter().filter(|p| **p == Some("x/p")).count(), 2);
        assert_eq!(policies.iter().filter(|p| p.is_none()).count(), 2);
        assert_eq!(rules.sets.len(), 1);
        assert!(
            rules
                .sets
                .values()
                .all(|(kind, elements)| *kind == "ipv4_addr" && elements == "10.65.0.2")
        );
    }

    #[test]
    fn epochs_wrap_inside_the_mask_above_the_reset_bit_and_skip_zero() {
        let first = ConnectionMark::nth(0x00ff_0000, 1).unwrap();
        assert_eq!(first.epoch, 0x0002_0000);
        assert_eq!(first.reset(), 0x0001_0000);
        assert_eq!(
            ConnectionMark::nth(0x00ff_0000, 127).unwrap().epoch,
            0x00fe_0000
        );
        assert_eq!(
            ConnectionMark::nth(0x00ff_0000, 128).unwrap().epoch,
            0x0002_0000
        );
        // No epoch has the reset bit.
        for n in 1..=300 {
            let mark = ConnectionMark::nth(0x00ff_0000, n).unwrap();
            assert_eq!(mark.epoch & mark.reset(), 0, "epoch {n}");
            assert_ne!(mark.epoch, 0, "epoch {n}");
        }
        let whole = ConnectionMark::nth(0xffff_ffff, 3).unwrap();
        assert_eq!((whole.epoch, whole.reset()), (6, 1));
        assert_eq!(ConnectionMark::nth(0x3, 7).unwrap().epoch, 0x2);
        for mask in [0, 0x1, 0x8000_0000, 0x0101, 0xf0f0_0000] {
            assert!(!ConnectionMark::usable_mask(mask), "{mask:#x}");
            assert_eq!(ConnectionMark::nth(mask, 1), None);
        }
    }

    #[test]
    fn the_epoch_is_stamped_after_every_rule_and_a_delta_replaces_it() {
        let mut rules = cluster(FROM_B).plan_node("n1").nft_rules();
        rules.connection_mark = ConnectionMark::nth(0x00ff_0000, 0x17);
        let script = rules.script(TABLE);
        let forward: Vec<&str> = script
            .lines()
            .skip_while(|l| !l.contains("chain forward"))
            .skip(2)
            .take_while(|l| !l.contains('}'))
            .map(str::trim)
            .collect();
        assert_eq!(
            forward,
            [
                "tcp flags & rst != 0 ct mark set ct mark and 0xff00ffff",
                "ct direction reply accept",
                "ct state related accept",
                "ct state new tcp flags & (fin | syn | rst | ack) != syn iifname @ingress_isolated \
                 counter name \"denied_packets\" counter name \"denied_connections\" \
                 reject with tcp reset",
                "oifname vmap @ingress_chains",
                "tcp flags & rst == 0 ct mark set ct mark and 0xff00ffff or 0x002e0000",
            ]
        );
        // The same rules with the next epoch: the delta refills the forward chain only.
        let mut next = rules.clone();
        next.connection_mark = ConnectionMark::nth(0x00ff_0000, 0x18);
        let delta = next.delta_script(&rules, TABLE);
        let lines: Vec<&str> = delta.lines().collect();
        assert_eq!(lines[0], "flush chain inet wren_policy forward");
        assert_eq!(lines.len(), 7, "{delta}");
        assert!(
            lines
                .iter()
                .skip(1)
                .all(|l| l.starts_with("add rule inet wren_policy forward "))
        );
        assert!(lines[6].ends_with("or 0x00300000"), "{delta}");
        // A changed chain and the new epoch go in one transaction, the epoch last.
        let mut changed = cluster(&FROM_B.replace("pod: b}}}]", "pod: a}}}]"))
            .plan_node("n1")
            .nft_rules();
        changed.connection_mark = next.connection_mark;
        let delta = changed.delta_script(&rules, TABLE);
        assert!(delta.contains("flush chain inet wren_policy ingress_wren_a"));
        assert!(delta.trim_end().ends_with("or 0x00300000"), "{delta}");
        // Without a mark nothing is stamped.
        let plain = cluster(FROM_B).plan_node("n1").nft_rules();
        assert!(!plain.script(TABLE).contains("ct mark"));
    }

    #[test]
    fn mid_stream_pickups_of_isolated_pods_are_reset_and_the_sets_follow_the_maps() {
        let one = cluster(FROM_B).plan_node("n1").nft_rules();
        let script = one.script(TABLE);
        assert!(
            script.contains("\tset ingress_isolated { type ifname; elements = { \"wren-a\" } }"),
            "{script}"
        );
        assert!(
            script.contains("\tset egress_isolated { type ifname; }"),
            "{script}"
        );
        // In the forward chain: from a pod isolated for ingress, to one isolated for
        // egress; in the pod's chain, what its rules deny.
        let resets: Vec<&str> = script
            .lines()
            .filter(|l| l.contains("reject with tcp reset"))
            .map(str::trim)
            .collect();
        // No pod is isolated for egress, so no rule looks for one.
        assert_eq!(resets.len(), 2, "{script}");
        assert!(resets[0].starts_with(&format!("{MID_STREAM} iifname @ingress_isolated ")));
        assert!(resets[1].starts_with(MID_STREAM));
        // Without a mark too: a connection conntrack meets mid-stream is never judged
        // from its receiver's side.
        assert!(one.connection_mark.is_none());
        // A second isolated pod joins the set, and leaves it again.
        let both = cluster(&FROM_B.replace("matchLabels: {pod: a}", ""))
            .plan_node("n1")
            .nft_rules();
        assert_eq!(both.ingress.len(), 2);
        let grow = both.delta_script(&one, TABLE);
        assert!(
            grow.contains("add element inet wren_policy ingress_isolated { \"wren-b\" }"),
            "{grow}"
        );
        assert!(!grow.contains("egress_isolated"), "{grow}");
        let shrink = one.delta_script(&both, TABLE);
        assert!(
            shrink.contains("delete element inet wren_policy ingress_isolated { \"wren-b\" }"),
            "{shrink}"
        );
    }

    #[test]
    fn the_forward_chain_looks_up_only_the_directions_some_pod_is_isolated_in() {
        const TO_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]\n";
        let ingress_only = cluster(FROM_B).plan_node("n1").nft_rules();
        let both = cluster(&format!("{FROM_B}---\n{TO_B}"))
            .plan_node("n1")
            .nft_rules();
        assert_eq!(both.egress.len(), 1);
        let lookups = |rules: &NftRules| {
            rules
                .forward_rules()
                .into_iter()
                .filter(|l| l.contains("ifname"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lookups(&ingress_only).len(),
            2,
            "{:?}",
            lookups(&ingress_only)
        );
        assert!(lookups(&ingress_only).iter().all(|l| !l.contains("egress")));
        assert_eq!(lookups(&both).len(), 4, "{:?}", lookups(&both));
        // The first pod isolated for egress brings its lookups into the forward chain in
        // the same transaction as its chain and map entry, without a new epoch; the last
        // one freed takes them out again.
        assert!(both.connection_mark.is_none());
        let grow = both.delta_script(&ingress_only, TABLE);
        assert!(
            grow.contains("add rule inet wren_policy forward iifname vmap @egress_chains"),
            "{grow}"
        );
        assert!(
            grow.find("add element inet wren_policy egress_chains")
                < grow.find("flush chain inet wren_policy forward"),
            "{grow}"
        );
        let shrink = ingress_only.delta_script(&both, TABLE);
        assert!(
            shrink.contains("flush chain inet wren_policy forward"),
            "{shrink}"
        );
        assert!(!shrink.contains("forward iifname vmap"), "{shrink}");
        // Nothing isolated at all: replies, related packets, and nothing to look up.
        let none = NftRules::default();
        assert!(lookups(&none).is_empty());
    }

    #[test]
    fn a_delta_adds_before_it_removes() {
        let before = cluster(FROM_B).plan_node("n1").nft_rules();
        let after = cluster(&FROM_B.replace("pod: b}}}]", "pod: a}}}]"))
            .plan_node("n1")
            .nft_rules();
        let delta = after.delta_script(&before, TABLE);
        let lines: Vec<&str> = delta.lines().collect();
        let position = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}: {delta}"))
        };
        assert!(position("add set") < position("flush chain inet wren_policy ingress_wren_a"));
        assert!(position("flush chain") < position("delete set"));
        assert!(
            !delta.contains(" element inet"),
            "no map entry changed: {delta}"
        );
    }
}
