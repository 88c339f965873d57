//! The response body to the client on hyper's side, without boxing: a page the edge made, or a
//! backend's body (off a raw connection, or from hyper's client). It counts the bytes sent and
//! ends the request's bookkeeping ([`Exchange::end`]) once, when the body is done: fully sent,
//! failed, or dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::proxy::request::Exchange;
use crate::proxy::upstream::client::UpBody;
use crate::proxy::upstream::raw::RawBody;
use crate::proxy::upstream::BodyError;

enum Inner {
    Full(Option<Bytes>),
    Raw(RawBody),
    Upstream(UpBody),
}

pub struct RespBody {
    inner: Inner,
    bytes: u64,
    done: bool,
    /// The head the body goes with has a Date, and a Content-Length when the length is known:
    /// the backend's own head, forwarded as it came (the HTTP/2 server then adds neither).
    framed_head: bool,
    /// The request, ended once with the byte count. Inline, not boxed: no allocation per request.
    exchange: Option<Exchange>,
}

impl RespBody {
    fn new(inner: Inner) -> RespBody {
        RespBody {
            inner,
            bytes: 0,
            done: false,
            framed_head: false,
            exchange: None,
        }
    }

    pub fn full(b: Bytes) -> RespBody {
        RespBody::new(Inner::Full(Some(b)))
    }

    /// A backend's body off a raw connection; `framed_head`: see [`RespBody::framed_head`].
    pub fn raw(b: RawBody, framed_head: bool) -> RespBody {
        let mut r = RespBody::new(Inner::Raw(b));
        r.framed_head = framed_head;
        r
    }

    /// Whether the head already has its Date, and its Content-Length when the length is known.
    pub fn framed_head(&self) -> bool {
        self.framed_head
    }

    pub fn upstream(b: UpBody) -> RespBody {
        RespBody::new(Inner::Upstream(b))
    }

    pub(crate) fn on_finish(&mut self, x: Exchange) {
        self.exchange = Some(x);
    }

    /// The body is over; `complete`: all of it reached hyper.
    fn finish(&mut self, complete: bool) {
        if let Some(x) = self.exchange.take() {
            if let Inner::Upstream(b) = &mut self.inner {
                b.finish(complete);
            }
            x.end(self.bytes, complete);
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream` says so; that is a complete body too.
        let complete = self.done || self.is_end_stream();
        self.finish(complete);
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
            Inner::Upstream(b) => b.poll_frame(cx),
            Inner::Raw(r) => r.poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                this.finish(true);
            }
            Poll::Ready(Some(Err(_))) => {
                this.done = true;
                this.finish(false);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => !matches!(b, Some(b) if !b.is_empty()),
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Raw(r) => r.ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
            Inner::Raw(r) => r
                .exact_len()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}
