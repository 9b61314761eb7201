//! `wren-policy`: Kubernetes NetworkPolicy for wren, without I/O.
//!
//! - [`model`]: the `networking.k8s.io/v1` NetworkPolicy as users write it and wren stores it.
//! - [`decode`]: one or many YAML documents into validated policies, all or nothing, each
//!   error naming the document and the field; [`validate`] has the API server's rules.
//! - [`selector`]: label selectors (`matchLabels`, `matchExpressions`).
//! - [`cluster`]: what a verdict depends on (namespaces, pods, nodes' addresses, policies).
//! - [`verdict`]: the semantics: isolation per direction, the union of rules, `ipBlock`
//!   with `except`, ports, named ports and `endPort`, own-node traffic; with the reasons,
//!   which `wren policy explain` prints.
//! - [`plan`]: the per-node enforcement plan (isolated pods, their compiled rules), and
//!   [`nft`](mod@nft) its rendering as nftables objects, loaded whole or as a delta.

pub mod cluster;
pub mod decode;
pub mod model;
pub mod nft;
pub mod plan;
pub mod selector;
pub mod validate;
pub mod verdict;

pub use cluster::{Cluster, NamedPort, Pod};
pub use decode::{
    DecodeError, DocumentRef, EncodeError, decode_policies, decode_value, encode_policies,
};
pub use model::{
    EgressRule, IngressRule, IpBlock, LabelSelector, LabelSelectorRequirement, Labels,
    NetworkPolicy, PolicyId, PolicyPeer, PolicyPort, PolicyType, PortSpec, Protocol, RuleId,
    SelectorOperator,
};
pub use plan::{
    AddressMatch, DirectionPlan, EndpointPlan, NodePlan, PlannedRule, PortMatch, PortRange,
};
pub use validate::{Problem, ValidationError};
pub use verdict::{DirectionVerdict, Flow, Party, Verdict};
