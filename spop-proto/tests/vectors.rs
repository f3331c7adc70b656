//! Golden vectors: the worked frames of spop-notes.md §4 and the varint table of §2, written out
//! by hand in `tests/vectors/` (see its README for provenance), checked through the public API
//! only: encoding must give exactly these bytes, decoding them must give the expected structure.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use bytes::{Bytes, BytesMut};
use spop_proto::frame::{
    AgentHello, Capabilities, Disconnect, Frame, FrameDecoder, FrameFlags, FrameHeader,
    HaproxyHello, split_frame,
};
use spop_proto::{
    Action, Actions, DecodeError, FrameType, KvList, Notify, NotifyId, Scope, StatusCode,
    TypedData, varint,
};

/// The first line of every `.hex` file.
const PROVENANCE: &str = "# from spop-notes.md §4, byte layout per HAProxy doc/SPOE.txt";

/// HAProxy's default max-frame-size, the limit every vector is decoded with.
const MAX: u32 = 16380;

struct Vector {
    name: &'static str,
    text: &'static str,
}

macro_rules! vector {
    ($name:literal) => {
        Vector {
            name: $name,
            text: include_str!(concat!("vectors/", $name, ".hex")),
        }
    };
}

const VECTORS: &[Vector] = &[
    vector!("haproxy-hello"),
    vector!("haproxy-hello-healthcheck"),
    vector!("agent-hello"),
    vector!("notify-check-client-ip"),
    vector!("ack-set-var-ip-score"),
    vector!("ack-unset-var-flag"),
    vector!("ack-set-var-minus-one"),
    vector!("ack-empty"),
    vector!("ack-padded"),
    vector!("agent-disconnect-normal"),
];

const VARINT_TABLE: &str = include_str!("vectors/varint.txt");

/// Parses whitespace-separated two-digit hex bytes; `#` comments run to the end of the line.
fn parse_hex(name: &str, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let data = line.split('#').next().unwrap_or_default();
        for tok in data.split_whitespace() {
            assert!(
                tok.len() == 2,
                "{name}:{}: {tok:?} is not a two-digit hex byte",
                n + 1
            );
            let b = u8::from_str_radix(tok, 16)
                .unwrap_or_else(|e| panic!("{name}:{}: {tok:?}: {e}", n + 1));
            out.push(b);
        }
    }
    out
}

fn wire(name: &str) -> Vec<u8> {
    let v = VECTORS
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vector {name}"));
    parse_hex(v.name, v.text)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compares as hex strings, so a mismatch shows where the bytes differ.
#[track_caller]
fn assert_bytes(got: &[u8], expected: &[u8]) {
    assert_eq!(hex(got), hex(expected));
}

/// Splits the single frame in `wire` with both public splitters and checks they agree, that the
/// frame is whole and alone, and that every strict prefix asks for more bytes.
#[track_caller]
fn decode(wire: &[u8]) -> (FrameHeader, &[u8]) {
    let (header, payload, used) = split_frame(wire, MAX)
        .expect("valid frame")
        .expect("whole frame");
    assert_eq!(used, wire.len(), "exactly one frame");
    assert_eq!(
        u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize,
        wire.len() - 4
    );

    let mut buf = BytesMut::from(wire);
    let mut dec = FrameDecoder::new(MAX);
    let raw = dec.decode(&mut buf).expect("valid frame").expect("whole");
    assert!(buf.is_empty());
    assert_eq!(raw.header, header);
    assert_eq!(&raw.payload[..], payload);
    assert_eq!(dec.decode(&mut buf), Ok(None));

    for cut in 0..wire.len() {
        assert_eq!(split_frame(&wire[..cut], MAX), Ok(None), "prefix of {cut}");
        let mut part = BytesMut::from(&wire[..cut]);
        assert_eq!(dec.decode(&mut part), Ok(None), "prefix of {cut}");
        assert_eq!(part.len(), cut, "nothing consumed from an incomplete frame");
    }
    (header, payload)
}

fn kv_pairs(payload: &[u8]) -> Vec<(&str, TypedData<'_>)> {
    KvList::new(payload)
        .collect::<Result<_, _>>()
        .expect("valid KV list")
}

#[test]
fn every_vector_has_the_provenance_line_and_a_consistent_length() {
    for v in VECTORS {
        assert_eq!(v.text.lines().next(), Some(PROVENANCE), "{}", v.name);
        let bytes = parse_hex(v.name, v.text);
        assert!(bytes.len() >= 11, "{}", v.name);
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap());
        assert_eq!(len as usize, bytes.len() - 4, "{}: LEN", v.name);
    }
    assert!(VARINT_TABLE.starts_with("# from spop-notes.md §2"));
}

#[test]
fn every_vector_file_is_tested() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".hex").map(str::to_owned))
        .collect();
    let listed: BTreeSet<String> = VECTORS.iter().map(|v| v.name.to_owned()).collect();
    assert_eq!(on_disk, listed);
}

#[test]
fn haproxy_hello_3x() {
    let wire = wire("haproxy-hello");
    let hello = HaproxyHello::new(16380, "pipelining");
    let mut buf = BytesMut::new();
    hello.encode(&mut buf);
    assert_bytes(&buf, &wire);

    let (hdr, payload) = decode(&wire);
    assert_eq!(
        hdr,
        FrameHeader::new(FrameType::HAPROXY_HELLO, FrameFlags::FIN, 0, 0)
    );
    assert_eq!(
        kv_pairs(payload),
        [
            ("supported-versions", TypedData::String(b"2.0")),
            ("max-frame-size", TypedData::Uint32(16380)),
            ("capabilities", TypedData::String(b"pipelining")),
        ]
    );
    let Ok(Frame::HaproxyHello(h)) = Frame::parse(&hdr, payload) else {
        panic!("not a HAPROXY-HELLO");
    };
    assert_eq!(h, hello);
    assert_eq!(h.supported_versions, Some(&b"2.0"[..]));
    assert_eq!(h.max_frame_size, Some(16380));
    assert_eq!(h.capabilities, Some(&b"pipelining"[..]));
    assert_eq!(h.engine_id, None);
    assert!(!h.healthcheck);
}

#[test]
fn haproxy_hello_spop_check() {
    let wire = wire("haproxy-hello-healthcheck");
    assert_eq!(wire.len(), 82, "HAProxy's hard-coded health-check HELLO");
    let mut buf = BytesMut::new();
    HaproxyHello::healthcheck().encode(&mut buf);
    assert_bytes(&buf, &wire);

    let (hdr, payload) = decode(&wire);
    assert_eq!(
        hdr,
        FrameHeader::new(FrameType::HAPROXY_HELLO, FrameFlags::FIN, 0, 0)
    );
    assert_eq!(
        kv_pairs(payload),
        [
            ("supported-versions", TypedData::String(b"2.0")),
            ("max-frame-size", TypedData::Uint32(16380)),
            ("capabilities", TypedData::String(b"")),
            ("healthcheck", TypedData::Bool(true)),
        ]
    );
    let Ok(Frame::HaproxyHello(h)) = Frame::parse(&hdr, payload) else {
        panic!("not a HAPROXY-HELLO");
    };
    assert_eq!(h, HaproxyHello::healthcheck());
    assert!(h.healthcheck);
    assert_eq!(h.capabilities, Some(&b""[..]));
    assert_eq!(h.max_frame_size, Some(16380));
    assert_eq!(h.engine_id, None);
}

#[test]
fn agent_hello() {
    let wire = wire("agent-hello");
    let hello = AgentHello::new(16380, "pipelining");
    let mut buf = BytesMut::new();
    hello.encode(&mut buf);
    assert_bytes(&buf, &wire);

    let (hdr, payload) = decode(&wire);
    assert_eq!(
        hdr,
        FrameHeader::new(FrameType::AGENT_HELLO, FrameFlags::FIN, 0, 0)
    );
    assert_eq!(
        kv_pairs(payload),
        [
            ("version", TypedData::String(b"2.0")),
            ("max-frame-size", TypedData::Uint32(16380)),
            ("capabilities", TypedData::String(b"pipelining")),
        ]
    );
    let Ok(Frame::AgentHello(h)) = Frame::parse(&hdr, payload) else {
        panic!("not an AGENT-HELLO");
    };
    assert_eq!(h, hello);
    assert_eq!(h.version, Some(&b"2.0"[..]));
    let (size, caps) = h.validate(16380).expect("valid for HAProxy's health check");
    assert_eq!(size, 16380);
    assert_eq!(
        caps,
        Capabilities {
            pipelining: true,
            asynchronous: false,
            fragmentation: false
        }
    );
}

#[test]
fn notify_check_client_ip() {
    let wire = wire("notify-check-client-ip");
    let id = NotifyId::new(1, 1);
    let notify = Notify::builder(id)
        .message("check-client-ip")
        .arg("ip", Ipv4Addr::new(192, 168, 0, 1))
        .build();
    let mut buf = BytesMut::new();
    notify.encode(&mut buf);
    assert_bytes(&buf, &wire);

    let (hdr, payload) = decode(&wire);
    assert_eq!(
        hdr,
        FrameHeader::new(FrameType::NOTIFY, FrameFlags::FIN, 1, 1)
    );
    assert_eq!(hdr.id(), id);
    let Ok(Frame::Notify(list)) = Frame::parse(&hdr, payload) else {
        panic!("not a NOTIFY");
    };
    let messages: Vec<_> = list
        .iter()
        .map(|m| {
            let args: Vec<_> = m.args().map(|a| (a.name, a.value)).collect();
            (m.name(), args)
        })
        .collect();
    assert_eq!(
        messages,
        [(
            "check-client-ip",
            vec![("ip", TypedData::Ipv4(Ipv4Addr::new(192, 168, 0, 1)))]
        )]
    );

    let owned = Notify::parse(hdr.id(), Bytes::copy_from_slice(payload)).unwrap();
    assert_eq!(owned, notify);
    let msg = owned.message("check-client-ip").unwrap();
    assert_eq!(msg.len(), 1);
    assert_eq!(
        msg.arg("ip").and_then(|v| v.as_ip()),
        Some("192.168.0.1".parse().unwrap())
    );
}

/// Encodes `actions` as the ACK of `id`, compares with the vector, decodes the vector back.
fn check_ack(name: &str, id: NotifyId, actions: &Actions, expected: &[Action<'_>]) {
    let wire = wire(name);
    let mut buf = BytesMut::new();
    actions.encode_ack(id, &mut buf);
    assert_bytes(&buf, &wire);
    assert_eq!(actions.frame_len(id), wire.len() - 4);
    assert_eq!(actions.len(), expected.len());
    assert_eq!(actions.iter().collect::<Vec<_>>(), expected);

    let (hdr, payload) = decode(&wire);
    assert_eq!(
        hdr,
        FrameHeader::new(FrameType::ACK, FrameFlags::FIN, id.stream_id, id.frame_id)
    );
    assert_eq!(payload, actions.as_bytes());
    let Ok(Frame::Ack(list)) = Frame::parse(&hdr, payload) else {
        panic!("{name}: not an ACK");
    };
    assert_eq!(list.is_empty(), expected.is_empty());
    assert_eq!(list.iter().collect::<Vec<_>>(), expected, "{name}");
}

#[test]
fn ack_set_var_ip_score() {
    let mut actions = Actions::new();
    actions.set_var(Scope::Transaction, "ip_score", 42i64);
    check_ack(
        "ack-set-var-ip-score",
        NotifyId::new(1, 1),
        &actions,
        &[Action::SetVar {
            scope: Scope::Transaction,
            name: "ip_score",
            value: TypedData::Int64(42),
        }],
    );
}

#[test]
fn ack_unset_var_flag() {
    let mut actions = Actions::new();
    actions.unset_var(Scope::Session, "flag");
    check_ack(
        "ack-unset-var-flag",
        NotifyId::new(1, 1),
        &actions,
        &[Action::UnsetVar {
            scope: Scope::Session,
            name: "flag",
        }],
    );
}

#[test]
fn ack_set_var_minus_one() {
    let mut actions = Actions::new();
    actions.set_var(Scope::Transaction, "n", -1i64);
    check_ack(
        "ack-set-var-minus-one",
        NotifyId::new(1, 1),
        &actions,
        &[Action::SetVar {
            scope: Scope::Transaction,
            name: "n",
            value: TypedData::Int64(-1),
        }],
    );
}

#[test]
fn ack_empty() {
    check_ack("ack-empty", NotifyId::new(5, 1), &Actions::new(), &[]);
}

/// What the state machine sends, with its default configuration, for a handler that returned
/// no actions: the padded ACK, byte for byte; and the unpadded one when padding is off.
#[test]
fn ack_padded_by_default() {
    use spop_proto::{AgentConfig, AgentConnection, PAD_VAR_NAME};
    use std::sync::Arc;
    use std::time::Instant;

    let ack_bytes = |config: AgentConfig| {
        // an arbitrary origin: the state machine only compares instants it is given
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut conn = AgentConnection::new(Arc::new(config), now);
        let mut rbuf = BytesMut::new();
        HaproxyHello::new(MAX, "pipelining").encode(&mut rbuf);
        Notify::builder(NotifyId::new(5, 1))
            .message("m")
            .build()
            .encode(&mut rbuf);
        conn.handle_read(now, &mut rbuf);
        let mut hello = BytesMut::new();
        conn.poll_transmit(&mut hello);
        conn.send_ack(now, NotifyId::new(5, 1), &Actions::new())
            .unwrap();
        let mut out = BytesMut::new();
        conn.poll_transmit(&mut out);
        out.to_vec()
    };
    assert_bytes(&ack_bytes(AgentConfig::default()), &wire("ack-padded"));
    let mut padded = Actions::new();
    padded.unset_var(Scope::Transaction, PAD_VAR_NAME);
    check_ack(
        "ack-padded",
        NotifyId::new(5, 1),
        &padded,
        &[Action::UnsetVar {
            scope: Scope::Transaction,
            name: PAD_VAR_NAME,
        }],
    );
    let mut off = AgentConfig::default();
    off.pad_empty_ack = false;
    assert_bytes(&ack_bytes(off), &wire("ack-empty"));
}

#[test]
fn agent_disconnect_normal() {
    let wire = wire("agent-disconnect-normal");
    let mut buf = BytesMut::new();
    Disconnect::encode(
        &mut buf,
        FrameType::AGENT_DISCONNECT,
        StatusCode::NORMAL,
        "normal",
    );
    assert_bytes(&buf, &wire);

    let (hdr, payload) = decode(&wire);
    assert_eq!(
        hdr,
        FrameHeader::new(FrameType::AGENT_DISCONNECT, FrameFlags::FIN, 0, 0)
    );
    assert_eq!(
        kv_pairs(payload),
        [
            ("status-code", TypedData::Uint32(0)),
            ("message", TypedData::String(b"normal")),
        ]
    );
    let Ok(Frame::AgentDisconnect(d)) = Frame::parse(&hdr, payload) else {
        panic!("not an AGENT-DISCONNECT");
    };
    assert_eq!(d.status_code, Some(0));
    assert_eq!(d.status(), Some(StatusCode::NORMAL));
    assert_eq!(d.message, Some(&b"normal"[..]));

    // The same payload from HAProxy's side (type 2) decodes identically.
    let hdr2 = FrameHeader::new(FrameType::HAPROXY_DISCONNECT, FrameFlags::FIN, 0, 0);
    let Ok(Frame::HaproxyDisconnect(d2)) = Frame::parse(&hdr2, payload) else {
        panic!("not a HAPROXY-DISCONNECT");
    };
    assert_eq!(d2, d);
}

/// All vectors back to back, delivered in awkward chunks, come out of one decoder in order.
#[test]
fn all_vectors_as_one_stream() {
    let frames: Vec<Vec<u8>> = VECTORS.iter().map(|v| parse_hex(v.name, v.text)).collect();
    let stream: Vec<u8> = frames.concat();
    for chunk in [1, 2, 3, 7, 11, 64, stream.len()] {
        let mut dec = FrameDecoder::new(MAX);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in stream.chunks(chunk) {
            buf.extend_from_slice(part);
            while let Some(raw) = dec.decode(&mut buf).unwrap() {
                raw.parse().expect("every vector parses");
                let mut whole = BytesMut::new();
                spop_proto::frame::encode_frame(&mut whole, raw.header, |b| {
                    b.extend_from_slice(&raw.payload);
                });
                got.push(whole.to_vec());
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames, "chunks of {chunk}");
    }
}

// ---- varints (spop-notes §2) ---------------------------------------------------------------

fn varint_table() -> Vec<(u64, Vec<u8>)> {
    VARINT_TABLE
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (value, bytes) = l.split_once('=').expect("<value> = <hex>");
            let value: u64 = value.trim().parse().expect("decimal value");
            (value, parse_hex("varint.txt", bytes))
        })
        .collect()
}

#[test]
fn varint_boundary_table() {
    let table = varint_table();
    assert_eq!(table.len(), 23, "every row of the table in spop-notes §2");
    for (value, bytes) in table {
        let mut buf = Vec::new();
        varint::put(&mut buf, value);
        assert_bytes(&buf, &bytes);
        let (arr, len) = varint::encode(value);
        assert_bytes(&arr[..len], &bytes);
        assert_eq!(varint::encoded_len(value), bytes.len(), "{value}");
        assert!(bytes.len() <= varint::MAX_LEN);
        assert_eq!(varint::decode(&bytes), Ok((value, bytes.len())), "{value}");

        // followed by more data: only the varint is consumed
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0x00, 0xff, 0x80]);
        assert_eq!(varint::decode(&longer), Ok((value, bytes.len())));

        // every strict prefix is truncated
        for cut in 0..bytes.len() {
            assert_eq!(
                varint::decode(&bytes[..cut]),
                Err(DecodeError::Truncated("varint")),
                "{value} cut at {cut}"
            );
        }

        // as a typed UINT64 value: type byte 0x05 then the same bytes
        let mut typed = Vec::new();
        TypedData::Uint64(value).encode(&mut typed);
        assert_eq!(typed[0], 0x05);
        assert_bytes(&typed[1..], &bytes);
    }
}

#[test]
fn varint_length_thresholds() {
    // spop-notes §2: the first value needing N bytes, N = 2..=10
    let firsts: [u64; 9] = [
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
    for (i, first) in firsts.into_iter().enumerate() {
        assert_eq!(varint::encoded_len(first - 1), i + 1, "{}", first - 1);
        assert_eq!(varint::encoded_len(first), i + 2, "{first}");
        for v in [first - 1, first] {
            let (arr, len) = varint::encode(v);
            assert_eq!(varint::decode(&arr[..len]), Ok((v, len)));
        }
    }
    assert_eq!(varint::encoded_len(u64::MAX), varint::MAX_LEN);
}

#[test]
fn negative_integers_are_twos_complement_not_zigzag() {
    let table = varint_table();
    let bytes_of = |v: u64| table.iter().find(|(x, _)| *x == v).unwrap().1.clone();
    for (value, expected) in [
        (TypedData::Int64(-1), bytes_of(u64::MAX)),
        (TypedData::Int32(-1), bytes_of(u64::MAX)),
        (TypedData::Int64(-2), bytes_of(u64::MAX - 1)),
        (TypedData::Int64(i64::MAX), bytes_of(i64::MAX as u64)),
        (TypedData::Uint32(u32::MAX), bytes_of(u64::from(u32::MAX))),
    ] {
        let mut buf = Vec::new();
        value.encode(&mut buf);
        assert_bytes(&buf[1..], &expected);
        assert_eq!(TypedData::decode(&buf), Ok((value, buf.len())));
    }
}
