//! `spoa bench`: a SPOP load generator playing HAProxy.
//!
//! Each connection is one task that writes batches of NOTIFYs (a pre-encoded payload; per
//! request only the header and the id varints are written) and reads ACKs, parsing only their
//! header. One timestamp is taken per written batch and one per read batch; latencies go to an
//! HDR histogram. Nothing is allocated per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::{Buf, BufMut, BytesMut};
use hdrhistogram::Histogram;
use serde_json::json;
use spop_proto::frame::{DEFAULT_MAX_FRAME_SIZE, Disconnect, split_frame};
use spop_proto::{DecodeError, FrameType, Notify, NotifyId, StatusCode, varint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;

use crate::args::{Addr, ArgSpec, OwnedValue, add_message, parse_duration};
use crate::client::handshake;
use crate::net::{FrameConn, connect};

/// Load-test an agent: throughput, latency percentiles, errors.
///
/// N connections, K NOTIFYs in flight on each, for a duration or a number of requests; a progress line per second on stderr, then a report (throughput,
/// latency percentiles, errors by kind).
///
/// Without --message/--arg, each NOTIFY carries message `bench` with
/// `ip=ipv4:127.0.0.1 path=str:/index.html n=int64:-7`. Exit status 1 when any error
/// occurred.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Agent address: host:port, or a Unix socket (unix:/path or any path with a '/').
    #[arg(long, value_name = "ADDR", required_unless_present = "null_agent")]
    connect: Option<Addr>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// NOTIFYs kept in flight per connection (1 when the agent refuses pipelining).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Run this long (e.g. `10`, `10s`, `500ms`); default 10 s unless --requests is given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Send exactly this many NOTIFYs in total.
    #[arg(long)]
    requests: Option<u64>,
    /// Message name.
    #[arg(long, default_value = "bench")]
    message: String,
    /// An argument, `name=TYPE:VALUE` (see `spoa client --help`). Repeatable.
    #[arg(long = "arg", value_name = "name=TYPE:VALUE")]
    args: Vec<ArgSpec>,
    /// Print the final report as one JSON object.
    #[arg(long)]
    json: bool,
    /// max-frame-size offered in the HELLO.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: u32,
    /// A NOTIFY without ACK after this long counts as a timeout; also the handshake limit
    /// (itself never longer than --duration).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Worker threads: 0 (the default of every spoa command) means one per available core,
    /// within the CPU affinity `taskset` sets; 1 runs a single-threaded runtime.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Instead of benchmarking, run the null agent (alias of `spoa null-agent`).
    #[arg(long, requires = "listen", conflicts_with = "connect")]
    pub(crate) null_agent: bool,
    /// Listen address for --null-agent.
    #[arg(long, value_name = "ADDR", requires = "null_agent")]
    listen: Option<Addr>,
}

/// Errors by kind.
#[derive(Debug, Default, Clone)]
struct Errors {
    /// Connection refused or failed.
    connect: u64,
    /// HELLO exchange failed (refused, invalid AGENT-HELLO, timeout).
    handshake: u64,
    /// NOTIFYs without ACK within --timeout.
    timeout: u64,
    /// ACK with an unknown id, a frame of an unexpected type, or a malformed frame.
    unexpected_frame: u64,
    /// Read/write failures and connections closed with NOTIFYs in flight.
    io: u64,
    /// AGENT-DISCONNECT received during the run, by status code.
    disconnect: BTreeMap<u32, u64>,
}

impl Errors {
    fn total(&self) -> u64 {
        self.connect
            + self.handshake
            + self.timeout
            + self.unexpected_frame
            + self.io
            + self.disconnect.values().sum::<u64>()
    }

    fn merge(&mut self, o: &Self) {
        self.connect += o.connect;
        self.handshake += o.handshake;
        self.timeout += o.timeout;
        self.unexpected_frame += o.unexpected_frame;
        self.io += o.io;
        for (k, v) in &o.disconnect {
            *self.disconnect.entry(*k).or_default() += v;
        }
    }
}

/// What all connections share.
#[derive(Debug)]
struct Shared {
    /// NOTIFYs handed out so far, and the total allowed (u64::MAX: until `stop`).
    issued: AtomicU64,
    limit: u64,
    stop: AtomicBool,
    completed: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    /// Claims up to `want` NOTIFYs to send.
    fn claim(&self, want: usize) -> usize {
        if self.stop.load(Ordering::Relaxed) {
            return 0;
        }
        if self.limit == u64::MAX {
            return want;
        }
        let mut cur = self.issued.load(Ordering::Relaxed);
        loop {
            let n = (self.limit.saturating_sub(cur)).min(want as u64);
            if n == 0 {
                return 0;
            }
            match self.issued.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                #[allow(clippy::cast_possible_truncation)] // n <= want
                Ok(_) => return n as usize,
                Err(now) => cur = now,
            }
        }
    }
}

struct Config {
    addr: Addr,
    payload: Vec<u8>,
    pipeline: usize,
    max_frame_size: u32,
    timeout: Duration,
    /// Connect + HELLO limit: --timeout, at most --duration.
    handshake_timeout: Duration,
}

struct ConnResult {
    hist: Histogram<u64>,
    completed: u64,
    sent: u64,
    errors: Errors,
    pipelining: Option<bool>,
}

fn new_histogram() -> Histogram<u64> {
    // nanoseconds, 1 ns .. 100 s, 3 significant digits
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.null_agent {
        let listen = args.listen.as_ref().expect("clap requires --listen");
        return crate::null_agent::serve(listen, args.max_frame_size).await;
    }
    let Some(addr) = args.connect.clone() else {
        bail!("--connect is required");
    };
    if args.connections == 0 || args.pipeline == 0 {
        bail!("--connections and --pipeline must be at least 1");
    }
    let mut builder = Notify::builder(NotifyId::new(1, 1));
    if args.args.is_empty() {
        let defaults = [
            ArgSpec {
                name: "ip".into(),
                value: OwnedValue::Ipv4(std::net::Ipv4Addr::LOCALHOST),
            },
            ArgSpec {
                name: "path".into(),
                value: OwnedValue::String("/index.html".into()),
            },
            ArgSpec {
                name: "n".into(),
                value: OwnedValue::Int64(-7),
            },
        ];
        add_message(&mut builder, &args.message, &defaults);
    } else {
        add_message(&mut builder, &args.message, &args.args);
    }
    let payload = builder.build().payload().to_vec();
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        limit: args.requests.unwrap_or(u64::MAX),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let cfg = Arc::new(Config {
        addr: addr.clone(),
        payload,
        pipeline: args.pipeline,
        max_frame_size: args.max_frame_size,
        timeout: args.timeout,
        handshake_timeout: duration.map_or(args.timeout, |d| d.min(args.timeout)),
    });
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        tasks.push(tokio::spawn(run_conn(
            cfg.clone(),
            shared.clone(),
            barrier.clone(),
        )));
    }
    barrier.wait().await;
    let start = Instant::now();

    // the clock: stop at the deadline or on Ctrl-C, print progress every second
    let ticker = {
        let shared = shared.clone();
        let quiet = args.quiet;
        tokio::spawn(async move {
            let mut deadline = duration.map(|d| start + d);
            let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
            let mut interrupted = false;
            let mut last = 0u64;
            let mut tick = 1u64;
            loop {
                let next = start + Duration::from_secs(tick);
                let wake = deadline.map_or(next, |d| d.min(next));
                tokio::select! {
                    () = tokio::time::sleep_until(wake.into()) => {}
                    _ = &mut ctrl_c => {
                        if interrupted {
                            eprintln!("interrupted twice: exiting");
                            std::process::exit(130);
                        }
                        eprintln!("interrupted: stopping (Ctrl-C again to exit at once)");
                        interrupted = true;
                        shared.stop.store(true, Ordering::Relaxed);
                        ctrl_c = Box::pin(tokio::signal::ctrl_c());
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    shared.stop.store(true, Ordering::Relaxed);
                    deadline = None;
                }
                if Instant::now() >= next {
                    let done = shared.completed.load(Ordering::Relaxed);
                    if !quiet {
                        eprintln!(
                            "[{tick:>4}s] {:>10} req/s  {:>12} total  {} errors",
                            done - last,
                            done,
                            shared.errors.load(Ordering::Relaxed)
                        );
                    }
                    last = done;
                    tick += 1;
                }
            }
        })
    };

    let mut hist = new_histogram();
    let mut errors = Errors::default();
    let mut completed = 0u64;
    let mut sent = 0u64;
    let mut pipelining = Vec::new();
    for t in tasks {
        let r = t.await?;
        hist.add(&r.hist).expect("same histogram bounds");
        errors.merge(&r.errors);
        completed += r.completed;
        sent += r.sent;
        pipelining.extend(r.pipelining);
    }
    let elapsed = start.elapsed();
    ticker.abort();

    let secs = elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let throughput = if secs > 0.0 {
        completed as f64 / secs
    } else {
        0.0
    };
    #[allow(clippy::cast_precision_loss)] // microseconds for a report
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let (p50, p90, p99, p999, max, mean) = if hist.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN)
    } else {
        (
            us(0.50),
            us(0.90),
            us(0.99),
            us(0.999),
            hist.max() as f64 / 1000.0,
            hist.mean() / 1000.0,
        )
    };
    let pipelining_on = !pipelining.is_empty() && pipelining.iter().all(|&p| p);
    if args.json {
        let disconnect: serde_json::Map<String, serde_json::Value> = errors
            .disconnect
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let doc = json!({
            "target": addr.to_string(),
            "connections": args.connections,
            "pipeline": args.pipeline,
            "pipelining": pipelining_on,
            "requests": completed,
            "sent": sent,
            "duration_s": secs,
            "throughput_rps": throughput,
            "latency_us": {
                "p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max, "mean": mean,
            },
            "errors": {
                "total": errors.total(),
                "connect": errors.connect,
                "handshake": errors.handshake,
                "timeout": errors.timeout,
                "unexpected_frame": errors.unexpected_frame,
                "io": errors.io,
                "disconnect": disconnect,
            },
        });
        println!("{doc}");
    } else {
        println!(
            "target      {addr}: {} connection{}, pipeline {} (pipelining {})",
            args.connections,
            if args.connections == 1 { "" } else { "s" },
            args.pipeline,
            if pipelining_on { "on" } else { "off" }
        );
        println!("requests    {completed} completed ({sent} sent) in {secs:.3} s");
        println!("throughput  {throughput:.0} req/s");
        if hist.is_empty() {
            println!("latency     none (nothing completed)");
        } else {
            println!(
                "latency     p50 {p50:.1} us, p90 {p90:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us, max {max:.1} us (mean {mean:.1} us)"
            );
        }
        println!("errors      {}", errors_text(&errors));
    }
    if completed == 0 {
        eprintln!(
            "error: no request completed ({sent} sent, {} error(s)); is {addr} an SPOE agent?",
            errors.total()
        );
    }
    Ok(if errors.total() == 0 && completed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn errors_text(e: &Errors) -> String {
    if e.total() == 0 {
        return "none".into();
    }
    let mut s = format!(
        "{} (connect {}, handshake {}, timeout {}, unexpected frame {}, io {}",
        e.total(),
        e.connect,
        e.handshake,
        e.timeout,
        e.unexpected_frame,
        e.io
    );
    for (code, n) in &e.disconnect {
        let _ = write!(s, ", disconnect {} x{n}", StatusCode(*code));
    }
    s.push(')');
    s
}

/// One in-flight NOTIFY.
#[derive(Clone, Copy)]
struct Slot {
    stream_id: u64,
    sent: Instant,
}

async fn run_conn(cfg: Arc<Config>, shared: Arc<Shared>, barrier: Arc<Barrier>) -> ConnResult {
    let mut r = ConnResult {
        hist: new_histogram(),
        completed: 0,
        sent: 0,
        errors: Errors::default(),
        pipelining: None,
    };
    let setup = async {
        let io = match tokio::time::timeout(cfg.handshake_timeout, connect(&cfg.addr)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                eprintln!("connect to {} failed: {e}", cfg.addr);
                r.errors.connect += 1;
                return None;
            }
            Err(_) => {
                eprintln!(
                    "connect to {} timed out after {:?}",
                    cfg.addr, cfg.handshake_timeout
                );
                r.errors.connect += 1;
                return None;
            }
        };
        let mut conn = FrameConn::new(io, cfg.max_frame_size);
        match tokio::time::timeout(
            cfg.handshake_timeout,
            handshake(
                &mut conn,
                cfg.max_frame_size,
                "pipelining",
                cfg.handshake_timeout,
            ),
        )
        .await
        {
            Ok(Ok(n)) => {
                let frame_len = 7 + varint::encoded_len(u64::MAX) + cfg.payload.len();
                if frame_len > n.max_frame_size as usize {
                    eprintln!(
                        "NOTIFY too large for the negotiated max-frame-size {}",
                        n.max_frame_size
                    );
                    r.errors.handshake += 1;
                    return None;
                }
                Some((conn, n))
            }
            Ok(Err(e)) => {
                eprintln!("handshake failed: {e:#}");
                r.errors.handshake += 1;
                None
            }
            Err(_) => {
                eprintln!("handshake timed out after {:?}", cfg.handshake_timeout);
                r.errors.handshake += 1;
                None
            }
        }
    }
    .await;
    barrier.wait().await;
    let Some((conn, n)) = setup else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return r;
    };
    r.pipelining = Some(n.pipelining);
    let k = if n.pipelining { cfg.pipeline } else { 1 };
    let before = r.errors.total();
    load(conn, n.max_frame_size, k, &cfg, &shared, &mut r).await;
    shared
        .errors
        .fetch_add(r.errors.total() - before, Ordering::Relaxed);
    r
}

/// Appends one NOTIFY: header with the ids patched in, then the pre-encoded payload.
#[inline]
fn put_notify(w: &mut BytesMut, stream_id: u64, payload: &[u8]) {
    let (sid, sid_len) = varint::encode(stream_id);
    #[allow(clippy::cast_possible_truncation)] // checked against max-frame-size
    w.put_u32((1 + 4 + sid_len + 1 + payload.len()) as u32);
    w.put_u8(FrameType::NOTIFY.0);
    w.put_u32(1);
    w.put_slice(&sid[..sid_len]);
    w.put_u8(1);
    w.put_slice(payload);
}

/// A frame split off the read buffer, only its header decoded.
struct Head<'a> {
    frame_type: FrameType,
    fin: bool,
    stream_id: u64,
    frame_id: u64,
    payload: &'a [u8],
    /// Bytes taken in the buffer, length prefix included.
    used: usize,
}

/// Splits the first whole frame off `buf` with its header decoded ([`split_frame`], the
/// library's one frame grammar).
#[inline]
fn next_frame(buf: &[u8], max_frame_size: u32) -> Result<Option<Head<'_>>, DecodeError> {
    Ok(
        split_frame(buf, max_frame_size)?.map(|(h, payload, used)| Head {
            frame_type: h.frame_type,
            fin: h.flags.is_fin(),
            stream_id: h.stream_id,
            frame_id: h.frame_id,
            payload,
            used,
        }),
    )
}

/// How the read loop ended.
enum End {
    /// Everything sent was answered: say goodbye.
    Done,
    /// The connection is unusable.
    Broken,
}

async fn load(
    conn: FrameConn,
    max_frame_size: u32,
    k: usize,
    cfg: &Config,
    shared: &Shared,
    r: &mut ConnResult,
) {
    let (mut io, leftover) = conn.into_parts();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    rbuf.extend_from_slice(&leftover);
    let frame_len = 4 + 7 + cfg.payload.len() + varint::MAX_LEN;
    let mut wbuf = BytesMut::with_capacity(k * frame_len);
    let mut slots: Vec<Slot> = Vec::with_capacity(k);
    let mut next_sid = 1u64;
    let check_every = Duration::from_millis(100).min(cfg.timeout);
    let mut check = pin!(tokio::time::sleep(check_every));

    let end = 'run: loop {
        let room = k - slots.len();
        if room > 0 {
            let n = shared.claim(room);
            if n == 0 && slots.is_empty() {
                break 'run End::Done;
            }
            if n > 0 {
                let now = Instant::now();
                for _ in 0..n {
                    put_notify(&mut wbuf, next_sid, &cfg.payload);
                    slots.push(Slot {
                        stream_id: next_sid,
                        sent: now,
                    });
                    next_sid += 2;
                }
                r.sent += n as u64;
                if let Err(e) = io.write_all(&wbuf).await {
                    eprintln!("write failed: {e}");
                    r.errors.io += 1;
                    break 'run End::Broken;
                }
                wbuf.clear();
            }
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        tokio::select! {
            biased;
            res = io.read_buf(&mut rbuf) => match res {
                Ok(0) => {
                    if !slots.is_empty() {
                        eprintln!("the agent closed the connection with {} NOTIFYs in flight", slots.len());
                        r.errors.io += 1;
                    }
                    break 'run End::Broken;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("read failed: {e}");
                    r.errors.io += 1;
                    break 'run End::Broken;
                }
            },
            () = &mut check => {
                let now = Instant::now();
                check.as_mut().reset((now + check_every).into());
                let before = slots.len();
                slots.retain(|s| now.duration_since(s.sent) < cfg.timeout);
                r.errors.timeout += (before - slots.len()) as u64;
                continue 'run;
            }
        }
        // every whole frame in the buffer; only headers are parsed
        let now = Instant::now();
        let mut pos = 0;
        let mut done = 0u64;
        loop {
            match next_frame(&rbuf[pos..], max_frame_size) {
                Ok(Some(h)) => {
                    pos += h.used;
                    if h.frame_type == FrameType::ACK {
                        let found = if h.frame_id == 1 && h.fin {
                            slots.iter().position(|s| s.stream_id == h.stream_id)
                        } else {
                            None
                        };
                        match found {
                            Some(i) => {
                                let slot = slots.swap_remove(i);
                                #[allow(clippy::cast_possible_truncation)]
                                let ns = now.duration_since(slot.sent).as_nanos() as u64;
                                r.hist.saturating_record(ns.max(1));
                                done += 1;
                            }
                            None => r.errors.unexpected_frame += 1,
                        }
                    } else if h.frame_type == FrameType::AGENT_DISCONNECT {
                        let status = Disconnect::parse(h.payload)
                            .ok()
                            .and_then(|d| d.status())
                            .unwrap_or(StatusCode::UNKNOWN);
                        eprintln!("the agent disconnected: {status}");
                        *r.errors.disconnect.entry(status.0).or_default() += 1;
                        r.completed += done;
                        shared.completed.fetch_add(done, Ordering::Relaxed);
                        break 'run End::Broken;
                    } else {
                        r.errors.unexpected_frame += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let hint = if crate::net::looks_like_http(&rbuf[pos..]) {
                        crate::net::HTTP_HINT
                    } else {
                        ""
                    };
                    eprintln!("malformed frame from the agent: {e}{hint}");
                    r.errors.unexpected_frame += 1;
                    r.completed += done;
                    shared.completed.fetch_add(done, Ordering::Relaxed);
                    break 'run End::Broken;
                }
            }
        }
        rbuf.advance(pos);
        r.completed += done;
        shared.completed.fetch_add(done, Ordering::Relaxed);
    };

    if matches!(end, End::Done) {
        // HAProxy's goodbye; the agent should answer with AGENT-DISCONNECT status 0
        let mut bye = BytesMut::new();
        Disconnect::encode(
            &mut bye,
            FrameType::HAPROXY_DISCONNECT,
            StatusCode::NORMAL,
            "normal",
        );
        if io.write_all(&bye).await.is_ok() {
            let mut conn = FrameConn::from_parts(io, rbuf, max_frame_size);
            if let Ok(Some(f)) = conn.recv(cfg.timeout).await
                && f.header.frame_type == FrameType::AGENT_DISCONNECT
            {
                let status = Disconnect::parse(&f.payload)
                    .ok()
                    .and_then(|d| d.status())
                    .unwrap_or(StatusCode::UNKNOWN);
                if status != StatusCode::NORMAL {
                    *r.errors.disconnect.entry(status.0).or_default() += 1;
                }
            }
            conn.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spop_proto::frame::split_frame;

    #[test]
    fn next_frame_matches_split_frame() {
        let mut buf = BytesMut::new();
        for sid in [1u64, 239, 240, 2287, 2288, u64::from(u32::MAX), u64::MAX] {
            put_notify(&mut buf, sid, b"\x01m\x00");
        }
        spop_proto::Actions::new().encode_ack(NotifyId::new(300, 2), &mut buf);
        let mut pos = 0;
        while pos < buf.len() {
            let (h, payload, used) = split_frame(&buf[pos..], 16380).unwrap().unwrap();
            let f = next_frame(&buf[pos..], 16380).unwrap().unwrap();
            assert_eq!(
                (
                    f.frame_type,
                    f.stream_id,
                    f.frame_id,
                    f.payload,
                    f.used,
                    f.fin
                ),
                (h.frame_type, h.stream_id, h.frame_id, payload, used, true)
            );
            assert!(
                next_frame(&buf[pos..pos + used - 1], 16380)
                    .unwrap()
                    .is_none()
            );
            pos += used;
        }
        assert_eq!(
            next_frame(&[0, 0, 0, 6], 16380).err(),
            Some(DecodeError::FrameTooShort(6))
        );
        assert_eq!(
            next_frame(&[0, 0, 0x40, 0], 16380).err(),
            Some(DecodeError::FrameTooLarge {
                len: 16384,
                max: 16380
            })
        );
        assert_eq!(
            next_frame(&[0, 0, 0, 7, 0x67, 0, 0, 0, 1, 0xf0, 0x80], 16380).err(),
            Some(DecodeError::Truncated("varint"))
        );
    }
}
