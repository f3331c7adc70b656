//! `spoa config` output against real HAProxy: `haproxy -c` accepts it without warnings on 2.6,
//! 3.0, 3.2 and 3.4 (events and groups, with and without an application server), and the
//! generated pair runs: each series in front of `spoa echo` answers with the variables the
//! agent set.
//!
//! HAProxy is located or installed by `spop_tests::interop::haproxy` and `spoa` built by
//! `spop_tests::interop::spoa_binary`; if either fails, the tests fail (they never skip).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use spop_tests::interop::{
    AgentProcess, TempDir, config_warnings, free_port, haproxy, haproxy_check, http_get,
    spoa_binary, wait_until,
};

/// Runs `spoa config --out <dir> --force <args>` and panics with its output on failure.
fn spoa_config(dir: &Path, args: &[&str]) {
    let out = Command::new(spoa_binary())
        .arg("config")
        .arg("--out")
        .arg(dir)
        .arg("--force")
        .args(args)
        .output()
        .expect("run spoa config");
    assert!(
        out.status.success(),
        "spoa config {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `haproxy -c` of the generated config: valid, no warnings.
fn check_valid(series: &str, dir: &Path, what: &str) {
    let cfg = dir.join("haproxy.cfg");
    let (ok, text) = haproxy_check(series, &cfg, dir);
    let shown = || {
        format!(
            "{text}\n--- haproxy.cfg\n{}\n--- spoe.conf\n{}",
            std::fs::read_to_string(&cfg).unwrap_or_default(),
            std::fs::read_to_string(dir.join("spoe.conf")).unwrap_or_default()
        )
    };
    assert!(
        ok,
        "HAProxy {series} rejects the {what} config:\n{}",
        shown()
    );
    assert!(
        config_warnings(&text).is_empty(),
        "HAProxy {series} warns about the {what} config:\n{}",
        shown()
    );
}

fn check_series(series: &str) {
    let dir = TempDir::new(&format!("spoa-config-{series}"));
    let cases: [(&str, &[&str]); 4] = [
        ("event", &["--var", "verdict", "--var", "score"]),
        (
            "group",
            &[
                "--arg",
                "app=var(txn.app)",
                "--arg",
                "src=src",
                "--var",
                "verdict",
                "--server",
                "127.0.0.1:9000",
                "--also-agent",
                "127.0.0.1:12346",
            ],
        ),
        (
            "response",
            &[
                "--arg",
                "status=status",
                "--arg",
                "ct=res.hdr(content-type)",
                "--var",
                "x",
            ],
        ),
        (
            "unique-id and body",
            &[
                "--arg",
                "uid=unique-id",
                "--arg",
                "body=req.body",
                "--processing-timeout",
                "2s",
            ],
        ),
    ];
    for (what, args) in cases {
        let mut all = vec!["--series", series];
        all.extend_from_slice(args);
        spoa_config(dir.path(), &all);
        check_valid(series, dir.path(), what);
    }
}

#[test]
fn config_is_valid_on_2_6() {
    check_series("2.6");
}

#[test]
fn config_is_valid_on_3_0() {
    check_series("3.0");
}

#[test]
fn config_is_valid_on_3_2() {
    check_series("3.2");
}

#[test]
fn config_is_valid_on_3_4() {
    check_series("3.4");
}

/// The generated pair is runnable: HAProxy `series` + `spoa echo` answer a request with the
/// variables the agent set from the message arguments.
fn generated_config_runs(series: &str) {
    let agent = AgentProcess::start_with(&spoa_binary(), &["echo", "--listen", "127.0.0.1:0"]);
    let dir = TempDir::new("spoa-config-run");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let agent_addr = agent.addr().to_string();
    spoa_config(
        dir.path(),
        &[
            "--series",
            series,
            "--bind",
            &bind,
            "--agent",
            &agent_addr,
            "--arg",
            "src=src",
            "--arg",
            "path=path",
            "--var",
            "src",
            "--var",
            "path",
        ],
    );
    let mut child = Command::new(haproxy(series))
        .arg("-db")
        .arg("-f")
        .arg(dir.path().join("haproxy.cfg"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("haproxy.stderr")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start haproxy {series}: {e}"));
    let want = "agent: src=127.0.0.1 path=/generated error=\n";
    let got = wait_until(Duration::from_secs(10), || {
        http_get(port, "/generated").ok().filter(|r| r.body == want)
    });
    let last = http_get(port, "/generated").map(|r| r.body);
    let _ = child.kill();
    let _ = child.wait();
    let got = got.unwrap_or_else(|| {
        panic!(
            "no reply {want:?} from HAProxy {series} with the generated config (last: {last:?}); \
             HAProxy's stderr:\n{}\nagent log:\n{}",
            std::fs::read_to_string(dir.path().join("haproxy.stderr")).unwrap_or_default(),
            agent.log()
        )
    });
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("x-spoe-src"),
        None,
        "headers go to the server, not the client"
    );
}

#[test]
fn generated_config_runs_on_2_6() {
    generated_config_runs("2.6");
}

#[test]
fn generated_config_runs_on_3_0() {
    generated_config_runs("3.0");
}

#[test]
fn generated_config_runs_on_3_2() {
    generated_config_runs("3.2");
}

#[test]
fn generated_config_runs_on_3_4() {
    generated_config_runs("3.4");
}

/// The project's own HAProxy configs lint clean with `spoa lint --strict`: the test
/// templates (rendered like the interop tests render them) and the documented configs.
#[test]
fn shipped_configs_lint_clean() {
    let dir = TempDir::new("lint-shipped");
    let templates = spop_tests::interop::templates_dir();
    let mut files = Vec::new();
    for (cfg, spoe) in [
        ("haproxy.cfg.in", "spoe.conf.in"),
        ("haproxy-echo.cfg.in", "spoe-echo.conf.in"),
    ] {
        let read = |n: &str| std::fs::read_to_string(templates.join(n)).unwrap();
        let spoe_path = dir.path().join(spoe.trim_end_matches(".in"));
        std::fs::write(
            &spoe_path,
            read(spoe).replace("@PIPELINING@", "option pipelining"),
        )
        .unwrap();
        let cfg_path = dir.path().join(cfg.trim_end_matches(".in"));
        std::fs::write(
            &cfg_path,
            read(cfg)
                .replace("@FRONTEND_PORT@", "8080")
                .replace("@AGENT_ADDR@", "127.0.0.1:12345")
                .replace("@SPOE_CONF@", spoe_path.to_str().unwrap())
                .replace("@STATS_SOCKET@", "/tmp/stats.sock"),
        )
        .unwrap();
        files.push(cfg_path.to_str().unwrap().to_owned());
    }
    files.push("docs/haproxy/echo/haproxy.cfg".into());
    files.push("spoa-runtime/examples/ip_reputation/haproxy.cfg".into());
    let out = Command::new(spoa_binary())
        .args(["lint", "--strict"])
        .args(&files)
        .current_dir(spop_tests::interop::workspace_root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 error(s), 0 warning(s)"), "{text}");
}

/// The configuration `spoa lint` calls good (spoa-cli/tests/fixtures/lint/good-haproxy.cfg)
/// is valid and warning-free for every HAProxy series too.
#[test]
fn good_lint_fixture_is_valid_everywhere() {
    let fixtures = spop_tests::interop::workspace_root().join("spoa-cli/tests/fixtures/lint");
    for series in spop_tests::interop::SERIES {
        let (ok, text) = haproxy_check(series, Path::new("good-haproxy.cfg"), &fixtures);
        assert!(ok, "HAProxy {series}: {text}");
        assert!(
            config_warnings(&text).is_empty(),
            "HAProxy {series}: {text}"
        );
    }
}
