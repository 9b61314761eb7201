//! The CNI result: one version-neutral model, read from any supported version and written in
//! the version the configuration asked for.
//!
//! - 0.3.0, 0.3.1, 0.4.0: each `ips` entry carries `"version": "4"|"6"`.
//! - 1.0.0: no `version` in `ips`.
//! - 1.1.0: interfaces may carry `mtu`, `socketPath`, `pciID`; routes `mtu`, `advmss`,
//!   `priority`, `table`, `scope`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::version::SpecVersion;

/// A CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// Interfaces created or used: host side first, then the pod side.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses, each naming its interface by index into `interfaces`.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes the plugin set up inside the sandbox.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings for the sandbox.
    #[serde(default)]
    pub dns: Dns,
}

/// One interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The sandbox (netns path) the interface lives in; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// vhost-user socket path (1.1.0 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI address of a device (1.1.0 and later).
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// Gateway of the subnet, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; the interface's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (1.1.0), as the kernel numbers it (253 = link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route to `dst` via `gw`.
    pub fn via(dst: IpNet, gw: IpAddr) -> Self {
        Self {
            dst,
            gw: Some(gw),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when no DNS field is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A `prevResult` that does not have the shape of a CNI result.
#[derive(Debug, thiserror::Error)]
#[error("prevResult is not a CNI result: {0}")]
pub struct InvalidResult(#[from] serde_json::Error);

impl CniResult {
    /// Reads a result written in any supported version (`ips[].version` is ignored: the
    /// address says its family).
    pub fn from_value(value: &Value) -> Result<Self, InvalidResult> {
        Ok(Self::deserialize(value)?)
    }

    /// Appends `ours` after `self` (the previous plugin's result), renumbering our interface
    /// indexes, so a chain's results accumulate. Our DNS wins when we have any.
    pub fn chain(mut self, ours: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(ours.routes);
        if !ours.dns.is_empty() {
            self.dns = ours.dns;
        }
        self
    }

    /// The result as JSON in `version`'s format.
    pub fn to_versioned_json(&self, version: SpecVersion) -> Value {
        let extras = version.has_result_attributes();
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                put(&mut m, "mac", &i.mac);
                if extras {
                    put(&mut m, "mtu", &i.mtu);
                }
                put(&mut m, "sandbox", &i.sandbox);
                if extras {
                    put(&mut m, "socketPath", &i.socket_path);
                    put(&mut m, "pciID", &i.pci_id);
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if version.ips_carry_version() {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    m.insert("version".into(), json!(family));
                }
                put(&mut m, "interface", &ip.interface);
                m.insert("address".into(), json!(ip.address.to_string()));
                put(&mut m, "gateway", &ip.gateway.map(|g| g.to_string()));
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), json!(r.dst.to_string()));
                put(&mut m, "gw", &r.gw.map(|g| g.to_string()));
                if extras {
                    put(&mut m, "mtu", &r.mtu);
                    put(&mut m, "advmss", &r.advmss);
                    put(&mut m, "priority", &r.priority);
                    put(&mut m, "table", &r.table);
                    put(&mut m, "scope", &r.scope);
                }
                Value::Object(m)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        );
        Value::Object(out)
    }
}

fn put<T: Serialize>(m: &mut Map<String, Value>, key: &str, value: &Option<T>) {
    if let Some(v) = value
        && let Ok(v) = serde_json::to_value(v)
    {
        m.insert(key.into(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "wren0123456789a".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:58:0a:41:00:05".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/pod".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.65.0.5/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:65::5/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![Route::via(
                "0.0.0.0/0".parse().unwrap(),
                "169.254.1.1".parse().unwrap(),
            )],
            dns: Dns::default(),
        }
    }

    #[test]
    fn legacy_versions_carry_ip_version_and_no_11_fields() {
        let v = sample().to_versioned_json(SpecVersion::V0_4_0);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/pod");
        assert!(v["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn v1_drops_ip_version_and_v11_adds_mtu() {
        let v10 = sample().to_versioned_json(SpecVersion::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][1].get("mtu").is_none());
        assert_eq!(
            v10["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        );
        let v11 = sample().to_versioned_json(SpecVersion::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["cniVersion"], "1.1.0");
    }

    #[test]
    fn reads_back_what_it_writes_in_every_version() {
        for v in SpecVersion::SUPPORTED {
            let json = sample().to_versioned_json(v);
            let back = CniResult::from_value(&json).unwrap();
            assert_eq!(back.ips, sample().ips, "{v}");
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn chaining_renumbers_our_interfaces_after_the_previous_ones() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                sandbox: Some("/run/netns/pod".into()),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "127.0.0.1/8".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let merged = prev.chain(sample());
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[0].interface, Some(0));
        assert_eq!(merged.ips[1].interface, Some(2));
        assert_eq!(merged.dns.nameservers, vec!["10.96.0.10"]);
    }
}
