//! BGP communities as the documents and the command line write them: standard ones (RFC
//! 1997, `asn:value`, two 16-bit numbers, or a well-known name) and large ones (RFC 8092,
//! `asn:value:value`, three 32-bit numbers).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The well-known standard communities by name (RFC 1997, RFC 3765, RFC 7999, RFC 8326).
const WELL_KNOWN: [(&str, u32); 6] = [
    ("graceful-shutdown", 0xFFFF_0000),
    ("blackhole", 0xFFFF_029A),
    ("no-export", 0xFFFF_FF01),
    ("no-advertise", 0xFFFF_FF02),
    ("no-export-subconfed", 0xFFFF_FF03),
    ("no-peer", 0xFFFF_FF04),
];

/// A community wren attaches to the routes it announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Community {
    /// A standard community: the AS in the high 16 bits, its value in the low 16.
    Standard(u32),
    /// A large community: the AS that defines it and two values.
    Large(u32, u32, u32),
}

/// Why a community's text is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommunityError {
    /// Neither two nor three numbers separated by colons, nor a well-known name.
    #[error(
        "community {0:?} is not asn:value (standard), asn:value:value (large) or a well-known name (no-export, no-advertise, no-export-subconfed, no-peer, blackhole, graceful-shutdown)"
    )]
    Malformed(String),
    /// A part of a standard community above 65535.
    #[error(
        "community {text:?}: {part} is out of range for a standard community (0-65535; write asn:value:value for a large one)"
    )]
    StandardOutOfRange {
        /// The community as given.
        text: String,
        /// The part out of range.
        part: String,
    },
    /// A part of a large community above 4294967295.
    #[error("large community {text:?}: {part} is out of range (0-4294967295)")]
    LargeOutOfRange {
        /// The community as given.
        text: String,
        /// The part out of range.
        part: String,
    },
}

impl FromStr for Community {
    type Err = CommunityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Some((_, value)) = WELL_KNOWN
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(trimmed))
        {
            return Ok(Community::Standard(*value));
        }
        let parts: Vec<&str> = trimmed.split(':').collect();
        let malformed = || CommunityError::Malformed(text.to_owned());
        if parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(malformed());
        }
        match parts[..] {
            [asn, value] => {
                let half = |part: &str| {
                    part.parse::<u16>()
                        .map_err(|_| CommunityError::StandardOutOfRange {
                            text: text.to_owned(),
                            part: part.to_owned(),
                        })
                };
                Ok(Community::Standard(
                    u32::from(half(asn)?) << 16 | u32::from(half(value)?),
                ))
            }
            [asn, first, second] => {
                let word = |part: &str| {
                    part.parse::<u32>()
                        .map_err(|_| CommunityError::LargeOutOfRange {
                            text: text.to_owned(),
                            part: part.to_owned(),
                        })
                };
                Ok(Community::Large(word(asn)?, word(first)?, word(second)?))
            }
            _ => Err(malformed()),
        }
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Community::Standard(value) => match WELL_KNOWN.iter().find(|(_, v)| *v == value) {
                Some((name, _)) => f.write_str(name),
                None => write!(f, "{}:{}", value >> 16, value & 0xFFFF),
            },
            Community::Large(asn, first, second) => write!(f, "{asn}:{first}:{second}"),
        }
    }
}

impl Serialize for Community {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Community {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_large_and_well_known_round_trip() {
        for (text, community) in [
            ("65000:100", Community::Standard(0xFDE8_0064)),
            ("0:0", Community::Standard(0)),
            ("65535:65535", Community::Standard(0xFFFF_FFFF)),
            ("no-export", Community::Standard(0xFFFF_FF01)),
            ("blackhole", Community::Standard(0xFFFF_029A)),
            ("4200000000:1:2", Community::Large(4_200_000_000, 1, 2)),
            ("65000:0:4294967295", Community::Large(65000, 0, u32::MAX)),
        ] {
            assert_eq!(text.parse::<Community>(), Ok(community), "{text}");
            assert_eq!(community.to_string(), text);
            let json = serde_json::to_string(&community).unwrap();
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(serde_json::from_str::<Community>(&json).unwrap(), community);
        }
        assert_eq!(
            "65535:65281".parse::<Community>().unwrap().to_string(),
            "no-export"
        );
        assert_eq!(
            "NO-EXPORT".parse::<Community>(),
            Ok(Community::Standard(0xFFFF_FF01))
        );
    }

    #[test]
    fn out_of_range_and_malformed_say_which_part() {
        let err = |text: &str| text.parse::<Community>().unwrap_err().to_string();
        assert!(err("70000:1").contains("70000 is out of range for a standard community"));
        assert!(err("1:65536").contains("65536 is out of range"));
        assert!(err("1:2:4294967296").contains("4294967296 is out of range (0-4294967295)"));
        for bad in [
            "", "1", "1:2:3:4", "a:b", "1::2", "-1:2", "65000:1 ", "no-such",
        ] {
            let e = bad.parse::<Community>();
            // A trailing blank is trimmed; everything else is refused.
            if bad == "65000:1 " {
                assert_eq!(e, Ok(Community::Standard(0xFDE8_0001)));
            } else {
                assert!(
                    matches!(e, Err(CommunityError::Malformed(_))),
                    "{bad}: {e:?}"
                );
            }
        }
        let json = serde_json::from_str::<Community>(r#""65536:1""#).unwrap_err();
        assert!(json.to_string().contains("65536"), "{json}");
    }
}
