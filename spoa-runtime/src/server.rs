//! The accept loop: connection limit, graceful shutdown, TCP and Unix listeners.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use spop_proto::{AgentConfig, Scope};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::background::Background;
use crate::config::{Config, ConfigError, LameDuck};
use crate::connection::drive;
use crate::failures::FailureLog;
use crate::handler::Handler;
use crate::metrics::Metrics;

/// What every connection of a server shares. One `Arc` per connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) agent: Arc<AgentConfig>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limiter: Option<Arc<Semaphore>>,
    pub(crate) background: Background,
    pub(crate) failures: FailureLog,
    /// `config.handler_budget()`, computed once.
    pub(crate) budget: Duration,
    /// Set during the lame-duck phase: health checks are refused.
    pub(crate) lame_duck: AtomicBool,
    /// Handshaken connections that are not health checks.
    pub(crate) data_connections: AtomicUsize,
}

/// A source of connections: implemented for tokio's `TcpListener` and `UnixListener`.
pub trait Listener: Send {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Send + 'static;

    /// Accepts one connection; returns it and a printable peer address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, String)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, String)> {
        let (stream, peer) = Self::accept(self).await?;
        // ACKs are small and latency-bound
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, String)> {
        let (stream, peer) = Self::accept(self).await?;
        let name = peer
            .as_pathname()
            .map_or_else(|| "unix".to_string(), |p| p.display().to_string());
        Ok((stream, name))
    }
}

/// An agent server: accepts connections and serves each with the handler.
///
/// ```no_run
/// use spoa_runtime::{handler_fn, Request, Server};
/// use spop_proto::{Actions, Scope};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let handler = handler_fn(|req: Request| async move {
///     let mut actions = Actions::new();
///     if let Some(ip) = req.message("get-ip-reputation").and_then(|m| m.arg("ip")).and_then(|v| v.as_ip()) {
///         actions.set_var(Scope::Session, "ip_score", if ip.is_loopback() { 0 } else { 50 });
///     }
///     Ok::<_, std::convert::Infallible>(actions)
/// });
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
/// Server::builder()
///     .max_connections(256)
///     .build()?
///     .serve(listener, handler, async { let _ = tokio::signal::ctrl_c().await; })
///     .await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Starts configuring a server.
    ///
    /// ```
    /// let server = spoa_runtime::Server::builder().build().unwrap();
    /// assert_eq!(server.config().processing_timeout, std::time::Duration::from_millis(500));
    /// ```
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: Config::default(),
            metrics: None,
        }
    }

    /// A server with this configuration, refused if it cannot work ([`Config::validate`]).
    ///
    /// ```
    /// let server = spoa_runtime::Server::new(spoa_runtime::Config::default()).unwrap();
    /// assert_eq!(server.metrics().snapshot().connections_active, 0);
    /// ```
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        Self::with_metrics(config, Arc::new(Metrics::default()))
    }

    fn with_metrics(config: Config, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        config.validate()?;
        let limiter = config
            .handler_concurrency
            .map(|n| Arc::new(Semaphore::new(n)));
        let background = Background::with_metrics(config.max_background, metrics.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                agent: Arc::new(config.agent.clone()),
                budget: config.handler_budget(),
                config,
                metrics,
                limiter,
                background,
                failures: FailureLog::default(),
                lame_duck: AtomicBool::new(false),
                data_connections: AtomicUsize::new(0),
            }),
        })
    }

    pub(crate) const fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The server's metrics.
    ///
    /// ```
    /// let server = spoa_runtime::Server::builder().build().unwrap();
    /// assert_eq!(server.metrics().snapshot().notifies, 0);
    /// ```
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The configuration.
    ///
    /// ```
    /// let server = spoa_runtime::Server::builder().max_connections(8).build().unwrap();
    /// assert_eq!(server.config().max_connections, 8);
    /// ```
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The server's background tasks (the same set every [`Request::background`](crate::Request::background) gives).
    ///
    /// ```
    /// let server = spoa_runtime::Server::builder().build().unwrap();
    /// assert!(server.background().is_empty());
    /// ```
    pub fn background(&self) -> &Background {
        &self.shared.background
    }

    /// Accepts and serves connections until `shutdown` completes, then shuts down without
    /// losing a request:
    ///
    /// 1. lame duck ([`Config::lame_duck`], skipped when no data connection is open): every
    ///    connection is served as usual while HAProxy takes the server out of rotation,
    ///    either because its health checks are refused or because the port was handed to
    ///    another instance ([`LameDuck`]);
    /// 2. drain: stop accepting; each connection keeps answering what arrives and closes with
    ///    AGENT-DISCONNECT status 0 once it is quiet ([`Config::drain_quiet`]); background
    ///    work finishes. All within [`Config::shutdown_grace`], after which the rest is
    ///    answered within one budget and closed, and background tasks are cancelled.
    ///
    /// Returns only once every connection task and background task has ended.
    pub async fn serve<L, H>(&self, mut listener: L, handler: H, shutdown: impl Future<Output = ()>)
    where
        L: Listener,
        H: Handler,
    {
        let handler = Arc::new(handler);
        let cancel = CancellationToken::new();
        let mut conns = JoinSet::new();
        let slots = Arc::new(Semaphore::new(self.shared.config.max_connections));
        tokio::pin!(shutdown);
        // None while serving; Some(end of the lame duck) once `shutdown` has completed
        let mut lame_until: Option<tokio::time::Instant> = None;
        let release_port = self.shared.config.lame_duck_mode == LameDuck::ReleasePort;
        loop {
            // a connection slot first, then a connection: a slot is held before accept(), so
            // connections beyond the limit wait in the kernel's queue
            let next = async {
                let permit = slots.clone().acquire_owned().await;
                (permit, listener.accept().await)
            };
            let (permit, accepted) = tokio::select! {
                () = &mut shutdown, if lame_until.is_none() => match self.begin_lame_duck() {
                    Some(until) if !release_port => {
                        lame_until = Some(until);
                        continue;
                    }
                    until => {
                        lame_until = until;
                        break;
                    }
                },
                () = sleep_until_opt(lame_until), if lame_until.is_some() => break,
                Some(res) = conns.join_next(), if !conns.is_empty() => {
                    reaped(res);
                    continue;
                }
                next = next => next,
            };
            let Ok(permit) = permit else { break };
            let (io, peer) = match accepted {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            let shared = self.shared.clone();
            let token = cancel.child_token();
            conns.spawn(drive(io, peer, handler, shared, token, permit));
        }
        drop(listener);
        if let (Some(until), true) = (lame_until, release_port) {
            // the port is someone else's now; established connections are still served
            loop {
                tokio::select! {
                    Some(res) = conns.join_next(), if !conns.is_empty() => reaped(res),
                    () = tokio::time::sleep_until(until) => break,
                }
            }
        }
        let grace = self.shared.config.shutdown_grace;
        let started = tokio::time::Instant::now();
        info!(connections = conns.len(), "draining");
        cancel.cancel();
        // connections close themselves at the grace (status 2); the margin covers the final
        // flush of their AGENT-DISCONNECT
        let limit = started + grace + Duration::from_secs(3);
        loop {
            tokio::select! {
                res = conns.join_next() => match res {
                    Some(res) => reaped(res),
                    None => break,
                },
                () = tokio::time::sleep_until(limit) => {
                    warn!(left = conns.len(), "connections still open after the shutdown grace; aborting them");
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let left = grace.saturating_sub(started.elapsed());
        let cancelled = self.shared.background.drain(left).await;
        if cancelled > 0 {
            warn!(
                cancelled,
                "background tasks still running after the shutdown grace; cancelled"
            );
        }
    }
}

impl Server {
    /// Starts the lame-duck phase, unless it is off or no data connection is open; returns
    /// when it ends.
    fn begin_lame_duck(&self) -> Option<tokio::time::Instant> {
        let lame = self.shared.config.lame_duck;
        let open = self.shared.data_connections.load(Ordering::Relaxed);
        if lame.is_zero() || open == 0 {
            info!("shutting down");
            return None;
        }
        let mode = self.shared.config.lame_duck_mode;
        info!(connections = open, lame_duck = ?lame, ?mode, "shutting down: lame duck");
        if mode == LameDuck::FailHealthChecks {
            self.shared.lame_duck.store(true, Ordering::Relaxed);
        }
        Some(tokio::time::Instant::now() + lame)
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn reaped<T>(res: Result<T, tokio::task::JoinError>) {
    match res {
        Ok(_) => {}
        Err(e) if e.is_panic() => error!("a connection task panicked (a bug in spoa-runtime)"),
        Err(e) => debug!(error = %e, "connection task ended"),
    }
}

/// Builds a [`Server`]; every setter has a safe default, documented on [`Config`].
/// [`build`](Self::build) refuses a configuration that cannot work.
///
/// ```
/// use spoa_runtime::Server;
/// use std::time::Duration;
/// let server = Server::builder()
///     .processing_timeout(Duration::from_millis(200)) // as in the spoe-agent section
///     .max_frame_size(65_536)
///     .max_in_flight(32)
///     .build()
///     .unwrap();
/// assert_eq!(server.config().handler_budget(), Duration::from_millis(180));
///
/// let err = Server::builder().processing_timeout(Duration::from_millis(200))
///     .handler_budget(Duration::from_millis(300)).build().unwrap_err();
/// assert_eq!(err.setting(), "handler_budget");
/// ```
#[derive(Debug)]
pub struct ServerBuilder {
    config: Config,
    metrics: Option<Arc<Metrics>>,
}

impl ServerBuilder {
    /// HAProxy's `timeout processing` for this agent, one to one. Default 500 ms.
    /// See [`Config::processing_timeout`].
    pub fn processing_timeout(mut self, t: Duration) -> Self {
        self.config.processing_timeout = t;
        self
    }

    /// Time a handler gets before the fallback ACK. Default: 90% of the processing timeout.
    /// See [`Config::handler_budget`].
    pub fn handler_budget(mut self, t: Duration) -> Self {
        self.config.handler_budget = Some(t);
        self
    }

    /// How long a handler past its budget may keep running (result dropped). Default 5 s.
    /// See [`Config::late_limit`].
    pub fn late_limit(mut self, t: Duration) -> Self {
        self.config.late_limit = t;
        self
    }

    /// Handlers per connection allowed to run late at once. Default 64.
    /// See [`Config::max_late`].
    pub fn max_late(mut self, n: usize) -> Self {
        self.config.max_late = n;
        self
    }

    /// Poll handlers once on the connection's task before spawning them. Default true.
    /// See [`Config::inline_first_poll`].
    pub fn inline_first_poll(mut self, on: bool) -> Self {
        self.config.inline_first_poll = on;
        self
    }

    /// Largest frame accepted and announced (negotiated down to HAProxy's). Default 16380.
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.config.agent.max_frame_size = bytes;
        self
    }

    /// Offer pipelining. Default true.
    pub fn pipelining(mut self, on: bool) -> Self {
        self.config.agent.pipelining = on;
        self
    }

    /// Announce fragmentation and reassemble fragmented NOTIFYs (HAProxy 2.x). Default false.
    pub fn fragmentation(mut self, on: bool) -> Self {
        self.config.agent.fragmentation = on;
        self
    }

    /// NOTIFYs in flight per connection before reading pauses. Default 64
    /// ([`DEFAULT_MAX_IN_FLIGHT`](crate::DEFAULT_MAX_IN_FLIGHT) says why).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.agent.max_in_flight = n;
        self
    }

    /// Time allowed for HAProxy's HELLO. Default 10 s.
    pub fn hello_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.agent.hello_timeout = t;
        self
    }

    /// Close idle connections after this long. Default off.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.config.agent.idle_timeout = t;
        self
    }

    /// Pad ACKs without actions with a harmless unset-var (HAProxy 3.1.0 stalls on them).
    /// Default **true**; see [`AgentConfig::pad_empty_ack`].
    pub fn pad_empty_ack(mut self, on: bool) -> Self {
        self.config.agent.pad_empty_ack = on;
        self
    }

    /// Connections served at once. Default 10,000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Handlers running at once across all connections. Default unlimited.
    pub fn handler_concurrency(mut self, n: usize) -> Self {
        self.config.handler_concurrency = Some(n);
        self
    }

    /// Pause consuming frames while this many bytes wait to be written. Default 64 KiB.
    pub fn write_high_water(mut self, bytes: usize) -> Self {
        self.config.write_high_water = bytes;
        self
    }

    /// Close a connection whose peer accepts none of our bytes for this long. Default 10 s.
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.config.write_timeout = t;
        self
    }

    /// The lame-duck phase of a graceful shutdown. Default 7 s. See [`Config::lame_duck`].
    pub fn lame_duck(mut self, t: Duration) -> Self {
        self.config.lame_duck = t;
        self
    }

    /// How the lame-duck phase takes the server out of rotation. See [`LameDuck`].
    pub fn lame_duck_mode(mut self, mode: LameDuck) -> Self {
        self.config.lame_duck_mode = mode;
        self
    }

    /// Quiet time after which a draining connection closes. Default 1 s.
    /// See [`Config::drain_quiet`].
    pub fn drain_quiet(mut self, t: Duration) -> Self {
        self.config.drain_quiet = t;
        self
    }

    /// Time allowed for in-flight and background work at shutdown. Default 10 s.
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.config.shutdown_grace = t;
        self
    }

    /// Background tasks allowed at once. Default 1024. See [`Config::max_background`].
    pub fn max_background(mut self, n: usize) -> Self {
        self.config.max_background = n;
        self
    }

    /// The variable the fallback ACK sets (to a [`FallbackReason`](crate::FallbackReason)
    /// code). Default `txn.spoa_error`.
    pub fn error_var(mut self, scope: Scope, name: impl Into<String>) -> Self {
        self.config.error_var = Some((scope, name.into()));
        self
    }

    /// Send fallback ACKs without the error variable (they stay padded).
    pub fn no_error_var(mut self) -> Self {
        self.config.error_var = None;
        self
    }

    /// Share these metrics (for example with a Prometheus endpoint).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Finishes the server, or says which setting cannot work and why.
    pub fn build(self) -> Result<Server, ConfigError> {
        Server::with_metrics(self.config, self.metrics.unwrap_or_default())
    }
}
