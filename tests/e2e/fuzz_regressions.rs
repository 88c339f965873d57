//! The findings of fuzzing the HTTP/1.1 fast path (issue 16, `fuzz/`, listed in SECURITY.md),
//! each on the real binary over raw sockets: what the client gets, and what the backend saw.
//! The response-side backend is a raw socket server answering from a script by path, so each
//! framing is exactly what goes over the wire.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::edge::{get, raw};
use crate::support::*;

/// A raw backend answering each request head by its path, then closing if the script says so.
/// Keeps the target of every request it read.
struct Scripted {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

fn script(path: &str) -> (&'static [u8], bool) {
    match path {
        "/status-042" => (b"HTTP/1.1 042 Odd\r\nContent-Length: 2\r\n\r\nok", false),
        "/http10-chunked" => (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            true,
        ),
        "/cl-empty" => (b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nok", true),
        "/cl-comma" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2,\r\n\r\nok", false),
        "/cl-max" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nok",
            true,
        ),
        "/te-comma" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/te-empty-line" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/te-gzip-cl" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef",
            true,
        ),
        "/trailer-split" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\nHTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
        "/size-junk" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 xyz\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/trailer-fold" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: 1\r\n folded\r\n\r\n",
            false,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    }
}

impl Scripted {
    async fn start() -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = targets.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let seen = seen.clone();
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
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        seen.lock().unwrap().push(path.clone());
                        let (resp, close) = script(&path);
                        if s.write_all(resp).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, targets }
    }
}

/// See: issue 16 (fuzz target `response`). Response heads hyper's client refuses, or frames
/// otherwise than the fast path did, are a 502 now, and the client connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_fuzz_responses_hyper_refuses_are_a_502() {
    let b = Scripted::start().await;
    let p = Proxy::start("", &site("f", &["f.test"], &[b.addr], &[], ""));
    for path in [
        "/status-042",
        "/http10-chunked",
        "/cl-empty",
        "/cl-comma",
        "/cl-max",
        "/te-comma",
        "/te-empty-line",
    ] {
        let mut r = raw(p.http.unwrap()).await;
        r.send(&get("f.test", path)).await;
        let resp = r.response().await;
        assert_eq!(resp.status(), 502, "{path}: {}", resp.head);
        r.send(&get("f.test", "/")).await;
        assert_eq!(
            r.response().await.body,
            b"ok",
            "{path}: the connection goes on"
        );
    }
    assert_eq!(
        b.targets.lock().unwrap().len(),
        14,
        "each request reached the backend once"
    );
}

/// See: issue 16 (fuzz target `response`). A Content-Length beside a Transfer-Encoding that
/// does not end in chunked reached the client (RFC 9112 6.3: an intermediary removes it): a
/// client reading by Content-Length would stop after 3 bytes and take the rest for the next
/// response. Now the client gets the Transfer-Encoding alone and the body until close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_fuzz_content_length_never_reaches_the_client_beside_transfer_encoding() {
    let b = Scripted::start().await;
    let p = Proxy::start("", &site("f", &["f.test"], &[b.addr], &[], ""));
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("f.test", "/te-gzip-cl")).await;
    let head = r.read_head().await.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: gzip\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(r.closed_within(Duration::from_secs(5)).await);
    assert_eq!(r.buf_text(), "abcdef");
}

/// See: issue 16 (fuzz target `chunked`). A chunked body whose framing readers end at
/// different bytes was relayed as it came: `0\r\n\n` ends the body for a client that takes a
/// bare LF as a line end (RFC 9112 2.2), which then reads the backend's next bytes as the answer
/// to its next request (response splitting); junk after a chunk size and a folded trailer line
/// (hyper refuses both) likewise. Now the body is broken off: the client never gets a complete
/// response from those bytes, nor the injected one, and a new connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_fuzz_chunked_framing_readers_end_differently_is_broken_off() {
    let b = Scripted::start().await;
    let p = Proxy::start("", &site("f", &["f.test"], &[b.addr], &[], ""));
    for path in ["/trailer-split", "/size-junk", "/trailer-fold"] {
        let mut r = raw(p.http.unwrap()).await;
        // The next request is already there: a split body would answer it with the injection.
        let mut two = get("f.test", path);
        two.extend_from_slice(&get("f.test", "/"));
        r.send(&two).await;
        assert!(r.closed_within(Duration::from_secs(5)).await, "{path}");
        let got = r.buf_text();
        assert!(!got.contains("X-Injected"), "{path}: {got:?}");
        assert!(
            !got.contains("\r\n0\r\n\r\n"),
            "{path}: never a complete body: {got:?}"
        );
        assert!(
            got.matches("HTTP/1.1 ").count() <= 1,
            "{path}: no second response: {got:?}"
        );
        let mut r = raw(p.http.unwrap()).await;
        r.send(&get("f.test", "/")).await;
        assert_eq!(r.response().await.body, b"ok", "{path}: served after");
    }
}

/// See: issue 16 (fuzz target `request`). Request targets hyper's side refuses (`<`, `>`,
/// `` ` `` in the path; `"`, `<`, `>` in the query) were forwarded by the fast path (a hyper
/// backend answered 400 itself; another one took them). Now the edge's hyper answers them 400,
/// alone and pipelined after a fast-path request, and the backend (a raw one here, which would
/// take anything) reads only the good requests; targets hyper takes (`"{}|\^[]` in the path)
/// are still forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_fuzz_targets_hyper_refuses_never_reach_the_backend() {
    let b = Scripted::start().await;
    let p = Proxy::start("", &site("f", &["f.test"], &[b.addr], &[], ""));
    let bad: &[&str] = &["/a<b", "/a>b", "/a`b", "/x?q=\"1\"", "/x?q=<1>"];
    for target in bad {
        let req = format!("GET {target} HTTP/1.1\r\nHost: f.test\r\n\r\n").into_bytes();
        let mut r = raw(p.http.unwrap()).await;
        r.send(&req).await;
        assert_eq!(r.response().await.status(), 400, "{target}");
        let mut r = raw(p.http.unwrap()).await;
        let mut two = get("f.test", "/first");
        two.extend_from_slice(&req);
        r.send(&two).await;
        assert_eq!(r.response().await.status(), 200, "{target}: the first");
        assert_eq!(r.response().await.status(), 400, "{target}, pipelined");
    }
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("f.test", "/j{\"k\"}|\\^[0]?a[]=`{}|")).await;
    assert_eq!(r.response().await.status(), 200);
    let mut want = vec!["/first".to_string(); bad.len()];
    want.push("/j{\"k\"}|\\^[0]?a[]=`{}|".to_string());
    assert_eq!(
        *b.targets.lock().unwrap(),
        want,
        "the backend read only the good requests"
    );
}
