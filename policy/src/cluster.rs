//! What policy is evaluated against: the namespaces with their labels, the pods with their
//! labels, addresses and named ports, the nodes' own addresses, and the policies.

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use wren_model::NamedPort;
use wren_model::{Namespace, Node, PodMeta, Workload};

use crate::model::{
    Labels, NAMESPACE_NAME_LABEL, NetworkPolicy, PolicyPeer, PolicyPort, PolicyType, PortSpec,
    Protocol,
};

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// The pod's labels.
    pub labels: Labels,
    /// The pod's addresses (one per family).
    pub addresses: Vec<IpAddr>,
    /// The pod's named container ports.
    pub ports: Vec<NamedPort>,
    /// The host side of the pod's interface, where its node enforces its rules.
    pub host_interface: String,
}

impl Pod {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The number a named port stands for on this pod, if it has one of that name and
    /// protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// The pod's address of the same family as `other`.
    pub fn address_like(&self, other: IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == other.is_ipv4())
    }
}

/// Everything a verdict depends on. Policies are expected valid (decoded through
/// [`crate::decode_policies`] or [`crate::decode_value`]).
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, Labels>,
    pods: Vec<Pod>,
    /// Indexes into `pods`, by namespace.
    pods_by_namespace: BTreeMap<String, Vec<usize>>,
    policies: BTreeMap<String, Vec<NetworkPolicy>>,
    node_addresses: BTreeMap<String, Vec<IpAddr>>,
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a namespace's labels (the `kubernetes.io/metadata.name` label is implied).
    pub fn set_namespace(&mut self, name: &str, mut labels: Labels) {
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        self.namespaces.insert(name.to_owned(), labels);
    }

    /// Adds a pod (its namespace exists from then on, with no labels but its name if none
    /// were set).
    pub fn add_pod(&mut self, pod: Pod) {
        if !self.namespaces.contains_key(&pod.namespace) {
            self.set_namespace(&pod.namespace.clone(), Labels::new());
        }
        self.pods_by_namespace
            .entry(pod.namespace.clone())
            .or_default()
            .push(self.pods.len());
        self.pods.push(pod);
    }

    /// Adds a policy, replacing one of the same namespace and name.
    pub fn add_policy(&mut self, policy: NetworkPolicy) {
        let list = self
            .policies
            .entry(policy.namespace().to_owned())
            .or_default();
        list.retain(|p| p.name() != policy.name());
        list.push(policy);
        list.sort_by(|a, b| a.name().cmp(b.name()));
    }

    /// Sets a node's own addresses: traffic between them and the node's pods is always
    /// allowed.
    pub fn set_node_addresses(&mut self, node: &str, addresses: Vec<IpAddr>) {
        self.node_addresses.insert(node.to_owned(), addresses);
    }

    /// Every pod.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Every policy, by namespace then name.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values().flatten()
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The pod holding `address`.
    pub fn pod_by_address(&self, address: IpAddr) -> Option<&Pod> {
        self.pods.iter().find(|p| p.addresses.contains(&address))
    }

    /// A namespace's labels, with `kubernetes.io/metadata.name` set to its name (as the API
    /// server sets it on every namespace).
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        self.namespaces.get(namespace).cloned().unwrap_or_else(|| {
            Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned())])
        })
    }

    /// Whether `address` is one of `node`'s own.
    pub fn is_node_address(&self, node: &str, address: IpAddr) -> bool {
        self.node_addresses
            .get(node)
            .is_some_and(|a| a.contains(&address))
    }

    /// The policies that select `pod` and isolate it in `direction`, by name.
    pub fn isolating(&self, pod: &Pod, direction: PolicyType) -> Vec<&NetworkPolicy> {
        self.policies
            .get(&pod.namespace)
            .into_iter()
            .flatten()
            .filter(|p| p.isolates(direction) && p.spec.pod_selector.matches(&pod.labels))
            .collect()
    }

    /// Whether `peer` of a rule of `policy` covers the party at `address` (the pod `pod`,
    /// if the address is a pod's).
    pub fn peer_matches(
        &self,
        policy: &NetworkPolicy,
        peer: &PolicyPeer,
        address: IpAddr,
        pod: Option<&Pod>,
    ) -> bool {
        if let Some(block) = &peer.ip_block {
            return block.contains(address);
        }
        pod.is_some_and(|pod| self.selects_pod(policy, peer, pod))
    }

    /// Whether the selectors of `peer` (no `ipBlock`) pick `pod`: a pod selector alone
    /// looks in the policy's namespace, a namespace selector in the namespaces it matches.
    pub fn selects_pod(&self, policy: &NetworkPolicy, peer: &PolicyPeer, pod: &Pod) -> bool {
        if peer.ip_block.is_some() {
            return false;
        }
        let namespace_ok = match &peer.namespace_selector {
            // Every pod's namespace is known (`add_pod`), so this borrows rather than builds.
            Some(selector) => match self.namespaces.get(&pod.namespace) {
                Some(labels) => selector.matches(labels),
                None => selector.matches(&self.namespace_labels(&pod.namespace)),
            },
            None => pod.namespace == policy.namespace(),
        };
        namespace_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pod.labels))
    }
}

impl Cluster {
    /// The cluster as the datastore records it: the policies, the namespaces' labels
    /// (`namespaces/<name>`), the pods' labels and named ports by `namespace/name`
    /// (`pods/`), the workloads of every node (their addresses; only those with a
    /// Kubernetes identity are pods policy can select) and the nodes' own addresses.
    /// `wren policy explain` and the agent's plan both see the cluster through this.
    pub fn from_records<'a>(
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        namespaces: impl IntoIterator<Item = (&'a str, &'a Namespace)>,
        pod_meta: &BTreeMap<String, PodMeta>,
        workloads: impl IntoIterator<Item = &'a Workload>,
        nodes: impl IntoIterator<Item = &'a Node>,
    ) -> Self {
        let mut cluster = Cluster::new();
        for policy in policies {
            cluster.add_policy(policy.clone());
        }
        for (name, namespace) in namespaces {
            cluster.set_namespace(name, namespace.labels.clone());
        }
        let mut pods: BTreeMap<(&str, &str), Pod> = BTreeMap::new();
        for workload in workloads {
            let (Some(namespace), Some(name)) = (&workload.pod_namespace, &workload.pod_name)
            else {
                continue;
            };
            let pod = pods
                .entry((namespace.as_str(), name.as_str()))
                .or_insert_with(|| {
                    let meta = pod_meta.get(&format!("{namespace}/{name}"));
                    Pod {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        node: workload.node.clone(),
                        labels: meta.map(|m| m.labels.clone()).unwrap_or_default(),
                        addresses: Vec::new(),
                        ports: meta.map(|m| m.ports.clone()).unwrap_or_default(),
                        host_interface: workload.host_interface.clone(),
                    }
                });
            pod.addresses
                .extend(workload.addresses.iter().map(|a| a.addr()));
        }
        for pod in pods.into_values() {
            cluster.add_pod(pod);
        }
        for node in nodes {
            let addresses = node
                .ipv4
                .map(|a| a.addr().into())
                .into_iter()
                .chain(node.ipv6.map(|a| a.addr().into()))
                .chain(node.vxlan_address)
                .collect();
            cluster.set_node_addresses(&node.name, addresses);
        }
        cluster
    }

    /// The pods the selectors of `peer` (no `ipBlock`) pick, in the order they were added:
    /// [`Cluster::selects_pod`] over the namespaces that can hold them only.
    pub fn selected_pods(&self, policy: &NetworkPolicy, peer: &PolicyPeer) -> Vec<&Pod> {
        if peer.ip_block.is_some() {
            return Vec::new();
        }
        let namespaces: Vec<&str> = match &peer.namespace_selector {
            None => vec![policy.namespace()],
            Some(selector) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| selector.matches(labels))
                .map(|(name, _)| name.as_str())
                .collect(),
        };
        let mut indexes: Vec<usize> = namespaces
            .into_iter()
            .filter_map(|ns| self.pods_by_namespace.get(ns))
            .flatten()
            .copied()
            .collect();
        indexes.sort_unstable();
        indexes
            .into_iter()
            .map(|i| &self.pods[i])
            .filter(|pod| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&pod.labels))
            })
            .collect()
    }
}

/// Whether a rule's `port` covers `protocol`/`number` on the destination pod `destination`
/// (which a named port is resolved on).
pub fn port_matches(
    port: &PolicyPort,
    protocol: Protocol,
    number: u16,
    destination: Option<&Pod>,
) -> bool {
    if port.protocol() != protocol {
        return false;
    }
    match &port.port {
        None => true,
        Some(PortSpec::Number(first)) => {
            let last = port.end_port.unwrap_or(*first);
            (*first..=last).contains(&i64::from(number))
        }
        Some(PortSpec::Name(name)) => {
            destination.is_some_and(|pod| pod.named_port(name, protocol) == Some(number))
        }
    }
}
