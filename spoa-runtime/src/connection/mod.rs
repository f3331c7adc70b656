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
//! into the connection's reused box, the request hands out the buffer of an earlier ACK on the thread
//! ([`Request::actions`]), ACKs are encoded straight into the buffer written to the socket,
//! counters are the connection's own, and the clock is read once per wakeup (plus once per
//! batch in which handlers completed inline, to time them together). A connection holds a
//! read or write buffer only while bytes wait in it: idle, it lends them to its worker
//! thread's spare slot.

use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use spop_proto::{Actions, AgentConnection, ConnectionError, Event, Notify, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

mod answer;
mod socket;
mod tasks;

use answer::Counts;
use socket::{IoEvent, SPARE_READ, SPARE_WRITE, give_back, lend, poll_io};
pub(crate) use tasks::Outcome;
use tasks::{FromTasks, Spawned, Supervised, poll_tasks};

use crate::handler::{ConnInfo, Handler, Request};
use crate::server::{Server, Shared};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long the final frames (AGENT-DISCONNECT) may take to write after a close.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// After this long without a frame, with nothing in flight, a connection frees what it keeps
/// for traffic (event queue, in-flight table, handler box): idle connections then
/// hold almost nothing, busy ones never reallocate.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

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

/// When the NOTIFYs of a batch arrived, and so their deadline (arrival + budget).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    now: Instant,
    deadline: Instant,
}

/// What a connection holds for traffic (event queue, in-flight table, handler box).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Since the start: released once the handshake is done.
    Fresh,
    /// Released, and no frame since.
    Released,
    /// Frames arrived since the last release: released after `IDLE_RELEASE` of quiet.
    Holding,
}

/// The server's handler behind a connection's own `Arc`: cloning that for a request touches a
/// reference count no other connection (or worker thread) writes.
struct ConnHandler<H>(Arc<H>);

/// The handler call as a future of its own: it owns a reference to the handler, so it can
/// move to a task. It gives the reference back with the result: a call that completes inline
/// hands it to the next one, so the reference count is only touched for calls that wait.
async fn call<H: Handler>(
    handler: Arc<ConnHandler<H>>,
    req: Request,
) -> (Result<Actions, H::Error>, Arc<ConnHandler<H>>) {
    let res = handler.0.handle_notify(req).await;
    (res, handler)
}

/// A call's future without the handler reference it gives back (for the handler tasks).
struct ResultOf<F>(Pin<Box<F>>);

impl<F, T, R> Future for ResultOf<F>
where
    F: Future<Output = (T, R)>,
{
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.0.as_mut().poll(cx).map(|(res, _)| res)
    }
}

struct Driver<H, Mk, F> {
    handler: Arc<ConnHandler<H>>,
    /// A second reference to the handler, lent to each call and given back when it completes
    /// inline; `None` after one moved to a task (then the next call clones `handler`).
    lent: Option<Arc<ConnHandler<H>>>,
    call: Mk,
    /// The box the handler futures are written into, reused while they complete inline.
    slot: Option<Pin<Box<F>>>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    /// Counts not yet added to the worker thread's counters (once per loop turn).
    counts: Counts,
    established: bool,
    /// Made at the first handler that has to wait: connections whose handlers all complete
    /// inline (and idle ones) never allocate it.
    spawned: Option<Box<Spawned>>,
    /// The peer stopped reading: nothing more is written, not even AGENT-DISCONNECT.
    write_stalled: bool,
    /// An ACK was queued since the drain last looked.
    acked: bool,
}

impl<H, Mk, F> Driver<H, Mk, F>
where
    H: Handler,
    Mk: Fn(Arc<ConnHandler<H>>, Request) -> F + Send,
    F: Future<Output = (Result<Actions, H::Error>, Arc<ConnHandler<H>>)> + Send + 'static,
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
            lent: None,
            call,
            slot: None,
            shared,
            info: Arc::new(info),
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
        // settings are read from `self.shared.config` where used, not copied into locals:
        // every byte of this future is paid by every idle connection
        let mut cancelled = pin!(cancel.cancelled());
        // One timer for every deadline (the state machine's, a blocked write's, the drain's,
        // the idle release), armed lazily: reset only to an earlier instant; when it fires
        // early, the conditions are checked and it is armed again. Boxed, and dropped while
        // nothing is due: an idle connection holds none.
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // the timer is set and has not fired
        let mut armed = false;
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
        // whether the traffic buffers were released since the last frame
        let mut held = Held::Fresh;
        loop {
            let mut now = clock.take().unwrap_or_else(Instant::now);
            if !self.established && self.shared.lame_duck.load(Ordering::Relaxed) {
                conn.refuse_health_checks();
            }
            if conn.outgoing().capacity() == 0 {
                *conn.outgoing() = lend(&SPARE_WRITE, 0);
            }
            let batch = now;
            let frames_before = last_frame;
            let closed = self.pump(&mut conn, &mut rbuf, now, &mut last_frame);
            if held == Held::Released && last_frame != frames_before {
                held = Held::Holding;
            }
            if self.counts.inline_n > 0 {
                // the handlers of this batch, timed together: arrival to ACK queued
                now = Instant::now();
                self.counts.inline_time = now - batch;
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
            let below_high_water = pending < self.shared.config.write_high_water;
            let can_read = conn.wants_read() && below_high_water;
            // the drain: close once nothing is in flight, right behind the ACK that emptied the
            // connection (one write: HAProxy reads both before it could reuse the connection),
            // or once nothing arrived for `quiet`; at the grace, stop reading and answer what is
            // in flight within one budget
            let mut drain_wake = None;
            if let Some(since) = draining.filter(|_| !conn.is_draining() && !conn.is_closed()) {
                let hard = since
                    + self
                        .shared
                        .config
                        .shutdown_grace
                        .saturating_sub(self.shared.budget);
                let quiet = self.shared.config.drain_quiet;
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
            if held == Held::Fresh && self.established && conn.in_flight() == 0 {
                // right after the handshake: what the HELLO needed goes (thousands of
                // connections opened at once then reuse each other's memory)
                self.release_traffic_buffers(&mut conn);
                held = Held::Released;
            }
            let quiet_since =
                (held == Held::Holding && conn.in_flight() == 0).then_some(last_frame);
            let wake = [
                conn.poll_timeout().map(Instant::from_std),
                drain_wake,
                (pending > 0 && write_blocked)
                    .then(|| write_progress + self.shared.config.write_timeout),
                quiet_since.map(|t| t + IDLE_RELEASE),
            ]
            .into_iter()
            .flatten()
            .min();
            match (wake, &mut timer) {
                (None, _) => {
                    timer = None;
                    armed = false;
                }
                (Some(w), None) => {
                    timer = Some(Box::pin(tokio::time::sleep_until(w)));
                    armed = true;
                }
                (Some(w), Some(t)) if !armed || w < t.deadline() => {
                    t.as_mut().reset(w);
                    armed = true;
                }
                (Some(_), Some(_)) => {}
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
                        answer::add_bytes(&mut self.counts.bytes_out, n);
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
                    IoEvent::Read(Ok(n)) => answer::add_bytes(&mut self.counts.bytes_in, n),
                    IoEvent::Read(Err(e)) => {
                        debug!(error = %e, "read failed");
                        conn.handle_eof(Instant::now().into_std());
                    }
                },
                () = poll_fn(|cx| timer.as_mut().map_or(Poll::Pending, |t| t.as_mut().poll(cx))), if armed => {
                    // (not `Sleep::is_elapsed`: that turns true when the driver fires the
                    // timer, before this arm could see it complete)
                    armed = false;
                    let now = Instant::now();
                    conn.handle_timeout(now.into_std());
                    let write_timeout = self.shared.config.write_timeout;
                    if !conn.outgoing().is_empty() && now >= write_progress + write_timeout {
                        self.write_timed_out(&mut conn, write_timeout, now);
                    }
                    if quiet_since.is_some_and(|t| now >= t + IDLE_RELEASE) {
                        self.release_traffic_buffers(&mut conn);
                        held = Held::Released;
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
    /// box. The next NOTIFY allocates them again.
    fn release_traffic_buffers(&mut self, conn: &mut AgentConnection) {
        conn.release_buffers();
        self.slot = None;
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
        // every NOTIFY of the batch arrived at `now`: one deadline for them all
        let at = Arrival {
            now,
            deadline: now + self.shared.budget,
        };
        loop {
            while let Some(event) = conn.poll_event() {
                if let Some(why) = self.on_event(conn, event, at) {
                    return Some(why);
                }
            }
            if conn.outgoing().len() >= high_water {
                return None;
            }
            // NOTIFYs take the state machine's fast lane, past its event queue
            if let Some(notify) = conn.read_notify(std_now, rbuf) {
                *last_frame = now;
                self.on_notify(conn, notify, at);
                continue;
            }
            if conn.handle_read_frames(std_now, rbuf, 1) == 0 {
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
        at: Arrival,
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
            Event::Notify(notify) => self.on_notify(conn, notify, at),
            Event::FrameSkipped(t) => debug!(frame_type = t.0, "skipped a frame of unknown type"),
            Event::Closed(why) => return Some(why),
            _ => {}
        }
        None
    }

    /// A NOTIFY: its handler started, and its ACK queued if the handler completed inline.
    #[inline]
    fn on_notify(&mut self, conn: &mut AgentConnection, notify: Notify, at: Arrival) {
        self.counts.notifies += 1;
        let id = notify.id();
        if let Some(outcome) = self.start_handler(notify, at) {
            self.ack(conn, id, outcome, at.now);
        }
    }

    /// Starts the handler for `notify`, received at `now`. It is polled once right here
    /// (unless `inline_first_poll` is off), in the connection's reused box: a handler that
    /// completes without waiting (the common case: in-memory lookups) is answered without a
    /// task spawn or an allocation, and its outcome returned. Otherwise its box moves to a task
    /// of its own, raced against its deadline.
    fn start_handler(&mut self, notify: Notify, at: Arrival) -> Option<Outcome> {
        let Arrival { now, deadline } = at;
        let id = notify.id();
        let span = debug_span!("notify", stream_id = id.stream_id, frame_id = id.frame_id);
        let req = Request::from_runtime(notify, self.info.clone(), deadline);
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
        let handler = self.lent.take().unwrap_or_else(|| self.handler.clone());
        let fut = (self.call)(handler, req);
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
                Ok(Poll::Ready((res, handler))) => {
                    self.counts.inline_n += 1;
                    self.lent = Some(handler);
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
            Box::new(Spawned {
                tasks: JoinSet::new(),
                tx,
                rx,
                late: Arc::new(Semaphore::new(max_late)),
            })
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
            .spawn(task.run(ResultOf(fut), permit, queued).instrument(span));
        None
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
                answer::add_bytes(&mut self.counts.bytes_out, n);
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
