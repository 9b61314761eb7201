//! The reconcile decision, without I/O: given the routes wren wants and the routes of wren's
//! protocols the kernel has, which to add, which to replace and which to delete.
//!
//! Only routes handed in as `kernel` are ever deleted or replaced, and the caller hands in
//! only routes of wren's own protocols: a route of anybody else is out of reach by
//! construction. A wanted route whose slot is held by someone else's route is added with
//! "create exclusive", which the kernel refuses rather than overwrite.

use std::collections::HashMap;

use ipnet::IpNet;

use super::route::{KernelRoute, Route, Shape};

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
    /// Replace the route of ours in the wanted route's slot (index into the wanted list).
    Replace(usize),
    /// Add the wanted route where nothing of ours is (index into the wanted list).
    Add(usize),
}

/// The changes that turn the kernel's routes into the wanted ones, deletions first so a
/// replacement or addition never collides with a route about to go.
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
            entries.swap_remove(pos);
            writes.push(Step::Replace(index));
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
    Plan {
        steps: deletes,
        unchanged,
    }
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
        assert_eq!(p.steps, vec![Step::Add(0), Step::Add(1)]);
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
        assert_eq!(
            p.steps,
            vec![
                Step::Delete(kernel(&stale, None)),
                Step::Replace(1),
                Step::Add(2)
            ]
        );
    }

    #[test]
    fn an_owner_change_is_a_replace() {
        let want = Route::blackhole(net("10.0.0.0/26"));
        let k = kernel(&want.clone().with_protocol(Protocol::BGP), None);
        let p = plan(&wanted(std::slice::from_ref(&want)), vec![k]);
        assert_eq!(p.steps, vec![Step::Replace(0)]);
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
}
