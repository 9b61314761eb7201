//! A lab on a three-member etcd cluster that keeps losing members while pods come and go.
//!
//! Three nodes each run one pod for the whole test, pinging the next node's pod, and a churn
//! of pods (ADD, keep a few, DEL the oldest) through the real CNI plugin. Meanwhile etcd's
//! leader is killed and restarted, a follower is killed and restarted, and a member is
//! paused (`SIGSTOP`) and resumed, three times over. A quorum answers throughout, so: no CNI call
//! may fail, no agent may report not ready, no address may be held by two pods at once, and
//! no ping of the long-lived pods may be lost. Then two members are killed (no quorum) and
//! one restarted: every agent must be ready again within a few seconds of the quorum's
//! return. Afterwards `wren ipam check` finds nothing. The ADD latencies, overall and for
//! ADDs started during an election, are printed for `docs/reliability.md`.
//!
//! The same test runs once with etcd speaking TLS with client certificates.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wren_tests::lab::{self, Lab, LabSpec, Pingers};

/// Chaos rounds (leader kill, follower kill, pause each).
const ROUNDS: usize = 3;
/// How long a killed or paused member stays down.
const DOWN: Duration = Duration::from_secs(3);
/// Pods each churn thread keeps alive before deleting its oldest.
const KEEP: usize = 3;
/// After the quorum returns, every agent is ready again within this.
const READY_AGAIN: Duration = Duration::from_secs(4);

/// Two labs at once would only slow each other down on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn three_member_etcd_under_chaos() {
    run(false, 'e');
}

#[test]
fn three_member_etcd_under_chaos_over_tls() {
    if !wren_tests::prereq::require_command("openssl") {
        return;
    }
    run(true, 't');
}

/// One CNI call of the churn.
struct Call {
    add: bool,
    started: Instant,
    took: Duration,
    error: Option<String>,
}

/// What the churn threads and the readiness watcher share.
#[derive(Default)]
struct Record {
    calls: Mutex<Vec<Call>>,
    /// Address → container id of every pod alive now.
    live: Mutex<HashMap<String, String>>,
    /// Addresses handed to a second pod while the first still held them.
    twice: Mutex<Vec<String>>,
    /// `/readyz` answers other than ready while a quorum answered.
    not_ready: Mutex<Vec<String>>,
}

fn run(tls: bool, tag: char) {
    if !lab::require_lab(false) || !wren_tests::prereq::require_command("etcdctl") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut spec = LabSpec::new(&lab::test_lab_name(tag), 3);
    spec.pods_per_node = 1;
    spec.etcd_members = 3;
    spec.etcd_tls = tls;
    let lab = Lab::up(spec).expect("lab up");
    lab.wait_full_matrix(Duration::from_secs(30), "n1")
        .expect("every pod reaches every pod before the chaos");

    let record = Arc::new(Record::default());
    let stop_churn = Arc::new(AtomicBool::new(false));
    for pod in &lab.state().pods {
        let mut live = record.live.lock().unwrap();
        live.insert(pod.ip.to_string(), pod.container_id.clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let quorum = Arc::new(AtomicBool::new(true));
    let pingers = Pingers::start(&lab);
    let mut elections: Vec<(Instant, Instant)> = Vec::new();

    std::thread::scope(|scope| {
        let lab_ref = &lab;
        let churners: Vec<_> = ["n1", "n2", "n3"]
            .into_iter()
            .map(|node| {
                let (record, stop) = (record.clone(), stop_churn.clone());
                scope.spawn(move || churn(lab_ref, node, &record, &stop))
            })
            .collect();
        {
            let (record, stop, quorum) = (record.clone(), stop.clone(), quorum.clone());
            scope.spawn(move || watch_readiness(lab_ref, &record, &stop, &quorum));
        }
        // The chaos runs here on the lab re-opened from its state file: the other threads
        // read the lab while this one changes its etcd members.
        let mut chaos = Lab::open(&lab_ref.state().spec.name).expect("re-open the lab");
        for _ in 0..ROUNDS {
            let leader = wait_leader(&chaos);
            let killed = Instant::now();
            chaos.kill_etcd(leader).unwrap();
            let elected = wait_new_leader(&chaos, leader);
            elections.push((killed, elected.max(killed + Duration::from_secs(1))));
            std::thread::sleep(DOWN);
            chaos.restart_etcd(leader).unwrap();

            let leader = wait_leader(&chaos);
            let follower = (leader + 1) % 3;
            chaos.kill_etcd(follower).unwrap();
            std::thread::sleep(DOWN);
            chaos.restart_etcd(follower).unwrap();

            // The first endpoint: where every agent sends its requests first.
            chaos.pause_etcd(0).unwrap();
            std::thread::sleep(DOWN);
            chaos.resume_etcd(0).unwrap();
            std::thread::sleep(Duration::from_secs(1));
        }

        // The churn ends (its last DELs included) while a quorum still answers.
        stop_churn.store(true, Ordering::SeqCst);
        for churner in churners {
            churner.join().expect("churn thread");
        }
        // No quorum: two members gone. Agents may say not ready now; once one member is back
        // they must be ready again within READY_AGAIN.
        quorum.store(false, Ordering::SeqCst);
        chaos.kill_etcd(1).unwrap();
        chaos.kill_etcd(2).unwrap();
        let unready = wait_all(&chaos, false, Duration::from_secs(30));
        assert!(
            unready.is_some(),
            "the agents still said ready 30 s after the quorum was lost"
        );
        chaos.restart_etcd(1).unwrap();
        let back = Instant::now();
        let ready = wait_all(&chaos, true, Duration::from_secs(30));
        let took = ready.map(|at| at - back);
        eprintln!("readiness after the quorum returned: {took:?}");
        assert!(
            took.is_some_and(|t| t <= READY_AGAIN),
            "agents were ready again only after {took:?} (allowed {READY_AGAIN:?})"
        );
        chaos.restart_etcd(2).unwrap();
        stop.store(true, Ordering::SeqCst);
    });

    // The pairs that lost any ping.
    let losses: Vec<String> = pingers
        .finish()
        .into_iter()
        .filter(|summary| !summary.contains(" 0% packet loss"))
        .collect();
    let calls = record.calls.lock().unwrap();
    let failed: Vec<String> = calls.iter().filter_map(|c| c.error.clone()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} CNI calls failed while a quorum answered: {failed:#?}",
        failed.len(),
        calls.len()
    );
    let twice = record.twice.lock().unwrap();
    assert!(twice.is_empty(), "addresses handed out twice: {twice:?}");
    let not_ready = record.not_ready.lock().unwrap();
    assert!(
        not_ready.is_empty(),
        "agents said not ready while a quorum answered: {not_ready:?}"
    );
    assert!(losses.is_empty(), "long-lived pods lost pings: {losses:?}");
    let check = lab.wren_cli(&["ipam", "check", "--grace", "0s"]).unwrap();
    assert!(check.contains("no leaks found"), "leak check:\n{check}");

    // An ADD in flight at any moment between a leader's death and its successor's election.
    let in_election = |c: &Call| {
        elections
            .iter()
            .any(|(from, to)| c.started <= *to && c.started + c.took >= *from)
    };
    let adds = |only_elections: bool| -> Vec<Duration> {
        calls
            .iter()
            .filter(|c| c.add && (!only_elections || in_election(c)))
            .map(|c| c.took)
            .collect()
    };
    eprintln!(
        "etcd chaos{}: {} CNI calls, 0 failed; ADD latency overall {}; ADDs in flight during an election {}",
        if tls { " over TLS" } else { "" },
        calls.len(),
        percentiles(adds(false)),
        percentiles(adds(true)),
    );
    drop(calls);
    lab.down().unwrap();
}

fn wait_leader(lab: &Lab) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(leader) = lab.etcd_leader() {
            return leader;
        }
        assert!(Instant::now() < deadline, "etcd named no leader for 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_new_leader(lab: &Lab, old: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if lab.etcd_leader().is_some_and(|l| l != old) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "no new etcd leader for 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every agent's readiness is `ready`; returns when.
fn wait_all(lab: &Lab, ready: bool, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let all = ["n1", "n2", "n3"]
            .iter()
            .all(|n| lab.readiness(n).is_ok_and(|(r, _)| r == ready));
        if all {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Pods through the CNI plugin on `node`, keeping `KEEP` alive, until `stop`.
fn churn(lab: &Lab, node: &str, record: &Record, stop: &AtomicBool) {
    let n = lab.node(node).unwrap().clone();
    let mut alive: Vec<(String, String, Option<String>)> = Vec::new();
    let mut seq = 0;
    let del = |(id, ns, ip): (String, String, Option<String>)| {
        if let Some(ip) = &ip {
            record.live.lock().unwrap().remove(ip);
        }
        let started = Instant::now();
        let result = lab.cni(&n, "DEL", &id, &ns);
        record.calls.lock().unwrap().push(Call {
            add: false,
            started,
            took: started.elapsed(),
            error: result.err().map(|e| format!("DEL {id}: {e}")),
        });
        let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
    };
    while !stop.load(Ordering::SeqCst) {
        let ns = lab::ns_name(&lab.state().spec.name, &format!("{node}-c{seq}"));
        let id = format!("chaos-{node}-{seq}");
        seq += 1;
        let _ = Command::new("ip").args(["netns", "add", &ns]).status();
        let started = Instant::now();
        let result = lab.cni(&n, "ADD", &id, &ns);
        let took = started.elapsed();
        let ip = result.as_ref().ok().and_then(|out| address_of(out));
        if let Some(ip) = &ip
            && let Some(holder) = record.live.lock().unwrap().insert(ip.clone(), id.clone())
        {
            record
                .twice
                .lock()
                .unwrap()
                .push(format!("{ip}: {holder} and {id}"));
        }
        record.calls.lock().unwrap().push(Call {
            add: true,
            started,
            took,
            error: result.err().map(|e| format!("ADD {id}: {e}")),
        });
        alive.push((id, ns, ip));
        if alive.len() > KEEP {
            del(alive.remove(0));
        }
    }
    for pod in alive {
        del(pod);
    }
}

/// The first address of a CNI result.
fn address_of(result: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(result).ok()?;
    let address = value.get("ips")?.get(0)?.get("address")?.as_str()?;
    Some(address.split('/').next()?.to_owned())
}

/// Polls every agent's `/readyz` while a quorum answers; records each "not ready".
fn watch_readiness(lab: &Lab, record: &Record, stop: &AtomicBool, quorum: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        for node in ["n1", "n2", "n3"] {
            if let Ok((false, why)) = lab.readiness(node)
                && quorum.load(Ordering::SeqCst)
            {
                record
                    .not_ready
                    .lock()
                    .unwrap()
                    .push(format!("{node}: {}", why.trim()));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// "p50 … p99 … max … (n ADDs)".
fn percentiles(mut took: Vec<Duration>) -> String {
    if took.is_empty() {
        return "none".into();
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:?}, p99 {:?}, max {:?} ({} ADDs)",
        at(0.5),
        at(0.99),
        took[took.len() - 1],
        took.len()
    )
}
