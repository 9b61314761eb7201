//! `wren policy`: network policies in the store (`policies/<namespace>/<name>`), applied
//! from the YAML a user gives `kubectl apply`, and `explain`, which says whether one pod
//! may reach another and which policies and rules decide it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use wren_model::{Namespace, Node, PodMeta, Protocol, Workload, keys};
use wren_policy::{Cluster, Flow, NetworkPolicy, Pod};
use wren_store::json::{self, JsonStore};
use wren_store::{Compare, Store, Txn};

use super::{PolicyArgs, PolicyCommand};
use crate::daemon::status::table;

/// The most policies one `apply` writes: etcd's default limit of operations in one
/// transaction, which keeps an apply all-or-nothing.
const MAX_POLICIES_PER_APPLY: usize = 128;

/// Runs `wren policy`.
pub async fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Apply { file } => {
            // Everything is read and validated before the store is opened.
            let policies = read_policies(&file)?;
            let store = super::store::open_reachable(&args.store).await?;
            print!("{}", apply(store.as_ref(), &policies).await?);
        }
        PolicyCommand::List { namespace } => {
            let store = super::store::open(&args.store).await?;
            let prefix = namespace
                .as_deref()
                .map_or_else(|| keys::POLICIES.to_owned(), keys::namespace_policies);
            let policies = list(store.as_ref(), &prefix).await?;
            print!("{}", render_list(&policies));
        }
        PolicyCommand::Show { policy } => {
            let (namespace, name) = split_id(&policy, "policy")?;
            let store = super::store::open(&args.store).await?;
            let found = store
                .get_json::<NetworkPolicy>(&keys::policy(namespace, name))
                .await?
                .with_context(|| format!("no policy {namespace}/{name}"))?;
            print!("{}", wren_policy::encode_policies(&[found.value])?);
        }
        PolicyCommand::Rm { policy } => {
            let (namespace, name) = split_id(&policy, "policy")?;
            let store = super::store::open(&args.store).await?;
            let key = keys::policy(namespace, name);
            let Some(found) = store.get(&key).await? else {
                bail!("no policy {namespace}/{name}");
            };
            store.delete(&key, Some(found.mod_revision)).await?;
            println!("policy {namespace}/{name} removed");
        }
        PolicyCommand::Explain { from, to, port } => {
            let port = port.as_deref().map(parse_port).transpose()?;
            let store = super::store::open(&args.store).await?;
            let cluster = load_cluster(&store).await?;
            print!("{}", explain(&cluster, &from, &to, port)?);
        }
    }
    Ok(())
}

/// Reads and validates every document of `file` (`-` for standard input).
fn read_policies(file: &Path) -> anyhow::Result<Vec<NetworkPolicy>> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let policies = wren_policy::decode_policies(&text)?;
    if policies.len() > MAX_POLICIES_PER_APPLY {
        bail!(
            "{} policies in one file: at most {MAX_POLICIES_PER_APPLY} apply together; split the file",
            policies.len()
        );
    }
    Ok(policies)
}

/// Writes every policy in one transaction, each only if it is still as it was read, and
/// says for each whether it was created, changed or already so.
async fn apply(store: &dyn Store, policies: &[NetworkPolicy]) -> anyhow::Result<String> {
    let mut txn = Txn::new();
    let mut report = String::new();
    for policy in policies {
        let key = keys::policy(policy.namespace(), policy.name());
        let existing = store.get_json::<NetworkPolicy>(&key).await?;
        let outcome = match &existing {
            None => {
                txn = txn.when(Compare::Absent(key.clone()));
                "created"
            }
            Some(current) => {
                txn = txn.when(Compare::ModRevision(key.clone(), current.mod_revision));
                if &current.value == policy {
                    "unchanged"
                } else {
                    "configured"
                }
            }
        };
        if outcome != "unchanged" {
            txn = txn.put(key.clone(), json::encode(&key, policy)?);
        }
        report.push_str(&format!("policy {} {outcome}\n", policy.id()));
    }
    store.txn(txn).await.map_err(|e| {
        if e.is_conflict() {
            anyhow::anyhow!("a policy changed while applying; nothing was written, try again")
        } else {
            e.into()
        }
    })?;
    Ok(report)
}

async fn list(store: &dyn Store, prefix: &str) -> anyhow::Result<Vec<NetworkPolicy>> {
    let listing = store.list_json::<NetworkPolicy>(prefix).await?;
    Ok(listing.items.into_iter().map(|v| v.value).collect())
}

/// The policies as a table: namespace, name, the pods they select, the directions they
/// isolate and how many rules each has.
fn render_list(policies: &[NetworkPolicy]) -> String {
    if policies.is_empty() {
        return "no policies\n".to_owned();
    }
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|p| {
            let mut types = Vec::new();
            for direction in [
                wren_policy::PolicyType::Ingress,
                wren_policy::PolicyType::Egress,
            ] {
                if p.isolates(direction) {
                    types.push(format!("{direction}({})", p.rules(direction).len()));
                }
            }
            vec![
                p.namespace().to_owned(),
                p.name().to_owned(),
                p.spec.pod_selector.to_string(),
                types.join(","),
            ]
        })
        .collect();
    table(
        &["NAMESPACE", "NAME", "POD-SELECTOR", "ISOLATES(RULES)"],
        &rows,
    )
}

/// Splits `namespace/name`, naming `what` in the error.
pub fn split_id<'a>(id: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match id.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok((namespace, name))
        }
        _ => bail!("{what} {id:?}: expected NAMESPACE/NAME"),
    }
}

/// Parses `--port`: `80/tcp`, `53/udp`, `80` (TCP).
fn parse_port(text: &str) -> anyhow::Result<(Protocol, u16)> {
    let (number, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol: Protocol = protocol
        .parse()
        .with_context(|| format!("--port {text:?}"))?;
    let number: u16 =
        number.parse().ok().filter(|n| *n > 0).with_context(|| {
            format!("--port {text:?}: the port must be a number from 1 to 65535")
        })?;
    Ok((protocol, number))
}

/// Reads what a verdict depends on from the store: policies, namespaces' labels, pods
/// (their workloads' addresses with the labels and named ports of `pods/`), and nodes'
/// own addresses.
pub async fn load_cluster(store: &Arc<dyn Store>) -> anyhow::Result<Cluster> {
    let policies = store.list_json::<NetworkPolicy>(keys::POLICIES).await?;
    let namespaces = store.list_json::<Namespace>(keys::NAMESPACES).await?;
    let metas = store.list_json::<PodMeta>(keys::PODS).await?;
    let workloads = store.list_json::<Workload>(keys::WORKLOADS).await?;
    let nodes = store.list_json::<Node>(keys::NODES).await?;
    let metas: BTreeMap<String, PodMeta> = metas
        .items
        .into_iter()
        .map(|m| (m.key.trim_start_matches(keys::PODS).to_owned(), m.value))
        .collect();
    Ok(Cluster::from_records(
        policies.items.iter().map(|p| &p.value),
        namespaces
            .items
            .iter()
            .map(|n| (n.key.trim_start_matches(keys::NAMESPACES), &n.value)),
        &metas,
        workloads.items.iter().map(|w| &w.value),
        nodes.items.iter().map(|n| &n.value),
    ))
}

/// The answer to `wren policy explain`: the verdict, then one line per direction.
fn explain(
    cluster: &Cluster,
    from: &str,
    to: &str,
    port: Option<(Protocol, u16)>,
) -> anyhow::Result<String> {
    let find = |id: &str| -> anyhow::Result<&Pod> {
        let (namespace, name) = split_id(id, "pod")?;
        cluster.pod(namespace, name).with_context(|| {
            format!("no pod {namespace}/{name} is recorded (see wren workload list)")
        })
    };
    let (source, destination) = (find(from)?, find(to)?);
    let flow = Flow::between(source, destination, port)
        .with_context(|| format!("{from} and {to} have no address family in common"))?;
    let verdict = cluster.verdict(&flow);
    let what = match port {
        Some((protocol, number)) => format!("{protocol}/{number}"),
        None => "traffic without ports (ICMP)".to_owned(),
    };
    Ok(format!(
        "{}: {from} ({}) -> {to} ({}) {what}\n  egress of {from}: {}\n  ingress of {to}: {}\n",
        if verdict.allowed() {
            "allowed"
        } else {
            "denied"
        },
        flow.source.address,
        flow.destination.address,
        verdict.egress,
        verdict.ingress,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ids_parse_or_say_what_is_wrong() {
        assert_eq!(parse_port("80").unwrap(), (Protocol::Tcp, 80));
        assert_eq!(parse_port("53/UDP").unwrap(), (Protocol::Udp, 53));
        assert!(parse_port("0/tcp").is_err());
        assert!(format!("{:#}", parse_port("80/icmp").unwrap_err()).contains("unknown protocol"));
        assert_eq!(split_id("x/a", "pod").unwrap(), ("x", "a"));
        for bad in ["x", "/a", "x/", "x/a/b"] {
            assert!(split_id(bad, "pod").is_err(), "{bad}");
        }
    }
}
