//! Crashes and hostile input against the control plane (issue 7).

use std::time::Duration;

use crate::support::*;

/// See: issue 7. kill -9 at any moment of a switch: after a restart the state is one of the two
/// valid states, never torn, and the proxy serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_state_survives_kill_9_during_switches() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut p = Proxy::start(
        "access_log = \"off\"",
        &site("wiki", &["127.0.0.1"], &[blue.addr], &[green.addr], ""),
    );
    let dir = p.dir.clone();
    let cfg = p.config.clone();
    let _keep = p.take_tmp();
    let c = reqwest::Client::new();
    for round in 0..15u64 {
        let start_version = match try_control(&p.control, "GET", "/v1/status", None).await {
            Some((_, v)) => v["version"].as_u64().unwrap(),
            None => panic!("round {round}: status failed; stderr: {}", p.stderr_text()),
        };
        // Fire switches as fast as possible and kill the daemon while they fly.
        let ctl = p.control.clone();
        let flipper = tokio::spawn(async move {
            for i in 0u64.. {
                let to = if i % 2 == 0 { "green" } else { "blue" };
                if try_control(
                    &ctl,
                    "POST",
                    "/v1/sites/wiki/switch",
                    Some(&format!("{{\"to\":\"{to}\"}}")),
                )
                .await
                .is_none()
                {
                    return;
                }
            }
        });
        // Let a varying number of switches land first.
        let target = start_version + 1 + round % 5;
        wait_until_async(Duration::from_secs(10), "some switches to land", || {
            let ctl = p.control.clone();
            async move {
                let (_, v) = try_control(&ctl, "GET", "/v1/status", None).await?;
                (v["version"].as_u64()? >= target).then_some(())
            }
        })
        .await;
        p.signal(libc::SIGKILL);
        let _ = p.child.take().map(|mut c| c.wait());
        let _ = flipper.await;
        let text = std::fs::read_to_string(dir.join("state.json")).expect("state file exists");
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("round {round}: torn state file ({e}): {text}"));
        let active = v["sites"]["wiki"]["active"].as_str().unwrap().to_string();
        assert!(active == "blue" || active == "green");
        p = Proxy::spawn(None, &dir, &cfg, &[])
            .unwrap_or_else(|e| panic!("round {round}: restart failed: {e}"));
        let body = c
            .get(p.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            body, active,
            "round {round}: serves what the state file says"
        );
    }
}

/// Garbage on the control socket never crashes the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_survives_garbage() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = Backend::start("blue").await;
    let p = Proxy::start("", &site("wiki", &["127.0.0.1"], &[blue.addr], &[], ""));
    let junk: &[&[u8]] = &[
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/sites/wiki/switch HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{\"to\"",
        b"PUT /v1/read-only HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        b"POST /v1/sites/%00/switch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    ];
    for j in junk {
        let mut s = tokio::net::UnixStream::connect(&p.control).await.unwrap();
        s.write_all(j).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    }
    let st = p.status();
    assert_eq!(st["sites"][0]["active"], "blue");
    assert_eq!(st["version"], 0);
}

/// See: issue 7. Request smuggling and malformed framing: answered 400 (or 413/414/431), and the
/// backend never sees anything but single well-formed requests — never a smuggled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_http1_smuggling_and_malformed_requests() {
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "max_body_bytes = \"1KiB\"",
        &site("wiki", &["x", "127.0.0.1"], &[b.addr], &[], ""),
    );
    let addr = p.http.unwrap();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        ("CL and TE", format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("duplicate CL", format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nAAAA{smuggled}")),
        ("malformed CL", format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nAAAA{smuggled}")),
        ("negative CL", format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{smuggled}")),
        ("TE not chunked last", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}")),
        ("TE odd spelling", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("TE with space before colon", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("obs-fold", format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n{smuggled}")),
        ("NUL in header", format!("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n{smuggled}")),
        ("bad chunk size", format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nAAAA\r\n0\r\n\r\n{smuggled}")),
        ("space in request target", format!("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n{smuggled}")),
        ("body over limit", format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}", "A".repeat(5000))),
        ("huge request line", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200_000))),
        ("huge headers", format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", (0..3000).map(|i| format!("X-{i}: {}\r\n", "v".repeat(40))).collect::<String>())),
    ];
    let mut problems = Vec::new();
    for (name, req) in &cases {
        let before = b.seen.paths.lock().unwrap().len();
        let resp = raw_exchange(addr, req.as_bytes(), Duration::from_millis(500)).await;
        let status = resp
            .split_whitespace()
            .nth(1)
            .unwrap_or("(closed)")
            .to_string();
        let seen: Vec<String> = b.seen.paths.lock().unwrap()[before..].to_vec();
        if seen.iter().any(|s| s.contains("smuggled")) {
            problems.push(format!(
                "{name}: the backend saw a smuggled request: {seen:?} (answer {status})"
            ));
        }
        // CL + TE: hyper follows RFC 9112 6.3 — Transfer-Encoding wins, the body is read as chunked,
        // and the connection is closed after the answer, so the trailing bytes are never parsed.
        let closed_after = resp.to_ascii_lowercase().contains("connection: close");
        if *name == "CL and TE" && status == "200" && closed_after && seen == ["POST /a"] {
            continue;
        }
        if !["400", "413", "414", "431", "(closed)"].contains(&status.as_str()) {
            problems.push(format!(
                "{name}: expected a 4xx refusal, got {status}; backend saw {seen:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The proxy is still fine.
    assert_eq!(reqwest::get(p.url("/")).await.unwrap().status(), 200);
    assert!(!p.stderr_text().contains("panicked"));
}

/// See: issue 7. Slowloris: many connections trickling a request head cannot starve others; a
/// normal request is still answered promptly, and the stalled ones are closed at header_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_slowloris_does_not_starve_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "header_timeout = \"1s\"",
        &site("wiki", &["127.0.0.1"], &[b.addr], &[], ""),
    );
    let addr = p.http.unwrap();
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let t = std::time::Instant::now();
    let r = reqwest::get(p.url("/")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a normal request took {:?} under slowloris",
        t.elapsed()
    );
    // Keep trickling; every stalled connection must be closed by the header timeout.
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        let mut n = 0;
        for s in slow.iter_mut() {
            let _ = s.write_all(b"a").await;
            let mut buf = [0u8; 512];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue, // a 408/400 answer may come first
                }
            }
            n += 1;
        }
        n
    })
    .await
    .expect("stalled connections were not closed at the header timeout");
    assert_eq!(closed, 500);
}

/// A small upload (the fast path buffers bodies up to 64 KiB) that arrives slowly but steadily
/// takes longer than the header timeout in all and still goes through: the header clock stops
/// once the head is in. A body that stalls for a header timeout still ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_steady_upload_outlives_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "header_timeout = \"1s\"",
        &site("wiki", &["127.0.0.1"], &[b.addr], &[], ""),
    );
    let addr = p.http.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 6000\r\n\r\n")
        .await
        .unwrap();
    // 20 pieces 150 ms apart: 3 s in all, three header timeouts, never a 1 s gap.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(&[b'u'; 300]).await.unwrap();
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if text.starts_with("HTTP/1.1 ") && text.ends_with("\r\n\r\n6000") {
                break;
            }
        }
        String::from_utf8_lossy(&got).to_string()
    })
    .await
    .expect("no answer to the slow upload");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("6000"),
        "the slow upload was cut off or changed: {answer:?}"
    );

    // A stalled body: the head and a part, then nothing. Closed at about the header timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 6000\r\n\r\nxxxx")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a stalled body kept its connection open");
}

/// See: issue 7. Garbage on the TLS port and old protocol versions are refused; the proxy keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_tls_garbage_and_old_versions() {
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "handshake_timeout = \"1s\"",
        &site("wiki", &["localhost", "127.0.0.1"], &[b.addr], &[], ""),
    );
    let https = p.https.unwrap();
    let out = raw_exchange(
        https,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        !out.contains("200"),
        "plain HTTP on the TLS port must not be served: {out}"
    );
    let out = raw_exchange(
        https,
        &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8],
        Duration::from_millis(500),
    )
    .await;
    assert!(!out.contains("HTTP"), "{out}");
    // A TLS 1.0-only and a TLS 1.1-only ClientHello get a protocol_version alert or a close.
    for v in ["-tls1", "-tls1_1"] {
        let o = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &https.to_string(),
                v,
                "-servername",
                "localhost",
            ])
            .stdin(std::process::Stdio::null())
            .output();
        if let Ok(o) = o {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                !text.contains("Cipher is ") || text.contains("Cipher is (NONE)"),
                "{v} negotiated: {text}"
            );
        }
    }
    // A client that connects and says nothing is dropped at the handshake timeout.
    let t = std::time::Instant::now();
    let out = raw_exchange(https, b"", Duration::from_secs(5)).await;
    assert!(out.is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "silent TLS client held for {:?}",
        t.elapsed()
    );
    let c = client(&p, &["localhost"]);
    assert_eq!(
        c.get(p.surl("localhost", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A raw TCP "backend" that misbehaves in one way per connection.
async fn broken_backend(kind: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match kind {
                    "reset" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
                            .await;
                        #[allow(deprecated)] // linger 0 sends RST at once; that is the point here
                        let _ = s.set_linger(Some(Duration::ZERO));
                        drop(s);
                    }
                    "garbage" => {
                        let _ = s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
                        drop(s);
                    }
                    _ => {
                        // never answers
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            });
        }
    });
    addr
}

/// See: issue 7. Broken backends give clean 502/504; the proxy survives; other sites are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_broken_backends() {
    let good = Backend::start("good").await;
    let reset = broken_backend("reset").await;
    let garbage = broken_backend("garbage").await;
    let silent = broken_backend("silent").await;
    let sites = site("good", &["good.test"], &[good.addr], &[], "")
        + &site("reset", &["reset.test"], &[reset], &[], "")
        + &site("garbage", &["garbage.test"], &[garbage], &[], "")
        + &site("silent", &["silent.test"], &[silent], &[], "");
    let p = Proxy::start("upstream_timeout = \"500ms\"", &sites);
    let c = reqwest::Client::new();
    let get = |h: &'static str| c.get(p.url("/")).header("host", h).send();
    let r = get("reset.test").await;
    // Headers may already be on their way when the backend resets: then the body is cut short.
    match r {
        Ok(r) if r.status() == 200 => assert!(
            r.bytes().await.is_err(),
            "a reset body must not look complete"
        ),
        Ok(r) => assert_eq!(r.status(), 502),
        Err(_) => {}
    }
    assert_eq!(get("garbage.test").await.unwrap().status(), 502);
    assert_eq!(get("silent.test").await.unwrap().status(), 504);
    for _ in 0..20 {
        assert_eq!(
            get("good.test").await.unwrap().text().await.unwrap(),
            "good"
        );
    }
    assert!(!p.stderr_text().contains("panicked"));
}

/// See: issue 7. HTTP/2 rapid reset: a flood of streams opened and cancelled at once is cut off
/// (GOAWAY / connection closed), and the proxy stays responsive for others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_h2_rapid_reset_is_bounded() {
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "",
        &site("wiki", &["localhost", "127.0.0.1"], &[b.addr], &[], ""),
    );
    let tcp = tokio::net::TcpStream::connect(p.http.unwrap())
        .await
        .unwrap();
    // h2c with prior knowledge on the plain listener (the auto builder accepts it).
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut cut_off = false;
    for _ in 0..5000 {
        let req = http::Request::get("http://localhost/slow?ms=2000")
            .body(())
            .unwrap();
        match h2.send_request(req, true) {
            Ok((resp, _)) => drop(resp), // dropping the response future resets the stream
            Err(_) => {
                cut_off = true;
                break;
            }
        }
        if h2.clone().ready().await.is_err() {
            cut_off = true;
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
    assert!(
        cut_off || matches!(ended, Ok(Ok(Err(_)))),
        "5000 reset streams were accepted without the connection being cut off"
    );
    assert!(b.hits() < 5000, "every reset stream reached the backend");
    assert_eq!(reqwest::get(p.url("/")).await.unwrap().status(), 200);
}

/// See: issue 7. 10 000 idle keep-alive connections: memory bounded, still responsive. Prints the
/// per-connection cost (issue 6 target: under 50 KiB each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_ten_thousand_idle_connections() {
    use tokio::io::AsyncWriteExt;
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "access_log = \"off\"\nidle_timeout = \"60s\"\nheader_timeout = \"60s\"",
        &site("wiki", &["127.0.0.1"], &[b.addr], &[], ""),
    );
    let pid = p.child.as_ref().unwrap().id();
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(reqwest::get(p.url("/")).await.unwrap().status(), 200);
    let before = rss();
    let mut conns = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let mut s = tokio::net::TcpStream::connect(p.http.unwrap())
            .await
            .unwrap();
        // One real request each, then idle keep-alive.
        s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        conns.push(s);
    }
    wait_until_async(
        Duration::from_secs(60),
        "10 000 connections to be open",
        || {
            let m = p.metrics.unwrap();
            async move {
                let t = reqwest::get(format!("http://{m}/metrics"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                let open: f64 = t
                    .lines()
                    .find(|l| l.starts_with("switchyard_connections_open "))?
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()?;
                (open >= 10_000.0).then_some(())
            }
        },
    )
    .await;
    let after = rss();
    let per_conn = (after.saturating_sub(before)) * 1024 / 10_000;
    eprintln!("RSS idle {before} KiB, with 10 000 idle keep-alive connections {after} KiB: {per_conn} bytes per connection");
    let t = std::time::Instant::now();
    assert_eq!(reqwest::get(p.url("/")).await.unwrap().status(), 200);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(per_conn < 64 * 1024, "{per_conn} bytes per idle connection");
    drop(conns);
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// See: issue 7. HTTP/2: the stream limit is advertised, and a client that never reads its
/// responses (window starvation) cannot make the proxy buffer them: memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_h2_stream_limit_and_window_starvation() {
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "access_log = \"off\"",
        &site("wiki", &["localhost", "127.0.0.1"], &[b.addr], &[], ""),
    );
    let pid = p.child.as_ref().unwrap().id();
    let tcp = tokio::net::TcpStream::connect(p.http.unwrap())
        .await
        .unwrap();
    let (h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // One exchange first, so the server's SETTINGS have surely arrived.
    let mut h2 = h2.ready().await.unwrap();
    let (first, _) = h2
        .send_request(
            http::Request::get("http://localhost/").body(()).unwrap(),
            true,
        )
        .unwrap();
    tokio::select! {
        r = first => assert_eq!(r.unwrap().status(), 200),
        _ = &mut conn => panic!("connection ended"),
    }
    assert_eq!(
        conn.max_concurrent_send_streams(),
        250,
        "the server's SETTINGS_MAX_CONCURRENT_STREAMS"
    );
    tokio::spawn(conn);
    let before = rss_kib(pid);
    // 100 streams × 20 MiB requested, none of it read: 2 GiB the proxy must not hold.
    let mut held = Vec::new();
    for _ in 0..100 {
        h2 = h2.ready().await.unwrap();
        let (resp, _) = h2
            .send_request(
                http::Request::get("http://localhost/big?mib=20")
                    .body(())
                    .unwrap(),
                true,
            )
            .unwrap();
        held.push(resp);
    }
    let mut heads = Vec::new();
    for r in held {
        heads.push(
            tokio::time::timeout(Duration::from_secs(10), r)
                .await
                .expect("response head")
                .unwrap(),
        );
    }
    // Give the backends every chance to push; memory must stay flat anyway.
    wait_until_async(
        Duration::from_secs(10),
        "the backend to have answered all 100",
        || {
            let n = b.hits();
            async move { (n >= 101).then_some(()) }
        },
    )
    .await;
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("100 starved h2 streams of 20 MiB each: proxy RSS grew by {grown} KiB");
    assert!(grown < 128 * 1024, "RSS grew by {grown} KiB");
    drop(heads);
    assert_eq!(reqwest::get(p.url("/")).await.unwrap().status(), 200);
}

/// See: issue 7. A flood of new TLS handshakes: memory and file descriptors come back down, and
/// the proxy answers a normal request promptly during the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_tls_handshake_flood_is_bounded() {
    let b = Backend::start("b").await;
    let p = Proxy::start(
        "access_log = \"off\"",
        &site("wiki", &["localhost", "127.0.0.1"], &[b.addr], &[], ""),
    );
    let pid = p.child.as_ref().unwrap().id();
    let https = p.https.unwrap();
    let fds_before = open_fds(pid);
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[derive(Debug)]
    struct AnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // 64 concurrent clients, 25 handshakes each, half of them abandoned mid-way.
    for t in 0..64 {
        let connector = connector.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let Ok(tcp) = tokio::net::TcpStream::connect(https).await else {
                    continue;
                };
                if (t + i) % 2 == 0 {
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    if connector.connect(name, tcp).await.is_ok() {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                } else {
                    drop(tcp); // connect and leave
                }
            }
        }));
    }
    let t = std::time::Instant::now();
    assert_eq!(reqwest::get(p.url("/")).await.unwrap().status(), 200);
    let during = t.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        done.load(std::sync::atomic::Ordering::Relaxed) > 700,
        "handshakes done: {}",
        done.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        during < Duration::from_secs(3),
        "a normal request took {during:?} during the flood"
    );
    wait_until(
        Duration::from_secs(10),
        "file descriptors to come back down",
        || (open_fds(pid) <= fds_before + 8).then_some(()),
    );
    let rss = rss_kib(pid);
    eprintln!(
        "after 1600 handshakes: RSS {rss} KiB, fds {} (before {fds_before})",
        open_fds(pid)
    );
    assert!(rss < 200 * 1024);
}
