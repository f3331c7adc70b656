//! `spoa decode`: pretty-prints frames from hex or binary input. The frame printers here are
//! shared with `client` and `replay`.

use std::fmt::Write as _;
use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};
use spop_proto::frame::{
    DEFAULT_MAX_FRAME_SIZE, Disconnect, Frame, FrameHeader, MIN_FRAME_LEN, split_frame,
};
use spop_proto::{Action, DecodeError, FrameType, HeaderBlock, KvList, StatusCode, TypedData};

use crate::args::{InputFormat, decode_input, to_hex, typed_json};

/// Pretty-print SPOP frames from hex, binary or a `spoa tap` recording.
///
/// Input is detected: a `spoa tap` recording (it starts with `SPOATAP`), hex text (any input
/// that is text), or raw binary frames (anything else). Text that is not valid hex is an
/// error naming the line, never read as binary; --hex and --bin force a format.
///
/// The hex grammar: pairs of hex digits, alone or run together (`00 00 00 07`, `00000007`,
/// `0x07`); whitespace and commas are ignored; `#` comments run to the end of the line;
/// `"quoted strings"` stand for their bytes (escapes `\" \\ \n \r \t \0 \xNN`). So the
/// worked frames of the protocol notes can be pasted as they are.
///
/// Each frame is printed with its offset, type, flags and ids, then its KV-list, messages
/// (unnamed arguments shown as `#0`, `#1`...) or actions. Malformed frames are reported with
/// the status an agent would answer, and decoding goes on at the next frame when its length
/// is sound. A BINARY argument that is a valid `req.hdrs_bin` header block is also shown as
/// its headers. Exit status 1 when any frame is malformed.
#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// File to read, or `-` for standard input.
    #[arg(default_value = "-")]
    input: String,
    /// The input is hex text (default: auto-detect).
    #[arg(long, conflicts_with = "bin")]
    hex: bool,
    /// The input is raw binary (default: auto-detect).
    #[arg(long)]
    bin: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Frames longer than this are reported as too big (status 3).
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: u32,
}

/// Reads a file or standard input (`-`).
pub(crate) fn read_input(path: &str) -> anyhow::Result<Vec<u8>> {
    if path == "-" {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("cannot read standard input")?;
        Ok(data)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {path}"))
    }
}

pub(crate) fn run(args: &DecodeArgs) -> anyhow::Result<ExitCode> {
    let raw = read_input(&args.input)?;
    if crate::recording::is_recording(&raw) && !args.hex && !args.bin {
        return decode_recording(args, &raw);
    }
    let data = match decode_input(&raw, InputFormat::from_flags(args.hex, args.bin)) {
        Ok(d) => d,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    json!({ "error": "not valid hex", "line": e.line, "message": e.message })
                );
                return Ok(ExitCode::FAILURE);
            }
            anyhow::bail!(
                "{}: not valid hex at line {}: {} (binary input: --bin)",
                args.input,
                e.line,
                e.message
            );
        }
    };
    if data.is_empty() {
        anyhow::bail!("no input");
    }
    let report = decode_all(&data, args.max_frame_size);
    if args.json {
        let frames: Vec<Value> = report.frames.iter().map(|f| f.json.clone()).collect();
        let errors: Vec<Value> = report.errors.iter().map(FrameError::json).collect();
        println!(
            "{}",
            json!({ "frames": frames, "errors": errors, "bytes": data.len() })
        );
    } else {
        let mut out = String::new();
        let mut errors = report.errors.iter().peekable();
        for f in &report.frames {
            while let Some(e) = errors.next_if(|e| e.offset < f.offset) {
                e.write_text(&mut out);
            }
            out.push_str(&f.text);
        }
        for e in errors {
            e.write_text(&mut out);
        }
        print!("{out}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints a `spoa tap` recording: every record with its time, connection and direction,
/// frames decoded.
fn decode_recording(args: &DecodeArgs, raw: &[u8]) -> anyhow::Result<ExitCode> {
    use crate::recording::{self, Kind};
    let rec = recording::parse(raw).map_err(|e| anyhow::anyhow!("{}: {e}", args.input))?;
    let mut out = String::new();
    let mut records = Vec::new();
    let mut malformed = 0u64;
    let _ = writeln!(
        out,
        "spoa tap recording, started at {} (µs since the Unix epoch), {} records",
        rec.start_unix_us,
        rec.records.len()
    );
    for r in &rec.records {
        #[allow(clippy::cast_precision_loss)]
        let secs = r.time_us as f64 / 1e6;
        let _ = write!(out, "[{secs:>12.6}] #{} {}: ", r.conn, r.kind.label());
        let mut obj = json!({
            "offset": r.offset, "time_us": r.time_us, "conn": r.conn, "kind": r.kind.label(),
        });
        match r.kind {
            Kind::ToAgent | Kind::ToHaproxy => {
                let d = &r.data;
                match split_frame(d, u32::MAX) {
                    Ok(Some((h, payload, _))) => {
                        match decode_frame(r.offset as u64, d.len() - 4, &h, payload) {
                            Ok(f) => {
                                // "frame at offset N: " is the record's; keep the rest
                                let text = f.text.split_once(": ").map_or(f.text.as_str(), |x| x.1);
                                out.push_str(text);
                                obj["frame"] = f.json;
                            }
                            Err(e) => {
                                malformed += 1;
                                let _ = writeln!(
                                    out,
                                    "malformed {} ({e}, status {}): {}",
                                    h.frame_type,
                                    e.status(),
                                    to_hex(d)
                                );
                                obj["error"] = json!(e.to_string());
                                obj["hex"] = json!(to_hex(d));
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        malformed += 1;
                        let _ = writeln!(out, "malformed frame: {}", to_hex(d));
                        obj["error"] = json!("malformed frame");
                        obj["hex"] = json!(to_hex(d));
                    }
                }
            }
            Kind::GarbageToAgent | Kind::GarbageToHaproxy => {
                let shown = &r.data[..r.data.len().min(64)];
                let _ = writeln!(
                    out,
                    "{} bytes that are not SPOP frames{}: {}{}\n  text: {:?}",
                    r.data.len(),
                    if crate::net::looks_like_http(&r.data) {
                        " (HTTP)"
                    } else {
                        ""
                    },
                    to_hex(shown),
                    if r.data.len() > 64 { "..." } else { "" },
                    String::from_utf8_lossy(shown)
                );
                obj["hex"] = json!(to_hex(&r.data));
            }
            Kind::Open | Kind::Close | Kind::Note => {
                let text = String::from_utf8_lossy(&r.data);
                let _ = writeln!(out, "{text}");
                obj["text"] = json!(text);
            }
        }
        records.push(obj);
    }
    if let Some(at) = rec.truncated_at {
        let _ = writeln!(
            out,
            "the file ends inside a record at offset {at} (the tap was stopped abruptly)"
        );
    }
    if args.json {
        println!(
            "{}",
            json!({
                "recording": { "start_unix_us": rec.start_unix_us, "truncated_at": rec.truncated_at },
                "records": records,
                "malformed": malformed,
            })
        );
    } else {
        print!("{out}");
    }
    Ok(if malformed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One decoded frame, as text and as JSON.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) offset: u64,
    pub(crate) text: String,
    pub(crate) json: Value,
}

/// A malformed frame or an incomplete input.
#[derive(Debug)]
pub(crate) struct FrameError {
    pub(crate) offset: u64,
    pub(crate) message: String,
    /// The status an agent would answer with (absent for an incomplete input).
    pub(crate) status: Option<StatusCode>,
}

impl FrameError {
    fn write_text(&self, out: &mut String) {
        let _ = writeln!(out, "error at offset {}: {}", self.offset, self.message);
        match self.status {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "  an agent would answer with status {} ({})",
                    s.0,
                    s.reason().unwrap_or("unassigned")
                );
            }
            None => out.push_str("  an agent would keep waiting for the rest of the frame\n"),
        }
    }

    fn json(&self) -> Value {
        json!({
            "offset": self.offset,
            "error": self.message,
            "status": self.status.map(status_json),
        })
    }
}

#[derive(Debug, Default)]
struct Report {
    frames: Vec<Decoded>,
    errors: Vec<FrameError>,
}

/// Splits and decodes every frame of `data`. After a malformed payload or header the next
/// frame is still decoded (its length is known); a bad length prefix ends the walk.
fn decode_all(data: &[u8], max_frame_size: u32) -> Report {
    let mut report = Report::default();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let offset = pos as u64;
        match split_frame(rest, max_frame_size) {
            Ok(Some((header, payload, used))) => {
                match decode_frame(offset, used - 4, &header, payload) {
                    Ok(d) => report.frames.push(d),
                    Err(e) => report.errors.push(FrameError {
                        offset,
                        message: format!(
                            "{} payload (stream-id {}, frame-id {}): {e}",
                            header.frame_type, header.stream_id, header.frame_id
                        ),
                        status: Some(e.status()),
                    }),
                }
                pos += used;
            }
            Ok(None) => {
                let message = if rest.len() < 4 {
                    format!("incomplete length prefix ({} bytes)", rest.len())
                } else {
                    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    format!(
                        "incomplete frame: length {len} needs {} bytes, {} present",
                        u64::from(len) + 4,
                        rest.len()
                    )
                };
                report.errors.push(FrameError {
                    offset,
                    message,
                    status: None,
                });
                break;
            }
            Err(error) => {
                report.errors.push(FrameError {
                    offset,
                    message: error.to_string(),
                    status: Some(error.status()),
                });
                match error {
                    DecodeError::FrameTooLarge { .. } | DecodeError::FrameTooShort(_) => break,
                    // the header is bad but the length is fine: skip the frame
                    _ => {
                        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                        debug_assert!(len >= MIN_FRAME_LEN);
                        pos += 4 + len as usize;
                    }
                }
            }
        }
    }
    report
}

fn flags_text(flags: u32) -> String {
    let mut names = Vec::new();
    if flags & 1 != 0 {
        names.push("FIN".to_string());
    }
    if flags & 2 != 0 {
        names.push("ABORT".to_string());
    }
    if flags & !3 != 0 {
        names.push(format!("reserved {:#x}", flags & !3));
    }
    if names.is_empty() {
        format!("{flags:#010x}")
    } else {
        format!("{flags:#010x} ({})", names.join("|"))
    }
}

fn status_json(s: StatusCode) -> Value {
    json!({ "code": s.0, "name": s.name(), "reason": s.reason() })
}

fn type_text(t: FrameType) -> String {
    match t.name() {
        Some(name) => format!("{name} ({})", t.0),
        None => format!("unknown frame type {}", t.0),
    }
}

/// Header remarks: what HAProxy would object to.
fn header_warnings(header: &FrameHeader, header_len: usize) -> Vec<String> {
    let mut w = Vec::new();
    let t = header.frame_type;
    let control = matches!(
        t,
        FrameType::HAPROXY_HELLO
            | FrameType::HAPROXY_DISCONNECT
            | FrameType::AGENT_HELLO
            | FrameType::AGENT_DISCONNECT
    );
    if control && (header.stream_id != 0 || header.frame_id != 0 || header_len != 7) {
        w.push(format!(
            "{t} must carry stream-id 0 and frame-id 0 as the bytes 00 00"
        ));
    }
    if !header.flags.is_fin() && t != FrameType::NOTIFY && t != FrameType::UNSET {
        w.push("FIN flag not set (HAProxy requires it)".to_string());
    }
    if header.flags.0 & !3 != 0 {
        w.push("reserved flag bits set".to_string());
    }
    if (t == FrameType::NOTIFY || t == FrameType::ACK) && header.frame_id == 0 {
        w.push("frame-id 0 on a NOTIFY/ACK".to_string());
    }
    w
}

/// Decodes one frame (payload validated) into text lines and JSON.
pub(crate) fn decode_frame(
    offset: u64,
    len: usize,
    header: &FrameHeader,
    payload: &[u8],
) -> Result<Decoded, DecodeError> {
    let frame = Frame::parse(header, payload)?;
    let header_len = len - payload.len();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "frame at offset {offset}: {}, length {len}, flags {}, stream-id {}, frame-id {}",
        type_text(header.frame_type),
        flags_text(header.flags.0),
        header.stream_id,
        header.frame_id
    );
    let mut obj = serde_json::Map::new();
    obj.insert("offset".into(), json!(offset));
    obj.insert(
        "type".into(),
        json!(header.frame_type.name().unwrap_or("UNKNOWN")),
    );
    obj.insert("type_code".into(), json!(header.frame_type.0));
    obj.insert("length".into(), json!(len));
    obj.insert("flags".into(), json!(header.flags.0));
    obj.insert("stream_id".into(), json!(header.stream_id));
    obj.insert("frame_id".into(), json!(header.frame_id));
    let warnings = header_warnings(header, header_len);
    match frame {
        Frame::HaproxyHello(_) | Frame::AgentHello(_) => {
            obj.insert("kv".into(), kv_body(payload, &mut text)?);
        }
        Frame::HaproxyDisconnect(d) | Frame::AgentDisconnect(d) => {
            obj.insert("kv".into(), kv_body(payload, &mut text)?);
            disconnect_body(&d, &mut text, &mut obj);
        }
        Frame::Notify(list) => {
            let mut messages = Vec::new();
            if list.iter().next().is_none() {
                text.push_str("  (no messages)\n");
            }
            for m in list.iter() {
                let n = m.len();
                let _ = writeln!(
                    text,
                    "  message \"{}\" ({n} arg{})",
                    m.name().escape_debug(),
                    if n == 1 { "" } else { "s" }
                );
                let mut args = Vec::new();
                for (i, a) in m.args().enumerate() {
                    if a.name.is_empty() {
                        let _ = writeln!(text, "    #{i} (unnamed) = {}", a.value);
                    } else {
                        let _ = writeln!(text, "    {} = {}", a.name.escape_debug(), a.value);
                    }
                    let mut arg = json!({ "name": a.name, "value": typed_json(&a.value) });
                    if let Some(h) = header_block(&a.value) {
                        let _ = writeln!(
                            text,
                            "      header block ({} header{}):",
                            h.len(),
                            if h.len() == 1 { "" } else { "s" }
                        );
                        for x in h.iter() {
                            let _ = writeln!(
                                text,
                                "        {}: {}",
                                x.name.escape_ascii(),
                                x.value.escape_ascii()
                            );
                        }
                        arg["headers"] = Value::Array(
                            h.iter()
                                .map(|x| {
                                    json!({
                                        "name": String::from_utf8_lossy(x.name),
                                        "value": String::from_utf8_lossy(x.value),
                                    })
                                })
                                .collect(),
                        );
                    }
                    args.push(arg);
                }
                messages.push(json!({ "name": m.name(), "args": args }));
            }
            obj.insert("messages".into(), Value::Array(messages));
        }
        Frame::Ack(list) => {
            let actions: Vec<Value> = list.iter().map(|a| action_json(&a)).collect();
            if list.is_empty() {
                text.push_str("  (no actions)\n");
            }
            for a in list.iter() {
                let _ = writeln!(text, "  {a}");
            }
            obj.insert("actions".into(), Value::Array(actions));
        }
        Frame::NotifyFragment(p) | Frame::Unset(p) | Frame::Unknown(_, p) => {
            let what = if header.frame_type == FrameType::NOTIFY
                || header.frame_type == FrameType::UNSET
            {
                "fragment"
            } else {
                "payload"
            };
            let _ = writeln!(text, "  {what} ({} bytes): {}", p.len(), to_hex(p));
            obj.insert("payload_hex".into(), json!(to_hex(p)));
        }
        _ => {
            let _ = writeln!(
                text,
                "  payload ({} bytes): {}",
                payload.len(),
                to_hex(payload)
            );
            obj.insert("payload_hex".into(), json!(to_hex(payload)));
        }
    }
    for w in &warnings {
        let _ = writeln!(text, "  warning: {w}");
    }
    if !warnings.is_empty() {
        obj.insert("warnings".into(), json!(warnings));
    }
    Ok(Decoded {
        offset,
        text,
        json: Value::Object(obj),
    })
}

/// A BINARY value that is a valid, non-empty `req.hdrs_bin` block (an empty block, `00 00`,
/// is more likely just two zero bytes).
fn header_block<'a>(v: &TypedData<'a>) -> Option<HeaderBlock<'a>> {
    match *v {
        TypedData::Binary(b) => HeaderBlock::parse(b).ok().filter(|h| !h.is_empty()),
        _ => None,
    }
}

fn kv_body(payload: &[u8], text: &mut String) -> Result<Value, DecodeError> {
    let mut kv = Vec::new();
    for item in KvList::new(payload) {
        let (key, value) = item?;
        let _ = writeln!(text, "  {} = {value}", key.escape_debug());
        kv.push(json!({ "key": key, "value": typed_json(&value) }));
    }
    Ok(Value::Array(kv))
}

fn disconnect_body(
    d: &Disconnect<'_>,
    text: &mut String,
    obj: &mut serde_json::Map<String, Value>,
) {
    match (d.status_code, d.status()) {
        (_, Some(s)) => {
            let _ = writeln!(text, "  status: {s}");
            obj.insert("status".into(), status_json(s));
        }
        (Some(c), None) => {
            let _ = writeln!(text, "  status: {c} (out of range)");
            obj.insert("status".into(), json!({ "code": c }));
        }
        (None, None) => text.push_str("  status: missing status-code\n"),
    }
}

/// An ACK action as JSON.
pub(crate) fn action_json(a: &Action<'_>) -> Value {
    match a {
        Action::SetVar { scope, name, value } => json!({
            "action": "set-var",
            "scope": scope.as_str(),
            "name": name,
            "value": typed_json(value),
        }),
        Action::UnsetVar { scope, name } => json!({
            "action": "unset-var",
            "scope": scope.as_str(),
            "name": name,
        }),
        other => json!({ "action": format!("{other}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_hex_text;

    #[test]
    fn header_block_arguments_are_shown_as_headers() {
        let mut block = Vec::new();
        HeaderBlock::encode([("host", "a"), ("user-agent", "curl/8")], &mut block);
        let mut wire = bytes::BytesMut::new();
        spop_proto::Notify::builder(spop_proto::NotifyId::new(1, 1))
            .message("check-request")
            .arg("hdrs", &block[..])
            .arg("raw", &b"\x01"[..])
            .build()
            .encode(&mut wire);
        let r = decode_all(&wire, 16380);
        assert!(r.errors.is_empty());
        let text = &r.frames[0].text;
        assert!(
            text.contains(
                "      header block (2 headers):\n        host: a\n        user-agent: curl/8\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("header block").count(), 1, "{text}");
        let json = &r.frames[0].json["messages"][0]["args"];
        assert_eq!(json[0]["headers"][1]["value"], "curl/8");
        assert!(json[1].get("headers").is_none());
    }

    #[test]
    fn worked_ack() {
        let data =
            parse_hex_text(r#"00 00 00 15 67 00 00 00 01 01 01 01 03 02 08 "ip_score" 04 2a"#)
                .unwrap();
        let r = decode_all(&data, 16380);
        assert!(r.errors.is_empty());
        assert_eq!(
            r.frames[0].text,
            "frame at offset 0: ACK (103), length 21, flags 0x00000001 (FIN), stream-id 1, frame-id 1\n  set-var txn.ip_score = int64:42\n"
        );
    }

    #[test]
    fn errors_continue_when_possible() {
        // set-var with 2 args, then a valid empty ACK, then a huge length
        let data = parse_hex_text(
            "00 00 00 0d 67 00 00 00 01 01 01 01 02 02 01 6e 00  00 00 00 07 67 00 00 00 01 05 01  ff ff ff ff",
        )
        .unwrap();
        let r = decode_all(&data, 16380);
        assert_eq!(r.frames.len(), 1);
        assert_eq!(r.errors.len(), 2);
        assert_eq!(r.errors[0].offset, 0);
        assert_eq!(r.errors[0].status, Some(StatusCode::INVALID));
        assert_eq!(r.errors[1].offset, 28);
        assert_eq!(r.errors[1].status, Some(StatusCode::TOO_BIG));
    }
}
