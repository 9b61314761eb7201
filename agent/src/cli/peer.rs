//! `wren peer add|list|rm`: explicit BGP peers (`peers/<name>`), e.g. top-of-rack routers.

use std::net::IpAddr;

use anyhow::Context;
use wren_model::{Bfd, MaxPrefixes, Peer, keys};
use wren_store::StoreError;
use wren_store::json::JsonStore;

use super::{Output, PeerArgs, PeerCommand, print_json};
use crate::config::validate_name;
use crate::daemon::status::table;

/// Refuses addresses no BGP session can be opened to.
fn validate_peer_ip(ip: IpAddr) -> anyhow::Result<()> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        anyhow::bail!("invalid peer IP {ip}: not a unicast address a router can have");
    }
    if let IpAddr::V4(v4) = ip
        && v4.is_broadcast()
    {
        anyhow::bail!("invalid peer IP {ip}: broadcast address");
    }
    Ok(())
}

/// Reads a password file: its first line, without the line end.
fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("invalid password-file {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// A filter from its rules and default; none when neither is given (everything passes).
fn filter(
    rules: Vec<wren_model::FilterRule>,
    default: Option<super::FilterActionArg>,
) -> Option<wren_model::Filter> {
    if rules.is_empty() && default.is_none() {
        return None;
    }
    Some(wren_model::Filter {
        rules,
        default_action: default.map(Into::into).unwrap_or_default(),
    })
}

/// Runs `wren peer`.
pub async fn run(args: PeerArgs) -> anyhow::Result<()> {
    match args.command {
        PeerCommand::Add {
            name,
            peer_ip,
            as_number,
            node,
            password,
            password_file,
            keep_original_next_hop,
            accept_cluster_routes,
            accept_default_route,
            import_rules,
            import_default,
            export_rules,
            export_default,
            bfd,
            bfd_timing,
            hold_time,
            ttl_security,
            keepalive_time,
            local_as,
            source_address,
            max_prefixes,
            max_prefixes_warning,
            max_prefixes_restart,
        } => {
            let password = match password_file {
                Some(path) => Some(read_password(&path)?),
                None => password,
            };
            validate_name("peer name", &name)?;
            validate_peer_ip(peer_ip)?;
            if let Some(node) = &node {
                validate_name("node name", node)?;
            }
            if password.as_deref() == Some("") {
                anyhow::bail!("invalid password: empty (leave --password out for no password)");
            }
            if !bfd && !bfd_timing.is_empty() {
                anyhow::bail!("invalid BFD timing: give --bfd to run BFD on the session");
            }
            let bfd = if bfd {
                Some(bfd_timing.apply(Bfd::default())?)
            } else {
                None
            };
            let peer = Peer {
                peer_ip,
                as_number,
                node,
                password,
                keep_original_next_hop,
                accept_cluster_routes,
                accept_default_route,
                import_filter: filter(import_rules, import_default),
                export_filter: filter(export_rules, export_default),
                bfd,
                hold_time,
                ttl_security,
                keepalive_time_secs: keepalive_time,
                local_as_number: local_as,
                source_address,
                max_prefixes: max_prefixes.map(|limit| MaxPrefixes {
                    limit,
                    warning_percent: max_prefixes_warning
                        .unwrap_or(MaxPrefixes::DEFAULT.warning_percent),
                    restart_after_secs: max_prefixes_restart
                        .unwrap_or(MaxPrefixes::DEFAULT.restart_after_secs),
                }),
            };
            peer.validate()?;
            let store = super::store::open(&args.store).await?;
            let key = keys::peer(&name);
            let existed = store.get(&key).await?.is_some();
            store.put_json(&key, &peer, None).await?;
            let scope = match &peer.node {
                Some(node) => format!("node {node}"),
                None => "every node".to_owned(),
            };
            let verb = if existed { "updated" } else { "added" };
            println!("peer {name} {verb}: {peer_ip} AS {as_number}, peering from {scope}");
        }
        PeerCommand::List(format) => {
            let store = super::store::open(&args.store).await?;
            let peers = store.list_json::<Peer>(keys::PEERS).await?;
            if format.output == Output::Json {
                let rows: Vec<PeerRow> = peers
                    .items
                    .iter()
                    .map(|p| PeerRow {
                        name: p.key.trim_start_matches(keys::PEERS),
                        peer_ip: p.value.peer_ip,
                        as_number: p.value.as_number,
                        node: p.value.node.as_deref(),
                        password: p.value.password.is_some(),
                        bfd: p.value.bfd,
                        hold_time: p.value.hold_time,
                        ttl_security: p.value.ttl_security,
                        keepalive_time_secs: p.value.keepalive_time_secs,
                        local_as_number: p.value.local_as_number,
                        source_address: p.value.source_address,
                        max_prefixes: p.value.max_prefixes.unwrap_or(MaxPrefixes::DEFAULT),
                    })
                    .collect();
                return print_json(&rows);
            }
            let rows: Vec<Vec<String>> = peers
                .items
                .iter()
                .map(|p| {
                    vec![
                        p.key.trim_start_matches(keys::PEERS).to_owned(),
                        p.value.peer_ip.to_string(),
                        p.value.as_number.to_string(),
                        p.value.node.clone().unwrap_or_else(|| "(all)".into()),
                        if p.value.password.is_some() {
                            "yes"
                        } else {
                            "no"
                        }
                        .to_owned(),
                        p.value
                            .bfd
                            .map(|b| {
                                format!(
                                    "{}/{} ms x{}",
                                    b.transmit_interval_ms, b.receive_interval_ms, b.multiplier
                                )
                            })
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["NAME", "PEER IP", "AS", "NODE", "PASSWORD", "BFD"], &rows)
            );
        }
        PeerCommand::Rm { name } => {
            let store = super::store::open(&args.store).await?;
            match store.delete(&keys::peer(&name), None).await {
                Ok(_) => println!("peer {name} removed"),
                Err(StoreError::NotFound { .. }) => anyhow::bail!("no peer named {name}"),
                Err(e) => return Err(e).context("cannot remove the peer"),
            }
        }
    }
    Ok(())
}

/// One peer in `wren peer list -o json`; the password itself never leaves the datastore.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PeerRow<'a> {
    name: &'a str,
    peer_ip: IpAddr,
    as_number: u32,
    /// The node that peers; `null` for every node.
    node: Option<&'a str>,
    /// Whether the session is protected by a TCP MD5 password.
    password: bool,
    /// BFD timing; `null`: no BFD.
    bfd: Option<Bfd>,
    /// Hold time proposed; `null`: the default (90 s).
    hold_time: Option<u16>,
    /// GTSM hops; `null`: off.
    ttl_security: Option<u8>,
    /// Seconds between KEEPALIVEs; `null`: a third of the hold time.
    keepalive_time_secs: Option<u16>,
    /// The AS the node speaks on the session; `null`: its own.
    local_as_number: Option<u32>,
    /// Source address; `null`: the node address.
    source_address: Option<IpAddr>,
    /// The prefix limit in force (the default when the peer names none).
    max_prefixes: MaxPrefixes,
}
