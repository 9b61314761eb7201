//! What the three runners share about their processes and control tools.

use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;

use super::{Error, Restart};
use crate::netns::{self, NetNs};
use crate::process::ChildGuard;

/// The process slot of a daemon: empty between a take-down and the next start. Dropping it
/// ends the process by pid (through its [`ChildGuard`]).
#[derive(Debug, Default)]
pub(crate) struct Running(Option<ChildGuard>);

impl Running {
    /// Starts `command` inside `ns` under a guard and keeps it.
    pub(crate) fn start(
        &mut self,
        ns: &NetNs,
        label: &str,
        command: &mut Command,
    ) -> Result<(), Error> {
        let guard = ChildGuard::spawn(format!("{label} in {}", ns.name()), command)
            .map_err(|e| Error::io(format!("start {label}"), e))?;
        self.0 = Some(guard);
        Ok(())
    }

    /// The pid, or 0 when not running.
    pub(crate) fn pid(&self) -> u32 {
        self.0.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// Fails with the daemon's log when it has already exited (a bad configuration, say), so
    /// a start-up wait does not run into its timeout for nothing.
    pub(crate) fn check(&mut self) -> Result<(), Error> {
        let Some(guard) = self.0.as_mut() else {
            return Ok(());
        };
        match guard.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                daemon: guard.name().to_owned(),
                status: status.to_string(),
                log: tail(&guard.log(), 30),
            }),
            Err(e) => Err(Error::io(format!("wait for {}", guard.name()), e)),
        }
    }

    /// Sends `signal`, if the daemon runs.
    pub(crate) fn signal(&mut self, signal: Signal) -> Result<(), Error> {
        let Some(guard) = self.0.as_mut() else {
            return Ok(());
        };
        let what = format!("signal {}", guard.name());
        guard.signal(signal).map_err(|e| Error::io(what, e))
    }

    /// Takes the daemon down the way `how` says and reaps it.
    pub(crate) fn take_down(&mut self, how: Restart) -> Result<(), Error> {
        let Some(mut guard) = self.0.take() else {
            return Ok(());
        };
        let what = format!("stop {}", guard.name());
        // A paused daemon would sit on SIGTERM until the grace period ends.
        guard
            .signal(Signal::SIGCONT)
            .map_err(|e| Error::io(what.clone(), e))?;
        if how == Restart::Crash {
            guard
                .signal(Signal::SIGKILL)
                .map_err(|e| Error::io(what.clone(), e))?;
        }
        guard.stop().map(|_| ()).map_err(|e| Error::io(what, e))
    }

    /// The last lines of the daemon's log.
    pub(crate) fn log_tail(&self) -> String {
        self.0
            .as_ref()
            .map(|g| tail(&g.log(), 30))
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A paused daemon would ignore the guard's SIGTERM until the grace period ends.
        if let Some(g) = self.0.as_mut() {
            let _ = g.signal(Signal::SIGCONT);
        }
    }
}

/// Parses a daemon's JSON output.
pub(crate) fn json(text: &str, what: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::parse(what, e.to_string()))
}

/// The number at `pointer` in `value`, 0 when absent (daemons leave out zero counters).
pub(crate) fn count(value: &serde_json::Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a control tool to completion and returns its stdout.
pub(crate) fn tool(command: &mut Command) -> Result<String, Error> {
    let what = format!("{:?}", command.get_program());
    netns::run(command).map_err(|e| Error::Command {
        what,
        detail: e.to_string(),
    })
}

/// Writes `contents` to `path`.
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("write {}", path.display()), e))
}
