//! CNI spec versions wren speaks, and what each one allows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A CNI spec version wren supports.
///
/// Ordered, so `v >= SpecVersion::V1_1_0` reads as "the config allows 1.1 features".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    /// 0.3.0: the result with `interfaces` and `ips[].version`.
    V0_3_0,
    /// 0.3.1: 0.3.0 with a typo fixed.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds GC, STATUS, interface MTU and route attributes.
    V1_1_0,
}

impl SpecVersion {
    /// Every version wren answers in, oldest first (the VERSION reply).
    pub const SUPPORTED: [SpecVersion; 5] = [
        SpecVersion::V0_3_0,
        SpecVersion::V0_3_1,
        SpecVersion::V0_4_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    /// The newest version wren speaks; used when the caller's version is unknown.
    pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

    /// The version as it appears in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The supported versions as strings, for the VERSION reply and error messages.
    pub fn supported_strings() -> Vec<&'static str> {
        Self::SUPPORTED.iter().map(|v| v.as_str()).collect()
    }

    /// Whether results carry `"version": "4"|"6"` in each `ips` entry (before 1.0.0).
    pub fn ips_carry_version(self) -> bool {
        self < SpecVersion::V1_0_0
    }

    /// Whether CHECK exists in this version (0.4.0 and later).
    pub fn allows_check(self) -> bool {
        self >= SpecVersion::V0_4_0
    }

    /// Whether GC and STATUS exist in this version (1.1.0 and later).
    pub fn allows_gc_and_status(self) -> bool {
        self >= SpecVersion::V1_1_0
    }

    /// Whether results may carry the 1.1 additions: interface `mtu`, route `mtu`, `advmss`,
    /// `priority`, `table` and `scope`.
    pub fn has_result_attributes(self) -> bool {
        self >= SpecVersion::V1_1_0
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `cniVersion` wren does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI version {0:?} is not supported")]
pub struct UnsupportedVersion(pub String);

impl FromStr for SpecVersion {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_string()))
    }
}

impl Serialize for SpecVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SpecVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_nothing_else() {
        for v in SpecVersion::SUPPORTED {
            assert_eq!(v.as_str().parse::<SpecVersion>(), Ok(v));
        }
        for bad in ["0.2.0", "0.1.0", "1.2.0", "1.0", "", "v1.0.0"] {
            assert!(
                bad.parse::<SpecVersion>().is_err(),
                "{bad} must be rejected"
            );
        }
    }

    #[test]
    fn feature_gates_follow_the_spec() {
        assert!(SpecVersion::V0_4_0.ips_carry_version());
        assert!(!SpecVersion::V1_0_0.ips_carry_version());
        assert!(!SpecVersion::V0_3_1.allows_check());
        assert!(SpecVersion::V0_4_0.allows_check());
        assert!(!SpecVersion::V1_0_0.allows_gc_and_status());
        assert!(SpecVersion::V1_1_0.allows_gc_and_status());
    }
}
