//! The Kubernetes `networking.k8s.io/v1` NetworkPolicy, in the shape a user gives
//! `kubectl apply` and wren stores (JSON, camelCase field names).
//!
//! Only the fields NetworkPolicy has; a misspelt field in the spec is an error (as
//! `kubectl apply`'s strict field validation makes it), while the metadata a cluster adds
//! (`uid`, `resourceVersion`, …) is ignored so that `kubectl get -o yaml` output applies.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use wren_model::Protocol;

/// The `apiVersion` every policy carries.
pub const API_VERSION: &str = "networking.k8s.io/v1";
/// The `kind` every policy carries.
pub const KIND: &str = "NetworkPolicy";
/// The namespace of a policy whose metadata names none (as `kubectl` assumes).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The label every namespace carries, whose value is the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels of a pod or a namespace.
pub type Labels = BTreeMap<String, String>;

/// One NetworkPolicy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Always [`API_VERSION`].
    #[serde(default)]
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// Name, namespace and labels of the policy.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the policy selects and allows.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
    /// Set by a cluster in `kubectl get` output; ignored.
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

/// The metadata wren keeps of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The policy's name, unique in its namespace.
    #[serde(default)]
    pub name: String,
    /// The policy's namespace ([`DEFAULT_NAMESPACE`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The policy's own labels (not used for selection).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Annotations, kept as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `spec` of a NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; empty selects all of them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// The directions the policy isolates; see [`NetworkPolicy::isolates`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<PolicyType>>,
    /// Allowed incoming traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Allowed outgoing traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// A direction a policy isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyType {
    /// Traffic to the selected pods.
    Ingress,
    /// Traffic from the selected pods.
    Egress,
}

impl fmt::Display for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyType::Ingress => "ingress",
            PolicyType::Egress => "egress",
        })
    }
}

/// One ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Allowed sources; empty allows every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyPeer>,
    /// Allowed destination ports; empty allows every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// One egress rule: traffic to any of `to` on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Allowed destinations; empty allows every destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyPeer>,
    /// Allowed destination ports; empty allows every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A rule's peer: pods chosen by selectors, or an address block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPeer {
    /// Pods (of the policy's namespace, or of the namespaces `namespace_selector` picks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods are peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// An address block; exclusive with the selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// Addresses in `cidr` but in none of `except`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    pub cidr: IpNet,
    /// Parts of the block that are not peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `address` is in the block and outside every exception.
    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        self.cidr.contains(&address) && !self.except.iter().any(|e| e.contains(&address))
    }
}

/// A port a rule allows: a protocol and a number, a range or a named container port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    /// The protocol; TCP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The port (number or name); every port of the protocol when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSpec>,
    /// The last port of a range starting at the numeric `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

impl PolicyPort {
    /// The protocol the port is for.
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_default()
    }
}

/// A port as Kubernetes' IntOrString: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// A port number (1–65535 once validated).
    Number(i64),
    /// A container port's name (an IANA service name).
    Name(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Name(name) => f.write_str(name),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PortSpec::Number(n) => serializer.serialize_i64(*n),
            PortSpec::Name(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortSpec, E> {
                i64::try_from(v)
                    .map(PortSpec::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec::Name(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A Kubernetes label selector: every `matchLabels` pair and every expression must hold;
/// an empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    /// Further requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the label is compared.
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`; empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operators of a selector requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl NetworkPolicy {
    /// The policy's namespace, [`DEFAULT_NAMESPACE`] when the metadata names none.
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The policy's identity.
    pub fn id(&self) -> PolicyId {
        PolicyId {
            namespace: self.namespace().to_owned(),
            name: self.metadata.name.clone(),
        }
    }

    /// Whether the policy isolates its pods in `direction`. As Kubernetes defaults it:
    /// without `policyTypes`, every policy isolates ingress, and egress too when it has
    /// egress rules.
    pub fn isolates(&self, direction: PolicyType) -> bool {
        match &self.spec.policy_types {
            Some(types) => types.contains(&direction),
            None => match direction {
                PolicyType::Ingress => true,
                PolicyType::Egress => !self.spec.egress.is_empty(),
            },
        }
    }

    /// The rules of one direction, as (from/to peers, ports).
    pub fn rules(&self, direction: PolicyType) -> Vec<(&[PolicyPeer], &[PolicyPort])> {
        match direction {
            PolicyType::Ingress => self
                .spec
                .ingress
                .iter()
                .map(|r| (r.from.as_slice(), r.ports.as_slice()))
                .collect(),
            PolicyType::Egress => self
                .spec
                .egress
                .iter()
                .map(|r| (r.to.as_slice(), r.ports.as_slice()))
                .collect(),
        }
    }
}

/// A policy's identity: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyId {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One rule of a policy: its direction and its index in the policy's list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleId {
    /// The policy.
    pub policy: PolicyId,
    /// The rule's list.
    pub direction: PolicyType,
    /// Index in `spec.ingress` or `spec.egress`.
    pub index: usize,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} spec.{}[{}]", self.policy, self.direction, self.index)
    }
}
