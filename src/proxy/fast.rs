//! The HTTP/1.1 fast path, the front end of plain requests on HTTP/1.1 connections (plain or
//! TLS): proxied on bytes, without hyper. The request head is parsed in place (`h1/request.rs`)
//! and rewritten straight into the backend's write buffer, the response head likewise
//! (`h1/response.rs`), and the body is relayed as it comes (a chunked body passes unchanged; its
//! framing is only followed to find where it ends). No `HeaderMap`, no `Request` or `Response`
//! values, no body channel.
//!
//! It takes only what it can forward exactly as hyper's side would (see `h1::parse_request`):
//! HTTP/1.1, origin form, one Host, a body of known length up to 64 KiB, no Expect, Upgrade,
//! Transfer-Encoding or TE. The first request that is anything else (or malformed: hyper answers
//! those with the right 4xx), and everything after it on that connection, goes to hyper with the
//! bytes already read. Routing, the read-only gate, limits, metrics and the access log are
//! `request.rs`, as for hyper's side; the send and its retry are `upstream::send`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error_page::{wants_json, ProxyError};
use super::h1::{self, Chunked, Framing, ReqParsed, MAX_REQ_HEADERS};
use super::request::{self, Decision, Exchange};
use super::upstream::raw::{self, Answer, RawConn};
use super::upstream::{self, Attempt, Failed, Settings};
use super::Conn;
use crate::config::Color;
use crate::routing::SiteRoute;

/// The client connection's read buffer.
const READ_BUF: usize = 8 * 1024;
/// Response bytes gathered into one write with the head.
const GATHER: usize = 16 * 1024;

/// How the fast path left the connection.
pub enum Outcome<IO> {
    Closed,
    /// hyper takes the connection, with the bytes read so far.
    Handoff(IO, BytesMut),
}

/// True once the buffer holds a blank line (the end of a head; httparse also accepts bare LF).
fn has_head_end(b: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = b[i..].iter().position(|&c| c == b'\n') {
        let at = i + p + 1;
        match b.get(at) {
            Some(b'\n') => return true,
            Some(b'\r') if b.get(at + 1) == Some(&b'\n') => return true,
            None => return false,
            _ => i = at,
        }
    }
    false
}

/// What the client asked, as the answer needs it once the head is gone from the buffer.
struct Asked {
    method: Method,
    /// The client closes after this exchange.
    close: bool,
    /// Error pages in JSON.
    json: bool,
}

/// A response the edge makes itself.
enum Made {
    Error(ProxyError),
    Page(Box<Response<Bytes>>),
}

/// Serves requests on an HTTP/1.1 connection until it closes or hyper must take over.
pub async fn serve<IO>(mut io: IO, conn: &Arc<Conn>) -> Outcome<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let edge = &*conn.edge;
    let max_head = edge.limits.max_header_bytes;
    let max_body = request::INLINE_BODY.min(edge.limits.max_body_bytes);
    let mut buf = BytesMut::with_capacity(READ_BUF);
    // The request as the backend gets it, and the response head as the client gets it.
    let mut upstream_msg: Vec<u8> = Vec::new();
    let mut client_head: Vec<u8> = Vec::new();
    // Bytes the current request needs in `buf` (head and body) before it is looked at again.
    let mut need = 0usize;
    loop {
        while buf.len() < need || !has_head_end(&buf) {
            if need == 0 && buf.len() >= max_head {
                return Outcome::Handoff(io, buf);
            }
            if buf.is_empty() && conn.draining.load(Ordering::Relaxed) {
                return Outcome::Closed;
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_BUF);
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Outcome::Closed,
                // The head is in and its body is arriving: progress, as on hyper's side, where
                // the request has started (see `watchdog.rs`).
                Ok(_) if need > 0 => conn.activity.progress(),
                Ok(_) => {}
            }
        }
        // In a block: the parsed head (and its 2 KiB of header slots) must not live across an
        // await, or it would sit in every connection's future.
        let (x, asked, forward, no_body) = {
            let mut headers = h1::slots::<MAX_REQ_HEADERS>();
            let req = match h1::parse_request(&buf, &mut headers) {
                ReqParsed::Head(r) => r,
                ReqParsed::Partial | ReqParsed::Handoff => return Outcome::Handoff(io, buf),
            };
            // Over the header limit, or a body hyper should stream: hyper answers or takes it.
            if req.len > max_head || req.content_length > max_body {
                return Outcome::Handoff(io, buf);
            }
            let total = req.len + req.content_length as usize;
            if buf.len() < total {
                need = total;
                continue;
            }
            need = 0;

            let mut x = Exchange::begin(
                conn,
                &req.method,
                req.host.as_bytes(),
                req.target.as_bytes(),
            );
            let asked = Asked {
                method: req.method.clone(),
                close: req.close,
                json: wants_json(req.accept),
            };
            let decided = request::decide(conn, req.host, &req.method, req.path(), None, &mut x);
            let forward = match decided {
                Ok(Decision::Forward {
                    site,
                    color,
                    mark_read_only,
                    trusted,
                }) => {
                    upstream_msg.clear();
                    let add = h1::Added {
                        ip: conn.ip_value().as_bytes(),
                        https: conn.https,
                        trusted,
                        read_only: mark_read_only,
                    };
                    h1::write_upstream_head(&mut upstream_msg, &req, &add);
                    upstream_msg.extend_from_slice(&buf[req.len..total]);
                    Ok((site, color))
                }
                Ok(Decision::Redirect(port)) => Err(Made::Page(Box::new(request::redirect(
                    req.host, port, req.target,
                )))),
                Ok(Decision::Challenge(ka)) => Err(Made::Page(Box::new(request::challenge(&ka)))),
                Err(e) => Err(Made::Error(e)),
            };
            let no_body = req.content_length == 0;
            buf.advance(total);
            (x, asked, forward, no_body)
        };

        let keep = match forward {
            Ok((site, color)) => {
                let to = Upstream {
                    site: &site,
                    color,
                    request: &upstream_msg,
                    no_body,
                    hsts: site.hsts.as_ref().filter(|_| conn.https),
                };
                proxy(&mut io, conn, &asked, x, to, &mut client_head).await
            }
            Err(made) => answer(&mut io, made, &asked, x, &mut client_head).await,
        };
        if !keep || asked.close || conn.draining.load(Ordering::Relaxed) {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
    }
}

/// Where a request goes, and the bytes it goes as.
struct Upstream<'a> {
    site: &'a SiteRoute,
    color: Color,
    /// Head and body, as the backend gets them.
    request: &'a [u8],
    no_body: bool,
    /// The site's `Strict-Transport-Security`, on HTTPS.
    hsts: Option<&'a http::HeaderValue>,
}

/// One try on a raw backend connection; the response head is written into `client_head`.
struct RawTry<'a> {
    request: &'a [u8],
    method: &'a Method,
    /// A pooled connection that turns out closed may be replaced by a fresh one.
    retry_stale: bool,
    close: bool,
    hsts: Option<&'a [u8]>,
    settings: &'a Settings,
    client_head: &'a mut Vec<u8>,
    answer: Option<Answer>,
}

impl Attempt for RawTry<'_> {
    async fn send(&mut self, addr: std::net::SocketAddr, _again: bool) -> Result<(), Failed> {
        let (client_head, close, hsts) = (&mut *self.client_head, self.close, self.hsts);
        let answer = raw::exchange(
            addr,
            self.request,
            self.method,
            self.retry_stale,
            self.settings,
            &mut |head: &h1::RespHead<'_, '_>| {
                client_head.clear();
                h1::write_client_head(client_head, head, close || head.close, hsts);
                Ok(())
            },
        )
        .await?;
        self.answer = Some(answer);
        Ok(())
    }
}

/// Forwards one request to a backend of its site's color and relays the answer. Returns whether
/// the client connection can take another request.
async fn proxy<IO>(
    io: &mut IO,
    conn: &Conn,
    asked: &Asked,
    mut x: Exchange,
    to: Upstream<'_>,
    client_head: &mut Vec<u8>,
) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let edge = &*conn.edge;
    let retryable = request::retryable(&asked.method, !to.no_body);
    let mut attempt = RawTry {
        request: to.request,
        method: &asked.method,
        retry_stale: retryable,
        close: asked.close,
        hsts: to.hsts.map(http::HeaderValue::as_bytes),
        settings: &edge.upstream,
        client_head: &mut *client_head,
        answer: None,
    };
    let sent = upstream::send(
        &edge.upstream,
        &edge.metrics,
        to.site.pool(to.color),
        retryable,
        &mut x.backend,
        &mut attempt,
    )
    .await;
    let answer = match (sent, attempt.answer) {
        (Ok(()), Some(a)) => a,
        (Err(e), _) => return self::answer(io, Made::Error(e), asked, x, client_head).await,
        (Ok(()), None) => {
            let e = ProxyError::Upstream("the backend exchange ended without an answer".into());
            return self::answer(io, Made::Error(e), asked, x, client_head).await;
        }
    };
    if !super::gate::is_safe(&asked.method) {
        request::count_write(to.site, to.color);
    }
    x.responded(answer.status);
    let relayed = relay(io, answer, client_head, edge.upstream.idle_timeout).await;
    x.end(relayed.bytes, relayed.complete);
    relayed.keep
}

/// How a relayed body went.
struct Relayed {
    bytes: u64,
    /// The whole body reached the client.
    complete: bool,
    /// The client connection can take another request.
    keep: bool,
}

/// Sends the response head (in `head`) and the body to the client, reading the body from the
/// backend as it comes; pools the backend connection after a clean end.
async fn relay<IO>(io: &mut IO, answer: Answer, head: &mut Vec<u8>, idle: Duration) -> Relayed
where
    IO: AsyncWrite + Unpin,
{
    let Answer {
        mut conn,
        framing,
        backend_close,
        ..
    } = answer;
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    // Body bytes as relayed; a chunked body's are counted without the framing (`body_bytes`).
    let mut wire = 0u64;
    let mut head_sent = false;
    let body_bytes = |chunked: &Chunked, wire: u64| match framing {
        Framing::Chunked => chunked.data,
        _ => wire,
    };
    let broken = |bytes| Relayed {
        bytes,
        complete: false,
        keep: false,
    };
    loop {
        // The part of what was read that belongs to the body, and whether the body ends there.
        let (take, ended) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = left.min(conn.buf.len() as u64);
                left -= n;
                (n as usize, left == 0)
            }
            Framing::Chunked => match chunked.feed(&conn.buf) {
                Ok(r) => r,
                Err(_) => return broken(body_bytes(&chunked, wire)),
            },
            Framing::UntilClose => (conn.buf.len(), false),
        };
        let written = if head_sent {
            io.write_all(&conn.buf[..take]).await
        } else {
            head_sent = true;
            if head.len() + take <= GATHER {
                head.extend_from_slice(&conn.buf[..take]);
                io.write_all(head).await
            } else {
                match io.write_all(head).await {
                    Ok(()) => io.write_all(&conn.buf[..take]).await,
                    Err(e) => Err(e),
                }
            }
        };
        if written.is_err() {
            return broken(body_bytes(&chunked, wire));
        }
        conn.buf.advance(take);
        wire += take as u64;
        if ended {
            break;
        }
        if conn.buf.capacity() - conn.buf.len() < 4096 {
            conn.buf.reserve(4 * raw::BUF);
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if framing == Framing::UntilClose => {
                let _ = io.flush().await;
                return Relayed {
                    bytes: body_bytes(&chunked, wire),
                    complete: true,
                    keep: false,
                };
            }
            Ok(0) | Err(_) => return broken(body_bytes(&chunked, wire)),
            Ok(_) => {}
        }
    }
    if io.flush().await.is_err() {
        return broken(body_bytes(&chunked, wire));
    }
    if !backend_close && conn.buf.is_empty() {
        RawConn::release(conn, idle);
    }
    Relayed {
        bytes: body_bytes(&chunked, wire),
        complete: true,
        keep: true,
    }
}

/// Sends a response the edge made. Returns whether the client connection can take another
/// request.
async fn answer<IO>(
    io: &mut IO,
    made: Made,
    asked: &Asked,
    mut x: Exchange,
    out: &mut Vec<u8>,
) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let resp = match made {
        Made::Error(e) => {
            x.error(&e);
            e.response(asked.json || x.json_errors)
        }
        Made::Page(r) => *r,
    };
    let (parts, body) = resp.into_parts();
    x.responded(parts.status.as_u16());
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        h1::line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    h1::line(out, b"content-length", body.len().to_string().as_bytes());
    if asked.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if asked.method != Method::HEAD {
        out.extend_from_slice(&body);
    }
    let ok = io.write_all(out).await.is_ok() && io.flush().await.is_ok();
    x.end(body.len() as u64, ok);
    ok
}
