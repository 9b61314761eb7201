//! The `wren` command line. Names and flags are a contract with users (see `docs/`).
//!
//! Each subcommand lives in its own module with an `async fn run(args) -> anyhow::Result<()>`.

pub mod agent;
pub mod bgp;
pub mod ipam;
pub mod labels;
pub mod namespace;
pub mod node;
pub mod peer;
pub mod policy;
pub mod pool;
pub mod status;
pub mod store;
pub mod workload;

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{EtcdEndpoint, Settings};

/// Default etcd endpoint when neither the flag nor `WREN_ETCD_ENDPOINTS` is set.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:2379";
/// Default path of the agent's local API socket.
pub const DEFAULT_SOCKET: &str = "/run/wren/agent.sock";

/// wren: a BGP-routed layer-3 container network.
#[derive(Debug, Parser)]
#[command(name = "wren", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent.
    Agent(AgentArgs),
    /// Show this node, its blocks and its BGP peers.
    Status(StatusArgs),
    /// Manage address pools.
    Pool(PoolArgs),
    /// Manage explicit BGP peers (ToR routers, route reflectors).
    Peer(PeerArgs),
    /// List and remove nodes.
    Node(NodeArgs),
    /// Inspect and repair address allocations.
    Ipam(IpamArgs),
    /// List the pods' network attachments (workloads); set pods' labels and named ports.
    Workload(WorkloadArgs),
    /// Network policies: apply, list, show, remove, explain.
    Policy(PolicyArgs),
    /// Namespaces' labels, which policies' namespace selectors match.
    Namespace(NamespaceArgs),
    /// Cluster-wide BGP settings.
    Bgp(BgpArgs),
}

crate::config::layered! {
    /// How to reach the datastore; shared by every command that reads it. The flags are
    /// global, so they go anywhere on the line (`wren pool add x --cidr … --etcd-endpoints …`).
    /// The agent also reads them from its file, under the same keys as its other settings.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Args, serde::Deserialize, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct StoreArgs {
        /// etcd endpoints, comma separated.
        #[arg(
            long,
            global = true,
            help_heading = "Datastore",
            env = "WREN_ETCD_ENDPOINTS",
            value_name = "URL",
            value_delimiter = ','
        )]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub etcd_endpoints: Option<Vec<EtcdEndpoint>>,
        /// CA certificate for etcd TLS.
        #[arg(long, global = true, help_heading = "Datastore", env = "WREN_ETCD_CA")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub etcd_ca: Option<PathBuf>,
        /// Client certificate for etcd TLS.
        #[arg(
            long,
            global = true,
            help_heading = "Datastore",
            env = "WREN_ETCD_CERT"
        )]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub etcd_cert: Option<PathBuf>,
        /// Client key for etcd TLS.
        #[arg(long, global = true, help_heading = "Datastore", env = "WREN_ETCD_KEY")]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub etcd_key: Option<PathBuf>,
        /// Key prefix of wren's data in etcd.
        #[arg(
            long,
            global = true,
            help_heading = "Datastore",
            env = "WREN_ETCD_PREFIX"
        )]
        #[serde(skip_serializing_if = "Option::is_none")]
        pub etcd_prefix: Option<String>,
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `wren agent`
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// TOML configuration file.
    #[arg(long, env = "WREN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Take the node name over from the live agent that holds it (a deliberate move of the
    /// name to this host; that agent stops when it sees it). Without it, an agent refuses to
    /// start while another live agent holds the name.
    #[arg(long)]
    pub take_over: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The settings the command line and the environment give.
    #[command(flatten)]
    pub settings: Settings,
}

/// `wren status`
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The agent's local API socket.
    #[arg(long, env = "WREN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How a command that shows something prints it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people (tables); its layout may change between releases.
    #[default]
    Table,
    /// One JSON document for programs; its fields are stable (`docs/operations.md`).
    Json,
}

/// `-o`/`--output` of `wren status` and the list commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct OutputArgs {
    /// Output format: `table` for people, `json` for programs (stable fields).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Prints `value` as one indented JSON document.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Encapsulation choices on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncapArg {
    /// Plain routing.
    None,
    /// VXLAN.
    Vxlan,
    /// IP-in-IP.
    Ipip,
}

/// Encapsulation modes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncapModeArg {
    /// Toward every node.
    Always,
    /// Only toward nodes on other subnets.
    CrossSubnet,
}

/// `wren pool`
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Pool command.
    #[command(subcommand)]
    pub command: PoolCommand,
}

/// `wren pool …`
#[derive(Debug, Clone, Subcommand)]
pub enum PoolCommand {
    /// Add a pool.
    Add {
        /// Pool name.
        name: String,
        /// The pool's range.
        #[arg(long)]
        cidr: String,
        /// Prefix length of the blocks nodes claim (default 26 for IPv4, 122 for IPv6).
        #[arg(long)]
        block_size: Option<u8>,
        /// Encapsulation between nodes.
        #[arg(long, value_enum, default_value = "none")]
        encap: EncapArg,
        /// When to encapsulate.
        #[arg(long, value_enum, default_value = "always")]
        encap_mode: EncapModeArg,
        /// Masquerade traffic leaving every pool.
        #[arg(long)]
        nat_outgoing: bool,
        /// Create the pool disabled (no new blocks).
        #[arg(long)]
        disabled: bool,
        /// A community on the pool's announced prefixes: `asn:value`, `asn:value:value`
        /// (large) or a well-known name; repeat for more.
        #[arg(long = "community", value_name = "COMMUNITY", value_parser = parse_community)]
        communities: Vec<wren_model::Community>,
    },
    /// Show or set the communities on a pool's announced prefixes.
    Communities {
        /// Pool name.
        name: String,
        /// The communities (replacing the pool's): `asn:value`, `asn:value:value` (large) or
        /// a well-known name. None given: show them.
        #[arg(value_parser = parse_community)]
        communities: Vec<wren_model::Community>,
        /// Remove every community from the pool.
        #[arg(long, conflicts_with = "communities")]
        clear: bool,
    },
    /// List pools.
    List(OutputArgs),
    /// Remove a pool (refused while addresses are allocated from it).
    Rm {
        /// Pool name.
        name: String,
    },
    /// Stop handing out new blocks from a pool.
    Disable {
        /// Pool name.
        name: String,
    },
    /// Hand out blocks from a pool again.
    Enable {
        /// Pool name.
        name: String,
    },
}

/// `wren peer`
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Peer command.
    #[command(subcommand)]
    pub command: PeerCommand,
}

/// `wren peer …`
// `add` carries every session control; the command line is parsed once per process, so the
// size of the other variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub enum PeerCommand {
    /// Add an explicit BGP peer.
    Add {
        /// Peer name.
        name: String,
        /// The peer's address.
        #[arg(long)]
        peer_ip: IpAddr,
        /// The peer's AS number.
        #[arg(long = "as", value_parser = crate::config::parse_as_number)]
        as_number: u32,
        /// Only this node peers with it (default: every node).
        #[arg(long)]
        node: Option<String>,
        /// TCP MD5 password. A value on the command line shows in `ps`: prefer
        /// `--password-file` or the `WREN_PEER_PASSWORD` variable.
        #[arg(long, env = "WREN_PEER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// A file holding the TCP MD5 password (one line; a trailing newline is dropped).
        #[arg(long, conflicts_with = "password")]
        password_file: Option<PathBuf>,
        /// Send the peer the other nodes' blocks with their own nodes as next hops, not only
        /// this node's blocks with itself as next hop.
        #[arg(long)]
        keep_original_next_hop: bool,
        /// Accept routes from the peer inside the cluster's pools and for node addresses
        /// (by default only the nodes speak for those).
        #[arg(long)]
        accept_cluster_routes: bool,
        /// Accept a default route from the peer (by default it is filtered).
        #[arg(long)]
        accept_default_route: bool,
        /// A rule for the routes taken from the peer, in order, first match decides:
        /// `accept|reject [prefix CIDR [ge N] [le N]]… [community C]…`.
        #[arg(long = "import-rule", value_name = "RULE", value_parser = parse_filter_rule)]
        import_rules: Vec<wren_model::FilterRule>,
        /// What a route from the peer no import rule matches gets (default accept).
        #[arg(long, value_enum)]
        import_default: Option<FilterActionArg>,
        /// A rule for the routes sent to the peer, in order, first match decides:
        /// `accept|reject [prefix CIDR [ge N] [le N]]… [community C]… [prepend N]`.
        #[arg(long = "export-rule", value_name = "RULE", value_parser = parse_filter_rule)]
        export_rules: Vec<wren_model::FilterRule>,
        /// What a route to the peer no export rule matches gets (default accept).
        #[arg(long, value_enum)]
        export_default: Option<FilterActionArg>,
        /// Run BFD on the session (the peer must run it too): a link failure ends the
        /// session within the detection time instead of the hold time.
        #[arg(long)]
        bfd: bool,
        /// BFD timing (with `--bfd`).
        #[command(flatten)]
        bfd_timing: BfdArgs,
        /// Hold time to propose, in seconds: 0 (no keepalives) or 3–65535 [default: 90];
        /// keepalives go every third of the hold time the session agrees on.
        #[arg(long, value_name = "SECONDS")]
        hold_time: Option<u16>,
        /// GTSM (RFC 5082): send with TTL 255 and accept only packets that crossed at most
        /// this many hops (1: directly connected); 1–254.
        #[arg(long, value_name = "HOPS")]
        ttl_security: Option<u8>,
        /// Seconds between the node's KEEPALIVEs, 1 to a third of the hold time [default: a
        /// third of the hold time the session agrees on, which also bounds a longer setting].
        #[arg(long, value_name = "SECONDS")]
        keepalive_time: Option<u16>,
        /// The AS the node speaks on this session instead of its own (2- or 4-octet; the
        /// peer must expect it): in its OPEN and first on the AS path the peer hears.
        #[arg(long, value_name = "ASN")]
        local_as: Option<u32>,
        /// The node's address to open the session (and its BFD) from [default: the node
        /// address of the peer's family].
        #[arg(long, value_name = "IP")]
        source_address: Option<IpAddr>,
        /// The most prefixes the peer may announce (taken or held back by import rules);
        /// past it the session ends with Cease / Maximum Number of Prefixes Reached
        /// [default: 100000].
        #[arg(long, value_name = "N")]
        max_prefixes: Option<u32>,
        /// Log a warning at this share of the limit, in percent, 1–100 [default: 75].
        #[arg(long, value_name = "PERCENT", requires = "max_prefixes")]
        max_prefixes_warning: Option<u8>,
        /// How long the session stays down after the limit was passed, e.g. `60s`; 1s to
        /// 1 day [default: 60s].
        #[arg(long, value_name = "DURATION", requires = "max_prefixes", value_parser = parse_restart_after)]
        max_prefixes_restart: Option<u32>,
    },
    /// List explicit peers.
    List(OutputArgs),
    /// Remove an explicit peer.
    Rm {
        /// Peer name.
        name: String,
    },
}

/// `wren node`
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Node command.
    #[command(subcommand)]
    pub command: NodeCommand,
}

/// `wren node …`
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    List(OutputArgs),
    /// Remove a node and free its blocks once its workloads are gone.
    Rm {
        /// Node name.
        node: String,
        /// Remove a node whose liveness key is still held (its agent died and the lease has
        /// not expired yet). The key is taken away first; if the agent is running it puts the
        /// key back within a third of its TTL, and nothing is removed.
        #[arg(long)]
        force: bool,
    },
}

/// `wren workload`
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Workload command.
    #[command(subcommand)]
    pub command: WorkloadCommand,
}

/// `wren workload …`
#[derive(Debug, Clone, Subcommand)]
pub enum WorkloadCommand {
    /// List attachments: node, Kubernetes pod, container id, interface and addresses.
    List {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Set (`KEY=VALUE`) or remove (`KEY-`) labels of a Kubernetes pod, which policies
    /// select it by.
    Label {
        /// The pod: NAMESPACE/NAME.
        pod: String,
        /// `KEY=VALUE` to set, `KEY-` to remove.
        #[arg(required = true, num_args = 1..)]
        labels: Vec<String>,
    },
    /// Set (`NAME=PORT/PROTO`) or remove (`NAME-`) named container ports of a pod, which
    /// policies' named ports resolve to.
    Port {
        /// The pod: NAMESPACE/NAME.
        pod: String,
        /// `NAME=PORT/PROTO` (`http=8080/tcp`) to set, `NAME-` to remove.
        #[arg(required = true, num_args = 1..)]
        ports: Vec<String>,
    },
}

/// `wren policy`
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Policy command.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `wren policy …`
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Store the NetworkPolicy documents of a YAML file (the YAML `kubectl apply` takes);
    /// every document is validated first, and nothing is stored if one is wrong.
    Apply {
        /// The file; `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List policies.
    List {
        /// Only this namespace's.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Print a policy as YAML.
    Show {
        /// The policy: NAMESPACE/NAME.
        policy: String,
    },
    /// Remove a policy.
    Rm {
        /// The policy: NAMESPACE/NAME.
        policy: String,
    },
    /// Say whether one pod may reach another, and which policies and rules decide it.
    Explain {
        /// The source pod: NAMESPACE/NAME.
        #[arg(long)]
        from: String,
        /// The destination pod: NAMESPACE/NAME.
        #[arg(long)]
        to: String,
        /// The destination port: `80/tcp`, `53/udp`, `80` (TCP); without it, traffic that
        /// has no ports (ICMP).
        #[arg(long, value_name = "PORT/PROTO")]
        port: Option<String>,
    },
}

/// `wren namespace`
#[derive(Debug, Clone, Args)]
pub struct NamespaceArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Namespace command.
    #[command(subcommand)]
    pub command: NamespaceCommand,
}

/// `wren namespace …`
#[derive(Debug, Clone, Subcommand)]
pub enum NamespaceCommand {
    /// Set (`KEY=VALUE`) or remove (`KEY-`) labels of a namespace.
    Label {
        /// The namespace.
        namespace: String,
        /// `KEY=VALUE` to set, `KEY-` to remove.
        #[arg(required = true, num_args = 1..)]
        labels: Vec<String>,
    },
    /// List the namespaces that have labels.
    List,
}

/// `wren ipam`
#[derive(Debug, Clone, Args)]
pub struct IpamArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// IPAM command.
    #[command(subcommand)]
    pub command: IpamCommand,
}

/// `wren ipam …`
#[derive(Debug, Clone, Subcommand)]
pub enum IpamCommand {
    /// Show pools, blocks and usage; with --ip, who holds an address.
    Show {
        /// An address to look up.
        #[arg(long)]
        ip: Option<IpAddr>,
    },
    /// Report leaked addresses and blocks of nodes that are gone.
    Check {
        /// Leave addresses allocated less than this long ago alone (their workload may not
        /// be recorded yet): `90s`, `5m`, `1h`, `0`.
        #[arg(long, default_value = "5m", value_parser = ipam::parse_grace)]
        grace: std::time::Duration,
    },
    /// Free an address, or everything `wren ipam check` reports.
    Release {
        /// With --from-check: the leak check's grace period (default 5m; see `wren ipam check`).
        #[arg(long, value_parser = ipam::parse_grace, conflicts_with = "ip")]
        grace: Option<std::time::Duration>,
        /// The address to free.
        #[arg(
            long,
            conflicts_with = "from_check",
            required_unless_present = "from_check"
        )]
        ip: Option<IpAddr>,
        /// Free everything the leak check finds (each re-validated first).
        #[arg(long)]
        from_check: bool,
    },
}

/// `wren bgp`
#[derive(Debug, Clone, Args)]
pub struct BgpArgs {
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
    /// BGP command.
    #[command(subcommand)]
    pub command: BgpCommand,
}

/// On/off switch on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `wren bgp …`
#[derive(Debug, Clone, Subcommand)]
pub enum BgpCommand {
    /// Show or change the cluster's BGP settings.
    Config {
        /// Cluster AS number.
        #[arg(long = "as", value_parser = crate::config::parse_as_number)]
        as_number: Option<u32>,
        /// Node-to-node full mesh.
        #[arg(long, value_enum)]
        mesh: Option<OnOff>,
        /// A community on every prefix the nodes announce (`asn:value`, `asn:value:value`
        /// or a well-known name); repeat for more. Replaces the cluster's communities.
        #[arg(long = "community", value_name = "COMMUNITY", value_parser = parse_community)]
        communities: Vec<wren_model::Community>,
        /// Remove the cluster's communities.
        #[arg(long, conflicts_with = "communities")]
        clear_communities: bool,
        /// Communities for the announced prefixes inside a range: `CIDR=COMMUNITY[,COMMUNITY…]`;
        /// repeat for more ranges. Replaces the cluster's prefix advertisements.
        #[arg(long = "prefix-advertisement", value_name = "CIDR=COMMUNITIES", value_parser = parse_prefix_advertisement)]
        prefix_advertisements: Vec<wren_model::PrefixAdvertisement>,
        /// Remove every prefix advertisement.
        #[arg(long, conflicts_with = "prefix_advertisements")]
        clear_prefix_advertisements: bool,
        /// The Services' cluster-IP ranges, which every node announces to its explicit
        /// peers: `CIDR[,CIDR…]`, or `none`.
        #[arg(long, value_name = "CIDRS", value_parser = parse_ranges)]
        service_cluster_ips: Option<Ranges>,
        /// The Services' external-IP ranges: `CIDR[,CIDR…]`, or `none`.
        #[arg(long, value_name = "CIDRS", value_parser = parse_ranges)]
        service_external_ips: Option<Ranges>,
        /// The Services' load-balancer ranges: `CIDR[,CIDR…]`, or `none`.
        #[arg(long = "service-lb-ips", value_name = "CIDRS", value_parser = parse_ranges)]
        service_load_balancer_ips: Option<Ranges>,
        /// BFD on every node-to-node session (mesh and route reflection).
        #[arg(long, value_enum)]
        mesh_bfd: Option<OnOff>,
        /// BFD timing of the node-to-node sessions.
        #[command(flatten)]
        bfd_timing: BfdArgs,
    },
}

/// BFD timing on the command line; what is left out keeps its current (or default) value.
#[derive(Debug, Clone, Default, Args)]
pub struct BfdArgs {
    /// BFD transmit interval (Desired Min TX), e.g. `300ms`; 10ms to 60s [default: 300ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_bfd_interval)]
    pub bfd_transmit_interval: Option<u32>,
    /// BFD receive interval (Required Min RX), e.g. `300ms`; 10ms to 60s [default: 300ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_bfd_interval)]
    pub bfd_receive_interval: Option<u32>,
    /// BFD detect multiplier: packets missed before the session is down; 1 to 255
    /// [default: 3].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub bfd_multiplier: Option<u8>,
}

impl BfdArgs {
    /// Whether any timing was given.
    pub fn is_empty(&self) -> bool {
        self.bfd_transmit_interval.is_none()
            && self.bfd_receive_interval.is_none()
            && self.bfd_multiplier.is_none()
    }

    /// `base` with the given values applied, checked.
    pub fn apply(&self, base: wren_model::Bfd) -> Result<wren_model::Bfd, wren_model::InvalidBfd> {
        let bfd = wren_model::Bfd {
            transmit_interval_ms: self
                .bfd_transmit_interval
                .unwrap_or(base.transmit_interval_ms),
            receive_interval_ms: self
                .bfd_receive_interval
                .unwrap_or(base.receive_interval_ms),
            multiplier: self.bfd_multiplier.unwrap_or(base.multiplier),
        };
        bfd.validate()?;
        Ok(bfd)
    }
}

/// Parses a BFD interval (`300ms`, `1s`; a bare number is seconds, as every wren duration)
/// into milliseconds, within 10 ms to 60 s.
fn parse_bfd_interval(value: &str) -> Result<u32, String> {
    let duration = crate::config::parse_duration(value)
        .map_err(|_| "expected a duration of 10ms to 60s, such as 300ms or 1s".to_owned())?;
    let ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
    if !(wren_model::Bfd::MIN_INTERVAL_MS..=wren_model::Bfd::MAX_INTERVAL_MS).contains(&ms) {
        return Err(format!("{ms} ms is out of range: 10ms to 60s"));
    }
    Ok(ms)
}

/// Parses `--max-prefixes-restart` into whole seconds.
fn parse_restart_after(value: &str) -> Result<u32, String> {
    let duration = crate::config::parse_duration(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "expected a positive duration such as 60s or 5m".to_owned())?;
    u32::try_from(duration.as_secs()).map_err(|_| format!("{value}: too long"))
}

/// `accept` or `reject`, for a filter's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FilterActionArg {
    /// Let the route through.
    Accept,
    /// Drop the route.
    Reject,
}

impl From<FilterActionArg> for wren_model::FilterAction {
    fn from(arg: FilterActionArg) -> Self {
        match arg {
            FilterActionArg::Accept => wren_model::FilterAction::Accept,
            FilterActionArg::Reject => wren_model::FilterAction::Reject,
        }
    }
}

/// Parses a filter rule for `--import-rule` and `--export-rule`.
fn parse_filter_rule(value: &str) -> Result<wren_model::FilterRule, String> {
    value
        .parse()
        .map_err(|e: wren_model::FilterError| e.to_string())
}

/// A list of ranges given as one flag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges(pub Vec<ipnet::IpNet>);

/// Parses `CIDR[,CIDR…]` or `none`: each a network address.
fn parse_ranges(value: &str) -> Result<Ranges, String> {
    if value.trim() == "none" {
        return Ok(Ranges(Vec::new()));
    }
    value
        .split(',')
        .map(|cidr| {
            let net: ipnet::IpNet = cidr
                .trim()
                .parse()
                .map_err(|_| format!("{cidr:?} is not a CIDR"))?;
            if net.trunc() != net {
                return Err(format!(
                    "{net} is not a network address (did you mean {}?)",
                    net.trunc()
                ));
            }
            Ok(net)
        })
        .collect::<Result<_, _>>()
        .map(Ranges)
}

/// Parses a community for `--community`.
fn parse_community(value: &str) -> Result<wren_model::Community, String> {
    value
        .parse()
        .map_err(|e: wren_model::CommunityError| e.to_string())
}

/// Parses `CIDR=COMMUNITY[,COMMUNITY…]` for `--prefix-advertisement`.
fn parse_prefix_advertisement(value: &str) -> Result<wren_model::PrefixAdvertisement, String> {
    let (cidr, communities) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not CIDR=COMMUNITY[,COMMUNITY…]"))?;
    let cidr: ipnet::IpNet = cidr
        .trim()
        .parse()
        .map_err(|_| format!("{cidr:?} is not a CIDR"))?;
    if cidr.trunc() != cidr {
        return Err(format!(
            "{cidr} is not a network address (did you mean {}?)",
            cidr.trunc()
        ));
    }
    let communities = communities
        .split(',')
        .map(parse_community)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(wren_model::PrefixAdvertisement { cidr, communities })
}

/// One line for a command line clap refused: the error with its details, without the usage
/// and hints clap adds after a blank line. A bad value that came from a `WREN_*` variable
/// rather than from its flag is named by the variable, where the operator has to look.
pub fn usage_error_line(error: &clap::Error, argv: &[String]) -> String {
    let rendered = error.render().to_string();
    let mut line = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(clap::error::ContextValue::String(arg)) =
        error.get(clap::error::ContextKind::InvalidArg)
        && let Some(variable) = variable_behind(arg, argv)
    {
        line = line.replace(&format!("'{arg}'"), &variable);
    }
    let line = line.trim_start_matches("error: ");
    if line.is_empty() {
        "invalid command line".to_owned()
    } else {
        line.to_owned()
    }
}

/// The environment variable that gave the value of `arg` (`--node-ip <ADDRESS/PREFIXLEN>`)
/// in the command `argv` runs: the flag's variable when it is set and the flag is not on
/// the line.
fn variable_behind(arg: &str, argv: &[String]) -> Option<String> {
    use clap::CommandFactory;
    let flag = arg.split_whitespace().next()?.strip_prefix("--")?;
    let on_line = argv.iter().any(|word| {
        word.strip_prefix("--")
            .and_then(|w| w.strip_prefix(flag))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
    });
    if on_line {
        return None;
    }
    // The commands the line runs, each word naming a subcommand of the one before; the
    // deepest that declares the flag (a global flag is declared above where it is used).
    let mut path = vec![Cli::command()];
    for word in argv.iter().skip(1) {
        match path.last().and_then(|c| c.find_subcommand(word)) {
            Some(sub) => path.push(sub.clone()),
            None => break,
        }
    }
    let variable = path
        .iter()
        .rev()
        .find_map(|c| c.get_arguments().find(|a| a.get_long() == Some(flag)))?
        .get_env()?
        .to_str()?
        .to_owned();
    std::env::var_os(&variable).is_some().then_some(variable)
}

/// One clear line for an error: the error and its causes, joined by `: `. A cause whose text
/// the line already holds (an error that prints its source in its own message) is not
/// repeated.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => agent::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Pool(args) => pool::run(args).await,
            Command::Peer(args) => peer::run(args).await,
            Command::Node(args) => node::run(args).await,
            Command::Ipam(args) => ipam::run(args).await,
            Command::Workload(args) => workload::run(args).await,
            Command::Policy(args) => policy::run(args).await,
            Command::Namespace(args) => namespace::run(args).await,
            Command::Bgp(args) => bgp::run(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let listen = crate::daemon::DaemonError::Listen {
            what: "metrics address",
            addr: "127.0.0.1:9099".to_owned(),
            source: io,
        };
        let e = anyhow::Error::new(listen).context("cannot start");
        assert_eq!(
            error_line(&e),
            "cannot start: cannot listen on metrics address 127.0.0.1:9099: address in use"
        );
    }
}
