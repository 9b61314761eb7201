//! Tests on another kernel: a virtual machine that boots the distribution's kernel.
//!
//! Some of what wren promises depends on the kernel: IPIP needs the `ipip` module, the fast
//! path needs tcx (6.6 or later). A machine whose own kernel lacks a feature, or that runs a
//! newer kernel than many users do, tests those paths in a VM instead: [`Vm`] boots Debian's
//! `linux-image-amd64` (6.1 on Debian 12) with `virtme-ng`, which shares the host's file system
//! read-only with the guest, so the test binaries, `target/debug/wren`, etcd, BIRD, iproute2
//! and tcpdump are all there. Writes inside the guest land on overlays in the guest's memory
//! (`/tmp`, `/etc`, `/var`) and tmpfs (`/run`, `/dev/shm`); nothing reaches the host's disk.
//!
//! One boot runs one program, typically the calling test binary itself with a list of test
//! names ([`Vm::run_cases`]), so a scenario costs one boot however many cases it has, and a
//! failure names the case. Where `/dev/kvm` works the guest runs on KVM; where it does not
//! (nested virtualisation refused, as on some cloud machines) it falls back to TCG, which is
//! slower, so the guest stretches the harness's timeouts by [`TIME_SCALE_VAR`].
//!
//! `scripts/bootstrap.sh` installs `qemu-system-x86`, `linux-image-amd64`, `busybox-static`
//! (for virtme-ng's initramfs) and virtme-ng in its own venv under `/opt/wren-tools`.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Environment variable that holds the factor by which the harness's timeouts stretch; the
/// VM sets it in the guest when it runs without KVM.
pub const TIME_SCALE_VAR: &str = "WREN_TEST_TIME_SCALE";

/// Environment variable set to `1` inside the guest.
pub const IN_VM_VAR: &str = "WREN_IN_VM";

/// How much slower the guest runs under TCG than on KVM or the host, for timeouts.
const TCG_TIME_SCALE: u32 = 10;

/// Marks the start of each case in [`Vm::run_cases`]'s output.
const CASE_MARK: &str = "wren-vm: case";

/// One VM at a time in a process: on two cores a second one would only slow both down.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long a boot with KVM may take to run `true` before KVM counts as broken.
const KVM_PROBE_LIMIT: Duration = Duration::from_secs(60);

/// What went wrong starting or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Something the VM needs is not installed.
    #[error("{0} (scripts/bootstrap.sh installs it)")]
    Missing(String),
    /// `vng` could not be started or waited for.
    #[error("running vng: {0}")]
    Io(#[from] std::io::Error),
    /// The guest did not finish within the time limit; the VM was stopped.
    #[error("the VM did not finish within {limit:?} (log {}); its output so far:\n{output}", log.display())]
    TimedOut {
        /// The limit.
        limit: Duration,
        /// What the guest printed before it was stopped.
        output: String,
        /// The file that got the output as it came.
        log: PathBuf,
    },
}

/// How the guest's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// The outcome of one program run inside the VM.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// The program's exit code (`None` when the VM did not report one).
    pub code: Option<i32>,
    /// What the program and the VM printed, stdout then stderr.
    pub output: String,
    /// How the guest ran.
    pub accel: Accel,
    /// From starting `vng` to the VM's exit, boot included.
    pub elapsed: Duration,
    /// The file that got the output as it came; removed after a run that exited 0.
    pub log: PathBuf,
}

/// The result of each test case run by [`Vm::run_cases`], as the guest's test binary
/// reported it.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// `(case, passed)` for every case asked for, in the order asked; a case the binary did
    /// not report is `false`.
    pub cases: Vec<(String, bool)>,
    /// The whole run.
    pub run: VmRun,
}

impl CaseReport {
    /// The cases that did not pass.
    pub fn failed(&self) -> Vec<&str> {
        self.cases
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Panics naming every case that did not pass, with the guest's output.
    #[track_caller]
    pub fn assert_passed(&self) {
        let failed = self.failed();
        assert!(
            failed.is_empty() && self.run.code == Some(0),
            "in the VM ({:?}, {:?}), failed: {} (exit code {:?})\n--- guest output ---\n{}",
            self.run.accel,
            self.run.elapsed,
            failed.join(", "),
            self.run.code,
            self.run.output
        );
    }
}

/// A virtual machine definition: kernel, memory, CPUs and a time limit for one run.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The kernel image to boot (`/boot/vmlinuz-<release>`); its modules come from
    /// `/lib/modules/<release>`.
    pub kernel: PathBuf,
    /// Guest memory in MiB; the guest's writable overlays live in it too.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// The longest one run may take, boot included; the VM is stopped after it.
    pub time_limit: Duration,
}

impl Vm {
    /// The newest Debian kernel of the running release installed under `/boot`
    /// (`linux-image-amd64`: 6.1 on Debian 12), with 3 GiB, 2 CPUs and `time_limit`.
    pub fn debian(time_limit: Duration) -> Result<Self, VmError> {
        let kernel = debian_kernel(Path::new("/boot")).ok_or_else(|| {
            VmError::Missing("no /boot/vmlinuz-*-amd64 (linux-image-amd64)".into())
        })?;
        Ok(Self {
            kernel,
            memory_mib: 3072,
            cpus: 2,
            time_limit,
        })
    }

    /// The kernel's release (`6.1.0-57-amd64`), from its file name.
    pub fn release(&self) -> String {
        self.kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_owned()
    }

    /// Boots the VM, runs `program args` in it as root from the current directory with
    /// `CI` passed through, and returns its exit code and output. One VM runs at a time in a
    /// process.
    pub fn run(&self, program: &Path, args: &[&str]) -> Result<VmRun, VmError> {
        self.run_script(&format!("exec {}", command_line(program, args)))
    }

    /// Runs `cases` of the calling test binary inside the VM, in one boot, one after another
    /// (each with `--exact`), with `--ignored` when `ignored` (cases that only make sense on
    /// the VM's kernel are marked so the host run leaves them out), and reports each case's
    /// result. The output marks when each case started, in seconds since the guest booted.
    pub fn run_cases(&self, cases: &[&str], ignored: bool) -> Result<CaseReport, VmError> {
        let exe = std::env::current_exe()?;
        let mut args = vec!["--exact", "--nocapture"];
        if ignored {
            args.push("--ignored");
        }
        let list: Vec<String> = cases.iter().map(|c| shell_quote(c)).collect();
        let script = format!(
            "rc=0; for case in {}; do echo \"{CASE_MARK} $case at $(cut -d' ' -f1 /proc/uptime)s\"; \
             {} \"$case\" || rc=1; done; exit $rc",
            list.join(" "),
            command_line(&exe, &args)
        );
        let run = self.run_script(&script)?;
        let cases = cases
            .iter()
            .map(|case| (case.to_string(), case_passed(&run.output, case)))
            .collect();
        Ok(CaseReport { cases, run })
    }

    /// Boots the VM and runs the shell `script` in it, after the environment and working
    /// directory are set (see [`run`](Self::run)).
    pub fn run_script(&self, script: &str) -> Result<VmRun, VmError> {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let accel = accel(&self.kernel)?;
        let script = format!("{}; {script}", guest_environment(accel));
        self.boot(accel, &script, self.time_limit)
    }

    fn vng_command(&self, accel: Accel, script: &str) -> Command {
        let mut command = Command::new(vng_path());
        command
            .arg("--run")
            .arg(&self.kernel)
            .args(["--memory", &format!("{}M", self.memory_mib)])
            .args(["--cpus", &self.cpus.to_string()])
            .args(["--exec", script]);
        if accel == Accel::Tcg {
            command.arg("--disable-kvm");
        }
        // vng starts virtme-run, which starts qemu: the whole tree shares a new process group,
        // so a run past its limit is stopped as a group.
        command
            .env("PATH", path_with_vng())
            .stdin(Stdio::null())
            .process_group(0);
        command
    }

    /// Boots, runs `script`, and collects what the VM prints. The output also goes, as it
    /// comes, to a log file under the temp dir (named in [`VmRun::log`]), to follow a long run.
    fn boot(&self, accel: Accel, script: &str, limit: Duration) -> Result<VmRun, VmError> {
        let start = Instant::now();
        let log_file = tempfile::Builder::new()
            .prefix("wren-vm-")
            .suffix(".log")
            .tempfile()?;
        // Kept after the run: the log is there to be read.
        let (log_file, log_path) = log_file.keep().map_err(|e| e.error)?;
        let log = Arc::new(Mutex::new(log_file));
        let mut command = self.vng_command(accel, script);
        // Pipes, not a file: qemu opens its console outputs anew through /proc/self/fd, and a
        // file opened so starts writing at its beginning again.
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let collected = Arc::new(Mutex::new(Vec::new()));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut stream| {
            let (collected, log) = (Arc::clone(&collected), Arc::clone(&log));
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    collected
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buffer[..n]);
                    let _ = log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .write_all(&buffer[..n]);
                }
            })
        })
        .collect();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() > limit {
                let _ = killpg(group, Signal::SIGTERM);
                std::thread::sleep(Duration::from_secs(2));
                let _ = killpg(group, Signal::SIGKILL);
                child.wait()?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        for reader in readers {
            let _ = reader.join();
        }
        let output = String::from_utf8_lossy(&collected.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
        match status {
            None => Err(VmError::TimedOut {
                limit,
                output,
                log: log_path,
            }),
            Some(status) => {
                // A clean run's log says nothing its output does not.
                if status.success() {
                    let _ = std::fs::remove_file(&log_path);
                }
                Ok(VmRun {
                    code: status.code(),
                    output,
                    accel,
                    elapsed: start.elapsed(),
                    log: log_path,
                })
            }
        }
    }
}

/// True when the VM can be started: `vng`, QEMU and a Debian kernel are installed.
pub fn available() -> bool {
    missing().is_none()
}

/// What the VM lacks, if anything.
fn missing() -> Option<String> {
    if !vng_path().exists() {
        return Some(format!("virtme-ng ({})", vng_path().display()));
    }
    if !crate::prereq::have_command("qemu-system-x86_64") {
        return Some("qemu-system-x86_64 (qemu-system-x86)".into());
    }
    if debian_kernel(Path::new("/boot")).is_none() {
        return Some("a kernel in /boot (linux-image-amd64)".into());
    }
    None
}

/// [`crate::prereq::require`] that the VM can be started (and that the tests run as root).
#[track_caller]
pub fn require_vm() -> bool {
    let what = missing().map(|m| format!("the test VM needs {m}: run scripts/bootstrap.sh"));
    crate::prereq::require_root()
        && crate::prereq::require(what.as_deref().unwrap_or_default(), what.is_none())
}

/// True inside the VM.
pub fn in_vm() -> bool {
    std::env::var(IN_VM_VAR).is_ok_and(|v| v == "1")
}

/// The factor the harness's timeouts stretch by: [`TIME_SCALE_VAR`], or 1.
pub fn time_scale() -> u32 {
    std::env::var(TIME_SCALE_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v >= 1)
        .unwrap_or(1)
}

/// `timeout` stretched by [`time_scale`]: every wait of the harness goes through this, so a
/// test that passes on the host passes in a slower guest without its own adjustments.
pub fn scaled(timeout: Duration) -> Duration {
    timeout * time_scale()
}

/// Where the tools venv lives (`WREN_TOOLS`, as in `scripts/bootstrap.sh`).
fn tools_dir() -> PathBuf {
    std::env::var_os("WREN_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/wren-tools"))
}

fn vng_path() -> PathBuf {
    tools_dir().join("virtme-ng/bin/vng")
}

/// `PATH` with the venv's `bin` first: vng runs `virtme-run` from there.
fn path_with_vng() -> std::ffi::OsString {
    let venv_bin = tools_dir().join("virtme-ng/bin");
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(venv_bin).chain(std::env::split_paths(&rest)))
        .unwrap_or(rest)
}

/// The newest `vmlinuz-<release>-amd64` in `boot` whose modules are installed.
fn debian_kernel(boot: &Path) -> Option<PathBuf> {
    let mut kernels: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(boot)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            if !release.ends_with("-amd64") {
                return None;
            }
            Path::new("/lib/modules")
                .join(&release)
                .is_dir()
                .then(|| (release_order(&release), entry.path()))
        })
        .collect();
    kernels.sort();
    kernels.pop().map(|(_, path)| path)
}

/// The numbers of a kernel release, for ordering (`6.1.0-57-amd64` → `[6, 1, 0, 57]`).
fn release_order(release: &str) -> Vec<u32> {
    release
        .split(['.', '-'])
        .map_while(|part| part.parse().ok())
        .collect()
}

/// How the guest will run: KVM when a short boot with it works (probed once per process),
/// TCG otherwise. `WREN_VM_ACCEL=tcg|kvm` decides without probing.
fn accel(kernel: &Path) -> Result<Accel, VmError> {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    if let Some(accel) = ACCEL.get() {
        return Ok(*accel);
    }
    let accel = match std::env::var("WREN_VM_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ => probe_kvm(kernel)?,
    };
    Ok(*ACCEL.get_or_init(|| accel))
}

/// Boots with KVM to run `true`. Nested virtualisation that refuses the guest's CPU (qemu's
/// "failed to set MSR") stops at once, so the probe costs seconds where KVM is broken.
fn probe_kvm(kernel: &Path) -> Result<Accel, VmError> {
    if std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    let probe = Vm {
        kernel: kernel.to_path_buf(),
        memory_mib: 512,
        cpus: 1,
        time_limit: KVM_PROBE_LIMIT,
    };
    Ok(match probe.boot(Accel::Kvm, "true", KVM_PROBE_LIMIT) {
        Ok(run) if run.code == Some(0) => Accel::Kvm,
        Ok(run) => {
            let _ = std::fs::remove_file(run.log);
            Accel::Tcg
        }
        Err(VmError::TimedOut { log, .. }) => {
            let _ = std::fs::remove_file(log);
            Accel::Tcg
        }
        Err(_) => Accel::Tcg,
    })
}

/// The shell commands that set up the guest for a test: the environment the tests read and
/// the working directory.
fn guest_environment(accel: Accel) -> String {
    let scale = match accel {
        Accel::Kvm => 1,
        Accel::Tcg => TCG_TIME_SCALE,
    };
    let mut script = format!("export {IN_VM_VAR}=1 {TIME_SCALE_VAR}={scale} RUST_BACKTRACE=1");
    if let Ok(ci) = std::env::var("CI") {
        let _ = write!(script, " CI={}", shell_quote(&ci));
    }
    if let Ok(dir) = std::env::current_dir() {
        let _ = write!(script, "; cd {}", shell_quote(&dir.to_string_lossy()));
    }
    script
}

/// `program args` as a shell command line.
fn command_line(program: &Path, args: &[&str]) -> String {
    let mut line = shell_quote(&program.to_string_lossy());
    for arg in args {
        let _ = write!(line, " {}", shell_quote(arg));
    }
    line
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Whether libtest reported `case` as passed (`test <case> ... ok`).
fn case_passed(output: &str, case: &str) -> bool {
    let line = format!("test {case} ... ok");
    output.lines().any(|l| l.trim_end() == line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_script_quotes_every_word() {
        let line = command_line(Path::new("/t/bin it"), &["--exact", "a'b"]);
        assert_eq!(line, "'/t/bin it' '--exact' 'a'\\''b'");
        let environment = guest_environment(Accel::Tcg);
        assert!(environment.starts_with("export WREN_IN_VM=1 WREN_TEST_TIME_SCALE=10"));
    }

    #[test]
    fn cases_pass_only_on_their_own_ok_line() {
        let output = "test a ... ok\ntest ab ... FAILED\ntest c ... ignored\n";
        assert!(case_passed(output, "a"));
        assert!(!case_passed(output, "ab"));
        assert!(!case_passed(output, "c"));
        assert!(!case_passed(output, "d"));
    }

    #[test]
    fn the_newest_debian_kernel_with_modules_is_chosen() {
        assert_eq!(release_order("6.1.0-57-amd64"), vec![6, 1, 0, 57]);
        assert!(release_order("6.1.0-9-amd64") < release_order("6.1.0-57-amd64"));
        let boot = tempfile::tempdir().unwrap();
        assert_eq!(debian_kernel(boot.path()), None);
    }
}
