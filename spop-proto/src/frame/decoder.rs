//! Splitting whole frames off a byte stream.

use bytes::{Buf, Bytes, BytesMut};

use super::{FrameHeader, MIN_FRAME_LEN, RawFrame};
use crate::error::DecodeError;

/// The most [`FrameDecoder::decode`] reserves in one go for a frame still arriving.
const RESERVE_STEP: usize = 8 * 1024;

/// A frame split off a byte slice: its header, its payload, and the bytes it took
/// (length prefix included).
pub type SplitFrame<'a> = (FrameHeader, &'a [u8], usize);

/// Splits the first whole frame off `buf` without copying.
///
/// Returns `Ok(None)` when more bytes are needed, or the header, the payload, and the total
/// number of bytes the frame takes in `buf` (length prefix included). The length prefix is
/// checked against `max_frame_size` and the 7-byte minimum before anything else, so an
/// oversized announcement fails with only 4 bytes read.
///
/// ```
/// use spop_proto::frame::split_frame;
/// use spop_proto::DecodeError;
/// let ack = [0, 0, 0, 7, 0x67, 0, 0, 0, 1, 5, 1];
/// let (hdr, payload, used) = split_frame(&ack, 16380).unwrap().unwrap();
/// assert_eq!((hdr.stream_id, payload.len(), used), (5, 0, 11));
/// assert_eq!(split_frame(&ack[..6], 16380), Ok(None));
/// assert_eq!(
///     split_frame(&[0xff, 0xff, 0xff, 0xff], 16380),
///     Err(DecodeError::FrameTooLarge { len: u32::MAX, max: 16380 })
/// );
/// ```
#[inline(always)]
pub fn split_frame(buf: &[u8], max_frame_size: u32) -> Result<Option<SplitFrame<'_>>, DecodeError> {
    let Some(len) = check_prefix(buf, max_frame_size)? else {
        return Ok(None);
    };
    let total = 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let frame = &buf[4..total];
    let (header, hdr_len) = FrameHeader::decode(frame)?;
    Ok(Some((header, &frame[hdr_len..], total)))
}

/// Reads and checks the length prefix; `None` if fewer than 4 bytes are buffered.
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
    if len < MIN_FRAME_LEN {
        return Err(DecodeError::FrameTooShort(len));
    }
    Ok(Some(len as usize))
}

/// Splits whole frames off a read buffer, in the manner of a `tokio_util` decoder.
///
/// The buffer never needs to hold more than one frame of at most `max_frame_size` plus the
/// 4-byte prefix: a larger announcement is an error before its body is read.
///
/// ```
/// use bytes::BytesMut;
/// use spop_proto::frame::FrameDecoder;
/// let mut buf = BytesMut::from(&[0u8, 0, 0, 7, 0x67, 0, 0, 0, 1, 5][..]);
/// let mut dec = FrameDecoder::new(16380);
/// assert_eq!(dec.decode(&mut buf), Ok(None)); // one byte missing
/// buf.extend_from_slice(&[1]);
/// let frame = dec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(frame.header.frame_id, 1);
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_size: u32,
}

impl FrameDecoder {
    /// A decoder accepting frames up to `max_frame_size` bytes (length prefix excluded).
    pub const fn new(max_frame_size: u32) -> Self {
        Self { max_frame_size }
    }

    /// The current limit.
    pub const fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Changes the limit (after negotiation).
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max;
    }

    /// Splits off the next whole frame, or returns `Ok(None)` (after reserving room for the
    /// rest of the frame) when more bytes are needed.
    ///
    /// On `Err` the stream cannot be resynchronised; the connection must be closed. When the
    /// header is malformed the frame's bytes have been consumed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, DecodeError> {
        let Some(len) = check_prefix(src, self.max_frame_size)? else {
            return Ok(None);
        };
        if src.len() < 4 + len {
            // Room for the rest, but never more than one step at a time: a peer announcing a
            // large frame and sending a few bytes must not make us reserve the whole length.
            src.reserve((4 + len - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        // The header is decoded in place, so the payload needs a single new handle on the read
        // buffer (one reference-count update; splitting the frame, slicing it and dropping the
        // frame took three).
        let (header, hdr_len) = match FrameHeader::decode(&src[4..4 + len]) {
            Ok(h) => h,
            Err(e) => {
                src.advance(4 + len);
                return Err(e);
            }
        };
        let payload = take_payload(src, 4 + len, len - hdr_len);
        Ok(Some(RawFrame { header, payload }))
    }
}

/// Consumes a whole frame of `used` bytes at the front of `src` and returns its payload (its
/// last `payload_len` bytes) as a handle on the same memory; an empty payload holds no
/// reference to the read buffer.
#[inline(always)]
pub(crate) fn take_payload(src: &mut BytesMut, used: usize, payload_len: usize) -> Bytes {
    src.advance(used - payload_len);
    if payload_len == 0 {
        return Bytes::new();
    }
    src.split_to(payload_len).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let mut dec = FrameDecoder::new(300);
        for len in 0..7u32 {
            let mut b = BytesMut::from(&len.to_be_bytes()[..]);
            assert_eq!(dec.decode(&mut b), Err(DecodeError::FrameTooShort(len)));
        }
        let mut b = BytesMut::from(&301u32.to_be_bytes()[..]);
        assert_eq!(
            dec.decode(&mut b),
            Err(DecodeError::FrameTooLarge { len: 301, max: 300 })
        );
        // exactly at the limit: waits for the body, having reserved room for it
        let mut b = BytesMut::from(&300u32.to_be_bytes()[..]);
        assert_eq!(dec.decode(&mut b), Ok(None));
        assert!(b.capacity() >= 304);
        // a large announced length is reserved one step at a time, never in one go
        let mut dec = FrameDecoder::new(1 << 20);
        let mut b = BytesMut::from(&(1u32 << 20).to_be_bytes()[..]);
        assert_eq!(dec.decode(&mut b), Ok(None));
        assert!(b.capacity() <= 4 + RESERVE_STEP + 64, "{}", b.capacity());
    }

    #[test]
    fn header_errors() {
        let mut dec = FrameDecoder::new(300);
        // truncated varint inside the header
        let mut b = BytesMut::from(&[0, 0, 0, 7, 3, 0, 0, 0, 1, 0xf0, 0x80][..]);
        assert_eq!(dec.decode(&mut b), Err(DecodeError::Truncated("varint")));
        let mut b = BytesMut::from(&[0, 0, 0, 7, 3, 0, 0, 0, 1, 1, 0xf1][..]);
        assert_eq!(dec.decode(&mut b), Err(DecodeError::Truncated("varint")));
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut dec = FrameDecoder::new(300);
        let one = [0u8, 0, 0, 7, 0x67, 0, 0, 0, 1, 5, 1];
        let mut b = BytesMut::new();
        for _ in 0..3 {
            b.extend_from_slice(&one);
        }
        b.extend_from_slice(&one[..5]);
        for _ in 0..3 {
            assert!(dec.decode(&mut b).unwrap().is_some());
        }
        assert_eq!(dec.decode(&mut b), Ok(None));
        assert_eq!(b.len(), 5);
    }
}
