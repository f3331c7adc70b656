//! Heap allocations per NOTIFY on the runtime's inline path, counted by a global allocator.
//!
//! The agent runs a single-threaded runtime on a thread of its own; only that thread's
//! allocations are counted. A client on the test's thread sends pipelined NOTIFYs (16 per
//! write, as HAProxy 2.6 batches them) over loopback TCP and reads the ACKs. After a warm-up
//! (buffers grown to their working size), the steady state must allocate nothing: not the
//! handler's future, not the request, not the ACK, not the metrics.
#![allow(unsafe_code)] // the counting allocator below; nothing else
#![allow(clippy::cast_precision_loss)] // ratios of counts far below 2^52

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use spoa_runtime::{Request, Scope, Server, handler_fn, serve_connection};
use spop_proto::frame::{FrameDecoder, HaproxyHello};
use spop_proto::{Actions, FrameType, Notify, NotifyId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Counts the allocations (and reallocations) made on threads that opted in, each thread
/// into its own counter (tests run in parallel).
struct Counting;

thread_local! {
    static COUNTER: Cell<Option<&'static AtomicU64>> = const { Cell::new(None) };
    /// Bytes allocated minus bytes freed on this thread, where counted.
    static LIVE: Cell<Option<&'static AtomicI64>> = const { Cell::new(None) };
}

fn count() {
    if let Some(c) = COUNTER.with(Cell::get) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn live(delta: i64) {
    if let Some(l) = LIVE.with(Cell::get) {
        l.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; the
// counter is a side effect that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        live(layout.size() as i64);
        // SAFETY: forwarded as is
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        live(layout.size() as i64);
        // SAFETY: forwarded as is
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        live(new_size as i64 - layout.size() as i64);
        // SAFETY: forwarded as is
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as i64));
        // SAFETY: forwarded as is
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BATCH: u64 = 16;

/// Runs `body` with `listener` on a single-threaded runtime on the calling thread.
fn on_own_runtime<F: Future<Output = ()>>(
    listener: std::net::TcpListener,
    body: impl FnOnce(TcpListener) -> F,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        listener.set_nonblocking(true).expect("nonblocking");
        body(TcpListener::from_std(listener).expect("listener")).await;
    });
}

/// Starts an agent thread serving one connection with `handler`; returns its address and
/// the counter of the allocations its thread makes once the connection is accepted.
fn agent<H: spoa_runtime::Handler>(handler: H) -> (SocketAddr, &'static AtomicU64) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("local_addr");
    let allocations: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    std::thread::spawn(move || {
        on_own_runtime(std_listener, |listener| async move {
            let server = Server::builder().build().expect("server");
            let (stream, peer) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            COUNTER.with(|c| c.set(Some(allocations)));
            let handler = Arc::new(handler);
            serve_connection(
                stream,
                peer.to_string(),
                handler,
                &server,
                CancellationToken::new(),
            )
            .await;
        });
    });
    (addr, allocations)
}

/// Sends `batches` batches of [`BATCH`] pipelined NOTIFYs, each after the previous batch's
/// ACKs arrived; checks every ACK's id.
async fn run_batches(io: &mut TcpStream, rbuf: &mut BytesMut, first_stream: u64, batches: u64) {
    let mut decoder = FrameDecoder::new(1 << 16);
    let mut wbuf = BytesMut::new();
    for b in 0..batches {
        wbuf.clear();
        for i in 0..BATCH {
            let id = NotifyId::new(first_stream + b * BATCH + i, 1);
            Notify::builder(id)
                .message("get-ip-reputation")
                .arg("ip", Ipv4Addr::new(192, 0, 2, 1))
                .build()
                .encode(&mut wbuf);
        }
        io.write_all(&wbuf).await.expect("write");
        let mut acked = 0;
        while acked < BATCH {
            match decoder.decode(rbuf).expect("a valid frame") {
                Some(frame) => {
                    assert_eq!(frame.header.frame_type, FrameType::ACK);
                    assert_eq!(
                        frame.header.stream_id,
                        first_stream + b * BATCH + acked,
                        "ACKs in order"
                    );
                    acked += 1;
                }
                None => {
                    let n = tokio::time::timeout(Duration::from_secs(5), io.read_buf(rbuf))
                        .await
                        .expect("ACKs within 5 s")
                        .expect("read");
                    assert!(n > 0, "the agent closed the connection");
                }
            }
        }
    }
}

/// Allocations made by the agent thread per NOTIFY, in the steady state.
async fn allocations_per_notify((addr, allocations): (SocketAddr, &AtomicU64)) -> f64 {
    let mut io = TcpStream::connect(addr).await.expect("connect");
    io.set_nodelay(true).expect("nodelay");
    let mut wbuf = BytesMut::new();
    HaproxyHello::new(16380, "pipelining").encode(&mut wbuf);
    io.write_all(&wbuf).await.expect("hello");
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut decoder = FrameDecoder::new(1 << 16);
    let hello = loop {
        if let Some(f) = decoder.decode(&mut rbuf).expect("AGENT-HELLO") {
            break f;
        }
        io.read_buf(&mut rbuf).await.expect("read");
    };
    assert_eq!(hello.header.frame_type, FrameType::AGENT_HELLO);
    // warm-up: buffers, the in-flight table and the recycled ACK buffers reach their size
    run_batches(&mut io, &mut rbuf, 1, 200).await;
    let before = allocations.load(Ordering::Relaxed);
    let batches = 1000;
    run_batches(&mut io, &mut rbuf, 1_000_000, batches).await;
    let after = allocations.load(Ordering::Relaxed);
    (after - before) as f64 / (batches * BATCH) as f64
}

/// Reads one argument, sets one variable, with the request's recycled [`Actions`].
#[tokio::test]
async fn inline_handler_setting_a_variable_allocates_nothing() {
    let agent = agent(handler_fn(|mut req: Request| async move {
        let mut actions = req.actions();
        if let Some(ip) = req
            .message("get-ip-reputation")
            .and_then(|m| m.arg("ip"))
            .and_then(|v| v.as_ip())
        {
            actions.set_var(Scope::Session, "ip_score", i64::from(ip.is_loopback()));
        }
        Ok::<_, std::convert::Infallible>(actions)
    }));
    let per_notify = allocations_per_notify(agent).await;
    println!("allocations per NOTIFY (one set-var, recycled actions): {per_notify}");
    assert_eq!(per_notify, 0.0, "allocations per NOTIFY");
}

/// Returns no actions: the ACK is padded by the state machine.
#[tokio::test]
async fn inline_handler_with_an_empty_ack_allocates_nothing() {
    let agent = agent(handler_fn(|_req: Request| async move {
        Ok::<_, std::convert::Infallible>(Actions::new())
    }));
    let per_notify = allocations_per_notify(agent).await;
    println!("allocations per NOTIFY (empty, padded ACK): {per_notify}");
    assert_eq!(per_notify, 0.0, "allocations per NOTIFY");
}

/// The heap an idle connection holds: 1,000 connections past their handshake, each having
/// answered one NOTIFY, then quiet for longer than the runtime's idle release (1 s). Counted
/// on the agent's thread: bytes allocated minus bytes freed, divided by the connections (the
/// kernel's socket buffers are not on this heap; malloc's own overhead is not counted).
#[tokio::test]
async fn idle_connection_heap() {
    const CONNS: usize = 1000;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("local_addr");
    let bytes: &'static AtomicI64 = Box::leak(Box::new(AtomicI64::new(0)));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || {
        on_own_runtime(std_listener, |listener| async move {
            let server = Server::builder()
                .lame_duck(Duration::ZERO)
                .build()
                .expect("server");
            LIVE.with(|c| c.set(Some(bytes)));
            let handler = handler_fn(|mut req: Request| async move {
                let mut actions = req.actions();
                actions.set_var(Scope::Transaction, "seen", true);
                Ok::<_, std::convert::Infallible>(actions)
            });
            server
                .serve(listener, handler, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    // one connection first: the server's own allocations are not per-connection costs
    let mut conns = Vec::new();
    let mut rbuf = BytesMut::with_capacity(1024);
    async fn connect(addr: SocketAddr) -> TcpStream {
        let mut io = TcpStream::connect(addr).await.expect("connect");
        let mut wbuf = BytesMut::new();
        HaproxyHello::new(16380, "pipelining").encode(&mut wbuf);
        Notify::builder(NotifyId::new(1, 1))
            .message("m")
            .build()
            .encode(&mut wbuf);
        io.write_all(&wbuf).await.expect("write");
        io
    }
    conns.push(connect(addr).await);
    async fn answered(io: &mut TcpStream, rbuf: &mut BytesMut) {
        let mut decoder = FrameDecoder::new(1 << 16);
        let mut frames = 0;
        rbuf.clear();
        while frames < 2 {
            match decoder.decode(rbuf).expect("a valid frame") {
                Some(_) => frames += 1,
                None => {
                    let n = tokio::time::timeout(Duration::from_secs(5), io.read_buf(rbuf))
                        .await
                        .expect("AGENT-HELLO and ACK within 5 s")
                        .expect("read");
                    assert!(n > 0, "the agent closed the connection");
                }
            }
        }
    }
    answered(&mut conns[0], &mut rbuf).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = bytes.load(Ordering::Relaxed);
    for _ in 0..CONNS {
        conns.push(connect(addr).await);
    }
    for io in &mut conns[1..] {
        answered(io, &mut rbuf).await;
    }
    // past the idle release
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = bytes.load(Ordering::Relaxed);
    let per_conn = (after - before) as f64 / CONNS as f64;
    println!("heap per idle connection (after one NOTIFY): {per_conn:.0} bytes");
    drop(conns);
    let _ = stop_tx.send(());
    agent.join().expect("agent thread");
    assert!(
        per_conn <= 2048.0,
        "an idle connection holds {per_conn:.0} bytes of heap (bound: 2048)"
    );
}
