//! Decoding the YAML a user gives `kubectl apply`: one or many documents, each a
//! NetworkPolicy, all validated before any is returned.
//!
//! YAML is read with `serde_yaml_ng` (the maintained continuation of `serde_yaml`, on
//! libyaml's parser): it reads multi-document streams and YAML 1.2's core schema, so `on`
//! and `yes` stay strings as they do for `kubectl`. Each document is first read as plain
//! data, so that an error can name the document by its `metadata.name` even when the rest
//! does not decode, and then decoded with `serde_path_to_error`, which gives the path of
//! the field a type error is about.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::model::{KIND, NetworkPolicy, PolicyId};
use crate::validate::{ValidationError, validate};

/// Which document of the input an error is about: its place (from 1) and its name, when
/// it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRef {
    /// Position of the document in the input, counting from 1.
    pub index: usize,
    /// The document's `metadata.name`, when it has a string there.
    pub name: Option<String>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "document {} ({name})", self.index),
            None => write!(f, "document {}", self.index),
        }
    }
}

/// Why an input was refused. Nothing of an input that fails is kept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The text is not YAML.
    #[error("document {document}: not valid YAML: {reason}")]
    Yaml {
        /// Position of the document (from 1).
        document: usize,
        /// The parser's message, with the line and column.
        reason: String,
    },
    /// A field has the wrong type or is not a NetworkPolicy field.
    #[error("{document}: {field}: {reason}")]
    Shape {
        /// The document.
        document: DocumentRef,
        /// The field's path (`.` for the document itself).
        field: String,
        /// What the decoder expected.
        reason: String,
    },
    /// A field breaks a rule of the API.
    #[error("{document}: {error}")]
    Invalid {
        /// The document.
        document: DocumentRef,
        /// The field and the problem.
        error: ValidationError,
    },
    /// Two documents are the same policy.
    #[error("{document}: {policy} is also document {first}")]
    Duplicate {
        /// The second document.
        document: DocumentRef,
        /// The policy both name.
        policy: PolicyId,
        /// Position of the first.
        first: usize,
    },
    /// The input holds no document at all.
    #[error("no NetworkPolicy in the input")]
    Empty,
}

/// Decodes and validates every document of `text`; all of them or an error naming the
/// first bad document and field. Empty documents (a trailing `---`) are skipped.
pub fn decode_policies(text: &str) -> Result<Vec<NetworkPolicy>, DecodeError> {
    let mut policies = Vec::new();
    let mut seen: BTreeMap<PolicyId, usize> = BTreeMap::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = Value::deserialize(document).map_err(|e| DecodeError::Yaml {
            document: index,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let policy = decode_value(index, value)?;
        if let Some(first) = seen.insert(policy.id(), index) {
            return Err(DecodeError::Duplicate {
                document: DocumentRef {
                    index,
                    name: Some(policy.name().to_owned()),
                },
                policy: policy.id(),
                first,
            });
        }
        policies.push(policy);
    }
    if policies.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(policies)
}

/// Decodes and validates one document already read as plain data (JSON from the store, or
/// one YAML document); `index` names it in errors.
pub fn decode_value(index: usize, value: Value) -> Result<NetworkPolicy, DecodeError> {
    let document = DocumentRef {
        index,
        name: value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    if !value.is_object() {
        return Err(DecodeError::Shape {
            document,
            field: ".".to_owned(),
            reason: "a document must be a mapping".to_owned(),
        });
    }
    // The kind first: a Deployment is "not a NetworkPolicy", not a list of unknown fields.
    match value.get("kind") {
        Some(Value::String(kind)) if kind == KIND => {}
        other => {
            let found = match other {
                None => "nothing".to_owned(),
                Some(Value::String(s)) => format!("{s:?}"),
                Some(v) => v.to_string(),
            };
            return Err(DecodeError::Shape {
                document,
                field: "kind".to_owned(),
                reason: format!("only NetworkPolicy documents are accepted, found {found}"),
            });
        }
    }
    let policy: NetworkPolicy =
        serde_path_to_error::deserialize(value).map_err(|e| DecodeError::Shape {
            document: document.clone(),
            field: e.path().to_string(),
            reason: e.inner().to_string(),
        })?;
    validate(&policy).map_err(|error| DecodeError::Invalid { document, error })?;
    Ok(policy)
}

/// A policy could not be written as YAML.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot write policy {policy} as YAML: {reason}")]
pub struct EncodeError {
    /// The policy.
    pub policy: PolicyId,
    /// The encoder's message.
    pub reason: String,
}

/// Writes policies as one YAML stream (`---` between documents), which
/// [`decode_policies`] reads back to the same policies.
pub fn encode_policies(policies: &[NetworkPolicy]) -> Result<String, EncodeError> {
    let mut out = String::new();
    for (i, policy) in policies.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let text = serde_yaml_ng::to_string(policy).map_err(|e| EncodeError {
            policy: policy.id(),
            reason: e.to_string(),
        })?;
        out.push_str(&text);
    }
    Ok(out)
}
