//! The `bot_guard` example of spoa-runtime behind real HAProxy 2.6, 3.2 and 3.4, driven by real
//! `curl` requests: one or more per rule of the example (no-headers through NULL and through
//! a missing argument, scanner, tool-ua, no-ua, many-headers, ok), the 40/41-header boundary,
//! case-insensitive matching and first-rule-wins. The frontend (the shipped config's, see
//! `tests/haproxy/haproxy-botguard.cfg.in`) denies with 403 when the score is 80 or more and
//! otherwise answers with the variables the agent set.
//!
//! Every reply must match exactly and carry no `X-SPOE-Error`; HAProxy must log one SPOE
//! line with `st=0` per request; `option spop-check` must mark the agent UP; neither side
//! may log warnings. HAProxy is located or installed by `spop_tests::interop::haproxy`; a
//! missing HAProxy or curl fails the test (never a skip).

use std::process::Command;
use std::time::{Duration, Instant};

use spop_tests::interop::{
    AgentProcess, HaproxyConfig, HaproxyInstance, bot_guard_binary, config_warnings, haproxy,
};

const CURL: &str = "/usr/bin/curl";
/// Bound for one test once HAProxy and the agent binary are available.
const BUDGET: Duration = Duration::from_secs(30);
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
/// The SPOE agents of the template, as HAProxy names them in its log.
const SPOE_AGENTS: [&str; 3] = [
    "botguard-agent",
    "botguard-null-agent",
    "botguard-absent-agent",
];

/// One curl request and the reply it must get.
struct Case {
    label: &'static str,
    path: &'static str,
    args: Vec<String>,
    status: u16,
    body: &'static str,
}

fn case(
    label: &'static str,
    path: &'static str,
    args: &[&str],
    status: u16,
    body: &'static str,
) -> Case {
    Case {
        label,
        path,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        status,
        body,
    }
}

/// `-H "x-pad-<i>: v"` for `n` headers.
fn pads(n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|i| ["-H".to_owned(), format!("X-Pad-{i}: v")])
        .collect()
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // curl's own User-Agent is "curl/<version>"
        case(
            "default curl",
            "/",
            &[],
            403,
            "blocked: score=90 reason=tool-ua\n",
        ),
        case("browser", "/", &["-A", BROWSER], 200, "score=0 reason=ok\n"),
        case(
            "x-scanner",
            "/",
            &["-A", BROWSER, "-H", "X-Scanner: 1"],
            403,
            "blocked: score=100 reason=scanner\n",
        ),
        case(
            "X-SCANNER, upper case, with curl's UA (first rule wins)",
            "/scan",
            &["-H", "X-SCANNER: yes"],
            403,
            "blocked: score=100 reason=scanner\n",
        ),
        case(
            "wget",
            "/",
            &["-A", "Wget/1.21.3"],
            403,
            "blocked: score=90 reason=tool-ua\n",
        ),
        case(
            "python-requests",
            "/api",
            &["-A", "python-requests/2.31.0"],
            403,
            "blocked: score=90 reason=tool-ua\n",
        ),
        case(
            "CURL inside a longer UA",
            "/",
            &["-A", "Mozilla/5.0 (compatible; CURL-bot)"],
            403,
            "blocked: score=90 reason=tool-ua\n",
        ),
        // `-H "User-Agent:"` removes the header
        case(
            "no user-agent",
            "/",
            &["-H", "User-Agent:"],
            200,
            "score=70 reason=no-ua\n",
        ),
        case(
            "NULL header block",
            "/_null/x",
            &["-A", BROWSER],
            200,
            "score=50 reason=no-headers\n",
        ),
        case(
            "absent header block",
            "/_absent/x",
            &["-A", BROWSER],
            200,
            "score=50 reason=no-headers\n",
        ),
    ];
    // curl sends Host, User-Agent and Accept: 3 + 37 = 40 headers is fine, 41 is not
    let mut forty = case(
        "40 headers",
        "/",
        &["-A", BROWSER],
        200,
        "score=0 reason=ok\n",
    );
    forty.args.extend(pads(37));
    let mut forty_one = case(
        "41 headers",
        "/",
        &["-A", BROWSER],
        200,
        "score=60 reason=many-headers\n",
    );
    forty_one.args.extend(pads(38));
    v.push(forty);
    v.push(forty_one);
    v
}

/// Runs curl; returns (status, X-SPOE-Error if any, body).
fn curl(port: u16, c: &Case) -> Result<(u16, Option<String>, String), String> {
    let url = format!("http://127.0.0.1:{port}{}", c.path);
    let out = Command::new(CURL)
        .args(["-sS", "--http1.1", "--max-time", "5", "-i"])
        .args(&c.args)
        .arg(&url)
        .output()
        .map_err(|e| format!("cannot run {CURL}: {e} (curl is required by this test)"))?;
    if !out.status.success() {
        return Err(format!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header/body separator in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let spoe_error = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("x-spoe-error"))
        .map(|(_, v)| v.trim().to_owned());
    Ok((status, spoe_error, body.to_owned()))
}

#[track_caller]
fn fail(msg: &str, hap: &HaproxyInstance, agent: &AgentProcess) -> ! {
    panic!(
        "HAProxy {} in front of bot_guard: {msg}\n\n{}\n--- agent log ---\n{}",
        hap.series(),
        hap.diagnostics(),
        agent.log()
    );
}

fn bot_guard(series: &str) {
    haproxy(series);
    bot_guard_binary();
    assert!(
        std::path::Path::new(CURL).exists(),
        "{CURL} is required by this test"
    );
    let started = Instant::now();

    let agent = AgentProcess::start_with(&bot_guard_binary(), &["127.0.0.1:0"]);
    let hap = HaproxyInstance::start(series, &HaproxyConfig::bot_guard(agent.addr(), true));
    if let Err(last) = hap.wait_for_server("be_agent", "agent", CHECK_TIMEOUT, |st| {
        st.status == "UP" && st.check() == "L7OK"
    }) {
        fail(
            &format!("the agent never became UP/L7OK: {last}"),
            &hap,
            &agent,
        );
    }

    let cases = cases();
    let mut errors = Vec::new();
    for c in &cases {
        match curl(hap.port(), c) {
            Ok((status, None, body)) if status == c.status && body == c.body => {}
            Ok(got) => errors.push(format!(
                "{}: expected {} {:?} without X-SPOE-Error, got {got:?}",
                c.label, c.status, c.body
            )),
            Err(e) => errors.push(format!("{}: {e}", c.label)),
        }
    }
    if !errors.is_empty() {
        fail(&errors.join("\n"), &hap, &agent);
    }

    // one SPOE line per request, all st=0
    let total = cases.len();
    match hap.wait_spoe_log(&SPOE_AGENTS, total, Duration::from_secs(5)) {
        Some((l, _)) if l.iter().all(|l| l.status == "0") => {}
        other => fail(
            &format!("expected {total} SPOE log lines with st=0, got {other:?}"),
            &hap,
            &agent,
        ),
    }
    if !config_warnings(&hap.stderr_log()).is_empty() {
        fail("HAProxy wrote warnings or alerts", &hap, &agent);
    }
    let log = agent.log();
    if log.contains(" WARN ") || log.contains(" ERROR ") {
        fail("the agent logged warnings or errors", &hap, &agent);
    }
    // the agent saw every rule (its debug log names each decision)
    for reason in [
        "no-headers",
        "scanner",
        "tool-ua",
        "no-ua",
        "many-headers",
        "ok",
    ] {
        if !log.contains(&format!("reason=\"{reason}\""))
            && !log.contains(&format!("reason={reason}"))
        {
            fail(
                &format!("the agent never logged reason {reason}"),
                &hap,
                &agent,
            );
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < BUDGET,
        "HAProxy {series}: took {elapsed:?}, more than {BUDGET:?}"
    );
}

#[test]
fn bot_guard_haproxy_2_6() {
    bot_guard("2.6");
}

#[test]
fn bot_guard_haproxy_3_2() {
    bot_guard("3.2");
}

#[test]
fn bot_guard_haproxy_3_4() {
    bot_guard("3.4");
}
