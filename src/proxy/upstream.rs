//! HTTP/1.1 connections to backends through hyper's client, for requests with a body arriving
//! on hyper's side (HTTP/2, or HTTP/1.1 handed over by the fast path): hyper streams the body
//! with flow control. Requests without a body use the raw connections of `fast::backend`.
//! Driven by the client's own task and pooled per worker thread: no lock and no extra task.
//!
//! hyper's client splits a connection into a `SendRequest` handle and a `Connection` future that
//! does the I/O, normally spawned as a task of its own; then every request crosses tasks twice
//! (request in, response and each body chunk out), each crossing a wake-up that may land on the
//! other worker thread. Here the `Connection` is not spawned: [`UpConn`] keeps both halves and the
//! task that serves the client polls the `Connection` itself, while it waits for the response
//! head ([`Upstream::send`]) and while it streams the response body ([`UpConn::drive`], called by
//! `RespBody`). The backend's socket wakes the client's task directly.
//!
//! Idle connections wait in a pool per worker thread (a `thread_local!` `RefCell`, borrowed only
//! between two `.await`s, so never contended). A connection goes back into the pool of the thread
//! that finishes the response body, and only when the body ended cleanly. A pooled connection is
//! driven once when taken: if it is not then ready for a request (the backend closed it, or it is
//! still busy) it is dropped and the next one tried; a request that a reused connection could not
//! send is sent again on another (nothing reached the backend, the same rule as hyper-util's pool).
//!
//! Per request: one `RefCell` borrow to take, one to give back, no allocation. Per new connection:
//! one connect, one boxed `Connection`.
//!
//! Upgrades (WebSocket) do not come here: they go through hyper-util's pooled client, which knows
//! how to hand over the upgraded socket.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ReqBody;
use super::idle::IdlePool;

/// Settings for new connections.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_buf_size: usize,
}

/// Why a request did not get a response head.
#[derive(Debug)]
pub enum SendError {
    /// The backend could not be reached (nothing was sent): safe to try another backend.
    Connect(std::io::Error),
    /// The connection broke, or the request or response was bad.
    Http(hyper::Error),
    /// A new connection closed before it took the request.
    Closed,
}

/// A request that did not get its response head on a connection.
#[allow(clippy::large_enum_variant)] // a return value only; boxing would allocate per retry
enum Failure {
    /// Not sent (the connection is closed or busy): it may go to another connection.
    NotSent(Request<ReqBody>, Option<hyper::Error>),
    Failed(hyper::Error),
}

type Io = TokioIo<TcpStream>;

/// One connection to a backend: the request handle and the I/O future, driven by whoever holds it.
/// Dropping it closes the connection.
pub struct UpConn {
    addr: SocketAddr,
    tx: http1::SendRequest<ReqBody>,
    /// None once the connection has ended.
    conn: Option<Pin<Box<http1::Connection<Io, ReqBody>>>>,
}

impl UpConn {
    /// Lets the connection make progress (send the request and its body, read the response into
    /// the body channel). Registers the current task for the backend's socket.
    #[inline]
    pub fn drive(&mut self, cx: &mut Context<'_>) {
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
    pub fn release(mut self, idle_timeout: Duration) {
        // Let it take in the end of the exchange (nothing here needs a wake-up: whoever drives
        // it next registers its own waker).
        self.drive(&mut Context::from_waker(
            futures_util::task::noop_waker_ref(),
        ));
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

thread_local! {
    static POOL: RefCell<IdlePool<UpConn>> = const { RefCell::new(IdlePool::new()) };
}

fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<UpConn> {
    POOL.with(|p| {
        p.borrow_mut()
            .take(addr, idle_timeout, |c| !c.tx.is_closed())
    })
}

impl Upstream {
    async fn connect(&self, addr: SocketAddr) -> Result<UpConn, SendError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(SendError::Connect(e)),
                Err(_) => {
                    return Err(SendError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )))
                }
            };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(self.max_buf_size)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok(UpConn {
            addr,
            tx,
            conn: Some(Box::pin(conn)),
        })
    }

    /// Sends `req` (origin-form URI, Host set) to `addr` and waits for the response head. The
    /// connection comes back with the response: it must be driven while the body is read.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, UpConn), SendError> {
        // Reused connections first; each may turn out closed. Then a fresh one, whose failure is
        // final.
        while let Some(mut c) = take(addr, self.idle_timeout) {
            match c.exchange(req, false).await {
                Ok(resp) => return Ok((resp, c)),
                Err(Failure::NotSent(r, _)) => req = r,
                Err(Failure::Failed(e)) => return Err(SendError::Http(e)),
            }
        }
        // Boxed: the connect and handshake futures are large and rarely needed; inline they would
        // grow (and be copied with) every request's future.
        let mut c = Box::pin(self.connect(addr)).await?;
        match c.exchange(req, true).await {
            Ok(resp) => Ok((resp, c)),
            Err(Failure::NotSent(_, Some(e)) | Failure::Failed(e)) => Err(SendError::Http(e)),
            Err(Failure::NotSent(_, None)) => Err(SendError::Closed),
        }
    }
}
