//! `wren bgp config [--as N] [--mesh on|off] [--mesh-bfd on|off [--bfd-…]] [--community C]…
//! [--prefix-advertisement CIDR=C,…]… [--service-…-ips CIDRS]`: the cluster's BGP settings
//! (`config/cluster`).

use wren_model::{Bfd, ClusterConfig, keys};
use wren_store::Store;
use wren_store::json::JsonStore;

use super::{BfdArgs, BgpArgs, BgpCommand, OnOff, Ranges};

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
            Some(c) => store.update_read(c, &config).await,
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
    println!(
        "Communities:        {}",
        super::pool::community_list(&config.communities)
    );
    for (label, ranges) in [
        ("Service cluster IPs:", &config.service_cluster_ips),
        ("Service external IPs:", &config.service_external_ips),
        ("Service LB IPs:", &config.service_load_balancer_ips),
    ] {
        let text: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        let text = if text.is_empty() {
            "none".to_owned()
        } else {
            text.join(", ")
        };
        println!("{label:<22}{text}");
    }
    if config.prefix_advertisements.is_empty() {
        println!("Prefix adverts:     none");
    }
    for (i, advert) in config.prefix_advertisements.iter().enumerate() {
        let label = if i == 0 { "Prefix adverts:" } else { "" };
        println!(
            "{label:<20}{} {}",
            advert.cidr,
            super::pool::community_list(&advert.communities)
        );
    }
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
            communities,
            clear_communities,
            prefix_advertisements,
            clear_prefix_advertisements,
            service_cluster_ips,
            service_external_ips,
            service_load_balancer_ips,
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
            let set_communities = !communities.is_empty() || clear_communities;
            let set_adverts = !prefix_advertisements.is_empty() || clear_prefix_advertisements;
            let set_services = service_cluster_ips.is_some()
                || service_external_ips.is_some()
                || service_load_balancer_ips.is_some();
            let unchanged = as_number.is_none()
                && mesh.is_none()
                && mesh_bfd.is_none()
                && bfd_timing.is_empty()
                && !set_communities
                && !set_adverts
                && !set_services;
            let config = if unchanged {
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
                    if set_communities {
                        c.communities = communities.clone();
                    }
                    if set_adverts {
                        c.prefix_advertisements = prefix_advertisements.clone();
                    }
                    for (given, field) in [
                        (&service_cluster_ips, &mut c.service_cluster_ips),
                        (&service_external_ips, &mut c.service_external_ips),
                        (&service_load_balancer_ips, &mut c.service_load_balancer_ips),
                    ] {
                        if let Some(Ranges(ranges)) = given {
                            *field = ranges.clone();
                        }
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
