//! Connections that netfilter translates, end to end on a two-node lab, with the fast path on
//! and then off: every reply must come back translated, whichever path the packets took.
//!
//! Pods: `a` (n1) and `c` (n2) serve TCP and UDP on 8080 and answer with their name; `b` (n1)
//! and `d` (n2) are clients. The rules are the shapes a cluster has:
//! - a hostPort by the reference `portmap` plugin (n1:30080 → a:8080, TCP and UDP);
//! - a Service in kube-proxy's iptables shape (10.96.0.10:80, `statistic` load balancing over
//!   a and c, hairpin masquerade) and one in its nftables shape (10.96.0.11:80, `numgen`),
//!   on both nodes;
//! - a NodePort with source NAT, as with `externalTrafficPolicy: Cluster` (n1:30081 → c).
//!
//! With the fast path on, the replies of those connections are pool-to-pool packets the
//! program must leave to the stack, which un-translates them; before it asked conntrack,
//! every such reply reached the client from the wrong address.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use wren_tests::echo::{self, Proto};
use wren_tests::lab::{self, Lab, LabSpec};
use wren_tests::netns::command_in;
use wren_tests::process::ChildGuard;
use wren_tests::{netns, prereq};

const SERVER_PORT: u16 = 8080;
const HOST_PORT: u16 = 30080;
const NODE_PORT: u16 = 30081;
const IPTABLES_SERVICE: &str = "10.96.0.10";
const NFT_SERVICE: &str = "10.96.0.11";
const SERVICE_PORT: u16 = 80;
/// Tries against a load-balanced Service: both endpoints answer at least once unless the
/// balancing is broken (chance of a miss 2 × 2⁻¹⁶).
const BALANCED_TRIES: usize = 16;

/// The pods of the lab by role.
struct Pods {
    a: (String, String),
    b: (String, String),
    c: (String, String),
    d: (String, String),
}

fn pods(lab: &Lab) -> Pods {
    let on = |node: &str| -> Vec<(String, String)> {
        lab.state()
            .pods
            .iter()
            .filter(|p| p.node == node)
            .map(|p| (p.name.clone(), p.ip.to_string()))
            .collect()
    };
    let (n1, n2) = (on("n1"), on("n2"));
    assert!(n1.len() >= 2 && n2.len() >= 2, "two pods per node");
    Pods {
        a: n1[0].clone(),
        b: n1[1].clone(),
        c: n2[0].clone(),
        d: n2[1].clone(),
    }
}

fn node_ip(lab: &Lab, node: &str) -> String {
    let address = &lab.node(node).expect("node").address;
    address.split('/').next().unwrap_or_default().to_owned()
}

fn run_in(ns: &str, program: &str, args: &[&str]) -> String {
    netns::run(command_in(ns, program).args(args))
        .unwrap_or_else(|e| panic!("{program} {args:?} in {ns}: {e}"))
}

/// The reference `portmap` plugin, run in n1 as a runtime chains it after wren: pod `a`'s
/// port 8080 on n1's port 30080, TCP and UDP.
fn host_port(lab: &Lab, command: &str) {
    let pod = &lab.state().pods[0];
    let node = lab.node(&pod.node).expect("node");
    let config = json!({
        "cniVersion": "1.0.0", "name": "wren-lab", "type": "portmap",
        "capabilities": {"portMappings": true}, "snat": true,
        "runtimeConfig": {"portMappings": [
            {"hostPort": HOST_PORT, "containerPort": SERVER_PORT, "protocol": "tcp"},
            {"hostPort": HOST_PORT, "containerPort": SERVER_PORT, "protocol": "udp"}
        ]},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns::path_of(&pod.ns)}],
            "ips": [{"address": format!("{}/32", pod.ip), "interface": 0}]
        }
    });
    let mut child = command_in(&node.ns, "/usr/lib/cni/portmap")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", netns::path_of(&pod.ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running portmap");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(config.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "portmap {command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Service in kube-proxy's iptables shape on `ns`: `statistic` over the endpoints, each
/// endpoint masquerading its own traffic (hairpin).
fn iptables_service(ns: &str, endpoints: &[&str]) {
    let rule = |args: &[&str]| {
        let mut all = vec!["-w", "-t", "nat"];
        all.extend_from_slice(args);
        run_in(ns, "iptables", &all);
    };
    rule(&["-N", "KUBE-SERVICES"]);
    rule(&["-N", "KUBE-MARK-MASQ"]);
    rule(&["-N", "KUBE-POSTROUTING"]);
    rule(&["-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", "0x4000"]);
    rule(&["-A", "PREROUTING", "-j", "KUBE-SERVICES"]);
    rule(&["-A", "OUTPUT", "-j", "KUBE-SERVICES"]);
    rule(&["-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"]);
    rule(&[
        "-A",
        "KUBE-POSTROUTING",
        "-m",
        "mark",
        "--mark",
        "0x4000/0x4000",
        "-j",
        "MASQUERADE",
    ]);
    for proto in ["tcp", "udp"] {
        let service = format!("KUBE-SVC-{}", proto.to_uppercase());
        rule(&["-N", &service]);
        rule(&[
            "-A",
            "KUBE-SERVICES",
            "-d",
            &format!("{IPTABLES_SERVICE}/32"),
            "-p",
            proto,
            "--dport",
            &SERVICE_PORT.to_string(),
            "-j",
            &service,
        ]);
        for (i, endpoint) in endpoints.iter().enumerate() {
            let chain = format!("KUBE-SEP-{}-{i}", proto.to_uppercase());
            rule(&["-N", &chain]);
            rule(&[
                "-A",
                &chain,
                "-s",
                &format!("{endpoint}/32"),
                "-j",
                "KUBE-MARK-MASQ",
            ]);
            rule(&[
                "-A",
                &chain,
                "-p",
                proto,
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{endpoint}:{SERVER_PORT}"),
            ]);
            let left = endpoints.len() - i;
            if left > 1 {
                let probability = format!("{:.5}", 1.0 / left as f64);
                rule(&[
                    "-A",
                    &service,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    &chain,
                ]);
            } else {
                rule(&["-A", &service, "-j", &chain]);
            }
        }
    }
}

/// A Service in kube-proxy's nftables shape on `ns` (`numgen` over the endpoints, hairpin
/// masquerade), and a NodePort on n1 with source NAT to endpoint `snat_to`.
fn nft_services(ns: &str, endpoints: &[&str], node_port: Option<(&str, &str)>) {
    let mut map = Vec::new();
    let mut chains = String::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        map.push(format!("{i} : goto ep-{i}"));
        chains.push_str(&format!(
            "chain ep-{i} {{\n ip saddr {endpoint} meta mark set mark or 0x8000\n \
             meta l4proto {{ tcp, udp }} dnat to {endpoint}:{SERVER_PORT}\n}}\n"
        ));
    }
    let node_port_rule = node_port.map_or(String::new(), |(node_ip, endpoint)| {
        format!(
            "ip daddr {node_ip} th dport {NODE_PORT} meta mark set mark or 0x8000 \
             meta l4proto {{ tcp, udp }} dnat to {endpoint}:{SERVER_PORT}\n"
        )
    });
    let ruleset = format!(
        "table ip wren-test-kube-proxy {{\n\
         {chains}\
         chain services {{\n ip daddr {NFT_SERVICE} th dport {SERVICE_PORT} numgen random mod {} vmap {{ {} }}\n {node_port_rule}}}\n\
         chain prerouting {{ type nat hook prerouting priority dstnat; jump services; }}\n\
         chain output {{ type nat hook output priority -100; jump services; }}\n\
         chain postrouting {{ type nat hook postrouting priority srcnat; meta mark & 0x8000 == 0x8000 masquerade; }}\n\
         }}\n",
        endpoints.len(),
        map.join(", ")
    );
    let mut child = command_in(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(ruleset.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names that answered `tries` requests from pod `from` to `host:port`.
fn answers(
    lab: &Lab,
    from: &str,
    host: &str,
    port: u16,
    proto: Proto,
    tries: usize,
) -> Vec<String> {
    let ns = &lab
        .state()
        .pods
        .iter()
        .find(|p| p.name == from)
        .expect("pod")
        .ns;
    echo::ask(ns, host, port, proto, tries).unwrap_or_else(|e| panic!("client in {from}: {e}"))
}

/// One request pattern and the servers that must answer it.
struct Case<'a> {
    what: &'a str,
    from: &'a str,
    host: &'a str,
    port: u16,
    answered_by: BTreeSet<&'a str>,
    tries: usize,
}

/// Runs every case over TCP and UDP; fails with all the cases that went wrong.
fn check_every_case(lab: &Lab, pods: &Pods, phase: &str) {
    let n1 = node_ip(lab, "n1");
    let (a, b, c, d) = (
        pods.a.0.as_str(),
        pods.b.0.as_str(),
        pods.c.0.as_str(),
        pods.d.0.as_str(),
    );
    let cases = [
        Case {
            what: "hostPort from a pod on the same node",
            from: b,
            host: &n1,
            port: HOST_PORT,
            answered_by: [a].into(),
            tries: 3,
        },
        Case {
            what: "hostPort from a pod on another node",
            from: d,
            host: &n1,
            port: HOST_PORT,
            answered_by: [a].into(),
            tries: 3,
        },
        Case {
            what: "iptables Service from n2 (endpoints on n1 and n2)",
            from: d,
            host: IPTABLES_SERVICE,
            port: SERVICE_PORT,
            answered_by: [a, c].into(),
            tries: BALANCED_TRIES,
        },
        Case {
            what: "iptables Service from n1 (endpoints on n1 and n2)",
            from: b,
            host: IPTABLES_SERVICE,
            port: SERVICE_PORT,
            answered_by: [a, c].into(),
            tries: BALANCED_TRIES,
        },
        Case {
            what: "nftables Service from n2",
            from: d,
            host: NFT_SERVICE,
            port: SERVICE_PORT,
            answered_by: [a, c].into(),
            tries: BALANCED_TRIES,
        },
        Case {
            what: "hairpin: an endpoint reaching its own Service",
            from: a,
            host: IPTABLES_SERVICE,
            port: SERVICE_PORT,
            answered_by: [a, c].into(),
            tries: BALANCED_TRIES,
        },
        Case {
            what: "NodePort with source NAT to an endpoint on another node",
            from: d,
            host: &n1,
            port: NODE_PORT,
            answered_by: [c].into(),
            tries: 3,
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        for proto in Proto::BOTH {
            let got = answers(lab, case.from, case.host, case.port, proto, case.tries);
            let seen: BTreeSet<&str> = got.iter().map(String::as_str).collect();
            if seen != case.answered_by {
                failures.push(format!(
                    "{}, {proto} ({} → {}:{}): answers {got:?}, wanted each of {:?} and nothing else",
                    case.what, case.from, case.host, case.port, case.answered_by
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{phase}:\n{}\n--- n1 ---\n{}",
        failures.join("\n"),
        lab.node_status("n1").unwrap_or_default()
    );
}

fn start_server(lab: &Lab, pod: &str) -> ChildGuard {
    let pod = lab
        .state()
        .pods
        .iter()
        .find(|p| p.name == pod)
        .expect("pod");
    echo::serve(&pod.ns, &pod.name, &pod.ip.to_string(), SERVER_PORT).expect("server")
}

#[test]
fn translated_connections_with_the_fast_path_on_and_off() {
    if !lab::require_lab(false)
        || !prereq::require_command("python3")
        || !prereq::require_command("iptables")
        || !prereq::require_command("nft")
        || !prereq::require_command("/usr/lib/cni/portmap")
    {
        return;
    }
    let mut lab = Lab::up(LabSpec::new(&lab::test_lab_name('t'), 2)).expect("lab up");
    lab.wait_full_matrix(Duration::from_secs(20), "n1")
        .expect("pods reach each other");
    let pods = pods(&lab);
    let _servers = [start_server(&lab, &pods.a.0), start_server(&lab, &pods.c.0)];
    host_port(&lab, "ADD");
    let endpoints = [pods.a.1.as_str(), pods.c.1.as_str()];
    let n1 = node_ip(&lab, "n1");
    for node in ["n1", "n2"] {
        let ns = lab.node(node).expect("node").ns.clone();
        iptables_service(&ns, &endpoints);
        let node_port = (node == "n1").then_some((n1.as_str(), pods.c.1.as_str()));
        nft_services(&ns, &endpoints, node_port);
    }

    // Fast path on (when this kernel can run it): replies of translated connections are
    // left to the stack, and counted.
    let on = lab.fast_path("n1").expect("status").on;
    assert!(
        on || !prereq::kernel_has_tcx(),
        "the fast path is off on a kernel that runs it:\n{}",
        lab.node_status("n1").unwrap_or_default()
    );
    let before = [lab.fast_path("n1").unwrap(), lab.fast_path("n2").unwrap()];
    check_every_case(&lab, &pods, "fast path on");
    let after = [lab.fast_path("n1").unwrap(), lab.fast_path("n2").unwrap()];
    if on {
        for (node, (before, after)) in ["n1", "n2"].iter().zip(before.iter().zip(&after)) {
            assert!(
                after.translated > before.translated,
                "{node}'s fast path left no translated connection to the stack: {after:?}"
            );
        }
        // Plain pod-to-pod traffic still takes the fast path.
        let forwarded = lab.fast_path("n2").unwrap().forwarded;
        let direct = answers(&lab, &pods.d.0, &pods.a.1, SERVER_PORT, Proto::Tcp, 3);
        assert_eq!(direct, vec![pods.a.0.clone(); 3]);
        assert!(
            lab.fast_path("n2").unwrap().forwarded > forwarded,
            "direct pod-to-pod traffic left the fast path"
        );
    }

    // Fast path off: the same cases through the host stack alone.
    lab.set_fast_path(false).expect("agents restarted");
    assert!(!lab.fast_path("n1").unwrap().on, "fast path still on");
    check_every_case(&lab, &pods, "fast path off");

    host_port(&lab, "DEL");
    let nat = run_in(
        &lab.node("n1").unwrap().ns,
        "iptables",
        &["-w", "-t", "nat", "-S"],
    );
    assert!(!nat.contains("CNI-DN-"), "portmap rules left:\n{nat}");
}
