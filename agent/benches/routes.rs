//! Kernel route programming: 100,000 routes installed and then removed in a fresh network
//! namespace, by wren's route manager and by `ip -batch` doing the same work in the same run.
//!
//! `cargo bench -p wren-agent --bench routes [-- --routes N --rounds R]` (needs root). Prints a
//! Markdown table of the median of the rounds, the variants interleaved so that drift of the
//! machine hits all of them alike.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use wren_agent::dataplane::{NextHop, Route, RouteChange, RouteManager};
use wren_tests::bench::arg;
use wren_tests::netns::NetNs;

/// One way of installing and removing the routes.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Variant {
    /// `ip -batch` with one `route add` (then `route del`) line per route, in address order.
    IpBatch,
    /// The same lines shuffled, the order wren sends its changes in (the kernel's trie
    /// resizes less when changes do not arrive in address order).
    IpBatchShuffled,
    /// `RouteManager::apply`: adds, then removals, no dump.
    Apply,
    /// `RouteManager::reconcile`: desired = all routes, then desired = none (each pass dumps
    /// the kernel's routes of wren's protocols first).
    Reconcile,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::IpBatch,
        Variant::IpBatchShuffled,
        Variant::Apply,
        Variant::Reconcile,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::IpBatch => "`ip -batch` (iproute2), address order",
            Variant::IpBatchShuffled => "`ip -batch` (iproute2), shuffled",
            Variant::Apply => "wren `RouteManager::apply`",
            Variant::Reconcile => "wren `RouteManager::reconcile`",
        }
    }
}

/// Install and removal time of one round.
#[derive(Copy, Clone)]
struct Timing {
    install: Duration,
    remove: Duration,
}

struct Family {
    name: &'static str,
    routes: Vec<Route>,
    add_batch: String,
    del_batch: String,
    add_shuffled: String,
    del_shuffled: String,
}

fn family_v4(n: u32) -> Family {
    let routes: Vec<Route> = (0..n)
        .map(|i| {
            let dst = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 64));
            Route::via(
                IpNet::new_assert(dst, 26),
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
            )
        })
        .collect();
    family("IPv4 /26 via", routes)
}

fn family_v6(n: u32) -> Family {
    let routes: Vec<Route> = (0..n)
        .map(|i| {
            let base = u128::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0));
            let dst = IpAddr::V6(Ipv6Addr::from(base + (u128::from(i) << 6)));
            let gateway = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
            Route::via(IpNet::new_assert(dst, 122), IpAddr::V6(gateway))
        })
        .collect();
    family("IPv6 /122 via", routes)
}

fn family(name: &'static str, routes: Vec<Route>) -> Family {
    let (mut add_batch, mut del_batch) = (String::new(), String::new());
    for route in &routes {
        let (dst, NextHop::Gateway { via: gateway, .. }) = (route.dst, &route.next_hop) else {
            unreachable!("the benchmark makes only via routes");
        };
        // `ip` tells the family from the addresses.
        let _ = writeln!(add_batch, "route add {dst} via {gateway} proto bgp");
        let _ = writeln!(del_batch, "route del {dst} proto bgp");
    }
    let (add_shuffled, del_shuffled) = (shuffle(&add_batch), shuffle(&del_batch));
    Family {
        name,
        routes,
        add_batch,
        del_batch,
        add_shuffled,
        del_shuffled,
    }
}

/// The lines of `batch` in a fixed pseudo-random order (xorshift, Fisher-Yates).
fn shuffle(batch: &str) -> String {
    let mut lines: Vec<&str> = batch.lines().collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..lines.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lines.swap(i, (x % (i as u64 + 1)) as usize);
    }
    lines.join("\n") + "\n"
}

fn run_round(ns: &NetNs, family: &Family, variant: Variant, dir: &Path) -> Timing {
    match variant {
        Variant::IpBatch | Variant::IpBatchShuffled => {
            let (add, del) = (dir.join("add.batch"), dir.join("del.batch"));
            let (add_lines, del_lines) = if variant == Variant::IpBatch {
                (&family.add_batch, &family.del_batch)
            } else {
                (&family.add_shuffled, &family.del_shuffled)
            };
            std::fs::write(&add, add_lines).unwrap();
            std::fs::write(&del, del_lines).unwrap();
            let time = |file: &Path| {
                let start = Instant::now();
                ns.exec("ip", &[std::ffi::OsStr::new("-batch"), file.as_os_str()])
                    .unwrap();
                start.elapsed()
            };
            Timing {
                install: time(&add),
                remove: time(&del),
            }
        }
        Variant::Apply => ns
            .enter(|| {
                let mut manager = RouteManager::new().unwrap();
                let adds: Vec<RouteChange> = family
                    .routes
                    .iter()
                    .cloned()
                    .map(RouteChange::Add)
                    .collect();
                let removes: Vec<RouteChange> = family
                    .routes
                    .iter()
                    .cloned()
                    .map(RouteChange::Remove)
                    .collect();
                let start = Instant::now();
                let report = manager.apply(&adds).unwrap();
                let install = start.elapsed();
                assert!(report.is_clean() && report.added == family.routes.len());
                let start = Instant::now();
                let report = manager.apply(&removes).unwrap();
                let remove = start.elapsed();
                assert!(report.is_clean() && report.removed == family.routes.len());
                Timing { install, remove }
            })
            .unwrap(),
        Variant::Reconcile => ns
            .enter(|| {
                let mut manager = RouteManager::new().unwrap();
                let start = Instant::now();
                let report = manager.reconcile(&family.routes).unwrap();
                let install = start.elapsed();
                assert!(report.is_clean() && report.added == family.routes.len());
                let start = Instant::now();
                let report = manager.reconcile(&[]).unwrap();
                let remove = start.elapsed();
                assert!(report.is_clean() && report.removed == family.routes.len());
                Timing { install, remove }
            })
            .unwrap(),
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no root, quickly.
    if !nix::unistd::geteuid().is_root() || !wren_tests::prereq::have_command("ip") {
        eprintln!("skipped: the route benchmark needs root and iproute2");
        return;
    }
    let n = arg("--routes", 100_000);
    let rounds = arg("--rounds", 5) as usize;
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("bench-routes").unwrap();
    ns.ip(&["link", "add", "up0", "type", "bridge"]).unwrap();
    ns.configure("up0", Some("192.0.2.1/24")).unwrap();
    ns.ip(&["-6", "addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"])
        .unwrap();

    println!(
        "| routes | method | install s (median) | install routes/s | remove s | remove routes/s | × ip -batch in order (install / remove) | × ip -batch shuffled (install / remove) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for family in [family_v4(n), family_v6(n)] {
        let mut timings: Vec<Vec<Timing>> = vec![Vec::new(); Variant::ALL.len()];
        for _ in 0..rounds {
            for (i, variant) in Variant::ALL.iter().enumerate() {
                timings[i].push(run_round(&ns, &family, *variant, dir.path()));
            }
        }
        let medians: Vec<(Duration, Duration)> = timings
            .iter()
            .map(|t| {
                (
                    median(t.iter().map(|x| x.install).collect()),
                    median(t.iter().map(|x| x.remove).collect()),
                )
            })
            .collect();
        let ratio = |base: usize, install: Duration, remove: Duration| {
            let (base_in, base_out) = medians[base];
            format!(
                "{:.2} / {:.2}",
                base_in.as_secs_f64() / install.as_secs_f64(),
                base_out.as_secs_f64() / remove.as_secs_f64()
            )
        };
        for (variant, (install, remove)) in Variant::ALL.iter().zip(&medians) {
            let count = family.routes.len();
            println!(
                "| {} × {} | {} | {:.3} | {:.0} | {:.3} | {:.0} | {} | {} |",
                count,
                family.name,
                variant.label(),
                install.as_secs_f64(),
                rate(count, *install),
                remove.as_secs_f64(),
                rate(count, *remove),
                ratio(0, *install, *remove),
                ratio(1, *install, *remove),
            );
        }
    }
}
