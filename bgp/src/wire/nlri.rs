//! Prefixes as encoded in NLRI, withdrawn routes and MP_(UN)REACH_NLRI (RFC 4271 §4.3):
//! one length octet, then the fewest octets that hold that many bits.
//!
//! Prefixes are decoded straight into `ipnet` values (no allocation per prefix) with the bits
//! beyond the prefix length cleared, so equal routes compare equal however the sender padded.
//! The message structure is parsed with nom; this loop is written out by hand because it is
//! where decoding spends its time.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::Afi;

/// Reads one prefix of at most `W` octets: its length and `W` octets starting with its
/// address; the bits past the length are not cleared yet (the caller masks them as an
/// integer). `None` when the length exceeds `W * 8` or the address runs past the input.
///
/// This is the hot path of UPDATE decoding (a full table is a million prefixes), so it reads
/// a whole word when the input is long enough instead of copying a variable number of octets.
#[inline(always)]
fn prefix<const W: usize>(input: &[u8]) -> Option<(u8, [u8; W], &[u8])> {
    let (&len, rest) = input.split_first()?;
    let n = usize::from(len).div_ceil(8);
    if usize::from(len) > W * 8 || rest.len() < n {
        return None;
    }
    let octets = match rest.first_chunk::<W>() {
        Some(word) => *word,
        None => {
            let mut octets = [0u8; W];
            octets[..n].copy_from_slice(&rest[..n]);
            octets
        }
    };
    Some((len, octets, &rest[n..]))
}

/// Decodes a whole field of prefixes of one family, appending them to `out`.
///
/// Fails (leaving `out` partly filled) when a length exceeds the family's maximum or the last
/// prefix overruns the field: RFC 7606 §5.3 makes either a session reset.
pub(crate) fn parse_prefixes(mut input: &[u8], afi: Afi, out: &mut Vec<IpNet>) -> Result<(), ()> {
    // A /24 takes 4 octets; reserving for that avoids regrowth on typical tables.
    out.reserve(input.len() / 4);
    match afi {
        Afi::Ipv4Unicast => {
            while !input.is_empty() {
                let (len, octets, rest) = prefix::<4>(input).ok_or(())?;
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                let addr = u32::from_be_bytes(octets) & mask;
                out.push(IpNet::V4(Ipv4Net::new(addr.into(), len).map_err(|_| ())?));
                input = rest;
            }
        }
        Afi::Ipv6Unicast => {
            while !input.is_empty() {
                let (len, octets, rest) = prefix::<16>(input).ok_or(())?;
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                let addr = u128::from_be_bytes(octets) & mask;
                out.push(IpNet::V6(Ipv6Net::new(addr.into(), len).map_err(|_| ())?));
                input = rest;
            }
        }
    }
    Ok(())
}

/// Octets one prefix takes on the wire.
pub(crate) fn encoded_len(net: &IpNet) -> usize {
    1 + usize::from(net.prefix_len()).div_ceil(8)
}

/// Appends one prefix.
#[inline]
pub(crate) fn encode_prefix(net: &IpNet, out: &mut Vec<u8>) {
    // Writing a fixed-size block and cutting it back is cheaper than copying a variable
    // number of octets.
    let len = net.prefix_len();
    let n = usize::from(len).div_ceil(8);
    match net {
        IpNet::V4(v4) => {
            let mut block = [len, 0, 0, 0, 0];
            block[1..].copy_from_slice(&v4.network().octets());
            out.extend_from_slice(&block);
            out.truncate(out.len() - (4 - n));
        }
        IpNet::V6(v6) => {
            let mut block = [0u8; 17];
            block[0] = len;
            block[1..].copy_from_slice(&v6.network().octets());
            out.extend_from_slice(&block);
            out.truncate(out.len() - (16 - n));
        }
    }
}

/// The family a prefix belongs to.
pub(crate) fn afi_of(net: &IpNet) -> Afi {
    match net {
        IpNet::V4(_) => Afi::Ipv4Unicast,
        IpNet::V6(_) => Afi::Ipv6Unicast,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bits_are_cleared_and_lengths_checked() {
        let mut out = Vec::new();
        // 10.1.2.0/23 sent with a stray host bit in the last octet.
        parse_prefixes(&[23, 10, 1, 3], Afi::Ipv4Unicast, &mut out).unwrap();
        assert_eq!(out, vec!["10.1.2.0/23".parse::<IpNet>().unwrap()]);
        assert!(parse_prefixes(&[33, 1, 2, 3, 4, 5], Afi::Ipv4Unicast, &mut out).is_err());
        assert!(parse_prefixes(&[24, 10, 1], Afi::Ipv4Unicast, &mut out).is_err());
        assert!(parse_prefixes(&[129], Afi::Ipv6Unicast, &mut out).is_err());
        let mut v6 = Vec::new();
        parse_prefixes(&[0, 32, 0x20, 0x01, 0x0d, 0xb8], Afi::Ipv6Unicast, &mut v6).unwrap();
        assert_eq!(
            v6,
            vec![
                "::/0".parse::<IpNet>().unwrap(),
                "2001:db8::/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn encoding_uses_the_fewest_octets() {
        let mut out = Vec::new();
        for net in ["0.0.0.0/0", "192.168.0.0/17", "2001:db8:1::/48"] {
            encode_prefix(&net.parse().unwrap(), &mut out);
        }
        let expected = [0, 17, 192, 168, 0, 48, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01];
        assert_eq!(out, expected);
    }
}
