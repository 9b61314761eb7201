//! The network policy programmer: the node's policy plan ([`wren_policy::NodePlan`]) as the
//! `inet wren_policy` nftables table, in the network namespace the agent runs in.
//!
//! After a change only what changed goes to the kernel ([`NftRules::delta_script`]: new
//! sets, the chains whose rules changed, the interface maps' entries, in one transaction);
//! on a full pass, the first one, and after a failure the whole table is replaced in one
//! transaction, which undoes any drift. A node where no policy isolates a pod has no table at
//! all, so its forwarded packets meet no hook of wren's.

use std::path::PathBuf;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use wren_policy::NodePlan;
use wren_policy::nft::{NftRules, TABLE};

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
    loaded: Mutex<Loaded>,
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

    /// A programmer using the given `nft` program.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            loaded: Mutex::new(Loaded::Unknown),
        }
    }

    /// Brings the table to `rules`: a delta after a change, the whole table when `full` or
    /// when the last state is unknown; no table when `rules` isolate nothing.
    pub async fn program(&self, rules: &NftRules, full: bool) -> Result<PolicyChange, PolicyError> {
        let mut loaded = self.loaded.lock().await;
        let previous = std::mem::take(&mut *loaded);
        if rules.chains.is_empty() {
            if matches!(previous, Loaded::Absent) && !full {
                *loaded = Loaded::Absent;
                return Ok(PolicyChange::None);
            }
            self.run("remove the table", &NodePlan::nft_remove_script(TABLE))
                .await?;
            *loaded = Loaded::Absent;
            return Ok(PolicyChange::Removed);
        }
        if let (false, Loaded::Table(previous)) = (full, &previous) {
            let delta = rules.delta_script(previous, TABLE);
            if delta.is_empty() {
                *loaded = Loaded::Table(rules.clone());
                return Ok(PolicyChange::None);
            }
            match self.run("apply the changes", &delta).await {
                Ok(()) => {
                    *loaded = Loaded::Table(rules.clone());
                    return Ok(PolicyChange::Delta);
                }
                Err(e) => tracing::debug!(error = %e, "policy delta refused; replacing the table"),
            }
        }
        self.run("load the table", &rules.script(TABLE)).await?;
        *loaded = Loaded::Table(rules.clone());
        Ok(PolicyChange::Whole)
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
