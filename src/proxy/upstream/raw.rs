//! Raw backend connections: plain sockets with a read buffer, one request at a time, pooled per
//! worker thread. The request goes out as one write; the response head is parsed in place and
//! handed to the caller's `on_head` (bytes for the fast path, a `Response` for hyper's side); the
//! body follows on the connection: relayed as bytes by the fast path, or read as frames by
//! [`RawBody`] for hyper's side.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pool::IdlePool;
use super::{connect, BodyError, Failed, Settings};
use crate::proxy::h1::{self, Chunked, Decoded, Framing, RespHead, RespParsed, MAX_RESP_HEADERS};

/// Read buffer of a backend connection; bodies are relayed through it.
pub const BUF: usize = 16 * 1024;

/// One connection to a backend. Handed around boxed, allocated once when it is opened: a
/// request's state then carries a pointer to it, not its hundred bytes, through every move.
pub struct RawConn {
    pub addr: SocketAddr,
    pub stream: TcpStream,
    /// Bytes read and not yet relayed.
    pub buf: BytesMut,
}

thread_local! {
    static POOL: RefCell<IdlePool<Box<RawConn>>> = const { RefCell::new(IdlePool::new()) };
}

impl RawConn {
    /// Back into this thread's pool (only after a response that ended cleanly, with nothing
    /// left over).
    pub fn release(mut self: Box<Self>, idle_timeout: Duration) {
        if self.buf.capacity() > 4 * BUF {
            self.buf = BytesMut::new();
        }
        POOL.with(|p| p.borrow_mut().put(self.addr, self, idle_timeout));
    }

    /// Whether a pooled connection can take a request: the backend has not closed it or sent
    /// anything since (one non-blocking read, usually answered "would block").
    fn alive(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<Box<RawConn>> {
    POOL.with(|p| p.borrow_mut().take(addr, idle_timeout, |c| c.alive()))
}

/// The response head has been handed to `on_head`; the body follows on `conn`.
pub struct Answer {
    pub conn: Box<RawConn>,
    pub status: u16,
    pub framing: Framing,
    /// The backend connection cannot be reused.
    pub backend_close: bool,
}

/// How one try on one connection went.
enum Try {
    Answer(Answer),
    /// The connection broke before any byte of an answer: a reused one was stale (the request
    /// may go to a fresh one), a fresh one means a broken backend (or a port forwarder that
    /// accepts for a container that is gone: the request may go to another backend).
    Unanswered,
    Failed(Failed),
}

/// Sends `request` (the whole message) to `addr` and reads the response head, which `on_head`
/// turns into what the client gets. A pooled connection is tried first; if it turns out to be
/// closed before anything came back, a request that may be repeated (`retry_stale`) goes again
/// on a fresh connection.
pub async fn exchange<H>(
    addr: SocketAddr,
    request: &[u8],
    method: &Method,
    retry_stale: bool,
    settings: &Settings,
    on_head: &mut H,
) -> Result<Answer, Failed>
where
    H: FnMut(&RespHead<'_, '_>) -> Result<(), h1::BadResponse>,
{
    if let Some(conn) = take(addr, settings.idle_timeout) {
        match send_on(conn, request, method, settings, on_head).await {
            Try::Answer(a) => return Ok(a),
            Try::Failed(f) => return Err(f),
            Try::Unanswered if retry_stale => {}
            Try::Unanswered => return Err(Failed::closed()),
        }
    }
    // Boxed: the connect future is large and rarely needed; inline it would grow (and be
    // copied with) every request's future.
    let stream = Box::pin(connect(addr, settings.connect_timeout)).await?;
    let conn = Box::new(RawConn {
        addr,
        stream,
        buf: BytesMut::with_capacity(BUF),
    });
    match send_on(conn, request, method, settings, on_head).await {
        Try::Answer(a) => Ok(a),
        Try::Failed(f) => Err(f),
        Try::Unanswered => Err(Failed::unanswered()),
    }
}

async fn send_on<H>(
    mut conn: Box<RawConn>,
    request: &[u8],
    method: &Method,
    settings: &Settings,
    on_head: &mut H,
) -> Try
where
    H: FnMut(&RespHead<'_, '_>) -> Result<(), h1::BadResponse>,
{
    if conn.stream.write_all(request).await.is_err() {
        return Try::Unanswered;
    }
    let mut got_any = false;
    loop {
        if !conn.buf.is_empty() {
            // In a block: the header slots must not live across the read below.
            let parsed = {
                let mut headers = h1::slots::<MAX_RESP_HEADERS>();
                match h1::parse_response(&conn.buf, &mut headers, method) {
                    Ok(RespParsed::Partial) => None,
                    Ok(RespParsed::Interim(n)) => Some(Err(n)),
                    Ok(RespParsed::Head(head)) if head.len > settings.max_head => {
                        return Try::Failed(Failed::broken(
                            "the backend's response head is too large",
                        ))
                    }
                    Ok(RespParsed::Head(head)) => {
                        if let Err(e) = on_head(&head) {
                            return Try::Failed(Failed::broken(e.0));
                        }
                        Some(Ok((head.len, head.status, head.framing, head.close)))
                    }
                    Err(e) => return Try::Failed(Failed::broken(e.0)),
                }
            };
            match parsed {
                Some(Ok((len, status, framing, backend_close))) => {
                    conn.buf.advance(len);
                    return Try::Answer(Answer {
                        conn,
                        status,
                        framing,
                        backend_close,
                    });
                }
                Some(Err(interim)) => {
                    conn.buf.advance(interim);
                    continue;
                }
                None if conn.buf.len() > settings.max_head => {
                    return Try::Failed(Failed::broken("the backend's response head is too large"))
                }
                None => {}
            }
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(BUF);
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) | Err(_) if !got_any => return Try::Unanswered,
            Ok(0) | Err(_) => return Try::Failed(Failed::closed()),
            Ok(_) => got_any = true,
        }
    }
}

/// A backend's body on a raw connection, decoded into frames for hyper's side (chunked framing
/// removed, trailers as a trailers frame). The connection goes back to the pool after a clean end.
pub struct RawBody {
    /// None once the body has ended (the connection pooled or closed).
    conn: Option<Box<RawConn>>,
    framing: Framing,
    /// Bytes still to come (`Framing::Length`).
    left: u64,
    chunked: Chunked,
    trailers: Vec<u8>,
    /// The backend keeps the connection open after this response.
    reusable: bool,
    idle: Duration,
}

impl RawBody {
    pub fn new(answer: Answer, idle: Duration) -> RawBody {
        RawBody {
            left: match answer.framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            conn: Some(answer.conn),
            framing: answer.framing,
            chunked: Chunked::default(),
            trailers: Vec::new(),
            reusable: !answer.backend_close,
            idle,
        }
    }

    /// True when nothing more will come.
    pub fn ended(&self) -> bool {
        self.conn.is_none()
            || self.framing == Framing::Empty
            || (matches!(self.framing, Framing::Length(_)) && self.left == 0)
    }

    /// The exact length still to come, when the framing says it.
    pub fn exact_len(&self) -> Option<u64> {
        matches!(self.framing, Framing::Length(_) | Framing::Empty).then_some(self.left)
    }

    /// The body ended cleanly: the connection goes back to the pool if it can take more.
    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.reusable && c.buf.is_empty() && self.framing != Framing::UntilClose {
                c.release(self.idle);
            }
        }
    }

    pub fn poll_frame(
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
    s: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
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
