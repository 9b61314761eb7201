//! The decision process (RFC 4271 §9.1.2.2, RFC 4456 §9): one test per step, and properties
//! that must hold for any set of paths.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use wren_bgp::rib::decision::{Candidate, select, select_multipath};
use wren_bgp::rib::{Attributes, RouteAttributes};
use wren_bgp::wire::{Afi, AsPath, AsSegment, Origin};

const LOCAL_AS: u32 = 64512;

fn attrs(path: &[u32]) -> Attributes {
    let mut a = Attributes::local(Some("192.0.2.1".parse().unwrap()), Afi::Ipv4Unicast);
    a.as_path = Some(AsPath {
        segments: vec![AsSegment::Sequence(path.to_vec())],
    });
    a
}

fn candidate(attrs: &Attributes, peer: u8) -> Candidate<'_> {
    Candidate {
        attrs,
        local: false,
        ebgp: false,
        peer_router_id: Ipv4Addr::new(10, 0, 0, peer),
        peer_address: IpAddr::V4(Ipv4Addr::new(192, 168, 0, peer)),
        local_as: LOCAL_AS,
        resolvable: true,
    }
}

#[test]
fn rib_decision_prefers_higher_local_pref_over_shorter_path() {
    let mut long = attrs(&[1, 2, 3]);
    long.local_pref = Some(200);
    let short = attrs(&[1]);
    let c = [candidate(&short, 1), candidate(&long, 2)];
    assert_eq!(select(&c), Some(1));
}

#[test]
fn rib_decision_counts_an_as_set_as_one() {
    let mut set = attrs(&[1]);
    set.as_path
        .as_mut()
        .unwrap()
        .segments
        .push(AsSegment::Set(vec![7, 8, 9]));
    let seq = attrs(&[1, 2, 3]);
    let c = [candidate(&seq, 1), candidate(&set, 2)];
    assert_eq!(select(&c), Some(1), "1 + set(3) = 2 ASes beats 3");
}

#[test]
fn rib_decision_prefers_lower_origin() {
    let igp = attrs(&[1]);
    let mut incomplete = attrs(&[1]);
    incomplete.origin = Some(Origin::Incomplete);
    let c = [candidate(&incomplete, 1), candidate(&igp, 2)];
    assert_eq!(select(&c), Some(1));
}

#[test]
fn rib_decision_compares_med_only_within_a_neighbour_as() {
    // The textbook case: MED is not a total order across neighbouring ASes.
    let mut a = attrs(&[100]);
    a.med = Some(20);
    let mut b = attrs(&[100]);
    b.med = Some(10);
    let mut c = attrs(&[200]);
    c.med = Some(0);
    // b removes a (same AS, lower MED); b and c remain; the lowest router id decides.
    let cands = [candidate(&a, 1), candidate(&b, 3), candidate(&c, 2)];
    assert_eq!(select(&cands), Some(2));
    let cands = [candidate(&a, 1), candidate(&b, 2), candidate(&c, 3)];
    assert_eq!(select(&cands), Some(1));
    // A missing MED counts as the lowest.
    let mut none = attrs(&[100]);
    none.med = None;
    let cands = [candidate(&b, 1), candidate(&none, 2)];
    assert_eq!(select(&cands), Some(1));
}

#[test]
fn rib_decision_prefers_ebgp_then_lowest_router_id() {
    let x = attrs(&[1]);
    let mut ebgp = candidate(&x, 9);
    ebgp.ebgp = true;
    assert_eq!(select(&[candidate(&x, 1), ebgp]), Some(1));
    assert_eq!(select(&[candidate(&x, 5), candidate(&x, 3)]), Some(1));
}

#[test]
fn rib_decision_uses_originator_id_and_cluster_list_for_reflected_routes() {
    let mut reflected = attrs(&[1]);
    reflected.originator_id = Some(Ipv4Addr::new(10, 0, 0, 1));
    let direct = attrs(&[1]);
    // The reflected path came from router 9 but originated at 1, which beats direct router 5.
    assert_eq!(
        select(&[candidate(&direct, 5), candidate(&reflected, 9)]),
        Some(1)
    );
    let mut short = reflected.clone();
    short.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1)];
    let mut long = reflected.clone();
    long.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2)];
    assert_eq!(
        select(&[candidate(&long, 1), candidate(&short, 2)]),
        Some(1)
    );
}

#[test]
fn rib_decision_falls_back_to_lowest_peer_address() {
    let x = attrs(&[1]);
    let mut a = candidate(&x, 1);
    let mut b = candidate(&x, 1);
    a.peer_address = "192.168.0.9".parse().unwrap();
    b.peer_address = "192.168.0.4".parse().unwrap();
    assert_eq!(select(&[a, b]), Some(1));
}

#[test]
fn rib_decision_prefers_local_routes() {
    let learned = attrs(&[]);
    let mut mine = attrs(&[1, 2, 3]);
    mine.local_pref = Some(10);
    let mut local = candidate(&mine, 200);
    local.local = true;
    assert_eq!(select(&[candidate(&learned, 1), local]), Some(1));
}

/// Peers 1..=n with the same path but another router id and address each: what two ToRs
/// announcing one anycast prefix look like.
fn equal_candidates(attrs: &Attributes, n: u8) -> Vec<Candidate<'_>> {
    (1..=n).map(|peer| candidate(attrs, peer)).collect()
}

#[test]
fn rib_multipath_merges_paths_that_differ_only_in_router_id_and_address() {
    let x = attrs(&[65001]);
    let mut c = equal_candidates(&x, 3);
    c.reverse();
    // Ordered by the tie-breakers, so the first is the best path.
    assert_eq!(select_multipath(&c, 8).as_slice(), [2, 1, 0]);
    assert_eq!(select(&c), Some(2));
    // Paths from different neighbouring ASes with the same length merge too (as BIRD's
    // `merge paths` and FRR's `multipath-relax`), and their MEDs are not compared.
    let mut other_as = attrs(&[65002]);
    other_as.med = Some(50);
    let c = [candidate(&x, 1), candidate(&other_as, 2)];
    assert_eq!(select_multipath(&c, 8).as_slice(), [0, 1]);
    // The same for eBGP paths.
    let mut c = equal_candidates(&x, 2);
    c.iter_mut().for_each(|c| c.ebgp = true);
    assert_eq!(select_multipath(&c, 8).as_slice(), [0, 1]);
    // Reflected paths with longer cluster lists still merge: that step only picks one.
    let mut reflected = x.clone();
    reflected.cluster_list = vec![Ipv4Addr::new(1, 1, 1, 1)];
    let c = [candidate(&reflected, 1), candidate(&x, 2)];
    assert_eq!(select_multipath(&c, 8).as_slice(), [0, 1]);
}

#[test]
fn rib_multipath_leaves_out_paths_that_are_worth_less() {
    let x = attrs(&[65001]);
    let cases: Vec<(&str, Attributes)> = vec![
        ("lower local pref", {
            let mut a = x.clone();
            a.local_pref = Some(50);
            a
        }),
        ("longer AS path", attrs(&[65001, 65001])),
        ("worse origin", {
            let mut a = x.clone();
            a.origin = Some(Origin::Incomplete);
            a
        }),
        ("higher MED from the same AS", {
            let mut a = x.clone();
            a.med = Some(10);
            a
        }),
    ];
    for (what, worse) in &cases {
        // The worse path has the lower router id, so only its worth can leave it out.
        let c = [candidate(worse, 1), candidate(&x, 2)];
        assert_eq!(select_multipath(&c, 8).as_slice(), [1], "{what}");
    }
    // iBGP is not merged with eBGP.
    let mut ebgp = candidate(&x, 2);
    ebgp.ebgp = true;
    assert_eq!(
        select_multipath(&[candidate(&x, 1), ebgp], 8).as_slice(),
        [1]
    );
    // A path whose next hop cannot be reached is never a member.
    let mut unreachable = candidate(&x, 1);
    unreachable.resolvable = false;
    assert_eq!(
        select_multipath(&[unreachable, candidate(&x, 2)], 8).as_slice(),
        [1]
    );
    // A locally originated path stands alone.
    let mut local = candidate(&x, 3);
    local.local = true;
    let learned = [candidate(&x, 1), local];
    assert_eq!(select_multipath(&learned, 8).as_slice(), [1]);
    let mut two_local = [local, local];
    two_local[1].peer_address = "192.168.0.1".parse().unwrap();
    assert_eq!(select_multipath(&two_local, 8).len(), 1);
    assert!(select_multipath(&[unreachable], 8).is_empty());
}

#[test]
fn rib_multipath_keeps_at_most_max_paths_the_best_first() {
    let x = attrs(&[65001]);
    let c = equal_candidates(&x, 5);
    assert_eq!(select_multipath(&c, 3).as_slice(), [0, 1, 2]);
    assert_eq!(select_multipath(&c, 1).as_slice(), [0], "1 turns ECMP off");
    assert_eq!(select_multipath(&c, 0).as_slice(), [0], "0 counts as 1");
}

/// A random path: local pref, AS path, origin, MED, eBGP, router id, cluster list length.
fn arb_path() -> impl Strategy<Value = (Attributes, bool, u8)> {
    (
        prop::option::of(prop::sample::select(vec![50u32, 100, 200])),
        prop::collection::vec(prop::sample::select(vec![1u32, 2, 3]), 0..4),
        0u8..3,
        prop::option::of(0u32..3),
        any::<bool>(),
        1u8..6,
        0usize..3,
    )
        .prop_map(|(lp, path, origin, med, ebgp, id, clusters)| {
            let mut a = attrs(&path);
            a.local_pref = lp;
            a.origin = Some([Origin::Igp, Origin::Egp, Origin::Incomplete][origin as usize]);
            a.med = med;
            a.cluster_list = vec![Ipv4Addr::new(9, 9, 9, 9); clusters];
            (a, ebgp, id)
        })
}

/// Candidates for random paths; peer addresses are unique, so the last tie-breaker always
/// decides.
fn candidates(paths: &[(Attributes, bool, u8)]) -> Vec<Candidate<'_>> {
    let each = paths.iter().enumerate().map(|(i, (a, ebgp, id))| {
        let mut c = candidate(a, *id);
        c.ebgp = *ebgp;
        c.peer_address = IpAddr::V4(Ipv4Addr::new(192, 168, 1, i as u8));
        c
    });
    each.collect()
}

proptest! {
    #[test]
    fn rib_decision_is_independent_of_path_order(
        paths in prop::collection::vec(arb_path(), 1..6),
        rotation in 0usize..6,
    ) {
        let cands = candidates(&paths);
        let best = select(&cands).expect("a best path");
        let mut rotated = cands.clone();
        rotated.rotate_left(rotation % cands.len());
        let rotated_best = select(&rotated).expect("a best path");
        prop_assert_eq!(rotated[rotated_best].peer_address, cands[best].peer_address);
        rotated.reverse();
        let reversed_best = select(&rotated).expect("a best path");
        prop_assert_eq!(rotated[reversed_best].peer_address, cands[best].peer_address);
    }

    #[test]
    fn rib_multipath_set_starts_with_the_best_and_is_independent_of_order(
        paths in prop::collection::vec(arb_path(), 1..6),
        rotation in 0usize..6,
        max in 1usize..6,
    ) {
        let cands = candidates(&paths);
        let set = select_multipath(&cands, max);
        prop_assert_eq!(set.first().copied(), select(&cands));
        prop_assert!(set.len() <= max);
        let addresses = |c: &[Candidate<'_>], set: &[usize]| -> Vec<IpAddr> {
            set.iter().map(|&i| c[i].peer_address).collect()
        };
        let mut rotated = cands.clone();
        rotated.rotate_left(rotation % cands.len());
        let rotated_set = select_multipath(&rotated, max);
        prop_assert_eq!(addresses(&rotated, &rotated_set), addresses(&cands, &set));
        // Every member is worth as much as the best.
        let best = &cands[set[0]];
        for &i in &set[1..] {
            let c = &cands[i];
            prop_assert_eq!(c.attrs.local_pref.unwrap_or(100), best.attrs.local_pref.unwrap_or(100));
            prop_assert_eq!(c.attrs.as_path_len(), best.attrs.as_path_len());
            prop_assert_eq!(c.attrs.origin, best.attrs.origin);
            prop_assert_eq!(c.ebgp, best.ebgp);
        }
    }

    #[test]
    fn rib_decision_winner_has_top_local_pref_and_then_shortest_path(
        paths in prop::collection::vec(arb_path(), 1..6),
    ) {
        let cands = candidates(&paths);
        let best = select(&cands).expect("a best path");
        let lp = |c: &Candidate<'_>| c.attrs.local_pref.unwrap_or(100);
        let top = cands.iter().map(lp).max().unwrap();
        prop_assert_eq!(lp(&cands[best]), top);
        let shortest = cands.iter().filter(|c| lp(c) == top)
            .map(|c| c.attrs.as_path_len()).min().unwrap();
        prop_assert_eq!(cands[best].attrs.as_path_len(), shortest);
    }
}
