//! [`Router`]: one handler function per message name, with a fallback.
//!
//! One agent often serves several messages (a request event and a response event, or two
//! groups), and one NOTIFY may carry several messages. The router calls the route of each
//! message of a NOTIFY, in order, and concatenates their actions into one ACK. Messages
//! without a route go to the fallback, or are ignored when there is none.
//!
//! ```
//! use spoa_runtime::{testing, Actions, ArgError, Routed, Router, Scope, VarDecl};
//!
//! const SCORE: VarDecl = VarDecl::new(Scope::Transaction, "score");
//!
//! let router = Router::new()
//!     .route("check-request", |r: Routed| async move {
//!         let ip: std::net::IpAddr = r.message().get("ip")?;
//!         let mut a = Actions::new();
//!         a.set_var(SCORE.scope, SCORE.name.as_str(), if ip.is_loopback() { 0i64 } else { 50 });
//!         Ok::<_, ArgError>(a)
//!     })
//!     .route("check-response", |_r: Routed| async { Ok::<_, ArgError>(Actions::new()) })
//!     .declare(SCORE);
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let notify = testing::notify().message("check-request").arg("ip", std::net::Ipv4Addr::LOCALHOST).build();
//! let actions = testing::call(&router, notify).await.unwrap();
//! assert_eq!(testing::get_var(&actions, Scope::Transaction, "score"), Some(spoa_runtime::TypedData::Int64(0)));
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use spop_proto::{Actions, Message};

use crate::handler::{BoxError, Handler, Request};
use crate::vars::VarDecl;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Actions, BoxError>> + Send>>;
type Route = Box<dyn Fn(Routed) -> BoxFuture + Send + Sync>;

/// What a route receives: the request and which of its messages is being routed.
///
/// Owned (it holds the [`Request`], whose NOTIFY is reference-counted), so a route's future
/// is `'static` and may await anything.
#[derive(Debug, Clone)]
pub struct Routed {
    req: Request,
    index: usize,
}

impl Routed {
    /// The message this route was chosen for.
    ///
    /// ```
    /// use spoa_runtime::{testing, Routed};
    /// let r = Routed::for_tests(testing::notify().message("a").message("b").build(), 1);
    /// assert_eq!(r.message().name(), "b");
    /// ```
    pub fn message(&self) -> Message<'_> {
        self.req
            .messages()
            .nth(self.index)
            .expect("Routed holds the index of one of its NOTIFY's messages")
    }

    /// The position of the message in the NOTIFY.
    pub const fn index(&self) -> usize {
        self.index
    }

    /// The whole request (other messages, the connection's facts).
    pub const fn request(&self) -> &Request {
        &self.req
    }

    /// A `Routed` for message `index` of `notify` (tests).
    ///
    /// # Panics
    ///
    /// If the NOTIFY has no message at `index`.
    pub fn for_tests(notify: spop_proto::Notify, index: usize) -> Self {
        assert!(
            notify.messages().nth(index).is_some(),
            "no message at index {index}"
        );
        Self {
            req: Request::new(notify, crate::ConnInfo::for_tests()),
            index,
        }
    }
}

/// Dispatches each message of a NOTIFY to the route of its name; see the [module
/// docs](crate::router).
///
/// A route's error fails the whole NOTIFY (the runtime still ACKs it, with its error
/// variable); the routes of the messages after it are not called.
#[derive(Default)]
pub struct Router {
    routes: Vec<(String, Route)>,
    fallback: Option<Route>,
    vars: Vec<VarDecl>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self.routes.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("fallback", &self.fallback.is_some())
            .field("vars", &self.vars)
            .finish()
    }
}

fn boxed<F, Fut, E>(f: F) -> Route
where
    F: Fn(Routed) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Actions, E>> + Send + 'static,
    E: Into<BoxError>,
{
    Box::new(move |r| {
        let fut = f(r);
        Box::pin(async move { fut.await.map_err(Into::into) })
    })
}

impl Router {
    /// A router with no routes (every message ignored).
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes message `name` (the `spoe-message` section name) to `f`.
    ///
    /// # Panics
    ///
    /// If `name` already has a route (a configuration mistake, caught at startup).
    ///
    /// ```
    /// use spoa_runtime::{Actions, Routed, Router};
    /// let r = Router::new().route("m", |_: Routed| async { Ok::<_, std::convert::Infallible>(Actions::new()) });
    /// assert!(r.has_route("m"));
    /// ```
    #[must_use]
    #[track_caller]
    pub fn route<F, Fut, E>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(Routed) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Actions, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        assert!(
            !self.has_route(name),
            "message {name:?} already has a route"
        );
        self.routes.push((name.to_owned(), boxed(f)));
        self
    }

    /// Handles the messages that have no route (by default they are ignored).
    ///
    /// ```
    /// use spoa_runtime::{testing, Actions, Routed, Router, Scope};
    /// let r = Router::new().fallback(|r: Routed| async move {
    ///     let mut a = Actions::new();
    ///     a.set_var(Scope::Transaction, "unknown_message", r.message().name());
    ///     Ok::<_, std::convert::Infallible>(a)
    /// });
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let a = testing::call(&r, testing::notify().message("other").build()).await.unwrap();
    /// assert_eq!(a.len(), 1);
    /// # });
    /// ```
    #[must_use]
    pub fn fallback<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn(Routed) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Actions, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.fallback = Some(boxed(f));
        self
    }

    /// Declares a variable the routes set (see [`vars`](crate::vars)).
    ///
    /// ```
    /// use spoa_runtime::{Handler, Router, Scope, VarDecl};
    /// let r = Router::new().declare(VarDecl::new(Scope::Transaction, "score"));
    /// assert_eq!(r.declared_vars().len(), 1);
    /// ```
    #[must_use]
    pub fn declare(mut self, var: VarDecl) -> Self {
        if !self.vars.contains(&var) {
            self.vars.push(var);
        }
        self
    }

    /// True when message `name` has a route.
    pub fn has_route(&self, name: &str) -> bool {
        self.routes.iter().any(|(n, _)| n == name)
    }

    /// The routed message names, in the order they were added.
    ///
    /// ```
    /// use spoa_runtime::{Actions, Routed, Router};
    /// let ok = |_: Routed| async { Ok::<_, std::convert::Infallible>(Actions::new()) };
    /// let r = Router::new().route("a", ok).route("b", ok);
    /// assert_eq!(r.messages().collect::<Vec<_>>(), ["a", "b"]);
    /// ```
    pub fn messages(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|(n, _)| n.as_str())
    }
}

impl Handler for Router {
    type Error = BoxError;

    async fn handle_notify(&self, req: Request) -> Result<Actions, BoxError> {
        let mut actions = Actions::new();
        let names: Vec<(usize, Option<usize>)> = req
            .messages()
            .enumerate()
            .map(|(i, m)| (i, self.routes.iter().position(|(n, _)| n == m.name())))
            .collect();
        for (index, route) in names {
            let f = match route {
                Some(r) => &self.routes[r].1,
                None => match &self.fallback {
                    Some(f) => f,
                    None => continue,
                },
            };
            let got = f(Routed {
                req: req.clone(),
                index,
            })
            .await?;
            if actions.is_empty() {
                actions = got;
            } else {
                actions.append(&got);
            }
        }
        Ok(actions)
    }

    fn declared_vars(&self) -> &[VarDecl] {
        &self.vars
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use spop_proto::{Scope, TypedData};

    use super::*;
    use crate::testing;

    fn router() -> Router {
        Router::new()
            .route("a", |r: Routed| async move {
                let mut a = Actions::new();
                a.set_var(Scope::Transaction, "a", r.index() as i64);
                Ok::<_, Infallible>(a)
            })
            .route("b", |r: Routed| async move {
                let n: i64 = r.message().get("n")?;
                let mut a = Actions::new();
                a.set_var(Scope::Transaction, "b", n);
                Ok::<_, spop_proto::ArgError>(a)
            })
    }

    #[tokio::test]
    async fn every_message_in_order() {
        let n = testing::notify()
            .message("b")
            .arg("n", 7i64)
            .message("x")
            .message("a")
            .build();
        let a = testing::call(&router(), n).await.unwrap();
        let got: Vec<String> = a.iter().map(|x| x.to_string()).collect();
        assert_eq!(got, ["set-var txn.b = int64:7", "set-var txn.a = int64:2"]);
    }

    #[tokio::test]
    async fn fallback_and_errors() {
        let r = router().fallback(|r: Routed| async move {
            let mut a = Actions::new();
            a.set_var(Scope::Transaction, "other", r.message().name());
            Ok::<_, Infallible>(a)
        });
        let a = testing::call(&r, testing::notify().message("zz").build())
            .await
            .unwrap();
        assert_eq!(
            testing::get_var(&a, Scope::Transaction, "other"),
            Some(TypedData::String(b"zz"))
        );
        // a route's error fails the NOTIFY, naming the argument
        let err = testing::call(&r, testing::notify().message("b").build())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "message \"b\", argument \"n\": expected an integer in i64 range, got nothing (missing)"
        );
        // no route, no fallback: ignored
        let a = testing::call(&router(), testing::notify().message("zz").build())
            .await
            .unwrap();
        assert!(a.is_empty());
    }

    #[test]
    #[should_panic(expected = "already has a route")]
    fn duplicate_route() {
        let _ = router().route("a", |_: Routed| async {
            Ok::<_, Infallible>(Actions::new())
        });
    }
}
