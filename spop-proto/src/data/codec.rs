//! The wire form of typed data: the grammar's rules (nom) and the encoders.
//!
//! ```text
//! TYPED-DATA    : <TYPE:4 bits><FLAGS:4 bits><DATA>
//! STRING/BINARY : <LENGTH:varint><BYTES>
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use super::TypedData;
use crate::error::DecodeError;
use crate::parse::{self, Emit, MResult, Mode, PResult, array, byte, fail_m, named};
use crate::varint::{self, varint};

impl<'a> TypedData<'a> {
    /// The number of bytes [`TypedData::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        1 + match *self {
            Self::Null | Self::Bool(_) => 0,
            Self::Int32(v) => varint::encoded_len(i64::from(v) as u64),
            Self::Uint32(v) => varint::encoded_len(u64::from(v)),
            Self::Int64(v) => varint::encoded_len(v as u64),
            Self::Uint64(v) => varint::encoded_len(v),
            Self::Ipv4(_) => 4,
            Self::Ipv6(_) => 16,
            Self::String(b) | Self::Binary(b) => varint::encoded_len(b.len() as u64) + b.len(),
        }
    }

    /// Appends the type byte and the value to `dst`.
    ///
    /// ```
    /// use spop_proto::TypedData;
    /// let mut buf = Vec::new();
    /// TypedData::Bool(true).encode(&mut buf);
    /// TypedData::Bool(false).encode(&mut buf);
    /// TypedData::Int64(-1).encode(&mut buf);
    /// assert_eq!(&buf[..3], &[0x11, 0x01, 0x04]);
    /// assert_eq!(buf.len(), 2 + 1 + 10);
    /// ```
    pub fn encode<B: BufMut + ?Sized>(&self, dst: &mut B) {
        match *self {
            Self::Null => dst.put_u8(0x00),
            Self::Bool(b) => dst.put_u8(if b { 0x11 } else { 0x01 }),
            Self::Int32(v) => {
                dst.put_u8(0x02);
                varint::put(dst, i64::from(v) as u64);
            }
            Self::Uint32(v) => {
                dst.put_u8(0x03);
                varint::put(dst, u64::from(v));
            }
            Self::Int64(v) => {
                dst.put_u8(0x04);
                varint::put(dst, v as u64);
            }
            Self::Uint64(v) => {
                dst.put_u8(0x05);
                varint::put(dst, v);
            }
            Self::Ipv4(a) => {
                dst.put_u8(0x06);
                dst.put_slice(&a.octets());
            }
            Self::Ipv6(a) => {
                dst.put_u8(0x07);
                dst.put_slice(&a.octets());
            }
            Self::String(b) => {
                dst.put_u8(0x08);
                varint::put(dst, b.len() as u64);
                dst.put_slice(b);
            }
            Self::Binary(b) => {
                dst.put_u8(0x09);
                varint::put(dst, b.len() as u64);
                dst.put_slice(b);
            }
        }
    }

    /// Decodes one typed value at the start of `buf`; returns it and the bytes consumed.
    ///
    /// ```
    /// use spop_proto::{DecodeError, TypedData};
    /// assert_eq!(TypedData::decode(&[0x08, 0x00]), Ok((TypedData::String(b""), 2)));
    /// assert_eq!(TypedData::decode(&[0x0a]), Err(DecodeError::UnknownDataType(0x0a)));
    /// ```
    pub fn decode(buf: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let (rest, v) = parse::run(typed_data::<Emit>, buf)?;
        Ok((v, buf.len() - rest.len()))
    }
}

/// The grammar's TYPED-DATA rule: a type byte (type in the low nibble, BOOL's value in bit 4),
/// then the value its type announces. In `Check` mode the value is validated (range of
/// INT32 and UINT32 included) but not built.
#[inline(always)]
pub(crate) fn typed_data<'a, M: Mode>(i: &'a [u8]) -> MResult<'a, M, TypedData<'a>> {
    let (i, tb) = byte(i, "data type")?;
    let int = |i| named("varint", varint(i));
    Ok(match tb & 0x0F {
        0 => (i, M::bind(|| TypedData::Null)),
        1 => (i, M::bind(|| TypedData::Bool(tb & 0xF0 == 0x10))),
        2 => {
            // signed values travel as 64-bit two's complement
            let (i, v) = int(i)?;
            match i32::try_from(v as i64) {
                Ok(n) => (i, M::bind(|| TypedData::Int32(n))),
                Err(_) => return fail_m::<M, _>(DecodeError::IntegerOutOfRange(v)),
            }
        }
        3 => {
            let (i, v) = int(i)?;
            match u32::try_from(v) {
                Ok(n) => (i, M::bind(|| TypedData::Uint32(n))),
                Err(_) => return fail_m::<M, _>(DecodeError::IntegerOutOfRange(v)),
            }
        }
        4 => {
            let (i, v) = int(i)?;
            (i, M::bind(|| TypedData::Int64(v as i64)))
        }
        5 => {
            let (i, v) = int(i)?;
            (i, M::bind(|| TypedData::Uint64(v)))
        }
        6 => {
            let (i, a) = array::<4>(i, "ipv4 address")?;
            (i, M::bind(|| TypedData::Ipv4(Ipv4Addr::from(a))))
        }
        7 => {
            let (i, a) = array::<16>(i, "ipv6 address")?;
            (i, M::bind(|| TypedData::Ipv6(Ipv6Addr::from(a))))
        }
        8 => {
            let (i, b) = raw_str(i, "string value")?;
            (i, M::bind(|| TypedData::String(b)))
        }
        9 => {
            let (i, b) = raw_str(i, "binary value")?;
            (i, M::bind(|| TypedData::Binary(b)))
        }
        _ => return fail_m::<M, _>(DecodeError::UnknownDataType(tb)),
    })
}

/// The grammar's STRING without its type byte: a varint length, then that many bytes. Running
/// out of input in either is `Truncated(what)`.
#[inline(always)]
pub(crate) fn raw_str<'a>(i: &'a [u8], what: &'static str) -> PResult<'a, &'a [u8]> {
    let (i, len) = named(what, varint(i))?;
    // beyond usize, the length cannot be buffered anyway
    named(
        what,
        parse::take(i, usize::try_from(len).unwrap_or(usize::MAX)),
    )
}

/// `a == b` for the short names lookups compare (message and argument names): up to 32
/// bytes in at most four word comparisons, without the call to `memcmp` that slice equality
/// makes.
#[inline(always)]
pub(crate) fn same_name(a: &[u8], b: &[u8]) -> bool {
    fn w4(s: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]])
    }
    fn w8(s: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    }
    fn w16(s: &[u8], at: usize) -> u128 {
        let mut w = [0u8; 16];
        w.copy_from_slice(&s[at..at + 16]);
        u128::from_ne_bytes(w)
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // two overlapping words cover the whole name
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        17..=32 => w16(a, 0) == w16(b, 0) && w16(a, n - 16) == w16(b, n - 16),
        _ => a == b,
    }
}

/// A name (KV key, message, argument or variable name): a [`raw_str`] that must be UTF-8. In
/// [`Check`] mode, ASCII (the usual case) is recognised without a call to the UTF-8 validator.
#[inline(always)]
pub(crate) fn name<'a, M: Mode>(i: &'a [u8], what: &'static str) -> MResult<'a, M, &'a str> {
    let (i, raw) = raw_str(i, what)?;
    let mut emitted = false;
    let mut valid = true;
    let name = M::bind(|| {
        emitted = true;
        std::str::from_utf8(raw).unwrap_or_else(|_| {
            valid = false;
            ""
        })
    });
    if !emitted {
        valid = raw.is_ascii() || std::str::from_utf8(raw).is_ok();
    }
    if valid {
        Ok((i, name))
    } else {
        fail_m::<M, _>(DecodeError::InvalidUtf8(what))
    }
}

/// Appends a length-prefixed name (`<STRING>` without type byte).
#[inline]
pub(crate) fn put_raw_str<B: BufMut + ?Sized>(dst: &mut B, s: &[u8]) {
    varint::put(dst, s.len() as u64);
    dst.put_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_is_slice_equality() {
        let base: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for n in 0..=40 {
            let a = &base[..n];
            assert!(same_name(a, a), "{n}");
            assert!(!same_name(a, &base[..n.saturating_sub(1)]) || n == 0, "{n}");
            for at in 0..n {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same_name(a, &b), "length {n}, differing at {at}");
            }
        }
    }
    use crate::parse::Check;

    #[test]
    fn bool_and_null_bytes() {
        let mut b = Vec::new();
        TypedData::Null.encode(&mut b);
        TypedData::Bool(true).encode(&mut b);
        TypedData::Bool(false).encode(&mut b);
        assert_eq!(b, [0x00, 0x11, 0x01]);
        // flags in the high nibble, type in the low nibble
        assert_eq!(TypedData::decode(&[0x11]), Ok((TypedData::Bool(true), 1)));
        assert_eq!(TypedData::decode(&[0x01]), Ok((TypedData::Bool(false), 1)));
    }

    #[test]
    fn negative_ints_are_twos_complement() {
        let mut b = Vec::new();
        TypedData::Int32(-1).encode(&mut b);
        assert_eq!(
            b,
            [
                0x02, 0xff, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0e
            ]
        );
        assert_eq!(TypedData::decode(&b), Ok((TypedData::Int32(-1), 11)));
        b.clear();
        TypedData::Int64(-2).encode(&mut b);
        assert_eq!(
            b,
            [
                0x04, 0xfe, 0xf0, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0xfe, 0x0e
            ]
        );
    }

    #[test]
    fn out_of_range_32_bit() {
        // +4294967295 in an INT32 is not an i32
        assert_eq!(
            TypedData::decode(&[0x02, 0xff, 0xf0, 0xfe, 0xfe, 0x7e]),
            Err(DecodeError::IntegerOutOfRange(4294967295))
        );
        assert_eq!(
            TypedData::decode(&[0x03, 0xff, 0xf0, 0xfe, 0xfe, 0x7e]),
            Ok((TypedData::Uint32(u32::MAX), 6))
        );
        assert!(matches!(
            TypedData::decode(&[0x03, 0xf0, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(DecodeError::IntegerOutOfRange(_))
        ));
    }

    #[test]
    fn truncated_values() {
        assert_eq!(
            TypedData::decode(&[]),
            Err(DecodeError::Truncated("data type"))
        );
        assert_eq!(
            TypedData::decode(&[0x06, 1, 2]),
            Err(DecodeError::Truncated("ipv4 address"))
        );
        assert_eq!(
            TypedData::decode(&[0x07, 1]),
            Err(DecodeError::Truncated("ipv6 address"))
        );
        assert_eq!(
            TypedData::decode(&[0x08, 3, b'a']),
            Err(DecodeError::Truncated("string value"))
        );
        assert_eq!(
            TypedData::decode(&[0x09]),
            Err(DecodeError::Truncated("binary value"))
        );
        assert_eq!(
            TypedData::decode(&[0x04, 0xf0]),
            Err(DecodeError::Truncated("varint"))
        );
        for t in 10..=15u8 {
            assert_eq!(
                TypedData::decode(&[t | 0x30]),
                Err(DecodeError::UnknownDataType(t | 0x30))
            );
        }
    }

    #[test]
    fn names_and_strings() {
        let run_name = |i| parse::run(|i| name::<Emit>(i, "n"), i);
        let check_name = |i| parse::run(|i| name::<Check>(i, "n"), i).map(|(i, ())| i);
        for input in [
            &[1, 0xc3][..],
            &[2, b'o', b'k', 9],
            &[3, 0xc3, 0xa9],
            &[2, 0xc3, 0xa9],
        ] {
            assert_eq!(
                check_name(input),
                run_name(input).map(|(i, _)| i),
                "{input:02x?}"
            );
        }
        assert_eq!(run_name(&[1, 0xc3]), Err(DecodeError::InvalidUtf8("n")));
        assert_eq!(run_name(&[2, b'o', b'k', 9]), Ok((&[9u8][..], "ok")));
        assert_eq!(run_name(&[3, 0xc3, 0xa9]), Err(DecodeError::Truncated("n")));
        assert_eq!(run_name(&[2, 0xc3, 0xa9]), Ok((&[][..], "\u{e9}")));
        let run_str = |i| parse::run(|i| raw_str(i, "s"), i);
        assert_eq!(run_str(&[0xf0]), Err(DecodeError::Truncated("s")));
        assert_eq!(run_str(&[]), Err(DecodeError::Truncated("s")));
        assert_eq!(run_str(&[0xff; 11]), Err(DecodeError::InvalidVarint));
        assert_eq!(
            run_str(&[0xff, 0xff, 0x7f]),
            Err(DecodeError::Truncated("s"))
        );
    }
}
