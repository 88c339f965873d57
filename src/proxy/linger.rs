//! Lingering close of HTTP/1 connections (what nginx's `lingering_close` does).
//!
//! When the edge answers before it has read the whole request (413 for a body over the limit,
//! 400, 431, 503 read-only on a POST with a body) and then closes, the client may still be
//! sending. Closing a socket with unread bytes in its receive buffer makes the kernel send a
//! reset, and a reset can reach the client before it has read the answer: it then sees EPIPE or
//! "connection reset" instead of its 413. So a connection the edge closes while the client has
//! not closed its side gets a task of its own: the write side is shut down (TLS close_notify,
//! then FIN), and what the client still sends is read and thrown away until it closes, goes
//! quiet for [`QUIET`], [`MAX_TIME`] passes or [`MAX_BYTES`] have been read. Then it closes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A client that sends nothing for this long is not going to read its answer either.
const QUIET: Duration = Duration::from_secs(5);
/// The most time a closing connection is kept.
const MAX_TIME: Duration = Duration::from_secs(30);
/// The most bytes read and discarded.
const MAX_BYTES: u64 = 1 << 30;

/// A client connection that lingers when the edge drops it before the client closed its side.
pub struct Linger<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// None only while being dropped.
    inner: Option<IO>,
    /// The client closed its side (a read returned nothing): no lingering needed.
    eof: bool,
    /// The write side was shut down already.
    shut: bool,
    /// HTTP/2 connections end with GOAWAY and do not linger.
    enabled: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Linger<IO> {
    pub fn new(inner: IO, enabled: bool) -> Linger<IO> {
        Linger {
            inner: Some(inner),
            eof: false,
            shut: false,
            enabled,
        }
    }

    fn io(&mut self) -> io::Result<&mut IO> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Linger<IO> {
    fn drop(&mut self) {
        let Some(io) = self.inner.take() else { return };
        if !self.enabled || self.eof {
            return;
        }
        let shut = self.shut;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(MAX_TIME, discard(io, shut)).await;
            });
        }
    }
}

/// Shuts the write side down, then reads and throws away until the client closes or the limits.
async fn discard<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, shut: bool) {
    if !shut && tokio::time::timeout(QUIET, io.shutdown()).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut total = 0u64;
    while total < MAX_BYTES {
        match tokio::time::timeout(QUIET, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n as u64,
            _ => return,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Linger<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(self.io()?).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() == before && buf.remaining() > 0 {
                self.eof = true;
            }
        }
        r
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Linger<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(self.io()?).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = r {
            self.shut = true;
        }
        r
    }
}
