//! `wren namespace`: namespaces' labels (`namespaces/<name>`), which policies' namespace
//! selectors match.

use wren_model::{Namespace, keys};
use wren_store::json::JsonStore;

use super::{NamespaceArgs, NamespaceCommand, labels};
use crate::daemon::status::table;

/// Runs `wren namespace`.
pub async fn run(args: NamespaceArgs) -> anyhow::Result<()> {
    match args.command {
        NamespaceCommand::Label {
            namespace,
            labels: changes,
        } => {
            wren_policy::validate::check_namespace_name("namespace", &namespace)?;
            let changes = labels::parse_changes(&changes)?;
            let store = super::store::open_reachable(&args.store).await?;
            let key = keys::namespace(&namespace);
            let result = labels::update(store.as_ref(), &key, |doc: &mut Namespace| {
                labels::apply_changes(&mut doc.labels, &changes);
            })
            .await?;
            println!(
                "namespace {namespace} labelled: {}",
                labels::render(&result.labels)
            );
        }
        NamespaceCommand::List => {
            let store = super::store::open(&args.store).await?;
            let listing = store.list_json::<Namespace>(keys::NAMESPACES).await?;
            let rows: Vec<Vec<String>> = listing
                .items
                .into_iter()
                .map(|n| {
                    vec![
                        n.key.trim_start_matches(keys::NAMESPACES).to_owned(),
                        labels::render(&n.value.labels),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no namespace labels recorded");
            } else {
                print!("{}", table(&["NAMESPACE", "LABELS"], &rows));
            }
        }
    }
    Ok(())
}
