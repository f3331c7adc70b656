//! End-to-end tests of the operator commands of `spoa`: explain, config, lint. (`config`
//! output is also checked by every HAProxy series in `tests/tests/operator_tools.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_spoa");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

fn spoa_in(dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run spoa");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn spoa(args: &[&str]) -> Out {
    spoa_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "spoa-op-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// explain

/// Every value the SPOE documentation lists, with the meaning `spoa explain` must give.
const VALUES: &[(&str, &str, Option<u64>)] = &[
    ("0", "no error", None),
    ("1", "timeout", None),
    ("2", "resource allocation", None),
    ("3", "max-frame-size", None),
    ("4", "fragmentation aborted", None),
    ("5", "interrupted", None),
    ("255", "unknown error", None),
    ("256", "normal", Some(0)),
    ("257", "I/O error", Some(1)),
    ("258", "a timeout occurred", Some(2)),
    ("259", "frame is too big", Some(3)),
    ("260", "invalid frame received", Some(4)),
    ("261", "version value not found", Some(5)),
    ("262", "max-frame-size value not found", Some(6)),
    ("263", "capabilities value not found", Some(7)),
    ("264", "unsupported version", Some(8)),
    ("265", "max-frame-size too big or too small", Some(9)),
    ("266", "fragmentation not supported", Some(10)),
    ("267", "invalid interlaced frames", Some(11)),
    ("268", "frame-id not found", Some(12)),
    ("269", "resource allocation error", Some(13)),
    ("355", "an unknown error occurred", Some(99)),
    ("256+99", "an unknown error occurred", Some(99)),
    ("356", "agent-specific", Some(100)),
];

#[test]
fn explain_every_documented_value() {
    for (v, meaning, status) in VALUES {
        let out = spoa(&["explain", v]);
        assert_eq!(out.code, 0, "{v}: {out:?}");
        assert!(out.stdout.contains(meaning), "{v}: {out:?}");
        assert!(
            out.stdout.contains("cause:") && out.stdout.contains("fix:"),
            "{out:?}"
        );
        let doc = spoa(&["explain", "--json", v]).json();
        assert!(doc["meaning"].as_str().unwrap().contains(meaning), "{doc}");
        assert_eq!(doc["status"]["code"].as_u64(), *status, "{v}: {doc}");
        assert!(!doc["fix"].as_str().unwrap().is_empty());
    }
    // 355 is the agent's own status 99, not "unknown" in HAProxy
    let out = spoa(&["explain", "355"]);
    assert!(out.stdout.contains("the agent itself"), "{out:?}");
    let doc = spoa(&["explain", "--json", "600"]).json();
    assert_eq!(doc["kind"], "undocumented");
}

#[test]
fn explain_log_lines_of_both_formats() {
    let old = "Dec  1 10:00:00 lb haproxy[42]: SPOE: [iprep-agent] <EVENT:on-frontend-http-request> sid=17 st=1 0/-1/-1/-1/500 0/1 3/0 1/9";
    let out = spoa(&["explain", old]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("2.x format"), "{out:?}");
    assert!(out.stdout.contains("never left HAProxy's queue"), "{out:?}");
    let doc = spoa(&["explain", "--json", old]).json();
    assert_eq!(doc["format"], "2.x");
    assert_eq!(doc["agent"], "iprep-agent");
    assert_eq!(doc["kind"], "event");
    assert_eq!(doc["sid"], "17");
    assert_eq!(doc["status"]["value"], 1);
    for (k, v) in [
        ("reqT", 0),
        ("qT", -1),
        ("wT", -1),
        ("resT", -1),
        ("pT", 500),
        ("idles", 0),
        ("applets", 1),
        ("nb_sending", 3),
        ("nb_waiting", 0),
        ("nb_error", 1),
        ("nb_processed", 9),
    ] {
        assert_eq!(doc["fields"][k]["value"], v, "{k}: {doc}");
    }

    let new = "SPOE: [echo-agent] <GROUP:checks> sid=5 st=257 3 2/40";
    let doc = spoa(&["explain", "--json", new]).json();
    assert_eq!(doc["format"], "3.1+");
    assert_eq!(doc["kind"], "group");
    assert_eq!(doc["name"], "checks");
    assert_eq!(doc["status"]["status"]["code"], 1);
    assert_eq!(doc["fields"]["pT"]["value"], 3);
    assert_eq!(doc["fields"]["nb_error"]["value"], 2);
    assert_eq!(doc["fields"]["nb_processed"]["value"], 40);
    let out = spoa(&["explain", new]);
    assert!(out.stdout.contains("I/O error"), "{out:?}");
    assert!(out.stdout.contains("continue-on-error"), "{out:?}");

    let bad = spoa(&["explain", "hello world"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("neither a set-on-error value"),
        "{bad:?}"
    );
    let bad = spoa(&["explain", "SPOE: [a] <EVENT:x> sid=1 st=0 1/2/3"]);
    assert_eq!(bad.code, 1, "{bad:?}");
}

// ---------------------------------------------------------------------------------------------
// config

#[test]
fn config_writes_both_files_and_refuses_bad_input() {
    let dir = temp_dir("config");
    let d = dir.to_str().unwrap();
    let out = spoa(&[
        "config",
        "--out",
        d,
        "--series",
        "2.6",
        "--arg",
        "src=src",
        "--arg",
        "app=var(txn.app)",
        "--var",
        "verdict",
        "--processing-timeout",
        "750ms",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let cfg = std::fs::read_to_string(dir.join("haproxy.cfg")).unwrap();
    let spoe = std::fs::read_to_string(dir.join("spoe.conf")).unwrap();
    // an argument reading a variable: a group sent by a rule, not an event
    assert!(
        cfg.contains("http-request send-spoe-group spoa check-request-group"),
        "{cfg}"
    );
    assert!(!spoe.contains("event "), "{spoe}");
    assert!(spoe.contains("option continue-on-error"), "{spoe}");
    assert!(spoe.contains("timeout processing 750ms"), "{spoe}");
    assert!(cfg.contains("--processing-timeout 750ms"), "{cfg}");
    assert!(spoe.contains("register-var-names verdict"), "{spoe}");
    assert!(
        cfg.contains("mode tcp") && cfg.contains("option spop-check"),
        "{cfg}"
    );
    assert!(
        out.stdout
            .contains("spoa echo --listen 127.0.0.1:12345 --processing-timeout 750ms")
    );
    // existing files are kept without --force
    let again = spoa(&["config", "--out", d]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("--force"), "{again:?}");
    assert_eq!(
        spoa(&["config", "--out", d, "--force", "--series", "3.2"]).code,
        0
    );
    let cfg = std::fs::read_to_string(dir.join("haproxy.cfg")).unwrap();
    assert!(cfg.contains("mode spop"), "{cfg}");
    let spoe = std::fs::read_to_string(dir.join("spoe.conf")).unwrap();
    assert!(spoe.contains("event on-frontend-http-request"), "{spoe}");
    assert!(!spoe.contains("timeout hello"), "{spoe}");

    for bad in [
        &["--series", "1.8"][..],
        &["--var", "bad-name"],
        &["--arg", "nofetch"],
        &["--agent", "nowhere"],
        &["--engine", "a.b"],
    ] {
        let mut args = vec!["config", "--out", d, "--force"];
        args.extend_from_slice(bad);
        let out = spoa(&args);
        assert_eq!(out.code, 1, "{bad:?}: {out:?}");
        assert!(out.stderr.starts_with("error: "), "{out:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_output_lints_clean_on_every_series() {
    for series in ["2.6", "2.8", "3.0", "3.1", "3.2", "3.4"] {
        for extra in [
            &["--var", "score"][..],
            &["--group", "--server", "127.0.0.1:9000"],
        ] {
            let dir = temp_dir("config-lint");
            let d = dir.to_str().unwrap();
            let mut args = vec!["config", "--out", d, "--series", series];
            args.extend_from_slice(extra);
            let out = spoa(&args);
            assert_eq!(out.code, 0, "{out:?}");
            let cfg = dir.join("haproxy.cfg");
            let lint = spoa(&[
                "lint",
                "--strict",
                "--series",
                series,
                cfg.to_str().unwrap(),
            ]);
            assert_eq!(lint.code, 0, "{series} {extra:?}: {lint:?}");
            assert!(lint.stdout.contains("0 error(s), 0 warning(s)"), "{lint:?}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// lint

#[test]
fn lint_good_config_and_shipped_configs_are_clean() {
    let out = spoa_in(&fixtures(), &["lint", "--strict", "good-haproxy.cfg"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = spoa_in(
        &fixtures(),
        &["lint", "--strict", "--series", "2.6", "good-haproxy.cfg"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    // the configs the project ships, from the root like the README runs them
    let out = spoa_in(
        &workspace(),
        &[
            "lint",
            "--strict",
            "docs/haproxy/echo/haproxy.cfg",
            "spoa-runtime/examples/ip_reputation/haproxy.cfg",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
}

fn findings(doc: &Value) -> Vec<(String, u64, String, String)> {
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(!f["why"].as_str().unwrap().is_empty(), "{f}");
            assert!(!f["fix"].as_str().unwrap().is_empty(), "{f}");
            (
                f["file"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
                f["severity"].as_str().unwrap().to_string(),
                f["check"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn lint_bad_config_finds_every_pitfall_with_file_and_line() {
    let out = spoa_in(
        &fixtures(),
        &["lint", "--json", "--series", "2.6", "bad-haproxy.cfg"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    let f = findings(&out.json());
    let has = |file: &str, line: u64, sev: &str, check: &str| {
        assert!(
            f.iter()
                .any(|x| x.0.ends_with(file) && x.1 == line && x.2 == sev && x.3 == check),
            "missing {file}:{line} {sev}[{check}] in {f:#?}"
        );
    };
    has("bad-haproxy.cfg", 5, "warning", "balance-source");
    has("bad-haproxy.cfg", 6, "warning", "timeouts");
    has("bad-haproxy.cfg", 11, "error", "event-order");
    has("bad-haproxy.cfg", 15, "warning", "unregistered-var");
    has("bad-haproxy.cfg", 21, "error", "backend-mode");
    has("bad-haproxy.cfg", 21, "warning", "spop-check");
    has("bad-haproxy.cfg", 22, "warning", "timeouts");
    has("bad-spoe.conf", 2, "error", "timeout-processing");
    has("bad-spoe.conf", 2, "warning", "set-on-error");
    has("bad-spoe.conf", 2, "warning", "continue-on-error");
    has("bad-spoe.conf", 6, "error", "var-name");
    has("bad-spoe.conf", 11, "error", "event-order");
    // too long: txn.waf.<64 bytes>
    assert_eq!(
        f.iter()
            .filter(|x| x.0.ends_with("bad-spoe.conf") && x.1 == 6 && x.3 == "var-name")
            .count(),
        2,
        "{f:#?}"
    );
    // no 3.1+ remarks for 2.6
    assert!(!f.iter().any(|x| x.3 == "ignored-option"), "{f:#?}");

    // the same on 3.2: ignored options, no 2.6-only remarks
    let doc = spoa_in(
        &fixtures(),
        &["lint", "--json", "--series", "3.2", "bad-haproxy.cfg"],
    )
    .json();
    let f = findings(&doc);
    for line in [5, 7, 8] {
        assert!(
            f.iter()
                .any(|x| x.0.ends_with("bad-spoe.conf") && x.1 == line && x.3 == "ignored-option"),
            "line {line}: {f:#?}"
        );
    }
    assert!(
        !f.iter()
            .any(|x| x.3 == "balance-source" || x.3 == "timeouts"),
        "{f:#?}"
    );

    // text output: file:line: severity[check], why and fix
    let out = spoa_in(&fixtures(), &["lint", "bad-haproxy.cfg"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("bad-haproxy.cfg:11: error[event-order]: txn.waf.early"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("  why: ") && out.stdout.contains("  fix: "),
        "{out:?}"
    );
}

#[test]
fn lint_rule_before_send_spoe_group_and_response_only_agent() {
    let out = spoa_in(&fixtures(), &["lint", "--json", "late-haproxy.cfg"]);
    let doc = out.json();
    let f = findings(&doc);
    // line 11 reads (through acl blocked) before the group (line 12) and the response event
    assert!(
        f.iter().any(|x| x.1 == 11 && x.3 == "event-order"),
        "{f:#?}"
    );
    let text = spoa_in(&fixtures(), &["lint", "late-haproxy.cfg"]).stdout;
    assert!(text.contains("(through acl blocked)"), "{text}");
    // lines 13 and 14 come after the send-spoe-group rule: fine; the acl line is no rule
    assert!(!f.iter().any(|x| [10, 13, 14].contains(&x.1)), "{f:#?}");
    assert_eq!(doc["errors"], 1, "{doc}");
}

#[test]
fn lint_unknown_groups() {
    let out = spoa_in(&fixtures(), &["lint", "--json", "groups-haproxy.cfg"]);
    assert_eq!(out.code, 1, "{out:?}");
    let f = findings(&out.json());
    assert!(
        f.iter()
            .any(|x| x.0.ends_with("groups-haproxy.cfg") && x.1 == 10 && x.3 == "unknown-group"),
        "{f:#?}"
    );
    assert!(
        f.iter()
            .any(|x| x.0.ends_with("groups-spoe.conf") && x.1 == 3 && x.3 == "unknown-group"),
        "{f:#?}"
    );
}

#[test]
fn lint_default_var_prefix_and_2x_timeouts() {
    let dir = temp_dir("lint-prefix");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("haproxy.cfg"),
        "frontend fe\n    bind :80\n    filter spoe engine e config spoe.conf\n\
         backend be\n    mode tcp\n    option spop-check\n    server a 127.0.0.1:1 check\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("spoe.conf"),
        "[e]\nspoe-agent my-agent\n    messages m\n    option set-on-error err\n\
         \x20   timeout processing 1s\n    use-backend be\nspoe-message m\n    args src=src\n\
         \x20   event on-frontend-http-request\n",
    )
    .unwrap();
    let out = spoa_in(&dir, &["lint", "--series", "2.6", "haproxy.cfg"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(
            "spoe.conf:2: error[var-name]: the default var-prefix (the agent's name) \"my-agent\""
        ),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("fix: add `option var-prefix my_agent`"),
        "{out:?}"
    );
    assert!(out.stdout.contains("no `timeout hello`"), "{out:?}");
    assert!(out.stdout.contains("no `timeout idle`"), "{out:?}");
    let out = spoa_in(&dir, &["lint", "--series", "3.2", "haproxy.cfg"]);
    assert!(!out.stdout.contains("timeout hello"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lint_txn_variables_of_session_events() {
    let dir = temp_dir("lint-session");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("haproxy.cfg"),
        "frontend fe\n    bind :80\n    filter spoe engine s config spoe.conf\n\
         \x20   http-request deny if { var(txn.s.bad) -m bool }\n\
         \x20   http-request deny if { var(sess.s.bad) -m bool }\n\
         backend be\n    mode tcp\n    option spop-check\n    server a 127.0.0.1:1 check\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("spoe.conf"),
        "[s]\nspoe-agent s\n    messages m\n    option set-on-error error\n\
         \x20   timeout processing 1s\n    use-backend be\nspoe-message m\n    args src=src\n\
         \x20   event on-client-session\n",
    )
    .unwrap();
    let out = spoa_in(&dir, &["lint", "--json", "--series", "3.2", "haproxy.cfg"]);
    let f = findings(&out.json());
    assert!(
        f.iter()
            .any(|x| x.1 == 4 && x.3 == "event-order" && x.2 == "warning"),
        "{f:#?}"
    );
    assert!(!f.iter().any(|x| x.1 == 5), "sess scope is fine: {f:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lint_reports_missing_files() {
    let dir = temp_dir("lint-missing");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("haproxy.cfg"),
        "frontend fe\n    bind :80\n    filter spoe engine x config nowhere.conf\n",
    )
    .unwrap();
    let out = spoa_in(&dir, &["lint", "haproxy.cfg"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("haproxy.cfg:3: error[spoe-file]"),
        "{out:?}"
    );
    let out = spoa_in(&dir, &["lint", "absent.cfg"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("cannot read absent.cfg"), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
