//! The compiled plans and the semantics agree on every cell, for random policies over the
//! x/y/z × a/b/c world: selectors of every form over the labels the world has, address
//! blocks with exceptions over its addresses, numbered, ranged and named ports, and both
//! address families.

mod common;

use common::*;
use proptest::prelude::*;
use wren_policy::{
    Cluster, EgressRule, IngressRule, IpBlock, LabelSelector, LabelSelectorRequirement,
    NetworkPolicy, NodePlan, PolicyPeer, PolicyPort, PolicyType, PortSpec, Protocol,
    SelectorOperator, decode_policies,
};

fn selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelSelector> {
    let pair = (prop::sample::select(keys), prop::sample::select(values));
    (
        prop::collection::btree_map(
            pair.clone().prop_map(|(k, _)| k.to_owned()),
            prop::sample::select(values).prop_map(str::to_owned),
            0..2,
        ),
        prop::collection::vec(
            (
                prop::sample::select(keys),
                0..4usize,
                prop::sample::subsequence(values.to_vec(), 1..=2),
            ),
            0..2,
        ),
    )
        .prop_map(|(match_labels, exprs)| LabelSelector {
            match_labels,
            match_expressions: exprs
                .into_iter()
                .map(|(key, op, values)| {
                    let operator = [
                        SelectorOperator::In,
                        SelectorOperator::NotIn,
                        SelectorOperator::Exists,
                        SelectorOperator::DoesNotExist,
                    ][op];
                    LabelSelectorRequirement {
                        key: key.to_owned(),
                        operator,
                        values: match operator {
                            SelectorOperator::In | SelectorOperator::NotIn => {
                                values.into_iter().map(str::to_owned).collect()
                            }
                            _ => Vec::new(),
                        },
                    }
                })
                .collect(),
        })
}

fn pod_selector() -> impl Strategy<Value = LabelSelector> {
    selector(&["pod", "ns", "other"], &["a", "b", "c", "x"])
}

fn namespace_selector() -> impl Strategy<Value = LabelSelector> {
    selector(
        &["ns", "kubernetes.io/metadata.name", "other"],
        &["x", "y", "z"],
    )
}

fn peer() -> impl Strategy<Value = PolicyPeer> {
    prop_oneof![
        pod_selector().prop_map(|p| PolicyPeer {
            pod_selector: Some(p),
            ..PolicyPeer::default()
        }),
        namespace_selector().prop_map(|n| PolicyPeer {
            namespace_selector: Some(n),
            ..PolicyPeer::default()
        }),
        (pod_selector(), namespace_selector()).prop_map(|(p, n)| PolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ip_block: None,
        }),
        (1u8..=3, prop::option::of((1u8..=3, 1u8..=3)), any::<bool>()).prop_map(
            |(n, except, v6)| {
                let (cidr, except) = if v6 {
                    (
                        format!("fd00:65::{n}:0/112"),
                        except.map(|(_, p)| format!("fd00:65::{n}:{p}/128")),
                    )
                } else {
                    (
                        format!("10.65.{n}.0/24"),
                        except.map(|(_, p)| format!("10.65.{n}.{p}/32")),
                    )
                };
                PolicyPeer {
                    ip_block: Some(IpBlock {
                        cidr: cidr.parse().unwrap(),
                        except: except.into_iter().map(|e| e.parse().unwrap()).collect(),
                    }),
                    ..PolicyPeer::default()
                }
            }
        ),
    ]
}

fn port() -> impl Strategy<Value = PolicyPort> {
    prop_oneof![
        (
            any::<bool>(),
            prop::sample::select(vec![79i64, 80, 81]),
            prop::option::of(80i64..=82)
        )
            .prop_map(|(udp, port, end)| PolicyPort {
                protocol: Some(if udp { Protocol::Udp } else { Protocol::Tcp }),
                port: Some(PortSpec::Number(port)),
                end_port: end.filter(|e| *e >= port),
            }),
        (
            any::<bool>(),
            prop::sample::select(vec![
                "serve-80-tcp",
                "serve-81-udp",
                "serve-80-udp",
                "nothing"
            ])
        )
            .prop_map(|(udp, name)| PolicyPort {
                protocol: Some(if udp { Protocol::Udp } else { Protocol::Tcp }),
                port: Some(PortSpec::Name(name.to_owned())),
                end_port: None,
            }),
        Just(PolicyPort {
            protocol: Some(Protocol::Udp),
            port: None,
            end_port: None
        }),
    ]
}

fn rules() -> impl Strategy<Value = Vec<(Vec<PolicyPeer>, Vec<PolicyPort>)>> {
    prop::collection::vec(
        (
            prop::collection::vec(peer(), 0..3),
            prop::collection::vec(port(), 0..3),
        ),
        0..3,
    )
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(vec!["x", "y", "z"]),
        0u32..1000,
        pod_selector(),
        prop::option::of(prop::sample::subsequence(vec![PolicyType::Ingress, PolicyType::Egress], 0..=2)),
        rules(),
        rules(),
    )
        .prop_map(|(namespace, n, pod_selector, policy_types, ingress, egress)| {
            let yaml = format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{n}, namespace: {namespace}}}\n");
            let mut p = decode_policies(&yaml).unwrap().remove(0);
            p.spec.pod_selector = pod_selector;
            p.spec.policy_types = policy_types;
            p.spec.ingress = ingress.into_iter().map(|(from, ports)| IngressRule { from, ports }).collect();
            p.spec.egress = egress.into_iter().map(|(to, ports)| EgressRule { to, ports }).collect();
            p
        })
}

/// The verdict of precomputed plans on one cell.
fn by_plans(
    cluster: &Cluster,
    plans: &[NodePlan],
    src: &str,
    dst: &str,
    port: u16,
    protocol: Protocol,
    v6: bool,
) -> bool {
    let find = |id: &str| {
        let (ns, pod) = id.split_once('/').unwrap();
        cluster.pod(ns, pod).unwrap()
    };
    let (s, d) = (find(src), find(dst));
    // A pod's traffic to itself never leaves it: no node's rules meet it.
    if src == dst {
        return true;
    }
    let from = *s.addresses.iter().find(|a| a.is_ipv6() == v6).unwrap();
    let to = d.address_like(from).unwrap();
    let plan = |node: &str| plans.iter().find(|p| p.node == node).unwrap();
    let egress_ok = plan(&s.node)
        .endpoints
        .iter()
        .find(|e| e.interface == s.host_interface)
        .and_then(|e| e.egress.as_ref())
        .is_none_or(|p| p.admits(to, protocol, port).is_some());
    let ingress_ok = plan(&d.node)
        .endpoints
        .iter()
        .find(|e| e.interface == d.host_interface)
        .and_then(|e| e.ingress.as_ref())
        .is_none_or(|p| p.admits(from, protocol, port).is_some());
    egress_ok && ingress_ok
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn compiled_plans_agree_with_the_semantics(policies in prop::collection::vec(policy(), 1..4)) {
        let mut cluster = world();
        for p in &policies {
            // Every generated policy is valid; the generator must not produce others.
            wren_policy::validate::validate(p).map_err(|e| TestCaseError::fail(e.to_string()))?;
            cluster.add_policy(p.clone());
        }
        let plans: Vec<NodePlan> = NODES.iter().map(|n| cluster.plan_node(n)).collect();
        let pods = pod_ids(&cluster);
        for v6 in [false, true] {
            let semantics = Table::probe(&pods, |s, d, port, proto| semantic(&cluster, s, d, port, proto, v6));
            let compiled = Table::probe(&pods, |s, d, port, proto| by_plans(&cluster, &plans, s, d, port, proto, v6));
            prop_assert!(
                semantics == compiled,
                "v6 = {v6}\n{}\nsemantics:\n{}\ncompiled:\n{}",
                wren_policy::encode_policies(&policies).unwrap(),
                semantics.render(&compiled),
                compiled.render(&semantics)
            );
        }
    }
}
