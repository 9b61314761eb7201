//! Big-endian integer parsers with the error type fixed, so tuples of them infer.

use nom::IResult;
use nom::number::complete::{be_u8, be_u16, be_u32};

/// One octet.
pub(crate) fn be8(input: &[u8]) -> IResult<&[u8], u8> {
    be_u8(input)
}

/// A 2-octet big-endian integer.
pub(crate) fn be16(input: &[u8]) -> IResult<&[u8], u16> {
    be_u16(input)
}

/// A 4-octet big-endian integer.
pub(crate) fn be32(input: &[u8]) -> IResult<&[u8], u32> {
    be_u32(input)
}
