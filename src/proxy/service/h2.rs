//! The HTTP/2 server: the `h2` crate's connection, with every stream served inside the
//! connection's own task. hyper's h2 server spawned a task per stream and wrapped each in layers
//! of its own (response conversion, header stripping, a body pipe, a keep-alive recorder locked
//! on every frame); here one poll of the connection reads the frames, runs the streams that were
//! woken and writes what they answered, so the responses ready in one pass leave together (see
//! `gather.rs`) and no stream wakes another task.
//!
//! The stream limits are the h2 crate's own (concurrent streams, the header list size, pending
//! and locally reset streams: the rapid-reset protection). The request body is read with its
//! flow-control window given back chunk by chunk (`request_body.rs`); the response body is sent
//! as the client's window allows. A PING after a quiet interval finds a peer that is gone.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::gather::{next_pass, Passes};
use super::RespBody;
use crate::config::Limits;
use crate::proxy::request_body::InBody;
use crate::proxy::{h1, Conn};

/// Without a frame from the client for this long, a PING asks whether it is still there; no
/// PONG within the next interval closes the connection (hyper's keep-alive, which this replaces,
/// waited 30 s and then 20 s).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The connection's settings: the client may send 1 MiB per stream and per connection before
/// it waits for a WINDOW_UPDATE, and up to 400 KiB per stream wait in our send buffer (hyper's
/// defaults, which this keeps).
fn settings(limits: &Limits) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_send_buffer_size(400 << 10)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(250)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(Some(1024));
    b
}

/// Serves one HTTP/2 connection until it closes; `shutdown` turning true sends GOAWAY and lets
/// the streams in flight finish.
pub async fn serve<IO>(io: IO, conn: Arc<Conn>, passes: Passes, mut shutdown: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut hs = settings(&conn.edge.limits).handshake::<_, Bytes>(io);
    let h2 = poll_fn(|cx| {
        next_pass(&passes);
        Pin::new(&mut hs).poll(cx)
    })
    .await;
    let mut h2 = match h2 {
        Ok(c) => c,
        Err(e) => return tracing::trace!(peer = %conn.peer, error = %e, "no HTTP/2 handshake"),
    };
    let mut ping = h2.ping_pong();
    let conn2 = conn.clone();
    let mut s = Serving {
        h2,
        streams: FuturesUnordered::new(),
        new: move |req, tx| stream(conn2.clone(), req, tx),
    };
    let mut draining = *shutdown.borrow();
    if draining {
        s.h2.graceful_shutdown();
    }
    let mut alive = KeepAlive::new(conn.activity.reads());
    let mut tick = pin!(tokio::time::sleep(KEEP_ALIVE));
    loop {
        tokio::select! {
            biased;
            ended = poll_fn(|cx| {
                next_pass(&passes);
                alive.poll_pong(ping.as_mut(), cx);
                s.poll(cx)
            }) => {
                if let Err(e) = ended {
                    tracing::trace!(peer = %conn.peer, error = %e, "HTTP/2 connection error");
                }
                return;
            }
            changed = shutdown.changed(), if !draining => {
                let _ = changed;
                draining = true;
                s.h2.graceful_shutdown();
            }
            () = &mut tick => {
                if !alive.tick(ping.as_mut(), conn.activity.reads()) {
                    tracing::debug!(peer = %conn.peer, "no PONG from the client: closing");
                    return;
                }
                tick.as_mut().reset(tokio::time::Instant::now() + KEEP_ALIVE);
            }
        }
    }
}

/// The connection, the streams it serves, and how a new stream is served (a closure, because
/// the stream future's type has no name to put in a field).
struct Serving<IO, F, N> {
    h2: Connection<IO, Bytes>,
    streams: FuturesUnordered<F>,
    new: N,
}

impl<IO, F, N> Serving<IO, F, N>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
    N: FnMut(Request<RecvStream>, SendResponse<Bytes>) -> F,
{
    /// One pass: take in the new streams, run those that can go on, and write out what they
    /// sent, until the connection has nothing new. Ready when the connection has ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        let mut first = true;
        loop {
            let accepted = match self.accept(cx) {
                Ok(Some(n)) => n,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            };
            if accepted == 0 && !first {
                return Poll::Pending;
            }
            first = false;
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
        }
    }

    /// Drives the connection (reads and writes frames) and takes its new streams: how many, or
    /// None once the connection has ended.
    fn accept(&mut self, cx: &mut Context<'_>) -> Result<Option<usize>, h2::Error> {
        let mut n = 0;
        loop {
            match self.h2.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, tx)))) => {
                    n += 1;
                    self.streams.push((self.new)(req, tx));
                }
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => return Ok(None),
                Poll::Pending => return Ok(Some(n)),
            }
        }
    }
}

/// The keep-alive PING: sent after an interval without a read, answered within the next.
struct KeepAlive {
    reads: u64,
    waiting: bool,
}

impl KeepAlive {
    fn new(reads: u64) -> KeepAlive {
        KeepAlive {
            reads,
            waiting: false,
        }
    }

    fn poll_pong(&mut self, ping: Option<&mut h2::PingPong>, cx: &mut Context<'_>) {
        if let (true, Some(p)) = (self.waiting, ping) {
            if let Poll::Ready(r) = p.poll_pong(cx) {
                self.waiting = r.is_err();
            }
        }
    }

    /// At the end of an interval: false when the PING sent at the last one has no answer.
    fn tick(&mut self, ping: Option<&mut h2::PingPong>, reads: u64) -> bool {
        let Some(p) = ping else { return true };
        if self.waiting {
            return false;
        }
        if reads == self.reads {
            self.waiting = p.send_ping(h2::Ping::opaque()).is_ok();
        }
        self.reads = reads;
        true
    }
}

pin_project_lite::pin_project! {
    /// One stream: the request served, then the answer sent as the client's window allows.
    /// Written out as a state machine, not an `async fn`, so the response and its body are
    /// moved as few times as possible (each move of them is a copy of a few hundred bytes). A
    /// stream the client resets is dropped where it stands (the request's bookkeeping ends
    /// with it).
    struct H2Stream<F> {
        tx: SendResponse<Bytes>,
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// Waiting for the answer.
        Handling { #[pin] handled: F },
        /// Sending the body; `waiting`: a chunk that waits for window.
        Sending { send: SendStream<Bytes>, body: RespBody, waiting: Option<(Bytes, bool)> },
    }
}

/// The stream future for one request.
fn stream(
    conn: Arc<Conn>,
    req: Request<RecvStream>,
    tx: SendResponse<Bytes>,
) -> H2Stream<impl Future<Output = Response<RespBody>>> {
    let len = content_length(req.headers());
    let req = req.map(|b| InBody::h2(b, len));
    H2Stream {
        tx,
        state: State::Handling {
            handled: super::handle(conn, req),
        },
    }
}

impl<F: Future<Output = Response<RespBody>>> Future for H2Stream<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut me = self.project();
        if let StateProj::Handling { handled } = me.state.as_mut().project() {
            let Poll::Ready(resp) = handled.poll(cx) else {
                // Still waiting: a reset from the client ends the stream here.
                return me.tx.poll_reset(cx).map(drop);
            };
            let (head, body) = resp.into_parts();
            let Some(send) = respond(me.tx, head, &body) else {
                return Poll::Ready(());
            };
            me.state.set(State::Sending {
                send,
                body,
                waiting: None,
            });
        }
        match me.state.project() {
            StateProj::Sending {
                send,
                body,
                waiting,
            } => pipe(send, body, waiting, cx).map(drop),
            StateProj::Handling { .. } => Poll::Ready(()),
        }
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    std::str::from_utf8(h.get(CONTENT_LENGTH)?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

/// Sends the response head: with a Date when the backend sent none (RFC 9110 6.6.1), and a
/// Content-Length when the body's length is known (a backend's head forwarded as it came has
/// both already: not looked up again). Returns the stream when a body follows (the body stays
/// where it is: it is a few hundred bytes).
fn respond(
    tx: &mut SendResponse<Bytes>,
    mut head: http::response::Parts,
    body: &RespBody,
) -> Option<SendStream<Bytes>> {
    let end = body.is_end_stream();
    if !body.framed_head() {
        if !head.headers.contains_key(DATE) {
            if let Ok(v) = HeaderValue::from_bytes(&h1::http_date()) {
                head.headers.insert(DATE, v);
            }
        }
        if let (false, Some(n)) = (end, body.size_hint().exact()) {
            head.headers
                .entry(CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(n));
        }
    }
    match tx.send_response(Response::from_parts(head, ()), end) {
        Ok(send) if !end => Some(send),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send the response head");
            tx.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// Sends the response body as the client's window allows: a chunk waits until the stream has
/// some capacity, then h2 sends it in as many frames as the window takes. The last chunk goes to
/// h2 at once (h2 holds it until the window opens): nothing more is read from the backend after
/// it, so there is nothing to hold back. A body that breaks resets the stream; the client
/// resetting it ends the body (dropped, so counted incomplete): noticed whenever the stream waits,
/// and by the next send.
fn pipe(
    send: &mut SendStream<Bytes>,
    body: &mut RespBody,
    waiting: &mut Option<(Bytes, bool)>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ()>> {
    loop {
        if let Some((data, eos)) = waiting.take() {
            while send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Pending => {
                        *waiting = Some((data, eos));
                        return parked(send, cx);
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(())),
                }
            }
            send.send_data(data, eos).map_err(drop)?;
            if eos {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) else {
            return parked(send, cx);
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    if eos {
                        return Poll::Ready(send.send_data(data, true).map_err(drop));
                    }
                    if !data.is_empty() {
                        send.reserve_capacity(data.len());
                        *waiting = Some((data, false));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        return Poll::Ready(send.send_trailers(t).map_err(drop));
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body broke off");
                send.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(Err(()));
            }
            None => return Poll::Ready(send.send_data(Bytes::new(), true).map_err(drop)),
        }
    }
}

/// The stream is about to wait (for window, or for the backend): a reset from the client ends
/// it instead.
fn parked(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
    match send.poll_reset(cx) {
        Poll::Ready(_) => Poll::Ready(Err(())),
        Poll::Pending => Poll::Pending,
    }
}
