//! The accept loop: connection limit, graceful shutdown, TCP and Unix listeners.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use spop_proto::Scope;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::connection::{Shared, drive};
use crate::handler::Handler;
use crate::metrics::Metrics;

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
/// # async fn run() -> std::io::Result<()> {
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
///     .build()
///     .serve(listener, handler, async { let _ = tokio::signal::ctrl_c().await; })
///     .await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: Config::default(),
            metrics: None,
        }
    }

    /// A server with this configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// The server's metrics.
    pub const fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accepts and serves connections until `shutdown` completes, then shuts down
    /// gracefully: stop accepting, let every connection finish its in-flight NOTIFYs and send
    /// AGENT-DISCONNECT status 0, within [`Config::shutdown_grace`].
    pub async fn serve<L, H>(&self, mut listener: L, handler: H, shutdown: impl Future<Output = ()>)
    where
        L: Listener,
        H: Handler,
    {
        let handler = Arc::new(handler);
        let shared = Shared::new(self.config.clone(), self.metrics.clone());
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (io, peer) = tokio::select! {
                () = &mut shutdown => break,
                res = listener.accept() => match res {
                    Ok(v) => v,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let handler = handler.clone();
            let shared = shared.clone();
            let token = cancel.child_token();
            tracker.spawn(async move {
                let _permit = permit;
                drive(io, peer, handler, shared, token).await;
            });
        }
        drop(listener);
        info!(connections = tracker.len(), "shutting down");
        cancel.cancel();
        tracker.close();
        let limit = self.config.shutdown_grace + Duration::from_secs(3);
        if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
            warn!("connections still open after the shutdown grace period");
        }
    }
}

/// Builds a [`Server`]; every setter has a sensible default.
///
/// ```
/// use spoa_runtime::Server;
/// use std::time::Duration;
/// let server = Server::builder()
///     .max_frame_size(65_536)
///     .max_in_flight(32)
///     .handler_timeout(Duration::from_millis(500))
///     .pad_empty_ack(true)
///     .build();
/// assert_eq!(server.config().agent.max_frame_size, 65_536);
/// ```
#[derive(Debug)]
pub struct ServerBuilder {
    config: Config,
    metrics: Option<Arc<Metrics>>,
}

impl ServerBuilder {
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

    /// NOTIFYs in flight per connection before reading pauses. Default 20.
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

    /// Pad empty ACKs with a harmless unset-var (HAProxy 3.1.0 stall). Default false.
    pub fn pad_empty_ack(mut self, on: bool) -> Self {
        self.config.agent.pad_empty_ack = on;
        self
    }

    /// Abandon handlers after this long (they still get an ACK). Default 5 s.
    pub fn handler_timeout(mut self, t: Duration) -> Self {
        self.config.handler_timeout = Some(t);
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

    /// Pause reading a connection while this many bytes wait to be written. Default 64 KiB.
    pub fn write_high_water(mut self, bytes: usize) -> Self {
        self.config.write_high_water = bytes;
        self
    }

    /// Time allowed for in-flight work at shutdown. Default 10 s.
    pub fn shutdown_grace(mut self, t: Duration) -> Self {
        self.config.shutdown_grace = t;
        self
    }

    /// Variable set to 1 in the ACK when a handler fails, panics or times out.
    pub fn error_var(mut self, scope: Scope, name: impl Into<String>) -> Self {
        self.config.error_var = Some((scope, name.into()));
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

    /// Finishes the server.
    pub fn build(self) -> Server {
        Server {
            config: Arc::new(self.config),
            metrics: self.metrics.unwrap_or_default(),
        }
    }
}
