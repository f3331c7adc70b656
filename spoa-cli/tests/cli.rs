//! End-to-end tests of the `spoa` binary: agents run as child processes on 127.0.0.1 (or a
//! Unix socket), every wait is bounded, and children are killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;
use spop_proto::frame::{AgentHello, Disconnect};
use spop_proto::{FrameType, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_spoa");
/// Longest any single command may run.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A long-running `spoa` process (an agent), killed on drop.
struct Agent {
    child: Child,
    addr: String,
}

impl Agent {
    /// Starts `spoa ARGS` and waits for its `listening on ADDR` line.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spoa");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                }
                // keep draining so the child never blocks on a full pipe
            }
        });
        let mut agent = Self {
            child,
            addr: String::new(),
        };
        agent.addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("agent did not print its address");
        agent
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (bounded).
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(&self) -> bool {
        self.status.success()
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `spoa ARGS` to completion (killed after RUN_LIMIT), feeding `stdin`.
fn spoa_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoa");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spoa {args:?} did not finish within {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn spoa(args: &[&str]) -> Output {
    spoa_with_input(args, b"")
}

/// A unique path in the temp dir (short enough for a Unix socket).
fn temp_path(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "spoa-cli-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn echo() -> Agent {
    Agent::start(&["echo", "--listen", "127.0.0.1:0"])
}

// ---------------------------------------------------------------------------------------------
// echo + client

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "echo",
        "client",
        "check",
        "decode",
        "replay",
        "bench",
        "null-agent",
        "explain",
        "config",
        "lint",
        "tap",
    ] {
        let out = spoa(&[sub, "--help"]);
        assert!(out.ok(), "{sub}: {out:?}");
        assert!(out.stdout.contains("Usage: spoa"), "{sub}: {out:?}");
        // the long help (the doc comment after its first paragraph) reaches --help
        let short = spoa(&[sub, "-h"]);
        assert!(
            out.stdout.len() > short.stdout.len(),
            "{sub}: --help is not longer than -h:\n{out:?}"
        );
    }
    let top = spoa(&["--help"]);
    assert!(top.ok() && top.stdout.contains("RUST_LOG"), "{top:?}");
    // what each long help must say
    for (sub, needle) in [
        ("echo", "arg0"),
        ("echo", "RUST_LOG"),
        ("decode", "`#` comments"),
        ("decode", "not valid hex"),
        ("replay", "Skipped: agent-side frames"),
        ("replay", "Added: a HELLO"),
        ("bench", "one per available core"),
        ("echo", "one per available core"),
        ("null-agent", "one per available core"),
    ] {
        let out = spoa(&[sub, "--help"]);
        assert!(
            out.stdout.contains(needle),
            "{sub} --help lacks {needle:?}:\n{out:?}"
        );
    }
}

const ALL_TYPES: &[&str] = &[
    "--arg",
    "ip=ipv4:127.0.0.1",
    "--arg",
    "v6=ipv6:2001:db8::1",
    "--arg",
    "neg=int32:-5",
    "--arg",
    "n=int64:-1",
    "--arg",
    "u32=uint32:4294967295",
    "--arg",
    "u64=uint64:18446744073709551615",
    "--arg",
    "empty=str:",
    "--arg",
    "s=str:GET /a b",
    "--arg",
    "b=bin:00ff0000",
    "--arg",
    "t=bool:true",
    "--arg",
    "f=bool:false",
    "--arg",
    "nothing=null",
    "--arg",
    "=int64:7",
    "--arg",
    "=str:unnamed",
];

#[test]
fn echo_client_round_trip_every_type() {
    let agent = echo();
    let mut args = vec!["client", "--connect", &agent.addr, "--message", "m"];
    args.extend_from_slice(ALL_TYPES);
    let out = spoa(&args);
    assert!(out.ok(), "{out:?}");
    let expected = [
        "negotiated: version 2.0, max-frame-size 16380, capabilities pipelining",
        "ACK stream-id 1, frame-id 1: 14 actions",
        "  set-var txn.ip = ipv4:127.0.0.1",
        "  set-var txn.v6 = ipv6:2001:db8::1",
        "  set-var txn.neg = int32:-5",
        "  set-var txn.n = int64:-1",
        "  set-var txn.u32 = uint32:4294967295",
        "  set-var txn.u64 = uint64:18446744073709551615",
        "  set-var txn.empty = str:\"\"",
        "  set-var txn.s = str:\"GET /a b\"",
        "  set-var txn.b = bin:00ff0000",
        "  set-var txn.t = bool:true",
        "  set-var txn.f = bool:false",
        "  set-var txn.nothing = null",
        "  set-var txn.arg12 = int64:7",
        "  set-var txn.arg13 = str:\"unnamed\"",
        "agent disconnect: status normal (0), message \"normal\"",
    ];
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, expected, "{out:?}");
}

/// `--header` builds a `req.hdrs_bin` block; echo maps `client-ip` (refused by HAProxy) to
/// `client_ip`; `decode` shows the echoed block as headers.
#[test]
fn client_header_block_and_echo_name_mapping() {
    let agent = echo();
    let out = spoa(&[
        "client",
        "--connect",
        &agent.addr,
        "--message",
        "check-request",
        "--arg",
        "client-ip=ipv4:10.0.0.1",
        "--header",
        "Host: example.com",
        "--header",
        "User-Agent: curl/8",
    ]);
    assert!(out.ok(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        &lines[1..4],
        [
            "ACK stream-id 1, frame-id 1: 2 actions",
            "  set-var txn.client_ip = ipv4:10.0.0.1",
            // 07 host 0b example.com 0a user-agent 06 curl/8 00 00
            "  set-var txn.hdrs = bin:04686f73740b6578616d706c652e636f6d0a757365722d6167656e74066375726c2f380000",
        ],
        "{out:?}"
    );
    let help = spoa(&["echo", "--help"]);
    assert!(help.stdout.contains("client_ip"), "{help:?}");

    let frame = "00 00 00 42 03 00 00 00 01 01 01 0d \"check-request\" 01 04 \"hdrs\" 09                  25 04 \"host\" 0b \"example.com\" 0a \"user-agent\" 06 \"curl/8\" 00 00";
    let out = spoa_with_input(&["decode", "-"], frame.as_bytes());
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains(
            "header block (2 headers):\n        host: example.com\n        user-agent: curl/8\n"
        ),
        "{out:?}"
    );
}

#[test]
fn echo_client_json_every_type() {
    let agent = echo();
    let mut args = vec![
        "client",
        "--connect",
        &agent.addr,
        "--message",
        "m",
        "--json",
        "--repeat",
        "3",
    ];
    args.extend_from_slice(ALL_TYPES);
    let out = spoa(&args);
    assert!(out.ok(), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["negotiated"]["version"], "2.0");
    assert_eq!(doc["negotiated"]["max_frame_size"], 16380);
    assert_eq!(doc["negotiated"]["capabilities"], "pipelining");
    assert_eq!(doc["negotiated"]["pipelining"], true);
    let acks = doc["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 3);
    let mut sids: Vec<u64> = acks
        .iter()
        .map(|a| a["stream_id"].as_u64().unwrap())
        .collect();
    sids.sort_unstable();
    assert_eq!(sids, [1, 3, 5]);
    for ack in acks {
        assert_eq!(ack["frame_id"], 1);
        let actions = ack["actions"].as_array().unwrap();
        assert_eq!(actions.len(), 14);
        let get = |name: &str| {
            let a = actions
                .iter()
                .find(|a| a["name"] == name)
                .unwrap_or_else(|| panic!("no action for {name}"));
            assert_eq!(a["action"], "set-var");
            assert_eq!(a["scope"], "txn");
            (
                a["value"]["type"].as_str().unwrap().to_string(),
                a["value"]["value"].clone(),
            )
        };
        assert_eq!(get("ip"), ("ipv4".into(), Value::from("127.0.0.1")));
        assert_eq!(get("v6"), ("ipv6".into(), Value::from("2001:db8::1")));
        assert_eq!(get("neg"), ("int32".into(), Value::from(-5)));
        assert_eq!(get("n"), ("int64".into(), Value::from(-1)));
        assert_eq!(get("u32"), ("uint32".into(), Value::from(4_294_967_295u64)));
        let (ty, v) = get("u64");
        assert_eq!(ty, "uint64");
        assert_eq!(v.as_u64(), Some(u64::MAX));
        assert_eq!(get("empty"), ("str".into(), Value::from("")));
        assert_eq!(get("s"), ("str".into(), Value::from("GET /a b")));
        assert_eq!(get("b"), ("bin".into(), Value::from("00ff0000")));
        assert_eq!(get("t"), ("bool".into(), Value::from(true)));
        assert_eq!(get("f"), ("bool".into(), Value::from(false)));
        assert_eq!(get("nothing"), ("null".into(), Value::Null));
        assert_eq!(get("arg12"), ("int64".into(), Value::from(7)));
        assert_eq!(get("arg13"), ("str".into(), Value::from("unnamed")));
    }
    assert_eq!(doc["disconnect"]["status"], 0);
    assert_eq!(doc["disconnect"]["message"], "normal");
}

#[test]
fn echo_options_scope_and_no_pipelining() {
    let agent = Agent::start(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--scope",
        "sess",
        "--no-pipelining",
        "--max-frame-size",
        "4096",
    ]);
    let out = spoa(&[
        "client",
        "--connect",
        &agent.addr,
        "--message",
        "m",
        "--arg",
        "x=int64:1",
        "--repeat",
        "3",
    ]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout
            .starts_with("negotiated: version 2.0, max-frame-size 4096, capabilities \"\"\n"),
        "{out:?}"
    );
    // no pipelining: strictly one at a time, so in order
    let acks: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("ACK"))
        .collect();
    assert_eq!(
        acks,
        [
            "ACK stream-id 1, frame-id 1: 1 action",
            "ACK stream-id 3, frame-id 1: 1 action",
            "ACK stream-id 5, frame-id 1: 1 action"
        ]
    );
    assert_eq!(
        out.stdout.matches("  set-var sess.x = int64:1\n").count(),
        3
    );
}

#[test]
fn echo_pad_empty_ack() {
    let agent = Agent::start(&["echo", "--listen", "127.0.0.1:0", "--pad-empty-ack"]);
    let out = spoa(&["client", "--connect", &agent.addr, "--message", "empty"]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout
            .contains("ACK stream-id 1, frame-id 1: 1 action\n  unset-var txn.spoa_pad_ack\n"),
        "{out:?}"
    );
}

/// `spoa echo` plays bad days: `--fail error|panic` and `--delay` on selected NOTIFYs; the
/// runtime answers them with the fallback ACK, whose `spoa_error` says why.
#[test]
fn echo_bad_day_options() {
    let client = |agent: &Agent, path: &str| {
        let out = spoa(&[
            "client",
            "--connect",
            &agent.addr,
            "--message",
            "m",
            "--arg",
            &format!("path=str:{path}"),
        ]);
        assert!(out.ok(), "{out:?}");
        out.stdout
    };
    let agent = Agent::start(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--fail",
        "error",
        "--fail-which",
        "match:/bad",
    ]);
    assert!(client(&agent, "/good").contains("  set-var txn.path = str:\"/good\"\n"));
    assert!(client(&agent, "/x/bad").contains("  set-var txn.spoa_error = int64:1\n"));
    let agent = Agent::start(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--fail",
        "panic",
        "--error-var",
        "why",
    ]);
    assert!(client(&agent, "/any").contains("  set-var txn.why = int64:3\n"));
    let agent = Agent::start(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--processing-timeout",
        "100ms",
        "--delay",
        "5s",
        "--delay-which",
        "every:2",
    ]);
    assert!(client(&agent, "/1").contains("set-var txn.path"));
    let started = Instant::now();
    assert!(client(&agent, "/2").contains("  set-var txn.spoa_error = int64:2\n"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the fallback ACK waited for the delay"
    );
}

/// Settings that cannot work are refused before listening, naming the setting.
#[test]
fn echo_refuses_impossible_settings() {
    for (args, setting) in [
        (&["--handler-budget", "600ms"][..], "handler_budget"),
        (&["--max-in-flight", "0"][..], "max_in_flight"),
        (&["--error-var", "spoa-error"][..], "error_var"),
        (&["--delay-which", "every:2"][..], "--delay"),
        (&["--delay", "1s", "--delay-which", "often"][..], "often"),
    ] {
        let mut all = vec!["echo", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let out = spoa(&all);
        assert!(!out.ok(), "{args:?}: {out:?}");
        assert!(out.stderr.contains(setting), "{args:?}: {out:?}");
    }
}

#[test]
fn client_rejects_bad_arguments() {
    let out = spoa(&[
        "client",
        "--connect",
        "127.0.0.1:1",
        "--message",
        "m",
        "--arg",
        "x=int32:99999999999",
    ]);
    assert!(!out.ok());
    assert!(out.stderr.contains("invalid int32 value"), "{out:?}");
}

#[test]
fn unix_socket_echo_and_client() {
    let path = temp_path("echo.sock");
    // a stale socket file left by a dead agent must not prevent the start
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let path_s = path.to_str().unwrap().to_string();
    let mut agent = Agent::start(&["echo", "--listen", &format!("unix:{path_s}")]);
    assert_eq!(agent.addr, format!("unix:{path_s}"));
    for connect in [format!("unix:{path_s}"), path_s.clone()] {
        let out = spoa(&[
            "client",
            "--connect",
            &connect,
            "--message",
            "m",
            "--arg",
            "ip=ipv6:::1",
        ]);
        assert!(out.ok(), "{out:?}");
        assert!(
            out.stdout.contains("  set-var txn.ip = ipv6:::1\n"),
            "{out:?}"
        );
    }
    let out = spoa(&["check", "--connect", &path_s]);
    assert!(out.ok(), "{out:?}");
    // graceful stop on SIGTERM removes the socket file
    let st = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = agent
        .wait_exit(Duration::from_secs(15))
        .expect("echo did not stop on SIGTERM");
    assert!(st.success(), "{st}");
    assert!(!path.exists());
}

#[test]
fn echo_stops_gracefully_on_sigint() {
    let mut agent = echo();
    let st = Command::new("kill")
        .args(["-INT", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = agent
        .wait_exit(Duration::from_secs(15))
        .expect("echo did not stop on SIGINT");
    assert!(st.success(), "{st}");
}

// ---------------------------------------------------------------------------------------------
// check

#[test]
fn check_healthy_echo() {
    let agent = echo();
    let out = spoa(&["check", "--connect", &agent.addr]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout
            .starts_with("healthy: version 2.0, max-frame-size 16380, capabilities "),
        "{out:?}"
    );
}

#[test]
fn check_healthy_null_agent() {
    let agent = Agent::start(&["null-agent", "--listen", "127.0.0.1:0"]);
    let out = spoa(&["check", "--connect", &agent.addr]);
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        out.stdout,
        "healthy: version 2.0, max-frame-size 16380, capabilities pipelining\n"
    );
}

/// A fake agent: reads the 82-byte health-check HELLO, checks it, answers `reply`, closes.
fn broken_agent(reply: Vec<u8>) -> (String, thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = vec![0u8; 82];
        s.read_exact(&mut hello).unwrap();
        let _ = s.write_all(&reply);
        thread::sleep(Duration::from_millis(100));
        hello
    });
    (addr, h)
}

fn agent_hello() -> Vec<u8> {
    let mut b = BytesMut::new();
    AgentHello::new(16380, "pipelining").encode(&mut b);
    b.to_vec()
}

#[test]
fn check_sends_haproxy_health_check_hello() {
    let (addr, h) = broken_agent(agent_hello());
    let out = spoa(&["check", "--connect", &addr]);
    assert!(out.ok(), "{out:?}");
    let hello = h.join().unwrap();
    // HAProxy's spop-check HELLO: length 78, HAPROXY-HELLO, FIN, ids 00 00, ... healthcheck true
    assert_eq!(&hello[..11], &[0, 0, 0, 0x4e, 1, 0, 0, 0, 1, 0, 0]);
    assert_eq!(&hello[hello.len() - 13..], b"\x0bhealthcheck\x11");
}

#[test]
fn check_unhealthy_garbage() {
    let (addr, _h) = broken_agent(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
    let out = spoa(&["check", "--connect", &addr]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stdout.starts_with("unhealthy: "), "{out:?}");
    assert!(
        out.stdout.contains("exceeds the maximum of 16380"),
        "{out:?}"
    );
}

#[test]
fn check_unhealthy_flags_zero() {
    let mut reply = agent_hello();
    reply[5..9].copy_from_slice(&[0, 0, 0, 0]);
    let (addr, _h) = broken_agent(reply);
    let out = spoa(&["check", "--connect", &addr]);
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stdout
            .contains("flags are 0x00000000, HAProxy requires exactly 0x00000001"),
        "{out:?}"
    );
}

#[test]
fn check_unhealthy_missing_capabilities() {
    let mut b = BytesMut::new();
    let mut hello = AgentHello::new(16380, "");
    hello.capabilities = None;
    hello.encode(&mut b);
    let (addr, _h) = broken_agent(b.to_vec());
    let out = spoa(&["check", "--connect", &addr]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stdout.contains("capabilities missing"), "{out:?}");
}

#[test]
fn check_unhealthy_version_list() {
    let mut b = BytesMut::new();
    let mut hello = AgentHello::new(16380, "");
    hello.version = Some(b"2.0, 3.0");
    hello.encode(&mut b);
    let (addr, _h) = broken_agent(b.to_vec());
    let out = spoa(&["check", "--connect", &addr]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stdout.contains("is a list"), "{out:?}");
}

#[test]
fn check_unhealthy_frame_size_out_of_range() {
    let mut b = BytesMut::new();
    AgentHello::new(128, "").encode(&mut b);
    let (addr, _h) = broken_agent(b.to_vec());
    let out = spoa(&["check", "--connect", &addr]);
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stdout.contains("max-frame-size 128 out of range"),
        "{out:?}"
    );
}

#[test]
fn check_unhealthy_agent_disconnect() {
    let mut b = BytesMut::new();
    Disconnect::encode(
        &mut b,
        FrameType::AGENT_DISCONNECT,
        StatusCode::BAD_VERSION,
        "no thanks",
    );
    let (addr, _h) = broken_agent(b.to_vec());
    let out = spoa(&["check", "--connect", &addr]);
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stdout
            .contains("status unsupported version (8), message \"no thanks\""),
        "{out:?}"
    );
}

#[test]
fn check_unhealthy_closed_and_refused() {
    let (addr, _h) = broken_agent(Vec::new());
    let out = spoa(&["check", "--connect", &addr]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stdout.contains("closed the connection"), "{out:?}");

    // nothing listens on a port we just released
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = spoa(&["check", "--connect", &format!("127.0.0.1:{port}")]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stdout.contains("cannot connect"), "{out:?}");
}

#[test]
fn check_unhealthy_silent_agent_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        thread::sleep(Duration::from_millis(1500));
        drop(s);
    });
    let start = Instant::now();
    let out = spoa(&["check", "--connect", &addr, "--timeout", "300ms"]);
    assert!(!out.ok(), "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(out.stdout.contains("unhealthy: "), "{out:?}");
    h.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// decode

/// The worked frames of spop-notes.md §4 (plus the full 82-byte spop-check HELLO), as hex
/// text with quoted strings.
const WORKED: &str = r#"
# HAPROXY-HELLO (3.x shape, engine-id omitted)
00 00 00 4b 01 00 00 00 01 00 00
12 "supported-versions" 08 03 "2.0"   0e "max-frame-size" 03 fc f0 06   0c "capabilities" 08 0a "pipelining"
# spop-check HELLO (82 bytes)
00 00 00 4e 01 00 00 00 01 00 00
12 "supported-versions" 08 03 "2.0"   0e "max-frame-size" 03 fc f0 06   0c "capabilities" 08 00   0b "healthcheck" 11
# AGENT-HELLO
00 00 00 40 65 00 00 00 01 00 00 07 "version" 08 03 "2.0" 0e "max-frame-size" 03 fc f0 06
0c "capabilities" 08 0a "pipelining"
# NOTIFY sid=1 fid=1
00 00 00 20 03 00 00 00 01 01 01 0f "check-client-ip" 01 02 "ip" 06 c0 a8 00 01
# ACKs
00 00 00 15 67 00 00 00 01 01 01 01 03 02 08 "ip_score" 04 2a
00 00 00 0f 67 00 00 00 01 01 01 02 02 01 04 "flag"
00 00 00 17 67 00 00 00 01 01 01 01 03 02 01 "n" 04 ff f0 fe fe fe fe fe fe fe 0e
00 00 00 07 67 00 00 00 01 05 01
# AGENT-DISCONNECT
00 00 00 25 66 00 00 00 01 00 00 0b "status-code" 03 00 07 "message" 08 06 "normal"
"#;

const WORKED_DECODED: &str = "\
frame at offset 0: HAPROXY-HELLO (1), length 75, flags 0x00000001 (FIN), stream-id 0, frame-id 0
  supported-versions = str:\"2.0\"
  max-frame-size = uint32:16380
  capabilities = str:\"pipelining\"
frame at offset 79: HAPROXY-HELLO (1), length 78, flags 0x00000001 (FIN), stream-id 0, frame-id 0
  supported-versions = str:\"2.0\"
  max-frame-size = uint32:16380
  capabilities = str:\"\"
  healthcheck = bool:true
frame at offset 161: AGENT-HELLO (101), length 64, flags 0x00000001 (FIN), stream-id 0, frame-id 0
  version = str:\"2.0\"
  max-frame-size = uint32:16380
  capabilities = str:\"pipelining\"
frame at offset 229: NOTIFY (3), length 32, flags 0x00000001 (FIN), stream-id 1, frame-id 1
  message \"check-client-ip\" (1 arg)
    ip = ipv4:192.168.0.1
frame at offset 265: ACK (103), length 21, flags 0x00000001 (FIN), stream-id 1, frame-id 1
  set-var txn.ip_score = int64:42
frame at offset 290: ACK (103), length 15, flags 0x00000001 (FIN), stream-id 1, frame-id 1
  unset-var sess.flag
frame at offset 309: ACK (103), length 23, flags 0x00000001 (FIN), stream-id 1, frame-id 1
  set-var txn.n = int64:-1
frame at offset 336: ACK (103), length 7, flags 0x00000001 (FIN), stream-id 5, frame-id 1
  (no actions)
frame at offset 347: AGENT-DISCONNECT (102), length 37, flags 0x00000001 (FIN), stream-id 0, frame-id 0
  status-code = uint32:0
  message = str:\"normal\"
  status: normal (0)
";

#[test]
fn decode_worked_frames_from_stdin() {
    let out = spoa_with_input(&["decode"], WORKED.as_bytes());
    assert!(out.ok(), "{out:?}");
    assert_eq!(out.stdout, WORKED_DECODED);
}

#[test]
fn decode_worked_frames_json_and_binary_file() {
    // the same frames as a binary file: auto-detected, and with --bin
    let hex = spoa_with_input(&["decode", "--json"], WORKED.as_bytes());
    assert!(hex.ok(), "{hex:?}");
    let doc = hex.json();
    let frames = doc["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 9);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0);
    assert_eq!(frames[1]["kv"][3]["key"], "healthcheck");
    assert_eq!(frames[1]["kv"][3]["value"]["value"], true);
    assert_eq!(frames[3]["type"], "NOTIFY");
    assert_eq!(frames[3]["messages"][0]["name"], "check-client-ip");
    assert_eq!(
        frames[3]["messages"][0]["args"][0]["value"]["value"],
        "192.168.0.1"
    );
    assert_eq!(frames[6]["actions"][0]["value"]["value"], -1);
    assert_eq!(frames[8]["status"]["code"], 0);
    assert_eq!(frames[8]["status"]["reason"], "normal");

    let bytes = frame_bytes(WORKED);
    assert_eq!(bytes.len(), 388);
    let path = temp_path("worked.bin");
    std::fs::write(&path, &bytes).unwrap();
    let p = path.to_str().unwrap();
    for args in [vec!["decode", p], vec!["decode", "--bin", p]] {
        let out = spoa(&args);
        assert!(out.ok(), "{out:?}");
        assert_eq!(out.stdout, WORKED_DECODED);
    }
    let _ = std::fs::remove_file(path);
}

/// Hex text (as in WORKED) to bytes, independently of the binary under test.
fn frame_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap();
        let mut rest = line;
        while let Some(start) = rest.find('"') {
            for tok in rest[..start].split_whitespace() {
                out.push(u8::from_str_radix(tok, 16).unwrap());
            }
            let end = start + 1 + rest[start + 1..].find('"').unwrap();
            out.extend_from_slice(&rest.as_bytes()[start + 1..end]);
            rest = &rest[end + 1..];
        }
        for tok in rest.split_whitespace() {
            out.push(u8::from_str_radix(tok, 16).unwrap());
        }
    }
    out
}

#[test]
fn decode_malformed_reports_offset_and_status() {
    // a good empty ACK, then a set-var announcing 2 args
    let input =
        "00 00 00 07 67 00 00 00 01 05 01\n00 00 00 0d 67 00 00 00 01 01 01 01 02 02 01 6e 00\n";
    let out = spoa_with_input(&["decode", "--hex"], input.as_bytes());
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stdout.contains(
            "error at offset 11: ACK payload (stream-id 1, frame-id 1): action type 1 with 2 arguments\n  an agent would answer with status 4 (invalid frame received)\n"
        ),
        "{out:?}"
    );

    // a length prefix above the limit
    let out = spoa_with_input(&["decode"], b"00 00 40 00 03 00 00 00 01 01 01");
    assert!(!out.ok(), "{out:?}");
    assert_eq!(
        out.stdout,
        "error at offset 0: frame length 16384 exceeds the maximum of 16380\n  an agent would answer with status 3 (frame is too big)\n"
    );
    // ... which a larger limit accepts up to the missing bytes
    let out = spoa_with_input(
        &["decode", "--max-frame-size", "65536"],
        b"00 00 40 00 03 00 00 00 01 01 01",
    );
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stdout.contains("error at offset 0: incomplete frame"),
        "{out:?}"
    );

    // an unknown data type in a NOTIFY argument, reported in JSON
    let out = spoa_with_input(
        &["decode", "--json"],
        br#"00 00 00 0d 03 00 00 00 01 01 01 01 "m" 01 01 "a" 0e"#,
    );
    assert!(!out.ok(), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["errors"][0]["offset"], 0);
    assert_eq!(doc["errors"][0]["status"]["code"], 4);
    assert!(
        doc["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unknown data type 14")
    );
}

// ---------------------------------------------------------------------------------------------
// replay

const RECORDED: &str = r#"
# two NOTIFYs of one HAProxy 2.x stream (stream-id 7, frame-ids 1 and 2), no HELLO
00 00 00 20 03 00 00 00 01 07 01 0f "check-client-ip" 01 02 "ip" 06 c0 a8 00 01
00 00 00 17 03 00 00 00 01 07 02 01 "m" 03 00 04 05 01 "s" 08 00 01 "b" 09 02 00 00
"#;

#[test]
fn replay_recorded_notifies_against_echo() {
    let agent = echo();
    let path = temp_path("recorded.hex");
    std::fs::write(&path, RECORDED).unwrap();
    let p = path.to_str().unwrap();

    let out = spoa(&["replay", "--connect", &agent.addr, p]);
    assert!(out.ok(), "{out:?}");
    let o = &out.stdout;
    assert!(o.starts_with("-> HAPROXY-HELLO (added, "), "{out:?}");
    assert!(
        o.contains("   negotiated: version 2.0, max-frame-size 16380, capabilities pipelining\n")
    );
    assert!(
        o.contains("-> NOTIFY stream-id 7, frame-id 1 (36 bytes)\n"),
        "{out:?}"
    );
    assert!(
        o.contains("-> NOTIFY stream-id 7, frame-id 2 (27 bytes)\n"),
        "{out:?}"
    );
    assert!(o.contains("ACK (103), length 18, flags 0x00000001 (FIN), stream-id 7, frame-id 1\n  set-var txn.ip = ipv4:192.168.0.1\n"), "{out:?}");
    assert!(o.contains("stream-id 7, frame-id 2\n  set-var txn.arg0 = int64:5\n  set-var txn.s = str:\"\"\n  set-var txn.b = bin:0000\n"), "{out:?}");
    assert!(o.contains("<- frame at offset"), "{out:?}");
    assert!(o.contains("AGENT-DISCONNECT (102)"), "{out:?}");

    let out = spoa(&["replay", "--connect", &agent.addr, p, "--rewrite-ids"]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout
            .contains("-> NOTIFY stream-id 1, frame-id 1 (recorded as stream-id 7, frame-id 1)"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("-> NOTIFY stream-id 3, frame-id 1 (recorded as stream-id 7, frame-id 2)"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("stream-id 3, frame-id 1\n  set-var txn.arg0 = int64:5\n"),
        "{out:?}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn replay_with_recorded_hello_and_disconnect() {
    let agent = echo();
    let text = format!(
        "00 00 00 40 01 00 00 00 01 00 00 12 \"supported-versions\" 08 03 \"2.0\" 0e \"max-frame-size\" 03 f0 1c 0c \"capabilities\" 08 00\n{RECORDED}\n00 00 00 25 02 00 00 00 01 00 00 0b \"status-code\" 03 00 07 \"message\" 08 06 \"normal\"\n"
    );
    // max-frame-size f0 1c = 240 + (0x1c << 4) = 688
    let path = temp_path("session.hex");
    std::fs::write(&path, text).unwrap();
    let out = spoa(&["replay", "--connect", &agent.addr, path.to_str().unwrap()]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.starts_with(
            "-> HAPROXY-HELLO (recorded, 68 bytes, max-frame-size 688, capabilities \"\")"
        ),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("negotiated: version 2.0, max-frame-size 688, capabilities"),
        "{out:?}"
    );
    assert_eq!(out.stdout.matches("ACK (103)").count(), 2, "{out:?}");
    assert!(
        out.stdout.contains("-> HAPROXY-DISCONNECT (41 bytes)"),
        "{out:?}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn replay_skips_agent_side_frames() {
    let agent = echo();
    let path = temp_path("both-directions.hex");
    let text =
        format!("{RECORDED}\n00 00 00 07 67 00 00 00 01 07 01  # the agent's ACK, recorded too\n");
    std::fs::write(&path, text).unwrap();
    let out = spoa(&["replay", "--connect", &agent.addr, path.to_str().unwrap()]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout
            .contains("-- ACK at offset 63 skipped (an agent-side frame)\n"),
        "{out:?}"
    );
    assert_eq!(
        out.stdout.matches("<- frame at offset").count(),
        4,
        "{out:?}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn replay_times_out_without_ack() {
    // an agent that completes the handshake and then never answers
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        s.write_all(&agent_hello()).unwrap();
        thread::sleep(Duration::from_millis(1500));
    });
    let path = temp_path("timeout.hex");
    std::fs::write(&path, RECORDED).unwrap();
    let out = spoa(&[
        "replay",
        "--connect",
        &addr,
        path.to_str().unwrap(),
        "--timeout",
        "300ms",
    ]);
    assert!(!out.ok(), "{out:?}");
    assert!(out.stderr.contains("without ACK"), "{out:?}");
    h.join().unwrap();
    let _ = std::fs::remove_file(path);
}

// ---------------------------------------------------------------------------------------------
// bench and null-agent

fn bench_json(addr: &str) -> Value {
    let out = spoa(&[
        "bench",
        "--connect",
        addr,
        "--requests",
        "2000",
        "--connections",
        "2",
        "--pipeline",
        "8",
        "--json",
        "--quiet",
    ]);
    assert!(out.ok(), "{out:?}");
    out.json()
}

fn assert_clean_report(doc: &Value) {
    assert_eq!(doc["requests"], 2000, "{doc}");
    assert_eq!(doc["sent"], 2000, "{doc}");
    assert_eq!(doc["connections"], 2);
    assert_eq!(doc["pipeline"], 8);
    assert_eq!(doc["pipelining"], true);
    assert!(doc["throughput_rps"].as_f64().unwrap() > 0.0, "{doc}");
    assert!(doc["duration_s"].as_f64().unwrap() > 0.0, "{doc}");
    assert_eq!(doc["errors"]["total"], 0, "{doc}");
    let lat = &doc["latency_us"];
    let p50 = lat["p50"].as_f64().unwrap();
    let p99 = lat["p99"].as_f64().unwrap();
    let max = lat["max"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{doc}");
}

#[test]
fn bench_against_echo() {
    let agent = echo();
    assert_clean_report(&bench_json(&agent.addr));
}

#[test]
fn bench_against_null_agent() {
    let agent = Agent::start(&["null-agent", "--listen", "127.0.0.1:0"]);
    assert_clean_report(&bench_json(&agent.addr));
}

#[test]
fn bench_null_agent_alias_and_text_report() {
    let agent = Agent::start(&["bench", "--null-agent", "--listen", "127.0.0.1:0"]);
    let out = spoa(&[
        "bench",
        "--connect",
        &agent.addr,
        "--duration",
        "300ms",
        "--pipeline",
        "4",
        "--message",
        "m",
        "--arg",
        "x=str:hello",
    ]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("throughput  "), "{out:?}");
    assert!(out.stdout.contains("latency     p50 "), "{out:?}");
    assert!(out.stdout.contains("errors      none"), "{out:?}");
}

#[test]
fn bench_without_pipelining_uses_one_in_flight() {
    let agent = Agent::start(&["echo", "--listen", "127.0.0.1:0", "--no-pipelining"]);
    let out = spoa(&[
        "bench",
        "--connect",
        &agent.addr,
        "--requests",
        "200",
        "--pipeline",
        "8",
        "--json",
        "--quiet",
    ]);
    assert!(out.ok(), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["pipelining"], false);
    assert_eq!(doc["requests"], 200);
    assert_eq!(doc["errors"]["total"], 0);
}

#[test]
fn bench_counts_connect_errors() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = spoa(&[
        "bench",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--requests",
        "10",
        "--connections",
        "2",
        "--json",
        "--quiet",
    ]);
    assert!(!out.ok(), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["errors"]["connect"], 2);
    assert_eq!(doc["requests"], 0);
}

// ---------------------------------------------------------------------------------------------
// coherence: hex errors, spaced bin args, bench without completions, HTTP peers, --json

#[test]
fn decode_reports_text_that_is_not_hex() {
    let out = spoa_with_input(&["decode"], b"hello world\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("not valid hex at line 1"), "{out:?}");
    assert!(!out.stdout.contains("frame"), "read as binary: {out:?}");
    let out = spoa_with_input(&["decode"], b"# a comment\n00 00 00 07\n67 00 0\n");
    assert!(
        out.stderr.contains("line 3: odd number of hex digits"),
        "{out:?}"
    );
    let out = spoa_with_input(&["decode", "--json"], b"00 00\n00 zz\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["error"], "not valid hex");
    assert_eq!(doc["line"], 2);
    assert!(doc["message"].as_str().unwrap().contains("'z'"), "{doc}");
    // binary input is still detected
    let out = spoa_with_input(&["decode"], &[0, 0, 0, 7, 0x67, 0, 0, 0, 1, 1, 1]);
    assert!(out.ok(), "{out:?}");
}

#[test]
fn client_accepts_spaced_bin_values() {
    let agent = echo();
    let out = spoa(&[
        "client",
        "--connect",
        &agent.addr,
        "--message",
        "m",
        "--arg",
        "b=bin:00 ff 10",
        "--json",
    ]);
    assert!(out.ok(), "{out:?}");
    let doc = out.json();
    assert_eq!(
        doc["acks"][0]["actions"][0]["value"]["value"], "00ff10",
        "{doc}"
    );
}

#[test]
fn check_json_healthy_and_unhealthy() {
    let agent = echo();
    let out = spoa(&["check", "--json", "--connect", &agent.addr]);
    assert!(out.ok(), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["healthy"], true);
    assert_eq!(doc["negotiated"]["version"], "2.0");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = spoa(&["check", "--json", "--connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["healthy"], false);
    assert!(
        doc["error"].as_str().unwrap().contains("cannot connect"),
        "{doc}"
    );
}

/// A peer that answers every connection like an HTTP server.
fn http_peer() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    addr
}

#[test]
fn http_peer_gets_a_hint() {
    let addr = http_peer();
    let out = spoa(&["check", "--connect", &addr]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("the peer speaks HTTP"), "{out:?}");
    let out = spoa(&["client", "--connect", &addr, "--message", "m"]);
    assert!(out.stderr.contains("the peer speaks HTTP"), "{out:?}");
}

#[test]
fn bench_with_nothing_completed_fails_clearly_and_in_time() {
    // an HTTP peer: the handshake fails
    let addr = http_peer();
    let out = spoa(&["bench", "--connect", &addr, "--duration", "1s", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no request completed"), "{out:?}");
    assert!(out.stdout.contains("latency     none"), "{out:?}");
    let out = spoa(&[
        "bench",
        "--connect",
        &addr,
        "--duration",
        "1s",
        "--quiet",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.json()["latency_us"]["p50"].is_null(), "{out:?}");
    // a silent peer: the handshake wait ends with --duration, not --timeout
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = spoa(&[
        "bench",
        "--connect",
        &addr,
        "--duration",
        "500ms",
        "--timeout",
        "30s",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("500ms"),
        "the wait is not bounded by --duration: {out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{out:?}");
    drop(silent);
}

#[test]
fn replay_json() {
    let agent = echo();
    let path = temp_path("replay-json.hex");
    std::fs::write(
        &path,
        "# NOTIFY sid 1 fid 1: message m, arg n=int64:1\n00 00 00 0e 03 00 00 00 01 01 01 01 6d 01 01 6e 03 01\n",
    )
    .unwrap();
    let out = spoa(&[
        "replay",
        "--json",
        "--connect",
        &agent.addr,
        path.to_str().unwrap(),
    ]);
    assert!(out.ok(), "{out:?}");
    let doc = out.json();
    assert_eq!(doc["ok"], true, "{doc}");
    let events = doc["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["frame"]["type"] == "ACK" && e["frame"]["actions"][0]["name"] == "n"),
        "{doc}"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = spoa(&[
        "replay",
        "--json",
        "--connect",
        &format!("127.0.0.1:{port}"),
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.json()["ok"], false);
    let _ = std::fs::remove_file(path);
}

// ---------------------------------------------------------------------------------------------
// tap

#[test]
fn tap_stops_recording_at_the_size_limit_and_keeps_forwarding() {
    let agent = echo();
    let file = temp_path("limit.spoatap");
    let f = file.to_str().unwrap();
    let mut tap = Agent::start(&[
        "tap",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &agent.addr,
        "--record",
        f,
        "--max-bytes",
        "4096",
    ]);
    let out = spoa(&[
        "client",
        "--connect",
        &tap.addr,
        "--message",
        "m",
        "--arg",
        "s=str:0123456789abcdef",
        "--repeat",
        "100",
        "--json",
    ]);
    assert!(out.ok(), "forwarding stopped with the recording: {out:?}");
    assert_eq!(out.json()["acks"].as_array().unwrap().len(), 100);
    // an existing file is not overwritten without --force
    let again = spoa(&[
        "tap",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &agent.addr,
        "--record",
        f,
    ]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(again.stderr.contains("--force"), "{again:?}");
    unsafe_kill(tap.pid(), "TERM");
    assert!(
        tap.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= 4096, "{size} bytes");
    let out = spoa(&["decode", f]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("note: recording stopped"), "{out:?}");
    let _ = std::fs::remove_file(&file);
}

/// `kill -SIG pid` (the test crate has no libc binding).
fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

#[test]
fn tap_records_agent_side_garbage() {
    // an "agent" that answers the HELLO with text
    let (addr, _peer) = broken_agent(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
    let file = temp_path("garbage.spoatap");
    let f = file.to_str().unwrap();
    let mut tap = Agent::start(&[
        "tap",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &addr,
        "--record",
        f,
    ]);
    let out = spoa(&["check", "--connect", &tap.addr]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("the peer speaks HTTP"), "{out:?}");
    unsafe_kill(tap.pid(), "TERM");
    assert!(
        tap.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let out = spoa(&["decode", "--json", f]);
    assert!(out.ok(), "{out:?}");
    let doc = out.json();
    let kinds: Vec<&str> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"agent->haproxy garbage"), "{doc}");
    assert!(kinds.contains(&"haproxy->agent"), "{doc}");
    let _ = std::fs::remove_file(&file);
}

// ---------------------------------------------------------------------------------------------
// health, readiness, Unix-socket permissions

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port: (status, body), or None when nothing listens.
fn http(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

#[test]
fn healthz_across_a_graceful_shutdown() {
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(&["echo", "--listen", "127.0.0.1:0", "--admin", &admin]);
    assert_eq!(http(port, "/healthz"), Some((200, "ok\n".into())));
    let (code, metrics) = http(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("spoa_connections_accepted_total"),
        "{metrics}"
    );
    assert_eq!(http(port, "/other").map(|r| r.0), Some(404));

    // a connection that keeps the agent draining: NOTIFYs with big ACKs, never read
    let mut s = std::net::TcpStream::connect(&agent.addr).unwrap();
    let mut buf = BytesMut::new();
    spop_proto::frame::HaproxyHello::new(16380, "pipelining").encode(&mut buf);
    s.write_all(&buf).unwrap();
    let mut hello = [0u8; 4];
    s.read_exact(&mut hello).unwrap();
    let len = u32::from_be_bytes(hello) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    let big = vec![b'x'; 8000];
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let started = Instant::now();
    let mut sid = 1u64;
    // until the agent stops reading (its ACKs fill the socket buffers), at most 20 s
    loop {
        buf.clear();
        let mut b = spop_proto::Notify::builder(spop_proto::NotifyId::new(sid, 1));
        b.message("m").arg("s", spop_proto::TypedData::String(&big));
        b.build().encode(&mut buf);
        sid += 2;
        if s.write_all(&buf).is_err() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent kept reading"
        );
    }
    unsafe_kill(agent.pid(), "TERM");
    let draining = (0..100).find_map(|_| {
        thread::sleep(Duration::from_millis(20));
        http(port, "/healthz").filter(|r| r.0 == 503)
    });
    assert_eq!(draining, Some((503, "draining\n".into())));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "exited while draining"
    );
    // the last connection goes: the agent stops, and so does its admin endpoint
    drop(s);
    let st = agent.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert_eq!(http(port, "/healthz"), None);
}

#[test]
fn systemd_notifications_ready_watchdog_stopping() {
    use std::os::unix::net::UnixDatagram;
    for abstract_ns in [false, true] {
        let path = temp_path("notify.sock");
        let (sock, env) = if abstract_ns {
            use std::os::linux::net::SocketAddrExt;
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        } else {
            (
                UnixDatagram::bind(&path).unwrap(),
                path.display().to_string(),
            )
        };
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["echo", "--listen", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", &env)
            .env("WATCHDOG_USEC", "200000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let recv = || {
            let mut b = [0u8; 256];
            let n = sock.recv(&mut b).expect("a notification within 10 s");
            String::from_utf8_lossy(&b[..n]).into_owned()
        };
        assert_eq!(recv(), "READY=1");
        assert_eq!(recv(), "WATCHDOG=1");
        unsafe_kill(child.id(), "TERM");
        let mut last = recv();
        while last == "WATCHDOG=1" {
            last = recv();
        }
        assert_eq!(last, "STOPPING=1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let st = child.try_wait().unwrap();
        let _ = child.kill();
        assert!(st.is_some_and(|s| s.success()), "{st:?}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn unix_socket_mode_owner_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = temp_path("perm.sock");
    let p = path.to_str().unwrap();
    let agent = Agent::start(&[
        "echo",
        "--listen",
        p,
        "--unix-mode",
        "660",
        "--unix-owner",
        "nobody",
        "--unix-group",
        "65534",
    ]);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert!(spoa(&["check", "--connect", p]).ok());
    drop(agent);
    let _ = std::fs::remove_file(&path);

    let out = spoa(&["echo", "--listen", p, "--unix-group", "no-such-group-spoa"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot find group no-such-group-spoa on the socket"),
        "{out:?}"
    );
    assert!(!path.exists(), "the socket file was left behind");
    let out = spoa(&["echo", "--listen", "127.0.0.1:0", "--unix-mode", "600"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("need a Unix socket"), "{out:?}");
    let out = spoa(&["echo", "--listen", p, "--unix-mode", "9"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn tap_with_the_agent_down_and_connections_open_at_shutdown() {
    let file = temp_path("down.spoatap");
    let f = file.to_str().unwrap();
    let down = format!("127.0.0.1:{}", free_port());
    let mut tap = Agent::start(&[
        "tap",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &down,
        "--record",
        f,
    ]);
    // the agent is down: the client's connection is closed, the tap lives on
    let out = spoa(&["check", "--connect", &tap.addr]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(tap.child.try_wait().unwrap().is_none(), "the tap exited");
    // a connection still open when the tap is stopped
    let agent = echo();
    let file2 = temp_path("open.spoatap");
    let f2 = file2.to_str().unwrap();
    let mut tap2 = Agent::start(&[
        "tap",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &agent.addr,
        "--record",
        f2,
    ]);
    let mut s = std::net::TcpStream::connect(&tap2.addr).unwrap();
    let mut hello = BytesMut::new();
    spop_proto::frame::HaproxyHello::new(16380, "pipelining").encode(&mut hello);
    s.write_all(&hello).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    unsafe_kill(tap2.pid(), "TERM");
    let st = tap2.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    drop(s);
    let out = spoa(&["decode", f2]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains("HAPROXY-HELLO") && out.stdout.contains("AGENT-HELLO"),
        "{out:?}"
    );
    unsafe_kill(tap.pid(), "TERM");
    assert!(
        tap.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    let out = spoa(&["decode", f]);
    assert!(
        out.stdout.contains("close: cannot connect to the agent"),
        "{out:?}"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&file2);
}
