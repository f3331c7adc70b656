//! Zero-loss restarts behind real HAProxy (2.6, 3.0, 3.2, 3.4: every series tools/haproxy-install
//! gives), under a steady HTTP load:
//!
//! - rolling restart: two `spoa echo` servers in one backend (`balance roundrobin`,
//!   `option spop-check`, `check inter 1s fall 2 rise 2`), each in turn stopped with SIGTERM
//!   and started again on its port; the lame duck must get it marked DOWN (health checks
//!   refused) while it still answers, before it closes;
//! - hot upgrade: one server; a second `spoa echo --reuse-port` starts on the same port, then
//!   the first one gets SIGTERM (and releases the port at once). On 3.x the agents run without
//!   pipelining here: with pipelining, HAProxy 3.x may have a second NOTIFY on the wire on a
//!   connection at the moment the old agent closes it after its last ACK, and that request
//!   fails (measured: 1 in about 24,000; see docs/scale-out.md);
//! - socket activation: `spoa echo --listen systemd` serves a socket passed as fd 3.
//!
//! Every request must be answered by an agent (`path=<its path>`, no SPOE error), but for the
//! residual closing race ([`residual_race_allowed`]). Agents run with their defaults (lame
//! duck 7 s). `SPOA_RESTART_AGENT_ARGS` adds `spoa echo` options,
//! e.g. `--lame-duck 0s` to see what a stop without lame duck loses (the lame-duck checks are
//! then skipped; the test fails on the lost requests and prints the figures).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use spop_tests::interop::{
    AgentProcess, HaproxyConfig, HaproxyInstance, free_port, haproxy, http_get, spoa_binary,
    wait_until,
};

const CLIENTS: usize = 4;
const UP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lame duck (7 s) + drain + exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// One at a time: each runs HAProxy, agents and a load on the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct Tally {
    ok: usize,
    lost: Vec<String>,
}

/// HTTP clients sending requests back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|t| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut tally = Tally::default();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let path = format!("/r/{t}/{i}");
                        match http_get(port, &path) {
                            Ok(r) if r.body == format!("path={path} spoe_error=\n") => {
                                tally.ok += 1
                            }
                            Ok(r) => tally
                                .lost
                                .push(format!("{path}: {} {:?}", r.status, r.body)),
                            Err(e) => tally.lost.push(format!("{path}: {e}")),
                        }
                        i += 1;
                        thread::sleep(Duration::from_millis(1));
                    }
                    tally
                })
            })
            .collect();
        Self { stop, clients }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for c in self.clients {
            let t = c.join().expect("client thread");
            all.ok += t.ok;
            all.lost.extend(t.lost);
        }
        all
    }
}

fn extra_args() -> Vec<String> {
    std::env::var("SPOA_RESTART_AGENT_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn echo(port: u16, more: &[&str]) -> AgentProcess {
    let listen = format!("127.0.0.1:{port}");
    let extra = extra_args();
    let mut args = vec!["echo", "--listen", listen.as_str()];
    args.extend_from_slice(more);
    args.extend(extra.iter().map(String::as_str));
    AgentProcess::start_with(&spoa_binary(), &args)
}

fn sigterm(agent: &AgentProcess) {
    let st = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM {}", agent.pid());
}

fn wait_exit(agent: &mut AgentProcess, what: &str) -> Duration {
    let t = Instant::now();
    let st = wait_until(STOP_TIMEOUT, || agent.exit_status()).unwrap_or_else(|| {
        panic!(
            "{what} did not exit within {STOP_TIMEOUT:?}\n{}",
            agent.log()
        )
    });
    assert!(st.success(), "{what} exited with {st}\n{}", agent.log());
    t.elapsed()
}

fn wait_state(hap: &HaproxyInstance, server: &str, up: bool) {
    if let Err(last) = hap.wait_for_server("be_agent", server, UP_TIMEOUT, |st| {
        if up {
            st.status == "UP" && st.check() == "L7OK"
        } else {
            st.status.starts_with("DOWN")
        }
    }) {
        panic!(
            "HAProxy {}: server {server} not {} within {UP_TIMEOUT:?} (last: {last:?})\n{}",
            hap.series(),
            if up { "UP" } else { "DOWN" },
            hap.diagnostics()
        );
    }
}

fn report(what: &str, series: &str, tally: &Tally) -> String {
    format!(
        "HAProxy {series}, {what}, spoa echo {}: {} requests answered by an agent, {} lost",
        if extra_args().is_empty() {
            "(defaults)".to_string()
        } else {
            extra_args().join(" ")
        },
        tally.ok,
        tally.lost.len()
    )
}

/// The closing race (docs/scale-out.md): HAProxy may have a NOTIFY on the wire on a
/// connection at the moment the stopping agent closes it after its last ACK (2.6 keeps using
/// its applets to a DOWN server; 3.x multiplexes with pipelining). SPOP cannot tell HAProxy to
/// stop using a connection first, so a request can fail with SPOE error 256 or 257. Measured:
/// 0 to 1 per scenario in about 25,000 to 46,000 requests. Allowed here: that failure only,
/// at most once per 10,000 requests (2 at least); anything else is a failure.
fn residual_race_allowed(tally: &Tally) -> bool {
    let race =
        |l: &String| l.ends_with("spoe_error=256\\n\"") || l.ends_with("spoe_error=257\\n\"");
    tally.lost.iter().all(race) && tally.lost.len() <= (tally.ok / 10_000).max(2)
}

fn check_tally(what: &str, series: &str, tally: &Tally, hap: &HaproxyInstance, logs: &str) {
    let line = report(what, series, tally);
    eprintln!("{line}");
    assert!(tally.ok > 100, "{line}: too little load to tell");
    let tolerated = extra_args().is_empty() && residual_race_allowed(tally);
    if !tally.lost.is_empty() && !tolerated {
        panic!(
            "{line}\nfirst lost: {:?}\n{}\n{logs}",
            &tally.lost[..tally.lost.len().min(5)],
            hap.diagnostics()
        );
    }
}

fn rolling_restart(series: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    haproxy(series);
    let ports = [free_port(), free_port()];
    let mut agents = [echo(ports[0], &[]), echo(ports[1], &[])];
    let second = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let hap = HaproxyInstance::start(
        series,
        &HaproxyConfig::restart(agents[0].addr(), Some(second)),
    );
    let names = ["agent", "agent2"];
    for n in names {
        wait_state(&hap, n, true);
    }
    let load = Load::start(hap.port());
    thread::sleep(Duration::from_secs(1));
    let mut logs = String::new();
    for i in 0..2 {
        sigterm(&agents[i]);
        if extra_args().is_empty() {
            // lame duck: refused health checks take it out of rotation while it still answers
            wait_state(&hap, names[i], false);
            assert!(
                agents[i].exit_status().is_none(),
                "{} exited before HAProxy marked it DOWN",
                names[i]
            );
        }
        let took = wait_exit(&mut agents[i], names[i]);
        logs.push_str(&format!(
            "--- {} (stopped in {took:?}) ---\n{}\n",
            names[i],
            agents[i].log()
        ));
        agents[i] = echo(ports[i], &[]);
        wait_state(&hap, names[i], true);
        thread::sleep(Duration::from_millis(500));
    }
    let tally = load.finish();
    check_tally("rolling restart of 2 agents", series, &tally, &hap, &logs);
}

fn hot_upgrade(series: &str, agent_args: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    haproxy(series);
    let port = free_port();
    let mut old = echo(port, agent_args);
    let hap = HaproxyInstance::start(series, &HaproxyConfig::restart(old.addr(), None));
    wait_state(&hap, "agent", true);
    let load = Load::start(hap.port());
    thread::sleep(Duration::from_secs(1));
    let new = echo(port, agent_args);
    thread::sleep(Duration::from_millis(300));
    sigterm(&old);
    let took = wait_exit(&mut old, "the old instance");
    thread::sleep(Duration::from_secs(1));
    let tally = load.finish();
    wait_state(&hap, "agent", true);
    let logs = format!(
        "--- old (stopped in {took:?}) ---\n{}\n--- new ---\n{}",
        old.log(),
        new.log()
    );
    let what = format!("hot upgrade on one port ({})", agent_args.join(" "));
    check_tally(&what, series, &tally, &hap, &logs);
}

#[test]
fn rolling_restart_haproxy_2_6() {
    rolling_restart("2.6");
}

#[test]
fn rolling_restart_haproxy_3_2() {
    rolling_restart("3.2");
}

#[test]
fn rolling_restart_haproxy_3_4() {
    rolling_restart("3.4");
}

#[test]
fn hot_upgrade_haproxy_2_6() {
    hot_upgrade("2.6", &["--reuse-port"]);
}

#[test]
fn hot_upgrade_haproxy_3_2() {
    hot_upgrade("3.2", &["--reuse-port", "--no-pipelining"]);
}

#[test]
fn hot_upgrade_haproxy_3_4() {
    hot_upgrade("3.4", &["--reuse-port", "--no-pipelining"]);
}

/// `spoa echo --listen systemd` serves a listening socket passed as fd 3 with `LISTEN_FDS=1`
/// and `LISTEN_PID` set to its own pid, as systemd does (a small Python launcher binds the
/// socket, moves it to fd 3 and execs the agent, keeping the pid), and HAProxy 3.2 uses it.
#[test]
fn socket_activation_is_served() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    haproxy("3.2");
    let bin = spoa_binary();
    let launcher = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
s.listen(64)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], [sys.argv[1], "echo", "--listen", "systemd"])
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", launcher]).arg(&bin);
    let agent = AgentProcess::spawn(&mut cmd, "spoa echo --listen systemd", 64 * 1024);
    let hap = HaproxyInstance::start("3.2", &HaproxyConfig::restart(agent.addr(), None));
    wait_state(&hap, "agent", true);
    for i in 0..5 {
        let path = format!("/activated/{i}");
        let r = http_get(hap.port(), &path).expect("GET");
        assert_eq!(
            r.body,
            format!("path={path} spoe_error=\n"),
            "{}",
            hap.diagnostics()
        );
    }
}

#[test]
fn rolling_restart_haproxy_3_0() {
    rolling_restart("3.0");
}

#[test]
fn hot_upgrade_haproxy_3_0() {
    hot_upgrade("3.0", &["--reuse-port"]);
}
