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
//!   `prometheus` feature).
//!
//! For the handler: typed arguments ([`Message::get`], [`ArgError`]; whole messages with
//! serde behind the `serde` feature), header blocks ([`HeaderBlock`]), a [`Router`] for agents
//! serving several messages, declared variables ([`vars`]), a `tower::Service` adapter
//! (`TowerHandler`, feature `tower`) and an in-process harness ([`testing`]). Which Rust
//! type each HAProxy fetch arrives as: [docs/fetch-types.md](https://github.com/spoa-rs/spoa-rs/blob/main/docs/fetch-types.md).
//!
//! One dependency is enough: everything a handler needs is re-exported here (actions and
//! scopes, typed values and their extraction, messages and ids, the `req.hdrs_bin` view,
//! variable names); the whole protocol crate is [`spop_proto`].
//!
//! ```no_run
//! use spoa_runtime::{Actions, ArgError, Routed, Router, Scope, Server};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let handler = Router::new().route("get-ip-reputation", |r: Routed| async move {
//!         let ip: std::net::IpAddr = r.message().get("ip")?;
//!         let mut actions = Actions::new();
//!         actions.set_var(Scope::Session, "ip_score", if ip.is_loopback() { 0 } else { 50 });
//!         Ok::<_, ArgError>(actions)
//!     });
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
//!     Server::builder()
//!         .build()
//!         .serve(listener, handler, async { let _ = tokio::signal::ctrl_c().await; })
//!         .await;
//!     Ok(())
//! }
//! ```

mod config;
mod connection;
mod handler;
mod metrics;
pub mod router;
mod server;
pub mod testing;
#[cfg(feature = "tower")]
mod tower;
pub mod vars;

pub use config::Config;
pub use connection::serve_connection;
pub use handler::{BoxError, ConnInfo, Handler, HandlerFn, Request, handler_fn};
#[cfg(feature = "prometheus")]
pub use metrics::serve_prometheus;
pub use metrics::{LATENCY_BUCKETS, Metrics, MetricsSnapshot};
pub use router::{Routed, Router};
pub use server::{Listener, Server, ServerBuilder};
pub use spop_proto;
pub use spop_proto::frame::{Arg, Args, Messages};
pub use spop_proto::{
    Action, Actions, ArgError, ArgErrorKind, ArgRef, ConnectionError, DataType, FromTypedData,
    Header, HeaderBlock, HeaderBlockError, MAX_FULL_VAR_NAME_LEN, Message, Notify, NotifyId,
    OwnedTypedData, Scope, TypedData, ValueError, VarName, VarNameError, is_valid_var_name,
};
pub use tokio_util::sync::CancellationToken;
#[cfg(feature = "tower")]
pub use tower::TowerHandler;
pub use vars::VarDecl;
