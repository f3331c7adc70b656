//! Unit-test handlers without sockets: build a NOTIFY in memory, call the handler, inspect
//! the actions.
//!
//! ```
//! use spoa_runtime::{handler_fn, testing, Request};
//! use spop_proto::{Actions, Action, Scope, TypedData};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let handler = handler_fn(|req: Request| async move {
//!     let mut a = Actions::new();
//!     let n = req.message("m").and_then(|m| m.arg("n")).and_then(|v| v.as_i64()).unwrap_or(0);
//!     a.set_var(Scope::Transaction, "double", n * 2);
//!     Ok::<_, std::convert::Infallible>(a)
//! });
//! let notify = testing::notify().message("m").arg("n", 21i64).build();
//! let actions = testing::call(&handler, notify).await.unwrap();
//! assert_eq!(
//!     actions.iter().next(),
//!     Some(Action::SetVar { scope: Scope::Transaction, name: "double", value: TypedData::Int64(42) })
//! );
//! # }
//! ```

use spop_proto::frame::NotifyBuilder;
use spop_proto::{Actions, Notify, NotifyId};

use crate::handler::{BoxError, ConnInfo, Handler, Request};

/// Starts a NOTIFY with stream-id 1, frame-id 1.
pub fn notify() -> NotifyBuilder {
    Notify::builder(NotifyId::new(1, 1))
}

/// Calls the handler once, as the runtime would, with a test [`ConnInfo`].
pub async fn call<H: Handler>(handler: &H, notify: Notify) -> Result<Actions, BoxError> {
    handler
        .handle_notify(Request::new(notify, ConnInfo::for_tests()))
        .await
        .map_err(Into::into)
}
