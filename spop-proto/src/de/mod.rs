//! A whole message into a user struct with serde (feature `serde`).
//!
//! [`Message::deserialize`] maps arguments to fields by name:
//!
//! - `&'a str` and `&'a [u8]` fields borrow from the frame (no copy); `String`, integers (range
//!   checked), `bool`, `IpAddr`/`Ipv4Addr`/`Ipv6Addr`, unit-variant enums (from a STRING),
//!   newtypes and [`OwnedTypedData`](crate::OwnedTypedData)-free types all work;
//! - `Option<T>`: a missing or NULL argument is `None`; a missing or NULL argument for any
//!   other type is an [`ArgError`] of kind `Missing` or `Null`;
//! - `Vec<T>`: every argument with that name, in order (names may repeat in SPOP);
//! - `#[serde(rename = "client-ip")]` for argument names that are not Rust identifiers;
//! - `#[serde(borrow)] hdrs: Option<HeaderBlock<'a>>` for a `req.hdrs_bin` argument;
//! - arguments without a field are ignored; for a scalar field, the first argument of that
//!   name is used (as [`Message::arg`] does).
//!
//! Bytes: a `&[u8]` field takes a STRING or BINARY value; for an owned buffer use
//! `serde_bytes::ByteBuf` (serde reads a plain `Vec<u8>` as a sequence of repeated arguments).
//!
//! ```
//! use serde::Deserialize;
//! use spop_proto::{ArgErrorKind, Notify, NotifyId};
//!
//! #[derive(Deserialize)]
//! struct CheckRequest<'a> {
//!     ip: std::net::IpAddr,
//!     path: &'a str,
//!     #[serde(rename = "x-forwarded-for", default)]
//!     xff: Vec<&'a str>,
//!     #[serde(borrow)]
//!     body: Option<&'a [u8]>,
//!     len: Option<u32>,
//! }
//!
//! let notify = Notify::builder(NotifyId::new(1, 1))
//!     .message("check-request")
//!     .arg("ip", std::net::Ipv4Addr::new(10, 0, 0, 1))
//!     .arg("path", "/login")
//!     .arg("x-forwarded-for", "1.1.1.1")
//!     .arg("x-forwarded-for", "2.2.2.2")
//!     .arg("body", ())
//!     .arg("unknown", 7i64)
//!     .build();
//! let msg = notify.message("check-request").unwrap();
//! let req: CheckRequest = msg.deserialize()?;
//! assert_eq!(req.ip.to_string(), "10.0.0.1");
//! assert_eq!(req.path, "/login");
//! assert_eq!(req.xff, ["1.1.1.1", "2.2.2.2"]);
//! assert_eq!((req.body, req.len), (None, None));
//!
//! #[derive(Debug, Deserialize)]
//! struct NeedsLen { len: u32 }
//! let err = msg.deserialize::<NeedsLen>().unwrap_err();
//! assert_eq!(err.kind(), ArgErrorKind::Missing);
//! assert_eq!(err.to_string(), "message \"check-request\", argument \"len\": expected a value, got nothing (missing)");
//! # Ok::<(), spop_proto::ArgError>(())
//! ```

mod value;

use std::fmt;

use serde::de::{self, DeserializeSeed, Visitor};
use serde::forward_to_deserialize_any;

use value::ValueDeserializer;

use crate::data::{DataType, TypedData};
use crate::extract::{ArgError, ArgErrorKind, ArgRef, ValueError};
use crate::frame::Message;
use crate::http::HeaderBlock;

impl<'a> Message<'a> {
    /// Deserializes the whole message into `T`; see the [module docs](crate::de).
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct M { n: i64 }
    /// let notify = spop_proto::Notify::builder(spop_proto::NotifyId::new(1, 1)).message("m").arg("n", 3i64).build();
    /// let m: M = notify.message("m").unwrap().deserialize().unwrap();
    /// assert_eq!(m.n, 3);
    /// ```
    pub fn deserialize<T: de::Deserialize<'a>>(&self) -> Result<T, ArgError> {
        T::deserialize(MessageDeserializer { msg: *self }).map_err(|e| e.into_arg_error(self))
    }
}

/// A `req.hdrs_bin` field: `#[serde(borrow)] hdrs: Option<HeaderBlock<'a>>` (NULL or missing:
/// `None`); a malformed block is an error of kind `Invalid` whose detail says why.
///
/// ```
/// use spop_proto::{HeaderBlock, Notify, NotifyId};
/// #[derive(serde::Deserialize)]
/// struct Req<'a> {
///     #[serde(borrow)]
///     hdrs: Option<HeaderBlock<'a>>,
/// }
/// let mut block = Vec::new();
/// HeaderBlock::encode([("host", "a")], &mut block);
/// let n = Notify::builder(NotifyId::new(1, 1)).message("m").arg("hdrs", &block[..]).build();
/// let r: Req = n.message("m").unwrap().deserialize().unwrap();
/// assert_eq!(r.hdrs.unwrap().get("Host"), Some(&b"a"[..]));
/// ```
impl<'de: 'a, 'a> de::Deserialize<'de> for HeaderBlock<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BlockVisitor;
        impl<'de> Visitor<'de> for BlockVisitor {
            type Value = HeaderBlock<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header block (binary, as req.hdrs_bin)")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                HeaderBlock::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(BlockVisitor)
    }
}

/// The error inside the deserializers; turned into an [`ArgError`] at the end.
#[derive(Debug)]
enum DeError {
    /// A value-level error, not yet tied to an argument.
    Value(ValueError),
    /// A custom error from a `Deserialize` impl (not yet tied to an argument).
    Custom(ArgErrorKind, String),
    /// A field with no argument.
    Missing(&'static str),
    /// Tied to an argument.
    Arg(ArgError),
}

impl DeError {
    fn into_arg_error(self, msg: &Message<'_>) -> ArgError {
        match self {
            Self::Arg(e) => e,
            Self::Missing(field) => ArgError::new(
                msg.name(),
                ArgRef::Name(field.to_owned()),
                ValueError::missing("a value"),
            ),
            Self::Value(v) => ArgError::new(msg.name(), ArgRef::Name(String::new()), v),
            Self::Custom(kind, text) => ArgError::new(
                msg.name(),
                ArgRef::Name(String::new()),
                ValueError::new(kind, "the message as a whole", None),
            )
            .with_detail(text),
        }
    }

    /// Ties an error raised while deserializing argument `name` to it.
    fn for_arg(self, msg: &Message<'_>, name: &str, actual: Option<DataType>) -> Self {
        let arg = || ArgRef::Name(name.to_owned());
        match self {
            Self::Value(v) => Self::Arg(ArgError::new(msg.name(), arg(), v)),
            Self::Custom(kind, text) => Self::Arg(
                ArgError::new(
                    msg.name(),
                    arg(),
                    ValueError::new(kind, "a value the field's type accepts", actual),
                )
                .with_detail(text),
            ),
            other => other,
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(v) => v.fmt(f),
            Self::Custom(_, s) => f.write_str(s),
            Self::Missing(field) => write!(f, "missing argument {field:?}"),
            Self::Arg(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(ArgErrorKind::Invalid, msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::Custom(
            ArgErrorKind::WrongType,
            format!("invalid type: {unexp}, expected {exp}"),
        )
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::Custom(
            ArgErrorKind::OutOfRange,
            format!("invalid value: {unexp}, expected {exp}"),
        )
    }

    fn missing_field(field: &'static str) -> Self {
        Self::Missing(field)
    }
}

/// The message as a map from argument names to values.
struct MessageDeserializer<'a> {
    msg: Message<'a>,
}

impl<'de> de::Deserializer<'de> for MessageDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(MapAccess {
            msg: self.msg,
            keys: Keys::Args(0),
            current: None,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_map(MapAccess {
            msg: self.msg,
            keys: Keys::Fields(fields),
            current: None,
        })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple
        tuple_struct enum identifier ignored_any
    }
}

/// Where the map's keys come from.
enum Keys {
    /// The struct's fields still to look at.
    Fields(&'static [&'static str]),
    /// The position of the next argument (a map: each distinct name once).
    Args(usize),
}

struct MapAccess<'a> {
    msg: Message<'a>,
    keys: Keys,
    /// The argument of the key just returned (its name and first value).
    current: Option<(&'a str, TypedData<'a>)>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match &mut self.keys {
            Keys::Fields(fields) => {
                while let Some((&field, rest)) = fields.split_first() {
                    *fields = rest;
                    if let Some(a) = self.msg.args().find(|a| a.name == field) {
                        self.current = Some((a.name, a.value));
                        return seed
                            .deserialize(de::value::BorrowedStrDeserializer::new(field))
                            .map(Some);
                    }
                }
                Ok(None)
            }
            Keys::Args(pos) => {
                while let Some(a) = self.msg.args().nth(*pos) {
                    *pos += 1;
                    // each distinct name once, at its first position
                    if self.msg.args().take(*pos - 1).any(|b| b.name == a.name) {
                        continue;
                    }
                    self.current = Some((a.name, a.value));
                    return seed
                        .deserialize(de::value::BorrowedStrDeserializer::new(a.name))
                        .map(Some);
                }
                Ok(None)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (name, first) = self.current.take().unwrap_or(("", TypedData::Null));
        seed.deserialize(ValueDeserializer {
            msg: self.msg,
            name,
            value: first,
            group: true,
        })
        .map_err(|e| e.for_arg(&self.msg, name, Some(first.data_type())))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use serde::Deserialize;

    use super::*;
    use crate::{Notify, NotifyId};

    fn notify() -> Notify {
        Notify::builder(NotifyId::new(1, 1))
            .message("m")
            .arg("ip", Ipv4Addr::new(1, 2, 3, 4))
            .arg("ip6", Ipv6Addr::LOCALHOST)
            .arg("n", 300i64)
            .arg("neg", -1i64)
            .arg("s", "text")
            .arg("raw", &b"\xff\x00"[..])
            .arg("nul", ())
            .arg("rep", 1i64)
            .arg("rep", 2i64)
            .arg("flag", true)
            .arg("method", "POST")
            .arg("client-ip", Ipv4Addr::LOCALHOST)
            .build()
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Method {
        #[serde(rename = "GET")]
        Get,
        #[serde(rename = "POST")]
        Post,
    }

    #[derive(Debug, Deserialize)]
    struct All<'a> {
        ip: IpAddr,
        ip6: Ipv6Addr,
        n: u16,
        neg: i8,
        s: &'a str,
        #[serde(borrow)]
        raw: &'a [u8],
        nul: Option<u8>,
        absent: Option<&'a str>,
        rep: Vec<u8>,
        flag: bool,
        method: Method,
        #[serde(rename = "client-ip")]
        client_ip: Ipv4Addr,
    }

    #[test]
    fn every_kind_of_field() {
        let n = notify();
        let m = n.message("m").unwrap();
        let all: All<'_> = m.deserialize().unwrap();
        assert_eq!(all.ip, IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(all.ip6, Ipv6Addr::LOCALHOST);
        assert_eq!((all.n, all.neg), (300, -1));
        assert_eq!(all.s, "text");
        assert_eq!(all.raw, b"\xff\x00");
        assert_eq!((all.nul, all.absent), (None, None));
        assert_eq!(all.rep, [1, 2]);
        assert!(all.flag);
        assert_eq!(all.method, Method::Post);
        assert_eq!(all.client_ip, Ipv4Addr::LOCALHOST);
        // zero-copy
        let payload = n.payload();
        assert!(payload.as_ptr_range().contains(&all.s.as_ptr()));
    }

    #[test]
    fn precise_errors() {
        let n = notify();
        let m = n.message("m").unwrap();

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Small {
            n: u8,
        }
        let e = m.deserialize::<Small>().unwrap_err();
        assert_eq!(e.kind(), ArgErrorKind::OutOfRange);
        assert_eq!(e.arg(), &ArgRef::Name("n".into()));
        assert_eq!(e.actual(), Some(DataType::Int64));

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Nul {
            nul: u8,
        }
        let e = m.deserialize::<Nul>().unwrap_err();
        assert_eq!(e.kind(), ArgErrorKind::Null);

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrong<'a> {
            n: &'a str,
        }
        let e = m.deserialize::<Wrong<'_>>().unwrap_err();
        assert_eq!(e.kind(), ArgErrorKind::WrongType);
        assert_eq!(
            e.to_string(),
            "message \"m\", argument \"n\": expected UTF-8 text (a string), got int64 (wrong type)"
        );

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct BadUtf8<'a> {
            raw: &'a str,
        }
        assert_eq!(
            m.deserialize::<BadUtf8<'_>>().unwrap_err().kind(),
            ArgErrorKind::WrongType
        );

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct V4 {
            ip6: Ipv4Addr,
        }
        let e = m.deserialize::<V4>().unwrap_err();
        assert_eq!(e.arg(), &ArgRef::Name("ip6".into()));

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Block<'a> {
            #[serde(borrow)]
            raw: Option<HeaderBlock<'a>>,
        }
        let e = m.deserialize::<Block<'_>>().unwrap_err();
        assert_eq!(e.arg(), &ArgRef::Name("raw".into()));
        assert!(e.to_string().contains("truncated header block"), "{e}");

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct BadEnum {
            s: Method,
        }
        let e = m.deserialize::<BadEnum>().unwrap_err();
        assert_eq!(e.arg(), &ArgRef::Name("s".into()));
    }

    #[test]
    fn as_a_map() {
        let n = notify();
        let m = n.message("m").unwrap();
        let map: std::collections::BTreeMap<&str, de::IgnoredAny> = m.deserialize().unwrap();
        assert_eq!(map.len(), 11); // "rep" once
    }
}
