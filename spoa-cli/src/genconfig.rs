//! `spoa config`: a complete, runnable haproxy.cfg + spoe.conf pair from a short description.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::args::parse_duration;

/// Write a runnable haproxy.cfg + spoe.conf pair for an agent.
///
/// The frontend listens on --bind and sends message --message with the --arg's to the agent
/// at --agent on every HTTP request; the variables the agent sets (--var) are registered
/// (`register-var-names`) and copied into request headers `X-Spoe-<name>` towards --server
/// (or shown in a small reply when there is no --server). Errors are visible
/// (`option set-on-error error` -> `txn.<prefix>.error`, explained by `spoa explain`).
///
/// The message goes out on an event (`on-frontend-http-request`, `on-http-response` when an
/// argument reads `res.*`) or, when an argument reads a variable (`var(...)`) or with
/// --group, from an `http-request send-spoe-group` rule placed after the rules that may set it.
/// `timeout processing` is --processing-timeout, which the agent must use as its deadline (the
/// generated comments print the matching `spoa echo --processing-timeout`). The agent backend
/// is `mode tcp` for 2.6/3.0 and `mode spop` for 3.1+, with `option spop-check`.
///
/// Example:
///
///   spoa config --out /etc/haproxy --agent 127.0.0.1:12345 --message check-request
///     --arg src=src --arg path=path --var verdict --var score --series 3.2
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArgs {
    /// Directory to write haproxy.cfg and spoe.conf into (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Target HAProxy series: 2.6, 2.8, 3.0, 3.1, 3.2 or 3.4.
    #[arg(long, default_value = "3.2")]
    series: String,
    /// Frontend bind address.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    bind: String,
    /// Agent address (host:port).
    #[arg(long, default_value = "127.0.0.1:12345", value_name = "ADDR")]
    agent: String,
    /// More agent addresses (one server line each). Repeatable.
    #[arg(long = "also-agent", value_name = "ADDR")]
    also_agents: Vec<String>,
    /// Application server the frontend forwards to; without it, HAProxy answers itself with
    /// the agent's variables.
    #[arg(long, value_name = "ADDR")]
    server: Option<String>,
    /// SPOE engine name; also the var-prefix (variables are `txn.<engine>.<name>`).
    #[arg(long, default_value = "spoa")]
    engine: String,
    /// Message name.
    #[arg(long, default_value = "check-request")]
    message: String,
    /// A message argument, `name=fetch` (e.g. `src=src`, `path=path`, `host=req.hdr(host)`).
    /// Repeatable; default `src=src method=method path=path`.
    #[arg(long = "arg", value_name = "name=FETCH")]
    args: Vec<String>,
    /// A variable the agent sets (name only: it lands in `txn.<engine>.<name>`). Repeatable.
    #[arg(long = "var", value_name = "NAME")]
    vars: Vec<String>,
    /// Send the message from an `http-request send-spoe-group` rule instead of an event.
    #[arg(long)]
    group: bool,
    /// HAProxy's `timeout processing`; run the agent with the same deadline.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    processing_timeout: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// The HAProxy series `spoa config` and `spoa lint` know, in order.
pub(crate) const KNOWN_SERIES: [&str; 6] = ["2.6", "2.8", "3.0", "3.1", "3.2", "3.4"];

/// `true` for 3.1 and later (the SPOP multiplexer: `mode spop`, no hello/idle timeouts).
pub(crate) fn is_mux_series(series: &str) -> bool {
    let mut it = series.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (maj, min) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (maj, min) >= (3, 1)
}

/// Checks a variable or prefix name the way HAProxy does: `[A-Za-z0-9._]`, not empty.
pub(crate) fn valid_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
}

/// HAProxy duration text: whole milliseconds, or seconds when exact.
pub(crate) fn haproxy_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms > 0 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}ms", ms.max(1))
    }
}

/// The two generated files.
pub(crate) struct Generated {
    pub(crate) haproxy_cfg: String,
    pub(crate) spoe_conf: String,
}

pub(crate) fn run(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    // validate everything before touching the file system
    generate(args, &args.out)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    // haproxy.cfg names spoe.conf by absolute path: HAProxy resolves it from its own cwd
    let out = std::fs::canonicalize(&args.out)
        .with_context(|| format!("cannot resolve {}", args.out.display()))?;
    let g = generate(args, &out)?;
    let cfg = out.join("haproxy.cfg");
    let spoe = out.join("spoe.conf");
    for p in [&cfg, &spoe] {
        if p.exists() && !args.force {
            bail!("{} exists (use --force to overwrite)", p.display());
        }
    }
    write(&cfg, &g.haproxy_cfg)?;
    write(&spoe, &g.spoe_conf)?;
    println!("wrote {} and {}", cfg.display(), spoe.display());
    println!("check:  haproxy -c -f {}", cfg.display());
    println!(
        "lint:   spoa lint --series {} {}",
        args.series,
        cfg.display()
    );
    println!(
        "agent:  spoa echo --listen {} --processing-timeout {}",
        args.agent,
        haproxy_duration(args.processing_timeout)
    );
    Ok(ExitCode::SUCCESS)
}

fn write(p: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))
}

fn check_addr(what: &str, a: &str) -> anyhow::Result<()> {
    match a.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(()),
        _ => bail!("--{what} {a:?}: expected host:port"),
    }
}

pub(crate) fn generate(args: &ConfigArgs, out: &Path) -> anyhow::Result<Generated> {
    if !KNOWN_SERIES.contains(&args.series.as_str()) {
        bail!(
            "--series {:?}: expected one of {}",
            args.series,
            KNOWN_SERIES.join(", ")
        );
    }
    check_addr("bind", &args.bind)?;
    check_addr("agent", &args.agent)?;
    for a in &args.also_agents {
        check_addr("also-agent", a)?;
    }
    if let Some(s) = &args.server {
        check_addr("server", s)?;
    }
    let engine = &args.engine;
    if !valid_var_name(engine) || engine.contains('.') {
        bail!("--engine {engine:?}: use letters, digits and '_' (it is also the var-prefix)");
    }
    if args.message.is_empty() || args.message.contains(char::is_whitespace) {
        bail!("--message {:?}: one word expected", args.message);
    }
    let default_args = ["src=src", "method=method", "path=path"];
    let msg_args: Vec<(String, String)> = if args.args.is_empty() {
        default_args
            .iter()
            .map(|a| {
                let (n, f) = a.split_once('=').expect("name=fetch");
                (n.to_string(), f.to_string())
            })
            .collect()
    } else {
        args.args
            .iter()
            .map(|a| match a.split_once('=') {
                Some((n, f)) if valid_var_name(n) && !n.contains('.') && !f.is_empty() => {
                    Ok((n.to_string(), f.to_string()))
                }
                _ => bail!(
                    "--arg {a:?}: expected name=fetch, the name made of letters, digits and '_'"
                ),
            })
            .collect::<anyhow::Result<_>>()?
    };
    for v in &args.vars {
        if !valid_var_name(v) || v.contains('.') {
            bail!("--var {v:?}: HAProxy accepts only letters, digits and '_' here");
        }
        // "txn." + prefix + "." + name in HAProxy's 64-byte buffer
        if 4 + engine.len() + 1 + v.len() > 63 {
            bail!("--var {v:?}: txn.{engine}.{v} is longer than HAProxy's 63-byte limit");
        }
    }
    if args.processing_timeout < Duration::from_millis(1) {
        bail!("--processing-timeout must be at least 1ms");
    }
    let mux = is_mux_series(&args.series);
    let response_side = msg_args.iter().any(|(_, f)| f.starts_with("res."));
    let reads_var = msg_args.iter().any(|(_, f)| f.contains("var("));
    let use_group = args.group || (reads_var && !response_side);
    let uses_uid = msg_args.iter().any(|(_, f)| f.contains("unique-id"));
    let uses_body = msg_args.iter().any(|(_, f)| f.starts_with("req.body"));
    let pt = haproxy_duration(args.processing_timeout);
    let group_name = format!("{}-group", args.message);
    let agent_section = format!("{engine}-agent");
    let backend = format!("be_{engine}_agents");
    let vars: Vec<&str> = args.vars.iter().map(String::as_str).collect();

    // ---- haproxy.cfg
    let mut c = String::new();
    let cmd = command_line(args);
    let _ = writeln!(
        c,
        "# Generated by spoa {} for HAProxy {}:\n#   {cmd}\n#\n\
         # Run the agent with the deadline of `timeout processing` ({pt}), e.g.:\n\
         #   spoa echo --listen {} --processing-timeout {pt}\n\
         # then: haproxy -f haproxy.cfg   (check it first: haproxy -c -f haproxy.cfg)",
        env!("CARGO_PKG_VERSION"),
        args.series,
        args.agent
    );
    let spoe_path = out.join("spoe.conf");
    let _ = writeln!(
        c,
        "global\n    log stdout format raw local0 info\n\n\
         defaults\n    mode http\n    log global\n    option httplog\n\
         \x20   timeout connect 5s\n    timeout client  30s\n    timeout server  30s\n"
    );
    let _ = writeln!(c, "frontend fe_main\n    bind {}", args.bind);
    if uses_uid {
        c.push_str("    unique-id-format %[uuid()]\n");
    }
    if uses_body {
        c.push_str(
            "    # the message reads the body: buffer it first\n    option http-buffer-request\n",
        );
    }
    let _ = writeln!(
        c,
        "    filter spoe engine {engine} config {}",
        spoe_path.display()
    );
    if use_group {
        let _ = writeln!(
            c,
            "    # rules that set variables the message reads go above this line: the group is\n\
             \x20   # sent here, after them (an on-frontend-http-request event would fire before them)\n\
             \x20   http-request send-spoe-group {engine} {group_name}"
        );
    }
    let err = format!("txn.{engine}.error");
    let _ = writeln!(
        c,
        "    # set-on-error: `spoa explain <value>` says what it means (257 = agent unreachable)\n\
         \x20   http-request set-header X-Spoe-Error %[var({err})] if {{ var({err}) -m found }}"
    );
    if !response_side {
        for v in &vars {
            let _ = writeln!(
                c,
                "    http-request set-header X-Spoe-{v} %[var(txn.{engine}.{v})] if {{ var(txn.{engine}.{v}) -m found }}"
            );
        }
    }
    match &args.server {
        Some(_) => c.push_str("    default_backend be_app\n"),
        None => {
            let mut body = String::from("agent:");
            for v in &vars {
                let _ = write!(body, " {v}=%[var(txn.{engine}.{v})]");
            }
            let _ = write!(body, " error=%[var({err})]");
            if response_side {
                // the response event needs a response: answer from a local backend
                c.push_str("    default_backend be_app\n");
            } else {
                let _ = writeln!(
                    c,
                    "    http-request return status 200 content-type text/plain lf-string \"{body}\\n\""
                );
            }
        }
    }
    if response_side {
        for v in &vars {
            let _ = writeln!(
                c,
                "    http-response set-header X-Spoe-{v} %[var(txn.{engine}.{v})] if {{ var(txn.{engine}.{v}) -m found }}"
            );
        }
    }
    c.push('\n');
    match &args.server {
        Some(s) => {
            let _ = writeln!(c, "backend be_app\n    server app1 {s}\n");
        }
        None if response_side => {
            c.push_str(
                "backend be_app\n    http-request return status 200 content-type text/plain string \"ok\\n\"\n\n",
            );
        }
        None => {}
    }
    let _ = writeln!(
        c,
        "# the agents: {}\nbackend {backend}",
        if mux {
            "HAProxy 3.1+ speaks SPOP through its own multiplexer (mode spop)"
        } else {
            "HAProxy before 3.1 requires mode tcp here (mode http, the default above, is rejected)"
        }
    );
    let _ = writeln!(c, "    mode {}", if mux { "spop" } else { "tcp" });
    c.push_str("    balance roundrobin\n    timeout connect 5s\n");
    if mux {
        c.push_str(
            "    # idle agent connections are closed after this long\n    timeout server  1m\n",
        );
    } else {
        c.push_str("    # longer than the SPOE's timeout idle\n    timeout server  3m\n");
    }
    c.push_str("    option spop-check\n");
    c.push_str(
        "    # DOWN within fall x inter = 2 s of a refused check: well inside the agent's 7 s lame duck\n",
    );
    for (i, a) in std::iter::once(&args.agent)
        .chain(&args.also_agents)
        .enumerate()
    {
        let _ = writeln!(
            c,
            "    server agent{} {a} check inter 1s fall 2 rise 2",
            i + 1
        );
    }

    // ---- spoe.conf
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# SPOE engine {engine:?} for haproxy.cfg (HAProxy {}); generated by spoa config.\n\
         # The agent sets: {}\n[{engine}]\nspoe-agent {agent_section}",
        args.series,
        if vars.is_empty() {
            "(no variables given)".to_string()
        } else {
            vars.iter()
                .map(|v| format!("txn.{engine}.{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    if use_group {
        let _ = writeln!(s, "    groups {group_name}");
    } else {
        let _ = writeln!(s, "    messages {}", args.message);
    }
    let _ = writeln!(
        s,
        "    option var-prefix {engine}\n\
         \x20   # txn.{engine}.error: 0 or unset when fine, see `spoa explain`\n\
         \x20   option set-on-error error\n\
         \x20   option set-process-time ptime"
    );
    if use_group {
        s.push_str(
            "    # an error (agent down, timeout) must not disable SPOE for the rest of the transaction\n\
             \x20   option continue-on-error\n",
        );
    }
    if !vars.is_empty() {
        let _ = writeln!(s, "    register-var-names {}", vars.join(" "));
    }
    if !mux {
        s.push_str("    timeout hello      2s\n    timeout idle       2m\n");
    }
    let _ = writeln!(
        s,
        "    # the agent's deadline: spoa echo --processing-timeout {pt}\n\
         \x20   timeout processing {pt}\n    use-backend {backend}\n    log global\n"
    );
    let _ = writeln!(s, "spoe-message {}", args.message);
    let arg_text: Vec<String> = msg_args.iter().map(|(n, f)| format!("{n}={f}")).collect();
    let _ = writeln!(s, "    args {}", arg_text.join(" "));
    if !use_group {
        let _ = writeln!(
            s,
            "    event {}",
            if response_side {
                "on-http-response"
            } else {
                "on-frontend-http-request"
            }
        );
    } else {
        let _ = writeln!(
            s,
            "\nspoe-group {group_name}\n    messages {}",
            args.message
        );
    }
    Ok(Generated {
        haproxy_cfg: c,
        spoe_conf: s,
    })
}

/// The command line, for the header comment.
fn command_line(args: &ConfigArgs) -> String {
    let mut s = format!(
        "spoa config --series {} --bind {} --agent {}",
        args.series, args.bind, args.agent
    );
    for a in &args.also_agents {
        let _ = write!(s, " --also-agent {a}");
    }
    if let Some(v) = &args.server {
        let _ = write!(s, " --server {v}");
    }
    let _ = write!(s, " --engine {} --message {}", args.engine, args.message);
    for a in &args.args {
        let _ = write!(s, " --arg {a}");
    }
    for v in &args.vars {
        let _ = write!(s, " --var {v}");
    }
    if args.group {
        s.push_str(" --group");
    }
    let _ = write!(
        s,
        " --processing-timeout {}",
        haproxy_duration(args.processing_timeout)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_names() {
        assert!(is_mux_series("3.1"));
        assert!(is_mux_series("3.4"));
        assert!(!is_mux_series("3.0"));
        assert!(!is_mux_series("2.6"));
        assert!(valid_var_name("a.b_c9"));
        assert!(!valid_var_name("a-b"));
        assert_eq!(haproxy_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(haproxy_duration(Duration::from_secs(2)), "2s");
    }
}
