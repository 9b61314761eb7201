//! Every setting of `wren agent`, declared once: its flag and environment variable (clap),
//! its key in the TOML file (serde, the field's name in camelCase) and its type, whose parser
//! checks the value wherever it comes from. Defaults are applied after the layers are merged
//! (`AgentConfig::resolve`).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::ConfigError;
use super::value::{
    AsNumber, BoundedDuration, MarkMask, MaxPaths, Mtu, NodeIpv4, NodeIpv6, NodeName,
};
use crate::cli::{LogFormat, StoreArgs};

/// Something given by several sources in layers, where each setting comes from the highest
/// layer that sets it.
pub trait Layer {
    /// `self` over `lower`: each setting `self` gives, else the one `lower` gives.
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

/// Declares a struct of settings and its [`Layer`] merge, field by field, so that a new
/// setting is written in one place.
macro_rules! layered {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field_vis:vis $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$field_meta])* $field_vis $field: $ty, )*
        }

        impl $crate::config::Layer for $name {
            fn over(self, lower: Self) -> Self {
                Self {
                    $( $field: $crate::config::Layer::over(self.$field, lower.$field), )*
                }
            }
        }
    };
}
pub(crate) use layered;

/// A minute in milliseconds, for the duration ranges below.
const MINUTE_MS: u64 = 60_000;

layered! {
    /// The agent's settings as one source gives them: the command line with the environment
    /// (clap takes a flag over its variable), or the TOML file. Unset is `None`; the sources
    /// are merged with [`Layer::over`].
    #[derive(Debug, Clone, Default, PartialEq, clap::Args, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Settings {
        /// This node's name (default: the hostname).
        #[arg(long, env = "WREN_NODE_NAME", value_name = "NAME")]
        pub node_name: Option<NodeName>,
        /// This node's address with prefix length, e.g. 10.0.0.2/24 (default: autodetected).
        #[arg(long, env = "WREN_NODE_IP", value_name = "ADDRESS/PREFIXLEN")]
        pub node_ip: Option<NodeIpv4>,
        /// This node's IPv6 address with prefix length, e.g. fd00::2/64 (default: none).
        #[arg(long, env = "WREN_NODE_IPV6", value_name = "ADDRESS/PREFIXLEN")]
        pub node_ipv6: Option<NodeIpv6>,
        /// Shell-style pattern of interface names to take the node IP from when the interface
        /// holding the default route has none, e.g. `eth*`.
        #[arg(long, env = "WREN_NODE_IP_INTERFACE", value_name = "PATTERN")]
        pub node_ip_interface: Option<String>,
        /// Accept a node IP that no interface of this host carries (an address translated or
        /// held elsewhere on purpose); without it such an address stops the agent at start.
        #[arg(long, env = "WREN_NODE_IP_NOT_LOCAL", value_name = "BOOL")]
        pub node_ip_not_local: Option<bool>,
        /// AS number of this node (default: the cluster's).
        #[arg(long = "as", env = "WREN_AS", value_name = "AS_NUMBER")]
        pub as_number: Option<AsNumber>,
        /// Mark this node as a route reflector with this cluster id (dotted quad).
        #[arg(long, env = "WREN_ROUTE_REFLECTOR_CLUSTER_ID", value_name = "ID")]
        pub route_reflector_cluster_id: Option<Ipv4Addr>,
        /// TCP port the BGP speaker listens on and connects to (default 179).
        #[arg(long, env = "WREN_BGP_PORT", value_name = "PORT")]
        pub bgp_port: Option<NonZeroU16>,
        /// Path of the local API socket for the CNI plugin.
        #[arg(long, env = "WREN_SOCKET", value_name = "PATH")]
        pub socket: Option<PathBuf>,
        /// Address for /healthz, /readyz and /metrics.
        #[arg(long, env = "WREN_METRICS_ADDR", value_name = "IP:PORT")]
        pub metrics_addr: Option<SocketAddr>,
        /// Log format.
        #[arg(long, env = "WREN_LOG_FORMAT", value_enum)]
        pub log_format: Option<LogFormat>,
        /// How often kernel routes are compared with the desired state, e.g. `10s`, `500ms`
        /// (100ms to 60m).
        #[arg(long, env = "WREN_RECONCILE_INTERVAL", value_name = "DURATION")]
        pub reconcile_interval: Option<BoundedDuration<100, { 60 * MINUTE_MS }>>,
        /// TTL of the liveness lease, e.g. `30s` (3s to 60m).
        #[arg(long, env = "WREN_LIVENESS_TTL", value_name = "DURATION")]
        pub liveness_ttl: Option<BoundedDuration<3_000, { 60 * MINUTE_MS }>>,
        /// How long /readyz waits for BGP End-of-RIB from every peer before calling BGP synced
        /// (1s to 60m).
        #[arg(long, env = "WREN_BGP_SYNC_TIMEOUT", value_name = "DURATION")]
        pub bgp_sync_timeout: Option<BoundedDuration<1_000, { 60 * MINUTE_MS }>>,
        /// Graceful-restart time asked of peers (how long they keep our routes), e.g. `120s`
        /// (1s to 4095s, the capability's 12 bits).
        #[arg(long, env = "WREN_GRACEFUL_RESTART_TIME", value_name = "DURATION")]
        pub graceful_restart_time: Option<BoundedDuration<1_000, 4_095_000>>,
        /// How long a host veth or an allocation of this node that no workload record explains
        /// is left to its runtime before the agent removes it, e.g. `2m` (0s to 60m).
        #[arg(long, env = "WREN_ORPHAN_GRACE_PERIOD", value_name = "DURATION")]
        pub orphan_grace_period: Option<BoundedDuration<0, { 60 * MINUTE_MS }>>,
        /// How often the cluster's leak check and release run (in one agent at a time), e.g.
        /// `5m`; `0s` turns it off on this node (0s to 24h).
        #[arg(long, env = "WREN_LEAK_RELEASE_INTERVAL", value_name = "DURATION")]
        pub leak_release_interval: Option<BoundedDuration<0, { 24 * 60 * MINUTE_MS }>>,
        /// How old an allocation without a workload must be before the automatic release frees
        /// it, e.g. `15m` (0s to 24h).
        #[arg(long, env = "WREN_LEAK_GRACE_PERIOD", value_name = "DURATION")]
        pub leak_grace_period: Option<BoundedDuration<0, { 24 * 60 * MINUTE_MS }>>,
        /// Directory of the agent's own state: the cluster identity it belongs to and its
        /// record of what it holds, from which a wiped datastore is rebuilt.
        #[arg(long, env = "WREN_STATE_DIR", value_name = "PATH")]
        pub state_dir: Option<PathBuf>,
        /// MTU of pod interfaces when the CNI configuration sets none (default: the underlay's,
        /// less the overhead of the encapsulation the pools use).
        #[arg(long, env = "WREN_POD_MTU", value_name = "MTU")]
        pub pod_mtu: Option<Mtu>,
        /// MTU of `wren.vxlan` (default: the underlay's less 50).
        #[arg(long, env = "WREN_VXLAN_MTU", value_name = "MTU")]
        pub vxlan_mtu: Option<Mtu>,
        /// MTU of `wrentunl0` (default: the underlay's less 20).
        #[arg(long, env = "WREN_IPIP_MTU", value_name = "MTU")]
        pub ipip_mtu: Option<Mtu>,
        /// Forward pod-to-pod traffic with the tc BPF fast path when the kernel can (default
        /// true); `false` leaves all of it to the host's IP stack.
        #[arg(long, env = "WREN_FAST_PATH", value_name = "BOOL")]
        pub fast_path: Option<bool>,
        /// How many equal BGP paths to one prefix the node forwards over at once (ECMP, one
        /// multipath kernel route), 1 to 64 (default 8); 1 turns ECMP off.
        #[arg(long, env = "WREN_MAX_PATHS", value_name = "PATHS")]
        pub max_paths: Option<MaxPaths>,
        /// Bits of the connection mark network policy stamps the rules' epoch into, so the
        /// fast path carries connections the rules allowed (default 0xffff0000); one run of
        /// at least 8 contiguous bits, or 0 to keep isolated pods' traffic on the host stack.
        #[arg(long, env = "WREN_POLICY_MARK_MASK", value_name = "MASK")]
        pub policy_mark_mask: Option<MarkMask>,
        /// Datastore. Its keys sit beside the others in the file (`etcdEndpoints`, …); it is
        /// read from the file on its own (`Settings::from_toml`).
        #[command(flatten)]
        #[serde(skip)]
        pub store: StoreArgs,
    }
}

impl Settings {
    /// Reads the text of a configuration file; `path` only names it in errors. Unknown keys,
    /// values of the wrong type and values out of range are one line naming the key and its
    /// line.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut ignored_by_settings = BTreeSet::new();
        let mut settings: Settings = from_toml_ignoring(path, text, &mut ignored_by_settings)?;
        let mut ignored_by_store = BTreeSet::new();
        settings.store = from_toml_ignoring(path, text, &mut ignored_by_store)?;
        match ignored_by_settings.intersection(&ignored_by_store).next() {
            Some(key) => Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                line: line_of_key(text, key),
                key: key.clone(),
            }),
            None => Ok(settings),
        }
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text)
    }
}

/// Deserializes `T` from the file's text, adding to `ignored` each key `T` does not know.
fn from_toml_ignoring<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    ignored: &mut BTreeSet<String>,
) -> Result<T, ConfigError> {
    let line_of = |error: &toml::de::Error| {
        error
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1)
    };
    let one_line = |error: &toml::de::Error| error.message().trim().replace('\n', " ");
    let document = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        line: line_of(&e),
        message: one_line(&e),
    })?;
    let mut note_ignored = |key: serde_ignored::Path| {
        ignored.insert(key.to_string());
    };
    let tracked = serde_ignored::Deserializer::new(document, &mut note_ignored);
    serde_path_to_error::deserialize(tracked).map_err(|e| ConfigError::Value {
        path: path.to_owned(),
        line: line_of(e.inner()),
        key: e.path().to_string(),
        message: one_line(e.inner()),
    })
}

/// The 1-based line where `key` is set (or opens a table), 1 when it cannot be found.
fn line_of_key(text: &str, key: &str) -> usize {
    let quoted = format!("\"{key}\"");
    let table = format!("[{key}]");
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.starts_with(&table)
                || [key, quoted.as_str()].iter().any(|k| {
                    line.strip_prefix(k)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
        })
        .map_or(1, |i| i + 1)
}
