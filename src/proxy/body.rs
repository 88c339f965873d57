//! Body types of the request path, without boxing: the request body to the upstream (with the
//! size limit enforced while streaming) and the response body to the client (an upstream stream or
//! a page we made), which counts bytes and finishes the request's bookkeeping when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::service::Done;
use super::upstream::UpConn;

/// Errors while streaming a body through.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
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
            Inner::Upstream(..) => Bytes::new(),
        }
    }

    pub(crate) fn on_finish(&mut self, f: Done) {
        self.finish = Some(f);
    }

    fn conn(&mut self) -> Option<UpConn> {
        match &mut self.inner {
            Inner::Upstream(_, c) => c.take(),
            Inner::Full(_) => None,
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
                Pin::new(inc).poll_frame(cx)
            }
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(i, _) => i.size_hint(),
        }
    }
}
