//! [`RouteManager`]: keeps the kernel's routes of wren's protocols equal to a desired set, on
//! one long-lived netlink socket, many changes per system call.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{Netlink, NetlinkError, Request};
use super::reconcile::{Phase, Step, Wanted, phase_of, plan, scatter};
use super::route::{
    Gateway, InvalidRoute, KernelRoute, MAIN_TABLE, NextHop, Protocol, Route, table_header,
};

/// How often a dump is read again when the table changes while it is read.
const DUMP_ATTEMPTS: usize = 5;

/// A failure of the route manager as a whole (as opposed to one route).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Opening the socket or reading the kernel's tables failed.
    #[error("route table: {0}")]
    Netlink(#[from] NetlinkError),
}

/// What was done to one route.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RouteAction {
    /// Created where no route of ours was.
    Add,
    /// Swapped for a route of ours at the same destination.
    Replace,
    /// Deleted.
    Remove,
}

impl fmt::Display for RouteAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteAction::Add => "add",
            RouteAction::Replace => "replace",
            RouteAction::Remove => "remove",
        })
    }
}

/// Why one route could not be brought to its desired state.
#[derive(Debug, thiserror::Error)]
pub enum RouteFailureReason {
    /// The route itself is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidRoute),
    /// The route names a device that does not exist (yet, or any more).
    #[error("no device named {0}")]
    NoSuchDevice(String),
    /// Two desired routes share a table and destination; the first one is kept.
    #[error("another desired route has the same destination and table")]
    Duplicate,
    /// The route is in a table this manager does not look after.
    #[error("table {0} is not managed (see RouteManager::manage_table)")]
    UnmanagedTable(u32),
    /// A route of another protocol holds the destination (same table, metric and TOS); wren
    /// does not overwrite it. Found by reconcile, which knows no route of ours is there.
    #[error("a route of another protocol holds this destination; wren leaves it alone")]
    Occupied,
    /// The kernel refused the change.
    #[error(transparent)]
    Kernel(#[from] NetlinkError),
}

/// One route that failed, for logs and the error metric.
#[derive(Debug)]
pub struct RouteFailure {
    /// What was attempted.
    pub action: RouteAction,
    /// The route, in `ip route` syntax.
    pub route: String,
    /// Why it failed.
    pub reason: RouteFailureReason,
}

impl fmt::Display for RouteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.action, self.route, self.reason)
    }
}

/// The outcome of one [`RouteManager::reconcile`] or [`RouteManager::apply`].
#[derive(Debug, Default)]
pub struct RouteReport {
    /// Routes created.
    pub added: usize,
    /// Routes of ours swapped for the desired version.
    pub replaced: usize,
    /// Routes deleted.
    pub removed: usize,
    /// Desired routes that were already right (reconcile only).
    pub unchanged: usize,
    /// Routes that could not be handled, with the reason.
    pub failures: Vec<RouteFailure>,
}

impl RouteReport {
    /// Whether the kernel now holds exactly what was asked.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether anything was changed.
    pub fn changed(&self) -> bool {
        self.added + self.replaced + self.removed > 0
    }
}

/// Totals since the manager was made, for the agent's metrics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Routes created.
    pub added: u64,
    /// Routes replaced.
    pub replaced: u64,
    /// Routes deleted.
    pub removed: u64,
    /// Route changes that failed.
    pub errors: u64,
    /// Reconcile passes run.
    pub reconciles: u64,
    /// Dumps of the kernel's tables read (routes or links, each family and table counting
    /// once): what a pass costs beyond its changes.
    pub dumps: u64,
}

/// One incremental change for [`RouteManager::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// Create the route; the kernel refuses if any route holds its destination already.
    Add(Route),
    /// Replace the route of ours at this destination (or create it if there is none). Use
    /// only where the destination is known to be ours: a replace does not check the owner of
    /// what it replaces.
    Replace(Route),
    /// Delete the route of this destination, table and protocol, whatever its next hop; a
    /// route that is already gone is not an error.
    Remove(Route),
}

impl RouteChange {
    fn route(&self) -> &Route {
        match self {
            RouteChange::Add(r) | RouteChange::Replace(r) | RouteChange::Remove(r) => r,
        }
    }

    fn action(&self) -> RouteAction {
        match self {
            RouteChange::Add(_) => RouteAction::Add,
            RouteChange::Replace(_) => RouteAction::Replace,
            RouteChange::Remove(_) => RouteAction::Remove,
        }
    }
}

/// Keeps the kernel's routes of protocols 186 (`bgp`) and 201 (`wren`) in the managed tables
/// equal to what the agent wants.
///
/// It holds one netlink socket, opened in the network namespace of the thread that called
/// [`RouteManager::new`] and bound to it for life. Its methods block for as long as the kernel
/// takes to apply the changes (no network round trip is involved: about a second for 100,000
/// routes); call them from a blocking-capable thread (`tokio::task::spawn_blocking` or a
/// dedicated one).
///
/// It never flushes: a new manager adopts whatever routes of wren's protocols are already in
/// the kernel and only changes what differs from the desired set.
pub struct RouteManager {
    netlink: Netlink,
    tables: BTreeSet<u32>,
    counters: RouteCounters,
}

impl RouteManager {
    /// Opens the manager's socket in the calling thread's network namespace. It looks after
    /// the main table; [`RouteManager::manage_table`] adds others.
    pub fn new() -> Result<Self, RouteError> {
        Ok(RouteManager {
            netlink: Netlink::open()?,
            tables: BTreeSet::from([MAIN_TABLE]),
            counters: RouteCounters::default(),
        })
    }

    /// Adds a table to the ones whose wren routes this manager reconciles.
    pub fn manage_table(&mut self, table: u32) {
        self.tables.insert(table);
    }

    /// Totals since the manager was made.
    pub fn counters(&self) -> RouteCounters {
        self.counters
    }

    /// The routes of wren's protocols in the managed tables now, devices named.
    pub fn installed(&mut self) -> Result<Vec<Route>, RouteError> {
        let kernel = self.dump_owned()?;
        let names = if kernel.iter().any(|k| oif_of(k).is_some()) {
            names_of(&self.link_indexes()?)
        } else {
            HashMap::new()
        };
        Ok(kernel.iter().filter_map(|k| route_of(k, &names)).collect())
    }

    /// The networks the node reaches directly: the destinations of the main table's device
    /// routes that the kernel made for the addresses of interfaces that are up (`proto
    /// kernel`), without IPv6 link-local ones, which need an interface to mean anything.
    pub fn connected_networks(&mut self) -> Result<Vec<IpNet>, RouteError> {
        let kernel = self.dump_connected()?;
        Ok(connected_of(kernel))
    }

    /// [`RouteManager::reconcile`], leaving alone the routes of ours that are not desired but
    /// that `keep` holds on to, and reading the node's connected networks in the same read of
    /// the kernel's tables: one read per pass.
    pub fn reconcile_keeping(
        &mut self,
        desired: &[Route],
        keep: impl Fn(&Route) -> bool,
    ) -> Result<(RouteReport, Vec<IpNet>), RouteError> {
        let mut kernel = self.dump_owned()?;
        let connected = self.dump_connected()?;
        let wanted: HashSet<(u32, IpNet)> = desired.iter().map(|r| (r.table, r.dst)).collect();
        let undesired: Vec<&KernelRoute> = kernel
            .iter()
            .filter(|k| !wanted.contains(&(k.table, k.dst)))
            .collect();
        // One read of the links serves both the kept routes' names and the desired devices.
        let links = if desired.iter().any(|r| r.dev().is_some())
            || undesired.iter().any(|k| oif_of(k).is_some())
        {
            self.link_indexes()?
        } else {
            HashMap::new()
        };
        let names = names_of(&links);
        let kept: Vec<Route> = undesired
            .into_iter()
            .filter_map(|k| route_of(k, &names))
            .filter(|r| keep(r))
            .collect();
        let kernel = std::mem::take(&mut kernel);
        let report = if kept.is_empty() {
            self.reconcile_against(desired, kernel, links)?
        } else {
            let mut routes = desired.to_vec();
            routes.extend(kept);
            self.reconcile_against(&routes, kernel, links)?
        };
        Ok((report, connected_of(connected)))
    }

    /// Makes the kernel's routes of wren's protocols in the managed tables exactly `desired`:
    /// adds what is missing, replaces what differs, deletes routes of ours that are not
    /// desired. Routes of other protocols are never touched. Running it again with the same
    /// set changes nothing.
    pub fn reconcile(&mut self, desired: &[Route]) -> Result<RouteReport, RouteError> {
        let kernel = self.dump_owned()?;
        let links = if desired.iter().any(|r| r.dev().is_some()) {
            self.link_indexes()?
        } else {
            HashMap::new()
        };
        self.reconcile_against(desired, kernel, links)
    }

    /// Reconciles against the routes of ours the kernel holds, as read just before.
    fn reconcile_against(
        &mut self,
        desired: &[Route],
        kernel: Vec<KernelRoute>,
        links: HashMap<String, u32>,
    ) -> Result<RouteReport, RouteError> {
        self.counters.reconciles += 1;
        let mut report = RouteReport::default();
        let mut seen = HashSet::new();
        let mut wanted = Vec::with_capacity(desired.len());
        for route in desired {
            let checked = self.check(route, &links).and_then(|oif| {
                if seen.insert((route.table, route.dst)) {
                    Ok(oif)
                } else {
                    Err(RouteFailureReason::Duplicate)
                }
            });
            match checked {
                Ok(oif) => wanted.push(Wanted {
                    route,
                    shape: route.shape(oif),
                    oif,
                }),
                Err(reason) => report.failures.push(RouteFailure {
                    action: RouteAction::Add,
                    route: route.to_string(),
                    reason,
                }),
            }
        }
        let plan = plan(&wanted, kernel);
        report.unchanged = plan.unchanged;
        let requests = plan.steps.iter().map(|step| match step {
            Step::Delete(k) => Request::new(RouteNetlinkMessage::DelRoute(k.removal()), 0),
            Step::Replace(i, _) => {
                let w = &wanted[*i];
                Request::new(
                    new_route(w.route.to_message(w.oif)),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            }
            Step::Add(i) => {
                let w = &wanted[*i];
                Request::new(
                    new_route(w.route.to_message(w.oif)),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
            }
        });
        let failed = self.netlink.batch(requests)?;
        let mut failed = failed.into_iter().peekable();
        // Routes of ours the kernel would not replace: what they lead to is not wanted.
        let mut refused = Vec::new();
        for (index, step) in plan.steps.iter().enumerate() {
            let action = match step {
                Step::Delete(_) => RouteAction::Remove,
                Step::Replace(..) => RouteAction::Replace,
                Step::Add(_) => RouteAction::Add,
            };
            match failed.next_if(|(i, _)| *i == index) {
                Some((_, error)) => {
                    if let Step::Replace(_, old) = step {
                        refused.push(old);
                    }
                    let route = match step {
                        Step::Delete(k) => describe_kernel(k),
                        Step::Replace(i, _) | Step::Add(i) => wanted[*i].route.to_string(),
                    };
                    let reason = match step {
                        Step::Add(_) if error.errno() == Some(libc::EEXIST) => {
                            RouteFailureReason::Occupied
                        }
                        _ => error.into(),
                    };
                    report.failures.push(RouteFailure {
                        action,
                        route,
                        reason,
                    });
                }
                None => count(&mut report, action),
            }
        }
        self.remove_refused(refused.into_iter().map(KernelRoute::removal), &mut report)?;
        self.tally(&report);
        Ok(report)
    }

    /// Deletes the routes whose replacement the kernel refused (the refusal itself is in
    /// the report already): a route the kernel cannot take must not leave the one it was to
    /// replace forwarding where nothing leads any more.
    fn remove_refused(
        &mut self,
        removals: impl ExactSizeIterator<Item = RouteMessage>,
        report: &mut RouteReport,
    ) -> Result<(), RouteError> {
        if removals.len() == 0 {
            return Ok(());
        }
        let removals: Vec<RouteMessage> = removals.collect();
        let requests = removals
            .iter()
            .map(|m| Request::new(RouteNetlinkMessage::DelRoute(m.clone()), 0));
        let failed = self.netlink.batch(requests)?;
        let mut failed = failed.into_iter().peekable();
        for (index, removal) in removals.iter().enumerate() {
            match failed.next_if(|(i, _)| *i == index) {
                // Already gone: nothing stale is left either.
                Some((_, error)) if matches!(error.errno(), Some(libc::ESRCH | libc::ENOENT)) => {}
                Some((_, error)) => report.failures.push(RouteFailure {
                    action: RouteAction::Remove,
                    route: KernelRoute::from_message(removal)
                        .map(|k| describe_kernel(&k))
                        .unwrap_or_default(),
                    reason: error.into(),
                }),
                None => report.removed += 1,
            }
        }
        Ok(())
    }

    /// Applies incremental changes without reading the kernel's tables first: the fast path
    /// for a burst of BGP updates. Reconcile remains the way to repair drift. Of several
    /// changes to the same destination and table, only the last one counts.
    pub fn apply(&mut self, changes: &[RouteChange]) -> Result<RouteReport, RouteError> {
        let mut report = RouteReport::default();
        let links = if changes.iter().any(|c| c.route().dev().is_some()) {
            self.link_indexes()?
        } else {
            HashMap::new()
        };
        // One change per destination, the last one given, so that the kernel-friendly order
        // below cannot swap two changes that depend on each other.
        let mut last = HashMap::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            last.insert((change.route().table, change.route().dst), i);
        }
        // Changes that cannot be sent are reported now; the rest go out in one pipeline.
        // Failures are reported in the order the changes were given.
        let mut failures = Vec::new();
        let mut sendable = Vec::with_capacity(changes.len());
        for (i, change) in changes.iter().enumerate() {
            if last.get(&(change.route().table, change.route().dst)) != Some(&i) {
                continue;
            }
            let checked = match change {
                // A removal matches on destination and owner only; its device is irrelevant.
                RouteChange::Remove(route) => route
                    .validate()
                    .map(|()| None)
                    .map_err(RouteFailureReason::from)
                    .and_then(|oif| self.check_table(route).map(|()| oif)),
                _ => self.check(change.route(), &links),
            };
            match checked {
                Ok(oif) => sendable.push((i, change, oif)),
                Err(reason) => failures.push((i, failure(change, reason))),
            }
        }
        sendable.sort_by_cached_key(|(_, change, _)| {
            let route = change.route();
            let phase = match change {
                RouteChange::Remove(_) => Phase::Remove,
                _ => phase_of(route),
            };
            (phase, scatter(route.table, &route.dst))
        });
        let requests = sendable.iter().map(|(_, change, oif)| match change {
            RouteChange::Add(r) => {
                Request::new(new_route(r.to_message(*oif)), NLM_F_CREATE | NLM_F_EXCL)
            }
            RouteChange::Replace(r) => {
                Request::new(new_route(r.to_message(*oif)), NLM_F_CREATE | NLM_F_REPLACE)
            }
            RouteChange::Remove(r) => Request::new(RouteNetlinkMessage::DelRoute(r.removal()), 0),
        });
        let failed = self.netlink.batch(requests)?;
        let mut failed = failed.into_iter().peekable();
        let mut refused = Vec::new();
        for (sent, (i, change, _)) in sendable.iter().enumerate() {
            match failed.next_if(|(index, _)| *index == sent) {
                Some((_, error)) if is_already_gone(change, &error) => {}
                Some((_, error)) => {
                    if let RouteChange::Replace(route) = change {
                        refused.push(route.removal());
                    }
                    failures.push((*i, failure(change, error.into())));
                }
                None => count(&mut report, change.action()),
            }
        }
        failures.sort_by_key(|(i, _)| *i);
        report.failures = failures.into_iter().map(|(_, f)| f).collect();
        self.remove_refused(refused.into_iter(), &mut report)?;
        self.tally(&report);
        Ok(report)
    }

    /// Validates a route and resolves its device.
    fn check(
        &self,
        route: &Route,
        links: &HashMap<String, u32>,
    ) -> Result<Option<u32>, RouteFailureReason> {
        route.validate()?;
        self.check_table(route)?;
        match route.dev() {
            None => Ok(None),
            Some(dev) => links
                .get(dev)
                .map(|i| Some(*i))
                .ok_or_else(|| RouteFailureReason::NoSuchDevice(dev.to_string())),
        }
    }

    fn check_table(&self, route: &Route) -> Result<(), RouteFailureReason> {
        if self.tables.contains(&route.table) {
            Ok(())
        } else {
            Err(RouteFailureReason::UnmanagedTable(route.table))
        }
    }

    fn tally(&mut self, report: &RouteReport) {
        self.counters.added += report.added as u64;
        self.counters.replaced += report.replaced as u64;
        self.counters.removed += report.removed as u64;
        self.counters.errors += report.failures.len() as u64;
    }

    /// Reads the routes of wren's protocols in the managed tables, both families. The kernel
    /// filters by family, table and protocol, so a full Internet table of another daemon costs
    /// nothing here.
    fn dump_owned(&mut self) -> Result<Vec<KernelRoute>, RouteError> {
        let mut out = Vec::new();
        let tables: Vec<u32> = self.tables.iter().copied().collect();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for protocol in Protocol::OWNED {
                for &table in &tables {
                    let filter = RouteFilter {
                        family,
                        table,
                        protocol: Some(protocol),
                        oif: None,
                    };
                    dump_routes(&mut self.netlink, &filter, &mut out)?;
                    self.counters.dumps += 1;
                }
            }
        }
        Ok(out)
    }

    /// Reads the main table's routes the kernel made itself (`proto kernel`), both families.
    fn dump_connected(&mut self) -> Result<Vec<KernelRoute>, RouteError> {
        let mut kernel = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let filter = RouteFilter {
                family,
                table: MAIN_TABLE,
                protocol: Some(Protocol::KERNEL),
                oif: None,
            };
            dump_routes(&mut self.netlink, &filter, &mut kernel)?;
            self.counters.dumps += 1;
        }
        Ok(kernel)
    }

    /// Interface names to indexes in the socket's namespace.
    fn link_indexes(&mut self) -> Result<HashMap<String, u32>, RouteError> {
        self.counters.dumps += 1;
        let mut links = HashMap::new();
        for attempt in 1..=DUMP_ATTEMPTS {
            links.clear();
            let result = self.netlink.dump(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                |msg| {
                    if let RouteNetlinkMessage::NewLink(link) = msg
                        && let Some(name) = link_name(&link)
                    {
                        links.insert(name, link.header.index);
                    }
                },
            );
            match result {
                Ok(()) => return Ok(links),
                Err(NetlinkError::DumpInterrupted) if attempt < DUMP_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(links)
    }
}

/// Which routes a dump returns; the kernel applies the filter (strict checking is on).
pub(crate) struct RouteFilter {
    pub family: AddressFamily,
    pub table: u32,
    pub protocol: Option<Protocol>,
    pub oif: Option<u32>,
}

/// Appends the kernel's routes that pass `filter` to `out`, reading again when the table
/// changed during the dump.
pub(crate) fn dump_routes(
    netlink: &mut Netlink,
    filter: &RouteFilter,
    out: &mut Vec<KernelRoute>,
) -> Result<(), NetlinkError> {
    let start = out.len();
    for attempt in 1..=DUMP_ATTEMPTS {
        out.truncate(start);
        let mut request = RouteMessage::default();
        request.header.address_family = filter.family;
        request.header.table = table_header(filter.table);
        request.attributes.push(RouteAttribute::Table(filter.table));
        if let Some(protocol) = filter.protocol {
            request.header.protocol = RouteProtocol::from(protocol.0);
        }
        if let Some(oif) = filter.oif {
            request.attributes.push(RouteAttribute::Oif(oif));
        }
        let result = netlink.dump(RouteNetlinkMessage::GetRoute(request), |msg| {
            if let RouteNetlinkMessage::NewRoute(m) = msg
                && let Some(k) = KernelRoute::from_message(&m)
                // The filter is the kernel's; checking again costs nothing and keeps a kernel
                // that ignores it from handing us somebody else's routes.
                && filter.protocol.is_none_or(|p| k.protocol == p)
                && k.table == filter.table
            {
                out.push(k);
            }
        });
        match result {
            Ok(()) => return Ok(()),
            // A table nobody has written to yet does not exist: it holds nothing.
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(()),
            Err(NetlinkError::DumpInterrupted) if attempt < DUMP_ATTEMPTS => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn new_route(message: RouteMessage) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewRoute(message)
}

fn failure(change: &RouteChange, reason: RouteFailureReason) -> RouteFailure {
    RouteFailure {
        action: change.action(),
        route: change.route().to_string(),
        reason,
    }
}

fn count(report: &mut RouteReport, action: RouteAction) {
    match action {
        RouteAction::Add => report.added += 1,
        RouteAction::Replace => report.replaced += 1,
        RouteAction::Remove => report.removed += 1,
    }
}

/// A removal of a route that is not there: done already. IPv4 says ESRCH, IPv6 ENOENT.
fn is_already_gone(change: &RouteChange, error: &NetlinkError) -> bool {
    matches!(change, RouteChange::Remove(_))
        && matches!(error.errno(), Some(libc::ESRCH) | Some(libc::ENOENT))
}

pub(crate) fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// Interface names by index.
fn names_of(links: &HashMap<String, u32>) -> HashMap<u32, String> {
    links
        .iter()
        .map(|(name, index)| (*index, name.clone()))
        .collect()
}

/// The connected networks among kernel-made routes: device routes, without IPv6 link-local
/// and multicast ones, which need an interface to mean anything.
fn connected_of(kernel: Vec<KernelRoute>) -> Vec<IpNet> {
    let link_local = |net: &IpNet| match net {
        IpNet::V6(v6) => v6.addr().is_unicast_link_local() || v6.addr().is_multicast(),
        IpNet::V4(_) => false,
    };
    kernel
        .into_iter()
        .filter(|k| matches!(k.shape, super::route::Shape::Device { .. }) && !link_local(&k.dst))
        .map(|k| k.dst)
        .collect()
}

fn oif_of(k: &KernelRoute) -> Option<u32> {
    match k.shape {
        super::route::Shape::Gateway { oif, .. } => oif,
        super::route::Shape::Device { oif } => Some(oif),
        super::route::Shape::Multipath(ref all) => all.iter().find_map(|g| g.oif),
        _ => None,
    }
}

/// Turns a kernel route back into the model; `None` for shapes wren does not make.
fn route_of(k: &KernelRoute, names: &HashMap<u32, String>) -> Option<Route> {
    use super::route::Shape;
    let name = |oif: u32| {
        names
            .get(&oif)
            .cloned()
            .unwrap_or_else(|| format!("if{oif}"))
    };
    let next_hop = match &k.shape {
        Shape::Blackhole => NextHop::Blackhole,
        Shape::Gateway { via, oif, onlink } => NextHop::Gateway {
            via: *via,
            // A plain `via` route names its device only when it was asked to.
            dev: if *onlink { oif.map(name) } else { None },
            onlink: *onlink,
        },
        Shape::Device { oif } => NextHop::Device { dev: name(*oif) },
        Shape::Multipath(all) => NextHop::gateways(all.iter().map(|g| Gateway {
            via: g.via,
            dev: if g.onlink { g.oif.map(name) } else { None },
            onlink: g.onlink,
        }))?,
        Shape::Other => return None,
    };
    Some(Route {
        dst: k.dst,
        next_hop,
        table: k.table,
        protocol: k.protocol,
    })
}

fn describe_kernel(k: &KernelRoute) -> String {
    let dst: IpNet = k.dst;
    format!(
        "{dst} proto {} table {} metric {}",
        k.protocol, k.table, k.priority
    )
}
