//! HTTP rules at the edge (issue 16): Host and request-target (RFC 9112 3.2-3.3, RFC 9113
//! 8.3.1), forwarding headers as a trust boundary, and early answers that reach a client still
//! sending. Each refusal is checked on the wire and at the backend (which must see nothing).
//! The list of rules, their defaults and these tests is in SECURITY.md.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::edge::{get, raw, tls_connect};
use crate::support::*;

fn two_sites(a: &Backend, b: &Backend, extra_proxy: &str) -> Proxy {
    Proxy::start(
        extra_proxy,
        &format!(
            "{}{}",
            site("a", &["a.test"], &[a.addr], &[], ""),
            site("b", &["b.test"], &[b.addr], &[], ""),
        ),
    )
}

/// Sends `bytes` on a new plain connection and returns the status of the first answer.
async fn status_of(p: &Proxy, bytes: &[u8]) -> u16 {
    let mut r = raw(p.http.unwrap()).await;
    r.send(bytes).await;
    r.response().await.status()
}

/// An HTTP/2 connection with prior knowledge on the plain listener (its I/O driven by a task).
async fn h2c(p: &Proxy) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(p.http.unwrap())
        .await
        .unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    h2
}

/// Reads an h2 response body whole, giving the window back as it goes.
async fn h2_body(mut body: h2::RecvStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// See: issue 16. Requests whose Host or target is ambiguous or invalid get 400 (CONNECT 501)
/// and never reach a backend, on a fresh connection and after a fast-path request on the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_bad_host_or_target_is_refused_before_any_backend() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "");
    let cases: &[(&str, &[u8], u16)] = &[
        (
            "two Host lines",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            400,
        ),
        (
            "two equal Host lines",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
            400,
        ),
        (
            "Host with userinfo",
            b"GET / HTTP/1.1\r\nHost: x@a.test\r\n\r\n",
            400,
        ),
        (
            "Host with a bad port",
            b"GET / HTTP/1.1\r\nHost: a.test:8x\r\n\r\n",
            400,
        ),
        (
            "Host with a path",
            b"GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n",
            400,
        ),
        ("empty Host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400),
        (
            "authority-form GET",
            b"GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            400,
        ),
        (
            "asterisk-form GET",
            b"GET * HTTP/1.1\r\nHost: a.test\r\n\r\n",
            400,
        ),
        (
            "CONNECT",
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            501,
        ),
        (
            "absolute-form of another scheme",
            b"GET ftp://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
            400,
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n 2\r\n\r\n",
            400,
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",
            400,
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(status_of(&p, bytes).await, *want, "{what}");
        // After a request the fast path takes, on the same connection.
        let mut r = raw(p.http.unwrap()).await;
        let mut two = get("a.test", "/");
        two.extend_from_slice(bytes);
        r.send(&two).await;
        assert_eq!(
            r.response().await.status(),
            200,
            "{what}: the first request"
        );
        assert_eq!(r.response().await.status(), *want, "{what}, pipelined");
    }
    let n = cases.len();
    assert_eq!(
        a.seen.requests.load(Ordering::SeqCst),
        n,
        "backend a saw only the {n} good requests"
    );
    assert_eq!(b.seen.requests.load(Ordering::SeqCst), 0);
}

/// See: issue 16. An absolute-form target is routed by its authority, not by Host, and the
/// backend gets that authority as Host and the target in origin form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_absolute_form_is_routed_by_its_authority() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "");
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"GET http://a.test/headers?x=1 HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(resp.header("x-backend").as_deref(), Some("a"));
    let h: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(h["host"], "a.test");
    assert_eq!(h["x-forwarded-host"], "a.test");
    assert_eq!(a.seen.paths.lock().unwrap().as_slice(), ["GET /headers"]);
    assert_eq!(b.seen.requests.load(Ordering::SeqCst), 0);
}

/// See: issue 16. `OPTIONS *` goes to the backend as `OPTIONS *` (not `OPTIONS /`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_options_asterisk_is_forwarded_as_it_came() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "");
    status_of(&p, b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    wait_until(
        Duration::from_secs(5),
        "the backend to see OPTIONS *",
        || {
            a.seen
                .paths
                .lock()
                .unwrap()
                .iter()
                .any(|l| l == "OPTIONS *")
                .then_some(())
        },
    );
}

/// See: issue 16. On HTTP/2 a Host that names another host than `:authority` is refused; one that
/// agrees passes. (h2c with prior knowledge on the plain listener.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_h2_authority_and_host_must_agree() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "");
    let h2 = h2c(&p).await;
    let status = |host: &'static str| {
        let mut h2 = h2.clone();
        async move {
            let req = http::Request::get("http://a.test/headers")
                .header("host", host)
                .body(())
                .unwrap();
            h2 = h2.ready().await.unwrap();
            let (resp, _) = h2.send_request(req, true).unwrap();
            resp.await.unwrap().status().as_u16()
        }
    };
    assert_eq!(
        status("b.test").await,
        400,
        "Host disagrees with :authority"
    );
    assert_eq!(b.seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(a.seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(status("A.TEST").await, 200, "the same host, case aside");
    assert_eq!(a.seen.requests.load(Ordering::SeqCst), 1);
}

/// See: issue 22. A bodiless HTTP/2 request's head is written straight from hyper's headers:
/// cookie crumbs reach an HTTP/1.1 backend as one `cookie` line (RFC 9113 8.2.3), `te` and a
/// client's `x-read-only` do not reach it, Host is the one routed by, and the rest passes as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_22_h2_head_joins_cookies_and_drops_what_the_edge_owns() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "");
    let h2 = h2c(&p).await;
    let req = http::Request::get("http://a.test/headers?q=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("te", "trailers")
        .header("x-read-only", "1")
        .header("x-custom", "kept")
        .body(())
        .unwrap();
    let mut h2 = h2.ready().await.unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = h2_body(resp.into_body()).await;
    let h: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(h["cookie"], "a=1; b=2", "{h}");
    assert_eq!(h["host"], "a.test", "{h}");
    assert_eq!(h["x-custom"], "kept", "{h}");
    assert!(
        h.get("te").is_none() && h.get("x-read-only").is_none(),
        "{h}"
    );
    assert_eq!(
        h["forwarded"], "for=127.0.0.1;proto=http;host=a.test",
        "{h}"
    );
}

/// See: issue 22. An HTTP/2 request with a small body of declared length is read whole and sent
/// with its head (the raw path, as on HTTP/1.1's fast path): the backend gets every byte, in
/// order, from several DATA frames. A body that stops arriving is refused with 400 once the
/// header timeout passes, and nothing of it reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_22_h2_small_bodies_go_whole_and_a_stalled_one_is_refused() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "header_timeout = \"500ms\"");
    let h2 = h2c(&p).await;
    let mut h2 = h2.ready().await.unwrap();

    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let req = http::Request::post("http://a.test/echo")
        .header("content-length", "3000")
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    let pieces: Vec<&[u8]> = body.chunks(1000).collect();
    for (i, piece) in pieces.iter().enumerate() {
        send.send_data(bytes::Bytes::copy_from_slice(piece), i + 1 == pieces.len())
            .unwrap();
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        h2_body(resp.into_body()).await == body,
        "the body arrives whole"
    );
    let seen = a.seen.requests.load(Ordering::SeqCst);

    // Half of a declared body, then nothing.
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::post("http://a.test/echo")
        .header("content-length", "10")
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from_static(b"12345"), false)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer once the header timeout passes")
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = String::from_utf8(h2_body(resp.into_body()).await).unwrap();
    assert!(text.contains("did not arrive"), "{text}");
    assert_eq!(
        a.seen.requests.load(Ordering::SeqCst),
        seen,
        "the backend saw none of it"
    );
    drop(send);
}

/// See: issue 16. By default the edge passes on none of what a client claims in its forwarding
/// headers; from a `trusted_proxies` peer it keeps and extends them. Both front ends, h1 and h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_forwarding_headers_are_a_trust_boundary() {
    let claims = "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n";
    for (trusted, extra) in [(false, ""), (true, "trusted_proxies = [\"127.0.0.1/32\"]")] {
        let a = Backend::start("a").await;
        let b = Backend::start("b").await;
        let p = two_sites(&a, &b, extra);
        // The fast path (a plain GET) and hyper's side (a chunked POST) alike.
        for req in [
            format!("GET /headers HTTP/1.1\r\nHost: a.test\r\n{claims}\r\n"),
            format!("POST /headers HTTP/1.1\r\nHost: a.test\r\n{claims}Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
        ] {
            let mut r = raw(p.http.unwrap()).await;
            r.send(req.as_bytes()).await;
            let resp = r.response().await;
            assert_eq!(resp.status(), 200, "{resp:?}");
            let h: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            if trusted {
                assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{h}");
                assert_eq!(
                    h["forwarded"],
                    "for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=a.test",
                    "{h}"
                );
                assert_eq!(h["x-forwarded-proto"], "https", "{h}");
                assert_eq!(h["x-forwarded-host"], "evil.test", "{h}");
            } else {
                assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
                assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=a.test", "{h}");
                assert_eq!(h["x-forwarded-proto"], "http", "{h}");
                assert_eq!(h["x-forwarded-host"], "a.test", "{h}");
            }
        }
        // HTTP/2 over TLS.
        let c = client(&p, &["a.test"]);
        let resp = c
            .get(p.surl("a.test", "/headers"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("x-forwarded-host", "evil.test")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        let h: serde_json::Value = resp.json().await.unwrap();
        let port = p.https.unwrap().port();
        if trusted {
            assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{h}");
            assert_eq!(
                h["forwarded"],
                format!("for=6.6.6.6, for=127.0.0.1;proto=https;host=\"a.test:{port}\""),
                "{h}"
            );
            assert_eq!(h["x-forwarded-host"], "evil.test", "{h}");
        } else {
            assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
            assert_eq!(
                h["forwarded"],
                format!("for=127.0.0.1;proto=https;host=\"a.test:{port}\""),
                "{h}"
            );
            assert_eq!(h["x-forwarded-host"], format!("a.test:{port}"), "{h}");
        }
    }
}

/// One upload far over the limit on `stream`, by a client that sends its whole body before it
/// reads: the strictest kind (hyper's client, for one, reports a failed write and never looks
/// for the answer). Returns the answer's status line, or what went wrong: a write that failed
/// (the edge closed on a client still sending), or no answer.
async fn over_limit_upload<S>(mut stream: S, head: String, body: usize) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut write_err = None;
    if let Err(e) = stream.write_all(head.as_bytes()).await {
        write_err = Some(e);
    }
    let chunk = vec![b'u'; 64 * 1024];
    let mut left = body;
    while left > 0 && write_err.is_none() {
        let n = left.min(chunk.len());
        match tokio::time::timeout(Duration::from_secs(20), stream.write_all(&chunk[..n])).await {
            Ok(Ok(())) => left -= n,
            Ok(Err(e)) => write_err = Some(e),
            Err(_) => return Err("a write stalled for 20 s".into()),
        }
    }
    if let Some(e) = write_err {
        return Err(format!("a write failed ({e}) with {left} bytes unsent"));
    }
    let _ = stream.flush().await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
            return Ok(String::from_utf8_lossy(&got[..end]).into_owned());
        }
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed before an answer".into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(format!("{e} before an answer")),
            Err(_) => return Err("no answer within 20 s".into()),
        }
    }
}

/// See: issue 16. 50 uploads over the body limit from 8 concurrent clients, over plain and TLS
/// HTTP/1.1, declared (Content-Length) and streamed (chunked): every client sends all it meant
/// to and then reads its 413; none gets a broken pipe or a reset instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_16_every_early_413_reaches_a_client_still_sending() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "max_body_bytes = \"1MiB\"");
    let (http, https) = (p.http.unwrap(), p.https.unwrap());
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= 50 {
                    return failures;
                }
                let body = 64 << 20;
                let head = if i % 2 == 0 {
                    format!("POST /count HTTP/1.1\r\nHost: a.test\r\nContent-Length: {body}\r\n\r\n")
                } else {
                    // chunked: one 64 MiB chunk, so the limit is found while streaming
                    format!("POST /count HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{body:x}\r\n")
                };
                let tls = (i / 2) % 2 == 1;
                let got = if tls {
                    let s = tls_connect(https, "a.test", &[b"http/1.1"], &[&rustls::version::TLS13])
                        .await
                        .stream;
                    over_limit_upload(s, head, body).await
                } else {
                    let s = tokio::net::TcpStream::connect(http).await.unwrap();
                    over_limit_upload(s, head, body).await
                };
                match got {
                    Ok(line) if line.starts_with("HTTP/1.1 413") => {}
                    other => failures.push(format!("upload {i} (tls {tls}): {other:?}")),
                }
            }
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of 50: {failures:#?}",
        failures.len()
    );
}

/// See: issue 16 (found by the sets tests). An early answer to an HTTP/1.1 request whose body the
/// edge leaves unread says `Connection: close`: hyper closes such a connection after the answer,
/// and a client that reused it lost its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_16_an_early_answer_with_an_unread_body_says_close() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let p = two_sites(&a, &b, "");
    p.ok(&["read-only", "on", "--reason", "backup", "--site", "a"]);
    let mut r = raw(p.http.unwrap()).await;
    // Over the fast path's 64 KiB, so hyper's side reads it, and refuses it before the body.
    r.send(b"POST /notes HTTP/1.1\r\nHost: a.test\r\nContent-Length: 200000\r\n\r\nxxxx")
        .await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 503, "{resp:?}");
    assert_eq!(
        resp.header("connection").as_deref(),
        Some("close"),
        "{resp:?}"
    );
}
