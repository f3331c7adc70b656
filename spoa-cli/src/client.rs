//! `spoa client`: plays HAProxy against an agent: HELLO, NOTIFY(s), DISCONNECT.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use serde_json::{Value, json};
use spop_proto::frame::{
    ActionList, AgentHello, Capabilities, DEFAULT_MAX_FRAME_SIZE, Disconnect, FrameFlags,
    FrameHeader, HaproxyHello, encode_frame,
};
use spop_proto::{FrameType, Notify, NotifyId, StatusCode};

use crate::args::{Addr, ArgSpec, add_message, header_block_value, parse_duration, parse_header};
use crate::decode::action_json;
use crate::net::{FrameConn, Received, connect};

/// HAProxy allows at most this many NOTIFYs in flight on a pipelined connection.
pub(crate) const HAPROXY_PIPELINE_LIMIT: usize = 20;

/// Play HAProxy: HELLO, NOTIFY(s), DISCONNECT; print the ACKs.
///
/// Sends a HELLO and NOTIFY(s), prints the negotiated parameters and each ACK's actions, then
/// disconnects.
///
/// The NOTIFY carries one message (--message) with the --arg's in order, typed as given:
/// `ip=ipv4:10.0.0.1`, `n=int64:-1`, `s=str:any text`, `b=bin:00 ff` (hex, spaces allowed),
/// `x=null`. An empty name (`=str:x`) makes an unnamed argument, as `args str(x)` does in
/// HAProxy (`spoa echo` answers those as `arg0`, `arg1`... by position). NOTIFYs use
/// stream-ids 1, 3, 5... with frame-id 1, pipelined up to 20 at a time when the agent agreed.
/// Exit status 1 when the agent refuses the handshake, disconnects, or an ACK is missing or
/// malformed.
#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// Agent address: host:port, or a Unix socket (unix:/path or any path with a '/').
    #[arg(long, value_name = "ADDR")]
    connect: Addr,
    /// Message name (the spoe-message section name).
    #[arg(long, value_name = "NAME")]
    message: String,
    /// An argument, `name=TYPE:VALUE`; TYPE is null, bool, int32, uint32, int64, uint64,
    /// ipv4, ipv6, str or bin (hex). An empty name makes an unnamed argument. Repeatable.
    #[arg(long = "arg", value_name = "name=TYPE:VALUE")]
    args: Vec<ArgSpec>,
    /// A header for a `req.hdrs_bin`-style block, `"Name: value"` (the name is lowercased,
    /// as HAProxy stores it). Repeatable; all of them go, in order, into one BINARY argument
    /// (named by --headers-arg) after the --arg ones.
    #[arg(long = "header", value_name = "Name: value", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Name of the argument carrying the --header block.
    #[arg(long, value_name = "NAME", default_value = "hdrs")]
    headers_arg: String,
    /// Send this many NOTIFYs (stream-ids 1, 3, 5..., frame-id 1).
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// max-frame-size offered in the HELLO.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: u32,
    /// Capabilities offered in the HELLO (`pipelining`, or `""`).
    #[arg(long, default_value = "pipelining")]
    capabilities: String,
    /// Time allowed for each reply from the agent.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

/// What the handshake settled.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub(crate) version: String,
    pub(crate) max_frame_size: u32,
    /// The agent's `capabilities` string, as sent.
    pub(crate) agent_capabilities: String,
    /// Both sides offered pipelining.
    pub(crate) pipelining: bool,
}

impl Negotiated {
    pub(crate) fn text(&self) -> String {
        let caps = if self.agent_capabilities.is_empty() {
            "\"\"".to_string()
        } else {
            self.agent_capabilities.clone()
        };
        format!(
            "version {}, max-frame-size {}, capabilities {caps}",
            self.version, self.max_frame_size
        )
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "version": self.version,
            "max_frame_size": self.max_frame_size,
            "capabilities": self.agent_capabilities,
            "pipelining": self.pipelining,
        })
    }
}

/// Sends a HAPROXY-HELLO and validates the AGENT-HELLO (as HAProxy 3.x does); on success the
/// connection's frame limit becomes the negotiated size.
pub(crate) async fn handshake(
    conn: &mut FrameConn,
    max_frame_size: u32,
    capabilities: &str,
    timeout: Duration,
) -> anyhow::Result<Negotiated> {
    let mut buf = BytesMut::new();
    HaproxyHello::new(max_frame_size, capabilities).encode(&mut buf);
    conn.send(&buf).await.context("cannot send HELLO")?;
    let frame = conn
        .recv(timeout)
        .await
        .context("waiting for AGENT-HELLO")?
        .ok_or_else(|| anyhow!("the agent closed the connection instead of answering HELLO"))?;
    let n = check_agent_hello(&frame, max_frame_size, capabilities)?;
    conn.max_frame_size = n.max_frame_size;
    Ok(n)
}

/// Validates the reply to a HELLO.
pub(crate) fn check_agent_hello(
    frame: &Received,
    offered: u32,
    capabilities: &str,
) -> anyhow::Result<Negotiated> {
    match frame.header.frame_type {
        FrameType::AGENT_HELLO => {}
        FrameType::AGENT_DISCONNECT => bail!(
            "the agent refused the handshake: {}",
            disconnect_text(&frame.payload)
        ),
        other => bail!("expected AGENT-HELLO, got {other}"),
    }
    if frame.header.flags.0 != 1 {
        bail!(
            "AGENT-HELLO flags are {:#010x}, HAProxy requires exactly 0x00000001 (FIN)",
            frame.header.flags.0
        );
    }
    if frame.header_len != 7 || frame.header.stream_id != 0 || frame.header.frame_id != 0 {
        bail!("AGENT-HELLO stream-id/frame-id must be 0 (the bytes 00 00)");
    }
    let hello = AgentHello::parse(&frame.payload).context("malformed AGENT-HELLO")?;
    let (size, caps) = hello
        .validate(offered)
        .map_err(|e| anyhow!("invalid AGENT-HELLO: {e} (HAProxy status {})", e.status()))?;
    // HAProxy reads one "MAJOR.MINOR" here, not a list
    let version = String::from_utf8_lossy(hello.version.unwrap_or_default())
        .trim()
        .to_string();
    if version.contains(',') {
        bail!(
            "invalid AGENT-HELLO: version {version:?} is a list, HAProxy expects one version (status {})",
            StatusCode::BAD_VERSION
        );
    }
    let ours = Capabilities::parse(capabilities.as_bytes());
    Ok(Negotiated {
        version,
        max_frame_size: size,
        agent_capabilities: String::from_utf8_lossy(hello.capabilities.unwrap_or_default())
            .into_owned(),
        pipelining: caps.pipelining && ours.pipelining,
    })
}

/// Writes a NOTIFY frame (flags FIN) with this id around an encoded LIST-OF-MESSAGES.
pub(crate) fn encode_notify(out: &mut BytesMut, id: NotifyId, payload: &[u8]) {
    let hdr = FrameHeader::new(
        FrameType::NOTIFY,
        FrameFlags::FIN,
        id.stream_id,
        id.frame_id,
    );
    encode_frame(out, hdr, |b| b.extend_from_slice(payload));
}

/// `status normal (0), message "normal"` for a DISCONNECT payload.
pub(crate) fn disconnect_text(payload: &[u8]) -> String {
    match Disconnect::parse(payload) {
        Ok(d) => {
            let status = d
                .status()
                .map_or_else(|| "missing".to_string(), |s| s.to_string());
            let msg = d.message.map_or_else(
                || "(none)".to_string(),
                |m| format!("\"{}\"", m.escape_ascii()),
            );
            format!("status {status}, message {msg}")
        }
        Err(e) => format!("malformed DISCONNECT ({e})"),
    }
}

fn disconnect_json(payload: &[u8]) -> Value {
    match Disconnect::parse(payload) {
        Ok(d) => json!({
            "status": d.status_code,
            "reason": d.status().and_then(StatusCode::reason),
            "message": d.message.map(|m| String::from_utf8_lossy(m).into_owned()),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

pub(crate) async fn run(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let io = connect(&args.connect)
        .await
        .with_context(|| format!("cannot connect to {}", args.connect))?;
    let mut conn = FrameConn::new(io, args.max_frame_size);
    let n = handshake(
        &mut conn,
        args.max_frame_size,
        &args.capabilities,
        args.timeout,
    )
    .await?;
    if !args.json {
        println!("negotiated: {}", n.text());
    }

    let window = if n.pipelining {
        HAPROXY_PIPELINE_LIMIT
    } else {
        1
    };
    let mut builder = Notify::builder(NotifyId::new(0, 1));
    let mut message_args = args.args.clone();
    if !args.headers.is_empty() {
        message_args.push(ArgSpec {
            name: args.headers_arg.clone(),
            value: header_block_value(&args.headers),
        });
    }
    add_message(&mut builder, &args.message, &message_args);
    let template = builder.build();
    let mut out = BytesMut::new();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut acks = Vec::new();
    let mut next = 0u64;
    while next < args.repeat || !in_flight.is_empty() {
        out.clear();
        while next < args.repeat && in_flight.len() < window {
            let sid = 2 * next + 1;
            let start = out.len();
            encode_notify(&mut out, NotifyId::new(sid, 1), template.payload());
            let len = out.len() - start - 4;
            if len > n.max_frame_size as usize {
                bail!(
                    "the NOTIFY is {len} bytes, above the negotiated max-frame-size {}",
                    n.max_frame_size
                );
            }
            in_flight.push_back(sid);
            next += 1;
        }
        if !out.is_empty() {
            conn.send(&out).await.context("cannot send NOTIFY")?;
        }
        let frame = conn
            .recv(args.timeout)
            .await
            .context("waiting for ACK")?
            .ok_or_else(|| anyhow!("the agent closed the connection with NOTIFYs in flight"))?;
        match frame.header.frame_type {
            FrameType::ACK => {
                let id = frame.header.id();
                let Some(pos) = in_flight
                    .iter()
                    .position(|&s| s == id.stream_id && id.frame_id == 1)
                else {
                    bail!("ACK for an unknown NOTIFY ({id})");
                };
                in_flight.remove(pos);
                if !frame.header.flags.is_fin() {
                    bail!("ACK without FIN ({id}): HAProxy would close with status 10");
                }
                let list = ActionList::parse(&frame.payload)
                    .with_context(|| format!("malformed ACK ({id})"))?;
                if args.json {
                    let actions: Vec<Value> = list.iter().map(|a| action_json(&a)).collect();
                    acks.push(json!({
                        "stream_id": id.stream_id,
                        "frame_id": id.frame_id,
                        "actions": actions,
                    }));
                } else {
                    let count = list.iter().count();
                    println!(
                        "ACK {id}: {count} action{}",
                        if count == 1 { "" } else { "s" }
                    );
                    for a in list.iter() {
                        println!("  {a}");
                    }
                }
            }
            FrameType::AGENT_DISCONNECT => bail!(
                "the agent disconnected: {}",
                disconnect_text(&frame.payload)
            ),
            other => bail!("expected ACK, got {other}"),
        }
    }

    out.clear();
    Disconnect::encode(
        &mut out,
        FrameType::HAPROXY_DISCONNECT,
        StatusCode::NORMAL,
        "normal",
    );
    conn.send(&out).await.context("cannot send DISCONNECT")?;
    let reply = match conn.recv(args.timeout).await {
        Ok(Some(f)) if f.header.frame_type == FrameType::AGENT_DISCONNECT => Some(f),
        Ok(Some(f)) => {
            eprintln!(
                "warning: expected AGENT-DISCONNECT, got {}",
                f.header.frame_type
            );
            None
        }
        Ok(None) => {
            eprintln!("warning: the agent closed the connection without AGENT-DISCONNECT");
            None
        }
        Err(e) => {
            eprintln!("warning: no AGENT-DISCONNECT: {e}");
            None
        }
    };
    conn.shutdown().await;
    if args.json {
        let doc = json!({
            "negotiated": n.json(),
            "acks": acks,
            "disconnect": reply.as_ref().map(|f| disconnect_json(&f.payload)),
        });
        println!("{doc}");
    } else if let Some(f) = &reply {
        println!("agent disconnect: {}", disconnect_text(&f.payload));
    }
    Ok(ExitCode::SUCCESS)
}
