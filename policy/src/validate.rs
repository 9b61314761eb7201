//! Validation of a decoded policy, with the rules the Kubernetes API server applies: every
//! error names the field it is about (`spec.ingress[0].from[1].ipBlock.except[0]`).

use ipnet::IpNet;
use thiserror::Error;

use crate::model::{
    API_VERSION, IpBlock, KIND, LabelSelector, Labels, NetworkPolicy, PolicyPeer, PolicyPort,
    PortSpec, SelectorOperator,
};

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// A field that must hold one exact value holds another.
    #[error("must be {expected:?}, not {found:?}")]
    Unexpected {
        /// The value the field must hold.
        expected: &'static str,
        /// The value it holds.
        found: String,
    },
    /// A required field is absent or empty.
    #[error("is required")]
    Missing,
    /// A name (of a policy or a namespace) breaks the DNS rules Kubernetes applies.
    #[error("{value:?} is not a valid {what}: {rule}")]
    BadName {
        /// The kind of name.
        what: &'static str,
        /// The name.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A value appears twice in a list that holds each value once.
    #[error("{0:?} appears twice")]
    Duplicate(String),
    /// `In` or `NotIn` without values.
    #[error("operator {0:?} needs at least one value")]
    ValuesRequired(SelectorOperator),
    /// `Exists` or `DoesNotExist` with values.
    #[error("operator {0:?} takes no values")]
    ValuesForbidden(SelectorOperator),
    /// A peer with none of its fields set.
    #[error("a peer needs podSelector, namespaceSelector or ipBlock")]
    EmptyPeer,
    /// A peer with both an address block and selectors.
    #[error("ipBlock cannot be combined with podSelector or namespaceSelector")]
    IpBlockWithSelector,
    /// An exception that is not strictly inside its block.
    #[error("{except} is not strictly inside {cidr}")]
    ExceptOutsideCidr {
        /// The block.
        cidr: IpNet,
        /// The exception.
        except: IpNet,
    },
    /// A port number outside 1–65535.
    #[error("port {0} is outside 1-65535")]
    PortOutOfRange(i64),
    /// `endPort` without a numeric `port`.
    #[error("endPort needs a numeric port")]
    EndPortWithoutNumber,
    /// `endPort` below `port` or above 65535.
    #[error("endPort {end} must be between port {start} and 65535")]
    EndPortOutOfRange {
        /// `port`.
        start: i64,
        /// `endPort`.
        end: i64,
    },
}

/// A field of a policy and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// The field's path in the document (`spec.podSelector.matchLabels.app`).
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

fn fail(field: impl Into<String>, problem: Problem) -> Result<(), ValidationError> {
    Err(ValidationError {
        field: field.into(),
        problem,
    })
}

/// Checks a decoded policy against the API server's rules; the first error found, naming
/// its field.
pub fn validate(policy: &NetworkPolicy) -> Result<(), ValidationError> {
    if policy.api_version != API_VERSION {
        fail(
            "apiVersion",
            Problem::Unexpected {
                expected: API_VERSION,
                found: policy.api_version.clone(),
            },
        )?;
    }
    if policy.kind != KIND {
        fail(
            "kind",
            Problem::Unexpected {
                expected: KIND,
                found: policy.kind.clone(),
            },
        )?;
    }
    if policy.metadata.name.is_empty() {
        fail("metadata.name", Problem::Missing)?;
    }
    check_name(
        "metadata.name",
        "policy name",
        &policy.metadata.name,
        253,
        true,
    )?;
    if let Some(namespace) = &policy.metadata.namespace {
        check_namespace_name("metadata.namespace", namespace)?;
    }
    check_labels("metadata.labels", &policy.metadata.labels)?;
    check_selector("spec.podSelector", &policy.spec.pod_selector)?;
    if let Some(types) = &policy.spec.policy_types {
        for (i, t) in types.iter().enumerate() {
            if types[..i].contains(t) {
                fail(
                    format!("spec.policyTypes[{i}]"),
                    Problem::Duplicate(format!("{t:?}")),
                )?;
            }
        }
    }
    for (i, rule) in policy.spec.ingress.iter().enumerate() {
        check_rule(
            &format!("spec.ingress[{i}]"),
            "from",
            &rule.from,
            &rule.ports,
        )?;
    }
    for (i, rule) in policy.spec.egress.iter().enumerate() {
        check_rule(&format!("spec.egress[{i}]"), "to", &rule.to, &rule.ports)?;
    }
    Ok(())
}

/// Checks a namespace's name (a DNS label, as Kubernetes requires).
pub fn check_namespace_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return fail(field, Problem::Missing);
    }
    check_name(field, "namespace name", name, 63, false)
}

/// Checks a set of labels: each key a qualified name, each value a label value.
pub fn check_labels(field: &str, labels: &Labels) -> Result<(), ValidationError> {
    for (key, value) in labels {
        check_label_key(&format!("{field}.{key}"), key)?;
        check_label_value(&format!("{field}.{key}"), value)?;
    }
    Ok(())
}

fn check_rule(
    path: &str,
    peers_field: &str,
    peers: &[PolicyPeer],
    ports: &[PolicyPort],
) -> Result<(), ValidationError> {
    for (i, peer) in peers.iter().enumerate() {
        check_peer(&format!("{path}.{peers_field}[{i}]"), peer)?;
    }
    for (i, port) in ports.iter().enumerate() {
        check_port(&format!("{path}.ports[{i}]"), port)?;
    }
    Ok(())
}

fn check_peer(path: &str, peer: &PolicyPeer) -> Result<(), ValidationError> {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    match &peer.ip_block {
        None if !selectors => fail(path, Problem::EmptyPeer),
        Some(_) if selectors => fail(path, Problem::IpBlockWithSelector),
        Some(block) => check_ip_block(&format!("{path}.ipBlock"), block),
        None => {
            if let Some(s) = &peer.pod_selector {
                check_selector(&format!("{path}.podSelector"), s)?;
            }
            if let Some(s) = &peer.namespace_selector {
                check_selector(&format!("{path}.namespaceSelector"), s)?;
            }
            Ok(())
        }
    }
}

fn check_ip_block(path: &str, block: &IpBlock) -> Result<(), ValidationError> {
    for (i, except) in block.except.iter().enumerate() {
        let inside = block.cidr.contains(except) && except.prefix_len() > block.cidr.prefix_len();
        if !inside {
            fail(
                format!("{path}.except[{i}]"),
                Problem::ExceptOutsideCidr {
                    cidr: block.cidr,
                    except: *except,
                },
            )?;
        }
    }
    Ok(())
}

fn check_port(path: &str, port: &PolicyPort) -> Result<(), ValidationError> {
    match &port.port {
        Some(PortSpec::Number(n)) => {
            if !(1..=65535).contains(n) {
                fail(format!("{path}.port"), Problem::PortOutOfRange(*n))?;
            }
            if let Some(end) = port.end_port
                && !(*n..=65535).contains(&end)
            {
                fail(
                    format!("{path}.endPort"),
                    Problem::EndPortOutOfRange { start: *n, end },
                )?;
            }
        }
        Some(PortSpec::Name(name)) => {
            check_port_name(&format!("{path}.port"), name)?;
            if port.end_port.is_some() {
                fail(format!("{path}.endPort"), Problem::EndPortWithoutNumber)?;
            }
        }
        None if port.end_port.is_some() => {
            fail(format!("{path}.endPort"), Problem::EndPortWithoutNumber)?;
        }
        None => {}
    }
    Ok(())
}

/// Checks a selector: label keys and values, and each expression's operator and values.
pub fn check_selector(path: &str, selector: &LabelSelector) -> Result<(), ValidationError> {
    check_labels(&format!("{path}.matchLabels"), &selector.match_labels)?;
    for (i, r) in selector.match_expressions.iter().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        check_label_key(&format!("{at}.key"), &r.key)?;
        match r.operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                if r.values.is_empty() {
                    fail(format!("{at}.values"), Problem::ValuesRequired(r.operator))?;
                }
                for (j, v) in r.values.iter().enumerate() {
                    check_label_value(&format!("{at}.values[{j}]"), v)?;
                }
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                if !r.values.is_empty() {
                    fail(format!("{at}.values"), Problem::ValuesForbidden(r.operator))?;
                }
            }
        }
    }
    Ok(())
}

fn bad(field: &str, what: &'static str, value: &str, rule: &'static str) -> ValidationError {
    ValidationError {
        field: field.to_owned(),
        problem: Problem::BadName {
            what,
            value: value.to_owned(),
            rule,
        },
    }
}

/// A DNS label (`dots = false`) or subdomain (`dots = true`) of at most `max` characters.
fn check_name(
    field: &str,
    what: &'static str,
    value: &str,
    max: usize,
    dots: bool,
) -> Result<(), ValidationError> {
    const RULE_LABEL: &str =
        "at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit";
    const RULE_SUBDOMAIN: &str = "at most 253 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit";
    let rule = if dots { RULE_SUBDOMAIN } else { RULE_LABEL };
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if value.len() > max
        || !value.chars().all(ok_char)
        || !edge(value.chars().next())
        || !edge(value.chars().last())
    {
        return Err(bad(field, what, value, rule));
    }
    Ok(())
}

/// The name part of a qualified name or a label value: at most 63 letters, digits, '-', '_'
/// and '.', starting and ending with a letter or digit.
fn is_label_name(value: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge(value.chars().next())
        && edge(value.chars().last())
}

fn check_label_key(field: &str, key: &str) -> Result<(), ValidationError> {
    const RULE: &str = "an optional DNS subdomain prefix and '/', then at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit";
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && check_name(field, "label key prefix", prefix, 253, true).is_err()
    {
        return Err(bad(field, "label key", key, RULE));
    }
    if !is_label_name(name) {
        return Err(bad(field, "label key", key, RULE));
    }
    Ok(())
}

fn check_label_value(field: &str, value: &str) -> Result<(), ValidationError> {
    if !value.is_empty() && !is_label_name(value) {
        return Err(bad(
            field,
            "label value",
            value,
            "empty, or at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// A named port (an IANA service name): at most 15 lower-case letters, digits and '-', at
/// least one letter, no '-' at either end or twice in a row.
pub fn check_port_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            "port name",
            name,
            "at most 15 lower-case letters, digits and '-', with at least one letter and no '-' at either end or twice in a row",
        ))
    }
}
