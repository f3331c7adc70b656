//! Work after the ACK ("detect-only" / observe mode): tracked, bounded, drained on shutdown.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, warn};

use crate::metrics::Metrics;
use crate::unwind::CatchUnwind;

/// Tasks a handler starts and does not wait for: ship an event, update a model, log. The
/// handler returns its actions at once (HAProxy gets its ACK), and the work goes on.
///
/// A server owns one, shared by every request ([`Request::background`](crate::Request::background)):
/// at most [`Config::max_background`](crate::Config::max_background) tasks run at once, and a
/// spawn beyond that is refused (and counted), never queued without limit. A graceful shutdown
/// waits for them within [`Config::shutdown_grace`](crate::Config::shutdown_grace), then cancels
/// the rest. A panic in a task is caught and counted.
///
/// ```
/// use spoa_runtime::{handler_fn, Request};
/// use spop_proto::{Actions, Scope};
///
/// let handler = handler_fn(|req: Request| async move {
///     let mut actions = Actions::new();
///     actions.set_var(Scope::Transaction, "seen", true);
///     let path = req.message("log").and_then(|m| m.arg("path")).and_then(|v| v.as_str()).map(str::to_owned);
///     // answered now; the event ships afterwards
///     let _ = req.background().spawn(async move {
///         let _ = path; // e.g. send it to an event pipeline
///     });
///     Ok::<_, std::convert::Infallible>(actions)
/// });
/// # let _ = handler;
/// ```
#[derive(Clone)]
pub struct Background {
    inner: Arc<Inner>,
}

struct Inner {
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    limit: usize,
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("running", &self.len())
            .field("limit", &self.inner.limit)
            .finish()
    }
}

/// [`Background::spawn`] refused the task: the limit of tasks running at once is reached, or
/// the server is shutting down.
///
/// ```
/// let bg = spoa_runtime::Background::new(0);
/// let err = bg.spawn(async {}).unwrap_err();
/// assert_eq!(err.to_string(), "background task refused: 0 of 0 running, or shutting down");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackgroundFull {
    running: usize,
    limit: usize,
}

impl fmt::Display for BackgroundFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "background task refused: {} of {} running, or shutting down",
            self.running, self.limit
        )
    }
}

impl std::error::Error for BackgroundFull {}

impl Background {
    /// A set of at most `limit` tasks at once, with its own metrics. Servers make theirs;
    /// this is for tests and for [`Request::new`](crate::Request::new).
    ///
    /// ```
    /// let bg = spoa_runtime::Background::new(8);
    /// assert_eq!(bg.len(), 0);
    /// ```
    pub fn new(limit: usize) -> Self {
        Self::with_metrics(limit, Arc::new(Metrics::default()))
    }

    pub(crate) fn with_metrics(limit: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                slots: Arc::new(Semaphore::new(limit)),
                cancel: CancellationToken::new(),
                metrics,
                limit,
            }),
        }
    }

    /// Starts `work` on the tokio runtime, in the caller's tracing span. Refused when the
    /// limit is reached or the server is shutting down.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bg = spoa_runtime::Background::new(1);
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// bg.spawn(async move { let _ = tx.send(42); }).unwrap();
    /// assert_eq!(rx.await, Ok(42));
    /// # }
    /// ```
    pub fn spawn<F>(&self, work: F) -> Result<(), BackgroundFull>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = &self.inner;
        let refused = || BackgroundFull {
            running: inner.limit - inner.slots.available_permits(),
            limit: inner.limit,
        };
        if inner.tracker.is_closed() {
            inner.metrics.background_refused();
            return Err(refused());
        }
        let Ok(slot) = inner.slots.clone().try_acquire_owned() else {
            inner.metrics.background_refused();
            return Err(refused());
        };
        inner.metrics.background_started();
        let metrics = inner.metrics.clone();
        let cancel = inner.cancel.clone();
        inner.tracker.spawn(
            async move {
                let _slot = slot;
                tokio::select! {
                    res = CatchUnwind::new(Box::pin(work)) => if res.is_err() {
                        metrics.background_panic();
                        warn!("background task panicked");
                    },
                    () = cancel.cancelled() => {}
                }
                metrics.background_ended();
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Background tasks running now.
    ///
    /// ```
    /// assert!(spoa_runtime::Background::new(4).is_empty());
    /// ```
    pub fn len(&self) -> usize {
        self.inner.tracker.len()
    }

    /// True when no background task runs.
    ///
    /// ```
    /// assert!(spoa_runtime::Background::new(4).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.inner.tracker.is_empty()
    }

    /// Refuses new tasks, waits up to `grace` for the running ones, then cancels what is left;
    /// returns how many were cancelled. [`Server::serve`](crate::Server::serve) calls it at
    /// shutdown.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// let bg = spoa_runtime::Background::new(4);
    /// bg.spawn(async { tokio::time::sleep(Duration::from_millis(10)).await }).unwrap();
    /// bg.spawn(std::future::pending()).unwrap();
    /// assert_eq!(bg.drain(Duration::from_millis(100)).await, 1);
    /// assert!(bg.is_empty());
    /// assert!(bg.spawn(async {}).is_err());
    /// # }
    /// ```
    pub async fn drain(&self, grace: Duration) -> usize {
        let inner = &self.inner;
        inner.tracker.close();
        let finished = tokio::time::timeout(grace, inner.tracker.wait())
            .await
            .is_ok();
        let left = inner.tracker.len();
        inner.cancel.cancel();
        if !finished {
            inner.tracker.wait().await;
        }
        left
    }
}
