//! `spoa tap` between real HAProxy (3.2, and 2.6 and 3.4) and `spoa echo`: HAProxy's traffic goes through the tap
//! unchanged (every reply is right), the recording decodes (`spoa decode`), and replaying it
//! against the agent (`spoa replay`) gives ACKs identical to the recorded ones. A client that
//! speaks HTTP to the tap is forwarded and recorded as garbage, and the tap survives it.
//!
//! HAProxy is located or installed by `spop_tests::interop::haproxy` and `spoa` built by
//! `spop_tests::interop::spoa_binary`; if either fails, the test fails (it never skips).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use spop_tests::interop::{AgentProcess, HaproxyConfig, HaproxyInstance, TempDir, spoa_binary};

const REQUESTS: usize = 12;

fn spoa(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(spoa_binary())
        .args(args)
        .output()
        .expect("run spoa");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stops a process with SIGTERM and waits (bounded) for it to exit.
fn terminate(p: &mut AgentProcess) {
    let _ = Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.exit_status().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        p.exit_status().is_some_and(|s| s.success()),
        "the tap did not stop cleanly on SIGTERM: {:?}\n{}",
        p.exit_status(),
        p.log()
    );
}

#[test]
fn tap_between_haproxy_3_2_and_echo_records_decodes_and_replays() {
    tap_record_decode_replay("3.2");
}

#[test]
fn tap_between_haproxy_2_6_and_echo_records_decodes_and_replays() {
    tap_record_decode_replay("2.6");
}

#[test]
fn tap_between_haproxy_3_4_and_echo_records_decodes_and_replays() {
    tap_record_decode_replay("3.4");
}

fn tap_record_decode_replay(series: &str) {
    let agent = AgentProcess::start_with(&spoa_binary(), &["echo", "--listen", "127.0.0.1:0"]);
    let dir = TempDir::new("tap");
    let file = dir.path().join("traffic.spoatap");
    let file_s = file.to_str().unwrap().to_owned();
    let agent_addr = agent.addr().to_string();
    let mut tap = AgentProcess::start_with(
        &spoa_binary(),
        &[
            "tap",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &agent_addr,
            "--record",
            &file_s,
        ],
    );

    // an HTTP client on the wrong port: forwarded, recorded as garbage, no crash
    let mut http = TcpStream::connect(tap.addr()).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = http.read_to_end(&mut reply);
    // the agent refused the "frame" with AGENT-DISCONNECT (type 102) and closed
    assert!(
        reply.len() > 5 && reply[4] == 102,
        "reply to HTTP: {reply:02x?}"
    );
    tap.alive().unwrap();

    let hap = HaproxyInstance::start(series, &HaproxyConfig::echo(tap.addr(), true));
    hap.wait_for_server("be_agent", "agent", Duration::from_secs(10), |st| {
        st.status == "UP" && st.check() == "L7OK"
    })
    .unwrap_or_else(|e| panic!("agent not UP through the tap: {e}\n{}", hap.diagnostics()));
    for i in 0..REQUESTS {
        let path = format!("/tap/{i}");
        let r = hap.get(&path).unwrap();
        assert_eq!(r.status, 200, "{}", hap.diagnostics());
        assert_eq!(
            r.body,
            format!("ip=127.0.0.1 str={path} n=-7\n"),
            "through the tap\n{}\n--- tap log\n{}",
            hap.diagnostics(),
            tap.log()
        );
    }
    // every SPOE exchange succeeded
    let (lines, _) = hap
        .wait_spoe_log(&["echo-agent"], REQUESTS, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("SPOE log lines missing\n{}", hap.diagnostics()));
    assert!(lines.iter().all(|l| l.status == "0"), "{lines:?}");
    drop(hap);
    terminate(&mut tap);
    assert!(tap.log().contains("recorded "), "{}", tap.log());

    // decode: every request's NOTIFY and its ACK, the garbage, and no malformed frame
    let (code, out, err) = spoa(&["decode", &file_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("bytes that are not SPOP frames (HTTP)"),
        "{out}"
    );
    for i in 0..REQUESTS {
        assert!(
            out.contains(&format!("str = str:\"/tap/{i}\"")),
            "/tap/{i}: {out}"
        );
    }
    let (code, out, err) = spoa(&["decode", "--json", &file_s]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let records = doc["records"].as_array().unwrap();
    let count = |kind: &str, ty: &str| {
        records
            .iter()
            .filter(|r| r["kind"] == kind && r["frame"]["type"] == ty)
            .count()
    };
    assert_eq!(count("haproxy->agent", "NOTIFY"), REQUESTS, "{doc}");
    assert_eq!(count("agent->haproxy", "ACK"), REQUESTS, "{doc}");
    assert!(
        count("haproxy->agent", "HAPROXY-HELLO") >= 2,
        "health checks and data"
    );
    assert!(records.iter().all(|r| r["time_us"].is_u64()));

    // replay against the same agent: identical ACKs
    let (code, out, err) = spoa(&["replay", "--json", "--connect", &agent_addr, &file_s]);
    let doc: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("replay output is not JSON ({e}): {out}{err}"));
    assert_eq!(code, 0, "{doc:#}\n{err}");
    assert_eq!(doc["ok"], true, "{doc:#}");
    assert_eq!(doc["different"], 0, "{doc:#}");
    assert_eq!(doc["missing"], 0, "{doc:#}");
    // each ACK, each AGENT-HELLO and the AGENT-DISCONNECT of the garbage connection
    assert!(
        doc["identical"].as_u64().unwrap() >= REQUESTS as u64 + 3,
        "{doc:#}"
    );
    let (code, out, _) = spoa(&["replay", "--connect", &agent_addr, &file_s]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 different, 0 missing"), "{out}");

    // replayed against an agent answering differently, every ACK differs and it fails
    let other = AgentProcess::start_with(
        &spoa_binary(),
        &["echo", "--listen", "127.0.0.1:0", "--scope", "sess"],
    );
    let (code, out, _) = spoa(&[
        "replay",
        "--json",
        "--connect",
        &other.addr().to_string(),
        &file_s,
    ]);
    assert_eq!(code, 1, "{out}");
    let doc: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(doc["different"], REQUESTS, "{doc:#}");
}
