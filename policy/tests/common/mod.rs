//! The upstream e2e tests' world: namespaces x, y, z with pods a, b, c each (labels
//! `ns: <ns>` and `pod: <pod>`), spread over nodes n1, n2, n3, every pod dual stack and
//! serving TCP and UDP on ports 80 and 81 under the names `serve-<port>-<proto>`.

#![allow(dead_code)]

use std::fmt::Write;
use std::net::IpAddr;

use wren_policy::{Cluster, Flow, Labels, NamedPort, Pod, Protocol, decode_policies};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// The (port, protocol) columns every case probes.
pub const PORTS: [(u16, Protocol); 4] = [
    (80, Protocol::Tcp),
    (81, Protocol::Tcp),
    (80, Protocol::Udp),
    (81, Protocol::Udp),
];

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The pod `ns/pod` with its addresses (`10.65.<n>.<p>`, `fd00:65::<n>:<p>`) on the node
/// picked by its position.
pub fn pod(ns_index: usize, pod_index: usize, name: &str) -> Pod {
    let ns = NAMESPACES[ns_index];
    let n = ns_index + 1;
    let p = pod_index + 1;
    let mut ports = Vec::new();
    for (port, protocol) in PORTS {
        ports.push(NamedPort {
            name: format!("serve-{port}-{protocol}"),
            protocol,
            port,
        });
    }
    Pod {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        node: NODES[(ns_index + pod_index) % 3].to_owned(),
        labels: labels(&[("ns", ns), ("pod", name)]),
        addresses: vec![
            format!("10.65.{n}.{p}").parse().unwrap(),
            format!("fd00:65::{n}:{p}").parse().unwrap(),
        ],
        ports,
        host_interface: format!("wren{ns}{name}"),
    }
}

/// The 3 × 3 world with no policy; each node's own address is `192.168.0.<node>`.
pub fn world() -> Cluster {
    let mut cluster = Cluster::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        cluster.set_namespace(ns, labels(&[("ns", ns)]));
        for (p, name) in PODS.iter().enumerate() {
            cluster.add_pod(pod(n, p, name));
        }
    }
    for (i, node) in NODES.iter().enumerate() {
        cluster.set_node_addresses(node, vec![format!("192.168.0.{}", i + 1).parse().unwrap()]);
    }
    cluster
}

/// Applies every policy in `yaml` to the cluster.
pub fn apply(cluster: &mut Cluster, yaml: &str) {
    for policy in decode_policies(yaml).unwrap_or_else(|e| panic!("{e}")) {
        cluster.add_policy(policy);
    }
}

/// Every pod's `ns/pod`, in table order.
pub fn pod_ids(cluster: &Cluster) -> Vec<String> {
    let mut ids: Vec<String> = cluster.pods().iter().map(Pod::id).collect();
    ids.sort();
    ids
}

/// A whole table: for each (port, protocol) a grid of source rows and destination
/// columns; `true` is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub pods: Vec<String>,
    /// `cells[port][source][destination]`
    pub cells: Vec<Vec<Vec<bool>>>,
}

impl Table {
    /// The table `probe` fills.
    pub fn probe(
        pods: &[String],
        mut probe: impl FnMut(&str, &str, u16, Protocol) -> bool,
    ) -> Self {
        let cells = PORTS
            .iter()
            .map(|&(port, protocol)| {
                pods.iter()
                    .map(|s| pods.iter().map(|d| probe(s, d, port, protocol)).collect())
                    .collect()
            })
            .collect();
        Table {
            pods: pods.to_vec(),
            cells,
        }
    }

    /// The table with `.` for reachable, `X` for not, and `*` where it differs from `other`.
    pub fn render(&self, other: &Table) -> String {
        let mut s = String::new();
        for (k, (port, protocol)) in PORTS.iter().enumerate() {
            let _ = write!(s, "{protocol}/{port:<3}");
            for d in &self.pods {
                let _ = write!(s, " {d:>4}");
            }
            s.push('\n');
            for (i, src) in self.pods.iter().enumerate() {
                let _ = write!(s, "{src:<7}");
                for j in 0..self.pods.len() {
                    let mark = match (
                        self.cells[k][i][j],
                        self.cells[k][i][j] == other.cells[k][i][j],
                    ) {
                        (_, false) => "*",
                        (true, true) => ".",
                        (false, true) => "X",
                    };
                    let _ = write!(s, " {mark:>4}");
                }
                s.push('\n');
            }
        }
        s
    }
}

/// Asserts that the tables agree, printing both (differences marked `*`).
pub fn assert_tables(case: &str, expected: &Table, observed: &Table) {
    assert!(
        expected == observed,
        "{case}: the observed table differs from the expected one\nexpected:\n{}\nobserved:\n{}",
        expected.render(observed),
        observed.render(expected)
    );
}

/// The two pods of a cell and their addresses of one family.
fn cell<'a>(
    cluster: &'a Cluster,
    src: &str,
    dst: &str,
    v6: bool,
) -> (&'a Pod, &'a Pod, IpAddr, IpAddr) {
    let find = |id: &str| {
        let (ns, pod) = id.split_once('/').unwrap();
        cluster.pod(ns, pod).unwrap()
    };
    let (s, d) = (find(src), find(dst));
    let from = *s.addresses.iter().find(|a| a.is_ipv6() == v6).unwrap();
    let to = d.address_like(from).unwrap();
    (s, d, from, to)
}

/// The verdict of the semantics on one cell, over IPv6 when `v6`, else IPv4.
pub fn semantic(
    cluster: &Cluster,
    src: &str,
    dst: &str,
    port: u16,
    protocol: Protocol,
    v6: bool,
) -> bool {
    let (s, d, from, to) = cell(cluster, src, dst, v6);
    let flow = Flow {
        source: wren_policy::Party {
            address: from,
            pod: Some(s),
        },
        destination: wren_policy::Party {
            address: to,
            pod: Some(d),
        },
        port: Some((protocol, port)),
    };
    cluster.verdict(&flow).allowed()
}

/// The verdict of the compiled plans on one cell: the source node's egress chain of the
/// source, then the destination node's ingress chain of the destination.
pub fn compiled(
    cluster: &Cluster,
    src: &str,
    dst: &str,
    port: u16,
    protocol: Protocol,
    v6: bool,
) -> bool {
    // A pod's traffic to itself never leaves it: no node's rules meet it.
    if src == dst {
        return true;
    }
    let (s, d, from, to) = cell(cluster, src, dst, v6);
    let egress_ok = cluster
        .plan_node(&s.node)
        .endpoints
        .iter()
        .find(|e| e.interface == s.host_interface)
        .and_then(|e| e.egress.as_ref())
        .is_none_or(|plan| plan.admits(to, protocol, port).is_some());
    let ingress_ok = cluster
        .plan_node(&d.node)
        .endpoints
        .iter()
        .find(|e| e.interface == d.host_interface)
        .and_then(|e| e.ingress.as_ref())
        .is_none_or(|plan| plan.admits(from, protocol, port).is_some());
    egress_ok && ingress_ok
}
