//! The deployment recipes of docs/deploy.md, tested as far as this machine allows:
//!
//! - the systemd units pass `systemd-analyze verify` (with ExecStart pointing at the `spoa`
//!   built here) and score "OK" or better in `systemd-analyze security --offline=true`;
//! - their ExecStart command lines run: the agent starts, sends READY=1 over NOTIFY_SOCKET
//!   like systemd expects of `Type=notify`, answers `/healthz`, and STOPPING=1 on SIGTERM;
//! - the Containerfile's ENTRYPOINT runs and its HEALTHCHECK (`spoa check`) passes against it,
//!   and fails once the agent is gone.
//!
//! Not tested here (no systemd as PID 1, no container daemon): systemd actually starting the
//! unit, the sandboxing at run time, and building or running the image.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spop_tests::interop::{TempDir, free_port, spoa_binary, workspace_root};

fn deploy_file(name: &str) -> String {
    let p = workspace_root().join("docs/deploy").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `systemd-analyze`, or a failure saying how to get it.
fn systemd_analyze() -> PathBuf {
    for d in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = PathBuf::from(d).join("systemd-analyze");
        if p.exists() {
            return p;
        }
    }
    panic!("systemd-analyze is missing: install it with `apt-get install systemd` (as root)");
}

/// The unit with ExecStart's `/usr/local/bin/spoa` replaced by the binary under test.
fn render(unit: &str, dir: &TempDir) -> PathBuf {
    let text = deploy_file(unit).replace(
        "/usr/local/bin/spoa",
        spoa_binary().to_str().expect("UTF-8 path"),
    );
    let p = dir.path().join(unit);
    std::fs::write(&p, text).unwrap();
    p
}

fn exec_start_args(unit: &str) -> Vec<String> {
    let text = deploy_file(unit);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
    let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert_eq!(words.remove(0), "/usr/local/bin/spoa");
    words
}

#[test]
fn units_pass_systemd_analyze_verify_and_security() {
    let tool = systemd_analyze();
    let dir = TempDir::new("units");
    for unit in [
        "spoa-echo.service",
        "spoa-echo-unix.service",
        "spoa-echo-activated.service",
    ] {
        let p = render(unit, &dir);
        let mut verify = Command::new(&tool);
        verify.arg("verify").arg(&p);
        if unit == "spoa-echo-activated.service" {
            // the service requires its socket unit: verify the pair together
            verify.arg(render("spoa-echo-activated.socket", &dir));
        }
        let out = verify.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{unit}: {text}");
        assert!(
            text.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{text}"
        );
        let out = Command::new(&tool)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&p)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for"))
            .and_then(|(_, rest)| rest.split(": ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
        assert!(score <= 2.0, "{unit}: exposure {score}\n{text}");
    }
}

/// Runs `spoa ARGS` with addresses replaced by free loopback ports and NOTIFY_SOCKET set.
#[test]
fn unit_command_line_runs_and_notifies_systemd() {
    let dir = TempDir::new("unit-run");
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (agent_port, admin_port) = (free_port(), free_port());
    let args: Vec<String> = exec_start_args("spoa-echo.service")
        .into_iter()
        .map(|a| {
            a.replace("127.0.0.1:12345", &format!("127.0.0.1:{agent_port}"))
                .replace("127.0.0.1:9100", &format!("127.0.0.1:{admin_port}"))
        })
        .collect();
    let mut child = Command::new(spoa_binary())
        .args(&args)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "10000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    let mut s = TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
    let check = Command::new(spoa_binary())
        .args(["check", "--connect", &format!("127.0.0.1:{agent_port}")])
        .output()
        .unwrap();
    assert!(check.status.success());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut got = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if got.last().is_some_and(|m| m == "STOPPING=1") {
            break;
        }
    }
    assert_eq!(
        got.last().map(String::as_str),
        Some("STOPPING=1"),
        "{got:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = child.try_wait().unwrap();
    let _ = child.kill();
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}

/// The JSON-array form of a Containerfile instruction, e.g. `["spoa", "check", ...]`.
fn json_array(instruction: &str) -> Vec<String> {
    let text = deploy_file("Containerfile").replace("\\\n", " ");
    let line = text
        .lines()
        .find(|l| l.starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction} in the Containerfile"));
    let arr = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
    arr.trim_matches(['[', ']'])
        .split(',')
        .map(|w| w.trim().trim_matches('"').to_string())
        .collect()
}

#[test]
fn container_entrypoint_and_healthcheck_work() {
    let (agent_port, admin_port) = (free_port(), free_port());
    let mut entry = json_array("ENTRYPOINT");
    assert_eq!(entry.remove(0), "spoa");
    let entry: Vec<String> = entry
        .into_iter()
        .map(|a| {
            a.replace("0.0.0.0:12345", &format!("127.0.0.1:{agent_port}"))
                .replace("0.0.0.0:9100", &format!("127.0.0.1:{admin_port}"))
        })
        .collect();
    let mut health = json_array("HEALTHCHECK");
    // HEALTHCHECK ... CMD ["spoa", "check", ...]
    assert_eq!(health.remove(0), "spoa");
    assert_eq!(health[0], "check");
    let health: Vec<String> = health
        .into_iter()
        .map(|a| a.replace("127.0.0.1:12345", &format!("127.0.0.1:{agent_port}")))
        .collect();
    let run_check = || {
        Command::new(spoa_binary())
            .args(&health)
            .output()
            .unwrap()
            .status
            .code()
    };
    let mut agent = Command::new(spoa_binary())
        .args(&entry)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthy = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        run_check() == Some(0)
    });
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        healthy,
        "the HEALTHCHECK never passed against the ENTRYPOINT"
    );
    assert_eq!(
        run_check(),
        Some(1),
        "the HEALTHCHECK passes without an agent"
    );
}
