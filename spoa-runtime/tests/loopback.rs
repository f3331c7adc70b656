//! The runtime over real loopback sockets, driven by a raw-bytes HAProxy stub
//! (`common::Stub`). Every test binds 127.0.0.1:0 (or a temporary Unix socket), stops the
//! server it starts and runs under `common::bounded`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use common::{
    Reply, STEP, Stub, TempSocketPath, bounded, init_tracing, notify_i, notify_with, scripted,
    start, start_on, wait_until,
};
use spoa_runtime::{
    BoxError, CancellationToken, Config, ConnInfo, Handler, Metrics, Request, Server, handler_fn,
    serve_connection, testing,
};
use spop_proto::frame::{AgentHello, FrameFlags, HaproxyHello};
use spop_proto::{
    Action, Actions, ConnectionError, FrameType, NotifyId, Scope, StatusCode, TypedData,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Counts handler starts and holds every handler until the test adds permits to `gate`.
fn gated(started: Arc<AtomicUsize>, gate: Arc<Semaphore>) -> impl Handler {
    handler_fn(move |req: Request| {
        let (started, gate) = (started.clone(), gate.clone());
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            let _permit = gate.acquire().await.expect("gate closed");
            let i = req
                .message("m")
                .and_then(|m| m.arg("i"))
                .and_then(|v| v.as_i64());
            let mut actions = Actions::new();
            actions.set_var(Scope::Transaction, "i", i.unwrap_or(-1));
            Ok::<_, BoxError>(actions)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_agent_hello_is_one_fin_frame_with_min_frame_size() {
    init_tracing();
    bounded(async {
        let srv = start(Server::builder().max_frame_size(4096), scripted()).await;

        // HAProxy offers more than the agent's ceiling: the agent's wins
        let mut c = Stub::connect(srv.addr).await;
        c.send_hello().await;
        // the whole frame arrives with the first read: written at once, never split
        let n = c.read_once().await;
        assert!(n >= 4, "first read returned {n} bytes");
        let buffered = c.buffered();
        let len = u32::from_be_bytes([buffered[0], buffered[1], buffered[2], buffered[3]]);
        assert_eq!(n, 4 + len as usize, "first read: {buffered:02x?}");
        let mut expected = BytesMut::new();
        AgentHello::new(4096, "pipelining").encode(&mut expected);
        assert_eq!(buffered, &expected[..], "AGENT-HELLO bytes");
        // byte-level header: type 0x65, flags exactly 0x00000001, ids `00 00`
        assert_eq!(&buffered[4..11], &[0x65, 0, 0, 0, 1, 0, 0]);
        let hello = c.recv().await;
        assert_eq!(hello.header.frame_type, FrameType::AGENT_HELLO);
        assert_eq!(hello.header.flags, FrameFlags::FIN);
        assert_eq!((hello.header.stream_id, hello.header.frame_id), (0, 0));
        assert_eq!(
            hello.reply,
            Reply::AgentHello {
                version: Some("2.0".into()),
                max_frame_size: Some(4096),
                capabilities: Some("pipelining".into()),
            }
        );
        // the connection works at the negotiated size
        c.roundtrip(1, 1, 7).await;

        // HAProxy offers less: HAProxy's wins
        let mut c2 = Stub::connect(srv.addr).await;
        c2.send_hello_frame(&HaproxyHello::new(1024, "pipelining"))
            .await;
        let hello = c2.recv().await;
        assert_eq!(hello.header.flags, FrameFlags::FIN);
        assert_eq!(
            hello.reply,
            Reply::AgentHello {
                version: Some("2.0".into()),
                max_frame_size: Some(1024),
                capabilities: Some("pipelining".into()),
            }
        );

        // HAProxy without pipelining: the agent announces none (empty, still present)
        let mut c3 = Stub::connect(srv.addr).await;
        c3.send_hello_frame(&HaproxyHello::new(16380, "")).await;
        assert!(matches!(
            c3.recv().await.reply,
            Reply::AgentHello { capabilities: Some(ref caps), .. } if caps.is_empty()
        ));
        assert!(c3.buffered().is_empty(), "nothing after the AGENT-HELLO");

        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_is_answered_then_closed() {
    init_tracing();
    bounded(async {
        let srv = start(Server::builder(), scripted()).await;
        let mut c = Stub::connect(srv.addr).await;
        c.send_hello_frame(&HaproxyHello::healthcheck()).await;
        let hello = c.recv().await;
        assert_eq!(hello.header.frame_type, FrameType::AGENT_HELLO);
        assert_eq!(
            hello.header.flags,
            FrameFlags::FIN,
            "3.x spop-check wants flags == 1"
        );
        let Reply::AgentHello {
            version,
            max_frame_size,
            capabilities,
        } = hello.reply
        else {
            panic!("expected AGENT-HELLO, got {hello:?}");
        };
        // what HAProxy 3.x's tcp-check validator demands: all three keys, version 2.0,
        // 256 <= size <= offered
        assert_eq!(version.as_deref(), Some("2.0"));
        assert_eq!(max_frame_size, Some(16380));
        assert!(capabilities.is_some());
        c.expect_eof().await;
        let m = srv.metrics.clone();
        wait_until("health check counted", || m.snapshot().health_checks == 1).await;
        wait_until("connection released", || {
            m.snapshot().connections_active == 0
        })
        .await;
        assert!(
            m.snapshot().disconnects.is_empty(),
            "no AGENT-DISCONNECT after a health check"
        );
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_notifies_acked_in_completion_order() {
    init_tracing();
    bounded(async {
        const N: u64 = 20;
        let metrics = Arc::new(Metrics::default());
        let acks = metrics.clone();
        // NOTIFY i sleeps (20 - i) * 5 ms, then (so that a loaded machine cannot reorder
        // them) waits until the runtime has queued the ACKs of every later NOTIFY
        let handler = handler_fn(move |req: Request| {
            let acks = acks.clone();
            async move {
                let i = req
                    .message("m")
                    .and_then(|m| m.arg("i"))
                    .and_then(|v| v.as_i64())
                    .unwrap();
                let i = u64::try_from(i).unwrap();
                tokio::time::sleep(Duration::from_millis((N - i) * 5)).await;
                let later = N - 1 - i;
                let deadline = Instant::now() + STEP;
                while acks.snapshot().acks < later && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let mut actions = Actions::new();
                actions
                    .set_var(Scope::Transaction, "i", i64::try_from(i).unwrap())
                    .set_var(Scope::Request, "stream", req.id().stream_id);
                Ok::<_, BoxError>(actions)
            }
        });
        let srv = start(Server::builder().metrics(metrics.clone()), handler).await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        let id = |i: u64| NotifyId::new(2 * i + 1, i + 100);
        let notifies: Vec<_> = (0..N)
            .map(|i| notify_i(id(i), i64::try_from(i).unwrap()))
            .collect();
        c.send_notifies(&notifies).await;
        for i in (0..N).rev() {
            let (got, actions) = c.recv_ack().await;
            assert_eq!(got, id(i), "ACK #{} out of order", N - 1 - i);
            assert_eq!(
                actions,
                [
                    format!("set-var txn.i = int64:{i}"),
                    format!("set-var req.stream = uint64:{}", 2 * i + 1)
                ]
            );
        }
        let s = metrics.snapshot();
        assert_eq!((s.notifies, s.acks, s.handled), (N, N, N));
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_and_error_are_acked_and_counted() {
    init_tracing();
    bounded(async {
        for error_var in [false, true] {
            let mut builder = Server::builder();
            // one value per cause; without the variable, the fallback ACK is only padded
            let (expected_panic, expected_error): (Vec<String>, Vec<String>) = if error_var {
                builder = builder.error_var(Scope::Transaction, "agent_error");
                (
                    vec!["set-var txn.agent_error = int64:3".into()],
                    vec!["set-var txn.agent_error = int64:1".into()],
                )
            } else {
                builder = builder.no_error_var();
                let pad = vec!["unset-var txn.spoa_pad_ack".to_string()];
                (pad.clone(), pad)
            };
            let srv = start(builder, scripted()).await;
            let mut c = Stub::connect(srv.addr).await;
            c.handshake().await;
            let (panics, fails, fine) = (
                NotifyId::new(1, 1),
                NotifyId::new(3, 1),
                NotifyId::new(5, 1),
            );
            c.send_notifies(&[
                notify_with(panics, 1, "panic", true),
                notify_with(fails, 3, "fail", true),
                notify_i(fine, 5),
            ])
            .await;
            let mut acks = BTreeMap::new();
            for _ in 0..3 {
                let (id, actions) = c.recv_ack().await;
                assert!(acks.insert(id, actions).is_none(), "two ACKs for {id}");
            }
            assert_eq!(acks[&panics], expected_panic, "error_var={error_var}");
            assert_eq!(acks[&fails], expected_error, "error_var={error_var}");
            assert_eq!(acks[&fine], ["set-var txn.i = int64:5"]);

            // the connection keeps serving, and misbehaves again without harm
            c.roundtrip(7, 1, 7).await;
            c.send_notify(&notify_with(NotifyId::new(9, 1), 9, "panic", true))
                .await;
            assert_eq!(
                c.recv_ack().await,
                (NotifyId::new(9, 1), expected_panic.clone())
            );
            c.roundtrip(11, 1, 11).await;

            let s = srv.metrics.snapshot();
            assert_eq!(
                (s.handler_panics, s.handler_errors, s.handler_timeouts),
                (2, 1, 0)
            );
            assert_eq!((s.notifies, s.acks), (6, 6));
            assert!(s.disconnects.is_empty());
            srv.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_gets_fallback_ack_at_its_budget() {
    init_tracing();
    bounded(async {
        let timeout = Duration::from_millis(100);
        let srv = start(
            Server::builder()
                .processing_timeout(Duration::from_millis(150))
                .handler_budget(timeout),
            scripted(),
        )
        .await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        let (slow, quick) = (NotifyId::new(1, 1), NotifyId::new(3, 1));
        let sent = Instant::now();
        c.send_notifies(&[notify_with(slow, 1, "hang", true), notify_i(quick, 3)])
            .await;
        // the quick one is not held up behind the hanging one
        assert_eq!(
            c.recv_ack().await,
            (quick, vec!["set-var txn.i = int64:3".to_string()])
        );
        let (id, actions) = c.recv_ack().await;
        let elapsed = sent.elapsed();
        assert_eq!(
            (id, actions),
            (slow, vec!["set-var txn.spoa_error = int64:2".to_string()]),
            "the fallback ACK for the abandoned handler"
        );
        assert!(
            elapsed >= timeout,
            "ACKed after {elapsed:?}, before the {timeout:?} timeout"
        );
        assert_eq!(srv.metrics.snapshot().handler_timeouts, 1);
        // a slow-but-in-time handler is unaffected
        c.send_notify(&notify_with(NotifyId::new(5, 1), 5, "sleep_ms", 20u64))
            .await;
        assert_eq!(
            c.recv_ack().await,
            (
                NotifyId::new(5, 1),
                vec!["set-var txn.i = int64:5".to_string()]
            )
        );
        let s = srv.metrics.snapshot();
        assert_eq!(
            (s.handler_timeouts, s.handler_errors, s.handler_panics),
            (1, 0, 0)
        );
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_stops_reading_until_handlers_finish() {
    init_tracing();
    bounded(async {
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let srv = start(
            Server::builder().max_in_flight(2),
            gated(started.clone(), gate.clone()),
        )
        .await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        let ids: Vec<_> = (0..10u64).map(|i| NotifyId::new(2 * i + 1, 1)).collect();
        let notifies: Vec<_> = ids
            .iter()
            .zip(0..)
            .map(|(&id, i)| notify_i(id, i))
            .collect();
        c.send_notifies(&notifies).await;
        wait_until("two handlers started", || {
            started.load(Ordering::SeqCst) >= 2
        })
        .await;
        // nothing more is consumed while both slots are taken (and nothing is ACKed)
        assert_eq!(c.recv_within(Duration::from_millis(150)).await, None);
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(srv.metrics.snapshot().notifies, 2);

        gate.add_permits(10);
        let mut acked = BTreeMap::new();
        for _ in 0..10 {
            let (id, actions) = c.recv_ack().await;
            assert!(acked.insert(id, actions).is_none(), "two ACKs for {id}");
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(acked[id], [format!("set-var txn.i = int64:{i}")]);
        }
        assert_eq!(started.load(Ordering::SeqCst), 10);
        // and reading resumed for good
        c.roundtrip(99, 1, 99).await;
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_acks_in_flight_work_then_disconnects() {
    init_tracing();
    bounded(async {
        let started = Arc::new(AtomicUsize::new(0));
        let count = started.clone();
        let handler = handler_fn(move |req: Request| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                let i = req
                    .message("m")
                    .and_then(|m| m.arg("i"))
                    .and_then(|v| v.as_i64());
                let mut actions = Actions::new();
                actions.set_var(Scope::Transaction, "i", i.unwrap_or(-1));
                Ok::<_, BoxError>(actions)
            }
        });
        let mut srv = start(Server::builder(), handler).await;
        let addr = srv.addr;
        let mut c = Stub::connect(addr).await;
        c.handshake().await;
        let ids: Vec<_> = (0..5u64).map(|i| NotifyId::new(2 * i + 1, 1)).collect();
        let notifies: Vec<_> = ids
            .iter()
            .zip(0..)
            .map(|(&id, i)| notify_i(id, i))
            .collect();
        c.send_notifies(&notifies).await;
        wait_until("five handlers running", || {
            started.load(Ordering::SeqCst) == 5
        })
        .await;
        srv.trigger_shutdown();

        let mut acked = BTreeMap::new();
        for _ in 0..5 {
            let (id, actions) = c.recv_ack().await;
            assert!(acked.insert(id, actions).is_none(), "two ACKs for {id}");
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(acked[id], [format!("set-var txn.i = int64:{i}")]);
        }
        let bye = c.recv().await;
        assert_eq!(bye.header.flags, FrameFlags::FIN);
        assert_eq!(bye.into_disconnect_status(), 0);
        c.expect_eof().await;
        srv.join().await;

        let refused = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr)).await;
        assert!(
            matches!(refused, Ok(Err(_))),
            "a connection after shutdown must be refused: {refused:?}"
        );
        let s = srv.metrics.snapshot();
        assert_eq!((s.acks, s.connections_active), (5, 0));
        assert_eq!(s.disconnects, [(StatusCode::NORMAL, 1)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_defers_extra_connections() {
    init_tracing();
    bounded(async {
        let srv = start(Server::builder().max_connections(2), scripted()).await;
        let mut c1 = Stub::connect(srv.addr).await;
        c1.handshake().await;
        let mut c2 = Stub::connect(srv.addr).await;
        c2.handshake().await;

        // the kernel completes the TCP handshake, but the agent does not take the connection
        let mut c3 = Stub::connect(srv.addr).await;
        c3.send_hello().await;
        assert_eq!(
            c3.recv_within(Duration::from_millis(300)).await,
            None,
            "third HELLO answered"
        );
        assert_eq!(srv.metrics.snapshot().connections_accepted, 2);

        drop(c1);
        let hello = c3.recv().await;
        assert_eq!(hello.header.frame_type, FrameType::AGENT_HELLO);
        c3.roundtrip(1, 1, 3).await;
        c2.roundtrip(1, 1, 2).await;
        assert_eq!(srv.metrics.snapshot().connections_accepted, 3);
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    init_tracing();
    bounded(async {
        let srv = start(Server::builder(), scripted()).await;
        let mut before = Stub::connect(srv.addr).await;
        before.handshake().await;

        let mut bad = Stub::connect(srv.addr).await;
        bad.handshake().await;
        bad.send_raw(&[0xff, 0xff, 0xff, 0xff]).await;
        let bye = bad.recv().await;
        assert_eq!(bye.header.frame_type, FrameType::AGENT_DISCONNECT);
        assert_eq!(bye.header.flags, FrameFlags::FIN);
        assert_eq!(
            bye.into_disconnect_status(),
            u64::from(StatusCode::TOO_BIG.0)
        );
        bad.expect_eof().await;

        // a NOTIFY before any HELLO: invalid frame (4)
        let mut early = Stub::connect(srv.addr).await;
        early.send_notify(&notify_i(NotifyId::new(1, 1), 1)).await;
        assert_eq!(early.recv().await.into_disconnect_status(), 4);
        early.expect_eof().await;

        before.roundtrip(1, 1, 1).await;
        let mut after = Stub::connect(srv.addr).await;
        after.handshake().await;
        after.roundtrip(1, 1, 2).await;
        before.roundtrip(3, 1, 3).await;

        let s = srv.metrics.snapshot();
        assert_eq!(
            s.disconnects,
            [(StatusCode::TOO_BIG, 1), (StatusCode::INVALID, 1)]
        );
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_is_skipped() {
    init_tracing();
    bounded(async {
        let srv = start(Server::builder(), scripted()).await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        c.send_frame(FrameType(42), b"\x01\x02some payload").await;
        c.send_frame(FrameType(200), b"").await;
        c.roundtrip(1, 1, 1).await;
        assert!(srv.metrics.snapshot().disconnects.is_empty());
        srv.stop().await;
    })
    .await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener() {
    init_tracing();
    bounded(async {
        let path = TempSocketPath::new();
        let listener = tokio::net::UnixListener::bind(&path.0).expect("bind unix socket");
        let srv = start_on(Server::builder(), listener, path.0.clone(), scripted());
        let stream = tokio::time::timeout(STEP, tokio::net::UnixStream::connect(&srv.addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut c = Stub::new(stream);
        c.handshake().await;
        c.roundtrip(1, 1, 1).await;
        let mut hc = Stub::new(
            tokio::net::UnixStream::connect(&srv.addr)
                .await
                .expect("connect"),
        );
        hc.send_hello_frame(&HaproxyHello::healthcheck()).await;
        assert_eq!(hc.recv().await.header.frame_type, FrameType::AGENT_HELLO);
        hc.expect_eof().await;
        srv.stop().await;
        assert_eq!(c.recv().await.into_disconnect_status(), 0);
        c.expect_eof().await;
        let p = path.0.clone();
        drop(path);
        assert!(!p.exists(), "socket file left behind");
    })
    .await;
}

/// What a [`Recorder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Connect(ConnInfo),
    Disconnect(u64, ConnectionError),
}

/// A handler recording its connection hooks.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    type Error = BoxError;

    async fn handle_notify(&self, req: Request) -> Result<Actions, BoxError> {
        let mut actions = Actions::new();
        actions.set_var(Scope::Session, "conn", req.conn.id);
        Ok(actions)
    }

    fn on_connect(&self, info: &ConnInfo) {
        self.0.lock().unwrap().push(Seen::Connect(info.clone()));
    }

    fn on_disconnect(&self, info: &ConnInfo, why: &ConnectionError) {
        self.0
            .lock()
            .unwrap()
            .push(Seen::Disconnect(info.id, why.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_eof_on_idle_connection_is_a_normal_close() {
    init_tracing();
    bounded(async {
        let rec = Recorder::default();
        let srv = start(Server::builder(), rec.clone()).await;
        let mut c = Stub::connect(srv.addr).await;
        let mut hello = HaproxyHello::new(8192, "pipelining");
        hello.engine_id = Some(b"engine-1");
        c.send_hello_frame(&hello).await;
        assert_eq!(c.recv().await.header.frame_type, FrameType::AGENT_HELLO);
        let id = NotifyId::new(1, 1);
        c.send_notify(&notify_i(id, 1)).await;
        let (got, actions) = c.recv_ack().await;
        assert_eq!(got, id);
        let peer = c.local_addr().to_string();
        drop(c); // idle: nothing in flight, nothing partial

        wait_until("on_disconnect", || rec.seen().len() == 2).await;
        let seen = rec.seen();
        let Seen::Connect(info) = &seen[0] else {
            panic!("{seen:?}")
        };
        assert_eq!(actions, [format!("set-var sess.conn = uint64:{}", info.id)]);
        assert_eq!(info.peer, peer);
        assert_eq!(info.engine_id.as_deref(), Some("engine-1"));
        assert_eq!(info.max_frame_size, 8192);
        assert!(info.pipelining);
        assert_eq!(
            seen[1],
            Seen::Disconnect(info.id, ConnectionError::Eof { clean: true })
        );
        let Seen::Disconnect(_, why) = &seen[1] else {
            unreachable!()
        };
        assert!(!why.is_error());
        let m = srv.metrics.clone();
        wait_until("connection released", || {
            m.snapshot().connections_active == 0
        })
        .await;
        let s = m.snapshot();
        assert_eq!(s.peer_closes, 1);
        assert!(
            s.disconnects.is_empty(),
            "no AGENT-DISCONNECT to a closed peer"
        );

        // health checks do not reach the hooks
        let mut hc = Stub::connect(srv.addr).await;
        hc.send_hello_frame(&HaproxyHello::healthcheck()).await;
        hc.recv().await;
        hc.expect_eof().await;
        wait_until("health check counted", || m.snapshot().health_checks == 1).await;
        assert_eq!(rec.seen().len(), 2);
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_connection_drains_on_cancel() {
    init_tracing();
    bounded(async {
        let (agent_side, haproxy_side) = tokio::io::duplex(4096);
        let cancel = CancellationToken::new();
        let server = Server::new(Config::default()).unwrap();
        let metrics = server.metrics().clone();
        let conn = tokio::spawn({
            let server = server.clone();
            let cancel = cancel.clone();
            async move {
                serve_connection(
                    agent_side,
                    "duplex".into(),
                    Arc::new(scripted()),
                    &server,
                    cancel,
                )
                .await
            }
        });
        let mut c = Stub::new(haproxy_side);
        c.handshake().await;
        let slow = NotifyId::new(1, 1);
        c.send_notify(&notify_with(slow, 1, "sleep_ms", 50u64))
            .await;
        wait_until("NOTIFY received", || metrics.snapshot().notifies == 1).await;
        cancel.cancel();
        assert_eq!(
            c.recv_ack().await,
            (slow, vec!["set-var txn.i = int64:1".to_string()])
        );
        assert_eq!(c.recv().await.into_disconnect_status(), 0);
        c.expect_eof().await;
        let why = tokio::time::timeout(STEP, conn)
            .await
            .expect("serve_connection returned")
            .unwrap();
        assert_eq!(why, ConnectionError::LocallyClosed(StatusCode::NORMAL));
    })
    .await;
}

#[tokio::test]
async fn testing_harness_calls_handlers_without_sockets() {
    bounded(async {
        let notify = testing::notify().message("m").arg("i", 21i64).build();
        let actions = testing::call(&scripted(), notify)
            .await
            .expect("handler ok");
        assert_eq!(
            actions.iter().collect::<Vec<_>>(),
            [Action::SetVar {
                scope: Scope::Transaction,
                name: "i",
                value: TypedData::Int64(21)
            }]
        );

        let failing = testing::notify().message("m").arg("fail", true).build();
        let err = testing::call(&scripted(), failing)
            .await
            .expect_err("handler fails");
        assert!(err.to_string().contains("on purpose"), "{err}");

        let rec = Recorder::default();
        let actions = testing::call(&rec, testing::notify().build())
            .await
            .unwrap();
        assert_eq!(
            actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["set-var sess.conn = uint64:0"]
        );
        assert!(rec.seen().is_empty(), "no hooks for a bare call");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_notifies_buffered_behind_the_in_flight_limit() {
    init_tracing();
    bounded(async {
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let mut srv = start(
            Server::builder().max_in_flight(2),
            gated(started.clone(), gate.clone()),
        )
        .await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        let ids: Vec<_> = (0..6u64).map(|i| NotifyId::new(2 * i + 1, 1)).collect();
        let notifies: Vec<_> = ids
            .iter()
            .zip(0..)
            .map(|(&id, i)| notify_i(id, i))
            .collect();
        let mut wire = BytesMut::new();
        HaproxyHello::new(16380, "pipelining").encode(&mut wire);
        for n in &notifies {
            n.encode(&mut wire);
        }
        c.send_notifies(&notifies).await;
        // every byte has been read by the agent (4 NOTIFYs wait in its buffer), 2 are running
        let m = srv.metrics.clone();
        wait_until("all bytes read", || {
            m.snapshot().bytes_in == wire.len() as u64
        })
        .await;
        wait_until("two handlers started", || {
            started.load(Ordering::SeqCst) == 2
        })
        .await;
        srv.trigger_shutdown();
        gate.add_permits(6);
        let mut acked = BTreeMap::new();
        for _ in 0..6 {
            let (id, actions) = c.recv_ack().await;
            assert!(acked.insert(id, actions).is_none(), "two ACKs for {id}");
        }
        assert_eq!(acked.keys().copied().collect::<Vec<_>>(), ids);
        assert_eq!(c.recv().await.into_disconnect_status(), 0);
        c.expect_eof().await;
        srv.join().await;
    })
    .await;
}

/// A shutdown grace shorter than the handler budget: the drain stops reading at once, but the
/// NOTIFY in flight still gets its (fallback) ACK within its budget before AGENT-DISCONNECT
/// status 0: nothing HAProxy sent is left unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_shutdown_grace_still_answers_what_is_in_flight() {
    init_tracing();
    bounded(async {
        let mut srv = start(
            Server::builder()
                .shutdown_grace(Duration::from_millis(100))
                .processing_timeout(Duration::from_millis(300)),
            scripted(),
        )
        .await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        let hung = NotifyId::new(1, 1);
        c.send_notify(&notify_with(hung, 1, "hang", true)).await;
        let m = srv.metrics.clone();
        wait_until("NOTIFY received", || m.snapshot().notifies == 1).await;
        srv.trigger_shutdown();
        assert_eq!(
            c.recv_ack().await,
            (hung, vec!["set-var txn.spoa_error = int64:2".to_string()])
        );
        assert_eq!(c.recv().await.into_disconnect_status(), 0);
        c.expect_eof().await;
        srv.join().await;
        assert_eq!(m.snapshot().disconnects, [(StatusCode::NORMAL, 1)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_concurrency_is_shared_across_connections() {
    init_tracing();
    bounded(async {
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let srv = start(
            Server::builder().handler_concurrency(1),
            gated(started.clone(), gate.clone()),
        )
        .await;
        let mut c1 = Stub::connect(srv.addr).await;
        c1.handshake().await;
        let mut c2 = Stub::connect(srv.addr).await;
        c2.handshake().await;
        c1.send_notify(&notify_i(NotifyId::new(1, 1), 1)).await;
        c2.send_notify(&notify_i(NotifyId::new(1, 1), 2)).await;
        let m = srv.metrics.clone();
        wait_until("both NOTIFYs received", || m.snapshot().notifies == 2).await;
        wait_until("one handler started", || {
            started.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(c1.recv_within(Duration::from_millis(100)).await, None);
        assert_eq!(started.load(Ordering::SeqCst), 1, "the limit is global");
        gate.add_permits(2);
        assert_eq!(c1.recv_ack().await.1, ["set-var txn.i = int64:1"]);
        assert_eq!(c2.recv_ack().await.1, ["set-var txn.i = int64:2"]);
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_disconnect_is_answered_and_reported() {
    init_tracing();
    bounded(async {
        let rec = Recorder::default();
        let srv = start(Server::builder(), rec.clone()).await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        let mut wire = BytesMut::new();
        spop_proto::frame::Disconnect::encode(
            &mut wire,
            FrameType::HAPROXY_DISCONNECT,
            StatusCode::NORMAL,
            "bye",
        );
        c.send_raw(&wire).await;
        assert_eq!(c.recv().await.into_disconnect_status(), 0);
        c.expect_eof().await;
        wait_until("on_disconnect", || rec.seen().len() == 2).await;
        let Seen::Disconnect(_, why) = &rec.seen()[1] else {
            panic!("{:?}", rec.seen())
        };
        assert_eq!(
            why,
            &ConnectionError::PeerDisconnected {
                status: StatusCode::NORMAL,
                message: "bye".into()
            }
        );
        assert_eq!(srv.metrics.snapshot().peer_closes, 1);
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_idle_timeouts_close_with_status_2() {
    init_tracing();
    bounded(async {
        let t = Duration::from_millis(100);
        let srv = start(
            Server::builder()
                .hello_timeout(Some(t))
                .idle_timeout(Some(t)),
            scripted(),
        )
        .await;
        // no HELLO at all
        let start = Instant::now();
        let mut silent = Stub::connect(srv.addr).await;
        assert_eq!(silent.recv().await.into_disconnect_status(), 2);
        assert!(
            start.elapsed() >= t,
            "hello timeout after {:?}",
            start.elapsed()
        );
        silent.expect_eof().await;

        // established, then idle (a pending handler keeps it open)
        let mut idle = Stub::connect(srv.addr).await;
        idle.handshake().await;
        let sent = Instant::now();
        idle.send_notify(&notify_with(NotifyId::new(1, 1), 1, "sleep_ms", 150u64))
            .await;
        let (id, _) = idle.recv_ack().await;
        assert_eq!(
            id,
            NotifyId::new(1, 1),
            "not closed while a NOTIFY was in flight"
        );
        assert_eq!(idle.recv().await.into_disconnect_status(), 2);
        // the idle clock starts at the ACK, itself at least 150 ms after the NOTIFY
        let min = Duration::from_millis(150) + t;
        assert!(
            sent.elapsed() >= min,
            "idle timeout {:?} after the NOTIFY",
            sent.elapsed()
        );
        idle.expect_eof().await;
        assert_eq!(
            srv.metrics.snapshot().disconnects,
            [(StatusCode::TIMEOUT, 2)]
        );
        srv.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ack_is_replaced_by_the_fallback_ack() {
    init_tracing();
    bounded(async {
        let srv = start(Server::builder(), scripted()).await;
        let mut c = Stub::connect(srv.addr).await;
        c.send_hello_frame(&HaproxyHello::new(1024, "pipelining"))
            .await;
        c.recv().await;
        // fits: 900 bytes of value in a 1024-byte frame
        c.send_notify(&notify_with(NotifyId::new(1, 1), 1, "big", 900u64))
            .await;
        let (_, actions) = c.recv_ack().await;
        assert_eq!(actions.len(), 2);
        // does not fit: the fallback ACK (code 5) rather than a frame HAProxy would reject
        c.send_notify(&notify_with(NotifyId::new(3, 1), 3, "big", 2000u64))
            .await;
        assert_eq!(
            c.recv_ack().await,
            (
                NotifyId::new(3, 1),
                vec!["set-var txn.spoa_error = int64:5".to_string()]
            )
        );
        c.roundtrip(5, 1, 5).await;
        assert_eq!(srv.metrics.snapshot().acks_too_large, 1);
        srv.stop().await;
    })
    .await;
}
