//! One owner per node name, and start-up checks before any change, as an operator meets
//! them: real agents in network namespaces on a shared bridge, a real etcd, pods made by the
//! real CNI plugin, and a second `wren agent` started under a live node's name.

use std::time::{Duration, Instant};

use wren_model::keys;
use wren_store::KeyValue;
use wren_tests::netns::NetNs;
use wren_tests::prereq;
use wren_tests::process::ChildGuard;

mod agent_rig;
mod cni_support;

use agent_rig::*;
use cni_support::{Call, address, plugin_binary};

/// The address the second agent claims node2's name from.
const SECOND_IP: &str = "10.77.0.20";

/// Reads one key of the cluster's etcd.
fn get(c: &Cluster, key: &str) -> Option<KeyValue> {
    let key = key.to_owned();
    with_store_in(c.fabric.netns().name(), c.endpoint(), |store| async move {
        store.get(&key).await.unwrap()
    })
}

/// A namespace on the fabric with its own address, for a second agent.
fn second_host(c: &Cluster, tag: &str, ip: &str) -> NetNs {
    let ns = NetNs::new(tag).unwrap();
    c.fabric
        .attach(&ns, "eth0", Some(&format!("{ip}/24")))
        .unwrap();
    ns
}

/// A `wren agent` the test started outside the rig, with the directory of its socket.
struct Spawned {
    // Field order: the agent stops before its directory goes.
    agent: ChildGuard,
    _dir: tempfile::TempDir,
}

/// Starts `wren agent` in `ns` under `name` at `ip`, not waiting for anything.
fn spawn_agent(c: &Cluster, ns: &NetNs, name: &str, ip: &str, extra: &[&str]) -> Spawned {
    let dir = tempfile::Builder::new()
        .prefix("wren-own-")
        .tempdir()
        .unwrap();
    let args = c.agent_args(name, ip, &dir.path().join("agent.sock"), extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = ns
        .spawn("second wren agent", wren_bin().to_str().unwrap(), &args)
        .unwrap();
    Spawned { agent, _dir: dir }
}

/// Waits for `agent` to exit; its status and the `wren:` lines it printed (its error).
fn exit_of(agent: &mut ChildGuard) -> (std::process::ExitStatus, Vec<String>) {
    wait_for("the agent to exit", || !agent.is_running());
    let status = agent.try_wait().unwrap().unwrap();
    let errors = agent
        .log()
        .lines()
        .filter(|l| l.starts_with("wren: "))
        .map(str::to_owned)
        .collect();
    (status, errors)
}

fn ip_forward(ns: &NetNs) -> String {
    ns.exec("cat", &["/proc/sys/net/ipv4/ip_forward"])
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs the real CNI plugin's ADD against `node`'s agent; the pod's IPv4 address.
fn add_pod(node: &Node, container: &str, pod: &NetNs) -> String {
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s",
        "type": "wren",
        "agentSocket": node.socket,
    });
    let reply = cni_support::wren(&Call::new("ADD", container, Some(pod)), &config);
    assert!(reply.ok, "ADD failed: {} {}", reply.json, reply.stderr);
    address(&reply.json, false)
}

/// Pings `to` from `from` every 100 ms, `count` times, in the background.
fn start_ping(from: &NetNs, to: &str, count: u32) -> std::process::Child {
    from.command("ping")
        .args(["-n", "-i", "0.1", "-W", "1", "-c", &count.to_string(), to])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Sent and received counts of a finished ping.
fn ping_counts(ping: std::process::Child) -> (u32, u32) {
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary in {text}"));
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn a_second_agent_under_a_live_name_is_refused_and_changes_nothing() {
    if !ready() || !prereq::require_command("ping") {
        return;
    }
    if !prereq::require("the wren-cni binary is built", plugin_binary().is_some()) {
        return;
    }
    let mut c = Cluster::new("own-dup", 2);
    c.start_all();
    c.wait_mesh();
    let pod1 = NetNs::new("own-dup-p1").unwrap();
    let pod2 = NetNs::new("own-dup-p2").unwrap();
    add_pod(c.node(0), "ctr1", &pod1);
    let ip2 = add_pod(c.node(1), "ctr2", &pod2);
    let block2 = ipnet::IpNet::new(ip2.parse().unwrap(), 26).unwrap().trunc();
    wait_for("node1 to route node2's block", || {
        c.node(0)
            .has_route("bgp", &format!("{block2} via {} ", c.node(1).ip))
    });
    let node_before = get(&c, &keys::node("node2")).unwrap();
    let liveness_before = get(&c, &keys::liveness("node2")).unwrap();

    // Pod traffic from node1 to node2 for the whole attempt: 8 s.
    let ping = start_ping(&pod1, &ip2, 80);
    std::thread::sleep(Duration::from_secs(1));
    let host = second_host(&c, "own-dup-h", SECOND_IP);
    let started = Instant::now();
    let mut second = spawn_agent(&c, &host, "node2", SECOND_IP, &[]);
    let (status, errors) = exit_of(&mut second.agent);
    let refused_in = started.elapsed();
    assert!(!status.success(), "{}", second.agent.log());
    assert_eq!(errors.len(), 1, "{}", second.agent.log());
    assert!(
        errors[0].contains("node node2 is held by a live agent at 10.77.0.2 ")
            && errors[0].contains("--take-over"),
        "{}",
        errors[0]
    );
    // Nothing changed: not the second host's kernel, not node2's documents, not the routes.
    assert_eq!(ip_forward(&host), "0");
    let node_after = get(&c, &keys::node("node2")).unwrap();
    assert_eq!(node_after.mod_revision, node_before.mod_revision);
    let liveness_after = get(&c, &keys::liveness("node2")).unwrap();
    assert_eq!(liveness_after.value, liveness_before.value);
    assert_eq!(liveness_after.lease, liveness_before.lease);
    let (sent, received) = ping_counts(ping);
    eprintln!("second agent refused in {refused_in:?}; pod1 -> pod2: {received}/{sent} answered");
    assert!(sent >= 70, "{sent}");
    assert_eq!(sent, received, "pod traffic was lost");
    assert!(
        c.node(0)
            .has_route("bgp", &format!("{block2} via {} ", c.node(1).ip))
    );
    assert!(c.node(1).ready());
    let list = c.cli_ok(&["node", "list"]);
    let line = list.lines().find(|l| l.starts_with("node2")).unwrap();
    assert!(
        line.contains("10.77.0.2/24") && line.contains("yes"),
        "{list}"
    );
}

#[test]
fn a_running_agent_keeps_its_name_and_node_rm_waits_until_it_is_gone() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("own-keep", 2);
    c.start_all();
    let block2 = c.claim("node2", "k8s.pod-b");
    let key = keys::liveness("node2");

    // The key deleted behind the agent's back: it is put back.
    let held = get(&c, &key).unwrap();
    let k = key.clone();
    with_store_in(c.fabric.netns().name(), c.endpoint(), |store| async move {
        store.delete(&k, None).await.unwrap();
    });
    let back_after_delete = wait_for("liveness/node2 to be put back", || get(&c, &key).is_some());
    // The lease revoked: a new lease and the key again.
    let lease = held.lease.unwrap();
    let revoked = get(&c, &key).unwrap().lease.unwrap();
    assert_eq!(revoked, lease, "the same lease carries the key again");
    with_store_in(c.fabric.netns().name(), c.endpoint(), |store| async move {
        store.revoke_lease(revoked).await.unwrap();
    });
    let back_after_revoke = wait_for("liveness/node2 on a new lease", || {
        get(&c, &key).is_some_and(|kv| kv.lease.is_some_and(|l| l != lease))
    });
    eprintln!(
        "liveness back {back_after_delete:?} after a delete, {back_after_revoke:?} after a revoke"
    );
    // Within one check period (a third of the 6 s TTL) and a busy machine's margin.
    assert!(back_after_delete < Duration::from_secs(4));
    assert!(back_after_revoke < Duration::from_secs(4));
    // The node document deleted behind the agent's back, once the agent only renews its
    // lease each period (both keys watched and settled): it is written back.
    std::thread::sleep(Duration::from_secs(3));
    let node_key = keys::node("node2");
    let k = node_key.clone();
    with_store_in(c.fabric.netns().name(), c.endpoint(), |store| async move {
        store.delete(&k, None).await.unwrap();
    });
    let node_back = wait_for("nodes/node2 to be put back", || {
        get(&c, &node_key).is_some()
    });
    assert!(node_back < Duration::from_secs(4), "{node_back:?}");
    assert!(c.node(1).ready());

    // `node rm` refuses a live node, naming its agent.
    let refused = c.cli(&["node", "rm", "node2"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("10.77.0.2") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // With --force, the running agent puts its key back and nothing is removed.
    let forced = c.cli(&["node", "rm", "node2", "--force"]);
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(!forced.status.success(), "{stderr}");
    assert!(
        stderr.contains("it is running; nothing was removed"),
        "{stderr}"
    );
    let list = c.cli_ok(&["node", "list"]);
    let line = list.lines().find(|l| l.starts_with("node2")).unwrap();
    assert!(line.contains(&block2.to_string()), "{list}");

    // A deliberate take-over: the old agent stops, the new one holds the name.
    let host = second_host(&c, "own-keep-h", SECOND_IP);
    let mut taker = spawn_agent(&c, &host, "node2", SECOND_IP, &["--take-over"]);
    let old = c.nodes[1].agent.as_mut().unwrap();
    let (status, errors) = exit_of(old);
    assert!(!status.success());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("node node2 was taken over by the agent at 10.77.0.20"),
        "{}",
        errors[0]
    );
    let value = String::from_utf8(get(&c, &key).unwrap().value).unwrap();
    assert!(value.contains(SECOND_IP), "{value}");

    // Its agent killed, the lease not yet expired: --force removes the node.
    taker
        .agent
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    wait_for("the taker to die", || !taker.agent.is_running());
    assert!(get(&c, &key).is_some(), "the lease outlives a killed agent");
    let started = Instant::now();
    let out = c.cli_ok(&["node", "rm", "node2", "--force"]);
    eprintln!(
        "node rm --force of a dead node took {:?}",
        started.elapsed()
    );
    assert!(out.contains("node node2 removed"), "{out}");
    assert!(get(&c, &keys::node("node2")).is_none());
}

#[test]
fn a_start_that_fails_a_check_changes_nothing() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("own-chk", 1);
    c.start_agent(0);
    let host = second_host(&c, "own-chk-h", SECOND_IP);
    let expect_refusal = |extra: &[&str], needles: &[&str]| {
        let mut spawned = spawn_agent(&c, &host, "node9", SECOND_IP, extra);
        let (status, errors) = exit_of(&mut spawned.agent);
        assert!(!status.success(), "{}", spawned.agent.log());
        assert_eq!(errors.len(), 1, "{}", spawned.agent.log());
        let line = &errors[0];
        for needle in needles {
            assert!(line.contains(needle), "{needle:?} not in {line}");
        }
        // No cause is said twice ("X: X").
        let parts: Vec<&str> = line.split(": ").collect();
        for pair in parts.windows(2) {
            assert_ne!(pair[0], pair[1], "{line}");
        }
        assert_eq!(ip_forward(&host), "0", "{extra:?} changed the kernel");
    };
    // An address no interface of the host carries.
    expect_refusal(
        &["--node-ip", "10.78.0.20/24"],
        &["nodeIp", "10.78.0.20", "nodeIpNotLocal"],
    );
    // A lease TTL etcd would refuse.
    expect_refusal(
        &["--liveness-ttl", "99999999999m"],
        &["--liveness-ttl", "out of range"],
    );
    // The socket of a live agent.
    let live = c.node(0).socket.to_str().unwrap().to_owned();
    expect_refusal(&["--socket", &live], &["another agent is serving"]);
    // The metrics port taken.
    let _taken = host
        .enter(|| std::net::TcpListener::bind("127.0.0.1:9099").unwrap())
        .unwrap();
    expect_refusal(&[], &["metrics address 127.0.0.1:9099"]);
}

#[test]
fn a_peer_password_comes_from_a_file_or_the_environment() {
    if !ready() {
        return;
    }
    let c = Cluster::new("own-pw", 0);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "from-a-file\n").unwrap();
    let path = file.path().to_str().unwrap();
    const ADD: [&str; 7] = [
        "peer",
        "add",
        "tor",
        "--peer-ip",
        "10.77.0.253",
        "--as",
        "65000",
    ];
    c.cli_ok(&[&ADD[..], &["--password-file", path]].concat());
    let stored = |c: &Cluster| {
        let value: serde_json::Value =
            serde_json::from_slice(&get(c, &keys::peer("tor")).unwrap().value).unwrap();
        value["password"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(stored(&c), "from-a-file");
    let out = c
        .fabric
        .netns()
        .command(wren_bin())
        .args(ADD)
        .args(["--etcd-endpoints", &c.endpoint()])
        .env("WREN_PEER_PASSWORD", "from-the-environment")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored(&c), "from-the-environment");
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_thousand_stalled_connections_neither_starve_cni_nor_stay() {
    use std::io::{Read, Write};
    if !ready() {
        return;
    }
    if !prereq::require("the wren-cni binary is built", plugin_binary().is_some()) {
        return;
    }
    // This process holds a thousand sockets too.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let mut c = Cluster::new("own-api", 1);
    c.start_agent(0);
    let pid = c.nodes[0].agent.as_ref().unwrap().pid();
    let pod = NetNs::new("own-api-p1").unwrap();
    let before = rss_kib(pid);
    let stalled: Vec<std::os::unix::net::UnixStream> = (0..1000)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&c.node(0).socket).unwrap();
            s.write_all(b"POST /v1/cni/add HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = rss_kib(pid);
    let started = Instant::now();
    add_pod(c.node(0), "ctr1", &pod);
    let add_took = started.elapsed();
    let status_took = {
        let started = Instant::now();
        assert!(c.node(0).ready());
        started.elapsed()
    };
    // Every stalled connection is closed by the agent after its header timeout (5 s).
    let mut open = 0;
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 256];
        if let Err(e) = s.read(&mut buf)
            && matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            open += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    eprintln!(
        "agent RSS {before} KiB before, {during} KiB with 1000 stalled connections, {after} KiB \
         after they were cut; ADD took {add_took:?}, status {status_took:?}"
    );
    assert_eq!(
        open, 0,
        "stalled connections still open after the header timeout"
    );
    assert!(add_took < Duration::from_secs(2), "{add_took:?}");
}
