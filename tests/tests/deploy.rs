//! The deployment files parse and validate with the tools that consume them: Kubernetes
//! manifests against the API schemas, BIRD and FRR examples with the daemons' own config
//! checkers, the systemd unit with `systemd-analyze verify`, the CNI conflist as JSON of the
//! right shape.

use std::path::{Path, PathBuf};
use std::process::Command;

use wren_tests::prereq;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Runs `command`; on failure returns its combined output.
fn check(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

const VALIDATOR: &str = "/opt/wren-tools/venv/bin/kubernetes-validate";

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    if !prereq::require_command(VALIDATOR) {
        return;
    }
    let manifests = files("deploy/kubernetes", "yaml");
    assert!(manifests.len() >= 2, "no manifests found: {manifests:?}");
    for manifest in &manifests {
        check(
            Command::new(VALIDATOR)
                .args(["--strict", "--quiet"])
                .arg(manifest),
        )
        .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", manifest.display()));
    }
}

#[test]
fn the_validator_rejects_a_misspelt_field() {
    // Proves the manifest check above can fail.
    if !prereq::require_command(VALIDATOR) {
        return;
    }
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/wren.yaml")).unwrap();
    let bad = text.replace("hostNetwork: true", "hostNetwrk: true");
    assert_ne!(bad, text);
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), bad).unwrap();
    assert!(
        check(
            Command::new(VALIDATOR)
                .args(["--strict", "--quiet"])
                .arg(file.path())
        )
        .is_err()
    );
}

#[test]
fn daemonset_probes_use_the_agent_health_endpoints() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/wren.yaml")).unwrap();
    for needle in [
        "path: /readyz",
        "path: /healthz",
        "hostNetwork: true",
        "install-cni.sh",
        "--bin-dir",
    ] {
        assert!(text.contains(needle), "wren.yaml lacks `{needle}`");
    }
}

#[test]
fn bird_examples_parse() {
    if !prereq::require_command("bird") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let examples = files("deploy/examples", "conf");
    let bird: Vec<_> = examples
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bird"))
        })
        .collect();
    assert!(
        bird.len() >= 2,
        "expected eBGP and route-reflector BIRD examples"
    );
    for file in bird {
        check(
            Command::new("bird")
                .arg("-p")
                .arg("-c")
                .arg(file)
                .arg("-s")
                .arg(dir.path().join("s")),
        )
        .unwrap_or_else(|e| panic!("{} does not parse:\n{e}", file.display()));
    }
}

#[test]
fn frr_examples_parse() {
    if !prereq::require_command("vtysh") {
        return;
    }
    let examples = files("deploy/examples", "conf");
    let frr: Vec<_> = examples
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("frr"))
        })
        .collect();
    assert!(
        frr.len() >= 2,
        "expected eBGP and route-reflector FRR examples"
    );
    for file in frr.iter().copied().chain(std::iter::once(
        &repo().join("deploy/containerlab/tor/frr.conf"),
    )) {
        check(Command::new("vtysh").arg("-C").arg("-f").arg(file))
            .unwrap_or_else(|e| panic!("{} does not parse:\n{e}", file.display()));
    }
}

#[test]
fn systemd_unit_verifies() {
    if !prereq::require_command("systemd-analyze") {
        return;
    }
    // `verify` insists the ExecStart binary exists: point it at a stand-in, keep the rest.
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/wren-agent.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("wren");
    std::fs::write(&stand_in, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        &stand_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let unit = unit.replace("/usr/local/bin/wren", &stand_in.to_string_lossy());
    let path = dir.path().join("wren-agent.service");
    std::fs::write(&path, unit).unwrap();
    check(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path),
    )
    .unwrap_or_else(|e| panic!("the systemd unit does not verify:\n{e}"));
}

#[test]
fn rt_protos_names_wren_protocol_201() {
    let text =
        std::fs::read_to_string(repo().join("deploy/iproute2/rt_protos.d/wren.conf")).unwrap();
    let entry = text
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .expect("no entry");
    let fields: Vec<_> = entry.split_whitespace().collect();
    assert_eq!(fields, ["201", "wren"]);
}
