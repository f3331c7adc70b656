//! Entry points for the fuzz targets (`fuzz/`) and the regression tests, behind the
//! `fuzzing` feature: not part of the library's API, no semver promise.
//!
//! One function per target: [`frame`], [`varint`], [`hdrs_bin`], [`roundtrip`] (an encode
//! script checked against a model, module `roundtrip`) and [`connection`] (an agent connection
//! driven by a script and checked against a model, module `connection`).

mod connection;
mod roundtrip;

pub use connection::{MAX_READ_CHUNK, Observed, connection, connection_observed};
pub use roundtrip::roundtrip;

use bytes::BytesMut;

use crate::TypedData;
use crate::frame::{Frame, FrameDecoder, split_frame};

/// Arbitrary bytes through the frame splitter, the decoder and every payload parser.
pub fn frame(data: &[u8]) {
    // the NOTIFY payload fast path accepts only what the grammar accepts
    if crate::frame::notify::quick_check(data) {
        assert_eq!(
            crate::frame::notify::grammar_check(data),
            Ok(()),
            "quick_check accepted a payload the grammar refuses"
        );
    }
    let mut rest = data;
    while let Ok(Some((header, payload, used))) = split_frame(rest, 1 << 20) {
        if let Ok(f) = Frame::parse(&header, payload) {
            walk(&f);
        }
        rest = &rest[used..];
    }
    let mut buf = BytesMut::from(data);
    let mut dec = FrameDecoder::new(1 << 20);
    while let Ok(Some(raw)) = dec.decode(&mut buf) {
        let _ = raw.parse();
    }
}

fn walk(f: &Frame<'_>) {
    match f {
        Frame::Notify(list) => {
            for m in list.iter() {
                for a in m.args() {
                    let _ = (a.name.len(), a.value.to_string());
                }
            }
        }
        Frame::Ack(list) => {
            for a in list.iter() {
                let _ = a.to_string();
            }
        }
        _ => {}
    }
}

/// Arbitrary bytes as a varint.
pub fn varint(data: &[u8]) {
    if let Ok((v, n)) = crate::varint::decode(data) {
        let (enc, len) = crate::varint::encode(v);
        assert_eq!(&enc[..len], &data[..n], "varint encoding is a bijection");
    }
}

// ---- hdrs_bin --------------------------------------------------------------------------------

/// Arbitrary bytes as a `req.hdrs_bin` block: [`HeaderBlock::parse`](crate::HeaderBlock::parse)
/// never panics; a block it accepts iterates to exactly its count, re-encodes to the same
/// bytes, and `get` finds the first header of each name (any case). The bytes also go
/// through typed extraction as a BINARY argument (and the other types' conversions).
pub fn hdrs_bin(data: &[u8]) {
    use crate::{FromTypedData, HeaderBlock};
    let parsed = HeaderBlock::parse(data);
    if let Ok(h) = parsed {
        let all: Vec<_> = h.iter().collect();
        assert_eq!(all.len(), h.len());
        let mut re = Vec::new();
        HeaderBlock::encode(all.iter().map(|x| (x.name, x.value)), &mut re);
        assert_eq!(re, data, "a valid header block re-encodes to itself");
        for x in &all {
            assert!(!x.name.is_empty());
            if let Some(name) = x.name_str() {
                let first = all
                    .iter()
                    .find(|y| y.name.eq_ignore_ascii_case(x.name))
                    .map(|y| y.value);
                assert_eq!(h.get(name), first);
            }
        }
    }
    let v = TypedData::Binary(data);
    assert_eq!(
        HeaderBlock::from_typed(v).map(|h| h.len()).ok(),
        parsed.map(|h| h.len()).ok()
    );
    let _ = <&str>::from_typed(TypedData::String(data));
    let _ = <Option<i64>>::from_typed(v);
}
