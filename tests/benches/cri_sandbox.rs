//! Time for the runtime to report a pod sandbox ready as kubelet sees it (`RunPodSandbox`
//! returned), through containerd 1.6's CRI plugin on one lab node, for wren's shipped conflist
//! and, on the same containerd in the same run, for the reference `ptp` + `host-local` chain
//! with the same `portmap` and `bandwidth` plugins after it.
//!
//! `cargo build --release --bins && cargo bench -p wren-tests --bench cri_sandbox` (needs root
//! and what `make test` needs). `WREN_BENCH_ROUNDS` rounds (default 3); each round measures
//! wren then the reference, alternating which goes first, with 20 pods one after another and
//! then 20 at once; sandboxes are removed between (not timed). Prints a Markdown table of
//! p50 and max per mode, and the ratios.

use std::time::Duration;

use serde_json::json;
use wren_tests::bench::{arg, invoked_as_bench};
use wren_tests::cri::{CriClient, CriLab, PodSpec};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chain {
    Wren,
    Reference,
}

/// The reference chain: a veth with a /32 and host-local addresses, then the same chained
/// plugins as wren's shipped conflist.
fn reference_conflist(data_dir: &std::path::Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "reference",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.70.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ],
    })
}

fn use_chain(rig: &CriLab, client: &CriClient, chain: Chain, data_dir: &std::path::Path) {
    let needle = match chain {
        Chain::Wren => {
            rig.install_wren(0, None).expect("install wren");
            "k8s-pod-network"
        }
        Chain::Reference => {
            rig.runtimes[0]
                .install_configuration("10-reference", &reference_conflist(data_dir))
                .expect("install the reference");
            "10.70.0.0/16"
        }
    };
    assert!(
        client.wait_network_config(needle, Duration::from_secs(20)),
        "containerd did not load the {chain:?} configuration"
    );
}

fn pods(tag: &str, round: usize, n: usize) -> Vec<PodSpec> {
    (0..n)
        .map(|i| PodSpec::new("bench", &format!("{tag}-{round}-{i}")))
        .collect()
}

/// Runs `pods` one after another, or all at once; returns each time and removes them.
fn measure(client: &CriClient, pods: &[PodSpec], at_once: bool) -> Vec<Duration> {
    let outcomes = if at_once {
        client.run_many(pods)
    } else {
        pods.iter()
            .flat_map(|p| client.run_many(std::slice::from_ref(p)))
            .collect()
    };
    let mut times = Vec::with_capacity(outcomes.len());
    for (outcome, time) in outcomes {
        let id = outcome.unwrap_or_else(|e| panic!("{e}"));
        times.push(time);
        client.delete(&id).expect("remove the sandbox");
    }
    times
}

fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
    )
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    if !wren_tests::cri::require_cri() {
        return;
    }
    let n: usize = arg("--pods", 20);
    let rounds: usize = std::env::var("WREN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rig = CriLab::up(&wren_tests::lab::test_lab_name('b'), 1).expect("rig up");
    let client = rig.runtimes[0].client().expect("CRI client");
    let data = tempfile::tempdir().expect("host-local data dir");
    // [chain][mode] -> samples; mode 0 sequential, 1 at once.
    let mut samples = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Chain::Wren, Chain::Reference]
        } else {
            [Chain::Reference, Chain::Wren]
        };
        for chain in order {
            use_chain(&rig, &client, chain, data.path());
            let tag = if chain == Chain::Wren { "w" } else { "r" };
            let slot = &mut samples[chain as usize];
            slot[0].extend(measure(&client, &pods(&format!("{tag}s"), round, n), false));
            slot[1].extend(measure(&client, &pods(&format!("{tag}b"), round, n), true));
        }
    }
    println!(
        "| mode | wren p50 ms | wren max ms | ptp+host-local p50 ms | max ms | ratio p50 (anchor / wren) | ratio max |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (mode, label) in [
        (0, format!("{n} one after another")),
        (1, format!("{n} at once")),
    ] {
        let (w50, wmax) = summary(&mut samples[0][mode]);
        let (r50, rmax) = summary(&mut samples[1][mode]);
        println!(
            "| {label} | {w50:.1} | {wmax:.1} | {r50:.1} | {rmax:.1} | {:.2} | {:.2} |",
            r50 / w50,
            rmax / wmax
        );
    }
}
