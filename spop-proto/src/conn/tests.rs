//! Deterministic simulation of the agent state machine against a fake HAProxy: bytes in,
//! bytes out, an injected clock; no sockets, no sleeps.
#![allow(clippy::field_reassign_with_default)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use super::*;
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
fn graceful_drain_answers_in_flight_then_disconnects() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(3, 1), 0));
    let n = h.notifies();
    let now = h.now;
    h.conn.begin_drain(now, now + Duration::from_secs(5));
    assert!(h.conn.is_draining() && !h.conn.wants_read());
    assert_eq!(h.conn.poll_timeout(), Some(now + Duration::from_secs(5)));
    h.ack(n[1].id(), 1);
    assert!(!h.conn.is_closed());
    h.ack(n[0].id(), 0);
    assert!(matches!(
        h.sent[..],
        [
            Out::Ack { .. },
            Out::Ack { .. },
            Out::Disconnect {
                status: StatusCode::NORMAL,
                ..
            }
        ]
    ));
    assert_eq!(
        h.closed_with(),
        &ConnectionError::LocallyClosed(StatusCode::NORMAL)
    );
    assert!(!h.closed_with().is_error());
}

#[test]
fn drain_deadline_sends_disconnect_anyway() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    let now = h.now;
    h.conn.begin_drain(now, now + Duration::from_secs(2));
    h.advance(Duration::from_secs(1));
    assert!(!h.conn.is_closed());
    h.advance(Duration::from_secs(1));
    h.assert_disconnected(StatusCode::TIMEOUT);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::TimedOut(TimeoutKind::Drain)
    );
    assert_eq!(
        h.conn.send_ack(h.now, NotifyId::new(1, 1), &Actions::new()),
        Err(AckError::Closed)
    );
}

#[test]
fn drain_when_idle_closes_at_once() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    let now = h.now;
    h.conn.begin_drain(now, now + Duration::from_secs(2));
    h.collect();
    h.assert_disconnected(StatusCode::NORMAL);
}

#[test]
fn hello_timeout_with_injected_clock() {
    let mut config = AgentConfig::default();
    config.hello_timeout = Some(Duration::from_secs(3));
    let mut h = FakeHaproxy::new(config);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(3)));
    // one byte at a time, too slowly
    let mut hello = BytesMut::new();
    HaproxyHello::new(16380, "pipelining").encode(&mut hello);
    h.feed(&hello[..1]);
    h.advance(Duration::from_secs(1));
    h.feed(&hello[1..2]);
    h.advance(Duration::from_secs(1));
    assert!(!h.conn.is_closed());
    h.advance(Duration::from_secs(1));
    h.assert_disconnected(StatusCode::TIMEOUT);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::TimedOut(TimeoutKind::Hello)
    );
}

#[test]
fn idle_timeout_only_when_nothing_in_flight() {
    let mut config = AgentConfig::default();
    config.idle_timeout = Some(Duration::from_secs(10));
    let mut h = FakeHaproxy::established(config, "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    assert_eq!(
        h.conn.poll_timeout(),
        None,
        "no idle timer while a NOTIFY is in flight"
    );
    h.advance(Duration::from_secs(30));
    h.ack(NotifyId::new(1, 1), 0);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(10)));
    h.advance(Duration::from_secs(10));
    h.assert_disconnected(StatusCode::TIMEOUT);
}

#[test]
fn eof_is_clean_only_when_idle() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.conn.handle_eof(h.now);
    h.collect();
    assert_eq!(h.closed_with(), &ConnectionError::Eof { clean: true });
    assert!(h.sent.is_empty(), "no DISCONNECT to a peer that is gone");

    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0)[..9]);
    h.conn.handle_eof(h.now);
    h.collect();
    assert_eq!(h.closed_with(), &ConnectionError::Eof { clean: false });
}

#[test]
fn haproxy_disconnect_is_answered() {
    let mut h = FakeHaproxy::established(AgentConfig::default(), "pipelining");
    let mut b = BytesMut::new();
    Disconnect::encode(
        &mut b,
        FrameType::HAPROXY_DISCONNECT,
        StatusCode::TIMEOUT,
        "a timeout occurred",
    );
    h.feed(&b);
    h.assert_disconnected(StatusCode::NORMAL);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::PeerDisconnected {
            status: StatusCode::TIMEOUT,
            message: "a timeout occurred".into()
        }
    );
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

// ---- one test per malformed input, with the status code it earns -------------------------

fn fresh() -> FakeHaproxy {
    FakeHaproxy::new(AgentConfig::default())
}

fn est() -> FakeHaproxy {
    FakeHaproxy::established(AgentConfig::default(), "pipelining")
}

#[test]
fn malformed_length_zero() {
    let mut h = est();
    h.feed(&[0, 0, 0, 0]);
    h.assert_disconnected(StatusCode::INVALID);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::Decode(DecodeError::FrameTooShort(0))
    );
}

#[test]
fn malformed_length_below_seven() {
    for len in 1..7u8 {
        let mut h = fresh();
        h.feed(&[0, 0, 0, len, 1, 0, 0]);
        h.assert_disconnected(StatusCode::INVALID);
    }
}

#[test]
fn malformed_length_above_limit_before_buffering() {
    let mut h = fresh();
    h.feed(&[0xff, 0xff, 0xff, 0xff]);
    h.assert_disconnected(StatusCode::TOO_BIG);
    let mut h = est();
    h.feed(&16381u32.to_be_bytes());
    h.assert_disconnected(StatusCode::TOO_BIG);
}

#[test]
fn malformed_truncated_varint() {
    let mut h = est();
    // NOTIFY, frame-id varint cut by the end of the frame
    h.feed(&[0, 0, 0, 7, 3, 0, 0, 0, 1, 1, 0xf3]);
    h.assert_disconnected(StatusCode::INVALID);
    // an INT64 argument whose varint is cut by the end of the frame
    let mut h = est();
    h.feed(&raw_frame(
        FrameType::NOTIFY,
        1,
        1,
        1,
        &[1, b'm', 1, 1, b'n', 0x04, 0xf0, 0x80],
    ));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_eleven_byte_varint() {
    let mut h = est();
    let mut p = vec![1, b'm', 1, 1, b'n', 0x04];
    p.extend_from_slice(&[0xff; 10]);
    p.push(0x00);
    h.feed(&raw_frame(FrameType::NOTIFY, 1, 1, 1, &p));
    h.assert_disconnected(StatusCode::INVALID);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::Decode(DecodeError::InvalidVarint)
    );
}

#[test]
fn malformed_unknown_data_type() {
    let mut h = fresh();
    h.feed(&raw_frame(
        FrameType::HAPROXY_HELLO,
        1,
        0,
        0,
        &[3, b'f', b'o', b'o', 0x0d],
    ));
    h.assert_disconnected(StatusCode::INVALID);
    assert_eq!(
        h.closed_with(),
        &ConnectionError::Decode(DecodeError::UnknownDataType(0x0d))
    );
}

#[test]
fn malformed_truncated_kv() {
    let mut h = fresh();
    let mut p = hello_payload(&[("supported-versions", TypedData::String(b"2.0"))]);
    p.extend_from_slice(&[14, b'm', b'a', b'x']);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_notify_before_hello() {
    let mut h = fresh();
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    h.assert_disconnected(StatusCode::INVALID);
    assert!(matches!(
        h.closed_with(),
        ConnectionError::Protocol(ProtocolError::UnexpectedFrame { .. })
    ));
}

#[test]
fn malformed_second_hello() {
    let mut h = est();
    h.send_hello(16380, "pipelining");
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_bad_version() {
    let mut h = fresh();
    let p = hello_payload(&[
        ("supported-versions", TypedData::String(b"1.0,3.0")),
        ("max-frame-size", TypedData::Uint32(16380)),
        ("capabilities", TypedData::String(b"")),
    ]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::BAD_VERSION);
}

#[test]
fn malformed_missing_version() {
    let mut h = fresh();
    let p = hello_payload(&[
        ("max-frame-size", TypedData::Uint32(16380)),
        ("capabilities", TypedData::String(b"")),
    ]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::NO_VERSION);
}

#[test]
fn malformed_missing_frame_size() {
    let mut h = fresh();
    let p = hello_payload(&[("supported-versions", TypedData::String(b"2.0"))]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 0, 0, &p));
    h.assert_disconnected(StatusCode::NO_FRAME_SIZE);
}

#[test]
fn malformed_frame_size_below_256() {
    let mut h = fresh();
    h.send_hello(255, "pipelining");
    h.assert_disconnected(StatusCode::BAD_FRAME_SIZE);
    let mut h = fresh();
    h.send_hello(100, "pipelining");
    h.assert_disconnected(StatusCode::BAD_FRAME_SIZE);
}

#[test]
fn frame_size_above_our_ceiling_is_clamped_not_refused() {
    // "above the offer" is a fault of an AGENT-HELLO (checked by AgentHello::validate);
    // a HAPROXY-HELLO offering more than we accept just gets our ceiling back.
    let mut h = fresh();
    h.send_hello(u32::MAX, "pipelining");
    assert_eq!(
        h.sent,
        [Out::Hello {
            max_frame_size: 16380,
            capabilities: "pipelining".into()
        }]
    );
}

#[test]
fn malformed_frame_without_fin() {
    let mut h = est();
    let mut b = FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0);
    b[8] = 0; // flags low byte: FIN cleared
    h.feed(&b);
    h.assert_disconnected(StatusCode::FRAGMENTATION_NOT_SUPPORTED);
    // UNSET continuation without fragmentation
    let mut h = est();
    h.feed(&raw_frame(FrameType::UNSET, 1, 1, 1, b"x"));
    h.assert_disconnected(StatusCode::FRAGMENTATION_NOT_SUPPORTED);
    // HELLO without FIN
    let mut h = fresh();
    let mut b = BytesMut::new();
    HaproxyHello::new(16380, "").encode(&mut b);
    b[8] = 0;
    h.feed(&b);
    h.assert_disconnected(StatusCode::FRAGMENTATION_NOT_SUPPORTED);
}

#[test]
fn malformed_hello_with_ids() {
    let mut h = fresh();
    let p = hello_payload(&[("supported-versions", TypedData::String(b"2.0"))]);
    h.feed(&raw_frame(FrameType::HAPROXY_HELLO, 1, 1, 0, &p));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn malformed_agent_frame_types_from_haproxy() {
    for t in [
        FrameType::ACK,
        FrameType::AGENT_HELLO,
        FrameType::AGENT_DISCONNECT,
    ] {
        let mut h = est();
        h.feed(&raw_frame(t, 1, 0, 0, &[]));
        h.assert_disconnected(StatusCode::INVALID);
    }
}

#[test]
fn malformed_nb_args_larger_than_present() {
    let mut h = est();
    h.feed(&raw_frame(
        FrameType::NOTIFY,
        1,
        1,
        1,
        &[1, b'm', 2, 1, b'a', 0x00],
    ));
    h.assert_disconnected(StatusCode::INVALID);
}

#[test]
fn garbage_instead_of_hello() {
    let mut h = fresh();
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // "GET " read as a length: 0x47455420 is far above the limit
    h.assert_disconnected(StatusCode::TOO_BIG);
}

#[test]
fn bytes_after_close_are_ignored() {
    let mut h = est();
    h.feed(&[0, 0, 0, 0]);
    h.assert_disconnected(StatusCode::INVALID);
    let sent = h.sent.len();
    h.feed(&FakeHaproxy::notify_bytes(NotifyId::new(1, 1), 0));
    h.conn.handle_eof(h.now);
    h.conn.handle_timeout(h.now + Duration::from_secs(100));
    h.conn.close(h.now, StatusCode::NORMAL, "again");
    h.collect();
    assert_eq!(h.sent.len(), sent);
    assert_eq!(h.closed, 1);
}

#[test]
fn local_close_sends_status_and_truncated_message() {
    let mut h = est();
    h.conn.close(h.now, StatusCode(150), &"m".repeat(1000));
    h.collect();
    h.assert_disconnected(StatusCode(150));
}
