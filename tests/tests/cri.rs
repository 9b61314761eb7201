//! The kubelet path end to end: pods asked of containerd's CRI plugin on two lab nodes, with
//! wren installed into each runtime by `deploy/cni/install.sh`.
//!
//! One rig serves every phase, in order: identity and reachability, hostPort, a containerd
//! crash with pods running, a sandbox whose namespace vanished, pod annotations, a full
//! pool, a configuration naming a socket where no agent listens, and an agent that is not
//! ready (etcd gone). After each phase nothing of a removed pod is left: no workload record,
//! no allocation, no host veth.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wren_tests::cri::{self, CriClient, CriLab, PodSpec};
use wren_tests::lab;
use wren_tests::process::ChildGuard;

/// How long routes may take to reach the other node.
const CONVERGENCE: Duration = Duration::from_secs(20);

/// One ping from the namespace at `netns` (a sandbox's pin) to `ip`, retried until
/// [`CONVERGENCE`] passes.
fn reaches(netns: &Path, ip: &str) -> bool {
    let deadline = Instant::now() + CONVERGENCE;
    loop {
        let ok = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ping", "-n", "-q", "-c", "1", "-W", "1", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok || Instant::now() > deadline {
            return ok;
        }
    }
}

/// Host-side veths the agent made on `node`.
fn host_veths(rig: &CriLab, node: usize) -> Vec<String> {
    let ns = &rig.lab.state().nodes[node].ns;
    let out = wren_tests::netns::run(wren_tests::netns::command_in(ns, "ip").args(["-o", "link"]))
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with("wren") && name != "wren.vxlan" && name != "wrentunl0")
        .collect()
}

fn workloads(rig: &CriLab) -> String {
    rig.lab.wren_cli(&["workload", "list"]).unwrap()
}

/// Asserts that nothing of `ip` and `sandbox` remains: no record, the address free.
fn released(rig: &CriLab, sandbox: &str, ip: &str) {
    let listed = workloads(rig);
    assert!(!listed.contains(sandbox), "record left behind:\n{listed}");
    let shown = rig.lab.wren_cli(&["ipam", "show", "--ip", ip]).unwrap();
    assert!(
        shown.contains("state:    free"),
        "{ip} still held:\n{shown}"
    );
}

/// Asserts the node has exactly `expected` pod veths.
fn veth_count(rig: &CriLab, node: usize, expected: usize) {
    let veths = host_veths(rig, node);
    assert_eq!(
        veths.len(),
        expected,
        "host veths on node {node}: {veths:?}"
    );
}

fn run_ok(rig: &CriLab, node: usize, client: &CriClient, pod: &PodSpec) -> (String, String) {
    let id = client.run(pod).unwrap_or_else(|e| {
        panic!(
            "RunPodSandbox {} on node {node}: {e}\n--- containerd ---\n{}",
            pod.name,
            rig.runtimes[node].log()
        )
    });
    let network = client.network(&id).unwrap();
    assert!(network.ready, "{} not ready", pod.name);
    assert!(
        !network.ip.is_empty(),
        "{}: no pod IP in the status",
        pod.name
    );
    (id, network.ip)
}

/// The shipped conflist with the pod-annotations capability declared on wren's entry.
fn conflist_with_annotations(dir: &Path) -> std::path::PathBuf {
    let shipped = cri::repo_root().join("deploy/cni/10-wren.conflist");
    let mut conflist: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped).unwrap()).unwrap();
    conflist["plugins"][0]["capabilities"] =
        serde_json::json!({ "io.kubernetes.cri.pod-annotations": true });
    let path = dir.join("10-wren.conflist");
    std::fs::write(&path, conflist.to_string()).unwrap();
    path
}

/// A failed sandbox: the runtime's error carries wren's message, and nothing is left.
fn refused(rig: &CriLab, client: &CriClient, pod: &PodSpec, says: &[&str]) {
    let veths = host_veths(rig, 0).len();
    let e = client
        .run(pod)
        .expect_err(&format!("{} should have failed", pod.name));
    let message = e.status.message();
    for part in says {
        assert!(
            message.contains(part),
            "{} lacks {part:?}: {message}",
            pod.name
        );
    }
    assert!(!workloads(rig).contains(&pod.name), "record left behind");
    veth_count(rig, 0, veths);
    let leaks = rig.lab.wren_cli(&["ipam", "check"]).unwrap();
    assert!(!leaks.contains("leaked"), "{leaks}");
}

#[test]
fn pods_through_containerd() {
    if !cri::require_cri() {
        return;
    }
    let rig = CriLab::up(&lab::test_lab_name('k'), 2).expect("rig up");
    let n1 = rig.runtimes[0].client().unwrap();
    let n2 = rig.runtimes[1].client().unwrap();

    // Identity and reachability: the pod IP in the sandbox status is wren's, the record
    // carries the pod's Kubernetes identity, and a pod on n1 reaches one on n2.
    let a_spec = PodSpec::new("shop", "a");
    let (a, a_ip) = run_ok(&rig, 0, &n1, &a_spec);
    let (b, b_ip) = run_ok(&rig, 1, &n2, &PodSpec::new("shop", "b"));
    let a_ns = n1.network(&a).unwrap().netns.expect("netns of a");
    assert!(reaches(&a_ns, &b_ip), "a ({a_ip}) cannot reach b ({b_ip})");
    let listed = workloads(&rig);
    let row = listed
        .lines()
        .find(|l| l.contains(&a))
        .unwrap_or_else(|| panic!("a not listed:\n{listed}"));
    for field in ["n1", "shop/a", "eth0", a_ip.as_str()] {
        assert!(row.contains(field), "{field} missing from {row}");
    }
    let shown = rig.lab.wren_cli(&["ipam", "show", "--ip", &a_ip]).unwrap();
    assert!(
        shown.contains("pod shop/a (uid uid-shop-a)") && shown.contains(&a),
        "{shown}"
    );
    let handle = format!("k8s-pod-network.{a}");
    assert!(
        shown.contains(&handle),
        "handle not keyed by container: {shown}"
    );
    let log = std::fs::read_to_string(rig.lab.state().dir.join("n1.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("pod attached") && l.contains("shop/a")),
        "no log line names the pod"
    );
    veth_count(&rig, 0, 1);

    // hostPort: a port mapping on n2 answers on n2's address from n1's host, and goes with
    // the pod.
    let c_spec = PodSpec::new("shop", "web").host_port(8080, 18080);
    let (c, _) = run_ok(&rig, 1, &n2, &c_spec);
    let c_ns = n2.network(&c).unwrap().netns.expect("netns of web");
    let _server = ChildGuard::spawn(
        "http server in pod web",
        Command::new("nsenter")
            .arg(format!("--net={}", c_ns.display()))
            .args(["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"])
            .current_dir(std::env::temp_dir()),
    )
    .unwrap();
    let n1_ns = rig.lab.state().nodes[0].ns.clone();
    let host_port: SocketAddr = format!("{}:18080", rig.lab.state().nodes[1].ip())
        .parse()
        .unwrap();
    let answered = wren_tests::process::wait_until(CONVERGENCE, Duration::from_millis(200), || {
        matches!(
            wren_tests::http::get_addr_in_ns(&n1_ns, host_port, "/"),
            Ok((200, _))
        )
    });
    assert!(answered, "hostPort {host_port} did not answer from n1");
    n2.delete(&c).unwrap();
    assert!(
        wren_tests::http::get_addr_in_ns(&n1_ns, host_port, "/").is_err(),
        "hostPort {host_port} still answers after the pod went"
    );

    // containerd crashes with a running pod: the pod keeps its network, and after the
    // restart, removing the pod releases everything.
    drop(n1);
    let mut rig = rig;
    rig.runtimes[0].kill().unwrap();
    assert!(
        reaches(&a_ns, &b_ip),
        "a lost its network with containerd down"
    );
    rig.runtimes[0].restart().unwrap();
    let n1 = rig.runtimes[0].client().unwrap();
    assert!(
        reaches(&a_ns, &b_ip),
        "a lost its network after the restart"
    );
    n1.delete(&a).unwrap();
    released(&rig, &a, &a_ip);
    veth_count(&rig, 0, 0);

    // A sandbox whose namespace vanished (its pin unmounted and removed) is removed cleanly.
    let (d, d_ip) = run_ok(&rig, 0, &n1, &PodSpec::new("shop", "d"));
    let d_ns = n1.network(&d).unwrap().netns.expect("netns of d");
    nix::mount::umount2(&d_ns, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&d_ns).unwrap();
    n1.delete(&d).unwrap();
    released(&rig, &d, &d_ip);
    veth_count(&rig, 0, 0);

    // Pod annotations, once the conflist declares the capability: an address asked for is
    // the one given; a bad annotation or an unknown pool fails with nothing allocated.
    let conf = tempfile::tempdir().unwrap();
    rig.install_wren(0, Some(&conflist_with_annotations(conf.path())))
        .unwrap();
    assert!(n1.wait_network_config("io.kubernetes.cri.pod-annotations", CONVERGENCE));
    let wanted = "10.65.200.7";
    let e_spec = PodSpec::new("shop", "e").annotation("wren.dev/ip-addrs", r#"["10.65.200.7"]"#);
    let (e, e_ip) = run_ok(&rig, 0, &n1, &e_spec);
    assert_eq!(e_ip, wanted);
    let bad = PodSpec::new("shop", "bad-annotation").annotation("wren.dev/ip-addrs", "10.65.200.8");
    refused(
        &rig,
        &n1,
        &bad,
        &["wren.dev/ip-addrs", r#"like ["10.65.3.7"]"#],
    );
    let unknown = PodSpec::new("shop", "no-such-pool").annotation("wren.dev/pools", r#"["gold"]"#);
    refused(&rig, &n1, &unknown, &["gold", "wren pool list"]);
    let taken = PodSpec::new("shop", "taken").annotation("wren.dev/ip-addrs", r#"["10.65.200.7"]"#);
    refused(&rig, &n1, &taken, &["10.65.200.7"]);
    n1.delete(&e).unwrap();
    released(&rig, &e, &e_ip);

    // A pool that is full: pods take its addresses until the next one is refused.
    rig.lab
        .wren_cli(&[
            "pool",
            "add",
            "tiny",
            "--cidr",
            "10.66.0.0/30",
            "--block-size",
            "30",
        ])
        .unwrap();
    let tiny = |i: usize| {
        PodSpec::new("shop", &format!("tiny-{i}")).annotation("wren.dev/pools", r#"["tiny"]"#)
    };
    let mut filled = Vec::new();
    while let Ok(id) = n1.run(&tiny(filled.len())) {
        filled.push(id);
        assert!(filled.len() <= 4, "a /30 gave out more than 4 addresses");
    }
    assert!(!filled.is_empty(), "the tiny pool gave out nothing");
    refused(&rig, &n1, &tiny(filled.len()), &["tiny", "wren pool add"]);
    for id in &filled {
        n1.delete(id).unwrap();
    }

    // A conflist naming a socket where no agent listens.
    let node = &rig.lab.state().nodes[0];
    let binary = rig.lab.state().spec.bin_dir.join("wren-cni");
    let nowhere = rig.lab.state().dir.join("no-agent.sock");
    rig.runtimes[0]
        .install_wren(&binary, &nowhere, None)
        .unwrap();
    assert!(n1.wait_network_config(&nowhere.to_string_lossy(), CONVERGENCE));
    let lost = PodSpec::new("shop", "lost");
    refused(
        &rig,
        &n1,
        &lost,
        &[&nowhere.to_string_lossy(), "is `wren agent` running"],
    );
    rig.runtimes[0]
        .install_wren(&binary, &node.socket, None)
        .unwrap();
    assert!(n1.wait_network_config(&node.socket.to_string_lossy(), CONVERGENCE));

    // An agent that is not ready: with etcd gone, n1's agent refuses the pod at once, saying
    // why and where to look, and once etcd is back nothing of the attempt is left.
    let veths = host_veths(&rig, 0).len();
    rig.lab.kill_etcd(0).unwrap();
    assert!(
        wren_tests::process::wait_until(CONVERGENCE, Duration::from_millis(100), || {
            rig.lab.readiness("n1").is_ok_and(|(ready, _)| !ready)
        }),
        "n1 still ready with etcd gone"
    );
    let early = PodSpec::new("shop", "early");
    let e = n1
        .run(&early)
        .expect_err("a pod while the agent is not ready");
    let message = e.status.message();
    for part in ["not ready", "datastore unreachable", "wren status"] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    rig.lab.restart_etcd(0).unwrap();
    assert!(
        wren_tests::process::wait_until(CONVERGENCE, Duration::from_millis(100), || {
            rig.lab.readiness("n1").is_ok_and(|(ready, _)| ready)
        }),
        "n1 not ready again after etcd returned"
    );
    assert!(!workloads(&rig).contains("early"), "record left behind");
    veth_count(&rig, 0, veths);

    n2.delete(&b).unwrap();
    released(&rig, &b, &b_ip);
    veth_count(&rig, 1, 0);
    let check = rig.lab.wren_cli(&["ipam", "check"]).unwrap();
    assert!(!check.contains("leaked"), "{check}");
}
