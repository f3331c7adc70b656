//! Handlers that had to wait: each on a task of its own, raced against its deadline, its
//! outcome sent back to the connection.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use spop_proto::{Actions, NotifyId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::FallbackReason;
use crate::handler::BoxError;
use crate::server::Shared;
use crate::unwind::{CatchUnwind, Panicked};

/// How a handler ended, as far as the ACK is concerned.
pub(crate) enum Outcome {
    Done(Actions),
    Failed(BoxError),
    Panicked,
    Fallback(FallbackReason),
}

impl Outcome {
    pub(super) fn of<E: Into<BoxError>>(r: Result<Result<Actions, E>, Panicked>) -> Self {
        match r {
            Ok(Ok(a)) => Self::Done(a),
            Ok(Err(e)) => Self::Failed(e.into()),
            Err(Panicked) => Self::Panicked,
        }
    }
}

/// The handlers that had to wait: their tasks, how they report back, and the connection's
/// late slots.
pub(super) struct Spawned {
    pub(super) tasks: JoinSet<()>,
    pub(super) tx: mpsc::UnboundedSender<(NotifyId, Outcome)>,
    pub(super) rx: mpsc::UnboundedReceiver<(NotifyId, Outcome)>,
    pub(super) late: Arc<Semaphore>,
}

/// What the handler tasks did.
pub(super) enum FromTasks {
    Outcome(NotifyId, Outcome),
    /// A task ended (late ones report nothing else).
    Reaped,
}

/// The next outcome (if `outcomes` is allowed), or a finished task to reap.
pub(super) fn poll_tasks(
    spawned: &mut Option<Box<Spawned>>,
    cx: &mut Context<'_>,
    outcomes: bool,
) -> Poll<FromTasks> {
    let Some(s) = spawned else {
        return Poll::Pending;
    };
    if outcomes {
        if let Poll::Ready(Some((id, outcome))) = s.rx.poll_recv(cx) {
            return Poll::Ready(FromTasks::Outcome(id, outcome));
        }
    }
    if !s.tasks.is_empty() {
        if let Poll::Ready(Some(_)) = s.tasks.poll_join_next(cx) {
            return Poll::Ready(FromTasks::Reaped);
        }
    }
    Poll::Pending
}

/// A handler that had to wait, on its own task.
pub(super) struct Supervised {
    pub(super) id: NotifyId,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) late_limit: Duration,
    pub(super) late: Arc<Semaphore>,
    pub(super) tx: mpsc::UnboundedSender<(NotifyId, Outcome)>,
    pub(super) shared: Arc<Shared>,
}

impl Supervised {
    /// Runs `fut` holding its handler slot: `permit` (taken before the first poll) or one
    /// waited for behind the concurrency limit (`queued`).
    pub(super) async fn run<F, E>(
        self,
        fut: F,
        permit: Option<OwnedSemaphorePermit>,
        queued: Option<Arc<Semaphore>>,
    ) where
        F: Future<Output = Result<Actions, E>> + Unpin + Send + 'static,
        E: Into<BoxError>,
    {
        // Behind the concurrency limit: wait for a slot, but not past the deadline.
        let _slot: Option<OwnedSemaphorePermit> = match queued {
            None => permit,
            Some(limiter) => {
                match tokio::time::timeout_at(self.deadline, limiter.acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    _ => {
                        self.report(Outcome::Fallback(FallbackReason::Overload));
                        return;
                    }
                }
            }
        };
        let mut fut = CatchUnwind::new(fut);
        tokio::select! {
            biased;
            res = &mut fut => {
                self.shared.metrics.handler_latency(self.started.elapsed());
                self.report(Outcome::of(res));
                return;
            }
            () = tokio::time::sleep_until(self.deadline) => {}
        }
        self.shared.metrics.handler_latency(self.started.elapsed());
        self.report(Outcome::Fallback(FallbackReason::Timeout));
        // Past the budget: the ACK is on its way. Let the handler finish if the connection has
        // a late slot, within the late limit; its result is dropped.
        let Ok(_late) = self.late.try_acquire() else {
            self.shared.metrics.handler_cancelled();
            return;
        };
        match tokio::time::timeout_at(self.deadline + self.late_limit, fut).await {
            Ok(_) => self.shared.metrics.handler_late(),
            Err(_) => self.shared.metrics.handler_cancelled(),
        }
    }

    fn report(&self, outcome: Outcome) {
        // the connection may be gone; then nobody waits for the ACK
        let _ = self.tx.send((self.id, outcome));
    }
}
