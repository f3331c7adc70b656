//! `spoa replay`: sends recorded HAProxy-side frames to an agent and shows the replies.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use spop_proto::frame::{
    DEFAULT_MAX_FRAME_SIZE, Disconnect, FrameHeader, HaproxyHello, split_frame,
};
use spop_proto::{FrameType, NotifyId, StatusCode};

use crate::args::{Addr, InputFormat, decode_input, parse_duration};
use crate::client::{HAPROXY_PIPELINE_LIMIT, check_agent_hello, encode_notify};
use crate::decode::{decode_frame, read_input};
use crate::net::{FrameConn, Received, RecvError, connect};

/// Send recorded HAProxy-side frames to an agent and show (or compare) its replies.
///
/// The input is what `spoa decode` reads: hex, binary, or a `spoa tap` recording.
///
/// Hex or binary frames: the HAProxy-side frames (HELLO, NOTIFY, DISCONNECT) are sent in
/// order on one connection and the agent's replies are printed decoded. Added: a HELLO
/// first when the recording has none (max-frame-size --max-frame-size, `pipelining`), and a
/// DISCONNECT (status 0) at the end when it has none. Skipped: agent-side frames (AGENT-HELLO,
/// ACK, AGENT-DISCONNECT) and anything after a DISCONNECT. NOTIFYs are pipelined (at most 20
/// in flight, 1 without pipelining) and each must be ACKed within --timeout; --rewrite-ids
/// renumbers them.
///
/// A `spoa tap` recording: every recorded connection is replayed in turn, HAProxy's side as
/// recorded (garbage included), and each reply is compared with the one the agent sent when
/// recorded: ACKs by stream-id/frame-id, byte for byte. Differences are listed; exit status
/// 1 when there is any, or on any error.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// Agent address: host:port, or a Unix socket (unix:/path or any path with a '/').
    #[arg(long, value_name = "ADDR")]
    connect: Addr,
    /// The recording, or `-` for standard input.
    file: String,
    /// Give NOTIFYs fresh stream-ids 1, 3, 5... and frame-id 1 (HAProxy 3.x style).
    #[arg(long)]
    rewrite_ids: bool,
    /// The recording is hex text (default: auto-detect).
    #[arg(long, conflicts_with = "bin")]
    hex: bool,
    /// The recording is raw binary (default: auto-detect).
    #[arg(long)]
    bin: bool,
    /// Time allowed for each reply.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// max-frame-size offered by the HELLO added when the recording has none.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: u32,
    /// Print one JSON object at the end instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

struct Session {
    /// JSON mode: the events, printed at the end.
    events: Option<Vec<Value>>,
    conn: FrameConn,
    in_flight: Vec<NotifyId>,
    pipelining: bool,
    errors: u64,
    timeout: Duration,
}

impl Session {
    /// One line of output (text mode) or one event (JSON mode).
    fn say(&mut self, text: &str, event: impl FnOnce() -> Value) {
        match &mut self.events {
            Some(ev) => ev.push(event()),
            None => println!("{text}"),
        }
    }

    /// A frame received from the agent.
    fn received(&mut self, f: &Received) -> bool {
        match decode_frame(f.offset, f.len, &f.header, &f.payload) {
            Ok(d) => {
                let json = d.json.clone();
                self.say(
                    &format!("<- {}", d.text.trim_end()),
                    || json!({"direction": "received", "frame": json}),
                );
                true
            }
            Err(e) => {
                self.say(
                    &format!(
                        "<- malformed {} at offset {}: {e} (status {})",
                        f.header.frame_type,
                        f.offset,
                        e.status()
                    ),
                    || {
                        json!({"direction": "received", "malformed": f.header.frame_type.name(),
                               "offset": f.offset, "error": e.to_string()})
                    },
                );
                false
            }
        }
    }

    /// Reads, prints and accounts one reply.
    async fn reply(&mut self) -> anyhow::Result<Received> {
        let f = self
            .conn
            .recv(self.timeout)
            .await
            .with_context(|| format!("{} NOTIFY(s) without ACK", self.in_flight.len()))?
            .ok_or_else(|| anyhow!("the agent closed the connection"))?;
        if !self.received(&f) {
            self.errors += 1;
        }
        if f.header.frame_type == FrameType::ACK {
            let id = f.header.id();
            match self.in_flight.iter().position(|&i| i == id) {
                Some(pos) => {
                    self.in_flight.remove(pos);
                }
                None => {
                    self.say(
                        &format!("   ^ ACK for an unknown NOTIFY ({id})"),
                        || json!({"error": format!("ACK for an unknown NOTIFY ({id})")}),
                    );
                    self.errors += 1;
                }
            }
        }
        Ok(f)
    }

    async fn wait_acks(&mut self, limit: usize) -> anyhow::Result<()> {
        while self.in_flight.len() > limit {
            let f = self.reply().await?;
            if f.header.frame_type == FrameType::AGENT_DISCONNECT {
                bail!("the agent disconnected");
            }
        }
        Ok(())
    }
}

pub(crate) async fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let raw = read_input(&args.file)?;
    if crate::recording::is_recording(&raw) && !args.hex && !args.bin {
        return replay_recording(args, &raw).await;
    }
    let data = decode_input(&raw, InputFormat::from_flags(args.hex, args.bin)).map_err(|e| {
        anyhow!(
            "{}: not valid hex at line {}: {} (binary input: --bin)",
            args.file,
            e.line,
            e.message
        )
    })?;
    // (header, offset, total length, payload offset within the frame)
    let mut frames: Vec<(FrameHeader, usize, usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match split_frame(&data[pos..], u32::MAX) {
            Ok(Some((h, payload, used))) => {
                frames.push((h, pos, used, used - payload.len()));
                pos += used;
            }
            Ok(None) => bail!("{}: incomplete frame at offset {pos}", args.file),
            Err(e) => bail!("{}: malformed frame at offset {pos}: {e}", args.file),
        }
    }
    if frames.is_empty() {
        bail!("{}: no frames", args.file);
    }

    let io = connect(&args.connect)
        .await
        .with_context(|| format!("cannot connect to {}", args.connect))?;
    let mut s = Session {
        events: args.json.then(Vec::new),
        conn: FrameConn::new(io, args.max_frame_size.max(DEFAULT_MAX_FRAME_SIZE)),
        in_flight: Vec::new(),
        pipelining: false,
        errors: 0,
        timeout: args.timeout,
    };
    let mut out = BytesMut::new();
    let first = frames
        .iter()
        .map(|f| f.0.frame_type)
        .find(|t| !is_agent_side(*t));
    if first != Some(FrameType::HAPROXY_HELLO) {
        HaproxyHello::new(args.max_frame_size, "pipelining").encode(&mut out);
        let hello = out.split();
        hello_exchange(&mut s, &hello, "added").await?;
    }
    let mut next_sid = 1u64;
    let mut disconnected = false;
    for (i, &(h, start, len, payload_at)) in frames.iter().enumerate() {
        let bytes = &data[start..start + len];
        match h.frame_type {
            FrameType::HAPROXY_HELLO => hello_exchange(&mut s, bytes, "recorded").await?,
            FrameType::NOTIFY => {
                let window = if s.pipelining {
                    HAPROXY_PIPELINE_LIMIT
                } else {
                    1
                };
                s.wait_acks(window - 1).await?;
                let id = if args.rewrite_ids {
                    let id = NotifyId::new(next_sid, 1);
                    next_sid += 2;
                    out.clear();
                    encode_notify(&mut out, id, &bytes[payload_at..]);
                    s.conn.send(&out).await?;
                    id
                } else {
                    s.conn.send(bytes).await?;
                    h.id()
                };
                s.say(
                    &format!(
                        "-> NOTIFY {id}{} ({} bytes)",
                        if args.rewrite_ids {
                            format!(" (recorded as {})", h.id())
                        } else {
                            String::new()
                        },
                        len
                    ),
                    || {
                        json!({"direction": "sent", "type": "NOTIFY", "stream_id": id.stream_id,
                               "frame_id": id.frame_id, "recorded_stream_id": h.stream_id,
                               "recorded_frame_id": h.frame_id, "length": len})
                    },
                );
                s.in_flight.push(id);
            }
            FrameType::HAPROXY_DISCONNECT => {
                s.wait_acks(0).await?;
                finish(&mut s, bytes).await?;
                if i + 1 < frames.len() {
                    let n = frames.len() - i - 1;
                    s.say(
                        &format!("warning: {n} frame(s) after the DISCONNECT not sent"),
                        || json!({"skipped": n, "why": "after the DISCONNECT"}),
                    );
                }
                disconnected = true;
                break;
            }
            t if is_agent_side(t) => {
                s.say(
                    &format!(
                        "-- {} at offset {start} skipped (an agent-side frame)",
                        h.frame_type
                    ),
                    || json!({"skipped": h.frame_type.name(), "offset": start}),
                );
            }
            other => {
                s.conn.send(bytes).await?;
                s.say(
                    &format!("-> {other} ({len} bytes, sent as recorded)"),
                    || json!({"direction": "sent", "type": other.name(), "length": len}),
                );
            }
        }
    }
    if !disconnected {
        s.wait_acks(0).await?;
        out.clear();
        Disconnect::encode(
            &mut out,
            FrameType::HAPROXY_DISCONNECT,
            StatusCode::NORMAL,
            "normal",
        );
        let bye = out.split();
        finish(&mut s, &bye).await?;
    }
    if let Some(events) = &s.events {
        println!(
            "{}",
            json!({ "events": events, "errors": s.errors, "ok": s.errors == 0 })
        );
    }
    Ok(if s.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

const fn is_agent_side(t: FrameType) -> bool {
    matches!(
        t,
        FrameType::AGENT_HELLO | FrameType::AGENT_DISCONNECT | FrameType::ACK
    )
}

async fn hello_exchange(s: &mut Session, hello: &[u8], what: &str) -> anyhow::Result<()> {
    s.conn.send(hello).await?;
    let (h, payload, _) =
        split_frame(hello, u32::MAX)?.ok_or_else(|| anyhow!("incomplete HELLO"))?;
    let offered = HaproxyHello::parse(payload)
        .ok()
        .and_then(|p| p.max_frame_size)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(DEFAULT_MAX_FRAME_SIZE);
    let caps = HaproxyHello::parse(payload)
        .ok()
        .and_then(|p| p.capabilities)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default();
    s.say(
        &format!(
            "-> {} ({what}, {} bytes, max-frame-size {offered}, capabilities \"{caps}\")",
            h.frame_type,
            hello.len()
        ),
        || {
            json!({"direction": "sent", "type": h.frame_type.name(), "hello": what,
                   "max_frame_size": offered, "capabilities": caps})
        },
    );
    let f = s.reply().await?;
    match check_agent_hello(&f, offered, &caps) {
        Ok(n) => {
            s.say(
                &format!("   negotiated: {}", n.text()),
                || json!({ "negotiated": n.json() }),
            );
            s.pipelining = n.pipelining;
            s.conn.max_frame_size = n.max_frame_size;
            Ok(())
        }
        Err(e) => Err(e.context("handshake failed")),
    }
}

/// Sends a DISCONNECT and waits for the agent's.
async fn finish(s: &mut Session, frame: &[u8]) -> anyhow::Result<()> {
    s.conn.send(frame).await?;
    s.say(
        &format!("-> HAPROXY-DISCONNECT ({} bytes)", frame.len()),
        || json!({"direction": "sent", "type": "HAPROXY-DISCONNECT", "length": frame.len()}),
    );
    loop {
        match s.conn.recv(s.timeout).await {
            Ok(Some(f)) => {
                s.received(&f);
                if f.header.frame_type == FrameType::AGENT_DISCONNECT {
                    s.conn.shutdown().await;
                    return Ok(());
                }
            }
            Ok(None) => {
                s.say(
                    "warning: the agent closed the connection without AGENT-DISCONNECT",
                    || json!({"warning": "closed without AGENT-DISCONNECT"}),
                );
                return Ok(());
            }
            Err(e) => {
                s.say(
                    &format!("warning: no AGENT-DISCONNECT: {e}"),
                    || json!({"warning": format!("no AGENT-DISCONNECT: {e}")}),
                );
                s.errors += 1;
                return Ok(());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `spoa tap` recordings: replay every connection and compare the replies with the recorded ones

/// One recorded connection, in the order of the recording.
struct RecordedConn {
    id: u32,
    peer: String,
    /// HAProxy's side: frames and garbage, in order.
    sent: Vec<crate::recording::Record>,
    /// The agent's frames, in order.
    replies: Vec<Bytes>,
}

/// What the comparison found on one connection.
#[derive(Default)]
struct Compare {
    identical: u64,
    different: Vec<Value>,
    missing: Vec<Value>,
    unexpected: Vec<Value>,
}

/// A frame's type, stream-id and frame-id.
type FrameKey = (FrameType, u64, u64);

/// The frame type and ids of a whole frame (length prefix included).
fn frame_key(frame: &[u8]) -> Option<FrameKey> {
    let (h, _, _) = split_frame(frame, u32::MAX).ok().flatten()?;
    Some((h.frame_type, h.stream_id, h.frame_id))
}

fn frame_text(frame: &[u8]) -> String {
    match split_frame(frame, u32::MAX) {
        Ok(Some((h, payload, used))) => match decode_frame(0, used - 4, &h, payload) {
            Ok(d) => d
                .text
                .split_once(": ")
                .map_or_else(|| d.text.clone(), |x| x.1.to_string()),
            Err(e) => format!("malformed {} ({e})\n", h.frame_type),
        },
        _ => format!("not a frame: {}\n", crate::args::to_hex(frame)),
    }
}

fn frame_json(frame: &[u8]) -> Value {
    match split_frame(frame, u32::MAX) {
        Ok(Some((h, payload, used))) => match decode_frame(0, used - 4, &h, payload) {
            Ok(d) => d.json,
            Err(e) => json!({ "error": e.to_string(), "hex": crate::args::to_hex(frame) }),
        },
        _ => json!({ "hex": crate::args::to_hex(frame) }),
    }
}

pub(crate) async fn replay_recording(args: &ReplayArgs, raw: &[u8]) -> anyhow::Result<ExitCode> {
    use crate::recording::{self, Kind};
    let rec = recording::parse(raw).map_err(|e| anyhow!("{}: {e}", args.file))?;
    let mut conns: Vec<RecordedConn> = Vec::new();
    for r in &rec.records {
        let c = match conns.iter_mut().rposition(|c| c.id == r.conn) {
            Some(i) if r.kind != Kind::Open => &mut conns[i],
            _ if r.kind == Kind::Note => continue,
            _ => {
                conns.push(RecordedConn {
                    id: r.conn,
                    peer: String::from_utf8_lossy(&r.data).into_owned(),
                    sent: Vec::new(),
                    replies: Vec::new(),
                });
                if r.kind == Kind::Open {
                    continue;
                }
                conns.last_mut().expect("pushed")
            }
        };
        match r.kind {
            Kind::ToAgent | Kind::GarbageToAgent => c.sent.push(r.clone()),
            Kind::ToHaproxy | Kind::GarbageToHaproxy => c.replies.push(r.data.clone()),
            _ => {}
        }
    }
    let json_mode = args.json;
    let mut totals = Compare::default();
    let mut per_conn = Vec::new();
    let mut errors = Vec::new();
    for c in &conns {
        if c.sent.is_empty() {
            continue;
        }
        if !json_mode {
            println!("== connection #{} (recorded from {})", c.id, c.peer);
        }
        let mut cmp = Compare::default();
        if let Err(e) = replay_conn(args, c, &mut cmp).await {
            let msg = format!("connection #{}: {e:#}", c.id);
            if !json_mode {
                println!("error: {msg}");
            }
            errors.push(msg);
        }
        if !json_mode {
            println!(
                "   {} identical, {} different, {} missing, {} unexpected",
                cmp.identical,
                cmp.different.len(),
                cmp.missing.len(),
                cmp.unexpected.len()
            );
        }
        per_conn.push(json!({
            "conn": c.id,
            "identical": cmp.identical,
            "different": cmp.different,
            "missing": cmp.missing,
            "unexpected": cmp.unexpected,
        }));
        totals.identical += cmp.identical;
        totals.different.extend(cmp.different);
        totals.missing.extend(cmp.missing);
        totals.unexpected.extend(cmp.unexpected);
    }
    let ok = errors.is_empty()
        && totals.different.is_empty()
        && totals.missing.is_empty()
        && totals.unexpected.is_empty();
    if json_mode {
        println!(
            "{}",
            json!({
                "ok": ok,
                "connections": per_conn,
                "identical": totals.identical,
                "different": totals.different.len(),
                "missing": totals.missing.len(),
                "unexpected": totals.unexpected.len(),
                "errors": errors,
            })
        );
    } else {
        println!(
            "replayed {} connection(s): {} repl{} identical to the recording, {} different, {} missing, {} unexpected{}",
            per_conn.len(),
            totals.identical,
            if totals.identical == 1 { "y" } else { "ies" },
            totals.different.len(),
            totals.missing.len(),
            totals.unexpected.len(),
            if errors.is_empty() {
                String::new()
            } else {
                format!(", {} error(s)", errors.len())
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Replays one connection: HAProxy's bytes as recorded, pipelined like HAProxy (the next
/// NOTIFY goes out while earlier ones wait), and every reply compared with the recorded one
/// of the same type and ids.
async fn replay_conn(args: &ReplayArgs, c: &RecordedConn, cmp: &mut Compare) -> anyhow::Result<()> {
    use crate::recording::Kind;
    let quiet = args.json;
    // recorded replies by (type, ids), in order
    let mut expected: Vec<(Option<FrameKey>, Bytes)> = c
        .replies
        .iter()
        .map(|b| (frame_key(b), b.clone()))
        .collect();
    let io = connect(&args.connect)
        .await
        .with_context(|| format!("cannot connect to {}", args.connect))?;
    let mut conn = FrameConn::new(io, 16 << 20);
    let mut in_flight = 0usize;
    let mut window = 1usize;
    let mut closed = false;

    for r in &c.sent {
        if closed {
            break;
        }
        let key = frame_key(&r.data).filter(|_| r.kind == Kind::ToAgent);
        let ftype = key.map(|k| k.0);
        if ftype == Some(FrameType::NOTIFY) {
            while in_flight >= window && !closed {
                match conn.recv(args.timeout).await {
                    Ok(Some(f)) => {
                        let whole = whole_frame(&f);
                        match check(&mut expected, &whole, cmp, quiet) {
                            Some(FrameType::ACK) => in_flight = in_flight.saturating_sub(1),
                            Some(FrameType::AGENT_DISCONNECT) => closed = true,
                            _ => {}
                        }
                    }
                    Ok(None) => closed = true,
                    Err(e) => bail!("waiting for an ACK: {e}"),
                }
            }
            if closed {
                break;
            }
        }
        if ftype == Some(FrameType::HAPROXY_DISCONNECT) {
            // like HAProxy: the DISCONNECT goes after the pending ACKs
            while in_flight > 0 && !closed {
                match conn.recv(args.timeout).await {
                    Ok(Some(f)) => match check(&mut expected, &whole_frame(&f), cmp, quiet) {
                        Some(FrameType::ACK) => in_flight -= 1,
                        Some(FrameType::AGENT_DISCONNECT) => closed = true,
                        _ => {}
                    },
                    Ok(None) => closed = true,
                    Err(e) => bail!("waiting for ACKs before the DISCONNECT: {e}"),
                }
            }
        }
        conn.send(&r.data).await.context("send")?;
        if !quiet {
            match r.kind {
                Kind::ToAgent => print!("-> {}", frame_text(&r.data)),
                _ => println!("-> {} bytes of garbage, as recorded", r.data.len()),
            }
        }
        match ftype {
            Some(FrameType::NOTIFY) => in_flight += 1,
            Some(FrameType::HAPROXY_HELLO) => match conn.recv(args.timeout).await {
                Ok(Some(f)) => {
                    let whole = whole_frame(&f);
                    if check(&mut expected, &whole, cmp, quiet) == Some(FrameType::AGENT_HELLO) {
                        let caps = spop_proto::frame::AgentHello::parse(&f.payload)
                            .ok()
                            .and_then(|h| h.capabilities)
                            .map(|c| spop_proto::frame::Capabilities::parse(c).pipelining)
                            .unwrap_or(false);
                        window = if caps { HAPROXY_PIPELINE_LIMIT } else { 1 };
                    } else {
                        closed = true;
                    }
                }
                Ok(None) => closed = true,
                Err(e) => bail!("waiting for AGENT-HELLO: {e}"),
            },
            _ => {}
        }
    }
    // the rest of the replies
    while !closed && (in_flight > 0 || !expected.is_empty()) {
        match conn.recv(args.timeout).await {
            Ok(Some(f)) => match check(&mut expected, &whole_frame(&f), cmp, quiet) {
                Some(FrameType::ACK) => in_flight = in_flight.saturating_sub(1),
                Some(FrameType::AGENT_DISCONNECT) => closed = true,
                _ => {}
            },
            Ok(None) => closed = true,
            Err(RecvError::Timeout(_)) if in_flight == 0 => break,
            Err(e) => bail!("waiting for the agent's replies: {e}"),
        }
    }
    conn.shutdown().await;
    for (k, want) in expected {
        if k.is_some_and(|(t, _, _)| t != FrameType::UNSET) {
            let what = k.map_or_else(String::new, |(t, s, f)| {
                format!("{t} stream-id {s}, frame-id {f}")
            });
            if !quiet {
                print!("-- MISSING (recorded, not replayed): {}", frame_text(&want));
            }
            cmp.missing
                .push(json!({ "frame": what, "recorded": frame_json(&want) }));
        }
    }
    Ok(())
}

/// Compares one received frame with the recorded replies (and takes it off them); returns
/// its type.
fn check(
    expected: &mut Vec<(Option<FrameKey>, Bytes)>,
    frame: &[u8],
    cmp: &mut Compare,
    quiet: bool,
) -> Option<FrameType> {
    let key = frame_key(frame);
    let pos = expected.iter().position(|(k, _)| *k == key);
    let what = key.map_or_else(
        || "a frame".to_string(),
        |(t, s, f)| format!("{t} stream-id {s}, frame-id {f}"),
    );
    match pos {
        Some(i) => {
            let (_, want) = expected.remove(i);
            if want[..] == frame[..] {
                cmp.identical += 1;
                if !quiet {
                    print!("<- identical: {}", frame_text(frame));
                }
            } else {
                if !quiet {
                    print!(
                        "<- DIFFERENT {what}\n   recorded: {}   replayed: {}",
                        frame_text(&want),
                        frame_text(frame)
                    );
                }
                cmp.different.push(json!({
                    "frame": what, "recorded": frame_json(&want), "replayed": frame_json(frame),
                }));
            }
        }
        None => {
            if !quiet {
                print!(
                    "<- UNEXPECTED (not in the recording): {}",
                    frame_text(frame)
                );
            }
            cmp.unexpected
                .push(json!({ "frame": what, "replayed": frame_json(frame) }));
        }
    }
    key.map(|k| k.0)
}

/// A received frame with its length prefix, as the tap records it.
fn whole_frame(f: &Received) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + f.len);
    // the payload is the tail of the frame; rebuild header + payload from the raw parts
    #[allow(clippy::cast_possible_truncation)] // a frame length came from a u32
    out.extend_from_slice(&(f.len as u32).to_be_bytes());
    out.push(f.header.frame_type.0);
    out.extend_from_slice(&f.header.flags.0.to_be_bytes());
    let mut ids = BytesMut::new();
    spop_proto::varint::put(&mut ids, f.header.stream_id);
    spop_proto::varint::put(&mut ids, f.header.frame_id);
    out.extend_from_slice(&ids);
    out.extend_from_slice(&f.payload);
    out
}
