//! `wren agent`: loads the configuration, assembles the daemon from the store, the BGP
//! speaker, the kernel route programmer and the CNI API, and runs it until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::{AgentArgs, LogFormat};
use crate::config::AgentConfig;
use crate::daemon::kernel::KernelRoutes;
use crate::daemon::speaker::{Restart, SpeakerBgp};
use crate::daemon::{self, Parts, Shared};
use crate::metrics::Metrics;

/// Sets up `tracing` output: human-readable or JSON lines, filtered by `RUST_LOG` (default
/// `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Fires the returned receiver on the first SIGTERM or SIGINT.
fn shutdown_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping (kernel routes and registration stay)"),
            _ = int.recv() => tracing::info!("SIGINT: stopping (kernel routes and registration stay)"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Runs `wren agent`.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args)?;
    if args.print_config {
        print!("{}", toml::to_string(&config.to_file())?);
        return Ok(());
    }
    init_logging(config.log_format);
    let shutdown = shutdown_on_signals()?;
    let store = super::store::open(&config.store).await?;
    let metrics = Arc::new(Metrics::new());
    let shared = Shared::new(&config, metrics.clone());
    let routes = KernelRoutes::open().context("cannot open the kernel's routing tables")?;
    let restart = if routes
        .has_routes()
        .context("cannot read the kernel's routes")?
    {
        tracing::info!(
            "wren routes found in the kernel: adopting them and asking peers for graceful restart"
        );
        Restart::WithForwardingState
    } else {
        Restart::Fresh
    };
    let bgp = SpeakerBgp::start(&config, restart)
        .await
        .with_context(|| format!("cannot start BGP on port {}", config.bgp_port))?;
    let parts = Parts {
        store,
        bgp,
        routes: Arc::new(routes),
        local_api: axum::Router::new(),
    };
    daemon::run(config, parts, shared, shutdown).await?;
    Ok(())
}
