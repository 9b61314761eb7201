//! The `wren` command line. Names and flags are a contract with users (see `docs/`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Cluster-wide BGP settings.
    Bgp(BgpArgs),
}

/// How to reach the datastore; shared by every command that reads it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// etcd endpoints, comma separated.
    #[arg(long, env = "WREN_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// CA certificate for etcd TLS.
    #[arg(long, env = "WREN_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd TLS.
    #[arg(long, env = "WREN_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd TLS.
    #[arg(long, env = "WREN_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// Key prefix of wren's data in etcd.
    #[arg(long, env = "WREN_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
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
    /// This node's name (default: the hostname).
    #[arg(long, env = "WREN_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's address with prefix length, e.g. 10.0.0.2/24 (default: autodetected).
    #[arg(long, env = "WREN_NODE_IP")]
    pub node_ip: Option<String>,
    /// AS number of this node (default: the cluster's).
    #[arg(long = "as", env = "WREN_AS")]
    pub as_number: Option<u32>,
    /// Path of the local API socket for the CNI plugin.
    #[arg(long, env = "WREN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "WREN_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Log format.
    #[arg(long, env = "WREN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Datastore.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `wren status`
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The agent's local API socket.
    #[arg(long, env = "WREN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
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
    },
    /// List pools.
    List,
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
        #[arg(long = "as")]
        as_number: u32,
        /// Only this node peers with it (default: every node).
        #[arg(long)]
        node: Option<String>,
        /// TCP MD5 password.
        #[arg(long)]
        password: Option<String>,
    },
    /// List explicit peers.
    List,
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
    List,
    /// Remove a node and free its blocks once its workloads are gone.
    Rm {
        /// Node name.
        node: String,
    },
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
    Check,
    /// Free an address, or everything `wren ipam check` reports.
    Release {
        /// The address to free.
        #[arg(long, conflicts_with = "from_check", required_unless_present = "from_check")]
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
        #[arg(long = "as")]
        as_number: Option<u32>,
        /// Node-to-node full mesh.
        #[arg(long, value_enum)]
        mesh: Option<OnOff>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        other => anyhow::bail!("{other:?}: not implemented yet"),
    }
}
