//! `wren agent`: loads the configuration, assembles the daemon from the store, the BGP
//! speaker, the kernel route programmer and the CNI API, and runs it until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use wren_ipam::Ipam;
use wren_store::Store;

use super::{AgentArgs, LogFormat};
use crate::api::RequestObserver;
use crate::cni::{Admission, CniHandler, KernelPods, Refusal};
use crate::config::{AgentConfig, SystemHost};
use crate::daemon::encap::{Encap, KernelEncap};
use crate::daemon::fastpath::FastPathControl;
use crate::daemon::identity::DatastoreIdentity;
use crate::daemon::leaks::LeakRelease;
use crate::daemon::orphans::OrphanSweep;
use crate::daemon::registration::Ownership;
use crate::daemon::speaker::{Restart, SpeakerBgp};
use crate::daemon::{self, Parts, Shared};
use crate::dataplane::PodDefaults;
use crate::dataplane::mtu::Mtus;
use crate::dataplane::program::routes::KernelRoutes;
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

/// The CNI plugin's routes: the handler over IPAM and the kernel's pod links, timing every
/// request into the latency histogram. Pods get `pod_defaults` where their configuration is
/// silent. Commands are refused while the node cannot serve them: ADDs while the datastore is
/// away or the node unregistered, every command while the datastore is known not to hold
/// this cluster's data.
fn cni_api(
    config: &AgentConfig,
    store: Arc<dyn Store>,
    ipam: Arc<Ipam>,
    pod_defaults: Arc<PodDefaults>,
    shared: &Arc<Shared>,
) -> (axum::Router, Arc<CniHandler>) {
    let admission: Admission = {
        let shared = shared.clone();
        Arc::new(move || {
            let readiness = shared.readiness();
            if shared.datastore_distrusted() {
                return Some(Refusal::Everything(
                    readiness.cluster_data.unwrap_or_default(),
                ));
            }
            let blocking = readiness.blocking_pods();
            (!blocking.is_empty()).then(|| Refusal::NewPods(blocking.join(", ")))
        })
    };
    let handler = Arc::new(
        CniHandler::new(config.node_name.clone(), store, ipam, Arc::new(KernelPods))
            .with_defaults(pod_defaults)
            .with_admission(admission),
    );
    let cni = shared.metrics.cni();
    let observer: RequestObserver =
        Arc::new(move |command, ok, elapsed| cni.observe(command.as_str(), ok, elapsed));
    (
        crate::api::cni_routes(handler.clone(), Some(observer)),
        handler,
    )
}

/// Raises the soft limit on open files to the hard one, so that a flood of connections meets
/// the local API's own bound (`api::server::MAX_CONNECTIONS`) rather than a descriptor limit
/// that would also stop etcd, BGP and netlink sockets from opening.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, "cannot raise the open files limit");
    }
}

/// Runs `wren agent`.
///
/// Every check comes before the first change to the kernel or to the cluster: the node IP is
/// one of this host's, the metrics address, the socket and the BGP port are free, and no
/// other live agent holds the node name. A start that fails on any of them leaves the node
/// as it found it.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args)?;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    init_logging(config.log_format);
    raise_open_files_limit();
    config.check_node_ip_local(&SystemHost)?;
    let shutdown = shutdown_on_signals()?;
    let metrics_listener = daemon::bind_metrics(config.metrics_addr).await?;
    let socket = daemon::bind_socket(&config.socket)?;
    let store = super::store::open(&config.store).await?;
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
    let mut ownership = Ownership::new(&config);
    match ownership.ensure(store.as_ref()).await {
        Ok(_) => {}
        Err(e) if e.is_fatal() => {
            ownership.release(store.as_ref()).await;
            return Err(e.into());
        }
        // etcd is away: start anyway (the kernel keeps its routes); registration claims the
        // name, under the same rules, once etcd answers.
        Err(e) => tracing::warn!(error = %e, "cannot claim the node name yet; retrying"),
    }
    let identity =
        match DatastoreIdentity::open(&config.node_name, &config.state_dir, config.liveness_ttl) {
            Ok(identity) => Arc::new(identity),
            Err(e) => {
                ownership.release(store.as_ref()).await;
                return Err(e.into());
            }
        };
    let metrics = Arc::new(Metrics::new());
    let shared = Shared::new(&config, metrics.clone());
    shared.set_identity(identity);
    // The first change to the node: from here on, a failure gives the name back.
    let built = async {
        let setup = crate::dataplane::prepare_node()
            .context("cannot prepare the node's kernel settings")?;
        for changed in &setup.changed {
            tracing::info!(setting = changed, "turned on");
        }
        for warning in &setup.warnings {
            tracing::warn!("{warning}");
        }
        // One allocator for pods and the tunnel address, so their writes to this node's blocks
        // are batched together instead of conflicting.
        let ipam = Arc::new(Ipam::new(store.clone()));
        // Until the first pass has looked at the underlay, pods get the cautious MTU.
        let pod_defaults = Arc::new(PodDefaults::new(Mtus::cautious(config.mtu).pod));
        let tunnels = KernelEncap::open(config.node_ip.addr(), config.mtu)
            .context("cannot open netlink for the tunnel devices")?;
        let encap = Encap::new(
            config.node_name.clone(),
            config.node_ip,
            store.clone(),
            ipam.clone(),
            Arc::new(tunnels),
            pod_defaults.clone(),
        );
        let (local_api, handler) =
            cni_api(&config, store.clone(), ipam.clone(), pod_defaults, &shared);
        let sweep = OrphanSweep {
            node: config.node_name.clone(),
            grace: config.orphan_grace_period,
            handler,
            store: store.clone(),
        };
        let release = LeakRelease {
            node: config.node_name.clone(),
            interval: config.leak_release_interval,
            grace: config.leak_grace_period,
        };
        anyhow::Ok((encap, local_api, sweep, (release, ipam)))
    }
    .await;
    let (encap, local_api, sweep, release) = match built {
        Ok(built) => built,
        Err(e) => {
            ownership.release(store.as_ref()).await;
            return Err(e);
        }
    };
    let parts = Parts {
        metrics_listener,
        socket,
        ownership,
        store,
        bgp,
        routes: Arc::new(routes),
        local_api,
        encap: Some(encap),
        fast_path: Some(FastPathControl::start(
            config.fast_path,
            config.node_ip.addr(),
        )),
        network_policy: Some(
            crate::dataplane::program::policy::PolicyProgrammer::new()
                .with_mark_mask(config.policy_mark_mask),
        ),
        orphan_sweep: Some(sweep),
        leak_release: Some(release),
    };
    daemon::run(config, parts, shared, shutdown).await?;
    Ok(())
}
