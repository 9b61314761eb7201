//! The agent's status document (`GET /v1/status` on the local socket) and its table form
//! (`wren status`), in the manner of `calicoctl node status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::mesh::PeerKind;

/// What `/readyz` checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// The datastore answered the last request.
    pub datastore: bool,
    /// `nodes/<name>` is written and the liveness lease is held.
    pub registered: bool,
    /// Every BGP peer sent End-of-RIB, or the sync deadline passed.
    pub bgp_synced: bool,
    /// Every tunnel a pool in use needs can be made on this kernel.
    #[serde(default = "yes")]
    pub encapsulation: bool,
    /// Why the datastore is not trusted to hold this cluster's data (it lost it, or holds
    /// another cluster's); `None` when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_data: Option<String>,
}

fn yes() -> bool {
    true
}

impl Readiness {
    /// Ready when every check passes.
    pub fn ready(&self) -> bool {
        self.datastore
            && self.registered
            && self.bgp_synced
            && self.encapsulation
            && self.cluster_data.is_none()
    }

    /// The failing checks that stop the node from taking new pods, in words: without the
    /// datastore or its registration an ADD cannot allocate; BGP and tunnels only delay the
    /// pod's routes, so pods are still taken while they settle.
    pub fn blocking_pods(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if !self.datastore {
            out.push("datastore unreachable".into());
        }
        if !self.registered {
            out.push("node not registered".into());
        }
        out
    }

    /// The checks that fail, in words.
    pub fn failing(&self) -> Vec<String> {
        let mut out = self.blocking_pods();
        if !self.bgp_synced {
            out.push("BGP not synced".into());
        }
        if !self.encapsulation {
            out.push("a pool needs IPIP, which this kernel lacks (see `wren status`)".into());
        }
        if let Some(why) = &self.cluster_data {
            out.push(why.clone());
        }
        out
    }
}

/// One BGP session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Node or `peers/` entry the session comes from.
    pub name: String,
    /// The peer's address.
    pub address: IpAddr,
    /// The peer's AS.
    pub asn: u32,
    /// Why the session exists.
    pub kind: PeerKind,
    /// FSM state (`Established`, `Active`, `Connect`, `Idle`, …).
    pub state: String,
    /// Seconds since the session entered its state, when known.
    pub since_secs: Option<u64>,
    /// Prefixes accepted from the peer.
    pub prefixes_received: u64,
    /// Prefixes of the peer's held back by import limits, by reason (`pool`, `node
    /// address`, `default route`).
    #[serde(default)]
    pub prefixes_filtered: BTreeMap<String, u64>,
    /// Prefixes announced to the peer.
    pub prefixes_sent: u64,
    /// The last error (NOTIFICATION sent or received, connection failure).
    pub last_error: Option<String>,
    /// The import filter in one line (`rejects everything`, `2 rules, else accept`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_filter: Option<String>,
    /// The export filter in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_filter: Option<String>,
    /// The session's BFD, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<super::bfd::BfdStatus>,
    /// The AS the node speaks on the session, when the peer has its own (`localAsNumber`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_as: Option<u32>,
    /// The hold and keepalive time in force, while Established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<super::bgp::SessionTimers>,
}

/// The whole status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Node name.
    pub node: String,
    /// The node's IPv4 address.
    pub ipv4: Option<Ipv4Net>,
    /// The node's IPv6 address.
    pub ipv6: Option<Ipv6Net>,
    /// The AS this node speaks.
    pub as_number: u32,
    /// Set on route reflectors.
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// Whether the node-to-node mesh is on.
    pub node_to_node_mesh: bool,
    /// Readiness checks.
    pub readiness: Readiness,
    /// Blocks affine to this node.
    pub blocks: Vec<IpNet>,
    /// Addresses borrowed from other nodes' blocks.
    pub borrowed: Vec<IpNet>,
    /// Routes the agent wants in the kernel.
    pub routes_desired: usize,
    /// The last reconcile error, if the last pass failed.
    pub last_reconcile_error: Option<String>,
    /// BGP sessions, by address.
    pub peers: Vec<PeerStatus>,
    /// Tunnels, MTUs and outgoing NAT.
    #[serde(default)]
    pub encapsulation: super::encap::EncapStatus,
    /// The BPF fast path.
    #[serde(default)]
    pub fast_path: super::fastpath::FastPathStatus,
    /// Network policy on this node.
    #[serde(default)]
    pub network_policy: crate::dataplane::program::policy::PolicyStatus,
    /// The wanted routes over several equal paths at once (ECMP), every next hop named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multipath_routes: Vec<MultipathRoute>,
}

/// A route over several equal paths (ECMP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultipathRoute {
    /// The destination.
    pub prefix: IpNet,
    /// Every next hop, in address order.
    pub next_hops: Vec<IpAddr>,
}

impl MultipathRoute {
    /// The multipath routes among `routes`.
    pub fn of<'r>(routes: impl IntoIterator<Item = &'r crate::dataplane::Route>) -> Vec<Self> {
        routes
            .into_iter()
            .filter_map(|r| match &r.next_hop {
                crate::dataplane::NextHop::Multipath(all) => Some(MultipathRoute {
                    prefix: r.dst,
                    next_hops: all.as_slice().iter().map(|g| g.via).collect(),
                }),
                _ => None,
            })
            .collect()
    }
}

/// Multipath routes `wren status` lists before it says how many more there are.
const MULTIPATH_SHOWN: usize = 20;

/// `1h2m`, `3m4s`, `12s`: short enough for a table column.
pub fn format_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Lays rows out in columns separated by two spaces, with a header row.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `0`, or the total with its reasons: `3 (pool 2, default route 1)`.
fn filtered_cell(filtered: &BTreeMap<String, u64>) -> String {
    let total: u64 = filtered.values().sum();
    if total == 0 {
        return "0".into();
    }
    let reasons: Vec<String> = filtered.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!("{total} ({})", reasons.join(", "))
}

impl AgentStatus {
    /// The human-readable form printed by `wren status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ready = if self.readiness.ready() {
            "ready".to_owned()
        } else {
            format!("not ready ({})", self.readiness.failing().join(", "))
        };
        let _ = writeln!(out, "wren agent on {}: {ready}", self.node);
        let addrs: Vec<String> = self
            .ipv4
            .map(|n| n.to_string())
            .into_iter()
            .chain(self.ipv6.map(|n| n.to_string()))
            .collect();
        let _ = writeln!(
            out,
            "Addresses: {}",
            if addrs.is_empty() {
                "-".into()
            } else {
                addrs.join(", ")
            }
        );
        let mut asn = format!("AS {}", self.as_number);
        if let Some(id) = self.route_reflector_cluster_id {
            let _ = write!(asn, ", route reflector (cluster id {id})");
        }
        let mesh = if self.node_to_node_mesh { "on" } else { "off" };
        let _ = writeln!(out, "BGP: {asn}, node-to-node mesh {mesh}");
        let blocks: Vec<String> = self.blocks.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "Blocks: {}",
            if blocks.is_empty() {
                "none".into()
            } else {
                blocks.join(", ")
            }
        );
        if !self.borrowed.is_empty() {
            let borrowed: Vec<String> = self.borrowed.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "Borrowed: {}", borrowed.join(", "));
        }
        let _ = write!(out, "Kernel routes: {} desired", self.routes_desired);
        match &self.last_reconcile_error {
            Some(e) => {
                let _ = writeln!(out, ", last reconcile failed: {e}");
            }
            None => out.push('\n'),
        }
        for route in self.multipath_routes.iter().take(MULTIPATH_SHOWN) {
            let hops: Vec<String> = route.next_hops.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "Multipath: {} via {}", route.prefix, hops.join(", "));
        }
        if self.multipath_routes.len() > MULTIPATH_SHOWN {
            let more = self.multipath_routes.len() - MULTIPATH_SHOWN;
            let _ = writeln!(
                out,
                "Multipath: {more} more (wren status -o json lists them)"
            );
        }
        if self.encapsulation != super::encap::EncapStatus::default() {
            out.push_str(&self.encapsulation.render());
        }
        out.push_str(&self.fast_path.render());
        out.push_str(&self.network_policy.render());
        out.push('\n');
        if self.peers.is_empty() {
            out.push_str("No BGP peers.\n");
            return out;
        }
        let rows: Vec<Vec<String>> = self
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.address.to_string(),
                    p.kind.as_str().to_owned(),
                    match p.local_as {
                        Some(local) => format!("{} (local {local})", p.asn),
                        None => p.asn.to_string(),
                    },
                    p.state.clone(),
                    p.since_secs.map(format_age).unwrap_or_else(|| "-".into()),
                    p.prefixes_received.to_string(),
                    filtered_cell(&p.prefixes_filtered),
                    p.prefixes_sent.to_string(),
                    p.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "PEER ADDRESS",
                "TYPE",
                "AS",
                "STATE",
                "SINCE",
                "IN",
                "FILTERED",
                "OUT",
                "LAST ERROR",
            ],
            &rows,
        ));
        for p in &self.peers {
            let filters: Vec<String> = [("import", &p.import_filter), ("export", &p.export_filter)]
                .into_iter()
                .filter_map(|(way, f)| Some(format!("{way} {}", f.as_ref()?)))
                .collect();
            if !filters.is_empty() {
                let _ = writeln!(out, "Filters of {}: {}", p.address, filters.join("; "));
            }
            // An explicit peer's timers may be its own (holdTime, keepaliveTimeSecs).
            if let (Some(t), PeerKind::Global | PeerKind::NodeSpecific) = (p.timers, p.kind) {
                let _ = writeln!(
                    out,
                    "Timers of {}: hold {} s, keepalive {} s",
                    p.address, t.hold_time_secs, t.keepalive_time_secs
                );
            }
        }
        out.push_str(&render_bfd(&self.peers));
        out
    }
}

/// The BFD sessions' table, after the BGP one; empty when no session runs BFD.
fn render_bfd(peers: &[PeerStatus]) -> String {
    let rows: Vec<Vec<String>> = peers
        .iter()
        .filter_map(|p| {
            let b = p.bfd.as_ref()?;
            let c = &b.configured;
            Some(vec![
                p.address.to_string(),
                b.state.clone(),
                format_age(b.since_secs),
                format!(
                    "{}/{} ms x{}",
                    c.transmit_interval_ms, c.receive_interval_ms, c.multiplier
                ),
                b.detection_time_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_else(|| "-".into()),
                b.remote_state.clone(),
                b.diagnostic.clone(),
                b.packets_sent.to_string(),
                b.packets_received.to_string(),
                b.ups.to_string(),
                b.downs.to_string(),
            ])
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n");
    out.push_str(&table(
        &[
            "BFD PEER",
            "STATE",
            "SINCE",
            "TX/RX xMULT",
            "DETECT",
            "REMOTE",
            "LAST DIAGNOSTIC",
            "SENT",
            "RECEIVED",
            "UPS",
            "DOWNS",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_node_status() {
        let s = AgentStatus {
            node: "n1".into(),
            ipv4: Some("10.0.0.1/24".parse().unwrap()),
            ipv6: None,
            as_number: 64512,
            route_reflector_cluster_id: None,
            node_to_node_mesh: true,
            readiness: Readiness {
                datastore: true,
                registered: true,
                bgp_synced: false,
                encapsulation: true,
                cluster_data: None,
            },
            blocks: vec!["10.65.0.0/26".parse().unwrap()],
            borrowed: vec![],
            routes_desired: 3,
            last_reconcile_error: None,
            peers: vec![
                PeerStatus {
                    name: "n2".into(),
                    address: "10.0.0.2".parse().unwrap(),
                    asn: 64512,
                    kind: PeerKind::NodeMesh,
                    state: "Established".into(),
                    since_secs: Some(125),
                    prefixes_received: 1,
                    prefixes_filtered: BTreeMap::new(),
                    prefixes_sent: 1,
                    last_error: None,
                    import_filter: None,
                    export_filter: None,
                    bfd: None,
                    local_as: None,
                    timers: Some(super::super::bgp::SessionTimers {
                        hold_time_secs: 90,
                        keepalive_time_secs: 30,
                    }),
                },
                PeerStatus {
                    name: "tor".into(),
                    address: "10.0.0.254".parse().unwrap(),
                    asn: 65000,
                    kind: PeerKind::Global,
                    state: "Active".into(),
                    since_secs: None,
                    prefixes_received: 0,
                    prefixes_filtered: [("default route".to_owned(), 1), ("pool".to_owned(), 2)]
                        .into(),
                    prefixes_sent: 0,
                    last_error: Some("connection refused".into()),
                    import_filter: Some("rejects everything".into()),
                    export_filter: Some("1 rule, else accept".into()),
                    local_as: Some(4_200_000_001),
                    timers: None,
                    bfd: Some(super::super::bfd::BfdStatus {
                        state: "Down".into(),
                        since_secs: 3,
                        remote_state: "Up".into(),
                        diagnostic: "Control Detection Time Expired".into(),
                        remote_diagnostic: "No Diagnostic".into(),
                        detection_time_ms: Some(900),
                        configured: wren_model::Bfd::default(),
                        packets_sent: 40,
                        packets_received: 38,
                        ups: 1,
                        downs: 1,
                    }),
                },
            ],
            encapsulation: Default::default(),
            fast_path: Default::default(),
            network_policy: Default::default(),
            multipath_routes: vec![MultipathRoute {
                prefix: "10.99.0.0/24".parse().unwrap(),
                next_hops: vec![
                    "10.77.0.251".parse().unwrap(),
                    "10.77.0.252".parse().unwrap(),
                ],
            }],
        };
        let text = s.render();
        assert!(
            text.starts_with("wren agent on n1: not ready (BGP not synced)\n"),
            "{text}"
        );
        assert!(text.contains("Blocks: 10.65.0.0/26"), "{text}");
        assert!(
            text.contains("Multipath: 10.99.0.0/24 via 10.77.0.251, 10.77.0.252\n"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("PEER ADDRESS"))
            .unwrap();
        assert!(
            lines[header + 1].starts_with("10.0.0.2      node-mesh  64512   ")
                && lines[header + 1].contains("   Established  2m5s   1   0  "),
            "{text}"
        );
        // A session with its own local AS says so beside the peer's.
        assert!(
            lines[header + 2].contains("  65000 (local 4200000001)  Active"),
            "{text}"
        );
        assert!(
            !text.contains("Timers of 10.0.0.2"),
            "a node session runs the defaults: {text}"
        );
        assert!(
            lines[header + 2].contains("Active")
                && lines[header + 2].contains("  3 (default route 1, pool 2)  0  ")
                && lines[header + 2].ends_with("connection refused"),
            "{text}"
        );
        // Columns line up: every row starts its TYPE at the same offset.
        let col = lines[header].find("TYPE").unwrap();
        assert_eq!(lines[header + 2].find("global"), Some(col));
        // A peer's filters follow the table, a filter that lets nothing through said so.
        assert_eq!(
            lines[header + 3],
            "Filters of 10.0.0.254: import rejects everything; export 1 rule, else accept"
        );
        // Only the session that runs BFD has a row in the BFD table.
        let bfd = lines
            .iter()
            .position(|l| l.starts_with("BFD PEER"))
            .unwrap();
        assert_eq!(lines.len(), bfd + 2, "{text}");
        let row: Vec<&str> = lines[bfd + 1]
            .split("  ")
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            row.iter().map(|c| c.trim()).collect::<Vec<_>>(),
            [
                "10.0.0.254",
                "Down",
                "3s",
                "300/300 ms x3",
                "900 ms",
                "Up",
                "Control Detection Time Expired",
                "40",
                "38",
                "1",
                "1"
            ],
            "{text}"
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(format_age(5), "5s");
        assert_eq!(format_age(65), "1m5s");
        assert_eq!(format_age(3700), "1h1m");
        assert_eq!(format_age(90_000), "1d1h");
    }
}
