//! An IP-reputation agent: HAProxy sends message `get-ip-reputation` with argument `ip`; the
//! agent answers by setting the session variable `ip_score` (an integer 0..=100, higher is
//! worse). HAProxy config: `examples/ip_reputation/` beside this file.
//!
//! Run: `cargo run -p spoa-runtime --example ip_reputation -- 127.0.0.1:12345 [THREADS]`
//! (THREADS: tokio worker threads, default one per core; 1 runs a single-threaded runtime).

use std::convert::Infallible;
use std::net::IpAddr;

use spoa_runtime::{Request, Scope, Server, handler_fn};

/// A stand-in for a real reputation source: fixed ranges plus a stable hash.
fn score(ip: IpAddr) -> i64 {
    match ip {
        ip if ip.is_loopback() => 10,
        IpAddr::V4(v4) if v4.is_private() => 20,
        // TEST-NET-3: pretend it is a known-bad network
        IpAddr::V4(v4) if v4.octets()[..3] == [203, 0, 113] => 95,
        ip => {
            let h = match ip {
                IpAddr::V4(v4) => u64::from(u32::from(v4)),
                IpAddr::V6(v6) => u64::try_from(u128::from(v6) % u128::from(u64::MAX)).unwrap_or(0),
            };
            (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as i64 % 101
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:12345".into());
    let threads: usize = match args.next() {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism()?.get(),
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(addr))
}

async fn serve(addr: String) -> Result<(), Box<dyn std::error::Error>> {
    // `req.actions()`: an empty `Actions` that reuses the connection's buffer (no allocation)
    let handler = handler_fn(|mut req: Request| async move {
        let mut actions = req.actions();
        let ip = req
            .message("get-ip-reputation")
            .and_then(|m| m.arg("ip"))
            .and_then(|v| v.as_ip());
        if let Some(ip) = ip {
            actions.set_var(Scope::Session, "ip_score", score(ip));
        }
        Ok::<_, Infallible>(actions)
    });

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "ip_reputation agent listening on {}",
        listener.local_addr()?
    );
    Server::builder()
        .build()?
        .serve(listener, handler, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
