//! Entry points for the fuzz targets and regression tests. Not a stable API.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::error::AckError;
use crate::frame::{
    Action, AgentHello, Capabilities, DEFAULT_MAX_FRAME_SIZE, Disconnect, Frame, FrameDecoder,
    FrameFlags, FrameHeader, HaproxyHello, MAX_MESSAGE_LEN, MIN_MAX_FRAME_SIZE, Messages,
    NotifyBuilder, parse_versions, split_frame,
};
use crate::{
    Actions, AgentConfig, AgentConnection, ConnectionError, Event, FrameType, Notify, NotifyId,
    PAD_VAR_NAME, Scope, StatusCode, TypedData,
};

/// Arbitrary bytes through the frame splitter, the decoder and every payload parser.
pub fn frame(data: &[u8]) {
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

// ---- roundtrip -------------------------------------------------------------------------------

/// Builds typed values, NOTIFYs (through [`NotifyBuilder`]), ACKs (through [`Actions`]),
/// HELLOs and DISCONNECTs from a script derived from `data`, encodes them, and checks that
/// decoding gives back exactly the model: values through [`TypedData::decode`], frames through
/// [`split_frame`] and [`Frame::parse`], and again through [`FrameDecoder`] and
/// [`Notify::parse`].
///
/// The script is a sequence of operations; each starts with a byte `op`. Past the end of the
/// data every byte reads as 0. Fields: `int` is a byte `n` then `n % 9` bytes, little-endian;
/// `len` a byte below 0xF0, else 12 bits (its low nibble, then a byte); `text` a length byte
/// and the bytes (lossily UTF-8); `value` a type byte (`% 10`, in wire order) then BOOL a byte
/// (bit 0), integers an `int` (cut to 32 bits for INT32/UINT32), addresses 4 or 16 bytes,
/// STRING and BINARY a `len` and the bytes.
///
/// - `op % 4 == 0`: `(op >> 2) + 1` typed values, each a `value`.
/// - `op % 4 == 1`: a NOTIFY: id (two `int`s, unless bit 2 reuses the
///   previous builder and its id), `(op >> 3) & 15` messages, each: a byte (bit 0 repeats the
///   previous message name if there is one, else a `text` follows), an
///   argument count (0..=255), then per argument a name selector (`s & 3`: 0 empty, 1 repeat
///   the name of argument `(s >> 2) % n` of this message if there is one, else a text) and a
///   value.
/// - `op % 4 == 2`: an ACK: id (bit 2: into the previous [`Actions`] after `clear`), an
///   action count (0..=255), each: a byte `b` (bit 0 unset-var, scope `Scope::ALL[(b >> 1) %
///   5]`), a name (text), and for set-var a value.
/// - `op % 4 == 3`: by `(op >> 2) & 3`: 0 a HAPROXY-HELLO, 1 an AGENT-HELLO (each a byte of
///   presence flags, then the fields present), else a DISCONNECT (bit 4 of `op`: the HAProxy
///   direction; a status int, then a message of `len` bytes, lossily UTF-8,
///   which the encoder cuts to 255 bytes).
pub fn roundtrip(data: &[u8]) {
    let mut s = RoundtripScript(data);
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    let mut builder: Option<(NotifyId, NotifyBuilder)> = None;
    let mut actions = Actions::new();
    while !s.is_empty() {
        let op = s.byte();
        match op % 4 {
            0 => values(&mut s, op),
            1 => expected.push(notify(&mut s, op, &mut builder, &mut wire)),
            2 => expected.push(ack(&mut s, op, &mut actions, &mut wire)),
            _ => expected.push(control(&mut s, op, &mut wire)),
        }
    }

    // the whole stream through split_frame and Frame::parse
    let mut rest = &wire[..];
    let mut headers = Vec::with_capacity(expected.len());
    for want in &expected {
        let (header, payload, used) = split_frame(rest, u32::MAX)
            .expect("an encoded frame splits")
            .expect("an encoded frame is whole");
        assert_eq!(header.flags, FrameFlags::FIN, "encoders set exactly FIN");
        let frame = Frame::parse(&header, payload)
            .unwrap_or_else(|e| panic!("an encoded frame parses: {e}: {want:?}"));
        want.check(&header, &frame, used - 4);
        headers.push(header);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "bytes after the last frame");

    // and through the FrameDecoder, with the NOTIFYs re-validated as owned `Notify`s
    let mut dec = FrameDecoder::new(u32::MAX);
    for (want, header) in expected.iter().zip(&headers) {
        let raw = dec
            .decode(&mut wire)
            .expect("an encoded frame decodes")
            .expect("an encoded frame is whole");
        assert_eq!(&raw.header, header);
        if let Expected::Notify { notify, messages } = want {
            let parsed = Notify::parse(raw.header.id(), raw.payload.clone())
                .expect("an encoded NOTIFY parses");
            assert_eq!(&parsed, notify);
            check_messages(parsed.messages(), messages);
        }
    }
    assert_eq!(dec.decode(&mut wire), Ok(None));
    assert!(wire.is_empty());
}

/// Reads a [`roundtrip`] script. Past the end of the data every byte reads as 0 (so counts
/// run out cheaply: a message of 255 arguments costs its count byte).
#[derive(Debug)]
struct RoundtripScript<'a>(&'a [u8]);

impl<'a> RoundtripScript<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0; N];
        let b = self.take(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// An integer: a byte `n`, then `n % 9` bytes, little-endian.
    fn int(&mut self) -> u64 {
        let n = usize::from(self.byte() % 9);
        self.take(n)
            .iter()
            .rev()
            .fold(0, |v, &b| (v << 8) | u64::from(b))
    }

    /// A length: a byte below 0xF0, else 12 bits: the low nibble, then a byte (up to 4095).
    fn len(&mut self) -> usize {
        let b = self.byte();
        if b < 0xF0 {
            usize::from(b)
        } else {
            (usize::from(b & 0x0F) << 8) | usize::from(self.byte())
        }
    }

    /// A name: a length byte, then that many bytes, lossily UTF-8.
    fn text(&mut self) -> String {
        let n = usize::from(self.byte());
        String::from_utf8_lossy(self.take(n)).into_owned()
    }

    /// A typed value: a type byte (`% 10`, in wire order), then: BOOL a byte (bit 0), integers
    /// an `int` (truncated to 32 bits for INT32/UINT32), addresses 4 or 16 bytes (zeros past
    /// the end), STRING/BINARY a `len` and the bytes.
    fn value(&mut self) -> TypedData<'a> {
        match self.byte() % 10 {
            0 => TypedData::Null,
            1 => TypedData::Bool(self.byte() & 1 != 0),
            2 => TypedData::Int32(self.int() as u32 as i32),
            3 => TypedData::Uint32(self.int() as u32),
            4 => TypedData::Int64(self.int() as i64),
            5 => TypedData::Uint64(self.int()),
            6 => TypedData::Ipv4(Ipv4Addr::from(self.array::<4>())),
            7 => TypedData::Ipv6(Ipv6Addr::from(self.array::<16>())),
            8 => {
                let n = self.len();
                TypedData::String(self.take(n))
            }
            _ => {
                let n = self.len();
                TypedData::Binary(self.take(n))
            }
        }
    }

    fn id(&mut self) -> NotifyId {
        NotifyId::new(self.int(), self.int())
    }

    fn bytes_if(&mut self, present: bool) -> Option<&'a [u8]> {
        present.then(|| {
            let n = self.len();
            self.take(n)
        })
    }
}

type MessageModel<'a> = (String, Vec<(String, TypedData<'a>)>);

#[derive(Debug)]
enum ActionModel<'a> {
    Set(Scope, String, TypedData<'a>),
    Unset(Scope, String),
}

impl ActionModel<'_> {
    fn action(&self) -> Action<'_> {
        match self {
            Self::Set(scope, name, value) => Action::SetVar {
                scope: *scope,
                name,
                value: *value,
            },
            Self::Unset(scope, name) => Action::UnsetVar {
                scope: *scope,
                name,
            },
        }
    }
}

/// A frame the script encoded, and what decoding it must give.
#[derive(Debug)]
enum Expected<'a> {
    Notify {
        notify: Notify,
        messages: Vec<MessageModel<'a>>,
    },
    Ack {
        id: NotifyId,
        actions: Vec<ActionModel<'a>>,
        frame_len: usize,
    },
    HaproxyHello(HaproxyHello<'a>),
    AgentHello(AgentHello<'a>),
    Disconnect {
        frame_type: FrameType,
        status: StatusCode,
        message: String,
    },
}

impl Expected<'_> {
    fn check(&self, header: &FrameHeader, frame: &Frame<'_>, len: usize) {
        let (ty, id) = match (self, frame) {
            (Self::Notify { notify, messages }, Frame::Notify(list)) => {
                assert_eq!(list.as_bytes(), &notify.payload()[..]);
                check_messages(list.iter(), messages);
                (FrameType::NOTIFY, notify.id())
            }
            (
                Self::Ack {
                    id,
                    actions,
                    frame_len,
                },
                Frame::Ack(list),
            ) => {
                assert_eq!(len, *frame_len, "Actions::frame_len");
                assert_eq!(list.is_empty(), actions.is_empty());
                let want: Vec<Action<'_>> = actions.iter().map(ActionModel::action).collect();
                assert_eq!(list.iter().collect::<Vec<_>>(), want);
                (FrameType::ACK, *id)
            }
            (Self::HaproxyHello(want), Frame::HaproxyHello(got)) => {
                assert_eq!(got, want);
                (FrameType::HAPROXY_HELLO, NotifyId::default())
            }
            (Self::AgentHello(want), Frame::AgentHello(got)) => {
                assert_eq!(got, want);
                (FrameType::AGENT_HELLO, NotifyId::default())
            }
            (
                Self::Disconnect {
                    frame_type,
                    status,
                    message,
                },
                Frame::AgentDisconnect(d) | Frame::HaproxyDisconnect(d),
            ) => {
                assert_eq!(d.status(), Some(*status));
                let got = d.message.expect("DISCONNECT message");
                let cut = got.len() < message.len();
                assert!(
                    message.as_bytes().starts_with(got)
                        && got.len() <= MAX_MESSAGE_LEN
                        && (!cut || got.len() > MAX_MESSAGE_LEN - 4)
                        && std::str::from_utf8(got).is_ok(),
                    "DISCONNECT message {message:?} sent as {:?}",
                    got.escape_ascii().to_string()
                );
                (*frame_type, NotifyId::default())
            }
            (want, got) => panic!("encoded {want:?}, decoded {got:?}"),
        };
        assert_eq!(header.frame_type, ty);
        assert_eq!(header.id(), id);
    }
}

fn check_messages(got: Messages<'_>, want: &[MessageModel<'_>]) {
    let mut count = 0;
    for (m, (name, args)) in got.zip(want) {
        count += 1;
        assert_eq!(m.name(), name);
        assert_eq!(m.len(), args.len());
        assert_eq!(m.args().len(), args.len());
        let mut n = 0;
        for (a, (name, value)) in m.args().zip(args) {
            n += 1;
            assert_eq!(a.name, name);
            assert_eq!(a.value, *value);
        }
        assert_eq!(n, args.len());
        // lookups by name find the first argument so named (names may repeat)
        for (name, _) in args.iter().take(4) {
            let first = args.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            assert_eq!(m.arg(name), first);
        }
        if let Some(i) = args.len().checked_sub(1) {
            assert_eq!(m.arg_at(i), Some(args[i].1));
        }
        assert_eq!(m.arg_at(args.len()), None);
    }
    assert_eq!(count, want.len(), "number of messages");
}

fn values(s: &mut RoundtripScript<'_>, op: u8) {
    let values: Vec<TypedData<'_>> = (0..=op >> 2).map(|_| s.value()).collect();
    let mut buf = Vec::new();
    for v in &values {
        let before = buf.len();
        v.encode(&mut buf);
        assert_eq!(buf.len() - before, v.encoded_len(), "encoded_len of {v:?}");
    }
    let mut rest = &buf[..];
    for v in &values {
        let (got, used) = TypedData::decode(rest).expect("an encoded value decodes");
        assert_eq!(got, *v);
        assert_eq!(got.data_type(), v.data_type());
        assert_eq!(used, v.encoded_len());
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
}

fn notify<'a>(
    s: &mut RoundtripScript<'a>,
    op: u8,
    builder: &mut Option<(NotifyId, NotifyBuilder)>,
    wire: &mut BytesMut,
) -> Expected<'a> {
    let (id, b) = match builder {
        Some(b) if op & 4 != 0 => b,
        _ => {
            let id = s.id();
            builder.insert((id, Notify::builder(id)))
        }
    };
    let mut messages: Vec<MessageModel<'a>> = Vec::new();
    for _ in 0..(op >> 3) & 15 {
        let sel = s.byte();
        let name = match messages.last() {
            Some((prev, _)) if sel & 1 != 0 => prev.clone(),
            _ => s.text(),
        };
        b.message(&name);
        let mut args: Vec<(String, TypedData<'a>)> = Vec::new();
        for _ in 0..s.byte() {
            let sel = s.byte();
            let name = match sel & 3 {
                0 => String::new(),
                1 if !args.is_empty() => args[usize::from(sel >> 2) % args.len()].0.clone(),
                _ => s.text(),
            };
            let value = s.value();
            b.arg(&name, value);
            args.push((name, value));
        }
        messages.push((name, args));
    }
    let notify = b.build();
    assert_eq!(notify.id(), *id);
    check_messages(notify.messages(), &messages);
    notify.encode(wire);
    Expected::Notify { notify, messages }
}

fn ack<'a>(
    s: &mut RoundtripScript<'a>,
    op: u8,
    actions: &mut Actions,
    wire: &mut BytesMut,
) -> Expected<'a> {
    let id = s.id();
    if op & 4 != 0 {
        actions.clear();
    } else {
        *actions = Actions::new();
    }
    let mut model = Vec::new();
    for _ in 0..s.byte() {
        let b = s.byte();
        let scope = Scope::ALL[usize::from(b >> 1) % Scope::ALL.len()];
        let name = s.text();
        if b & 1 == 0 {
            let value = s.value();
            actions.set_var_unchecked(scope, &name, value);
            model.push(ActionModel::Set(scope, name, value));
        } else {
            actions.unset_var_unchecked(scope, &name);
            model.push(ActionModel::Unset(scope, name));
        }
    }
    assert_eq!(actions.len(), model.len());
    assert_eq!(actions.is_empty(), model.is_empty());
    let want: Vec<Action<'_>> = model.iter().map(ActionModel::action).collect();
    assert_eq!(actions.iter().collect::<Vec<_>>(), want);
    actions.encode_ack(id, wire);
    Expected::Ack {
        id,
        frame_len: actions.frame_len(id),
        actions: model,
    }
}

fn control<'a>(s: &mut RoundtripScript<'a>, op: u8, wire: &mut BytesMut) -> Expected<'a> {
    match (op >> 2) & 3 {
        0 => {
            let f = s.byte();
            let hello = HaproxyHello {
                supported_versions: s.bytes_if(f & 1 != 0),
                max_frame_size: (f & 2 != 0).then(|| s.int()),
                capabilities: s.bytes_if(f & 4 != 0),
                engine_id: s.bytes_if(f & 8 != 0),
                healthcheck: f & 16 != 0,
            };
            hello.encode(wire);
            Expected::HaproxyHello(hello)
        }
        1 => {
            let f = s.byte();
            let hello = AgentHello {
                version: s.bytes_if(f & 1 != 0),
                max_frame_size: (f & 2 != 0).then(|| s.int()),
                capabilities: s.bytes_if(f & 4 != 0),
            };
            hello.encode(wire);
            Expected::AgentHello(hello)
        }
        _ => {
            let frame_type = if op & 16 != 0 {
                FrameType::HAPROXY_DISCONNECT
            } else {
                FrameType::AGENT_DISCONNECT
            };
            let status = StatusCode(s.int() as u32);
            let n = s.len();
            let message = String::from_utf8_lossy(s.take(n)).into_owned();
            Disconnect::encode(wire, frame_type, status, &message);
            Expected::Disconnect {
                frame_type,
                status,
                message,
            }
        }
    }
}

// ---- connection ------------------------------------------------------------------------------

/// What [`connection_observed`] saw, in order.
#[derive(Debug)]
pub enum Observed<'e> {
    /// An event taken from [`AgentConnection::poll_event`].
    Event(&'e Event),
    /// [`AgentConnection::send_ack`] accepted an ACK for this NOTIFY.
    Acked(NotifyId),
}

/// The largest read chunk of a connection script.
pub const MAX_READ_CHUNK: usize = 31;

/// Drives an agent connection with a script derived from `data`. Checks the invariants.
///
/// See [`connection_observed`].
pub fn connection(data: &[u8]) {
    connection_observed(data, |_| {});
}

/// Drives an agent connection with a script derived from `data`: read chunks with arbitrary
/// split points, time steps, ACKs and drains; reports events and accepted ACKs to `observe`.
///
/// The first byte is the configuration: bit 0 fragmentation, bit 1 no pipelining, bit 2 pad
/// empty ACKs, bit 3 idle timeout 500 ms, bits 4-7 max in flight - 1 (own max frame size
/// 16380, reassembly limit 4096). Then operations, by `op % 8`:
///
/// - 0..=3: the peer sends the next `op >> 3` bytes (at most 31; one read chunk). The driver
///   reads like a real one: chunks go to the read buffer only while
///   [`AgentConnection::wants_read`], each followed by `handle_read`.
/// - 4: the clock advances `(op >> 3) * 100` ms; `handle_timeout`.
/// - 5: ACK. Bit 3: with a set-var; bit 4: the oldest unanswered NOTIFY, else the newest;
///   bit 5: an id with nothing in flight instead (a NOTIFY already answered, or never
///   received); bit 6: with a set-var too large for the negotiated frame size (then, like a
///   handler should, again with no actions); bit 7: with a set-var and an unset-var in each
///   scope. Then `handle_read`, since an ACK may free a slot. Nothing when no NOTIFY is
///   unanswered (unless bit 5).
/// - 6: drain with a deadline `(op >> 3) * 50` ms away.
/// - 7: EOF from the peer.
///
/// At the end an id with nothing in flight is ACKed (refused), then EOF.
///
/// Invariants, checked after every operation: no panic; [`Event::Closed`] exactly once
/// by the end and no event after it; every transmitted frame well-formed (flags FIN, known
/// agent frame type, payload parses, AGENT-HELLO first and once, nothing after
/// AGENT-DISCONNECT, which carries the status of the `Closed` reason) and within the size
/// limit (negotiated, or our own before the handshake); every transmitted ACK is the next one
/// accepted by `send_ack` and answers a NOTIFY delivered as an event and not ACKed as often as
/// it was delivered; `send_ack` accepts or refuses exactly as the model says; the in-flight
/// count matches the model and stays within the limit; NOTIFY payloads, the read buffer's
/// length and capacity stay bounded by the configured limits; after `handle_timeout`, no
/// deadline in the past remains.
pub fn connection_observed(data: &[u8], mut observe: impl FnMut(Observed<'_>)) {
    let Some((&flags, mut data)) = data.split_first() else {
        return;
    };
    let config = AgentConfig {
        fragmentation: flags & 1 != 0,
        pipelining: flags & 2 == 0,
        pad_empty_ack: flags & 4 != 0,
        max_in_flight: usize::from(flags >> 4) + 1,
        max_reassembly_size: 4096,
        idle_timeout: (flags & 8 != 0).then(|| Duration::from_millis(500)),
        ..AgentConfig::default()
    };
    // an arbitrary origin; the script advances time by hand
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let mut d = Driver::new(Arc::new(config), now);
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        match op % 8 {
            0..=3 => {
                let n = usize::from(op >> 3).min(data.len());
                d.socket.push_back(&data[..n]);
                data = &data[n..];
            }
            4 => {
                now += Duration::from_millis(u64::from(op >> 3) * 100);
                d.conn.handle_timeout(now);
                if let Some(deadline) = d.conn.poll_timeout() {
                    assert!(deadline > now, "handle_timeout left a deadline in the past");
                }
            }
            5 => d.ack(now, op, &mut observe),
            6 => d
                .conn
                .begin_drain(now, now + Duration::from_millis(u64::from(op >> 3) * 50)),
            _ => d.conn.handle_eof(now),
        }
        d.pump(now);
        d.collect(&mut observe);
    }
    // ACKing an id with nothing in flight is refused, for the reason the state gives
    d.ack(now, 0x20, &mut observe);
    d.collect(&mut observe);
    d.conn.handle_eof(now);
    d.collect(&mut observe);
    assert_eq!(d.closed, 1, "Closed emitted exactly once by the end");
}

/// Zeros for an oversized set-var value.
static ZEROS: [u8; DEFAULT_MAX_FRAME_SIZE as usize] = [0; DEFAULT_MAX_FRAME_SIZE as usize];

/// The connection under test, the peer's unread bytes, and the model the outputs are checked
/// against.
struct Driver<'a> {
    conn: AgentConnection,
    /// Our own frame size limit (the limit before the handshake).
    own_max: u32,
    /// Chunks sent by the peer and not read yet.
    socket: VecDeque<&'a [u8]>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// NOTIFYs delivered and not yet accepted by `send_ack`, newest last.
    pending: Vec<NotifyId>,
    /// Per id: NOTIFY events minus ACKs accepted by `send_ack`.
    unanswered: HashMap<NotifyId, u32>,
    unanswered_total: usize,
    /// Per id: NOTIFY events minus ACK frames transmitted.
    unacked_on_wire: HashMap<NotifyId, u32>,
    /// ACKs accepted by `send_ack` and not transmitted yet: id and payload.
    accepted: VecDeque<(NotifyId, Vec<u8>)>,
    /// The last id accepted by `send_ack`.
    last_acked: Option<NotifyId>,
    frames_sent: usize,
    hello_sent: bool,
    /// The status of the transmitted AGENT-DISCONNECT.
    disconnect_sent: Option<StatusCode>,
    established: bool,
    closed: u32,
}

impl<'a> Driver<'a> {
    fn new(config: Arc<AgentConfig>, now: Instant) -> Self {
        Self {
            own_max: config.max_frame_size.max(MIN_MAX_FRAME_SIZE),
            conn: AgentConnection::new(config, now),
            socket: VecDeque::new(),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            pending: Vec::new(),
            unanswered: HashMap::new(),
            unanswered_total: 0,
            unacked_on_wire: HashMap::new(),
            accepted: VecDeque::new(),
            last_acked: None,
            frames_sent: 0,
            hello_sent: false,
            disconnect_sent: None,
            established: false,
            closed: 0,
        }
    }

    /// The frame size limit in force: negotiated, or our own before the handshake.
    fn limit(&self) -> u32 {
        self.conn
            .negotiated()
            .map_or(self.own_max, |n| n.max_frame_size)
    }

    /// Reads like a driver honouring `wants_read`: one chunk, then `handle_read`.
    fn pump(&mut self, now: Instant) {
        while self.conn.wants_read() {
            let Some(chunk) = self.socket.pop_front() else {
                break;
            };
            self.rbuf.extend_from_slice(chunk);
            self.read(now);
        }
    }

    fn read(&mut self, now: Instant) {
        self.conn.handle_read(now, &mut self.rbuf);
        // A reading connection keeps at most a partial frame; a full one (in-flight limit,
        // closed) keeps what it had plus the last chunk.
        let bound = 4 + self.own_max as usize + MAX_READ_CHUNK;
        assert!(
            self.rbuf.len() < bound,
            "read buffer holds {} bytes",
            self.rbuf.len()
        );
        if self.conn.wants_read() {
            assert!(
                self.rbuf.len() < 4 + self.conn.max_frame_size() as usize,
                "read buffer holds {} bytes, more than a partial frame",
                self.rbuf.len()
            );
        }
        // the decoder reserves room for one frame of at most the limit: allow for doubling
        assert!(
            self.rbuf.capacity() <= 4 * bound,
            "read buffer capacity {}",
            self.rbuf.capacity()
        );
    }

    /// Sends an ACK as `op` says (see [`connection_observed`]).
    fn ack(&mut self, now: Instant, op: u8, observe: &mut impl FnMut(Observed<'_>)) {
        let id = if op & 0x20 != 0 {
            let mut id = self
                .last_acked
                .unwrap_or_else(|| NotifyId::new(u64::MAX, u64::from(op)));
            while self.unanswered.contains_key(&id) {
                id.frame_id = id.frame_id.wrapping_add(1);
            }
            id
        } else if self.pending.is_empty() {
            return;
        } else if op & 0x10 != 0 {
            self.pending.remove(0)
        } else {
            self.pending.pop().expect("not empty")
        };
        let mut actions = Actions::new();
        if op & 0x08 != 0 {
            actions.set_var(Scope::Transaction, "v", i64::from(op));
        }
        if op & 0x80 != 0 {
            for scope in Scope::ALL {
                actions
                    .set_var(scope, scope.as_str(), u32::from(op))
                    .unset_var(scope, "u");
            }
        }
        if op & 0x40 != 0 {
            let len = (self.limit() as usize).min(ZEROS.len());
            actions.set_var(Scope::Request, "big", &ZEROS[..len]);
        }
        if let Err(AckError::FrameTooLarge { .. }) = self.send_ack(now, id, &actions, observe) {
            // what a handler should do: answer without actions, so HAProxy does not wait
            let _ = self.send_ack(now, id, &Actions::new(), observe);
        }
        // an ACK may free a slot for frames already buffered
        self.read(now);
    }

    /// `send_ack`, with its outcome checked against the model.
    fn send_ack(
        &mut self,
        now: Instant,
        id: NotifyId,
        actions: &Actions,
        observe: &mut impl FnMut(Observed<'_>),
    ) -> Result<(), AckError> {
        let mut padded = Actions::new();
        let sent = if actions.is_empty() && self.conn.config().pad_empty_ack {
            padded.unset_var(Scope::Transaction, PAD_VAR_NAME);
            &padded
        } else {
            actions
        };
        let mut frame = BytesMut::new();
        sent.encode_ack(id, &mut frame);
        let len = frame.len() - 4;
        let max = self.limit();
        let expected = if self.closed > 0 {
            Err(AckError::Closed)
        } else if !self.established {
            Err(AckError::NotEstablished)
        } else if !self.unanswered.contains_key(&id) {
            Err(AckError::UnknownNotify(id))
        } else if len > max as usize {
            Err(AckError::FrameTooLarge { len, max })
        } else {
            Ok(())
        };
        let res = self.conn.send_ack(now, id, actions);
        assert_eq!(
            res,
            expected,
            "send_ack({id}) with {} actions",
            actions.len()
        );
        if res.is_ok() {
            let left = self.unanswered.get_mut(&id).expect("checked above");
            *left -= 1;
            if *left == 0 {
                self.unanswered.remove(&id);
            }
            self.unanswered_total -= 1;
            self.accepted.push_back((id, sent.as_bytes().to_vec()));
            self.last_acked = Some(id);
            observe(Observed::Acked(id));
        }
        res
    }

    /// Takes the outputs and checks them.
    fn collect(&mut self, observe: &mut impl FnMut(Observed<'_>)) {
        self.wbuf.clear();
        let n = self.conn.poll_transmit(&mut self.wbuf);
        assert_eq!(n, self.wbuf.len());
        assert!(
            n == 0 || self.closed == 0,
            "{n} bytes transmitted after Closed"
        );
        self.check_transmitted();
        assert!(
            self.accepted.is_empty(),
            "an ACK accepted by send_ack was not transmitted"
        );
        while let Some(ev) = self.conn.poll_event() {
            assert_eq!(self.closed, 0, "{ev:?} after Closed");
            match &ev {
                Event::Established(n) => {
                    assert!(!self.established, "Established twice");
                    assert!(self.hello_sent, "Established without an AGENT-HELLO");
                    assert_eq!(Some(n), self.conn.negotiated());
                    assert!((MIN_MAX_FRAME_SIZE..=self.own_max).contains(&n.max_frame_size));
                    self.established = true;
                }
                Event::Notify(n) => {
                    assert!(self.established, "NOTIFY before Established");
                    let config = self.conn.config();
                    let mut bound = self.limit() as usize;
                    if config.fragmentation {
                        bound = bound.max(config.max_reassembly_size);
                    }
                    assert!(
                        n.payload().len() <= bound,
                        "NOTIFY of {} bytes",
                        n.payload().len()
                    );
                    *self.unanswered.entry(n.id()).or_default() += 1;
                    self.unanswered_total += 1;
                    *self.unacked_on_wire.entry(n.id()).or_default() += 1;
                    self.pending.push(n.id());
                }
                Event::Closed(e) => {
                    self.closed += 1;
                    assert_eq!(
                        self.disconnect_sent,
                        e.status(),
                        "AGENT-DISCONNECT status on {e}"
                    );
                    if let ConnectionError::Eof { clean: true } = e {
                        assert!(
                            self.unanswered_total == 0 && self.rbuf.is_empty(),
                            "clean EOF with {} in flight, {} bytes buffered",
                            self.unanswered_total,
                            self.rbuf.len()
                        );
                    }
                }
                Event::FrameSkipped(_) => {}
            }
            observe(Observed::Event(&ev));
        }
        assert_eq!(self.conn.is_closed(), self.closed == 1);
        if self.closed > 0 {
            assert!(!self.conn.wants_read());
            assert_eq!(self.conn.poll_timeout(), None);
        }
        assert_eq!(self.conn.in_flight(), self.unanswered_total);
        let limit = match self.conn.negotiated() {
            Some(n) if !n.capabilities.pipelining => 1,
            _ => self.conn.config().max_in_flight.max(1),
        };
        assert!(self.conn.in_flight() <= limit, "in flight above the limit");
    }

    /// Every transmitted frame: well-formed, within the limit, in protocol order, and every
    /// ACK the next accepted one, for a delivered NOTIFY.
    fn check_transmitted(&mut self) {
        let limit = self.limit() as usize;
        let wbuf = std::mem::take(&mut self.wbuf);
        let mut out = &wbuf[..];
        while !out.is_empty() {
            let (header, payload, used) = split_frame(out, u32::MAX)
                .expect("transmitted frame is well-formed")
                .expect("transmitted frame is whole");
            assert!(
                used - 4 <= limit,
                "transmitted {} frame of {} bytes exceeds the limit of {limit}",
                header.frame_type,
                used - 4
            );
            assert_eq!(
                header.flags,
                FrameFlags::FIN,
                "agent frames carry exactly FIN"
            );
            assert!(
                self.disconnect_sent.is_none(),
                "frame after AGENT-DISCONNECT"
            );
            let frame = Frame::parse(&header, payload)
                .unwrap_or_else(|e| panic!("transmitted {} payload: {e}", header.frame_type));
            match frame {
                Frame::AgentHello(hello) => {
                    assert_eq!(self.frames_sent, 0, "AGENT-HELLO is the first frame");
                    assert_eq!(header.id(), NotifyId::default());
                    let n = self
                        .conn
                        .negotiated()
                        .expect("AGENT-HELLO after negotiation");
                    assert_eq!(hello.max_frame_size, Some(u64::from(n.max_frame_size)));
                    assert!(
                        hello
                            .version
                            .is_some_and(|v| parse_versions(v).any(|v| v == 2000))
                    );
                    assert_eq!(
                        hello.capabilities.map(Capabilities::parse),
                        Some(n.capabilities)
                    );
                    self.hello_sent = true;
                }
                Frame::Ack(_) => {
                    assert!(self.hello_sent, "ACK before AGENT-HELLO");
                    let id = header.id();
                    let (want_id, want) = self
                        .accepted
                        .pop_front()
                        .expect("transmitted ACK was accepted by send_ack");
                    assert_eq!((id, payload), (want_id, &want[..]), "transmitted ACK");
                    let left = self
                        .unacked_on_wire
                        .get_mut(&id)
                        .filter(|n| **n > 0)
                        .unwrap_or_else(|| {
                            panic!("ACK for {id}: not delivered as NOTIFY, or ACKed more often")
                        });
                    *left -= 1;
                }
                Frame::AgentDisconnect(d) => {
                    assert_eq!(header.id(), NotifyId::default());
                    self.disconnect_sent = Some(d.status().expect("AGENT-DISCONNECT status"));
                }
                other => panic!("the agent transmitted {other:?}"),
            }
            self.frames_sent += 1;
            out = &out[used..];
        }
        self.wbuf = wbuf;
    }
}
