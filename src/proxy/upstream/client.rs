//! hyper's HTTP/1.1 client connection to a backend, for the requests hyper's side takes with a
//! body (hyper streams it with flow control) and for upgrades (WebSocket). Bodiless requests use
//! the raw connections of `raw.rs`.
//!
//! hyper splits a connection into a `SendRequest` handle and a `Connection` future that does the
//! I/O, normally spawned as a task of its own; then every request crosses tasks twice (request
//! in, response and each body chunk out). Here the `Connection` is not spawned: [`UpConn`] keeps
//! both halves and the task that serves the client polls the `Connection` itself, while it waits
//! for the response head ([`send`]) and while it streams the response body ([`UpBody`]).
//!
//! Idle connections wait in this worker thread's pool. A connection goes back only when the body
//! ended cleanly. A pooled connection is driven once when taken: if it is not then ready (the
//! backend closed it, or it is still busy) it is dropped and the next one tried; a request that
//! a reused connection could not send goes to another (nothing reached the backend).
//!
//! An upgrade gets a connection of its own ([`upgrade`]), driven by a task with upgrades on, so
//! that hyper can hand over the socket once the backend answers 101.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::pool::IdlePool;
use super::{connect, BodyError, Failed, Settings};
use crate::proxy::error_page::ProxyError;
use crate::proxy::request_body::InBody;

/// The client's request body on its way to the backend, held to the size limit as it streams.
pub enum ReqBody {
    Empty,
    Stream {
        inner: InBody,
        remaining: u64,
        limit: u64,
    },
}

impl ReqBody {
    pub fn new(inner: InBody, limit: u64) -> ReqBody {
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
            } => {
                let polled = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(frame)) = &polled {
                    if let Some(d) = frame.data_ref() {
                        let n = d.len() as u64;
                        if n > *remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                        }
                        *remaining -= n;
                    }
                }
                Poll::Ready(polled)
            }
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

/// A request that did not get its response head on a connection.
#[allow(clippy::large_enum_variant)] // a return value only; boxing would allocate per retry
enum Failure {
    /// Not sent (the connection is closed or busy): it may go to another connection.
    NotSent(Request<ReqBody>, Option<hyper::Error>),
    Failed(hyper::Error),
}

type Io = TokioIo<TcpStream>;

/// One connection to a backend: the request handle and the I/O future, driven by whoever holds
/// it. Dropping it closes the connection.
pub struct UpConn {
    addr: SocketAddr,
    tx: http1::SendRequest<ReqBody>,
    /// None once the connection has ended.
    conn: Option<Pin<Box<http1::Connection<Io, ReqBody>>>>,
}

thread_local! {
    static POOL: RefCell<IdlePool<UpConn>> = const { RefCell::new(IdlePool::new()) };
}

impl UpConn {
    /// Lets the connection make progress (send the request and its body, read the response into
    /// the body channel). Registers the current task for the backend's socket.
    #[inline]
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = &mut self.conn {
            if let Poll::Ready(r) = c.as_mut().poll(cx) {
                if let Err(e) = r {
                    tracing::trace!(error = %e, "upstream connection ended with an error");
                }
                self.conn = None;
            }
        }
    }

    /// Back into this thread's pool, for the next request to the same backend. Call only when
    /// the response body ended cleanly. Usually the connection is ready for another request at
    /// once; if the backend answered before the request body was all sent, a task drives the
    /// connection until the body is through (as hyper's own connection task would have), then
    /// pools it.
    fn release(mut self, idle_timeout: Duration) {
        // Let it take in the end of the exchange (nothing here needs a wake-up: whoever drives
        // it next registers its own waker).
        self.drive(&mut Context::from_waker(std::task::Waker::noop()));
        if self.conn.is_none() || self.tx.is_closed() {
            return;
        }
        if !self.tx.is_ready() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let ready = std::future::poll_fn(|cx| {
                        self.drive(cx);
                        self.tx.poll_ready(cx)
                    })
                    .await;
                    if ready.is_ok() {
                        self.pool(idle_timeout);
                    }
                });
            }
            return;
        }
        self.pool(idle_timeout);
    }

    fn pool(self, idle_timeout: Duration) {
        POOL.with(|p| p.borrow_mut().put(self.addr, self, idle_timeout));
    }

    /// Sends `req` and waits for the response head, driving the connection meanwhile. `fresh`:
    /// a new connection may take a moment to become ready; a pooled one must be ready at once.
    /// On failure, the request comes back if it was not sent.
    async fn exchange(
        &mut self,
        req: Request<ReqBody>,
        fresh: bool,
    ) -> Result<Response<Incoming>, Failure> {
        let ready = std::future::poll_fn(|cx| {
            self.drive(cx);
            match self.tx.poll_ready(cx) {
                Poll::Pending if !fresh => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => Poll::Ready(Some(r)),
            }
        })
        .await;
        match ready {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Failure::NotSent(req, Some(e))),
            // Busy (its last request is not done) or closing: not usable now.
            None => return Err(Failure::NotSent(req, None)),
        }
        let mut sent = std::pin::pin!(self.tx.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.drive(cx);
            sent.as_mut().poll(cx)
        })
        .await
        .map_err(|mut e| match e.take_message() {
            Some(req) => Failure::NotSent(req, Some(e.into_error())),
            None => Failure::Failed(e.into_error()),
        })
    }
}

fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<UpConn> {
    POOL.with(|p| {
        p.borrow_mut()
            .take(addr, idle_timeout, |c| !c.tx.is_closed())
    })
}

async fn open(addr: SocketAddr, settings: &Settings) -> Result<UpConn, Failed> {
    let stream = connect(addr, settings.connect_timeout).await?;
    let (tx, conn) = http1::Builder::new()
        .max_buf_size(settings.max_head)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_failed(&e, false))?;
    Ok(UpConn {
        addr,
        tx,
        conn: Some(Box::pin(conn)),
    })
}

/// Sends `req` (origin-form URI, Host set) to `addr` and waits for the response head. The
/// response body comes with its connection, which it drives while it is read.
pub async fn send(
    settings: &Settings,
    addr: SocketAddr,
    mut req: Request<ReqBody>,
) -> Result<Response<UpBody>, Failed> {
    let idle = settings.idle_timeout;
    // Reused connections first; each may turn out closed. Then a fresh one, whose failure is
    // final.
    while let Some(mut c) = take(addr, idle) {
        match c.exchange(req, false).await {
            Ok(resp) => return Ok(resp.map(|body| UpBody::new(body, Some(c), idle))),
            Err(Failure::NotSent(r, _)) => req = r,
            Err(Failure::Failed(e)) => return Err(hyper_failed(&e, false)),
        }
    }
    // Boxed: the connect and handshake futures are large and rarely needed; inline they would
    // grow (and be copied with) every request's future.
    let mut c = Box::pin(open(addr, settings)).await?;
    match c.exchange(req, true).await {
        Ok(resp) => Ok(resp.map(|body| UpBody::new(body, Some(c), idle))),
        Err(Failure::NotSent(_, Some(e)) | Failure::Failed(e)) => Err(hyper_failed(&e, false)),
        Err(Failure::NotSent(_, None)) => Err(Failed::closed()),
    }
}

/// Sends an upgrade request (`Connection: upgrade` kept) on a connection of its own, driven by a
/// task with upgrades on; after a 101, `hyper::upgrade::on` of the response yields the socket.
pub async fn upgrade(
    settings: &Settings,
    addr: SocketAddr,
    req: Request<ReqBody>,
) -> Result<Response<UpBody>, Failed> {
    let stream = connect(addr, settings.connect_timeout).await?;
    let (mut tx, conn) = http1::Builder::new()
        .max_buf_size(settings.max_head)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_failed(&e, false))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::trace!(error = %e, "upgraded upstream connection ended with an error");
        }
    });
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| hyper_failed(&e, false))?;
    Ok(resp.map(|body| UpBody::new(body, None, settings.idle_timeout)))
}

/// A backend's body from hyper's client, with the connection it drives while it is read.
pub struct UpBody {
    body: Incoming,
    /// None for upgrades (their connection has its own task).
    conn: Option<UpConn>,
    idle: Duration,
}

impl UpBody {
    fn new(body: Incoming, conn: Option<UpConn>, idle: Duration) -> UpBody {
        UpBody { body, conn, idle }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(c) = &mut self.conn {
            c.drive(cx);
        }
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map_err(BodyError::from)
    }

    pub fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }

    /// The body is over: a connection whose body ended cleanly goes back to the pool.
    pub fn finish(&mut self, complete: bool) {
        if let (Some(c), true) = (self.conn.take(), complete) {
            c.release(self.idle);
        }
    }
}

/// What a hyper client error means for the request.
pub fn hyper_failed(e: &hyper::Error, connect: bool) -> Failed {
    Failed {
        connect,
        err: classify(Some(e), connect),
    }
}

fn classify(mut src: Option<&(dyn std::error::Error + 'static)>, connect: bool) -> ProxyError {
    while let Some(s) = src {
        match s.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge(n)) => return ProxyError::BodyTooLarge(*n),
            // The client's own body broke (bad chunk framing, cut off): its fault, not the backend's.
            Some(BodyError::Hyper(_) | BodyError::H2(_) | BodyError::Upstream(_)) => {
                return ProxyError::BadRequest("the request body is malformed or was cut off")
            }
            None => {}
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::UpstreamTimeout;
            }
        }
        if s.to_string().contains("timed out") {
            return ProxyError::UpstreamTimeout;
        }
        src = s.source();
    }
    if connect {
        ProxyError::Upstream("the backend refused the connection".into())
    } else {
        ProxyError::Upstream("the backend closed the connection or sent an invalid response".into())
    }
}
