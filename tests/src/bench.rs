//! What the bench binaries share: whether to run at all, how long and how often to measure,
//! and on which storage the measured etcd keeps its data.
//!
//! Environment: `WREN_BENCH_SECS` (seconds per round, default 3), `WREN_BENCH_ROUNDS`
//! (default 3), `WREN_BENCH_STORAGE` (`disk`, `tmpfs` or `both`, default `both`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::netns::command_in;
use crate::process::ChildGuard;

/// True when the binary runs under `cargo bench` (which passes `--bench`); `cargo test
/// --benches` runs bench binaries without it and only wants to know that they build.
pub fn invoked_as_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The value of `--name V` on the bench's command line, parsed, or `default` when absent or
/// unparsable (`cargo bench -p x --bench y -- --routes 100000`).
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Measurement settings read from the environment.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Length of one measured round.
    pub round: Duration,
    /// Rounds per figure; report the median.
    pub rounds: usize,
    /// Where etcd keeps its data, with a label for the table: the system temp dir (a disk
    /// that pays for fsync, as production does) and/or `/dev/shm` (tmpfs: the CPU ceiling).
    pub storages: Vec<(String, PathBuf)>,
}

impl BenchSettings {
    /// Reads `WREN_BENCH_SECS`, `WREN_BENCH_ROUNDS` and `WREN_BENCH_STORAGE`.
    pub fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let storage = std::env::var("WREN_BENCH_STORAGE").unwrap_or_else(|_| "both".into());
        let mut storages = Vec::new();
        if storage == "disk" || storage == "both" {
            storages.push(std::env::temp_dir());
        }
        if storage == "tmpfs" || storage == "both" {
            storages.push(PathBuf::from("/dev/shm"));
        }
        let storages = storages
            .into_iter()
            .map(|dir| {
                let kind = if dir.starts_with("/dev/shm") {
                    "tmpfs"
                } else {
                    "disk"
                };
                (format!("{kind} ({})", dir.display()), dir)
            })
            .collect();
        Self {
            round: Duration::from_secs(number("WREN_BENCH_SECS", 3).max(1)),
            rounds: number("WREN_BENCH_ROUNDS", 3).max(1) as usize,
            storages,
        }
    }
}

/// The median of the figures of several rounds (the upper one of an even count).
pub fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures.get(figures.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One iperf3 run (one TCP stream, `seconds` long) from namespace `from` to `target`,
/// where a server in `to` listens on `address` (`target` differs from it when the traffic
/// goes through a translation, a Service's address say); bits/s received.
pub fn iperf(
    from: &str,
    to: &str,
    address: &str,
    target: &str,
    seconds: u64,
) -> Result<f64, String> {
    let server = ChildGuard::spawn(
        format!("iperf3 server in {to}"),
        command_in(to, "iperf3").args(["-s", "-1", "-B", address]),
    )
    .map_err(|e| e.to_string())?;
    // The client retries until the server listens; the server ends after one test.
    let mut last = String::new();
    for _ in 0..50 {
        let out = command_in(from, "iperf3")
            .args(["-c", target, "-J", "-t", &seconds.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // A refused connection can still exit 0 with `-J`: the report says whether it ran.
        match received_bps(&text) {
            Ok(bps) if out.status.success() => return Ok(bps),
            Ok(_) => last = text,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "iperf3 to {target} failed: {last:.400}\nserver: {}",
        server.log()
    ))
}

/// `end.sum_received.bits_per_second` of an iperf3 JSON report.
fn received_bps(json: &str) -> Result<f64, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    value["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| format!("no received rate in {json:.400}"))
}

/// The machine a figure was measured on: cores, CPU model, kernel.
pub fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}, Linux {kernel}")
}

/// Live heap bytes, counted by [`CountingAllocator`].
static LIVE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A global allocator that forwards to the system's and counts the live heap bytes, for
/// benches that measure the memory a structure takes: install it with `#[global_allocator]
/// static ALLOCATOR: CountingAllocator = CountingAllocator;` and read [`live_bytes`].
pub struct CountingAllocator;

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, std::sync::atomic::Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// The live heap bytes [`CountingAllocator`] has counted (0 where it is not installed).
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_ignores_one_outlier_round() {
        assert_eq!(median(vec![900.0, 10.0, 1000.0]), 900.0);
        assert!(median(Vec::new()).is_nan());
    }
}
