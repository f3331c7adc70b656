//! Support for the loopback tests: a raw-bytes HAProxy stub and a server fixture.
//!
//! The stub speaks SPOP from HAProxy's side with nothing but the frame encoders and decoders
//! of `spop_proto::frame` (never the agent state machine it is testing), over a real socket.
//!
//! Every wait is bounded: a single expected frame must arrive within [`STEP`], a whole test
//! within [`TEST_LIMIT`] (see [`bounded`]). Conditions are polled, never guessed with a sleep.

// Each test binary uses a different subset of these helpers, and `pub` items in a private
// test module are "unreachable" by construction.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use spoa_runtime::{
    BoxError, Handler, Listener, Metrics, Request, Server, ServerBuilder, handler_fn,
};
use spop_proto::frame::{FrameFlags, HaproxyHello};
use spop_proto::{Actions, FrameType, Notify, NotifyId, Scope};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest wait for any one expected event (a frame, EOF, a counter reaching a value).
pub const STEP: Duration = Duration::from_secs(2);
/// The longest a whole test may take.
pub const TEST_LIMIT: Duration = Duration::from_secs(10);

/// Runs a test body under [`TEST_LIMIT`].
pub async fn bounded<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("test exceeded its time limit")
}

/// Polls `cond` every 2 ms until it holds; panics after [`STEP`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `RUST_LOG=spoa_runtime=debug cargo test ...` shows the runtime's logs.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---- frames as the stub sees them: shared with the other test peers (spop-tests) --------

use spop_tests::peer::{FrameReader, hello_frame, raw_frame};
pub use spop_tests::peer::{Received, Reply, notify_i};

// ---- the stub ----------------------------------------------------------------------------

/// HAProxy's side of one connection, over any byte stream.
pub struct Stub<S> {
    io: S,
    frames: FrameReader,
}

impl Stub<TcpStream> {
    /// Connects over TCP.
    pub async fn connect(addr: SocketAddr) -> Self {
        let io = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        io.set_nodelay(true).expect("TCP_NODELAY");
        Self::new(io)
    }

    /// The stub's own address, as the agent sees the peer.
    pub fn local_addr(&self) -> SocketAddr {
        self.io.local_addr().expect("local_addr")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stub<S> {
    /// Wraps a connected stream.
    pub fn new(io: S) -> Self {
        Self {
            io,
            frames: FrameReader::new(),
        }
    }

    /// Writes raw bytes in one `write_all`.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.io.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Sends a HAPROXY-HELLO.
    pub async fn send_hello_frame(&mut self, hello: &HaproxyHello<'_>) {
        self.send_raw(&hello_frame(hello)).await;
    }

    /// Sends HAProxy's usual HELLO: version 2.0, 16380 bytes, pipelining.
    pub async fn send_hello(&mut self) {
        self.send_hello_frame(&HaproxyHello::new(16380, "pipelining"))
            .await;
    }

    /// Sends the HELLO and checks the AGENT-HELLO of a default agent.
    pub async fn handshake(&mut self) {
        self.send_hello().await;
        let hello = self.recv().await;
        assert_eq!(hello.header.frame_type, FrameType::AGENT_HELLO);
        assert_eq!(
            hello.reply,
            Reply::AgentHello {
                version: Some("2.0".into()),
                max_frame_size: Some(16380),
                capabilities: Some("pipelining".into()),
            }
        );
    }

    /// Sends NOTIFY frames, all in one write.
    pub async fn send_notifies(&mut self, notifies: &[Notify]) {
        let mut buf = BytesMut::new();
        for n in notifies {
            n.encode(&mut buf);
        }
        self.send_raw(&buf).await;
    }

    /// Sends one NOTIFY.
    pub async fn send_notify(&mut self, notify: &Notify) {
        self.send_notifies(std::slice::from_ref(notify)).await;
    }

    /// Sends a frame of an arbitrary type with flags FIN and ids 0/0.
    pub async fn send_frame(&mut self, frame_type: FrameType, payload: &[u8]) {
        self.send_raw(&raw_frame(frame_type, FrameFlags::FIN.0, 0, 0, payload))
            .await;
    }

    /// One `read` from the socket into the receive buffer; returns the bytes read (0 at EOF).
    pub async fn read_once(&mut self) -> usize {
        tokio::time::timeout(STEP, self.io.read_buf(self.frames.buf_mut()))
            .await
            .expect("read timed out")
            .expect("read failed")
    }

    /// The bytes received and not yet decoded.
    pub fn buffered(&self) -> &[u8] {
        self.frames.buffered()
    }

    /// The next frame, or `None` at a clean EOF. No timeout; cancel-safe.
    pub async fn try_recv(&mut self) -> io::Result<Option<Received>> {
        loop {
            match self.frames.next_frame() {
                Ok(Some(Received {
                    header,
                    reply: Reply::Undecodable(e),
                })) => panic!(
                    "the agent sent an undecodable {:?} frame: {e}",
                    header.frame_type
                ),
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => panic!("the agent sent a bad frame: {e}"),
            }
            if self.io.read_buf(self.frames.buf_mut()).await? == 0 {
                let left = self.frames.buffered().len();
                assert!(left == 0, "EOF inside a frame ({left} bytes buffered)");
                return Ok(None);
            }
        }
    }

    /// The next frame; panics on EOF, error, or nothing within [`STEP`].
    #[track_caller]
    pub fn recv(&mut self) -> impl Future<Output = Received> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            match tokio::time::timeout(STEP, self.try_recv()).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => panic!("{caller}: EOF while waiting for a frame"),
                Ok(Err(e)) => panic!("{caller}: read failed while waiting for a frame: {e}"),
                Err(_) => panic!("{caller}: no frame within {STEP:?}"),
            }
        }
    }

    /// The next frame if one arrives within `wait`; `None` if none does.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
        match tokio::time::timeout(wait, self.try_recv()).await {
            Ok(Ok(Some(frame))) => Some(frame),
            Ok(Ok(None)) => panic!("EOF while waiting for a frame"),
            Ok(Err(e)) => panic!("read failed: {e}"),
            Err(_) => None,
        }
    }

    /// The next ACK's id and actions.
    pub async fn recv_ack(&mut self) -> (NotifyId, Vec<String>) {
        self.recv().await.into_ack()
    }

    /// Asserts that the agent closed the connection cleanly (read returns 0, no reset, no
    /// leftover bytes) within [`STEP`].
    pub async fn expect_eof(&mut self) {
        match tokio::time::timeout(STEP, self.try_recv()).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(frame))) => panic!("expected EOF, got {frame:?}"),
            Ok(Err(e)) => panic!("expected a clean EOF, got {e}"),
            Err(_) => panic!("the agent did not close within {STEP:?}"),
        }
    }

    /// Sends one NOTIFY of [`notify_i`] and expects its ACK setting `txn.i`.
    pub async fn roundtrip(&mut self, stream_id: u64, frame_id: u64, i: i64) {
        let id = NotifyId::new(stream_id, frame_id);
        self.send_notify(&notify_i(id, i)).await;
        assert_eq!(
            self.recv_ack().await,
            (id, vec![format!("set-var txn.i = int64:{i}")])
        );
    }
}

// ---- NOTIFYs and handlers ----------------------------------------------------------------

/// A NOTIFY with message `m` carrying `i` and one more argument telling [`scripted`] what to do.
pub fn notify_with(
    id: NotifyId,
    i: i64,
    arg: &str,
    value: impl Into<spop_proto::TypedData<'static>>,
) -> Notify {
    let value: spop_proto::TypedData<'static> = value.into();
    Notify::builder(id)
        .message("m")
        .arg("i", i)
        .arg(arg, value)
        .build()
}

/// A handler driven by the NOTIFY's message `m`: optional `sleep_ms` (int), then `panic`,
/// `fail` or `hang` (bool true) misbehave; otherwise it answers `set-var txn.i = <i>`, plus
/// `set-var txn.big = "xxx…"` of `big` (int) bytes when asked.
pub fn scripted() -> impl Handler {
    handler_fn(|req: Request| async move {
        let m = req.message("m").expect("message m");
        let i = m.arg("i").and_then(|v| v.as_i64()).unwrap_or(-1);
        let sleep_ms = m.arg("sleep_ms").and_then(|v| v.as_u64());
        let flag = |name: &str| m.arg(name).and_then(|v| v.as_bool()) == Some(true);
        let (panic, fail, hang) = (flag("panic"), flag("fail"), flag("hang"));
        let big = m
            .arg("big")
            .and_then(|v| v.as_u64())
            .map(|n| usize::try_from(n).expect("a test payload size"));
        if let Some(ms) = sleep_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if hang {
            std::future::pending::<()>().await;
        }
        assert!(!panic, "handler panicking on purpose (test)");
        if fail {
            return Err::<Actions, BoxError>("handler failing on purpose (test)".into());
        }
        let mut actions = Actions::new();
        actions.set_var(Scope::Transaction, "i", i);
        if let Some(n) = big {
            actions.set_var(Scope::Transaction, "big", "x".repeat(n).as_str());
        }
        Ok(actions)
    })
}

// ---- a running server --------------------------------------------------------------------

/// A [`Server`] serving on a spawned task until [`stop`](Self::stop) (or drop, which aborts it).
pub struct Running<A> {
    /// Where it listens.
    pub addr: A,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts a server on 127.0.0.1, on a port of the kernel's choosing.
pub async fn start<H: Handler>(builder: ServerBuilder, handler: H) -> Running<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    start_on(builder, listener, addr, handler)
}

/// Starts a server on any listener.
pub fn start_on<L, H, A>(builder: ServerBuilder, listener: L, addr: A, handler: H) -> Running<A>
where
    L: Listener + 'static,
    H: Handler,
{
    // no lame duck and a short quiet time: these tests stop servers with connections open
    // and expect the drain at once (the lame duck has tests of its own, tests/lame_duck.rs)
    let server: Server = builder
        .lame_duck(Duration::ZERO)
        .drain_quiet(Duration::from_millis(100))
        .build()
        .expect("valid server configuration");
    let metrics = server.metrics().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(listener, handler, async {
                let _ = rx.await;
            })
            .await;
    });
    Running {
        addr,
        metrics,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl<A> Running<A> {
    /// Completes the shutdown future given to `serve`.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most [`STEP`]) for `serve` to return.
    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STEP, task)
                .await
                .expect("serve did not return after shutdown")
                .expect("serve panicked");
        }
    }

    /// Graceful shutdown, then waits for `serve` to return.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        self.join().await;
    }
}

impl<A> Drop for Running<A> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A unique path for a Unix socket under the temporary directory, removed on drop.
pub struct TempSocketPath(pub std::path::PathBuf);

impl TempSocketPath {
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "spoa-rt-{}-{}-{nanos}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Self(std::env::temp_dir().join(name))
    }
}

impl Drop for TempSocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
