//! HAProxy's HTTP data as agents receive it: the `req.hdrs_bin` / `res.hdrs_bin` header block,
//! and how to tell a truncated `req.body`.
//!
//! # Header blocks
//!
//! `req.hdrs_bin` (and `res.hdrs_bin`) arrive as one BINARY argument holding every header in
//! order, duplicates kept, in HAProxy's own format:
//!
//! ```text
//! *( <str:name> <str:value> ) <str:""> <str:"">      <str> = varint length, then the bytes
//! ```
//!
//! Names are as HAProxy stores them: lowercase, for HTTP/1 too. Values may be empty and are
//! not guaranteed UTF-8. The list ends with two empty strings. [`HeaderBlock::parse`]
//! validates a block once (a truncated field, a missing end marker, bytes after it, an empty
//! name with a value are errors, never panics); iteration and lookups then cannot fail and
//! allocate nothing.
//!
//! HAProxy builds the block in a `tune.bufsize` scratch buffer and sends **NULL** when it does
//! not fit; ask for `Option<HeaderBlock>` to tell that (`None`) from "no such header"
//! ([`HeaderBlock::get`] returning `None`):
//!
//! ```
//! use spop_proto::{HeaderBlock, Notify, NotifyId};
//!
//! let mut block = Vec::new();
//! HeaderBlock::encode([("host", "example.com"), ("accept", "*/*"), ("accept", "text/html")], &mut block);
//! let notify = Notify::builder(NotifyId::new(1, 1))
//!     .message("check-request")
//!     .arg("hdrs", &block[..])
//!     .build();
//! let msg = notify.message("check-request").unwrap();
//! match msg.get::<Option<HeaderBlock>>("hdrs")? {
//!     None => println!("headers did not fit HAProxy's buffer, or were not sent"),
//!     Some(h) => {
//!         assert_eq!(h.get("Host"), Some(&b"example.com"[..]));
//!         assert_eq!(h.get_all("accept").count(), 2);
//!         assert!(h.get("user-agent").is_none());
//!         assert_eq!(h.len(), 3);
//!     }
//! }
//! # Ok::<(), spop_proto::ArgError>(())
//! ```
//!
//! # Request bodies
//!
//! `req.body` is what HAProxy buffered (it needs `option http-buffer-request` or
//! `http-request wait-for-body`), cut to the buffer. Send `req.body_len` (what was captured)
//! and `req.body_size` (the announced size, from Content-Length) beside it: when they differ,
//! the body is truncated. And a NOTIFY that would exceed `max-frame-size` is not sent at all
//! (HAProxy sets the error variable to 3), so the usual pattern is two groups: one message
//! without the body always, a second one with it only when it fits:
//!
//! ```text
//! spoe-message check-request
//!     args ip=src path=path hdrs=req.hdrs_bin
//!     event on-frontend-http-request
//! spoe-message check-body
//!     args body=req.body len=req.body_len size=req.body_size
//!     event on-frontend-http-request if { req.body_size -m int le 8000 }
//! ```
//!
//! ```
//! use spop_proto::{Notify, NotifyId};
//! let notify = Notify::builder(NotifyId::new(1, 1))
//!     .message("check-body").arg("body", &b"abc"[..]).arg("len", 3i64).arg("size", 10i64)
//!     .build();
//! let m = notify.message("check-body").unwrap();
//! let (len, size): (Option<u64>, Option<u64>) = (m.get("len")?, m.get("size")?);
//! let truncated = matches!((len, size), (Some(l), Some(s)) if l < s);
//! assert!(truncated);
//! # Ok::<(), spop_proto::ArgError>(())
//! ```

use std::fmt;

use bytes::BufMut;

use crate::data::put_raw_str;
use crate::parse::{self, PError};
use crate::varint;

/// Why bytes are not a valid header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderBlockError {
    /// The block ends inside a length or a name or value (at this byte offset).
    #[error("truncated header block at offset {0}")]
    Truncated(usize),
    /// The block ends after a whole header, without the two empty strings that close it.
    #[error("header block without its end marker")]
    MissingEndMarker,
    /// Bytes follow the end marker.
    #[error("{0} bytes after the end marker of the header block")]
    TrailingBytes(usize),
    /// An empty header name with a non-empty value (at this byte offset).
    #[error("empty header name at offset {0}")]
    EmptyName(usize),
    /// A length that is not a valid varint, or longer than the block (at this byte offset).
    #[error("invalid length at offset {0}")]
    InvalidLength(usize),
}

/// One header of a [`HeaderBlock`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header<'a> {
    /// The name, as HAProxy stores it (lowercase).
    pub name: &'a [u8],
    /// The value (may be empty, not necessarily UTF-8).
    pub value: &'a [u8],
}

impl<'a> Header<'a> {
    /// The name as text, when it is UTF-8 (header names are ASCII tokens in practice).
    ///
    /// ```
    /// use spop_proto::Header;
    /// assert_eq!(Header { name: b"host", value: b"x" }.name_str(), Some("host"));
    /// ```
    pub fn name_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.name).ok()
    }

    /// The value as text, when it is UTF-8.
    ///
    /// ```
    /// use spop_proto::Header;
    /// assert_eq!(Header { name: b"h", value: b"\xff" }.value_str(), None);
    /// ```
    pub fn value_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value).ok()
    }
}

impl fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.name.escape_ascii(),
            self.value.escape_ascii()
        )
    }
}

/// A validated, borrowed `req.hdrs_bin` / `res.hdrs_bin` block; see the [module docs](self).
///
/// ```
/// use spop_proto::{HeaderBlock, HeaderBlockError};
/// let block = b"\x04host\x01a\x00\x00";
/// let h = HeaderBlock::parse(block).unwrap();
/// assert_eq!(h.iter().map(|h| h.name).collect::<Vec<_>>(), [b"host"]);
/// assert_eq!(HeaderBlock::parse(b"\x04host\x01a"), Err(HeaderBlockError::MissingEndMarker));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderBlock<'a> {
    /// The headers, without the end marker.
    headers: &'a [u8],
    count: usize,
}

/// Reads one `<str>` at `pos` (the grammar's varint, then that many bytes); the errors say
/// where the block stops making sense.
#[inline]
fn read_str(block: &[u8], pos: usize) -> Result<(&[u8], usize), HeaderBlockError> {
    let rest = &block[pos..];
    let (after, len) = match varint::varint(rest) {
        Ok(v) => v,
        Err(nom::Err::Error(PError::Eof)) => return Err(HeaderBlockError::Truncated(pos)),
        Err(_) => return Err(HeaderBlockError::InvalidLength(pos)),
    };
    let at = pos + (rest.len() - after.len());
    match parse::take(after, usize::try_from(len).unwrap_or(usize::MAX)) {
        Ok((_, s)) => Ok((s, at + s.len())),
        Err(_) => Err(HeaderBlockError::Truncated(at)),
    }
}

impl<'a> HeaderBlock<'a> {
    /// Validates a whole block (as received in a BINARY argument).
    ///
    /// ```
    /// use spop_proto::{HeaderBlock, HeaderBlockError};
    /// assert_eq!(HeaderBlock::parse(b"\x00\x00").map(|h| h.len()), Ok(0));
    /// assert_eq!(HeaderBlock::parse(b""), Err(HeaderBlockError::MissingEndMarker));
    /// assert_eq!(HeaderBlock::parse(b"\x00\x00\x00"), Err(HeaderBlockError::TrailingBytes(1)));
    /// assert_eq!(HeaderBlock::parse(b"\x05ab"), Err(HeaderBlockError::Truncated(1)));
    /// assert_eq!(HeaderBlock::parse(b"\x00\x01x\x00\x00"), Err(HeaderBlockError::EmptyName(0)));
    /// ```
    pub fn parse(block: &'a [u8]) -> Result<Self, HeaderBlockError> {
        let mut pos = 0;
        let mut count = 0;
        loop {
            if pos == block.len() {
                return Err(HeaderBlockError::MissingEndMarker);
            }
            let start = pos;
            let (name, p) = read_str(block, pos)?;
            let (value, p) = read_str(block, p)?;
            pos = p;
            if name.is_empty() {
                if !value.is_empty() {
                    return Err(HeaderBlockError::EmptyName(start));
                }
                if pos != block.len() {
                    return Err(HeaderBlockError::TrailingBytes(block.len() - pos));
                }
                return Ok(Self {
                    headers: &block[..start],
                    count,
                });
            }
            count += 1;
        }
    }

    /// The number of headers (duplicates counted).
    pub const fn len(&self) -> usize {
        self.count
    }

    /// True when the block holds no header.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The headers in order.
    ///
    /// ```
    /// use spop_proto::HeaderBlock;
    /// let mut b = Vec::new();
    /// HeaderBlock::encode([("a", "1"), ("b", "")], &mut b);
    /// let h = HeaderBlock::parse(&b).unwrap();
    /// let v: Vec<_> = h.iter().map(|h| (h.name, h.value)).collect();
    /// assert_eq!(v, [(&b"a"[..], &b"1"[..]), (&b"b"[..], &b""[..])]);
    /// ```
    pub const fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            rest: self.headers,
            left: self.count,
        }
    }

    /// The value of the first header named `name`, compared ASCII case-insensitively.
    ///
    /// ```
    /// use spop_proto::HeaderBlock;
    /// let mut b = Vec::new();
    /// HeaderBlock::encode([("user-agent", "curl/8")], &mut b);
    /// assert_eq!(HeaderBlock::parse(&b).unwrap().get("User-Agent"), Some(&b"curl/8"[..]));
    /// ```
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// True when a header named `name` (any case) is present.
    ///
    /// ```
    /// use spop_proto::HeaderBlock;
    /// let h = HeaderBlock::parse(b"\x01x\x00\x00\x00").unwrap();
    /// assert!(h.contains("X") && !h.contains("y"));
    /// ```
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The values of every header named `name` (any case), in order.
    ///
    /// ```
    /// use spop_proto::HeaderBlock;
    /// let mut b = Vec::new();
    /// HeaderBlock::encode([("cookie", "a=1"), ("host", "h"), ("cookie", "b=2")], &mut b);
    /// let h = HeaderBlock::parse(&b).unwrap();
    /// assert_eq!(h.get_all("Cookie").collect::<Vec<_>>(), [&b"a=1"[..], &b"b=2"[..]]);
    /// ```
    pub fn get_all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value)
    }

    /// The raw bytes of the headers (without the end marker).
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.headers
    }

    /// Appends a header block built from `(name, value)` pairs, end marker included (tests,
    /// the CLI, an HAProxy-side tool). Names are written as given: HAProxy's are lowercase.
    ///
    /// ```
    /// use spop_proto::HeaderBlock;
    /// let mut b = Vec::new();
    /// HeaderBlock::encode([("host", "a")], &mut b);
    /// assert_eq!(b, b"\x04host\x01a\x00\x00");
    /// assert_eq!(HeaderBlock::encoded_len([("host", "a")]), b.len());
    /// ```
    pub fn encode<N, V, B>(headers: impl IntoIterator<Item = (N, V)>, dst: &mut B)
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
        B: BufMut + ?Sized,
    {
        for (n, v) in headers {
            put_raw_str(dst, n.as_ref());
            put_raw_str(dst, v.as_ref());
        }
        dst.put_slice(&[0, 0]);
    }

    /// The number of bytes [`HeaderBlock::encode`] writes for these headers.
    pub fn encoded_len<N, V>(headers: impl IntoIterator<Item = (N, V)>) -> usize
    where
        N: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let s = |b: &[u8]| varint::encoded_len(b.len() as u64) + b.len();
        headers
            .into_iter()
            .map(|(n, v)| s(n.as_ref()) + s(v.as_ref()))
            .sum::<usize>()
            + 2
    }
}

impl fmt::Debug for HeaderBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for HeaderBlock<'a> {
    type Item = Header<'a>;
    type IntoIter = HeaderIter<'a>;
    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &HeaderBlock<'a> {
    type Item = Header<'a>;
    type IntoIter = HeaderIter<'a>;
    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

/// Iterator over the headers of a [`HeaderBlock`], in order.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Header<'a>;

    #[inline]
    fn next(&mut self) -> Option<Header<'a>> {
        if self.left == 0 {
            return None;
        }
        // validated by `HeaderBlock::parse`: cannot fail
        let (name, p) = read_str(self.rest, 0).ok()?;
        let (value, p) = read_str(self.rest, p).ok()?;
        self.rest = &self.rest[p..];
        self.left -= 1;
        Some(Header { name, value })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for HeaderIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_order_with_duplicates() {
        let mut b = Vec::new();
        let long = "v".repeat(300);
        HeaderBlock::encode(
            [
                ("host", "a"),
                ("x-long", long.as_str()),
                ("empty", ""),
                ("host", "b"),
            ],
            &mut b,
        );
        let h = HeaderBlock::parse(&b).unwrap();
        assert_eq!(h.len(), 4);
        let names: Vec<&[u8]> = h.iter().map(|h| h.name).collect();
        assert_eq!(names, [&b"host"[..], b"x-long", b"empty", b"host"]);
        assert_eq!(h.get("x-LONG"), Some(long.as_bytes()));
        assert_eq!(h.get("empty"), Some(&b""[..]));
        assert_eq!(h.get_all("HOST").collect::<Vec<_>>(), [&b"a"[..], b"b"]);
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.iter().len(), 4);
        // the header after the long one is still there (a peer bug dropped it)
        assert!(h.contains("empty"));
    }

    #[test]
    fn strict_errors() {
        use HeaderBlockError as E;
        assert_eq!(HeaderBlock::parse(b"\x01a"), Err(E::Truncated(2)));
        assert_eq!(HeaderBlock::parse(b"\x01a\x02x"), Err(E::Truncated(3)));
        assert_eq!(HeaderBlock::parse(b"\x01a\x00"), Err(E::MissingEndMarker));
        assert_eq!(HeaderBlock::parse(b"\x00"), Err(E::Truncated(1)));
        assert_eq!(HeaderBlock::parse(b"\x00\x00x"), Err(E::TrailingBytes(1)));
        assert_eq!(HeaderBlock::parse(b"\xf0"), Err(E::Truncated(0)));
        assert_eq!(
            HeaderBlock::parse(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            Err(E::InvalidLength(0))
        );
        // a huge announced length is "truncated", not an allocation
        assert_eq!(
            HeaderBlock::parse(b"\xff\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e"),
            Err(E::Truncated(10))
        );
        assert_eq!(
            HeaderBlock::parse(b"\x00\x01v\x00\x00"),
            Err(E::EmptyName(0))
        );
    }

    #[test]
    fn debug_shows_headers() {
        let h = HeaderBlock::parse(b"\x01a\x01b\x00\x00").unwrap();
        assert_eq!(format!("{h:?}"), "[a: b]");
    }
}
