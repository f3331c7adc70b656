//! The per-connection driver: runs the `spop-proto` state machine over an async stream.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spop_proto::{
    AckError, Actions, AgentConfig, AgentConnection, ConnectionError, Event, Notify, NotifyId,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::handler::{BoxError, ConnInfo, Handler, Request};
use crate::metrics::Metrics;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long the final frames (AGENT-DISCONNECT) may take to write after a close.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// What the runtime shares between connections.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) agent: Arc<AgentConfig>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limiter: Option<Arc<Semaphore>>,
}

impl Shared {
    pub(crate) fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let agent = Arc::new(config.agent.clone());
        let limiter = config
            .handler_concurrency
            .map(|n| Arc::new(Semaphore::new(n.max(1))));
        Self {
            config,
            agent,
            metrics,
            limiter,
        }
    }
}

/// Serves one SPOP connection over any byte stream (TCP, Unix socket, TLS, an in-memory
/// duplex...) until it closes; returns why it closed.
///
/// Cancelling `cancel` starts a graceful drain: reading stops, in-flight handlers finish and
/// are ACKed, then AGENT-DISCONNECT status 0 goes out (status 2 if
/// [`Config::shutdown_grace`] runs out first).
///
/// [`Config::handler_concurrency`] applies per call here; use [`Server`](crate::Server) to
/// share it across connections.
///
/// ```no_run
/// use std::sync::Arc;
/// use spoa_runtime::{handler_fn, serve_connection, Config, Metrics, Request};
/// use spop_proto::Actions;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
/// let (stream, peer) = listener.accept().await?;
/// let handler = Arc::new(handler_fn(|_req: Request| async { Ok::<_, std::convert::Infallible>(Actions::new()) }));
/// let why = serve_connection(
///     stream, peer.to_string(), handler, Arc::new(Config::default()),
///     Arc::new(Metrics::default()), CancellationToken::new(),
/// ).await;
/// println!("closed: {why}");
/// # Ok(()) }
/// ```
pub async fn serve_connection<IO, H>(
    io: IO,
    peer: String,
    handler: Arc<H>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> ConnectionError
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    drive(io, peer, handler, Shared::new(config, metrics), cancel).await
}

pub(crate) async fn drive<IO, H>(
    io: IO,
    peer: String,
    handler: Arc<H>,
    shared: Shared,
    cancel: CancellationToken,
) -> ConnectionError
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler,
{
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("spop_conn", conn = id, peer = %peer, engine_id = tracing::field::Empty);
    shared.metrics.connection_opened();
    let why = Driver::new(id, peer, handler, shared.clone())
        .run(io, cancel)
        .instrument(span)
        .await;
    shared.metrics.connection_closed();
    why
}

/// What handling one event asks of the loop.
enum Step {
    Continue,
    AckedInline,
    Closed(ConnectionError),
}

enum Outcome {
    Done(Actions),
    Failed(BoxError),
    Panicked,
    TimedOut,
}

struct Driver<H> {
    handler: Arc<H>,
    shared: Shared,
    info: Arc<ConnInfo>,
    established: bool,
    tasks: JoinSet<(Outcome, Duration)>,
    task_ids: HashMap<tokio::task::Id, NotifyId>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<H: Handler> Driver<H> {
    fn new(id: u64, peer: String, handler: Arc<H>, shared: Shared) -> Self {
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
            task_ids: HashMap::new(),
        }
    }

    async fn run<IO>(mut self, io: IO, cancel: CancellationToken) -> ConnectionError
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut conn = AgentConnection::new(self.shared.agent.clone(), now());
        let mut rbuf = BytesMut::with_capacity(8 * 1024);
        let mut wbuf = BytesMut::new();
        let high_water = self.shared.config.write_high_water.max(1);
        let grace = self.shared.config.shutdown_grace;
        let mut draining = false;
        loop {
            conn.poll_transmit(&mut wbuf);
            let mut acked_inline = false;
            while let Some(event) = conn.poll_event() {
                match self.on_event(&mut conn, event) {
                    Step::Continue => {}
                    Step::AckedInline => acked_inline = true,
                    Step::Closed(why) => {
                        conn.poll_transmit(&mut wbuf);
                        self.finish(&mut wr, &mut wbuf, &why).await;
                        return why;
                    }
                }
            }
            if acked_inline {
                // freed in-flight slots may let buffered frames through
                conn.handle_read(now(), &mut rbuf);
                continue;
            }
            let deadline = conn.poll_timeout();
            let can_read = conn.wants_read() && wbuf.len() < high_water;
            if can_read && rbuf.capacity() - rbuf.len() < 1024 {
                rbuf.reserve(8 * 1024);
            }
            tokio::select! {
                biased;
                () = cancel.cancelled(), if !draining => {
                    draining = true;
                    debug!(in_flight = conn.in_flight(), "draining");
                    let t = now();
                    conn.begin_drain(t, t + grace);
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let (task_id, outcome) = match joined {
                        Ok((task_id, (outcome, elapsed))) => {
                            self.shared.metrics.handler_latency(elapsed);
                            (task_id, outcome)
                        }
                        Err(e) => {
                            let outcome = if e.is_panic() {
                                Outcome::Panicked
                            } else {
                                Outcome::Failed("handler task cancelled".into())
                            };
                            (e.id(), outcome)
                        }
                    };
                    let Some(nid) = self.task_ids.remove(&task_id) else { continue };
                    self.ack(&mut conn, nid, outcome);
                    conn.handle_read(now(), &mut rbuf);
                }
                res = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => match res {
                    Ok(n) if n > 0 => self.shared.metrics.bytes_out(n),
                    Ok(_) => conn.handle_eof(now()),
                    Err(e) => {
                        debug!(error = %e, "write failed");
                        conn.handle_eof(now());
                    }
                },
                res = rd.read_buf(&mut rbuf), if can_read => match res {
                    Ok(0) => conn.handle_eof(now()),
                    Ok(n) => {
                        self.shared.metrics.bytes_in(n);
                        conn.handle_read(now(), &mut rbuf);
                    }
                    Err(e) => {
                        debug!(error = %e, "read failed");
                        conn.handle_eof(now());
                    }
                },
                () = sleep_until(deadline), if deadline.is_some() => conn.handle_timeout(now()),
            }
        }
    }

    /// Handles one event.
    fn on_event(&mut self, conn: &mut AgentConnection, event: Event) -> Step {
        match event {
            Event::Established(n) => {
                tracing::Span::current().record("engine_id", n.engine_id.as_deref().unwrap_or(""));
                if n.healthcheck {
                    self.shared.metrics.health_check();
                    debug!("health check answered");
                    return Step::Continue;
                }
                let info = Arc::make_mut(&mut self.info);
                info.engine_id = n.engine_id.clone();
                info.max_frame_size = n.max_frame_size;
                info.pipelining = n.capabilities.pipelining;
                self.established = true;
                debug!(max_frame_size = n.max_frame_size, capabilities = %n.capabilities, "handshake done");
                self.handler.on_connect(&self.info);
            }
            Event::Notify(notify) => {
                self.shared.metrics.notify();
                let id = notify.id();
                if let Some((outcome, elapsed)) = self.start_handler(notify) {
                    self.shared.metrics.handler_latency(elapsed);
                    self.ack(conn, id, outcome);
                    return Step::AckedInline;
                }
            }
            Event::FrameSkipped(t) => debug!(frame_type = t.0, "skipped a frame of unknown type"),
            Event::Closed(why) => return Step::Closed(why),
            _ => {}
        }
        Step::Continue
    }

    /// Starts the handler for `notify`. It is polled once right here: a handler that
    /// completes without waiting (the common case: in-memory lookups) is answered without a
    /// task spawn, and its outcome returned. Otherwise it continues on its own task.
    fn start_handler(&mut self, notify: Notify) -> Option<(Outcome, Duration)> {
        let nid = notify.id();
        let req = Request {
            notify,
            conn: self.info.clone(),
        };
        let handler = self.handler.clone();
        let limiter = self.shared.limiter.clone();
        let timeout = self.shared.config.handler_timeout;
        let task = async move {
            let start = tokio::time::Instant::now();
            let work = async {
                let _permit = match limiter {
                    Some(l) => l.acquire_owned().await.ok(),
                    None => None,
                };
                handler.handle_notify(req).await
            };
            let outcome = match timeout {
                Some(t) => match tokio::time::timeout(t, work).await {
                    Ok(Ok(a)) => Outcome::Done(a),
                    Ok(Err(e)) => Outcome::Failed(e.into()),
                    Err(_) => Outcome::TimedOut,
                },
                None => match work.await {
                    Ok(a) => Outcome::Done(a),
                    Err(e) => Outcome::Failed(e.into()),
                },
            };
            (outcome, start.elapsed())
        };
        let mut task = Box::pin(task);
        let mut cx = Context::from_waker(Waker::noop());
        match catch_unwind(AssertUnwindSafe(|| task.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(done)) => return Some(done),
            Err(_) => return Some((Outcome::Panicked, Duration::ZERO)),
            Ok(Poll::Pending) => {}
        }
        // polled again on its task, with a real waker
        let handle = self.tasks.spawn(task);
        self.task_ids.insert(handle.id(), nid);
        None
    }

    fn ack(&self, conn: &mut AgentConnection, id: NotifyId, outcome: Outcome) {
        let metrics = &self.shared.metrics;
        let actions = match outcome {
            Outcome::Done(a) => a,
            Outcome::Panicked => {
                metrics.handler_panic();
                warn!(
                    stream_id = id.stream_id,
                    frame_id = id.frame_id,
                    "handler panicked; sending an empty ACK"
                );
                self.error_actions()
            }
            Outcome::Failed(e) => {
                metrics.handler_error();
                warn!(stream_id = id.stream_id, frame_id = id.frame_id, error = %e, "handler failed; sending an empty ACK");
                self.error_actions()
            }
            Outcome::TimedOut => {
                metrics.handler_timeout();
                warn!(
                    stream_id = id.stream_id,
                    frame_id = id.frame_id,
                    "handler timed out; sending an empty ACK"
                );
                self.error_actions()
            }
        };
        match conn.send_ack(now(), id, &actions) {
            Ok(()) => metrics.ack(),
            Err(AckError::FrameTooLarge { len, max }) => {
                warn!(
                    len,
                    max, "ACK larger than the negotiated frame size; sending an empty ACK"
                );
                if conn.send_ack(now(), id, &self.error_actions()).is_ok() {
                    metrics.ack();
                }
            }
            // closed or draining past the deadline: HAProxy has given up on it
            Err(e) => debug!(error = %e, "ACK not sent"),
        }
    }

    fn error_actions(&self) -> Actions {
        let mut a = Actions::new();
        if let Some((scope, name)) = &self.shared.config.error_var {
            a.set_var(*scope, name, 1i64);
        }
        a
    }

    async fn finish<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        wbuf: &mut BytesMut,
        why: &ConnectionError,
    ) {
        self.tasks.abort_all();
        if !wbuf.is_empty() {
            let n = wbuf.len();
            if let Ok(Ok(())) = tokio::time::timeout(FINAL_FLUSH, wr.write_all_buf(wbuf)).await {
                self.shared.metrics.bytes_out(n);
            }
        }
        let _ = tokio::time::timeout(FINAL_FLUSH, wr.shutdown()).await;
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
            self.handler.on_disconnect(&self.info, why);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}
