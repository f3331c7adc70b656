//! `spoa tap`: a transparent recording proxy between HAProxy and an agent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::args::Addr;
use crate::net::{AnyListener, Stream, connect};
use crate::recording::{Kind, Recorder, Splitter};

/// Record SPOP traffic between HAProxy and an agent, forwarding it unchanged.
///
/// Point HAProxy's agent backend at --listen; every connection is relayed to --upstream byte
/// for byte, both directions, as soon as the bytes arrive (TCP_NODELAY on both sides), and
/// every frame is recorded to --record with its direction, its connection and a timestamp
/// (µs). Bytes that cannot be frames (a length below 7 or above --max-frame-size; say an HTTP
/// client on the wrong port) are forwarded too and recorded as garbage; an incomplete frame
/// at a close is garbage as well. Health checks are recorded like any connection.
///
/// The recording is written by a separate thread, so forwarding never waits for the disk;
/// when the disk cannot keep up, records are dropped and a note says how many. Recording
/// stops (a note at the end of the file, a message on stderr) before the file would exceed
/// --max-bytes; traffic is still forwarded. Ctrl-C or SIGTERM stop the tap (open connections
/// are closed; HAProxy reconnects) and finish the file.
///
/// Read it with `spoa decode FILE`; replay it against an agent with
/// `spoa replay --connect ADDR FILE`, which compares the agent's ACKs with the recorded ones.
/// Prints `listening on ADDR` to stderr once bound; logs go to stderr, filtered by RUST_LOG.
#[derive(Debug, clap::Args)]
pub(crate) struct TapArgs {
    /// Where HAProxy connects: host:port (port 0 picks one) or a Unix socket.
    #[arg(long, value_name = "ADDR")]
    listen: Addr,
    /// The agent: host:port or a Unix socket.
    #[arg(long, value_name = "ADDR")]
    upstream: Addr,
    /// The recording file (refused if it exists, unless --force).
    #[arg(long, value_name = "FILE")]
    record: PathBuf,
    /// Overwrite the recording file.
    #[arg(long)]
    force: bool,
    /// Stop recording before the file exceeds this size (`500M`, `2G`, `65536`).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    max_bytes: u64,
    /// Lengths above this are not frames: the rest of that direction is garbage.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame_size: u32,
    /// Worker threads: 0 (the default of every spoa command) means one per available core,
    /// within the CPU affinity `taskset` sets; 1 runs a single-threaded runtime.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

/// `1G`, `500M`, `64k`, `1000`.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (examples: 1G, 500M, 64k, 65536)"))?;
    let v = n.checked_mul(mult).ok_or("size too large")?;
    if v < 4096 {
        return Err("--max-bytes must be at least 4096".into());
    }
    Ok(v)
}

pub(crate) async fn run(args: &TapArgs) -> anyhow::Result<ExitCode> {
    let shutdown = crate::shutdown_signal()?;
    let (rec, writer) = Recorder::create(&args.record, args.force, args.max_bytes)?;
    let listener = AnyListener::bind(&args.listen).await?;
    let unix_path = listener.unix_path();
    eprintln!("listening on {}", listener.local_addr());
    info!(upstream = %args.upstream, record = %args.record.display(), "tap started");
    let mut conns = JoinSet::new();
    let mut next_id = 0u32;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = accept(&listener) => r,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (down, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id = next_id.wrapping_add(1);
        let id = next_id;
        let rec = rec.clone();
        let upstream = args.upstream.clone();
        let max = args.max_frame_size;
        conns.spawn(async move {
            rec.record(Kind::Open, id, Bytes::from(peer.clone()));
            let why = match connect(&upstream).await {
                Ok(up) => relay(id, down, up, &rec, max).await,
                Err(e) => {
                    warn!(conn = id, error = %e, "cannot connect to the agent {upstream}");
                    format!("cannot connect to the agent {upstream}: {e}")
                }
            };
            debug!(conn = id, %peer, why, "connection closed");
            rec.record(Kind::Close, id, Bytes::from(why));
        });
    }
    drop(listener);
    if let Some(p) = unix_path {
        let _ = std::fs::remove_file(p);
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    let stats = rec.stats.clone();
    drop(rec);
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the recording thread panicked"))?
        .with_context(|| format!("cannot write {}", args.record.display()))?;
    let dropped = stats.dropped.load(Ordering::Relaxed);
    info!(
        records = stats.records.load(Ordering::Relaxed),
        bytes = stats.bytes.load(Ordering::Relaxed),
        dropped,
        stopped = stats.stopped.load(Ordering::Relaxed),
        "tap stopped"
    );
    eprintln!(
        "recorded {} records ({} bytes) to {}{}",
        stats.records.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed),
        args.record.display(),
        if dropped > 0 {
            format!(", {dropped} dropped")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn accept(l: &AnyListener) -> std::io::Result<(Stream, String)> {
    match l {
        AnyListener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            Ok((Stream::Tcp(s), peer.to_string()))
        }
        AnyListener::Unix(l, p) | AnyListener::UnixInherited(l, p) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), format!("unix:{}", p.display())))
        }
    }
}

/// Relays both directions until both are closed; returns why the connection ended.
async fn relay(id: u32, down: Stream, up: Stream, rec: &Recorder, max: u32) -> String {
    let (down_r, down_w) = tokio::io::split(down);
    let (up_r, up_w) = tokio::io::split(up);
    let to_agent = pipe(down_r, up_w, Splitter::new(Kind::ToAgent, max), id, rec);
    let to_haproxy = pipe(up_r, down_w, Splitter::new(Kind::ToHaproxy, max), id, rec);
    let (a, b) = tokio::join!(to_agent, to_haproxy);
    format!("haproxy side: {a}; agent side: {b}")
}

/// Copies one direction, recording what passes; half-closes the other side at EOF.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut split: Splitter,
    id: u32,
    rec: &Recorder,
) -> String {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let why = loop {
        buf.clear();
        match from.read_buf(&mut buf).await {
            Ok(0) => break "closed".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read error: {e}"),
        }
        if let Err(e) = to.write_all(&buf).await {
            split.push(&buf, |k, b| rec.record(k, id, b));
            break format!("write error: {e}");
        }
        split.push(&buf, |k, b| rec.record(k, id, b));
    };
    split.finish(|k, b| rec.record(k, id, b));
    let _ = to.shutdown().await;
    why
}
