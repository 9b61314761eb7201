//! Pod interfaces: the veth pair that joins a pod's network namespace to the node, set up the
//! way Calico does it, so pods see a plain routed network.
//!
//! - The pod end is created directly inside the pod's namespace (the veth is made with its
//!   peer's `IFLA_NET_NS_FD`), never moved there afterwards.
//! - Pod side: `CNI_IFNAME`, the pod's `/32` (and `/128`), routes `169.254.1.1 dev eth0 scope
//!   link` and `default via 169.254.1.1` (IPv6: `default via fe80::ecee:eeff:feee:eeee dev
//!   eth0`).
//! - Host side: `wren` + 11 hex digits of SHA-256 of the workload id, MAC `ee:ee:ee:ee:ee:ee`,
//!   proxy ARP on (it answers for 169.254.1.1), no IPv4 address, the link-local address
//!   `fe80::ecee:eeff:feee:eeee` (the pods' IPv6 gateway, without duplicate address detection
//!   so it answers at once), and a route `<pod ip>/32 dev wren… scope link proto 201`.
//!
//! - Both ends: the MTU, and the underlay's larger GSO/GRO packet sizes when the node forwards
//!   pod traffic without a tunnel (see [`super::mtu`]).
//!
//! The host interface's alias records its workload id, which is how a name collision with
//! another workload is told apart from a retried ADD of the same one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Mutex;

use ipnet::IpNet;

use crate::sync::lock;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoData, InfoVeth,
    LinkAttribute,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use sha2::{Digest, Sha256};

use super::link::{self, LinkState};
use super::manager::{RouteFilter, dump_routes};
use super::mtu::OffloadSizes;
use super::neigh;
use super::netlink::{Netlink, NetlinkError, Request, family_of};
use super::netns::{Netns, NetnsError};
use super::route::{MAIN_TABLE, NextHop, Protocol, Route, Shape, valid_ifname};

/// The MAC address of every host-side veth: pods always resolve their gateway to it.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The pods' IPv4 gateway, answered by proxy ARP on the host veth.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway: the host veth's link-local address (the EUI-64 address of
/// [`HOST_MAC`]).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The MTU when the configuration gives none.
pub const DEFAULT_MTU: u32 = 1500;
/// Marks a host veth as wren's; the workload id follows.
pub(crate) const ALIAS_PREFIX: &str = "wren:";
/// Kernel limit on an interface alias, less the prefix and some room.
const ALIAS_ID_MAX: usize = 200;

/// What a pod's interface should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Identifies the attachment (stable across ADD, CHECK and DEL of it, for instance
    /// `<containerID>/<ifname>`); the host interface name is derived from it.
    pub workload_id: String,
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The interface name inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The pod's addresses, at most one per family; each goes on as a `/32` or `/128`.
    pub addresses: Vec<IpAddr>,
    /// MTU of both ends.
    pub mtu: u32,
    /// GSO/GRO packet sizes of both ends; `None` leaves the kernel's standard 64 KiB.
    pub offload: Option<OffloadSizes>,
}

/// What a new pod interface gets when its network configuration does not say: the agent keeps
/// it current as the underlay and the pools' encapsulation change, and the CNI handler reads it
/// at every ADD.
#[derive(Debug)]
pub struct PodDefaults {
    current: Mutex<(u32, Option<OffloadSizes>)>,
}

impl PodDefaults {
    /// Defaults of `mtu` and the kernel's standard offload sizes.
    pub fn new(mtu: u32) -> Self {
        Self {
            current: Mutex::new((mtu, None)),
        }
    }

    /// The pod MTU and the pods' GSO/GRO packet sizes (`None`: the kernel's standard), read
    /// together.
    pub fn current(&self) -> (u32, Option<OffloadSizes>) {
        *lock(&self.current)
    }

    /// Replaces both.
    pub fn set(&self, mtu: u32, offload: Option<OffloadSizes>) {
        *lock(&self.current) = (mtu, offload);
    }
}

impl PodSpec {
    pub(crate) fn validate(&self) -> Result<(), PodError> {
        let invalid = |why: String| Err(PodError::Invalid(why));
        if self.workload_id.is_empty() {
            return invalid("empty workload id".into());
        }
        if !valid_ifname(&self.ifname) {
            return invalid(format!("interface name {:?} is not valid", self.ifname));
        }
        if self.addresses.iter().filter(|a| a.is_ipv4()).count() > 1
            || self.addresses.iter().filter(|a| a.is_ipv6()).count() > 1
        {
            return invalid("more than one address of a family".into());
        }
        if !(68..=65535).contains(&self.mtu) {
            return invalid(format!("MTU {} out of range 68..=65535", self.mtu));
        }
        Ok(())
    }

    pub(crate) fn has_v4(&self) -> bool {
        self.addresses.iter().any(IpAddr::is_ipv4)
    }

    pub(crate) fn has_v6(&self) -> bool {
        self.addresses.iter().any(IpAddr::is_ipv6)
    }

    pub(crate) fn host_networks(&self) -> Vec<IpNet> {
        self.addresses.iter().map(|a| IpNet::from(*a)).collect()
    }
}

/// The interface a pod was given, for the CNI result and the workload record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    /// The host end's name (`wren…`).
    pub host_ifname: String,
    /// The host end's index in the node's namespace.
    pub host_ifindex: u32,
    /// The pod end's name (`CNI_IFNAME`).
    pub pod_ifname: String,
    /// The pod end's index in the pod's namespace.
    pub pod_ifindex: u32,
    /// The pod end's MAC address.
    pub pod_mac: [u8; 6],
    /// The host end's MAC address ([`HOST_MAC`]).
    pub host_mac: [u8; 6],
    /// The pod's addresses as configured (`/32`, `/128`).
    pub addresses: Vec<IpNet>,
}

impl PodInterface {
    /// The node's routes to this pod, for the route manager's desired set: a reconcile that
    /// lacks them deletes them.
    pub fn host_routes(&self) -> Vec<Route> {
        host_routes(&self.host_ifname, &self.addresses)
    }
}

/// The node's routes to a pod's addresses through its host veth.
pub fn host_routes(host_ifname: &str, addresses: &[IpNet]) -> Vec<Route> {
    addresses
        .iter()
        .map(|a| Route::device(*a, host_ifname))
        .collect()
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The host-side interface name of a workload: `wren` + the first 11 hex digits of the
/// SHA-256 of its id (15 characters, the kernel's limit).
pub fn host_ifname(workload_id: &str) -> String {
    let digest = Sha256::digest(workload_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("wren{}", &hex[..11])
}

/// Why a pod interface could not be set up, checked or torn down.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The request itself is unusable.
    #[error("invalid pod interface request: {0}")]
    Invalid(String),
    /// The pod's namespace cannot be reached.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The host interface name is taken by something that is not this workload's.
    #[error("host interface {name} already exists and belongs to {owner}")]
    Collision {
        /// The contested name.
        name: String,
        /// Who has it.
        owner: String,
    },
    /// The pod already has an interface of that name.
    #[error("interface {ifname} already exists in network namespace {netns}")]
    PodInterfaceExists {
        /// The interface name.
        ifname: String,
        /// The pod's namespace.
        netns: PathBuf,
    },
    /// The pod already routes by default through another interface: wren is then asked to be
    /// an additional network, while it gives its interface the pod's default route.
    #[error(
        "the pod already has an {family} default route ({route}) in network namespace {netns}: \
         wren must be the pod's first network, which owns its default route, not an additional one"
    )]
    DefaultRouteTaken {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The route as the kernel has it (destination, gateway, device).
        route: String,
        /// The pod's namespace.
        netns: PathBuf,
    },
    /// The kernel refused a step.
    #[error("{step}: {source}")]
    Netlink {
        /// What was being done.
        step: &'static str,
        /// The kernel's answer.
        source: NetlinkError,
    },
}

pub(crate) fn at(step: &'static str) -> impl Fn(NetlinkError) -> PodError {
    move |source| PodError::Netlink { step, source }
}

/// Who a host interface with a workload's name belongs to.
enum Owner {
    /// This workload: a retried ADD, or a leftover of a failed one.
    Us,
    /// A wren interface of another workload (a hash collision).
    Workload(String),
    /// Something wren did not make.
    Foreign,
}

fn owner_of(link: &LinkState, workload_id: &str) -> Owner {
    match link
        .alias
        .as_deref()
        .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
    {
        Some(id) if id == alias_id(workload_id) => Owner::Us,
        Some(id) => Owner::Workload(id.to_string()),
        // A veth of our name without alias is one whose setup died before naming it.
        None if link.veth => Owner::Us,
        None => Owner::Foreign,
    }
}

/// The workload id as recorded in the alias; long ids are recorded by their digest.
pub(crate) fn alias_id(workload_id: &str) -> String {
    if workload_id.len() <= ALIAS_ID_MAX {
        workload_id.to_string()
    } else {
        let digest = Sha256::digest(workload_id.as_bytes());
        format!(
            "sha256:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )
    }
}

fn collision(link: &LinkState, owner: Owner) -> PodError {
    let owner = match owner {
        Owner::Workload(id) => format!("workload {id:?}"),
        _ => "an interface wren did not create".to_string(),
    };
    PodError::Collision {
        name: link.name.clone(),
        owner,
    }
}

/// Creates and configures a pod's interface. On any failure, everything created so far is
/// removed again. Calling it again for the same workload replaces its interface.
///
/// Runs in the calling thread's network namespace (the node's); reaches the pod's namespace
/// through `spec.netns`.
pub fn setup_pod(spec: &PodSpec) -> Result<PodInterface, PodError> {
    spec.validate()?;
    let host_name = host_ifname(&spec.workload_id);
    let netns = Netns::open(&spec.netns)?;
    let mut pod = netns.netlink()?;
    let mut host = Netlink::open().map_err(at("open a netlink socket in the node's namespace"))?;

    if let Some(existing) =
        link::get(&mut host, &host_name).map_err(at("look up host interface"))?
    {
        match owner_of(&existing, &spec.workload_id) {
            Owner::Us => link::delete(&mut host, &host_name)
                .map_err(at("remove the previous host interface of this workload"))?,
            other => return Err(collision(&existing, other)),
        }
    }
    let pod_taken = |pod: &mut Netlink| -> Result<bool, PodError> {
        Ok(link::get(pod, &spec.ifname)
            .map_err(at("look up pod interface"))?
            .is_some())
    };
    if pod_taken(&mut pod)? {
        return Err(PodError::PodInterfaceExists {
            ifname: spec.ifname.clone(),
            netns: spec.netns.clone(),
        });
    }

    if let Some((family, route)) = default_route_in(&mut pod, spec)? {
        return Err(PodError::DefaultRouteTaken {
            family,
            route,
            netns: spec.netns.clone(),
        });
    }

    let veth = veth_message(spec, &host_name, &netns);
    if let Err(e) = host.request(veth, NLM_F_CREATE | NLM_F_EXCL) {
        // Somebody took one of the names since we looked.
        if e.errno() == Some(libc::EEXIST) {
            if let Some(link) = link::get(&mut host, &host_name).ok().flatten() {
                let owner = owner_of(&link, &spec.workload_id);
                return Err(collision(&link, owner));
            }
            return Err(PodError::PodInterfaceExists {
                ifname: spec.ifname.clone(),
                netns: spec.netns.clone(),
            });
        }
        return Err(at("create veth pair")(e));
    }

    match configure(&mut host, &mut pod, spec, &host_name) {
        Ok(interface) => Ok(interface),
        Err(e) => {
            // Deleting the host end takes the pod end and the host routes with it.
            if let Err(undo) = link::delete(&mut host, &host_name) {
                tracing::warn!(interface = %host_name, error = %undo, "cannot undo veth");
            }
            Err(e)
        }
    }
}

/// A default route the pod already has in a family it is about to get an address of, as
/// `(family, the route in words)`.
fn default_route_in(
    pod: &mut Netlink,
    spec: &PodSpec,
) -> Result<Option<(&'static str, String)>, PodError> {
    let families = [
        (spec.has_v4(), AddressFamily::Inet, "IPv4"),
        (spec.has_v6(), AddressFamily::Inet6, "IPv6"),
    ];
    for (wanted, family, name) in families {
        if !wanted {
            continue;
        }
        let filter = RouteFilter {
            family,
            table: MAIN_TABLE,
            protocol: None,
            oif: None,
        };
        let mut present = Vec::new();
        dump_routes(pod, &filter, &mut present).map_err(at("list the pod's routes"))?;
        if let Some(route) = present.iter().find(|r| r.dst.prefix_len() == 0) {
            let mut words = String::from("default");
            let (via, oif) = match route.shape {
                Shape::Gateway { via, oif, .. } => (Some(via), oif),
                Shape::Device { oif } => (None, Some(oif)),
                Shape::Blackhole | Shape::Multipath(_) | Shape::Other => (None, None),
            };
            if let Some(via) = via {
                words.push_str(&format!(" via {via}"));
            }
            if let Some(oif) = oif {
                let found = link::find(pod, LinkUnspec::new_with_index(oif).build())
                    .map_err(at("look up the pod's default route's interface"))?;
                let dev = found.map(|l| LinkState::from_message(&l).name);
                words.push_str(&format!(" dev {}", dev.unwrap_or_else(|| oif.to_string())));
            }
            return Ok(Some((name, words)));
        }
    }
    Ok(None)
}

/// The `RTM_NEWLINK` that makes the pair with the pod end born in the pod's namespace.
fn veth_message(spec: &PodSpec, host_name: &str, netns: &Netns) -> RouteNetlinkMessage {
    use std::os::fd::AsRawFd;
    let peer = LinkUnspec::new_with_name(&spec.ifname)
        .mtu(spec.mtu)
        .setns_by_fd(netns.file().as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkVeth>::new(host_name, &spec.ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(spec.mtu)
        .address(HOST_MAC.to_vec())
        .build();
    RouteNetlinkMessage::NewLink(message)
}

/// Everything after the pair exists: host end, pod end, host routes.
fn configure(
    host: &mut Netlink,
    pod: &mut Netlink,
    spec: &PodSpec,
    host_name: &str,
) -> Result<PodInterface, PodError> {
    let host_link = link::get(host, host_name)
        .map_err(at("look up new host interface"))?
        .ok_or_else(|| at("look up new host interface")(no_device()))?;
    let h = host_link.index;

    let mut host_setup = vec![Request::new(host_settings(spec, h), 0)];
    if spec.has_v6() {
        let gateway = IpNet::new_assert(IpAddr::V6(GATEWAY_V6), 64);
        host_setup.push(Request::new(
            link::add_address(h, gateway, true),
            NLM_F_CREATE,
        ));
    }
    host_setup.push(Request::new(link::set_up(h), 0));
    run(host, host_setup, "configure host interface")?;
    if let Some(offload) = spec.offload {
        set_offload(host, h, offload, host_name);
    }

    let pod_link = link::get(pod, &spec.ifname)
        .map_err(at("look up pod interface"))?
        .ok_or_else(|| at("look up pod interface")(no_device()))?;
    let p = pod_link.index;
    if let Some(offload) = spec.offload {
        set_offload(pod, p, offload, &spec.ifname);
    }
    let mut pod_setup = vec![Request::new(link::set_up(p), 0)];
    for net in spec.host_networks() {
        pod_setup.push(Request::new(
            link::add_address(p, net, net.addr().is_ipv6()),
            NLM_F_CREATE,
        ));
    }
    if spec.has_v4() {
        // The gateway resolves without asking: proxy ARP on the host end only answers when the
        // node has a route toward 169.254.1.1 (a default route), which wren must not rely on.
        pod_setup.push(Request::new(
            neigh::permanent(p, IpAddr::V4(GATEWAY_V4), HOST_MAC),
            NLM_F_CREATE | NLM_F_REPLACE,
        ));
    }
    for route in pod_routes(spec) {
        let message = RouteNetlinkMessage::NewRoute(route.to_message(Some(p)));
        pod_setup.push(Request::new(message, NLM_F_CREATE | NLM_F_EXCL));
    }
    run(pod, pod_setup, "configure pod interface")?;

    let addresses = spec.host_networks();
    add_host_routes(host, &host_routes(host_name, &addresses), h)?;

    Ok(PodInterface {
        host_ifname: host_name.to_string(),
        host_ifindex: h,
        pod_ifname: spec.ifname.clone(),
        pod_ifindex: p,
        pod_mac: pod_link.mac.unwrap_or_default(),
        host_mac: HOST_MAC,
        addresses,
    })
}

/// Gives one end the offload sizes. Only an optimisation: a kernel that refuses them (too old,
/// or beyond what the device can take) leaves the standard 64 KiB, and the pod works as well.
fn set_offload(netlink: &mut Netlink, index: u32, offload: OffloadSizes, name: &str) {
    let mut message = LinkUnspec::new_with_index(index).build();
    message.attributes.extend(offload.attributes());
    if let Err(e) = run(
        netlink,
        [Request::new(RouteNetlinkMessage::SetLink(message), 0)],
        "set GSO/GRO sizes",
    ) {
        tracing::warn!(interface = name, error = %e, "keeping the standard GSO/GRO sizes");
    }
}

fn no_device() -> NetlinkError {
    NetlinkError::Kernel {
        errno: libc::ENODEV,
        detail: None,
    }
}

/// Host-end settings: alias, proxy ARP, strict reverse-path filter (a pod can only send from
/// its own addresses), and for IPv6 no automatic link-local (the gateway address is added
/// instead).
fn host_settings(spec: &PodSpec, index: u32) -> RouteNetlinkMessage {
    let mut inet = InetDevConf::default();
    inet.proxy_arp = 1;
    inet.rp_filter = 1;
    let mut af = vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(inet)])];
    if spec.has_v6() {
        af.push(AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )]));
    }
    let message = LinkUnspec::new_with_index(index)
        .alias(format!("{ALIAS_PREFIX}{}", alias_id(&spec.workload_id)))
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(af))
        .build();
    RouteNetlinkMessage::SetLink(message)
}

/// The routes inside the pod: its gateways and default routes through them.
pub(crate) fn pod_routes(spec: &PodSpec) -> Vec<Route> {
    let dev = spec.ifname.clone();
    let mut routes = Vec::new();
    if spec.has_v4() {
        routes.push(Route::device(
            IpNet::from(IpAddr::V4(GATEWAY_V4)),
            dev.clone(),
        ));
        routes.push(default_via(IpAddr::V4(GATEWAY_V4), &dev));
    }
    if spec.has_v6() {
        routes.push(default_via(IpAddr::V6(GATEWAY_V6), &dev));
    }
    routes
}

fn default_via(gateway: IpAddr, dev: &str) -> Route {
    let any = match gateway {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let dst = IpNet::new_assert(any, 0);
    Route {
        next_hop: NextHop::Gateway {
            via: gateway,
            dev: Some(dev.to_string()),
            onlink: false,
        },
        ..Route::blackhole(dst).with_protocol(Protocol::WREN)
    }
}

/// Runs a batch that must succeed as a whole; the first refusal is the error.
fn run(
    netlink: &mut Netlink,
    requests: impl IntoIterator<Item = Request>,
    step: &'static str,
) -> Result<(), PodError> {
    let failures = netlink.batch(requests).map_err(at(step))?;
    match failures.into_iter().next() {
        Some((_, e)) => Err(at(step)(e)),
        None => Ok(()),
    }
}

/// Adds the node's routes to a pod through its host end (index `h`). A destination that
/// holds wren's own blackhole is taken over: with one-address blocks the block's blackhole
/// is the pod's own destination, and the agent installs it as soon as the block is claimed,
/// before the ADD gets here. Anything else there refuses the pod.
fn add_host_routes(host: &mut Netlink, routes: &[Route], h: u32) -> Result<(), PodError> {
    const STEP: &str = "add the node's route to the pod";
    let message = |route: &Route| RouteNetlinkMessage::NewRoute(route.to_message(Some(h)));
    let failures = host
        .batch(
            routes
                .iter()
                .map(|route| Request::new(message(route), NLM_F_CREATE | NLM_F_EXCL)),
        )
        .map_err(at(STEP))?;
    for (index, error) in failures {
        let route = &routes[index];
        if error.errno() != Some(libc::EEXIST) || !holds_our_blackhole(host, route.dst)? {
            return Err(at(STEP)(error));
        }
        run(
            host,
            [Request::new(message(route), NLM_F_CREATE | NLM_F_REPLACE)],
            STEP,
        )?;
    }
    Ok(())
}

/// Whether the main table's route to exactly `dst` is a blackhole of wren's protocol.
fn holds_our_blackhole(host: &mut Netlink, dst: IpNet) -> Result<bool, PodError> {
    let filter = RouteFilter {
        family: family_of(dst.addr()),
        table: MAIN_TABLE,
        protocol: Some(Protocol::WREN),
        oif: None,
    };
    let mut present = Vec::new();
    dump_routes(host, &filter, &mut present).map_err(at("list the node's routes"))?;
    Ok(present
        .iter()
        .any(|r| r.dst == dst && r.shape == Shape::Blackhole))
}

/// Removes a workload's interface (both ends, and the node's routes through it). Succeeds when
/// there is nothing to remove: the interface is gone, or its pod namespace was deleted (which
/// takes the pair with it). Returns whether an interface was removed. An interface of that name
/// that belongs to something else is left alone and reported as a collision.
pub fn teardown_pod(workload_id: &str) -> Result<bool, PodError> {
    let name = host_ifname(workload_id);
    let mut host = Netlink::open().map_err(at("open a netlink socket in the node's namespace"))?;
    let Some(existing) = link::get(&mut host, &name).map_err(at("look up host interface"))? else {
        return Ok(false);
    };
    match owner_of(&existing, workload_id) {
        Owner::Us => {
            link::delete(&mut host, &name).map_err(at("delete host interface"))?;
            Ok(true)
        }
        other => Err(collision(&existing, other)),
    }
}

/// Whether `name` has the shape of a host veth name wren gives ([`host_ifname`]).
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix("wren").is_some_and(|rest| {
        rest.len() == 11
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A host veth of a pod, as the kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVeth {
    /// Its name (`wren…`).
    pub name: String,
    /// The workload id its alias records; `None` when the setup that made it died before
    /// naming it.
    pub workload_id: Option<String>,
    /// Whether it is up (a setup cut short leaves it down).
    pub up: bool,
}

/// Every host veth of a pod in the calling thread's network namespace (the node's).
pub fn host_veths() -> Result<Vec<HostVeth>, PodError> {
    let mut host = Netlink::open().map_err(at("open a netlink socket in the node's namespace"))?;
    let mut found = Vec::new();
    host.dump(
        RouteNetlinkMessage::GetLink(LinkUnspec::new_with_index(0).build()),
        |message| {
            if let RouteNetlinkMessage::NewLink(link) = message {
                let state = LinkState::from_message(&link);
                if state.veth && is_host_ifname(&state.name) {
                    found.push(HostVeth {
                        workload_id: state
                            .alias
                            .as_deref()
                            .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
                            .map(str::to_owned),
                        name: state.name,
                        up: state.up,
                    });
                }
            }
        },
    )
    .map_err(at("list the node's interfaces"))?;
    Ok(found)
}

/// Removes the host veth `name` (and with it the pod end and the node's routes through it).
/// Only a veth named as wren names them is touched; `Ok(false)` when there was none.
pub fn remove_host_veth(name: &str) -> Result<bool, PodError> {
    if !is_host_ifname(name) {
        return Err(PodError::Invalid(format!(
            "{name:?} is not the name of a pod's host interface"
        )));
    }
    let mut host = Netlink::open().map_err(at("open a netlink socket in the node's namespace"))?;
    match link::get(&mut host, name).map_err(at("look up host interface"))? {
        Some(link) if link.veth => {
            link::delete(&mut host, name).map_err(at("delete host interface"))?;
            Ok(true)
        }
        Some(link) => Err(collision(&link, Owner::Foreign)),
        None => Ok(false),
    }
}
