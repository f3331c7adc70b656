//! `spoa lint`: known SPOE configuration pitfalls in a haproxy.cfg and the SPOE files it uses.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::genconfig::{KNOWN_SERIES, is_mux_series, valid_var_name};

/// Check a haproxy.cfg and the SPOE files it references for known pitfalls.
///
/// Each finding names the file and line, says why it bites and how to fix it. Checks:
/// variables read by rules (directly or through a named ACL) that run before the agent sets
/// them, txn variables expected from an agent called only on session events, message arguments reading variables that `http-request` rules set only
/// after the event fires, variables read but not in `register-var-names`, variable names
/// HAProxy rejects or truncates (the default var-prefix is the agent's name: a `-` in it is
/// refused), unknown groups, no `timeout processing` (nor hello/idle on 2.x), no `option set-on-error`, no
/// `option continue-on-error` when an agent is called several times per transaction, an
/// agent backend without `option spop-check` or in the wrong `mode` for the series, options
/// 3.1+ ignores (`async`, fragmentation, `timeout hello/idle`, `max-waiting-frames`,
/// `maxconnrate`, `maxerrrate`), backend timeouts shorter than hello/idle on 2.x, and
/// `balance source` inherited by the agent backend on 2.6.
///
/// SPOE file paths are resolved like HAProxy does (from the current directory), then from the
/// directory of the haproxy.cfg. Without --series the configuration must suit every series
/// from 2.6 to 3.4. Exit status 1 when there are errors (or warnings, with --strict), 0 when
/// clean.
#[derive(Debug, clap::Args)]
pub(crate) struct LintArgs {
    /// haproxy.cfg file(s).
    #[arg(value_name = "HAPROXY_CFG", required = true)]
    files: Vec<PathBuf>,
    /// The HAProxy series the configuration is for (2.6, 2.8, 3.0, 3.1, 3.2, 3.4); default:
    /// all of them.
    #[arg(long)]
    series: Option<String>,
    /// Exit with status 1 on warnings too.
    #[arg(long)]
    strict: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) severity: Severity,
    pub(crate) check: &'static str,
    pub(crate) message: String,
    pub(crate) why: String,
    pub(crate) fix: String,
}

/// One meaningful line: its number and its words (comments removed, quotes kept together).
#[derive(Debug, Clone)]
struct Line {
    no: usize,
    words: Vec<String>,
    text: String,
}

impl Line {
    fn kw(&self, n: usize) -> &str {
        self.words.get(n).map_or("", String::as_str)
    }
}

#[derive(Debug)]
struct Section {
    kind: String,
    name: String,
    line: usize,
    lines: Vec<Line>,
    /// Index of the `defaults` section in force for a proxy.
    defaults: Option<usize>,
}

/// Splits a config line into words: whitespace separated, `#` starts a comment outside
/// quotes, quotes keep spaces and are kept, `\` escapes.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (_, '\\') => {
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
                in_word = true;
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn read_lines(text: &str) -> Vec<Line> {
    text.lines()
        .enumerate()
        .filter_map(|(i, t)| {
            let words = split_words(t);
            (!words.is_empty()).then(|| Line {
                no: i + 1,
                words,
                text: t.trim().to_string(),
            })
        })
        .collect()
}

const CFG_SECTIONS: [&str; 18] = [
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "program",
    "cache",
    "ring",
    "http-errors",
    "mailers",
    "crt-store",
    "traces",
    "log-forward",
    "acme",
    "dynamic-update",
];

fn parse_cfg(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut last_defaults = None;
    for l in read_lines(text) {
        if CFG_SECTIONS.contains(&l.kw(0)) {
            let kind = l.kw(0).to_string();
            let idx = sections.len();
            let defaults = if kind == "defaults" {
                None
            } else {
                last_defaults
            };
            if kind == "defaults" {
                last_defaults = Some(idx);
            }
            sections.push(Section {
                kind,
                name: l.kw(1).to_string(),
                line: l.no,
                lines: Vec::new(),
                defaults,
            });
        } else if let Some(s) = sections.last_mut() {
            s.lines.push(l);
        }
    }
    sections
}

/// A `spoe-agent`, `spoe-message` or `spoe-group` section of one engine.
#[derive(Debug)]
struct SpoeSection {
    kind: String,
    name: String,
    line: usize,
    lines: Vec<Line>,
}

/// The sections of an SPOE file in scope `engine` (or outside any scope without an engine).
fn parse_spoe(text: &str, engine: Option<&str>) -> Vec<SpoeSection> {
    let mut out: Vec<SpoeSection> = Vec::new();
    let mut scope: Option<String> = None;
    let mut current = false;
    for l in read_lines(text) {
        let w0 = l.kw(0);
        if w0.starts_with('[') && w0.ends_with(']') && l.words.len() == 1 {
            scope = Some(w0[1..w0.len() - 1].trim().to_string());
            current = false;
            continue;
        }
        if scope.as_deref() != engine {
            continue;
        }
        if matches!(w0, "spoe-agent" | "spoe-message" | "spoe-group") {
            out.push(SpoeSection {
                kind: w0.to_string(),
                name: l.kw(1).to_string(),
                line: l.no,
                lines: Vec::new(),
            });
            current = true;
        } else if current && let Some(s) = out.last_mut() {
            s.lines.push(l);
        }
    }
    out
}

/// HAProxy durations: a number with an optional unit (default ms).
fn parse_haproxy_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

/// Variable references in a line: (full name, is a write).
fn var_refs(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("var") {
        let at = i + pos;
        let after = &text[at + 3..];
        let (open, write) = if after.starts_with('(') {
            let write = text[..at].ends_with("set-") || text[..at].ends_with("unset-");
            (at + 4, write)
        } else if after.starts_with("-fmt(") && text[..at].ends_with("set-") {
            (at + 8, true)
        } else {
            i = at + 3;
            continue;
        };
        // a word boundary before "var" (or "set-var"/"unset-var")
        let start = if write {
            text[..at].rfind(|c: char| c != '-' && !c.is_ascii_alphabetic())
        } else {
            at.checked_sub(1)
        };
        let boundary_ok = match start {
            None => true,
            Some(p) if !write => !(b[p].is_ascii_alphanumeric() || b[p] == b'_' || b[p] == b'-'),
            Some(_) => true,
        };
        let name: String = text[open..]
            .chars()
            .take_while(|&c| c != ')' && c != ',' && !c.is_whitespace())
            .collect();
        if boundary_ok && !name.is_empty() {
            out.push((name, write));
        }
        i = open;
    }
    out
}

const SCOPES: [&str; 5] = ["proc", "sess", "txn", "req", "res"];

/// When an event fires, on a scale shared with rules (see [`rule_phase`]).
fn event_phase(event: &str) -> Option<u32> {
    Some(match event {
        "on-client-session" => 4,
        "on-frontend-tcp-request" => 9,
        "on-frontend-http-request" => 19,
        "on-backend-tcp-request" => 29,
        "on-backend-http-request" => 39,
        "on-server-session" => 45,
        "on-tcp-response" | "on-http-response" => 59,
        _ => return None,
    })
}

/// When a rule of a proxy section runs (None: not a rule whose timing matters here).
fn rule_phase(section_kind: &str, l: &Line) -> Option<u32> {
    let backend = section_kind == "backend";
    Some(match (l.kw(0), l.kw(1)) {
        ("tcp-request", "connection" | "session") => 5,
        ("tcp-request", "content") => {
            if backend {
                30
            } else {
                10
            }
        }
        ("http-request", _) => {
            if backend {
                40
            } else {
                20
            }
        }
        ("use_backend" | "default_backend", _) => 25,
        ("tcp-response", _) | ("http-response", _) => 60,
        ("http-after-response", _) => 70,
        _ => return None,
    })
}

fn phase_name(p: u32) -> &'static str {
    match p {
        0..=5 => "connection/session rules",
        6..=10 => "frontend tcp-request content rules",
        11..=20 => "frontend http-request rules",
        21..=25 => "backend selection (use_backend)",
        26..=30 => "backend tcp-request content rules",
        31..=40 => "backend http-request rules",
        41..=60 => "response rules",
        _ => "after-response rules",
    }
}

struct Lint {
    findings: Vec<Finding>,
    series: Vec<&'static str>,
}

impl Lint {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        file: &str,
        line: usize,
        severity: Severity,
        check: &'static str,
        message: String,
        why: &str,
        fix: String,
    ) {
        self.findings.push(Finding {
            file: file.to_string(),
            line,
            severity,
            check,
            message,
            why: why.to_string(),
            fix,
        });
    }

    fn any_2x(&self) -> bool {
        self.series.iter().any(|s| !is_mux_series(s))
    }

    fn all_mux(&self) -> bool {
        self.series.iter().all(|s| is_mux_series(s))
    }
}

/// The agent of one `filter spoe`: its SPOE file and sections.
struct Engine {
    file: String,
    /// Line of the `filter spoe` in the haproxy.cfg.
    filter_line: usize,
    engine: Option<String>,
    sections: Vec<SpoeSection>,
}

pub(crate) fn run(args: &LintArgs) -> anyhow::Result<ExitCode> {
    let series: Vec<&'static str> = match &args.series {
        Some(s) => match KNOWN_SERIES.iter().find(|k| **k == s.as_str()) {
            Some(k) => vec![*k],
            None => bail!(
                "--series {s:?}: expected one of {}",
                KNOWN_SERIES.join(", ")
            ),
        },
        None => KNOWN_SERIES.to_vec(),
    };
    let mut findings = Vec::new();
    for f in &args.files {
        findings.extend(lint_file(f, &series)?);
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    if args.json {
        let list: Vec<Value> = findings
            .iter()
            .map(|f| {
                json!({
                    "file": f.file, "line": f.line,
                    "severity": if f.severity == Severity::Error { "error" } else { "warning" },
                    "check": f.check, "message": f.message, "why": f.why, "fix": f.fix,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "findings": list, "errors": errors, "warnings": warnings })
        );
    } else {
        let mut out = String::new();
        for f in &findings {
            let sev = if f.severity == Severity::Error {
                "error"
            } else {
                "warning"
            };
            let _ = writeln!(
                out,
                "{}:{}: {sev}[{}]: {}\n  why: {}\n  fix: {}",
                f.file, f.line, f.check, f.message, f.why, f.fix
            );
        }
        let _ = writeln!(
            out,
            "{}: {errors} error(s), {warnings} warning(s)",
            args.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        print!("{out}");
    }
    Ok(if errors > 0 || (args.strict && warnings > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Lints one haproxy.cfg and its SPOE files.
pub(crate) fn lint_file(path: &Path, series: &[&'static str]) -> anyhow::Result<Vec<Finding>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg_name = path.display().to_string();
    let cfg = parse_cfg(&text);
    let mut lint = Lint {
        findings: Vec::new(),
        series: series.to_vec(),
    };
    let mut engines = Vec::new();
    for s in &cfg {
        if !matches!(s.kind.as_str(), "frontend" | "backend" | "listen") {
            continue;
        }
        for l in &s.lines {
            if l.kw(0) != "filter" || l.kw(1) != "spoe" {
                continue;
            }
            let mut engine = None;
            let mut conf = None;
            let mut i = 2;
            while i < l.words.len() {
                match l.kw(i) {
                    "engine" => engine = Some(l.kw(i + 1).to_string()),
                    "config" => conf = Some(l.kw(i + 1).to_string()),
                    _ => {}
                }
                i += 2;
            }
            let Some(conf) = conf else {
                lint.add(
                    &cfg_name,
                    l.no,
                    Severity::Error,
                    "spoe-file",
                    "`filter spoe` without `config <file>`".into(),
                    "HAProxy refuses to start",
                    "add `config /path/to/spoe.conf`".into(),
                );
                continue;
            };
            let candidates = [
                PathBuf::from(&conf),
                path.parent().unwrap_or_else(|| Path::new(".")).join(&conf),
            ];
            let Some((spoe_path, spoe_text)) = candidates
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok().map(|t| (p.clone(), t)))
            else {
                lint.add(
                    &cfg_name,
                    l.no,
                    Severity::Error,
                    "spoe-file",
                    format!("cannot read the SPOE file {conf:?}"),
                    "HAProxy refuses to start when the file is missing (it resolves the path \
                     from its working directory)",
                    "fix the path, or run `spoa lint` from the directory HAProxy starts in".into(),
                );
                continue;
            };
            let sections = parse_spoe(&spoe_text, engine.as_deref());
            engines.push(Engine {
                file: spoe_path.display().to_string(),
                filter_line: l.no,
                engine,
                sections,
            });
        }
    }
    for e in &engines {
        lint_engine(&mut lint, &cfg_name, &cfg, e);
    }
    let mut f = lint.findings;
    f.sort_by(|a, b| (&a.file, a.line, a.severity).cmp(&(&b.file, b.line, b.severity)));
    Ok(f)
}

/// A point where the agent is called: (phase, section, line) — line/section only for rules.
#[derive(Debug, Clone)]
struct CallPoint {
    phase: u32,
    section: Option<usize>,
    line: usize,
    what: String,
}

fn lint_engine(lint: &mut Lint, cfg_name: &str, cfg: &[Section], e: &Engine) {
    let f = e.file.as_str();
    let engine_label = e.engine.as_deref().unwrap_or("(no engine name)");
    let agents: Vec<&SpoeSection> = e
        .sections
        .iter()
        .filter(|s| s.kind == "spoe-agent")
        .collect();
    let Some(agent) = agents.first() else {
        lint.add(
            cfg_name,
            e.filter_line,
            Severity::Error,
            "no-agent",
            format!("no spoe-agent for engine {engine_label} in {f}"),
            "HAProxy refuses to start: the engine's scope must hold exactly one spoe-agent",
            format!(
                "add a `[{}]` scope with a spoe-agent section to {f}",
                e.engine.as_deref().unwrap_or("engine")
            ),
        );
        return;
    };
    let find = |kw: &str| agent.lines.iter().find(|l| l.kw(0) == kw);
    let option = |name: &str| {
        agent
            .lines
            .iter()
            .find(|l| l.kw(0) == "option" && l.kw(1) == name)
    };
    let timeout = |name: &str| {
        agent
            .lines
            .iter()
            .find(|l| l.kw(0) == "timeout" && l.kw(1) == name)
    };
    let prefix = option("var-prefix").map_or_else(|| agent.name.clone(), |l| l.kw(2).to_string());
    let force_set = option("force-set-var").is_some();
    let registered: BTreeSet<String> = agent
        .lines
        .iter()
        .filter(|l| l.kw(0) == "register-var-names")
        .flat_map(|l| l.words[1..].iter().cloned())
        .collect();
    let has_register = agent.lines.iter().any(|l| l.kw(0) == "register-var-names");
    let haproxy_vars: BTreeSet<String> = ["set-on-error", "set-process-time", "set-total-time"]
        .iter()
        .filter_map(|o| option(o).map(|l| l.kw(2).to_string()))
        .collect();

    // --- names
    let mut names: Vec<(usize, String, &str)> = Vec::new();
    if let Some(l) = option("var-prefix") {
        names.push((l.no, l.kw(2).to_string(), "var-prefix"));
    } else {
        // the default prefix is the agent's name, often with a '-' HAProxy refuses
        names.push((
            agent.line,
            agent.name.clone(),
            "the default var-prefix (the agent's name)",
        ));
    }
    for o in ["set-on-error", "set-process-time", "set-total-time"] {
        if let Some(l) = option(o) {
            names.push((l.no, l.kw(2).to_string(), o));
        }
    }
    for l in agent
        .lines
        .iter()
        .filter(|l| l.kw(0) == "register-var-names")
    {
        for w in &l.words[1..] {
            names.push((l.no, w.clone(), "register-var-names"));
        }
    }
    for (line, name, what) in &names {
        if !valid_var_name(name) {
            lint.add(
                f,
                *line,
                Severity::Error,
                "var-name",
                format!("{what} {name:?}: HAProxy variable names use only [A-Za-z0-9._]"),
                "HAProxy rejects the name (or the agent's set-var with it is dropped)",
                {
                    let fixed = name.replace(
                        |c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'),
                        "_",
                    );
                    if what.starts_with("the default") {
                        format!("add `option var-prefix {fixed}`")
                    } else {
                        format!("rename it, e.g. {fixed:?}")
                    }
                },
            );
            continue;
        }
        if !what.contains("var-prefix") {
            let full = format!("txn.{prefix}.{name}");
            if full.len() > 63 {
                lint.add(
                    f,
                    *line,
                    Severity::Error,
                    "var-name",
                    format!("{full} is {} bytes long", full.len()),
                    "HAProxy builds scope.prefix.name in a 64-byte buffer: up to 3.4 the name is \
                     truncated (the variable the config reads is never set), later versions \
                     refuse it",
                    "shorten the variable name or the var-prefix".into(),
                );
            }
        }
    }

    // --- mandatory and recommended agent settings
    match find("use-backend") {
        None => lint.add(
            f,
            agent.line,
            Severity::Error,
            "use-backend",
            format!("spoe-agent {} has no use-backend", agent.name),
            "HAProxy refuses to start without the agents' backend",
            "add `use-backend <backend>`".into(),
        ),
        Some(l) => lint_backend(lint, cfg_name, cfg, f, l, &timeout),
    }
    if let Some(l) = timeout("processing") {
        if parse_haproxy_duration(l.kw(2)).is_none() {
            lint.add(
                f,
                l.no,
                Severity::Error,
                "timeout-processing",
                format!("invalid duration {:?}", l.kw(2)),
                "HAProxy refuses to start",
                "use e.g. `timeout processing 500ms`".into(),
            );
        }
    } else {
        lint.add(
            f,
            agent.line,
            Severity::Error,
            "timeout-processing",
            format!("spoe-agent {} has no `timeout processing`", agent.name),
            "without it a NOTIFY the agent never answers holds the request until a client or \
             server timeout, and the agent cannot know its deadline",
            "add `timeout processing 500ms` and run the agent with the same deadline (spoa echo \
             --processing-timeout 500ms)"
                .into(),
        );
    }
    if lint.any_2x() {
        for t in ["hello", "idle"] {
            if timeout(t).is_none() {
                lint.add(
                    f,
                    agent.line,
                    Severity::Warning,
                    "timeouts",
                    format!("spoe-agent {} has no `timeout {t}`", agent.name),
                    "HAProxy 2.x warns about it (`missing timeouts for SPOE agent`) and then \
                     never gives up on a silent agent connection",
                    format!(
                        "add `timeout {t} {}` (ignored, and harmless, on 3.1+)",
                        if t == "hello" { "2s" } else { "2m" }
                    ),
                );
            }
        }
    }
    if option("set-on-error").is_none() {
        lint.add(
            f,
            agent.line,
            Severity::Warning,
            "set-on-error",
            format!("spoe-agent {} has no `option set-on-error`", agent.name),
            "errors (agent down: 257, timeout: 1) are invisible to the configuration: the \
             variables are just missing and the request goes on as if the agent said nothing",
            format!(
                "add `option set-on-error error` and act on txn.{prefix}.error (`spoa explain` \
                 decodes its values)"
            ),
        );
    }

    // --- what the agent sends and when
    let messages: Vec<&SpoeSection> = e
        .sections
        .iter()
        .filter(|s| s.kind == "spoe-message")
        .collect();
    let agent_messages: Vec<String> = agent
        .lines
        .iter()
        .filter(|l| l.kw(0) == "messages")
        .flat_map(|l| l.words[1..].iter().cloned())
        .collect();
    let mut points: Vec<CallPoint> = Vec::new();
    for name in &agent_messages {
        let Some(m) = messages.iter().find(|m| &m.name == name) else {
            continue;
        };
        if let Some(ev) = m.lines.iter().find(|l| l.kw(0) == "event")
            && let Some(p) = event_phase(ev.kw(1))
        {
            points.push(CallPoint {
                phase: p,
                section: None,
                line: ev.no,
                what: format!("event {} of message {}", ev.kw(1), m.name),
            });
        }
    }
    let agent_groups: Vec<(usize, String)> = agent
        .lines
        .iter()
        .filter(|l| l.kw(0) == "groups")
        .flat_map(|l| l.words[1..].iter().map(move |g| (l.no, g.clone())))
        .collect();
    for (line, g) in &agent_groups {
        if !e
            .sections
            .iter()
            .any(|s| s.kind == "spoe-group" && &s.name == g)
        {
            lint.add(
                f,
                *line,
                Severity::Error,
                "unknown-group",
                format!(
                    "spoe-agent {} lists group {g}, which has no spoe-group section",
                    agent.name
                ),
                "HAProxy refuses to start",
                format!("add `spoe-group {g}` with its `messages`, or remove it from `groups`"),
            );
        }
    }
    // send-spoe-group rules for this engine
    for (si, s) in cfg.iter().enumerate() {
        for l in &s.lines {
            let Some(pos) = l.words.iter().position(|w| w == "send-spoe-group") else {
                continue;
            };
            if Some(l.kw(pos + 1)) != e.engine.as_deref() {
                continue;
            }
            let group = l.kw(pos + 2);
            if !agent_groups.iter().any(|(_, g)| g == group) {
                lint.add(
                    cfg_name,
                    l.no,
                    Severity::Error,
                    "unknown-group",
                    format!(
                        "send-spoe-group {} {group}: agent {} has no such group",
                        l.kw(pos + 1),
                        agent.name
                    ),
                    "HAProxy refuses to start (the group must be listed by the agent's `groups`)",
                    format!(
                        "add {group} to `groups` of spoe-agent {} in {f}",
                        agent.name
                    ),
                );
            }
            if let Some(p) = rule_phase(&s.kind, l) {
                points.push(CallPoint {
                    phase: p,
                    section: Some(si),
                    line: l.no,
                    what: format!("send-spoe-group {} in {} {}", l.kw(pos + 2), s.kind, s.name),
                });
            }
        }
    }
    // all messages of one event share one NOTIFY; each send-spoe-group rule is its own call
    let distinct: BTreeSet<(u32, Option<usize>)> = points
        .iter()
        .map(|p| (p.phase, p.section.map(|_| p.line)))
        .collect();
    if distinct.len() > 1 && option("continue-on-error").is_none() {
        lint.add(
            f,
            agent.line,
            Severity::Warning,
            "continue-on-error",
            format!(
                "spoe-agent {} is called {} times per transaction without `option continue-on-error`",
                agent.name,
                distinct.len()
            ),
            "after the first error (e.g. 257, agent unreachable) HAProxy skips every later \
             event and group of this agent for the rest of the transaction, unnoticed",
            "add `option continue-on-error`".into(),
        );
    }
    if lint.all_mux() {
        let ignored: [(&str, &str); 7] = [
            ("option", "async"),
            ("option", "send-frag-payload"),
            ("timeout", "hello"),
            ("timeout", "idle"),
            ("max-waiting-frames", ""),
            ("maxconnrate", ""),
            ("maxerrrate", ""),
        ];
        for l in &agent.lines {
            let (a, b) = if l.kw(0) == "no" {
                (l.kw(1), l.kw(2))
            } else {
                (l.kw(0), l.kw(1))
            };
            if let Some((k, o)) = ignored
                .iter()
                .find(|(k, o)| *k == a && (o.is_empty() || *o == b))
            {
                let what = if o.is_empty() {
                    k.to_string()
                } else {
                    format!("{k} {o}")
                };
                lint.add(
                    f,
                    l.no,
                    Severity::Warning,
                    "ignored-option",
                    format!("`{what}` is ignored by HAProxy 3.1+"),
                    "HAProxy 3.1 rewrote SPOE on a multiplexer: async, fragmentation, hello/idle \
                     timeouts and the rate limits are parsed but have no effect, so tuning them \
                     changes nothing",
                    if a == "timeout" {
                        "remove it; the backend's `timeout connect`/`timeout server` govern the \
                         connection now"
                            .into()
                    } else {
                        "remove it".into()
                    },
                );
            }
        }
    }

    // --- variables read in the configuration
    let agent_var = |full: &str| -> Option<String> {
        let (scope, rest) = full.split_once('.')?;
        if !SCOPES.contains(&scope) {
            return None;
        }
        rest.strip_prefix(prefix.as_str())?
            .strip_prefix('.')
            .map(str::to_string)
    };
    let mut reported_unregistered = BTreeSet::new();
    for (si, s) in cfg.iter().enumerate() {
        if !matches!(s.kind.as_str(), "frontend" | "backend" | "listen") {
            continue;
        }
        // named ACLs of the section: `acl blocked var(txn.waf.block) -m bool`
        let acls: Vec<(&str, Vec<String>)> = s
            .lines
            .iter()
            .filter(|l| l.kw(0) == "acl")
            .map(|l| {
                let reads = var_refs(&l.text)
                    .into_iter()
                    .filter(|(_, w)| !w)
                    .map(|(n, _)| n)
                    .collect();
                (l.kw(1), reads)
            })
            .collect();
        for l in &s.lines {
            // direct reads, then reads through the ACLs a rule's condition names
            let mut refs: Vec<(String, Option<&str>)> = var_refs(&l.text)
                .into_iter()
                .filter(|(_, w)| !w)
                .map(|(n, _)| (n, None))
                .collect();
            if l.kw(0) != "acl"
                && let Some(cond) = l.words.iter().position(|w| w == "if" || w == "unless")
            {
                for w in &l.words[cond + 1..] {
                    let name = w.trim_start_matches('!');
                    if let Some((acl, reads)) = acls.iter().find(|(a, _)| *a == name) {
                        refs.extend(reads.iter().map(|n| (n.clone(), Some(*acl))));
                    }
                }
            }
            for (full, via_acl) in refs {
                let Some(name) = agent_var(&full) else {
                    continue;
                };
                if haproxy_vars.contains(&name) {
                    continue;
                }
                if via_acl.is_none()
                    && has_register
                    && !force_set
                    && !registered.contains(&name)
                    && reported_unregistered.insert(name.clone())
                {
                    lint.add(
                        cfg_name,
                        l.no,
                        Severity::Warning,
                        "unregistered-var",
                        format!("{full} is read here but {name} is not in register-var-names"),
                        "HAProxy creates an agent's variable only when its name is referenced in \
                         the configuration, registered, or `option force-set-var` is on; this \
                         agent keeps a register-var-names list, and a name missing from it is \
                         dropped silently wherever the configuration does not spell it out \
                         (Lua, another file, a renamed rule)",
                        format!("add {name} to register-var-names in {f}:{}", agent.line),
                    );
                }
                let Some(rp) = rule_phase(&s.kind, l) else {
                    continue;
                };
                if points.is_empty() {
                    continue;
                }
                // set too early: a session event fires before any transaction exists
                let txn_scoped = ["txn.", "req.", "res."].iter().any(|p| full.starts_with(p));
                if txn_scoped
                    && points
                        .iter()
                        .all(|p| p.section.is_none() && (p.phase == 4 || p.phase == 45))
                {
                    let whens: Vec<&str> = points.iter().map(|p| p.what.as_str()).collect();
                    lint.add(
                        cfg_name,
                        l.no,
                        Severity::Warning,
                        "event-order",
                        format!(
                            "{full} is read here, but agent {} is only called on session events",
                            agent.name
                        ),
                        &format!(
                            "session events ({}) fire once per connection, outside any \
                             transaction: variables the agent sets in txn, req or res scope are \
                             lost before this rule runs",
                            whens.join(", ")
                        ),
                        format!(
                            "have the agent set it in sess scope and read var(sess.{prefix}.{name}), \
                             or send the message on an HTTP event"
                        ),
                    );
                    continue;
                }
                let before = points.iter().any(|p| {
                    p.phase < rp || (p.phase == rp && p.section == Some(si) && p.line < l.no)
                });
                if !before {
                    let whens: Vec<&str> = points.iter().map(|p| p.what.as_str()).collect();
                    let same_phase_later = points
                        .iter()
                        .any(|p| p.phase == rp && p.section == Some(si) && p.line > l.no);
                    lint.add(
                        cfg_name,
                        l.no,
                        Severity::Error,
                        "event-order",
                        format!(
                            "{full} is read by {}{} before agent {} has set it",
                            phase_name(rp),
                            via_acl.map_or_else(String::new, |a| format!(" (through acl {a})")),
                            agent.name
                        ),
                        &format!(
                            "the agent is called on {}, {} these rules, so the variable is \
                             always missing here",
                            whens.join(", "),
                            if same_phase_later {
                                "all of which come after"
                            } else {
                                "all of which run after"
                            }
                        ),
                        if same_phase_later {
                            "move the send-spoe-group rule above this line".into()
                        } else {
                            "read it in later rules, or call the agent earlier (an earlier \
                             event, or `http-request send-spoe-group` above this rule)"
                                .into()
                        },
                    );
                }
            }
        }
    }

    // --- message arguments reading variables set by rules that run after the event
    for name in &agent_messages {
        let Some(m) = messages.iter().find(|m| &m.name == name) else {
            lint.add(
                f,
                agent.line,
                Severity::Error,
                "unknown-message",
                format!(
                    "spoe-agent {} lists message {name}, which has no spoe-message section",
                    agent.name
                ),
                "HAProxy refuses to start",
                format!("add `spoe-message {name}` or remove it from `messages`"),
            );
            continue;
        };
        let Some(ev) = m.lines.iter().find(|l| l.kw(0) == "event") else {
            continue;
        };
        let Some(ep) = event_phase(ev.kw(1)) else {
            continue;
        };
        for al in m.lines.iter().filter(|l| l.kw(0) == "args") {
            for (full, write) in var_refs(&al.text) {
                if write {
                    continue;
                }
                let mut writes: Vec<(u32, usize, String)> = Vec::new();
                for s in cfg
                    .iter()
                    .filter(|s| matches!(s.kind.as_str(), "frontend" | "backend" | "listen"))
                {
                    for l in &s.lines {
                        let sets = var_refs(&l.text).iter().any(|(n, w)| *w && *n == full);
                        if let (true, Some(p)) = (sets, rule_phase(&s.kind, l)) {
                            writes.push((p, l.no, s.name.clone()));
                        }
                    }
                }
                if !writes.is_empty() && writes.iter().all(|(p, _, _)| *p > ep) {
                    let (p, line, sname) = &writes[0];
                    lint.add(
                        f,
                        al.no,
                        Severity::Error,
                        "event-order",
                        format!(
                            "message {} reads {full}, which is set by {} ({cfg_name}:{line} in {sname}), after its event {} fires",
                            m.name,
                            phase_name(*p),
                            ev.kw(1)
                        ),
                        &format!(
                            "{} fires before the {}, so the argument is always empty (NULL) \
                             when the message is built",
                            ev.kw(1),
                            phase_name(*p)
                        ),
                        format!(
                            "drop the event: put the message in a spoe-group and send it with \
                             `http-request send-spoe-group {} <group>` below {cfg_name}:{line}",
                            e.engine.as_deref().unwrap_or("<engine>")
                        ),
                    );
                }
            }
        }
    }
}

fn lint_backend<'a>(
    lint: &mut Lint,
    cfg_name: &str,
    cfg: &[Section],
    f: &str,
    l: &Line,
    timeout: &dyn Fn(&str) -> Option<&'a Line>,
) {
    let name = l.kw(1);
    let Some(be) = cfg
        .iter()
        .find(|s| (s.kind == "backend" || s.kind == "listen") && s.name == name)
    else {
        lint.add(
            f,
            l.no,
            Severity::Error,
            "use-backend",
            format!("backend {name:?} does not exist in {cfg_name}"),
            "HAProxy refuses to start",
            "declare the backend of the agents in haproxy.cfg".into(),
        );
        return;
    };
    let defaults = be.defaults.and_then(|d| cfg.get(d));
    let setting = |kw: &str, sub: Option<&str>| -> Option<(&Line, bool)> {
        fn pick<'s>(s: &'s Section, kw: &str, sub: Option<&str>) -> Option<&'s Line> {
            s.lines
                .iter()
                .rev()
                .find(|x| x.kw(0) == kw && sub.is_none_or(|v| x.kw(1) == v))
        }
        pick(be, kw, sub)
            .map(|x| (x, true))
            .or_else(|| defaults.and_then(|d| pick(d, kw, sub).map(|x| (x, false))))
    };
    let mode = setting("mode", None);
    let mode_name = mode.map_or("tcp", |(x, _)| x.kw(1));
    let mode_line = mode.map_or(be.line, |(x, own)| if own { x.no } else { be.line });
    match mode_name {
        "http" => lint.add(
            cfg_name,
            mode_line,
            Severity::Error,
            "backend-mode",
            format!(
                "the agents' backend {name} is in mode http{}",
                if mode.is_some_and(|(_, own)| !own) {
                    " (inherited from defaults)"
                } else {
                    ""
                }
            ),
            "HAProxy refuses an SPOE backend in HTTP mode",
            if lint.any_2x() {
                format!("add `mode tcp` to backend {name}")
            } else {
                format!("add `mode spop` to backend {name}")
            },
        ),
        "spop" if lint.any_2x() => lint.add(
            cfg_name,
            mode_line,
            Severity::Error,
            "backend-mode",
            format!("backend {name} uses `mode spop`, which exists only since HAProxy 3.1"),
            "HAProxy 2.6 to 3.0 refuse to start",
            "use `mode tcp` (3.1+ converts it), or lint with --series 3.1 or later if the \
             configuration never runs on older versions"
                .into(),
        ),
        _ => {}
    }
    if !be
        .lines
        .iter()
        .any(|x| x.kw(0) == "option" && x.kw(1) == "spop-check")
    {
        lint.add(
            cfg_name,
            be.line,
            Severity::Warning,
            "spop-check",
            format!("the agents' backend {name} has no `option spop-check`"),
            "without a health check HAProxy keeps sending to a dead agent: every request pays a \
             failed connection (set-on-error 257) until the agent is back",
            format!("add `option spop-check` to backend {name} and `check` to its servers"),
        );
    }
    let has_balance = be.lines.iter().any(|x| x.kw(0) == "balance");
    if !has_balance
        && lint.series.contains(&"2.6")
        && let Some(d) = defaults
        && let Some(b) = d
            .lines
            .iter()
            .find(|x| x.kw(0) == "balance" && x.kw(1) == "source")
    {
        lint.add(
            cfg_name,
            b.no,
            Severity::Warning,
            "balance-source",
            format!("backend {name} (the agents) inherits `balance source` from defaults"),
            "on HAProxy 2.6 the SPOE's own connections have no client address, so source \
             hashing sends them all to the same agent server",
            format!("add `balance roundrobin` to backend {name}"),
        );
    }
    if lint.any_2x() {
        for (t, be_kw) in [("hello", "connect"), ("idle", "server")] {
            let Some(tl) = timeout(t) else { continue };
            let Some(spoe_t) = parse_haproxy_duration(tl.kw(2)) else {
                continue;
            };
            let Some((bl, _)) = setting("timeout", Some(be_kw)) else {
                continue;
            };
            let Some(be_t) = parse_haproxy_duration(bl.kw(2)) else {
                continue;
            };
            if be_t < spoe_t {
                lint.add(
                    cfg_name,
                    bl.no,
                    Severity::Warning,
                    "timeouts",
                    format!(
                        "backend {name}: timeout {be_kw} {} is shorter than the SPOE's timeout {t} {} ({f}:{})",
                        bl.kw(2),
                        tl.kw(2),
                        tl.no
                    ),
                    "on HAProxy 2.x the connection is cut by the backend timeout before the \
                     SPOE's own timeout applies (idle connections closed abruptly, hello \
                     never completing)",
                    format!("make `timeout {be_kw}` of backend {name} longer than {}", tl.kw(2)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_vars() {
        assert_eq!(
            split_words("http-request deny if { var(txn.a.b) -m str \"x y\" } # c"),
            vec![
                "http-request",
                "deny",
                "if",
                "{",
                "var(txn.a.b)",
                "-m",
                "str",
                "\"x y\"",
                "}"
            ]
        );
        assert_eq!(
            var_refs("http-request set-var(txn.x) var(txn.a.b),lower"),
            vec![("txn.x".to_string(), true), ("txn.a.b".to_string(), false)]
        );
        assert_eq!(
            var_refs("http-request set-var-fmt(txn.y) %[var(sess.z)]"),
            vec![("txn.y".to_string(), true), ("sess.z".to_string(), false)]
        );
        assert_eq!(parse_haproxy_duration("3m"), Some(Duration::from_secs(180)));
        assert_eq!(
            parse_haproxy_duration("500"),
            Some(Duration::from_millis(500))
        );
    }
}
