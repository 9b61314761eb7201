//! The configuration files shipped in `deploy/` are accepted by the agent's parser, and every
//! key the agent knows is documented in the example.

use std::path::Path;

use wren_agent::config::FileConfig;

fn repo_file(path: &str) -> (std::path::PathBuf, String) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"));
    (full, text)
}

/// The example with every commented-out key switched on.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_parses_with_every_key_set() {
    let (path, text) = repo_file("deploy/config/wren.toml");
    let all = uncommented(&text);
    let parsed = FileConfig::parse(&path, &all).unwrap_or_else(|e| panic!("{e}"));
    // Every field of FileConfig is present in the example.
    let as_toml = toml::to_string(&parsed).unwrap();
    let set: Vec<&str> = as_toml
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .collect();
    let documented = toml::to_string(&FileConfig::default()).unwrap();
    assert!(documented.trim().is_empty(), "defaults serialize no keys");
    for key in [
        "nodeName",
        "nodeIp",
        "nodeIpv6",
        "nodeIpInterface",
        "nodeIpNotLocal",
        "asNumber",
        "routeReflectorClusterId",
        "bgpPort",
        "socket",
        "metricsAddr",
        "logFormat",
        "etcdEndpoints",
        "etcdCa",
        "etcdCert",
        "etcdKey",
        "etcdPrefix",
        "reconcileInterval",
        "livenessTtl",
        "bgpSyncTimeout",
        "gracefulRestartTime",
        "orphanGracePeriod",
        "leakReleaseInterval",
        "leakGracePeriod",
        "stateDir",
        "podMtu",
        "vxlanMtu",
        "ipipMtu",
        "fastPath",
        "maxPaths",
    ] {
        assert!(
            set.contains(&key),
            "{key} is not documented in deploy/config/wren.toml"
        );
    }
    assert_eq!(
        set.len(),
        29,
        "a key was added to the agent: document it in the example"
    );
}

#[test]
fn the_kubernetes_config_map_carries_a_valid_config() {
    let (path, text) = repo_file("deploy/kubernetes/wren.yaml");
    let start = text
        .find("wren.toml: |")
        .expect("no wren.toml in the ConfigMap");
    let body: String = text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    FileConfig::parse(&path, &body).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_misspelt_key_is_refused_naming_it() {
    let err = FileConfig::parse(Path::new("x.toml"), "nodeIP = \"10.0.0.2/24\"\n").unwrap_err();
    assert!(err.to_string().contains("nodeIP"), "{err}");
}
