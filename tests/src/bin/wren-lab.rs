//! `wren-lab`: a whole wren cluster on one machine, in network namespaces.
//!
//! ```text
//! wren-lab up --nodes 3 [--encap none|vxlan|ipip] [--subnets 1|2] [--tor] [--name demo]
//!              [--etcd-members 1|3|5] [--etcd-tls] [--route-reflectors N] [--etcd-proxies N]
//!              [--no-fast-path]
//! wren-lab ping | status | routes NODE | exec NODE -- CMD… | pods | ip POD | down | list
//! wren-lab pod-add NODE [--k8s NAMESPACE/NAME [--label KEY=VALUE]…] | pod-rm POD
//! wren-lab demo        # up → ping → status → routes explained → a policy isolates a pod → down
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wren_tests::lab::{self, Encap, Lab, LabSpec};

/// Default lab name.
const DEFAULT_LAB: &str = "demo";

/// A wren cluster on one machine: nodes are network namespaces, etcd is real, pods come from
/// the real CNI plugin. Needs root. Nothing it makes has a route out of the lab.
#[derive(Debug, Parser)]
#[command(name = "wren-lab", version)]
struct Cli {
    /// Lab name (1–8 lowercase letters or digits); several labs can run side by side.
    #[arg(long, global = true, env = "WREN_LAB", default_value = DEFAULT_LAB)]
    name: String,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build and start a lab.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Encapsulation of the lab's pool.
        #[arg(long, value_enum, default_value = "none")]
        encap: Encap,
        /// One L2 segment, or two subnets joined by a router that knows no pod routes.
        #[arg(long, default_value_t = 1)]
        subnets: u8,
        /// Add a BIRD 2 top-of-rack route reflector and turn the node mesh off.
        #[arg(long)]
        tor: bool,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Let the fabric's links carry GSO/GRO packets of this many bytes (BIG TCP above
        /// 65536, as NICs that support it do).
        #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(65536..=524280))]
        fabric_offload: Option<u32>,
        /// Members of the lab's etcd cluster (1, 3 or 5); every agent and the CLI get every
        /// member's endpoint.
        #[arg(long, default_value_t = 1)]
        etcd_members: usize,
        /// etcd speaks TLS and requires client certificates (a CA made for the lab).
        #[arg(long)]
        etcd_tls: bool,
        /// Make the first N nodes wren route reflectors (one cluster id) and turn the node mesh
        /// off: every other node peers with them only.
        #[arg(long, default_value_t = 0)]
        route_reflectors: usize,
        /// Put N etcd gRPC proxies (`etcd grpc-proxy`) between the agents and etcd; node i's
        /// agent uses proxy i mod N.
        #[arg(long, default_value_t = 0)]
        etcd_proxies: usize,
        /// Run the agents without the tc fast path (`--fast-path false`).
        #[arg(long)]
        no_fast_path: bool,
        /// Give nodes IPv6 addresses and pods an IPv6 address too, from a second pool
        /// (one subnet, no ToR).
        #[arg(long)]
        dual_stack: bool,
        /// Directory with the `wren` and `wren-cni` binaries (default: next to wren-lab).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Print the pod-to-pod reachability matrix; fails unless every pod reaches every pod.
    Ping,
    /// Run `wren status` on every node.
    Status,
    /// Show a node's routing table, each route explained.
    Routes {
        /// Node name (n1, n2, …).
        node: String,
    },
    /// Run a command inside a node's or a pod's namespace.
    Exec {
        /// Node name (n1, n2, …) or pod name (n1-p0, …).
        node: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List the pods: name, node, address.
    Pods,
    /// Add a pod to a node through the real CNI plugin (ADD); with --k8s, a Kubernetes
    /// pod, its identity passed as a runtime passes it, labelled with each --label.
    PodAdd {
        /// Node name (n1, n2, …).
        node: String,
        /// The pod's Kubernetes identity; the lab names the pod `NAMESPACE-NAME`.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        k8s: Option<String>,
        /// A label of the Kubernetes pod (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", requires = "k8s")]
        labels: Vec<String>,
    },
    /// Remove a pod through the real CNI plugin (DEL), and its namespace.
    PodRm {
        /// Pod name (see `wren-lab pods`).
        pod: String,
    },
    /// Print a pod's address (for use in other commands: `$(wren-lab ip n2-p2)`).
    Ip {
        /// Pod name (n1-p0, …).
        pod: String,
    },
    /// Remove every namespace, process and file of the lab (also after a crash).
    Down,
    /// List the labs on this machine.
    List,
    /// The guided tour: up, ping, status, routes explained, a policy isolating a pod, down.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Keep the lab running at the end instead of removing it.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wren-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    let name = cli.name;
    match cli.command {
        LabCommand::Up {
            nodes,
            encap,
            subnets,
            tor,
            pods,
            fabric_offload,
            etcd_members,
            etcd_tls,
            route_reflectors,
            etcd_proxies,
            no_fast_path,
            dual_stack,
            bin_dir,
        } => {
            let mut spec = LabSpec::new(&name, nodes);
            spec.encap = encap;
            spec.subnets = subnets;
            spec.tor = tor;
            spec.pods_per_node = pods;
            spec.fabric_offload = fabric_offload;
            spec.etcd_members = etcd_members;
            spec.etcd_tls = etcd_tls;
            spec.route_reflectors = route_reflectors;
            spec.etcd_proxies = etcd_proxies;
            spec.fast_path = !no_fast_path;
            spec.dual_stack = dual_stack;
            spec.verbose = true;
            if let Some(dir) = bin_dir {
                spec.bin_dir = dir;
            }
            let lab = Lab::up(spec)?;
            println!(
                "Lab `{name}` is up. Try: wren-lab ping, wren-lab status, wren-lab routes n1, wren-lab down"
            );
            lab.keep();
            Ok(())
        }
        LabCommand::Ping => ping(&Lab::open(&name)?),
        LabCommand::Status => {
            print!("{}", Lab::open(&name)?.status()?);
            Ok(())
        }
        LabCommand::Routes { node } => {
            print!("{}", explain_routes(&Lab::open(&name)?, &node)?);
            Ok(())
        }
        LabCommand::Exec { node, command } => {
            let lab = Lab::open(&name)?;
            let (program, args) = command
                .split_first()
                .context("exec needs a command after --")?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            print!("{}", lab.exec(&node, program, &args)?);
            Ok(())
        }
        LabCommand::Pods => {
            let lab = Lab::open(&name)?;
            println!("{:8} {:6} ADDRESS", "POD", "NODE");
            for pod in &lab.state().pods {
                println!("{:8} {:6} {}", pod.name, pod.node, pod.ip);
            }
            Ok(())
        }
        LabCommand::PodAdd { node, k8s, labels } => {
            let mut lab = Lab::open(&name)?;
            let pod = match k8s.as_deref().map(|id| id.split_once('/')) {
                None => lab.add_pod(&node)?,
                Some(None) => bail!("--k8s takes NAMESPACE/NAME"),
                Some(Some((namespace, pod))) if labels.is_empty() => {
                    lab.add_k8s_pod(&node, namespace, pod)?
                }
                Some(Some((namespace, pod))) => {
                    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                    lab.add_labelled_k8s_pod(&node, namespace, pod, &labels)?;
                    format!("{namespace}-{pod}")
                }
            };
            println!("Pod {pod} added on {node}.");
            Ok(())
        }
        LabCommand::PodRm { pod } => {
            let mut lab = Lab::open(&name)?;
            lab.delete_pod(&pod)
                .with_context(|| format!("removing pod `{pod}` of lab {name}"))?;
            println!("Pod {pod} removed: deleted through wren-cni, its namespace gone.");
            Ok(())
        }
        LabCommand::Ip { pod } => {
            let lab = Lab::open(&name)?;
            let pod = lab
                .state()
                .pods
                .iter()
                .find(|p| p.name == pod)
                .with_context(|| format!("no pod `{pod}` in lab {name} (see wren-lab pods)"))?;
            println!("{}", pod.ip);
            Ok(())
        }
        LabCommand::Down => {
            lab::down_by_name(&name)?;
            println!("Lab `{name}` removed: its namespaces, processes and files are gone.");
            Ok(())
        }
        LabCommand::List => {
            for lab in lab::list_labs() {
                println!("{lab}");
            }
            Ok(())
        }
        LabCommand::Demo { nodes, keep } => demo(&name, nodes, keep),
    }
}

fn ping(lab: &Lab) -> Result<()> {
    let results = lab.ping_matrix();
    print!("{}", lab.render_matrix(&results));
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!(
            "{failed} of {} pod pairs cannot reach each other",
            results.len()
        );
    }
    println!("All {} pod pairs reach each other.", results.len());
    Ok(())
}

/// A node's routing table, each route followed by what it carries.
fn explain_routes(lab: &Lab, node: &str) -> Result<String> {
    let state = lab.state();
    let table = lab.routes(node)?;
    let mut out = format!("Routing table of {node} (ip route):\n");
    for line in table.lines() {
        out.push_str(&format!("  {line}\n"));
        if let Some(why) = explain_route(state, node, line) {
            out.push_str(&format!("      ↳ {why}\n"));
        }
    }
    Ok(out)
}

fn explain_route(state: &lab::LabState, node: &str, line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    let dst_text = if first == "blackhole" {
        words.next()?
    } else {
        first
    };
    // `ip route` prints host routes without their /32.
    let dst: ipnet::Ipv4Net = dst_text
        .parse()
        .or_else(|_| dst_text.parse::<Ipv4Addr>().map(ipnet::Ipv4Net::from))
        .ok()?;
    let pods_in = |net: &ipnet::Ipv4Net| -> Vec<String> {
        state
            .pods
            .iter()
            .filter(|p| net.contains(&p.ip))
            .map(|p| format!("{} {}", p.name, p.ip))
            .collect()
    };
    let via = line
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .and_then(|v| v.parse::<Ipv4Addr>().ok());
    let owner = via.and_then(|v| state.nodes.iter().find(|n| n.ip() == v.to_string()));
    if first == "blackhole" {
        return Some(format!(
            "this node's own block {dst}: its pods get /32 routes; other addresses in it go nowhere"
        ));
    }
    if line.contains("proto bgp") {
        let pods = pods_in(&dst);
        let who = owner.map_or_else(|| "another node".to_owned(), |n| n.name.clone());
        return Some(format!(
            "learned over BGP from {who}: pods {} live there{}",
            if pods.is_empty() {
                "(none yet)".into()
            } else {
                pods.join(", ")
            },
            if line.contains("wren.vxlan") || line.contains("wrentunl0") {
                ", reached through the tunnel"
            } else {
                ""
            }
        ));
    }
    if dst.prefix_len() == 32 && line.contains("dev wren") {
        let pod = state
            .pods
            .iter()
            .find(|p| p.node == node && p.ip == dst.addr())?;
        return Some(format!("local pod {} through its veth", pod.name));
    }
    if line.contains("proto wren") || line.contains("proto 201") {
        return Some("wren's own route".into());
    }
    None
}

/// The demo's network policy step: pods demo/web on n1 and demo/client on n2, and one
/// policy letting only the client reach the web pod.
fn isolate_a_pod(lab: &mut Lab) -> Result<()> {
    println!(
        "\n== 5. One network policy isolates a pod: demo/web takes traffic from demo/client only.\n"
    );
    let second = if lab.state().nodes.len() > 1 {
        "n2"
    } else {
        "n1"
    };
    for (node, name) in [("n1", "web"), (second, "client")] {
        lab.wren_cli(&[
            "workload",
            "label",
            &format!("demo/{name}"),
            &format!("app={name}"),
        ])?;
        lab.add_k8s_pod(node, "demo", name)?;
    }
    let web = lab
        .state()
        .pods
        .iter()
        .find(|p| p.name == "demo-web")
        .map(|p| p.ip.to_string())
        .context("the web pod")?;
    let reach = |lab: &Lab| {
        for pod in &lab.state().pods {
            if pod.name == "demo-web" {
                continue;
            }
            let ok = lab::ping(&pod.ns, &web, 2);
            println!(
                "  {:<12} → demo/web {web}: {}",
                pod.name,
                if ok { "reached" } else { "no answer" }
            );
        }
    };
    println!("Before any policy:");
    reach(lab);
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n";
    let file = lab.state().dir.join("demo-policy.yaml");
    std::fs::write(&file, policy)?;
    println!("\n$ wren policy apply -f demo-policy.yaml\n{policy}");
    print!(
        "{}",
        lab.wren_cli(&["policy", "apply", "-f", &file.to_string_lossy()])?
    );
    // The agents enforce it within milliseconds; a moment for the table on n1.
    std::thread::sleep(std::time::Duration::from_millis(500));
    println!("\nAfter it (n1's agent enforces it in its nftables table, inet wren_policy):");
    reach(lab);
    println!("\n$ wren policy explain --from demo/client --to demo/web --port 80/tcp");
    print!(
        "{}",
        lab.wren_cli(&[
            "policy",
            "explain",
            "--from",
            "demo/client",
            "--to",
            "demo/web",
            "--port",
            "80/tcp"
        ])?
    );
    let status = lab.node_status("n1")?;
    if let Some(line) = status.lines().find(|l| l.starts_with("Network policy")) {
        println!("\nwren status on n1: {line}");
    }
    Ok(())
}

fn demo(name: &str, nodes: usize, keep: bool) -> Result<()> {
    println!(
        "== 1. Build a cluster: {nodes} nodes as network namespaces on one bridge, a real etcd,"
    );
    println!(
        "==    a wren agent per node (BGP full mesh), two pods per node through the CNI plugin.\n"
    );
    let mut spec = LabSpec::new(name, nodes);
    spec.verbose = true;
    let mut lab = Lab::up(spec)?;
    let outcome = (|| -> Result<()> {
        println!("\n== 2. Every pod pings every other pod:\n");
        ping(&lab)?;
        println!("\n== 3. What each agent sees (wren status): its blocks and its BGP peers.\n");
        print!("{}", lab.status()?);
        println!("== 4. How n1 reaches the pods of the other nodes:\n");
        print!("{}", explain_routes(&lab, "n1")?);
        isolate_a_pod(&mut lab)?;
        Ok(())
    })();
    if keep {
        lab.keep();
        println!("\nThe lab keeps running; remove it with: wren-lab down --name {name}");
    } else {
        println!("\n== 6. Tear down: every namespace, process and file the lab made goes.");
        lab.down()?;
        println!("Done.");
    }
    outcome
}
