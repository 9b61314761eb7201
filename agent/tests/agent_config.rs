//! `wren agent` configuration as an operator meets it: the real binary, real files and
//! environment variables. Bad values stop the agent with one line naming the culprit.

use std::io::Write;
use std::process::{Command, Output};

fn wren() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wren"));
    // The test's own environment must not leak settings in.
    for (key, _) in std::env::vars() {
        if key.starts_with("WREN_") {
            command.env_remove(key);
        }
    }
    command
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// Asserts the command failed with exactly one line on stderr containing every `needle`.
fn assert_one_line_error(output: Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr:?}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from {stderr:?}"
        );
    }
}

#[test]
fn an_unknown_key_in_the_file_is_named() {
    let file = config_file("nodeName = \"n1\"\nnodeIP = \"10.0.0.1/24\"\n");
    let output = wren()
        .args(["agent", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_one_line_error(output, &["nodeIP", "line 2"]);
}

#[test]
fn a_missing_config_file_is_an_error() {
    let output = wren()
        .args(["agent", "--config", "/nonexistent/wren.toml"])
        .output()
        .unwrap();
    assert_one_line_error(output, &["/nonexistent/wren.toml"]);
}

#[test]
fn a_malformed_endpoint_is_named() {
    for endpoint in ["localhost:2379", "http://", "http://etcd:2379/v3"] {
        let output = wren()
            .args([
                "agent",
                "--node-ip",
                "10.0.0.1/24",
                "--etcd-endpoints",
                endpoint,
            ])
            .output()
            .unwrap();
        assert_one_line_error(output, &["--etcd-endpoints", endpoint]);
    }
    let file = config_file("etcdEndpoints = [\"http://127.0.0.1:2379\", \"etcd\"]\n");
    let output = wren()
        .args(["agent", "--node-ip", "10.0.0.1/24", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_one_line_error(output, &["etcdEndpoints", "\"etcd\""]);
}

#[test]
fn as_numbers_out_of_range_are_refused_from_every_source() {
    for asn in ["0", "23456", "4294967296"] {
        let output = wren().args(["agent", "--as", asn]).output().unwrap();
        assert_one_line_error(output, &["--as", asn]);
        let output = wren().args(["agent"]).env("WREN_AS", asn).output().unwrap();
        assert_one_line_error(output, &["WREN_AS", asn]);
    }
    let file = config_file("asNumber = 4294967296\n");
    let output = wren()
        .args(["agent", "--node-ip", "10.0.0.1/24", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_one_line_error(output, &["asNumber", "4294967296", "out of range"]);
    let output = wren()
        .args(["peer", "add", "tor", "--peer-ip", "10.0.0.254", "--as", "0"])
        .output()
        .unwrap();
    assert_one_line_error(output, &["--as", "out of range"]);
}

#[test]
fn a_bad_node_ip_is_named() {
    for bad in ["10.0.0.1", "10.0.0.300/24", "fe80::/64x"] {
        let output = wren().args(["agent", "--node-ip", bad]).output().unwrap();
        assert_one_line_error(output, &["--node-ip", bad]);
    }
}

#[test]
fn a_bad_value_is_named_in_the_layer_that_gave_it() {
    let output = wren()
        .args(["agent", "--liveness-ttl", "2s"])
        .output()
        .unwrap();
    assert_one_line_error(output, &["--liveness-ttl", "2s", "out of range 3s to 60m"]);
    let output = wren()
        .args(["agent"])
        .env("WREN_LIVENESS_TTL", "1m30")
        .output()
        .unwrap();
    assert_one_line_error(output, &["WREN_LIVENESS_TTL", "1m30", "90s"]);
    let output = wren()
        .args(["agent"])
        .env("WREN_NODE_IP", "10.0.0.1")
        .output()
        .unwrap();
    assert_one_line_error(output, &["WREN_NODE_IP", "10.0.0.1", "prefix length"]);
    let file = config_file("nodeName = \"n1\"\nlivenessTtl = \"61m\"\n");
    let output = wren()
        .args(["agent", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_one_line_error(output, &["line 2", "livenessTtl", "61m", "out of range"]);
    let file = config_file("metricsAddr = \"127.0.0.1\"\n");
    let output = wren()
        .args(["agent", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_one_line_error(output, &["line 1", "metricsAddr"]);
}

#[test]
fn flags_beat_environment_which_beats_the_file() {
    let file = config_file(
        "nodeName = \"from-file\"\nmetricsAddr = \"127.0.0.1:9301\"\nreconcileInterval = 7\nnodeIp = \"10.1.0.1/16\"\nlivenessTtl = \"1m\"\nbgpSyncTimeout = \"20s\"\n",
    );
    let output = wren()
        .args([
            "agent",
            "--print-config",
            "--node-name",
            "from-flag",
            "--config",
        ])
        .arg(file.path())
        .env("WREN_NODE_NAME", "from-env")
        .env("WREN_METRICS_ADDR", "127.0.0.1:9302")
        .env("WREN_LIVENESS_TTL", "1m30s")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("nodeName = \"from-flag\""), "{printed}");
    assert!(
        printed.contains("metricsAddr = \"127.0.0.1:9302\""),
        "{printed}"
    );
    assert!(printed.contains("reconcileInterval = \"7s\""), "{printed}");
    assert!(printed.contains("nodeIp = \"10.1.0.1/16\""), "{printed}");
    assert!(printed.contains("livenessTtl = \"90s\""), "{printed}");
    assert!(printed.contains("bgpSyncTimeout = \"20s\""), "{printed}");
    // Set nowhere: the default.
    assert!(
        printed.contains("gracefulRestartTime = \"2m\""),
        "{printed}"
    );
}
