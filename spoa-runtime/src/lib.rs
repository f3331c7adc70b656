//! # spoa-runtime
//!
//! Write HAProxy SPOE agents in a few lines: implement [`Handler`] (or pass a closure to
//! [`handler_fn`]) and hand it to a [`Server`]. The runtime drives the sans-IO
//! [`spop_proto`] state machine over tokio sockets and takes care of what HAProxy needs:
//!
//! - handshake, health checks (`option spop-check`), pipelining with out-of-order ACKs;
//! - an ACK for every NOTIFY, even when the handler fails, panics or times out (HAProxy
//!   would otherwise wait for its processing timeout);
//! - backpressure: a per-connection in-flight limit that stops reading the socket, a write
//!   high-water mark, a connection limit, an optional global handler limit;
//! - graceful shutdown: stop accepting, finish in-flight work, AGENT-DISCONNECT status 0;
//! - `tracing` spans per connection and [`Metrics`] (Prometheus text behind the
//!   `prometheus` feature);
//! - for operators, all opt-in: an admin endpoint with `/healthz` and `/metrics` (the
//!   `admin` module, behind the `admin` feature), systemd readiness notifications
//!   ([`sd_notify`]), and Unix-socket permissions ([`unix_socket`]).
//!
//! ```no_run
//! use spoa_runtime::{handler_fn, Request, Server};
//! use spop_proto::{Actions, Scope};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let handler = handler_fn(|req: Request| async move {
//!         let mut actions = Actions::new();
//!         if let Some(ip) = req.message("get-ip-reputation").and_then(|m| m.arg("ip")).and_then(|v| v.as_ip()) {
//!             actions.set_var(Scope::Session, "ip_score", if ip.is_loopback() { 0 } else { 50 });
//!         }
//!         Ok::<_, std::convert::Infallible>(actions)
//!     });
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
//!     Server::builder()
//!         .build()
//!         .serve(listener, handler, async { let _ = tokio::signal::ctrl_c().await; })
//!         .await;
//!     Ok(())
//! }
//! ```

#[cfg(feature = "admin")]
pub mod admin;
mod config;
mod connection;
mod handler;
mod metrics;
pub mod sd_notify;
mod server;
pub mod testing;
#[cfg(unix)]
pub mod unix_socket;

pub use config::Config;
pub use connection::serve_connection;
pub use handler::{BoxError, ConnInfo, Handler, HandlerFn, Request, handler_fn};
#[cfg(feature = "prometheus")]
pub use metrics::serve_prometheus;
pub use metrics::{LATENCY_BUCKETS, Metrics, MetricsSnapshot};
pub use server::{Listener, Server, ServerBuilder};
pub use spop_proto;
pub use tokio_util::sync::CancellationToken;
