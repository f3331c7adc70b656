//! Bad days: deadlines and fallback ACKs, late handlers, abandoned NOTIFYs that must not block
//! reading, padding, error values, CPU-bound handlers, background work, memory bounds, hook
//! panics. Deadline timings run on tokio's paused clock over an in-memory duplex, so they
//! are exact and take no wall time; the rest run over loopback sockets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{STEP, Stub, bounded, init_tracing, notify_i, notify_with, scripted, start};
use spoa_runtime::{
    BoxError, ConnInfo, Handler, Request, Server, blocking_fn, handler_fn, serve_connection,
};
use spop_proto::{Actions, ConnectionError, NotifyId, Scope, StatusCode};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TIMEOUT_ACK: &str = "set-var txn.spoa_error = int64:2";

/// Serves one connection of `server` over an in-memory pipe of `cap` bytes each way; returns
/// HAProxy's end (handshaken) and the connection's task.
async fn duplex<H: Handler>(
    server: &Server,
    handler: H,
    cap: usize,
) -> (
    Stub<DuplexStream>,
    JoinHandle<ConnectionError>,
    CancellationToken,
) {
    let (agent_side, haproxy_side) = tokio::io::duplex(cap);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (server, cancel) = (server.clone(), cancel.clone());
        async move {
            serve_connection(
                agent_side,
                "duplex".into(),
                Arc::new(handler),
                &server,
                cancel,
            )
            .await
        }
    });
    let mut stub = Stub::new(haproxy_side);
    stub.handshake().await;
    (stub, task, cancel)
}

fn ack(id: NotifyId, action: &str) -> (NotifyId, Vec<String>) {
    (id, vec![action.to_string()])
}

/// Item 1: with the defaults (processing timeout 500 ms), a hung handler is answered at
/// exactly 450 ms with `spoa_error` = 2, and its slot is free at once.
#[tokio::test(start_paused = true)]
async fn deadline_fallback_at_the_budget_on_a_paused_clock() {
    init_tracing();
    let server = Server::builder().build().unwrap();
    let (mut c, _task, _) = duplex(&server, scripted(), 64 * 1024).await;
    let hung = NotifyId::new(1, 1);
    let t0 = Instant::now();
    c.send_notify(&notify_with(hung, 1, "hang", true)).await;
    assert_eq!(c.recv_ack().await, ack(hung, TIMEOUT_ACK));
    assert_eq!(t0.elapsed(), Duration::from_millis(450));
    let m = server.metrics().snapshot();
    assert_eq!((m.handler_timeouts, m.acks), (1, 1));
    // the connection goes on serving at once
    c.roundtrip(3, 1, 3).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(450));
}

/// Item 1: a handler that completes after its fallback ACK is dropped (no second ACK) and
/// counted as late; one that outlives the late limit is cancelled and counted.
#[tokio::test(start_paused = true)]
async fn late_completions_are_dropped_and_counted() {
    init_tracing();
    let server = Server::builder()
        .processing_timeout(Duration::from_millis(200))
        .late_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut c, _task, _) = duplex(&server, scripted(), 64 * 1024).await;
    let (late, hung) = (NotifyId::new(1, 1), NotifyId::new(3, 1));
    c.send_notifies(&[
        notify_with(late, 1, "sleep_ms", 500u64),
        notify_with(hung, 3, "hang", true),
    ])
    .await;
    let t0 = Instant::now();
    let mut acks = vec![c.recv_ack().await, c.recv_ack().await];
    acks.sort();
    assert_eq!(acks, [ack(late, TIMEOUT_ACK), ack(hung, TIMEOUT_ACK)]);
    assert_eq!(t0.elapsed(), Duration::from_millis(180));
    // nothing more: the late result is dropped
    assert!(c.recv_within(Duration::from_secs(2)).await.is_none());
    let m = server.metrics().snapshot();
    assert_eq!(
        (
            m.handler_timeouts,
            m.handler_late,
            m.handler_cancelled,
            m.acks
        ),
        (2, 1, 1, 2),
        "{m:?}"
    );
}

/// Item 2: NOTIFYs HAProxy has given up on never keep the connection from reading. With an
/// in-flight limit of 4 and four hung handlers, the fifth NOTIFY is read and answered when
/// their budgets run out, not when (if ever) the handlers end. With the default limit (64,
/// above HAProxy's 20) a healthy NOTIFY behind 20 hung ones is answered at once.
#[tokio::test(start_paused = true)]
async fn reading_continues_past_abandoned_notifies() {
    init_tracing();
    let server = Server::builder().max_in_flight(4).build().unwrap();
    let (mut c, _task, _) = duplex(&server, scripted(), 64 * 1024).await;
    let hung: Vec<_> = (0..4)
        .map(|i| notify_with(NotifyId::new(2 * i + 1, 1), 0, "hang", true))
        .collect();
    c.send_notifies(&hung).await;
    let healthy = NotifyId::new(101, 1);
    c.send_notify(&notify_i(healthy, 7)).await;
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < 5 {
        let a = c.recv_ack().await;
        if a.0 == healthy {
            // read as soon as the first fallback freed a slot, not when a handler ended
            assert_eq!(a, ack(healthy, "set-var txn.i = int64:7"));
            assert_eq!(t0.elapsed(), Duration::from_millis(450));
        } else {
            assert_eq!(a.1, [TIMEOUT_ACK]);
        }
        got.push(a.0);
    }
    assert!(got.contains(&healthy));

    let server = Server::builder().build().unwrap();
    let (mut c, _task, _) = duplex(&server, scripted(), 64 * 1024).await;
    let hung: Vec<_> = (0..20)
        .map(|i| notify_with(NotifyId::new(2 * i + 1, 1), 0, "hang", true))
        .collect();
    c.send_notifies(&hung).await;
    let t0 = Instant::now();
    c.send_notify(&notify_i(healthy, 7)).await;
    assert_eq!(c.recv_ack().await, ack(healthy, "set-var txn.i = int64:7"));
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

/// Item 3: a handler that returns no actions gets the padded ACK by default; with padding off
/// and no error variable, the bare one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_action_less_ack_by_default() {
    init_tracing();
    bounded(async {
        let nothing = || {
            handler_fn(|_req: Request| async { Ok::<_, std::convert::Infallible>(Actions::new()) })
        };
        let srv = start(Server::builder(), nothing()).await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        c.send_notify(&notify_i(NotifyId::new(1, 1), 1)).await;
        assert_eq!(
            c.recv_ack().await,
            ack(NotifyId::new(1, 1), "unset-var txn.spoa_pad_ack")
        );
        srv.stop().await;

        let srv = start(Server::builder().pad_empty_ack(false), nothing()).await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        c.send_notify(&notify_i(NotifyId::new(1, 1), 1)).await;
        assert_eq!(c.recv_ack().await, (NotifyId::new(1, 1), vec![]));
        srv.stop().await;
    })
    .await;
}

/// Item 4: overload. With one handler slot held by a hung handler, the next NOTIFY waits for
/// a slot until its budget, then gets `spoa_error` = 4 (and the hung one 2).
#[tokio::test(start_paused = true)]
async fn overload_gets_its_own_error_value() {
    init_tracing();
    // the hung handler keeps its slot while it runs late (default late limit 5 s)
    let server = Server::builder().handler_concurrency(1).build().unwrap();
    let (mut c, _task, _) = duplex(&server, scripted(), 64 * 1024).await;
    let (hung, queued) = (NotifyId::new(1, 1), NotifyId::new(3, 1));
    c.send_notify(&notify_with(hung, 1, "hang", true)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send_notify(&notify_i(queued, 3)).await;
    let t0 = Instant::now();
    assert_eq!(c.recv_ack().await, ack(hung, TIMEOUT_ACK));
    assert_eq!(t0.elapsed(), Duration::from_millis(350));
    assert_eq!(
        c.recv_ack().await,
        ack(queued, "set-var txn.spoa_error = int64:4")
    );
    assert_eq!(t0.elapsed(), Duration::from_millis(450));
    let m = server.metrics().snapshot();
    assert_eq!((m.handler_timeouts, m.handler_overloads), (1, 1), "{m:?}");
    // once the late limit cancelled the hung handler, its slot serves the next NOTIFY
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.metrics().snapshot().handler_cancelled, 1);
    c.roundtrip(5, 1, 5).await;
}

/// Item 5: a CPU-bound handler (400 ms of busy work) must not delay the ACK of another NOTIFY
/// on the same connection. Bound stated here, for `blocking_fn` (the way the docs give for
/// such handlers): the quick one is answered first, within 250 ms of being sent. With
/// `inline_first_poll(false)` the busy handler runs on a worker thread instead of the
/// connection's task; how soon the quick one runs then depends on the scheduler finding a free
/// worker, so only both answers are checked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_bound_handler_does_not_delay_other_notifies() {
    init_tracing();
    fn busy(req: &Request) -> Actions {
        let m = req.message("m").expect("message m");
        let i = m.arg("i").and_then(|v| v.as_i64()).unwrap_or(-1);
        if m.arg("cpu").and_then(|v| v.as_bool()) == Some(true) {
            let until = std::time::Instant::now() + Duration::from_millis(400);
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let mut a = Actions::new();
        a.set_var(Scope::Transaction, "i", i);
        a
    }
    bounded(async {
        let blocking = blocking_fn(|req: Request| Ok::<_, BoxError>(busy(&req)));
        let spawned = handler_fn(|req: Request| async move {
            // synchronous work before any .await: runs on a worker, not the connection task
            Ok::<_, BoxError>(busy(&req))
        });
        for (what, builder, handler) in [
            (
                "blocking_fn",
                Server::builder(),
                Box::new(blocking) as Box<dyn DynHandler>,
            ),
            (
                "inline_first_poll(false)",
                Server::builder().inline_first_poll(false),
                Box::new(spawned),
            ),
        ] {
            let srv = start(builder, Boxed(handler)).await;
            let mut c = Stub::connect(srv.addr).await;
            c.handshake().await;
            let (cpu, quick) = (NotifyId::new(1, 1), NotifyId::new(3, 1));
            c.send_notify(&notify_with(cpu, 1, "cpu", true)).await;
            let sent = Instant::now();
            c.send_notify(&notify_i(quick, 3)).await;
            let first = c.recv_ack().await;
            let took = sent.elapsed();
            let second = c.recv_ack().await;
            if what == "blocking_fn" {
                assert_eq!(first, ack(quick, "set-var txn.i = int64:3"), "{what}");
                assert!(
                    took < Duration::from_millis(250),
                    "{what}: quick ACK after {took:?}"
                );
                assert_eq!(second, ack(cpu, "set-var txn.i = int64:1"), "{what}");
            } else {
                let mut both = [first, second];
                both.sort();
                assert_eq!(
                    both,
                    [
                        ack(cpu, "set-var txn.i = int64:1"),
                        ack(quick, "set-var txn.i = int64:3")
                    ],
                    "{what}"
                );
            }
            srv.stop().await;
        }
    })
    .await;
}

/// Object-safe view of a handler, so the test above can loop over two handler types.
trait DynHandler: Send + Sync + 'static {
    fn call(
        &self,
        req: Request,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Actions, BoxError>> + Send + '_>>;
}

impl<H: Handler> DynHandler for H {
    fn call(
        &self,
        req: Request,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Actions, BoxError>> + Send + '_>> {
        Box::pin(async move { self.handle_notify(req).await.map_err(Into::into) })
    }
}

struct Boxed(Box<dyn DynHandler>);

impl Handler for Boxed {
    type Error = BoxError;

    async fn handle_notify(&self, req: Request) -> Result<Actions, BoxError> {
        self.0.call(req).await
    }
}

/// Item 6: work after the ACK. The ACK does not wait for it; at most `max_background` run at
/// once (the rest refused and counted); a graceful shutdown waits for them, and
/// `Server::serve` returns only after they ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_is_bounded_and_drained_on_shutdown() {
    init_tracing();
    bounded(async {
        let done = Arc::new(AtomicUsize::new(0));
        let handler = {
            let done = done.clone();
            handler_fn(move |req: Request| {
                let done = done.clone();
                async move {
                    let i = req
                        .message("m")
                        .and_then(|m| m.arg("i"))
                        .and_then(|v| v.as_i64());
                    let accepted = req
                        .background()
                        .spawn(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            done.fetch_add(1, Ordering::SeqCst);
                        })
                        .is_ok();
                    let mut a = Actions::new();
                    a.set_var(Scope::Transaction, "i", i.unwrap_or(-1));
                    a.set_var(Scope::Transaction, "queued", accepted);
                    Ok::<_, BoxError>(a)
                }
            })
        };
        let srv = start(Server::builder().max_background(2), handler).await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        let t0 = Instant::now();
        for s in [1u64, 3, 5] {
            c.send_notify(&notify_i(NotifyId::new(s, 1), 1)).await;
            let (_, actions) = c.recv_ack().await;
            let queued = if s == 5 { "false" } else { "true" };
            assert_eq!(actions[1], format!("set-var txn.queued = bool:{queued}"));
        }
        assert!(
            t0.elapsed() < Duration::from_millis(300),
            "ACKs waited for background work"
        );
        let m = srv.metrics.snapshot();
        assert_eq!(
            (
                m.background_spawned,
                m.background_refused,
                m.background_active
            ),
            (2, 1, 2)
        );
        assert_eq!(done.load(Ordering::SeqCst), 0);
        drop(c);
        let metrics = srv.metrics.clone();
        srv.stop().await; // returns once the server's serve() returned
        assert_eq!(
            done.load(Ordering::SeqCst),
            2,
            "background work drained before serve returned"
        );
        assert_eq!(metrics.snapshot().background_active, 0);
    })
    .await;
}

/// Item 7: the write buffer stays under its high-water mark plus one ACK while the peer does
/// not read: with a 1 KiB pipe and a 4 KiB high-water mark, NOTIFYs whose ACKs are ~500 bytes
/// are consumed only as far as that leaves room for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::cast_possible_truncation)] // a count of NOTIFYs
async fn write_buffer_never_exceeds_high_water_plus_one_ack() {
    init_tracing();
    bounded(async {
        const CAP: usize = 1024;
        const HIGH_WATER: usize = 4096;
        let server = Server::builder()
            .write_high_water(HIGH_WATER)
            .build()
            .unwrap();
        let (mut c, _task, _) = duplex(&server, scripted(), CAP).await;
        let ack_len = {
            c.send_notify(&notify_with(NotifyId::new(1, 1), 1, "big", 480u64))
                .await;
            let (_, actions) = c.recv_ack().await;
            assert_eq!(actions.len(), 2);
            // 4-byte prefix + header + two set-vars with a 480-byte value
            4 + 7 + 480 + 40
        };
        // 200 NOTIFYs, never reading an ACK (a writer task, since the pipe is small)
        let frames: Vec<_> = (0..200u64)
            .map(|i| notify_with(NotifyId::new(2 * i + 3, 1), 0, "big", 480u64))
            .collect();
        let writer = tokio::spawn(async move {
            c.send_notifies(&frames).await;
            c
        });
        let metrics = server.metrics().clone();
        let before = metrics.snapshot().notifies;
        // let the agent run until it stops consuming
        let mut last = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let n = metrics.snapshot().notifies - before;
            if n == last && n > 0 {
                break;
            }
            last = n;
        }
        let consumed = metrics.snapshot().notifies - before;
        let bound = (CAP + HIGH_WATER + ack_len) / ack_len + 1;
        assert!(
            consumed as usize <= bound,
            "{consumed} NOTIFYs consumed while the peer reads nothing (bound {bound})"
        );
        writer.abort();
    })
    .await;
}

/// Item 7: before the handshake a frame above 1 KiB is refused (status 3) at once, without
/// waiting for (or reserving) its body; a peer that stops reading is closed at the write
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_frames_before_the_handshake_and_write_timeout() {
    init_tracing();
    bounded(async {
        let srv = start(Server::builder(), scripted()).await;
        let mut c = Stub::connect(srv.addr).await;
        c.send_raw(&[0, 0, 0x3f, 0xfc, 1, 0, 0, 0]).await; // announces 16380 bytes
        assert_eq!(c.recv().await.into_disconnect_status(), 3);
        c.expect_eof().await;
        srv.stop().await;

        // a 256-byte pipe the peer never reads, and big ACKs: the write stalls
        let server = Server::builder()
            .write_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let (mut c, task, _) = duplex(&server, scripted(), 256).await;
        c.send_notify(&notify_with(NotifyId::new(1, 1), 1, "big", 4000u64))
            .await;
        let why = tokio::time::timeout(STEP, task)
            .await
            .expect("closed")
            .unwrap();
        assert_eq!(why, ConnectionError::LocallyClosed(StatusCode::TIMEOUT));
        assert_eq!(server.metrics().snapshot().write_timeouts, 1);
    })
    .await;
}

/// Item 9: panics in `on_connect`/`on_disconnect` are caught and counted; the connection is
/// served and the gauges stay right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_panics_are_caught() {
    init_tracing();
    struct Hooks(Arc<AtomicBool>);
    impl Handler for Hooks {
        type Error = BoxError;
        async fn handle_notify(&self, req: Request) -> Result<Actions, BoxError> {
            let mut a = Actions::new();
            let i = req
                .message("m")
                .and_then(|m| m.arg("i"))
                .and_then(|v| v.as_i64());
            a.set_var(Scope::Transaction, "i", i.unwrap_or(-1));
            Ok(a)
        }
        fn on_connect(&self, _info: &ConnInfo) {
            panic!("on_connect panicking on purpose (test)");
        }
        fn on_disconnect(&self, _info: &ConnInfo, _why: &ConnectionError) {
            self.0.store(true, Ordering::SeqCst);
            panic!("on_disconnect panicking on purpose (test)");
        }
    }
    bounded(async {
        let called = Arc::new(AtomicBool::new(false));
        let srv = start(Server::builder(), Hooks(called.clone())).await;
        let mut c = Stub::connect(srv.addr).await;
        c.handshake().await;
        c.roundtrip(1, 1, 1).await;
        drop(c);
        let metrics = srv.metrics.clone();
        common::wait_until("connection closed", || {
            metrics.snapshot().connections_active == 0
        })
        .await;
        assert!(called.load(Ordering::SeqCst));
        let m = metrics.snapshot();
        assert_eq!(
            (m.hook_panics, m.connections_accepted, m.connections_active),
            (2, 1, 0)
        );
        srv.stop().await;
    })
    .await;
}

use std::future::Future;
