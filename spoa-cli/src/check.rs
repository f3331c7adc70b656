//! `spoa check`: the health check of HAProxy's `option spop-check`, validated as strictly as
//! HAProxy 3.x does.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::BytesMut;
use serde_json::json;
use spop_proto::frame::{DEFAULT_MAX_FRAME_SIZE, HaproxyHello};

use crate::args::{Addr, parse_duration};
use crate::client::{Negotiated, check_agent_hello};
use crate::net::{FrameConn, connect};

/// Health-check an agent like HAProxy's `option spop-check`.
///
/// Sends HAProxy's 82-byte health-check HELLO (`healthcheck` true) and validates the
/// AGENT-HELLO as strictly as HAProxy 3.x: type 101, flags exactly 0x00000001, ids 0, version
/// 2.0, max-frame-size in [256, 16380], capabilities present. Exit status 0 when healthy, 1
/// when not, so it fits container health checks and scripts:
///
///   HEALTHCHECK CMD ["spoa", "check", "--connect", "127.0.0.1:12345"]
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Agent address: host:port, or a Unix socket (unix:/path or any path with a '/').
    #[arg(long, value_name = "ADDR")]
    connect: Addr,
    /// Time allowed for connecting and the whole exchange.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of text: `{"healthy": bool, "negotiated": {...}}` or
    /// `{"healthy": false, "error": "..."}`.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let result = match tokio::time::timeout(args.timeout, probe(&args.connect, args.timeout)).await
    {
        Ok(r) => r,
        Err(_) => Err(anyhow!("no answer within {:?}", args.timeout)),
    };
    match result {
        Ok(n) => {
            if args.json {
                println!("{}", json!({ "healthy": true, "negotiated": n.json() }));
            } else {
                println!("healthy: {}", n.text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if args.json {
                println!("{}", json!({ "healthy": false, "error": format!("{e:#}") }));
            } else {
                println!("unhealthy: {e:#}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn probe(addr: &Addr, timeout: Duration) -> anyhow::Result<Negotiated> {
    let io = connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    // HAProxy reads the reply into a buffer of tune.bufsize: 16380 + 4 by default
    let mut conn = FrameConn::new(io, DEFAULT_MAX_FRAME_SIZE);
    let mut hello = BytesMut::new();
    HaproxyHello::healthcheck().encode(&mut hello);
    debug_assert_eq!(hello.len(), 82);
    conn.send(&hello).await.context("cannot send HELLO")?;
    let frame = conn
        .recv(timeout)
        .await
        .context("bad reply to the health-check HELLO")?
        .ok_or_else(|| anyhow!("the agent closed the connection without answering"))?;
    let n = check_agent_hello(&frame, DEFAULT_MAX_FRAME_SIZE, "")?;
    conn.shutdown().await;
    Ok(n)
}
