//! Body types of the request path, without boxing: the request body to the upstream (with the
//! size limit enforced while streaming) and the response body to the client (an upstream stream or
//! a page we made), which counts bytes and finishes the request's bookkeeping when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use std::time::Duration;

use super::fast::backend::{RawConn, BUF};
use super::fast::head::{Chunked, Decoded, Framing};
use super::service::Done;
use super::upstream::UpConn;

/// Errors while streaming a body through.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The backend's body broke off or its framing was bad.
    #[error("{0}")]
    Upstream(&'static str),
}

/// The client's request body on its way to the upstream.
pub enum ReqBody {
    Empty,
    Stream {
        inner: Incoming,
        remaining: u64,
        limit: u64,
    },
}

impl ReqBody {
    pub fn new(inner: Incoming, limit: u64) -> ReqBody {
        if inner.is_end_stream() {
            ReqBody::Empty
        } else {
            ReqBody::Stream {
                inner,
                remaining: limit,
                limit,
            }
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Stream {
                inner,
                remaining,
                limit,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        let n = d.len() as u64;
                        if n > *remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                        }
                        *remaining -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

enum Inner {
    Full(Option<Bytes>),
    /// The backend's body read straight off a pooled socket (`fast::backend`).
    Raw(RawBody),
    /// The backend's body, and its connection (driven here while the body streams; handed to
    /// the bookkeeping at the end, which pools it after a clean end). None for upgrades.
    Upstream(Incoming, Option<UpConn>),
}

/// The response body to the client.
pub struct RespBody {
    inner: Inner,
    bytes: u64,
    done: bool,
    /// The request's bookkeeping, run once when the body is done (fully sent, failed, or
    /// dropped) with the byte count. Inline, not boxed: no allocation per request.
    finish: Option<Done>,
}

impl RespBody {
    pub fn full(b: Bytes) -> RespBody {
        RespBody {
            inner: Inner::Full(Some(b)),
            bytes: 0,
            done: false,
            finish: None,
        }
    }

    pub fn empty() -> RespBody {
        RespBody::full(Bytes::new())
    }

    pub fn upstream(b: Incoming, conn: Option<UpConn>) -> RespBody {
        RespBody {
            inner: Inner::Upstream(b, conn),
            bytes: 0,
            done: false,
            finish: None,
        }
    }

    /// The whole body of a page we made (empty for an upstream body).
    pub(crate) fn take_full(&mut self) -> Bytes {
        match &mut self.inner {
            Inner::Full(b) => b.take().unwrap_or_default(),
            Inner::Upstream(..) | Inner::Raw(_) => Bytes::new(),
        }
    }

    pub(crate) fn on_finish(&mut self, f: Done) {
        self.finish = Some(f);
    }

    /// A backend body read from a raw connection (which goes back to the pool after a clean
    /// end). `reusable`: the backend keeps the connection open after this response.
    pub fn raw(conn: RawConn, framing: Framing, reusable: bool, idle: Duration) -> RespBody {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        RespBody {
            inner: Inner::Raw(RawBody {
                conn: Some(conn),
                framing,
                left,
                chunked: Chunked::default(),
                trailers: Vec::new(),
                reusable,
                idle,
            }),
            bytes: 0,
            done: false,
            finish: None,
        }
    }

    fn conn(&mut self) -> Option<UpConn> {
        match &mut self.inner {
            Inner::Upstream(_, c) => c.take(),
            Inner::Full(_) | Inner::Raw(_) => None,
        }
    }

    fn complete(&mut self, ok: bool) {
        self.done = true;
        if let Some(f) = self.finish.take() {
            let conn = self.conn();
            f.finish(self.bytes, ok, conn);
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            // hyper stops polling once `is_end_stream` says so; that is a complete body too.
            let complete = self.done || self.is_end_stream();
            let conn = self.conn();
            f.finish(self.bytes, complete, conn);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Inner::Upstream(inc, conn) => {
                if let Some(c) = conn {
                    c.drive(cx);
                }
                Pin::new(inc).poll_frame(cx).map_err(BodyError::from)
            }
            Inner::Raw(r) => r.poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.complete(true),
            Poll::Ready(Some(Err(_))) => this.complete(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => !matches!(b, Some(b) if !b.is_empty()),
            Inner::Upstream(i, _) => i.is_end_stream(),
            Inner::Raw(r) => r.ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(i, _) => i.size_hint(),
            Inner::Raw(r) => match r.framing {
                Framing::Length(_) | Framing::Empty => SizeHint::with_exact(r.left),
                _ => SizeHint::default(),
            },
        }
    }
}

/// A backend's body on a raw connection, decoded into frames (chunked framing removed,
/// trailers as a trailers frame).
struct RawBody {
    /// None once the body has ended (the connection pooled or closed).
    conn: Option<RawConn>,
    framing: Framing,
    /// Bytes still to come (`Framing::Length`).
    left: u64,
    chunked: Chunked,
    trailers: Vec<u8>,
    reusable: bool,
    idle: Duration,
}

impl RawBody {
    /// True when nothing more will come.
    fn ended(&self) -> bool {
        self.conn.is_none()
            || self.framing == Framing::Empty
            || (matches!(self.framing, Framing::Length(_)) && self.left == 0)
    }

    /// The body ended cleanly: the connection goes back to the pool if it can take more.
    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.reusable && c.buf.is_empty() && self.framing != Framing::UntilClose {
                c.release(self.idle);
            }
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.ended() {
                self.release();
                return Poll::Ready(None);
            }
            let Some(c) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !c.buf.is_empty() {
                match self.framing {
                    Framing::Length(_) => {
                        let n = self.left.min(c.buf.len() as u64);
                        self.left -= n;
                        let data = c.buf.split_to(n as usize).freeze();
                        if self.left == 0 {
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Framing::UntilClose => {
                        let data = c.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Framing::Chunked => match self.chunked.decode(&mut c.buf, &mut self.trailers) {
                        Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                        Ok(Decoded::End(t)) => {
                            self.release();
                            self.conn = None;
                            if t.is_empty() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailer_map(&t)))));
                        }
                        Ok(Decoded::More) => {}
                        Err(_) => {
                            self.conn = None;
                            return Poll::Ready(Some(Err(BodyError::Upstream(
                                "the backend sent a broken chunked body",
                            ))));
                        }
                    },
                    Framing::Empty => {}
                }
            }
            if c.buf.capacity() - c.buf.len() < 4096 {
                c.buf.reserve(BUF);
            }
            match poll_read_buf(&mut c.stream, cx, &mut c.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.framing == Framing::UntilClose => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Upstream(
                        "the backend closed the connection before the body ended",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // Never polled to the end but nothing was left (an empty body): still reusable.
        if self.conn.is_some() && self.ended() {
            self.release();
        }
    }
}

/// Reads into the spare capacity of `buf`, registering for readiness when there is nothing.
fn poll_read_buf(
    s: &mut tokio::net::TcpStream,
    cx: &mut Context<'_>,
    buf: &mut bytes::BytesMut,
) -> Poll<std::io::Result<usize>> {
    loop {
        match s.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match s.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            },
            r => return Poll::Ready(r),
        }
    }
}

/// The trailer section of a chunked body as a header map (lines that do not parse are dropped).
fn trailer_map(t: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    let mut block = t.to_vec();
    block.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; 32];
    if let Ok(httparse::Status::Complete((_, hs))) = httparse::parse_headers(&block, &mut slots) {
        for h in hs {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
    }
    map
}
