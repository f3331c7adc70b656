//! The handler API: what an agent author implements.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use spop_proto::{Actions, ConnectionError, Message, Notify, NotifyId};

/// The error type handlers may return: anything convertible to a boxed error.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Facts about the connection a NOTIFY arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    /// A process-unique number for the connection (also in log lines).
    pub id: u64,
    /// The peer address (`ip:port`, or the Unix socket peer).
    pub peer: String,
    /// HAProxy's engine-id from the HELLO, if sent.
    pub engine_id: Option<String>,
    /// The negotiated maximum frame size.
    pub max_frame_size: u32,
    /// Whether pipelining is in use.
    pub pipelining: bool,
}

impl ConnInfo {
    /// A `ConnInfo` for tests.
    ///
    /// ```
    /// let info = spoa_runtime::ConnInfo::for_tests();
    /// assert_eq!(info.peer, "test");
    /// ```
    pub fn for_tests() -> Self {
        Self {
            id: 0,
            peer: "test".into(),
            engine_id: None,
            max_frame_size: 16380,
            pipelining: true,
        }
    }
}

/// One NOTIFY to handle, with its connection's facts. Owned: it can move across tasks.
///
/// ```
/// use spoa_runtime::{ConnInfo, Request};
/// use spop_proto::{Notify, NotifyId};
/// let req = Request::new(
///     Notify::builder(NotifyId::new(1, 1)).message("m").arg("ip", std::net::Ipv4Addr::LOCALHOST).build(),
///     ConnInfo::for_tests(),
/// );
/// assert!(req.message("m").and_then(|m| m.arg("ip")).is_some());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The NOTIFY: messages and their typed arguments.
    pub notify: Notify,
    /// The connection it came on.
    pub conn: Arc<ConnInfo>,
}

impl Request {
    /// Wraps a NOTIFY (the runtime does this; tests can too).
    pub fn new(notify: Notify, conn: ConnInfo) -> Self {
        Self {
            notify,
            conn: Arc::new(conn),
        }
    }

    /// The NOTIFY's stream-id and frame-id.
    pub const fn id(&self) -> NotifyId {
        self.notify.id()
    }

    /// The messages, in order.
    pub fn messages(&self) -> spop_proto::frame::Messages<'_> {
        self.notify.messages()
    }

    /// The first message with this name.
    pub fn message(&self, name: &str) -> Option<Message<'_>> {
        self.notify.message(name)
    }
}

/// An agent's logic. Implement it for a struct holding your state (shared across
/// connections: the runtime keeps one `Arc<H>`), or use [`handler_fn`] for a closure.
///
/// Handlers run concurrently, each NOTIFY on its own task. Whatever happens (an `Err`, a
/// panic, the handler timeout), HAProxy gets an ACK: an empty one (plus the configured error
/// variable), so it never waits for its processing timeout. The connection keeps serving.
///
/// ```
/// use spoa_runtime::{Handler, Request};
/// use spop_proto::{Actions, Scope};
///
/// struct Blocklist(Vec<std::net::IpAddr>);
///
/// impl Handler for Blocklist {
///     type Error = std::convert::Infallible;
///     async fn handle_notify(&self, req: Request) -> Result<Actions, Self::Error> {
///         let mut actions = Actions::new();
///         let ip = req.message("check").and_then(|m| m.arg("ip")).and_then(|v| v.as_ip());
///         actions.set_var(Scope::Transaction, "blocked", ip.is_some_and(|ip| self.0.contains(&ip)));
///         Ok(actions)
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The handler's error; it is logged and counted, and the NOTIFY still gets an ACK.
    type Error: Into<BoxError> + Send;

    /// Answers one NOTIFY with the actions of its ACK.
    fn handle_notify(
        &self,
        req: Request,
    ) -> impl Future<Output = Result<Actions, Self::Error>> + Send;

    /// Called when a connection completes its handshake (not for health checks).
    fn on_connect(&self, _info: &ConnInfo) {}

    /// Called when a connection that completed its handshake ends.
    fn on_disconnect(&self, _info: &ConnInfo, _why: &ConnectionError) {}

    /// The variables this handler sets, for `register-var-names` and the 64-byte check (see
    /// [`vars`](crate::vars)). [`Router`](crate::Router) returns what was declared on it.
    fn declared_vars(&self) -> &[crate::VarDecl] {
        &[]
    }
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Makes a [`Handler`] from an async closure.
///
/// ```
/// use spoa_runtime::{handler_fn, Request};
/// use spop_proto::{Actions, Scope};
///
/// let handler = handler_fn(|req: Request| async move {
///     let mut actions = Actions::new();
///     if let Some(ip) = req.message("get-ip-reputation").and_then(|m| m.arg("ip")) {
///         actions.set_var(Scope::Session, "ip_score", if ip.as_ip().is_some() { 10 } else { 0 });
///     }
///     Ok::<_, std::convert::Infallible>(actions)
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut, E>(f: F) -> HandlerFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Actions, E>> + Send,
    E: Into<BoxError> + Send,
{
    HandlerFn { f }
}

impl<F, Fut, E> Handler for HandlerFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Actions, E>> + Send,
    E: Into<BoxError> + Send,
{
    type Error = E;

    fn handle_notify(&self, req: Request) -> impl Future<Output = Result<Actions, E>> + Send {
        (self.f)(req)
    }
}
