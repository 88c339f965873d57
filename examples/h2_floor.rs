//! h2_floor — the least an HTTP/2 reverse proxy built on switchyard's crates does per request:
//! the floor under switchyard's HTTP/2 numbers, as `benches/relay.c` is under its HTTP/1.1 ones.
//!
//! Usage: `h2_floor LISTEN UPSTREAM CERTS_DIR` (e.g. `127.0.0.1:8443 127.0.0.1:8080 certs/`);
//! built by `cargo build --profile dist --example h2_floor`, run by `benches/compare.py --floor`
//! and `PROXY=floor benches/callgrind.sh`.
//!
//! The same parts as the binary's HTTP/2 path, and nothing else: rustls with switchyard's own
//! server configuration and certificates, the `h2` crate's server with the same settings, the
//! streams served inside the connection's task, writes gathered per pass (`gather.rs`), one
//! worker thread per core on a current-thread runtime, mimalloc; HTTP/1.1 to the backend on
//! pooled connections, one write per request, the response head parsed by httparse. Left out:
//! everything a proxy is for beyond moving the bytes: routing, the Host checks, forwarding
//! headers, limits and timeouts, retries, the read-only gate, metrics, the access log, chunked
//! bodies (a backend answer must carry a Content-Length), request bodies (dropped), keep-alive
//! PINGs, graceful shutdown. Bad input ends the stream or the connection, nothing more: this is
//! a measuring instrument, not a server.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use switchyard::proxy::gather::{next_pass, Gather, Passes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

#[global_allocator]
static ALLOC: switchyard::alloc::MiMalloc = switchyard::alloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, certs] = &args[..] else {
        return Err("usage: h2_floor LISTEN UPSTREAM CERTS_DIR".into());
    };
    let upstream: SocketAddr = upstream.parse()?;
    let store = switchyard::proxy::tls::load_dir(std::path::Path::new(certs))?;
    let tls = TlsAcceptor::from(switchyard::proxy::tls::server_config(Arc::new(
        arc_swap::ArcSwap::from_pointee(store),
    )));
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (l, tls) = (listener.try_clone(), tls.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(accept(l?, tls, upstream))
            })
        })
        .collect();
    println!("h2_floor ready on {listen}");
    for t in threads {
        t.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

async fn accept(
    l: std::net::TcpListener,
    tls: TlsAcceptor,
    upstream: SocketAddr,
) -> std::io::Result<()> {
    let l = TcpListener::from_std(l)?;
    loop {
        let (tcp, _) = l.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(connection(tcp, tls.clone(), upstream));
    }
}

/// One client connection: TLS, then HTTP/2 with the binary's settings, its streams run in each
/// pass of the connection.
async fn connection(tcp: TcpStream, tls: TlsAcceptor, upstream: SocketAddr) {
    let Ok(tls) = tls.accept(tcp).await else {
        return;
    };
    let passes = Passes::default();
    let io = Gather::new(tls, Some(passes.clone()));
    let mut b = h2::server::Builder::new();
    b.initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_send_buffer_size(400 << 10)
        .max_concurrent_streams(250);
    let mut hs = b.handshake::<_, Bytes>(io);
    let Ok(mut h2) = poll_fn(|cx| {
        next_pass(&passes);
        Pin::new(&mut hs).poll(cx)
    })
    .await
    else {
        return;
    };
    let mut streams = FuturesUnordered::new();
    let _ = poll_fn(|cx| {
        next_pass(&passes);
        let mut first = true;
        loop {
            let mut accepted = 0;
            loop {
                match h2.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, tx)))) => {
                        accepted += 1;
                        streams.push(stream(req, tx, upstream));
                    }
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
            if accepted == 0 && !first {
                return Poll::Pending;
            }
            first = false;
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        }
    })
    .await;
}

/// An idle backend connection and what was read on it.
struct Backend {
    tcp: TcpStream,
    buf: BytesMut,
}

thread_local! {
    static POOL: RefCell<Vec<Backend>> = const { RefCell::new(Vec::new()) };
}

/// One stream: its head as HTTP/1.1 to the backend, the answer back.
async fn stream(req: Request<RecvStream>, mut tx: SendResponse<Bytes>, upstream: SocketAddr) {
    let mut head = Vec::with_capacity(512);
    let authority = req.uri().authority().map_or("", |a| a.as_str());
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    for part in [
        req.method().as_str(),
        " ",
        target,
        " HTTP/1.1\r\nhost: ",
        authority,
    ] {
        head.extend_from_slice(part.as_bytes());
    }
    for (name, value) in req.headers() {
        for part in [b"\r\n", name.as_str().as_bytes(), b": ", value.as_bytes()] {
            head.extend_from_slice(part);
        }
    }
    head.extend_from_slice(b"\r\n\r\n");
    match exchange(&head, upstream).await {
        Some((resp, body)) => {
            if let Ok(mut send) = tx.send_response(resp, body.is_empty()) {
                if !body.is_empty() {
                    let _ = send.send_data(body, true);
                }
            }
        }
        None => tx.send_reset(h2::Reason::INTERNAL_ERROR),
    }
}

/// Sends a request head on a pooled (or new) backend connection and reads the answer whole.
async fn exchange(head: &[u8], upstream: SocketAddr) -> Option<(Response<()>, Bytes)> {
    let mut b = match POOL.with(|p| p.borrow_mut().pop()) {
        Some(b) => b,
        None => Backend {
            tcp: TcpStream::connect(upstream).await.ok()?,
            buf: BytesMut::with_capacity(16 << 10),
        },
    };
    b.tcp.write_all(head).await.ok()?;
    let (resp, len, body_len) = loop {
        if b.tcp.read_buf(&mut b.buf).await.ok()? == 0 {
            return None;
        }
        if let Some(parsed) = parse_head(&b.buf) {
            break parsed?;
        }
    };
    b.buf.advance(len);
    while b.buf.len() < body_len {
        b.buf.reserve(body_len - b.buf.len());
        if b.tcp.read_buf(&mut b.buf).await.ok()? == 0 {
            return None;
        }
    }
    let body = b.buf.split_to(body_len).freeze();
    if b.buf.capacity() < 1024 {
        b.buf = BytesMut::with_capacity(16 << 10);
    }
    POOL.with(|p| p.borrow_mut().push(b));
    Some((resp, body))
}

/// The response head: None while incomplete; Some(None) when it is bad or has no length.
/// Hop-by-hop headers are left out, as any proxy does.
#[allow(clippy::type_complexity)]
fn parse_head(buf: &[u8]) -> Option<Option<(Response<()>, usize, usize)>> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut slots);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(None),
    };
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut body_len = None;
    for h in r.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.parse().ok());
        }
        if [&b"connection"[..], b"keep-alive", b"transfer-encoding"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Some(None);
        };
        headers.append(n, v);
    }
    let (Some(status), Some(body_len)) =
        (r.code.and_then(|c| StatusCode::from_u16(c).ok()), body_len)
    else {
        return Some(None);
    };
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Some(Some((resp, len, body_len)))
}
