//! KV lists (HELLO and DISCONNECT payloads): `<KEY:name><VALUE:typed data>` until the end.

use bytes::BufMut;

use super::{TypedData, name, put_raw_str, typed_data};
use crate::error::DecodeError;
use crate::parse::{self, Emit, PResult};

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
        match parse::run(kv_pair, self.rest) {
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

/// The grammar's KV pair: a non-empty UTF-8 key, then a typed value.
#[inline]
fn kv_pair(i: &[u8]) -> PResult<'_, (&str, TypedData<'_>)> {
    let (i, key) = name::<Emit>(i, "KV key")?;
    if key.is_empty() {
        return parse::fail(DecodeError::EmptyKey);
    }
    let (i, value) = typed_data::<Emit>(i)?;
    Ok((i, (key, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
