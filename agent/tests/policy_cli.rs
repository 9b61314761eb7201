//! `wren policy`, `wren namespace label` and `wren workload label|port` as an operator runs
//! them: the built `wren` binary against a real etcd, with workloads recorded as the agent
//! records them.

use wren_model::{Node, Workload, keys};
use wren_store::json::JsonStore;

// The `wren` runs.
#[allow(dead_code)]
mod cli_support;
use cli_support::*;

const PREFIX: &str = "/wren-policy-cli-test/";

/// A workload as the agent records it after a CNI ADD with a Kubernetes identity.
fn workload(node: &str, namespace: &str, pod: &str, address: &str) -> Workload {
    let container_id = format!("c-{namespace}-{pod}");
    Workload {
        node: node.into(),
        container_id: container_id.clone(),
        ifname: "eth0".into(),
        network: "k8s-pod-network".into(),
        handle: format!("k8s-pod-network.{container_id}"),
        pod_namespace: Some(namespace.into()),
        pod_name: Some(pod.into()),
        pod_uid: None,
        netns: format!("/run/netns/{container_id}"),
        addresses: vec![address.parse().unwrap()],
        host_interface: format!("wren{namespace}{pod}"),
        mac: "ee:ee:ee:ee:ee:01".into(),
    }
}

const GOOD: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: web}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-frontend, namespace: web}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: shop}}
      podSelector: {matchLabels: {app: frontend}}
    ports: [{port: http}]
";

#[test]
fn policy_commands_against_etcd() {
    let Some(Datastore {
        etcd,
        runtime,
        store,
    }) = datastore()
    else {
        return;
    };
    let e = etcd.endpoint();
    let e = e.as_str();
    runtime.block_on(async {
        for w in [
            workload("n1", "web", "api", "10.65.0.2/32"),
            workload("n2", "shop", "frontend", "10.65.1.2/32"),
            workload("n2", "shop", "batch", "10.65.1.3/32"),
        ] {
            let key = keys::workload(&w.node, &w.container_id, &w.ifname);
            store.put_json(&key, &w, None).await.unwrap();
        }
        let node = Node::new("n1", Some("192.168.0.1/24".parse().unwrap()));
        store
            .put_json(&keys::node("n1"), &node, None)
            .await
            .unwrap();
    });

    // A file with one bad document stores nothing, and the error names the document and
    // the field.
    let bad = format!(
        "{GOOD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: broken, namespace: web}}\nspec:\n  podSelector: {{}}\n  egress:\n  - ports: [{{port: 80, endPort: 70}}]\n"
    );
    let before = runtime.block_on(snapshot(store.as_ref()));
    fails_with_input(
        e,
        &["policy", "apply", "-f", "-"],
        &bad,
        "document 3 (broken): spec.egress[0].ports[0].endPort: endPort 70 must be between port 80 and 65535",
    );
    fails_with_input(
        e,
        &["policy", "apply", "-f", "/nonexistent/policy.yaml"],
        "",
        "cannot read /nonexistent/policy.yaml",
    );
    fails_with_input(
        e,
        &["namespace", "label", "shop", "team=shop", "bad!key=x"],
        "",
        "not a valid label key",
    );
    fails_with_input(
        e,
        &["workload", "label", "shop", "app=frontend"],
        "",
        "expected NAMESPACE/NAME",
    );
    fails_with_input(
        e,
        &["workload", "port", "web/api", "HTTP=8080/tcp"],
        "",
        "not a valid port name",
    );
    fails_with_input(
        e,
        &["workload", "port", "web/api", "http=8080/icmp"],
        "",
        "unknown protocol",
    );
    assert_eq!(
        before,
        runtime.block_on(snapshot(store.as_ref())),
        "a refused command wrote"
    );

    // Apply from standard input, then again from a file: created, then unchanged.
    let applied = ok_with_input(e, &["policy", "apply", "-f", "-"], GOOD);
    assert_eq!(
        applied,
        "policy web/deny-all created\npolicy web/from-frontend created\n"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), GOOD).unwrap();
    let again = ok(e, &["policy", "apply", "-f", file.path().to_str().unwrap()]);
    assert_eq!(
        again,
        "policy web/deny-all unchanged\npolicy web/from-frontend unchanged\n"
    );
    let listed = ok(e, &["policy", "list"]);
    assert!(
        listed.contains("deny-all") && listed.contains("(all)"),
        "{listed}"
    );
    assert!(
        listed.contains("from-frontend") && listed.contains("app=api"),
        "{listed}"
    );
    assert_eq!(ok(e, &["policy", "list", "-n", "other"]), "no policies\n");

    // `show` prints YAML that applies back unchanged.
    let shown = ok(e, &["policy", "show", "web/from-frontend"]);
    assert!(shown.contains("kind: NetworkPolicy"), "{shown}");
    assert_eq!(
        ok_with_input(e, &["policy", "apply", "-f", "-"], &shown),
        "policy web/from-frontend unchanged\n"
    );

    // Labels and ports, then explain.
    ok(e, &["workload", "label", "web/api", "app=api"]);
    ok(
        e,
        &[
            "workload",
            "label",
            "shop/frontend",
            "app=frontend",
            "old=1",
        ],
    );
    let relabelled = ok(e, &["workload", "label", "shop/frontend", "old-"]);
    assert_eq!(relabelled, "pod shop/frontend labelled: app=frontend\n");
    ok(e, &["workload", "port", "web/api", "http=8080/tcp"]);
    let explain = |from: &str, to: &str, port: &str| {
        ok(
            e,
            &[
                "policy", "explain", "--from", from, "--to", to, "--port", port,
            ],
        )
    };
    // Before the namespace has the label: denied, naming both isolating policies.
    let denied = explain("shop/frontend", "web/api", "8080/tcp");
    assert!(
        denied.starts_with("denied: shop/frontend (10.65.1.2) -> web/api (10.65.0.2) tcp/8080"),
        "{denied}"
    );
    assert!(
        denied.contains("ingress of web/api: denied: isolated by web/deny-all, web/from-frontend"),
        "{denied}"
    );
    assert!(
        denied.contains("egress of shop/frontend: allowed: no policy isolates it"),
        "{denied}"
    );
    let labelled = ok(e, &["namespace", "label", "shop", "team=shop"]);
    assert_eq!(labelled, "namespace shop labelled: team=shop\n");
    assert!(ok(e, &["namespace", "list"]).contains("team=shop"));
    let allowed = explain("shop/frontend", "web/api", "8080/tcp");
    assert!(allowed.starts_with("allowed:"), "{allowed}");
    assert!(
        allowed.contains("allowed by web/from-frontend spec.ingress[0]"),
        "{allowed}"
    );
    // The named port resolves to 8080 only; another pod of the namespace stays out.
    assert!(explain("shop/frontend", "web/api", "80/tcp").starts_with("denied:"));
    assert!(explain("shop/batch", "web/api", "8080/tcp").starts_with("denied:"));
    let ping = ok(
        e,
        &[
            "policy",
            "explain",
            "--from",
            "shop/frontend",
            "--to",
            "web/api",
        ],
    );
    assert!(
        ping.starts_with("denied:") && ping.contains("without ports"),
        "{ping}"
    );
    fails_with_input(
        e,
        &[
            "policy",
            "explain",
            "--from",
            "shop/ghost",
            "--to",
            "web/api",
        ],
        "",
        "no pod shop/ghost",
    );
    fails_with_input(
        e,
        &[
            "policy",
            "explain",
            "--from",
            "shop/batch",
            "--to",
            "web/api",
            "--port",
            "http",
        ],
        "",
        "--port",
    );

    // Remove: gone from the list and the verdict; a second removal says so.
    assert_eq!(
        ok(e, &["policy", "rm", "web/deny-all"]),
        "policy web/deny-all removed\n"
    );
    assert_eq!(
        ok(e, &["policy", "rm", "web/from-frontend"]),
        "policy web/from-frontend removed\n"
    );
    fails_with_input(
        e,
        &["policy", "rm", "web/deny-all"],
        "",
        "no policy web/deny-all",
    );
    assert_eq!(ok(e, &["policy", "list"]), "no policies\n");
    assert!(explain("shop/batch", "web/api", "80/tcp").starts_with("allowed:"));
}
