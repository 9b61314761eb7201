//! A [`NodePlan`] as an `nft -f` script: one table, replaced whole in one transaction.
//!
//! ```text
//! table inet wren_policy {
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ct state related accept           # ICMP errors of tracked connections
//!         ct direction reply accept         # replies of connections let through
//!         iifname vmap { "wren…" : jump e0_egress, … }     # from an isolated pod
//!         oifname vmap { "wren…" : jump e0_ingress, … }    # to an isolated pod
//!     }
//!     set a0 { type ipv4_addr; flags interval; elements = { 10.65.1.4, 10.65.2.0/31 } }
//!     chain e0_ingress {
//!         ip saddr @a0 tcp dport { 80, 8000-8080 } return comment "y/web spec.ingress[0]"
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
//! - The table is the only thing wren writes, and an `accept` in it does not override
//!   another table's drop: a host firewall keeps its say.

use std::collections::HashMap;
use std::fmt::Write;

use ipnet::IpNet;

use crate::model::Protocol;
use crate::plan::{AddressMatch, DirectionPlan, NodePlan, PlannedRule, PortMatch, PortRange};

/// The nftables table wren's policy rules live in.
pub const TABLE: &str = "wren_policy";

/// Longest comment nftables keeps on a rule.
const COMMENT_MAX: usize = 127;

impl NodePlan {
    /// The plan as an `nft -f` script that replaces `inet <table>` atomically (creating it
    /// the first time).
    pub fn nft_script(&self, table: &str) -> String {
        let mut sets = Sets::default();
        let mut chains = String::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            for (suffix, plan, peer_field) in [
                ("egress", &endpoint.egress, "daddr"),
                ("ingress", &endpoint.ingress, "saddr"),
            ] {
                if let Some(plan) = plan {
                    let _ = writeln!(chains, "\tchain e{i}_{suffix} {{");
                    render_direction(
                        &mut chains,
                        &mut sets,
                        plan,
                        peer_field,
                        &endpoint.pod,
                        suffix,
                    );
                    chains.push_str("\t}\n");
                }
            }
        }
        let mut s = String::new();
        // Declaring the table before deleting it makes the delete valid on a first run;
        // both happen in the one transaction that also creates the new table.
        let _ = writeln!(s, "table inet {table}\ndelete table inet {table}");
        let _ = writeln!(s, "table inet {table} {{");
        s.push_str(&sets.declarations);
        s.push_str("\tchain forward {\n");
        s.push_str("\t\ttype filter hook forward priority filter; policy accept;\n");
        s.push_str("\t\tct state related accept\n");
        s.push_str("\t\tct direction reply accept\n");
        for (keyword, suffix, egress) in
            [("iifname", "egress", true), ("oifname", "ingress", false)]
        {
            let entries: Vec<String> = self
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    if egress {
                        e.egress.is_some()
                    } else {
                        e.ingress.is_some()
                    }
                })
                .map(|(i, e)| format!("\"{}\" : jump e{i}_{suffix}", e.interface))
                .collect();
            if !entries.is_empty() {
                let _ = writeln!(s, "\t\t{keyword} vmap {{ {} }}", entries.join(", "));
            }
        }
        s.push_str("\t}\n");
        s.push_str(&chains);
        s.push_str("}\n");
        s
    }

    /// A script that removes `inet <table>` (and does not fail when it is absent).
    pub fn nft_remove_script(table: &str) -> String {
        format!("table inet {table}\ndelete table inet {table}\n")
    }
}

/// The named address sets of a table, one per distinct content and family.
#[derive(Default)]
struct Sets {
    names: HashMap<(bool, Vec<IpNet>), String>,
    declarations: String,
}

impl Sets {
    /// The name of the set holding `nets` (all of one family), declared on first use.
    fn name(&mut self, v4: bool, nets: Vec<IpNet>) -> String {
        let next = self.names.len();
        let declarations = &mut self.declarations;
        self.names
            .entry((v4, nets))
            .or_insert_with_key(|(v4, nets)| {
                let name = format!("a{next}");
                let elements: Vec<String> = nets.iter().map(net_text).collect();
                let _ = writeln!(
                    declarations,
                    "\tset {name} {{ type {}; flags interval; elements = {{ {} }} }}",
                    if *v4 { "ipv4_addr" } else { "ipv6_addr" },
                    elements.join(", ")
                );
                name
            })
            .clone()
    }
}

fn render_direction(
    s: &mut String,
    sets: &mut Sets,
    plan: &DirectionPlan,
    peer_field: &str,
    pod: &str,
    direction: &str,
) {
    for rule in &plan.rules {
        for line in rule_lines(rule, sets, peer_field) {
            let _ = writeln!(
                s,
                "\t\t{line} return comment {}",
                comment(&rule.rule.to_string())
            );
        }
    }
    let isolated_by: Vec<String> = plan.isolated_by.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        s,
        "\t\tcounter drop comment {}",
        comment(&format!(
            "{pod}: isolated for {direction} by {}",
            isolated_by.join(", ")
        ))
    );
}

/// The nft matches of one compiled rule: one line per address family and protocol.
fn rule_lines(rule: &PlannedRule, sets: &mut Sets, peer_field: &str) -> Vec<String> {
    let address_parts: Vec<String> = match rule.peers.as_ref() {
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
                let mut part = format!("{family} {peer_field} @{} ", sets.name(v4, include));
                let except = of_family(except);
                if !except.is_empty() {
                    let _ = write!(part, "{family} {peer_field} != @{} ", sets.name(v4, except));
                }
                Some(part)
            })
            .collect(),
    };
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
    for a in &address_parts {
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
