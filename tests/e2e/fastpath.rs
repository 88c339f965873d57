//! The HTTP/1.1 fast path (src/proxy/fast): pipelining, the hand-over to hyper in the middle of a
//! connection, every response framing a backend can use (length, chunked with trailers, until
//! close, interim 1xx, HEAD), hop-by-hop headers, pooled backend connections that went stale,
//! error pages on a kept-alive connection, and the same over TLS. The backend here is a raw
//! socket server written in the test, so each framing is exactly what goes over the wire.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::edge::{get, raw, tls_connect, Raw, BOTH};
use crate::support::*;

/// A backend that answers from a fixed script by path, on raw sockets. Counts connections.
struct RawBackend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

fn scripted(method: &str, path: &str) -> (Vec<u8>, bool) {
    let head = method == "HEAD";
    let (r, close): (&str, bool) = match path {
        "/chunked" => (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
            false,
        ),
        "/until-close" => ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close", true),
        "/interim" => (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/one-shot" => ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", true),
        "/hop" => (
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/len" if head => ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
        "/len" => ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfive!", false),
        "/garbage" => ("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true),
        _ => ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
    };
    (r.as_bytes().to_vec(), close)
}

impl RawBackend {
    async fn start() -> RawBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                c2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let mut first = head.split_whitespace();
                        let (m, p) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                        let (resp, close) = scripted(m, p);
                        if s.write_all(&resp).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend { addr, conns }
    }
}

/// A chunked body with trailers, three times on one connection.
async fn chunked_thrice<S: AsyncRead + AsyncWrite + Unpin>(r: &mut Raw<S>) {
    for _ in 0..3 {
        r.send(&get("fast.test", "/chunked")).await;
        let c = r.response().await;
        assert_eq!(c.status(), 200);
        assert_eq!(c.body, b"hello world");
        assert!(
            c.trailers.contains("x-sum: 11"),
            "trailers: {:?}",
            c.trailers
        );
    }
}

/// A Content-Length body, served by the fast path: it relays header names in the backend's case
/// (hyper's path writes them in lower case), and adds the Date the backend left out.
async fn length_on_the_fast_path<S: AsyncRead + AsyncWrite + Unpin>(r: &mut Raw<S>) {
    r.send(&get("fast.test", "/len")).await;
    let len = r.response().await;
    assert_eq!(len.body, b"five!");
    assert!(
        len.head.contains("\r\nContent-Length: 5\r\n"),
        "served by hyper: {}",
        len.head
    );
    let date = len
        .header("date")
        .expect("a Date is added when the backend sent none");
    assert!(date.ends_with(" GMT"), "{date}");
}

/// A body delimited by the backend closing: relayed, then the client connection closes.
async fn until_close<S: AsyncRead + AsyncWrite + Unpin>(r: &mut Raw<S>) {
    r.send(&get("fast.test", "/until-close")).await;
    let head = r.read_head().await;
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(r.closed_within(Duration::from_secs(5)).await);
    assert_eq!(r.buf_text(), "until-close");
}

fn proxy_for(addr: SocketAddr) -> Proxy {
    Proxy::start("", &site("fast", &["fast.test"], &[addr], &[], ""))
}

#[tokio::test]
async fn pipelined_requests_then_a_handover_to_hyper_on_one_connection() {
    let b = Backend::start("fast-blue").await;
    let p = proxy_for(b.addr);
    let mut r = raw(p.http.unwrap()).await;
    // Three requests in one write: answered in order.
    let mut burst = get("fast.test", "/one");
    burst.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: fast.test\r\nContent-Length: 5\r\n\r\nhello",
    );
    burst.extend_from_slice(
        b"GET /headers HTTP/1.1\r\nHost: fast.test\r\nX-Forwarded-For: 10.9.9.9\r\nX-Read-Only: 1\r\nConnection: keep-alive\r\n\r\n",
    );
    r.send(&burst).await;
    let one = r.response().await;
    assert_eq!((one.status(), &one.body[..]), (200, &b"fast-blue"[..]));
    let echo = r.response().await;
    assert_eq!(echo.body, b"hello");
    let h: serde_json::Value = serde_json::from_slice(&r.response().await.body).unwrap();
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's chain is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "fast.test");
    assert!(
        h.get("x-read-only").is_none(),
        "a client cannot forge X-Read-Only: {h}"
    );
    assert!(h.get("connection").is_none_or(|v| v == "keep-alive"), "{h}");

    // A chunked upload is hyper's: the connection is handed over, with what was read.
    r.send(b"POST /echo HTTP/1.1\r\nHost: fast.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    assert_eq!(r.response().await.body, b"abc");
    // ... and the same connection keeps serving.
    r.send(&get("fast.test", "/two")).await;
    assert_eq!(r.response().await.body, b"fast-blue");

    // Error pages keep the connection.
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("nowhere.test", "/")).await;
    assert_eq!(r.response().await.status(), 404);
    r.send(&get("fast.test", "/")).await;
    assert_eq!(r.response().await.status(), 200);
    // Connection: close is honoured.
    r.send(b"GET / HTTP/1.1\r\nHost: fast.test\r\nConnection: close\r\n\r\n")
        .await;
    let last = r.response().await;
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    assert!(r.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn every_response_framing_passes_and_backend_connections_are_reused() {
    let b = RawBackend::start().await;
    let p = proxy_for(b.addr);
    let mut r = raw(p.http.unwrap()).await;
    chunked_thrice(&mut r).await;
    assert_eq!(
        b.conns.load(Ordering::SeqCst),
        1,
        "one backend connection, reused"
    );

    r.send(&get("fast.test", "/hop")).await;
    let h = r.response().await;
    assert_eq!(h.body, b"ok");
    assert!(h.header("x-secret").is_none(), "{}", h.head);
    assert!(h.header("keep-alive").is_none(), "{}", h.head);
    assert!(h.header("x-kept").is_some(), "{}", h.head);

    r.send(&get("fast.test", "/interim")).await;
    let i = r.response().await;
    assert_eq!((i.status(), &i.body[..]), (200, &b"ok"[..]), "{}", i.head);

    r.send(b"HEAD /len HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .await;
    let head = r.read_head().await;
    assert!(
        head.to_ascii_lowercase().contains("content-length: 5"),
        "{head}"
    );
    length_on_the_fast_path(&mut r).await;

    // The backend closes after each answer: the pooled connection is stale every time.
    for _ in 0..3 {
        r.send(&get("fast.test", "/one-shot")).await;
        assert_eq!(r.response().await.body, b"one");
    }

    r.send(&get("fast.test", "/garbage")).await;
    assert_eq!(r.response().await.status(), 502);

    until_close(&mut r).await;
}

#[tokio::test]
async fn http11_over_tls_takes_the_fast_path() {
    let b = RawBackend::start().await;
    let t = Proxy::tempdir();
    let dir = t.path().to_path_buf();
    make_cert(&dir, "fast", &["fast.test"]);
    let toml = format!(
        "{}{}",
        proxy_section(&dir, ""),
        site("fast", &["fast.test"], &[b.addr], &[], "")
    );
    let p = Proxy::start_in(Some(t), &dir, &toml).unwrap();
    let c = tls_connect(p.https.unwrap(), "fast.test", &[b"http/1.1"], BOTH).await;
    let mut r = Raw::new(c.stream);
    chunked_thrice(&mut r).await;
    length_on_the_fast_path(&mut r).await;
    until_close(&mut r).await;
}
