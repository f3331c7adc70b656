//! A bot-detection agent. HAProxy sends message `check-request` with the arguments
//! `ip=src path=path hdrs=req.hdrs_bin`; the agent sets two transaction variables, `score`
//! (integer, higher is worse) and `reason` (string), by the first rule that matches:
//!
//! | rule | score | reason |
//! |---|---:|---|
//! | header block NULL (did not fit HAProxy's buffer) or absent | 50 | `no-headers` |
//! | header block malformed (HAProxy never sends one; a decision all the same) | 50 | `bad-headers` |
//! | a header `x-scanner` (any case) | 100 | `scanner` |
//! | a `user-agent` containing `curl`, `wget` or `python-requests` (any case) | 90 | `tool-ua` |
//! | no `user-agent` | 70 | `no-ua` |
//! | more than 40 headers | 60 | `many-headers` |
//! | otherwise | 0 | `ok` |
//!
//! The shipped HAProxy config (`examples/bot_guard/` beside this file) denies with 403 when
//! `score >= 80` and otherwise answers with the score and the reason.
//!
//! Run: `cargo run -p spoa-runtime --example bot_guard -- 127.0.0.1:12345`

use std::net::IpAddr;

use spoa_runtime::{
    Actions, ArgError, Handler, HeaderBlock, Message, Routed, Router, Scope, Server, VarDecl, vars,
};

/// The variables the agent sets (HAProxy: `txn.botguard.score`, `txn.botguard.reason`).
const SCORE: VarDecl = VarDecl::new(Scope::Transaction, "score");
const REASON: VarDecl = VarDecl::new(Scope::Transaction, "reason");
/// `option var-prefix` of the shipped spoe.conf.
const VAR_PREFIX: &str = "botguard";
/// User-Agent substrings of command-line tools and scripts.
const TOOL_AGENTS: [&str; 3] = ["curl", "wget", "python-requests"];
/// A browser sends 10 to 20 headers; more than this is suspicious.
const MAX_HEADERS: usize = 40;

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    score: i64,
    reason: &'static str,
}

const fn verdict(score: i64, reason: &'static str) -> Verdict {
    Verdict { score, reason }
}

/// True when `haystack` contains `needle`, ASCII case-insensitively.
fn contains_ignore_case(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The rules, first match wins.
fn judge(hdrs: Result<Option<HeaderBlock<'_>>, ArgError>) -> Verdict {
    let hdrs = match hdrs {
        Ok(Some(h)) => h,
        Ok(None) => return verdict(50, "no-headers"),
        Err(_) => return verdict(50, "bad-headers"),
    };
    if hdrs.contains("x-scanner") {
        return verdict(100, "scanner");
    }
    match hdrs.get("user-agent") {
        Some(ua) if TOOL_AGENTS.iter().any(|t| contains_ignore_case(ua, t)) => {
            return verdict(90, "tool-ua");
        }
        Some(_) => {}
        None => return verdict(70, "no-ua"),
    }
    if hdrs.len() > MAX_HEADERS {
        return verdict(60, "many-headers");
    }
    verdict(0, "ok")
}

/// Answers one `check-request` message.
fn check_request(msg: &Message<'_>) -> Actions {
    // `Option`: NULL (block too big for HAProxy's buffer) and a missing argument are `None`;
    // a malformed block or another type is an `Err`, which `judge` turns into a decision.
    let v = judge(msg.get::<Option<HeaderBlock<'_>>>("hdrs"));
    let ip: Option<IpAddr> = msg.get("ip").ok().flatten();
    let path: Option<&[u8]> = msg.get("path").ok().flatten();
    tracing::debug!(
        ?ip,
        path = %path.unwrap_or_default().escape_ascii(),
        score = v.score,
        reason = v.reason,
        "check-request"
    );
    let mut actions = Actions::with_capacity(64);
    actions
        .set_var(SCORE.scope, SCORE.name.as_str(), v.score)
        .set_var(REASON.scope, REASON.name.as_str(), v.reason);
    actions
}

fn router() -> Router {
    Router::new()
        .route("check-request", |r: Routed| async move {
            Ok::<_, std::convert::Infallible>(check_request(&r.message()))
        })
        .declare(SCORE)
        .declare(REASON)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:12345".into());

    let handler = router();
    // fail at startup, not silently in HAProxy, if a name cannot work with the prefix
    vars::check(handler.declared_vars(), VAR_PREFIX)?;
    eprintln!(
        "spoe.conf needs: option var-prefix {VAR_PREFIX} / {}",
        vars::register_var_names(handler.declared_vars())
    );

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bot_guard agent listening on {}", listener.local_addr()?);
    Server::builder()
        .build()?
        .serve(listener, handler, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use spoa_runtime::{TypedData, testing};

    use super::*;

    const UA: (&str, &str) = (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    );

    /// Calls the agent with a `check-request` whose `hdrs` is `hdrs` (`None`: NULL).
    async fn run(hdrs: Option<&[u8]>) -> (i64, String) {
        let mut b = testing::notify();
        b.message("check-request")
            .arg("ip", std::net::Ipv4Addr::LOCALHOST)
            .arg("path", "/");
        match hdrs {
            Some(h) => b.arg("hdrs", h),
            None => b.arg("hdrs", ()),
        };
        verdict_of(b.build()).await
    }

    async fn verdict_of(notify: spoa_runtime::Notify) -> (i64, String) {
        let actions = testing::call(&router(), notify).await.unwrap();
        let score = testing::get_var(&actions, Scope::Transaction, "score");
        let reason = testing::get_var(&actions, Scope::Transaction, "reason");
        match (score, reason) {
            (Some(TypedData::Int64(s)), Some(TypedData::String(r))) => {
                (s, String::from_utf8(r.to_vec()).unwrap())
            }
            other => panic!("unexpected variables {other:?}"),
        }
    }

    async fn with(headers: &[(&str, &str)]) -> (i64, String) {
        run(Some(&testing::header_block(headers))).await
    }

    fn pads(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("x-pad-{i}"), "v".into())).collect()
    }

    #[tokio::test]
    async fn every_rule() {
        assert_eq!(run(None).await, (50, "no-headers".into()));
        let absent = testing::notify()
            .message("check-request")
            .arg("ip", std::net::Ipv4Addr::LOCALHOST)
            .arg("path", "/")
            .build();
        assert_eq!(verdict_of(absent).await, (50, "no-headers".into()));
        assert_eq!(run(Some(b"\x04host")).await, (50, "bad-headers".into()));
        assert_eq!(
            with(&[("host", "h"), ("X-Scanner", "1"), UA]).await,
            (100, "scanner".into())
        );
        for ua in [
            "curl/8.5.0",
            "Wget/1.21",
            "python-requests/2.31",
            "my-CURL-thing",
        ] {
            assert_eq!(
                with(&[("host", "h"), ("user-agent", ua)]).await,
                (90, "tool-ua".into()),
                "{ua}"
            );
        }
        assert_eq!(with(&[("host", "h")]).await, (70, "no-ua".into()));
        assert_eq!(with(&[("host", "h"), UA]).await, (0, "ok".into()));
    }

    #[tokio::test]
    async fn header_count_threshold() {
        for (extra, expected) in [(38, (0, "ok")), (39, (60, "many-headers"))] {
            let p = pads(extra);
            let mut h: Vec<(&str, &str)> = vec![("host", "h"), UA];
            h.extend(p.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            assert_eq!(
                with(&h).await,
                (expected.0, expected.1.into()),
                "{} headers",
                h.len()
            );
        }
    }

    #[tokio::test]
    async fn first_rule_wins() {
        // scanner beats tool-ua, tool-ua and no-ua beat many-headers
        assert_eq!(
            with(&[("x-scanner", ""), ("user-agent", "curl/8")]).await,
            (100, "scanner".into())
        );
        let p = pads(50);
        let mut h: Vec<(&str, &str)> = p.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(with(&h).await, (70, "no-ua".into()));
        h.push(("user-agent", "wget"));
        assert_eq!(with(&h).await, (90, "tool-ua".into()));
    }

    #[tokio::test]
    async fn wrong_types_are_decisions_not_panics() {
        // hdrs as a STRING, ip as a string: still an answer
        let n = testing::notify()
            .message("check-request")
            .arg("ip", "not an address")
            .arg("path", 5i64)
            .arg("hdrs", "text")
            .build();
        assert_eq!(verdict_of(n).await, (50, "bad-headers".into()));
    }

    #[test]
    fn declared_variables_fit_the_prefix() {
        let r = router();
        assert!(vars::check(r.declared_vars(), VAR_PREFIX).is_ok());
        assert_eq!(
            vars::register_var_names(r.declared_vars()),
            "register-var-names score reason"
        );
        // the shipped spoe.conf registers them
        let conf = include_str!("bot_guard/spoe.conf");
        assert!(conf.contains("register-var-names score reason"), "{conf}");
        assert!(
            conf.contains(&format!("option var-prefix {VAR_PREFIX}")),
            "{conf}"
        );
    }
}
