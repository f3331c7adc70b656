//! The socket side of a connection: one stream polled for both directions, and the read and
//! write buffers each worker thread lends to its connections while bytes wait in them.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

/// Room made before a read (HAProxy 2.6 batches up to 20 NOTIFYs per write, 3.x sends one
/// per read). Buffers are lent by the worker thread's spare slot while a read waits, so an
/// idle connection holds none; one that grew above `KEEP_CAPACITY` is not kept.
pub(super) const READ_CHUNK: usize = 8 * 1024;
pub(super) const KEEP_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// Each thread's spare read and write buffers: a connection holds one only while bytes
    /// wait in it, and hands it back when it empties.
    pub(super) static SPARE_READ: Cell<Option<BytesMut>> = const { Cell::new(None) };
    pub(super) static SPARE_WRITE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// An empty buffer with room for `want` bytes: the thread's spare one (reclaiming its memory
/// when nothing else refers to it), or a new one.
pub(super) fn lend(pool: &'static LocalKey<Cell<Option<BytesMut>>>, want: usize) -> BytesMut {
    let mut b = pool.try_with(Cell::take).ok().flatten().unwrap_or_default();
    b.reserve(want);
    b
}

/// Hands an empty buffer back to the thread's spare slot (keeping the larger of two).
pub(super) fn give_back(pool: &'static LocalKey<Cell<Option<BytesMut>>>, b: &mut BytesMut) {
    let b = std::mem::take(b);
    if b.capacity() == 0 || b.capacity() > KEEP_CAPACITY || !b.is_empty() {
        return;
    }
    let _ = pool.try_with(|slot| {
        let keep = match slot.take() {
            Some(old) if old.capacity() >= b.capacity() => old,
            _ => b,
        };
        slot.set(Some(keep));
    });
}

/// What the socket did.
pub(super) enum IoEvent {
    Wrote(io::Result<usize>),
    /// A write could not complete at once (the peer's window is full): the write timeout
    /// has to be armed.
    WriteBlocked,
    Read(io::Result<usize>),
}

/// Writes what is queued, else reads if allowed, on one stream (no split halves and their
/// lock). While a read waits, the read buffer goes back to the thread's spare slot.
pub(super) fn poll_io<IO: AsyncRead + AsyncWrite>(
    mut io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
    rbuf: &mut BytesMut,
    can_read: bool,
    write_blocked: &mut bool,
) -> Poll<IoEvent> {
    if !out.is_empty() {
        // a plain write (send(2)), not tokio_util's `poll_write_buf`, which takes the vectored
        // path (writev(2)) on TCP even for one buffer: the kernel's writev path costs more
        match io.as_mut().poll_write(cx, out) {
            Poll::Ready(r) => {
                *write_blocked = false;
                if let Ok(n) = r {
                    out.advance(n);
                }
                return Poll::Ready(IoEvent::Wrote(r));
            }
            Poll::Pending if !*write_blocked => {
                *write_blocked = true;
                return Poll::Ready(IoEvent::WriteBlocked);
            }
            Poll::Pending => {}
        }
    }
    if can_read {
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            if rbuf.is_empty() {
                *rbuf = lend(&SPARE_READ, READ_CHUNK);
            } else {
                rbuf.reserve(READ_CHUNK);
            }
        }
        match poll_read_buf(io.as_mut(), cx, rbuf) {
            Poll::Ready(r) => return Poll::Ready(IoEvent::Read(r)),
            Poll::Pending if rbuf.is_empty() => give_back(&SPARE_READ, rbuf),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}
