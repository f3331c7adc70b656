//! The hand-written NOTIFY decoder spop-proto used before its grammar moved to nom, kept
//! verbatim (minus what the benches do not call) so that criterion compares the two in the
//! same run: the length prefix and header split, the validate-once walk over the messages,
//! and the iterators that step over validated arguments. Not used by the library.
//!
//! The entry points that were public and not `#[inline]` in the library (`split_frame`,
//! `FrameDecoder::decode`, `MessageList::parse`, `Notify::parse`) are `#[inline(never)]`
//! here: the bench crate must not inline what a crate using the library could not.

use bytes::{Buf, Bytes, BytesMut};
use std::net::{Ipv4Addr, Ipv6Addr};

use spop_proto::frame::{FrameFlags, FrameHeader};
use spop_proto::{DecodeError, FrameType, NotifyId, TypedData};

type DResult<'a, T> = Result<(&'a [u8], T), DecodeError>;

// ---- primitives (parse.rs) -------------------------------------------------------------------

#[inline]
fn varint_decode(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    let Some(&first) = buf.first() else {
        return Err(DecodeError::Truncated("varint"));
    };
    if first < 240 {
        return Ok((u64::from(first), 1));
    }
    let mut value = u128::from(first);
    let mut shift = 4u32;
    let mut idx = 1;
    loop {
        if idx >= 10 {
            return Err(DecodeError::InvalidVarint);
        }
        let Some(&b) = buf.get(idx) else {
            return Err(DecodeError::Truncated("varint"));
        };
        value += u128::from(b) << shift;
        idx += 1;
        if b < 128 {
            break;
        }
        shift += 7;
    }
    u64::try_from(value)
        .map(|v| (v, idx))
        .map_err(|_| DecodeError::InvalidVarint)
}

#[inline(always)]
fn p_varint(i: &[u8]) -> DResult<'_, u64> {
    match i.split_first() {
        Some((&b, rest)) if b < 240 => Ok((rest, u64::from(b))),
        _ => {
            let (v, n) = varint_decode(i)?;
            Ok((&i[n..], v))
        }
    }
}

#[inline(always)]
fn p_byte<'a>(i: &'a [u8], what: &'static str) -> DResult<'a, u8> {
    match i.split_first() {
        Some((&b, rest)) => Ok((rest, b)),
        None => Err(DecodeError::Truncated(what)),
    }
}

#[inline(always)]
fn p_bytes<'a>(i: &'a [u8], n: u64, what: &'static str) -> DResult<'a, &'a [u8]> {
    match usize::try_from(n) {
        Ok(n) if n <= i.len() => {
            let (taken, rest) = i.split_at(n);
            Ok((rest, taken))
        }
        _ => Err(DecodeError::Truncated(what)),
    }
}

#[inline(always)]
fn p_array<'a, const N: usize>(i: &'a [u8], what: &'static str) -> DResult<'a, [u8; N]> {
    match i.split_first_chunk::<N>() {
        Some((taken, rest)) => Ok((rest, *taken)),
        None => Err(DecodeError::Truncated(what)),
    }
}

#[inline(always)]
fn p_raw_str<'a>(i: &'a [u8], what: &'static str) -> DResult<'a, &'a [u8]> {
    let (i, len) = match p_varint(i) {
        Ok(v) => v,
        Err(DecodeError::Truncated(_)) => return Err(DecodeError::Truncated(what)),
        Err(e) => return Err(e),
    };
    p_bytes(i, len, what)
}

#[inline(always)]
fn p_name<'a>(i: &'a [u8], what: &'static str) -> DResult<'a, &'a str> {
    let (i, raw) = p_raw_str(i, what)?;
    match std::str::from_utf8(raw) {
        Ok(s) => Ok((i, s)),
        Err(_) => Err(DecodeError::InvalidUtf8(what)),
    }
}

#[inline(always)]
fn p_check_name<'a>(i: &'a [u8], what: &'static str) -> Result<&'a [u8], DecodeError> {
    let (i, raw) = p_raw_str(i, what)?;
    if raw.is_ascii() || std::str::from_utf8(raw).is_ok() {
        Ok(i)
    } else {
        Err(DecodeError::InvalidUtf8(what))
    }
}

// ---- typed data (data.rs) --------------------------------------------------------------------

#[inline(always)]
fn decode_typed(i: &[u8]) -> DResult<'_, TypedData<'_>> {
    let (i, tb) = p_byte(i, "data type")?;
    match tb & 0x0F {
        0 => Ok((i, TypedData::Null)),
        1 => Ok((i, TypedData::Bool(tb & 0xF0 == 0x10))),
        2 => {
            let (i, v) = p_varint(i)?;
            match i32::try_from(v as i64) {
                Ok(n) => Ok((i, TypedData::Int32(n))),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        3 => {
            let (i, v) = p_varint(i)?;
            match u32::try_from(v) {
                Ok(n) => Ok((i, TypedData::Uint32(n))),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        4 => {
            let (i, v) = p_varint(i)?;
            Ok((i, TypedData::Int64(v as i64)))
        }
        5 => {
            let (i, v) = p_varint(i)?;
            Ok((i, TypedData::Uint64(v)))
        }
        6 => {
            let (i, b) = p_array::<4>(i, "ipv4 address")?;
            Ok((i, TypedData::Ipv4(Ipv4Addr::from(b))))
        }
        7 => {
            let (i, b) = p_array::<16>(i, "ipv6 address")?;
            Ok((i, TypedData::Ipv6(Ipv6Addr::from(b))))
        }
        8 => {
            let (i, b) = p_raw_str(i, "string value")?;
            Ok((i, TypedData::String(b)))
        }
        9 => {
            let (i, b) = p_raw_str(i, "binary value")?;
            Ok((i, TypedData::Binary(b)))
        }
        _ => Err(DecodeError::UnknownDataType(tb)),
    }
}

#[inline]
fn check_typed(i: &[u8]) -> Result<&[u8], DecodeError> {
    let (i, tb) = p_byte(i, "data type")?;
    match tb & 0x0F {
        0 | 1 => Ok(i),
        2 => {
            let (i, v) = p_varint(i)?;
            match i32::try_from(v as i64) {
                Ok(_) => Ok(i),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        3 => {
            let (i, v) = p_varint(i)?;
            match u32::try_from(v) {
                Ok(_) => Ok(i),
                Err(_) => Err(DecodeError::IntegerOutOfRange(v)),
            }
        }
        4 | 5 => Ok(p_varint(i)?.0),
        6 => Ok(p_array::<4>(i, "ipv4 address")?.0),
        7 => Ok(p_array::<16>(i, "ipv6 address")?.0),
        8 => Ok(p_raw_str(i, "string value")?.0),
        9 => Ok(p_raw_str(i, "binary value")?.0),
        _ => Err(DecodeError::UnknownDataType(tb)),
    }
}

#[inline]
fn skip_typed(i: &[u8]) -> Option<&[u8]> {
    let (&tb, i) = i.split_first()?;
    match tb & 0x0F {
        0 | 1 => Some(i),
        2..=5 => p_varint(i).ok().map(|(i, _)| i),
        6 => i.get(4..),
        7 => i.get(16..),
        8 | 9 => p_raw_str(i, "").ok().map(|(i, _)| i),
        _ => None,
    }
}

// ---- NOTIFY (frame/notify.rs) ----------------------------------------------------------------

/// One argument (the library's `Arg`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arg<'a> {
    pub(crate) name: &'a str,
    pub(crate) value: TypedData<'a>,
}

/// One message of a validated payload (the library's `Message`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    name: &'a str,
    nb_args: u8,
    args: &'a [u8],
}

impl<'a> Message<'a> {
    pub(crate) const fn name(&self) -> &'a str {
        self.name
    }

    pub(crate) const fn args(&self) -> Args<'a> {
        Args {
            rest: self.args,
            left: self.nb_args,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Args<'a> {
    rest: &'a [u8],
    left: u8,
}

impl<'a> Iterator for Args<'a> {
    type Item = Arg<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (rest, a) = arg(self.rest).ok()?;
        self.rest = rest;
        Some(a)
    }
}

#[inline(always)]
fn arg(i: &[u8]) -> DResult<'_, Arg<'_>> {
    let (i, name) = p_name(i, "argument name")?;
    let (i, value) = decode_typed(i)?;
    Ok((i, Arg { name, value }))
}

#[inline(always)]
fn check_message(input: &[u8]) -> Result<&[u8], DecodeError> {
    let i = p_check_name(input, "message name")?;
    let (mut i, nb_args) = p_byte(i, "message nb-args")?;
    for _ in 0..nb_args {
        i = p_check_name(i, "argument name")?;
        i = check_typed(i)?;
    }
    Ok(i)
}

#[inline(always)]
fn skip_args(mut i: &[u8], nb_args: u8) -> Option<&[u8]> {
    for _ in 0..nb_args {
        let (rest, _) = p_raw_str(i, "argument name").ok()?;
        i = skip_typed(rest)?;
    }
    Some(i)
}

#[inline(always)]
fn next_message(input: &[u8]) -> Option<(&[u8], Message<'_>)> {
    let (i, name) = p_name(input, "message name").ok()?;
    let (start, nb_args) = p_byte(i, "message nb-args").ok()?;
    let i = skip_args(start, nb_args)?;
    let args = &start[..start.len() - i.len()];
    Some((
        i,
        Message {
            name,
            nb_args,
            args,
        },
    ))
}

/// `MessageList::parse`: validates a whole payload.
#[inline(never)]
pub(crate) fn validate(payload: &[u8]) -> Result<Messages<'_>, DecodeError> {
    let mut rest = payload;
    while !rest.is_empty() {
        rest = check_message(rest)?;
    }
    Ok(Messages { rest: payload })
}

#[derive(Debug, Clone)]
pub(crate) struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match next_message(self.rest) {
            Some((rest, m)) => {
                self.rest = rest;
                Some(m)
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

/// The owned NOTIFY (the library's `Notify`).
#[derive(Debug, Clone)]
pub(crate) struct Notify {
    id: NotifyId,
    payload: Bytes,
}

impl Notify {
    #[inline(never)]
    pub(crate) fn parse(id: NotifyId, payload: Bytes) -> Result<Self, DecodeError> {
        validate(&payload)?;
        Ok(Self { id, payload })
    }

    pub(crate) const fn id(&self) -> NotifyId {
        self.id
    }

    pub(crate) fn messages(&self) -> Messages<'_> {
        Messages {
            rest: &self.payload,
        }
    }
}

// ---- frame header and splitting (frame/decoder.rs) -------------------------------------------

#[inline(always)]
fn decode_header(frame: &[u8]) -> Result<(FrameHeader, usize), DecodeError> {
    let (i, t) = p_byte(frame, "frame header")?;
    let (i, flags) = p_array::<4>(i, "frame header")?;
    let (i, sid) = p_varint(i)?;
    let (i, fid) = p_varint(i)?;
    let header = FrameHeader::new(
        FrameType(t),
        FrameFlags(u32::from_be_bytes(flags)),
        sid,
        fid,
    );
    Ok((header, frame.len() - i.len()))
}

#[inline]
fn check_prefix(buf: &[u8], max_frame_size: u32) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > max_frame_size {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame_size,
        });
    }
    if len < 7 {
        return Err(DecodeError::FrameTooShort(len));
    }
    Ok(Some(len as usize))
}

/// `split_frame`.
#[inline(never)]
pub(crate) fn split_frame(
    buf: &[u8],
    max_frame_size: u32,
) -> Result<Option<spop_proto::frame::SplitFrame<'_>>, DecodeError> {
    let Some(len) = check_prefix(buf, max_frame_size)? else {
        return Ok(None);
    };
    let total = 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = &buf[4..total];
    let (header, hdr_len) = decode_header(frame)?;
    Ok(Some((header, &frame[hdr_len..], total)))
}

/// `FrameDecoder::decode`, returning the header and the payload.
#[inline(never)]
pub(crate) fn decode_frame(
    src: &mut BytesMut,
    max_frame_size: u32,
) -> Result<Option<(FrameHeader, Bytes)>, DecodeError> {
    let Some(len) = check_prefix(src, max_frame_size)? else {
        return Ok(None);
    };
    if src.len() < 4 + len {
        src.reserve((4 + len - src.len()).min(8 * 1024));
        return Ok(None);
    }
    let (header, hdr_len) = match decode_header(&src[4..4 + len]) {
        Ok(h) => h,
        Err(e) => {
            src.advance(4 + len);
            return Err(e);
        }
    };
    let payload = if hdr_len == len {
        src.advance(4 + len);
        Bytes::new()
    } else {
        let mut frame = src.split_to(4 + len).freeze();
        frame.advance(4 + hdr_len);
        frame
    };
    Ok(Some((header, payload)))
}
