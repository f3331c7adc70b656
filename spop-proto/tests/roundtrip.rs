//! Property tests through the public API: encode → decode is the identity for every data type,
//! list and frame type; arbitrary or mutated bytes never make a decoder panic; a truncated
//! payload is an error wherever the grammar can tell, and otherwise decodes to exactly the
//! complete elements before the cut.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use spop_proto::frame::{
    ActionList, AgentHello, Disconnect, Frame, FrameDecoder, FrameFlags, FrameHeader, HaproxyHello,
    MessageList, encode_frame, split_frame,
};
use spop_proto::{
    Action, Actions, DataType, DecodeError, FrameType, KvList, Notify, NotifyId, OwnedTypedData,
    Scope, StatusCode, TypedData, fuzzing, varint,
};

// ---- owned models ----------------------------------------------------------------------------

/// The owned model of a value: the crate's own owned type.
type Data = OwnedTypedData;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    name: String,
    args: Vec<(String, Data)>,
}

impl Msg {
    fn encoded_len(&self) -> usize {
        raw_len(self.name.as_bytes())
            + 1
            + self
                .args
                .iter()
                .map(|(n, d)| raw_len(n.as_bytes()) + d.as_typed().encoded_len())
                .sum::<usize>()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Act {
    Set(Scope, String, Data),
    Unset(Scope, String),
}

impl Act {
    fn action(&self) -> Action<'_> {
        match self {
            Self::Set(scope, name, value) => Action::SetVar {
                scope: *scope,
                name,
                value: value.as_typed(),
            },
            Self::Unset(scope, name) => Action::UnsetVar {
                scope: *scope,
                name,
            },
        }
    }

    fn push(&self, actions: &mut Actions) {
        match self {
            Self::Set(scope, name, value) => {
                actions.set_var_unchecked(*scope, name, value.as_typed())
            }
            Self::Unset(scope, name) => actions.unset_var_unchecked(*scope, name),
        };
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Set(_, name, value) => {
                3 + raw_len(name.as_bytes()) + value.as_typed().encoded_len()
            }
            Self::Unset(_, name) => 3 + raw_len(name.as_bytes()),
        }
    }
}

/// The length of a RAWSTR (varint length + bytes).
fn raw_len(s: &[u8]) -> usize {
    varint::encoded_len(s.len() as u64) + s.len()
}

/// A KV pair's length.
fn kv_len(key: &str, value: TypedData<'_>) -> usize {
    raw_len(key.as_bytes()) + value.encoded_len()
}

/// How the HELLO encoders write an integer max-frame-size: UINT32 when it fits.
fn size_value(v: u64) -> TypedData<'static> {
    u32::try_from(v).map_or(TypedData::Uint64(v), TypedData::Uint32)
}

/// The model of a HAPROXY-HELLO.
#[derive(Debug, Clone)]
struct HHello {
    versions: Option<Vec<u8>>,
    size: Option<u64>,
    caps: Option<Vec<u8>>,
    engine: Option<Vec<u8>>,
    healthcheck: bool,
}

impl HHello {
    fn hello(&self) -> HaproxyHello<'_> {
        let mut h = HaproxyHello::default();
        h.supported_versions = self.versions.as_deref();
        h.max_frame_size = self.size;
        h.capabilities = self.caps.as_deref();
        h.engine_id = self.engine.as_deref();
        h.healthcheck = self.healthcheck;
        h
    }

    /// The KV pairs in the order they go on the wire (HAProxy's order, spop-notes §5).
    fn pairs(&self) -> Vec<(&'static str, TypedData<'_>)> {
        let mut p = Vec::new();
        if let Some(v) = &self.versions {
            p.push(("supported-versions", TypedData::String(v)));
        }
        if let Some(v) = self.size {
            p.push(("max-frame-size", size_value(v)));
        }
        if let Some(v) = &self.caps {
            p.push(("capabilities", TypedData::String(v)));
        }
        if let Some(v) = &self.engine {
            p.push(("engine-id", TypedData::String(v)));
        }
        if self.healthcheck {
            p.push(("healthcheck", TypedData::Bool(true)));
        }
        p
    }
}

/// The model of an AGENT-HELLO.
#[derive(Debug, Clone)]
struct AHello {
    version: Option<Vec<u8>>,
    size: Option<u64>,
    caps: Option<Vec<u8>>,
}

impl AHello {
    fn hello(&self) -> AgentHello<'_> {
        let mut h = AgentHello::default();
        h.version = self.version.as_deref();
        h.max_frame_size = self.size;
        h.capabilities = self.caps.as_deref();
        h
    }

    fn pairs(&self) -> Vec<(&'static str, TypedData<'_>)> {
        let mut p = Vec::new();
        if let Some(v) = &self.version {
            p.push(("version", TypedData::String(v)));
        }
        if let Some(v) = self.size {
            p.push(("max-frame-size", size_value(v)));
        }
        if let Some(v) = &self.caps {
            p.push(("capabilities", TypedData::String(v)));
        }
        p
    }
}

// ---- strategies ------------------------------------------------------------------------------

/// The first value of each varint length, and its predecessor (spop-notes §2).
const VARINT_EDGES: [u64; 9] = [
    240,
    2288,
    264_432,
    33_818_864,
    4_328_786_160,
    554_084_600_048,
    70_922_828_777_712,
    9_078_122_083_518_704,
    1_161_999_626_690_365_680,
];

fn u64s() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        select(VARINT_EDGES.to_vec()).prop_flat_map(|e| (e - 1)..=e),
        select(vec![0, 1, 239, u64::MAX, u64::MAX - 1, i64::MAX as u64]),
        (0u32..64).prop_map(|s| 1u64 << s),
    ]
}

fn i64s() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        u64s().prop_map(|v| v as i64),
        select(vec![-1, -2, -240, i64::MIN, i64::MAX]),
    ]
}

fn i32s() -> impl Strategy<Value = i32> {
    prop_oneof![
        any::<i32>(),
        select(vec![0, 1, -1, 239, 240, -240, i32::MIN, i32::MAX]),
    ]
}

fn u32s() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        select(vec![0, 239, 240, 2287, 2288, u32::MAX])
    ]
}

/// Bytes, including empty, embedded zeros and lengths around the 240 varint threshold.
fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let long = if max >= 240 { 230..300 } else { 0..max + 1 };
    prop_oneof![
        3 => vec(any::<u8>(), 0..=max),
        1 => Just(Vec::new()),
        1 => Just(vec![0u8]),
        1 => vec(select(vec![0u8, 0xff, b'a']), 1..8),
        1 => vec(any::<u8>(), long),
    ]
}

fn ipv6s() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
        select(vec![
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            Ipv4Addr::new(192, 168, 0, 1).to_ipv6_mapped(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        ]),
    ]
}

fn data_with(max_blob: usize) -> impl Strategy<Value = Data> {
    prop_oneof![
        Just(Data::Null),
        any::<bool>().prop_map(Data::Bool),
        i32s().prop_map(Data::Int32),
        u32s().prop_map(Data::Uint32),
        i64s().prop_map(Data::Int64),
        u64s().prop_map(Data::Uint64),
        any::<[u8; 4]>().prop_map(|o| Data::Ipv4(o.into())),
        ipv6s().prop_map(Data::Ipv6),
        blob(max_blob).prop_map(|b| Data::String(b.into())),
        blob(max_blob).prop_map(|b| Data::Binary(b.into())),
    ]
}

fn data() -> impl Strategy<Value = Data> {
    data_with(300)
}

fn small_data() -> impl Strategy<Value = Data> {
    data_with(12)
}

/// Non-empty keys (KV lists reject empty keys).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z-]{0,20}",
        "\\PC{1,8}",
        select(vec!["supported-versions", "max-frame-size", "capabilities"]).prop_map(String::from),
    ]
}

/// Names that may be empty and often repeat.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        select(vec!["ip", "a", "src", "é"]).prop_map(String::from),
        "[a-z]{1,3}",
        "\\PC{0,12}",
    ]
}

fn msg_with(args: impl Strategy<Value = Vec<(String, Data)>>) -> impl Strategy<Value = Msg> {
    (name(), args).prop_map(|(name, args)| Msg { name, args })
}

fn msgs() -> impl Strategy<Value = Vec<Msg>> {
    let args = prop_oneof![
        3 => vec((name(), data()), 0..8),
        1 => vec((name(), small_data()), 0..=255),
        1 => vec((name(), small_data()), 250..=255),
    ];
    vec(msg_with(args), 0..4)
}

fn small_msgs() -> impl Strategy<Value = Vec<Msg>> {
    vec(msg_with(vec((name(), small_data()), 0..5)), 0..4)
}

fn scope() -> impl Strategy<Value = Scope> {
    select(Scope::ALL.to_vec())
}

fn act_with(d: impl Strategy<Value = Data>) -> impl Strategy<Value = Act> {
    prop_oneof![
        (scope(), name(), d).prop_map(|(s, n, v)| Act::Set(s, n, v)),
        (scope(), name()).prop_map(|(s, n)| Act::Unset(s, n)),
    ]
}

fn ids() -> impl Strategy<Value = NotifyId> {
    (u64s(), u64s()).prop_map(|(s, f)| NotifyId::new(s, f))
}

fn hhello() -> impl Strategy<Value = HHello> {
    (
        proptest::option::of(prop_oneof![Just(b"2.0".to_vec()), blob(20)]),
        proptest::option::of(u64s()),
        proptest::option::of(prop_oneof![
            Just(b"pipelining".to_vec()),
            Just(b"pipelining,async".to_vec()),
            blob(20)
        ]),
        proptest::option::of(blob(40)),
        any::<bool>(),
    )
        .prop_map(|(versions, size, caps, engine, healthcheck)| HHello {
            versions,
            size,
            caps,
            engine,
            healthcheck,
        })
}

fn ahello() -> impl Strategy<Value = AHello> {
    (
        proptest::option::of(prop_oneof![Just(b"2.0".to_vec()), blob(20)]),
        proptest::option::of(u64s()),
        proptest::option::of(blob(20)),
    )
        .prop_map(|(version, size, caps)| AHello {
            version,
            size,
            caps,
        })
}

fn disconnect_type() -> impl Strategy<Value = FrameType> {
    select(vec![
        FrameType::AGENT_DISCONNECT,
        FrameType::HAPROXY_DISCONNECT,
    ])
}

/// Any frame this crate encodes, as its bytes.
fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        hhello().prop_map(|h| encoded(|b| h.hello().encode(b))),
        ahello().prop_map(|h| encoded(|b| h.hello().encode(b))),
        (disconnect_type(), any::<u32>(), "\\PC{0,20}").prop_map(|(t, s, m)| encoded(|b| {
            Disconnect::encode(b, t, StatusCode(s), &m);
        })),
        (ids(), small_msgs()).prop_map(|(id, m)| encoded(|b| notify(id, &m).encode(b))),
        (ids(), vec(act_with(small_data()), 0..5)).prop_map(|(id, acts)| encoded(|b| {
            actions(&acts).encode_ack(id, b);
        })),
    ]
}

// ---- helpers ---------------------------------------------------------------------------------

fn encoded(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

fn notify(id: NotifyId, msgs: &[Msg]) -> Notify {
    let mut b = Notify::builder(id);
    for m in msgs {
        b.message(&m.name);
        for (n, d) in &m.args {
            b.arg(n, d.as_typed());
        }
    }
    b.build()
}

fn actions(acts: &[Act]) -> Actions {
    let mut a = Actions::new();
    for act in acts {
        act.push(&mut a);
    }
    a
}

/// The messages of a validated list, owned.
fn own_msgs<'a>(list: impl IntoIterator<Item = spop_proto::Message<'a>>) -> Vec<Msg> {
    list.into_iter()
        .map(|m| {
            let args: Vec<_> = m
                .args()
                .map(|a| (a.name.to_owned(), Data::from(a.value)))
                .collect();
            assert_eq!(args.len(), m.len());
            assert_eq!(m.is_empty(), args.is_empty());
            Msg {
                name: m.name().to_owned(),
                args,
            }
        })
        .collect()
}

fn own_action(a: Action<'_>) -> Act {
    match a {
        Action::SetVar { scope, name, value } => {
            Act::Set(scope, name.to_owned(), Data::from(value))
        }
        Action::UnsetVar { scope, name } => Act::Unset(scope, name.to_owned()),
        other => panic!("unknown action {other:?}"),
    }
}

/// Splits one whole frame with both splitters, checking they agree.
#[track_caller]
fn split(wire: &[u8]) -> (FrameHeader, &[u8]) {
    let (hdr, payload, used) = split_frame(wire, u32::MAX).unwrap().unwrap();
    assert_eq!(used, wire.len());
    let mut buf = BytesMut::from(wire);
    let raw = FrameDecoder::new(u32::MAX)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert!(buf.is_empty());
    assert_eq!(raw.header, hdr);
    assert_eq!(&raw.payload[..], payload);
    (hdr, payload)
}

/// Cuts of `0..=len`: all of them for short payloads, otherwise the boundaries, their
/// neighbours and a regular sample (keeps the quadratic check fast).
fn cuts(len: usize, boundaries: &[usize]) -> Vec<usize> {
    if len <= 2048 {
        return (0..=len).collect();
    }
    let mut v: Vec<usize> = (0..=len).step_by(len / 256 + 1).collect();
    for &b in boundaries {
        v.extend([b.saturating_sub(1), b, (b + 1).min(len)]);
    }
    v.push(len);
    v
}

/// The truncation property for one whole frame.
///
/// `boundaries[k]` is the payload length holding exactly the first `k` elements (so
/// `boundaries[0] == 0` and the last one is the payload length). For every cut of the payload
/// (the length prefix rewritten to match): below 7 bytes the length is refused, inside the
/// header the header is refused, at `boundaries[k]` the frame parses and `at_boundary(k, frame)`
/// checks it holds the first `k` elements, anywhere else parsing fails. With the original length prefix, every strict prefix of the frame asks
/// for more bytes.
#[allow(clippy::cast_possible_truncation)] // a body of a few bytes
fn check_truncations(wire: &[u8], boundaries: &[usize], at_boundary: impl Fn(usize, Frame<'_>)) {
    let (hdr, payload) = split(wire);
    assert_eq!(boundaries.first(), Some(&0));
    assert_eq!(boundaries.last(), Some(&payload.len()));
    let body = &wire[4..];
    let hdr_len = body.len() - payload.len();
    let mut dec = FrameDecoder::new(u32::MAX);
    for cut in 0..wire.len() {
        // not enough bytes yet: wait, consume nothing
        assert_eq!(split_frame(&wire[..cut], u32::MAX), Ok(None));
        let mut part = BytesMut::from(&wire[..cut]);
        assert_eq!(dec.decode(&mut part), Ok(None));
        assert_eq!(part.len(), cut);
    }
    for body_len in 0..hdr_len.min(body.len()) {
        let mut t = (body_len as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&body[..body_len]);
        let r = split_frame(&t, u32::MAX);
        if body_len < 7 {
            assert_eq!(r, Err(DecodeError::FrameTooShort(body_len as u32)));
        } else {
            assert!(r.is_err(), "header cut at {body_len}: {r:?}");
        }
    }
    for cut in cuts(payload.len(), boundaries) {
        let mut t = ((hdr_len + cut) as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&body[..hdr_len + cut]);
        let (h, p, used) = split_frame(&t, u32::MAX).unwrap().unwrap();
        assert_eq!((h, p, used), (hdr, &payload[..cut], t.len()));
        let parsed = Frame::parse(&h, p);
        match boundaries.iter().position(|&b| b == cut) {
            Some(k) => {
                let frame = parsed.unwrap_or_else(|e| panic!("cut at boundary {cut}: {e}"));
                at_boundary(k, frame);
            }
            None => assert!(
                parsed.is_err(),
                "cut at {cut} (boundaries {boundaries:?}) parsed: {parsed:?}"
            ),
        }
    }
}

/// Payload lengths after 0, 1, 2... elements of the given sizes.
fn prefix_sums(sizes: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut acc = 0;
    let mut v = vec![0];
    for s in sizes {
        acc += s;
        v.push(acc);
    }
    v
}

/// Everything a decoder can be asked about `data`; must never panic.
fn poke(data: &[u8]) {
    for max in [u32::MAX, 16380, 7] {
        let _ = split_frame(data, max);
    }
    let mut buf = BytesMut::from(data);
    let mut dec = FrameDecoder::new(1 << 20);
    while let Ok(Some(raw)) = dec.decode(&mut buf) {
        if let Ok(f) = raw.parse() {
            walk(f);
        }
    }
    for ty in [0u8, 1, 2, 3, 101, 102, 103, 42] {
        for flags in [FrameFlags(0), FrameFlags::FIN, FrameFlags(u32::MAX)] {
            let hdr = FrameHeader::new(FrameType(ty), flags, 0, 0);
            if let Ok(f) = Frame::parse(&hdr, data) {
                walk(f);
            }
        }
    }
    if let Ok(list) = MessageList::parse(data) {
        walk(Frame::Notify(list));
        assert_eq!(list.as_bytes(), data);
        // validated: iteration cannot stop early, it covers the whole payload
        let len: usize = own_msgs(list).iter().map(Msg::encoded_len).sum();
        assert_eq!(len, data.len());
    }
    if let Ok(list) = ActionList::parse(data) {
        walk(Frame::Ack(list));
        let len: usize = list.iter().map(|a| own_action(a).encoded_len()).sum();
        assert_eq!(len, data.len());
    }
    if let Ok((v, n)) = TypedData::decode(data) {
        assert!(n <= data.len());
        assert_eq!(v.encoded_len(), n);
        let mut re = Vec::new();
        v.encode(&mut re);
        // identical but for flag bits of the type byte (only BOOL gives them a meaning)
        assert_eq!(re[0] & 0x0F, data[0] & 0x0F);
        assert_eq!(&re[1..], &data[1..n]);
        let _ = (v.to_string(), format!("{v:?}"));
    }
    let items: Vec<_> = KvList::new(data).collect();
    if let Some(pos) = items.iter().position(Result::is_err) {
        assert_eq!(
            pos,
            items.len() - 1,
            "a KV list stops after its first error"
        );
    }
    if let Ok((v, n)) = varint::decode(data) {
        assert_eq!(varint::encoded_len(v), n);
    }
    fuzzing::frame(data);
    fuzzing::varint(data);
}

fn walk(f: Frame<'_>) {
    match f {
        Frame::Notify(list) => {
            for m in list.iter() {
                for a in m.args() {
                    let _ = (a.name.len(), a.value.to_string());
                }
                let _ = (m.arg("ip"), m.arg_at(3));
            }
        }
        Frame::Ack(list) => {
            for a in list.iter() {
                let _ = a.to_string();
            }
        }
        Frame::HaproxyDisconnect(d) | Frame::AgentDisconnect(d) => {
            let _ = d.status();
        }
        Frame::AgentHello(h) => {
            let _ = h.validate(16380);
        }
        other => {
            let _ = format!("{other:?}");
        }
    }
}

// ---- deterministic checks of the strategies' reach --------------------------------------------

#[test]
fn all_ten_types_round_trip() {
    let samples = [
        Data::Null,
        Data::Bool(true),
        Data::Bool(false),
        Data::Int32(i32::MIN),
        Data::Uint32(u32::MAX),
        Data::Int64(-1),
        Data::Uint64(u64::MAX),
        Data::Ipv4(Ipv4Addr::BROADCAST),
        Data::Ipv6(Ipv6Addr::LOCALHOST),
        Data::String(Bytes::new()),
        Data::Binary(Bytes::from_static(&[0, 1, 0])),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for d in &samples {
        let mut b = Vec::new();
        d.as_typed().encode(&mut b);
        seen.insert(b[0] & 0x0F);
        assert_eq!(DataType::from_byte(b[0]), Some(d.as_typed().data_type()));
        assert_eq!(TypedData::decode(&b), Ok((d.as_typed(), b.len())));
    }
    assert_eq!(seen.len(), 10);
}

#[test]
fn a_message_with_255_args() {
    let m = Msg {
        name: "m".into(),
        args: (0..255).map(|i| (String::new(), Data::Int64(i))).collect(),
    };
    let n = notify(NotifyId::new(1, 1), std::slice::from_ref(&m));
    assert_eq!(own_msgs(n.messages()), [m]);
}

#[test]
#[should_panic(expected = "at most 255 arguments")]
fn a_256th_arg_is_refused() {
    let mut b = Notify::builder(NotifyId::new(1, 1));
    b.message("m");
    for _ in 0..256 {
        b.arg("", ());
    }
}

// ---- properties ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn typed_data_round_trip(d in data(), tail in vec(any::<u8>(), 0..4)) {
        let t = d.as_typed();
        let mut b = Vec::new();
        t.encode(&mut b);
        prop_assert_eq!(b.len(), t.encoded_len());
        prop_assert_eq!(b[0] & 0x0F, t.data_type() as u8);
        prop_assert_eq!(TypedData::decode(&b), Ok((t, b.len())));
        // trailing bytes are not consumed
        b.extend_from_slice(&tail);
        let (v, n) = TypedData::decode(&b).unwrap();
        prop_assert_eq!(&Data::from(v), &d);
        prop_assert_eq!(n, t.encoded_len());
        // every strict prefix is an error
        for cut in 0..t.encoded_len() {
            prop_assert!(TypedData::decode(&b[..cut]).is_err(), "cut at {}", cut);
        }
    }

    #[test]
    fn varint_round_trip(v in u64s(), tail in vec(any::<u8>(), 0..4)) {
        let (arr, len) = varint::encode(v);
        prop_assert!((1..=varint::MAX_LEN).contains(&len));
        prop_assert_eq!(varint::encoded_len(v), len);
        let mut b = Vec::new();
        varint::put(&mut b, v);
        prop_assert_eq!(&b[..], &arr[..len]);
        b.extend_from_slice(&tail);
        prop_assert_eq!(varint::decode(&b), Ok((v, len)));
        for cut in 0..len {
            prop_assert_eq!(varint::decode(&b[..cut]), Err(DecodeError::Truncated("varint")));
        }
    }

    #[test]
    fn varint_any_u64(v in any::<u64>()) {
        let (arr, len) = varint::encode(v);
        prop_assert_eq!(varint::decode(&arr[..len]), Ok((v, len)));
    }

    #[test]
    fn varint_decoding_is_a_bijection(b in vec(any::<u8>(), 0..12)) {
        if let Ok((v, n)) = varint::decode(&b) {
            let (arr, len) = varint::encode(v);
            prop_assert_eq!(&arr[..len], &b[..n]);
        }
        fuzzing::varint(&b);
    }

    #[test]
    fn kv_list_round_trip(pairs in vec((key(), data()), 0..12)) {
        let mut b = Vec::new();
        for (k, d) in &pairs {
            KvList::put(&mut b, k, d.as_typed());
        }
        let got: Vec<(String, Data)> = KvList::new(&b)
            .map(|r| r.map(|(k, v)| (k.to_owned(), Data::from(v))))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(&got, &pairs);
        prop_assert_eq!(b.len(), pairs.iter().map(|(k, d)| kv_len(k, d.as_typed())).sum::<usize>());
    }

    #[test]
    fn kv_list_truncation(pairs in vec((key(), small_data()), 0..6)) {
        let mut b = Vec::new();
        for (k, d) in &pairs {
            KvList::put(&mut b, k, d.as_typed());
        }
        let bounds = prefix_sums(pairs.iter().map(|(k, d)| kv_len(k, d.as_typed())));
        for cut in 0..=b.len() {
            let r: Result<Vec<(String, Data)>, _> = KvList::new(&b[..cut])
                .map(|r| r.map(|(k, v)| (k.to_owned(), Data::from(v))))
                .collect();
            match bounds.iter().position(|&x| x == cut) {
                Some(k) => prop_assert_eq!(r.unwrap(), pairs[..k].to_vec()),
                None => prop_assert!(r.is_err(), "cut at {}", cut),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn notify_round_trip(id in ids(), msgs in msgs()) {
        let n = notify(id, &msgs);
        prop_assert_eq!(n.id(), id);
        prop_assert_eq!(&own_msgs(n.messages()), &msgs);
        prop_assert_eq!(n.payload().len(), msgs.iter().map(Msg::encoded_len).sum::<usize>());
        for m in &msgs {
            let got = n.message(&m.name).unwrap();
            // the first message of that name
            let first = msgs.iter().find(|x| x.name == m.name).unwrap();
            prop_assert_eq!(got.len(), first.args.len());
            for (i, (an, ad)) in first.args.iter().enumerate() {
                prop_assert_eq!(got.arg_at(i), Some(ad.as_typed()));
                let by_name = first.args.iter().find(|(x, _)| x == an).unwrap();
                prop_assert_eq!(got.arg(an), Some(by_name.1.as_typed()));
            }
            prop_assert_eq!(got.arg_at(first.args.len()), None);
        }

        // through the wire
        let wire = encoded(|b| n.encode(b));
        let (hdr, payload) = split(&wire);
        prop_assert_eq!(hdr, FrameHeader::new(FrameType::NOTIFY, FrameFlags::FIN, id.stream_id, id.frame_id));
        let Ok(Frame::Notify(list)) = Frame::parse(&hdr, payload) else {
            panic!("not a NOTIFY");
        };
        prop_assert_eq!(&own_msgs(list), &msgs);
        prop_assert_eq!(MessageList::parse(payload), Ok(list));
        let again = Notify::parse(hdr.id(), Bytes::copy_from_slice(payload)).unwrap();
        prop_assert_eq!(&again, &n);
    }

    #[test]
    fn ack_round_trip(id in ids(), acts in vec(act_with(data()), 0..24)) {
        let a = actions(&acts);
        prop_assert_eq!(a.len(), acts.len());
        prop_assert_eq!(a.is_empty(), acts.is_empty());
        let expected: Vec<Action<'_>> = acts.iter().map(Act::action).collect();
        prop_assert_eq!(a.iter().collect::<Vec<_>>(), expected.clone());
        prop_assert_eq!(a.as_bytes().len(), acts.iter().map(Act::encoded_len).sum::<usize>());

        let wire = encoded(|b| a.encode_ack(id, b));
        prop_assert_eq!(wire.len(), 4 + a.frame_len(id));
        let (hdr, payload) = split(&wire);
        prop_assert_eq!(hdr, FrameHeader::new(FrameType::ACK, FrameFlags::FIN, id.stream_id, id.frame_id));
        prop_assert_eq!(payload, a.as_bytes());
        let list = ActionList::parse(payload).unwrap();
        prop_assert_eq!(list.iter().collect::<Vec<_>>(), expected.clone());
        let Ok(Frame::Ack(list2)) = Frame::parse(&hdr, payload) else {
            panic!("not an ACK");
        };
        prop_assert_eq!(list2, list);
    }

    #[test]
    fn haproxy_hello_round_trip(m in hhello()) {
        let h = m.hello();
        let wire = encoded(|b| h.encode(b));
        let (hdr, payload) = split(&wire);
        prop_assert_eq!(hdr, FrameHeader::new(FrameType::HAPROXY_HELLO, FrameFlags::FIN, 0, 0));
        let Ok(Frame::HaproxyHello(got)) = Frame::parse(&hdr, payload) else {
            panic!("not a HAPROXY-HELLO");
        };
        prop_assert_eq!(got, h);
        let pairs: Vec<_> = KvList::new(payload).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(pairs, m.pairs());
    }

    #[test]
    fn agent_hello_round_trip(m in ahello()) {
        let h = m.hello();
        let wire = encoded(|b| h.encode(b));
        let (hdr, payload) = split(&wire);
        prop_assert_eq!(hdr, FrameHeader::new(FrameType::AGENT_HELLO, FrameFlags::FIN, 0, 0));
        let Ok(Frame::AgentHello(got)) = Frame::parse(&hdr, payload) else {
            panic!("not an AGENT-HELLO");
        };
        prop_assert_eq!(got, h);
        let pairs: Vec<_> = KvList::new(payload).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(pairs, m.pairs());
    }

    #[test]
    fn disconnect_round_trip(t in disconnect_type(), status in u32s(), msg in "\\PC{0,300}") {
        let wire = encoded(|b| Disconnect::encode(b, t, StatusCode(status), &msg));
        let (hdr, payload) = split(&wire);
        prop_assert_eq!(hdr, FrameHeader::new(t, FrameFlags::FIN, 0, 0));
        let d = match Frame::parse(&hdr, payload).unwrap() {
            Frame::AgentDisconnect(d) if t == FrameType::AGENT_DISCONNECT => d,
            Frame::HaproxyDisconnect(d) if t == FrameType::HAPROXY_DISCONNECT => d,
            other => panic!("{t:?} parsed as {other:?}"),
        };
        prop_assert_eq!(d.status_code, Some(u64::from(status)));
        prop_assert_eq!(d.status(), Some(StatusCode(status)));
        // the message is cut to at most 255 bytes, at a character boundary
        let mut end = msg.len().min(255);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        prop_assert_eq!(d.message, Some(&msg.as_bytes()[..end]));
        prop_assert!(end == msg.len() || end > 255 - 4);
    }

    /// Many frames of every type back to back, delivered in arbitrary chunks.
    #[test]
    fn frame_stream_in_chunks(
        frames in vec(any_frame(), 0..8),
        chunks in vec(1usize..64, 1..16),
    ) {
        let stream = frames.concat();
        let mut dec = FrameDecoder::new(u32::MAX);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < stream.len() {
            let n = chunks[i % chunks.len()].min(stream.len() - pos);
            i += 1;
            buf.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            while let Some(raw) = dec.decode(&mut buf).unwrap() {
                raw.parse().unwrap();
                got.push(encoded(|b| encode_frame(b, raw.header, |p| p.extend_from_slice(&raw.payload))));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn notify_truncation(id in ids(), msgs in small_msgs()) {
        let wire = encoded(|b| notify(id, &msgs).encode(b));
        let bounds = prefix_sums(msgs.iter().map(Msg::encoded_len));
        check_truncations(&wire, &bounds, |k, f| match f {
            Frame::Notify(list) => assert_eq!(own_msgs(list), &msgs[..k]),
            other => panic!("{other:?}"),
        });
    }

    #[test]
    fn ack_truncation(id in ids(), acts in vec(act_with(small_data()), 0..6)) {
        let wire = encoded(|b| actions(&acts).encode_ack(id, b));
        let bounds = prefix_sums(acts.iter().map(Act::encoded_len));
        let expected: Vec<Action<'_>> = acts.iter().map(Act::action).collect();
        check_truncations(&wire, &bounds, |k, f| match f {
            Frame::Ack(list) => assert_eq!(list.iter().collect::<Vec<_>>(), &expected[..k]),
            other => panic!("{other:?}"),
        });
    }

    #[test]
    fn haproxy_hello_truncation(m in hhello()) {
        let h = m.hello();
        let wire = encoded(|b| h.encode(b));
        let pairs = m.pairs();
        let bounds = prefix_sums(pairs.iter().map(|(k, v)| kv_len(k, *v)));
        // the HELLO with only the first k keys
        let expected = |k: usize| {
            let mut e = HaproxyHello::default();
            for (key, v) in &pairs[..k] {
                match *key {
                    "supported-versions" => e.supported_versions = v.as_bytes(),
                    "max-frame-size" => e.max_frame_size = v.as_u64(),
                    "capabilities" => e.capabilities = v.as_bytes(),
                    "engine-id" => e.engine_id = v.as_bytes(),
                    _ => e.healthcheck = v.as_bool().unwrap(),
                }
            }
            e
        };
        check_truncations(&wire, &bounds, |k, f| match f {
            Frame::HaproxyHello(h) => assert_eq!(h, expected(k)),
            other => panic!("{other:?}"),
        });
    }

    #[test]
    fn agent_hello_truncation(m in ahello()) {
        let h = m.hello();
        let wire = encoded(|b| h.encode(b));
        let pairs = m.pairs();
        let bounds = prefix_sums(pairs.iter().map(|(k, v)| kv_len(k, *v)));
        let expected = |k: usize| {
            let mut e = AgentHello::default();
            for (key, v) in &pairs[..k] {
                match *key {
                    "version" => e.version = v.as_bytes(),
                    "max-frame-size" => e.max_frame_size = v.as_u64(),
                    _ => e.capabilities = v.as_bytes(),
                }
            }
            e
        };
        check_truncations(&wire, &bounds, |k, f| match f {
            Frame::AgentHello(h) => assert_eq!(h, expected(k)),
            other => panic!("{other:?}"),
        });
    }

    #[test]
    fn disconnect_truncation(t in disconnect_type(), status in u32s(), msg in "\\PC{0,20}") {
        let wire = encoded(|b| Disconnect::encode(b, t, StatusCode(status), &msg));
        let bounds = vec![
            0,
            kv_len("status-code", TypedData::Uint32(status)),
            kv_len("status-code", TypedData::Uint32(status))
                + kv_len("message", TypedData::String(msg.as_bytes())),
        ];
        let expected = |k: usize| {
            (
                (k >= 1).then_some(u64::from(status)),
                (k >= 2).then_some(msg.as_bytes()),
            )
        };
        check_truncations(&wire, &bounds, |k, f| match f {
            Frame::AgentDisconnect(d) | Frame::HaproxyDisconnect(d) => {
                assert_eq!((d.status_code, d.message), expected(k));
            }
            other => panic!("{other:?}"),
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        poke(&data);
    }

    /// Arbitrary payloads behind a valid length prefix and header, so they reach the parsers.
    #[test]
    fn framed_garbage_never_panics(
        ty in select(vec![0u8, 1, 2, 3, 101, 102, 103, 200]),
        flags in prop_oneof![Just(1u32), any::<u32>()],
        sid in u64s(),
        fid in u64s(),
        payload in vec(any::<u8>(), 0..256),
    ) {
        let hdr = FrameHeader::new(FrameType(ty), FrameFlags(flags), sid, fid);
        let wire = encoded(|b| encode_frame(b, hdr, |p| p.extend_from_slice(&payload)));
        let (h, p) = split(&wire);
        prop_assert_eq!(h, hdr);
        prop_assert_eq!(p, &payload[..]);
        poke(&wire);
        poke(&payload);
    }

    /// Valid frames with a few bytes overwritten, inserted or removed.
    #[test]
    fn mutated_frames_never_panic(
        frame in any_frame(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut data = frame;
        for (at, byte, kind) in edits {
            let len = data.len();
            match kind {
                0 if len > 0 => data[at.index(len)] = byte,
                1 => data.insert(at.index(len + 1), byte),
                _ if len > 0 => { data.remove(at.index(len)); }
                _ => {}
            }
        }
        poke(&data);
        if data.len() > 4 {
            poke(&data[4..]);
        }
    }

    /// The connection fuzz harness on arbitrary scripts (it asserts its own invariants).
    #[test]
    fn connection_harness_never_panics(data in vec(any::<u8>(), 0..512)) {
        fuzzing::connection(&data);
    }

    /// The same, with valid frames in the read ops so the scripts get past the handshake.
    #[test]
    #[allow(clippy::cast_possible_truncation)] // chunks of at most 31 bytes
    fn connection_harness_on_valid_frames(
        flags in any::<u8>(),
        frames in vec(any_frame(), 0..6),
        ops in vec(any::<u8>(), 0..32),
        fast_lane in any::<bool>(),
    ) {
        let hello = encoded(|b| HaproxyHello::new(16380, "pipelining").encode(b));
        let mut script = vec![flags];
        let mut ops = ops.into_iter();
        for f in std::iter::once(hello).chain(frames) {
            for chunk in f.chunks(31) {
                // read ops 1 and 3 read with `read_notify`, as the runtime does
                script.push(((chunk.len() as u8) << 3) | u8::from(fast_lane));
                script.extend_from_slice(chunk);
            }
            if let Some(op) = ops.next() {
                script.push(op);
            }
        }
        script.extend(ops);
        fuzzing::connection(&script);
    }
}

// ---- header blocks (req.hdrs_bin) ------------------------------------------------------------

fn header_list() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    // names: short, non-empty, from a small alphabet (so duplicates and case variants occur);
    // values: any bytes, sometimes longer than one-byte varints
    let name = vec(select(b"aAbBxX-".to_vec()), 1..4);
    let value = prop_oneof![vec(any::<u8>(), 0..8), vec(any::<u8>(), 230..300)];
    vec((name, value), 0..30)
}

proptest! {
    #[test]
    fn header_block_roundtrip(headers in header_list()) {
        let mut b = Vec::new();
        spop_proto::HeaderBlock::encode(headers.iter().map(|(n, v)| (n, v)), &mut b);
        prop_assert_eq!(b.len(), spop_proto::HeaderBlock::encoded_len(headers.iter().map(|(n, v)| (n, v))));
        let h = spop_proto::HeaderBlock::parse(&b).unwrap();
        prop_assert_eq!(h.len(), headers.len());
        let got: Vec<(Vec<u8>, Vec<u8>)> = h.iter().map(|x| (x.name.to_vec(), x.value.to_vec())).collect();
        prop_assert_eq!(&got, &headers);
        for (n, _) in &headers {
            let name = std::str::from_utf8(n).unwrap().to_ascii_uppercase();
            let expected: Vec<&[u8]> = headers
                .iter()
                .filter(|(m, _)| m.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_slice())
                .collect();
            prop_assert_eq!(h.get_all(&name).collect::<Vec<_>>(), expected.clone());
            prop_assert_eq!(h.get(&name), expected.first().copied());
        }
        // every strict prefix is an error, and so is any extra byte
        for cut in 0..b.len() {
            prop_assert!(spop_proto::HeaderBlock::parse(&b[..cut]).is_err(), "cut at {}", cut);
        }
        let mut longer = b.clone();
        longer.push(0);
        prop_assert_eq!(
            spop_proto::HeaderBlock::parse(&longer),
            Err(spop_proto::HeaderBlockError::TrailingBytes(1))
        );
    }

    #[test]
    fn header_block_arbitrary_bytes(data in vec(any::<u8>(), 0..64)) {
        fuzzing::hdrs_bin(&data);
    }
}
