//! HAPROXY-DISCONNECT and AGENT-DISCONNECT.

use bytes::BytesMut;

use super::{FrameFlags, FrameHeader, encode_frame};
use crate::data::{KvList, TypedData};
use crate::error::DecodeError;
use crate::status::{FrameType, StatusCode};

/// The longest `message` sent: HAProxy 2.x treats a longer one as an invalid frame.
pub const MAX_MESSAGE_LEN: usize = 255;

/// The payload of a DISCONNECT frame (either direction).
///
/// ```
/// use bytes::BytesMut;
/// use spop_proto::frame::{Disconnect, split_frame};
/// use spop_proto::{FrameType, StatusCode};
/// let mut buf = BytesMut::new();
/// Disconnect::encode(&mut buf, FrameType::AGENT_DISCONNECT, StatusCode::NORMAL, "normal");
/// assert_eq!(buf.len(), 4 + 0x25);
/// let (_, payload, _) = split_frame(&buf, 16380).unwrap().unwrap();
/// let d = Disconnect::parse(payload).unwrap();
/// assert_eq!((d.status(), d.message), (Some(StatusCode::NORMAL), Some(&b"normal"[..])));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Disconnect<'a> {
    /// `status-code` (any integer type).
    pub status_code: Option<u64>,
    /// `message` (STRING).
    pub message: Option<&'a [u8]>,
}

impl<'a> Disconnect<'a> {
    /// Parses the KV list of a DISCONNECT frame.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let mut d = Self::default();
        for kv in KvList::new(payload) {
            let (key, value) = kv?;
            match key {
                "status-code" => {
                    d.status_code = Some(
                        value
                            .as_u64()
                            .ok_or(DecodeError::UnexpectedType("status-code"))?,
                    );
                }
                "message" => match value {
                    TypedData::String(s) => d.message = Some(s),
                    _ => return Err(DecodeError::UnexpectedType("message")),
                },
                _ => {}
            }
        }
        Ok(d)
    }

    /// The status code, if present and within `u32`.
    pub fn status(&self) -> Option<StatusCode> {
        self.status_code
            .and_then(|c| u32::try_from(c).ok())
            .map(StatusCode)
    }

    /// Writes a whole DISCONNECT frame of type `frame_type` (AGENT- or HAPROXY-DISCONNECT).
    /// The message is cut to 255 bytes, at a character boundary.
    pub fn encode(dst: &mut BytesMut, frame_type: FrameType, status: StatusCode, message: &str) {
        let mut end = message.len().min(MAX_MESSAGE_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let hdr = FrameHeader::new(frame_type, FrameFlags::FIN, 0, 0);
        encode_frame(dst, hdr, |b| {
            KvList::put(b, "status-code", TypedData::Uint32(status.0));
            KvList::put(b, "message", TypedData::String(&message.as_bytes()[..end]));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_frame;

    #[test]
    fn long_message_is_cut() {
        let msg = "é".repeat(200);
        let mut buf = BytesMut::new();
        Disconnect::encode(&mut buf, FrameType::AGENT_DISCONNECT, StatusCode(150), &msg);
        let (_, payload, _) = split_frame(&buf, 16380).unwrap().unwrap();
        let d = Disconnect::parse(payload).unwrap();
        assert_eq!(d.message.unwrap().len(), 254);
        assert_eq!(d.status(), Some(StatusCode(150)));
    }
}
