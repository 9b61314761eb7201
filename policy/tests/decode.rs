//! Decoding what users give `kubectl apply`: one or many documents, all validated first,
//! each error naming the document and the field.

use proptest::prelude::*;
use wren_policy::{
    DecodeError, IpBlock, LabelSelector, LabelSelectorRequirement, NetworkPolicy, PolicyPeer,
    PolicyPort, PolicyType, PortSpec, Problem, Protocol, SelectorOperator, decode_policies,
};

const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

fn error(yaml: &str) -> String {
    decode_policies(yaml)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn many_documents_decode_in_order_and_default_their_namespace() {
    let yaml = format!(
        "{HEAD}metadata: {{name: one}}\nspec: {{podSelector: {{}}}}\n---\n{HEAD}metadata:\n  name: two\n  namespace: web\n  uid: 1234\n  resourceVersion: '9'\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}}}]\n    ports: [{{port: http}}, {{port: 8000, endPort: 8080, protocol: UDP}}]\n---\n"
    );
    let policies = decode_policies(&yaml).unwrap();
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[0].id().to_string(), "default/one");
    assert_eq!(policies[1].id().to_string(), "web/two");
    let rule = &policies[1].spec.ingress[0];
    assert_eq!(rule.ports[0].port, Some(PortSpec::Name("http".into())));
    assert_eq!(rule.ports[0].protocol(), Protocol::Tcp);
    assert_eq!(rule.ports[1].end_port, Some(8080));
    assert!(policies[1].isolates(PolicyType::Ingress));
    assert!(!policies[1].isolates(PolicyType::Egress));
}

#[test]
fn each_error_names_the_document_and_the_field() {
    let good = format!("{HEAD}metadata: {{name: good}}\nspec: {{podSelector: {{}}}}\n");
    let cases = [
        (
            format!(
                "{good}---\n{HEAD}metadata: {{name: bad}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}}}]\n"
            ),
            "document 2 (bad): spec.ingress[0].from[0].ipBlock.except[0]: 192.168.0.0/16 is not strictly inside 10.0.0.0/8",
        ),
        (
            format!("{HEAD}metadata: {{name: typo}}\nspec:\n  podSelector: {{}}\n  ingres: []\n"),
            "document 1 (typo): spec.ingres: unknown field `ingres`",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: port}}\nspec:\n  podSelector: {{}}\n  egress:\n  - ports: [{{port: 70000}}]\n"
            ),
            "document 1 (port): spec.egress[0].ports[0].port: port 70000 is outside 1-65535",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: range}}\nspec:\n  podSelector: {{}}\n  egress:\n  - ports: [{{port: dns, endPort: 60}}]\n"
            ),
            "document 1 (range): spec.egress[0].ports[0].endPort: endPort needs a numeric port",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: ends}}\nspec:\n  podSelector: {{}}\n  egress:\n  - ports: [{{port: 90, endPort: 80}}]\n"
            ),
            "document 1 (ends): spec.egress[0].ports[0].endPort: endPort 80 must be between port 90 and 65535",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: op}}\nspec:\n  podSelector: {{matchExpressions: [{{key: app, operator: In}}]}}\n"
            ),
            "document 1 (op): spec.podSelector.matchExpressions[0].values: operator In needs at least one value",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: op2}}\nspec:\n  podSelector: {{matchExpressions: [{{key: app, operator: Has}}]}}\n"
            ),
            "document 1 (op2): spec.podSelector.matchExpressions[0].operator: unknown variant `Has`",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: peer}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{}}]\n"
            ),
            "document 1 (peer): spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: mixed}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/8}}, podSelector: {{}}}}]\n"
            ),
            "document 1 (mixed): spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector",
        ),
        (
            format!("{HEAD}metadata: {{name: Upper}}\nspec: {{podSelector: {{}}}}\n"),
            "document 1 (Upper): metadata.name: \"Upper\" is not a valid policy name",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: lbl}}\nspec:\n  podSelector: {{matchLabels: {{'-bad': x}}}}\n"
            ),
            "document 1 (lbl): spec.podSelector.matchLabels.-bad: \"-bad\" is not a valid label key",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: cidr}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.300/8}}}}]\n"
            ),
            "document 1 (cidr): spec.ingress[0].from[0].ipBlock.cidr: invalid IP address syntax",
        ),
        (
            format!(
                "{HEAD}metadata: {{name: nameless-port}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports: [{{port: Web_1}}]\n"
            ),
            "document 1 (nameless-port): spec.ingress[0].ports[0].port: \"Web_1\" is not a valid port name",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1}\n"
                .to_owned(),
            "document 1 (web): kind: only NetworkPolicy documents are accepted, found \"Deployment\"",
        ),
        (
            "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old}\nspec: {}\n".to_owned(),
            "document 1 (old): apiVersion: must be \"networking.k8s.io/v1\"",
        ),
        (
            format!("{HEAD}spec: {{podSelector: {{}}}}\n"),
            "document 1: metadata.name: is required",
        ),
        (
            format!("{good}---\n{good}"),
            "document 2 (good): default/good is also document 1",
        ),
        (
            format!("{good}---\n{HEAD}metadata: {{name: x\n"),
            "document 2: not valid YAML",
        ),
        (
            "# nothing here\n".to_owned(),
            "no NetworkPolicy in the input",
        ),
        (
            "- a\n- b\n".to_owned(),
            "document 1: .: a document must be a mapping",
        ),
    ];
    for (yaml, expected) in cases {
        let message = error(&yaml);
        assert!(
            message.starts_with(expected),
            "{message:?} does not start with {expected:?}"
        );
        assert!(!message.contains('\n'), "not one line: {message:?}");
    }
}

#[test]
fn a_missing_name_is_its_own_error() {
    let e =
        decode_policies(&format!("{HEAD}metadata: {{namespace: x}}\nspec: {{}}\n")).unwrap_err();
    match e {
        DecodeError::Invalid { document, error } => {
            assert_eq!(document.index, 1);
            assert_eq!(error.field, "metadata.name");
            assert_eq!(error.problem, Problem::Missing);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stored_json_decodes_as_the_yaml_did() {
    let yaml = format!(
        "{HEAD}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  egress:\n  - to: [{{namespaceSelector: {{}}}}]\n    ports: [{{port: 53, protocol: UDP}}]\n"
    );
    let policy = decode_policies(&yaml).unwrap().remove(0);
    let json = serde_json::to_value(&policy).unwrap();
    assert_eq!(wren_policy::decode_value(1, json).unwrap(), policy);
}

fn label_name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,6}[a-z0-9])?"
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        prop::collection::btree_map(label_name(), label_name(), 0..3),
        prop::collection::vec(
            (
                label_name(),
                0..4usize,
                prop::collection::vec(label_name(), 1..3),
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
                    let values = match operator {
                        SelectorOperator::In | SelectorOperator::NotIn => values,
                        _ => Vec::new(),
                    };
                    LabelSelectorRequirement {
                        key,
                        operator,
                        values,
                    }
                })
                .collect(),
        })
}

fn peer() -> impl Strategy<Value = PolicyPeer> {
    prop_oneof![
        (prop::option::of(selector()), selector()).prop_map(|(p, n)| PolicyPeer {
            pod_selector: p,
            namespace_selector: Some(n),
            ip_block: None,
        }),
        selector().prop_map(|p| PolicyPeer {
            pod_selector: Some(p),
            ..PolicyPeer::default()
        }),
        (0u8..=255, 8u8..=16).prop_map(|(octet, len)| PolicyPeer {
            ip_block: Some(IpBlock {
                cidr: format!("{octet}.0.0.0/{len}").parse().unwrap(),
                except: vec![format!("{octet}.0.0.0/24").parse().unwrap()],
            }),
            ..PolicyPeer::default()
        }),
    ]
}

fn port() -> impl Strategy<Value = PolicyPort> {
    (
        0..3usize,
        1i64..=65535,
        prop::option::of(0i64..100),
        "[a-z]{1,8}",
        any::<bool>(),
    )
        .prop_map(|(p, number, extra, name, named)| PolicyPort {
            protocol: Some([Protocol::Tcp, Protocol::Udp, Protocol::Sctp][p]),
            port: Some(if named {
                PortSpec::Name(name)
            } else {
                PortSpec::Number(number)
            }),
            end_port: if named {
                None
            } else {
                extra.map(|e| (number + e).min(65535))
            },
        })
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        label_name(),
        label_name(),
        selector(),
        prop::collection::vec(
            (
                prop::collection::vec(peer(), 0..3),
                prop::collection::vec(port(), 0..3),
            ),
            0..3,
        ),
        prop::collection::vec(
            (
                prop::collection::vec(peer(), 0..3),
                prop::collection::vec(port(), 0..3),
            ),
            0..3,
        ),
    )
        .prop_map(|(name, namespace, pod_selector, ingress, egress)| {
            let yaml = format!("{HEAD}metadata: {{name: {name}, namespace: {namespace}}}\n");
            let mut p = decode_policies(&yaml).unwrap().remove(0);
            p.spec.pod_selector = pod_selector;
            p.spec.ingress = ingress
                .into_iter()
                .map(|(from, ports)| wren_policy::model::IngressRule { from, ports })
                .collect();
            p.spec.egress = egress
                .into_iter()
                .map(|(to, ports)| wren_policy::model::EgressRule { to, ports })
                .collect();
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text: an answer, never a panic; an error is one line.
    #[test]
    fn any_text_decodes_or_fails_cleanly(text in ".{0,400}") {
        if let Err(e) = decode_policies(&text) {
            prop_assert!(!e.to_string().contains('\n'));
        }
    }

    /// Text that looks like a policy, with random damage: never a panic.
    #[test]
    fn damaged_policies_fail_cleanly(cut in 0usize..400, junk in "[ :\\[\\]{}a-z0-9-]{0,6}") {
        let mut text = format!("{HEAD}metadata: {{name: p}}\nspec:\n  podSelector: {{matchLabels: {{a: b}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]\n    ports: [{{port: 80, endPort: 90}}]\n");
        let at = cut.min(text.len());
        text.insert_str(at, &junk);
        let _ = decode_policies(&text);
    }

    /// A valid policy written as YAML (as `kubectl get -o yaml` would) decodes to itself.
    #[test]
    fn valid_policies_round_trip_through_yaml(p in policy()) {
        let yaml = serde_yaml_ng::to_string(&p).unwrap();
        let back = decode_policies(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(back, vec![p]);
    }
}
