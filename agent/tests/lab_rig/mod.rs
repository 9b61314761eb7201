//! What the lab tests of encapsulation share: starting a lab, finding its pods, waiting,
//! capturing packets, MTUs, the agent's HTTP endpoints and changing the lab's pool in etcd.

#![allow(dead_code)] // each test crate that includes this uses a different part of it

use std::time::{Duration, Instant};

use wren_model::{Pool, keys};
use wren_store::json::JsonStore;
use wren_tests::lab::{self, Encap, Lab, LabSpec, PodState};
use wren_tests::netns::command_in;
use wren_tests::process::ChildGuard;
use wren_tests::vm;

use crate::agent_rig::with_store_in;

/// Generous bound for anything asynchronous; the expected times are far shorter. It
/// stretches in a slower guest ([`vm::scaled`]).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it holds; panics naming `what` after [`DEADLINE`].
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    let deadline = vm::scaled(DEADLINE);
    while !check() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A lab of `nodes` nodes on `subnets` subnets whose pool encapsulates with `encap`
/// (cross-subnet mode on two subnets, always on one), with `pods` pods per node.
pub fn lab_up(tag: char, nodes: usize, encap: Encap, subnets: u8, pods: usize) -> Lab {
    let mut spec = LabSpec::new(&lab::test_lab_name(tag), nodes);
    spec.encap = encap;
    spec.subnets = subnets;
    spec.pods_per_node = pods;
    Lab::up(spec).expect("lab up")
}

/// The first pod on `node`.
pub fn pod_on<'a>(lab: &'a Lab, node: &str) -> &'a PodState {
    lab.state()
        .pods
        .iter()
        .find(|p| p.node == node)
        .unwrap_or_else(|| panic!("no pod on {node}"))
}

/// Waits until every pod reaches every other pod.
pub fn wait_full_matrix(lab: &Lab) {
    lab.wait_full_matrix(DEADLINE, "n1")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `program args` in namespace `ns`; returns whether it succeeded and what it printed
/// (stdout and stderr).
pub fn run_in_ns(ns: &str, program: &str, args: &[&str]) -> (bool, String) {
    let out = command_in(ns, program).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// One ping with DF set and `size` bytes of payload.
pub fn ping_df(from: &PodState, to: &PodState, size: u32) -> (bool, String) {
    let size = size.to_string();
    let to = to.ip.to_string();
    run_in_ns(
        &from.ns,
        "ping",
        &["-n", "-c", "1", "-W", "2", "-M", "do", "-s", &size, &to],
    )
}

/// The packets tcpdump prints for `filter` on interface `ifname` of namespace `ns` while
/// `traffic` runs, one line each.
pub fn packets_during(
    ns: &str,
    ifname: &str,
    filter: &[&str],
    traffic: impl FnOnce(),
) -> Vec<String> {
    let mut tcpdump = ChildGuard::spawn(
        format!("tcpdump in {ns}"),
        command_in(ns, "tcpdump")
            .args(["-i", ifname, "-n", "-l", "--immediate-mode"])
            .args(filter),
    )
    .unwrap();
    wait_for("tcpdump to listen", || {
        tcpdump.log().contains("listening on")
    });
    traffic();
    // Immediate mode hands every packet over at once; a moment more covers the replies.
    std::thread::sleep(Duration::from_millis(300));
    // Whatever was captured is printed by the time tcpdump handles SIGINT and exits.
    tcpdump.signal(nix::sys::signal::Signal::SIGINT).unwrap();
    wait_for("tcpdump to stop", || !tcpdump.is_running());
    tcpdump
        .log()
        .lines()
        .filter(|l| l.contains(" > "))
        .map(str::to_owned)
        .collect()
}

/// The MTU of interface `ifname` in namespace `ns`.
pub fn mtu_of(ns: &str, ifname: &str) -> u32 {
    let (_, text) = run_in_ns(ns, "ip", &["-o", "link", "show", ifname]);
    text.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MTU in {text}"))
}

/// GETs `path` from the agent's metrics server inside `ns`: (status code, body).
pub fn agent_http(ns: &str, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:9099{path}");
    let (_, text) = run_in_ns(
        ns,
        "curl",
        &["-s", "-m", "10", "-w", "\n%{http_code}", &url],
    );
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Changes the lab's pool in etcd with `change`, writing from the fabric namespace.
pub fn update_pool(lab: &Lab, change: impl FnOnce(&mut Pool) + Send) {
    let endpoint = lab.state().etcd_endpoint.clone();
    with_store_in(&lab.state().fabric_ns, endpoint, |store| async move {
        let key = keys::pool("lab");
        let current = store.get_json::<Pool>(&key).await.unwrap().unwrap();
        let mut pool = current.value.clone();
        change(&mut pool);
        store.update_read(&current, &pool).await.unwrap();
    });
}
