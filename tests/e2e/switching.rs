//! Blue/green switching and read-only mode under load (issue 3).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

fn two_color_site(blue: &Backend, green: &Backend, extra: &str) -> String {
    site(
        "wiki",
        &["wiki.test", "127.0.0.1", "localhost"],
        &[blue.addr],
        &[green.addr],
        extra,
    )
}

async fn switch(p: &Proxy, to: &str) -> (u16, serde_json::Value) {
    control(
        &p.control,
        "POST",
        "/v1/sites/wiki/switch",
        Some(&format!("{{\"to\":\"{to}\"}}")),
        None,
    )
    .await
}

/// See: issue 3. Under continuous h1 + h2 load, flip 1000 times: no request fails, every answer
/// comes whole from one of the two colors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_3_flip_1000_times_under_load() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start("access_log = \"off\"", &two_color_site(&blue, &green, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let (c, url) = if i % 2 == 0 {
            (
                reqwest::Client::builder().http1_only().build().unwrap(),
                p.url("/"),
            )
        } else {
            (client(&p, &["wiki.test"]), p.surl("wiki.test", "/"))
        };
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).header("host", "wiki.test").send().await {
                    Ok(r) if r.status() == 200 => {
                        let b = r.text().await.unwrap_or_default();
                        if b == "blue" || b == "green" {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.lock().unwrap().push(format!("body {b:?}"));
                        }
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("error {e}")),
                }
            }
        }));
    }
    let started = Instant::now();
    for i in 0..1000 {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let (s, v) = switch(&p, to).await;
        assert_eq!(s, 200, "switch {i} to {to}: {v}");
        assert_eq!(v["changed"], true);
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    {
        let f = failures.lock().unwrap();
        assert!(
            f.is_empty(),
            "{} failed requests, e.g. {:?}",
            f.len(),
            &f[..f.len().min(5)]
        );
    }
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    eprintln!(
        "1000 switches in {took:?} under load, {} requests ok",
        ok.load(Ordering::Relaxed)
    );
    // After an even number of flips blue is active again, and new requests see it at once.
    let c = reqwest::Client::new();
    assert_eq!(text(&c, &p.url("/"), Some("wiki.test")).await, "blue");
    assert!(blue.hits() > 0 && green.hits() > 0);
}

/// A keep-alive connection keeps working across a switch and its next request goes to the new color.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connection_follows_switch() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start("", &two_color_site(&blue, &green, ""));
    let c = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    assert_eq!(text(&c, &p.url("/"), None).await, "blue");
    let (s, _) = switch(&p, "green").await;
    assert_eq!(s, 200);
    assert_eq!(text(&c, &p.url("/"), None).await, "green");
    let st = p.status();
    assert_eq!(st["sites"][0]["active"], "green");
    assert_eq!(st["sites"][0]["previous"], "blue");
    // Twice to the same color: a no-op that says so.
    let (s, v) = switch(&p, "green").await;
    assert_eq!(s, 200);
    assert_eq!(v["changed"], false);
    assert!(v["message"].as_str().unwrap().contains("already"), "{v}");
}

/// Switching to an empty or dead pool is refused (409) unless forced; an empty pool always is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_refused_to_empty_or_dead_pool() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sites = site("wiki", &["127.0.0.1"], &[blue.addr], &[], "")
        + &site("other", &["other.test"], &[blue.addr], &[green.addr], "");
    let p = Proxy::start("", &sites);
    let (s, v) = switch(&p, "green").await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("empty"), "{v}");
    green.kill();
    let (s, v) = control(
        &p.control,
        "POST",
        "/v1/sites/other/switch",
        Some(r#"{"to":"green"}"#),
        None,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--force"), "{v}");
    let o = p.cli(&["switch", "other", "green"]);
    assert_eq!(o.status.code(), Some(1));
    let (s, v) = control(
        &p.control,
        "POST",
        "/v1/sites/other/switch",
        Some(r#"{"to":"green","force":true}"#),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

/// See: issue 3. Read-only on/off under load: no write passes while it is on, no read fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_3_read_only_under_load() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start("access_log = \"off\"", &two_color_site(&blue, &green, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let read_fail = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (stop, read_fail, reads, refused) = (
            stop.clone(),
            read_fail.clone(),
            reads.clone(),
            refused.clone(),
        );
        let url_r = p.url("/");
        let url_w = p.url("/echo");
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                if i % 2 == 0 {
                    match c.get(&url_r).send().await {
                        Ok(r) if r.status() == 200 => {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            read_fail.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else if let Ok(r) = c.post(&url_w).body("x").send().await {
                    if r.status() == 503 {
                        assert!(r.headers().contains_key("retry-after"));
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for _ in 0..20 {
        let (s, v) = control(
            &p.control,
            "PUT",
            "/v1/read-only",
            Some(r#"{"on":true,"reason":"backup","retry_after_s":30}"#),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        // From here until `off`, the backend must not see a single write.
        let before = blue.seen.writes.load(Ordering::SeqCst);
        let refused_before = refused.load(Ordering::Relaxed);
        wait_until_async(Duration::from_secs(10), "a write to be refused", || {
            let r = refused.load(Ordering::Relaxed);
            async move { (r > refused_before).then_some(()) }
        })
        .await;
        assert_eq!(
            blue.seen.writes.load(Ordering::SeqCst),
            before,
            "a write reached the backend while read-only was on"
        );
        let (s, _) = control(
            &p.control,
            "PUT",
            "/v1/read-only",
            Some(r#"{"on":false}"#),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let w = blue.seen.writes.load(Ordering::SeqCst);
        wait_until_async(Duration::from_secs(10), "a write to pass again", || {
            let now = blue.seen.writes.load(Ordering::SeqCst);
            async move { (now > w).then_some(()) }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(read_fail.load(Ordering::Relaxed), 0, "reads failed");
    assert!(reads.load(Ordering::Relaxed) > 0);
}

/// Turning read-only on answers only after a write already in flight has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_on_waits_for_writes_in_flight() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start("", &two_color_site(&blue, &green, ""));
    let url = p.url("/slow?ms=700");
    let done_at = Arc::new(Mutex::new(None::<Instant>));
    let d2 = done_at.clone();
    let post = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .body("edit")
            .send()
            .await
            .unwrap();
        *d2.lock().unwrap() = Some(Instant::now());
        r.status().as_u16()
    });
    wait_writes_in_flight(&p, 1).await;
    let (s, v) = control(
        &p.control,
        "PUT",
        "/v1/read-only",
        Some(r#"{"on":true,"reason":"backup"}"#),
        None,
    )
    .await;
    let answered = Instant::now();
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        post.await.unwrap(),
        200,
        "the write admitted before read-only must complete"
    );
    let done = done_at.lock().unwrap().unwrap();
    assert!(
        done <= answered + Duration::from_millis(50),
        "read-only on answered before the write in flight finished"
    );
    assert!(v["drained_ms"].as_u64().unwrap() > 100, "{v}");
}

/// When a write outlives `wait_s`, read-only stays on and the call says so (504, not a silent OK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_on_times_out_clearly() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start("", &two_color_site(&blue, &green, ""));
    let url = p.url("/slow?ms=3000");
    let post = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .body("edit")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    wait_writes_in_flight(&p, 1).await;
    let (s, v) = control(
        &p.control,
        "PUT",
        "/v1/read-only",
        Some(r#"{"on":true,"reason":"backup","wait_s":1}"#),
        None,
    )
    .await;
    assert_eq!(s, 504, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("still in flight"),
        "{v}"
    );
    assert_eq!(
        p.status()["sites"][0]["read_only"],
        true,
        "read-only stays on after the timeout"
    );
    assert_eq!(post.await.unwrap(), 200);
}

/// allow_paths and allow_clients pass; reads carry X-Read-Only: 1; the page has the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_page_allow_lists_and_header() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let extra = "[site.read_only]\nallow_paths = [\"/health\", \"/api/*\"]\nallow_clients = [\"10.0.0.0/8\"]\n";
    let sites = two_color_site(&blue, &green, "")
        .replace("\n[site.pools]", &format!("\n{extra}[site.pools]"));
    let p = Proxy::start("", &sites);
    p.ok(&[
        "read-only",
        "on",
        "--reason",
        "Upgrading <wiki>",
        "--retry-after",
        "120",
        "--site",
        "wiki",
    ]);
    let c = reqwest::Client::new();
    let r = c.post(p.url("/edit")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "120");
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Upgrading &lt;wiki&gt;") && page.contains("not saved"),
        "{page}"
    );
    let r = c
        .delete(p.url("/x"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "read_only");
    assert_eq!(v["retry_after_s"], 120);
    assert_eq!(c.post(p.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(c.post(p.url("/api/x")).send().await.unwrap().status(), 200);
    let h: serde_json::Value = c
        .get(p.url("/headers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["x-read-only"], "1");
    assert_eq!(c.head(p.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(
        c.request(reqwest::Method::OPTIONS, p.url("/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    p.ok(&["read-only", "off"]);
    assert_eq!(
        c.post(p.url("/edit"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let h: serde_json::Value = c
        .get(p.url("/headers"))
        .header("x-read-only", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        h.get("x-read-only").is_none(),
        "a client must not be able to fake X-Read-Only"
    );
    // Read-only needs a reason.
    let o = p.cli(&["read-only", "on", "--reason", " "]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("reason"));
}

/// A restart serves exactly what was active before it (state file wins over the config's `active`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_the_switched_color_and_read_only() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut p = Proxy::start("", &two_color_site(&blue, &green, ""));
    p.ok(&["switch", "wiki", "green"]);
    p.ok(&["read-only", "on", "--reason", "maint"]);
    assert_eq!(p.stop().code(), Some(0));
    let dir = p.dir.clone();
    let cfg = p.config.clone();
    let q = Proxy::spawn(None, &dir, &cfg, &[]).unwrap();
    let c = reqwest::Client::new();
    assert_eq!(text(&c, &q.url("/"), None).await, "green");
    assert_eq!(c.post(q.url("/")).send().await.unwrap().status(), 503);
    drop(q);
    drop(p);
}

/// A corrupt state file stops the start with a message naming it; never a silent fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_refuses_start() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let t = Proxy::tempdir();
    let state = t.path().join("state.json");
    std::fs::write(
        &state,
        b"{\"version\": 3, \"sites\": {\"wiki\": {\"active\": \"gre",
    )
    .unwrap();
    let toml = format!(
        "{}{}",
        proxy_section(t.path(), ""),
        two_color_site(&blue, &green, "")
    );
    let dir = t.path().to_path_buf();
    let err = match Proxy::start_in(Some(t), &dir, &toml) {
        Ok(_) => panic!("started with a corrupt state file"),
        Err(e) => e,
    };
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );
}

/// Preview hosts go to the idle color, for allow_clients only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_host_routes_to_idle_color() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sites = two_color_site(&blue, &green, "preview_hosts = [\"next.wiki.test\"]").replace(
        "\n[site.pools]",
        "\n[site.read_only]\nallow_clients = [\"127.0.0.1\"]\n[site.pools]",
    );
    let p = Proxy::start("", &sites);
    let c = reqwest::Client::new();
    let get = |host: &'static str| c.get(p.url("/")).header("host", host).send();
    assert_eq!(
        get("next.wiki.test").await.unwrap().text().await.unwrap(),
        "green"
    );
    p.ok(&["switch", "wiki", "green"]);
    assert_eq!(
        get("next.wiki.test").await.unwrap().text().await.unwrap(),
        "blue"
    );
    assert_eq!(
        get("wiki.test").await.unwrap().text().await.unwrap(),
        "green"
    );

    let sites = two_color_site(&blue, &green, "preview_hosts = [\"next.wiki.test\"]");
    let q = Proxy::start("", &sites);
    let r = c
        .get(q.url("/"))
        .header("host", "next.wiki.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "preview is for allow_clients only");
}

/// Writes since the switch are counted per color; rollback is refused after a write, allowed with
/// --discard-writes, and the guard survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_since_switch_guard_rollback() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    // The guard is the daemon's, for sites whose colors hold their own data (issue 15).
    let mut p = Proxy::start(
        "",
        &two_color_site(&blue, &green, "colors_hold_data = true"),
    );
    let o = p.cli(&["rollback", "wiki"]);
    assert_eq!(o.status.code(), Some(1), "nothing to roll back to yet");
    p.ok(&["switch", "wiki", "green"]);
    let c = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(
            c.post(p.url("/echo"))
                .body("w")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    c.get(p.url("/")).send().await.unwrap();
    let st = p.status();
    assert_eq!(st["sites"][0]["writes_since_switch"]["green"], 3);
    let o = p.cli(&["rollback", "wiki"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("3 write(s)") && e.contains("--discard-writes"),
        "{e}"
    );
    // The guard survives a restart (the exact count does not; the mark does). The first write
    // rings the persister at once; within its 5 s retry tick would mean the ring was lost.
    wait_until(
        Duration::from_secs(2),
        "the first write to be recorded in the state file",
        || {
            std::fs::read_to_string(p.dir.join("state.json"))
                .ok()
                .filter(|s| s.contains("\"written_since_switch\": true"))
        },
    );
    p.stop();
    let q = Proxy::spawn(None, &p.dir.clone(), &p.config.clone(), &[]).unwrap();
    let o = q.cli(&["rollback", "wiki"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "rollback after restart must still be refused"
    );
    let out = q.ok(&["rollback", "wiki", "--discard-writes"]);
    assert!(out.contains("blue"), "{out}");
    assert_eq!(text(&c, &q.url("/"), None).await, "blue");
    // A clean switch back and forth without writes can be rolled back freely.
    q.ok(&["switch", "wiki", "green"]);
    q.ok(&["rollback", "wiki"]);
}

/// Upgraded (WebSocket) connections on the old color are closed after the drain time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drains_after_switch() {
    use futures_util::{SinkExt, StreamExt};
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start("", &two_color_site(&blue, &green, ""));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.http.unwrap()))
        .await
        .unwrap();
    ws.send("hello".into()).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "hello"
    );
    let (s, _) = control(
        &p.control,
        "POST",
        "/v1/sites/wiki/switch",
        Some(r#"{"to":"green","drain_s":1}"#),
        None,
    )
    .await;
    assert_eq!(s, 200);
    // Still open during the drain.
    ws.send("still".into()).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "still"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the old-color WebSocket was not closed after the drain time"
    );
}
