//! The client's request body as either front end delivers it: hyper's HTTP/1.1 `Incoming`, or
//! an HTTP/2 stream's `RecvStream` from the h2 server of `service/h2.rs`. An h2 stream's
//! flow-control window is given back as each chunk is taken, so the client sends only as fast as
//! the backend reads.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::upstream::BodyError;

pub enum InBody {
    H1(Incoming),
    H2 {
        recv: h2::RecvStream,
        /// The request's Content-Length, when it has one (h2 itself holds the stream to it).
        len: Option<u64>,
        /// All DATA is in; trailers may follow.
        data_done: bool,
    },
}

impl InBody {
    pub fn h2(recv: h2::RecvStream, len: Option<u64>) -> InBody {
        InBody::H2 {
            recv,
            len,
            data_done: false,
        }
    }
}

/// A stream the client ended with NO_ERROR (RFC 9113 8.1: the server answered before the body
/// was all in) has no more body; any other reset or error breaks it.
fn h2_end<T>(e: h2::Error) -> Option<Result<T, BodyError>> {
    (e.reason() != Some(h2::Reason::NO_ERROR)).then(|| Err(BodyError::H2(e)))
}

impl Body for InBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let (recv, data_done) = match self.get_mut() {
            InBody::H1(b) => return Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            InBody::H2 {
                recv, data_done, ..
            } => (recv, data_done),
        };
        if !*data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(h2_end(e)),
                None => *data_done = true,
            }
        }
        Poll::Ready(match ready!(recv.poll_trailers(cx)) {
            Ok(t) => t.map(|t| Ok(Frame::trailers(t))),
            Err(e) => h2_end(e),
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InBody::H1(b) => b.is_end_stream(),
            InBody::H2 { recv, .. } => recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InBody::H1(b) => b.size_hint(),
            InBody::H2 { len: Some(n), .. } => SizeHint::with_exact(*n),
            InBody::H2 { .. } => SizeHint::default(),
        }
    }
}
