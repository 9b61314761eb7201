//! CNI errors: the spec's well-known codes, wren's own codes (100 and up), and the JSON a
//! plugin prints on stdout when it fails.

use serde::{Deserialize, Serialize};

/// A CNI error code. Codes 0–99 are the spec's; 100 and up are wren's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The configuration's `cniVersion` is not one wren speaks (or does not allow the command).
    pub const INCOMPATIBLE_VERSION: Self = Self(1);
    /// A configuration field has a value wren does not support; the message names key and value.
    pub const UNSUPPORTED_FIELD: Self = Self(2);
    /// The container is unknown or does not exist; the runtime need not clean up after it.
    pub const UNKNOWN_CONTAINER: Self = Self(3);
    /// A `CNI_*` variable is missing or malformed; the message names it.
    pub const INVALID_ENVIRONMENT: Self = Self(4);
    /// Reading input or talking to the agent failed.
    pub const IO_FAILURE: Self = Self(5);
    /// The input is not valid JSON.
    pub const DECODE_FAILURE: Self = Self(6);
    /// The network configuration is well-formed JSON but not a valid wren configuration.
    pub const INVALID_NETWORK_CONFIG: Self = Self(7);
    /// A transient condition (agent or datastore unreachable); the runtime should retry.
    pub const TRY_AGAIN_LATER: Self = Self(11);
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: Self = Self(50);
    /// STATUS: as [`Self::NOT_AVAILABLE`], and existing pods may have limited connectivity.
    pub const NOT_AVAILABLE_LIMITED: Self = Self(51);

    /// No address is free in the pools the network may use.
    pub const ADDRESSES_EXHAUSTED: Self = Self(100);
    /// No enabled pool can serve the request (named pools missing or disabled, or none of the
    /// requested address family).
    pub const NO_USABLE_POOL: Self = Self(101);
    /// The interface name is taken, in the pod's namespace or on the host.
    pub const INTERFACE_EXISTS: Self = Self(102);
    /// CHECK found the pod's networking not as ADD left it.
    pub const CHECK_FAILED: Self = Self(103);
    /// The kernel refused a change to links, addresses or routes.
    pub const DATAPLANE_FAILURE: Self = Self(104);
    /// The datastore answered with something wren cannot use.
    pub const DATASTORE_FAILURE: Self = Self(105);
    /// A specific address the runtime asked for (`runtimeConfig.ips`) is taken or in no pool.
    pub const REQUESTED_ADDRESS_UNAVAILABLE: Self = Self(106);

    /// Whether a failure with this code is worth retrying as is.
    pub fn is_transient(self) -> bool {
        self == Self::TRY_AGAIN_LATER
    }
}

/// A CNI error: what the plugin prints (with `cniVersion`) and the agent returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} (CNI error {code:?})")]
pub struct CniError {
    /// The error code.
    pub code: ErrorCode,
    /// A short message a person can act on.
    pub msg: String,
    /// Longer context: the underlying cause, the value that was wrong.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the longer explanation.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error as the spec prints it on stdout: `{cniVersion, code, msg, details}`.
    pub fn to_stdout_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Printed<'a> {
            cni_version: &'a str,
            code: ErrorCode,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let printed = Printed {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // A struct of strings and an integer always serializes.
        serde_json::to_string(&printed).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_spec_error_shape() {
        let e =
            CniError::new(ErrorCode::TRY_AGAIN_LATER, "agent down").with_details("ECONNREFUSED");
        let v: serde_json::Value = serde_json::from_str(&e.to_stdout_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent down", "details": "ECONNREFUSED"})
        );
        let bare = CniError::new(ErrorCode::DECODE_FAILURE, "bad json").to_stdout_json("0.4.0");
        assert!(!bare.contains("details"), "{bare}");
    }
}
