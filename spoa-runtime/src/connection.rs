//! The per-connection driver: runs the `spop-proto` state machine over an async stream.
//!
//! Per NOTIFY: the handler is polled once inline; if it has to wait, it moves to a task that
//! races it against its deadline (arrival + budget). At the deadline the task reports the
//! fallback and, if the connection has a late slot, lets the handler run on until
//! `late_limit` with its result dropped. Outcomes come back over one channel; the driver ACKs
//! them, so an abandoned NOTIFY frees its in-flight slot at its deadline, not when its handler
//! ends.
//!
//! The inline path allocates nothing in the steady state: the handler's future is written
//! into the connection's reused box, the request carries the buffer of an earlier ACK
//! ([`Request::actions`]), ACKs are encoded straight into the buffer written to the socket,
//! counters are the connection's own, and the clock is read once per wakeup (plus once per
//! batch in which handlers completed inline, to time them together). A connection holds a
//! read or write buffer only while bytes wait in it: idle, it lends them to its worker
//! thread's spare slot.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::LocalKey;
use std::time::Duration;

use bytes::BytesMut;
use spop_proto::{
    AckError, Actions, AgentConnection, ConnectionError, Event, Notify, NotifyId, StatusCode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::io::{poll_read_buf, poll_write_buf};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::config::FallbackReason;
use crate::handler::{BoxError, ConnInfo, Handler, Request};
use crate::server::{Server, Shared};
use crate::unwind::{CatchUnwind, Panicked};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long the final frames (AGENT-DISCONNECT) may take to write after a close.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// Room made before a read (HAProxy 2.6 batches up to 20 NOTIFYs per write, 3.x sends one
/// per read). Buffers are lent by the worker thread's spare slot while a read waits, so an
/// idle connection holds none; one that grew above `KEEP_CAPACITY` is not kept.
const READ_CHUNK: usize = 8 * 1024;
const KEEP_CAPACITY: usize = 64 * 1024;
/// An ACK buffer larger than this (a handler that once answered with many variables) is not
/// recycled into the next request.
const KEEP_ACTIONS: usize = 1024;
/// After this long without a frame, with nothing in flight, a connection frees what it keeps
/// for traffic (event queue, in-flight table, handler box, ACK buffer): idle connections then
/// hold almost nothing, busy ones never reallocate.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

thread_local! {
    /// Each thread's spare read and write buffers: a connection holds one only while bytes
    /// wait in it, and hands it back when it empties.
    static SPARE_READ: Cell<Option<BytesMut>> = const { Cell::new(None) };
    static SPARE_WRITE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// An empty buffer with room for `want` bytes: the thread's spare one (reclaiming its memory
/// when nothing else refers to it), or a new one.
fn lend(pool: &'static LocalKey<Cell<Option<BytesMut>>>, want: usize) -> BytesMut {
    let mut b = pool.try_with(Cell::take).ok().flatten().unwrap_or_default();
    b.reserve(want);
    b
}

/// Hands an empty buffer back to the thread's spare slot (keeping the larger of two).
fn give_back(pool: &'static LocalKey<Cell<Option<BytesMut>>>, b: &mut BytesMut) {
    let b = std::mem::take(b);
    if b.capacity() == 0 || b.capacity() > KEEP_CAPACITY || !b.is_empty() {
        return;
    }
    let _ = pool.try_with(|slot| {
        let keep = match slot.take() {
            Some(old) if old.capacity() >= b.capacity() => old,
            _ => b,
        };
        slot.set(Some(keep));
    });
}
/// Once a drain stops reading, what is in flight is answered within its budget (its own
/// fallback); the state machine's drain deadline is a backstop, this much later, so the
/// fallbacks always win the race.
const DRAIN_MARGIN: Duration = Duration::from_millis(100);

/// Serves one SPOP connection over any byte stream (TCP, Unix socket, TLS, an in-memory
/// duplex...) until it closes; returns why it closed. Uses the server's configuration,
/// metrics, handler limit and background tasks, exactly as [`Server::serve`] would.
///
/// Cancelling `cancel` starts a graceful drain: reading stops, in-flight handlers finish (or
/// reach their budget) and are ACKed, then AGENT-DISCONNECT status 0 goes out (status 2 if
/// [`Config::shutdown_grace`](crate::Config::shutdown_grace) runs out first).
///
/// ```no_run
/// use std::sync::Arc;
/// use spoa_runtime::{handler_fn, serve_connection, Request, Server};
/// use spop_proto::Actions;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder().build()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
/// let (stream, peer) = listener.accept().await?;
/// let handler = Arc::new(handler_fn(|_req: Request| async { Ok::<_, std::convert::Infallible>(Actions::new()) }));
/// let why = serve_connection(stream, peer.to_string(), handler, &server, CancellationToken::new()).await;
/// println!("closed: {why}");
/// # Ok(()) }
/// ```
pub async fn serve_connection<IO, H>(
    io: IO,
    peer: String,
    handler: Arc<H>,
    server: &Server,
    cancel: CancellationToken,
) -> ConnectionError
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    drive(io, peer, handler, server.shared().clone(), cancel, ()).await
}

/// Keeps the active-connections gauge right even if the connection task panics or is
/// aborted.
struct Gauge(Arc<Shared>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}

/// The connection's future: one state machine, no wrapper around it (idle connections are
/// mostly this future). `guard` is dropped with it (the server's connection slot).
pub(crate) fn drive<IO, H>(
    io: IO,
    peer: String,
    handler: Arc<H>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    guard: impl Send + 'static,
) -> impl Future<Output = ConnectionError> + Send
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("spop_conn", conn = id, peer = %peer, engine_id = tracing::field::Empty);
    shared.metrics.connection_opened();
    let gauge = Gauge(shared.clone());
    Driver::new(id, peer, handler, shared, call::<H>)
        .run(io, cancel, (gauge, guard))
        .instrument(span)
}

/// The server's handler behind a connection's own `Arc`: cloning that for a request touches a
/// reference count no other connection (or worker thread) writes.
struct ConnHandler<H>(Arc<H>);

/// The handler call as a future of its own: it owns a reference to the handler, so it can
/// move to a task.
async fn call<H: Handler>(handler: Arc<ConnHandler<H>>, req: Request) -> Result<Actions, H::Error> {
    handler.0.handle_notify(req).await
}

/// How a handler ended, as far as the ACK is concerned.
pub(crate) enum Outcome {
    Done(Actions),
    Failed(BoxError),
    Panicked,
    Fallback(FallbackReason),
}

impl Outcome {
    fn of<E: Into<BoxError>>(r: Result<Result<Actions, E>, Panicked>) -> Self {
        match r {
            Ok(Ok(a)) => Self::Done(a),
            Ok(Err(e)) => Self::Failed(e.into()),
            Err(Panicked) => Self::Panicked,
        }
    }
}

struct Driver<H, Mk, F> {
    handler: Arc<ConnHandler<H>>,
    call: Mk,
    /// The box the handler futures are written into, reused while they complete inline.
    slot: Option<Pin<Box<F>>>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    /// The last ACK's actions, cleared: the next request's [`Request::actions`].
    spare_actions: Actions,
    /// Handlers completed inline since the last timing.
    inline_done: u64,
    /// Counts not yet added to the worker thread's counters (once per loop turn).
    counts: Counts,
    established: bool,
    /// Made at the first handler that has to wait: connections whose handlers all complete
    /// inline (and idle ones) never allocate it.
    spawned: Option<Spawned>,
    /// The peer stopped reading: nothing more is written, not even AGENT-DISCONNECT.
    write_stalled: bool,
    /// An ACK was queued since the drain last looked.
    acked: bool,
}

/// The handlers that had to wait: their tasks, how they report back, and the connection's
/// late slots.
struct Spawned {
    tasks: JoinSet<()>,
    tx: mpsc::UnboundedSender<(NotifyId, Outcome)>,
    rx: mpsc::UnboundedReceiver<(NotifyId, Outcome)>,
    late: Arc<Semaphore>,
}

/// What the handler tasks did.
enum FromTasks {
    Outcome(NotifyId, Outcome),
    /// A task ended (late ones report nothing else).
    Reaped,
}

/// The next outcome (if `outcomes` is allowed), or a finished task to reap.
fn poll_tasks(
    spawned: &mut Option<Spawned>,
    cx: &mut Context<'_>,
    outcomes: bool,
) -> Poll<FromTasks> {
    let Some(s) = spawned else {
        return Poll::Pending;
    };
    if outcomes {
        if let Poll::Ready(Some((id, outcome))) = s.rx.poll_recv(cx) {
            return Poll::Ready(FromTasks::Outcome(id, outcome));
        }
    }
    if !s.tasks.is_empty() {
        if let Poll::Ready(Some(_)) = s.tasks.poll_join_next(cx) {
            return Poll::Ready(FromTasks::Reaped);
        }
    }
    Poll::Pending
}

/// What a connection counted since its last turn.
#[derive(Debug, Default)]
struct Counts {
    notifies: u64,
    acks: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// The handlers of the last batch that completed inline, and how long it took.
    inline: Option<(Duration, u64)>,
}

impl Counts {
    /// Adds the counts to the calling thread's counters, and starts again from zero.
    fn flush(&mut self, metrics: &Arc<crate::Metrics>) {
        if self.notifies | self.acks | self.bytes_in | self.bytes_out == 0 && self.inline.is_none()
        {
            return;
        }
        let c = std::mem::take(self);
        metrics.local(|hot| {
            hot.add(c.notifies, c.acks, c.bytes_in, c.bytes_out);
            if let Some((d, n)) = c.inline {
                hot.handler_latency(d, n);
            }
        });
    }
}

/// What the socket did.
enum IoEvent {
    Wrote(io::Result<usize>),
    /// A write could not complete at once (the peer's window is full): the write timeout
    /// has to be armed.
    WriteBlocked,
    Read(io::Result<usize>),
}

/// Writes what is queued, else reads if allowed, on one stream (no split halves and their
/// lock). While a read waits, the read buffer goes back to the thread's spare slot.
fn poll_io<IO: AsyncRead + AsyncWrite>(
    mut io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
    rbuf: &mut BytesMut,
    can_read: bool,
    write_blocked: &mut bool,
) -> Poll<IoEvent> {
    if !out.is_empty() {
        match poll_write_buf(io.as_mut(), cx, out) {
            Poll::Ready(r) => {
                *write_blocked = false;
                return Poll::Ready(IoEvent::Wrote(r));
            }
            Poll::Pending if !*write_blocked => {
                *write_blocked = true;
                return Poll::Ready(IoEvent::WriteBlocked);
            }
            Poll::Pending => {}
        }
    }
    if can_read {
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            if rbuf.is_empty() {
                *rbuf = lend(&SPARE_READ, READ_CHUNK);
            } else {
                rbuf.reserve(READ_CHUNK);
            }
        }
        match poll_read_buf(io.as_mut(), cx, rbuf) {
            Poll::Ready(r) => return Poll::Ready(IoEvent::Read(r)),
            Poll::Pending if rbuf.is_empty() => give_back(&SPARE_READ, rbuf),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

impl<H, Mk, F> Driver<H, Mk, F>
where
    H: Handler,
    Mk: Fn(Arc<ConnHandler<H>>, Request) -> F + Send,
    F: Future<Output = Result<Actions, H::Error>> + Send + 'static,
{
    fn new(id: u64, peer: String, handler: Arc<H>, shared: Arc<Shared>, call: Mk) -> Self {
        let info = ConnInfo {
            id,
            peer,
            engine_id: None,
            max_frame_size: 0,
            pipelining: false,
            background: shared.background.clone(),
        };
        Self {
            handler: Arc::new(ConnHandler(handler)),
            call,
            slot: None,
            shared,
            info: Arc::new(info),
            spare_actions: Actions::new(),
            inline_done: 0,
            counts: Counts::default(),
            established: false,
            spawned: None,
            write_stalled: false,
            acked: false,
        }
    }

    async fn run<IO>(
        mut self,
        io: IO,
        cancel: CancellationToken,
        _guards: impl Send,
    ) -> ConnectionError
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut io = pin!(io);
        let start = Instant::now();
        let mut conn = AgentConnection::new(self.shared.agent.clone(), start.into_std());
        let mut rbuf = BytesMut::new();
        let high_water = self.shared.config.write_high_water;
        let write_timeout = self.shared.config.write_timeout;
        let grace = self.shared.config.shutdown_grace;
        let quiet = self.shared.config.drain_quiet;
        let mut cancelled = pin!(cancel.cancelled());
        // One timer for every deadline (the state machine's, a blocked write's, the drain's,
        // the idle release), armed lazily: reset only to an earlier instant; when it fires
        // early, the conditions are checked and it is armed again. Boxed, and dropped while
        // nothing is due: an idle connection holds none.
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut armed: Option<Instant> = None;
        // the last write could not complete: the write timeout runs
        let mut write_blocked = false;
        // Some(when the drain started) once cancelled; then the connection keeps answering
        // what arrives, and closes once quiet (or at the grace)
        let mut draining: Option<Instant> = None;
        let mut last_frame = start;
        // when the peer last accepted bytes, or when output started waiting
        let mut write_progress = start;
        let mut wrote = false;
        // the clock read after the last batch, reused when the next turn follows a write
        let mut clock: Option<Instant> = None;
        let mut turns: u32 = 0;
        // the last frame before which the traffic buffers were released
        let mut released_for: Option<Instant> = None;
        loop {
            let mut now = clock.take().unwrap_or_else(Instant::now);
            if !self.established && self.shared.lame_duck.load(Ordering::Relaxed) {
                conn.refuse_health_checks();
            }
            if conn.outgoing().capacity() == 0 {
                *conn.outgoing() = lend(&SPARE_WRITE, 0);
            }
            let batch = now;
            let closed = self.pump(&mut conn, &mut rbuf, now, &mut last_frame);
            if self.inline_done > 0 {
                // the handlers of this batch, timed together: arrival to ACK queued
                now = Instant::now();
                let n = std::mem::take(&mut self.inline_done);
                self.counts.inline = Some((now - batch, n));
            }
            if let Some(why) = closed {
                // boxed: the closing path is cold, and its timers would otherwise enlarge every idle
                // connection's task
                Box::pin(self.finish(io.as_mut(), &mut conn, &why)).await;
                return why;
            }
            if rbuf.is_empty() {
                give_back(&SPARE_READ, &mut rbuf);
            }
            if conn.outgoing().is_empty() {
                give_back(&SPARE_WRITE, conn.outgoing());
            }
            let pending = conn.outgoing().len();
            if std::mem::take(&mut wrote) || pending == 0 {
                write_progress = now;
            }
            let below_high_water = pending < high_water;
            let can_read = conn.wants_read() && below_high_water;
            // the drain: close once nothing is in flight, right behind the ACK that emptied the
            // connection (one write: HAProxy reads both before it could reuse the connection),
            // or once nothing arrived for `quiet`; at the grace, stop reading and answer what is
            // in flight within one budget
            let mut drain_wake = None;
            if let Some(since) = draining.filter(|_| !conn.is_draining() && !conn.is_closed()) {
                let hard = since + grace.saturating_sub(self.shared.budget);
                let emptied = std::mem::take(&mut self.acked);
                if (conn.in_flight() == 0 && (emptied || now >= last_frame + quiet)) || now >= hard
                {
                    debug!(
                        in_flight = conn.in_flight(),
                        after_ack = emptied,
                        "drain: closing"
                    );
                    let t = now.into_std();
                    conn.begin_drain(t, t + self.shared.budget + DRAIN_MARGIN);
                    continue;
                }
                drain_wake = Some(
                    (last_frame + quiet)
                        .max(now + Duration::from_millis(1))
                        .min(hard),
                );
            }
            if released_for.is_none() && self.established && conn.in_flight() == 0 {
                // right after the handshake: what the HELLO needed goes (thousands of
                // connections opened at once then reuse each other's memory)
                self.release_traffic_buffers(&mut conn);
                released_for = Some(last_frame);
            }
            let quiet_since =
                (released_for != Some(last_frame) && conn.in_flight() == 0).then_some(last_frame);
            let wake = [
                conn.poll_timeout().map(Instant::from_std),
                drain_wake,
                (pending > 0 && write_blocked).then(|| write_progress + write_timeout),
                quiet_since.map(|t| t + IDLE_RELEASE),
            ]
            .into_iter()
            .flatten()
            .min();
            match wake {
                None => {
                    timer = None;
                    armed = None;
                }
                Some(w) if armed.is_none_or(|a| w < a) => {
                    match &mut timer {
                        Some(t) => t.as_mut().reset(w),
                        None => timer = Some(Box::pin(tokio::time::sleep_until(w))),
                    }
                    armed = Some(w);
                }
                Some(_) => {}
            }
            // The shutdown signal is polled last (polling it takes the token's lock), so only
            // when nothing else is ready; every 64 turns it is checked, so a connection that is
            // always busy still notices it.
            self.counts.flush(&self.shared.metrics);
            turns = turns.wrapping_add(1);
            if draining.is_none() && turns % 64 == 0 && cancel.is_cancelled() {
                debug!(in_flight = conn.in_flight(), "draining");
                draining = Some(now);
                self.acked = false;
                continue;
            }
            tokio::select! {
                biased;
                // outcomes wait while the write buffer is full: their ACKs would pile up past it
                ev = poll_fn(|cx| poll_tasks(&mut self.spawned, cx, below_high_water)), if self.spawned.is_some() => {
                    if let FromTasks::Outcome(id, outcome) = ev {
                        self.ack(&mut conn, id, outcome, Instant::now());
                    }
                }
                ev = poll_fn(|cx| poll_io(io.as_mut(), cx, conn.outgoing(), &mut rbuf, can_read, &mut write_blocked)) => match ev {
                    // the write timeout starts
                    IoEvent::WriteBlocked => {}
                    IoEvent::Wrote(Ok(n)) if n > 0 => {
                        self.counts.bytes_out += n as u64;
                        wrote = true;
                        // nothing waited but the write: the batch's clock is still good
                        clock = Some(now);
                    }
                    IoEvent::Wrote(Ok(_)) => conn.handle_eof(Instant::now().into_std()),
                    IoEvent::Wrote(Err(e)) => {
                        debug!(error = %e, "write failed");
                        conn.handle_eof(Instant::now().into_std());
                    }
                    IoEvent::Read(Ok(0)) => conn.handle_eof(Instant::now().into_std()),
                    IoEvent::Read(Ok(n)) => self.counts.bytes_in += n as u64,
                    IoEvent::Read(Err(e)) => {
                        debug!(error = %e, "read failed");
                        conn.handle_eof(Instant::now().into_std());
                    }
                },
                () = poll_fn(|cx| timer.as_mut().map_or(Poll::Pending, |t| t.as_mut().poll(cx))), if armed.is_some() => {
                    armed = None;
                    let now = Instant::now();
                    conn.handle_timeout(now.into_std());
                    if !conn.outgoing().is_empty() && now >= write_progress + write_timeout {
                        self.write_timed_out(&mut conn, write_timeout, now);
                    }
                    if quiet_since.is_some_and(|t| now >= t + IDLE_RELEASE) {
                        self.release_traffic_buffers(&mut conn);
                        released_for = Some(last_frame);
                    }
                }
                () = &mut cancelled, if draining.is_none() => {
                    debug!(in_flight = conn.in_flight(), "draining");
                    draining = Some(Instant::now());
                    self.acked = false;
                }
            }
        }
    }

    /// Frees what the connection keeps for traffic: the state machine's queues, the handler
    /// box, the ACK buffer. The next NOTIFY allocates them again.
    fn release_traffic_buffers(&mut self, conn: &mut AgentConnection) {
        conn.release_buffers();
        self.slot = None;
        self.spare_actions = Actions::new();
    }

    fn write_timed_out(
        &mut self,
        conn: &mut AgentConnection,
        write_timeout: Duration,
        now: Instant,
    ) {
        self.shared.metrics.write_timeout();
        let pending = conn.outgoing().len();
        warn!(pending, timeout = ?write_timeout, "peer stopped reading our ACKs; closing");
        conn.outgoing().clear();
        self.write_stalled = true;
        conn.close(now.into_std(), StatusCode::TIMEOUT, "write timeout");
    }

    /// Handles what the state machine has for us, then consumes buffered frames one at a
    /// time while the write buffer is below its high-water mark, so it never exceeds it by
    /// more than one ACK. Returns why the connection closed, if it did.
    fn pump(
        &mut self,
        conn: &mut AgentConnection,
        rbuf: &mut BytesMut,
        now: Instant,
        last_frame: &mut Instant,
    ) -> Option<ConnectionError> {
        let high_water = self.shared.config.write_high_water;
        let std_now = now.into_std();
        loop {
            while let Some(event) = conn.poll_event() {
                if let Some(why) = self.on_event(conn, event, now) {
                    return Some(why);
                }
            }
            if conn.outgoing().len() >= high_water || conn.handle_read_frames(std_now, rbuf, 1) == 0
            {
                return None;
            }
            *last_frame = now;
        }
    }

    /// Handles one event; returns why the connection closed, if it did.
    fn on_event(
        &mut self,
        conn: &mut AgentConnection,
        event: Event,
        now: Instant,
    ) -> Option<ConnectionError> {
        match event {
            Event::Established(n) => {
                tracing::Span::current().record("engine_id", n.engine_id.as_deref().unwrap_or(""));
                if n.healthcheck {
                    self.shared.metrics.health_check();
                    debug!("health check answered");
                    return None;
                }
                let info = Arc::make_mut(&mut self.info);
                info.engine_id = n.engine_id.clone();
                info.max_frame_size = n.max_frame_size;
                info.pipelining = n.capabilities.pipelining;
                self.established = true;
                self.shared.data_connections.fetch_add(1, Ordering::Relaxed);
                debug!(max_frame_size = n.max_frame_size, capabilities = %n.capabilities, "handshake done");
                let (handler, info) = (&self.handler.0, &self.info);
                if catch_unwind(AssertUnwindSafe(|| handler.on_connect(info))).is_err() {
                    self.shared.metrics.hook_panic();
                    warn!("on_connect panicked");
                }
            }
            Event::Notify(notify) => {
                self.counts.notifies += 1;
                let id = notify.id();
                if let Some(outcome) = self.start_handler(notify, now) {
                    self.ack(conn, id, outcome, now);
                }
            }
            Event::FrameSkipped(t) => debug!(frame_type = t.0, "skipped a frame of unknown type"),
            Event::Closed(why) => return Some(why),
            _ => {}
        }
        None
    }

    /// Starts the handler for `notify`, received at `now`. It is polled once right here
    /// (unless `inline_first_poll` is off), in the connection's reused box: a handler that
    /// completes without waiting (the common case: in-memory lookups) is answered without a
    /// task spawn or an allocation, and its outcome returned. Otherwise its box moves to a task
    /// of its own, raced against its deadline.
    fn start_handler(&mut self, notify: Notify, now: Instant) -> Option<Outcome> {
        let id = notify.id();
        let span = debug_span!("notify", stream_id = id.stream_id, frame_id = id.frame_id);
        let deadline = now + self.shared.budget;
        let req = Request::from_runtime(
            notify,
            self.info.clone(),
            deadline,
            std::mem::take(&mut self.spare_actions),
        );
        let mut queued = None;
        let permit = match &self.shared.limiter {
            None => None,
            Some(limiter) => match limiter.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    queued = Some(limiter.clone());
                    None
                }
            },
        };
        let fut = (self.call)(self.handler.clone(), req);
        let fut = if queued.is_none() && self.shared.config.inline_first_poll {
            let slot = match &mut self.slot {
                Some(slot) => {
                    slot.set(fut);
                    slot
                }
                None => self.slot.insert(Box::pin(fut)),
            };
            let _entered = span.enter();
            let mut cx = Context::from_waker(Waker::noop());
            match catch_unwind(AssertUnwindSafe(|| slot.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(res)) => {
                    self.inline_done += 1;
                    return Some(Outcome::of(Ok(res)));
                }
                Err(_) => {
                    // a future that panicked is not polled (nor overwritten) again
                    self.slot = None;
                    return Some(Outcome::Panicked);
                }
                Ok(Poll::Pending) => self.slot.take()?,
            }
        } else {
            Box::pin(fut)
        };
        let max_late = self.shared.config.max_late;
        let spawned = self.spawned.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            Spawned {
                tasks: JoinSet::new(),
                tx,
                rx,
                late: Arc::new(Semaphore::new(max_late)),
            }
        });
        let task = Supervised {
            id,
            started: now,
            deadline,
            late_limit: self.shared.config.late_limit,
            late: spawned.late.clone(),
            tx: spawned.tx.clone(),
            shared: self.shared.clone(),
        };
        spawned
            .tasks
            .spawn(task.run(fut, permit, queued).instrument(span));
        None
    }

    fn ack(&mut self, conn: &mut AgentConnection, id: NotifyId, outcome: Outcome, now: Instant) {
        self.acked = true;
        let metrics = &self.shared.metrics;
        let (actions, reason) = match outcome {
            Outcome::Done(a) => (a, None),
            Outcome::Panicked => {
                metrics.handler_panic();
                self.log_failure(id, FallbackReason::Panic, None, now);
                (
                    self.fallback(FallbackReason::Panic),
                    Some(FallbackReason::Panic),
                )
            }
            Outcome::Failed(e) => {
                metrics.handler_error();
                self.log_failure(id, FallbackReason::Error, Some(&e), now);
                (
                    self.fallback(FallbackReason::Error),
                    Some(FallbackReason::Error),
                )
            }
            Outcome::Fallback(reason) => {
                match reason {
                    FallbackReason::Overload => metrics.handler_overload(),
                    _ => metrics.handler_timeout(),
                }
                self.log_failure(id, reason, None, now);
                (self.fallback(reason), Some(reason))
            }
        };
        let std_now = now.into_std();
        match conn.send_ack(std_now, id, &actions) {
            Ok(()) => self.counts.acks += 1,
            Err(AckError::FrameTooLarge { len, max }) if reason.is_none() => {
                metrics.ack_too_large();
                self.log_failure(id, FallbackReason::TooLarge, None, now);
                debug!(len, max, "ACK larger than the negotiated frame size");
                if conn
                    .send_ack(std_now, id, &self.fallback(FallbackReason::TooLarge))
                    .is_ok()
                {
                    self.counts.acks += 1;
                }
            }
            // closed or draining past the deadline: HAProxy has given up on it
            Err(e) => debug!(error = %e, "ACK not sent"),
        }
        if actions.as_bytes().len() <= KEEP_ACTIONS {
            let mut actions = actions;
            actions.clear();
            self.spare_actions = actions;
        }
    }

    /// The fallback ACK's actions: the error variable, if configured (else nothing, and the
    /// state machine pads the ACK).
    fn fallback(&self, reason: FallbackReason) -> Actions {
        let mut a = Actions::new();
        if let Some((scope, name)) = &self.shared.config.error_var {
            a.set_var(*scope, name, reason.code());
        }
        a
    }

    fn log_failure(
        &self,
        id: NotifyId,
        reason: FallbackReason,
        error: Option<&BoxError>,
        now: Instant,
    ) {
        if !self.shared.failures.admit(reason, now) {
            return;
        }
        let (stream_id, frame_id) = (id.stream_id, id.frame_id);
        let code = reason.code();
        match (reason, error) {
            (FallbackReason::Error, Some(e)) => {
                warn!(stream_id, frame_id, error = %e, code, "handler failed; sent the fallback ACK");
            }
            (FallbackReason::Panic, _) => {
                warn!(
                    stream_id,
                    frame_id, code, "handler panicked; sent the fallback ACK"
                );
            }
            (FallbackReason::Timeout, _) => warn!(
                stream_id,
                frame_id,
                code,
                budget = ?self.shared.budget,
                "handler ran out of its budget; sent the fallback ACK"
            ),
            (FallbackReason::Overload, _) => warn!(
                stream_id,
                frame_id,
                code,
                "no handler slot free within the budget (handler_concurrency); sent the fallback ACK"
            ),
            (FallbackReason::TooLarge, _) => warn!(
                stream_id,
                frame_id,
                code,
                "the handler's ACK exceeds the negotiated frame size; sent the fallback ACK"
            ),
            (FallbackReason::Error, None) => {}
        }
    }

    async fn finish<IO: AsyncWrite>(
        &mut self,
        mut io: Pin<&mut IO>,
        conn: &mut AgentConnection,
        why: &ConnectionError,
    ) {
        if let Some(s) = self.spawned.as_mut().filter(|s| !s.tasks.is_empty()) {
            // handlers still running (late ones included) lose their connection
            let n = s.tasks.len();
            s.tasks.abort_all();
            while s.tasks.join_next().await.is_some() {}
            debug!(tasks = n, "handler tasks cancelled with the connection");
        }
        let out = conn.outgoing();
        if !out.is_empty() && !self.write_stalled {
            let n = out.len();
            if let Ok(Ok(())) = tokio::time::timeout(FINAL_FLUSH, io.write_all_buf(out)).await {
                self.counts.bytes_out += n as u64;
            }
        }
        self.counts.flush(&self.shared.metrics);
        if !self.write_stalled {
            let _ = tokio::time::timeout(FINAL_FLUSH, io.shutdown()).await;
        }
        let metrics = &self.shared.metrics;
        if matches!(
            why,
            ConnectionError::Eof { .. } | ConnectionError::PeerDisconnected { .. }
        ) {
            metrics.peer_close();
        }
        if let Some(status) = why.status() {
            metrics.disconnect(status);
        }
        match why {
            ConnectionError::Decode(_) | ConnectionError::Protocol(_) => {
                warn!(status = why.status().map(|s| s.0), reason = %why, "closing on a peer error");
            }
            _ if why.is_error() => info!(reason = %why, "connection closed"),
            _ => debug!(reason = %why, "connection closed"),
        }
        if self.established {
            self.shared.data_connections.fetch_sub(1, Ordering::Relaxed);
            let (handler, info) = (&self.handler.0, &self.info);
            if catch_unwind(AssertUnwindSafe(|| handler.on_disconnect(info, why))).is_err() {
                metrics.hook_panic();
                warn!("on_disconnect panicked");
            }
        }
    }
}

/// A handler that had to wait, on its own task.
struct Supervised {
    id: NotifyId,
    started: Instant,
    deadline: Instant,
    late_limit: Duration,
    late: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<(NotifyId, Outcome)>,
    shared: Arc<Shared>,
}

impl Supervised {
    /// Runs `fut` holding its handler slot: `permit` (taken before the first poll) or one
    /// waited for behind the concurrency limit (`queued`).
    async fn run<F, E>(
        self,
        fut: Pin<Box<F>>,
        permit: Option<OwnedSemaphorePermit>,
        queued: Option<Arc<Semaphore>>,
    ) where
        F: Future<Output = Result<Actions, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        // Behind the concurrency limit: wait for a slot, but not past the deadline.
        let _slot: Option<OwnedSemaphorePermit> = match queued {
            None => permit,
            Some(limiter) => {
                match tokio::time::timeout_at(self.deadline, limiter.acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    _ => {
                        self.report(Outcome::Fallback(FallbackReason::Overload));
                        return;
                    }
                }
            }
        };
        let mut fut = CatchUnwind::new(fut);
        tokio::select! {
            biased;
            res = &mut fut => {
                self.shared.metrics.handler_latency(self.started.elapsed());
                self.report(Outcome::of(res));
                return;
            }
            () = tokio::time::sleep_until(self.deadline) => {}
        }
        self.shared.metrics.handler_latency(self.started.elapsed());
        self.report(Outcome::Fallback(FallbackReason::Timeout));
        // Past the budget: the ACK is on its way. Let the handler finish if the connection has
        // a late slot, within the late limit; its result is dropped.
        let Ok(_late) = self.late.try_acquire() else {
            self.shared.metrics.handler_cancelled();
            return;
        };
        match tokio::time::timeout_at(self.deadline + self.late_limit, fut).await {
            Ok(_) => self.shared.metrics.handler_late(),
            Err(_) => self.shared.metrics.handler_cancelled(),
        }
    }

    fn report(&self, outcome: Outcome) {
        // the connection may be gone; then nobody waits for the ACK
        let _ = self.tx.send((self.id, outcome));
    }
}
