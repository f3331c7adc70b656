//! Typed data (the ten SPOP data types) and KV lists.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use crate::error::DecodeError;
use crate::parse::{self, DResult};
use crate::varint;

/// The type nibble of a typed-data byte.
///
/// The set is fixed by the protocol (values 10..=15 are reserved and cannot be decoded, since
/// their length is unknowable), so the enum is exhaustive.
///
/// ```
/// use spop_proto::DataType;
/// assert_eq!(DataType::from_byte(0x11), Some(DataType::Bool));
/// assert_eq!(DataType::from_byte(0x0c), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::exhaustive_enums)]
pub enum DataType {
    /// 0: no value.
    Null = 0,
    /// 1: boolean, value in the flag bits.
    Bool = 1,
    /// 2: signed 32-bit integer.
    Int32 = 2,
    /// 3: unsigned 32-bit integer.
    Uint32 = 3,
    /// 4: signed 64-bit integer.
    Int64 = 4,
    /// 5: unsigned 64-bit integer.
    Uint64 = 5,
    /// 6: IPv4 address.
    Ipv4 = 6,
    /// 7: IPv6 address.
    Ipv6 = 7,
    /// 8: string (bytes, not necessarily UTF-8).
    String = 8,
    /// 9: binary.
    Binary = 9,
}

impl DataType {
    /// Decodes the low nibble of a typed-data byte; `None` for the reserved values 10..=15.
    pub const fn from_byte(b: u8) -> Option<Self> {
        Some(match b & 0x0F {
            0 => Self::Null,
            1 => Self::Bool,
            2 => Self::Int32,
            3 => Self::Uint32,
            4 => Self::Int64,
            5 => Self::Uint64,
            6 => Self::Ipv4,
            7 => Self::Ipv6,
            8 => Self::String,
            9 => Self::Binary,
            _ => return None,
        })
    }

    /// The lowercase name used by the CLI (`"int64"`, `"ipv4"`, `"str"`...).
    ///
    /// ```
    /// use spop_proto::DataType;
    /// assert_eq!(DataType::Binary.name(), "bin");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "bool",
            Self::Int32 => "int32",
            Self::Uint32 => "uint32",
            Self::Int64 => "int64",
            Self::Uint64 => "uint64",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::String => "str",
            Self::Binary => "bin",
        }
    }
}

/// A typed value, borrowed from the frame it was decoded from.
///
/// STRING and BINARY values stay bytes: HAProxy does not promise UTF-8 (headers can carry
/// anything); [`TypedData::as_str`] validates on demand.
///
/// Integers are exact: signed values travel as 64-bit two's complement (no zigzag), so
/// `Int32(-1)` and `Int64(-1)` both encode as the 10-byte varint of `u64::MAX`.
///
/// ```
/// use spop_proto::TypedData;
/// use std::net::Ipv4Addr;
/// let v = TypedData::from(Ipv4Addr::new(10, 0, 0, 1));
/// assert_eq!(v.as_ip(), Some("10.0.0.1".parse().unwrap()));
/// let mut buf = Vec::new();
/// v.encode(&mut buf);
/// assert_eq!(buf, [0x06, 10, 0, 0, 1]);
/// assert_eq!(TypedData::decode(&buf), Ok((v, 5)));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::exhaustive_enums)]
pub enum TypedData<'a> {
    /// NULL (also what HAProxy sends for a failed sample fetch).
    Null,
    /// BOOL.
    Bool(bool),
    /// INT32.
    Int32(i32),
    /// UINT32.
    Uint32(u32),
    /// INT64 (HAProxy sends every integer sample as INT64).
    Int64(i64),
    /// UINT64.
    Uint64(u64),
    /// IPV4.
    Ipv4(Ipv4Addr),
    /// IPV6.
    Ipv6(Ipv6Addr),
    /// STRING, as bytes.
    String(&'a [u8]),
    /// BINARY.
    Binary(&'a [u8]),
}

impl<'a> TypedData<'a> {
    /// The data type of this value.
    pub const fn data_type(&self) -> DataType {
        match self {
            Self::Null => DataType::Null,
            Self::Bool(_) => DataType::Bool,
            Self::Int32(_) => DataType::Int32,
            Self::Uint32(_) => DataType::Uint32,
            Self::Int64(_) => DataType::Int64,
            Self::Uint64(_) => DataType::Uint64,
            Self::Ipv4(_) => DataType::Ipv4,
            Self::Ipv6(_) => DataType::Ipv6,
            Self::String(_) => DataType::String,
            Self::Binary(_) => DataType::Binary,
        }
    }

    /// True for NULL.
    pub const fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The boolean, for BOOL.
    pub const fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Any of the four integer types as `i64`, when it fits (UINT64 above `i64::MAX` does not).
    ///
    /// ```
    /// use spop_proto::TypedData;
    /// assert_eq!(TypedData::Uint32(7).as_i64(), Some(7));
    /// assert_eq!(TypedData::Uint64(u64::MAX).as_i64(), None);
    /// ```
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::Int32(v) => Some(i64::from(v)),
            Self::Uint32(v) => Some(i64::from(v)),
            Self::Int64(v) => Some(v),
            Self::Uint64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any of the four integer types as `u64`, when non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Int32(v) => u64::try_from(v).ok(),
            Self::Uint32(v) => Some(u64::from(v)),
            Self::Int64(v) => u64::try_from(v).ok(),
            Self::Uint64(v) => Some(v),
            _ => None,
        }
    }

    /// The address, for IPV4 and IPV6.
    pub const fn as_ip(&self) -> Option<IpAddr> {
        match *self {
            Self::Ipv4(a) => Some(IpAddr::V4(a)),
            Self::Ipv6(a) => Some(IpAddr::V6(a)),
            _ => None,
        }
    }

    /// The bytes, for STRING and BINARY.
    pub const fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Self::String(b) | Self::Binary(b) => Some(b),
            _ => None,
        }
    }

    /// The text, for a STRING that is valid UTF-8.
    ///
    /// ```
    /// use spop_proto::TypedData;
    /// assert_eq!(TypedData::String(b"GET").as_str(), Some("GET"));
    /// assert_eq!(TypedData::String(b"\xff").as_str(), None);
    /// ```
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Self::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

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
        let (rest, v) = decode_typed(buf)?;
        Ok((v, buf.len() - rest.len()))
    }
}

/// Decodes one typed value.
#[inline(always)]
pub(crate) fn decode_typed(i: &[u8]) -> DResult<'_, TypedData<'_>> {
    let (i, tb) = parse::p_byte(i, "data type")?;
    let Some(ty) = DataType::from_byte(tb) else {
        return Err(DecodeError::UnknownDataType(tb));
    };
    match ty {
        DataType::Null => Ok((i, TypedData::Null)),
        DataType::Bool => Ok((i, TypedData::Bool(tb & 0xF0 == 0x10))),
        DataType::Int32 => {
            let (i, v) = parse::p_varint(i)?;
            match i32::try_from(v as i64) {
                Ok(n) => Ok((i, TypedData::Int32(n))),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        DataType::Uint32 => {
            let (i, v) = parse::p_varint(i)?;
            match u32::try_from(v) {
                Ok(n) => Ok((i, TypedData::Uint32(n))),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        DataType::Int64 => {
            let (i, v) = parse::p_varint(i)?;
            Ok((i, TypedData::Int64(v as i64)))
        }
        DataType::Uint64 => {
            let (i, v) = parse::p_varint(i)?;
            Ok((i, TypedData::Uint64(v)))
        }
        DataType::Ipv4 => {
            let (i, b) = parse::p_array::<4>(i, "ipv4 address")?;
            Ok((i, TypedData::Ipv4(Ipv4Addr::from(b))))
        }
        DataType::Ipv6 => {
            let (i, b) = parse::p_array::<16>(i, "ipv6 address")?;
            Ok((i, TypedData::Ipv6(Ipv6Addr::from(b))))
        }
        DataType::String => {
            let (i, b) = parse::p_raw_str(i, "string value")?;
            Ok((i, TypedData::String(b)))
        }
        DataType::Binary => {
            let (i, b) = parse::p_raw_str(i, "binary value")?;
            Ok((i, TypedData::Binary(b)))
        }
    }
}

/// Validates one typed value like [`decode_typed`] (same errors, same length) without
/// building it; returns what follows it.
#[inline]
pub(crate) fn check_typed(i: &[u8]) -> Result<&[u8], DecodeError> {
    let (i, tb) = parse::p_byte(i, "data type")?;
    match tb & 0x0F {
        0 | 1 => Ok(i),
        2 => {
            let (i, v) = parse::p_varint(i)?;
            match i32::try_from(v as i64) {
                Ok(_) => Ok(i),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        3 => {
            let (i, v) = parse::p_varint(i)?;
            match u32::try_from(v) {
                Ok(_) => Ok(i),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        4 | 5 => Ok(parse::p_varint(i)?.0),
        6 => Ok(parse::p_array::<4>(i, "ipv4 address")?.0),
        7 => Ok(parse::p_array::<16>(i, "ipv6 address")?.0),
        8 => Ok(parse::p_raw_str(i, "string value")?.0),
        9 => Ok(parse::p_raw_str(i, "binary value")?.0),
        _ => Err(DecodeError::UnknownDataType(tb)),
    }
}

/// Steps over one typed value already validated by [`check_typed`] (no range checks);
/// `None` where [`decode_typed`] would fail for any other reason (truncation, bad varint,
/// unknown type).
#[inline]
pub(crate) fn skip_typed(i: &[u8]) -> Option<&[u8]> {
    let (&tb, i) = i.split_first()?;
    match tb & 0x0F {
        0 | 1 => Some(i),
        2..=5 => parse::p_varint(i).ok().map(|(i, _)| i),
        6 => i.get(4..),
        7 => i.get(16..),
        8 | 9 => parse::p_raw_str(i, "").ok().map(|(i, _)| i),
        _ => None,
    }
}

impl fmt::Debug for TypedData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("Null"),
            Self::Bool(b) => write!(f, "Bool({b})"),
            Self::Int32(v) => write!(f, "Int32({v})"),
            Self::Uint32(v) => write!(f, "Uint32({v})"),
            Self::Int64(v) => write!(f, "Int64({v})"),
            Self::Uint64(v) => write!(f, "Uint64({v})"),
            Self::Ipv4(a) => write!(f, "Ipv4({a})"),
            Self::Ipv6(a) => write!(f, "Ipv6({a})"),
            Self::String(b) => write!(f, "String({:?})", b.escape_ascii().to_string()),
            Self::Binary(b) => write!(f, "Binary({:?})", b.escape_ascii().to_string()),
        }
    }
}

/// Shows the value the way the CLI prints it: `int64:-1`, `ipv4:10.0.0.1`, `str:"GET"`,
/// `bin:00ff` (hex).
impl fmt::Display for TypedData<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.data_type().name();
        match self {
            Self::Null => f.write_str(name),
            Self::Bool(b) => write!(f, "{name}:{b}"),
            Self::Int32(v) => write!(f, "{name}:{v}"),
            Self::Uint32(v) => write!(f, "{name}:{v}"),
            Self::Int64(v) => write!(f, "{name}:{v}"),
            Self::Uint64(v) => write!(f, "{name}:{v}"),
            Self::Ipv4(a) => write!(f, "{name}:{a}"),
            Self::Ipv6(a) => write!(f, "{name}:{a}"),
            Self::String(b) => write!(f, "{name}:\"{}\"", b.escape_ascii()),
            Self::Binary(b) => {
                f.write_str(name)?;
                f.write_str(":")?;
                for byte in *b {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

macro_rules! from_impls {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for TypedData<'_> {
            fn from(v: $t) -> Self {
                Self::$variant(v.into())
            }
        }
    )*};
}

from_impls! {
    bool => Bool,
    i8 => Int32, i16 => Int32, i32 => Int32,
    u8 => Uint32, u16 => Uint32, u32 => Uint32,
    i64 => Int64, u64 => Uint64,
    Ipv4Addr => Ipv4, Ipv6Addr => Ipv6,
}

impl From<IpAddr> for TypedData<'_> {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => Self::Ipv4(a),
            IpAddr::V6(a) => Self::Ipv6(a),
        }
    }
}

impl<'a> From<&'a str> for TypedData<'a> {
    fn from(s: &'a str) -> Self {
        Self::String(s.as_bytes())
    }
}

impl<'a> From<&'a String> for TypedData<'a> {
    fn from(s: &'a String) -> Self {
        Self::String(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for TypedData<'a> {
    fn from(b: &'a [u8]) -> Self {
        Self::Binary(b)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for TypedData<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Self::Binary(b)
    }
}

impl<'a, T: Into<Self>> From<Option<T>> for TypedData<'a> {
    /// `None` becomes NULL (which, in a set-var, makes HAProxy unset the variable).
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// Appends a length-prefixed name (`<STRING>` without type byte).
#[inline]
pub(crate) fn put_raw_str<B: BufMut + ?Sized>(dst: &mut B, s: &[u8]) {
    varint::put(dst, s.len() as u64);
    dst.put_slice(s);
}

/// An iterator over a KV list: `(key, value)` pairs until the end of the payload.
///
/// Yields an error (once, then stops) on malformed input.
///
/// ```
/// use spop_proto::{KvList, TypedData};
/// let mut buf = Vec::new();
/// KvList::put(&mut buf, "status-code", TypedData::Uint32(0));
/// let pairs: Vec<_> = KvList::new(&buf).collect::<Result<_, _>>().unwrap();
/// assert_eq!(pairs, [("status-code", TypedData::Uint32(0))]);
/// ```
#[derive(Debug, Clone)]
pub struct KvList<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> KvList<'a> {
    /// Iterates over the KV list in `payload`.
    pub const fn new(payload: &'a [u8]) -> Self {
        Self {
            rest: payload,
            failed: false,
        }
    }

    /// Appends one key and typed value to `dst`.
    pub fn put<B: BufMut + ?Sized>(dst: &mut B, key: &str, value: TypedData<'_>) {
        put_raw_str(dst, key.as_bytes());
        value.encode(dst);
    }
}

impl<'a> Iterator for KvList<'a> {
    type Item = Result<(&'a str, TypedData<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let res = kv_pair(self.rest);
        match res {
            Ok((rest, pair)) => {
                self.rest = rest;
                Some(Ok(pair))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[inline]
fn kv_pair(i: &[u8]) -> DResult<'_, (&str, TypedData<'_>)> {
    let (i, key) = parse::p_name(i, "KV key")?;
    if key.is_empty() {
        return Err(DecodeError::EmptyKey);
    }
    let (i, value) = decode_typed(i)?;
    Ok((i, (key, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn check_and_skip_agree_with_decode() {
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x02, 0xff, 0xf0, 0xfe, 0xfe, 0x7e],
            vec![0x03, 0xf0, 0x80, 0x80, 0x80, 0x80, 0x00],
            vec![0x04, 0xf0],
            vec![
                0x04, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            vec![0x06, 1, 2],
            vec![0x07, 1],
            vec![0x08, 3, b'a'],
            vec![0x09],
            vec![0x19, 0xf0],
        ];
        for t in 0..=255u8 {
            inputs.push(vec![
                t, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
            ]);
            inputs.push(vec![t]);
        }
        for v in [
            TypedData::Null,
            TypedData::Bool(true),
            TypedData::Int32(-7),
            TypedData::Uint32(u32::MAX),
            TypedData::Int64(i64::MIN),
            TypedData::Uint64(u64::MAX),
            TypedData::Ipv4(Ipv4Addr::LOCALHOST),
            TypedData::Ipv6(Ipv6Addr::LOCALHOST),
            TypedData::String(b"value"),
            TypedData::Binary(&[0; 300]),
        ] {
            let mut b = Vec::new();
            v.encode(&mut b);
            assert_eq!(b.len(), v.encoded_len());
            b.push(0xaa);
            inputs.push(b);
        }
        for input in &inputs {
            let decoded = decode_typed(input).map(|(rest, _)| rest);
            assert_eq!(check_typed(input), decoded, "{input:02x?}");
            if let Ok(rest) = decoded {
                assert_eq!(skip_typed(input), Some(rest), "{input:02x?}");
            }
        }
    }

    #[test]
    fn kv_list_errors() {
        let items: Vec<_> = KvList::new(&[0x00, 0x00]).collect();
        assert_eq!(items, [Err(DecodeError::EmptyKey)]);
        let items: Vec<_> = KvList::new(&[0x01, b'k', 0x0b]).collect();
        assert_eq!(items, [Err(DecodeError::UnknownDataType(0x0b))]);
        let items: Vec<_> = KvList::new(&[0x05, b'k']).collect();
        assert_eq!(items, [Err(DecodeError::Truncated("KV key"))]);
        let items: Vec<_> = KvList::new(&[0x01, 0xff, 0x00]).collect();
        assert_eq!(items, [Err(DecodeError::InvalidUtf8("KV key"))]);
    }

    #[test]
    fn display() {
        assert_eq!(TypedData::Binary(&[0, 255]).to_string(), "bin:00ff");
        assert_eq!(TypedData::String(b"a\"b").to_string(), "str:\"a\\\"b\"");
        assert_eq!(TypedData::Int64(-5).to_string(), "int64:-5");
        assert_eq!(TypedData::Null.to_string(), "null");
    }
}
