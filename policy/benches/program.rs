//! Programming a node's network policy: 1,000 policies over 1,000 workloads (50 namespaces
//! of 20 pods on 3 nodes, 20 policies per namespace), the node's plan computed and rendered
//! by wren, then loaded by `nft -f` into a fresh network namespace; then single-policy
//! changes, each recomputed, rendered and loaded, in turn as a delta from the loaded table,
//! as the whole table replaced in place (what the agent's full passes load) and as the whole
//! table deleted and made again.
//!
//! The anchor is the kernel's part measured in the same run: `nft -f` loading the same
//! script. The ratio says what wren adds on top of what the kernel has to do anyway.
//! Memory: live heap bytes of the decoded cluster view (and of the three nodes' plans),
//! against the bytes of the same documents as stored in etcd (JSON).
//!
//! `cargo bench -p wren-policy --bench program [-- --rounds R --changes N]` (root, nft).

use std::time::{Duration, Instant};

use wren_policy::nft::{NftRules, TABLE};
use wren_policy::{Cluster, Labels, NamedPort, NetworkPolicy, Pod, Protocol, decode_value};
use wren_tests::bench::{CountingAllocator, arg, invoked_as_bench, live_bytes};
use wren_tests::netns::{NetNs, run_with_input};
use wren_tests::prereq;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const NAMESPACES: usize = 50;
const PODS_PER_NAMESPACE: usize = 20;
const POLICIES_PER_NAMESPACE: usize = 20;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Policy `k` of namespace `n`, as JSON (the stored form). Policies 0–9 isolate ingress of
/// one app, from the next app and from web pods of a team's namespaces, on a named and a
/// numbered port; 10–19 isolate egress of one app, to production namespaces on 443 and to
/// DNS outside the pools.
fn policy_json(n: usize, k: usize, extra_port: u16) -> serde_json::Value {
    let app = format!("app-{}", k % 10);
    let spec = if k < 10 {
        serde_json::json!({
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{
                "from": [
                    {"podSelector": {"matchLabels": {"app": format!("app-{}", (k + 1) % 10)}}},
                    {"namespaceSelector": {"matchLabels": {"team": format!("t{}", k % 5)}},
                     "podSelector": {"matchLabels": {"tier": "web"}}}
                ],
                "ports": [{"port": "http"}, {"port": 5432}, {"port": extra_port}]
            }]
        })
    } else {
        serde_json::json!({
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}], "ports": [{"port": 443}]},
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.65.0.0/16"]}}],
                 "ports": [{"port": 53, "protocol": "UDP"}]}
            ]
        })
    };
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("p{k}"), "namespace": format!("ns{n}")},
        "spec": spec
    })
}

fn pod(n: usize, j: usize) -> Pod {
    Pod {
        namespace: format!("ns{n}"),
        name: format!("pod{j}"),
        node: format!("n{}", (n * PODS_PER_NAMESPACE + j) % 3 + 1),
        labels: labels(&[
            ("app", format!("app-{}", j % 10)),
            (
                "tier",
                if j.is_multiple_of(2) { "web" } else { "db" }.to_owned(),
            ),
        ]),
        addresses: vec![
            format!("10.65.{n}.{}", j + 1).parse().unwrap(),
            format!("fd00:65::{n}:{}", j + 1).parse().unwrap(),
        ],
        ports: vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
        host_interface: format!("wren{n:03}{j:03}"),
    }
}

/// The cluster from stored documents, and the bytes those documents take as JSON.
fn build() -> (Cluster, usize) {
    let mut cluster = Cluster::new();
    let mut stored = 0;
    for n in 0..NAMESPACES {
        let ns_labels = labels(&[
            ("team", format!("t{}", n % 5)),
            (
                "env",
                if n.is_multiple_of(2) { "prod" } else { "dev" }.to_owned(),
            ),
        ]);
        stored += serde_json::to_vec(&serde_json::json!({ "labels": &ns_labels }))
            .unwrap()
            .len();
        cluster.set_namespace(&format!("ns{n}"), ns_labels);
        for j in 0..PODS_PER_NAMESPACE {
            let p = pod(n, j);
            // What etcd holds for a pod: its workload record and its labels and ports.
            stored += 400
                + serde_json::to_vec(&serde_json::json!({"labels": &p.labels, "ports": &p.ports}))
                    .unwrap()
                    .len();
            cluster.add_pod(p);
        }
        for k in 0..POLICIES_PER_NAMESPACE {
            let json = policy_json(n, k, 9000);
            stored += serde_json::to_vec(&json).unwrap().len();
            cluster.add_policy(decode_value(1, json).unwrap());
        }
    }
    for i in 1..=3u8 {
        cluster.set_node_addresses(&format!("n{i}"), vec![[192, 168, 0, i].into()]);
    }
    (cluster, stored)
}

fn nft_load(ns: &NetNs, script: &str) -> Duration {
    let started = Instant::now();
    if let Err(e) = run_with_input(ns.command("nft").args(["-f", "-"]), script.as_bytes()) {
        panic!("{e}");
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !prereq::require_root() || !prereq::require_command("nft") {
        return;
    }
    let rounds: usize = arg("--rounds", 5);
    let changes: usize = arg("--changes", 50);

    let before = live_bytes();
    let started = Instant::now();
    let (mut cluster, stored) = build();
    let load_time = started.elapsed();
    let view_bytes = live_bytes() - before;
    let before_plans = live_bytes();
    let plans: Vec<_> = (1..=3)
        .map(|i| cluster.plan_node(&format!("n{i}")))
        .collect();
    let plan_bytes = live_bytes() - before_plans;
    let rules: usize = plans[0]
        .endpoints
        .iter()
        .flat_map(|e| e.ingress.iter().chain(e.egress.iter()))
        .map(|d| d.rules.len())
        .sum();
    let endpoints = plans[0].endpoints.len();
    drop(plans);

    // From nothing: compute + render, then load into a namespace with no table yet.
    let mut compute = Vec::new();
    let mut load = Vec::new();
    let mut script_len = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let script = cluster.plan_node("n1").nft_script(TABLE);
        compute.push(started.elapsed());
        script_len = script.len();
        if let Ok(path) = std::env::var("WREN_BENCH_DUMP") {
            std::fs::write(path, &script).unwrap();
        }
        let ns = NetNs::new("polbench").unwrap();
        load.push(nft_load(&ns, &script));
    }

    // Changes: one policy's extra port changes; recompute and render, then load in turn
    // the delta from what the table holds, the whole table replaced in place (what a full
    // pass of the agent loads), and the whole table deleted and made again (for
    // comparison: what a table of unknown content gets).
    let ns = NetNs::new("polbench").unwrap();
    let mut loaded = cluster.plan_node("n1").nft_rules();
    nft_load(&ns, &loaded.script(TABLE));
    type Render = fn(&NftRules, &NftRules) -> String;
    let loads: [(&str, Render); 3] = [
        ("delta", |rules, loaded| rules.delta_script(loaded, TABLE)),
        ("whole table in place", |rules, loaded| {
            rules.replace_script(loaded, TABLE)
        }),
        ("whole table made again", |rules, _| rules.script(TABLE)),
    ];
    let mut timings: [[Vec<Duration>; 3]; 3] = Default::default();
    for i in 0..changes {
        let n = i % NAMESPACES;
        let changed: NetworkPolicy =
            decode_value(1, policy_json(n, i % 10, 9001 + i as u16)).unwrap();
        let kind = i % loads.len();
        let started = Instant::now();
        cluster.add_policy(changed);
        let rules = cluster.plan_node("n1").nft_rules();
        let script = (loads[kind].1)(&rules, &loaded);
        let computed = started.elapsed();
        let load = nft_load(&ns, &script);
        loaded = rules;
        let [compute, load_times, total] = &mut timings[kind];
        compute.push(computed);
        load_times.push(load);
        total.push(computed + load);
    }

    println!(
        "node n1: {endpoints} isolated pods, {rules} compiled rules, script {} KiB; {rounds} rounds, {changes} changes",
        script_len / 1024
    );
    println!(
        "cluster view built from the documents in {} ms",
        ms(load_time)
    );
    println!();
    println!(
        "| step | wren (plan + render) ms | anchor: `nft -f` load ms | total ms | wren / anchor |"
    );
    println!("|---|---|---|---|---|");
    let (c, l) = (median(compute), median(load));
    println!(
        "| program n1 from nothing (median) | {} | {} | {} | {:.2} |",
        ms(c),
        ms(l),
        ms(c + l),
        c.as_secs_f64() / l.as_secs_f64()
    );
    for ((label, _), timings) in loads.iter().zip(&timings) {
        for (p, at) in [(0.5, "p50"), (0.99, "p99")] {
            let [compute, load, total] = timings;
            let (c, l, t) = (
                percentile(compute, p),
                percentile(load, p),
                percentile(total, p),
            );
            println!(
                "| one policy changed, {label}, {at} | {} | {} | {} | {:.2} |",
                ms(c),
                ms(l),
                ms(t),
                c.as_secs_f64() / l.as_secs_f64()
            );
        }
    }
    println!();
    println!(
        "memory: cluster view {} KiB against {} KiB of stored JSON (ratio {:.2}); the three nodes' plans {} KiB",
        view_bytes / 1024,
        stored / 1024,
        view_bytes as f64 / stored as f64,
        plan_bytes / 1024
    );
}
