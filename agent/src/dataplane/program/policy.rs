//! The network policy programmer: the node's policy plan ([`wren_policy::NodePlan`]) as the
//! `inet wren_policy` nftables table, in the network namespace the agent runs in.
//!
//! After a change only what changed goes to the kernel ([`NftRules::delta_script`]: new
//! sets, the chains whose rules changed, the interface maps' entries, in one transaction);
//! on a full pass the whole table is replaced in place in one transaction, which undoes any
//! drift without unhooking the table's chain ([`NftRules::replace_script`]: a table deleted
//! and made again loses packets crossing the hook as it commits). On the first pass the
//! table an earlier run left is read by name and replaced in place the same way; only when
//! one of the table's objects is of another type than wren gives it (someone made it so)
//! is it deleted and made again. A node where no policy isolates a pod has no table at
//! all, so its forwarded packets meet no hook of wren's.
//!
//! Every load that changes the rules stamps a new epoch into the connection mark of the TCP
//! connections they allow ([`ConnectionMark`], under [`CONNECTION_MARK_MASK`]), in the same
//! transaction; [`PolicyProgrammer::connection_mark`] tells the fast path, after the
//! transaction committed, which epoch it may carry (see `docs/policy.md`).
//!
//! conntrack never sees the packets the fast path carries, so their connections' entries
//! would expire while the connections go on, and the table resets a connection it meets
//! again mid-stream. An epoch is therefore renewed ([`renewal_interval`]) well inside
//! conntrack's TCP timeouts even when the rules do not change: each carried connection's
//! next packet then goes through the stack, which refreshes its entry.
//!
//! What the table denies is counted in its named counters ([`DeniedCounter`]); a table made
//! afresh starts them from zero, and so does deleting one, so the programmer reads them
//! first and carries their figures over: [`PolicyProgrammer::denied`] only grows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use wren_policy::NodePlan;
use wren_policy::nft::{ConnectionMark, DeniedCounter, NftRules, TABLE};

/// The bits of the connection mark (`ct mark`) that are the policy's: sixteen bits, the
/// lowest the reset bit and the fifteen above it the epoch, so an epoch comes back only
/// after 32,767 changes of the node's rules; the other bits are left to others.
pub const CONNECTION_MARK_MASK: u32 = 0xffff_0000;

/// Where the agent's namespace keeps conntrack's settings.
const CONNTRACK_SYSCTLS: &str = "/proc/sys/net/netfilter";

/// The TCP timeouts of conntrack the renewal is measured against (sysctls of the agent's
/// namespace), with conntrack's defaults for when they cannot be read: the states a
/// carried connection can be in. Established; unacknowledged, which an entry gets when
/// the last packet conntrack saw carried data whose acknowledgement was carried; and
/// after one side's FIN, which leaves the stamp, the half-closed connection's data and
/// acknowledgements are carried while conntrack counts down its FIN_WAIT or CLOSE_WAIT;
/// and SYN_RECV, which a new connection on the ports of one a carried reset ended is left
/// in (conntrack re-synchronised on its SYN-ACK, and its handshake's ACK was carried).
const TCP_TIMEOUTS: [(&str, Duration); 5] = [
    (
        "nf_conntrack_tcp_timeout_established",
        Duration::from_secs(5 * 24 * 3600),
    ),
    (
        "nf_conntrack_tcp_timeout_unacknowledged",
        Duration::from_secs(300),
    ),
    (
        "nf_conntrack_tcp_timeout_fin_wait",
        Duration::from_secs(120),
    ),
    (
        "nf_conntrack_tcp_timeout_close_wait",
        Duration::from_secs(60),
    ),
    ("nf_conntrack_tcp_timeout_syn_recv", Duration::from_secs(60)),
];

/// conntrack's timeout for a reset TCP connection (a sysctl of the agent's namespace),
/// with its default: what a reset the fast path carries leaves of the connection's entry,
/// as conntrack would have on seeing it.
const TCP_TIMEOUT_CLOSE: (&str, Duration) =
    ("nf_conntrack_tcp_timeout_close", Duration::from_secs(10));

/// The shortest renewal interval, however short conntrack's timeouts are set.
const MIN_RENEWAL: Duration = Duration::from_secs(1);

/// How long an epoch stands before it is renewed although the rules did not change: a
/// quarter of the shortest of conntrack's `timeouts` that a carried connection's entry
/// can count down (at least `MIN_RENEWAL`, a second). A carried connection's entry is refreshed
/// by its first packet after each renewal.
pub fn renewal_interval(timeouts: impl IntoIterator<Item = Duration>) -> Duration {
    (timeouts.into_iter().min().unwrap_or(MIN_RENEWAL) / 4).max(MIN_RENEWAL)
}

/// Why the table could not be brought to the plan.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `nft` could not be run at all.
    #[error("cannot run {program}: {source} (is nftables installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// `nft -j` printed something that is not its JSON.
    #[error("nft printed JSON that does not parse: {0}")]
    Json(String),
    /// `nft` refused the script.
    #[error("nft {what}: {stderr}")]
    Nft {
        /// What was being done.
        what: &'static str,
        /// nft's message.
        stderr: String,
    },
}

/// What one call of [`PolicyProgrammer::program`] sent to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    /// Nothing: the table was already as planned.
    None,
    /// Only what changed since the last call, in one transaction.
    Delta,
    /// The whole table, in one transaction.
    Whole,
    /// The table was removed (no pod of the node is isolated).
    Removed,
}

/// What the kernel holds, as far as the programmer knows.
#[derive(Debug, Default)]
enum Loaded {
    /// Not known (at start, after a failure): the next call replaces the whole table.
    #[default]
    Unknown,
    /// No table.
    Absent,
    /// The table with these rules.
    Table(NftRules),
}

/// Keeps `inet wren_policy` as the plan says, through the `nft` program.
#[derive(Debug)]
pub struct PolicyProgrammer {
    program: PathBuf,
    /// Where conntrack's TCP timeouts are read (the namespace's `net/netfilter` sysctls).
    conntrack_sysctls: PathBuf,
    /// The connection mark's bits for the epoch; `None`: no stamping.
    mark_mask: Option<u32>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    loaded: Loaded,
    /// Figures of counters the table no longer holds (a whole load, a deleted counter).
    carried: BTreeMap<DeniedCounter, u64>,
    /// Epochs used so far, counted from a value of the agent's start (a restarted agent
    /// does not take up its predecessor's count, whose marks live on in conntrack).
    epochs: u64,
    /// When the epoch in force was issued.
    epoch_issued: Option<Instant>,
}

/// Where an agent's epochs start: from the clock and the process, different from one
/// start to the next.
fn first_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    u64::from(nanos ^ std::process::id().rotate_left(16))
}

impl Default for PolicyProgrammer {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyProgrammer {
    /// A programmer using `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_program("nft")
    }

    /// A programmer using the given `nft` program, stamping epochs under
    /// [`CONNECTION_MARK_MASK`].
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            conntrack_sysctls: PathBuf::from(CONNTRACK_SYSCTLS),
            mark_mask: Some(CONNECTION_MARK_MASK),
            state: Mutex::new(State {
                epochs: first_epoch(),
                ..State::default()
            }),
        }
    }

    /// The same programmer stamping epochs under `mask` instead (0: stamping nothing, so
    /// the fast path carries no policed connection).
    pub fn with_mark_mask(self, mask: u32) -> Self {
        Self {
            mark_mask: (mask != 0).then_some(mask),
            ..self
        }
    }

    /// The same programmer reading conntrack's timeouts from `dir` instead of the
    /// namespace's sysctls.
    pub fn with_conntrack_sysctls(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            conntrack_sysctls: dir.into(),
            ..self
        }
    }

    /// How long an epoch stands: [`renewal_interval`] of the timeouts conntrack has now.
    fn epoch_lifetime(&self) -> Duration {
        renewal_interval(TCP_TIMEOUTS.map(|timeout| self.conntrack_timeout(timeout)))
    }

    /// What conntrack leaves of a reset connection's entry in this namespace, now: the
    /// timeout the fast path gives an entry whose reset it carries.
    pub fn reset_timeout(&self) -> Duration {
        self.conntrack_timeout(TCP_TIMEOUT_CLOSE)
    }

    /// One of conntrack's timeouts as its sysctl `name` says now, `default` when it cannot
    /// be read.
    fn conntrack_timeout(&self, (name, default): (&str, Duration)) -> Duration {
        read_seconds(&self.conntrack_sysctls.join(name)).unwrap_or(default)
    }

    /// The epoch the table in the kernel stamps on the connections it allows; `None`
    /// when there is no table or its state is unknown (a load failed).
    pub async fn connection_mark(&self) -> Option<ConnectionMark> {
        match &self.state.lock().await.loaded {
            Loaded::Table(rules) => rules.connection_mark,
            _ => None,
        }
    }

    /// `rules` as they are to be loaded: with the epoch of the table they replace when
    /// nothing else changes (a full pass reloading the same rules) and that epoch is
    /// younger than `lifetime`, the next one when anything changes, the epoch is due for
    /// renewal, or the kernel's state is unknown.
    fn stamped(&self, state: &mut State, rules: &NftRules, lifetime: Duration) -> NftRules {
        let mut rules = rules.clone();
        if let Loaded::Table(previous) = &state.loaded {
            rules.connection_mark = previous.connection_mark;
            let current = rules.connection_mark.is_none()
                || state.epoch_issued.is_some_and(|at| at.elapsed() < lifetime);
            if rules == *previous && current {
                return rules;
            }
        }
        rules.connection_mark = self.mark_mask.and_then(|mask| {
            state.epochs = state.epochs.wrapping_add(1);
            ConnectionMark::nth(mask, state.epochs)
        });
        state.epoch_issued = Some(Instant::now());
        rules
    }

    /// What the table has denied since the agent started, per counter: only grows.
    pub async fn denied(&self) -> Result<BTreeMap<DeniedCounter, u64>, PolicyError> {
        let state = self.state.lock().await;
        let mut totals = state.carried.clone();
        if let Loaded::Table(rules) = &state.loaded {
            for (name, packets) in self.read_counters().await? {
                if let Some(counter) = rules.counters.get(&name) {
                    *totals.entry(counter.clone()).or_default() += packets;
                }
            }
        }
        Ok(totals)
    }

    /// Carries over the figures of the loaded table's counters that the next load resets or
    /// removes: every one `kept` does not name and `carried` does not hold yet, which then
    /// joins `carried`. Reads nothing when there is none.
    async fn carry(
        &self,
        state: &mut State,
        carried: &mut Vec<String>,
        kept: impl Fn(&str) -> bool,
    ) {
        let Loaded::Table(rules) = &state.loaded else {
            return;
        };
        let going: Vec<String> = rules
            .counters
            .keys()
            .filter(|name| !kept(name) && !carried.contains(name))
            .cloned()
            .collect();
        if going.is_empty() {
            return;
        }
        match self.read_counters().await {
            Ok(figures) => {
                for (name, packets) in figures {
                    if let Some(counter) =
                        rules.counters.get(&name).filter(|_| going.contains(&name))
                    {
                        *state.carried.entry(counter.clone()).or_default() += packets;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the policy counters; their figures restart")
            }
        }
        carried.extend(going);
    }

    /// The table's named counters: name → packets; empty when there is no table.
    async fn read_counters(&self) -> Result<BTreeMap<String, u64>, PolicyError> {
        let out = tokio::process::Command::new(&self.program)
            .args(["-j", "list", "counters", "table", "inet", TABLE])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| PolicyError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(BTreeMap::new());
            }
            return Err(PolicyError::Nft {
                what: "list the counters",
                stderr: stderr.trim().to_owned(),
            });
        }
        counter_figures(&out.stdout)
    }

    /// Brings the table to `rules`: a delta after a change, the whole table when `full` or
    /// when the last state is unknown; no table when `rules` isolate nothing.
    pub async fn program(&self, rules: &NftRules, full: bool) -> Result<PolicyChange, PolicyError> {
        let mut state = self.state.lock().await;
        if rules.chains.is_empty() {
            // No table, and none wanted: nothing to run, on a full pass too (only wren
            // writes this table, and the first pass removed any a previous run left).
            if matches!(state.loaded, Loaded::Absent) {
                return Ok(PolicyChange::None);
            }
            self.carry(&mut state, &mut Vec::new(), |_| false).await;
            state.loaded = Loaded::Unknown;
            self.run("remove the table", &NodePlan::nft_remove_script(TABLE))
                .await?;
            state.loaded = Loaded::Absent;
            return Ok(PolicyChange::Removed);
        }
        let lifetime = self.epoch_lifetime();
        let rules = &self.stamped(&mut state, rules, lifetime);
        // Counters whose figures were carried over already (for a delta that was then
        // refused, say), or that belong to an earlier run.
        let mut carried: Vec<String> = Vec::new();
        let in_rules = |name: &str| rules.counters.contains_key(name);
        if let (false, Loaded::Table(previous)) = (full, &state.loaded) {
            let delta = rules.delta_script(previous, TABLE);
            if delta.is_empty() {
                return Ok(PolicyChange::None);
            }
            self.carry(&mut state, &mut carried, in_rules).await;
            match self.run("apply the changes", &delta).await {
                Ok(()) => {
                    state.loaded = Loaded::Table(rules.clone());
                    return Ok(PolicyChange::Delta);
                }
                Err(e) => tracing::debug!(error = %e, "policy delta refused; replacing the table"),
            }
        }
        if matches!(state.loaded, Loaded::Unknown)
            && let Some(found) = self.kernel_table().await
        {
            // At start, or after a failed load: the table an earlier run (or the failed
            // load) left is replaced in place as well. Its counters' figures belong to that
            // run, not to this one's totals.
            carried.extend(found.counters.keys().cloned());
            state.loaded = Loaded::Table(found);
        }
        if let Loaded::Table(previous) = &state.loaded {
            // In place: the forward chain stays hooked (no packet lost while it commits),
            // and the counters both tables hold keep their figures; those it deletes are
            // carried over first.
            let script = rules.replace_script(previous, TABLE);
            self.carry(&mut state, &mut carried, in_rules).await;
            match self.run("replace the table", &script).await {
                Ok(()) => {
                    state.loaded = Loaded::Table(rules.clone());
                    return Ok(PolicyChange::Whole);
                }
                // An object changed to another type behind wren's back: made again below.
                Err(e) => {
                    tracing::debug!(error = %e, "policy table not replaceable in place; loading it afresh")
                }
            }
        }
        // Made afresh, every counter starts from zero.
        self.carry(&mut state, &mut carried, |_| false).await;
        state.loaded = Loaded::Unknown;
        self.run("load the table", &rules.script(TABLE)).await?;
        state.loaded = Loaded::Table(rules.clone());
        Ok(PolicyChange::Whole)
    }

    /// The chains, sets and counters the kernel's table holds, by name, as rules without
    /// content: what a replacement in place must empty or delete. `None` without a table,
    /// or when it cannot be read (the table is then made afresh).
    async fn kernel_table(&self) -> Option<NftRules> {
        let out = tokio::process::Command::new(&self.program)
            .args(["-j", "-t", "list", "table", "inet", TABLE])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| table_objects(&out.stdout))
            .flatten()
    }

    async fn run(&self, what: &'static str, script: &str) -> Result<(), PolicyError> {
        let spawn_error = |source| PolicyError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let mut child = tokio::process::Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(spawn_error)?;
        }
        let out = child.wait_with_output().await.map_err(spawn_error)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(PolicyError::Nft {
                what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

/// A sysctl holding a number of seconds.
fn read_seconds(path: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().map(Duration::from_secs)
}

/// The objects `nft -j list table` names that wren's rules keep by name (the pods' chains,
/// the address sets, the counters), as rules without content. The forward chain, the
/// interface maps and the sets of isolated interfaces (type `ifname`) are every table's.
fn table_objects(json: &[u8]) -> Option<NftRules> {
    let listing: serde_json::Value = serde_json::from_slice(json).ok()?;
    let mut found = NftRules::default();
    for object in listing.get("nftables")?.as_array()? {
        let field = |kind: &str, field: &str| {
            object
                .get(kind)
                .and_then(|o| o.get(field))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        if let Some(name) = field("chain", "name").filter(|n| n != "forward") {
            found.chains.insert(name, Vec::new());
        } else if let Some(name) = field("set", "name")
            && field("set", "type").as_deref() != Some("ifname")
        {
            found.sets.insert(name, ("", String::new()));
        } else if let Some(name) = field("counter", "name") {
            found.counters.insert(
                name,
                DeniedCounter {
                    policy: None,
                    connections: false,
                },
            );
        }
    }
    Some(found)
}

/// The named counters' figures in `nft -j list counters`: name → packets.
fn counter_figures(json: &[u8]) -> Result<BTreeMap<String, u64>, PolicyError> {
    let listing: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| PolicyError::Json(e.to_string()))?;
    let objects = listing
        .get("nftables")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| PolicyError::Json("no \"nftables\" array".to_owned()))?;
    Ok(objects
        .iter()
        .filter_map(|o| o.get("counter"))
        .filter_map(|c| {
            let name = c.get("name")?.as_str()?;
            Some((name.to_owned(), c.get("packets")?.as_u64()?))
        })
        .collect())
}

/// Network policy as `wren status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Whether the agent enforces policy (false until the first pass, or when it runs
    /// without a policy programmer).
    pub enforcing: bool,
    /// The policies isolating a pod of this node, as `namespace/name`.
    pub in_force: Vec<String>,
    /// The pods of this node some policy isolates, as `namespace/name`.
    pub isolated_pods: Vec<String>,
    /// Why the last pass could not program the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PolicyStatus {
    /// What `plan` puts in force, and how programming it went.
    pub fn of(plan: &NodePlan, outcome: Result<PolicyChange, &PolicyError>) -> Self {
        let mut in_force: Vec<String> = plan
            .endpoints
            .iter()
            .flat_map(|e| [&e.ingress, &e.egress])
            .flatten()
            .flat_map(|d| d.isolated_by.iter().map(ToString::to_string))
            .collect();
        in_force.sort();
        in_force.dedup();
        let mut isolated_pods: Vec<String> = plan.endpoints.iter().map(|e| e.pod.clone()).collect();
        isolated_pods.sort();
        Self {
            enforcing: true,
            in_force,
            isolated_pods,
            error: outcome.err().map(ToString::to_string),
        }
    }

    /// The `wren status` line.
    pub fn render(&self) -> String {
        if !self.enforcing {
            return "Network policy: not programmed yet\n".to_owned();
        }
        let mut out = if self.in_force.is_empty() {
            "Network policy: none in force on this node\n".to_owned()
        } else {
            format!(
                "Network policy: {} in force, isolating {} pod(s): {}\n",
                self.in_force.len(),
                self.isolated_pods.len(),
                self.in_force.join(", ")
            )
        };
        if let Some(e) = &self.error {
            out.push_str(&format!("  last programming failed: {e}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules with one chain: a table to load.
    fn one_chain() -> NftRules {
        let mut rules = NftRules::default();
        rules
            .chains
            .insert("ingress_wren_a".into(), vec!["drop".into()]);
        rules
    }

    /// An agent started again (a new programmer) replaces the table its predecessor left in
    /// place, keeping the table and its hooked chain, and leaves exactly its own plan.
    #[test]
    fn a_restarted_agent_replaces_its_predecessors_table_in_place() {
        use wren_tests::netns::NetNs;
        if !wren_tests::prereq::require_root() || !wren_tests::prereq::require_command("nft") {
            return;
        }
        let ns = NetNs::new("pol-restart").unwrap();
        let program = |rules: NftRules| {
            ns.block_on(|| async move { PolicyProgrammer::new().program(&rules, true).await })
                .unwrap()
                .unwrap()
        };
        let handle = || {
            ns.exec("nft", &["-a", "list", "table", "inet", TABLE])
                .unwrap()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let mut before = one_chain();
        before
            .chains
            .insert("ingress_wren_gone".into(), vec!["accept".into()]);
        before
            .sets
            .insert("agone".into(), ("ipv4_addr", "10.9.9.9".into()));
        assert_eq!(program(before), PolicyChange::Whole);
        let first = handle();
        assert!(first.contains("# handle"), "{first}");
        assert_eq!(program(one_chain()), PolicyChange::Whole);
        assert_eq!(handle(), first, "the table was deleted and made again");
        let listing = ns.exec("nft", &["list", "table", "inet", TABLE]).unwrap();
        assert!(
            listing.contains("chain ingress_wren_a")
                && !listing.contains("ingress_wren_gone")
                && !listing.contains("agone"),
            "{listing}"
        );
    }

    #[test]
    fn a_configured_mask_holds_the_epoch_and_no_mask_stamps_nothing() {
        let rules = one_chain();
        let narrow = PolicyProgrammer::new().with_mark_mask(0x00ff_0000);
        let mark = narrow
            .stamped(&mut State::default(), &rules, Duration::MAX)
            .connection_mark
            .expect("an epoch");
        assert_eq!(mark.mask, 0x00ff_0000);
        assert!(mark.epoch != 0 && mark.epoch & !0x00ff_0000 == 0);
        let none = PolicyProgrammer::new().with_mark_mask(0);
        assert_eq!(
            none.stamped(&mut State::default(), &rules, Duration::MAX)
                .connection_mark,
            None
        );
    }

    #[test]
    fn a_change_stamps_a_new_epoch_and_a_reload_of_the_same_rules_keeps_it() {
        let programmer = PolicyProgrammer::new();
        let mut state = State::default();
        let rules = one_chain();
        // Nothing known of the kernel: a new epoch, inside the mask, never 0.
        let first = programmer.stamped(&mut state, &rules, Duration::MAX);
        let mark = first.connection_mark.expect("an epoch");
        assert_eq!(mark.mask, CONNECTION_MARK_MASK);
        assert!(mark.epoch != 0 && mark.epoch & !CONNECTION_MARK_MASK == 0);
        state.loaded = Loaded::Table(first.clone());
        // The same rules again (a full pass): the same epoch, so carried connections stay.
        assert_eq!(programmer.stamped(&mut state, &rules, Duration::MAX), first);
        // Changed rules: the next epoch.
        let mut changed = rules.clone();
        changed
            .chains
            .insert("egress_wren_a".into(), vec!["drop".into()]);
        let next = programmer
            .stamped(&mut state, &changed, Duration::MAX)
            .connection_mark;
        assert!(next.is_some_and(|n| n.epoch != mark.epoch), "{next:?}");
        // After a failure the kernel's table is unknown: a new epoch even for the same rules.
        state.loaded = Loaded::Unknown;
        let again = programmer
            .stamped(&mut state, &rules, Duration::MAX)
            .connection_mark;
        assert!(again.is_some_and(|a| a.epoch != mark.epoch), "{again:?}");
    }

    #[test]
    fn an_epoch_older_than_its_lifetime_is_renewed_for_the_same_rules() {
        let programmer = PolicyProgrammer::new();
        let mut state = State::default();
        let rules = one_chain();
        let first = programmer.stamped(&mut state, &rules, Duration::MAX);
        state.loaded = Loaded::Table(first.clone());
        assert_eq!(
            programmer.stamped(&mut state, &rules, Duration::from_secs(3600)),
            first,
            "a young epoch stands"
        );
        let renewed = programmer.stamped(&mut state, &rules, Duration::ZERO);
        assert_ne!(renewed.connection_mark, first.connection_mark);
        assert_eq!(renewed.chains, first.chains);
        // Without stamping there is nothing to renew.
        let plain = PolicyProgrammer::new().with_mark_mask(0);
        let mut state = State::default();
        let loaded = plain.stamped(&mut state, &rules, Duration::ZERO);
        state.loaded = Loaded::Table(loaded.clone());
        assert_eq!(plain.stamped(&mut state, &rules, Duration::ZERO), loaded);
    }

    #[test]
    fn epochs_are_renewed_well_inside_conntracks_tcp_timeouts() {
        let defaults = TCP_TIMEOUTS.map(|(_, default)| default);
        // CLOSE_WAIT's and SYN_RECV's 60 s are the shortest a carried connection can
        // count down.
        assert_eq!(renewal_interval(defaults), Duration::from_secs(15));
        let mut short = defaults;
        short[0] = Duration::from_secs(8);
        assert_eq!(renewal_interval(short), Duration::from_secs(2));
        short[0] = Duration::ZERO;
        assert_eq!(renewal_interval(short), MIN_RENEWAL);
        // Read from the namespace's sysctls, conntrack's defaults when they are missing.
        let dir = tempfile::tempdir().unwrap();
        let programmer = PolicyProgrammer::new().with_conntrack_sysctls(dir.path());
        assert_eq!(programmer.epoch_lifetime(), Duration::from_secs(15));
        std::fs::write(
            dir.path().join("nf_conntrack_tcp_timeout_established"),
            "12\n",
        )
        .unwrap();
        assert_eq!(programmer.epoch_lifetime(), Duration::from_secs(3));
        std::fs::write(dir.path().join("nf_conntrack_tcp_timeout_established"), "0").unwrap();
        std::fs::write(dir.path().join("nf_conntrack_tcp_timeout_close_wait"), "20").unwrap();
        assert_eq!(programmer.epoch_lifetime(), MIN_RENEWAL);
        std::fs::remove_file(dir.path().join("nf_conntrack_tcp_timeout_established")).unwrap();
        assert_eq!(programmer.epoch_lifetime(), Duration::from_secs(5));
        std::fs::write(
            dir.path().join("nf_conntrack_tcp_timeout_close_wait"),
            "600",
        )
        .unwrap();
        std::fs::write(dir.path().join("nf_conntrack_tcp_timeout_syn_recv"), "8").unwrap();
        assert_eq!(programmer.epoch_lifetime(), Duration::from_secs(2));
    }

    #[test]
    fn counter_figures_are_read_from_nft_json() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "denied_packets", "table": "wren_policy", "handle": 2, "packets": 7, "bytes": 420}}, {"counter": {"family": "inet", "name": "p0123", "table": "wren_policy", "handle": 3, "packets": 0, "bytes": 0}}]}"#;
        let figures = counter_figures(json).unwrap();
        assert_eq!(
            figures,
            BTreeMap::from([("denied_packets".to_owned(), 7), ("p0123".to_owned(), 0)])
        );
        assert!(matches!(
            counter_figures(b"{\"x\": 1}"),
            Err(PolicyError::Json(_))
        ));
    }

    #[test]
    fn status_names_the_policies_in_force_once_each() {
        let mut cluster = wren_policy::Cluster::new();
        for (name, interface) in [("a", "wren-a"), ("b", "wren-b")] {
            cluster.add_pod(wren_policy::Pod {
                namespace: "x".into(),
                name: name.into(),
                node: "n1".into(),
                labels: Default::default(),
                addresses: vec!["10.65.0.1".parse().unwrap()],
                ports: Vec::new(),
                host_interface: interface.into(),
            });
        }
        for policy in wren_policy::decode_policies(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
        )
        .unwrap()
        {
            cluster.add_policy(policy);
        }
        let status = PolicyStatus::of(&cluster.plan_node("n1"), Ok(PolicyChange::Whole));
        assert_eq!(status.in_force, ["x/deny"]);
        assert_eq!(status.isolated_pods, ["x/a", "x/b"]);
        assert!(
            status
                .render()
                .starts_with("Network policy: 1 in force, isolating 2 pod(s): x/deny")
        );
    }
}
