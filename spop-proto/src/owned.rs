//! [`OwnedTypedData`]: a typed value that owns its bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;

use crate::data::{DataType, TypedData};
use crate::extract::{FromTypedData, ValueError};

/// A [`TypedData`] that owns its bytes: `'static`, `Send`, cheap to clone (STRING and BINARY
/// hold a [`Bytes`]), for keeping a value across `.await`s, in a task or in a cache.
///
/// Convert from a borrowed value with `From` (copies the bytes) or, without a copy, with
/// [`OwnedTypedData::from_notify`]; borrow it back with [`OwnedTypedData::as_typed`].
///
/// ```
/// use spop_proto::{Notify, NotifyId, OwnedTypedData, TypedData};
/// let notify = Notify::builder(NotifyId::new(1, 1)).message("m").arg("path", "/a").build();
/// let v = notify.message("m").unwrap().arg("path").unwrap();
/// let owned = OwnedTypedData::from_notify(&notify, v); // zero-copy
/// drop(notify);
/// let task = std::thread::spawn(move || owned.as_typed().as_str().map(str::to_owned));
/// assert_eq!(task.join().unwrap().as_deref(), Some("/a"));
/// assert_eq!(OwnedTypedData::from(TypedData::Int64(-1)).as_typed(), TypedData::Int64(-1));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum OwnedTypedData {
    /// NULL.
    #[default]
    Null,
    /// BOOL.
    Bool(bool),
    /// INT32.
    Int32(i32),
    /// UINT32.
    Uint32(u32),
    /// INT64.
    Int64(i64),
    /// UINT64.
    Uint64(u64),
    /// IPV4.
    Ipv4(Ipv4Addr),
    /// IPV6.
    Ipv6(Ipv6Addr),
    /// STRING, as bytes.
    String(Bytes),
    /// BINARY.
    Binary(Bytes),
}

impl OwnedTypedData {
    /// The borrowed view, to encode it, print it, or pass it to `set_var`.
    ///
    /// ```
    /// use spop_proto::{Actions, OwnedTypedData, Scope};
    /// let v = OwnedTypedData::String("ok".into());
    /// let mut a = Actions::new();
    /// a.set_var(Scope::Transaction, "verdict", v.as_typed());
    /// assert_eq!(a.iter().next().unwrap().to_string(), "set-var txn.verdict = str:\"ok\"");
    /// ```
    pub fn as_typed(&self) -> TypedData<'_> {
        match self {
            Self::Null => TypedData::Null,
            Self::Bool(b) => TypedData::Bool(*b),
            Self::Int32(v) => TypedData::Int32(*v),
            Self::Uint32(v) => TypedData::Uint32(*v),
            Self::Int64(v) => TypedData::Int64(*v),
            Self::Uint64(v) => TypedData::Uint64(*v),
            Self::Ipv4(a) => TypedData::Ipv4(*a),
            Self::Ipv6(a) => TypedData::Ipv6(*a),
            Self::String(s) => TypedData::String(s),
            Self::Binary(b) => TypedData::Binary(b),
        }
    }

    /// The data type.
    ///
    /// ```
    /// use spop_proto::{DataType, OwnedTypedData};
    /// assert_eq!(OwnedTypedData::Null.data_type(), DataType::Null);
    /// ```
    pub fn data_type(&self) -> DataType {
        self.as_typed().data_type()
    }

    /// An owned copy of `value`, which was borrowed from `notify`: STRING and BINARY bytes
    /// are shared with the NOTIFY's buffer (no copy); a value from elsewhere is copied.
    ///
    /// ```
    /// use spop_proto::{Notify, NotifyId, OwnedTypedData, TypedData};
    /// let n = Notify::builder(NotifyId::new(1, 1)).message("m").build();
    /// // not from `n`: copied, no panic
    /// let v = OwnedTypedData::from_notify(&n, TypedData::Binary(b"x"));
    /// assert_eq!(v, OwnedTypedData::Binary("x".into()));
    /// ```
    pub fn from_notify(notify: &crate::Notify, value: TypedData<'_>) -> Self {
        let share = |b: &[u8]| {
            let p = notify.payload();
            let inside = !b.is_empty()
                && p.as_ptr() as usize <= b.as_ptr() as usize
                && b.as_ptr() as usize + b.len() <= p.as_ptr() as usize + p.len();
            if inside {
                notify.bytes_of(b)
            } else {
                Bytes::copy_from_slice(b)
            }
        };
        match value {
            TypedData::String(b) => Self::String(share(b)),
            TypedData::Binary(b) => Self::Binary(share(b)),
            other => Self::from(other),
        }
    }
}

impl From<TypedData<'_>> for OwnedTypedData {
    fn from(v: TypedData<'_>) -> Self {
        match v {
            TypedData::Null => Self::Null,
            TypedData::Bool(b) => Self::Bool(b),
            TypedData::Int32(n) => Self::Int32(n),
            TypedData::Uint32(n) => Self::Uint32(n),
            TypedData::Int64(n) => Self::Int64(n),
            TypedData::Uint64(n) => Self::Uint64(n),
            TypedData::Ipv4(a) => Self::Ipv4(a),
            TypedData::Ipv6(a) => Self::Ipv6(a),
            TypedData::String(s) => Self::String(Bytes::copy_from_slice(s)),
            TypedData::Binary(b) => Self::Binary(Bytes::copy_from_slice(b)),
        }
    }
}

impl<'a> From<&'a OwnedTypedData> for TypedData<'a> {
    fn from(v: &'a OwnedTypedData) -> Self {
        v.as_typed()
    }
}

macro_rules! owned_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for OwnedTypedData {
            fn from(v: $t) -> Self {
                Self::$variant(v.into())
            }
        }
    )*};
}

owned_from! {
    bool => Bool, i32 => Int32, u32 => Uint32, i64 => Int64, u64 => Uint64,
    Ipv4Addr => Ipv4, Ipv6Addr => Ipv6, String => String, Vec<u8> => Binary,
}

impl From<&str> for OwnedTypedData {
    fn from(s: &str) -> Self {
        Self::String(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<IpAddr> for OwnedTypedData {
    fn from(a: IpAddr) -> Self {
        TypedData::from(a).into()
    }
}

impl<'a> FromTypedData<'a> for OwnedTypedData {
    const EXPECTED: &'static str = "any value";

    fn from_typed(value: TypedData<'a>) -> Result<Self, ValueError> {
        Ok(value.into())
    }
}

impl fmt::Debug for OwnedTypedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.as_typed(), f)
    }
}

/// As [`TypedData`]'s `Display`: `int64:-1`, `str:"GET"`, `bin:00ff`.
impl fmt::Display for OwnedTypedData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_typed(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_type() {
        for v in [
            TypedData::Null,
            TypedData::Bool(true),
            TypedData::Int32(-3),
            TypedData::Uint32(3),
            TypedData::Int64(i64::MIN),
            TypedData::Uint64(u64::MAX),
            TypedData::Ipv4(Ipv4Addr::LOCALHOST),
            TypedData::Ipv6(Ipv6Addr::LOCALHOST),
            TypedData::String(b"s\xff"),
            TypedData::Binary(b"\x00"),
        ] {
            let o = OwnedTypedData::from(v);
            assert_eq!(o.as_typed(), v);
            assert_eq!(o.to_string(), v.to_string());
            assert_eq!(o.data_type(), v.data_type());
        }
    }

    #[test]
    fn from_notify_shares_the_buffer() {
        let n = crate::Notify::builder(crate::NotifyId::new(1, 1))
            .message("m")
            .arg("b", &b"bytes"[..])
            .build();
        let v = n.message("m").unwrap().arg("b").unwrap();
        let o = OwnedTypedData::from_notify(&n, v);
        let (OwnedTypedData::Binary(b), TypedData::Binary(src)) = (&o, v) else {
            panic!("{o:?}");
        };
        assert_eq!(b.as_ptr(), src.as_ptr());
    }
}
