//! An opt-in admin HTTP endpoint: `/healthz` for load balancers and orchestrators, `/metrics`
//! for Prometheus.
//!
//! [`Health`] is a shared state the agent flips as it starts, serves and drains; nothing runs
//! unless [`serve_admin`] is called. With a [`Server`](crate::Server):
//!
//! ```no_run
//! use spoa_runtime::admin::{Health, serve_admin};
//! use spoa_runtime::{handler_fn, Request, Server};
//! use spop_proto::Actions;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let health = Health::new(); // /healthz: 503 "starting"
//! let server = Server::builder().build()?;
//! let admin = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
//! let stop_admin = spoa_runtime::CancellationToken::new();
//! tokio::spawn(serve_admin(admin, health.clone(), server.metrics().clone(), stop_admin.clone().cancelled_owned()));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
//! health.set_serving(); // 200 "ok" from now on
//! let h = health.clone();
//! let shutdown = async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     h.set_draining(); // 503 "draining" while connections finish
//! };
//! let handler = handler_fn(|_req: Request| async { Ok::<_, std::convert::Infallible>(Actions::new()) });
//! server.serve(listener, handler, shutdown).await;
//! health.set_stopped();
//! stop_admin.cancel();
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::Metrics;

/// Where the agent is in its life, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Not listening yet: 503 `starting`.
    Starting,
    /// Accepting and serving: 200 `ok`.
    Serving,
    /// Shutting down, finishing in-flight work: 503 `draining`.
    Draining,
    /// Done: 503 `stopped`.
    Stopped,
}

impl HealthState {
    /// The word `/healthz` answers with.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Serving => "ok",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// A shared health state; clones see the same state.
///
/// ```
/// use spoa_runtime::admin::{Health, HealthState};
/// let h = Health::new();
/// assert_eq!(h.state(), HealthState::Starting);
/// h.set_serving();
/// assert!(h.is_serving());
/// h.clone().set_draining();
/// assert_eq!(h.state(), HealthState::Draining);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicU8>);

impl Health {
    /// A new state: [`HealthState::Starting`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        match self.0.load(Ordering::Acquire) {
            0 => HealthState::Starting,
            1 => HealthState::Serving,
            2 => HealthState::Draining,
            _ => HealthState::Stopped,
        }
    }

    /// Whether `/healthz` answers 200.
    pub fn is_serving(&self) -> bool {
        self.state() == HealthState::Serving
    }

    /// The listener is bound and connections are served.
    pub fn set_serving(&self) {
        self.0.store(1, Ordering::Release);
    }

    /// A shutdown began: no new work is wanted.
    pub fn set_draining(&self) {
        self.0.store(2, Ordering::Release);
    }

    /// Serving is over.
    pub fn set_stopped(&self) {
        self.0.store(3, Ordering::Release);
    }
}

/// Serves the admin endpoint until `shutdown` completes: `GET /healthz` (200 `ok` while
/// serving, 503 `starting`/`draining`/`stopped` otherwise), `GET /metrics` (Prometheus text),
/// 404 for anything else. `HEAD` works too. Deliberately tiny: one request per connection,
/// `connection: close`, requests up to 4 KiB, 2 s to send one.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    health: Health,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            res = listener.accept() => match res {
                Ok(v) => v,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let health = health.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(512);
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 4096 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if buf.windows(2).any(|w| w == b"\n\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() && buf.is_empty() {
                return;
            }
            let resp = respond(&buf, &health, &metrics);
            let _ = sock.write_all(&resp).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// The whole HTTP response to one request.
fn respond(request: &[u8], health: &Health, metrics: &Metrics) -> Vec<u8> {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("");
    let path = words.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => {
            let st = health.state();
            let code = if st == HealthState::Serving {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (code, "text/plain", format!("{}\n", st.as_str()))
        }
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics.render_prometheus(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /healthz or /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET or HEAD only\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn healthz_follows_the_state_and_metrics_render() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let health = Health::new();
        let stop = crate::CancellationToken::new();
        let task = tokio::spawn(serve_admin(
            l,
            health.clone(),
            Arc::new(Metrics::default()),
            stop.clone().cancelled_owned(),
        ));
        let r = get(addr, "/healthz").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("\r\n\r\nstarting\n"),
            "{r}"
        );
        health.set_serving();
        let r = get(addr, "/healthz").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nok\n"),
            "{r}"
        );
        health.set_draining();
        let r = get(addr, "/healthz?verbose").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("draining\n"),
            "{r}"
        );
        let r = get(addr, "/metrics").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("spoa_notifies_total 0"),
            "{r}"
        );
        let r = get(addr, "/nope").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        stop.cancel();
        task.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
