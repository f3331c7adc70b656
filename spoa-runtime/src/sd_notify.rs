//! systemd readiness notifications (`Type=notify` units), without libsystemd.
//!
//! systemd passes a Unix datagram socket in `NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace); the service writes `KEY=VALUE` lines to it: `READY=1` once it serves,
//! `STOPPING=1` when it begins to shut down, `WATCHDOG=1` at least every `WATCHDOG_USEC` µs
//! when the unit sets `WatchdogSec=`. Every function here does nothing (and returns
//! `Ok(false)`) when `NOTIFY_SOCKET` is unset, so agents can call them unconditionally.
//!
//! ```no_run
//! use spoa_runtime::sd_notify;
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:12345").await?;
//! sd_notify::notify("READY=1")?;
//! let _watchdog = sd_notify::spawn_watchdog(); // pings while the runtime runs
//! // ... serve; on shutdown:
//! sd_notify::notify("STOPPING=1")?;
//! # Ok(()) }
//! ```

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`, or several `\n`-separated assignments) to systemd. Returns
/// `Ok(false)` when `NOTIFY_SOCKET` is unset, `Ok(true)` when sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        send_abstract(&sock, name, state)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(true)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &[u8], state: &str) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract NOTIFY_SOCKET addresses exist only on Linux",
    ))
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or is
/// this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

/// When systemd asked for a watchdog (and `NOTIFY_SOCKET` is set), spawns a task on the
/// current tokio runtime that sends `WATCHDOG=1` every half interval, and returns it (abort it
/// or let the runtime end to stop). A stalled runtime stops the pings, which is the point.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let every = watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = notify("WATCHDOG=1") {
                tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            }
        }
    }))
}
