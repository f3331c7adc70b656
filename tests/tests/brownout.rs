//! Brownout behind real HAProxy (2.6, 3.0, 3.2, 3.4: every series tools/haproxy-install gives): a dependency of the agent hangs for some
//! requests while healthy traffic runs. HAProxy has `timeout processing 500ms`; the agent is
//! `spoa echo` with the runtime's defaults, plus `--delay 3s --delay-which match:/hang` to play
//! the hung dependency.
//!
//! Each test measures, against the same HAProxy and agent, a baseline phase (healthy load
//! only) and a brownout phase (the same healthy load plus clients requesting `/hang/...`
//! back to back). Healthy requests must be unaffected: at least 99.9% answered with the
//! agent's variables, their p99 within [`P99_SLACK`] and p99.9 within [`P999_SLACK`] of the
//! baseline's, their throughput at least [`MIN_THROUGHPUT_SHARE`] of it. Hung requests must
//! get the agent's fallback ACK (`agent_error=2`) before HAProxy gives up.
//!
//! `SPOA_BROWNOUT_AGENT_ARGS` (space-separated) adds `spoa echo` options, to reproduce other
//! settings, e.g. the runtime's former defaults: `--processing-timeout 5500ms --max-in-flight 20
//! --no-pad-empty-ack` (the test then fails, which is the point; its output has the figures).
//! `SPOA_BROWNOUT_SECONDS` changes the brownout phase's length (default 6).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use spop_tests::interop::{
    AgentProcess, HaproxyConfig, HaproxyInstance, haproxy, http_get, spoa_binary,
};

/// Healthy clients, each sending requests back to back.
const HEALTHY_CLIENTS: usize = 4;
/// Clients requesting a path the agent hangs on, back to back (each request lasts ~450 ms:
/// the fallback ACK).
const HANGING_CLIENTS: usize = 8;
const BASELINE: Duration = Duration::from_secs(3);
/// How much the healthy p99 may rise over the baseline's.
const P99_SLACK: Duration = Duration::from_millis(10);
/// How much the healthy p99.9 may rise over the baseline's (stalls behind a hung NOTIFY last
/// up to HAProxy's 500 ms processing timeout).
const P999_SLACK: Duration = Duration::from_millis(50);
/// Healthy throughput during the brownout, at least this share of the baseline's.
const MIN_THROUGHPUT_SHARE: f64 = 0.75;
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Phase {
    /// Latencies of healthy requests answered with the agent's variables.
    ok: Vec<Duration>,
    /// Healthy requests without the agent's answer (or failed).
    bad: Vec<String>,
    /// Hanging requests: answered by the agent's fallback ACK / otherwise.
    hung_fallback: usize,
    hung_other: Vec<String>,
}

impl Phase {
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)] // statistics over a few thousand samples
    fn p(&self, q: f64) -> Duration {
        let mut v = self.ok.clone();
        v.sort();
        if v.is_empty() {
            return Duration::MAX;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    #[allow(clippy::cast_possible_truncation)] // a few thousand samples
    fn mean(&self) -> Duration {
        if self.ok.is_empty() {
            return Duration::MAX;
        }
        self.ok.iter().sum::<Duration>() / self.ok.len() as u32
    }

    #[allow(clippy::cast_precision_loss)] // statistics over a few thousand samples
    fn healthy_share(&self) -> f64 {
        let total = self.ok.len() + self.bad.len();
        self.ok.len() as f64 / total.max(1) as f64
    }

    #[allow(clippy::cast_precision_loss)] // statistics over a few thousand samples
    fn summary(&self, secs: f64) -> String {
        format!(
            "healthy: {} answered by the agent, {} not ({:.3}%), {:.0} req/s, mean {:.2?}, p50 \
             {:.2?}, p99 {:.2?}, p99.9 {:.2?}, max {:.2?}; hanging: {} fallback ACKs (agent_error=2), {} other",
            self.ok.len(),
            self.bad.len(),
            100.0 * self.healthy_share(),
            self.ok.len() as f64 / secs,
            self.mean(),
            self.p(0.5),
            self.p(0.99),
            self.p(0.999),
            self.p(1.0),
            self.hung_fallback,
            self.hung_other.len()
        )
    }
}

/// Runs the healthy clients (and, if `hanging`, the hanging ones) for `length`.
fn phase(port: u16, length: Duration, hanging: bool, tag: &str) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let mut healthy = Vec::new();
    for t in 0..HEALTHY_CLIENTS {
        let (stop, tag) = (stop.clone(), tag.to_owned());
        healthy.push(thread::spawn(move || {
            let mut out = Phase::default();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("/ok/{tag}/{t}/{i}");
                let sent = Instant::now();
                match http_get(port, &path) {
                    Ok(r)
                        if r.status == 200
                            && r.body == format!("path={path} agent_error= spoe_error=\n") =>
                    {
                        out.ok.push(sent.elapsed());
                    }
                    Ok(r) => out.bad.push(format!("{path}: {} {:?}", r.status, r.body)),
                    Err(e) => out.bad.push(format!("{path}: {e}")),
                }
                i += 1;
            }
            out
        }));
    }
    let mut hangers = Vec::new();
    if hanging {
        for t in 0..HANGING_CLIENTS {
            let (stop, tag) = (stop.clone(), tag.to_owned());
            hangers.push(thread::spawn(move || {
                let mut out = Phase::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let path = format!("/hang/{tag}/{t}/{i}");
                    match http_get(port, &path) {
                        Ok(r) if r.body == "path= agent_error=2 spoe_error=\n" => {
                            out.hung_fallback += 1
                        }
                        Ok(r) => out
                            .hung_other
                            .push(format!("{path}: {} {:?}", r.status, r.body)),
                        Err(e) => out.hung_other.push(format!("{path}: {e}")),
                    }
                    i += 1;
                }
                out
            }));
        }
    }
    thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    let mut total = Phase::default();
    for h in healthy.into_iter().chain(hangers) {
        let p = h.join().expect("client thread");
        total.ok.extend(p.ok);
        total.bad.extend(p.bad);
        total.hung_fallback += p.hung_fallback;
        total.hung_other.extend(p.hung_other);
    }
    total
}

/// One scenario at a time: they measure latency, so they must not share the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn brownout(series: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    haproxy(series);
    let bin = spoa_binary();
    let extra = std::env::var("SPOA_BROWNOUT_AGENT_ARGS").unwrap_or_default();
    let brownout_len = Duration::from_secs(
        std::env::var("SPOA_BROWNOUT_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(6),
    );
    let mut args = vec![
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--delay",
        "3s",
        "--delay-which",
        "match:/hang",
    ];
    args.extend(extra.split_whitespace());
    let mut agent = AgentProcess::start_with(&bin, &args);
    let hap = HaproxyInstance::start(series, &HaproxyConfig::brownout(agent.addr(), true));
    if let Err(last) = hap.wait_for_server("be_agent", "agent", CHECK_TIMEOUT, |st| {
        st.status == "UP" && st.check() == "L7OK"
    }) {
        panic!(
            "HAProxy {series}: agent not UP within {CHECK_TIMEOUT:?} (last: {last:?})\n{}\n{}",
            hap.diagnostics(),
            agent.log()
        );
    }

    #[allow(clippy::cast_precision_loss)] // statistics over a few thousand samples
    let rate = |p: &Phase, d: Duration| p.ok.len() as f64 / d.as_secs_f64();
    let mut base = phase(hap.port(), BASELINE, false, "base");
    let mut brown = phase(hap.port(), brownout_len, true, "brown");
    if rate(&brown, brownout_len) < MIN_THROUGHPUT_SHARE * rate(&base, BASELINE) {
        // Throughput is the one criterion the machine itself can spoil (the test's 12 client
        // threads, HAProxy and the agent share 2 cores; seen once in about ten runs, on the
        // commit before this one too): it must fail twice in a row.
        eprintln!(
            "HAProxy {series}: healthy throughput {:.0}/s against a baseline of {:.0}/s; measuring again",
            rate(&brown, brownout_len),
            rate(&base, BASELINE)
        );
        base = phase(hap.port(), BASELINE, false, "base");
        brown = phase(hap.port(), brownout_len, true, "brown");
    }
    let report = format!(
        "HAProxy {series}, spoa echo {}\n  baseline ({BASELINE:?}): {}\n  brownout ({brownout_len:?}): {}",
        if extra.is_empty() {
            "(defaults)".to_string()
        } else {
            extra.clone()
        },
        base.summary(BASELINE.as_secs_f64()),
        brown.summary(brownout_len.as_secs_f64()),
    );
    eprintln!("{report}");
    let fail = |what: &str, samples: &[String]| -> ! {
        panic!(
            "{what}\n{report}\nfirst failures: {:?}\n{}\n--- agent log ---\n{}",
            &samples[..samples.len().min(5)],
            hap.diagnostics(),
            agent.log()
        )
    };
    if !base.bad.is_empty() || base.ok.len() < 100 {
        fail("the baseline itself is not healthy", &base.bad);
    }
    if brown.healthy_share() < 0.999 {
        fail(
            "fewer than 99.9% of healthy requests answered by the agent",
            &brown.bad,
        );
    }
    if brown.p(0.99) > base.p(0.99) + P99_SLACK {
        fail(
            &format!("healthy p99 rose by more than {P99_SLACK:?} during the brownout"),
            &brown.bad,
        );
    }
    if brown.p(0.999) > base.p(0.999) + P999_SLACK {
        fail(
            &format!("healthy p99.9 rose by more than {P999_SLACK:?} during the brownout"),
            &brown.bad,
        );
    }
    if rate(&brown, brownout_len) < MIN_THROUGHPUT_SHARE * rate(&base, BASELINE) {
        fail(
            &format!("healthy throughput fell below {MIN_THROUGHPUT_SHARE} of the baseline's"),
            &brown.bad,
        );
    }
    if brown.hung_fallback == 0 || brown.hung_other.len() * 100 > brown.hung_fallback {
        fail(
            "hung requests did not get the agent's fallback ACK before HAProxy gave up",
            &brown.hung_other,
        );
    }
    agent
        .alive()
        .unwrap_or_else(|e| panic!("agent died: {e}\n{report}"));
}

#[test]
fn brownout_haproxy_2_6() {
    brownout("2.6");
}

#[test]
fn brownout_haproxy_3_2() {
    brownout("3.2");
}

#[test]
fn brownout_haproxy_3_4() {
    brownout("3.4");
}

#[test]
fn brownout_haproxy_3_0() {
    brownout("3.0");
}
