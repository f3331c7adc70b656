//! Deterministic simulation of the agent state machine against a fake HAProxy: bytes in,
//! bytes out, an injected clock; no sockets, no sleeps.
#![allow(clippy::field_reassign_with_default)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use super::*;
use crate::frame::Scope;

mod lifecycle;
mod malformed;
use crate::frame::{Frame, FrameFlags, FrameHeader, encode_frame, split_frame};
use crate::{DecodeError, TypedData};

/// A frame the agent sent, decoded into owned parts for assertions.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Hello {
        max_frame_size: u64,
        capabilities: String,
    },
    Disconnect {
        status: StatusCode,
        message: String,
    },
    Ack {
        id: NotifyId,
        actions: Vec<String>,
    },
}

struct FakeHaproxy {
    conn: AgentConnection,
    now: Instant,
    rbuf: BytesMut,
    events: Vec<Event>,
    sent: Vec<Out>,
    closed: usize,
}

impl FakeHaproxy {
    fn new(config: AgentConfig) -> Self {
        // the only clock read: an arbitrary origin, advanced by hand afterwards
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        Self {
            conn: AgentConnection::new(Arc::new(config), now),
            now,
            rbuf: BytesMut::new(),
            events: Vec::new(),
            sent: Vec::new(),
            closed: 0,
        }
    }

    fn established(config: AgentConfig, caps: &str) -> Self {
        let mut h = Self::new(config);
        h.send_hello(16380, caps);
        assert!(
            matches!(h.sent.as_slice(), [Out::Hello { .. }]),
            "{:?}",
            h.sent
        );
        assert!(matches!(h.events.as_slice(), [Event::Established(_)]));
        h.sent.clear();
        h.events.clear();
        h
    }

    /// Feeds raw bytes, then collects every output.
    fn feed(&mut self, bytes: &[u8]) {
        self.rbuf.extend_from_slice(bytes);
        self.conn.handle_read(self.now, &mut self.rbuf);
        self.collect();
    }

    fn collect(&mut self) {
        let mut out = BytesMut::new();
        self.conn.poll_transmit(&mut out);
        let mut rest = &out[..];
        while !rest.is_empty() {
            let (h, payload, used) = split_frame(rest, u32::MAX).unwrap().expect("whole frame");
            assert_eq!(h.flags, FrameFlags::FIN, "agent frames carry exactly FIN");
            let out = match Frame::parse(&h, payload).unwrap() {
                Frame::AgentHello(a) => {
                    assert_eq!((h.stream_id, h.frame_id), (0, 0));
                    assert_eq!(a.version, Some(&b"2.0"[..]));
                    Out::Hello {
                        max_frame_size: a.max_frame_size.unwrap(),
                        capabilities: String::from_utf8(a.capabilities.unwrap().to_vec()).unwrap(),
                    }
                }
                Frame::AgentDisconnect(d) => {
                    assert_eq!((h.stream_id, h.frame_id), (0, 0));
                    Out::Disconnect {
                        status: d.status().unwrap(),
                        message: String::from_utf8(d.message.unwrap().to_vec()).unwrap(),
                    }
                }
                Frame::Ack(list) => Out::Ack {
                    id: h.id(),
                    actions: list.iter().map(|a| a.to_string()).collect(),
                },
                other => panic!("agent sent {other:?}"),
            };
            self.sent.push(out);
            rest = &rest[used..];
        }
        while let Some(ev) = self.conn.poll_event() {
            if matches!(ev, Event::Closed(_)) {
                self.closed += 1;
                assert_eq!(self.closed, 1, "Closed emitted twice");
            }
            self.events.push(ev);
        }
    }

    fn send_hello(&mut self, max: u32, caps: &str) {
        let mut b = BytesMut::new();
        HaproxyHello::new(max, caps).encode(&mut b);
        self.feed(&b);
    }

    fn notify_bytes(id: NotifyId, n: i64) -> BytesMut {
        let mut b = BytesMut::new();
        Notify::builder(id)
            .message("check-client-ip")
            .arg("ip", std::net::Ipv4Addr::new(192, 168, 0, 1))
            .arg("n", n)
            .build()
            .encode(&mut b);
        b
    }

    fn notifies(&mut self) -> Vec<Notify> {
        let mut v = Vec::new();
        self.events.retain(|e| match e {
            Event::Notify(n) => {
                v.push(n.clone());
                false
            }
            _ => true,
        });
        v
    }

    fn ack(&mut self, id: NotifyId, score: i64) {
        let mut a = Actions::new();
        a.set_var(Scope::Transaction, "score", score);
        self.conn.send_ack(self.now, id, &a).unwrap();
        self.conn.handle_read(self.now, &mut self.rbuf);
        self.collect();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.conn.poll_timeout().is_some_and(|t| t <= self.now) {
            self.conn.handle_timeout(self.now);
        }
        self.collect();
    }

    fn closed_with(&self) -> &ConnectionError {
        match self.events.last() {
            Some(Event::Closed(e)) => e,
            other => panic!("not closed: {other:?}"),
        }
    }

    /// Asserts the last frame sent is an AGENT-DISCONNECT with `status` and the machine closed.
    fn assert_disconnected(&self, status: StatusCode) {
        match self.sent.last() {
            Some(Out::Disconnect { status: s, message }) => {
                assert_eq!(*s, status, "message: {message}");
                assert!(message.len() <= 255);
            }
            other => panic!("expected AGENT-DISCONNECT {status}, got {other:?}"),
        }
        assert!(self.conn.is_closed());
        assert_eq!(self.closed, 1);
        assert_eq!(self.closed_with().status(), Some(status));
        assert!(!self.conn.wants_read());
    }
}

fn raw_frame(t: FrameType, flags: u32, sid: u64, fid: u64, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    encode_frame(
        &mut b,
        FrameHeader::new(t, FrameFlags(flags), sid, fid),
        |d| d.put_slice(payload),
    );
    b
}

fn hello_payload(pairs: &[(&str, TypedData<'_>)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (k, v) in pairs {
        crate::KvList::put(&mut p, k, *v);
    }
    p
}

#[test]
fn handshake_negotiates_min_size_and_capabilities() {
    let mut h = FakeHaproxy::new(AgentConfig::default());
    assert!(h.conn.wants_read());
    h.send_hello(65_000, "pipelining,async");
    assert_eq!(
        h.sent,
        [Out::Hello {
            max_frame_size: 16380,
            capabilities: "pipelining".into()
        }]
    );
    let Event::Established(n) = &h.events[0] else {
        panic!()
    };
    assert_eq!(n.max_frame_size, 16380);
    assert!(n.capabilities.pipelining && !n.capabilities.asynchronous);
    assert_eq!(h.conn.max_frame_size(), 16380);

    // HAProxy offering less than our ceiling wins; no pipelining offered, none used
    let mut config = AgentConfig::default();
    config.max_frame_size = 1 << 20;
    let mut h = FakeHaproxy::new(config);
    h.send_hello(300, "");
    assert_eq!(
        h.sent,
        [Out::Hello {
            max_frame_size: 300,
            capabilities: String::new()
        }]
    );
    // without pipelining, one NOTIFY at a time
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 1));
    assert!(!h.conn.wants_read());

    // fragmentation announced when configured
    let mut config = AgentConfig::default();
    config.fragmentation = true;
    config.pipelining = false;
    let mut h = FakeHaproxy::new(config);
    h.send_hello(16380, "pipelining");
    assert_eq!(
        h.sent,
        [Out::Hello {
            max_frame_size: 16380,
            capabilities: "fragmentation".into()
        }]
    );
}

#[test]
fn engine_id_and_unknown_keys() {
    let mut h = FakeHaproxy::new(AgentConfig::default());
    let p = hello_payload(&[
        ("supported-versions", TypedData::String(b" 1.5 , 2.0")),
        ("max-frame-size", TypedData::Int64(16380)),
        ("future-key", TypedData::Ipv6(std::net::Ipv6Addr::LOCALHOST)),
        (
            "capabilities",
            TypedData::String(b"fragmentation, pipelining"),
        ),
        ("engine-id", TypedData::String(b"7A3C-ENGINE")),
        ("max-frame-size", TypedData::Uint32(4096)), // later duplicate wins
    ]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    assert_eq!(
        h.sent,
        [Out::Hello {
            max_frame_size: 4096,
            capabilities: "pipelining".into()
        }]
    );
    let Event::Established(n) = &h.events[0] else {
        panic!()
    };
    assert_eq!(n.engine_id.as_deref(), Some("7A3C-ENGINE"));
}

#[test]
fn health_check_is_answered_then_closed() {
    let mut h = FakeHaproxy::new(AgentConfig::default());
    let mut b = BytesMut::new();
    HaproxyHello::healthcheck().encode(&mut b);
    assert_eq!(b.len(), 82);
    h.feed(&b);
    assert_eq!(
        h.sent,
        [Out::Hello {
            max_frame_size: 16380,
            capabilities: String::new()
        }]
    );
    assert!(matches!(&h.events[0], Event::Established(n) if n.healthcheck));
    assert_eq!(h.closed_with(), &ConnectionError::HealthCheck);
    assert!(h.conn.is_closed());
    // anything after is ignored
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 1));
    assert_eq!(h.sent.len(), 1);
}

#[test]
fn twenty_pipelined_notifies_acked_out_of_order() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    let mut wire = BytesMut::new();
    for i in 0..20u64 {
        wire.extend_from_slice(&FakeHaproxy::notify_bytes(
            NotifyId::new(2 * i + 1, 1),
            i as i64,
        ));
    }
    // delivered in awkward chunks
    for chunk in wire.chunks(7) {
        h.feed(chunk);
    }
    let notifies = h.notifies();
    assert_eq!(notifies.len(), 20);
    assert_eq!(h.conn.in_flight(), 20);
    assert!(!h.conn.wants_read(), "in-flight limit reached");
    for (i, n) in notifies.iter().enumerate() {
        let m = n.message("check-client-ip").unwrap();
        assert_eq!(m.arg("n"), Some(TypedData::Int64(i as i64)));
        assert_eq!(n.id(), NotifyId::new(2 * i as u64 + 1, 1));
    }
    for n in notifies.iter().rev() {
        h.ack(n.id(), n.id().stream_id as i64);
    }
    assert_eq!(h.conn.in_flight(), 0);
    assert!(h.conn.wants_read());
    let acked: Vec<NotifyId> = h
        .sent
        .iter()
        .map(|o| match o {
            Out::Ack { id, actions } => {
                assert_eq!(
                    actions,
                    &[format!("set-var txn.score = int64:{}", id.stream_id)]
                );
                *id
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<NotifyId> = (0..20u64)
        .rev()
        .map(|i| NotifyId::new(2 * i + 1, 1))
        .collect();
    assert_eq!(acked, expected);
    // ACKing twice is refused
    let err = h
        .conn
        .send_ack(h.now, NotifyId::new(1, 1), &Actions::new())
        .unwrap_err();
    assert_eq!(err, AckError::UnknownNotify(NotifyId::new(1, 1)));
}

#[test]
fn in_flight_limit_leaves_frames_buffered_until_an_ack() {
    let mut config = AgentConfig::default();
    config.max_in_flight = 2;
    let mut h = FakeHaproxy::established(config, "pipelining");
    let mut wire = BytesMut::new();
    for i in 1..=3 {
        wire.extend_from_slice(&FakeHaproxy::notify_bytes(NotifyId::new(i, 1), 0));
    }
    h.feed(&wire);
    let first = h.notifies();
    assert_eq!(first.len(), 2);
    assert!(!h.conn.wants_read());
    assert!(!h.rbuf.is_empty(), "third NOTIFY stays in the read buffer");
    h.ack(first[0].id(), 0);
    assert_eq!(
        h.notifies().len(),
        1,
        "the ACK freed a slot and the third NOTIFY was consumed"
    );
}

#[test]
fn stream_id_zero_and_max_ids() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    let ids = [
        NotifyId::new(0, 1),
        NotifyId::new(0, 2),
        NotifyId::new(u64::MAX, u64::MAX),
    ];
    for id in ids {
        h.feed(&FakeHaproxy::notify_bytes(id, -1));
    }
    let got: Vec<_> = h.notifies().iter().map(Notify::id).collect();
    assert_eq!(got, ids);
    for id in ids {
        h.ack(id, -1);
    }
    let acked: Vec<_> = h
        .sent
        .iter()
        .map(|o| {
            if let Out::Ack { id, .. } = o {
                *id
            } else {
                panic!()
            }
        })
        .collect();
    assert_eq!(acked, ids);
}

#[test]
fn duplicate_id_in_flight_is_acked_twice() {
    // HAProxy 2.x reuses a frame-id after a timed-out exchange: both get an ACK.
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    let id = NotifyId::new(7, 1);
    h.feed(&FakeHaproxy::notify_bytes(id, 1));
    h.feed(&FakeHaproxy::notify_bytes(id, 2));
    assert_eq!(h.conn.in_flight(), 2);
    h.ack(id, 1);
    h.ack(id, 2);
    assert_eq!(h.conn.in_flight(), 0);
    assert!(h.conn.send_ack(h.now, id, &Actions::new()).is_err());
}

#[test]
fn empty_notify_and_empty_ack_padding() {
    let config = AgentConfig::default();
    assert!(config.pad_empty_ack, "padding is on by default");
    let mut h = FakeHaproxy::established(config, "pipelining");
    h.feed(&raw_frame(FrameType::NOTIFY, 1, 1, 1, &[]));
    let n = h.notifies();
    assert_eq!(n[0].messages().count(), 0);
    h.conn.send_ack(h.now, n[0].id(), &Actions::new()).unwrap();
    h.collect();
    assert_eq!(
        h.sent,
        [Out::Ack {
            id: NotifyId::new(1, 1),
            actions: vec![format!("unset-var txn.{PAD_VAR_NAME}")]
        }]
    );

    // padding is the default; off, the ACK has no actions
    let mut config = AgentConfig::default();
    config.pad_empty_ack = false;
    let mut h = FakeHaproxy::established(config, "pipelining");
    h.feed(&raw_frame(FrameType::NOTIFY, 1, 1, 1, &[]));
    h.conn
        .send_ack(h.now, NotifyId::new(1, 1), &Actions::new())
        .unwrap();
    h.collect();
    assert_eq!(
        h.sent,
        [Out::Ack {
            id: NotifyId::new(1, 1),
            actions: vec![]
        }]
    );
}

#[test]
fn oversized_ack_is_refused_without_side_effects() {
    let mut h = FakeHaproxy::new(AgentConfig::default());
    h.send_hello(256, "pipelining");
    h.sent.clear();
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    let big = "x".repeat(300);
    let mut a = Actions::new();
    a.set_var(Scope::Transaction, "big", big.as_str());
    let err = h.conn.send_ack(h.now, NotifyId::new(1, 1), &a).unwrap_err();
    assert!(matches!(err, AckError::FrameTooLarge { max: 256, .. }));
    assert_eq!(h.conn.in_flight(), 1);
    h.conn
        .send_ack(h.now, NotifyId::new(1, 1), &Actions::new())
        .unwrap();
    assert_eq!(h.conn.in_flight(), 0);
}

#[test]
fn unknown_frame_type_is_skipped() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.feed(&raw_frame(FrameType(42), 1, 1, 1, b"whatever"));
    assert_eq!(h.events, [Event::FrameSkipped(FrameType(42))]);
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    assert_eq!(h.notifies().len(), 1);
}

#[test]
fn fragmented_notify_reassembly() {
    let mut config = AgentConfig::default();
    config.fragmentation = true;
    config.max_reassembly_size = 64;
    let mut h = FakeHaproxy::established(config, "pipelining");
    let full = FakeHaproxy::notify_bytes(NotifyId::new(4, 2), 99);
    let (_, payload, _) = split_frame(&full, 16380).unwrap().unwrap();
    let payload = payload.to_vec();
    let (a, rest) = payload.split_at(5);
    let (b, c) = rest.split_at(10);
    h.feed(&raw_frame(FrameType::NOTIFY, 0, 4, 2, a));
    h.feed(&raw_frame(FrameType::UNSET, 0, 4, 2, b));
    assert!(h.notifies().is_empty());
    h.feed(&raw_frame(FrameType::UNSET, 1, 4, 2, c));
    let n = h.notifies();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].id(), NotifyId::new(4, 2));
    assert_eq!(
        n[0].message("check-client-ip").unwrap().arg("n"),
        Some(TypedData::Int64(99))
    );

    // aborted by HAProxy: discarded, the connection lives
    h.feed(&raw_frame(FrameType::NOTIFY, 0, 6, 1, a));
    h.feed(&raw_frame(FrameType::UNSET, 3, 6, 1, &[]));
    assert!(h.notifies().is_empty());
    assert!(!h.conn.is_closed());

    // interlaced fragments
    h.feed(&raw_frame(FrameType::NOTIFY, 0, 8, 1, a));
    h.feed(&raw_frame(FrameType::UNSET, 1, 9, 1, b));
    h.assert_disconnected(StatusCode::INTERLACED_FRAMES);
}

#[test]
fn reassembly_is_bounded() {
    let mut config = AgentConfig::default();
    config.fragmentation = true;
    config.max_reassembly_size = 64;
    let mut h = FakeHaproxy::established(config, "pipelining");
    h.feed(&raw_frame(FrameType::NOTIFY, 0, 1, 1, &[0; 40]));
    h.feed(&raw_frame(FrameType::UNSET, 0, 1, 1, &[0; 40]));
    h.assert_disconnected(StatusCode::TOO_BIG);
}

#[test]
fn continuation_without_start_is_frame_id_not_found() {
    let mut config = AgentConfig::default();
    config.fragmentation = true;
    let mut h = FakeHaproxy::established(config, "pipelining");
    h.feed(&raw_frame(FrameType::UNSET, 1, 1, 1, b"x"));
    h.assert_disconnected(StatusCode::FRAME_ID_NOT_FOUND);
}
