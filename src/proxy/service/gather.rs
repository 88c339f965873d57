//! Gathered writes for HTTP/2 connections.
//!
//! The TLS stream turns every write into a TLS record and a `send` on the socket, and the h2
//! codec flushes before every DATA frame of 1 KiB or more (it keeps such a payload aside instead
//! of copying it, and writes it out before it takes the next frame). So ten responses ready at
//! once left as ten records and ten `send`s, where haproxy and nginx send one.
//!
//! `Gather` sits between the two. Writes are copied into one buffer (payloads of a full TLS
//! record or more go straight through, after what is buffered). A flush during a pass of the
//! connection task is held back: the task is woken again and the buffer goes out at the first
//! flush of the next pass, together with everything written until then. h2 flushes at the end of
//! every pass, so nothing waits for more than one trip through the worker's run queue, and the
//! streams that answer in between add their responses to the same record.
//!
//! A pass is one poll of the HTTP/2 connection (`h2.rs`, its only poller, counts them in the
//! `Passes` it shares with the `Gather`); the streams that can go on run inside that poll. `Gather` reports itself as not vectored (h2 then copies DATA payloads
//! under 1 KiB into its own buffer rather than keeping them aside).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Polls of one connection future, counted by its poller.
pub type Passes = Arc<AtomicU64>;

/// Counts a pass: the poller is the only writer, so no read-modify-write is needed.
#[inline]
pub fn next_pass(passes: &Passes) {
    passes.store(
        passes.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// One TLS record's plaintext: a write this large, with nothing buffered, is not copied.
const RECORD: usize = 16 * 1024;
/// The buffer is written out before it grows past this.
const LIMIT: usize = 4 * RECORD;

pub struct Gather<IO: AsyncWrite + Unpin> {
    inner: IO,
    /// None: every call goes straight to `inner` (HTTP/1 connections handed to hyper, whose
    /// upgraded tunnels must not wait for a flush).
    passes: Option<Passes>,
    buf: Vec<u8>,
    /// Bytes of `buf` already written to `inner`.
    sent: usize,
    /// The pass in which a flush was held back; the buffer goes out in a later one.
    held: Option<u64>,
}

impl<IO: AsyncWrite + Unpin> Gather<IO> {
    /// Gathers when `passes` is given (HTTP/2 connections).
    pub fn new(inner: IO, passes: Option<Passes>) -> Gather<IO> {
        Gather {
            inner,
            passes,
            buf: Vec::new(),
            sent: 0,
            held: None,
        }
    }

    /// Writes the buffer out; Ready once it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held = None;
        self.sent = 0;
        // Freed, not kept: an idle h2 connection holds no buffer here (one allocation per
        // gathered batch, against the write it saves).
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

/// Bytes held back when the connection ends without a shutdown (the client closed without
/// close_notify, or hyper returned early) are still sent if the socket takes them now, as they
/// would have been without gathering.
impl<IO: AsyncWrite + Unpin> Drop for Gather<IO> {
    fn drop(&mut self) {
        if self.buf.len() > self.sent {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(Ok(())) = self.poll_drain(&mut cx) {
                let _ = Pin::new(&mut self.inner).poll_flush(&mut cx);
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gather<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Gather<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.passes.is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.len() + data.len() > LIMIT {
            ready!(this.poll_drain(cx))?;
        }
        if this.buf.is_empty() && data.len() >= RECORD {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve(RECORD);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.passes.is_some() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.passes.is_none() && self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(passes) = &this.passes {
            if this.buf.len() > this.sent {
                let pass = passes.load(Ordering::Relaxed);
                match this.held {
                    // Held back in this pass already: still gathering.
                    Some(p) if p == pass => return Poll::Ready(Ok(())),
                    // The first flush of a pass: hold back, come back in the next one.
                    None => {
                        this.held = Some(pass);
                        cx.waker().wake_by_ref();
                        return Poll::Ready(Ok(()));
                    }
                    // Held back in an earlier pass: out it goes.
                    Some(_) => ready!(this.poll_drain(cx))?,
                }
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the stream under `Gather`.
    struct Counting<IO> {
        inner: IO,
        writes: usize,
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Counting<IO> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn flush_now<IO: AsyncWrite + Unpin>(g: &mut Gather<IO>) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(g).poll_flush(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn flushes_in_one_pass_leave_together_in_the_next() {
        let passes = Passes::default();
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut g = Gather::new(
            Counting {
                inner: a,
                writes: 0,
            },
            Some(passes.clone()),
        );
        // Pass 0: ten frames, each followed by a flush, as h2 does for DATA frames of 1 KiB.
        for i in 0..10u8 {
            g.write_all(&[i; 1024]).await.unwrap();
            flush_now(&mut g);
        }
        assert_eq!(g.inner.writes, 0, "nothing leaves during the pass");
        // Pass 1: the first flush sends all of it, in one write.
        next_pass(&passes);
        flush_now(&mut g);
        assert_eq!(g.inner.writes, 1, "ten frames leave as one write");
        // More than a record: what is buffered goes first, then the large write, in order.
        g.write_all(b"head").await.unwrap();
        g.write_all(&vec![7u8; 5 * RECORD]).await.unwrap();
        g.write_all(b"tail").await.unwrap();
        poll_fn(|cx| Pin::new(&mut g).poll_shutdown(cx))
            .await
            .unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let mut want = Vec::new();
        for i in 0..10u8 {
            want.extend_from_slice(&[i; 1024]);
        }
        want.extend_from_slice(b"head");
        want.extend_from_slice(&vec![7u8; 5 * RECORD]);
        want.extend_from_slice(b"tail");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes arrive in the order written");
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Counting<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn held_bytes_leave_on_drop() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut g = Gather::new(a, Some(Passes::default()));
        g.write_all(b"frames").await.unwrap();
        flush_now(&mut g);
        drop(g);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"frames");
    }
}
