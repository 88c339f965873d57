//! Backend connections of the fast path: plain sockets with a read buffer, pooled per worker
//! thread (`idle.rs`), one request at a time. The request goes out as one write; the response
//! head is parsed in place and rewritten for the client; the body is then relayed by `mod.rs`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::head::{self, Framing, MAX_RESP_HEADERS};
use crate::proxy::idle::IdlePool;
use crate::proxy::ProxyError;

/// Read buffer of a backend connection; bodies are relayed through it.
pub const BUF: usize = 16 * 1024;

/// One connection to a backend.
pub struct RawConn {
    pub addr: SocketAddr,
    pub stream: TcpStream,
    /// Bytes read and not yet relayed.
    pub buf: BytesMut,
}

thread_local! {
    static POOL: RefCell<IdlePool<RawConn>> = const { RefCell::new(IdlePool::new()) };
}

impl RawConn {
    /// Back into this thread's pool (only after a response that ended cleanly, with nothing
    /// left over).
    pub fn release(mut self, idle_timeout: Duration) {
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

fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<RawConn> {
    POOL.with(|p| p.borrow_mut().take(addr, idle_timeout, RawConn::alive))
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<RawConn, std::io::Error> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(s) => s?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(RawConn {
        addr,
        stream,
        buf: BytesMut::with_capacity(BUF),
    })
}

/// Why no response head came back.
pub struct Failed {
    /// Nothing reached the backend: another backend may be tried.
    pub connect: bool,
    pub err: ProxyError,
}

/// The response head has been handed to `on_head`; the body follows on `conn`.
pub struct Answer {
    pub conn: RawConn,
    pub status: u16,
    pub framing: Framing,
    /// The backend connection cannot be reused.
    pub backend_close: bool,
}

/// How one attempt on one connection went.
enum Attempt {
    Answer(Answer),
    /// A reused connection broke before any answer: the request may go to a fresh one.
    Stale,
    Failed(Failed),
}

/// Limits and settings of the exchange.
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_head: usize,
}

/// Sends `request` (the whole message) to `addr` and reads the response head, which `on_head`
/// turns into what the client gets (bytes for the fast path, a `Response` for hyper's).
/// A pooled connection is tried first; if it turns out to be closed before anything came back,
/// a GET/HEAD (`retry_stale`) goes again on a fresh connection.
pub async fn exchange<H>(
    addr: SocketAddr,
    request: &[u8],
    method: &Method,
    retry_stale: bool,
    s: &Settings,
    on_head: &mut H,
) -> Result<Answer, Failed>
where
    H: FnMut(&head::RespHead<'_, '_>) -> Result<(), head::BadResponse>,
{
    if let Some(conn) = take(addr, s.idle_timeout) {
        match attempt(conn, request, method, s, on_head, true).await {
            Attempt::Answer(a) => return Ok(a),
            Attempt::Failed(f) => return Err(f),
            Attempt::Stale if retry_stale => {}
            Attempt::Stale => {
                return Err(Failed {
                    connect: false,
                    err: closed(),
                })
            }
        }
    }
    // Boxed: the connect future is large and rarely needed; inline it would grow (and be
    // copied with) every request's future.
    let conn = match Box::pin(connect(addr, s.connect_timeout)).await {
        Ok(c) => c,
        Err(e) => {
            return Err(Failed {
                connect: true,
                err: if e.kind() == std::io::ErrorKind::TimedOut {
                    ProxyError::UpstreamTimeout
                } else {
                    ProxyError::Upstream("the backend refused the connection".into())
                },
            })
        }
    };
    match attempt(conn, request, method, s, on_head, false).await {
        Attempt::Answer(a) => Ok(a),
        Attempt::Failed(f) => Err(f),
        Attempt::Stale => Err(Failed {
            connect: false,
            err: closed(),
        }),
    }
}

fn closed() -> ProxyError {
    ProxyError::Upstream("the backend closed the connection or sent an invalid response".into())
}

fn failed(msg: &'static str) -> Attempt {
    Attempt::Failed(Failed {
        connect: false,
        err: ProxyError::Upstream(msg.into()),
    })
}

async fn attempt<H>(
    mut conn: RawConn,
    request: &[u8],
    method: &Method,
    s: &Settings,
    on_head: &mut H,
    reused: bool,
) -> Attempt
where
    H: FnMut(&head::RespHead<'_, '_>) -> Result<(), head::BadResponse>,
{
    if conn.stream.write_all(request).await.is_err() {
        return if reused {
            Attempt::Stale
        } else {
            Attempt::Failed(Failed {
                connect: false,
                err: closed(),
            })
        };
    }
    let mut got_any = false;
    loop {
        if !conn.buf.is_empty() {
            let parsed = {
                let mut headers = [httparse::EMPTY_HEADER; MAX_RESP_HEADERS];
                match head::parse_response(&conn.buf, &mut headers, method) {
                    Ok(head::Response::Partial) => None,
                    Ok(head::Response::Interim(n)) => Some(Err(n)),
                    Ok(head::Response::Head(h)) => {
                        if let Err(e) = on_head(&h) {
                            return failed(e.0);
                        }
                        Some(Ok((h.len, h.status, h.framing, h.close)))
                    }
                    Err(e) => return failed(e.0),
                }
            };
            match parsed {
                Some(Ok((len, status, framing, backend_close))) => {
                    conn.buf.advance(len);
                    return Attempt::Answer(Answer {
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
                None if conn.buf.len() > s.max_head => {
                    return failed("the backend's response head is too large")
                }
                None => {}
            }
        }
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(BUF);
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) | Err(_) if reused && !got_any => return Attempt::Stale,
            Ok(0) | Err(_) => {
                return Attempt::Failed(Failed {
                    connect: false,
                    err: closed(),
                })
            }
            Ok(_) => got_any = true,
        }
    }
}
