//! Outgoing NAT for pools with `natOutgoing`: nftables, in wren's own tables.
//!
//! Pod traffic from such a pool to any address outside every pool is masqueraded to the
//! address of the interface it leaves through (normally the node's). Traffic between pods, on
//! this node or another, keeps its source: its destination is inside a pool.
//!
//! wren writes only `table ip wren` and `table ip6 wren`, and each write replaces the whole
//! table in one `nft -f` transaction (make it if absent, delete it, define it again), so the
//! kernel never holds half a ruleset and no other table is touched. A reconcile lists the
//! table and rewrites it only when what the kernel holds differs from what wren last wrote
//! (someone changed it) or from what is wanted now; with nothing to masquerade, the table
//! goes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::IpNet;

/// Name of wren's nftables tables (one per family).
pub const NAT_TABLE: &str = "wren";

/// The address families wren keeps a NAT table for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NatFamily {
    /// `table ip wren`.
    V4,
    /// `table ip6 wren`.
    V6,
}

impl NatFamily {
    /// The family's name in nft syntax.
    pub fn keyword(self) -> &'static str {
        match self {
            NatFamily::V4 => "ip",
            NatFamily::V6 => "ip6",
        }
    }

    fn address_type(self) -> &'static str {
        match self {
            NatFamily::V4 => "ipv4_addr",
            NatFamily::V6 => "ipv6_addr",
        }
    }

    fn of(net: &IpNet) -> NatFamily {
        match net {
            IpNet::V4(_) => NatFamily::V4,
            IpNet::V6(_) => NatFamily::V6,
        }
    }

    const ALL: [NatFamily; 2] = [NatFamily::V4, NatFamily::V6];
}

/// What to masquerade: sources in `masquerade` going to anything outside `pools`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatRules {
    /// Every pool's range (destinations that are never masqueraded).
    pub pools: Vec<IpNet>,
    /// Ranges of the pools with `natOutgoing`.
    pub masquerade: Vec<IpNet>,
}

impl NatRules {
    /// The complete table for `family`, in nft syntax, or `None` when nothing of that family
    /// is masqueraded. Ranges are merged first: an interval set refuses overlaps.
    pub fn table(&self, family: NatFamily) -> Option<String> {
        let pick = |nets: &[IpNet]| {
            let of_family: Vec<IpNet> = nets
                .iter()
                .filter(|n| NatFamily::of(n) == family)
                .map(IpNet::trunc)
                .collect();
            IpNet::aggregate(&of_family)
        };
        let masquerade = pick(&self.masquerade);
        if masquerade.is_empty() {
            return None;
        }
        // The masqueraded ranges are pools too, whatever the caller passed.
        let pools = pick(&[self.pools.clone(), masquerade.clone()].concat());
        let elements = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (kind, ty) = (family.keyword(), family.address_type());
        Some(format!(
            "table {kind} {NAT_TABLE} {{\n\
             \tset pools {{\n\t\ttype {ty}\n\t\tflags interval\n\t\telements = {{ {all} }}\n\t}}\n\
             \tset masquerade_pools {{\n\t\ttype {ty}\n\t\tflags interval\n\t\telements = {{ {nat} }}\n\t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\t{kind} saddr @masquerade_pools {kind} daddr != @pools masquerade\n\
             \t}}\n\
             }}\n",
            all = elements(&pools),
            nat = elements(&masquerade),
        ))
    }
}

/// The `nft -f` script that replaces (or, with `None`, removes) the table of `family`
/// atomically: declaring the table first makes the delete valid when it does not exist yet.
pub fn replacement_script(family: NatFamily, table: Option<&str>) -> String {
    let kind = family.keyword();
    let mut script = format!("table {kind} {NAT_TABLE}\ndelete table {kind} {NAT_TABLE}\n");
    if let Some(table) = table {
        script.push_str(table);
    }
    script
}

/// Why the NAT tables could not be brought to the wanted state.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// `nft` could not be run at all.
    #[error("cannot run {program}: {source} (is nftables installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// `nft` refused.
    #[error("nft {what}: {stderr}")]
    Nft {
        /// What was being done.
        what: String,
        /// nft's message.
        stderr: String,
    },
    /// `nft -j` printed something that is not its JSON.
    #[error("nft printed JSON that does not parse: {0}")]
    Json(String),
}

/// What one reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NatReport {
    /// Tables written (created or replaced).
    pub written: Vec<NatFamily>,
    /// Tables removed.
    pub removed: Vec<NatFamily>,
}

impl NatReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }
}

/// Keeps wren's NAT tables as wanted, through the `nft` program, in the network namespace of
/// the calling thread. Its calls block while `nft` runs: call them on a blocking thread.
#[derive(Debug)]
pub struct NatManager {
    program: PathBuf,
    /// Per family: the wanted script and the table as listed right after writing it.
    written: BTreeMap<NatFamily, (String, String)>,
    /// Families whose table is known to be absent (so no `nft` runs for them).
    absent: BTreeMap<NatFamily, bool>,
}

impl Default for NatManager {
    fn default() -> Self {
        Self::new()
    }
}

impl NatManager {
    /// A manager using `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_program("nft")
    }

    /// A manager using the given `nft` program.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            written: BTreeMap::new(),
            absent: BTreeMap::new(),
        }
    }

    /// Makes `table ip wren` and `table ip6 wren` what `rules` asks: written when wanted and
    /// not already as written, removed when not wanted.
    pub fn reconcile(&mut self, rules: &NatRules) -> Result<NatReport, NatError> {
        let mut report = NatReport::default();
        for family in NatFamily::ALL {
            match rules.table(family) {
                Some(table) => {
                    let current = self.list(family)?;
                    let up_to_date = match (self.written.get(&family), &current) {
                        (Some((script, listed)), Some(now)) => *script == table && listed == now,
                        _ => false,
                    };
                    if up_to_date {
                        continue;
                    }
                    self.run_script(family, Some(&table))?;
                    let listed = self.list(family)?.unwrap_or_default();
                    self.written.insert(family, (table, listed));
                    self.absent.insert(family, false);
                    report.written.push(family);
                }
                None => {
                    if self.absent.get(&family) == Some(&true) {
                        continue;
                    }
                    self.written.remove(&family);
                    if self.list(family)?.is_some() {
                        self.run_script(family, None)?;
                        report.removed.push(family);
                    }
                    self.absent.insert(family, true);
                }
            }
        }
        Ok(report)
    }

    /// Removes both tables, whatever is remembered about them.
    pub fn remove_all(&mut self) -> Result<NatReport, NatError> {
        self.absent.clear();
        self.reconcile(&NatRules::default())
    }

    /// The table of `family` as nft lists it in JSON, handles left out; `None` when absent.
    pub fn list(&self, family: NatFamily) -> Result<Option<String>, NatError> {
        let out = Command::new(&self.program)
            .args(["-j", "list", "table", family.keyword(), NAT_TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NatError::Nft {
                what: format!("list table {} {NAT_TABLE}", family.keyword()),
                stderr: stderr.trim().to_owned(),
            });
        }
        canonical(&out.stdout).map(Some)
    }

    fn run_script(&self, family: NatFamily, table: Option<&str>) -> Result<(), NatError> {
        let script = replacement_script(family, table);
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|source| self.spawn_error(source))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| self.spawn_error(source))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NatError::Nft {
                what: match table {
                    Some(_) => format!("write table {} {NAT_TABLE}", family.keyword()),
                    None => format!("delete table {} {NAT_TABLE}", family.keyword()),
                },
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    fn spawn_error(&self, source: std::io::Error) -> NatError {
        NatError::Spawn {
            program: self.program.display().to_string(),
            source,
        }
    }
}

/// nft's JSON listing without its version banner and object handles, which change on every
/// write, so that two listings of the same rules compare equal.
fn canonical(json: &[u8]) -> Result<String, NatError> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| NatError::Json(e.to_string()))?;
    if let Some(items) = value
        .get_mut("nftables")
        .and_then(serde_json::Value::as_array_mut)
    {
        items.retain(|item| item.get("metainfo").is_none());
    }
    strip(&mut value);
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn the_table_masquerades_nat_pools_toward_everything_outside_every_pool() {
        let rules = NatRules {
            pools: vec![net("10.64.0.0/16"), net("10.65.0.0/16")],
            masquerade: vec![net("10.65.0.0/16")],
        };
        let table = rules.table(NatFamily::V4).unwrap();
        assert!(table.starts_with("table ip wren {\n"), "{table}");
        assert!(
            table.contains("elements = { 10.64.0.0/15 }"),
            "adjacent pools merge into one interval: {table}"
        );
        assert!(table.contains("elements = { 10.65.0.0/16 }"), "{table}");
        assert!(
            table.contains("type nat hook postrouting priority srcnat; policy accept;"),
            "{table}"
        );
        assert!(
            table.contains("ip saddr @masquerade_pools ip daddr != @pools masquerade"),
            "{table}"
        );
        assert_eq!(rules.table(NatFamily::V6), None, "no IPv6 pool masquerades");
    }

    #[test]
    fn overlapping_and_unaligned_ranges_are_merged_and_masqueraded_pools_count_as_pools() {
        let rules = NatRules {
            pools: vec![net("fd00:10::/48"), net("fd00:10:0:1::/64")],
            masquerade: vec![net("fd00:20::1/64")],
        };
        let table = rules.table(NatFamily::V6).unwrap();
        assert!(table.starts_with("table ip6 wren {"), "{table}");
        assert!(table.contains("type ipv6_addr"), "{table}");
        assert!(
            table.contains("elements = { fd00:10::/48, fd00:20::/64 }"),
            "{table}"
        );
        assert!(table.contains("ip6 saddr @masquerade_pools ip6 daddr != @pools"));
        assert_eq!(NatRules::default().table(NatFamily::V4), None);
    }

    #[test]
    fn the_script_replaces_or_removes_only_wrens_table_in_one_transaction() {
        let script = replacement_script(NatFamily::V4, Some("table ip wren {\n}\n"));
        assert_eq!(
            script,
            "table ip wren\ndelete table ip wren\ntable ip wren {\n}\n"
        );
        let removal = replacement_script(NatFamily::V6, None);
        assert_eq!(removal, "table ip6 wren\ndelete table ip6 wren\n");
    }

    #[test]
    fn listings_compare_without_handles_or_version() {
        let a = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "wren", "handle": 1}}, {"rule": {"chain": "postrouting", "handle": 4, "expr": [{"masquerade": null}]}}]}"#;
        let b = br#"{"nftables": [{"metainfo": {"version": "1.0.9"}}, {"table": {"family": "ip", "name": "wren", "handle": 7}}, {"rule": {"chain": "postrouting", "handle": 9, "expr": [{"masquerade": null}]}}]}"#;
        assert_eq!(canonical(a).unwrap(), canonical(b).unwrap());
        let c = br#"{"nftables": [{"table": {"family": "ip", "name": "wren", "handle": 7}}]}"#;
        assert_ne!(canonical(a).unwrap(), canonical(c).unwrap());
        assert!(canonical(b"not json").is_err());
    }
}
