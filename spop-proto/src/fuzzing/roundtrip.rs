//! The `roundtrip` target: values and frames built from a script, encoded, and decoded back
//! to exactly the model.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;

use crate::frame::{
    Action, AgentHello, Disconnect, Frame, FrameDecoder, FrameFlags, FrameHeader, HaproxyHello,
    MAX_MESSAGE_LEN, Messages, NotifyBuilder, split_frame,
};
use crate::{Actions, FrameType, Notify, NotifyId, Scope, StatusCode, TypedData};

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
    #[allow(clippy::cast_possible_truncation)] // the script cuts integers to 32 bits on purpose
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

#[allow(clippy::cast_possible_truncation)] // the script cuts the status to 32 bits on purpose
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
