//! The HAProxy configurations the README tells users to run must be valid, warning-free, on
//! every supported version (`haproxy -c`, from the repository root, as the README does).

use std::process::Command;

use spop_tests::interop::{config_warnings, haproxy, workspace_root};

const CONFIGS: &[&str] = &[
    "docs/haproxy/echo/haproxy.cfg",
    "spoa-runtime/examples/ip_reputation/haproxy.cfg",
    "spoa-runtime/examples/bot_guard/haproxy.cfg",
];

fn check_all(series: &str) {
    let bin = haproxy(series);
    for cfg in CONFIGS {
        let out = Command::new(&bin)
            .args(["-c", "-f", cfg])
            .current_dir(workspace_root())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "HAProxy {series} rejects {cfg}:\n{text}"
        );
        assert!(
            config_warnings(&text).is_empty(),
            "HAProxy {series} warns about {cfg}:\n{text}"
        );
    }
}

#[test]
fn documented_configs_are_valid_on_2_6() {
    check_all("2.6");
}

#[test]
fn documented_configs_are_valid_on_3_0() {
    check_all("3.0");
}

#[test]
fn documented_configs_are_valid_on_3_2() {
    check_all("3.2");
}

#[test]
fn documented_configs_are_valid_on_3_4() {
    check_all("3.4");
}
