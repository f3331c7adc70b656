//! Sockets: TCP or Unix streams and listeners, and a small frame reader for the HAProxy-side
//! subcommands (client, check, replay).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use spop_proto::DecodeError;
use spop_proto::frame::{FrameHeader, split_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::args::Addr;

/// A connected TCP or Unix stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to `addr` (TCP with `TCP_NODELAY`, or a Unix socket).
pub(crate) async fn connect(addr: &Addr) -> io::Result<Stream> {
    match addr {
        Addr::Tcp(a) => {
            let s = TcpStream::connect(a.as_str()).await?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        Addr::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p).await?)),
        Addr::Inherited => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "`systemd` is a listening address (socket activation), not one to connect to",
        )),
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A bound listener; a Unix one remembers its path to remove the socket file at the end.
#[derive(Debug)]
pub(crate) enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// A Unix listener passed by systemd: its file is systemd's, never removed by us.
    UnixInherited(UnixListener, PathBuf),
}

/// Binds the first address `addr` resolves to that works (backlog 1024, `SO_REUSEADDR`, and
/// `SO_REUSEPORT` when asked: see `spoa_runtime::bind_tcp`).
async fn bind_tcp(addr: &str, reuse_port: bool) -> io::Result<TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        match spoa_runtime::bind_tcp(sa, reuse_port) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("address resolved to nothing")))
}

impl AnyListener {
    /// Binds `addr`. For a Unix socket, a stale socket file (nobody accepting) is removed
    /// first; a live one, or a file that is not a socket, is an error.
    pub(crate) async fn bind(addr: &Addr) -> anyhow::Result<Self> {
        Self::bind_opts(addr, false).await
    }

    /// Like [`Self::bind`]; `reuse_port` sets `SO_REUSEPORT` on a TCP listener. `systemd`
    /// takes the first socket passed by socket activation.
    pub(crate) async fn bind_opts(addr: &Addr, reuse_port: bool) -> anyhow::Result<Self> {
        match addr {
            Addr::Tcp(a) => Ok(Self::Tcp(
                bind_tcp(a, reuse_port)
                    .await
                    .with_context(|| format!("cannot listen on {a}"))?,
            )),
            Addr::Inherited => {
                let mut all = spoa_runtime::inherited_listeners()
                    .context("cannot take the sockets passed by systemd")?;
                if all.is_empty() {
                    anyhow::bail!(
                        "--listen systemd: no socket was passed (LISTEN_FDS is not set for this \
                         process); start it from a systemd .socket unit, or listen on an address"
                    );
                }
                match all.remove(0) {
                    spoa_runtime::Inherited::Tcp(l) => Ok(Self::Tcp(l)),
                    spoa_runtime::Inherited::Unix(l) => {
                        let path = l
                            .local_addr()
                            .ok()
                            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                            .unwrap_or_default();
                        Ok(Self::UnixInherited(l, path))
                    }
                    _ => anyhow::bail!("--listen systemd: the passed socket is of an unknown kind"),
                }
            }
            Addr::Unix(p) => {
                remove_stale_socket(p)?;
                let l = UnixListener::bind(p)
                    .with_context(|| format!("cannot listen on {}", p.display()))?;
                Ok(Self::Unix(l, p.clone()))
            }
        }
    }

    /// Like [`Self::bind`], then gives a Unix socket file the permissions asked for (an
    /// error for a TCP address when any is asked).
    pub(crate) async fn bind_with(
        addr: &Addr,
        reuse_port: bool,
        perms: &spoa_runtime::unix_socket::SocketPermissions,
    ) -> anyhow::Result<Self> {
        let asked = *perms != spoa_runtime::unix_socket::SocketPermissions::default();
        if asked && matches!(addr, Addr::Tcp(_)) {
            bail!("--unix-mode, --unix-owner and --unix-group need a Unix socket address");
        }
        let l = Self::bind_opts(addr, reuse_port).await?;
        if let (true, Self::Unix(_, p)) = (asked, &l) {
            if let Err(e) = spoa_runtime::unix_socket::apply(p, perms) {
                let _ = std::fs::remove_file(p);
                return Err(e.into());
            }
        }
        Ok(l)
    }

    /// The address to print: `127.0.0.1:PORT` (the real port when 0 was asked) or
    /// `unix:/path`.
    pub(crate) fn local_addr(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Self::Unix(_, p) | Self::UnixInherited(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// The socket file to remove after serving, if any.
    pub(crate) fn unix_path(&self) -> Option<PathBuf> {
        match self {
            Self::Tcp(_) | Self::UnixInherited(..) => None,
            Self::Unix(_, p) => Some(p.clone()),
        }
    }
}

fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket", path.display());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("{} is in use by another process", path.display());
    }
    std::fs::remove_file(path)
        .with_context(|| format!("cannot remove stale socket {}", path.display()))
}

/// One frame read from the peer.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) header: FrameHeader,
    /// Bytes of the header after the length prefix (7 when both ids are one byte).
    pub(crate) header_len: usize,
    pub(crate) payload: Bytes,
    /// Offset of the frame's length prefix in the received byte stream.
    pub(crate) offset: u64,
    /// The frame length (the prefix's value).
    pub(crate) len: usize,
}

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum RecvError {
    Timeout(Duration),
    Io(io::Error),
    /// EOF in the middle of a frame.
    Truncated {
        offset: u64,
        buffered: usize,
    },
    /// A bad length prefix or header.
    Decode {
        offset: u64,
        error: DecodeError,
        /// The bytes look like HTTP.
        http: bool,
    },
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(t) => write!(f, "no frame received within {t:?}"),
            Self::Io(e) => write!(f, "read failed: {e}"),
            Self::Truncated { offset, buffered } => write!(
                f,
                "connection closed in the middle of a frame at offset {offset} ({buffered} bytes received)"
            ),
            Self::Decode {
                offset,
                error,
                http,
            } => {
                write!(
                    f,
                    "malformed frame at offset {offset}: {error} (status {})",
                    error.status()
                )?;
                if *http {
                    f.write_str(HTTP_HINT)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RecvError {}

/// Said when the peer's bytes look like HTTP.
pub(crate) const HTTP_HINT: &str = "; the peer speaks HTTP, not SPOP: is this the address of \
     an HTTP server (HAProxy's frontend, an admin or metrics port) instead of the agent?";

/// The start of an HTTP response or request.
pub(crate) fn looks_like_http(buf: &[u8]) -> bool {
    const STARTS: [&[u8]; 6] = [b"HTTP/", b"GET ", b"POST ", b"HEAD ", b"PUT ", b"<!DOC"];
    STARTS
        .iter()
        .any(|s| buf.len() >= 4 && s.starts_with(&buf[..buf.len().min(s.len())]))
}

/// Reads whole frames off a stream, tracking byte offsets.
#[derive(Debug)]
pub(crate) struct FrameConn {
    pub(crate) io: Stream,
    rbuf: BytesMut,
    offset: u64,
    /// Frames larger than this are refused.
    pub(crate) max_frame_size: u32,
}

impl FrameConn {
    pub(crate) fn new(io: Stream, max_frame_size: u32) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(16 * 1024),
            offset: 0,
            max_frame_size,
        }
    }

    /// The stream and whatever was read past the last frame.
    pub(crate) fn into_parts(self) -> (Stream, BytesMut) {
        (self.io, self.rbuf)
    }

    /// Resumes reading frames from a stream with already buffered bytes.
    pub(crate) fn from_parts(io: Stream, rbuf: BytesMut, max_frame_size: u32) -> Self {
        Self {
            io,
            rbuf,
            offset: 0,
            max_frame_size,
        }
    }

    /// Writes bytes (whole frames) in one go.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Reads the next frame; `Ok(None)` at a clean end of stream.
    pub(crate) async fn recv(&mut self, timeout: Duration) -> Result<Option<Received>, RecvError> {
        tokio::time::timeout(timeout, self.recv_inner())
            .await
            .unwrap_or(Err(RecvError::Timeout(timeout)))
    }

    async fn recv_inner(&mut self) -> Result<Option<Received>, RecvError> {
        loop {
            match split_frame(&self.rbuf, self.max_frame_size) {
                Ok(Some((header, payload, used))) => {
                    let payload_len = payload.len();
                    let offset = self.offset;
                    let frame = self.rbuf.split_to(used).freeze();
                    self.offset += used as u64;
                    return Ok(Some(Received {
                        header,
                        header_len: used - 4 - payload_len,
                        payload: frame.slice(used - payload_len..),
                        offset,
                        len: used - 4,
                    }));
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(RecvError::Decode {
                        offset: self.offset,
                        error,
                        http: looks_like_http(&self.rbuf),
                    });
                }
            }
            self.rbuf.reserve(4096);
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) if self.rbuf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(RecvError::Truncated {
                        offset: self.offset,
                        buffered: self.rbuf.len(),
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }

    /// Half-closes the write side.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}
