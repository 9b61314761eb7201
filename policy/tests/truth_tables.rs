//! The upstream Kubernetes network policy e2e cases, evaluated in memory: each case applies
//! policies to the x/y/z × a/b/c world and compares the whole reachability table (every
//! source → destination → port cell, IPv4 and IPv6) with the expected one, twice: through
//! the semantics (`Cluster::verdict`) and through the compiled per-node plans that the
//! dataplane enforces.

mod common;

use common::*;
use wren_policy::{Cluster, Protocol};

use Protocol::{Tcp, Udp};

type Expect = fn(&str, &str, u16, Protocol) -> bool;

struct Case {
    name: &'static str,
    setup: fn(&mut Cluster),
    expect: Expect,
}

fn ns(pod: &str) -> &str {
    pod.split_once('/').unwrap().0
}

fn run(case: &Case) {
    let mut cluster = world();
    (case.setup)(&mut cluster);
    let pods = pod_ids(&cluster);
    // A pod may always reach itself (Kubernetes' policies cannot block a pod's access to
    // itself; its traffic to its own address never leaves it).
    let expected = Table::probe(&pods, |s, d, port, proto| {
        s == d || (case.expect)(s, d, port, proto)
    });
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let observed = Table::probe(&pods, |s, d, port, proto| {
            semantic(&cluster, s, d, port, proto, v6)
        });
        assert_tables(
            &format!("{} ({family}, semantics)", case.name),
            &expected,
            &observed,
        );
        let observed = Table::probe(&pods, |s, d, port, proto| {
            compiled(&cluster, s, d, port, proto, v6)
        });
        assert_tables(
            &format!("{} ({family}, compiled plans)", case.name),
            &expected,
            &observed,
        );
    }
}

const DENY_ALL_INGRESS_X: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no policy: everything reaches everything",
            setup: |_| {},
            expect: |_, _, _, _| true,
        },
        Case {
            name: "default deny ingress in x",
            setup: |c| apply(c, DENY_ALL_INGRESS_X),
            expect: |_, d, _, _| ns(d) != "x",
        },
        Case {
            name: "default deny egress in x",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
                )
            },
            expect: |s, _, _, _| ns(s) != "x",
        },
        Case {
            name: "allow all ingress in x",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
",
                )
            },
            expect: |_, _, _, _| true,
        },
        Case {
            name: "x/a takes only x/b (podSelector in its namespace)",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
",
                )
            },
            expect: |s, d, _, _| d != "x/a" || s == "x/b",
        },
        Case {
            name: "x/a takes namespace y (namespaceSelector)",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
",
                )
            },
            expect: |s, d, _, _| d != "x/a" || ns(s) == "y",
        },
        Case {
            name: "x/a takes pod c of namespace y (both selectors in one peer)",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: c}}
",
                )
            },
            expect: |s, d, _, _| d != "x/a" || s == "y/c",
        },
        Case {
            name: "x/a takes namespace y or pod c of x (two peers)",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-y-or-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: c}}
",
                )
            },
            expect: |s, d, _, _| d != "x/a" || ns(s) == "y" || s == "x/c",
        },
        Case {
            name: "matchExpressions In on pods",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b-c, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]
",
                )
            },
            expect: |s, d, _, _| d != "x/a" || s == "x/b" || s == "x/c",
        },
        Case {
            name: "matchExpressions NotIn on namespaces",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: not-from-y, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}]}}]
",
                )
            },
            expect: |s, d, _, _| ns(d) != "x" || ns(s) != "y",
        },
        Case {
            name: "matchExpressions Exists: every pod of x, no other namespace",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-labelled, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: pod, operator: Exists}]}}]
",
                )
            },
            expect: |s, d, _, _| d != "x/b" || ns(s) == "x",
        },
        Case {
            name: "matchExpressions DoesNotExist on namespaces",
            setup: |c| {
                c.set_namespace("z", labels(&[("ns", "z"), ("quarantine", "yes")]));
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: not-quarantined, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: quarantine, operator: DoesNotExist}]}}]
",
                )
            },
            expect: |s, d, _, _| d != "x/c" || ns(s) != "z",
        },
        Case {
            name: "the kubernetes.io/metadata.name label every namespace carries",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-z-by-name, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]
",
                )
            },
            expect: |s, d, _, _| ns(d) != "x" || ns(s) == "z",
        },
        Case {
            name: "an empty namespaceSelector picks every namespace's pods",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-all-namespaces, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: 81}]
",
                )
            },
            expect: |_, d, port, proto| ns(d) != "x" || (port == 81 && proto == Tcp),
        },
        Case {
            name: "a podSelector alone stays in the policy's namespace",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a, namespace: y}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
",
                )
            },
            expect: |s, d, _, _| ns(d) != "y" || s == "y/a",
        },
        Case {
            name: "ingress on TCP port 80 only",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tcp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80, protocol: TCP}]
",
                )
            },
            expect: |_, d, port, proto| d != "x/a" || (port == 80 && proto == Tcp),
        },
        Case {
            name: "ingress on UDP port 81 only",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81, protocol: UDP}]
",
                )
            },
            expect: |_, d, port, proto| d != "x/a" || (port == 81 && proto == Udp),
        },
        Case {
            name: "ingress on a named port",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: serve-81-tcp}]
",
                )
            },
            expect: |s, d, port, proto| {
                ns(d) != "x" || (ns(s) == "y" && port == 81 && proto == Tcp)
            },
        },
        Case {
            name: "a named port of the wrong protocol allows nothing",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-wrong-protocol, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: serve-80-tcp, protocol: UDP}]
",
                )
            },
            expect: |_, d, _, _| d != "x/a",
        },
        Case {
            name: "endPort: a range of ports",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 79, endPort: 80, protocol: TCP}, {port: 81, endPort: 90, protocol: UDP}]
",
                )
            },
            expect: |_, d, port, proto| {
                ns(d) != "x" || (port == 80 && proto == Tcp) || (port == 81 && proto == Udp)
            },
        },
        Case {
            name: "SCTP only: TCP and UDP stay out",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - ports: [{port: 80, protocol: SCTP}]
",
                )
            },
            expect: |_, d, _, _| d != "y/b",
        },
        Case {
            name: "ipBlock with except (both families)",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: block, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.65.0.0/16, except: [10.65.2.0/24, 10.65.1.2/32]}
    - ipBlock: {cidr: 'fd00:65::/64', except: ['fd00:65::2:0/112', 'fd00:65::1:2/128']}
",
                )
            },
            expect: |s, d, _, _| d != "x/a" || (ns(s) != "y" && s != "x/b"),
        },
        Case {
            name: "egress deny-all but DNS-like UDP 81 anywhere",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 81, protocol: UDP}]
",
                )
            },
            expect: |s, _, port, proto| s != "x/a" || (port == 81 && proto == Udp),
        },
        Case {
            name: "egress to a named port (without policyTypes it isolates ingress too)",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-named, namespace: x}
spec:
  podSelector: {}
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: serve-80-udp, protocol: UDP}]
",
                )
            },
            expect: |s, d, port, proto| {
                ns(d) != "x" && (ns(s) != "x" || (port == 80 && proto == Udp))
            },
        },
        Case {
            name: "egress ipBlock with except",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-block, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.65.1.0/24, except: [10.65.1.1/32]}
    - ipBlock: {cidr: 'fd00:65::1:0/112', except: ['fd00:65::1:1/128']}
",
                )
            },
            expect: |s, d, _, _| s != "z/c" || (ns(d) == "x" && d != "x/a"),
        },
        Case {
            name: "egress to namespace y on TCP 80",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-y-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}]
",
                )
            },
            expect: |s, d, port, proto| s != "x/b" || (ns(d) == "y" && port == 80 && proto == Tcp),
        },
        Case {
            name: "several policies on one pod: the union of their rules",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y-on-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 81, protocol: UDP}]
",
                )
            },
            expect: |s, d, port, proto| {
                d != "x/a" || s == "x/b" || (ns(s) == "y" && port == 81 && proto == Udp)
            },
        },
        Case {
            name: "a deny-all beside an allow adds nothing",
            setup: |c| {
                apply(c, DENY_ALL_INGRESS_X);
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
",
                )
            },
            expect: |s, d, _, _| ns(d) != "x" || (d == "x/c" && ns(s) == "z"),
        },
        Case {
            name: "ingress and egress in one policy",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
",
                )
            },
            expect: |s, d, _, _| (d != "y/a" || ns(s) == "x") && (s != "y/a" || ns(d) == "z"),
        },
        Case {
            name: "policyTypes Ingress alone ignores egress rules",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress: [{}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
",
                )
            },
            expect: |_, _, _, _| true,
        },
        Case {
            name: "policyTypes both with no rules isolates both ways",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lockdown, namespace: z}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
",
                )
            },
            expect: |s, d, _, _| s != "z/a" && d != "z/a",
        },
        Case {
            name: "a policy selecting no pod changes nothing",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nobody, namespace: x}
spec:
  podSelector: {matchLabels: {pod: nobody}}
  policyTypes: [Ingress, Egress]
",
                )
            },
            expect: |_, _, _, _| true,
        },
        Case {
            name: "a policy updated in place: deny-all becomes allow from y",
            setup: |c| {
                apply(c, DENY_ALL_INGRESS_X);
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
",
                )
            },
            expect: |s, d, _, _| ns(d) != "x" || ns(s) == "y",
        },
        Case {
            name: "a pod created after the policy is covered by it",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b-anywhere, namespace: z}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]
",
                )
            },
            expect: |s, d, _, _| d != "z/a" || s.ends_with("/b"),
        },
        Case {
            name: "a namespace relabelled joins the allowed set",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-trusted, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {trust: 'yes'}}}]
",
                );
                c.set_namespace("z", labels(&[("ns", "z"), ("trust", "yes")]));
            },
            expect: |s, d, _, _| d != "x/b" || ns(s) == "z",
        },
        Case {
            name: "ingress rule with ports and no peers takes every source on those ports",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: z}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}]
",
                )
            },
            expect: |_, d, port, _| ns(d) != "z" || port == 80,
        },
        Case {
            name: "egress to pods of another namespace by both selectors",
            setup: |c| {
                apply(
                    c,
                    "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-z-a, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}]
",
                )
            },
            expect: |s, d, _, _| ns(s) != "y" || d == "z/a",
        },
    ]
}

#[test]
fn every_case_gives_the_expected_table() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    for case in &cases {
        run(case);
    }
}

#[test]
fn a_pod_created_after_the_policy_is_selected_by_it() {
    let mut cluster = world();
    apply(&mut cluster, DENY_ALL_INGRESS_X);
    let mut late = pod(0, 0, "d");
    late.addresses = vec![
        "10.65.1.9".parse().unwrap(),
        "fd00:65::1:9".parse().unwrap(),
    ];
    late.host_interface = "wrenxd".to_owned();
    cluster.add_pod(late);
    assert!(!semantic(&cluster, "y/a", "x/d", 80, Tcp, false));
    assert!(!compiled(&cluster, "y/a", "x/d", 80, Tcp, false));
    assert!(semantic(&cluster, "x/d", "y/a", 80, Tcp, false));
}

#[test]
fn own_node_traffic_passes_isolation_and_other_nodes_do_not() {
    let mut cluster = world();
    apply(&mut cluster, DENY_ALL_INGRESS_X);
    let pod = cluster.pod("x", "a").unwrap();
    assert_eq!(pod.node, "n1");
    for (host, allowed) in [("192.168.0.1", true), ("192.168.0.2", false)] {
        let flow = wren_policy::Flow {
            source: wren_policy::Party {
                address: host.parse().unwrap(),
                pod: None,
            },
            destination: wren_policy::Party {
                address: pod.addresses[0],
                pod: Some(pod),
            },
            port: Some((Tcp, 80)),
        };
        let verdict = cluster.verdict(&flow);
        assert_eq!(verdict.allowed(), allowed, "{host}: {verdict:?}");
        assert_eq!(verdict.egress, wren_policy::DirectionVerdict::NotAPod);
    }
}

#[test]
fn traffic_without_ports_passes_only_rules_without_ports() {
    let mut cluster = world();
    apply(
        &mut cluster,
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: mixed, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  - from: [{podSelector: {matchLabels: {pod: c}}}]
    ports: [{port: 80}]
",
    );
    let a = cluster.pod("x", "a").unwrap();
    for (from, allowed) in [("b", true), ("c", false)] {
        let source = cluster.pod("x", from).unwrap();
        let ping = wren_policy::Flow::between(source, a, None).unwrap();
        assert_eq!(cluster.verdict(&ping).allowed(), allowed, "x/{from}");
        let tcp = wren_policy::Flow::between(source, a, Some((Tcp, 80))).unwrap();
        assert!(cluster.verdict(&tcp).allowed(), "x/{from} on TCP 80");
    }
}
