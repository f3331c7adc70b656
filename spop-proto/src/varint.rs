//! HAProxy's variable-length integer encoding (not LEB128).
//!
//! Values below 240 take one byte. Larger values start with a byte `>= 0xF0` carrying the
//! low 4 bits, followed by bytes carrying 7 bits each, every byte but the last with its high
//! bit set. The mapping is a bijection over `u64`; the longest encoding is 10 bytes.
//!
//! ```
//! use spop_proto::varint;
//! let mut buf = Vec::new();
//! varint::put(&mut buf, 2288);
//! assert_eq!(buf, [0xf0, 0x80, 0x00]);
//! assert_eq!(varint::decode(&buf), Ok((2288, 3)));
//! ```

use bytes::BufMut;

use crate::error::DecodeError;
use crate::parse::{self, PResult, u8};

/// The longest encoding of a `u64`, in bytes.
pub const MAX_LEN: usize = 10;

/// Decodes one varint at the start of `buf`; returns the value and the bytes consumed.
///
/// Errors: [`DecodeError::Truncated`] when `buf` ends inside the varint,
/// [`DecodeError::InvalidVarint`] when it needs an 11th byte or exceeds `u64::MAX`.
///
/// ```
/// use spop_proto::{varint, DecodeError};
/// assert_eq!(varint::decode(&[0xef]), Ok((239, 1)));
/// assert_eq!(varint::decode(&[0xf0]), Err(DecodeError::Truncated("varint")));
/// ```
#[inline]
pub fn decode(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    let (rest, v) = parse::run(|i| parse::named("varint", varint(i)), buf)?;
    Ok((v, buf.len() - rest.len()))
}

/// The grammar's varint rule: a first byte below 240 is the value; a larger one is followed
/// by continuation bytes (`>= 0x80`) up to one below 0x80, ten bytes in all at most.
///
/// Running out of input is left unnamed ([`PError::Eof`](parse::PError::Eof)): the caller
/// says what the varint was (`"varint"`, or the string whose length it is).
#[inline(always)]
pub(crate) fn varint(i: &[u8]) -> PResult<'_, u64> {
    match u8(i)? {
        (i, first) if first < 240 => Ok((i, u64::from(first))),
        (i, first) => continuation(i, first),
    }
}

/// The continuation bytes of a varint whose first byte is `first` (kept out of line: the
/// one-byte case is the one inlined into every rule).
#[inline(never)]
fn continuation(mut i: &[u8], first: u8) -> PResult<'_, u64> {
    let mut value = u64::from(first);
    let mut shift = 4u32;
    for _ in 1..MAX_LEN {
        let (rest, b) = u8(i)?;
        i = rest;
        // shifts run from 4 to 60: only the 10th byte can have bits shifted out past 2^64,
        // and only the last additions can carry past it; both are overflow
        let wide = u64::from(b);
        if wide >> (64 - shift) != 0 {
            return parse::fail(DecodeError::InvalidVarint);
        }
        value = match value.checked_add(wide << shift) {
            Some(v) => v,
            None => return parse::fail(DecodeError::InvalidVarint),
        };
        if b < 0x80 {
            return Ok((i, value));
        }
        shift += 7;
    }
    // a continuation bit on the 10th byte
    parse::fail(DecodeError::InvalidVarint)
}

/// Appends the encoding of `value` to `dst`.
///
/// ```
/// use spop_proto::varint;
/// let mut buf = Vec::new();
/// varint::put(&mut buf, u64::MAX);
/// assert_eq!(buf.len(), 10);
/// ```
#[inline(always)]
#[allow(clippy::cast_possible_truncation)] // below 240
pub fn put<B: BufMut + ?Sized>(dst: &mut B, value: u64) {
    if value < 240 {
        // the common case (lengths, ids, small integers): one byte, inlined at every call
        dst.put_u8(value as u8);
    } else {
        put_long(dst, value);
    }
}

/// [`put`] for values of two bytes or more (kept out of line).
#[inline(never)]
fn put_long<B: BufMut + ?Sized>(dst: &mut B, value: u64) {
    let mut out = [0u8; MAX_LEN];
    let len = write(&mut out, value);
    dst.put_slice(&out[..len]);
}

/// Encodes `value` into a fixed array; returns the array and the number of bytes used.
///
/// ```
/// use spop_proto::varint;
/// let (bytes, len) = varint::encode(300);
/// assert_eq!(&bytes[..len], &[0xfc, 0x03]);
/// ```
#[inline]
pub fn encode(value: u64) -> ([u8; MAX_LEN], usize) {
    let mut out = [0u8; MAX_LEN];
    let len = write(&mut out, value);
    (out, len)
}

/// Writes the encoding of `value` at the start of `out` (at least [`MAX_LEN`] bytes long);
/// returns the number of bytes written.
#[inline]
#[allow(clippy::cast_possible_truncation)] // each byte is masked or below 128 by construction
pub(crate) fn write(out: &mut [u8], value: u64) -> usize {
    if value < 240 {
        out[0] = value as u8;
        return 1;
    }
    out[0] = (value as u8) | 0xF0;
    let mut rest = (value - 240) >> 4;
    let mut len = 1;
    while rest >= 128 {
        out[len] = (rest as u8) | 0x80;
        len += 1;
        rest = (rest - 128) >> 7;
    }
    out[len] = rest as u8;
    len + 1
}

/// The number of bytes [`put`] writes for `value`.
///
/// ```
/// use spop_proto::varint;
/// assert_eq!(varint::encoded_len(239), 1);
/// assert_eq!(varint::encoded_len(240), 2);
/// ```
#[inline]
pub fn encoded_len(value: u64) -> usize {
    if value < 240 {
        return 1;
    }
    let mut rest = (value - 240) >> 4;
    let mut len = 2;
    while rest >= 128 {
        rest = (rest - 128) >> 7;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boundary table of spop-notes.md §2.
    pub(crate) const TABLE: &[(u64, &[u8])] = &[
        (0, &[0x00]),
        (1, &[0x01]),
        (239, &[0xef]),
        (240, &[0xf0, 0x00]),
        (241, &[0xf1, 0x00]),
        (255, &[0xff, 0x00]),
        (256, &[0xf0, 0x01]),
        (300, &[0xfc, 0x03]),
        (2287, &[0xff, 0x7f]),
        (2288, &[0xf0, 0x80, 0x00]),
        (16380, &[0xfc, 0xf0, 0x06]),
        (16384, &[0xf0, 0xf1, 0x06]),
        (65535, &[0xff, 0xf0, 0x1e]),
        (264431, &[0xff, 0xff, 0x7f]),
        (264432, &[0xf0, 0x80, 0x80, 0x00]),
        (33818863, &[0xff, 0xff, 0xff, 0x7f]),
        (33818864, &[0xf0, 0x80, 0x80, 0x80, 0x00]),
        (4294967295, &[0xff, 0xf0, 0xfe, 0xfe, 0x7e]),
        (4328786159, &[0xff, 0xff, 0xff, 0xff, 0x7f]),
        (4328786160, &[0xf0, 0x80, 0x80, 0x80, 0x80, 0x00]),
        (
            9223372036854775807,
            &[0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x06],
        ),
        (
            18446744073709551615,
            &[0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0e],
        ),
        (
            18446744073709551614,
            &[0xfe, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0e],
        ),
    ];

    #[test]
    fn boundary_table() {
        for &(value, bytes) in TABLE {
            let mut buf = Vec::new();
            put(&mut buf, value);
            assert_eq!(buf, bytes, "encode {value}");
            assert_eq!(decode(bytes), Ok((value, bytes.len())), "decode {value}");
            assert_eq!(encoded_len(value), bytes.len());
            // every strict prefix is truncated
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Err(DecodeError::Truncated("varint")));
            }
        }
    }

    /// `put` and `encoded_len` (written byte by byte) agree with `encode` everywhere: around
    /// every length threshold and on a spread of other values.
    #[test]
    fn put_and_len_agree_with_encode() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut values: Vec<u64> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x >> (x % 64)
            })
            .collect();
        for &(v, _) in TABLE {
            values.extend([v.saturating_sub(1), v, v.saturating_add(1)]);
        }
        for v in values {
            let (bytes, len) = encode(v);
            let mut buf = Vec::new();
            put(&mut buf, v);
            assert_eq!(buf, &bytes[..len], "put {v}");
            let mut out = [0u8; MAX_LEN];
            let n = write(&mut out, v);
            assert_eq!(&out[..n], &bytes[..len], "write {v}");
            assert_eq!(encoded_len(v), len, "encoded_len {v}");
        }
    }

    #[test]
    fn length_thresholds() {
        let firsts = [
            240u64,
            2288,
            264432,
            33818864,
            4328786160,
            554084600048,
            70922828777712,
            9078122083518704,
            1161999626690365680,
        ];
        for (i, &v) in firsts.iter().enumerate() {
            assert_eq!(encoded_len(v - 1), i + 1);
            assert_eq!(encoded_len(v), i + 2);
        }
    }

    /// The decoder as the grammar states it, in 128-bit arithmetic.
    fn reference(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
        let first = *buf.first().ok_or(DecodeError::Truncated("varint"))?;
        if first < 240 {
            return Ok((u64::from(first), 1));
        }
        let mut value = u128::from(first);
        for (k, &b) in buf.iter().enumerate().skip(1).take(MAX_LEN - 1) {
            value += u128::from(b) << (4 + 7 * (k - 1));
            if b < 0x80 {
                return u64::try_from(value)
                    .map(|v| (v, k + 1))
                    .map_err(|_| DecodeError::InvalidVarint);
            }
        }
        if buf.len() >= MAX_LEN {
            Err(DecodeError::InvalidVarint)
        } else {
            Err(DecodeError::Truncated("varint"))
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_matches_the_reference(
            buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
            high in 0xf0u8..,
        ) {
            proptest::prop_assert_eq!(decode(&buf), reference(&buf));
            // long encodings, where overflow lives
            let mut long = buf;
            long.insert(0, high);
            for b in long.iter_mut().skip(1).take(8) {
                *b |= 0x80;
            }
            proptest::prop_assert_eq!(decode(&long), reference(&long));
        }
    }

    #[test]
    fn rejects_eleventh_byte_and_overflow() {
        // ten bytes, the last still with its continuation bit
        let eleven = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
        ];
        assert_eq!(decode(&eleven), Err(DecodeError::InvalidVarint));
        assert_eq!(decode(&eleven[..10]), Err(DecodeError::InvalidVarint));
        // ten bytes that overflow u64
        let over = [0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0f];
        assert_eq!(decode(&over), Err(DecodeError::InvalidVarint));
        let over2 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(decode(&over2), Err(DecodeError::InvalidVarint));
    }
}
