//! Unit-test handlers without sockets: build a NOTIFY in memory, call the handler, inspect
//! the actions.
//!
//! ```
//! use spoa_runtime::{handler_fn, testing, Actions, Action, Request, Scope, TypedData};
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
//! assert_eq!(testing::get_var(&actions, Scope::Transaction, "double"), Some(TypedData::Int64(42)));
//! # }
//! ```

use spop_proto::frame::NotifyBuilder;
use spop_proto::{Action, Actions, HeaderBlock, Notify, NotifyId, Scope, TypedData, VarName};

use crate::handler::{BoxError, ConnInfo, Handler, Request};

/// Starts a NOTIFY with stream-id 1, frame-id 1.
pub fn notify() -> NotifyBuilder {
    Notify::builder(NotifyId::new(1, 1))
}

/// Calls the handler once, as the runtime would, with a test [`ConnInfo`].
///
/// Besides the handler's own result, it fails when an action names a variable HAProxy
/// would ignore (bytes outside `[A-Za-z0-9._]`), so that mistake shows in tests.
pub async fn call<H: Handler>(handler: &H, notify: Notify) -> Result<Actions, BoxError> {
    let actions = handler
        .handle_notify(Request::new(notify, ConnInfo::for_tests()))
        .await
        .map_err(Into::into)?;
    for a in actions.iter() {
        let (Action::SetVar { name, .. } | Action::UnsetVar { name, .. }) = a else {
            continue;
        };
        VarName::try_new(name).map_err(|e| {
            format!("the handler set variable {name:?}, which HAProxy ignores: {e}")
        })?;
    }
    Ok(actions)
}

/// The value of the last set-var of `scope`/`name` in `actions` (what HAProxy ends up with),
/// `None` if none or if a later unset-var removes it.
///
/// ```
/// use spoa_runtime::{testing, Actions, Scope, TypedData};
/// let mut a = Actions::new();
/// a.set_var(Scope::Transaction, "x", 1i64).set_var(Scope::Transaction, "x", 2i64);
/// assert_eq!(testing::get_var(&a, Scope::Transaction, "x"), Some(TypedData::Int64(2)));
/// assert_eq!(testing::get_var(&a, Scope::Session, "x"), None);
/// ```
pub fn get_var<'a>(actions: &'a Actions, scope: Scope, name: &str) -> Option<TypedData<'a>> {
    let mut found = None;
    for a in actions.iter() {
        match a {
            Action::SetVar {
                scope: s,
                name: n,
                value,
            } if s == scope && n == name => found = Some(value),
            Action::UnsetVar { scope: s, name: n } if s == scope && n == name => found = None,
            _ => {}
        }
    }
    found
}

/// A `req.hdrs_bin` block from `(name, value)` pairs, as HAProxy would send it (names are
/// lowercased, as HAProxy stores them).
///
/// ```
/// use spoa_runtime::{testing, HeaderBlock};
/// let b = testing::header_block(&[("User-Agent", "curl/8")]);
/// assert_eq!(HeaderBlock::parse(&b).unwrap().iter().next().unwrap().name, b"user-agent");
/// ```
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    HeaderBlock::encode(
        headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), *v)),
        &mut b,
    );
    b
}
