//! `spoa replay`: sends recorded HAProxy-side frames to an agent and shows the replies.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use serde_json::{Value, json};
use spop_proto::frame::{
    DEFAULT_MAX_FRAME_SIZE, Disconnect, FrameHeader, HaproxyHello, split_frame,
};
use spop_proto::{FrameType, NotifyId, StatusCode};

use crate::args::{Addr, InputFormat, decode_input, parse_duration};
use crate::client::{HAPROXY_PIPELINE_LIMIT, check_agent_hello, encode_notify};
use crate::decode::{decode_frame, read_input};
use crate::net::{FrameConn, Received, connect};

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
