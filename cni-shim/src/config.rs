//! The network configuration a runtime streams on stdin, as wren reads it.
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "wren",
//!   "agentSocket": "/run/wren/agent.sock", "mtu": 1450, "logLevel": "info",
//!   "ipam": {"pools": ["default-ipv4"], "assign_ipv4": true, "assign_ipv6": false}
//! }
//! ```
//!
//! Decoding happens in three steps so each failure gets the spec's code: JSON syntax (6),
//! `cniVersion` (1), then the shape and values of wren's fields (7, or 2 for a value of a known
//! key that wren does not support).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::annotations::PodAddressChoices;
use crate::error::{CniError, ErrorCode};
use crate::result::Dns;
use crate::version::SpecVersion;

/// Where the agent listens unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/wren/agent.sock";

/// Smallest MTU an IPv4 interface may have; `mtu` below it is rejected.
const MIN_MTU: u32 = 576;
/// Largest MTU the kernel accepts on a veth.
const MAX_MTU: u32 = 65535;

/// The plugin configuration for one invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of this configuration, and of the result the runtime expects.
    pub cni_version: SpecVersion,
    /// Network name; part of every IPAM handle (`<name>.<containerID>`).
    pub name: String,
    /// Plugin type (`wren`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's local API socket.
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
    /// MTU of the pod interface; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Address assignment choices.
    #[serde(default)]
    pub ipam: IpamConf,
    /// Verbosity of the plugin's stderr log (`error`, `warn`, `info`, `debug`, `trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// DNS settings to hand back in the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Capability arguments from the runtime (`ips` is the one wren uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    /// The result of the previous plugin in the chain (ADD), or of the whole ADD (DEL, CHECK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<serde_json::Value>,
    /// Free-form runtime arguments (`args`); carried, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    /// GC: the attachments the runtime still knows.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<GcAttachment>>,
    /// GC: the same list under the name an early 1.1 draft used; runtimes send both.
    #[serde(
        rename = "cni.dev/attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_attachments: Option<Vec<GcAttachment>>,
}

fn default_agent_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}

/// Which pools to take addresses from, and of which families.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConf {
    /// IPAM type; absent, `wren` or `wren-ipam` (wren's IPAM is built in).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ipam_type: Option<String>,
    /// Pool names to allocate from, in order of preference; every enabled pool when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// Give the pod an IPv4 address (default true). `true`, `false`, `"true"` or `"false"`.
    #[serde(default = "yes", deserialize_with = "bool_or_string")]
    pub assign_ipv4: bool,
    /// Give the pod an IPv6 address (default false).
    #[serde(default, deserialize_with = "bool_or_string")]
    pub assign_ipv6: bool,
}

impl Default for IpamConf {
    fn default() -> Self {
        Self {
            ipam_type: None,
            pools: Vec::new(),
            assign_ipv4: true,
            assign_ipv6: false,
        }
    }
}

fn yes() -> bool {
    true
}

/// Accepts a JSON boolean or the strings `"true"`/`"false"` (what Calico configs carry).
fn bool_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrString {
        Bool(bool),
        String(String),
    }
    match BoolOrString::deserialize(deserializer)? {
        BoolOrString::Bool(b) => Ok(b),
        BoolOrString::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "expected true or false, got {s:?}"
            ))),
        },
    }
}

/// The runtime-provided capability arguments wren understands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// Specific addresses the runtime asks for (capability `ips`), with or without prefix.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "addresses"
    )]
    pub ips: Vec<IpNet>,
    /// The pod's annotations (capability `io.kubernetes.cri.pod-annotations`); wren reads
    /// its own keys from them ([`crate::annotations`]).
    #[serde(
        rename = "io.kubernetes.cri.pod-annotations",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Parses `"10.0.0.5"` as well as `"10.0.0.5/24"`; a bare address becomes a host prefix.
fn addresses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(deserializer)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an IP address")))
        })
        .collect()
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcAttachment {
    /// The container id of a live attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface name.
    pub ifname: String,
}

/// Log levels the plugin accepts in `logLevel`.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl NetConf {
    /// Decodes and validates a configuration from stdin bytes.
    pub fn from_slice(stdin: &[u8]) -> Result<Self, CniError> {
        let value = parse_json(stdin)?;
        Self::from_value(value)
    }

    /// Decodes and validates an already-parsed configuration (its `cniVersion` checked first).
    pub fn from_value(value: serde_json::Value) -> Result<Self, CniError> {
        config_version(&value)?;
        let conf: NetConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                ErrorCode::INVALID_NETWORK_CONFIG,
                format!("invalid network configuration: {e}"),
            )
        })?;
        conf.validate()?;
        Ok(conf)
    }

    /// Checks the values serde cannot: names, ranges, choices.
    pub fn validate(&self) -> Result<(), CniError> {
        let invalid = |msg: String| Err(CniError::new(ErrorCode::INVALID_NETWORK_CONFIG, msg));
        if self.name.is_empty() {
            return invalid("network configuration has an empty \"name\"".into());
        }
        if let Err(why) = validate_network_name(&self.name) {
            return invalid(format!("network name {:?} {why}", self.name));
        }
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return invalid(format!("\"mtu\": {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
        }
        if self.agent_socket.as_os_str().is_empty() || !self.agent_socket.is_absolute() {
            return invalid(format!(
                "\"agentSocket\": {:?} must be an absolute path",
                self.agent_socket
            ));
        }
        if let Some(t) = &self.ipam.ipam_type
            && !matches!(t.as_str(), "wren" | "wren-ipam")
        {
            return Err(CniError::new(
                ErrorCode::UNSUPPORTED_FIELD,
                format!(
                    "unsupported \"ipam.type\": {t:?}; wren allocates itself (omit it or use \"wren\")"
                ),
            ));
        }
        if !self.ipam.assign_ipv4 && !self.ipam.assign_ipv6 {
            return invalid("\"ipam\": assign_ipv4 and assign_ipv6 are both false; the pod would get no address".into());
        }
        if let Some(pool) = self.ipam.pools.iter().find(|p| p.is_empty()) {
            return invalid(format!("\"ipam.pools\" holds an empty pool name: {pool:?}"));
        }
        if let Some(level) = &self.log_level
            && !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str())
        {
            return Err(CniError::new(
                ErrorCode::UNSUPPORTED_FIELD,
                format!(
                    "unsupported \"logLevel\": {level:?}; use one of {}",
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The pools and addresses the pod asks for through its annotations (none when the
    /// runtime passed no annotations: the conflist did not declare the capability). Only ADD
    /// reads them, so a DEL of a pod with a bad annotation still succeeds.
    pub fn pod_choices(&self) -> Result<PodAddressChoices, CniError> {
        self.runtime_config.as_ref().map_or_else(
            || Ok(PodAddressChoices::default()),
            |rc| PodAddressChoices::from_annotations(&rc.pod_annotations),
        )
    }

    /// The GC list: `cni.dev/valid-attachments`, else `cni.dev/attachments`, else none.
    pub fn gc_attachments(&self) -> Option<&[GcAttachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.legacy_attachments.as_deref())
    }
}

/// Network names as the spec allows them: alphanumeric first, then alphanumerics, `_`, `.`, `-`.
fn validate_network_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit");
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err("may hold only letters, digits, '_', '.' and '-'")
    }
}

/// Parses stdin as JSON; anything else is a decode failure (code 6).
pub fn parse_json(stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            ErrorCode::DECODE_FAILURE,
            "no network configuration on stdin",
        ));
    }
    serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::DECODE_FAILURE,
            "network configuration on stdin is not valid JSON",
        )
        .with_details(e.to_string())
    })
}

/// Reads `cniVersion` from a parsed configuration: missing, not a string, or not one wren
/// speaks is an incompatible-version error (code 1).
pub fn config_version(value: &serde_json::Value) -> Result<SpecVersion, CniError> {
    let supported = SpecVersion::supported_strings().join(", ");
    match value.get("cniVersion") {
        Some(serde_json::Value::String(s)) => s.parse().map_err(|_| {
            CniError::new(
                ErrorCode::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version: the configuration asks for {s:?}; wren supports {supported}"),
            )
        }),
        Some(other) => Err(CniError::new(
            ErrorCode::INCOMPATIBLE_VERSION,
            format!("\"cniVersion\" must be a string, not {other}; wren supports {supported}"),
        )),
        None => Err(CniError::new(
            ErrorCode::INCOMPATIBLE_VERSION,
            format!("the configuration has no \"cniVersion\"; wren supports {supported}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> Result<NetConf, CniError> {
        NetConf::from_value(v)
    }

    #[test]
    fn minimal_config_gets_the_defaults() {
        let c = conf(json!({"cniVersion": "1.0.0", "name": "net1", "type": "wren"})).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
        assert!(c.ipam.pools.is_empty());
    }

    #[test]
    fn reads_every_wren_field_and_calico_style_booleans() {
        let c = conf(json!({
            "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "wren",
            "agentSocket": "/tmp/x.sock", "mtu": 1450, "logLevel": "DEBUG",
            "ipam": {"type": "wren", "pools": ["a", "b"], "assign_ipv4": "false", "assign_ipv6": "true"},
            "runtimeConfig": {"ips": ["10.1.2.3", "fd00::5/64"], "portMappings": []},
            "capabilities": {"portMappings": true}
        }))
        .unwrap();
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.ipam.pools, vec!["a", "b"]);
        assert!(!c.ipam.assign_ipv4 && c.ipam.assign_ipv6);
        let ips = c.runtime_config.unwrap().ips;
        assert_eq!(ips[0].to_string(), "10.1.2.3/32");
        assert_eq!(ips[1].to_string(), "fd00::5/64");
    }

    #[test]
    fn version_errors_come_first_and_carry_code_1() {
        for v in [
            json!({"name": "x", "type": "wren"}),
            json!({"cniVersion": "0.2.0"}),
            json!({"cniVersion": 1}),
        ] {
            assert_eq!(conf(v).unwrap_err().code, ErrorCode::INCOMPATIBLE_VERSION);
        }
    }

    #[test]
    fn bad_shapes_and_values_are_invalid_config() {
        let base = |extra: serde_json::Value| {
            let mut v = json!({"cniVersion": "1.0.0", "name": "n", "type": "wren"});
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            conf(v).map(|_| ()).unwrap_err().code
        };
        assert_eq!(
            base(json!({"mtu": "big"})),
            ErrorCode::INVALID_NETWORK_CONFIG
        );
        assert_eq!(base(json!({"mtu": 100})), ErrorCode::INVALID_NETWORK_CONFIG);
        assert_eq!(base(json!({"name": ""})), ErrorCode::INVALID_NETWORK_CONFIG);
        assert_eq!(
            base(json!({"name": "a/b"})),
            ErrorCode::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            base(json!({"agentSocket": "relative.sock"})),
            ErrorCode::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            base(json!({"ipam": {"assign_ipv4": false}})),
            ErrorCode::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            base(json!({"ipam": {"assign_ipv4": "maybe"}})),
            ErrorCode::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            base(json!({"runtimeConfig": {"ips": ["nope"]}})),
            ErrorCode::INVALID_NETWORK_CONFIG
        );
        assert_eq!(
            base(json!({"ipam": {"type": "host-local"}})),
            ErrorCode::UNSUPPORTED_FIELD
        );
        assert_eq!(
            base(json!({"logLevel": "loud"})),
            ErrorCode::UNSUPPORTED_FIELD
        );
    }

    #[test]
    fn syntax_errors_are_decode_failures() {
        assert_eq!(
            NetConf::from_slice(b"{not json").unwrap_err().code,
            ErrorCode::DECODE_FAILURE
        );
        assert_eq!(
            NetConf::from_slice(b"  \n").unwrap_err().code,
            ErrorCode::DECODE_FAILURE
        );
    }

    #[test]
    fn gc_list_prefers_the_spec_key_and_falls_back_to_the_draft_key() {
        let both = conf(json!({
            "cniVersion": "1.1.0", "name": "n", "type": "wren",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(both.gc_attachments().unwrap()[0].container_id, "a");
        let legacy = conf(json!({
            "cniVersion": "1.1.0", "name": "n", "type": "wren",
            "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(legacy.gc_attachments().unwrap()[0].container_id, "b");
    }

    #[test]
    fn round_trips_through_json_for_the_agent() {
        let c = conf(json!({
            "cniVersion": "0.4.0", "name": "n", "type": "wren", "mtu": 1400,
            "prevResult": {"cniVersion": "0.4.0", "ips": []},
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        let back: NetConf = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
