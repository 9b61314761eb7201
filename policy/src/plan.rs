//! The per-node enforcement plan: for each pod on a node that a policy isolates, the
//! rules its node applies, compiled from the policies to addresses and port ranges.
//!
//! Egress rules are applied where the sender lives and ingress rules where the receiver
//! lives, so each node's plan holds only its own pods. A rule's pod selectors become the
//! addresses of the pods they pick; a named port becomes the number it stands for on the
//! destination (for egress, one compiled rule per distinct number among the destinations).
//! [`PlannedRule::matches`] evaluates the compiled form, so tests can hold it against
//! [`Cluster::verdict`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::cluster::{Cluster, Pod};
use crate::model::{
    NetworkPolicy, PolicyId, PolicyPeer, PolicyPort, PolicyType, PortSpec, Protocol, RuleId,
};

/// Which addresses a compiled rule admits (the peer: source for ingress, destination for
/// egress).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddressMatch {
    /// Every address.
    Any,
    /// Addresses in one of `include` and in none of `except`.
    Nets {
        /// The admitted networks (aggregated: no network inside another).
        include: Vec<IpNet>,
        /// Networks carved out of them.
        except: Vec<IpNet>,
    },
}

impl AddressMatch {
    /// Whether `address` is admitted.
    pub fn matches(&self, address: IpAddr) -> bool {
        match self {
            AddressMatch::Any => true,
            AddressMatch::Nets { include, except } => {
                include.iter().any(|n| n.contains(&address))
                    && !except.iter().any(|n| n.contains(&address))
            }
        }
    }
}

/// A range of destination ports of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// The protocol.
    pub protocol: Protocol,
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (equal to `first` for one port).
    pub last: u16,
}

/// Which packets a compiled rule admits by protocol and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// Every protocol and port (ICMP too).
    Any,
    /// Only these ranges (merged: none overlaps or touches another of its protocol).
    Ranges(Vec<PortRange>),
}

impl PortMatch {
    /// Whether `protocol`/`port` is admitted.
    pub fn matches(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            PortMatch::Any => true,
            PortMatch::Ranges(ranges) => ranges
                .iter()
                .any(|r| r.protocol == protocol && (r.first..=r.last).contains(&port)),
        }
    }
}

/// One compiled rule: which peers on which ports, and the policy rule it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRule {
    /// The policy rule.
    pub rule: RuleId,
    /// The admitted peers (shared by every pod the rule is compiled for).
    pub peers: Arc<AddressMatch>,
    /// The admitted protocols and ports.
    pub ports: PortMatch,
}

impl PlannedRule {
    /// Whether the rule admits a connection with this peer address, protocol and port.
    pub fn matches(&self, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.peers.matches(peer) && self.ports.matches(protocol, port)
    }
}

/// An isolated direction of one pod: the policies isolating it and the rules allowing
/// traffic; everything else is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionPlan {
    /// The policies that isolate the pod in this direction.
    pub isolated_by: Vec<PolicyId>,
    /// The compiled rules, in policy then rule order.
    pub rules: Vec<PlannedRule>,
}

impl DirectionPlan {
    /// The first rule admitting the connection; `None` means it is dropped.
    pub fn admits(&self, peer: IpAddr, protocol: Protocol, port: u16) -> Option<&RuleId> {
        self.rules
            .iter()
            .find(|r| r.matches(peer, protocol, port))
            .map(|r| &r.rule)
    }
}

/// What one node enforces for one of its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPlan {
    /// The pod's `namespace/name`.
    pub pod: String,
    /// The host side of the pod's interface.
    pub interface: String,
    /// The pod's addresses.
    pub addresses: Vec<IpAddr>,
    /// Traffic to the pod, when a policy isolates it for ingress.
    pub ingress: Option<DirectionPlan>,
    /// Traffic from the pod, when a policy isolates it for egress.
    pub egress: Option<DirectionPlan>,
}

/// Everything one node enforces: its isolated pods, by interface name. Pods no policy
/// isolates are not in it (their traffic is not policed, and may take the fast path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The node.
    pub node: String,
    /// The node's isolated pods, by interface name.
    pub endpoints: Vec<EndpointPlan>,
}

impl NodePlan {
    /// The addresses whose traffic must pass through the policing path (the fast path's
    /// map of policed endpoints): every address of every pod in the plan.
    pub fn policed_addresses(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The part of a compiled rule that does not depend on the pod it is compiled for: its
/// peers, and for egress named ports the destinations grouped by the number the name has.
/// Computed once per rule and shared by every pod the rule's policy selects.
struct RulePeers {
    matches: Vec<Arc<AddressMatch>>,
    named: Vec<(Protocol, u16, Arc<AddressMatch>)>,
}

/// The addresses of each distinct peer met while planning, by the peer and the namespace
/// its pod selector looks in (`None` when a namespace selector says where): the same
/// selector in many policies is resolved once and is then one shared value.
type PeerMemo<'a> = HashMap<(Option<&'a str>, &'a PolicyPeer), Option<Arc<AddressMatch>>>;

impl Cluster {
    /// The plan of `node`: every pod of the node that a policy isolates, with its compiled
    /// rules.
    pub fn plan_node(&self, node: &str) -> NodePlan {
        let mut memo: HashMap<RuleId, Arc<RulePeers>> = HashMap::new();
        let mut peers = PeerMemo::new();
        let mut endpoints: Vec<EndpointPlan> = self
            .pods()
            .iter()
            .filter(|p| p.node == node)
            .filter_map(|pod| {
                let ingress = self.plan_direction(pod, PolicyType::Ingress, &mut memo, &mut peers);
                let egress = self.plan_direction(pod, PolicyType::Egress, &mut memo, &mut peers);
                (ingress.is_some() || egress.is_some()).then(|| EndpointPlan {
                    pod: pod.id(),
                    interface: pod.host_interface.clone(),
                    addresses: pod.addresses.clone(),
                    ingress,
                    egress,
                })
            })
            .collect();
        endpoints.sort_by(|a, b| a.interface.cmp(&b.interface));
        NodePlan {
            node: node.to_owned(),
            endpoints,
        }
    }

    fn plan_direction<'a>(
        &'a self,
        pod: &Pod,
        direction: PolicyType,
        memo: &mut HashMap<RuleId, Arc<RulePeers>>,
        peer_memo: &mut PeerMemo<'a>,
    ) -> Option<DirectionPlan> {
        let isolating = self.isolating(pod, direction);
        if isolating.is_empty() {
            return None;
        }
        let mut rules = Vec::new();
        for policy in &isolating {
            for (index, (peers, ports)) in policy.rules(direction).into_iter().enumerate() {
                let rule = RuleId {
                    policy: policy.id(),
                    direction,
                    index,
                };
                let compiled = memo
                    .entry(rule.clone())
                    .or_insert_with(|| {
                        Arc::new(self.rule_peers(policy, direction, peers, ports, peer_memo))
                    })
                    .clone();
                compile_rule(&mut rules, rule, pod, ports, &compiled);
            }
        }
        Some(DirectionPlan {
            isolated_by: isolating.iter().map(|p| p.id()).collect(),
            rules,
        })
    }

    /// The peers of one rule: address blocks as they are, selected pods as their addresses;
    /// for egress named ports, the admitted destination addresses grouped by the number
    /// the name has on the pod holding each (only pods have named ports).
    fn rule_peers<'a>(
        &'a self,
        policy: &'a NetworkPolicy,
        direction: PolicyType,
        peers: &'a [PolicyPeer],
        ports: &[PolicyPort],
        peer_memo: &mut PeerMemo<'a>,
    ) -> RulePeers {
        let mut matches = Vec::new();
        if peers.is_empty() {
            matches.push(Arc::new(AddressMatch::Any));
        } else {
            // One address set per peer, not one per rule: the same selector in many
            // policies (a namespace's frontends, say) is then the same set.
            for peer in peers {
                let namespace = peer
                    .namespace_selector
                    .is_none()
                    .then(|| policy.namespace());
                let set =
                    peer_memo
                        .entry((namespace, peer))
                        .or_insert_with(|| match &peer.ip_block {
                            Some(block) => {
                                Some(Arc::new(nets(vec![block.cidr], block.except.clone())))
                            }
                            None => {
                                let selected = self.selected_pods(policy, peer);
                                (!selected.is_empty())
                                    .then(|| Arc::new(nets(pod_nets(&selected), Vec::new())))
                            }
                        });
                if let Some(set) = set {
                    matches.push(set.clone());
                }
            }
        }
        let mut named = Vec::new();
        if direction == PolicyType::Egress {
            for port in ports {
                let Some(PortSpec::Name(name)) = &port.port else {
                    continue;
                };
                let protocol = port.protocol();
                let mut by_number: BTreeMap<u16, Vec<IpNet>> = BTreeMap::new();
                for pod in self.pods() {
                    let Some(n) = pod.named_port(name, protocol) else {
                        continue;
                    };
                    let admitted = pod.addresses.iter().filter(|&&a| {
                        peers.is_empty()
                            || peers
                                .iter()
                                .any(|peer| self.peer_matches(policy, peer, a, Some(pod)))
                    });
                    by_number
                        .entry(n)
                        .or_default()
                        .extend(admitted.map(|&a| IpNet::from(a)));
                }
                for (n, addresses) in by_number.into_iter().filter(|(_, a)| !a.is_empty()) {
                    named.push((protocol, n, Arc::new(nets(addresses, Vec::new()))));
                }
            }
        }
        RulePeers { matches, named }
    }
}

/// Compiles one policy rule for `subject` into `out`: numbered ports as they are, ingress
/// named ports resolved on the subject, and the rule's shared peers.
fn compile_rule(
    out: &mut Vec<PlannedRule>,
    rule: RuleId,
    subject: &Pod,
    ports: &[PolicyPort],
    compiled: &RulePeers,
) {
    let mut ranges = Vec::new();
    for port in ports {
        let protocol = port.protocol();
        match &port.port {
            None => ranges.push(PortRange {
                protocol,
                first: 0,
                last: u16::MAX,
            }),
            Some(PortSpec::Number(first)) => {
                let first = u16::try_from(*first).unwrap_or(u16::MAX);
                let last = port
                    .end_port
                    .map_or(first, |e| u16::try_from(e).unwrap_or(u16::MAX));
                ranges.push(PortRange {
                    protocol,
                    first,
                    last,
                });
            }
            Some(PortSpec::Name(name)) => {
                if rule.direction == PolicyType::Ingress
                    && let Some(n) = subject.named_port(name, protocol)
                {
                    ranges.push(PortRange {
                        protocol,
                        first: n,
                        last: n,
                    });
                }
            }
        }
    }
    if ports.is_empty() || !ranges.is_empty() {
        let port_match = if ports.is_empty() {
            PortMatch::Any
        } else {
            PortMatch::Ranges(merge_ranges(ranges))
        };
        for peers in &compiled.matches {
            out.push(PlannedRule {
                rule: rule.clone(),
                peers: peers.clone(),
                ports: port_match.clone(),
            });
        }
    }
    for (protocol, n, peers) in &compiled.named {
        out.push(PlannedRule {
            rule: rule.clone(),
            peers: peers.clone(),
            ports: PortMatch::Ranges(vec![PortRange {
                protocol: *protocol,
                first: *n,
                last: *n,
            }]),
        });
    }
}

fn pod_nets(pods: &[&Pod]) -> Vec<IpNet> {
    pods.iter()
        .flat_map(|p| p.addresses.iter().map(|a| IpNet::from(*a)))
        .collect()
}

fn nets(include: Vec<IpNet>, except: Vec<IpNet>) -> AddressMatch {
    AddressMatch::Nets {
        include: IpNet::aggregate(&include),
        except: IpNet::aggregate(&except),
    }
}

/// Sorts ranges and merges those of one protocol that overlap or touch.
fn merge_ranges(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last)
                if last.protocol == r.protocol
                    && u32::from(r.first) <= u32::from(last.last) + 1 =>
            {
                last.last = last.last.max(r.last);
            }
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_one_protocol_merge_when_they_touch() {
        let r = |protocol, first, last| PortRange {
            protocol,
            first,
            last,
        };
        let merged = merge_ranges(vec![
            r(Protocol::Tcp, 81, 90),
            r(Protocol::Udp, 80, 80),
            r(Protocol::Tcp, 80, 80),
            r(Protocol::Tcp, 85, 100),
            r(Protocol::Tcp, 102, 102),
        ]);
        assert_eq!(
            merged,
            vec![
                r(Protocol::Tcp, 80, 100),
                r(Protocol::Tcp, 102, 102),
                r(Protocol::Udp, 80, 80)
            ]
        );
    }
}
