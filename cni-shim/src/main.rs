//! The `wren-cni` plugin: reads a CNI request, hands it to the local agent, prints the result.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use wren_cni::client::UnixHttpClient;
use wren_cni::plugin;

/// How long one request to the agent may take. ADD includes an etcd round trip or a few; a
/// healthy agent answers in milliseconds, so this only bounds a stuck one.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // A person typing `CNI_COMMAND=VERSION wren-cni` has nothing to send; runtimes pipe JSON.
    if !std::io::stdin().is_terminal()
        && let Err(e) = std::io::stdin().read_to_end(&mut stdin)
    {
        let err = wren_cni::CniError::new(
            wren_cni::ErrorCode::IO_FAILURE,
            format!("cannot read stdin: {e}"),
        );
        println!(
            "{}",
            err.to_stdout_json(wren_cni::SpecVersion::LATEST.as_str())
        );
        return ExitCode::FAILURE;
    }
    if std::env::var_os(wren_cni::env::CNI_COMMAND).is_none() {
        eprintln!(
            "wren-cni {}: the wren CNI plugin (CNI spec {})",
            env!("CARGO_PKG_VERSION"),
            wren_cni::SpecVersion::supported_strings().join(", ")
        );
    }

    let outcome = plugin::run(
        |name| std::env::var(name).ok(),
        &stdin,
        |config| {
            init_logging(config.log_level.as_deref());
            UnixHttpClient::new(&config.agent_socket, AGENT_TIMEOUT)
        },
    );

    let mut stdout = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        // Nothing useful can be done if stdout is gone; the exit status still tells.
        let _ = writeln!(stdout, "{}", outcome.stdout);
    }
    let _ = stdout.flush();
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Logs go to stderr (stdout belongs to the protocol), at the configuration's `logLevel`
/// (default `warn`).
fn init_logging(level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "wren_cni={}",
        level
            .map(str::to_ascii_lowercase)
            .as_deref()
            .unwrap_or("warn")
    ));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
