//! The kernel's change notifications ([`KernelChanges`]) in a namespace made by the test: a
//! quiet kernel reports nothing, and each kind of change wren programs is reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wren_agent::dataplane::watch::KernelChanges;
use wren_tests::netns::NetNs;
use wren_tests::prereq;

/// Waits until the count moves past `before` (the watch task runs on the same runtime).
async fn moved(changes: &Arc<KernelChanges>, before: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let generation = changes.generation().expect("the watch is not blind");
        let now = generation.routing + generation.nftables;
        if now > before {
            return now;
        }
        assert!(Instant::now() < deadline, "no change reported for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_quiet_kernel_reports_nothing_and_every_change_is_reported() {
    if !prereq::require_root() || !prereq::require_command("ip") || !prereq::require_command("nft")
    {
        return;
    }
    let ns = NetNs::new("kwatch").unwrap();
    ns.ip(&["link", "add", "up0", "type", "bridge"]).unwrap();
    ns.configure("up0", Some("192.0.2.1/24")).unwrap();
    let sysctl = |key: &str| ns.exec("sysctl", &["-qw", key]).unwrap();
    ns.block_on(|| async {
        let changes = KernelChanges::watch().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = changes.generation().unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            changes.generation(),
            Some(start),
            "a quiet kernel reported a change"
        );
        let quiet = start.routing + start.nftables;

        ns.ip(&[
            "route",
            "add",
            "10.9.0.0/24",
            "via",
            "192.0.2.2",
            "proto",
            "196",
        ])
        .unwrap();
        let mut seen = moved(&changes, quiet, "a route added").await;
        ns.ip(&["route", "del", "10.9.0.0/24"]).unwrap();
        seen = moved(&changes, seen, "a route deleted").await;
        ns.ip(&["-6", "route", "add", "blackhole", "2001:db8:9::/64"])
            .unwrap();
        seen = moved(&changes, seen, "an IPv6 route added").await;
        ns.ip(&["link", "add", "wren.t", "type", "bridge"]).unwrap();
        seen = moved(&changes, seen, "a link added").await;
        ns.ip(&["link", "set", "up0", "mtu", "1400"]).unwrap();
        seen = moved(&changes, seen, "an MTU changed").await;
        ns.ip(&["addr", "add", "198.51.100.1/32", "dev", "up0"])
            .unwrap();
        seen = moved(&changes, seen, "an address added").await;
        sysctl("net.ipv4.conf.up0.proxy_arp=1");
        seen = moved(&changes, seen, "proxy_arp turned on").await;
        ns.exec("nft", &["add", "table", "ip", "wren"]).unwrap();
        seen = moved(&changes, seen, "an nftables table added").await;
        ns.exec(
            "nft",
            &["add chain ip wren postrouting { type nat hook postrouting priority 100; }"],
        )
        .unwrap();
        seen = moved(&changes, seen, "an nftables chain added").await;
        ns.exec("nft", &["add rule ip wren postrouting masquerade"])
            .unwrap();
        seen = moved(&changes, seen, "an nftables rule added").await;
        ns.exec("nft", &["flush", "chain", "ip", "wren", "postrouting"])
            .unwrap();
        moved(&changes, seen, "an nftables chain flushed").await;

        // A commit is counted as soon as it returned, without waiting for the watch task:
        // this thread runs it, and does not yield in between.
        let before = changes.nftables_now().unwrap();
        ns.exec("nft", &["delete", "table", "ip", "wren"]).unwrap();
        assert_eq!(changes.nftables_now(), Some(before + 1));
        assert_eq!(changes.generation().unwrap().nftables, before + 1);
    })
    .unwrap();
}
