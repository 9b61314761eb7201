//! `wren ipam show|check|release`: inspecting and repairing address allocations.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use wren_ipam::{CheckOptions, CheckReport, Ipam, LeakReason, StaleReason};
use wren_model::keys;
use wren_store::Store;

use super::{IpamArgs, IpamCommand};
use crate::daemon::status::table;

/// Runs `wren ipam`.
pub async fn run(args: IpamArgs) -> anyhow::Result<()> {
    let store = super::store::open_reachable(&args.store).await?;
    let ipam = Ipam::new(store.clone());
    if matches!(
        args.command,
        IpamCommand::Check { .. } | IpamCommand::Release { .. }
    ) {
        require_cluster_data(store.as_ref()).await?;
    }
    match args.command {
        IpamCommand::Show { ip: None } => print!("{}", show(&ipam).await?),
        IpamCommand::Show { ip: Some(ip) } => print!("{}", show_address(&ipam, ip).await?),
        IpamCommand::Check { grace } => {
            let report = ipam.check(CheckOptions { grace }).await?;
            print!("{}", render_check(&report, grace));
        }
        IpamCommand::Release {
            ip: Some(ip),
            from_check: false,
            ..
        } => {
            let released = ipam.release_address(ip).await?;
            println!("released {ip} (handle {})", released.handle);
        }
        IpamCommand::Release { grace, .. } => {
            let options = CheckOptions {
                grace: grace.unwrap_or(CheckOptions::default().grace),
            };
            let report = ipam.check(options).await?;
            if report.is_clean() {
                println!("nothing to release: the leak check found nothing");
                return Ok(());
            }
            let done = ipam.release_from_check(&report).await?;
            println!(
                "released {} address{}, {} block{} of nodes that are gone ({} more unaffined while they still hold addresses), {} stale affinit{}, {} empty handle{}",
                done.addresses.len(),
                plural(done.addresses.len(), "es"),
                done.blocks_released.len(),
                plural(done.blocks_released.len(), "s"),
                done.blocks_unaffined.len(),
                done.affinities_removed,
                if done.affinities_removed == 1 {
                    "y"
                } else {
                    "ies"
                },
                done.handles_removed,
                plural(done.handles_removed, "s"),
            );
            for skipped in &done.skipped {
                println!("left alone: {skipped}");
            }
        }
    }
    Ok(())
}

/// Refuses to judge leaks while the agents rebuild a datastore that lost the cluster's data:
/// what they have not written back yet would look free, and what they have, leaked.
async fn require_cluster_data(store: &dyn Store) -> anyhow::Result<()> {
    if store.get(keys::CLUSTER_ID).await?.is_some() {
        return Ok(());
    }
    let rebuilding: Vec<String> = crate::daemon::identity::rebuild_reports(store)
        .await?
        .into_keys()
        .collect();
    if rebuilding.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the datastore lost the cluster's data and the agents are rebuilding it ({} reported so far): check again once `wren status` says ready",
        rebuilding.join(", ")
    )
}

/// Parses a grace period: a number with an optional unit (`s`, `m`, `h`); bare numbers are
/// seconds.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?}: expected a duration like 90s, 5m or 1h")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 90s, 5m or 1h"))?;
    Ok(Duration::from_secs(n.saturating_mul(scale)))
}

fn plural(n: usize, suffix: &'static str) -> &'static str {
    if n == 1 { "" } else { suffix }
}

fn or_dash(s: Option<&str>) -> String {
    s.unwrap_or("-").to_owned()
}

/// Pools with their usage, then every block.
async fn show(ipam: &Ipam) -> anyhow::Result<String> {
    let usage = ipam.usage().await?;
    if usage.pools.is_empty() && usage.orphan_blocks.is_empty() {
        return Ok("no pools (add one with `wren pool add NAME --cidr CIDR`)\n".to_owned());
    }
    let mut out = super::pool::pools_table(&usage);
    let mut blocks: Vec<Vec<String>> = Vec::new();
    let pooled = usage
        .pools
        .iter()
        .flat_map(|p| p.blocks.iter().map(move |b| (p.name.as_str(), b)));
    let orphans = usage.orphan_blocks.iter().map(|b| ("(none)", b));
    for (pool, b) in pooled.chain(orphans) {
        blocks.push(vec![
            pool.to_owned(),
            b.block.to_string(),
            or_dash(b.node.as_deref()),
            format!("{}/{}", b.used, b.size),
            b.borrowed.to_string(),
        ]);
    }
    if !blocks.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["POOL", "BLOCK", "NODE", "USED", "BORROWED"],
            &blocks,
        ));
    }
    Ok(out)
}

/// Who holds one address.
async fn show_address(ipam: &Ipam, ip: IpAddr) -> anyhow::Result<String> {
    let info = ipam.lookup(ip).await?;
    let mut out = String::new();
    let _ = writeln!(out, "address:  {ip}");
    let _ = writeln!(
        out,
        "pool:     {}",
        info.pool
            .as_deref()
            .unwrap_or("(none: its pool was removed)")
    );
    match info.block {
        Some(block) => {
            let _ = writeln!(
                out,
                "block:    {block} (node {})",
                or_dash(info.block_node.as_deref())
            );
        }
        None => {
            let _ = writeln!(out, "block:    (not claimed by any node)");
        }
    }
    let Some(held) = info.assignment else {
        let _ = writeln!(out, "state:    free");
        return Ok(out);
    };
    let _ = writeln!(out, "state:    allocated");
    let _ = writeln!(out, "handle:   {}", held.handle);
    let node = held.borrowed_by.as_deref().or(info.block_node.as_deref());
    let borrowed = if held.borrowed_by.is_some() {
        " (borrowed from the block's node)"
    } else {
        ""
    };
    let _ = writeln!(out, "node:     {}{borrowed}", or_dash(node));
    match info.workload {
        Some(w) => {
            let pod = match (w.pod(), &w.pod_uid) {
                (Some(pod), Some(uid)) => format!("pod {pod} (uid {uid}), "),
                (Some(pod), None) => format!("pod {pod}, "),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "workload: {pod}container {} ({}) on {}, host interface {}",
                w.container_id, w.ifname, w.node, w.host_interface
            );
        }
        None => {
            let _ = writeln!(out, "workload: none recorded (see `wren ipam check`)");
        }
    }
    Ok(out)
}

/// The leak check report as tables.
fn render_check(report: &CheckReport, grace: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "checked {} allocated address{} at revision {}",
        report.allocated,
        plural(report.allocated, "es"),
        report.revision
    );
    if !report.leaked.is_empty() {
        let _ = writeln!(
            out,
            "\n{} leaked address{}:",
            report.leaked.len(),
            plural(report.leaked.len(), "es")
        );
        let rows: Vec<Vec<String>> = report
            .leaked
            .iter()
            .map(|l| {
                let reason = match l.reason {
                    LeakReason::NoWorkload => "no workload holds its handle",
                    LeakReason::NodeGone => "its node is gone",
                    LeakReason::NoHandle => "its handle document is missing",
                };
                vec![
                    l.address.to_string(),
                    l.block.to_string(),
                    l.handle.clone(),
                    or_dash(l.node.as_deref()),
                    reason.to_owned(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ADDRESS", "BLOCK", "HANDLE", "NODE", "WHY"],
            &rows,
        ));
    }
    if !report.dead_node_blocks.is_empty() {
        let n = report.dead_node_blocks.len();
        let _ = writeln!(out, "\n{n} block{} of nodes that are gone:", plural(n, "s"));
        let rows: Vec<Vec<String>> = report
            .dead_node_blocks
            .iter()
            .map(|b| vec![b.block.to_string(), b.node.clone(), b.used.to_string()])
            .collect();
        out.push_str(&table(&["BLOCK", "NODE", "USED"], &rows));
    }
    if !report.stale_affinities.is_empty() {
        let n = report.stale_affinities.len();
        let _ = writeln!(
            out,
            "\n{n} stale affinit{}:",
            if n == 1 { "y" } else { "ies" }
        );
        let rows: Vec<Vec<String>> = report
            .stale_affinities
            .iter()
            .map(|a| {
                let reason = match a.reason {
                    StaleReason::NodeGone => "its node is gone",
                    StaleReason::NoBlock => "its block is missing or not the node's",
                };
                vec![
                    a.node.clone(),
                    a.block.to_string(),
                    format!("{:?}", a.state).to_lowercase(),
                    reason.to_owned(),
                ]
            })
            .collect();
        out.push_str(&table(&["NODE", "BLOCK", "STATE", "WHY"], &rows));
    }
    if !report.dangling_handles.is_empty() {
        let n = report.dangling_handles.len();
        let names: Vec<&str> = report
            .dangling_handles
            .iter()
            .map(|h| h.handle.as_str())
            .collect();
        let _ = writeln!(
            out,
            "\n{n} handle{} holding no address: {}",
            plural(n, "s"),
            names.join(", ")
        );
    }
    if report.too_young > 0 {
        let _ = writeln!(
            out,
            "\n{} address{} without a workload yet {} younger than {}s and not judged",
            report.too_young,
            plural(report.too_young, "es"),
            if report.too_young == 1 { "is" } else { "are" },
            grace.as_secs()
        );
    }
    if report.is_clean() {
        let _ = writeln!(out, "no leaks found");
    } else {
        let _ = writeln!(
            out,
            "\nrun `wren ipam release --from-check` to free them (each is checked again first)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_parse_with_units() {
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_grace("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_grace("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_grace("5 minutes").is_err());
        assert!(parse_grace("m").is_err());
        assert!(parse_grace("-1").is_err());
    }
}
