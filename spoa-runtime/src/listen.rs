//! Listening sockets for agents: TCP with the options deployments need (`SO_REUSEPORT` for hot
//! upgrades on one port), and sockets inherited from systemd socket activation.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Listen backlog: HAProxy opens connections in bursts (one per thread, more under load); the
/// kernel's default of 128 overflows, and dropped SYNs cost the client a 1 s retry.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` and a backlog of [`LISTEN_BACKLOG`];
/// with `reuse_port`, also `SO_REUSEPORT`, so that a second instance of the agent can bind the
/// same address while the first still runs (a hot upgrade: start the new one, then stop the
/// old one, whose shutdown then releases the port first, see
/// [`LameDuck::ReleasePort`](crate::LameDuck::ReleasePort)). Both instances must set it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let a = spoa_runtime::bind_tcp("127.0.0.1:0".parse().unwrap(), true)?;
/// let addr = a.local_addr()?;
/// let b = spoa_runtime::bind_tcp(addr, true)?; // the same port, a second listener
/// assert_eq!(b.local_addr()?, addr);
/// # Ok(()) }
/// ```
pub fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A listening socket passed by the service manager.
#[derive(Debug)]
#[non_exhaustive]
pub enum Inherited {
    /// A TCP listener (`ListenStream=127.0.0.1:12345`).
    Tcp(TcpListener),
    /// A Unix stream listener (`ListenStream=/run/spoa/agent.sock`).
    Unix(tokio::net::UnixListener),
}

/// The listening sockets systemd passed to this process (socket activation: `LISTEN_FDS`
/// and `LISTEN_PID`, file descriptors from 3 on), in order, ready for
/// [`Server::serve`](crate::Server::serve). Empty when none were passed. The variables are
/// removed from the environment, so child processes do not take the sockets too. A passed
/// descriptor that is not a TCP or Unix stream listener is an error. Must be called within a
/// tokio runtime.
///
/// With activation, `systemctl restart` keeps the port open while the agent restarts:
/// HAProxy's connection attempts wait in the socket's backlog instead of being refused.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// for listener in spoa_runtime::inherited_listeners()? {
///     match listener {
///         spoa_runtime::Inherited::Tcp(l) => println!("TCP {}", l.local_addr()?),
///         spoa_runtime::Inherited::Unix(l) => println!("Unix {:?}", l.local_addr()?),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub fn inherited_listeners() -> io::Result<Vec<Inherited>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        if let Ok(Some(l)) = fds.take_tcp_listener(i) {
            l.set_nonblocking(true)?;
            out.push(Inherited::Tcp(TcpListener::from_std(l)?));
            continue;
        }
        match fds.take_unix_listener(i) {
            Ok(Some(l)) => {
                l.set_nonblocking(true)?;
                out.push(Inherited::Unix(tokio::net::UnixListener::from_std(l)?));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "inherited file descriptor {} is neither a TCP nor a Unix stream \
                         listener: {e}",
                        3 + i
                    ),
                ));
            }
        }
    }
    Ok(out)
}
