//! Frames: header, decoder, and the payload of every frame type in both directions.
//!
//! The frame layer is usable without the connection state machine, for example by an HAProxy
//! side test client:
//!
//! ```
//! use bytes::BytesMut;
//! use spop_proto::frame::{Frame, FrameDecoder, HaproxyHello};
//!
//! let mut wire = BytesMut::new();
//! HaproxyHello::new(16380, "pipelining").encode(&mut wire);
//! let mut decoder = FrameDecoder::new(16380);
//! let raw = decoder.decode(&mut wire).unwrap().unwrap();
//! match raw.parse().unwrap() {
//!     Frame::HaproxyHello(hello) => assert_eq!(hello.max_frame_size, Some(16380)),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

mod ack;
pub(crate) mod decoder;
mod disconnect;
mod hello;
pub(crate) mod notify;

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

pub use ack::{Action, ActionList, Actions, Scope};
pub use decoder::{FrameDecoder, SplitFrame, split_frame};
pub use disconnect::{Disconnect, MAX_MESSAGE_LEN};
pub use hello::{AgentHello, Capabilities, HaproxyHello, SUPPORTED_VERSION, parse_versions};
pub use notify::{Arg, ArgValue, Args, Message, MessageList, Messages, Notify, NotifyBuilder};

use crate::error::DecodeError;
use crate::parse;
use crate::status::FrameType;
use crate::varint;

/// The smallest frame length: type (1) + flags (4) + two one-byte varints.
pub const MIN_FRAME_LEN: u32 = 7;
/// The smallest max-frame-size either side may announce.
pub const MIN_MAX_FRAME_SIZE: u32 = 256;
/// HAProxy's default max-frame-size (`tune.bufsize` 16384 minus 4).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16380;

/// The identity of a NOTIFY, echoed by its ACK.
///
/// HAProxy 2.x uses its stream counter (which may be 0) and frame-ids 1, 2...; 3.x uses odd
/// per-connection stream-ids and frame-id 1. Both are `u64` on the wire.
///
/// ```
/// use spop_proto::NotifyId;
/// let id = NotifyId::new(1, 1);
/// assert_eq!(id.to_string(), "stream-id 1, frame-id 1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NotifyId {
    /// The stream-id.
    pub stream_id: u64,
    /// The frame-id.
    pub frame_id: u64,
}

impl NotifyId {
    /// Builds an id.
    pub const fn new(stream_id: u64, frame_id: u64) -> Self {
        Self {
            stream_id,
            frame_id,
        }
    }
}

impl fmt::Display for NotifyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream-id {}, frame-id {}",
            self.stream_id, self.frame_id
        )
    }
}

/// The FLAGS field of a frame (u32, big-endian on the wire).
///
/// ```
/// use spop_proto::frame::FrameFlags;
/// assert!(FrameFlags::FIN.is_fin());
/// assert!((FrameFlags::FIN | FrameFlags::ABORT).is_abort());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameFlags(pub u32);

impl FrameFlags {
    /// Bit 0: last (or only) fragment of a frame.
    pub const FIN: Self = Self(1);
    /// Bit 1: abort a fragmented frame.
    pub const ABORT: Self = Self(2);

    /// FIN is set.
    pub const fn is_fin(self) -> bool {
        self.0 & 1 != 0
    }

    /// ABORT is set.
    pub const fn is_abort(self) -> bool {
        self.0 & 2 != 0
    }
}

impl std::ops::BitOr for FrameFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for FrameFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.is_fin() {
            parts.push("FIN".to_string());
        }
        if self.is_abort() {
            parts.push("ABORT".to_string());
        }
        let rest = self.0 & !3;
        if rest != 0 {
            parts.push(format!("{rest:#x}"));
        }
        if parts.is_empty() {
            f.write_str("0")
        } else {
            f.write_str(&parts.join("|"))
        }
    }
}

/// The fixed part of every frame after the length prefix.
///
/// ```
/// use spop_proto::frame::{FrameFlags, FrameHeader};
/// use spop_proto::FrameType;
/// let (hdr, len) = FrameHeader::decode(&[0x67, 0, 0, 0, 1, 5, 1]).unwrap();
/// assert_eq!(hdr, FrameHeader::new(FrameType::ACK, FrameFlags::FIN, 5, 1));
/// assert_eq!(len, 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Frame type.
    pub frame_type: FrameType,
    /// Flags.
    pub flags: FrameFlags,
    /// Stream-id.
    pub stream_id: u64,
    /// Frame-id.
    pub frame_id: u64,
}

impl FrameHeader {
    /// Builds a header.
    pub const fn new(
        frame_type: FrameType,
        flags: FrameFlags,
        stream_id: u64,
        frame_id: u64,
    ) -> Self {
        Self {
            frame_type,
            flags,
            stream_id,
            frame_id,
        }
    }

    /// The NOTIFY/ACK id of this frame.
    pub const fn id(&self) -> NotifyId {
        NotifyId::new(self.stream_id, self.frame_id)
    }

    /// Decodes a header from the start of a frame (after the length prefix); returns it and its
    /// encoded length.
    #[inline(always)]
    pub fn decode(frame: &[u8]) -> Result<(Self, usize), DecodeError> {
        let (rest, hdr) = parse::run(header, frame)?;
        Ok((hdr, frame.len() - rest.len()))
    }

    /// Appends the header (not the length prefix) to `dst`.
    pub fn encode<B: BufMut + ?Sized>(&self, dst: &mut B) {
        let mut b = [0u8; HEADER_MAX];
        let n = self.write(&mut b);
        dst.put_slice(&b[..n]);
    }

    /// Writes the header at the start of `out` (at least [`HEADER_MAX`] bytes); returns its
    /// length. One copy into the destination instead of four bounds-checked pushes.
    #[inline]
    fn write(&self, out: &mut [u8]) -> usize {
        out[0] = self.frame_type.0;
        out[1..5].copy_from_slice(&self.flags.0.to_be_bytes());
        let n = 5 + varint::write(&mut out[5..], self.stream_id);
        n + varint::write(&mut out[n..], self.frame_id)
    }
}

/// The longest frame header: type, flags and two ten-byte varints.
const HEADER_MAX: usize = 1 + 4 + 2 * varint::MAX_LEN;

/// The grammar's frame header: `<FRAME-TYPE:1 byte><FLAGS:4 bytes><STREAM-ID:varint><FRAME-ID:varint>`.
#[inline(always)]
fn header(i: &[u8]) -> parse::PResult<'_, FrameHeader> {
    let (i, t) = parse::byte(i, "frame header")?;
    let (i, flags) = parse::array::<4>(i, "frame header")?;
    let (i, sid) = parse::named("varint", varint::varint(i))?;
    let (i, fid) = parse::named("varint", varint::varint(i))?;
    let flags = FrameFlags(u32::from_be_bytes(flags));
    Ok((i, FrameHeader::new(FrameType(t), flags, sid, fid)))
}

/// Writes one complete frame (length prefix included) into `dst` as a single contiguous run:
/// the header, then whatever `payload` appends, then patches the length.
///
/// ```
/// use bytes::BytesMut;
/// use spop_proto::frame::{encode_frame, FrameFlags, FrameHeader};
/// use spop_proto::FrameType;
/// let mut buf = BytesMut::new();
/// encode_frame(&mut buf, FrameHeader::new(FrameType::ACK, FrameFlags::FIN, 5, 1), |_| {});
/// assert_eq!(&buf[..], &[0, 0, 0, 7, 0x67, 0, 0, 0, 1, 5, 1]);
/// ```
///
/// # Panics
///
/// If the frame would exceed `u32::MAX` bytes.
pub fn encode_frame(dst: &mut BytesMut, header: FrameHeader, payload: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    // the length prefix (patched below) and the header in one copy
    let mut b = [0u8; 4 + HEADER_MAX];
    let n = header.write(&mut b[4..]);
    dst.put_slice(&b[..4 + n]);
    payload(dst);
    let len = u32::try_from(dst.len() - start - 4).expect("frame larger than u32::MAX");
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// The length prefix and header of a frame whose payload is `payload_len` bytes, built on the
/// stack: the ACK path checks the frame's length against the negotiated size and writes both
/// with one header encoding.
pub(crate) struct FramePrefix {
    bytes: [u8; 4 + HEADER_MAX],
    len: usize,
    /// The frame's length, prefix excluded.
    pub(crate) frame_len: usize,
}

impl FramePrefix {
    #[inline]
    pub(crate) fn new(header: FrameHeader, payload_len: usize) -> Self {
        let mut bytes = [0u8; 4 + HEADER_MAX];
        let n = header.write(&mut bytes[4..]);
        let frame_len = n + payload_len;
        // saturated: a frame this long exceeds every negotiated size and is refused unwritten
        let prefix = u32::try_from(frame_len).unwrap_or(u32::MAX);
        bytes[..4].copy_from_slice(&prefix.to_be_bytes());
        Self {
            bytes,
            len: 4 + n,
            frame_len,
        }
    }

    /// Appends the prefix, then `payload` (of the length given to [`FramePrefix::new`]).
    #[inline]
    pub(crate) fn put(&self, dst: &mut BytesMut, payload: &[u8]) {
        debug_assert_eq!(self.frame_len + 4, self.len + payload.len());
        dst.reserve(self.len + payload.len());
        dst.extend_from_slice(&self.bytes[..self.len]);
        dst.extend_from_slice(payload);
    }
}

/// A whole frame split off the read buffer: its header and its payload (owned, zero-copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The header.
    pub header: FrameHeader,
    /// The payload (after the frame-id), sharing the read buffer's memory.
    pub payload: Bytes,
}

impl RawFrame {
    /// Parses the payload according to the frame type.
    pub fn parse(&self) -> Result<Frame<'_>, DecodeError> {
        Frame::parse(&self.header, &self.payload)
    }
}

/// A decoded frame of any type, borrowing its payload.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// HAPROXY-HELLO.
    HaproxyHello(HaproxyHello<'a>),
    /// HAPROXY-DISCONNECT.
    HaproxyDisconnect(Disconnect<'a>),
    /// A complete (FIN) NOTIFY, validated.
    Notify(MessageList<'a>),
    /// A NOTIFY without FIN: the first fragment of a fragmented NOTIFY (HAProxy 2.x).
    NotifyFragment(&'a [u8]),
    /// UNSET (type 0): a continuation fragment (HAProxy 2.x).
    Unset(&'a [u8]),
    /// AGENT-HELLO.
    AgentHello(AgentHello<'a>),
    /// AGENT-DISCONNECT.
    AgentDisconnect(Disconnect<'a>),
    /// ACK, validated.
    Ack(ActionList<'a>),
    /// A frame type this library does not know.
    Unknown(FrameType, &'a [u8]),
}

impl<'a> Frame<'a> {
    /// Parses and validates a payload according to `header`.
    pub fn parse(header: &FrameHeader, payload: &'a [u8]) -> Result<Self, DecodeError> {
        Ok(match header.frame_type {
            FrameType::HAPROXY_HELLO => Self::HaproxyHello(HaproxyHello::parse(payload)?),
            FrameType::HAPROXY_DISCONNECT => Self::HaproxyDisconnect(Disconnect::parse(payload)?),
            FrameType::NOTIFY if !header.flags.is_fin() => Self::NotifyFragment(payload),
            FrameType::NOTIFY => Self::Notify(MessageList::parse(payload)?),
            FrameType::UNSET => Self::Unset(payload),
            FrameType::AGENT_HELLO => Self::AgentHello(AgentHello::parse(payload)?),
            FrameType::AGENT_DISCONNECT => Self::AgentDisconnect(Disconnect::parse(payload)?),
            FrameType::ACK => Self::Ack(ActionList::parse(payload)?),
            other => Self::Unknown(other, payload),
        })
    }
}
