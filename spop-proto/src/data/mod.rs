//! Typed data (the ten SPOP data types) and KV lists: the values and their conversions here,
//! their wire grammar and encoding in `codec`, KV lists in `kv`.

mod codec;
mod kv;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) use codec::{name, put_raw_str, raw_str, same_name, typed_data};
pub use kv::KvList;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        assert_eq!(TypedData::Binary(&[0, 255]).to_string(), "bin:00ff");
        assert_eq!(TypedData::String(b"a\"b").to_string(), "str:\"a\\\"b\"");
        assert_eq!(TypedData::Int64(-5).to_string(), "int64:-5");
        assert_eq!(TypedData::Null.to_string(), "null");
    }
}
