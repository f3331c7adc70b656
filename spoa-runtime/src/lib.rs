//! # spoa-runtime
//!
//! Write HAProxy SPOE agents in a few lines: implement [`Handler`] (or pass a closure to
//! [`handler_fn`], or a synchronous one to [`blocking_fn`]) and hand it to a [`Server`]. The
//! runtime drives the sans-IO [`spop_proto`] state machine over tokio sockets and takes care of
//! what HAProxy needs, safe by default on bad days:
//!
//! - handshake, health checks (`option spop-check`), pipelining with out-of-order ACKs;
//! - deadlines that mirror HAProxy's `timeout processing` ([`Config::processing_timeout`],
//!   default 500 ms): a handler that runs out of its budget (90% of it) is answered for with
//!   the fallback ACK before HAProxy gives up, its in-flight slot freed at once, so a hung
//!   dependency never holds up healthy requests; late completions are dropped and counted;
//! - an ACK for every NOTIFY, with an error variable that tells HAProxy rules what happened
//!   ([`FallbackReason`]: error, timeout, panic, overload, too large), and never an ACK without
//!   actions (HAProxy 3.1.0 stalls on those);
//! - memory bounds: in-flight NOTIFYs per connection, a write high-water mark the buffer never
//!   exceeds by more than one ACK, a write-progress timeout, a connection limit, an optional
//!   global handler limit, bounded [`Background`] work after the ACK;
//! - graceful shutdown: stop accepting, answer in-flight work, AGENT-DISCONNECT status 0,
//!   drain background tasks; [`Server::serve`] returns once everything has ended;
//! - `tracing` spans per connection and per NOTIFY, rate-limited failure logs, [`Metrics`]
//!   (Prometheus text behind the `prometheus` feature).
//!
//! - for operators, all opt-in: an admin endpoint with `/healthz` and `/metrics` (the
//!   `admin` module, behind the `admin` feature), systemd readiness notifications
//!   ([`sd_notify`]), socket activation ([`inherited_listeners`]), Unix-socket permissions
//!   ([`unix_socket`]).
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
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let handler = Router::new().route("get-ip-reputation", |r: Routed| async move {
//!         let ip: std::net::IpAddr = r.message().get("ip")?;
//!         let mut actions = Actions::new();
//!         actions.set_var(Scope::Session, "ip_score", if ip.is_loopback() { 0 } else { 50 });
//!         Ok::<_, ArgError>(actions)
//!     });
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
//!     Server::builder()
//!         .build()?
//!         .serve(listener, handler, async { let _ = tokio::signal::ctrl_c().await; })
//!         .await;
//!     Ok(())
//! }
//! ```
//!
//! The execution model, every default and its reason, and what to do on a bad day:
//! `docs/bad-days.md` in the repository.

#[cfg(feature = "admin")]
pub mod admin;
mod background;
mod config;
mod connection;
mod failures;
mod handler;
mod listen;
mod metrics;
#[cfg(feature = "prometheus")]
mod prometheus;
pub mod router;
pub mod sd_notify;
mod server;
pub mod testing;
#[cfg(feature = "tower")]
mod tower;
#[cfg(unix)]
pub mod unix_socket;
mod unwind;
pub mod vars;

pub use background::{Background, BackgroundFull};
pub use config::{
    Config, ConfigError, DEFAULT_ERROR_VAR, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PROCESSING_TIMEOUT,
    FallbackReason, LameDuck,
};
pub use connection::serve_connection;
pub use handler::{
    BlockingFn, BoxError, ConnInfo, Handler, HandlerFn, Request, blocking_fn, handler_fn,
};
pub use listen::{Inherited, LISTEN_BACKLOG, bind_tcp, inherited_listeners};
pub use metrics::{LATENCY_BUCKETS, Metrics, MetricsSnapshot};
#[cfg(feature = "prometheus")]
pub use prometheus::serve_prometheus;
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
