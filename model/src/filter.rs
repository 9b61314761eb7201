//! Per-peer route filters: an ordered list of rules, each matching on prefixes (with
//! `ge`/`le`, as a prefix list does) and communities, accepting or rejecting, and on export
//! prepending the node's AS. The first rule that matches decides; a route no rule matches
//! takes the filter's default action. Evaluation is pure ([`Filter::decide`]).
//!
//! A rule's text form, for the command line and the documentation:
//! `accept|reject [prefix CIDR [ge N] [le N]]… [community C]… [prepend N]`.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::community::{Community, CommunityError};

/// What a rule, or a filter's default, does with a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// Let it through.
    #[default]
    Accept,
    /// Drop it.
    Reject,
}

impl fmt::Display for FilterAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterAction::Accept => "accept",
            FilterAction::Reject => "reject",
        })
    }
}

/// A prefix-list entry: routes inside `cidr` whose length lies in `ge..=le` (both default
/// to the entry's own length: an exact match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawPrefixMatch")]
pub struct PrefixMatch {
    /// The range.
    pub cidr: IpNet,
    /// Shortest length matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ge: Option<u8>,
    /// Longest length matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub le: Option<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPrefixMatch {
    cidr: IpNet,
    #[serde(default)]
    ge: Option<u8>,
    #[serde(default)]
    le: Option<u8>,
}

impl TryFrom<RawPrefixMatch> for PrefixMatch {
    type Error = FilterError;
    fn try_from(raw: RawPrefixMatch) -> Result<Self, Self::Error> {
        PrefixMatch::new(raw.cidr, raw.ge, raw.le)
    }
}

/// Why a filter or one of its rules is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The range is not a network address.
    #[error("prefix {given}: not a network address (did you mean {network}?)")]
    NotNetwork {
        /// As given.
        given: IpNet,
        /// Its network.
        network: IpNet,
    },
    /// `ge` or `le` below the range's own length.
    #[error("prefix {cidr}: {field} {value} is below the prefix length {len}")]
    BelowLength {
        /// The range.
        cidr: IpNet,
        /// `ge` or `le`.
        field: &'static str,
        /// Its value.
        value: u8,
        /// The range's length.
        len: u8,
    },
    /// `ge` or `le` beyond the family's longest prefix.
    #[error("prefix {cidr}: {field} {value} is above {max}")]
    AboveMax {
        /// The range.
        cidr: IpNet,
        /// `ge` or `le`.
        field: &'static str,
        /// Its value.
        value: u8,
        /// 32 or 128.
        max: u8,
    },
    /// `ge` above `le`.
    #[error("prefix {cidr}: ge {ge} is above le {le}")]
    GeAboveLe {
        /// The range.
        cidr: IpNet,
        /// `ge`.
        ge: u8,
        /// `le`.
        le: u8,
    },
    /// A community of the rule.
    #[error(transparent)]
    Community(#[from] CommunityError),
    /// A rule's text is not one.
    #[error("filter rule {rule:?}: {why}")]
    Syntax {
        /// The rule as given.
        rule: String,
        /// What is wrong.
        why: String,
    },
}

impl PrefixMatch {
    /// A checked entry: `cidr` a network address, `len ≤ ge ≤ le ≤ max`.
    pub fn new(cidr: IpNet, ge: Option<u8>, le: Option<u8>) -> Result<Self, FilterError> {
        if cidr.trunc() != cidr {
            return Err(FilterError::NotNetwork {
                given: cidr,
                network: cidr.trunc(),
            });
        }
        let (len, max) = (cidr.prefix_len(), cidr.max_prefix_len());
        for (field, value) in [("ge", ge), ("le", le)] {
            let Some(value) = value else { continue };
            if value < len {
                return Err(FilterError::BelowLength {
                    cidr,
                    field,
                    value,
                    len,
                });
            }
            if value > max {
                return Err(FilterError::AboveMax {
                    cidr,
                    field,
                    value,
                    max,
                });
            }
        }
        if let (Some(ge), Some(le)) = (ge, le)
            && ge > le
        {
            return Err(FilterError::GeAboveLe { cidr, ge, le });
        }
        Ok(Self { cidr, ge, le })
    }

    /// Whether `prefix` is inside the range with a length in `ge..=le`. With only `ge`
    /// every length from `ge` to the longest matches, as in a router's prefix list.
    pub fn matches(&self, prefix: &IpNet) -> bool {
        let len = prefix.prefix_len();
        let (low, high) = match (self.ge, self.le) {
            (None, None) => (self.cidr.prefix_len(), self.cidr.prefix_len()),
            (Some(ge), None) => (ge, self.cidr.max_prefix_len()),
            (None, Some(le)) => (self.cidr.prefix_len(), le),
            (Some(ge), Some(le)) => (ge, le),
        };
        self.cidr.contains(prefix) && (low..=high).contains(&len)
    }
}

impl fmt::Display for PrefixMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "prefix {}", self.cidr)?;
        if let Some(ge) = self.ge {
            write!(f, " ge {ge}")?;
        }
        if let Some(le) = self.le {
            write!(f, " le {le}")?;
        }
        Ok(())
    }
}

/// One rule: it matches a route inside any of its prefixes (every route when it lists
/// none) that carries all of its communities.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterRule {
    /// What a matching route gets.
    pub action: FilterAction,
    /// The prefix list; empty: every prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<PrefixMatch>,
    /// Communities the route must all carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// On export, an accepted route gets the node's AS this many more times in front of
    /// its path (0–16); ignored on import.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prepend: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// The most prepends a rule may ask for.
pub const MAX_PREPEND: u8 = 16;

impl FilterRule {
    /// Whether the rule matches a route for `prefix` whose communities `has` reports.
    pub fn matches(&self, prefix: &IpNet, has: &dyn Fn(&Community) -> bool) -> bool {
        (self.prefixes.is_empty() || self.prefixes.iter().any(|p| p.matches(prefix)))
            && self.communities.iter().all(has)
    }
}

impl FromStr for FilterRule {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = |why: String| FilterError::Syntax {
            rule: text.to_owned(),
            why,
        };
        let mut words = text.split_whitespace().peekable();
        let action = match words.next() {
            Some("accept") => FilterAction::Accept,
            Some("reject") => FilterAction::Reject,
            other => {
                return Err(syntax(format!(
                    "starts with {:?}, not accept or reject",
                    other.unwrap_or_default()
                )));
            }
        };
        let mut rule = FilterRule {
            action,
            prefixes: Vec::new(),
            communities: Vec::new(),
            prepend: 0,
        };
        let number = |word: Option<&str>, what: &str| -> Result<u8, FilterError> {
            let word = word.ok_or_else(|| syntax(format!("{what} needs a number")))?;
            word.parse()
                .map_err(|_| syntax(format!("{what} {word:?} is not a number 0-255")))
        };
        while let Some(word) = words.next() {
            match word {
                "prefix" => {
                    let cidr = words
                        .next()
                        .ok_or_else(|| syntax("prefix needs a CIDR".into()))?;
                    let cidr: IpNet = cidr
                        .parse()
                        .map_err(|_| syntax(format!("{cidr:?} is not a CIDR")))?;
                    let (mut ge, mut le) = (None, None);
                    while let Some(&bound) = words.peek() {
                        match bound {
                            "ge" => ge = Some(number(words.nth(1), "ge")?),
                            "le" => le = Some(number(words.nth(1), "le")?),
                            _ => break,
                        }
                    }
                    rule.prefixes.push(PrefixMatch::new(cidr, ge, le)?);
                }
                "community" => {
                    let c = words
                        .next()
                        .ok_or_else(|| syntax("community needs a value".into()))?;
                    rule.communities.push(c.parse()?);
                }
                "prepend" => {
                    rule.prepend = number(words.next(), "prepend")?;
                    if rule.prepend > MAX_PREPEND {
                        return Err(syntax(format!(
                            "prepend {} is above {MAX_PREPEND}",
                            rule.prepend
                        )));
                    }
                }
                other => {
                    return Err(syntax(format!(
                        "{other:?} is not prefix, community or prepend"
                    )));
                }
            }
        }
        Ok(rule)
    }
}

impl fmt::Display for FilterRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action)?;
        for p in &self.prefixes {
            write!(f, " {p}")?;
        }
        for c in &self.communities {
            write!(f, " community {c}")?;
        }
        if self.prepend > 0 {
            write!(f, " prepend {}", self.prepend)?;
        }
        Ok(())
    }
}

/// A filter: rules in order, then a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// The rules, first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<FilterRule>,
    /// What a route no rule matches gets.
    #[serde(default)]
    pub default_action: FilterAction,
}

/// What a filter decided for one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let it through, with the node's AS prepended this many more times (export only).
    Accept {
        /// Extra copies of the node's AS.
        prepend: u8,
    },
    /// Drop it.
    Reject,
}

impl Filter {
    /// The decision for a route for `prefix` whose communities `has` reports.
    pub fn decide(&self, prefix: &IpNet, has: &dyn Fn(&Community) -> bool) -> Decision {
        let (action, prepend) = match self.rules.iter().find(|r| r.matches(prefix, has)) {
            Some(rule) => (rule.action, rule.prepend),
            None => (self.default_action, 0),
        };
        match action {
            FilterAction::Accept => Decision::Accept { prepend },
            FilterAction::Reject => Decision::Reject,
        }
    }

    /// Whether the filter lets nothing through: its default rejects and no rule accepts.
    pub fn rejects_everything(&self) -> bool {
        self.default_action == FilterAction::Reject
            && self.rules.iter().all(|r| r.action == FilterAction::Reject)
    }

    /// One line for `wren status` and `wren peer list`: `rejects everything`, or the rule
    /// count and the default.
    pub fn summary(&self) -> String {
        if self.rejects_everything() {
            return "rejects everything".to_owned();
        }
        let n = self.rules.len();
        let plural = if n == 1 { "" } else { "s" };
        format!("{n} rule{plural}, else {}", self.default_action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rule(s: &str) -> FilterRule {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_lists_match_as_routers_do() {
        let exact = PrefixMatch::new(net("10.65.0.0/16"), None, None).unwrap();
        assert!(exact.matches(&net("10.65.0.0/16")));
        assert!(!exact.matches(&net("10.65.1.0/24")));
        let le = PrefixMatch::new(net("10.65.0.0/16"), None, Some(26)).unwrap();
        assert!(le.matches(&net("10.65.0.0/16")) && le.matches(&net("10.65.3.64/26")));
        assert!(!le.matches(&net("10.65.3.7/32")) && !le.matches(&net("10.66.0.0/26")));
        let ge = PrefixMatch::new(net("10.65.0.0/16"), Some(32), None).unwrap();
        assert!(ge.matches(&net("10.65.3.7/32")) && !ge.matches(&net("10.65.3.0/26")));
        let both = PrefixMatch::new(net("0.0.0.0/0"), Some(8), Some(24)).unwrap();
        assert!(both.matches(&net("192.0.2.0/24")) && !both.matches(&net("0.0.0.0/0")));
        assert!(!both.matches(&net("2001:db8::/32")), "other family");
    }

    #[test]
    fn bad_bounds_are_refused_naming_the_field() {
        let err = |cidr: &str, ge, le| PrefixMatch::new(net(cidr), ge, le).unwrap_err().to_string();
        assert_eq!(
            err("10.65.0.0/16", None, Some(8)),
            "prefix 10.65.0.0/16: le 8 is below the prefix length 16"
        );
        assert_eq!(
            err("10.65.0.0/16", Some(28), Some(24)),
            "prefix 10.65.0.0/16: ge 28 is above le 24"
        );
        assert_eq!(
            err("10.65.0.0/16", Some(33), None),
            "prefix 10.65.0.0/16: ge 33 is above 32"
        );
        assert!(err("10.65.1.0/16", None, None).contains("did you mean 10.65.0.0/16"));
        // The same checks hold for a document read from the datastore.
        let stored = r#"{"cidr":"10.65.0.0/16","le":8}"#;
        let e = serde_json::from_str::<PrefixMatch>(stored).unwrap_err();
        assert!(e.to_string().contains("le 8 is below"), "{e}");
    }

    #[test]
    fn rules_parse_print_and_refuse_bad_text() {
        let text = "accept prefix 10.65.0.0/16 ge 24 le 26 prefix fd00::/48 community 65000:1 community 65000:1:2 prepend 2";
        let r = rule(text);
        assert_eq!(r.to_string(), text);
        assert_eq!(r.prefixes.len(), 2);
        assert_eq!(r.prepend, 2);
        assert_eq!(rule("reject").to_string(), "reject");
        for (bad, says) in [
            ("drop", "not accept or reject"),
            ("accept prefix", "needs a CIDR"),
            (
                "accept prefix 10.0.0.0/8 le 4",
                "le 4 is below the prefix length 8",
            ),
            (
                "accept prefix 10.0.0.0/8 ge 30 le 20",
                "ge 30 is above le 20",
            ),
            ("accept community 70000:1", "70000 is out of range"),
            ("accept prepend 17", "prepend 17 is above 16"),
            (
                "accept next-hop 1.2.3.4",
                "not prefix, community or prepend",
            ),
        ] {
            let e = bad.parse::<FilterRule>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_first_matching_rule_decides_then_the_default() {
        let filter = Filter {
            rules: vec![
                rule("reject community 65000:666"),
                rule("accept prefix 10.65.0.0/16 le 26 prepend 3"),
                rule("reject prefix 10.0.0.0/8 le 32"),
            ],
            default_action: FilterAction::Accept,
        };
        let none = |_: &Community| false;
        let tagged = |c: &Community| *c == "65000:666".parse().unwrap();
        assert_eq!(
            filter.decide(&net("10.65.1.0/26"), &none),
            Decision::Accept { prepend: 3 }
        );
        assert_eq!(
            filter.decide(&net("10.65.1.0/26"), &tagged),
            Decision::Reject
        );
        assert_eq!(filter.decide(&net("10.66.0.0/16"), &none), Decision::Reject);
        assert_eq!(
            filter.decide(&net("192.0.2.0/24"), &none),
            Decision::Accept { prepend: 0 }
        );
        assert!(!filter.rejects_everything());
        assert_eq!(filter.summary(), "3 rules, else accept");
        let nothing = Filter {
            rules: vec![rule("reject prefix 10.0.0.0/8 le 32")],
            default_action: FilterAction::Reject,
        };
        assert!(nothing.rejects_everything());
        assert_eq!(nothing.summary(), "rejects everything");
        assert_eq!(
            nothing.decide(&net("192.0.2.0/24"), &none),
            Decision::Reject
        );
    }
}
