//! Typed extraction: from a [`TypedData`] (or a message's argument) to a Rust type, with an
//! error that says what went wrong.
//!
//! Two levels:
//!
//! - [`FromTypedData`] converts one value: integers are range-checked, addresses, strings and
//!   bytes borrow from the frame, `Option<T>` turns NULL (and a missing argument) into `None`.
//!   The same conversions are offered as `TryFrom<TypedData<'a>>` for the concrete types.
//!   A failed conversion is a [`ValueError`].
//! - [`Message::get`] and [`Message::get_at`] look an argument up by name or position and
//!   convert it; their [`ArgError`] names the message, the argument, the expected and the
//!   actual type, and the [`ArgErrorKind`] (missing, NULL, wrong type, out of range...).
//!
//! Nothing here allocates on success; an error allocates its names (once, on the error path).
//!
//! Which type to ask for: HAProxy sends every integer sample as INT64, addresses as IPV4 or
//! IPV6 by family, `path` and `req.hdr()` as STRING (not guaranteed UTF-8: ask for `&[u8]`
//! when any byte may occur), `req.hdrs_bin` and `req.body` as BINARY, and NULL for a failed
//! fetch. See [docs/fetch-types.md](https://github.com/spoa-rs/spoa-rs/blob/main/docs/fetch-types.md) for the full table.
//!
//! ```
//! use std::net::IpAddr;
//! use spop_proto::{ArgErrorKind, Notify, NotifyId};
//!
//! let notify = Notify::builder(NotifyId::new(1, 1))
//!     .message("check")
//!     .arg("ip", std::net::Ipv4Addr::new(10, 0, 0, 1))
//!     .arg("len", 1500i64)
//!     .arg("sni", ())
//!     .build();
//! let msg = notify.message("check").unwrap();
//! let ip: IpAddr = msg.get("ip")?;
//! let len: u16 = msg.get("len")?;
//! let sni: Option<&str> = msg.get("sni")?; // NULL: None
//! assert_eq!((ip.to_string(), len, sni), ("10.0.0.1".to_string(), 1500, None));
//!
//! let err = msg.get::<u8>("len").unwrap_err();
//! assert_eq!(err.kind(), ArgErrorKind::OutOfRange);
//! assert_eq!(
//!     err.to_string(),
//!     "message \"check\", argument \"len\": expected an integer in u8 range, got int64 (value out of range)"
//! );
//! # Ok::<(), spop_proto::ArgError>(())
//! ```

mod error;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use error::{ArgError, ArgErrorKind, ArgRef, ValueError};

use crate::data::{DataType, TypedData};
use crate::frame::Message;
use crate::http::HeaderBlock;

/// Conversion from a typed value borrowed from a frame.
///
/// Implemented for `bool` (BOOL), every integer type (any of the four SPOP integer types,
/// range-checked), [`IpAddr`] (IPV4 or IPV6), [`Ipv4Addr`] (IPV4), [`Ipv6Addr`] (IPV6),
/// `&'a str` (STRING, valid UTF-8), `&'a [u8]` (STRING or BINARY), `String`, `Vec<u8>`,
/// [`TypedData`] itself (any value, NULL included), [`OwnedTypedData`](crate::OwnedTypedData),
/// [`HeaderBlock`] (a BINARY `req.hdrs_bin`/`res.hdrs_bin` block, validated), and
/// `Option<T>` for any of them (NULL or a missing argument give `None`).
///
/// Implement it for your own types to use them with [`Message::get`]:
///
/// ```
/// use spop_proto::{FromTypedData, TypedData, ValueError, ArgErrorKind, Notify, NotifyId};
///
/// struct Port(u16);
/// impl<'a> FromTypedData<'a> for Port {
///     const EXPECTED: &'static str = "a port (1-65535)";
///     fn from_typed(v: TypedData<'a>) -> Result<Self, ValueError> {
///         match u16::from_typed(v) {
///             Ok(0) => Err(ValueError::new(ArgErrorKind::OutOfRange, Self::EXPECTED, Some(v.data_type()))),
///             Ok(p) => Ok(Port(p)),
///             Err(e) => Err(ValueError { expected: Self::EXPECTED, ..e }),
///         }
///     }
/// }
/// let n = Notify::builder(NotifyId::new(1, 1)).message("m").arg("p", 443i64).build();
/// let Port(p) = n.message("m").unwrap().get("p").unwrap();
/// assert_eq!(p, 443);
/// ```
pub trait FromTypedData<'a>: Sized {
    /// What the type accepts, in words, for error messages (`"an IP address"`).
    const EXPECTED: &'static str;

    /// Converts a present value (which may be NULL).
    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError>;

    /// The result for a missing argument: an [`ArgErrorKind::Missing`] error, except for
    /// `Option<T>` (`None`).
    fn from_missing() -> Result<Self, ValueError> {
        Err(ValueError::missing(Self::EXPECTED))
    }
}

impl<'a, T: FromTypedData<'a>> FromTypedData<'a> for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        match value {
            TypedData::Null => Ok(None),
            v => T::from_typed(v).map(Some),
        }
    }

    fn from_missing() -> Result<Self, ValueError> {
        Ok(None)
    }
}

impl<'a> FromTypedData<'a> for TypedData<'a> {
    const EXPECTED: &'static str = "any value";

    fn from_typed(value: Self) -> Result<Self, ValueError> {
        Ok(value)
    }
}

impl<'a> FromTypedData<'a> for bool {
    const EXPECTED: &'static str = "a bool";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        value
            .as_bool()
            .ok_or_else(|| ValueError::unexpected(Self::EXPECTED, &value))
    }
}

/// The value of any of the four integer types, widened.
fn as_i128(v: &TypedData<'_>) -> Option<i128> {
    match *v {
        TypedData::Int32(n) => Some(i128::from(n)),
        TypedData::Uint32(n) => Some(i128::from(n)),
        TypedData::Int64(n) => Some(i128::from(n)),
        TypedData::Uint64(n) => Some(i128::from(n)),
        _ => None,
    }
}

macro_rules! int_impls {
    ($($t:ty => $expected:literal),* $(,)?) => {$(
        impl<'a> FromTypedData<'a> for $t {
            const EXPECTED: &'static str = $expected;

            fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
                let Some(n) = as_i128(&value) else {
                    return Err(ValueError::unexpected(Self::EXPECTED, &value));
                };
                <$t>::try_from(n).map_err(|_| {
                    ValueError::new(ArgErrorKind::OutOfRange, Self::EXPECTED, Some(value.data_type()))
                })
            }
        }
    )*};
}

int_impls! {
    i8 => "an integer in i8 range", i16 => "an integer in i16 range",
    i32 => "an integer in i32 range", i64 => "an integer in i64 range",
    i128 => "an integer", isize => "an integer in isize range",
    u8 => "an integer in u8 range", u16 => "an integer in u16 range",
    u32 => "an integer in u32 range", u64 => "an integer in u64 range",
    u128 => "an integer in u128 range", usize => "an integer in usize range",
}

impl<'a> FromTypedData<'a> for IpAddr {
    const EXPECTED: &'static str = "an IP address";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        value
            .as_ip()
            .ok_or_else(|| ValueError::unexpected(Self::EXPECTED, &value))
    }
}

impl<'a> FromTypedData<'a> for Ipv4Addr {
    const EXPECTED: &'static str = "an IPv4 address";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        match value {
            TypedData::Ipv4(a) => Ok(a),
            v => Err(ValueError::unexpected(Self::EXPECTED, &v)),
        }
    }
}

impl<'a> FromTypedData<'a> for Ipv6Addr {
    const EXPECTED: &'static str = "an IPv6 address";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        match value {
            TypedData::Ipv6(a) => Ok(a),
            v => Err(ValueError::unexpected(Self::EXPECTED, &v)),
        }
    }
}

impl<'a> FromTypedData<'a> for &'a str {
    const EXPECTED: &'static str = "UTF-8 text (a string)";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        match value {
            TypedData::String(b) => std::str::from_utf8(b).map_err(|_| {
                ValueError::new(
                    ArgErrorKind::InvalidUtf8,
                    Self::EXPECTED,
                    Some(DataType::String),
                )
            }),
            v => Err(ValueError::unexpected(Self::EXPECTED, &v)),
        }
    }
}

impl<'a> FromTypedData<'a> for String {
    const EXPECTED: &'static str = <&str>::EXPECTED;

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        <&str>::from_typed(value).map(str::to_owned)
    }
}

impl<'a> FromTypedData<'a> for &'a [u8] {
    const EXPECTED: &'static str = "bytes (a string or binary)";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        value
            .as_bytes()
            .ok_or_else(|| ValueError::unexpected(Self::EXPECTED, &value))
    }
}

impl<'a> FromTypedData<'a> for Vec<u8> {
    const EXPECTED: &'static str = <&[u8]>::EXPECTED;

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        <&[u8]>::from_typed(value).map(<[u8]>::to_vec)
    }
}

impl<'a> FromTypedData<'a> for HeaderBlock<'a> {
    const EXPECTED: &'static str = "a header block (binary, as req.hdrs_bin)";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        match value {
            TypedData::Binary(b) => HeaderBlock::parse(b).map_err(|e| {
                ValueError::new(
                    ArgErrorKind::InvalidHeaderBlock(e),
                    Self::EXPECTED,
                    Some(DataType::Binary),
                )
            }),
            v => Err(ValueError::unexpected(Self::EXPECTED, &v)),
        }
    }
}

macro_rules! try_from_impls {
    ($($t:ty),* $(,)?) => {$(
        impl<'a> TryFrom<TypedData<'a>> for $t {
            type Error = ValueError;

            /// See [`FromTypedData`].
            fn try_from(value: TypedData<'a>) -> Result<Self, ValueError> {
                <$t as FromTypedData<'a>>::from_typed(value)
            }
        }
    )*};
}

try_from_impls! {
    bool, i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize,
    IpAddr, Ipv4Addr, Ipv6Addr, &'a str, String, &'a [u8], Vec<u8>, HeaderBlock<'a>,
}

impl<'a> Message<'a> {
    /// The first argument named `name`, converted to `T`.
    ///
    /// A missing argument is an [`ArgErrorKind::Missing`] error, a NULL one an
    /// [`ArgErrorKind::Null`] error, unless `T` is an `Option` (then both give `None`).
    ///
    /// ```
    /// use spop_proto::{ArgErrorKind, Notify, NotifyId};
    /// let n = Notify::builder(NotifyId::new(1, 1)).message("m").arg("path", "/a").build();
    /// let m = n.message("m").unwrap();
    /// assert_eq!(m.get::<&str>("path"), Ok("/a"));
    /// assert_eq!(m.get::<Option<i64>>("n"), Ok(None));
    /// assert_eq!(m.get::<i64>("n").unwrap_err().kind(), ArgErrorKind::Missing);
    /// ```
    pub fn get<T: FromTypedData<'a>>(&self, name: &str) -> Result<T, ArgError> {
        match self.arg(name) {
            Some(v) => T::from_typed(v),
            None => T::from_missing(),
        }
        .map_err(|e| ArgError::new(self.name(), ArgRef::Name(name.to_owned()), e))
    }

    /// The argument at `index` (0-based, in message order), converted to `T`.
    ///
    /// ```
    /// use spop_proto::{ArgErrorKind, Notify, NotifyId};
    /// let n = Notify::builder(NotifyId::new(1, 1)).message("m").arg("", true).build();
    /// let m = n.message("m").unwrap();
    /// assert_eq!(m.get_at::<bool>(0), Ok(true));
    /// let err = m.get_at::<bool>(1).unwrap_err();
    /// assert_eq!(err.kind(), ArgErrorKind::Missing);
    /// assert_eq!(err.to_string(), "message \"m\", argument #1: expected a bool, got nothing (missing)");
    /// ```
    pub fn get_at<T: FromTypedData<'a>>(&self, index: usize) -> Result<T, ArgError> {
        match self.arg_at(index) {
            Some(v) => T::from_typed(v),
            None => T::from_missing(),
        }
        .map_err(|e| ArgError::new(self.name(), ArgRef::Index(index), e))
    }

    /// Every argument named `name`, in order, converted to `T` (for repeated names).
    ///
    /// ```
    /// use spop_proto::{Notify, NotifyId};
    /// let n = Notify::builder(NotifyId::new(1, 1)).message("m").arg("ip", 1i64).arg("x", 0i64).arg("ip", 2i64).build();
    /// let all: Vec<u8> = n.message("m").unwrap().get_all("ip").collect::<Result<_, _>>().unwrap();
    /// assert_eq!(all, [1, 2]);
    /// ```
    pub fn get_all<'n, T: FromTypedData<'a>>(
        &self,
        name: &'n str,
    ) -> impl Iterator<Item = Result<T, ArgError>> + use<'a, 'n, T> {
        let msg_name = self.name();
        self.args().filter(move |a| a.name == name).map(move |a| {
            T::from_typed(a.value)
                .map_err(|e| ArgError::new(msg_name, ArgRef::Name(name.to_owned()), e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(u8::try_from(TypedData::Int64(255)), Ok(255));
        assert_eq!(
            u8::try_from(TypedData::Int64(256)).unwrap_err().kind,
            ArgErrorKind::OutOfRange
        );
        assert_eq!(
            u64::try_from(TypedData::Int32(-1)).unwrap_err().kind,
            ArgErrorKind::OutOfRange
        );
        assert_eq!(i64::try_from(TypedData::Uint32(u32::MAX)), Ok(4294967295));
        assert_eq!(
            i64::try_from(TypedData::Uint64(u64::MAX)).unwrap_err().kind,
            ArgErrorKind::OutOfRange
        );
        assert_eq!(u64::try_from(TypedData::Uint64(u64::MAX)), Ok(u64::MAX));
        assert_eq!(i8::try_from(TypedData::Int64(-128)), Ok(-128));
        assert_eq!(
            i128::try_from(TypedData::Int64(i64::MIN)),
            Ok(i128::from(i64::MIN))
        );
        assert_eq!(
            i32::try_from(TypedData::String(b"1")).unwrap_err(),
            ValueError::new(
                ArgErrorKind::WrongType,
                "an integer in i32 range",
                Some(DataType::String)
            )
        );
        assert_eq!(
            i32::try_from(TypedData::Null).unwrap_err().kind,
            ArgErrorKind::Null
        );
        assert_eq!(
            i32::try_from(TypedData::Bool(true)).unwrap_err().kind,
            ArgErrorKind::WrongType
        );
    }

    #[test]
    fn addresses_strings_bytes() {
        let v4 = Ipv4Addr::new(1, 2, 3, 4);
        assert_eq!(IpAddr::try_from(TypedData::Ipv4(v4)), Ok(IpAddr::V4(v4)));
        assert_eq!(Ipv4Addr::try_from(TypedData::Ipv4(v4)), Ok(v4));
        assert_eq!(
            Ipv6Addr::try_from(TypedData::Ipv4(v4)).unwrap_err().kind,
            ArgErrorKind::WrongType
        );
        assert_eq!(
            Ipv4Addr::try_from(TypedData::Ipv6(Ipv6Addr::LOCALHOST))
                .unwrap_err()
                .kind,
            ArgErrorKind::WrongType
        );
        assert_eq!(<&str>::try_from(TypedData::String(b"ok")), Ok("ok"));
        assert_eq!(
            <&str>::try_from(TypedData::String(b"\xff"))
                .unwrap_err()
                .kind,
            ArgErrorKind::InvalidUtf8
        );
        assert_eq!(
            <&str>::try_from(TypedData::Binary(b"ok")).unwrap_err().kind,
            ArgErrorKind::WrongType
        );
        assert_eq!(
            <&[u8]>::try_from(TypedData::Binary(b"\xff")),
            Ok(&b"\xff"[..])
        );
        assert_eq!(<&[u8]>::try_from(TypedData::String(b"s")), Ok(&b"s"[..]));
        assert_eq!(
            String::try_from(TypedData::String(b"s")),
            Ok("s".to_owned())
        );
        assert_eq!(
            Vec::<u8>::try_from(TypedData::Binary(b"b")),
            Ok(b"b".to_vec())
        );
        assert_eq!(bool::try_from(TypedData::Bool(false)), Ok(false));
        assert_eq!(
            bool::try_from(TypedData::Int64(1)).unwrap_err().kind,
            ArgErrorKind::WrongType
        );
    }

    #[test]
    fn options_and_lookups() {
        let n = crate::Notify::builder(crate::NotifyId::new(1, 1))
            .message("msg")
            .arg("a", 5i64)
            .arg("nul", ())
            .arg("", "x")
            .build();
        let m = n.message("msg").unwrap();
        assert_eq!(m.get::<Option<u8>>("a"), Ok(Some(5)));
        assert_eq!(m.get::<Option<u8>>("nul"), Ok(None));
        assert_eq!(m.get::<Option<u8>>("zzz"), Ok(None));
        let e = m.get::<u8>("nul").unwrap_err();
        assert_eq!(e.kind(), ArgErrorKind::Null);
        assert_eq!(
            e.to_string(),
            "message \"msg\", argument \"nul\": expected an integer in u8 range, got null (NULL)"
        );
        assert_eq!(e.arg(), &ArgRef::Name("nul".into()));
        // Option does not hide a wrong type
        assert_eq!(
            m.get::<Option<bool>>("a").unwrap_err().kind(),
            ArgErrorKind::WrongType
        );
        assert_eq!(m.get_at::<&str>(2), Ok("x"));
        assert_eq!(m.get_at::<TypedData<'_>>(1), Ok(TypedData::Null));
        assert_eq!(m.get_at::<Option<&str>>(3), Ok(None));
        let e = m.get_at::<IpAddr>(0).unwrap_err();
        assert_eq!(e.arg(), &ArgRef::Index(0));
        assert_eq!(e.actual(), Some(DataType::Int64));
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
        assert!(boxed.source().is_some());
    }

    #[test]
    fn header_block_argument() {
        let mut block = Vec::new();
        HeaderBlock::encode([("host", "a")], &mut block);
        let n = crate::Notify::builder(crate::NotifyId::new(1, 1))
            .message("m")
            .arg("h", &block[..])
            .arg("bad", &b"\x01a"[..])
            .arg("nul", ())
            .build();
        let m = n.message("m").unwrap();
        let h: HeaderBlock<'_> = m.get("h").unwrap();
        assert_eq!(h.get("Host"), Some(&b"a"[..]));
        assert_eq!(m.get::<Option<HeaderBlock<'_>>>("nul"), Ok(None));
        let e = m.get::<HeaderBlock<'_>>("bad").unwrap_err();
        assert!(
            matches!(e.kind(), ArgErrorKind::InvalidHeaderBlock(_)),
            "{e}"
        );
        assert_eq!(
            m.get::<HeaderBlock<'_>>("nul").unwrap_err().kind(),
            ArgErrorKind::Null
        );
    }
}
