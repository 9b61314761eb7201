//! The per-node plans, rendered for `nft -f` and loaded into two node namespaces, against
//! real TCP and UDP traffic over IPv4 and IPv6: pods on two nodes, each node enforcing its
//! own pods' egress and ingress; the observed table must be the semantics' table. Then a
//! policy changes while connections are open: the ones it no longer allows stop, the ones
//! it still allows go on.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Table, apply, assert_tables, labels};
use wren_policy::nft::NftRules;
use wren_policy::nft::TABLE;
use wren_policy::{Cluster, Flow, NamedPort, Party, Pod, Protocol};
use wren_tests::netns::{NetNs, run_with_input};
use wren_tests::prereq;

/// How long a probe waits before it calls a cell unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);
/// How long a probe waits the second time, for a cell expected to be reachable that did
/// not answer in time (a loaded machine), and for answers that must come.
const PATIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The MAC of the node side of every pod's interface (wren's gateway MAC).
const GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// One pod: its namespace, its place in the cluster.
struct TestPod {
    ns: NetNs,
    pod: Pod,
}

/// Two nodes joined by a link, two pods on each (x/a, x/b on n1; y/a, y/b on n2), every
/// pod serving TCP and UDP echo on ports 80 and 81 of both families.
struct Lab {
    nodes: Vec<NetNs>,
    pods: Vec<TestPod>,
    /// What each node's table holds, once loaded: the next change is a delta from it.
    loaded: std::cell::RefCell<Vec<Option<NftRules>>>,
}

fn sysctl(ns: &NetNs, setting: &str) {
    ns.exec("sysctl", &["-qw", setting]).unwrap();
}

impl Lab {
    fn new() -> Lab {
        let nodes: Vec<NetNs> = (1..=2)
            .map(|i| NetNs::new(&format!("pol-n{i}")).unwrap())
            .collect();
        for node in &nodes {
            sysctl(node, "net.ipv4.ip_forward=1");
            sysctl(node, "net.ipv6.conf.all.forwarding=1");
            sysctl(node, "net.ipv6.conf.default.accept_dad=0");
        }
        nodes[0]
            .veth(
                "up0",
                Some("192.168.77.1/24"),
                &nodes[1],
                "up0",
                Some("192.168.77.2/24"),
            )
            .unwrap();
        // Every neighbour is a permanent entry with a fixed MAC, as wren makes them for pods:
        // the kernel's neighbour table is shared by every namespace of the machine, and a
        // machine full of other namespaces' entries would refuse new ones that are learnt.
        let up_mac = |node: usize| format!("02:00:00:77:00:0{node}");
        for (i, node) in nodes.iter().enumerate() {
            node.ip(&["link", "set", "up0", "address", &up_mac(i + 1)])
                .unwrap();
        }
        for (i, node) in nodes.iter().enumerate() {
            let me = i + 1;
            let other = 2 - i;
            let mac = up_mac(other);
            for address in [format!("192.168.77.{other}"), format!("fd77::{other}")] {
                node.ip(&[
                    "neigh",
                    "replace",
                    &address,
                    "lladdr",
                    &mac,
                    "dev",
                    "up0",
                    "nud",
                    "permanent",
                ])
                .unwrap();
            }
            node.ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd77::{me}/64"),
                "dev",
                "up0",
                "nodad",
            ])
            .unwrap();
            node.ip(&[
                "route",
                "add",
                &format!("10.65.{other}.0/24"),
                "via",
                &format!("192.168.77.{other}"),
            ])
            .unwrap();
            node.ip(&[
                "-6",
                "route",
                "add",
                &format!("fd00:65::{other}:0/112"),
                "via",
                &format!("fd77::{other}"),
            ])
            .unwrap();
        }
        let mut pods = Vec::new();
        for (n, (namespace, node)) in [("x", 0usize), ("y", 1usize)].into_iter().enumerate() {
            for (p, name) in ["a", "b"].into_iter().enumerate() {
                let (v4, v6) = (
                    format!("10.65.{}.{}", n + 1, p + 1),
                    format!("fd00:65::{}:{}", n + 1, p + 1),
                );
                let ns = NetNs::new(&format!("pol-{namespace}{name}")).unwrap();
                sysctl(&ns, "net.ipv6.conf.default.accept_dad=0");
                let host_if = format!("wren{namespace}{name}{}", std::process::id() % 10000);
                nodes[node]
                    .veth(&host_if, Some("169.254.1.1/32"), &ns, "eth0", None)
                    .unwrap();
                let pod_mac = format!("02:00:00:00:0{}:0{}", n + 1, p + 1);
                nodes[node]
                    .ip(&["link", "set", &host_if, "address", GATEWAY_MAC])
                    .unwrap();
                ns.ip(&["link", "set", "eth0", "address", &pod_mac])
                    .unwrap();
                for address in ["169.254.1.1", "fe80::1"] {
                    ns.ip(&[
                        "neigh",
                        "replace",
                        address,
                        "lladdr",
                        GATEWAY_MAC,
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    ])
                    .unwrap();
                }
                for address in [&v4, &v6] {
                    nodes[node]
                        .ip(&[
                            "neigh",
                            "replace",
                            address,
                            "lladdr",
                            &pod_mac,
                            "dev",
                            &host_if,
                            "nud",
                            "permanent",
                        ])
                        .unwrap();
                }
                nodes[node]
                    .ip(&["-6", "addr", "add", "fe80::1/64", "dev", &host_if, "nodad"])
                    .unwrap();
                nodes[node]
                    .ip(&["route", "add", &format!("{v4}/32"), "dev", &host_if])
                    .unwrap();
                nodes[node]
                    .ip(&["-6", "route", "add", &format!("{v6}/128"), "dev", &host_if])
                    .unwrap();
                ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"])
                    .unwrap();
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/128"),
                    "dev",
                    "eth0",
                    "nodad",
                ])
                .unwrap();
                ns.ip(&[
                    "route",
                    "add",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ])
                .unwrap();
                ns.ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    "169.254.1.1",
                    "dev",
                    "eth0",
                ])
                .unwrap();
                ns.ip(&[
                    "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
                ])
                .unwrap();
                serve(&ns);
                let ports = [
                    (80, Protocol::Tcp),
                    (81, Protocol::Tcp),
                    (80, Protocol::Udp),
                    (81, Protocol::Udp),
                ]
                .into_iter()
                .map(|(port, protocol)| NamedPort {
                    name: format!("serve-{port}-{protocol}"),
                    protocol,
                    port,
                })
                .collect();
                let pod = Pod {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    node: format!("n{}", node + 1),
                    labels: labels(&[("ns", namespace), ("pod", name)]),
                    addresses: vec![v4.parse().unwrap(), v6.parse().unwrap()],
                    ports,
                    host_interface: host_if,
                };
                pods.push(TestPod { ns, pod });
            }
        }
        Lab {
            nodes,
            pods,
            loaded: std::cell::RefCell::new(vec![None, None]),
        }
    }

    fn cluster(&self) -> Cluster {
        let mut cluster = Cluster::new();
        for ns in ["x", "y"] {
            cluster.set_namespace(ns, labels(&[("ns", ns)]));
        }
        for p in &self.pods {
            cluster.add_pod(p.pod.clone());
        }
        for i in 1..=2u8 {
            cluster.set_node_addresses(
                &format!("n{i}"),
                vec![
                    IpAddr::from([192, 168, 77, i]),
                    format!("fd77::{i}").parse().unwrap(),
                ],
            );
        }
        cluster
    }

    /// Renders each node's plan and loads it with `nft -f -` in the node's namespace: the
    /// whole table the first time, a delta from what was loaded afterwards. After a delta
    /// the table must hold exactly what loading the whole plan gives.
    fn enforce(&self, cluster: &Cluster) {
        for (i, node) in self.nodes.iter().enumerate() {
            let rules = cluster.plan_node(&format!("n{}", i + 1)).nft_rules();
            let previous = self.loaded.borrow_mut()[i].replace(rules.clone());
            match previous {
                None => nft(node, &rules.script(TABLE)),
                Some(previous) => {
                    nft(node, &rules.delta_script(&previous, TABLE));
                    assert_holds_exactly(
                        node,
                        &rules,
                        &format!("n{}: the delta left a table other than the plan's", i + 1),
                    );
                }
            }
        }
    }

    fn pod(&self, id: &str) -> &TestPod {
        self.pods.iter().find(|p| p.pod.id() == id).unwrap()
    }

    fn ids(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.pod.id()).collect()
    }

    /// The address of `id` of one family.
    fn address(&self, id: &str, v6: bool) -> IpAddr {
        *self
            .pod(id)
            .pod
            .addresses
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .unwrap()
    }

    /// Probes every cell at once (each probe on its own thread inside the source pod). A
    /// cell `expected` reachable that did not answer is probed again, patiently: a slow
    /// answer on a loaded machine is still an answer, and a dropped packet stays dropped.
    fn observe(&self, v6: bool, expected: &Table) -> Table {
        let ids = self.ids();
        let mut cells = Vec::new();
        for s in &ids {
            for d in &ids {
                for (port, protocol) in common::PORTS {
                    cells.push((s.clone(), d.clone(), port, protocol));
                }
            }
        }
        let run = |cells: &[(String, String, u16, Protocol)], timeout: Duration| -> Vec<bool> {
            std::thread::scope(|scope| {
                let handles: Vec<_> = cells
                    .iter()
                    .map(|(s, d, port, protocol)| {
                        let target = SocketAddr::new(self.address(d, v6), *port);
                        let ns = &self.pod(s).ns;
                        scope.spawn(move || ns.enter(|| probe(target, *protocol, timeout)).unwrap())
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            })
        };
        let first = run(&cells, PROBE_TIMEOUT);
        let mut lookup: std::collections::BTreeMap<_, bool> =
            cells.into_iter().zip(first).collect();
        let want = |(s, d, port, protocol): &(String, String, u16, Protocol)| {
            let (i, j) = (
                ids.iter().position(|x| x == s).unwrap(),
                ids.iter().position(|x| x == d).unwrap(),
            );
            let k = common::PORTS
                .iter()
                .position(|p| *p == (*port, *protocol))
                .unwrap();
            expected.cells[k][i][j]
        };
        let again: Vec<_> = lookup
            .iter()
            .filter(|(c, ok)| !**ok && want(c))
            .map(|(c, _)| c.clone())
            .collect();
        for (cell, ok) in again.iter().zip(run(&again, PATIENT_TIMEOUT)) {
            lookup.insert(cell.clone(), ok);
        }
        Table::probe(&ids, |s, d, port, protocol| {
            lookup[&(s.to_owned(), d.to_owned(), port, protocol)]
        })
    }
}

/// Runs `nft -f -` with `script` in `ns`.
fn nft(ns: &NetNs, script: &str) {
    if script.is_empty() {
        return;
    }
    if let Err(e) = run_with_input(ns.command("nft").args(["-f", "-"]), script.as_bytes()) {
        panic!("in {}: {e}\n{script}", ns.name());
    }
}

/// Asserts that `ns` holds exactly the table `rules` make when loaded whole into a fresh
/// namespace.
fn assert_holds_exactly(ns: &NetNs, rules: &NftRules, what: &str) {
    let fresh = NetNs::new("pol-fresh").unwrap();
    nft(&fresh, &rules.script(TABLE));
    assert_eq!(listing(ns), listing(&fresh), "{what}");
}

/// The plan of [`POLICIES`] for n1, loaded whole into the lab's first node.
fn loaded_policies(lab: &Lab) -> NftRules {
    let mut cluster = lab.cluster();
    apply(&mut cluster, POLICIES);
    let rules = cluster.plan_node("n1").nft_rules();
    nft(&lab.nodes[0], &rules.script(TABLE));
    rules
}

/// The policy table as the kernel holds it: each map, set and chain with its lines, by
/// name (a delta adds objects in another order than a whole load).
fn listing(ns: &NetNs) -> std::collections::BTreeMap<String, Vec<String>> {
    let text = ns.exec("nft", &["list", "table", "inet", TABLE]).unwrap();
    // The table's own closing brace belongs to no block.
    let text = text.trim_end().strip_suffix('}').unwrap_or(&text);
    let mut blocks = std::collections::BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let header = ["chain ", "set ", "map "]
            .iter()
            .any(|k| line.starts_with(k))
            && line.ends_with('{');
        if header {
            if let Some((name, lines)) = current.take() {
                blocks.insert(name, lines);
            }
            current = Some((line.to_owned(), Vec::new()));
        } else if let Some((_, lines)) = current.as_mut() {
            // Counters differ between a table that saw traffic and a fresh one.
            let line = match line.split_once("counter packets ") {
                Some((before, after)) => {
                    let rest = after.splitn(4, ' ').nth(3).unwrap_or("");
                    format!("{before}counter {rest}")
                }
                None => line.to_owned(),
            };
            lines.push(line);
        }
    }
    if let Some((name, lines)) = current {
        blocks.insert(name, lines);
    }
    assert!(blocks.contains_key("chain forward {"), "{text}");
    blocks
}

/// Expected: the semantics' verdict on each cell (a pod to itself never crosses the node,
/// so it always reaches).
fn expected(lab: &Lab, cluster: &Cluster, v6: bool) -> Table {
    Table::probe(&lab.ids(), |s, d, port, protocol| {
        if s == d {
            return true;
        }
        let (sp, dp) = (&lab.pod(s).pod, &lab.pod(d).pod);
        let flow = Flow {
            source: Party {
                address: lab.address(s, v6),
                pod: Some(sp),
            },
            destination: Party {
                address: lab.address(d, v6),
                pod: Some(dp),
            },
            port: Some((protocol, port)),
        };
        cluster.verdict(&flow).allowed()
    })
}

/// Starts TCP and UDP echo servers on ports 80 and 81 (both families) inside `ns`.
fn serve(ns: &NetNs) {
    for port in [80u16, 81] {
        let (tcp, udp) = ns
            .enter(|| {
                (
                    TcpListener::bind(("::", port)).unwrap(),
                    UdpSocket::bind(("::", port)).unwrap(),
                )
            })
            .unwrap();
        std::thread::spawn(move || {
            for stream in tcp.incoming().flatten() {
                std::thread::spawn(move || echo_tcp(stream));
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], peer);
            }
        });
    }
}

fn echo_tcp(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// One request and its echo: a new TCP connection, or a UDP datagram (sent twice).
fn probe(target: SocketAddr, protocol: Protocol, timeout: Duration) -> bool {
    match protocol {
        Protocol::Tcp => TcpStream::connect_timeout(&target, timeout)
            .is_ok_and(|mut s| exchange(&mut s, timeout)),
        _ => {
            let local: SocketAddr = if target.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            }
            .parse()
            .unwrap();
            let socket = UdpSocket::bind(local).unwrap();
            socket.set_read_timeout(Some(timeout / 2)).unwrap();
            socket.connect(target).unwrap();
            let mut buf = [0u8; 8];
            (0..2).any(|_| {
                socket.send(b"ping").is_ok()
                    && socket.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"ping")
            })
        }
    }
}

/// Writes a line on an open connection and waits up to `timeout` for its echo.
fn exchange(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 8];
    stream.write_all(b"ping").is_ok()
        && match stream.read(&mut buf) {
            Ok(n) => &buf[..n] == b"ping",
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(_) => false,
        }
}

const POLICIES: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: serve-80-tcp}, {port: 81, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-to-x-b, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.65.1.0/24, except: [10.65.1.1/32]}
    - ipBlock: {cidr: 'fd00:65::1:0/112', except: ['fd00:65::1:1/128']}
    ports: [{port: 80, endPort: 81, protocol: UDP}]
";

#[test]
fn rendered_plans_enforce_the_semantics_on_real_traffic() {
    if !prereq::require_root() || !prereq::require_command("nft") {
        return;
    }
    let lab = Lab::new();
    let mut cluster = lab.cluster();
    // Without policy the lab is fully connected (this also proves the probes can succeed).
    lab.enforce(&cluster);
    for v6 in [false, true] {
        let all = Table::probe(&lab.ids(), |_, _, _, _| true);
        assert_tables("no policy", &all, &lab.observe(v6, &all));
    }
    apply(&mut cluster, POLICIES);
    lab.enforce(&cluster);
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let expected = expected(&lab, &cluster, v6);
        assert!(
            expected.cells.iter().flatten().flatten().any(|c| !c),
            "the case denies nothing"
        );
        assert_tables(
            &format!("three policies, {family}"),
            &expected,
            &lab.observe(v6, &expected),
        );
    }
    // Every policy removed: the delta takes every chain, map entry and set away again.
    lab.enforce(&lab.cluster());
    let all = Table::probe(&lab.ids(), |_, _, _, _| true);
    assert_tables("policies removed", &all, &lab.observe(false, &all));
}

/// The lab with [`POLICIES`] enforced on both nodes; `None` (the test skipped) without root
/// or `nft`.
fn enforcing_the_policies() -> Option<(Lab, Cluster)> {
    if !prereq::require_root() || !prereq::require_command("nft") {
        return None;
    }
    let lab = Lab::new();
    let mut cluster = lab.cluster();
    apply(&mut cluster, POLICIES);
    lab.enforce(&cluster);
    Some((lab, cluster))
}

#[test]
fn a_policy_change_stops_open_connections_it_no_longer_allows() {
    let Some((lab, mut cluster)) = enforcing_the_policies() else {
        return;
    };
    let connect = |from: &str, to: &str, v6: bool| {
        let target = SocketAddr::new(lab.address(to, v6), 80);
        lab.pod(from)
            .ns
            .enter(|| TcpStream::connect_timeout(&target, PATIENT_TIMEOUT))
            .unwrap()
            .unwrap()
    };
    // Open: y/a → x/a (allowed by a-from-y-a), x/a → x/b (allowed by b-from-a), both
    // families.
    let mut cut = [connect("y/a", "x/a", false), connect("y/a", "x/a", true)];
    let mut kept = [connect("x/a", "x/b", false), connect("x/a", "x/b", true)];
    for s in cut.iter_mut().chain(kept.iter_mut()) {
        assert!(
            exchange(s, PATIENT_TIMEOUT),
            "an allowed connection does not answer"
        );
    }
    // x/a's policy now takes nothing on TCP 80: the open connection stops, the other one
    // goes on, and a new connection is refused.
    apply(
        &mut cluster,
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: 81, protocol: UDP}]
",
    );
    lab.enforce(&cluster);
    for s in &mut cut {
        assert!(
            !exchange(s, PROBE_TIMEOUT),
            "a connection the new policy denies still answers"
        );
    }
    for s in &mut kept {
        assert!(
            exchange(s, PATIENT_TIMEOUT),
            "a connection the new policy allows stopped"
        );
    }
    for v6 in [false, true] {
        let target = SocketAddr::new(lab.address("x/a", v6), 80);
        let reached = lab
            .pod("y/a")
            .ns
            .enter(|| probe(target, Protocol::Tcp, PROBE_TIMEOUT))
            .unwrap();
        assert!(!reached, "a new connection the new policy denies was made");
    }
    // Allowing it again lets the same open connection carry on (TCP retransmits).
    apply(&mut cluster, POLICIES);
    lab.enforce(&cluster);
    for s in &mut cut {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        // The earlier unanswered ping and this one arrive together once the path opens.
        let _ = s.write_all(b"ping");
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            n > 0 && buf[..n].starts_with(b"ping"),
            "the connection did not resume"
        );
    }
}

/// A full pass replaces the whole table while pods talk: no packet of a connection the
/// rules allow may be lost as the transaction commits (a lost SYN costs its connection a
/// second, a lost segment a retransmission timeout). Deleting the table and making it
/// again lost several SYNs in a few dozen such loads.
#[test]
fn replacing_the_whole_table_loses_no_packet_of_an_allowed_connection() {
    let Some((lab, cluster)) = enforcing_the_policies() else {
        return;
    };
    let rules: Vec<_> = (1..=2)
        .map(|i| cluster.plan_node(&format!("n{i}")).nft_rules())
        .collect();
    let target = SocketAddr::new(lab.address("x/a", false), 80);
    let (client, nodes) = (&lab.pod("y/a").ns, &lab.nodes);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (made, lost) = std::thread::scope(|scope| {
        let connector = scope.spawn(|| {
            let (mut made, mut lost) = (0u32, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let answered = client
                    .enter(|| probe(target, Protocol::Tcp, Duration::from_millis(500)))
                    .unwrap();
                made += 1;
                // Well under the one second a SYN's retransmission waits.
                if !answered || started.elapsed() > Duration::from_millis(300) {
                    lost.push(started.elapsed());
                }
            }
            (made, lost)
        });
        for _ in 0..60 {
            for (node, rules) in nodes.iter().zip(&rules) {
                nft(node, &rules.replace_script(rules, TABLE));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        connector.join().unwrap()
    });
    assert!(made > 50, "only {made} connections made");
    assert!(
        lost.is_empty(),
        "{} of {made} allowed connections stalled while the table was replaced: {lost:?}",
        lost.len()
    );
    // And the table is still exactly the plan's.
    assert_holds_exactly(&lab.nodes[0], &rules[0], "after the reloads");
}

/// Replacing in place undoes drift and leaves exactly the new plan's table: the previous
/// plan's chains, sets and counters that the new one lacks are gone, an element someone
/// added by hand is gone, and a chain someone emptied is whole again.
#[test]
fn replacing_the_table_in_place_leaves_exactly_the_plan() {
    if !prereq::require_root() || !prereq::require_command("nft") {
        return;
    }
    let lab = Lab::new();
    let node = &lab.nodes[0];
    let before = loaded_policies(&lab);
    let chain = before.chains.keys().next().unwrap().clone();
    nft(
        node,
        &format!(
            "add element inet {TABLE} ingress_isolated {{ \"bogus0\" }}\nflush chain inet {TABLE} {chain}\n"
        ),
    );
    let mut after_cluster = lab.cluster();
    apply(
        &mut after_cluster,
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{ports: [{port: 81, protocol: UDP}]}]
",
    );
    let after = after_cluster.plan_node("n1").nft_rules();
    assert!(!after.chains.is_empty() && after.chains.keys().ne(before.chains.keys()));
    for (from, to) in [(&before, &before), (&before, &after)] {
        nft(node, &to.replace_script(from, TABLE));
        assert_holds_exactly(node, to, "replaced in place");
    }
}

#[test]
fn a_replacement_in_place_makes_again_what_someone_deleted() {
    if !prereq::require_root() || !prereq::require_command("nft") {
        return;
    }
    let lab = Lab::new();
    let node = &lab.nodes[0];
    let rules = loaded_policies(&lab);
    let handle = table_handle(node);
    // Someone empties the forward chain, then deletes what nothing refers to any more: a
    // map, a pod's chain (its map entry first), and an address set and a counter that
    // chain used.
    let (chain, lines) = rules.chains.iter().next().unwrap();
    let elsewhere: Vec<&String> = rules
        .chains
        .iter()
        .filter(|(name, _)| *name != chain)
        .flat_map(|(_, lines)| lines)
        .collect();
    let only_here = |needle: String| {
        lines.iter().any(|l| l.contains(&needle)) && !elsewhere.iter().any(|l| l.contains(&needle))
    };
    let set = rules
        .sets
        .keys()
        .find(|set| only_here(format!("@{set} ")))
        .unwrap();
    let counter = rules
        .counters
        .keys()
        .find(|c| only_here(format!("\"{c}\"")))
        .unwrap();
    let mut tamper = format!("flush chain inet {TABLE} forward\n");
    for (map, entries) in [
        ("ingress_chains", &rules.ingress),
        ("egress_chains", &rules.egress),
    ] {
        for ifname in entries.keys() {
            tamper.push_str(&format!(
                "delete element inet {TABLE} {map} {{ \"{ifname}\" }}\n"
            ));
        }
    }
    tamper.push_str(&format!(
        "delete map inet {TABLE} egress_chains\nflush chain inet {TABLE} {chain}\n\
         delete chain inet {TABLE} {chain}\ndelete set inet {TABLE} {set}\n\
         delete counter inet {TABLE} {counter}\n"
    ));
    nft(node, &tamper);
    assert!(!listing(node).contains_key(&format!("chain {chain} {{")));
    // Replaced in place all the same: the table (and its hooked chain) kept.
    nft(node, &rules.replace_script(&rules, TABLE));
    assert_holds_exactly(node, &rules, "replaced in place");
    assert_eq!(table_handle(node), handle, "the table was not made again");
}

/// The kernel's handle of the policy table: a table deleted and made again gets another.
fn table_handle(ns: &NetNs) -> String {
    let text = ns
        .exec("nft", &["-a", "list", "table", "inet", TABLE])
        .unwrap();
    let first = text.lines().next().unwrap_or_default();
    first
        .split_once("# handle ")
        .map(|(_, handle)| handle.trim().to_owned())
        .unwrap_or_else(|| panic!("no handle in {first}"))
}
