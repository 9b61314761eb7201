//! Prerequisite checks for tests that need root, a daemon or a kernel feature.
//!
//! A test calls [`require`] (or one of its shorthands) first and returns when it says `false`.
//! On a developer machine a missing prerequisite is a plain `skipped: <why>` line; with
//! `CI=true` it fails the test, because CI promises every prerequisite and a silent skip there
//! would hide a broken set-up. A feature the running kernel lacks ([`kernel_limitation`]) is
//! always a skip: no install can fix it.
//!
//! ```no_run
//! # fn main() {
//! if !wren_tests::prereq::require_root() || !wren_tests::prereq::require_command("etcd") {
//!     return;
//! }
//! # }
//! ```

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// True when the tests run under CI (`CI=true` or `CI=1`), where missing prerequisites fail.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// True when the process runs with effective user id 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when `name` is an executable file: an absolute or relative path as given, or a bare
/// name found on `PATH`.
pub fn have_command(name: &str) -> bool {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return executable(Path::new(name));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(name))))
}

/// Checks one prerequisite. Returns `true` when `available`; otherwise, with `CI=true`, panics
/// naming `what`, and elsewhere prints `skipped: <what>` and returns `false` so the test can
/// return early.
#[track_caller]
pub fn require(what: &str, available: bool) -> bool {
    match outcome(in_ci(), available) {
        Outcome::Run => true,
        Outcome::Skip => {
            report_skip(what);
            false
        }
        Outcome::Fail => {
            panic!("missing prerequisite: {what} (CI=true makes a missing prerequisite a failure)")
        }
    }
}

/// What a test does about one prerequisite.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Run,
    Skip,
    Fail,
}

fn outcome(ci: bool, available: bool) -> Outcome {
    match (available, ci) {
        (true, _) => Outcome::Run,
        (false, false) => Outcome::Skip,
        (false, true) => Outcome::Fail,
    }
}

/// [`require`] that the tests run as root (network namespaces, netlink, BGP port 179).
#[track_caller]
pub fn require_root() -> bool {
    require("needs root", is_root())
}

/// [`require`] that `command` is installed (see [`have_command`]).
#[track_caller]
pub fn require_command(command: &str) -> bool {
    require(
        &format!("`{command}` is not installed"),
        have_command(command),
    )
}

/// Reports that the running kernel cannot do what the test needs (no IPIP module, say) and
/// returns `false`. This is a skip even with `CI=true`: it is a property of the kernel, not a
/// missing install, and the message says so plainly.
pub fn kernel_limitation(message: &str) -> bool {
    report_skip(&format!("kernel limitation: {message}"));
    false
}

/// True when kernel module `name` is loaded or built in (`/sys/module/<name>`), or can be
/// loaded from `/lib/modules/<release>`.
pub fn have_kernel_module(name: &str) -> bool {
    if Path::new("/sys/module").join(name).exists() {
        return true;
    }
    let Ok(release) = nix::sys::utsname::uname() else {
        return false;
    };
    let dir = Path::new("/lib/modules").join(release.release());
    let Ok(index) = std::fs::read_to_string(dir.join("modules.dep")) else {
        return false;
    };
    let file = format!("/{name}.ko");
    index
        .lines()
        .filter_map(|l| l.split(':').next())
        .any(|m| m.contains(&file))
}

/// [`kernel_limitation`] unless the kernel has module `name`. Returns `true` when it does.
pub fn require_kernel_module(name: &str, needed_for: &str) -> bool {
    have_kernel_module(name)
        || kernel_limitation(&format!(
            "this kernel has no `{name}` module, so {needed_for} cannot be tested here"
        ))
}

/// The running kernel's `major.minor`, from `uname -r`.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = nix::sys::utsname::uname().ok()?;
    parse_kernel_version(&release.release().to_string_lossy())
}

fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// True when the kernel can attach tc programs through tcx links (6.6 or later), which the
/// fast path needs. An older kernel is a [`kernel_limitation`]: the fast path then reports
/// itself unavailable and the host stack routes every pod.
pub fn kernel_has_tcx() -> bool {
    kernel_version().is_some_and(|v| v >= (6, 6))
}

/// Writes the skip line straight to the process's stderr: the test harness captures `print!`
/// output of passing tests, and a skip must stay visible in the test run.
fn report_skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_commands_on_the_path_and_by_absolute_path() {
        assert!(have_command("sh"));
        assert!(have_command("/bin/sh"));
        assert!(!have_command("wren-no-such-command"));
        assert!(
            !have_command("/etc/passwd"),
            "a file without execute bits is no command"
        );
    }

    #[test]
    fn a_missing_prerequisite_skips_outside_ci_and_fails_in_ci() {
        assert_eq!(outcome(false, true), Outcome::Run);
        assert_eq!(outcome(true, true), Outcome::Run);
        assert_eq!(outcome(false, false), Outcome::Skip);
        assert_eq!(outcome(true, false), Outcome::Fail);
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.10.0-27-amd64"), Some((5, 10)));
        assert_eq!(parse_kernel_version("6.6"), Some((6, 6)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }

    #[test]
    fn an_unknown_kernel_module_is_missing() {
        assert!(!have_kernel_module("wren_no_such_module"));
    }
}
