//! `spoa null-agent`: the I/O floor. Answers every NOTIFY with a canned empty ACK, patching
//! only the ids, without parsing the payload.

use std::process::ExitCode;

use bytes::{Buf, BufMut, BytesMut};
use spop_proto::frame::{
    AgentHello, DEFAULT_MAX_FRAME_SIZE, Disconnect, HaproxyHello, MIN_MAX_FRAME_SIZE, split_frame,
};
use spop_proto::{FrameType, StatusCode, varint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::args::Addr;
use crate::net::AnyListener;

/// Run a null agent (empty ACK for every NOTIFY, payload never parsed): the I/O floor.
///
/// Every NOTIFY gets an empty ACK with its ids (only the frame header is parsed); the
/// handshake is minimal (AGENT-HELLO with min(offered, own) max-frame-size and
/// `pipelining`). It is the I/O floor agents are benchmarked against: run `spoa bench`
/// against it and against the agent in the same run and compare. Logs go to stderr, filtered
/// by RUST_LOG.
#[derive(Debug, clap::Args)]
pub(crate) struct NullAgentArgs {
    /// Listen address: host:port (port 0 picks one), or a Unix socket (unix:/path or any path
    /// with a '/').
    #[arg(long, value_name = "ADDR")]
    listen: Addr,
    /// Largest frame accepted and announced.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: u32,
    /// Worker threads: 0 (the default of every spoa command) means one per available core,
    /// within the CPU affinity `taskset` sets; 1 runs a single-threaded runtime.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

pub(crate) async fn run(args: &NullAgentArgs) -> anyhow::Result<ExitCode> {
    serve(&args.listen, args.max_frame_size).await
}

/// Binds and serves until Ctrl-C or SIGTERM.
pub(crate) async fn serve(addr: &Addr, max_frame_size: u32) -> anyhow::Result<ExitCode> {
    let shutdown = crate::shutdown_signal()?;
    let listener = AnyListener::bind(addr).await?;
    let unix_path = listener.unix_path();
    eprintln!("listening on {}", listener.local_addr());
    info!("null agent started");
    let max = max_frame_size.max(MIN_MAX_FRAME_SIZE);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            res = accept(&listener) => match res {
                Ok(Accepted::Tcp(s)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve_conn(s, max));
                }
                Ok(Accepted::Unix(s)) => {
                    tokio::spawn(serve_conn(s, max));
                }
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    if let Some(p) = unix_path {
        let _ = std::fs::remove_file(p);
    }
    info!("null agent stopped");
    Ok(ExitCode::SUCCESS)
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &AnyListener) -> std::io::Result<Accepted> {
    match l {
        AnyListener::Tcp(l) => Ok(Accepted::Tcp(l.accept().await?.0)),
        AnyListener::Unix(l, _) | AnyListener::UnixInherited(l, _) => {
            Ok(Accepted::Unix(l.accept().await?.0))
        }
    }
}

/// Appends an empty ACK for these ids: the canned frame with the ids patched in.
#[inline]
fn put_empty_ack(w: &mut BytesMut, stream_id: u64, frame_id: u64) {
    let (sid, sid_len) = varint::encode(stream_id);
    let (fid, fid_len) = varint::encode(frame_id);
    #[allow(clippy::cast_possible_truncation)] // at most 25
    w.put_u32((1 + 4 + sid_len + fid_len) as u32);
    w.put_u8(FrameType::ACK.0);
    w.put_u32(1);
    w.put_slice(&sid[..sid_len]);
    w.put_slice(&fid[..fid_len]);
}

async fn serve_conn<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, own_max: u32) {
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut max = own_max;
    let mut established = false;
    loop {
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
        match io.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut pos = 0;
        let mut close = false;
        loop {
            match split_frame(&rbuf[pos..], max) {
                Ok(Some((h, payload, used))) => {
                    pos += used;
                    match h.frame_type {
                        FrameType::NOTIFY if established => {
                            put_empty_ack(&mut wbuf, h.stream_id, h.frame_id);
                        }
                        FrameType::HAPROXY_HELLO if !established => {
                            let hello = HaproxyHello::parse(payload).unwrap_or_default();
                            let offered = hello
                                .max_frame_size
                                .and_then(|v| u32::try_from(v).ok())
                                .unwrap_or(own_max);
                            max = own_max.min(offered).max(MIN_MAX_FRAME_SIZE);
                            AgentHello::new(max, "pipelining").encode(&mut wbuf);
                            established = true;
                            if hello.healthcheck {
                                close = true;
                                break;
                            }
                        }
                        FrameType::HAPROXY_DISCONNECT => {
                            Disconnect::encode(
                                &mut wbuf,
                                FrameType::AGENT_DISCONNECT,
                                StatusCode::NORMAL,
                                "normal",
                            );
                            close = true;
                            break;
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Disconnect::encode(
                        &mut wbuf,
                        FrameType::AGENT_DISCONNECT,
                        e.status(),
                        &e.to_string(),
                    );
                    close = true;
                    break;
                }
            }
        }
        rbuf.advance(pos);
        if !wbuf.is_empty() {
            if io.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
        if close {
            let _ = io.shutdown().await;
            return;
        }
    }
}
