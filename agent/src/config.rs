//! The agent's configuration: command-line flags, then `WREN_*` environment variables, then the
//! TOML file (`/etc/wren/wren.toml` or `--config`), then built-in defaults.
//!
//! Flags and environment variables are merged by clap (each flag names its variable), so this
//! module only layers the file and the defaults underneath, validates everything once at start
//! and autodetects what was left out (node name, node IP). Every problem is one line naming the
//! key and the value, so a bad deployment fails at start-up rather than half-working later.
//!
//! # Keys
//!
//! Every key can be given in the file (camelCase), as a flag (kebab-case) or as `WREN_` plus the
//! key in upper snake case.
//!
//! | file key | flag / env | default | meaning |
//! |---|---|---|---|
//! | `nodeName` | `--node-name` / `WREN_NODE_NAME` | hostname | name of this node in `nodes/` |
//! | `nodeIp` | `--node-ip` / `WREN_NODE_IP` | autodetected | IPv4 address with prefix length, e.g. `10.0.0.2/24`; BGP router id and next hop |
//! | `nodeIpv6` | `--node-ipv6` / `WREN_NODE_IPV6` | none | IPv6 address with prefix length; next hop for IPv6 blocks |
//! | `nodeIpInterface` | `--node-ip-interface` / `WREN_NODE_IP_INTERFACE` | none | shell-style pattern (`*`, `?`) of interfaces to take the node IP from when the default-route interface has none |
//! | `nodeIpNotLocal` | `--node-ip-not-local` / `WREN_NODE_IP_NOT_LOCAL` | `false` | accept a `nodeIp` no local interface carries; otherwise the agent refuses it at start |
//! | `asNumber` | `--as` / `WREN_AS` | the cluster's (`wren bgp config`) | this node's AS number, 1..=4294967295 except 23456 |
//! | `routeReflectorClusterId` | `--route-reflector-cluster-id` / `WREN_ROUTE_REFLECTOR_CLUSTER_ID` | none | makes this node a route reflector with this cluster id |
//! | `bgpPort` | `--bgp-port` / `WREN_BGP_PORT` | 179 | TCP port BGP listens on and connects to |
//! | `socket` | `--socket` / `WREN_SOCKET` | `/run/wren/agent.sock` | local API socket for the CNI plugin (mode 0600) |
//! | `metricsAddr` | `--metrics-addr` / `WREN_METRICS_ADDR` | `127.0.0.1:9099` | address of `/healthz`, `/readyz`, `/metrics` |
//! | `logFormat` | `--log-format` / `WREN_LOG_FORMAT` | `text` | `text` or `json` |
//! | `etcdEndpoints` | `--etcd-endpoints` / `WREN_ETCD_ENDPOINTS` | `http://127.0.0.1:2379` | etcd URLs (`http://` or `https://`), a list in the file, comma separated elsewhere |
//! | `etcdCa`, `etcdCert`, `etcdKey` | `--etcd-ca` … / `WREN_ETCD_CA` … | none | PEM files for etcd TLS |
//! | `etcdPrefix` | `--etcd-prefix` / `WREN_ETCD_PREFIX` | `/wren/v1/` | key prefix of wren's data |
//! | `reconcileInterval` | `--reconcile-interval` / `WREN_RECONCILE_INTERVAL` | `10s` | period of the kernel route reconcile (it also runs on every change); 100ms to 60m |
//! | `livenessTtl` | `--liveness-ttl` / `WREN_LIVENESS_TTL` | `30s` | TTL of the lease behind `liveness/<node>`; 3s to 60m |
//! | `bgpSyncTimeout` | `--bgp-sync-timeout` / `WREN_BGP_SYNC_TIMEOUT` | `30s` | `/readyz` calls BGP synced after End-of-RIB from every peer or after this long; 1s to 60m |
//! | `gracefulRestartTime` | `--graceful-restart-time` / `WREN_GRACEFUL_RESTART_TIME` | `120s` | how long peers keep our routes while the agent restarts; 1s to 4095s |
//! | `orphanGracePeriod` | `--orphan-grace-period` / `WREN_ORPHAN_GRACE_PERIOD` | `2m` | a host veth or an allocation of this node that no workload record explains (an ADD cut off by a crash) is removed once it has been seen that long, which leaves the runtime time to retry or DEL; 0s to 60m |
//! | `leakReleaseInterval` | `--leak-release-interval` / `WREN_LEAK_RELEASE_INTERVAL` | `5m` | period of the automatic leak check and release, run by one agent of the cluster at a time; `0s` turns it off on this node; 0s to 24h |
//! | `leakGracePeriod` | `--leak-grace-period` / `WREN_LEAK_GRACE_PERIOD` | `15m` | an allocation without a workload is released automatically only once it is this old; 0s to 24h |
//! | `stateDir` | `--state-dir` / `WREN_STATE_DIR` | the socket's path with `.state` for `.sock` (`/run/wren/agent.state`) | the agent's own state: the cluster identity it belongs to and its record of what it holds |
//! | `podMtu` | `--pod-mtu` / `WREN_POD_MTU` | underlay MTU less the largest overhead of the encapsulations in use | MTU of pod interfaces when the CNI configuration sets no `mtu` |
//! | `vxlanMtu` | `--vxlan-mtu` / `WREN_VXLAN_MTU` | underlay MTU − 50 | MTU of `wren.vxlan` |
//! | `ipipMtu` | `--ipip-mtu` / `WREN_IPIP_MTU` | underlay MTU − 20 | MTU of `wrentunl0` |
//! | `fastPath` | `--fast-path` / `WREN_FAST_PATH` | `true` | forward pod-to-pod traffic with the tc BPF fast path (`docs/ARCHITECTURE.md`); `false` leaves all of it to the host's IP stack |
//! | `maxPaths` | `--max-paths` / `WREN_MAX_PATHS` | `8` | how many equal BGP paths to one prefix are installed as one multipath route (ECMP), 1 to 64; 1 turns ECMP off |
//!
//! The underlay is the interface holding the node IP. Pods and tunnels must agree: a pod MTU
//! above the tunnel's makes large packets to other nodes fail.
//!
//! Durations are a whole number followed by `ms`, `s` or `m`; a bare number (or a TOML integer)
//! is seconds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::cli::{AgentArgs, DEFAULT_ETCD_ENDPOINTS, DEFAULT_SOCKET, LogFormat, StoreArgs};
use crate::dataplane::mtu::MtuOverrides;

/// Equal paths to a prefix forwarded over at once unless configured (as BIRD's `merge
/// paths` limit and FRR's usual `maximum-paths` builds allow many, 8 covers a rack's uplinks).
pub const DEFAULT_MAX_PATHS: usize = 8;

/// What `maxPaths` may be: the kernel takes more next hops, but no fabric spreads one
/// prefix over more than this from one node.
pub const MAX_PATHS_RANGE: std::ops::RangeInclusive<usize> = 1..=64;

/// The configuration file read when `--config` is not given (and only if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wren/wren.toml";
/// Default address of the health and metrics server.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9099";
/// Default BGP port.
pub const DEFAULT_BGP_PORT: u16 = 179;
/// Default period of the route reconcile loop.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// Default TTL of the liveness lease.
pub const DEFAULT_LIVENESS_TTL: Duration = Duration::from_secs(30);
/// Default time /readyz waits for BGP End-of-RIB.
pub const DEFAULT_BGP_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Default graceful-restart time asked of peers.
pub const DEFAULT_GRACEFUL_RESTART_TIME: Duration = Duration::from_secs(120);
/// Default time an orphaned veth or allocation is left to its runtime.
pub const DEFAULT_ORPHAN_GRACE_PERIOD: Duration = Duration::from_secs(120);
/// Default period of the automatic leak release.
pub const DEFAULT_LEAK_RELEASE_INTERVAL: Duration = Duration::from_secs(300);
/// Default age below which the automatic leak release leaves an allocation alone (Calico's).
pub const DEFAULT_LEAK_GRACE_PERIOD: Duration = Duration::from_secs(900);
/// AS_TRANS (RFC 6793): a placeholder in 2-octet fields, never a real AS.
pub const AS_TRANS: u32 = 23456;

/// Why the configuration is unusable. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("config file {path}, line {line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong (names the key).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        /// The key, as written in the file.
        key: &'static str,
        /// The offending value.
        value: String,
        /// What a valid value looks like.
        reason: String,
    },
    /// No node IP was given and none could be found.
    #[error(
        "cannot autodetect the node IP: {0}; set nodeIp (--node-ip) or nodeIpInterface (--node-ip-interface)"
    )]
    NodeIpNotFound(String),
    /// No node name was given and the hostname cannot be read.
    #[error("cannot read the hostname ({0}); set nodeName (--node-name)")]
    Hostname(String),
}

/// A duration as written in the file: an integer number of seconds or a string like `500ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 10 (seconds), \"10s\" or \"500ms\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for DurationText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The TOML file, key by key. Unknown keys are an error so that a typo is not silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ipv6: Option<String>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip_interface: Option<String>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip_not_local: Option<bool>,
    /// See the module table. Wider than `u32` so that an out-of-range value gets our message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_number: Option<i64>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<String>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp_port: Option<i64>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_endpoints: Option<Vec<String>>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_prefix: Option<String>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile_interval: Option<DurationText>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_ttl: Option<DurationText>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp_sync_timeout: Option<DurationText>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graceful_restart_time: Option<DurationText>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphan_grace_period: Option<DurationText>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_release_interval: Option<DurationText>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_grace_period: Option<DurationText>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_mtu: Option<i64>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan_mtu: Option<i64>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipip_mtu: Option<i64>,
    /// See the module table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<bool>,
    /// See the module table. Wider than the flag so that an out-of-range value gets our
    /// message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_paths: Option<i64>,
}

impl FileConfig {
    /// Parses the text of a configuration file; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                message: e.message().trim().replace('\n', " "),
            }
        })
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Reads `--config` when given (it must exist), else the default file when it exists.
    pub fn load_for(args: &AgentArgs) -> Result<Self, ConfigError> {
        match &args.config {
            Some(path) => Self::load(path),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::load(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Self::default()),
        }
    }
}

/// What the agent needs to know about the machine to fill in defaults; a trait so that the
/// autodetection rules are tested without depending on the test machine's interfaces.
pub trait HostFacts {
    /// The hostname (of this UTS namespace).
    fn hostname(&self) -> std::io::Result<String>;
    /// The interface holding the IPv4 default route, if any.
    fn default_route_interface(&self) -> Option<String>;
    /// Every IPv4 address with its prefix length, by interface, in the kernel's order.
    fn ipv4_addresses(&self) -> Vec<(String, Ipv4Net)>;
}

/// The real machine (the network namespace the agent runs in).
pub struct SystemHost;

impl HostFacts for SystemHost {
    fn hostname(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_owned())
    }

    fn default_route_interface(&self) -> Option<String> {
        // /proc/net/route follows the reader's network namespace, so no netlink is needed here.
        let table = std::fs::read_to_string("/proc/net/route").ok()?;
        default_route_interface_from_proc(&table)
    }

    fn ipv4_addresses(&self) -> Vec<(String, Ipv4Net)> {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        addrs
            .filter_map(|ifa| {
                let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
                let mask = ifa.netmask.as_ref()?.as_sockaddr_in()?.ip();
                let net = Ipv4Net::new(ip, u32::from(mask).count_ones() as u8).ok()?;
                Some((ifa.interface_name, net))
            })
            .collect()
    }
}

/// Picks the interface of the lowest-metric IPv4 default route from `/proc/net/route`.
fn default_route_interface_from_proc(table: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dst, flags, metric, mask) =
                (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default = *dst == "00000000" && *mask == "00000000" && flags & RTF_UP != 0;
            default.then(|| {
                (
                    metric.parse::<u32>().unwrap_or(u32::MAX),
                    (*iface).to_owned(),
                )
            })
        })
        .min()
        .map(|(_, iface)| iface)
}

/// Whether `name` matches a shell-style pattern with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// An address usable as a node IP: not loopback, link-local or unspecified.
fn usable_node_ip(net: &Ipv4Net) -> bool {
    let ip = net.addr();
    !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified())
}

/// Finds the node IP: the first usable address on the default-route interface, else on the
/// first interface matching `pattern`.
pub fn autodetect_node_ip(
    host: &dyn HostFacts,
    pattern: Option<&str>,
) -> Result<Ipv4Net, ConfigError> {
    let addrs = host.ipv4_addresses();
    let default_if = host.default_route_interface();
    if let Some(iface) = &default_if
        && let Some((_, net)) = addrs
            .iter()
            .find(|(name, net)| name == iface && usable_node_ip(net))
    {
        return Ok(*net);
    }
    if let Some(pattern) = pattern {
        if let Some((_, net)) = addrs
            .iter()
            .find(|(name, net)| glob_match(pattern, name) && usable_node_ip(net))
        {
            return Ok(*net);
        }
        return Err(ConfigError::NodeIpNotFound(format!(
            "no interface matching {pattern:?} has a usable IPv4 address"
        )));
    }
    Err(ConfigError::NodeIpNotFound(match default_if {
        Some(iface) => format!("the default-route interface {iface} has no usable IPv4 address"),
        None => "there is no default route".to_owned(),
    }))
}

/// Parses an AS number: 1..=4294967295, and not AS_TRANS (23456).
pub fn parse_as_number(value: &str) -> Result<u32, ConfigError> {
    let parsed = value.trim().parse::<i128>().ok();
    check_as_number(parsed, value)
}

fn check_as_number(parsed: Option<i128>, value: &str) -> Result<u32, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key: "asNumber",
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    match parsed {
        None => Err(invalid("not a number")),
        Some(n) if !(1..=i128::from(u32::MAX)).contains(&n) => {
            Err(invalid("out of range 1..=4294967295"))
        }
        Some(n) if n == i128::from(AS_TRANS) => {
            Err(invalid("23456 is AS_TRANS, reserved (RFC 6793)"))
        }
        Some(n) => Ok(n as u32),
    }
}

/// Parses a duration: `<n>ms`, `<n>s`, `<n>m` or a bare number of seconds; zero is refused.
pub fn parse_duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let invalid = || ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: "expected a positive duration such as 10s, 500ms or 2m".to_owned(),
    };
    let v = value.trim();
    let (digits, scale_ms) = if let Some(d) = v.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = v.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = v.strip_suffix('m') {
        (d, 60_000)
    } else {
        (v, 1000)
    };
    let n: u64 = digits.trim().parse().map_err(|_| invalid())?;
    let ms = n
        .checked_mul(scale_ms)
        .filter(|ms| *ms > 0)
        .ok_or_else(invalid)?;
    Ok(Duration::from_millis(ms))
}

/// Checks one etcd endpoint: `http://HOST:PORT` or `https://HOST:PORT`.
pub fn validate_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key: "etcdEndpoints",
        value: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|_| invalid("not a URL; expected http://HOST:PORT or https://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("expected an http:// or https:// URL")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
    if authority.host().is_empty() {
        return Err(invalid("missing host"));
    }
    if authority.port_u16().is_none() {
        return Err(invalid("missing port (etcd listens on 2379 by default)"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("an endpoint has no path"));
    }
    Ok(())
}

/// Checks a node or peer name: it becomes an etcd key segment and a BGP peer description.
pub fn validate_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            value: name.to_owned(),
            reason: "expected 1 to 253 letters, digits, '-', '.' or '_'".to_owned(),
        })
    }
}

/// Parses `ADDRESS/PREFIXLEN`, refusing a bare address (the prefix length tells which nodes
/// share a subnet) and addresses no peer could reach.
fn parse_node_net(key: &'static str, value: &str) -> Result<IpNet, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.parse::<IpAddr>().is_ok() {
        return Err(invalid(
            "missing prefix length; expected ADDRESS/PREFIXLEN such as 10.0.0.2/24",
        ));
    }
    let net: IpNet = value
        .parse()
        .map_err(|_| invalid("expected ADDRESS/PREFIXLEN such as 10.0.0.2/24"))?;
    let ip = net.addr();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return Err(invalid("not a unicast address other nodes can reach"));
    }
    Ok(net)
}

/// The effective, validated configuration of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's IPv4 address with prefix length (router id, IPv4 next hop).
    pub node_ip: Ipv4Net,
    /// This node's IPv6 address with prefix length (IPv6 next hop).
    pub node_ipv6: Option<Ipv6Net>,
    /// Interface pattern used for autodetection, kept to print it back.
    pub node_ip_interface: Option<String>,
    /// The node IP may be one no local interface carries.
    pub node_ip_not_local: bool,
    /// Take the node name over from a live agent that holds it (`--take-over`, never from a
    /// file: it is a one-time decision).
    pub take_over: bool,
    /// This node's AS; the cluster's when `None`.
    pub as_number: Option<u32>,
    /// Set when this node is a route reflector.
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// BGP port.
    pub bgp_port: u16,
    /// Local API socket.
    pub socket: PathBuf,
    /// Health and metrics address.
    pub metrics_addr: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// How to reach etcd, every field resolved (endpoints always set).
    pub store: StoreArgs,
    /// Period of the route reconcile.
    pub reconcile_interval: Duration,
    /// TTL of the liveness lease.
    pub liveness_ttl: Duration,
    /// How long BGP may take to sync before /readyz stops waiting for it.
    pub bgp_sync_timeout: Duration,
    /// Graceful-restart time asked of peers.
    pub graceful_restart_time: Duration,
    /// MTUs fixed by configuration instead of derived from the underlay.
    pub mtu: MtuOverrides,
    /// Whether pod-to-pod traffic takes the BPF fast path (when the kernel can run it).
    pub fast_path: bool,
    /// How long an orphaned host veth or allocation of this node is left to its runtime.
    pub orphan_grace_period: Duration,
    /// Period of the automatic leak release; zero turns it off on this node.
    pub leak_release_interval: Duration,
    /// Age below which the automatic leak release leaves an allocation alone.
    pub leak_grace_period: Duration,
    /// The agent's own state directory.
    pub state_dir: PathBuf,
    /// How many equal BGP paths to a prefix one kernel route spreads over (1: no ECMP).
    pub max_paths: usize,
}

/// An MTU from flag-or-environment or file: 68 (the IPv4 minimum) to 65535.
fn mtu_or(
    key: &'static str,
    arg: Option<u32>,
    file: Option<i64>,
) -> Result<Option<u32>, ConfigError> {
    let Some(value) = arg.map(i64::from).or(file) else {
        return Ok(None);
    };
    u32::try_from(value)
        .ok()
        .filter(|m| (68..=65535).contains(m))
        .map(Some)
        .ok_or_else(|| ConfigError::Invalid {
            key,
            value: value.to_string(),
            reason: "expected an MTU from 68 to 65535".to_owned(),
        })
}

/// The first of flag-or-environment (already merged by clap) and file value.
fn first<T: Clone>(arg: &Option<T>, file: &Option<T>) -> Option<T> {
    arg.clone().or_else(|| file.clone())
}

/// The range a duration setting must fall in, checked at start so that a value nothing
/// downstream accepts (etcd refuses a lease TTL above its limit; the graceful-restart
/// capability carries 12 bits) stops the agent with one line instead of a retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    /// Smallest accepted value.
    pub min: Duration,
    /// Largest accepted value.
    pub max: Duration,
}

impl DurationRange {
    const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }
}

/// `reconcileInterval`: 100ms to 60m.
pub const RECONCILE_INTERVAL_RANGE: DurationRange =
    DurationRange::new(Duration::from_millis(100), Duration::from_secs(3600));
/// `livenessTtl`: 3s (a lease renewed every third of it needs whole seconds) to 60m.
pub const LIVENESS_TTL_RANGE: DurationRange =
    DurationRange::new(Duration::from_secs(3), Duration::from_secs(3600));
/// `bgpSyncTimeout`: 1s to 60m.
pub const BGP_SYNC_TIMEOUT_RANGE: DurationRange =
    DurationRange::new(Duration::from_secs(1), Duration::from_secs(3600));
/// `gracefulRestartTime`: 1s to 4095s, the capability's 12-bit field.
pub const GRACEFUL_RESTART_TIME_RANGE: DurationRange =
    DurationRange::new(Duration::from_secs(1), Duration::from_secs(4095));

/// `orphanGracePeriod`: 0s to 60m.
pub const ORPHAN_GRACE_PERIOD_RANGE: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(3600));
/// `leakReleaseInterval` and `leakGracePeriod`: 0s to 24h.
pub const LEAK_RANGE: DurationRange =
    DurationRange::new(Duration::ZERO, Duration::from_secs(86_400));

/// The state directory when none is configured: beside the socket, named after it
/// (`/run/wren/agent.sock` → `/run/wren/agent.state`), so agents with their own sockets keep
/// their own state.
pub fn default_state_dir(socket: &Path) -> PathBuf {
    let stem = socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "agent".to_owned());
    socket.with_file_name(format!("{stem}.state"))
}

/// Writes a duration the way the configuration accepts it back (`90s`, `250ms`, `2m`).
fn duration_text(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", d.as_secs())
    }
}

fn duration_or(
    key: &'static str,
    arg: &Option<String>,
    file: &Option<DurationText>,
    default: Duration,
    range: DurationRange,
) -> Result<Duration, ConfigError> {
    let Some(text) = arg.clone().or_else(|| file.as_ref().map(|d| d.0.clone())) else {
        return Ok(default);
    };
    // Zero is a value only where the range allows it (it turns a periodic task off).
    let zero = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .trim()
        .parse::<u64>()
        .is_ok_and(|n| n == 0);
    if zero && range.min.is_zero() {
        return Ok(Duration::ZERO);
    }
    let value = parse_duration(key, &text)?;
    if value < range.min || value > range.max {
        return Err(ConfigError::Invalid {
            key,
            value: text,
            reason: format!(
                "out of range {} to {}",
                duration_text(range.min),
                duration_text(range.max)
            ),
        });
    }
    Ok(value)
}

impl AgentConfig {
    /// Layers flags-and-environment (`args`) over the file over defaults, validates, and
    /// autodetects the node name and IP from `host` when they are not given.
    pub fn resolve(
        args: &AgentArgs,
        file: &FileConfig,
        host: &dyn HostFacts,
    ) -> Result<Self, ConfigError> {
        let node_name = match first(&args.node_name, &file.node_name) {
            Some(name) => name,
            None => host
                .hostname()
                .map_err(|e| ConfigError::Hostname(e.to_string()))?,
        };
        validate_name("nodeName", &node_name)?;

        let as_number = match (args.as_number, file.as_number) {
            (Some(asn), _) => Some(check_as_number(Some(i128::from(asn)), &asn.to_string())?),
            (None, Some(asn)) => Some(check_as_number(Some(i128::from(asn)), &asn.to_string())?),
            (None, None) => None,
        };

        let node_ip_interface = first(&args.node_ip_interface, &file.node_ip_interface);
        let node_ip = match first(&args.node_ip, &file.node_ip) {
            Some(text) => match parse_node_net("nodeIp", &text)? {
                IpNet::V4(net) => net,
                IpNet::V6(_) => {
                    return Err(ConfigError::Invalid {
                        key: "nodeIp",
                        value: text,
                        reason:
                            "must be IPv4 (it is also the BGP router id); give IPv6 as nodeIpv6"
                                .to_owned(),
                    });
                }
            },
            None => autodetect_node_ip(host, node_ip_interface.as_deref())?,
        };
        let node_ipv6 = match first(&args.node_ipv6, &file.node_ipv6) {
            Some(text) => match parse_node_net("nodeIpv6", &text)? {
                IpNet::V6(net) => Some(net),
                IpNet::V4(_) => {
                    return Err(ConfigError::Invalid {
                        key: "nodeIpv6",
                        value: text,
                        reason: "must be an IPv6 address".to_owned(),
                    });
                }
            },
            None => None,
        };

        let route_reflector_cluster_id = match first(
            &args.route_reflector_cluster_id,
            &file.route_reflector_cluster_id,
        ) {
            Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| ConfigError::Invalid {
                key: "routeReflectorClusterId",
                value: text.clone(),
                reason: "expected a dotted quad such as 1.0.0.1".to_owned(),
            })?),
            None => None,
        };

        let bgp_port = match (args.bgp_port, file.bgp_port) {
            (Some(port), _) => i64::from(port),
            (None, Some(port)) => port,
            (None, None) => i64::from(DEFAULT_BGP_PORT),
        };
        let bgp_port = u16::try_from(bgp_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| ConfigError::Invalid {
                key: "bgpPort",
                value: bgp_port.to_string(),
                reason: "expected a TCP port 1..=65535".to_owned(),
            })?;

        let metrics_text = first(&args.metrics_addr, &file.metrics_addr)
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.into());
        let metrics_addr =
            metrics_text
                .parse::<SocketAddr>()
                .map_err(|_| ConfigError::Invalid {
                    key: "metricsAddr",
                    value: metrics_text.clone(),
                    reason: "expected IP:PORT such as 127.0.0.1:9099".to_owned(),
                })?;

        let endpoints = first(&args.store.etcd_endpoints, &file.etcd_endpoints)
            .unwrap_or_else(|| vec![DEFAULT_ETCD_ENDPOINTS.to_owned()]);
        if endpoints.is_empty() {
            return Err(ConfigError::Invalid {
                key: "etcdEndpoints",
                value: String::new(),
                reason: "at least one endpoint is needed".to_owned(),
            });
        }
        for endpoint in &endpoints {
            validate_endpoint(endpoint)?;
        }
        let store = StoreArgs {
            etcd_endpoints: Some(endpoints),
            etcd_ca: first(&args.store.etcd_ca, &file.etcd_ca),
            etcd_cert: first(&args.store.etcd_cert, &file.etcd_cert),
            etcd_key: first(&args.store.etcd_key, &file.etcd_key),
            etcd_prefix: first(&args.store.etcd_prefix, &file.etcd_prefix),
        };

        let socket =
            first(&args.socket, &file.socket).unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if socket.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "socket",
                value: String::new(),
                reason: "expected a path".to_owned(),
            });
        }

        let max_paths = args
            .max_paths
            .map(i64::from)
            .or(file.max_paths)
            .unwrap_or(DEFAULT_MAX_PATHS as i64);
        let max_paths = usize::try_from(max_paths)
            .ok()
            .filter(|n| MAX_PATHS_RANGE.contains(n))
            .ok_or_else(|| ConfigError::Invalid {
                key: "maxPaths",
                value: max_paths.to_string(),
                reason: format!(
                    "expected {} to {} (1 turns ECMP off)",
                    MAX_PATHS_RANGE.start(),
                    MAX_PATHS_RANGE.end()
                ),
            })?;

        let graceful_restart_time = duration_or(
            "gracefulRestartTime",
            &args.graceful_restart_time,
            &file.graceful_restart_time,
            DEFAULT_GRACEFUL_RESTART_TIME,
            GRACEFUL_RESTART_TIME_RANGE,
        )?;

        Ok(Self {
            node_name,
            node_ip,
            node_ipv6,
            node_ip_interface,
            node_ip_not_local: args
                .node_ip_not_local
                .or(file.node_ip_not_local)
                .unwrap_or(false),
            take_over: args.take_over,
            as_number,
            route_reflector_cluster_id,
            bgp_port,
            metrics_addr,
            log_format: first(&args.log_format, &file.log_format).unwrap_or(LogFormat::Text),
            store,
            reconcile_interval: duration_or(
                "reconcileInterval",
                &args.reconcile_interval,
                &file.reconcile_interval,
                DEFAULT_RECONCILE_INTERVAL,
                RECONCILE_INTERVAL_RANGE,
            )?,
            liveness_ttl: duration_or(
                "livenessTtl",
                &args.liveness_ttl,
                &file.liveness_ttl,
                DEFAULT_LIVENESS_TTL,
                LIVENESS_TTL_RANGE,
            )?,
            bgp_sync_timeout: duration_or(
                "bgpSyncTimeout",
                &args.bgp_sync_timeout,
                &file.bgp_sync_timeout,
                DEFAULT_BGP_SYNC_TIMEOUT,
                BGP_SYNC_TIMEOUT_RANGE,
            )?,
            graceful_restart_time,
            mtu: MtuOverrides {
                pod: mtu_or("podMtu", args.pod_mtu, file.pod_mtu)?,
                vxlan: mtu_or("vxlanMtu", args.vxlan_mtu, file.vxlan_mtu)?,
                ipip: mtu_or("ipipMtu", args.ipip_mtu, file.ipip_mtu)?,
            },
            fast_path: args.fast_path.or(file.fast_path).unwrap_or(true),
            orphan_grace_period: duration_or(
                "orphanGracePeriod",
                &args.orphan_grace_period,
                &file.orphan_grace_period,
                DEFAULT_ORPHAN_GRACE_PERIOD,
                ORPHAN_GRACE_PERIOD_RANGE,
            )?,
            leak_release_interval: duration_or(
                "leakReleaseInterval",
                &args.leak_release_interval,
                &file.leak_release_interval,
                DEFAULT_LEAK_RELEASE_INTERVAL,
                LEAK_RANGE,
            )?,
            leak_grace_period: duration_or(
                "leakGracePeriod",
                &args.leak_grace_period,
                &file.leak_grace_period,
                DEFAULT_LEAK_GRACE_PERIOD,
                LEAK_RANGE,
            )?,
            state_dir: first(&args.state_dir, &file.state_dir)
                .unwrap_or_else(|| default_state_dir(&socket)),
            socket,
            max_paths,
        })
    }

    /// Refuses a node IP that no interface of `host` carries, unless `nodeIpNotLocal` says
    /// that is on purpose: every peer would otherwise keep a session to an address nobody
    /// answers on.
    pub fn check_node_ip_local(&self, host: &dyn HostFacts) -> Result<(), ConfigError> {
        let address = self.node_ip.addr();
        if self.node_ip_not_local
            || host
                .ipv4_addresses()
                .iter()
                .any(|(_, net)| net.addr() == address)
        {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            key: "nodeIp",
            value: self.node_ip.to_string(),
            reason: format!(
                "no interface of this host carries {address}; give one of its addresses, or set \
                 nodeIpNotLocal (--node-ip-not-local true) if that is on purpose"
            ),
        })
    }

    /// Reads the file named by `args` (or the default one) and resolves against this machine.
    pub fn load(args: &AgentArgs) -> Result<Self, ConfigError> {
        let file = FileConfig::load_for(args)?;
        Self::resolve(args, &file, &SystemHost)
    }

    /// The effective configuration as a file would say it (for `wren agent --print-config`).
    pub fn to_file(&self) -> FileConfig {
        let ms = |d: Duration| DurationText(duration_text(d));
        FileConfig {
            node_name: Some(self.node_name.clone()),
            node_ip: Some(self.node_ip.to_string()),
            node_ipv6: self.node_ipv6.map(|n| n.to_string()),
            node_ip_interface: self.node_ip_interface.clone(),
            node_ip_not_local: Some(self.node_ip_not_local),
            as_number: self.as_number.map(i64::from),
            route_reflector_cluster_id: self.route_reflector_cluster_id.map(|id| id.to_string()),
            bgp_port: Some(i64::from(self.bgp_port)),
            socket: Some(self.socket.clone()),
            metrics_addr: Some(self.metrics_addr.to_string()),
            log_format: Some(self.log_format),
            etcd_endpoints: self.store.etcd_endpoints.clone(),
            etcd_ca: self.store.etcd_ca.clone(),
            etcd_cert: self.store.etcd_cert.clone(),
            etcd_key: self.store.etcd_key.clone(),
            etcd_prefix: self.store.etcd_prefix.clone(),
            reconcile_interval: Some(ms(self.reconcile_interval)),
            liveness_ttl: Some(ms(self.liveness_ttl)),
            bgp_sync_timeout: Some(ms(self.bgp_sync_timeout)),
            graceful_restart_time: Some(ms(self.graceful_restart_time)),
            pod_mtu: self.mtu.pod.map(i64::from),
            vxlan_mtu: self.mtu.vxlan.map(i64::from),
            ipip_mtu: self.mtu.ipip.map(i64::from),
            fast_path: Some(self.fast_path),
            orphan_grace_period: Some(ms(self.orphan_grace_period)),
            leak_release_interval: Some(ms(self.leak_release_interval)),
            leak_grace_period: Some(ms(self.leak_grace_period)),
            state_dir: Some(self.state_dir.clone()),
            max_paths: Some(self.max_paths as i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    struct FakeHost {
        hostname: &'static str,
        default_if: Option<&'static str>,
        addrs: Vec<(&'static str, &'static str)>,
    }

    impl HostFacts for FakeHost {
        fn hostname(&self) -> std::io::Result<String> {
            Ok(self.hostname.to_owned())
        }
        fn default_route_interface(&self) -> Option<String> {
            self.default_if.map(str::to_owned)
        }
        fn ipv4_addresses(&self) -> Vec<(String, Ipv4Net)> {
            self.addrs
                .iter()
                .map(|(name, net)| ((*name).to_owned(), net.parse().unwrap()))
                .collect()
        }
    }

    fn host() -> FakeHost {
        FakeHost {
            hostname: "host-a",
            default_if: Some("eth0"),
            addrs: vec![
                ("lo", "127.0.0.1/8"),
                ("eth1", "192.0.2.7/24"),
                ("eth0", "198.51.100.5/26"),
            ],
        }
    }

    /// Agent arguments as clap parses them; the environment the test runs in sets no
    /// `WREN_*` variable, so these are the flags alone.
    fn args(flags: &[&str]) -> AgentArgs {
        let mut argv = vec!["wren", "agent"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Agent(a) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(Path::new("wren.toml"), text).unwrap()
    }

    #[test]
    fn defaults_fill_what_nothing_sets() {
        let c = AgentConfig::resolve(&args(&[]), &FileConfig::default(), &host()).unwrap();
        assert_eq!(c.node_name, "host-a");
        assert_eq!(c.node_ip.to_string(), "198.51.100.5/26");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert_eq!(
            c.store.etcd_endpoints,
            Some(vec![DEFAULT_ETCD_ENDPOINTS.to_owned()])
        );
        assert_eq!(c.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
        assert_eq!(c.bgp_port, 179);
        assert_eq!(c.as_number, None);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let f = file(
            r#"
            nodeName = "from-file"
            nodeIp = "10.1.0.9/16"
            asNumber = 65001
            metricsAddr = "127.0.0.1:9300"
            etcdEndpoints = ["http://10.9.9.9:2379"]
            reconcileInterval = 3
            logFormat = "json"
            "#,
        );
        let c = AgentConfig::resolve(
            &args(&[
                "--node-name",
                "from-flag",
                "--as",
                "65002",
                "--reconcile-interval",
                "750ms",
            ]),
            &f,
            &host(),
        )
        .unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.as_number, Some(65002));
        assert_eq!(c.reconcile_interval, Duration::from_millis(750));
        // Not given as flags: the file's values.
        assert_eq!(c.node_ip.to_string(), "10.1.0.9/16");
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9300");
        assert_eq!(
            c.store.etcd_endpoints,
            Some(vec!["http://10.9.9.9:2379".to_owned()])
        );
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn unknown_file_key_is_one_line_naming_it() {
        let err = FileConfig::parse(
            Path::new("/etc/wren/wren.toml"),
            "nodeName = \"a\"\nnodeIP = \"10.0.0.1/24\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nodeIP"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn as_numbers_outside_the_range_are_refused() {
        for bad in ["0", "23456", "4294967296", "-1", "x"] {
            let err = parse_as_number(bad).unwrap_err().to_string();
            assert!(err.contains("asNumber"), "{err}");
        }
        assert_eq!(parse_as_number("4294967295").unwrap(), u32::MAX);
        assert_eq!(parse_as_number("1").unwrap(), 1);
        let f = file("asNumber = 4294967296");
        let err = AgentConfig::resolve(&args(&[]), &f, &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        assert!(Cli::try_parse_from(["wren", "agent", "--as", "23456"]).is_err());
        assert!(
            Cli::try_parse_from([
                "wren",
                "peer",
                "add",
                "p",
                "--peer-ip",
                "10.0.0.1",
                "--as",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn malformed_endpoints_are_refused() {
        for bad in [
            "127.0.0.1:2379",
            "ftp://h:1",
            "http://:2379",
            "http://h",
            "http://h:2379/v3/x",
            "not a url",
        ] {
            let err = AgentConfig::resolve(
                &args(&["--etcd-endpoints", bad]),
                &FileConfig::default(),
                &host(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("etcdEndpoints"), "{bad}: {err}");
        }
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd-0.example:2379",
            "http://[::1]:2379/",
        ] {
            validate_endpoint(good).unwrap();
        }
    }

    #[test]
    fn bad_node_ips_are_refused() {
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "banana",
            "127.0.0.1/8",
            "fd00::1/64",
        ] {
            let err =
                AgentConfig::resolve(&args(&["--node-ip", bad]), &FileConfig::default(), &host())
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("nodeIp"), "{bad}: {err}");
        }
    }

    #[test]
    fn autodetect_prefers_the_default_route_interface_then_the_pattern() {
        let h = host();
        assert_eq!(
            autodetect_node_ip(&h, Some("eth1")).unwrap().to_string(),
            "198.51.100.5/26"
        );
        let no_default = FakeHost {
            default_if: None,
            ..host()
        };
        assert_eq!(
            autodetect_node_ip(&no_default, Some("eth?"))
                .unwrap()
                .to_string(),
            "192.0.2.7/24"
        );
        let err = autodetect_node_ip(&no_default, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no default route") && err.contains("nodeIpInterface"),
            "{err}"
        );
        let err = autodetect_node_ip(&no_default, Some("wlan*"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("wlan*"), "{err}");
        let only_lo = FakeHost {
            default_if: Some("lo"),
            addrs: vec![("lo", "127.0.0.1/8")],
            ..host()
        };
        assert!(autodetect_node_ip(&only_lo, Some("*")).is_err());
    }

    #[test]
    fn default_route_interface_comes_from_the_lowest_metric_default() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t00000000\t0102000A\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                     eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            default_route_interface_from_proc(table).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            default_route_interface_from_proc("Iface\tDestination\n"),
            None
        );
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("eth*", "eth0"));
        assert!(glob_match("eth*", "eth"));
        assert!(!glob_match("en?s*", "enp0s3"));
        assert!(glob_match("en?0s*", "enp0s3"));
        assert!(!glob_match("eth*", "veth0"));
        assert!(glob_match("*", "anything"));
    }

    #[test]
    fn max_paths_defaults_to_eight_and_is_checked() {
        let resolve = |flags: &[&str], text: &str| {
            AgentConfig::resolve(&args(flags), &file(text), &host()).map(|c| c.max_paths)
        };
        assert_eq!(resolve(&[], "").unwrap(), DEFAULT_MAX_PATHS);
        assert_eq!(resolve(&[], "maxPaths = 1\n").unwrap(), 1);
        assert_eq!(resolve(&["--max-paths", "4"], "maxPaths = 1\n").unwrap(), 4);
        for (flags, text) in [
            (&["--max-paths", "0"][..], ""),
            (&[][..], "maxPaths = 65\n"),
            (&[][..], "maxPaths = -1\n"),
        ] {
            let error = resolve(flags, text).unwrap_err().to_string();
            assert!(error.contains("maxPaths"), "{error}");
        }
        let c = AgentConfig::resolve(&args(&["--max-paths", "2"]), &file(""), &host()).unwrap();
        assert_eq!(c.to_file().max_paths, Some(2));
    }

    #[test]
    fn the_fast_path_is_on_unless_turned_off() {
        let resolve = |flags: &[&str], text: &str| {
            AgentConfig::resolve(&args(flags), &file(text), &host())
                .unwrap()
                .fast_path
        };
        assert!(resolve(&[], ""));
        assert!(!resolve(&[], "fastPath = false\n"));
        assert!(resolve(&["--fast-path", "true"], "fastPath = false\n"));
        assert!(!resolve(&["--fast-path", "false"], ""));
        let c = AgentConfig::resolve(&args(&["--fast-path", "false"]), &file(""), &host()).unwrap();
        assert_eq!(c.to_file().fast_path, Some(false));
        assert!(FileConfig::parse(Path::new("wren.toml"), "fastPath = \"yes\"\n").is_err());
        assert!(
            crate::cli::Cli::try_parse_from(["wren", "agent", "--fast-path", "maybe"]).is_err()
        );
    }

    #[test]
    fn mtus_come_from_flags_or_the_file_and_are_range_checked() {
        let f = file("podMtu = 1400\nvxlanMtu = 1450\n");
        let c = AgentConfig::resolve(&args(&["--pod-mtu", "1300"]), &f, &host()).unwrap();
        assert_eq!(
            c.mtu,
            MtuOverrides {
                pod: Some(1300),
                vxlan: Some(1450),
                ipip: None
            }
        );
        for bad in ["ipipMtu = 67", "ipipMtu = 70000", "vxlanMtu = -1"] {
            let err = AgentConfig::resolve(&args(&[]), &file(bad), &host())
                .unwrap_err()
                .to_string();
            assert!(err.contains("Mtu") && err.contains("68 to 65535"), "{err}");
        }
        let none = AgentConfig::resolve(&args(&[]), &FileConfig::default(), &host()).unwrap();
        assert_eq!(none.mtu, MtuOverrides::default());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("k", "10").unwrap(), Duration::from_secs(10));
        assert_eq!(
            parse_duration("k", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("k", "2m").unwrap(), Duration::from_secs(120));
        for bad in ["0", "", "ten", "-1s", "5h"] {
            assert!(parse_duration("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_duration_is_checked_against_its_documented_range() {
        let resolve = |flag: &str, value: &str| {
            AgentConfig::resolve(&args(&[flag, value]), &FileConfig::default(), &host())
        };
        for (flag, key, low, high) in [
            ("--reconcile-interval", "reconcileInterval", "50ms", "61m"),
            ("--liveness-ttl", "livenessTtl", "2s", "99999999999m"),
            ("--bgp-sync-timeout", "bgpSyncTimeout", "500ms", "3601s"),
            (
                "--graceful-restart-time",
                "gracefulRestartTime",
                "999ms",
                "4096s",
            ),
        ] {
            for bad in [low, high] {
                let err = resolve(flag, bad).unwrap_err().to_string();
                assert!(
                    err.contains(key) && err.contains(bad) && err.contains("out of range"),
                    "{err}"
                );
            }
        }
        let err = AgentConfig::resolve(
            &args(&[]),
            &file("livenessTtl = \"99999999999m\"\n"),
            &host(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("3s to 60m"), "{err}");
        let c = resolve("--liveness-ttl", "60m").unwrap();
        assert_eq!(c.liveness_ttl, LIVENESS_TTL_RANGE.max);
        assert_eq!(c.to_file().liveness_ttl, Some(DurationText("60m".into())));
    }

    #[test]
    fn a_node_ip_no_interface_carries_is_refused_unless_meant() {
        let on = |flags: &[&str]| {
            AgentConfig::resolve(&args(flags), &FileConfig::default(), &host())
                .unwrap()
                .check_node_ip_local(&host())
        };
        on(&["--node-ip", "192.0.2.7/24"]).unwrap();
        let err = on(&["--node-ip", "10.78.0.20/24"]).unwrap_err().to_string();
        assert!(
            err.contains("nodeIp") && err.contains("10.78.0.20") && err.contains("nodeIpNotLocal"),
            "{err}"
        );
        on(&["--node-ip", "10.78.0.20/24", "--node-ip-not-local", "true"]).unwrap();
        let c = AgentConfig::resolve(
            &args(&["--node-ip", "10.78.0.20/24"]),
            &file("nodeIpNotLocal = true\n"),
            &host(),
        )
        .unwrap();
        c.check_node_ip_local(&host()).unwrap();
    }

    #[test]
    fn printed_config_reads_back_to_the_same_config() {
        let c = AgentConfig::resolve(
            &args(&[
                "--node-name",
                "n1",
                "--node-ip",
                "10.0.0.2/24",
                "--reconcile-interval",
                "1500ms",
            ]),
            &FileConfig::default(),
            &host(),
        )
        .unwrap();
        let text = toml::to_string(&c.to_file()).unwrap();
        let again = AgentConfig::resolve(&args(&[]), &file(&text), &host()).unwrap();
        assert_eq!(again, c);
    }
}
