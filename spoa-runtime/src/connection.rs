//! The per-connection driver: runs the `spop-proto` state machine over an async stream.
//!
//! Per NOTIFY: the handler is polled once inline; if it has to wait, it moves to a task that
//! races it against its deadline (arrival + budget). At the deadline the task reports the
//! fallback and, if the connection has a late slot, lets the handler run on until
//! `late_limit` with its result dropped. Outcomes come back over one channel; the driver ACKs
//! them, so an abandoned NOTIFY frees its in-flight slot at its deadline, not when its handler
//! ends.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use spop_proto::{
    AckError, Actions, AgentConnection, ConnectionError, Event, Notify, NotifyId, StatusCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::config::FallbackReason;
use crate::handler::{BoxError, ConnInfo, Handler, Request};
use crate::server::{Server, Shared};
use crate::unwind::{CatchUnwind, Panicked};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long the final frames (AGENT-DISCONNECT) may take to write after a close.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// Read buffer: a new connection starts with a small one (HAProxy's HELLO is about 150 bytes,
/// 3.x NOTIFYs arrive one per read), which grows to the usual reservation once a read fills
/// it; a buffer that grew above `KEEP_CAPACITY` is released once empty.
const SMALL_READ: usize = 512;
const READ_CHUNK: usize = 8 * 1024;
const KEEP_CAPACITY: usize = 64 * 1024;
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
    drive(io, peer, handler, server.shared().clone(), cancel).await
}

/// Keeps the active-connections gauge right even if the connection task panics or is
/// aborted.
struct Gauge(Arc<Shared>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}

pub(crate) async fn drive<IO, H>(
    io: IO,
    peer: String,
    handler: Arc<H>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> ConnectionError
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("spop_conn", conn = id, peer = %peer, engine_id = tracing::field::Empty);
    shared.metrics.connection_opened();
    let _gauge = Gauge(shared.clone());
    Driver::new(id, peer, handler, shared)
        .run(io, cancel)
        .instrument(span)
        .await
}

/// How a handler ended, as far as the ACK is concerned.
pub(crate) enum Outcome {
    Done(Actions),
    Failed(BoxError),
    Panicked,
    Fallback(FallbackReason),
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Actions, BoxError>> + Send>>;

impl From<Result<Result<Actions, BoxError>, Panicked>> for Outcome {
    fn from(r: Result<Result<Actions, BoxError>, Panicked>) -> Self {
        match r {
            Ok(Ok(a)) => Self::Done(a),
            Ok(Err(e)) => Self::Failed(e),
            Err(Panicked) => Self::Panicked,
        }
    }
}

struct Driver<H> {
    handler: Arc<H>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    established: bool,
    tasks: JoinSet<()>,
    /// Made at the first handler that has to wait: connections whose handlers all complete
    /// inline (and idle ones) never allocate it.
    spawned: Option<Spawned>,
    /// The peer stopped reading: nothing more is written, not even AGENT-DISCONNECT.
    write_stalled: bool,
    /// An ACK was queued since the drain last looked.
    acked: bool,
}

/// How handler tasks report back, and the connection's late slots.
struct Spawned {
    tx: mpsc::UnboundedSender<(NotifyId, Outcome)>,
    rx: mpsc::UnboundedReceiver<(NotifyId, Outcome)>,
    late: Arc<Semaphore>,
}

async fn recv(spawned: &mut Option<Spawned>) -> Option<(NotifyId, Outcome)> {
    match spawned {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<H: Handler> Driver<H> {
    fn new(id: u64, peer: String, handler: Arc<H>, shared: Arc<Shared>) -> Self {
        let info = ConnInfo {
            id,
            peer,
            engine_id: None,
            max_frame_size: 0,
            pipelining: false,
        };
        Self {
            handler,
            shared,
            info: Arc::new(info),
            established: false,
            tasks: JoinSet::new(),
            spawned: None,
            write_stalled: false,
            acked: false,
        }
    }

    async fn run<IO>(mut self, io: IO, cancel: CancellationToken) -> ConnectionError
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let start = Instant::now();
        let mut conn = AgentConnection::new(self.shared.agent.clone(), start.into_std());
        let mut rbuf = BytesMut::with_capacity(SMALL_READ);
        // how much to reserve before a read: grows when a read fills the buffer
        let mut read_hint = SMALL_READ;
        let mut wbuf = BytesMut::new();
        let high_water = self.shared.config.write_high_water;
        let write_timeout = self.shared.config.write_timeout;
        let grace = self.shared.config.shutdown_grace;
        let quiet = self.shared.config.drain_quiet;
        // Some(when the drain started) once cancelled; then the connection keeps answering
        // what arrives, and closes once quiet (or at the grace)
        let mut draining: Option<Instant> = None;
        let mut last_frame = start;
        // when the peer last accepted bytes, or when output started waiting
        let mut write_progress = start;
        let mut wrote = false;
        loop {
            let now = Instant::now();
            if !self.established && self.shared.lame_duck.load(Ordering::Relaxed) {
                conn.refuse_health_checks();
            }
            if let Some(why) = self.pump(&mut conn, &mut rbuf, &mut wbuf, now, &mut last_frame) {
                self.finish(&mut wr, &mut wbuf, &why).await;
                return why;
            }
            if std::mem::take(&mut wrote) || wbuf.is_empty() {
                write_progress = now;
            }
            if wbuf.is_empty() && wbuf.capacity() > KEEP_CAPACITY {
                wbuf = BytesMut::new();
            }
            let below_high_water = wbuf.len() < high_water;
            let can_read = conn.wants_read() && below_high_water;
            if can_read && rbuf.capacity() - rbuf.len() < read_hint / 2 {
                if rbuf.is_empty() && rbuf.capacity() > KEEP_CAPACITY {
                    rbuf = BytesMut::new();
                }
                rbuf.reserve(read_hint);
            }
            let spare = rbuf.capacity() - rbuf.len();
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
            let deadline = conn.poll_timeout().map(Instant::from_std);
            tokio::select! {
                biased;
                () = cancel.cancelled(), if draining.is_none() => {
                    debug!(in_flight = conn.in_flight(), "draining");
                    draining = Some(Instant::now());
                    self.acked = false;
                }
                () = sleep_until(drain_wake), if drain_wake.is_some() => {}
                // outcomes wait while the write buffer is full: their ACKs would pile up past it
                Some((id, outcome)) = recv(&mut self.spawned), if below_high_water && self.spawned.is_some() => {
                    self.ack(&mut conn, id, outcome, Instant::now());
                }
                res = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => match res {
                    Ok(n) if n > 0 => {
                        self.shared.metrics.bytes_out(n);
                        wrote = true;
                    }
                    Ok(_) => conn.handle_eof(Instant::now().into_std()),
                    Err(e) => {
                        debug!(error = %e, "write failed");
                        conn.handle_eof(Instant::now().into_std());
                    }
                },
                res = rd.read_buf(&mut rbuf), if can_read => match res {
                    Ok(0) => conn.handle_eof(Instant::now().into_std()),
                    Ok(n) => {
                        self.shared.metrics.bytes_in(n);
                        if n == spare {
                            read_hint = READ_CHUNK;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "read failed");
                        conn.handle_eof(Instant::now().into_std());
                    }
                },
                // reap finished handler tasks (late ones report nothing)
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                () = sleep_until(deadline), if deadline.is_some() => {
                    conn.handle_timeout(Instant::now().into_std());
                }
                () = tokio::time::sleep_until(write_progress + write_timeout), if !wbuf.is_empty() => {
                    self.shared.metrics.write_timeout();
                    warn!(pending = wbuf.len(), timeout = ?write_timeout, "peer stopped reading our ACKs; closing");
                    wbuf.clear();
                    self.write_stalled = true;
                    conn.close(Instant::now().into_std(), StatusCode::TIMEOUT, "write timeout");
                }
            }
        }
    }

    /// Handles what the state machine has for us, then consumes buffered frames one at a
    /// time while the write buffer is below its high-water mark, so it never exceeds it by
    /// more than one ACK. Returns why the connection closed, if it did.
    fn pump(
        &mut self,
        conn: &mut AgentConnection,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        now: Instant,
        last_frame: &mut Instant,
    ) -> Option<ConnectionError> {
        let high_water = self.shared.config.write_high_water;
        let std_now = now.into_std();
        loop {
            while let Some(event) = conn.poll_event() {
                if let Some(why) = self.on_event(conn, event, now) {
                    conn.poll_transmit(wbuf);
                    return Some(why);
                }
            }
            conn.poll_transmit(wbuf);
            if wbuf.len() >= high_water || conn.handle_read_frames(std_now, rbuf, 1) == 0 {
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
                let (handler, info) = (&self.handler, &self.info);
                if catch_unwind(AssertUnwindSafe(|| handler.on_connect(info))).is_err() {
                    self.shared.metrics.hook_panic();
                    warn!("on_connect panicked");
                }
            }
            Event::Notify(notify) => {
                self.shared.metrics.notify();
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
    /// (unless `inline_first_poll` is off): a handler that completes without waiting (the
    /// common case: in-memory lookups) is answered without a task spawn, and its outcome
    /// returned. Otherwise it continues on its own task, raced against its deadline.
    fn start_handler(&mut self, notify: Notify, now: Instant) -> Option<Outcome> {
        let id = notify.id();
        let span = debug_span!("notify", stream_id = id.stream_id, frame_id = id.frame_id);
        let deadline = now + self.shared.budget;
        let req = Request::from_runtime(
            notify,
            self.info.clone(),
            deadline,
            self.shared.background.clone(),
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
        let handler = self.handler.clone();
        let mut fut: HandlerFuture = Box::pin(async move {
            let _permit = permit;
            handler.handle_notify(req).await.map_err(Into::into)
        });
        if queued.is_none() && self.shared.config.inline_first_poll {
            let _entered = span.enter();
            let mut cx = Context::from_waker(Waker::noop());
            match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
                Ok(Poll::Ready(res)) => {
                    self.shared.metrics.handler_latency(now.elapsed());
                    return Some(Outcome::from(Ok(res)));
                }
                Err(_) => return Some(Outcome::Panicked),
                Ok(Poll::Pending) => {}
            }
        }
        let max_late = self.shared.config.max_late;
        let spawned = self.spawned.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            Spawned {
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
        self.tasks.spawn(task.run(fut, queued).instrument(span));
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
            Ok(()) => metrics.ack(),
            Err(AckError::FrameTooLarge { len, max }) if reason.is_none() => {
                metrics.ack_too_large();
                self.log_failure(id, FallbackReason::TooLarge, None, now);
                debug!(len, max, "ACK larger than the negotiated frame size");
                if conn
                    .send_ack(std_now, id, &self.fallback(FallbackReason::TooLarge))
                    .is_ok()
                {
                    metrics.ack();
                }
            }
            // closed or draining past the deadline: HAProxy has given up on it
            Err(e) => debug!(error = %e, "ACK not sent"),
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

    async fn finish<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        wbuf: &mut BytesMut,
        why: &ConnectionError,
    ) {
        if !self.tasks.is_empty() {
            // handlers still running (late ones included) lose their connection
            let n = self.tasks.len();
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
            debug!(tasks = n, "handler tasks cancelled with the connection");
        }
        if !wbuf.is_empty() && !self.write_stalled {
            let n = wbuf.len();
            if let Ok(Ok(())) = tokio::time::timeout(FINAL_FLUSH, wr.write_all_buf(wbuf)).await {
                self.shared.metrics.bytes_out(n);
            }
        }
        if !self.write_stalled {
            let _ = tokio::time::timeout(FINAL_FLUSH, wr.shutdown()).await;
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
            let (handler, info) = (&self.handler, &self.info);
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
    async fn run(self, fut: HandlerFuture, queued: Option<Arc<Semaphore>>) {
        // Behind the concurrency limit: wait for a slot, but not past the deadline.
        let _slot: Option<OwnedSemaphorePermit> = match queued {
            None => None,
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
                self.report(Outcome::from(res));
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

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}
