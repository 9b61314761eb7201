//! The reconcile decision, without I/O: given the routes wren wants and the routes of wren's
//! protocols the kernel has, which to add, which to replace and which to delete.
//!
//! Only routes handed in as `kernel` are ever deleted or replaced, and the caller hands in
//! only routes of wren's own protocols: a route of anybody else is out of reach by
//! construction. A wanted route whose slot is held by someone else's route is added with
//! "create exclusive", which the kernel refuses rather than overwrite.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::route::{KernelRoute, NextHop, Route, Shape};

/// A wanted route with its device already resolved to an index.
pub(crate) struct Wanted<'a> {
    pub route: &'a Route,
    pub shape: Shape,
    pub oif: Option<u32>,
}

/// One kernel change.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Delete this kernel route.
    Delete(KernelRoute),
    /// Replace this route of ours with the wanted route in its slot (index into the wanted
    /// list). Should the kernel refuse, the old route is deleted: it is not wanted either.
    Replace(usize, KernelRoute),
    /// Add the wanted route where nothing of ours is (index into the wanted list).
    Add(usize),
}

/// The changes that turn the kernel's routes into the wanted ones, in [`Phase`] order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub unchanged: usize,
}

/// Decides the changes. `wanted` holds at most one route per (table, destination).
pub(crate) fn plan(wanted: &[Wanted<'_>], kernel: Vec<KernelRoute>) -> Plan {
    let mut present: HashMap<(u32, IpNet), Vec<KernelRoute>> = HashMap::new();
    for route in kernel {
        present
            .entry((route.table, route.dst))
            .or_default()
            .push(route);
    }
    let mut deletes = Vec::new();
    let mut writes = Vec::new();
    let mut unchanged = 0;
    for (index, want) in wanted.iter().enumerate() {
        let mut entries = present
            .remove(&(want.route.table, want.route.dst))
            .unwrap_or_default();
        if let Some(pos) = entries
            .iter()
            .position(|k| k.satisfies(want.route, &want.shape))
        {
            entries.swap_remove(pos);
            unchanged += 1;
        } else if let Some(pos) = entries.iter().position(KernelRoute::occupies_default_slot) {
            writes.push(Step::Replace(index, entries.swap_remove(pos)));
        } else {
            writes.push(Step::Add(index));
        }
        // Whatever else of ours sits at this destination (another metric or TOS) is stale.
        deletes.extend(entries.into_iter().map(Step::Delete));
    }
    for (_, entries) in present {
        deletes.extend(entries.into_iter().map(Step::Delete));
    }
    deletes.extend(writes);
    let key = |step: &Step| match step {
        Step::Delete(k) => (Phase::Remove, scatter(k.table, &k.dst)),
        Step::Replace(i, _) | Step::Add(i) => {
            let route = wanted[*i].route;
            (phase_of(route), scatter(route.table, &route.dst))
        }
    };
    deletes.sort_by_cached_key(key);
    Plan {
        steps: deletes,
        unchanged,
    }
}

/// The order in which changes reach the kernel, phase first.
///
/// Removals go first, so nothing added collides with a route about to go; then routes through
/// a device, which may be the next hops of others; then the rest. Within a phase the order is
/// scattered by a hash of the destination: the kernel's IPv4 table is a level-compressed trie
/// that resizes its nodes as they fill and empty, and changes in address order keep landing on
/// the node being resized. Removing 100,000 consecutive prefixes in address order takes about
/// three times as long as removing them scattered (BENCHMARKS.md).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Remove,
    Device,
    Other,
}

/// The phase of a route being added or replaced.
pub(crate) fn phase_of(route: &Route) -> Phase {
    match route.next_hop {
        NextHop::Device { .. } => Phase::Device,
        _ => Phase::Other,
    }
}

/// A well-mixed hash of a route's key, to sort by within a phase.
pub(crate) fn scatter(table: u32, dst: &IpNet) -> u64 {
    let bits = match dst.addr() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let low = bits as u64 ^ (u64::from(dst.prefix_len()) << 56) ^ u64::from(table);
    splitmix64((bits >> 64) as u64 ^ splitmix64(low))
}

/// The SplitMix64 finaliser: every input bit affects every output bit.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::route::Protocol;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn kernel(route: &Route, oif: Option<u32>) -> KernelRoute {
        let mut k = KernelRoute::from_message(&route.to_message(oif)).unwrap();
        k.priority = crate::dataplane::route::default_priority(&route.dst);
        k
    }

    fn wanted(routes: &[Route]) -> Vec<Wanted<'_>> {
        routes
            .iter()
            .map(|r| Wanted {
                route: r,
                shape: r.shape(None),
                oif: None,
            })
            .collect()
    }

    #[test]
    fn an_empty_kernel_gets_everything_added() {
        let routes = [
            Route::blackhole(net("10.0.0.0/26")),
            Route::via(net("10.0.1.0/26"), "192.0.2.2".parse().unwrap()),
        ];
        let p = plan(&wanted(&routes), vec![]);
        assert_eq!(p.steps.len(), 2);
        assert!(p.steps.contains(&Step::Add(0)) && p.steps.contains(&Step::Add(1)));
        assert_eq!(p.unchanged, 0);
    }

    #[test]
    fn matching_routes_are_left_alone() {
        let routes = [
            Route::blackhole(net("10.0.0.0/26")),
            Route::blackhole(net("fd00::/122")),
        ];
        let k = routes.iter().map(|r| kernel(r, None)).collect();
        let p = plan(&wanted(&routes), k);
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert_eq!(p.unchanged, 2);
    }

    #[test]
    fn drift_is_fixed_in_both_directions_and_deletes_come_first() {
        let keep = Route::blackhole(net("10.0.0.0/26"));
        let moved = Route::via(net("10.0.1.0/26"), "192.0.2.2".parse().unwrap());
        let missing = Route::via(net("10.0.2.0/26"), "192.0.2.3".parse().unwrap());
        let stale = Route::blackhole(net("10.0.9.0/26"));
        let old_moved = Route::via(net("10.0.1.0/26"), "192.0.2.9".parse().unwrap());
        let routes = [keep.clone(), moved, missing];
        let k = vec![
            kernel(&keep, None),
            kernel(&old_moved, None),
            kernel(&stale, None),
        ];
        let p = plan(&wanted(&routes), k);
        assert_eq!(p.unchanged, 1);
        assert_eq!(p.steps[0], Step::Delete(kernel(&stale, None)));
        assert_eq!(p.steps.len(), 3);
        let replaced = Step::Replace(1, kernel(&old_moved, None));
        assert!(p.steps.contains(&replaced) && p.steps.contains(&Step::Add(2)));
    }

    #[test]
    fn an_owner_change_is_a_replace() {
        let want = Route::blackhole(net("10.0.0.0/26"));
        let k = kernel(&want.clone().with_protocol(Protocol::BGP), None);
        let p = plan(&wanted(std::slice::from_ref(&want)), vec![k.clone()]);
        assert_eq!(p.steps, vec![Step::Replace(0, k)]);
    }

    #[test]
    fn extra_copies_at_other_metrics_are_deleted() {
        let want = Route::blackhole(net("10.0.0.0/26"));
        let good = kernel(&want, None);
        let mut odd = good.clone();
        odd.priority = 50;
        let p = plan(
            &wanted(std::slice::from_ref(&want)),
            vec![odd.clone(), good],
        );
        assert_eq!(p.steps, vec![Step::Delete(odd.clone())]);
        assert_eq!(p.unchanged, 1);
        // With only the odd copy present, the wanted route is added beside it, not onto it.
        let p = plan(&wanted(std::slice::from_ref(&want)), vec![odd.clone()]);
        assert_eq!(p.steps, vec![Step::Delete(odd), Step::Add(0)]);
    }

    #[test]
    fn the_same_prefix_in_another_table_is_another_route() {
        let main = Route::blackhole(net("10.0.0.0/26"));
        let other = main.clone().in_table(100);
        let p = plan(
            &wanted(std::slice::from_ref(&main)),
            vec![kernel(&other, None)],
        );
        assert_eq!(
            p.steps,
            vec![Step::Delete(kernel(&other, None)), Step::Add(0)]
        );
    }

    #[test]
    fn nothing_wanted_deletes_everything_handed_in() {
        let a = kernel(&Route::blackhole(net("10.0.0.0/26")), None);
        let b = kernel(&Route::device(net("10.0.0.5/32"), "w"), Some(4));
        let p = plan(&[], vec![a, b]);
        assert_eq!(p.steps.len(), 2);
        assert!(p.steps.iter().all(|s| matches!(s, Step::Delete(_))));
    }

    #[test]
    fn removals_then_device_routes_then_the_rest_each_scattered() {
        let mut routes = Vec::new();
        for i in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i * 64));
            routes.push(Route::via(
                IpNet::new(a, 26).unwrap(),
                "192.0.2.2".parse().unwrap(),
            ));
            let host = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            routes.push(Route::device(IpNet::new(host, 32).unwrap(), "w"));
        }
        let stale: Vec<KernelRoute> = (0..1000u32)
            .map(|i| {
                let a = IpAddr::from(std::net::Ipv4Addr::from(0x0c00_0000 + i * 64));
                kernel(&Route::blackhole(IpNet::new(a, 26).unwrap()), None)
            })
            .collect();
        let p = plan(&wanted(&routes), stale);
        let phases: Vec<Phase> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Delete(_) => Phase::Remove,
                Step::Add(i) | Step::Replace(i, _) => phase_of(&routes[*i]),
            })
            .collect();
        assert!(phases.is_sorted(), "phases out of order");
        assert_eq!(phases.iter().filter(|p| **p == Phase::Device).count(), 1000);
        // Within a phase, address order is broken up: few neighbours stay neighbours.
        let adds: Vec<usize> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Add(i) if *i % 2 == 0 => Some(*i),
                _ => None,
            })
            .collect();
        let consecutive = adds.windows(2).filter(|w| w[1] == w[0] + 2).count();
        assert!(
            consecutive < 20,
            "{consecutive} of 999 still in address order"
        );
        assert_ne!(scatter(254, &routes[0].dst), scatter(100, &routes[0].dst));
    }
}
