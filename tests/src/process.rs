//! Child processes a test starts and must end, whatever happens to the test.
//!
//! A [`ChildGuard`] owns one child: its output goes to a temporary log file (printed when the
//! test panics, so a failing test shows why the daemon misbehaved), and when the guard drops
//! the child is sent `SIGTERM` by its pid, then `SIGKILL` if it lingers, and reaped. Nothing
//! but that one pid is ever signalled.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::NamedTempFile;

/// How long a child may take to exit after `SIGTERM` before it gets `SIGKILL`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Bytes of the log shown when a test panics with the child still held.
const LOG_TAIL: usize = 8 * 1024;

/// A running child process that is stopped and reaped when the guard drops.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: NamedTempFile,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `command` with stdout and stderr going to the guard's log file. `name` labels
    /// the process in messages ("etcd", "bird in node-1", …).
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> io::Result<Self> {
        let log = NamedTempFile::with_prefix("wren-child-")?;
        command.stdout(append_to(&log)?);
        Self::start(name.into(), command, log)
    }

    /// Like [`spawn`](Self::spawn), but leaves stdout as `command` configures it (a pipe the
    /// test reads, say); only stderr goes to the log.
    pub fn spawn_keep_stdout(name: impl Into<String>, command: &mut Command) -> io::Result<Self> {
        let log = NamedTempFile::with_prefix("wren-child-")?;
        Self::start(name.into(), command, log)
    }

    fn start(name: String, command: &mut Command, log: NamedTempFile) -> io::Result<Self> {
        command.stdin(Stdio::null()).stderr(append_to(&log)?);
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {name} ({:?}): {e}", command.get_program()),
            )
        })?;
        Ok(Self {
            name,
            child,
            log,
            exited: None,
        })
    }

    /// The label given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Mutable access to the child, for its piped stdout after
    /// [`spawn_keep_stdout`](Self::spawn_keep_stdout).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Everything the child wrote to its log so far.
    pub fn log(&self) -> String {
        read_tail(self.log.path(), usize::MAX)
    }

    /// Path of the log file (valid while the guard lives).
    pub fn log_path(&self) -> &std::path::Path {
        self.log.path()
    }

    /// The exit status if the child has already exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `signal` to the child (only while it has not been reaped, so the pid cannot
    /// belong to another process).
    pub fn signal(&mut self, signal: Signal) -> io::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        kill(self.nix_pid(), signal).map_err(io::Error::from)
    }

    /// Stops the child: `SIGTERM`, then `SIGKILL` after [`STOP_GRACE`]; waits for it and
    /// returns how it exited.
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let _ = kill(self.nix_pid(), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(self.nix_pid(), Signal::SIGKILL);
        let status = self.child.wait()?;
        self.exited = Some(status);
        Ok(status)
    }

    /// An error naming the child, with the tail of its log, for a failed start-up check.
    pub fn failure(&self, what: &str) -> io::Error {
        io::Error::other(format!(
            "{} (pid {}): {what}\n--- log tail ---\n{}",
            self.name,
            self.child.id(),
            read_tail(self.log.path(), LOG_TAIL)
        ))
    }

    fn nix_pid(&self) -> Pid {
        // Pids fit in i32 on Linux (pid_max is at most 2^22).
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}) log tail ---\n{}",
                self.name,
                self.child.id(),
                read_tail(self.log.path(), LOG_TAIL)
            );
        }
        if let Err(e) = self.stop() {
            eprintln!(
                "could not stop {} (pid {}): {e}",
                self.name,
                self.child.id()
            );
        }
    }
}

/// A handle that appends to the log: stdout and stderr each get one, and appending keeps
/// them from overwriting each other.
fn append_to(log: &NamedTempFile) -> io::Result<File> {
    std::fs::OpenOptions::new().append(true).open(log.path())
}

/// The last `max` bytes of a file, lossily decoded; empty if it cannot be read.
fn read_tail(path: &std::path::Path, max: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let skip = len.saturating_sub(max.try_into().unwrap_or(u64::MAX));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(skip)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Polls `ready` every `interval` until it returns true or `timeout` passes; returns whether
/// it became true. For waiting on a daemon's readiness, never for measuring speed. In a slower
/// guest the timeout stretches ([`crate::vm::scaled`]).
pub fn wait_until(timeout: Duration, interval: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + crate::vm::scaled(timeout);
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ends_the_child_and_reaps_it() {
        let mut guard = ChildGuard::spawn("sleeper", Command::new("sleep").arg("600")).unwrap();
        let pid = guard.pid();
        assert!(guard.is_running());
        drop(guard);
        // A reaped child leaves no /proc entry (the pid could be reused, but not this fast
        // on a machine with pid_max far above the test's process count).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn the_log_holds_stdout_and_stderr() {
        let mut guard = ChildGuard::spawn(
            "talker",
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
        )
        .unwrap();
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(10),
            || { !guard.is_running() }
        ));
        let log = guard.log();
        assert!(
            log.contains("out") && log.contains("err"),
            "log was {log:?}"
        );
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let err =
            ChildGuard::spawn("ghost", &mut Command::new("wren-no-such-program")).unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
    }
}

/// What a process is using, read from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Of that, the anonymous part (`RssAnon`: heap, stacks), KiB; the rest is the pages of
    /// the program and its libraries mapped from their files, shared and reclaimable.
    pub rss_anon_kib: u64,
    /// Peak resident memory (`VmHWM`), KiB.
    pub peak_kib: u64,
    /// CPU time used so far, user and system, every thread, seconds.
    pub cpu_seconds: f64,
}

/// The resources process `pid` uses (`std::process::id()` for this one); zeros for a process
/// that has gone.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: count fields after it. utime
    // and stime, fields 14 and 15 of the line, are the 12th and 13th after the name.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    Usage {
        rss_kib: kib("VmRSS:"),
        rss_anon_kib: kib("RssAnon:"),
        peak_kib: kib("VmHWM:"),
        cpu_seconds: (ticks(11) + ticks(12)) as f64 / hz,
    }
}
