//! The HAProxy configurations the README tells users to run must be valid, warning-free, on
//! every supported version (`haproxy -c`, from the repository root, as the README does).

use std::path::Path;

use spop_tests::interop::{config_warnings, haproxy_check, workspace_root};

const CONFIGS: &[&str] = &[
    "docs/haproxy/echo/haproxy.cfg",
    "spoa-runtime/examples/ip_reputation/haproxy.cfg",
    "spoa-runtime/examples/bot_guard/haproxy.cfg",
];

fn check_all(series: &str) {
    for cfg in CONFIGS {
        let (ok, text) = haproxy_check(series, Path::new(cfg), &workspace_root());
        assert!(ok, "HAProxy {series} rejects {cfg}:\n{text}");
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
