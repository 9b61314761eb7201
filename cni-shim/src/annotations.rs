//! Pod-level address choices, read from the pod's annotations.
//!
//! A runtime passes the pod's annotations when the conflist declares the capability
//! `io.kubernetes.cri.pod-annotations` (`runtimeConfig["io.kubernetes.cri.pod-annotations"]`).
//! wren reads two keys of its own, each a JSON list of strings, as Calico's
//! `cni.projectcalico.org/ipv4pools` and `…/ipAddrs` are:
//!
//! | annotation | meaning |
//! |---|---|
//! | `wren.dev/pools` | pool names to allocate from, in order; replaces `ipam.pools` for this pod |
//! | `wren.dev/ip-addrs` | the addresses the pod gets (each must lie in an enabled pool and be free) |
//!
//! Other annotations are ignored. A value that is not a JSON list of pool names or addresses
//! fails the ADD with code 7 naming the annotation, before anything is allocated.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::error::{CniError, ErrorCode};

/// The capability a conflist declares to receive the pod's annotations.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// Annotation: the pools a pod's addresses come from (`["pool-a", "pool-b"]`).
pub const POOLS: &str = "wren.dev/pools";

/// Annotation: the addresses a pod asks for (`["10.65.3.7"]`).
pub const IP_ADDRS: &str = "wren.dev/ip-addrs";

/// What a pod's annotations ask of wren's IPAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAddressChoices {
    /// Pools to allocate from, in order; empty when the pod names none.
    pub pools: Vec<String>,
    /// Specific addresses.
    pub addresses: Vec<IpAddr>,
}

impl PodAddressChoices {
    /// Reads wren's keys from a pod's annotations.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, CniError> {
        let pools = match annotations.get(POOLS) {
            Some(raw) => {
                let pools = string_list(POOLS, raw, "pool names")?;
                if let Some(empty) = pools.iter().find(|p| p.trim().is_empty()) {
                    return Err(invalid(POOLS, raw, &format!("{empty:?} is no pool name")));
                }
                pools
            }
            None => Vec::new(),
        };
        let addresses = match annotations.get(IP_ADDRS) {
            Some(raw) => string_list(IP_ADDRS, raw, "addresses")?
                .iter()
                .map(|a| {
                    a.parse::<IpAddr>()
                        .map_err(|_| invalid(IP_ADDRS, raw, &format!("{a:?} is not an IP address")))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self { pools, addresses })
    }
}

fn string_list(key: &str, raw: &str, what: &str) -> Result<Vec<String>, CniError> {
    serde_json::from_str::<Vec<String>>(raw)
        .map_err(|_| invalid(key, raw, &format!("expected a JSON list of {what}")))
}

fn invalid(key: &str, raw: &str, why: &str) -> CniError {
    CniError::new(
        ErrorCode::INVALID_NETWORK_CONFIG,
        format!(
            "pod annotation {key}: {raw:?}: {why}, like {}",
            example(key)
        ),
    )
}

fn example(key: &str) -> &'static str {
    if key == POOLS {
        r#"["pool-a"]"#
    } else {
        r#"["10.65.3.7"]"#
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices(pairs: &[(&str, &str)]) -> Result<PodAddressChoices, CniError> {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PodAddressChoices::from_annotations(&map)
    }

    #[test]
    fn reads_pools_and_addresses_and_ignores_other_keys() {
        let c = choices(&[
            (POOLS, r#"["a", "b"]"#),
            (IP_ADDRS, r#"["10.65.3.7", "fd00::7"]"#),
            ("cni.projectcalico.org/ipv4pools", "not wren's"),
        ])
        .unwrap();
        assert_eq!(c.pools, ["a", "b"]);
        assert_eq!(
            c.addresses,
            [
                "10.65.3.7".parse::<IpAddr>().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        assert_eq!(choices(&[]).unwrap(), PodAddressChoices::default());
    }

    #[test]
    fn a_bad_value_names_the_annotation_and_shows_the_form() {
        for (key, value) in [
            (POOLS, "a,b"),
            (POOLS, r#"[""]"#),
            (IP_ADDRS, r#"["10.65.3.300"]"#),
            (IP_ADDRS, "10.65.3.7"),
        ] {
            let e = choices(&[(key, value)]).unwrap_err();
            assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
            assert!(e.msg.contains(key), "{}", e.msg);
            assert!(e.msg.contains("like ["), "{}", e.msg);
        }
    }
}
