//! `wren bgp config [--as N] [--mesh on|off] [--mesh-bfd on|off [--bfd-…]]`: the cluster's BGP settings (`config/cluster`).

use wren_model::{Bfd, ClusterConfig, keys};
use wren_store::Store;
use wren_store::json::JsonStore;

use super::{BfdArgs, BgpArgs, BgpCommand, OnOff};

/// `base` with the command line's timing; the values were checked before the store was
/// opened, and every combination of valid values is valid.
fn timed(timing: &BfdArgs, base: Bfd) -> Bfd {
    timing.apply(base).unwrap_or(base)
}

/// Reads `config/cluster`, applies `change` and writes it back with compare-and-swap,
/// retrying when another writer got there first. Returns the stored configuration.
pub async fn update_cluster_config(
    store: &dyn Store,
    change: impl Fn(&mut ClusterConfig),
) -> anyhow::Result<ClusterConfig> {
    loop {
        let current = store
            .get_json::<ClusterConfig>(keys::CLUSTER_CONFIG)
            .await?;
        let mut config = current
            .as_ref()
            .map(|c| c.value.clone())
            .unwrap_or_default();
        change(&mut config);
        let written = match &current {
            None => store.create_json(keys::CLUSTER_CONFIG, &config, None).await,
            Some(c) if c.value == config => return Ok(config),
            Some(c) => {
                store
                    .update_json(keys::CLUSTER_CONFIG, &config, c.mod_revision)
                    .await
            }
        };
        match written {
            Ok(_) => return Ok(config),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn print_config(config: &ClusterConfig) {
    let mesh = if config.node_to_node_mesh {
        "on"
    } else {
        "off"
    };
    println!("AS number:          {}", config.as_number);
    println!("Node-to-node mesh:  {mesh}");
    match &config.node_mesh_bfd {
        Some(bfd) => println!(
            "Node-to-node BFD:   on, transmit {} ms, receive {} ms, multiplier {}",
            bfd.transmit_interval_ms, bfd.receive_interval_ms, bfd.multiplier
        ),
        None => println!("Node-to-node BFD:   off"),
    }
}

/// Runs `wren bgp`.
pub async fn run(args: BgpArgs) -> anyhow::Result<()> {
    match args.command {
        BgpCommand::Config {
            as_number,
            mesh,
            mesh_bfd,
            bfd_timing,
        } => {
            // Checked before anything is read or written: timing alone applies to the BFD
            // the mesh runs, and the values must be valid whatever is stored.
            if mesh_bfd != Some(OnOff::On) && !bfd_timing.is_empty() {
                anyhow::bail!("invalid BFD timing: give it with --mesh-bfd on");
            }
            bfd_timing.apply(Bfd::default())?;
            let store = super::store::open(&args.store).await?;
            let config = if as_number.is_none()
                && mesh.is_none()
                && mesh_bfd.is_none()
                && bfd_timing.is_empty()
            {
                store
                    .get_json::<ClusterConfig>(keys::CLUSTER_CONFIG)
                    .await?
                    .map(|c| c.value)
                    .unwrap_or_default()
            } else {
                update_cluster_config(store.as_ref(), |c| {
                    if let Some(asn) = as_number {
                        c.as_number = asn;
                    }
                    if let Some(mesh) = mesh {
                        c.node_to_node_mesh = mesh == OnOff::On;
                    }
                    match mesh_bfd {
                        Some(OnOff::Off) => c.node_mesh_bfd = None,
                        Some(OnOff::On) => {
                            let base = c.node_mesh_bfd.unwrap_or_default();
                            c.node_mesh_bfd = Some(timed(&bfd_timing, base));
                        }
                        None => {}
                    }
                })
                .await?
            };
            print_config(&config);
        }
    }
    Ok(())
}
