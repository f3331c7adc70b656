//! The handler API: what an agent author implements.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use spop_proto::{Actions, ConnectionError, Message, Notify, NotifyId};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::background::Background;
use crate::config::Config;

/// The error type handlers may return: anything convertible to a boxed error.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Facts about the connection a NOTIFY arrived on.
#[derive(Debug, Clone)]
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
    /// The server's background tasks (see [`Request::background`]): held here, a request
    /// reaches them through its one reference to the connection.
    pub(crate) background: Background,
}

/// Compares the facts, not the background task set.
impl PartialEq for ConnInfo {
    fn eq(&self, o: &Self) -> bool {
        (
            self.id,
            &self.peer,
            &self.engine_id,
            self.max_frame_size,
            self.pipelining,
        ) == (o.id, &o.peer, &o.engine_id, o.max_frame_size, o.pipelining)
    }
}

impl Eq for ConnInfo {}

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
            background: Background::new(Config::default().max_background),
        }
    }
}

/// One NOTIFY to handle, with its connection's facts, its deadline and the server's
/// [`Background`] tasks. Owned: it can move across tasks.
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
    deadline: Instant,
}

/// An ACK buffer larger than this (a handler that once answered with many variables) is not
/// kept for the next request.
const KEEP_ACTIONS: usize = 1024;

thread_local! {
    /// The worker thread's spare ACK buffer, cleared: [`Request::actions`] takes it, the
    /// runtime puts it back once the ACK is encoded. One per thread, not per connection, so
    /// idle connections hold none.
    static SPARE_ACTIONS: std::cell::Cell<Option<Actions>> = const { std::cell::Cell::new(None) };
}

/// Gives an encoded ACK's buffer back to the thread's spare slot, cleared (unless it grew
/// large).
pub(crate) fn recycle_actions(mut actions: Actions) {
    if actions.as_bytes().len() <= KEEP_ACTIONS {
        actions.clear();
        let _ = SPARE_ACTIONS.try_with(|spare| spare.set(Some(actions)));
    }
}

impl Request {
    /// Wraps a NOTIFY (the runtime does this; tests can too). The deadline is the default
    /// budget from now ([`Config::handler_budget`] of `Config::default()`); background tasks
    /// go to the set of `conn` (a set of its own for [`ConnInfo::for_tests`]).
    pub fn new(notify: Notify, conn: ConnInfo) -> Self {
        Self {
            notify,
            conn: Arc::new(conn),
            deadline: Instant::now() + Config::default().handler_budget(),
        }
    }

    pub(crate) const fn from_runtime(
        notify: Notify,
        conn: Arc<ConnInfo>,
        deadline: Instant,
    ) -> Self {
        Self {
            notify,
            conn,
            deadline,
        }
    }

    /// An empty [`Actions`] to answer with, holding the buffer of an earlier ACK encoded on
    /// this worker thread: unlike `Actions::new()`, adding actions to it allocates nothing
    /// (once the thread has answered a NOTIFY). The runtime takes the buffer back after
    /// encoding the ACK. Until then (a second call, a handler still running), other calls on
    /// the thread get a plain `Actions::new()`.
    ///
    /// ```
    /// use spoa_runtime::{handler_fn, Request};
    /// use spop_proto::Scope;
    ///
    /// let handler = handler_fn(|mut req: Request| async move {
    ///     let mut actions = req.actions();
    ///     actions.set_var(Scope::Transaction, "seen", true);
    ///     Ok::<_, std::convert::Infallible>(actions)
    /// });
    /// # let _ = handler;
    /// ```
    pub fn actions(&mut self) -> Actions {
        SPARE_ACTIONS
            .try_with(std::cell::Cell::take)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The same request with another deadline (for tests of deadline-aware handlers).
    ///
    /// ```
    /// use spoa_runtime::{testing, ConnInfo, Request};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let at = tokio::time::Instant::now() + std::time::Duration::from_millis(20);
    /// let req = Request::new(testing::notify().build(), ConnInfo::for_tests()).with_deadline(at);
    /// assert_eq!(req.deadline(), at);
    /// # }
    /// ```
    #[must_use]
    pub const fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = deadline;
        self
    }

    /// When the runtime stops waiting for this handler and answers HAProxy with the fallback
    /// ACK: the NOTIFY's arrival plus [`Config::handler_budget`]. Use it to bound calls to
    /// dependencies, e.g. `tokio::time::timeout_at(req.deadline(), lookup(ip))`, so the handler
    /// can still decide something useful (fail open or closed) before the runtime decides for
    /// it.
    ///
    /// ```
    /// use spoa_runtime::{handler_fn, Request};
    /// use spop_proto::{Actions, Scope};
    ///
    /// let handler = handler_fn(|req: Request| async move {
    ///     let lookup = async { 7i64 }; // a call to a dependency
    ///     let score = tokio::time::timeout_at(req.deadline(), lookup).await.unwrap_or(0); // fail open
    ///     let mut actions = Actions::new();
    ///     actions.set_var(Scope::Transaction, "score", score);
    ///     Ok::<_, std::convert::Infallible>(actions)
    /// });
    /// # let _ = handler;
    /// ```
    pub const fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left until [`deadline`](Self::deadline) (zero once it has passed).
    ///
    /// ```
    /// use spoa_runtime::{testing, ConnInfo, Request};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let req = Request::new(testing::notify().build(), ConnInfo::for_tests());
    /// assert!(req.remaining() <= std::time::Duration::from_millis(450));
    /// # }
    /// ```
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The server's background tasks: work that goes on after the handler returned (and the
    /// ACK went out). See [`Background`].
    ///
    /// ```
    /// use spoa_runtime::{testing, ConnInfo, Request};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let req = Request::new(testing::notify().build(), ConnInfo::for_tests());
    /// assert!(req.background().spawn(async { /* ship an event */ }).is_ok());
    /// # }
    /// ```
    pub fn background(&self) -> &Background {
        &self.conn.background
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
/// Handlers run concurrently. Each is polled once on its connection's task (unless
/// [`Config::inline_first_poll`] is off) and, if it has to wait, continues on a task of its own.
/// Whatever happens (an `Err`, a panic, the budget running out), HAProxy gets an ACK in time:
/// the fallback ACK, carrying the error variable ([`Config::error_var`], one value per
/// [`FallbackReason`](crate::FallbackReason)). The connection keeps serving.
///
/// Synchronous work before the first `.await` runs on the connection's task and delays its
/// other NOTIFYs: keep it short, or use [`blocking_fn`] for CPU-heavy or blocking handlers.
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

/// A [`Handler`] that runs a synchronous closure on tokio's blocking thread pool; see
/// [`blocking_fn`].
pub struct BlockingFn<F> {
    f: Arc<F>,
    slots: Arc<Semaphore>,
}

impl<F> fmt::Debug for BlockingFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingFn")
            .field("free_threads", &self.slots.available_permits())
            .finish()
    }
}

/// Makes a [`Handler`] from a synchronous closure that is CPU-heavy or blocks (regex sets, rule
/// engines, a blocking client library). Each call runs on tokio's blocking pool
/// (`spawn_blocking`), never on a connection's task, so it cannot delay the ACKs of other
/// NOTIFYs; at most [`max_threads`](BlockingFn::max_threads) run at once (default: the number
/// of CPUs), so CPU-bound work does not oversubscribe the machine. A NOTIFY waiting for a
/// thread past its budget gets the fallback ACK like any slow handler.
///
/// When to use which:
/// - async handler (`handler_fn`): in-memory lookups and I/O through async clients. Cheap
///   synchronous work (microseconds) is fine: it is polled inline, with no task spawn.
/// - [`blocking_fn`]: anything that takes CPU for more than ~100 µs, or calls blocking code.
///   Costs a thread hand-off per NOTIFY (a few microseconds).
/// - [`Config::inline_first_poll`] off: async handlers that do moderate synchronous work
///   before their first `.await`, on a multi-threaded runtime.
///
/// A closure still running at its budget cannot be interrupted (no thread can be): its
/// NOTIFY is answered with the fallback ACK, and its result is dropped when it ends.
///
/// ```
/// use spoa_runtime::{blocking_fn, Request};
/// use spop_proto::{Actions, Scope};
///
/// let handler = blocking_fn(|req: Request| {
///     let path = req.message("check").and_then(|m| m.arg("path")).and_then(|v| v.as_str()).unwrap_or("");
///     let suspicious = path.contains("/../") || path.ends_with(".php"); // imagine a big regex set
///     let mut actions = Actions::new();
///     actions.set_var(Scope::Transaction, "suspicious", suspicious);
///     Ok::<_, std::convert::Infallible>(actions)
/// })
/// .max_threads(4);
/// # let _ = handler;
/// ```
pub fn blocking_fn<F, E>(f: F) -> BlockingFn<F>
where
    F: Fn(Request) -> Result<Actions, E> + Send + Sync + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    BlockingFn {
        f: Arc::new(f),
        slots: Arc::new(Semaphore::new(cpus)),
    }
}

impl<F> BlockingFn<F> {
    /// Most calls running at once (threads of the blocking pool used). At least 1.
    ///
    /// ```
    /// let h = spoa_runtime::blocking_fn(|_req| Ok::<_, std::convert::Infallible>(spop_proto::Actions::new())).max_threads(2);
    /// # let _ = h;
    /// ```
    #[must_use]
    pub fn max_threads(mut self, n: usize) -> Self {
        self.slots = Arc::new(Semaphore::new(n.max(1)));
        self
    }
}

impl<F, E> Handler for BlockingFn<F>
where
    F: Fn(Request) -> Result<Actions, E> + Send + Sync + 'static,
    E: Into<BoxError> + Send + 'static,
{
    type Error = BoxError;

    async fn handle_notify(&self, req: Request) -> Result<Actions, BoxError> {
        let slot = self.slots.clone().acquire_owned().await?;
        let f = self.f.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _slot = slot; // held until the closure ends, even if nobody waits for it
            f(req).map_err(Into::into)
        })
        .await;
        match joined {
            Ok(res) => res,
            // reported as a handler panic, like the panic of an async handler
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(e.into()),
        }
    }
}
