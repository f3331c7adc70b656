//! # spop-proto
//!
//! A sans-IO implementation of SPOP, the Stream Processing Offload Protocol that HAProxy's
//! SPOE filter speaks to external agents.
//!
//! This crate does no I/O, spawns nothing and never reads the clock: the caller passes bytes
//! and `Instant`s in and takes bytes, events and deadlines out. It works in any event loop
//! (tokio, mio, a fuzzer, a test). `spoa-runtime` drives it over tokio sockets.
//!
//! ## Layers
//! - [`varint`], [`TypedData`], [`KvList`]: the protocol's primitives.
//! - [`frame`]: every frame type in both directions, a [`FrameDecoder`](frame::FrameDecoder)
//!   that rejects oversized lengths before buffering, encoders producing whole frames.
//! - Typed extraction ([`extract`]: [`Message::get`], [`FromTypedData`], [`ArgError`]; serde
//!   behind the `serde` feature, module `de`), an owned value ([`OwnedTypedData`]), HAProxy's header
//!   blocks ([`http`]: [`HeaderBlock`]) and the variable names HAProxy accepts ([`VarName`]).
//!   Which Rust type each HAProxy fetch arrives as: [docs/fetch-types.md](https://github.com/spoa-rs/spoa-rs/blob/main/docs/fetch-types.md).
//! - [`AgentConnection`]: the agent side state machine: handshake, health checks,
//!   pipelining bookkeeping, fragment reassembly, drain, DISCONNECT with the right status.
//!
//! ## Driving an [`AgentConnection`]
//! Inputs are `handle_read`, `handle_eof`, `handle_timeout`; commands are `send_ack`,
//! `close`, `begin_drain`. After each, collect outputs in this order: `poll_transmit`
//! (write the bytes), `poll_event` (until `None`), `poll_timeout` (arm a timer). Read from
//! the socket only while `wants_read()`. A driver that counts its instructions reads NOTIFYs
//! through `read_notify` first (the fast lane, past the event queue) and the rest with
//! `handle_read_frames`.
//!
//! ```
//! use std::{sync::Arc, time::Instant};
//! use bytes::BytesMut;
//! use spop_proto::frame::HaproxyHello;
//! use spop_proto::{Actions, AgentConfig, AgentConnection, Event, Notify, NotifyId, Scope};
//!
//! let now = Instant::now();
//! let mut conn = AgentConnection::new(Arc::new(AgentConfig::default()), now);
//!
//! // Bytes as HAProxy would send them: a HELLO, then a NOTIFY.
//! let mut rbuf = BytesMut::new();
//! HaproxyHello::new(16380, "pipelining").encode(&mut rbuf);
//! Notify::builder(NotifyId::new(1, 1))
//!     .message("check-client-ip")
//!     .arg("ip", std::net::Ipv4Addr::new(192, 168, 0, 1))
//!     .build()
//!     .encode(&mut rbuf);
//!
//! conn.handle_read(now, &mut rbuf);
//! let mut wbuf = BytesMut::new();
//! while let Some(event) = conn.poll_event() {
//!     if let Event::Notify(notify) = event {
//!         let mut actions = Actions::new();
//!         actions.set_var(Scope::Transaction, "ip_score", 42i64);
//!         conn.send_ack(now, notify.id(), &actions).unwrap();
//!     }
//! }
//! conn.poll_transmit(&mut wbuf); // AGENT-HELLO then ACK, ready for one write
//! assert_eq!(&wbuf[wbuf.len() - 0x19..][..5], &[0, 0, 0, 0x15, 0x67]);
//! ```
//!
//! ## Limits
//! - Frames: at most the negotiated `max-frame-size` (our configured ceiling before the
//!   handshake); a larger length prefix is refused with status 3 before its body is read.
//! - NOTIFYs in flight: [`AgentConfig::max_in_flight`]; beyond it no frame is consumed.
//! - Reassembled NOTIFYs (fragmentation, off by default): [`AgentConfig::max_reassembly_size`].
//! - Arguments per message: 255 (a one-byte count on the wire).
//!
//! Every limit is therefore a function of the configuration: memory per connection is bounded
//! by roughly `max_in_flight * max_frame_size` plus one read buffer.

mod conn;
mod data;
#[cfg(feature = "serde")]
pub mod de;
mod error;
pub mod extract;
pub mod frame;
pub mod http;
mod owned;
mod parse;
mod status;
pub mod varint;
mod varname;

/// Entry points of the fuzz targets, for `fuzz/` and the regression tests only: behind the
/// `fuzzing` feature, hidden, without semver promise.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use conn::{
    AgentConfig, AgentConnection, Event, Negotiated, PAD_VAR_NAME, PRE_HANDSHAKE_MAX_FRAME_SIZE,
};
pub use data::{DataType, KvList, TypedData};
pub use error::{AckError, ConnectionError, DecodeError, ProtocolError, TimeoutKind};
pub use extract::{ArgError, ArgErrorKind, ArgRef, FromTypedData, ValueError};
pub use frame::{Action, Actions, Message, Notify, NotifyId, Scope};
pub use http::{Header, HeaderBlock, HeaderBlockError, HeaderIter};
pub use owned::OwnedTypedData;
pub use status::{FrameType, StatusCode};
pub use varname::{MAX_FULL_VAR_NAME_LEN, VarName, VarNameError, is_valid_var_name};
