//! The deserializer of one argument's value (or of every argument of a name, for a `Vec`).

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

use super::DeError;
use crate::data::TypedData;
use crate::extract::{FromTypedData, ValueError};
use crate::frame::Message;

/// One argument's value; `group` when the argument's name may stand for several arguments
/// (a `Vec` field then gets them all).
#[derive(Clone, Copy)]
pub(super) struct ValueDeserializer<'a> {
    pub(super) msg: Message<'a>,
    pub(super) name: &'a str,
    pub(super) value: TypedData<'a>,
    pub(super) group: bool,
}

impl ValueDeserializer<'_> {
    fn convert<'a, T: FromTypedData<'a>>(value: TypedData<'a>) -> Result<T, DeError> {
        T::from_typed(value).map_err(DeError::Value)
    }

    fn wrong(&self, expected: &'static str) -> DeError {
        DeError::Value(ValueError::unexpected(expected, &self.value))
    }
}

/// Formats an address into a stack buffer (serde's `IpAddr` reads a string).
struct StackStr {
    buf: [u8; 48],
    len: usize,
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl StackStr {
    fn of(v: &dyn fmt::Display) -> Self {
        let mut s = Self {
            buf: [0; 48],
            len: 0,
        };
        // an IPv6 address is at most 45 bytes
        let _ = write!(s, "{v}");
        s
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

macro_rules! int_methods {
    ($($method:ident => $t:ty, $visit:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            visitor.$visit(Self::convert::<$t>(self.value)?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            TypedData::Null => visitor.visit_unit(),
            TypedData::Bool(b) => visitor.visit_bool(b),
            TypedData::Int32(n) => visitor.visit_i32(n),
            TypedData::Uint32(n) => visitor.visit_u32(n),
            TypedData::Int64(n) => visitor.visit_i64(n),
            TypedData::Uint64(n) => visitor.visit_u64(n),
            TypedData::Ipv4(a) => visitor.visit_str(StackStr::of(&a).as_str()),
            TypedData::Ipv6(a) => visitor.visit_str(StackStr::of(&a).as_str()),
            TypedData::String(b) => match std::str::from_utf8(b) {
                Ok(s) => visitor.visit_borrowed_str(s),
                Err(_) => visitor.visit_borrowed_bytes(b),
            },
            TypedData::Binary(b) => visitor.visit_borrowed_bytes(b),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_bool(Self::convert::<bool>(self.value)?)
    }

    int_methods! {
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_i128 => i128, visit_i128;
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_u128 => u128, visit_u128;
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            TypedData::Ipv4(a) => visitor.visit_str(StackStr::of(&a).as_str()),
            TypedData::Ipv6(a) => visitor.visit_str(StackStr::of(&a).as_str()),
            v => visitor.visit_borrowed_str(Self::convert::<&str>(v)?),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_borrowed_bytes(Self::convert::<&[u8]>(self.value)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            TypedData::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            TypedData::Null => visitor.visit_unit(),
            _ => Err(self.wrong("NULL")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if !self.group {
            return Err(self.wrong("a repeated argument (a sequence)"));
        }
        visitor.visit_seq(SeqAccess { de: self, pos: 0 })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let s = Self::convert::<&str>(self.value)?;
        visitor.visit_enum(s.into_deserializer())
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! { f32 f64 tuple tuple_struct map struct }
}

/// Every argument named `de.name`, in order.
struct SeqAccess<'a> {
    de: ValueDeserializer<'a>,
    pos: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let name = self.de.name;
        let Some((i, a)) = self
            .de
            .msg
            .args()
            .enumerate()
            .skip(self.pos)
            .find(|(_, a)| a.name == name)
        else {
            return Ok(None);
        };
        self.pos = i + 1;
        seed.deserialize(ValueDeserializer {
            value: a.value,
            group: false,
            ..self.de
        })
        .map(Some)
    }
}
