//! Network policy conformance on real traffic, in the manner of the upstream Kubernetes
//! network policy e2e suite: one 3-node lab, namespaces x, y and z with pods a, b and c in
//! each spread over the nodes, a TCP and UDP server on ports 80 and 81 in every pod. Each
//! case applies its policies with `wren policy apply`, then probes every source →
//! destination → port cell with real connections and compares the whole table with the one
//! wren-policy's semantics give (`Cluster::verdict`), printing both on a mismatch. The cases
//! run with the fast path on, and a selection again with it off. The lab is dual stack: a
//! handful of cases (deny-all, selectors, ipBlock with IPv6 blocks and `except`) probe
//! every cell over IPv4 and over IPv6.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wren_policy::{Cluster, Flow, NamedPort, Pod, Protocol, decode_policies};
use wren_tests::lab::{self, Lab, LabSpec};
use wren_tests::netns::command_in;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 80),
    (Protocol::Udp, 81),
];
/// How long a policy change may take to be enforced on every node.
const ENFORCED_WITHIN: Duration = Duration::from_secs(10);

/// Answers every TCP connection (echoing what it reads until the peer closes) and UDP
/// datagram on the given ports, over IPv4 and IPv6.
const SERVER: &str = r#"
import socket, sys, threading
def dual(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s
def tcp(port):
    s = dual(socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(256)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    try:
        while True:
            data = c.recv(64)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    c.close()
def udp(port):
    u = dual(socket.SOCK_DGRAM)
    u.bind(("::", port))
    while True:
        data, peer = u.recvfrom(64)
        u.sendto(data, peer)
for port in sys.argv[1:]:
    threading.Thread(target=tcp, args=(int(port),), daemon=True).start()
    threading.Thread(target=udp, args=(int(port),), daemon=True).start()
print("up", flush=True)
threading.Event().wait()
"#;

/// Probes every `host proto port` of its arguments at once and prints `host proto port
/// yes|no` for each: a TCP connection that exchanges a byte, a UDP datagram answered
/// (tried twice).
const PROBER: &str = r#"
import socket, sys, threading
def probe(host, proto, port, out):
    ok = False
    for _ in range(2):
        try:
            if proto == "tcp":
                s = socket.create_connection((host, port), timeout=1.0)
            else:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.settimeout(0.5)
                s.connect((host, port))
            s.settimeout(1.0)
            s.send(b"x")
            ok = s.recv(8) == b"x"
            s.close()
        except OSError:
            pass
        if ok or proto == "tcp":
            break
    out.append("%s %s %d %s" % (host, proto, port, "yes" if ok else "no"))
out, threads = [], []
for target in sys.argv[1:]:
    host, proto, port = target.split(",")
    t = threading.Thread(target=probe, args=(host, proto, int(port), out))
    t.start()
    threads.append(t)
for t in threads:
    t.join()
print("\n".join(out))
"#;

/// A pod of the suite: `namespace/name`, where it runs and its lab namespace.
#[derive(Debug, Clone)]
struct SuitePod {
    namespace: String,
    name: String,
    node: String,
    netns: String,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
}

impl SuitePod {
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn address(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.ip),
            Family::V6 => IpAddr::V6(self.ip6),
        }
    }
}

/// The address family a table is probed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// One cell of the table: source, destination, protocol, port.
type Cell = (String, String, Protocol, u16);

/// The lab, its pods with their servers, and what the expected table is computed from.
struct Suite {
    lab: Lab,
    pods: Vec<SuitePod>,
    servers: Vec<Child>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    dir: tempfile::TempDir,
}

impl Drop for Suite {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The labels pod `name` carries: `pod=<name>`, and `tier=front` on the a pods.
fn pod_labels(name: &str) -> BTreeMap<String, String> {
    let mut l = labels(&[("pod", name)]);
    if name == "a" {
        l.insert("tier".into(), "front".into());
    }
    l
}

/// The named ports every pod has, as upstream names them.
fn named_ports() -> Vec<NamedPort> {
    PORTS
        .iter()
        .map(|&(protocol, port)| NamedPort {
            name: format!("serve-{port}-{protocol}"),
            protocol,
            port,
        })
        .collect()
}

impl Suite {
    fn up() -> Self {
        let mut spec = LabSpec::new(&lab::test_lab_name('q'), 3);
        spec.pods_per_node = 0;
        spec.dual_stack = true;
        let lab = Lab::up(spec).expect("lab up");
        let mut suite = Suite {
            lab,
            pods: Vec::new(),
            servers: Vec::new(),
            namespace_labels: BTreeMap::new(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        for (i, namespace) in NAMESPACES.iter().enumerate() {
            suite.set_namespace_labels(namespace, &[("ns", namespace)]);
            for (j, name) in PODS.iter().enumerate() {
                suite.add_pod(&format!("n{}", (i + j) % 3 + 1), namespace, name);
            }
        }
        suite
    }

    /// The pod `namespace/name`.
    fn pod(&self, id: &str) -> &SuitePod {
        self.pods
            .iter()
            .find(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    fn cli(&self, args: &[&str]) -> String {
        self.lab
            .wren_cli(args)
            .unwrap_or_else(|e| panic!("wren {}: {e}", args.join(" ")))
    }

    fn set_namespace_labels(&mut self, namespace: &str, pairs: &[(&str, &str)]) {
        let old = self.namespace_labels.remove(namespace).unwrap_or_default();
        let mut args = vec!["namespace".to_owned(), "label".into(), namespace.into()];
        args.extend(old.keys().map(|k| format!("{k}-")));
        args.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args);
        self.namespace_labels
            .insert(namespace.to_owned(), labels(pairs));
    }

    /// Labels and named ports first (they may be set before a pod starts), then the pod
    /// through the CNI plugin, then its servers.
    fn add_pod(&mut self, node: &str, namespace: &str, name: &str) {
        let id = format!("{namespace}/{name}");
        let mut args = vec!["workload".to_owned(), "label".into(), id.clone()];
        args.extend(pod_labels(name).iter().map(|(k, v)| format!("{k}={v}")));
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut args = vec!["workload".to_owned(), "port".into(), id];
        args.extend(
            named_ports()
                .iter()
                .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol)),
        );
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let lab_name = self
            .lab
            .add_k8s_pod(node, namespace, name)
            .expect("pod added");
        let state = self
            .lab
            .state()
            .pods
            .iter()
            .find(|p| p.name == lab_name)
            .expect("the lab records the pod")
            .clone();
        let mut server = command_in(&state.ns, "python3")
            .args(["-c", SERVER, "80", "81"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("server started");
        let mut line = String::new();
        if let Some(out) = server.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "up", "server in {namespace}/{name}");
        self.servers.push(server);
        self.pods.push(SuitePod {
            namespace: namespace.into(),
            name: name.into(),
            node: node.into(),
            netns: state.ns,
            ip: state.ip,
            ip6: state
                .ip6
                .unwrap_or_else(|| panic!("{namespace}/{name} has an IPv6 address")),
        });
    }

    fn apply(&self, yaml: &str) {
        if yaml.trim().is_empty() {
            return;
        }
        let file = self.dir.path().join("policies.yaml");
        std::fs::write(&file, yaml).expect("policy file written");
        self.cli(&["policy", "apply", "-f", file.to_str().unwrap_or_default()]);
    }

    fn remove_every_policy(&self) {
        for line in self.cli(&["policy", "list"]).lines().skip(1) {
            let mut cells = line.split_whitespace();
            if let (Some(namespace), Some(name)) = (cells.next(), cells.next()) {
                self.cli(&["policy", "rm", &format!("{namespace}/{name}")]);
            }
        }
    }

    /// The table wren-policy's semantics expect for `yaml`, over IPv4.
    fn expected(&self, yaml: &str) -> BTreeMap<Cell, bool> {
        self.expected_over(yaml, Family::V4)
    }

    /// The table wren-policy's semantics expect for `yaml`, between the pods' addresses of
    /// `family`.
    fn expected_over(&self, yaml: &str, family: Family) -> BTreeMap<Cell, bool> {
        let mut cluster = Cluster::new();
        for (namespace, labels) in &self.namespace_labels {
            cluster.set_namespace(namespace, labels.clone());
        }
        for pod in &self.pods {
            cluster.add_pod(Pod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                node: pod.node.clone(),
                labels: pod_labels(&pod.name),
                addresses: vec![pod.address(family)],
                ports: named_ports(),
                host_interface: String::new(),
            });
        }
        if !yaml.trim().is_empty() {
            for policy in decode_policies(yaml).expect("the case's policies decode") {
                cluster.add_policy(policy);
            }
        }
        let mut table = BTreeMap::new();
        for from in cluster.pods() {
            for to in cluster.pods() {
                for &(protocol, port) in &PORTS {
                    let flow = Flow::between(from, to, Some((protocol, port)))
                        .expect("one address family");
                    table.insert(
                        (from.id(), to.id(), protocol, port),
                        cluster.verdict(&flow).allowed(),
                    );
                }
            }
        }
        table
    }

    /// Probes every cell with real connections between the pods' addresses of `family`,
    /// every source at once.
    fn probe(&self, family: Family) -> BTreeMap<Cell, bool> {
        let by_ip: BTreeMap<String, String> = self
            .pods
            .iter()
            .map(|p| (p.address(family).to_string(), p.id()))
            .collect();
        let children: Vec<(String, Child)> = self
            .pods
            .iter()
            .map(|from| {
                let mut targets = Vec::new();
                for to in &self.pods {
                    for (protocol, port) in PORTS {
                        targets.push(format!("{},{protocol},{port}", to.address(family)));
                    }
                }
                let child = command_in(&from.netns, "python3")
                    .args(["-c", PROBER])
                    .args(&targets)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("prober started");
                (from.id(), child)
            })
            .collect();
        let mut table = BTreeMap::new();
        for (from, child) in children {
            let out = child.wait_with_output().expect("prober ran");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let cells: Vec<&str> = line.split_whitespace().collect();
                let [host, protocol, port, answer] = cells[..] else {
                    continue;
                };
                let (Some(to), Ok(protocol), Ok(port)) =
                    (by_ip.get(host), protocol.parse(), port.parse())
                else {
                    continue;
                };
                table.insert((from.clone(), to.clone(), protocol, port), answer == "yes");
            }
        }
        table
    }

    /// Probes over IPv4 until the table is the expected one, or fails after
    /// [`ENFORCED_WITHIN`] printing both.
    fn expect_table(&self, case: &str, expected: &BTreeMap<Cell, bool>) {
        self.expect_table_over(case, expected, Family::V4);
    }

    /// [`Suite::expect_table`] over `family`.
    fn expect_table_over(&self, case: &str, expected: &BTreeMap<Cell, bool>, family: Family) {
        let deadline = Instant::now() + ENFORCED_WITHIN;
        loop {
            let seen = self.probe(family);
            if seen == *expected {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{case} ({family:?}): the table differs\n{}",
                    render(expected, &seen)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// One case: apply `yaml`, compare the table over each of `families`, take the
    /// policies away again.
    fn case_over(&self, name: &str, yaml: &str, families: &[Family]) {
        let started = Instant::now();
        self.apply(yaml);
        for &family in families {
            self.expect_table_over(name, &self.expected_over(yaml, family), family);
        }
        self.remove_every_policy();
        eprintln!("case {name} {families:?}: {:?}", started.elapsed());
    }

    /// [`Suite::case_over`] IPv4.
    fn case(&self, name: &str, yaml: &str) {
        self.case_over(name, yaml, &[Family::V4]);
    }
}

/// The expected and seen tables side by side: one row per source, one column per
/// destination, four marks per cell (tcp/80, tcp/81, udp/80, udp/81): `.` allowed, `X`
/// denied, upper case where the probe disagreed (`A` allowed though denied expected,
/// `D` denied though allowed).
fn render(expected: &BTreeMap<Cell, bool>, seen: &BTreeMap<Cell, bool>) -> String {
    let mut pods: Vec<&String> = expected.keys().map(|c| &c.0).collect();
    pods.dedup();
    let mut out = String::from(
        "(cells: tcp/80 tcp/81 udp/80 udp/81; . allowed, X denied, A/D wrongly allowed/denied)\n      ",
    );
    for to in &pods {
        let _ = write!(out, "{to:<6}");
    }
    out.push('\n');
    for from in &pods {
        let _ = write!(out, "{from:<6}");
        for to in &pods {
            for (protocol, port) in PORTS {
                let key = ((*from).clone(), (*to).clone(), protocol, port);
                let want = expected.get(&key).copied();
                let got = seen.get(&key).copied();
                out.push(match (want, got) {
                    (Some(true), Some(true)) => '.',
                    (Some(false), Some(false)) => 'X',
                    (Some(false), Some(true)) => 'A',
                    (Some(true), Some(false)) => 'D',
                    _ => '?',
                });
            }
            out.push_str("  ");
        }
        out.push('\n');
    }
    out
}

fn policy(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n---\n"
    )
}

/// The cases probed over both families: deny-all, pod and namespace selectors, and
/// ipBlock with IPv6 blocks and `except` (an IPv4 block in the same rule, so both
/// families have something to match).
fn dual_stack_cases(suite: &Suite) -> Vec<(&'static str, String)> {
    let yb = suite.pod("y/b");
    vec![
        (
            "dual stack: deny all ingress in x",
            policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]"),
        ),
        (
            "dual stack: ingress to x/a from x/b and from namespace z (selectors)",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: z}}}]}]",
            ),
        ),
        (
            "dual stack: ingress to x from the pools except y/b, egress of y/a to all but x/c's /128",
            policy(
                "x",
                "p",
                &format!(
                    "  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: '{}', except: ['{}/128']}}}}, {{ipBlock: {{cidr: '{}', except: ['{}/32']}}}}]}}]",
                    lab::POOL6_CIDR,
                    yb.ip6,
                    lab::POOL_CIDR,
                    yb.ip,
                ),
            ) + &policy(
                "y",
                "q",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: '::/0', except: ['{}/128']}}}}, {{ipBlock: {{cidr: 0.0.0.0/0}}}}]}}]",
                    suite.pod("x/c").ip6,
                ),
            ),
        ),
    ]
}

/// The cases: name and the policies, as a user would write them.
fn cases(suite: &Suite) -> Vec<(&'static str, String)> {
    let ip = |id: &str| suite.pod(id).ip.to_string();
    vec![
        ("no policy", String::new()),
        (
            "deny all ingress in x",
            policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]"),
        ),
        (
            "deny all egress in x",
            policy("x", "deny", "  podSelector: {}\n  policyTypes: [Egress]"),
        ),
        (
            "deny all both ways for x/a",
            policy(
                "x",
                "deny",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]",
            ),
        ),
        (
            "allow all ingress to x",
            policy("x", "all", "  podSelector: {}\n  ingress: [{}]"),
        ),
        (
            "ingress to x/a from its namespace",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {}}]}]",
            ),
        ),
        (
            "ingress to x/a from x/b (podSelector)",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
            ),
        ),
        (
            "ingress to x/a from namespace y (namespaceSelector)",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            ),
        ),
        (
            "ingress to x from namespaces In (y, z)",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}}]}]",
            ),
        ),
        (
            "ingress to x/a from y/c (both selectors in one peer)",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]}]",
            ),
        ),
        (
            "ingress to x/a from namespace y or pod c of x (two peers)",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: c}}}]}]",
            ),
        ),
        (
            "ingress to x from pods NotIn (b) of any namespace",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}}]}]",
            ),
        ),
        (
            "ingress to pods with tier (Exists) from pods without it (DoesNotExist)",
            policy(
                "x",
                "p",
                "  podSelector: {matchExpressions: [{key: tier, operator: Exists}]}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]",
            ),
        ),
        (
            "ingress to x on TCP 80 only",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: TCP}]}]",
            ),
        ),
        (
            "ingress to x on UDP 81 from y only",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81, protocol: UDP}]}]",
            ),
        ),
        (
            "ingress to x on a named port",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  ingress: [{ports: [{port: serve-81-tcp, protocol: TCP}]}]",
            ),
        ),
        (
            "ingress to x on 80-81 TCP (endPort)",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 81, protocol: TCP}]}]",
            ),
        ),
        (
            "ingress to x from an ipBlock with except",
            policy(
                "x",
                "p",
                &format!(
                    "  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{}/32, {}/32]}}}}]}}]",
                    ip("y/b"),
                    ip("z/c")
                ),
            ),
        ),
        (
            "egress from x: deny all but UDP 80 (DNS-like)",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 80, protocol: UDP}]}]",
            ),
        ),
        (
            "egress from x to namespace y only",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            ),
        ),
        (
            "egress from x to c pods anywhere",
            policy(
                "x",
                "p",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]",
            ),
        ),
        (
            "egress from x/b on a named port",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: serve-80-udp, protocol: UDP}]}]",
            ),
        ),
        (
            "egress from y to an ipBlock with except",
            policy(
                "y",
                "p",
                &format!(
                    "  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{}/32]}}}}]}}]",
                    ip("x/a")
                ),
            ),
        ),
        (
            "egress from z on 81 (endPort over TCP and UDP)",
            policy(
                "z",
                "p",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: 81, endPort: 81, protocol: TCP}, {port: 81, protocol: UDP}]}]",
            ),
        ),
        (
            "several policies on one pod: the union",
            policy(
                "x",
                "from-y",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            ) + &policy(
                "x",
                "from-zb",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: b}}}], ports: [{port: 81, protocol: TCP}]}]",
            ),
        ),
        (
            "ingress and egress in one policy",
            policy(
                "y",
                "p",
                "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]\n  egress: [{to: [{podSelector: {}}]}]",
            ),
        ),
        (
            "ingress to y from namespaces NotIn (x)",
            policy(
                "y",
                "p",
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]}]",
            ),
        ),
        (
            "egress from x/a to x/b only (podSelector)",
            policy(
                "x",
                "p",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]",
            ),
        ),
        (
            "ingress to z/b on UDP, any port",
            policy(
                "z",
                "p",
                "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{ports: [{protocol: UDP}]}]",
            ),
        ),
        (
            "egress from z/c to one pod's address on TCP 81 (ipBlock and port)",
            policy(
                "z",
                "p",
                &format!(
                    "  podSelector: {{matchLabels: {{pod: c}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: {}/32}}}}], ports: [{{port: 81, protocol: TCP}}]}}]",
                    ip("y/a")
                ),
            ),
        ),
        (
            "policies in two namespaces meeting on one flow",
            policy(
                "x",
                "out",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
            ) + &policy(
                "y",
                "in",
                "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]",
            ),
        ),
    ]
}

#[test]
fn policy_conformance() {
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("nft") {
        return;
    }
    let started = Instant::now();
    let mut suite = Suite::up();
    eprintln!("lab and pods up: {:?}", started.elapsed());
    for (name, yaml) in dual_stack_cases(&suite) {
        suite.case_over(name, &yaml, &[Family::V4, Family::V6]);
    }
    let cases = cases(&suite);
    for (name, yaml) in &cases {
        suite.case(name, yaml);
    }

    // Every node says what is in force on it, and counts what it denied, per policy: the
    // policy denying all ingress to x dropped traffic, one allowing everything to y none.
    {
        let deny = policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress]")
            + &policy("y", "open", "  podSelector: {}\n  ingress: [{}]");
        suite.apply(&deny);
        suite.expect_table("deny all ingress in x, again", &suite.expected(&deny));
        for node in &suite.lab.state().nodes {
            let status = suite.lab.node_status_json(&node.name).expect("status");
            let in_force = &status["networkPolicy"]["inForce"];
            assert_eq!(
                in_force,
                &serde_json::json!(["x/deny", "y/open"]),
                "{}: {status}",
                node.name
            );
        }
        // The sum over the nodes; `None` when no node has the series.
        let metric = |name: &str| -> Option<u64> {
            suite
                .lab
                .state()
                .nodes
                .iter()
                .map(|node| {
                    let text = suite.lab.metrics(&node.name).expect("metrics scraped");
                    text.lines()
                        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                        .and_then(|l| l.rsplit(' ').next())
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .reduce(|a, b| match (a, b) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                })
                .flatten()
        };
        let denied = |name: &str| metric(name).unwrap_or(0);
        assert!(denied("wren_policy_denied_packets_total") > 0);
        assert!(denied("wren_policy_denied_connections_total") > 0);
        assert!(denied("wren_policy_denied_packets_by_policy_total{policy=\"x/deny\"}") > 0);
        assert!(denied("wren_policy_denied_connections_by_policy_total{policy=\"x/deny\"}") > 0);
        assert_eq!(
            metric("wren_policy_denied_packets_by_policy_total{policy=\"y/open\"}"),
            Some(0),
            "a policy allowing everything denies nothing"
        );
        suite.remove_every_policy();
    }

    // A policy updated while a connection is open: the connection stops at its next
    // packet once the update takes its allowance away.
    {
        let allow_y = policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
        );
        suite.apply(&allow_y);
        suite.expect_table("before the update", &suite.expected(&allow_y));
        let mut open = OpenConnection::start(&suite, "y/b", "x/a");
        assert!(open.alive(), "the connection carries data while allowed");
        let allow_z = allow_y.replace("ns: y", "ns: z");
        suite.apply(&allow_z);
        suite.expect_table("after the update", &suite.expected(&allow_z));
        assert!(
            !open.alive(),
            "the open connection stops once no longer allowed"
        );
        suite.remove_every_policy();
    }

    // A pod created after the policy that selects it, and a namespace relabelled.
    {
        let deny_new = policy(
            "x",
            "p",
            "  podSelector: {matchLabels: {pod: d}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]",
        );
        suite.apply(&deny_new);
        suite.add_pod("n2", "x", "d");
        suite.expect_table("a pod created after the policy", &suite.expected(&deny_new));
        suite.set_namespace_labels("z", &[("ns", "z"), ("team", "blue")]);
        suite.expect_table("a namespace relabelled", &suite.expected(&deny_new));
        suite.set_namespace_labels("z", &[("ns", "z")]);
        suite.remove_every_policy();
    }

    // The same with the fast path off: enforcement does not depend on it.
    suite.lab.set_fast_path(false).expect("fast path off");
    for (name, yaml) in cases.iter().step_by(4) {
        suite.case(&format!("{name} (fast path off)"), yaml);
    }
    eprintln!("whole suite: {:?}", started.elapsed());
}

/// A TCP connection held open from one pod to another's port 80, exchanging a byte on
/// demand.
struct OpenConnection {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

/// Connects, then for every line on stdin sends a byte and prints `yes` when it comes back
/// within a second, `no` otherwise.
const HOLDER: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=2)
s.settimeout(1.0)
for _ in sys.stdin:
    try:
        s.send(b"x")
        ok = s.recv(8) == b"x"
    except OSError:
        ok = False
    print("yes" if ok else "no", flush=True)
"#;

impl OpenConnection {
    fn start(suite: &Suite, from: &str, to: &str) -> Self {
        let pod = |id: &str| suite.pod(id);
        let mut child = command_in(&pod(from).netns, "python3")
            .args(["-c", HOLDER, &pod(to).ip.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("holder started");
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            panic!("holder's pipes");
        };
        Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        }
    }

    /// Whether a byte sent now comes back.
    fn alive(&mut self) -> bool {
        use std::io::Write;
        if self
            .stdin
            .write_all(b"\n")
            .and_then(|()| self.stdin.flush())
            .is_err()
        {
            return false;
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        line.trim() == "yes"
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
