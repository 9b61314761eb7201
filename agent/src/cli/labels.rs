//! Label changes on the command line (`key=value` sets, `key-` removes, as `kubectl label`
//! takes them) and the read-modify-write of the document that holds them.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wren_store::Store;
use wren_store::json::JsonStore;

/// One change to a set of labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Set `key` to `value`.
    Set(String, String),
    /// Remove `key`.
    Remove(String),
}

/// Parses and validates every change before anything is written.
pub fn parse_changes(args: &[String]) -> anyhow::Result<Vec<LabelChange>> {
    let mut changes = Vec::new();
    for arg in args {
        let change = if let Some((key, value)) = arg.split_once('=') {
            LabelChange::Set(key.to_owned(), value.to_owned())
        } else if let Some(key) = arg.strip_suffix('-') {
            LabelChange::Remove(key.to_owned())
        } else {
            bail!("label {arg:?}: expected KEY=VALUE to set or KEY- to remove");
        };
        let (key, value) = match &change {
            LabelChange::Set(k, v) => (k.clone(), v.clone()),
            LabelChange::Remove(k) => (k.clone(), String::new()),
        };
        wren_policy::validate::check_labels("label", &BTreeMap::from([(key, value)]))?;
        changes.push(change);
    }
    Ok(changes)
}

/// Applies changes to a set of labels.
pub fn apply_changes(labels: &mut BTreeMap<String, String>, changes: &[LabelChange]) {
    for change in changes {
        match change {
            LabelChange::Set(k, v) => {
                labels.insert(k.clone(), v.clone());
            }
            LabelChange::Remove(k) => {
                labels.remove(k);
            }
        }
    }
}

/// Labels as `k=v,k2=v2` (`(none)` when empty).
pub fn render(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the document at `key` (a default one when absent), changes it with `change` and
/// writes it back only if nobody wrote it meanwhile, retrying a few times if somebody did.
pub async fn update<T>(store: &dyn Store, key: &str, change: impl Fn(&mut T)) -> anyhow::Result<T>
where
    T: Default + Serialize + DeserializeOwned + Send + Sync,
{
    for _ in 0..5 {
        let current = store.get_json::<T>(key).await?;
        let written = match current {
            Some(mut current) => {
                // The document is written back whole; what is left in `current` is what
                // the write keeps from it (fields a newer version stored).
                let mut doc = std::mem::take(&mut current.value);
                change(&mut doc);
                store.update_read(&current, &doc).await.map(|_| doc)
            }
            None => {
                let mut doc = T::default();
                change(&mut doc);
                store.create_json(key, &doc, None).await.map(|_| doc)
            }
        };
        match written {
            Ok(doc) => return Ok(doc),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{key} kept changing while being updated; try again")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_set_and_remove_and_bad_ones_name_the_label() {
        let changes = parse_changes(&["app=web".into(), "tier-".into(), "empty=".into()]).unwrap();
        let mut labels = BTreeMap::from([("tier".to_owned(), "db".to_owned())]);
        apply_changes(&mut labels, &changes);
        assert_eq!(render(&labels), "app=web,empty=");
        let e = parse_changes(&["bad key=x".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("label.bad key") && e.contains("not a valid label key"),
            "{e}"
        );
        assert!(parse_changes(&["nothing".into()]).is_err());
    }
}
