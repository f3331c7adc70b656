//! Support for the hostile-peer tests: `tests/hostile_matrix.rs` (malformed input against a
//! running agent) and `tests/flood.rs` (connection, pipelining and handler floods).
//!
//! - [`EchoAgent`] runs `spoa echo` ([`spoa_binary`]) as a child process
//!   ([`AgentProcess::spawn`]) with a raised fd limit and reads its RSS and open fds from
//!   `/proc`; killed on drop.
//! - [`InProcessAgent`] runs a `spoa_runtime::Server` on its own tokio runtime thread; its
//!   metrics and live task count are at hand; stopped on drop.
//! - [`Peer`] plays HAProxy's side of one connection over a blocking socket; every read and
//!   write is bounded in time and failures come back as `Err(String)`, so a table-driven test
//!   can report each case's failure and carry on.
//! - Frame builders for well-formed and malformed bytes, and the decoded replies, re-exported
//!   from [`peer`](crate::peer), which the runtime's loopback stub shares.
//!
//! Everything listens on and connects to 127.0.0.1 only.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use spoa_runtime::{Handler, MetricsSnapshot, ServerBuilder};
use spop_proto::NotifyId;
use spop_proto::frame::FrameFlags;

use crate::interop::{AgentProcess, poll_every, spoa_binary};
use crate::peer::FrameReader;
pub use crate::peer::{
    Received, Reply, hello, hello_frame, length_prefix, notify_frame, notify_i, raw_frame,
};

/// The longest wait for any one expected event (a frame, EOF, a process state).
pub const STEP: Duration = Duration::from_secs(2);
/// The fd limit asked for in [`raised_nofile`] children.
pub const NOFILE_WANTED: u64 = 65_536;

/// `sh -c` script: raise the soft fd limit (to 65536, else to the hard limit), then exec the
/// program in `$0` with the remaining arguments; the child keeps the pid of the `sh`.
const RAISE_NOFILE_AND_EXEC: &str =
    "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"";

// ---------------------------------------------------------------------------------------------
// Building and running processes
// ---------------------------------------------------------------------------------------------

/// A command running `program` under `sh -c` with the soft fd limit raised to
/// [`NOFILE_WANTED`] (or to the hard limit when that is lower). Add arguments with `.arg()`.
/// The shell `exec`s the program, so the child's pid is the program's.
pub fn raised_nofile(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(RAISE_NOFILE_AND_EXEC).arg(program);
    cmd
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Number of open fds of a process (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The soft `Max open files` limit of a process (`None`: this process); `u64::MAX` when
/// unlimited.
pub fn nofile_soft_limit(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(
        || "/proc/self/limits".to_string(),
        |p| format!("/proc/{p}/limits"),
    );
    let limits = fs::read_to_string(path).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// Calls `probe` every 10 ms until it returns `Some`, for at most `timeout`.
pub fn poll_until<T>(timeout: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(Duration::from_millis(10), timeout, probe)
}

/// `spoa echo --listen 127.0.0.1:0` as a child process, its soft fd limit raised to
/// [`NOFILE_WANTED`] where the hard limit allows; killed on drop.
#[derive(Debug)]
pub struct EchoAgent(AgentProcess);

impl EchoAgent {
    /// Starts `spoa echo` with `RUST_LOG=info` and these extra arguments; waits (at most 10 s)
    /// for its "listening on ADDR" line.
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_with_log(extra_args, "info")
    }

    /// Like [`start`](Self::start) with another `RUST_LOG` filter.
    pub fn start_with_log(extra_args: &[&str], rust_log: &str) -> Self {
        let bin = spoa_binary();
        Self(AgentProcess::spawn(
            raised_nofile(&bin)
                .args(["echo", "--listen", "127.0.0.1:0"])
                .args(extra_args)
                .env("RUST_LOG", rust_log),
            &format!("`{} echo`", bin.display()),
            // keep memory bounded if a test makes the agent log a lot
            1 << 20,
        ))
    }

    /// The address it listens on.
    pub const fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// `Ok` while the process runs; else how it ended, with its log.
    pub fn alive(&mut self) -> Result<(), String> {
        self.0.alive()
    }

    /// Resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS").unwrap_or(0)
    }

    /// Peak resident set size in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM").unwrap_or(0)
    }

    /// Open fds (listener, sockets, stdio, epoll...).
    pub fn fd_count(&self) -> usize {
        fd_count(self.pid())
    }

    /// Its soft fd limit.
    pub fn nofile_limit(&self) -> u64 {
        nofile_soft_limit(Some(self.pid())).unwrap_or(0)
    }

    /// Everything it wrote to stdout and stderr so far (the first MiB).
    pub fn log(&self) -> String {
        self.0.log()
    }
}

/// A `spoa_runtime::Server` serving `127.0.0.1:<kernel port>` on its own two-worker tokio
/// runtime (a dedicated thread); shut down gracefully on drop.
#[derive(Debug)]
pub struct InProcessAgent {
    addr: SocketAddr,
    metrics: Arc<spoa_runtime::Metrics>,
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl InProcessAgent {
    /// Builds the server from `builder` (with the shutdown grace set to 1 s, so a drop is
    /// quick) and starts serving `handler`.
    pub fn start<H: Handler>(builder: ServerBuilder, handler: H) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let handle = rt.handle().clone();
        let server = builder
            .shutdown_grace(Duration::from_secs(1))
            .lame_duck(Duration::ZERO)
            .build()
            .expect("valid server configuration");
        let metrics = Arc::clone(server.metrics());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                server
                    .serve(listener, handler, async {
                        let _ = rx.await;
                    })
                    .await;
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Self {
            addr,
            metrics,
            handle,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// The address it listens on.
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's metrics now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Tasks alive on its runtime (the accept loop, one per connection, one per running
    /// handler).
    pub fn alive_tasks(&self) -> usize {
        self.handle.metrics().num_alive_tasks()
    }

    /// `Ok` while the server's thread runs.
    pub fn alive(&self) -> Result<(), String> {
        match &self.thread {
            Some(t) if !t.is_finished() => Ok(()),
            _ => Err("the in-process server stopped".into()),
        }
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy's side of a connection
// ---------------------------------------------------------------------------------------------

/// HAProxy's side of one TCP connection, blocking, every wait bounded.
#[derive(Debug)]
pub struct Peer {
    sock: TcpStream,
    frames: FrameReader,
}

impl Peer {
    /// Connects within [`STEP`].
    pub fn connect(addr: SocketAddr) -> Result<Self, String> {
        let sock = TcpStream::connect_timeout(&addr, STEP)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = sock.set_nodelay(true);
        Ok(Self {
            sock,
            frames: FrameReader::new(),
        })
    }

    /// The socket (for `try_clone`, timeouts, shutdown).
    pub const fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Writes all of `bytes` within [`STEP`].
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let _ = self.sock.set_write_timeout(Some(STEP));
        self.sock
            .write_all(bytes)
            .map_err(|e| format!("write of {} bytes failed: {e}", bytes.len()))
    }

    /// Closes the sending side (FIN); reading still works.
    pub fn half_close(&self) -> Result<(), String> {
        self.sock
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown(Write): {e}"))
    }

    /// The next frame within `wait`: `Ok(None)` at a clean EOF with nothing buffered; `Err` on
    /// timeout, read error (reset), EOF inside a frame, or a frame the decoder refuses.
    pub fn recv(&mut self, wait: Duration) -> Result<Option<Received>, String> {
        let deadline = Instant::now() + wait;
        loop {
            match self.frames.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(format!("the agent sent a bad frame: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "nothing within {wait:?} ({} bytes of a partial frame buffered)",
                    self.frames.buffered().len()
                ));
            }
            let _ = self.sock.set_read_timeout(Some(left));
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) if self.frames.buffered().is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(format!(
                        "EOF inside a frame ({} bytes buffered)",
                        self.frames.buffered().len()
                    ));
                }
                Ok(n) => self.frames.buf_mut().extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// The next frame within [`STEP`]; EOF is an error.
    pub fn recv_frame(&mut self) -> Result<Received, String> {
        self.recv(STEP)?
            .ok_or_else(|| "EOF while waiting for a frame".to_string())
    }

    /// A clean EOF (and no frame) within [`STEP`].
    pub fn expect_eof(&mut self) -> Result<(), String> {
        match self.recv(STEP) {
            Ok(None) => Ok(()),
            Ok(Some(f)) => Err(format!("expected EOF, got {f}")),
            Err(e) => Err(format!("expected a clean EOF: {e}")),
        }
    }

    /// Sends a HELLO offering `max_frame_size` and pipelining; returns the AGENT-HELLO's
    /// max-frame-size after checking its version (2.0), flags (FIN) and ids (0/0).
    pub fn handshake_with(&mut self, max_frame_size: u64) -> Result<u64, String> {
        self.send(&hello(max_frame_size, "pipelining"))?;
        self.expect_agent_hello()
    }

    /// Reads the AGENT-HELLO; returns its max-frame-size (see [`handshake_with`](Self::handshake_with)).
    pub fn expect_agent_hello(&mut self) -> Result<u64, String> {
        let f = self
            .recv_frame()
            .map_err(|e| format!("waiting for AGENT-HELLO: {e}"))?;
        match &f.reply {
            Reply::AgentHello {
                version,
                max_frame_size: Some(size),
                ..
            } if version.as_deref() == Some("2.0")
                && f.header.flags == FrameFlags::FIN
                && f.header.id() == NotifyId::new(0, 0) =>
            {
                Ok(*size)
            }
            _ => Err(format!(
                "expected an AGENT-HELLO (version 2.0, FIN, ids 0/0), got {f} {:?}",
                f.header
            )),
        }
    }

    /// The usual handshake: offer 16380 and expect the agent to accept 16380.
    pub fn handshake(&mut self) -> Result<(), String> {
        match self.handshake_with(16380)? {
            16380 => Ok(()),
            other => Err(format!(
                "AGENT-HELLO max-frame-size {other}, expected 16380"
            )),
        }
    }

    /// Sends [`notify_i`]`(id, i)`; the next frame must be its ACK. Returns the ACK's actions.
    pub fn roundtrip(&mut self, id: NotifyId, i: i64) -> Result<Vec<String>, String> {
        self.send(&notify_frame(&notify_i(id, i)))?;
        let f = self
            .recv_frame()
            .map_err(|e| format!("waiting for the ACK of {id}: {e}"))?;
        match f.reply {
            Reply::Ack(actions) if f.header.id() == id && f.header.flags == FrameFlags::FIN => {
                Ok(actions)
            }
            _ => Err(format!("expected the ACK of {id}, got {f}")),
        }
    }

    /// [`roundtrip`](Self::roundtrip) against the echo agent: the ACK must set `txn.i`.
    pub fn echo_roundtrip(&mut self, id: NotifyId, i: i64) -> Result<(), String> {
        let actions = self.roundtrip(id, i)?;
        let want = [format!("set-var txn.i = int64:{i}")];
        if actions == want {
            Ok(())
        } else {
            Err(format!(
                "ACK of {id} carries {actions:?}, expected {want:?}"
            ))
        }
    }
}
