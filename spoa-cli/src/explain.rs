//! `spoa explain`: what a `set-on-error` value or an SPOE log line means.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use serde_json::{Value, json};
use spop_proto::StatusCode;

/// Explain a `set-on-error` value or an SPOE log line.
///
/// VALUE is what `option set-on-error <var>` stored (also the `st=` of an SPOE log line):
/// 0 (no error), 1 (timeout), 2 (resource allocation), 3 (frame too big), 4 (fragmentation
/// aborted), 5 (interrupted), 255 (unknown) or 256+N (SPOP status N: 257 = I/O error, 355 =
/// the agent itself sent status 99, 356 and up = an agent-specific code).
///
/// LOGLINE is one line HAProxy logged for an event or group, with or without the syslog
/// prefix, in either format:
///
///   2.x:  SPOE: [my-agent] <EVENT:on-frontend-http-request> sid=8 st=0 0/0/0/0/1 1/1 0/0 0/8
///
///   3.1+: SPOE: [my-agent] <GROUP:my-group> sid=8 st=0 1 0/8
///
/// Each field is named and explained, with the cause and usual fix of the status. Quote the
/// line as one argument. Exit status 1 when the input is neither.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// A set-on-error value (`257`, `256+1`) or an SPOE log line (quoted).
    #[arg(value_name = "VALUE|LOGLINE", required = true, num_args = 1..)]
    input: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let input = args.input.join(" ");
    let input = input.trim();
    let doc = if let Some(v) = parse_value(input) {
        explain_value(v)
    } else if let Some(line) = parse_log_line(input) {
        explain_line(&line)?
    } else {
        bail!(
            "{input:?} is neither a set-on-error value (0-5, 255, 256+N) nor an SPOE log line \
             (`SPOE: [AGENT] <EVENT:name> sid=.. st=.. ...`)"
        );
    };
    if args.json {
        println!("{}", doc.json);
    } else {
        print!("{}", doc.text);
    }
    Ok(ExitCode::SUCCESS)
}

/// An explanation as text and as JSON.
pub(crate) struct Explained {
    pub(crate) text: String,
    pub(crate) json: Value,
}

/// `257`, `256+1`, `0x101`.
fn parse_value(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('+') {
        return a
            .trim()
            .parse::<u64>()
            .ok()?
            .checked_add(b.trim().parse().ok()?);
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    s.parse().ok()
}

/// What one set-on-error value means: (kind, meaning, cause, fix).
pub(crate) struct ValueInfo {
    pub(crate) value: u64,
    pub(crate) kind: &'static str,
    pub(crate) meaning: String,
    pub(crate) status: Option<StatusCode>,
    pub(crate) cause: &'static str,
    pub(crate) fix: &'static str,
}

/// The documented values (the tests explain each).
#[cfg(test)]
pub(crate) const DOCUMENTED: [u64; 22] = [
    0, 1, 2, 3, 4, 5, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269,
    355,
];

pub(crate) fn value_info(v: u64) -> ValueInfo {
    let haproxy = |meaning: &str, cause, fix| ValueInfo {
        value: v,
        kind: "haproxy",
        meaning: meaning.to_string(),
        status: None,
        cause,
        fix,
    };
    match v {
        0 => haproxy(
            "no error",
            "the event or group was processed and its ACK applied",
            "nothing to fix",
        ),
        1 => haproxy(
            "timeout: no ACK within `timeout processing`",
            "the agent answered too late or not at all (slow handler, a hung dependency, too \
             few agent connections, or the NOTIFY waited in HAProxy's queue: see the timers of \
             the SPOE log line), or `timeout processing` is shorter than the agent's deadline",
            "make the agent answer within its deadline (spoa-runtime: --processing-timeout equal \
             to `timeout processing`), raise `timeout processing`, or add agent capacity",
        ),
        2 => haproxy(
            "resource allocation error in HAProxy",
            "HAProxy could not allocate a buffer or an applet (memory pressure, maxconn, \
             tune.buffers.limit)",
            "check HAProxy's memory and buffer settings; look for other allocation errors in \
             its log",
        ),
        3 => haproxy(
            "the NOTIFY would exceed max-frame-size and cannot be fragmented",
            "the message arguments (often req.body or req.hdrs_bin) do not fit in the frame \
             size negotiated with the agent, so the message was not sent at all",
            "send big arguments only when they fit (a second spoe-group guarded by \
             req.body_size), or raise tune.bufsize and the agent's max-frame-size",
        ),
        4 => haproxy(
            "fragmentation aborted (HAProxy 2.x)",
            "a fragmented NOTIFY was interrupted before its last fragment",
            "disable fragmentation (`no option send-frag-payload`) or look at why the stream \
             was aborted",
        ),
        5 => haproxy(
            "processing interrupted by HAProxy",
            "the stream ended (client aborted, or HAProxy stopping) before the ACK arrived",
            "usually harmless; frequent values mean clients give up before the agent answers",
        ),
        255 => haproxy(
            "unknown error",
            "HAProxy hit an error it has no code for",
            "read HAProxy's log around the same time",
        ),
        256..=511 => {
            #[allow(clippy::cast_possible_truncation)] // <= 255
            let code = StatusCode((v - 256) as u32);
            let (cause, fix) = status_cause(code);
            let meaning = match code.reason() {
                Some(r) => format!(
                    "SPOP status {} ({}): {r}",
                    code.0,
                    code.name().unwrap_or("")
                ),
                None if code.0 >= 100 => format!(
                    "SPOP status {}: an agent-specific code (the agent sent AGENT-DISCONNECT \
                     with it)",
                    code.0
                ),
                None => format!("SPOP status {}: unassigned", code.0),
            };
            ValueInfo {
                value: v,
                kind: "spop-status",
                meaning,
                status: Some(code),
                cause,
                fix,
            }
        }
        _ => ValueInfo {
            value: v,
            kind: "undocumented",
            meaning: "not a value HAProxy documents".into(),
            status: None,
            cause: "HAProxy stores 1-5, 255 or 256+N (N an SPOP status code up to 255)",
            fix: "check that the variable is the one of `option set-on-error`",
        },
    }
}

/// Cause and fix of a connection-level SPOP status behind 256+N.
fn status_cause(code: StatusCode) -> (&'static str, &'static str) {
    match code.0 {
        0 => (
            "a normal DISCONNECT arrived while the event was pending (agent restart or \
             graceful shutdown)",
            "let the agent drain in-flight NOTIFYs before it disconnects",
        ),
        1 => (
            "the connection to the agent failed: refused, reset, or closed with NOTIFYs in \
             flight (an agent crash or restart, a firewall, an idle connection cut). Without \
             `option continue-on-error` SPOE stays off for the rest of the transaction",
            "check that the agent runs and is UP (`option spop-check`, `spoa check`); add \
             `option continue-on-error` so one failure does not disable later events",
        ),
        2 => (
            "a timeout on the agent connection (hello, idle or the agent's own)",
            "compare `timeout hello`/`timeout idle` (2.x) or the backend's timeouts (3.1+) with \
             the agent's",
        ),
        3 => (
            "a frame larger than max-frame-size",
            "align max-frame-size on both sides (agent --max-frame-size, HAProxy tune.bufsize)",
        ),
        4 => (
            "one side sent a frame the other could not parse",
            "record the traffic (`spoa tap`) and look at it with `spoa decode`",
        ),
        5..=7 => (
            "the HELLO lacked a mandatory key",
            "fix the agent's (or HAProxy's) HELLO; `spoa check` validates an agent's",
        ),
        8 => (
            "no common SPOP version",
            "the agent must accept version 2.0",
        ),
        9 => (
            "max-frame-size out of range (below 256 or above the offer)",
            "the agent must answer min(its size, HAProxy's offer)",
        ),
        10 | 11 => (
            "a fragmented frame without negotiated fragmentation, or interlaced fragments",
            "disable fragmentation on one side (HAProxy 3.1+ never fragments)",
        ),
        12 => (
            "an ACK for a NOTIFY HAProxy does not know (wrong ids, or an ACK after the \
             processing timeout on 2.x)",
            "echo stream-id and frame-id verbatim; answer within `timeout processing`",
        ),
        13 => (
            "resource allocation error on the sending side",
            "check memory on the agent (or HAProxy)",
        ),
        99 => (
            "the agent itself sent AGENT-DISCONNECT with status 99 (\"unknown error\"): often \
             an agent that fails on a message it does not expect, not HAProxy",
            "read the agent's log: it disconnected on purpose; `spoa client` can replay the \
             message",
        ),
        c if c >= 100 => (
            "the agent disconnected with its own status code",
            "read the agent's log or documentation for this code",
        ),
        _ => ("an unassigned status code", "read the agent's log"),
    }
}

fn explain_value(v: u64) -> Explained {
    let i = value_info(v);
    let mut text = String::new();
    let _ = writeln!(text, "set-on-error {}: {}", i.value, i.meaning);
    let _ = writeln!(text, "  cause: {}", i.cause);
    let _ = writeln!(text, "  fix:   {}", i.fix);
    if i.value >= 256 {
        let _ = writeln!(
            text,
            "  note:  256+N values are SPOP status codes of the connection (N = {}); \
             without `option continue-on-error` SPOE is off for the rest of the transaction",
            i.value - 256
        );
    }
    Explained {
        text,
        json: value_json(&i),
    }
}

fn value_json(i: &ValueInfo) -> Value {
    json!({
        "value": i.value,
        "kind": i.kind,
        "meaning": i.meaning,
        "status": i.status.map(|s| json!({"code": s.0, "name": s.name(), "reason": s.reason()})),
        "cause": i.cause,
        "fix": i.fix,
    })
}

/// The fields of an SPOE log line.
#[derive(Debug, Default)]
struct LogLine {
    agent: String,
    /// `EVENT` or `GROUP`.
    kind: String,
    name: String,
    sid: String,
    status: u64,
    /// The slash-separated fields after `st=`, in order.
    fields: Vec<Vec<String>>,
}

fn parse_log_line(s: &str) -> Option<LogLine> {
    let at = s.find("SPOE: [")?;
    let rest = &s[at + "SPOE: [".len()..];
    let (agent, rest) = rest.split_once(']')?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('<')?;
    let (target, rest) = rest.split_once('>')?;
    let (kind, name) = target.split_once(':')?;
    let mut line = LogLine {
        agent: agent.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        ..LogLine::default()
    };
    let mut words = rest.split_whitespace();
    for w in words.by_ref() {
        if let Some(v) = w.strip_prefix("sid=") {
            line.sid = v.to_string();
        } else if let Some(v) = w.strip_prefix("st=") {
            line.status = v.parse().ok()?;
            break;
        }
    }
    for w in words {
        line.fields
            .push(w.split('/').map(str::to_string).collect::<Vec<_>>());
    }
    Some(line)
}

fn explain_line(l: &LogLine) -> anyhow::Result<Explained> {
    let shape: Vec<usize> = l.fields.iter().map(Vec::len).collect();
    let (format, named): (&str, Vec<(&str, &str, String)>) = match shape.as_slice() {
        [5, 2, 2, 2] => {
            let t = &l.fields[0];
            let f = |i: usize, j: usize| l.fields[i][j].clone();
            (
                "2.x",
                vec![
                    (
                        "reqT",
                        "ms to encode the message(s) (request time)",
                        t[0].clone(),
                    ),
                    ("qT", "ms waiting in the sending queue", t[1].clone()),
                    ("wT", "ms waiting for the ACK after sending", t[2].clone()),
                    ("resT", "ms to apply the ACK (response time)", t[3].clone()),
                    ("pT", "ms of processing in total", t[4].clone()),
                    (
                        "idles",
                        "idle applets (connections) of the agent on this thread",
                        f(1, 0),
                    ),
                    (
                        "applets",
                        "applets (connections) of the agent on this thread",
                        f(1, 1),
                    ),
                    ("nb_sending", "streams waiting to send a NOTIFY", f(2, 0)),
                    ("nb_waiting", "streams waiting for an ACK", f(2, 1)),
                    ("nb_error", "errors of this agent so far", f(3, 0)),
                    ("nb_processed", "events/groups processed so far", f(3, 1)),
                ],
            )
        }
        [1, 2] | [2] => {
            let (pt, counts) = if shape.len() == 2 {
                (l.fields[0][0].clone(), &l.fields[1])
            } else {
                ("?".to_string(), &l.fields[0])
            };
            (
                "3.1+",
                vec![
                    ("pT", "ms of processing in total", pt),
                    ("nb_error", "errors of this agent so far", counts[0].clone()),
                    (
                        "nb_processed",
                        "events/groups processed so far",
                        counts[1].clone(),
                    ),
                ],
            )
        }
        _ => bail!(
            "SPOE line with an unknown layout after st= (expected the 2.x \
             `reqT/qT/wT/resT/pT idles/applets sending/waiting errors/processed` or the 3.1+ \
             `pT errors/processed`)"
        ),
    };
    let i = value_info(l.status);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "SPOE log line ({format} format) of agent {:?}, {} {:?}, stream {}",
        l.agent,
        l.kind.to_lowercase(),
        l.name,
        l.sid
    );
    let _ = writeln!(text, "  st={}: {}", l.status, i.meaning);
    if l.status != 0 {
        let _ = writeln!(text, "    cause: {}", i.cause);
        let _ = writeln!(text, "    fix:   {}", i.fix);
    }
    for (k, what, v) in &named {
        let note = if v == "-1" {
            " (-1: interrupted before this step)"
        } else {
            ""
        };
        let _ = writeln!(text, "  {k:<12} {v:>6}  {what}{note}");
    }
    let mut notes = Vec::new();
    if format == "2.x" && l.fields[0][1] == "-1" && l.fields[0][2] == "-1" {
        notes.push(
            "qT and wT are -1: the NOTIFY never left HAProxy's queue, the agent never saw it \
             (no free agent connection: raise maxconnrate, check the agent is UP)",
        );
    } else if format == "2.x" && l.fields[0][2] == "-1" && l.status == 1 {
        notes.push("wT is -1: sent but no ACK arrived in time: the agent was too slow");
    }
    for n in &notes {
        let _ = writeln!(text, "  note: {n}");
    }
    let fields: serde_json::Map<String, Value> = named
        .iter()
        .map(|(k, what, v)| {
            let value = v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n));
            ((*k).to_string(), json!({"value": value, "meaning": what}))
        })
        .collect();
    let json = json!({
        "format": format,
        "agent": l.agent,
        "kind": l.kind.to_lowercase(),
        "name": l.name,
        "sid": l.sid,
        "status": value_json(&i),
        "fields": fields,
        "notes": notes,
    });
    Ok(Explained { text, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(parse_value("256+99"), Some(355));
        assert_eq!(parse_value("257"), Some(257));
        assert_eq!(value_info(355).status, Some(StatusCode::UNKNOWN));
        assert_eq!(value_info(257).kind, "spop-status");
        assert_eq!(value_info(600).kind, "undocumented");
        for v in DOCUMENTED {
            assert_ne!(value_info(v).kind, "undocumented", "{v}");
        }
    }

    #[test]
    fn lines() {
        let l = parse_log_line(
            "Dec  1 10:00:00 host haproxy[1]: SPOE: [echo-agent] <EVENT:on-frontend-http-request> sid=3 st=0 0/0/0/0/1 1/1 0/0 0/4",
        )
        .unwrap();
        assert_eq!(l.agent, "echo-agent");
        assert_eq!(l.fields.len(), 4);
        let e = explain_line(&l).unwrap();
        assert_eq!(e.json["format"], "2.x");
        let l = parse_log_line("SPOE: [a] <GROUP:g> sid=3 st=257 1 1/4").unwrap();
        let e = explain_line(&l).unwrap();
        assert_eq!(e.json["format"], "3.1+");
        assert_eq!(e.json["status"]["status"]["code"], 1);
    }
}
