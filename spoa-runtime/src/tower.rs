//! A `tower::Service` as a [`Handler`] (feature `tower`), for agents that already have tower
//! middleware (timeouts, concurrency limits, load shedding, tracing layers).
//!
//! Only the `tower-service` trait crate is a dependency; bring `tower` yourself for the
//! middleware.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Mutex, PoisonError};

use spop_proto::Actions;
use tower_service::Service;

use crate::handler::{BoxError, Handler, Request};
use crate::vars::VarDecl;

/// Adapts a `tower::Service<Request, Response = Actions>`: each NOTIFY clones the service,
/// waits for `poll_ready`, then `call`s it (the usual contract for a shared service).
///
/// An error from `poll_ready` or `call` is the handler's error: the runtime logs it and still
/// ACKs. Backpressure is the runtime's (in-flight limits); a service that is never ready holds
/// the NOTIFY until the runtime's own timeout answers it.
///
/// The service needs to be `Send` but not `Sync` (tower's `BoxCloneService` is not): the
/// adapter keeps it behind a mutex, held only for the clone.
///
/// ```
/// use std::convert::Infallible;
/// use std::future::{ready, Ready};
/// use std::task::{Context, Poll};
/// use spoa_runtime::{testing, Actions, Request, Scope, TowerHandler};
///
/// #[derive(Clone)]
/// struct Svc;
/// impl tower_service::Service<Request> for Svc {
///     type Response = Actions;
///     type Error = Infallible;
///     type Future = Ready<Result<Actions, Infallible>>;
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
///         Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, req: Request) -> Self::Future {
///         let mut a = Actions::new();
///         a.set_var(Scope::Transaction, "messages", req.messages().count() as i64);
///         ready(Ok(a))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let handler = TowerHandler::new(Svc);
/// let a = testing::call(&handler, testing::notify().message("m").build()).await.unwrap();
/// assert_eq!(a.len(), 1);
/// # });
/// ```
pub struct TowerHandler<S> {
    svc: Mutex<S>,
    vars: Vec<VarDecl>,
}

impl<S> fmt::Debug for TowerHandler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerHandler")
            .field("vars", &self.vars)
            .finish_non_exhaustive()
    }
}

impl<S> TowerHandler<S> {
    /// Wraps `svc`.
    pub const fn new(svc: S) -> Self {
        Self {
            svc: Mutex::new(svc),
            vars: Vec::new(),
        }
    }

    /// Declares a variable the service sets (see [`vars`](crate::vars)).
    ///
    /// ```
    /// # #[derive(Clone)] struct S;
    /// use spoa_runtime::{Scope, TowerHandler, VarDecl};
    /// let h = TowerHandler::new(S).declare(VarDecl::new(Scope::Transaction, "v"));
    /// # let _ = h;
    /// ```
    #[must_use]
    pub fn declare(mut self, var: VarDecl) -> Self {
        self.vars.push(var);
        self
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.svc
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S> Handler for TowerHandler<S>
where
    S: Service<Request, Response = Actions> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
{
    type Error = S::Error;

    async fn handle_notify(&self, req: Request) -> Result<Actions, S::Error> {
        let mut svc = self
            .svc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(req).await
    }

    fn declared_vars(&self) -> &[VarDecl] {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Ready, ready};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use super::*;
    use crate::testing;

    /// Ready only on the second poll; fails calls for message "fail". Not `Sync` (the
    /// `Cell`), like tower's `BoxCloneService`.
    #[derive(Clone)]
    struct Flaky {
        polls: Arc<AtomicUsize>,
        _not_sync: std::cell::Cell<()>,
    }

    impl Service<Request> for Flaky {
        type Response = Actions;
        type Error = BoxError;
        type Future = Ready<Result<Actions, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if self.polls.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn call(&mut self, req: Request) -> Self::Future {
            if req.message("fail").is_some() {
                return ready(Err("failed".into()));
            }
            let mut a = Actions::new();
            a.set_var(spop_proto::Scope::Transaction, "ok", true);
            ready(Ok(a))
        }
    }

    #[tokio::test]
    async fn waits_for_ready_then_calls() {
        let polls = Arc::new(AtomicUsize::new(0));
        let h = TowerHandler::new(Flaky {
            polls: Arc::clone(&polls),
            _not_sync: std::cell::Cell::new(()),
        });
        let a = testing::call(&h, testing::notify().message("m").build())
            .await
            .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        let e = testing::call(&h, testing::notify().message("fail").build())
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "failed");
    }
}
