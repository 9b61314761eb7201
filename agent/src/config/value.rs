//! The typed values of the agent's settings. Each parses from its text in one place
//! ([`FromStr`]), which serves the command line, the environment and the file alike, so a
//! value is refused with the same reason wherever it was given.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// AS_TRANS (RFC 6793): a placeholder in 2-octet fields, never a real AS.
pub const AS_TRANS: u32 = 23456;

/// A setting's value that does not parse or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InvalidValue {
    /// The value as given.
    pub value: String,
    /// What is wrong with it, or what a valid value looks like.
    pub reason: String,
}

impl InvalidValue {
    fn new(value: &str, reason: impl Into<String>) -> Self {
        Self {
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A value the file gives as text; `INTEGER` says whether a TOML integer stands for its
/// decimal text (an AS number, an MTU, a duration in seconds).
pub trait TextValue: FromStr<Err = InvalidValue> {
    /// What the file must hold, for the message about a value of the wrong type.
    const EXPECTED: &'static str;
    /// Whether a TOML integer is accepted.
    const INTEGER: bool;
}

struct TextVisitor<T>(PhantomData<T>);

impl<T: TextValue> serde::de::Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|e: InvalidValue| {
            E::custom(format_args!("invalid value {:?}: {}", e.value, e.reason))
        })
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        if !T::INTEGER {
            return Err(E::invalid_type(serde::de::Unexpected::Signed(v), &self));
        }
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        if !T::INTEGER {
            return Err(E::invalid_type(serde::de::Unexpected::Unsigned(v), &self));
        }
        self.visit_str(&v.to_string())
    }
}

/// Makes a type a [`TextValue`] and implements `Deserialize` through its text.
macro_rules! text_value {
    ($ty:ty, expected = $expected:literal, integer = $integer:literal) => {
        impl TextValue for $ty {
            const EXPECTED: &'static str = $expected;
            const INTEGER: bool = $integer;
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(TextVisitor(PhantomData))
            }
        }
    };
}

/// The name of a node: it becomes an etcd key segment and a BGP peer description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName(pub String);

impl FromStr for NodeName {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidValue::new(
                s,
                "expected 1 to 253 letters, digits, '-', '.' or '_'",
            ))
        }
    }
}
text_value!(NodeName, expected = "a node name", integer = false);

/// Parses `ADDRESS/PREFIXLEN`, refusing a bare address (the prefix length tells which nodes
/// share a subnet) and addresses no peer could reach.
fn parse_node_net(s: &str) -> Result<IpNet, InvalidValue> {
    if s.parse::<IpAddr>().is_ok() {
        return Err(InvalidValue::new(
            s,
            "missing prefix length; expected ADDRESS/PREFIXLEN such as 10.0.0.2/24",
        ));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| InvalidValue::new(s, "expected ADDRESS/PREFIXLEN such as 10.0.0.2/24"))?;
    let ip = net.addr();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return Err(InvalidValue::new(
            s,
            "not a unicast address other nodes can reach",
        ));
    }
    Ok(net)
}

/// This node's IPv4 address with prefix length: the BGP router id and IPv4 next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIpv4(pub Ipv4Net);

impl FromStr for NodeIpv4 {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match parse_node_net(s)? {
            IpNet::V4(net) => Ok(Self(net)),
            IpNet::V6(_) => Err(InvalidValue::new(
                s,
                "must be IPv4 (it is also the BGP router id); give IPv6 as nodeIpv6",
            )),
        }
    }
}
text_value!(
    NodeIpv4,
    expected = "an IPv4 address with prefix length",
    integer = false
);

/// This node's IPv6 address with prefix length: the IPv6 next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIpv6(pub Ipv6Net);

impl FromStr for NodeIpv6 {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match parse_node_net(s)? {
            IpNet::V6(net) => Ok(Self(net)),
            IpNet::V4(_) => Err(InvalidValue::new(s, "must be an IPv6 address")),
        }
    }
}
text_value!(
    NodeIpv6,
    expected = "an IPv6 address with prefix length",
    integer = false
);

/// An AS number: 1..=4294967295, and not AS_TRANS (23456).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsNumber(pub u32);

impl FromStr for AsNumber {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s.trim().parse::<i128>() {
            Err(_) => Err(InvalidValue::new(s, "not a number")),
            Ok(n) if !(1..=i128::from(u32::MAX)).contains(&n) => {
                Err(InvalidValue::new(s, "out of range 1..=4294967295"))
            }
            Ok(n) if n == i128::from(AS_TRANS) => Err(InvalidValue::new(
                s,
                "23456 is AS_TRANS, reserved (RFC 6793)",
            )),
            Ok(n) => Ok(Self(n as u32)),
        }
    }
}
text_value!(AsNumber, expected = "an AS number", integer = true);

/// An interface MTU: 68 (the IPv4 minimum) to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mtu(pub u32);

impl FromStr for Mtu {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        s.trim()
            .parse::<u32>()
            .ok()
            .filter(|m| (68..=65535).contains(m))
            .map(Self)
            .ok_or_else(|| InvalidValue::new(s, "expected an MTU from 68 to 65535"))
    }
}
text_value!(Mtu, expected = "an MTU", integer = true);

/// The bits of the connection mark (`ct mark`) network policy stamps its epoch into: one run
/// of at least 8 contiguous bits, written in hex (`0xffff0000`) or decimal; 0 stamps nothing,
/// which keeps isolated pods' connections off the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkMask(pub u32);

impl FromStr for MarkMask {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let text = s.trim();
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => text.parse::<u32>().ok(),
        };
        let Some(mask) = parsed else {
            return Err(InvalidValue::new(
                s,
                "expected a 32-bit mask such as 0xffff0000",
            ));
        };
        if mask != 0
            && (!wren_policy::nft::ConnectionMark::usable_mask(mask) || mask.count_ones() < 8)
        {
            return Err(InvalidValue::new(
                s,
                "expected one run of at least 8 contiguous bits (or 0 for none)",
            ));
        }
        Ok(Self(mask))
    }
}
text_value!(MarkMask, expected = "a mark mask", integer = true);

/// Writes a mark mask as the file takes it: `"0xffff0000"`.
pub fn serialize_mark_mask<S: serde::Serializer>(mask: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mask:#010x}"))
}

/// How many equal BGP paths to one prefix the node forwards over at once (ECMP), within
/// [`MAX_PATHS_RANGE`](super::MAX_PATHS_RANGE); 1 turns ECMP off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPaths(pub usize);

impl FromStr for MaxPaths {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let range = super::MAX_PATHS_RANGE;
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| range.contains(n))
            .map(Self)
            .ok_or_else(|| {
                InvalidValue::new(
                    s,
                    format!(
                        "expected {} to {} (1 turns ECMP off)",
                        range.start(),
                        range.end()
                    ),
                )
            })
    }
}
text_value!(MaxPaths, expected = "a number of paths", integer = true);

/// One etcd endpoint: `http://HOST:PORT` or `https://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct EtcdEndpoint(pub String);

impl FromStr for EtcdEndpoint {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let invalid = |reason: &str| InvalidValue::new(s, reason);
        let uri: axum::http::Uri = s
            .parse()
            .map_err(|_| invalid("not a URL; expected http://HOST:PORT or https://HOST:PORT"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(invalid("expected an http:// or https:// URL")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        if authority.host().is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.port_u16().is_none() {
            return Err(invalid("missing port (etcd listens on 2379 by default)"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("an endpoint has no path"));
        }
        Ok(Self(s.to_owned()))
    }
}
text_value!(EtcdEndpoint, expected = "an etcd URL", integer = false);

/// Parses a duration as every wren setting writes it: `humantime`'s units (`90s`, `1m30s`,
/// `500ms`, `2h`), or a bare whole number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidValue> {
    let text = s.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| InvalidValue::new(s, "too long"));
    }
    humantime::parse_duration(text)
        .map_err(|_| InvalidValue::new(s, "expected a duration such as 90s, 1m30s or 500ms"))
}

/// Writes a duration the way the settings read it back, in its largest whole unit (`90s`,
/// `250ms`, `2m`).
pub fn duration_text(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{}s", d.as_secs())
    }
}

/// A duration setting within `MIN_MS..=MAX_MS` milliseconds, checked where it is parsed so
/// that a value nothing downstream accepts (etcd refuses a lease TTL above its limit; the
/// graceful-restart capability carries 12 bits) stops the agent with one line instead of a
/// retry loop. Zero is a value only where the range starts at zero (it turns a periodic task
/// off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundedDuration<const MIN_MS: u64, const MAX_MS: u64>(pub Duration);

impl<const MIN_MS: u64, const MAX_MS: u64> BoundedDuration<MIN_MS, MAX_MS> {
    /// The smallest accepted value.
    pub const MIN: Duration = Duration::from_millis(MIN_MS);
    /// The largest accepted value.
    pub const MAX: Duration = Duration::from_millis(MAX_MS);
}

impl<const MIN_MS: u64, const MAX_MS: u64> FromStr for BoundedDuration<MIN_MS, MAX_MS> {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let value = parse_duration(s)?;
        if value < Self::MIN || value > Self::MAX {
            return Err(InvalidValue::new(
                s,
                format!(
                    "out of range {} to {}",
                    duration_text(Self::MIN),
                    duration_text(Self::MAX)
                ),
            ));
        }
        Ok(Self(value))
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> TextValue for BoundedDuration<MIN_MS, MAX_MS> {
    const EXPECTED: &'static str = "a duration such as \"90s\" or a number of seconds";
    const INTEGER: bool = true;
}

impl<'de, const MIN_MS: u64, const MAX_MS: u64> serde::Deserialize<'de>
    for BoundedDuration<MIN_MS, MAX_MS>
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(PhantomData))
    }
}

/// Serializes a duration as [`duration_text`] writes it.
pub fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_humantime_units_or_bare_seconds() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        for bad in ["", "ten", "-1s", "5 parsecs", "1.5"] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn a_bounded_duration_names_its_range() {
        type Ttl = BoundedDuration<3_000, 3_600_000>;
        assert_eq!("60m".parse::<Ttl>().unwrap().0, Ttl::MAX);
        for bad in ["2s", "61m", "0", "0s"] {
            let err = bad.parse::<Ttl>().unwrap_err();
            assert_eq!(err.reason, "out of range 3s to 60m", "{bad}");
        }
        type Period = BoundedDuration<0, 86_400_000>;
        assert_eq!("0s".parse::<Period>().unwrap().0, Duration::ZERO);
        assert_eq!("0".parse::<Period>().unwrap().0, Duration::ZERO);
    }

    #[test]
    fn as_numbers_outside_the_range_are_refused() {
        for bad in ["0", "23456", "4294967296", "-1", "x"] {
            assert!(bad.parse::<AsNumber>().is_err(), "{bad}");
        }
        assert_eq!("4294967295".parse::<AsNumber>().unwrap().0, u32::MAX);
        assert_eq!("1".parse::<AsNumber>().unwrap().0, 1);
    }

    #[test]
    fn endpoints_are_http_urls_with_a_port_and_no_path() {
        for bad in [
            "127.0.0.1:2379",
            "ftp://h:1",
            "http://:2379",
            "http://h",
            "http://h:2379/v3/x",
            "not a url",
        ] {
            assert!(bad.parse::<EtcdEndpoint>().is_err(), "{bad}");
        }
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd-0.example:2379",
            "http://[::1]:2379/",
        ] {
            good.parse::<EtcdEndpoint>().unwrap();
        }
    }

    #[test]
    fn node_addresses_need_a_prefix_length_and_the_right_family() {
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "banana",
            "127.0.0.1/8",
            "fd00::1/64",
        ] {
            assert!(bad.parse::<NodeIpv4>().is_err(), "{bad}");
        }
        assert!("10.0.0.1/24".parse::<NodeIpv6>().is_err());
        assert_eq!(
            "fd00::2/64".parse::<NodeIpv6>().unwrap().0.to_string(),
            "fd00::2/64"
        );
    }

    #[test]
    fn mtus_are_range_checked() {
        for bad in ["67", "70000", "-1", "x"] {
            assert!(bad.parse::<Mtu>().is_err(), "{bad}");
        }
        assert_eq!("1450".parse::<Mtu>().unwrap().0, 1450);
    }
}
