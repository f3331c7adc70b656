//! End to end against real HAProxy in front of `spoa echo`: HAProxy 2.6, 3.0 and 3.2 each run
//! the `tests/haproxy/haproxy-echo.cfg.in` frontend on 127.0.0.1, whose SPOE filter sends
//! message `echo` with `ip=src str=path n=int(-7)` on every HTTP request. `spoa echo` sets
//! each argument back as a variable of the same name and type (scope txn by default), and the
//! frontend's reply shows them:
//!
//! ```text
//! GET /hello/world?q=1  ->  200, "ip=127.0.0.1 str=/hello/world n=-7\n"
//! ```
//!
//! so an IPv4 address, a string and a (negative) integer make the round trip. Every reply must
//! be exactly that (with the path of its own request) and carry no `X-SPOE-Error`; concurrent
//! requests use distinct paths, so a reply crossed between streams would show. Each test also
//! checks that `option spop-check` marks the agent UP (L7OK), that HAProxy logged one SPOE
//! line with `st=0` per request, that pipelining was negotiated exactly when HAProxy offered
//! it, and that neither side logged warnings.
//!
//! HAProxy is located or installed by `spop_tests::interop::haproxy`, and `spoa` is built by
//! `spop_tests::interop::spoa_binary`; if either fails, the tests fail (they never skip).

use std::thread;
use std::time::{Duration, Instant};

use spop_tests::interop::{
    AgentProcess, HaproxyConfig, HaproxyInstance, HttpResponse, config_warnings, haproxy,
    spoa_binary,
};

/// Bound for one test once HAProxy and `spoa` are available.
const BUDGET: Duration = Duration::from_secs(20);
/// Bound for the first health check to pass (`check inter 1s`).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The request of the issue, sent several times in a row.
const HELLO: &str = "/hello/world?q=1";
const HELLO_BODY: &str = "ip=127.0.0.1 str=/hello/world n=-7\n";
const HELLO_REPEAT: usize = 5;
/// More paths, one request each: `str` must follow the request (`path` has no query string
/// and is not decoded).
const OTHER_PATHS: [&str; 4] = ["/", "/a/b?x=1&y=2", "/x%20y/", "/dash-dot.under_score/123"];
const THREADS: usize = 4;
const REQUESTS_PER_THREAD: usize = 5;
/// `spoe-agent` section of `spoe-echo.conf.in`, as HAProxy names it in its SPOE log lines.
const SPOE_AGENT: &str = "echo-agent";

/// The reply body for a request of `path_and_query`, per the echo template.
fn expected_body(path_and_query: &str) -> String {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    format!("ip=127.0.0.1 str={path} n=-7\n")
}

/// Panics with `msg` followed by HAProxy's logs and the agent's log.
#[track_caller]
fn fail(msg: &str, hap: &HaproxyInstance, agent: &AgentProcess) -> ! {
    panic!(
        "HAProxy {} in front of `spoa echo`: {msg}\n\n{}\n--- agent log ({}) ---\n{}",
        hap.series(),
        hap.diagnostics(),
        agent.addr(),
        agent.log()
    );
}

/// `spoa echo --listen 127.0.0.1:0 <extra>` and HAProxy `series` with the echo templates,
/// once `option spop-check` has marked the agent UP (L7OK).
fn start(series: &str, pipelining: bool, extra_args: &[&str]) -> (AgentProcess, HaproxyInstance) {
    let mut args = vec!["echo", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra_args);
    let agent = AgentProcess::start_with(&spoa_binary(), &args);
    let hap = HaproxyInstance::start(series, &HaproxyConfig::echo(agent.addr(), pipelining));
    wait_agent_up(&hap, &agent);
    (agent, hap)
}

fn wait_agent_up(hap: &HaproxyInstance, agent: &AgentProcess) {
    if let Err(last) = hap.wait_for_server("be_agent", "agent", CHECK_TIMEOUT, |st| {
        st.status == "UP" && st.check() == "L7OK"
    }) {
        fail(
            &format!("be_agent/agent never became UP with L7OK within {CHECK_TIMEOUT:?}; {last}"),
            hap,
            agent,
        );
    }
}

/// `GET path`; `Err` describes anything but 200, `want_body` and no `X-SPOE-Error`.
fn check_get(hap: &HaproxyInstance, path: &str, want_body: &str) -> Result<(), String> {
    match hap.get(path) {
        Ok(r) if is_clean_reply(&r, want_body) => Ok(()),
        Ok(r) => Err(format!(
            "GET {path}: expected 200 with body {want_body:?} and no X-SPOE-Error, got {r:?}"
        )),
        Err(e) => Err(format!("GET {path}: request failed: {e}")),
    }
}

fn is_clean_reply(r: &HttpResponse, want_body: &str) -> bool {
    r.status == 200 && r.body == want_body && r.header("X-SPOE-Error").is_none()
}

fn echo_serves(series: &str, pipelining: bool) {
    // Installing HAProxy or building `spoa` (first test only) is not part of the budget.
    let setup = Instant::now();
    haproxy(series);
    spoa_binary();
    let setup = setup.elapsed();
    let started = Instant::now();

    let (agent, hap) = start(series, pipelining, &[]);
    let up = started.elapsed();

    // The issue's request, several times; then other paths; then concurrent requests with a
    // distinct path each; then the issue's request once more.
    let mut errors = Vec::new();
    let mut total = 0;
    let mut record = |r: Result<(), String>| {
        total += 1;
        if let Err(e) = r {
            errors.push(e);
        }
    };
    for _ in 0..HELLO_REPEAT {
        record(check_get(&hap, HELLO, HELLO_BODY));
    }
    for path in OTHER_PATHS {
        record(check_get(&hap, path, &expected_body(path)));
    }
    let hap_ref = &hap;
    thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    (0..REQUESTS_PER_THREAD)
                        .map(|i| {
                            let path = format!("/thread-{t}/request-{i}?n={i}");
                            check_get(hap_ref, &path, &expected_body(&path))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for w in workers {
            for r in w.join().expect("request thread panicked") {
                record(r);
            }
        }
    });
    record(check_get(&hap, HELLO, HELLO_BODY));
    if !errors.is_empty() {
        fail(
            &format!(
                "{} of {total} requests got a wrong reply:\n{}",
                errors.len(),
                errors.join("\n")
            ),
            &hap,
            &agent,
        );
    }

    // HAProxy logged one SPOE line per request, each with st=0 (but for the lines it says it
    // dropped: under a burst it drops what it cannot write at once, SPOE and HTTP lines alike).
    match hap.wait_spoe_log(&[SPOE_AGENT], total, Duration::from_secs(5)) {
        Some((lines, _)) if lines.iter().all(|l| l.status == "0") => {}
        other => fail(
            &format!(
                "expected {total} SPOE log lines with st=0 (less those dropped), got {other:?}"
            ),
            &hap,
            &agent,
        ),
    }

    // The agent negotiated pipelining exactly when HAProxy offered it.
    let caps = agent.negotiated_capabilities();
    let expected = if pipelining { "pipelining" } else { "" };
    if caps.is_empty() || caps.iter().any(|c| c != expected) {
        fail(
            &format!("expected every handshake to negotiate {expected:?}, got {caps:?}"),
            &hap,
            &agent,
        );
    }

    // Still healthy, nothing alarming on either side.
    wait_agent_up(&hap, &agent);
    let stderr = hap.stderr_log();
    if !config_warnings(&stderr).is_empty() {
        fail("HAProxy wrote warnings or alerts to stderr", &hap, &agent);
    }
    let agent_log = agent.log();
    if agent_log.contains(" WARN ") || agent_log.contains(" ERROR ") {
        fail("the agent logged warnings or errors", &hap, &agent);
    }

    let elapsed = started.elapsed();
    eprintln!(
        "HAProxy {series} + spoa echo, pipelining {pipelining}: setup (locate HAProxy, build \
         spoa) {setup:?}; agent UP (L7OK) after {up:?}, {total} requests checked, done after \
         {elapsed:?}"
    );
    assert!(
        elapsed < BUDGET,
        "HAProxy {series}: took {elapsed:?}, more than {BUDGET:?}"
    );
}

#[test]
fn echo_haproxy_2_6_pipelining() {
    echo_serves("2.6", true);
}

#[test]
fn echo_haproxy_3_0_pipelining() {
    echo_serves("3.0", true);
}

#[test]
fn echo_haproxy_3_2_pipelining() {
    echo_serves("3.2", true);
}

#[test]
fn echo_haproxy_3_4_pipelining() {
    echo_serves("3.4", true);
}

#[test]
fn echo_haproxy_3_2_no_pipelining() {
    echo_serves("3.2", false);
}

/// Control: with `--scope sess` the agent's variables land in `sess.echo.*`, which the
/// frontend does not read, so the reply shows empty values although SPOE processing succeeds
/// (no `X-SPOE-Error`). Shows that the bodies checked above really come from the agent's
/// txn-scope variables.
#[test]
fn echo_haproxy_3_2_sess_scope_is_not_txn() {
    haproxy("3.2");
    spoa_binary();
    let (agent, hap) = start("3.2", true, &["--scope", "sess"]);
    for _ in 0..3 {
        if let Err(e) = check_get(&hap, HELLO, "ip= str= n=\n") {
            fail(&e, &hap, &agent);
        }
    }
    let logged = hap.wait_spoe_log(&[SPOE_AGENT], 3, Duration::from_secs(5));
    if !logged.is_some_and(|(l, _)| l.iter().all(|l| l.status == "0")) {
        fail("expected 3 SPOE log lines with st=0", &hap, &agent);
    }
}
