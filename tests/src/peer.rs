//! HAProxy's side of a connection at the frame level, shared by every test peer (the
//! runtime's loopback stub, the hostile matrix's blocking [`Peer`](crate::hostile::Peer)):
//! the frames an agent sends, decoded into owned values ([`Reply`] in a [`Received`]); a
//! sans-IO [`FrameReader`] that splits them off the bytes read; and builders of the frames
//! HAProxy sends, well-formed or not.
//!
//! ```
//! use spop_proto::NotifyId;
//! use spop_tests::peer::{FrameReader, Reply, notify_frame, notify_i};
//!
//! // what an agent would answer: an ACK setting txn.i
//! let mut actions = spop_proto::Actions::new();
//! actions.set_var(spop_proto::Scope::Transaction, "i", 7i64);
//! let mut wire = bytes::BytesMut::new();
//! actions.encode_ack(NotifyId::new(1, 1), &mut wire);
//!
//! let mut reader = FrameReader::new();
//! reader.buf_mut().extend_from_slice(&wire);
//! let got = reader.next_frame().unwrap().unwrap();
//! assert_eq!(got.into_ack(), (NotifyId::new(1, 1), vec!["set-var txn.i = int64:7".to_string()]));
//! assert!(reader.next_frame().unwrap().is_none());
//! assert!(!notify_frame(&notify_i(NotifyId::new(1, 1), 7)).is_empty());
//! ```

use std::fmt;

use bytes::BytesMut;
use spop_proto::frame::{Frame, FrameDecoder, FrameFlags, FrameHeader, HaproxyHello, encode_frame};
use spop_proto::{DecodeError, FrameType, Notify, NotifyId};

// ---------------------------------------------------------------------------------------------
// Frames HAProxy sends
// ---------------------------------------------------------------------------------------------

/// A HAPROXY-HELLO: version 2.0, `capabilities`, and `max_frame_size` (UINT32, or UINT64 above
/// `u32::MAX`).
pub fn hello(max_frame_size: u64, capabilities: &str) -> Vec<u8> {
    let mut h = HaproxyHello::new(16380, capabilities);
    h.max_frame_size = Some(max_frame_size);
    hello_frame(&h)
}

/// Encodes a HAPROXY-HELLO.
pub fn hello_frame(hello: &HaproxyHello<'_>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    hello.encode(&mut buf);
    buf.to_vec()
}

/// A NOTIFY with message `m` carrying `i` (INT64, as HAProxy sends integer samples).
pub fn notify_i(id: NotifyId, i: i64) -> Notify {
    Notify::builder(id).message("m").arg("i", i).build()
}

/// Encodes a NOTIFY.
pub fn notify_frame(notify: &Notify) -> Vec<u8> {
    let mut buf = BytesMut::new();
    notify.encode(&mut buf);
    buf.to_vec()
}

/// One frame of any type, flags, ids and payload, length prefix computed.
pub fn raw_frame(
    frame_type: FrameType,
    flags: u32,
    stream_id: u64,
    frame_id: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(
        &mut buf,
        FrameHeader::new(frame_type, FrameFlags(flags), stream_id, frame_id),
        |b| b.extend_from_slice(payload),
    );
    buf.to_vec()
}

/// A length prefix announcing `len`, followed by `body` zero bytes.
pub fn length_prefix(len: u32, body: usize) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.resize(4 + body, 0);
    v
}

// ---------------------------------------------------------------------------------------------
// Frames the agent sends
// ---------------------------------------------------------------------------------------------

/// The payload of a frame received from the agent, decoded into owned values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// AGENT-HELLO.
    AgentHello {
        /// `version`.
        version: Option<String>,
        /// `max-frame-size`.
        max_frame_size: Option<u64>,
        /// `capabilities`.
        capabilities: Option<String>,
    },
    /// ACK, its actions rendered with `Display` (`set-var txn.x = int64:1`).
    Ack(Vec<String>),
    /// AGENT-DISCONNECT.
    Disconnect {
        /// `status-code`.
        status: Option<u64>,
        /// `message`.
        message: String,
    },
    /// Anything else (the agent should never send it).
    Other(String),
    /// A payload that does not parse as its frame type says.
    Undecodable(String),
}

/// One frame received from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Its header.
    pub header: FrameHeader,
    /// Its payload.
    pub reply: Reply,
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        match &self.reply {
            Reply::AgentHello {
                version,
                max_frame_size,
                capabilities,
            } => write!(
                f,
                "AGENT-HELLO version {version:?} max-frame-size {max_frame_size:?} \
                 capabilities {capabilities:?}"
            ),
            Reply::Ack(actions) => write!(f, "ACK {} {actions:?}", h.id()),
            Reply::Disconnect { status, message } => {
                write!(f, "AGENT-DISCONNECT status {status:?} {message:?}")
            }
            Reply::Other(what) => write!(f, "{:?} frame: {what}", h.frame_type),
            Reply::Undecodable(e) => {
                write!(f, "{:?} frame, undecodable payload: {e}", h.frame_type)
            }
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn decode_reply(header: &FrameHeader, payload: &[u8]) -> Reply {
    match Frame::parse(header, payload) {
        Ok(Frame::AgentHello(h)) => Reply::AgentHello {
            version: h.version.map(lossy),
            max_frame_size: h.max_frame_size,
            capabilities: h.capabilities.map(lossy),
        },
        Ok(Frame::Ack(list)) => Reply::Ack(list.iter().map(|a| a.to_string()).collect()),
        Ok(Frame::AgentDisconnect(d)) => Reply::Disconnect {
            status: d.status_code,
            message: d.message.map(lossy).unwrap_or_default(),
        },
        Ok(other) => Reply::Other(format!("{other:?}")),
        Err(e) => Reply::Undecodable(e.to_string()),
    }
}

impl Received {
    /// The ACK's id and actions; panics on any other frame.
    #[track_caller]
    pub fn into_ack(self) -> (NotifyId, Vec<String>) {
        match self.reply {
            Reply::Ack(actions) => {
                assert_eq!(self.header.flags, FrameFlags::FIN, "ACK flags");
                (self.header.id(), actions)
            }
            other => panic!("expected an ACK, got {other:?}"),
        }
    }

    /// The AGENT-DISCONNECT status code; panics on any other frame.
    #[track_caller]
    pub fn into_disconnect_status(self) -> u64 {
        match self.reply {
            Reply::Disconnect { status, .. } => status.expect("AGENT-DISCONNECT without status"),
            other => panic!("expected an AGENT-DISCONNECT, got {other:?}"),
        }
    }
}

/// Splits the frames an agent sends off the bytes read from it, sans IO: read into
/// [`buf_mut`](Self::buf_mut), then take frames with [`next_frame`](Self::next_frame).
#[derive(Debug)]
pub struct FrameReader {
    rbuf: BytesMut,
    decoder: FrameDecoder,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader accepting frames up to 1 MiB: larger than anything an agent may send, since
    /// the agent's limits are what is tested.
    pub fn new() -> Self {
        Self {
            rbuf: BytesMut::with_capacity(16 * 1024),
            decoder: FrameDecoder::new(1 << 20),
        }
    }

    /// The receive buffer, to read into.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// The bytes received and not yet split into frames.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf
    }

    /// The next whole frame, decoded; `Ok(None)` when more bytes are needed; `Err` for a
    /// length prefix or header the decoder refuses.
    pub fn next_frame(&mut self) -> Result<Option<Received>, DecodeError> {
        Ok(self.decoder.decode(&mut self.rbuf)?.map(|raw| Received {
            reply: decode_reply(&raw.header, &raw.payload),
            header: raw.header,
        }))
    }
}
