//! The HTTP/1.1 fast path: plain requests on HTTP/1.1 client connections (plain or TLS) are
//! proxied here on bytes, without hyper: the request head is parsed in place (httparse) and
//! rewritten straight into the backend's write buffer, the response head likewise, and the body
//! is relayed as it comes (chunked bodies pass unchanged; the framing is only followed to find
//! where they end). No `HeaderMap`, no `Request` or `Response` values, no body channel.
//!
//! It takes only what it can forward exactly as hyper's path would (see `head::parse_request`):
//! HTTP/1.1, origin form, one Host, a body of known length up to 64 KiB, no Expect, Upgrade,
//! Transfer-Encoding or TE. The first request that is anything else (or malformed: hyper answers
//! those with the right 4xx), and everything after it on that connection, goes to hyper with the
//! bytes already read. The routing, the read-only gate, the limits, the metrics and the access
//! log are the same code as hyper's path (`service::decide`).

pub mod backend;
pub mod head;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use self::backend::{Answer, Failed, RawConn, Settings};
use self::head::{Chunked, Framing, Parsed, MAX_REQ_HEADERS};
use super::body::RespBody;
use super::service::{self, Ctx, Decision, Inflight};
use super::{Conn, ProxyError};
use crate::accesslog::{Record, Text};
use crate::config::Color;
use crate::routing::SiteRoute;

/// Larger request bodies go to hyper, which streams them.
const MAX_BODY: u64 = 64 * 1024;
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

/// What the exchange needs once the head is forwarded or answered.
struct Exchange {
    start: Instant,
    record: Option<Record>,
    method: http::Method,
    close: bool,
    json: bool,
    head_only: bool,
}

/// Serves requests on an HTTP/1.1 connection until it closes or hyper must take over.
pub async fn serve<IO>(mut io: IO, conn: &Arc<Conn>) -> Outcome<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let edge = &*conn.edge;
    let settings = &edge.raw;
    let max_head = edge.limits.max_header_bytes;
    let max_body = MAX_BODY.min(edge.limits.max_body_bytes);
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut req_out: Vec<u8> = Vec::new();
    let mut resp_out: Vec<u8> = Vec::new();
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
                // The head is in and its body is arriving: progress, as on hyper's path, where
                // the request has started. Without this the watchdog would time the whole body
                // by the header timeout and cut off a slow but steady upload; with it, a stall
                // of a header timeout between reads still ends the connection.
                Ok(_) if need > 0 => {
                    conn.activity.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
            }
        }
        // In a block: the parsed head (and its 2 KiB of header slots) must not live across an
        // await, or it would sit in every connection's future.
        let (inflight, mut x, mut ctx, forward, no_body) = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_REQ_HEADERS];
            let req = match head::parse_request(&buf, &mut headers) {
                Parsed::Head(r) => r,
                Parsed::Partial | Parsed::Handoff => return Outcome::Handoff(io, buf),
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

            let inflight = Inflight::enter(conn.clone());
            let start = Instant::now();
            let record = edge.log.enabled().then(|| Record {
                start,
                client: conn.peer,
                host: Text::new(req.host.as_bytes()),
                method: req.method.clone(),
                path: Text::new(req.target.as_bytes()),
                status: 0,
                color: None,
                backend: None,
            });
            let mut ctx = Ctx {
                site: None,
                color: None,
                backend: None,
                write: None,
            };
            let x = Exchange {
                start,
                record,
                method: req.method.clone(),
                close: req.close,
                json: req.json,
                head_only: req.method == http::Method::HEAD,
            };
            let decided = service::decide(
                edge,
                conn,
                req.host,
                &req.method,
                req.path(),
                None,
                &mut ctx,
            );
            let forward = match decided {
                Ok(Decision::Forward {
                    site,
                    color,
                    mark_read_only,
                }) => {
                    req_out.clear();
                    head::write_upstream_head(
                        &mut req_out,
                        &req,
                        conn.ip_value().as_bytes(),
                        conn.https,
                        mark_read_only,
                    );
                    req_out.extend_from_slice(&buf[req.len..total]);
                    Ok((site, color))
                }
                Ok(Decision::Redirect(port)) => Err(Made::Page(Box::new(service::redirect(
                    req.host, port, req.target,
                )))),
                Err(e) => Err(Made::Error(e, req.json)),
            };
            let no_body = req.content_length == 0;
            buf.advance(total);
            (inflight, x, ctx, forward, no_body)
        };

        let keep = match forward {
            Ok((site, color)) => {
                proxy(
                    &mut io,
                    conn,
                    &mut x,
                    &mut ctx,
                    &site,
                    color,
                    &req_out,
                    no_body,
                    &mut resp_out,
                    settings,
                )
                .await
            }
            Err(page) => answer(&mut io, page, &mut x, &mut ctx, &mut resp_out, conn).await,
        };
        drop(ctx.write.take());
        drop(inflight);
        if !keep || x.close || conn.draining.load(Ordering::Relaxed) {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
    }
}

/// A response we make ourselves.
enum Made {
    /// An error page; JSON when the client prefers it.
    Error(ProxyError, bool),
    Page(Box<Response<RespBody>>),
}

/// Forwards one request (`request`: head and body) to a backend of `site`'s `color` and relays
/// the answer. Returns whether the client connection can take another request.
#[allow(clippy::too_many_arguments)]
async fn proxy<IO>(
    io: &mut IO,
    conn: &Conn,
    x: &mut Exchange,
    ctx: &mut Ctx,
    site: &SiteRoute,
    color: Color,
    request: &[u8],
    no_body: bool,
    out: &mut Vec<u8>,
    settings: &Settings,
) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let edge = &*conn.edge;
    let pool = site.pool(color);
    let safe = super::gate::is_safe(&x.method);
    let Some(mut backend) = pool.pick(None) else {
        return answer(
            io,
            Made::Error(ProxyError::NoBackend, x.json),
            x,
            ctx,
            out,
            conn,
        )
        .await;
    };
    // A GET/HEAD without a body is tried once more on another backend if the first refuses the
    // connection (nothing reached it), as on hyper's path.
    let mut tried_another = false;
    let close = x.close;
    let a = loop {
        ctx.backend = Some(backend.addr);
        let sent = super::deadline::timeout(
            edge.limits.upstream_timeout,
            backend::exchange(
                backend.addr,
                request,
                &x.method,
                safe && no_body,
                settings,
                &mut |h: &head::RespHead<'_, '_>| {
                    out.clear();
                    head::write_client_head(out, h, close || h.close);
                    Ok(())
                },
            ),
        )
        .await;
        let err = match sent {
            Ok(Ok(a)) => {
                backend.clear_ejection();
                break a;
            }
            Ok(Err(Failed { connect, err })) => {
                if connect {
                    backend.eject(edge.eject_backoff);
                    edge.metrics.backend_failure();
                    if !tried_another && safe && no_body && pool.backends.len() > 1 {
                        if let Some(next) = pool.pick(Some(backend)) {
                            tried_another = true;
                            backend = next;
                            continue;
                        }
                    }
                }
                err
            }
            Err(_) => ProxyError::UpstreamTimeout,
        };
        return answer(io, Made::Error(err, x.json), x, ctx, out, conn).await;
    };
    if !safe {
        service::count_write(site, color);
    }
    edge.metrics
        .response(Some(&site.name), Some(color), a.status, x.start.elapsed());
    let status = a.status;
    let r = relay(io, a, out, settings.idle_timeout).await;
    log(conn, x, ctx, status, r.bytes, r.complete);
    r.keep
}

/// How a relayed body went.
struct Relayed {
    bytes: u64,
    /// The whole body reached the client.
    complete: bool,
    /// The client connection can take another request.
    keep: bool,
}

/// Sends the response head (in `out`) and the body to the client, reading the body from the
/// backend as it comes; pools the backend connection after a clean end.
async fn relay<IO>(io: &mut IO, a: Answer, out: &mut Vec<u8>, idle: std::time::Duration) -> Relayed
where
    IO: AsyncWrite + Unpin,
{
    let Answer {
        mut conn,
        framing,
        backend_close,
        ..
    } = a;
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    // Body bytes as relayed; a chunked body's are counted without the framing (`body_bytes`).
    let mut bytes = 0u64;
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
                Err(_) => return broken(body_bytes(&chunked, bytes)),
            },
            Framing::UntilClose => (conn.buf.len(), false),
        };
        let written = if head_sent {
            io.write_all(&conn.buf[..take]).await
        } else {
            head_sent = true;
            if out.len() + take <= GATHER {
                out.extend_from_slice(&conn.buf[..take]);
                io.write_all(out).await
            } else {
                match io.write_all(out).await {
                    Ok(()) => io.write_all(&conn.buf[..take]).await,
                    Err(e) => Err(e),
                }
            }
        };
        if written.is_err() {
            return broken(body_bytes(&chunked, bytes));
        }
        conn.buf.advance(take);
        bytes += take as u64;
        if ended {
            break;
        }
        if conn.buf.capacity() - conn.buf.len() < 4096 {
            conn.buf.reserve(4 * backend::BUF);
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if framing == Framing::UntilClose => {
                let _ = io.flush().await;
                return Relayed {
                    bytes: body_bytes(&chunked, bytes),
                    complete: true,
                    keep: false,
                };
            }
            Ok(0) | Err(_) => return broken(body_bytes(&chunked, bytes)),
            Ok(_) => {}
        }
    }
    if io.flush().await.is_err() {
        return broken(body_bytes(&chunked, bytes));
    }
    if !backend_close && conn.buf.is_empty() {
        RawConn::release(conn, idle);
    }
    Relayed {
        bytes: body_bytes(&chunked, bytes),
        complete: true,
        keep: true,
    }
}

/// Sends a response we made. Returns whether the client connection can take another request.
async fn answer<IO>(
    io: &mut IO,
    made: Made,
    x: &mut Exchange,
    ctx: &mut Ctx,
    out: &mut Vec<u8>,
    conn: &Conn,
) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let edge = &*conn.edge;
    let mut resp = match made {
        Made::Error(e, json) => {
            edge.metrics.proxy_error(&e);
            if e.source() != super::error_page::Source::Client {
                tracing::debug!(error = %e, "request failed");
            }
            e.response(json)
        }
        Made::Page(r) => *r,
    };
    let status = resp.status();
    edge.metrics.response(
        ctx.site.as_deref(),
        ctx.color,
        status.as_u16(),
        x.start.elapsed(),
    );
    let body = resp.body_mut().take_full();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in resp.headers() {
        head::line(out, n.as_str().as_bytes(), v.as_bytes());
    }
    head::line(out, b"content-length", body.len().to_string().as_bytes());
    if x.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !x.head_only {
        out.extend_from_slice(&body);
    }
    let ok = io.write_all(out).await.is_ok() && io.flush().await.is_ok();
    log(conn, x, ctx, status.as_u16(), body.len() as u64, ok);
    ok
}

fn log(conn: &Conn, x: &mut Exchange, ctx: &Ctx, status: u16, bytes: u64, complete: bool) {
    conn.edge.metrics.response_bytes(ctx.site.as_deref(), bytes);
    if let Some(mut r) = x.record.take() {
        r.status = status;
        r.color = ctx.color.map(Color::as_str);
        r.backend = ctx.backend;
        conn.edge.log.send(r.finish(bytes, complete));
    }
}
