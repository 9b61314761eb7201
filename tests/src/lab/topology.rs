//! The lab's namespaces and links: the fabric (one bridge, or a router with a bridge per
//! subnet), nodes plugged into it, etcd and the BIRD top-of-rack.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::names::ns_name;
use super::state::{LabState, NodeState};
use super::{LAB_AS, LabError, Result, spawn_detached};
use crate::http;
use crate::netns::run;
use crate::process::wait_until;

/// How long etcd and BIRD may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);

/// Creates namespace `name` with loopback up.
pub fn create_ns(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "add", name]))?;
    run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
    Ok(())
}

/// Deletes namespace `name`, ignoring one that is already gone.
pub fn delete_ns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "delete", name])
        .stderr(Stdio::null())
        .status();
}

/// Process ids of everything running in namespace `name`.
pub fn pids_in(name: &str) -> Vec<u32> {
    run(Command::new("ip").args(["netns", "pids", name]))
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    Ok(run(Command::new("ip").args(["-n", ns]).args(args))?)
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]))?;
    Ok(())
}

/// Address of subnet `subnet`'s gateway (the fabric side), and the bridge of that subnet.
fn subnet_gateway(state: &LabState, subnet: u8) -> (Ipv4Addr, String) {
    if state.spec.subnets == 1 {
        (Ipv4Addr::new(10, 0, 0, 1), "br0".into())
    } else {
        (Ipv4Addr::new(10, 0, subnet, 1), format!("br{subnet}"))
    }
}

/// Makes the fabric namespace: one bridge (10.0.0.0/24) or, with two subnets, a router with a
/// bridge per subnet (10.0.1.0/24, 10.0.2.0/24) that forwards between them and knows no pod
/// routes.
pub fn build_fabric(state: &mut LabState) -> Result<()> {
    let role = if state.spec.subnets == 1 { "sw" } else { "rt" };
    let ns = ns_name(&state.spec.name, role);
    create_ns(&ns)?;
    state.namespaces.push(ns.clone());
    state.fabric_ns = ns.clone();
    // Only the gateway legs answer ARP for their addresses. By default every interface of a
    // namespace answers for all of its addresses, the bridge included: nodes then raced two
    // answers for the gateway (etcd's address) and could keep the bridge's MAC, which is a
    // port's MAC and changes as ports come and go; a node that kept a MAC no port has any
    // more lost etcd until its ARP entry timed out.
    sysctl(&ns, "net.ipv4.conf.all.arp_ignore", "1")?;
    for subnet in 1..=state.spec.subnets {
        let (gateway, bridge) = subnet_gateway(state, subnet);
        ip(&ns, &["link", "add", &bridge, "type", "bridge"])?;
        ip(&ns, &["link", "set", &bridge, "up"])?;
        // The gateway address sits on a veth plugged into the bridge, not on the bridge
        // itself: a bridge device advertises no tunnel offloads, so a VXLAN frame routed out
        // of it would be cut into MTU-sized UDP packets in software, which no hardware router
        // does. Through a veth the router forwards the frames as they came.
        let (leg, port) = (format!("gw{subnet}"), format!("gw{subnet}p"));
        ip(
            &ns,
            &["link", "add", &leg, "type", "veth", "peer", "name", &port],
        )?;
        ip(&ns, &["link", "set", &port, "master", &bridge])?;
        ip(&ns, &["link", "set", &port, "up"])?;
        ip(&ns, &["addr", "add", &format!("{gateway}/24"), "dev", &leg])?;
        ip(&ns, &["link", "set", &leg, "up"])?;
        fabric_offload(state, &ns, &leg)?;
        fabric_offload(state, &ns, &port)?;
    }
    if state.spec.subnets == 2 {
        sysctl(&ns, "net.ipv4.ip_forward", "1")?;
    }
    let (etcd_ip, _) = subnet_gateway(state, 1);
    state.etcd_endpoint = format!("http://{etcd_ip}:2379");
    if state.spec.tor {
        let base = subnet_gateway(state, 1).0.octets();
        state.tor_ip = Some(Ipv4Addr::new(base[0], base[1], base[2], 254));
    }
    Ok(())
}

/// Gives a fabric link the lab's GSO/GRO sizes, if it has any.
fn fabric_offload(state: &LabState, ns: &str, ifname: &str) -> Result<()> {
    if let Some(size) = state.spec.fabric_offload {
        crate::offload::set_sizes(ns, ifname, crate::offload::Sizes::all(size))?;
    }
    Ok(())
}

/// Plugs namespace `member` into subnet `subnet` through a veth (`eth0` on the member side)
/// with `address`, and a default route via the router when the lab has two subnets.
fn plug(state: &LabState, member: &str, port: &str, subnet: u8, address: &str) -> Result<()> {
    let fabric = &state.fabric_ns;
    let (gateway, bridge) = subnet_gateway(state, subnet);
    ip(
        fabric,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", member,
        ],
    )?;
    ip(fabric, &["link", "set", port, "master", &bridge])?;
    ip(fabric, &["link", "set", port, "up"])?;
    fabric_offload(state, fabric, port)?;
    fabric_offload(state, member, "eth0")?;
    ip(member, &["addr", "add", address, "dev", "eth0"])?;
    ip(member, &["link", "set", "eth0", "up"])?;
    if state.spec.subnets == 2 {
        ip(
            member,
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;
    }
    Ok(())
}

/// Makes node number `index` (0-based): its namespace, plugged into its subnet. Nodes
/// alternate between subnets when there are two, so both same-subnet and cross-subnet pairs
/// exist.
pub fn add_node(state: &mut LabState, index: usize) -> Result<String> {
    let name = format!("n{}", index + 1);
    let ns = ns_name(&state.spec.name, &name);
    let subnet = if state.spec.subnets == 2 {
        (index % 2) as u8 + 1
    } else {
        1
    };
    let third = if state.spec.subnets == 2 { subnet } else { 0 };
    let host = u8::try_from(11 + index)
        .map_err(|_| LabError::Lab(format!("node index {index} out of range")))?;
    let address = format!("10.0.{third}.{host}/24");
    create_ns(&ns)?;
    state.namespaces.push(ns.clone());
    plug(state, &ns, &format!("v{name}"), subnet, &address)?;
    let socket = state.dir.join(format!("{name}.sock"));
    state.nodes.push(NodeState {
        name: name.clone(),
        ns,
        address,
        subnet,
        socket,
        agent: None,
    });
    Ok(name)
}

/// Starts etcd in the fabric namespace and waits until it answers `/health`.
pub fn start_etcd(state: &mut LabState) -> Result<()> {
    let (ip, _) = subnet_gateway(state, 1);
    let data = state.dir.join("etcd");
    let log = fs::File::create(state.dir.join("etcd.log"))?;
    let client = format!("http://{ip}:2379");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &state.fabric_ns, "etcd"])
        .args(["--name", "lab", "--data-dir"])
        .arg(&data)
        .args([
            "--listen-client-urls",
            &format!("{client},http://127.0.0.1:2379"),
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "lab=http://127.0.0.1:2380",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    state.etcd_pid = Some(spawn_detached(&mut command)?);
    let addr = SocketAddr::from((ip, 2379));
    wait_until(START_TIMEOUT, POLL, || {
        matches!(http::get_addr_in_ns(&state.fabric_ns, addr, "/health"), Ok((200, body)) if body.contains("true"))
    })
    .then_some(())
    .ok_or_else(|| {
        LabError::Lab(format!(
            "etcd did not become healthy within {:?}; see {}",
            crate::vm::scaled(START_TIMEOUT),
            state.dir.join("etcd.log").display()
        ))
    })
}

/// BIRD 2 configuration of the ToR: an iBGP route reflector that accepts every node of the
/// lab (dynamic neighbours from the lab's address range) as a client.
pub fn tor_config(tor_ip: Ipv4Addr) -> String {
    format!(
        r#"router id {tor_ip};
protocol device {{ }}
protocol bgp nodes {{
  local {tor_ip} as {LAB_AS};
  neighbor range 10.0.0.0/16 as {LAB_AS};
  dynamic name "node";
  rr client;
  rr cluster id {tor_ip};
  hold time 9;
  connect retry time 1;
  ipv4 {{ import all; export all; }};
}}
"#
    )
}

/// Starts BIRD as the ToR route reflector in its own namespace on subnet 1.
pub fn start_tor(state: &mut LabState) -> Result<()> {
    let tor_ip = state
        .tor_ip
        .ok_or_else(|| LabError::Lab("the lab has no ToR address".into()))?;
    let ns = ns_name(&state.spec.name, "tor");
    create_ns(&ns)?;
    state.namespaces.push(ns.clone());
    plug(state, &ns, "vtor", 1, &format!("{tor_ip}/24"))?;
    let config = state.dir.join("bird.conf");
    let socket = state.dir.join("bird.ctl");
    fs::write(&config, tor_config(tor_ip))?;
    let log = fs::File::create(state.dir.join("bird.log"))?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &ns, "bird", "-f", "-c"])
        .arg(&config)
        .arg("-s")
        .arg(&socket)
        .arg("-P")
        .arg(state.dir.join("bird.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    state.tor_pid = Some(spawn_detached(&mut command)?);
    wait_until(START_TIMEOUT, POLL, || {
        Command::new("birdc")
            .arg("-s")
            .arg(&socket)
            .arg("show status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .then_some(())
    .ok_or_else(|| {
        LabError::Lab(format!(
            "BIRD did not start within {:?}",
            crate::vm::scaled(START_TIMEOUT)
        ))
    })
}
