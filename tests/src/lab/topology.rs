//! The lab's namespaces and links: the fabric (one bridge, or a router with a bridge per
//! subnet), nodes plugged into it, etcd and the BIRD top-of-rack.

use std::fs;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::names::ns_name;
use super::state::{LabState, NodeState};
use super::{LAB_AS, LabError, Result, spawn_detached};
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

/// Above this many nodes the lab pins its neighbour entries ([`pin_neighbours`]).
pub const PIN_NEIGHBOURS_ABOVE: usize = 20;

/// The MAC address of `ifname` in namespace `ns`.
fn mac_of(ns: &str, ifname: &str) -> Result<String> {
    let brief = ip(ns, &["-br", "link", "show", "dev", ifname])?;
    brief
        .split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .ok_or_else(|| LabError::Lab(format!("no MAC address for {ifname} in {ns}: {brief}")))
}

/// Runs `commands` (one `ip` command per line, without the `ip`) in namespace `ns` as one
/// `ip -batch`.
fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(commands.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Lab(format!(
            "ip -batch in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Gives every node a permanent neighbour entry for every other node of its subnet and for its
/// gateway, and the fabric one for every node. The kernel keeps one neighbour table for all
/// namespaces, and its garbage-collection limit (`gc_thresh3`, 1024 entries by default) is
/// global: a lab of N nodes that each resolve every other needs N² entries, and past the
/// limit the kernel drops packets ("neighbor table overflow") and sessions stall. Permanent
/// entries do not count against the limit; on real machines each node has a table of its
/// own.
pub fn pin_neighbours(state: &LabState) -> Result<()> {
    let mut nodes = Vec::new();
    for node in &state.nodes {
        nodes.push((node, mac_of(&node.ns, "eth0")?));
    }
    let mut fabric = String::new();
    for subnet in 1..=state.spec.subnets {
        let (gateway, _) = subnet_gateway(state, subnet);
        let leg = format!("gw{subnet}");
        let gateway_mac = mac_of(&state.fabric_ns, &leg)?;
        let members: Vec<_> = nodes.iter().filter(|(n, _)| n.subnet == subnet).collect();
        for (node, mac) in &members {
            fabric.push_str(&format!(
                "neigh replace {} lladdr {mac} dev {leg} nud permanent\n",
                node.ip()
            ));
            let mut own =
                format!("neigh replace {gateway} lladdr {gateway_mac} dev eth0 nud permanent\n");
            for (other, other_mac) in &members {
                if other.name != node.name {
                    own.push_str(&format!(
                        "neigh replace {} lladdr {other_mac} dev eth0 nud permanent\n",
                        other.ip()
                    ));
                }
            }
            ip_batch(&node.ns, &own)?;
        }
    }
    ip_batch(&state.fabric_ns, &fabric)
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

/// The nodes' IPv6 addresses in a dual-stack lab: this and the host part of their IPv4
/// address, in one /64 (dual stack needs one subnet).
const NODE6_PREFIX: &str = "fd00:10::";

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
    let address6 = state
        .spec
        .dual_stack
        .then(|| format!("{NODE6_PREFIX}{host}/64"));
    if let Some(address6) = &address6 {
        ip(
            &ns,
            &["-6", "addr", "add", address6, "dev", "eth0", "nodad"],
        )?;
    }
    let socket = state.dir.join(format!("{name}.sock"));
    state.nodes.push(NodeState {
        name: name.clone(),
        ns,
        address,
        address6,
        subnet,
        socket,
        agent: None,
    });
    Ok(name)
}

/// Client port of etcd member `index`; its peer port is the next one.
fn etcd_port(index: usize) -> u16 {
    // At most 5 members: 2379, 2389, … 2419.
    2379 + 10 * index as u16
}

/// Starts the lab's etcd members in the fabric namespace (with TLS, after making the lab's
/// CA and certificates) and waits until every member is healthy.
pub fn start_etcd(state: &mut LabState) -> Result<()> {
    let (ip, _) = subnet_gateway(state, 1);
    if state.spec.etcd_tls {
        let dir = state.dir.join("pki");
        fs::create_dir_all(&dir)?;
        state.etcd_tls = Some(crate::etcd::TestPki::generate_in(&dir, ip.into())?);
    }
    let scheme = if state.spec.etcd_tls { "https" } else { "http" };
    let members: Vec<(String, String, String)> = (0..state.spec.etcd_members)
        .map(|index| {
            let port = etcd_port(index);
            (
                format!("lab{index}"),
                format!("{scheme}://{ip}:{port}"),
                format!("http://127.0.0.1:{}", port + 1),
            )
        })
        .collect();
    state.etcd_endpoint = members
        .iter()
        .map(|(_, client, _)| client.as_str())
        .collect::<Vec<_>>()
        .join(",");
    state.etcd_members = members
        .iter()
        .map(|(name, endpoint, _)| super::EtcdMemberState {
            name: name.clone(),
            endpoint: endpoint.clone(),
            pid: None,
            paused: false,
        })
        .collect();
    for index in 0..members.len() {
        spawn_etcd_member(state, index)?;
    }
    wait_until(START_TIMEOUT, POLL, || etcd_healthy(state))
        .then_some(())
        .ok_or_else(|| {
            LabError::Lab(format!(
                "etcd did not become healthy within {:?}; see {}",
                crate::vm::scaled(START_TIMEOUT),
                state.dir.join("etcd.log").display()
            ))
        })
}

/// Starts the lab's etcd gRPC proxies in the fabric namespace, each in front of every member,
/// and waits until each answers.
pub fn start_etcd_proxies(state: &mut LabState) -> Result<()> {
    let (ip, _) = subnet_gateway(state, 1);
    for index in 0..state.spec.etcd_proxies {
        // After the members' ports (2379 … 2420).
        let port = 2479 + 10 * index as u16;
        let endpoint = format!("http://{ip}:{port}");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.dir.join(format!("etcd-proxy-{index}.log")))?;
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &state.fabric_ns,
                "etcd",
                "grpc-proxy",
                "start",
            ])
            .arg(format!("--endpoints={}", state.etcd_endpoint))
            .arg(format!("--listen-addr={ip}:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        spawn_detached(&mut command)?;
        let answers = || {
            etcdctl(state, &endpoint)
                .args(["get", "--prefix", "--keys-only", "--limit", "1", "/"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !wait_until(START_TIMEOUT, POLL, answers) {
            return Err(LabError::Lab(format!(
                "etcd gRPC proxy {endpoint} did not answer within {:?}; see {}",
                crate::vm::scaled(START_TIMEOUT),
                state.dir.join(format!("etcd-proxy-{index}.log")).display()
            )));
        }
        state.etcd_proxies.push(endpoint);
    }
    Ok(())
}

/// The log file of etcd member `index`: `etcd.log` for the first (the one the diagnostics
/// show), `etcd-<index>.log` for the others.
pub fn etcd_log(state: &LabState, index: usize) -> std::path::PathBuf {
    match index {
        0 => state.dir.join("etcd.log"),
        _ => state.dir.join(format!("etcd-{index}.log")),
    }
}

/// Starts etcd member `index` (again: on its data, after a kill) and records its pid.
pub fn spawn_etcd_member(state: &mut LabState, index: usize) -> Result<()> {
    let initial_cluster = state
        .etcd_members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{}=http://127.0.0.1:{}", m.name, etcd_port(i) + 1))
        .collect::<Vec<_>>()
        .join(",");
    let member = &state.etcd_members[index];
    let data = state.dir.join(format!("etcd-data-{index}"));
    let client_urls = [member.endpoint.clone()];
    let peer_url = format!("http://127.0.0.1:{}", etcd_port(index) + 1);
    let args = crate::etcd::MemberArgs {
        name: &member.name,
        data: &data,
        client_urls: &client_urls,
        peer_url: &peer_url,
        initial_cluster: &initial_cluster,
        tls: state.etcd_tls.as_ref(),
    }
    .args();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(etcd_log(state, index))?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &state.fabric_ns, "etcd"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let pid = spawn_detached(&mut command)?;
    let member = &mut state.etcd_members[index];
    member.pid = Some(pid);
    member.paused = false;
    Ok(())
}

/// `etcdctl` in the fabric namespace against `endpoints`, with the lab's client certificate
/// over TLS.
pub fn etcdctl(state: &LabState, endpoints: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &state.fabric_ns, "etcdctl"])
        .args(crate::etcd::etcdctl_args(
            endpoints,
            state.etcd_tls.as_ref(),
        ));
    command
}

/// Whether every member of the lab's etcd that runs unpaused answers as healthy.
pub fn etcd_healthy(state: &LabState) -> bool {
    let endpoints: Vec<&str> = state
        .etcd_members
        .iter()
        .filter(|m| m.pid.is_some() && !m.paused)
        .map(|m| m.endpoint.as_str())
        .collect();
    !endpoints.is_empty()
        && run(etcdctl(state, &endpoints.join(",")).args(["endpoint", "health"])).is_ok()
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
