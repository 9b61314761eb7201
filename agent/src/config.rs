//! The agent's configuration: command-line flags, then `WREN_*` environment variables, then
//! the TOML file (`/etc/wren/wren.toml` or `--config`), then built-in defaults.
//!
//! Each setting is declared once, in [`Settings`]: its flag, variable, file key and typed
//! parser. clap merges a flag over its variable; [`Layer::over`] lays that over the file;
//! [`AgentConfig::resolve`] fills in the defaults and autodetects what was left out (node
//! name, node IP). Every problem is one line naming the flag, variable or key and the value,
//! so a bad deployment fails at start-up rather than half-working later.
//! `docs/configuration.md` lists every setting.

mod settings;
mod value;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::cli::{AgentArgs, DEFAULT_ETCD_ENDPOINTS, DEFAULT_SOCKET, LogFormat, StoreArgs};
use crate::dataplane::mtu::MtuOverrides;
pub(crate) use settings::layered;
pub use settings::{Layer, Settings};
pub use value::{
    AS_TRANS, AsNumber, BoundedDuration, EtcdEndpoint, InvalidValue, Mtu, NodeIpv4, NodeIpv6,
    NodeName, duration_text, parse_duration,
};

/// Equal paths to a prefix forwarded over at once unless configured (as BIRD's `merge
/// paths` limit and FRR's usual `maximum-paths` builds allow many, 8 covers a rack's uplinks).
pub const DEFAULT_MAX_PATHS: usize = 8;

/// What `maxPaths` may be: the kernel takes more next hops, but no fabric spreads one
/// prefix over more than this from one node.
pub const MAX_PATHS_RANGE: std::ops::RangeInclusive<usize> = 1..=64;

/// The configuration file read when `--config` is not given (and only if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wren/wren.toml";
/// Default address of the health and metrics server.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9099));
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
    /// The file is not valid TOML.
    #[error("config file {path}, line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A key of the file has a value of the wrong type, malformed or out of range.
    #[error("config file {path}, line {line}: {key}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value.
        line: usize,
        /// The key (with the index of a list element, `etcdEndpoints[1]`).
        key: String,
        /// What is wrong, with the value.
        message: String,
    },
    /// The file has a key no setting has: a typo is not silently ignored.
    #[error("config file {path}, line {line}: unknown key {key:?}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key.
        line: usize,
        /// The key.
        key: String,
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

impl From<(&'static str, InvalidValue)> for ConfigError {
    fn from((key, e): (&'static str, InvalidValue)) -> Self {
        ConfigError::Invalid {
            key,
            value: e.value,
            reason: e.reason,
        }
    }
}

/// Reads `--config` when given (it must exist), else the default file when it exists.
pub fn load_file(args: &AgentArgs) -> Result<Settings, ConfigError> {
    match &args.config {
        Some(path) => Settings::load(path),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Settings::load(Path::new(DEFAULT_CONFIG_PATH))
        }
        None => Ok(Settings::default()),
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
pub fn parse_as_number(value: &str) -> Result<u32, InvalidValue> {
    value.parse::<AsNumber>().map(|asn| asn.0)
}

/// Checks a node or peer name: it becomes an etcd key segment and a BGP peer description.
pub fn validate_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
    name.parse::<NodeName>()
        .map(drop)
        .map_err(|e| ConfigError::from((key, e)))
}

/// The effective, validated configuration of one agent. It serializes as the file would say
/// it (`wren agent --print-config`), and reads back through [`Settings`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's IPv4 address with prefix length (router id, IPv4 next hop).
    pub node_ip: Ipv4Net,
    /// This node's IPv6 address with prefix length (IPv6 next hop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ipv6: Option<Ipv6Net>,
    /// Interface pattern used for autodetection, kept to print it back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip_interface: Option<String>,
    /// The node IP may be one no local interface carries.
    pub node_ip_not_local: bool,
    /// Take the node name over from a live agent that holds it (`--take-over`, never from a
    /// file: it is a one-time decision).
    #[serde(skip)]
    pub take_over: bool,
    /// This node's AS; the cluster's when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Set when this node is a route reflector.
    #[serde(skip_serializing_if = "Option::is_none")]
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
    #[serde(flatten)]
    pub store: StoreArgs,
    /// Period of the route reconcile.
    #[serde(serialize_with = "value::serialize_duration")]
    pub reconcile_interval: Duration,
    /// TTL of the liveness lease.
    #[serde(serialize_with = "value::serialize_duration")]
    pub liveness_ttl: Duration,
    /// How long BGP may take to sync before /readyz stops waiting for it.
    #[serde(serialize_with = "value::serialize_duration")]
    pub bgp_sync_timeout: Duration,
    /// Graceful-restart time asked of peers.
    #[serde(serialize_with = "value::serialize_duration")]
    pub graceful_restart_time: Duration,
    /// MTUs fixed by configuration instead of derived from the underlay.
    #[serde(flatten)]
    pub mtu: MtuOverrides,
    /// Whether pod-to-pod traffic takes the BPF fast path (when the kernel can run it).
    pub fast_path: bool,
    /// How long an orphaned host veth or allocation of this node is left to its runtime.
    #[serde(serialize_with = "value::serialize_duration")]
    pub orphan_grace_period: Duration,
    /// Period of the automatic leak release; zero turns it off on this node.
    #[serde(serialize_with = "value::serialize_duration")]
    pub leak_release_interval: Duration,
    /// Age below which the automatic leak release leaves an allocation alone.
    #[serde(serialize_with = "value::serialize_duration")]
    pub leak_grace_period: Duration,
    /// The agent's own state directory.
    pub state_dir: PathBuf,
    /// How many equal BGP paths to a prefix one kernel route spreads over (1: no ECMP).
    pub max_paths: usize,
    /// The connection mark's bits network policy stamps its epoch into (0: none).
    #[serde(serialize_with = "value::serialize_mark_mask")]
    pub policy_mark_mask: u32,
}

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

impl AgentConfig {
    /// Lays flags-and-environment (`args`) over the file over defaults, and autodetects the
    /// node name and IP from `host` when they are not given. Each value was checked where it
    /// was parsed; what is left here are the checks across settings and of the defaults.
    pub fn resolve(
        args: &AgentArgs,
        file: Settings,
        host: &dyn HostFacts,
    ) -> Result<Self, ConfigError> {
        let settings = args.settings.clone().over(file);
        let node_name = match settings.node_name {
            Some(name) => name.0,
            None => {
                let hostname = host
                    .hostname()
                    .map_err(|e| ConfigError::Hostname(e.to_string()))?;
                validate_name("nodeName", &hostname)?;
                hostname
            }
        };
        let node_ip = match settings.node_ip {
            Some(ip) => ip.0,
            None => autodetect_node_ip(host, settings.node_ip_interface.as_deref())?,
        };
        let endpoints = settings
            .store
            .etcd_endpoints
            .unwrap_or_else(|| vec![EtcdEndpoint(DEFAULT_ETCD_ENDPOINTS.to_owned())]);
        if endpoints.is_empty() {
            return Err(ConfigError::Invalid {
                key: "etcdEndpoints",
                value: String::new(),
                reason: "at least one endpoint is needed".to_owned(),
            });
        }
        let socket = settings
            .socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if socket.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "socket",
                value: String::new(),
                reason: "expected a path".to_owned(),
            });
        }
        Ok(Self {
            node_name,
            node_ip,
            node_ipv6: settings.node_ipv6.map(|net| net.0),
            node_ip_interface: settings.node_ip_interface,
            node_ip_not_local: settings.node_ip_not_local.unwrap_or(false),
            take_over: args.take_over,
            as_number: settings.as_number.map(|asn| asn.0),
            route_reflector_cluster_id: settings.route_reflector_cluster_id,
            bgp_port: settings.bgp_port.map_or(DEFAULT_BGP_PORT, |p| p.get()),
            metrics_addr: settings.metrics_addr.unwrap_or(DEFAULT_METRICS_ADDR),
            log_format: settings.log_format.unwrap_or(LogFormat::Text),
            store: StoreArgs {
                etcd_endpoints: Some(endpoints),
                ..settings.store
            },
            reconcile_interval: settings
                .reconcile_interval
                .map_or(DEFAULT_RECONCILE_INTERVAL, |d| d.0),
            liveness_ttl: settings.liveness_ttl.map_or(DEFAULT_LIVENESS_TTL, |d| d.0),
            bgp_sync_timeout: settings
                .bgp_sync_timeout
                .map_or(DEFAULT_BGP_SYNC_TIMEOUT, |d| d.0),
            graceful_restart_time: settings
                .graceful_restart_time
                .map_or(DEFAULT_GRACEFUL_RESTART_TIME, |d| d.0),
            mtu: MtuOverrides {
                pod: settings.pod_mtu.map(|m| m.0),
                vxlan: settings.vxlan_mtu.map(|m| m.0),
                ipip: settings.ipip_mtu.map(|m| m.0),
            },
            fast_path: settings.fast_path.unwrap_or(true),
            orphan_grace_period: settings
                .orphan_grace_period
                .map_or(DEFAULT_ORPHAN_GRACE_PERIOD, |d| d.0),
            leak_release_interval: settings
                .leak_release_interval
                .map_or(DEFAULT_LEAK_RELEASE_INTERVAL, |d| d.0),
            leak_grace_period: settings
                .leak_grace_period
                .map_or(DEFAULT_LEAK_GRACE_PERIOD, |d| d.0),
            state_dir: settings
                .state_dir
                .unwrap_or_else(|| default_state_dir(&socket)),
            socket,
            max_paths: settings.max_paths.map_or(DEFAULT_MAX_PATHS, |m| m.0),
            policy_mark_mask: settings.policy_mark_mask.map_or(
                crate::dataplane::program::policy::CONNECTION_MARK_MASK,
                |m| m.0,
            ),
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
        Self::resolve(args, load_file(args)?, &SystemHost)
    }

    /// The effective configuration as the file would say it (`wren agent --print-config`).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
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
        try_args(flags).unwrap()
    }

    fn try_args(flags: &[&str]) -> Result<AgentArgs, clap::Error> {
        let mut argv = vec!["wren", "agent"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv)?.command {
            Command::Agent(a) => Ok(a),
            other => panic!("parsed {other:?}"),
        }
    }

    fn file(text: &str) -> Settings {
        Settings::from_toml(Path::new("wren.toml"), text).unwrap()
    }

    fn file_error(text: &str) -> String {
        Settings::from_toml(Path::new("wren.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_fill_what_nothing_sets() {
        let c = AgentConfig::resolve(&args(&[]), Settings::default(), &host()).unwrap();
        assert_eq!(c.node_name, "host-a");
        assert_eq!(c.node_ip.to_string(), "198.51.100.5/26");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.metrics_addr, DEFAULT_METRICS_ADDR);
        assert_eq!(
            c.store.etcd_endpoints,
            Some(vec![EtcdEndpoint(DEFAULT_ETCD_ENDPOINTS.to_owned())])
        );
        assert_eq!(c.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
        assert_eq!(c.bgp_port, 179);
        assert_eq!(c.as_number, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.fast_path);
        assert_eq!(c.state_dir, PathBuf::from("/run/wren/agent.state"));
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
            etcdPrefix = "/file/"
            reconcileInterval = 3
            logFormat = "json"
            fastPath = false
            "#,
        );
        let c = AgentConfig::resolve(
            &args(&[
                "--node-name",
                "from-flag",
                "--as",
                "65002",
                "--reconcile-interval",
                "1m30s",
                "--etcd-prefix",
                "/flag/",
                "--fast-path",
                "true",
            ]),
            f,
            &host(),
        )
        .unwrap();
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.as_number, Some(65002));
        assert_eq!(c.reconcile_interval, Duration::from_secs(90));
        assert_eq!(c.store.etcd_prefix.as_deref(), Some("/flag/"));
        assert!(c.fast_path);
        // Not given as flags: the file's values.
        assert_eq!(c.node_ip.to_string(), "10.1.0.9/16");
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9300");
        assert_eq!(
            c.store.etcd_endpoints,
            Some(vec![EtcdEndpoint("http://10.9.9.9:2379".to_owned())])
        );
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn an_unknown_file_key_is_one_line_naming_it() {
        for (text, key, line) in [
            ("nodeName = \"a\"\nnodeIP = \"10.0.0.1/24\"\n", "nodeIP", 2),
            ("etcdEndpoint = \"http://a:1\"\n", "etcdEndpoint", 1),
            ("nodeName = \"a\"\n\n[bgp]\nport = 1\n", "bgp", 3),
            ("store = 1\n", "store", 1),
        ] {
            let err = file_error(text);
            assert!(err.contains(&format!("{key:?}")), "{err}");
            assert!(err.contains(&format!("line {line}")), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_key_line_and_value() {
        for (text, needles) in [
            (
                "nodeName = \"a\"\nlivenessTtl = \"99999999999m\"\n",
                &[
                    "line 2",
                    "livenessTtl",
                    "99999999999m",
                    "out of range 3s to 60m",
                ][..],
            ),
            (
                "reconcileInterval = \"1m30\"\n",
                &["line 1", "reconcileInterval", "\"1m30\""][..],
            ),
            (
                "nodeIp = \"10.0.0.1\"\n",
                &["nodeIp", "missing prefix length"][..],
            ),
            (
                "etcdEndpoints = [\n  \"http://a:2379\",\n  \"etcd\",\n]\n",
                &["line 3", "etcdEndpoints[1]", "\"etcd\""][..],
            ),
            (
                "asNumber = 4294967296\n",
                &["asNumber", "4294967296", "out of range"][..],
            ),
            ("ipipMtu = 67\n", &["ipipMtu", "68 to 65535"][..]),
            ("vxlanMtu = -1\n", &["vxlanMtu", "68 to 65535"][..]),
            ("metricsAddr = \"9099\"\n", &["metricsAddr"][..]),
            ("fastPath = \"yes\"\n", &["fastPath", "boolean"][..]),
            ("bgpPort = 0\n", &["bgpPort"][..]),
            ("nodeName = 5\n", &["nodeName", "node name"][..]),
        ] {
            let err = file_error(text);
            for needle in needles {
                assert!(err.contains(needle), "{needle:?} missing from {err}");
            }
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_bad_value_on_the_command_line_names_the_flag_and_value() {
        for (flags, needles) in [
            (
                &["--reconcile-interval", "50ms"][..],
                &["--reconcile-interval", "50ms", "out of range 100ms to 60m"][..],
            ),
            (
                &["--liveness-ttl", "2s"][..],
                &["--liveness-ttl", "out of range 3s to 60m"][..],
            ),
            (
                &["--bgp-sync-timeout", "3601s"][..],
                &["--bgp-sync-timeout", "out of range 1s to 60m"][..],
            ),
            (
                &["--graceful-restart-time", "4096s"][..],
                &["--graceful-restart-time", "out of range 1s to 4095s"][..],
            ),
            (
                &["--orphan-grace-period", "61m"][..],
                &["--orphan-grace-period"][..],
            ),
            (&["--leak-grace-period", "ten"][..], &["'ten'"][..]),
            (
                &["--node-ip", "fd00::1/64"][..],
                &["--node-ip", "must be IPv4"][..],
            ),
            (&["--node-ipv6", "10.0.0.1/24"][..], &["--node-ipv6"][..]),
            (
                &["--metrics-addr", "localhost"][..],
                &["--metrics-addr"][..],
            ),
            (&["--as", "23456"][..], &["--as", "AS_TRANS"][..]),
            (&["--pod-mtu", "67"][..], &["--pod-mtu", "68 to 65535"][..]),
            (&["--bgp-port", "0"][..], &["--bgp-port"][..]),
            (
                &["--etcd-endpoints", "http://a:1,etcd"][..],
                &["--etcd-endpoints", "'etcd'"][..],
            ),
            (&["--fast-path", "maybe"][..], &["--fast-path"][..]),
            (&["--node-name", "a b"][..], &["--node-name"][..]),
        ] {
            let err = try_args(flags).unwrap_err();
            let line = crate::cli::usage_error_line(&err, &[]);
            for needle in needles {
                assert!(line.contains(needle), "{needle:?} missing from {line}");
            }
        }
    }

    #[test]
    fn zero_turns_off_only_what_may_be_off() {
        let c = AgentConfig::resolve(
            &args(&[
                "--leak-release-interval",
                "0s",
                "--orphan-grace-period",
                "0",
            ]),
            Settings::default(),
            &host(),
        )
        .unwrap();
        assert_eq!(c.leak_release_interval, Duration::ZERO);
        assert_eq!(c.orphan_grace_period, Duration::ZERO);
        assert!(try_args(&["--reconcile-interval", "0s"]).is_err());
    }

    #[test]
    fn an_empty_endpoint_list_is_refused() {
        let err = AgentConfig::resolve(&args(&[]), file("etcdEndpoints = []\n"), &host())
            .unwrap_err()
            .to_string();
        assert!(err.contains("etcdEndpoints"), "{err}");
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
        let c = AgentConfig::resolve(
            &args(&[]),
            file("nodeIpInterface = \"eth?\"\n"),
            &no_default,
        )
        .unwrap();
        assert_eq!(c.node_ip.to_string(), "192.0.2.7/24");
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
    fn mtus_come_from_flags_or_the_file() {
        let f = file("podMtu = 1400\nvxlanMtu = 1450\n");
        let c = AgentConfig::resolve(&args(&["--pod-mtu", "1300"]), f, &host()).unwrap();
        assert_eq!(
            c.mtu,
            MtuOverrides {
                pod: Some(1300),
                vxlan: Some(1450),
                ipip: None
            }
        );
        let none = AgentConfig::resolve(&args(&[]), Settings::default(), &host()).unwrap();
        assert_eq!(none.mtu, MtuOverrides::default());
    }

    #[test]
    fn max_paths_defaults_to_eight_and_is_range_checked_in_every_layer() {
        let resolve = |flags: &[&str], text: &str| {
            AgentConfig::resolve(&args(flags), file(text), &host())
                .unwrap()
                .max_paths
        };
        assert_eq!(resolve(&[], ""), DEFAULT_MAX_PATHS);
        assert_eq!(resolve(&[], "maxPaths = 1\n"), 1);
        assert_eq!(resolve(&["--max-paths", "4"], "maxPaths = 1\n"), 4);
        for bad in ["0", "65", "many"] {
            let error = try_args(&["--max-paths", bad]).unwrap_err().to_string();
            assert!(error.contains("--max-paths"), "{error}");
        }
        for bad in ["maxPaths = 0\n", "maxPaths = 65\n", "maxPaths = -1\n"] {
            let error = file_error(bad);
            assert!(
                error.contains("maxPaths") && error.contains("line 1"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_policy_mark_mask_is_one_run_of_bits_or_none() {
        let resolve = |flags: &[&str], text: &str| {
            AgentConfig::resolve(&args(flags), file(text), &host())
                .unwrap()
                .policy_mark_mask
        };
        assert_eq!(resolve(&[], ""), 0xffff_0000);
        assert_eq!(
            resolve(&[], "policyMarkMask = \"0x00ff0000\"\n"),
            0x00ff_0000
        );
        assert_eq!(resolve(&[], "policyMarkMask = 0\n"), 0);
        assert_eq!(
            resolve(&["--policy-mark-mask", "0xff00"], "policyMarkMask = 0\n"),
            0xff00
        );
        for bad in ["0xff00ff00", "0xf0", "mask", "0x1ffffffff"] {
            let error = try_args(&["--policy-mark-mask", bad])
                .unwrap_err()
                .to_string();
            assert!(error.contains("--policy-mark-mask"), "{error}");
        }
        let error = file_error("policyMarkMask = \"0x0f0f0000\"\n");
        assert!(
            error.contains("policyMarkMask") && error.contains("line 1"),
            "{error}"
        );
        let c = AgentConfig::resolve(
            &args(&["--policy-mark-mask", "0xff0000"]),
            file(""),
            &host(),
        )
        .unwrap();
        let text = c.to_toml().unwrap();
        assert!(text.contains("policyMarkMask = \"0x00ff0000\""), "{text}");
        assert_eq!(
            AgentConfig::resolve(&args(&[]), file(&text), &host()).unwrap(),
            c
        );
    }

    #[test]
    fn a_node_ip_no_interface_carries_is_refused_unless_meant() {
        let on = |flags: &[&str]| {
            AgentConfig::resolve(&args(flags), Settings::default(), &host())
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
            file("nodeIpNotLocal = true\n"),
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
                "--node-ipv6",
                "fd00::2/64",
                "--as",
                "65010",
                "--route-reflector-cluster-id",
                "1.0.0.1",
                "--reconcile-interval",
                "1500ms",
                "--liveness-ttl",
                "60m",
                "--ipip-mtu",
                "1480",
                "--etcd-endpoints",
                "http://10.0.0.9:2379,https://10.0.0.10:2379",
                "--etcd-ca",
                "/etc/wren/ca.pem",
                "--log-format",
                "json",
                "--fast-path",
                "false",
            ]),
            Settings::default(),
            &host(),
        )
        .unwrap();
        let text = c.to_toml().unwrap();
        assert!(text.contains("livenessTtl = \"60m\""), "{text}");
        assert!(text.contains("reconcileInterval = \"1500ms\""), "{text}");
        assert!(text.contains("ipipMtu = 1480"), "{text}");
        let again = AgentConfig::resolve(&args(&[]), file(&text), &host()).unwrap();
        assert_eq!(again, c);
    }
}
