//! `wren workload list`: every pod attachment wren recorded, with its Kubernetes identity;
//! `wren workload label` and `port`: a pod's labels and named ports (`pods/<ns>/<name>`).

use anyhow::{Context, bail};
use wren_model::{NamedPort, PodMeta, Protocol, Workload, keys};
use wren_store::json::JsonStore;

use super::{Output, WorkloadArgs, WorkloadCommand, labels, print_json};
use crate::daemon::status::table;

/// Runs `wren workload`.
pub async fn run(args: WorkloadArgs) -> anyhow::Result<()> {
    let store = super::store::open(&args.store).await?;
    match args.command {
        WorkloadCommand::List { node, output } => {
            let prefix = node
                .as_deref()
                .map_or_else(|| keys::WORKLOADS.to_owned(), keys::node_workloads);
            let workloads = store.list_json::<Workload>(&prefix).await?;
            let records: Vec<Workload> = workloads.items.into_iter().map(|w| w.value).collect();
            match output.output {
                Output::Table => print!("{}", render(&records)),
                Output::Json => print_json(&records)?,
            }
        }
        WorkloadCommand::Label {
            pod,
            labels: changes,
        } => {
            let key = pod_key(&pod)?;
            let changes = labels::parse_changes(&changes)?;
            let store = super::store::open_reachable(&args.store).await?;
            let meta = labels::update(store.as_ref(), &key, |doc: &mut PodMeta| {
                labels::apply_changes(&mut doc.labels, &changes);
            })
            .await?;
            println!("pod {pod} labelled: {}", labels::render(&meta.labels));
        }
        WorkloadCommand::Port { pod, ports } => {
            let key = pod_key(&pod)?;
            let changes = ports
                .iter()
                .map(|p| parse_port_change(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let store = super::store::open_reachable(&args.store).await?;
            let meta = labels::update(store.as_ref(), &key, |doc: &mut PodMeta| {
                for (name, port) in &changes {
                    doc.ports.retain(|p| &p.name != name);
                    doc.ports.extend(port.clone());
                }
                doc.ports.sort();
            })
            .await?;
            let ports: Vec<String> = meta
                .ports
                .iter()
                .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol))
                .collect();
            println!("pod {pod} ports: {}", ports.join(","));
        }
    }
    Ok(())
}

/// The key of a pod's labels and ports, from `NAMESPACE/NAME`.
fn pod_key(pod: &str) -> anyhow::Result<String> {
    let (namespace, name) = super::policy::split_id(pod, "pod")?;
    wren_policy::validate::check_namespace_name("pod namespace", namespace)?;
    Ok(keys::pod(namespace, name))
}

/// Parses `NAME=PORT/PROTO` (set) or `NAME-` (remove): the name and the port to set.
fn parse_port_change(arg: &str) -> anyhow::Result<(String, Option<NamedPort>)> {
    let (name, port) = match arg.split_once('=') {
        Some((name, spec)) => {
            let (number, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
            let protocol: Protocol = protocol.parse().with_context(|| format!("port {arg:?}"))?;
            let port: u16 = number
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("port {arg:?}: the number must be from 1 to 65535"))?;
            let name = name.to_owned();
            (
                name.clone(),
                Some(NamedPort {
                    name,
                    protocol,
                    port,
                }),
            )
        }
        None => match arg.strip_suffix('-') {
            Some(name) => (name.to_owned(), None),
            None => bail!("port {arg:?}: expected NAME=PORT/PROTO to set or NAME- to remove"),
        },
    };
    // A named port is an IANA service name, as in a policy.
    wren_policy::validate::check_port_name("port name", &name)?;
    Ok((name, port))
}

/// The workloads as a table, one attachment per row, sorted by node then pod.
fn render(workloads: &[Workload]) -> String {
    if workloads.is_empty() {
        return "no workloads recorded\n".to_owned();
    }
    let mut rows: Vec<Vec<String>> = workloads
        .iter()
        .map(|w| {
            let addresses: Vec<String> = w.addresses.iter().map(ToString::to_string).collect();
            vec![
                w.node.clone(),
                w.pod().unwrap_or_else(|| "-".to_owned()),
                w.container_id.clone(),
                w.ifname.clone(),
                w.host_interface.clone(),
                addresses.join(","),
            ]
        })
        .collect();
    rows.sort();
    table(
        &["NODE", "POD", "CONTAINER", "INTERFACE", "HOST", "ADDRESSES"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(node: &str, pod: Option<(&str, &str)>, container: &str) -> Workload {
        Workload {
            node: node.into(),
            container_id: container.into(),
            ifname: "eth0".into(),
            network: "k8s-pod-network".into(),
            handle: format!("k8s-pod-network.{container}"),
            pod_namespace: pod.map(|p| p.0.into()),
            pod_name: pod.map(|p| p.1.into()),
            pod_uid: None,
            netns: "/run/netns/x".into(),
            addresses: vec!["10.65.0.3/32".parse().unwrap()],
            host_interface: format!("wren{container}"),
            mac: "ee:ee:ee:ee:ee:01".into(),
        }
    }

    #[test]
    fn one_row_per_attachment_with_the_pod_identity() {
        let out = render(&[
            workload("n2", Some(("web", "b")), "c2"),
            workload("n1", Some(("default", "a")), "c1"),
            workload("n1", None, "c3"),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("NODE"), "{out}");
        assert!(lines[1].contains(" - ") && lines[1].contains("c3"), "{out}");
        assert!(
            lines[2].contains("default/a") && lines[2].contains("c1"),
            "{out}"
        );
        assert!(
            lines[3].starts_with("n2") && lines[3].contains("web/b"),
            "{out}"
        );
        assert!(lines[3].contains("10.65.0.3/32"), "{out}");
        assert_eq!(render(&[]), "no workloads recorded\n");
    }
}
