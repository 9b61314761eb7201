//! The verdict on one connection, and why: Kubernetes' semantics in one place.
//!
//! A connection passes when its source may send it (egress, judged where the source
//! lives) and its destination may receive it (ingress, judged where the destination
//! lives). In each direction a pod no policy isolates takes everything; an isolated pod
//! takes what any rule of any isolating policy allows (the union); traffic between a pod
//! and its own node always passes, and so does a pod's traffic to itself (it never leaves
//! the pod: Kubernetes' policies cannot block a pod's access to itself). Replies of an allowed connection pass without a verdict
//! of their own: the dataplane keeps the connection's state.

use std::fmt;
use std::net::IpAddr;

use crate::cluster::{Cluster, Pod, port_matches};
use crate::model::{PolicyId, PolicyType, Protocol, RuleId};

/// One end of a connection: an address, and the pod holding it if any.
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    /// The address the connection uses.
    pub address: IpAddr,
    /// The pod with that address.
    pub pod: Option<&'a Pod>,
}

/// A new connection (its first packet).
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    /// Who opens it.
    pub source: Party<'a>,
    /// Who it is for.
    pub destination: Party<'a>,
    /// Its transport protocol and destination port; `None` for traffic without ports
    /// (ICMP), which only rules without ports allow.
    pub port: Option<(Protocol, u16)>,
}

impl<'a> Flow<'a> {
    /// A connection between two pods, over the first address family both have (IPv4
    /// before IPv6); `None` when they share no family.
    pub fn between(
        source: &'a Pod,
        destination: &'a Pod,
        port: Option<(Protocol, u16)>,
    ) -> Option<Self> {
        source.addresses.iter().find_map(|&from| {
            destination.address_like(from).map(|to| Flow {
                source: Party {
                    address: from,
                    pod: Some(source),
                },
                destination: Party {
                    address: to,
                    pod: Some(destination),
                },
                port,
            })
        })
    }
}

/// The verdict of one direction on one end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectionVerdict {
    /// This end is not a pod: no policy applies to it.
    NotAPod,
    /// No policy isolates the pod in this direction.
    NotIsolated,
    /// The other end is the pod's own node, which always may talk to it.
    OwnNode {
        /// The policies that isolate the pod.
        isolated_by: Vec<PolicyId>,
    },
    /// The other end is the pod itself: its traffic to itself never leaves it.
    Itself {
        /// The policies that isolate the pod.
        isolated_by: Vec<PolicyId>,
    },
    /// Isolated, and these rules allow the connection.
    Allowed {
        /// The policies that isolate the pod.
        isolated_by: Vec<PolicyId>,
        /// Every rule that allows it.
        allowed_by: Vec<RuleId>,
    },
    /// Isolated, and no rule of the isolating policies allows the connection.
    Denied {
        /// The policies that isolate the pod.
        isolated_by: Vec<PolicyId>,
    },
}

impl DirectionVerdict {
    /// Whether this direction lets the connection through.
    pub fn allows(&self) -> bool {
        !matches!(self, DirectionVerdict::Denied { .. })
    }
}

/// The verdict on a connection: both directions, each with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The source's egress.
    pub egress: DirectionVerdict,
    /// The destination's ingress.
    pub ingress: DirectionVerdict,
}

impl Verdict {
    /// Whether the connection passes.
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

impl Cluster {
    /// The verdict on `flow`, with the policies and rules that decide it.
    pub fn verdict(&self, flow: &Flow<'_>) -> Verdict {
        Verdict {
            egress: self.judge(PolicyType::Egress, flow.source, flow.destination, flow),
            ingress: self.judge(PolicyType::Ingress, flow.destination, flow.source, flow),
        }
    }

    /// The verdict of `direction` on `subject`'s end, the other end being `other`.
    fn judge(
        &self,
        direction: PolicyType,
        subject: Party<'_>,
        other: Party<'_>,
        flow: &Flow<'_>,
    ) -> DirectionVerdict {
        let Some(pod) = subject.pod else {
            return DirectionVerdict::NotAPod;
        };
        let isolating = self.isolating(pod, direction);
        if isolating.is_empty() {
            return DirectionVerdict::NotIsolated;
        }
        let isolated_by: Vec<PolicyId> = isolating.iter().map(|p| p.id()).collect();
        if self.is_node_address(&pod.node, other.address) {
            return DirectionVerdict::OwnNode { isolated_by };
        }
        if other
            .pod
            .is_some_and(|o| o.namespace == pod.namespace && o.name == pod.name)
        {
            return DirectionVerdict::Itself { isolated_by };
        }
        // A named port is the destination's: the subject itself for ingress, the other
        // end for egress.
        let destination = match direction {
            PolicyType::Ingress => Some(pod),
            PolicyType::Egress => other.pod,
        };
        let mut allowed_by = Vec::new();
        for policy in isolating {
            for (index, (peers, ports)) in policy.rules(direction).into_iter().enumerate() {
                let peer_ok = peers.is_empty()
                    || peers
                        .iter()
                        .any(|peer| self.peer_matches(policy, peer, other.address, other.pod));
                let port_ok = ports.is_empty()
                    || flow.port.is_some_and(|(protocol, number)| {
                        ports
                            .iter()
                            .any(|port| port_matches(port, protocol, number, destination))
                    });
                if peer_ok && port_ok {
                    allowed_by.push(RuleId {
                        policy: policy.id(),
                        direction,
                        index,
                    });
                }
            }
        }
        if allowed_by.is_empty() {
            DirectionVerdict::Denied { isolated_by }
        } else {
            DirectionVerdict::Allowed {
                isolated_by,
                allowed_by,
            }
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for DirectionVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectionVerdict::NotAPod => f.write_str("not a pod: no policy applies"),
            DirectionVerdict::NotIsolated => f.write_str("allowed: no policy isolates it"),
            DirectionVerdict::OwnNode { isolated_by } => write!(
                f,
                "allowed: its own node (isolated by {})",
                join(isolated_by)
            ),
            DirectionVerdict::Itself { isolated_by } => write!(
                f,
                "allowed: the pod itself (isolated by {})",
                join(isolated_by)
            ),
            DirectionVerdict::Allowed {
                isolated_by,
                allowed_by,
            } => write!(
                f,
                "allowed by {} (isolated by {})",
                join(allowed_by),
                join(isolated_by)
            ),
            DirectionVerdict::Denied { isolated_by } => write!(
                f,
                "denied: isolated by {}, and no rule of theirs allows it",
                join(isolated_by)
            ),
        }
    }
}
