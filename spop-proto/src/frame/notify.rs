//! NOTIFY: messages with ordered, typed arguments.

use bytes::{BufMut, Bytes, BytesMut};

use super::{FrameFlags, FrameHeader, NotifyId, encode_frame};
use crate::data::{TypedData, name, put_raw_str, raw_str, same_name, typed_data};
use crate::error::DecodeError;
use crate::parse::{self, Check, Emit, MResult, Mode, byte};
use crate::status::FrameType;

/// One argument of a message. Names may be empty (unnamed `args`) or repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg<'a> {
    /// The argument name (`""` when unnamed).
    pub name: &'a str,
    /// The typed value.
    pub value: TypedData<'a>,
}

/// One message of a NOTIFY, borrowed from a validated payload.
///
/// Two messages are equal when their names and their arguments are.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    /// Checked as UTF-8 when the list was validated; turned into a `&str` only when asked for
    /// (lookups compare bytes).
    name: &'a [u8],
    nb_args: u8,
    /// The validated payload from the first argument on: the `nb_args` arguments, and maybe
    /// the messages after them (iteration stops after `nb_args`, so a lookup that finds a
    /// message need not walk its arguments to find where they end).
    args: &'a [u8],
}

impl PartialEq for Message<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.args().eq(other.args())
    }
}

impl Eq for Message<'_> {}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("name", &self.name())
            .field("args", &self.args().collect::<Vec<_>>())
            .finish()
    }
}

impl<'a> Message<'a> {
    /// The message name (the `spoe-message` section name).
    ///
    /// ```
    /// use spop_proto::{Notify, NotifyId};
    /// let n = Notify::builder(NotifyId::new(1, 1)).message("check").build();
    /// assert_eq!(n.messages().next().unwrap().name(), "check");
    /// ```
    pub fn name(&self) -> &'a str {
        // validated with the whole list: never the fallback
        std::str::from_utf8(self.name).unwrap_or_default()
    }

    /// The number of arguments.
    pub const fn len(&self) -> usize {
        self.nb_args as usize
    }

    /// True when the message has no arguments.
    pub const fn is_empty(&self) -> bool {
        self.nb_args == 0
    }

    /// The arguments, in order.
    pub const fn args(&self) -> Args<'a> {
        Args {
            rest: self.args,
            left: self.nb_args,
        }
    }

    /// The value of the first argument with this name.
    ///
    /// ```
    /// use spop_proto::{Notify, NotifyId, TypedData};
    /// let n = Notify::builder(NotifyId::new(1, 1)).message("m").arg("a", 1i64).arg("a", 2i64).build();
    /// let m = n.messages().next().unwrap();
    /// assert_eq!(m.arg("a"), Some(TypedData::Int64(1)));
    /// assert_eq!(m.arg_at(1), Some(TypedData::Int64(2)));
    /// assert_eq!(m.arg("b"), None);
    /// ```
    pub fn arg(&self, name: &str) -> Option<TypedData<'a>> {
        // `self.args().find(|a| a.name == name)`, with the argument rule taken apart: on the
        // validated region a name equals `name` exactly when its bytes do, and the values of
        // the other arguments are only stepped over (`Check`)
        let mut rest = self.args;
        for _ in 0..self.nb_args {
            let (i, raw) = raw_str(rest, "argument name").ok()?;
            if same_name(raw, name.as_bytes()) {
                return typed_data::<Emit>(i).ok().map(|(_, v)| v);
            }
            rest = typed_data::<Check>(i).ok()?.0;
        }
        None
    }

    /// The value of the argument at `index`.
    pub fn arg_at(&self, index: usize) -> Option<TypedData<'a>> {
        self.args().nth(index).map(|a| a.value)
    }
}

/// Iterator over the arguments of a [`Message`].
#[derive(Debug, Clone)]
pub struct Args<'a> {
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
        // The region was validated when the NOTIFY was parsed.
        let (rest, a) = arg::<Emit>(self.rest).ok()?;
        self.rest = rest;
        Some(a)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Args<'_> {}

/// The grammar's argument: `<NAME:name><VALUE:typed data>` (the name may be empty).
#[inline(always)]
fn arg<'a, M: Mode>(i: &'a [u8]) -> MResult<'a, M, Arg<'a>> {
    let (i, name) = name::<M>(i, "argument name")?;
    let (i, value) = typed_data::<M>(i)?;
    Ok((
        i,
        M::combine(name, value, |name, value| Arg { name, value }),
    ))
}

/// The grammar's message: `<NAME:name><NB-ARGS:1 byte>` then that many arguments, kept as
/// the bytes they span (checked, not built: [`Args`] builds them).
#[inline(always)]
fn message<'a, M: Mode>(i: &'a [u8]) -> MResult<'a, M, Message<'a>> {
    // the name rule, keeping the bytes: UTF-8 is checked in both modes (ASCII without the
    // validator), the `&str` made only by `Message::name`
    let (i, name) = raw_str(i, "message name")?;
    if !(name.is_ascii() || std::str::from_utf8(name).is_ok()) {
        return parse::fail_m::<M, _>(DecodeError::InvalidUtf8("message name"));
    }
    let (args, nb_args) = byte(i, "message nb-args")?;
    let mut i = args;
    for _ in 0..nb_args {
        i = arg::<Check>(i)?.0;
    }
    let args = &args[..args.len() - i.len()];
    Ok((
        i,
        M::bind(|| Message {
            name,
            nb_args,
            args,
        }),
    ))
}

/// The grammar's LIST-OF-MESSAGES rule in `Check` mode: the reference validation.
pub(crate) fn grammar_check(payload: &[u8]) -> Result<(), DecodeError> {
    parse::run(parse::list(message::<Check>), payload).map(|_| ())
}

/// The usual shape of a NOTIFY payload recognised in one tight pass: names and STRING values
/// shorter than 240 bytes (one-byte lengths), ASCII names, integers below 240 (one-byte
/// varints), any address. True only for payloads [`grammar_check`] accepts (a strict subset:
/// property-tested and fuzzed); false sends the payload to the grammar, which accepts it or
/// names the error. HAProxy's NOTIFYs are almost always of this shape, so the grammar's
/// general rules only run for the rest.
#[inline]
pub(crate) fn quick_check(mut p: &[u8]) -> bool {
    /// A one-byte length, then that many bytes; the rest after them.
    #[inline(always)]
    fn short(p: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&n, rest) = p.split_first()?;
        if n >= 240 {
            return None;
        }
        let s = rest.split_at_checked(usize::from(n))?;
        Some(s)
    }
    while !p.is_empty() {
        let Some((name, rest)) = short(p) else {
            return false;
        };
        let Some((&nb_args, mut rest)) = rest.split_first() else {
            return false;
        };
        if !name.is_ascii() {
            return false;
        }
        for _ in 0..nb_args {
            let Some((name, r)) = short(rest) else {
                return false;
            };
            let Some((&tb, r)) = r.split_first() else {
                return false;
            };
            if !name.is_ascii() {
                return false;
            }
            let value_len = match tb & 0x0F {
                0 | 1 => 0,
                // one-byte varints: in range for every integer type
                2..=5 => match r.first() {
                    Some(&v) if v < 240 => 1,
                    _ => return false,
                },
                6 => 4,
                7 => 16,
                8 | 9 => match r.first() {
                    Some(&n) if n < 240 => 1 + usize::from(n),
                    _ => return false,
                },
                _ => return false,
            };
            let Some(r) = r.get(value_len..) else {
                return false;
            };
            rest = r;
        }
        p = rest;
    }
    true
}

/// A validated LIST-OF-MESSAGES, borrowed.
///
/// ```
/// use spop_proto::frame::MessageList;
/// use spop_proto::DecodeError;
/// // message "m" announcing 2 args but carrying none
/// assert_eq!(MessageList::parse(&[1, b'm', 2]), Err(DecodeError::Truncated("argument name")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageList<'a> {
    payload: &'a [u8],
}

impl<'a> MessageList<'a> {
    /// Validates a whole NOTIFY payload: names UTF-8, types known, counts honoured, nothing
    /// truncated. Iteration afterwards cannot fail.
    #[inline(always)]
    pub fn parse(payload: &'a [u8]) -> Result<Self, DecodeError> {
        if !quick_check(payload) {
            grammar_check(payload)?;
        }
        Ok(Self { payload })
    }

    /// The messages, in order.
    pub const fn iter(&self) -> Messages<'a> {
        Messages { rest: self.payload }
    }

    /// The raw payload.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.payload
    }
}

impl<'a> IntoIterator for MessageList<'a> {
    type Item = Message<'a>;
    type IntoIter = Messages<'a>;
    fn into_iter(self) -> Messages<'a> {
        self.iter()
    }
}

/// Iterator over the messages of a validated NOTIFY.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // The payload was validated when the NOTIFY was parsed (or built by `NotifyBuilder`).
        parse::next_item(&mut self.rest, message::<Emit>)
    }
}

/// A received NOTIFY: its id and its validated payload, owned.
///
/// The payload shares the connection's read buffer (no copy); a `Notify` is `Send + 'static`
/// and can move to a handler task.
///
/// ```
/// use spop_proto::{Notify, NotifyId, TypedData};
/// use std::net::Ipv4Addr;
/// let notify = Notify::builder(NotifyId::new(1, 1))
///     .message("check-client-ip")
///     .arg("ip", Ipv4Addr::new(192, 168, 0, 1))
///     .build();
/// let msg = notify.message("check-client-ip").unwrap();
/// assert_eq!(msg.arg("ip").and_then(|v| v.as_ip()), Some("192.168.0.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    id: NotifyId,
    payload: Bytes,
}

impl Notify {
    /// Validates `payload` (a LIST-OF-MESSAGES) and wraps it.
    pub fn parse(id: NotifyId, payload: Bytes) -> Result<Self, DecodeError> {
        MessageList::parse(&payload)?;
        Ok(Self { id, payload })
    }

    /// Wraps a payload [`MessageList::parse`] accepted.
    pub(crate) const fn validated(id: NotifyId, payload: Bytes) -> Self {
        Self { id, payload }
    }

    /// Starts building a NOTIFY in memory (tests, the HAProxy side).
    pub fn builder(id: NotifyId) -> NotifyBuilder {
        NotifyBuilder {
            id,
            buf: BytesMut::new(),
            count_pos: None,
        }
    }

    /// The stream-id and frame-id, to be echoed by the ACK.
    pub const fn id(&self) -> NotifyId {
        self.id
    }

    /// The messages, in order.
    pub fn messages(&self) -> Messages<'_> {
        Messages {
            rest: &self.payload,
        }
    }

    /// The first message with this name.
    pub fn message(&self, name: &str) -> Option<Message<'_>> {
        // `self.messages().find(|m| m.name == name)`, names compared as bytes (see
        // `Message::arg`), the other messages only stepped over (`Check`), and the one found
        // not walked at all: its arguments are where its count byte ends
        let mut rest: &[u8] = &self.payload;
        while !rest.is_empty() {
            let (i, raw) = raw_str(rest, "message name").ok()?;
            if same_name(raw, name.as_bytes()) {
                let (args, nb_args) = byte(i, "message nb-args").ok()?;
                return Some(Message {
                    name: raw,
                    nb_args,
                    args,
                });
            }
            rest = message::<Check>(rest).ok()?.0;
        }
        None
    }

    /// The raw payload.
    pub const fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// An owned, zero-copy handle on a slice of this NOTIFY (for example a STRING value
    /// obtained from [`TypedData::as_bytes`]) that outlives the borrow.
    ///
    /// # Panics
    ///
    /// If `slice` does not point into this NOTIFY's payload.
    pub fn bytes_of(&self, slice: &[u8]) -> Bytes {
        if slice.is_empty() {
            return Bytes::new();
        }
        self.payload.slice_ref(slice)
    }

    /// Writes the NOTIFY frame (HAProxy side), length prefix included, with flags FIN.
    pub fn encode(&self, dst: &mut BytesMut) {
        let hdr = FrameHeader::new(
            FrameType::NOTIFY,
            FrameFlags::FIN,
            self.id.stream_id,
            self.id.frame_id,
        );
        encode_frame(dst, hdr, |b| b.extend_from_slice(&self.payload));
    }
}

/// Builds a NOTIFY payload message by message.
///
/// ```
/// use spop_proto::{Notify, NotifyId};
/// let n = Notify::builder(NotifyId::new(0, 1)).message("empty").message("two").arg("", true).arg("", ()).build();
/// let names: Vec<_> = n.messages().map(|m| (m.name(), m.len())).collect();
/// assert_eq!(names, [("empty", 0), ("two", 2)]);
/// ```
#[derive(Debug, Clone)]
pub struct NotifyBuilder {
    id: NotifyId,
    buf: BytesMut,
    count_pos: Option<usize>,
}

impl NotifyBuilder {
    /// Starts a new message.
    pub fn message(&mut self, name: &str) -> &mut Self {
        put_raw_str(&mut self.buf, name.as_bytes());
        self.count_pos = Some(self.buf.len());
        self.buf.put_u8(0);
        self
    }

    /// Adds an argument to the current message.
    ///
    /// # Panics
    ///
    /// If no message was started, or the message already has 255 arguments (the count is one
    /// byte on the wire).
    pub fn arg<'v>(&mut self, name: &str, value: impl Into<ArgValue<'v>>) -> &mut Self {
        let pos = self
            .count_pos
            .expect("NotifyBuilder::arg called before message");
        assert!(
            self.buf[pos] < u8::MAX,
            "a message carries at most 255 arguments"
        );
        self.buf[pos] += 1;
        put_raw_str(&mut self.buf, name.as_bytes());
        value.into().0.encode(&mut self.buf);
        self
    }

    /// Finishes the NOTIFY.
    pub fn build(&mut self) -> Notify {
        self.count_pos = None;
        Notify {
            id: self.id,
            payload: self.buf.split().freeze(),
        }
    }
}

/// A value accepted by [`NotifyBuilder::arg`]: anything convertible to [`TypedData`], and `()`
/// for NULL.
#[derive(Debug, Clone, Copy)]
pub struct ArgValue<'a>(TypedData<'a>);

impl<'a, T: Into<TypedData<'a>>> From<T> for ArgValue<'a> {
    fn from(v: T) -> Self {
        Self(v.into())
    }
}

impl From<()> for ArgValue<'_> {
    fn from((): ()) -> Self {
        Self(TypedData::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_notify() {
        let n = Notify::builder(NotifyId::new(1, 1))
            .message("check-client-ip")
            .arg("ip", std::net::Ipv4Addr::new(192, 168, 0, 1))
            .build();
        let mut buf = BytesMut::new();
        n.encode(&mut buf);
        let mut expected = vec![0, 0, 0, 0x20, 3, 0, 0, 0, 1, 1, 1, 0x0f];
        expected.extend_from_slice(b"check-client-ip");
        expected.extend_from_slice(&[1, 2, b'i', b'p', 6, 192, 168, 0, 1]);
        assert_eq!(&buf[..], &expected[..]);
    }

    #[test]
    fn malformed_lists() {
        // nb-args larger than the args present
        let mut b = vec![1, b'm', 3, 1, b'a', 0x00];
        assert_eq!(
            MessageList::parse(&b),
            Err(DecodeError::Truncated("argument name"))
        );
        // unknown type in an arg
        b = vec![1, b'm', 1, 1, b'a', 0x0e];
        assert_eq!(
            MessageList::parse(&b),
            Err(DecodeError::UnknownDataType(0x0e))
        );
        // truncated varint at the end
        b = vec![1, b'm', 1, 0, 0x04, 0xf5];
        assert_eq!(
            MessageList::parse(&b),
            Err(DecodeError::Truncated("varint"))
        );
        // missing nb-args
        assert_eq!(
            MessageList::parse(&[1, b'm']),
            Err(DecodeError::Truncated("message nb-args"))
        );
        // non-UTF-8 message name
        assert_eq!(
            MessageList::parse(&[1, 0xc3, 0]),
            Err(DecodeError::InvalidUtf8("message name"))
        );
        // empty payload is legal (3.1/3.2 may send it)
        assert_eq!(MessageList::parse(&[]).unwrap().iter().count(), 0);
    }

    #[test]
    fn bytes_of_is_zero_copy() {
        let n = Notify::builder(NotifyId::new(1, 1))
            .message("m")
            .arg("s", "hello")
            .build();
        let v = n
            .messages()
            .next()
            .unwrap()
            .arg("s")
            .unwrap()
            .as_bytes()
            .unwrap();
        let owned = n.bytes_of(v);
        assert_eq!(&owned[..], b"hello");
        assert_eq!(owned.as_ptr(), v.as_ptr());
    }

    /// Payloads built from arbitrary messages: the fast path takes the usual ones, and says
    /// what the grammar says whenever it accepts.
    fn any_value() -> impl proptest::strategy::Strategy<Value = TypedData<'static>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(TypedData::Null),
            any::<bool>().prop_map(TypedData::Bool),
            any::<i32>().prop_map(TypedData::Int32),
            (0u32..300).prop_map(TypedData::Uint32),
            any::<i64>().prop_map(TypedData::Int64),
            (0u64..300).prop_map(TypedData::Uint64),
            any::<[u8; 4]>().prop_map(|a| TypedData::Ipv4(a.into())),
            any::<[u8; 16]>().prop_map(|a| TypedData::Ipv6(a.into())),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|v| TypedData::String(Box::leak(v.into_boxed_slice()))),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|v| TypedData::Binary(Box::leak(v.into_boxed_slice()))),
        ]
    }

    fn is_usual(v: &TypedData<'_>) -> bool {
        match *v {
            TypedData::Int32(n) => (0..240).contains(&n),
            TypedData::Uint32(n) => n < 240,
            TypedData::Int64(n) => (0..240).contains(&n),
            TypedData::Uint64(n) => n < 240,
            TypedData::String(b) | TypedData::Binary(b) => b.len() < 240,
            _ => true,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn quick_check_takes_the_usual_payloads(
            messages in proptest::collection::vec(
                ("[a-z-]{0,20}|\\PC{0,3}", proptest::collection::vec(("[a-z_]{0,12}|\\PC{0,2}", any_value()), 0..5)),
                0..4,
            ),
        ) {
            let mut b = Notify::builder(NotifyId::new(1, 1));
            let mut usual = true;
            for (name, args) in &messages {
                b.message(name);
                usual &= name.is_ascii();
                for (arg, v) in args {
                    b.arg(arg, *v);
                    usual &= arg.is_ascii() && is_usual(v);
                }
            }
            let payload = b.build().payload().clone();
            proptest::prop_assert_eq!(grammar_check(&payload), Ok(()));
            proptest::prop_assert_eq!(quick_check(&payload), usual);
            // and any cut of it, or any value of any one byte: the fast path never accepts
            // what the grammar refuses
            let mut q = payload.to_vec();
            for at in 0..payload.len() {
                let p = &payload[..at];
                proptest::prop_assert!(!quick_check(p) || grammar_check(p).is_ok(), "cut at {}", at);
                for b in 0..=u8::MAX {
                    q[at] = b;
                    proptest::prop_assert!(
                        !quick_check(&q) || grammar_check(&q).is_ok(),
                        "byte {} set to {}", at, b
                    );
                }
                q[at] = payload[at];
            }
        }

        #[test]
        fn quick_check_accepts_only_what_the_grammar_does(
            p in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            proptest::prop_assert!(!quick_check(&p) || grammar_check(&p).is_ok());
        }
    }
}
