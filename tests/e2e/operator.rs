//! Conventions operators expect (issue 21): JSON access logs, HSTS per site, JSON error pages
//! for API paths. The real binary, real sockets.

use std::time::Duration;

use crate::edge::{raw, tls_connect};
use crate::support::*;
use tokio_rustls::rustls;

/// See: issue 21. `access_log_format = "json"`: one JSON object a line, the text line's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_json_access_log() {
    let a = Backend::start("a").await;
    let t = Proxy::tempdir();
    let log = t.path().join("access.json");
    let toml = format!(
        "{}{}",
        proxy_section(
            t.path(),
            &format!(
                "access_log = \"{}\"\naccess_log_format = \"json\"",
                log.display()
            )
        ),
        site("a", &["a.test"], &[a.addr], &[], "")
    );
    let dir = t.path().to_path_buf();
    let p = Proxy::start_in(Some(t), &dir, &toml).unwrap();
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"GET /x?q=%22a%22 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    assert_eq!(r.response().await.status(), 200);
    let line = wait_until(Duration::from_secs(5), "the access-log line", || {
        std::fs::read_to_string(&log)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
    });
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["host"], "a.test");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/x?q=%22a%22");
    assert_eq!(v["status"], 200);
    assert_eq!(v["color"], "blue");
    assert_eq!(v["backend"], a.addr.to_string());
    assert_eq!(v["complete"], true);
    assert!(
        v["seconds"].as_f64().is_some() && v["time"].as_str().is_some(),
        "{v}"
    );
}

/// See: issue 21. `hsts` on a site: added to its HTTPS responses (fast path and HTTP/2, the
/// backend's own replaced), never to plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_hsts_on_https_only() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "",
        &site(
            "a",
            &["a.test"],
            &[a.addr],
            &[],
            "hsts = \"max-age=31536000; includeSubDomains\"",
        ),
    );
    let want = "max-age=31536000; includeSubDomains";
    // HTTPS, HTTP/1.1 (the fast path)
    let mut s = crate::edge::Raw::new(
        tls_connect(
            p.https.unwrap(),
            "a.test",
            &[b"http/1.1"],
            &[&rustls::version::TLS13],
        )
        .await
        .stream,
    );
    s.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let resp = s.response().await;
    assert_eq!(
        resp.header("strict-transport-security").as_deref(),
        Some(want)
    );
    // HTTPS, HTTP/2
    let c = client(&p, &["a.test"]);
    let resp = c.get(p.surl("a.test", "/")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["strict-transport-security"], want);
    // plain HTTP: never
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(r
        .response()
        .await
        .header("strict-transport-security")
        .is_none());
}

/// See: issue 21. `json_errors`: the edge's error pages under these paths are JSON even when
/// the client does not ask for it (MediaWiki's api.php clients rarely send Accept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_json_error_pages_for_api_paths() {
    let p = Proxy::start(
        "",
        &site(
            "a",
            &["a.test"],
            &["127.0.0.1:1".parse().unwrap()],
            &[],
            "json_errors = [\"/api.php\", \"/api/\"]",
        ),
    );
    for (path, json) in [
        ("/api.php?action=query", true),
        ("/api/x", true),
        ("/index.php", false),
    ] {
        let mut r = raw(p.http.unwrap()).await;
        r.send(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .await;
        let resp = r.response().await;
        assert_eq!(resp.status(), 502, "{path}: the backend refuses");
        let ct = resp.header("content-type").unwrap_or_default();
        assert_eq!(ct.starts_with("application/json"), json, "{path}: {ct}");
        if json {
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            assert_eq!(v["error"], "bad_gateway");
        }
    }
}

/// See: issue 21. Maintenance mode: every request of the site, reads too, gets the 503 page with
/// the message and Retry-After (HTML, the site's own page, or JSON); allow_paths and
/// allow_clients pass; the backend sees nothing else; audited; survives a restart; off serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_maintenance_mode() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let t = Proxy::tempdir();
    std::fs::write(
        t.path().join("down.html"),
        "<html><body>Back soon: {{message}}</body></html>",
    )
    .unwrap();
    let toml = format!(
        "{}{}{}",
        proxy_section(t.path(), ""),
        site(
            "a",
            &["a.test"],
            &[a.addr],
            &[],
            "[site.maintenance]\nallow_paths = [\"/health\"]\nallow_clients = [\"192.0.2.0/24\"]"
        ),
        site(
            "b",
            &["b.test"],
            &[b.addr],
            &[],
            "[site.maintenance]\npage = \"down.html\""
        )
    );
    let dir = t.path().to_path_buf();
    let mut p = Proxy::start_in(Some(t), &dir, &toml).unwrap();
    let get = |host: &'static str, path: &'static str, accept: &'static str| {
        let addr = p.http.unwrap();
        async move {
            let mut r = raw(addr).await;
            r.send(
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            r.response().await
        }
    };
    assert_eq!(get("a.test", "/", "*/*").await.status(), 200);
    let out = p.ok(&[
        "maintenance",
        "on",
        "--message",
        "moving <db>",
        "--retry-after",
        "120",
    ]);
    assert!(out.contains("maintenance ON for a, b"), "{out}");
    let seen_before = a.seen.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = get("a.test", "/", "text/html").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("120"));
    let html = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        html.contains("moving &lt;db&gt;"),
        "escaped message: {html}"
    );
    let r = get("a.test", "/x", "application/json").await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["error"].as_str(), v["message"].as_str()),
        (Some("maintenance"), Some("moving <db>"))
    );
    assert_eq!(
        get("a.test", "/health", "*/*").await.status(),
        200,
        "allow_paths pass"
    );
    let r = get("b.test", "/", "text/html").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "<html><body>Back soon: moving &lt;db&gt;</body></html>"
    );
    assert_eq!(
        a.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
        seen_before + 1,
        "only the allowed /health reached the backend"
    );
    let st = p.status();
    assert_eq!(st["maintenance"]["message"], "moving <db>");
    assert_eq!(st["sites"][0]["maintenance"], true);
    let audit = std::fs::read_to_string(p.dir.join("audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"maintenance on\"")),
        "{audit}"
    );
    // A restart keeps it on.
    p.stop();
    let mut p = Proxy::spawn(p.take_tmp(), &dir, &dir.join("switchyard.toml"), &[]).unwrap();
    assert_eq!(get_on(&p, "a.test").await, 503);
    p.ok(&["maintenance", "off"]);
    assert_eq!(get_on(&p, "a.test").await, 200);
    let audit = std::fs::read_to_string(p.dir.join("audit.log")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"maintenance off\"")),
        "{audit}"
    );
    assert!(
        p.cli(&["maintenance", "on", "--message", " "])
            .status
            .code()
            == Some(1)
    );
    p.stop();
}

async fn get_on(p: &Proxy, host: &str) -> u16 {
    let mut r = raw(p.http.unwrap()).await;
    r.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await;
    r.response().await.status()
}

/// See: issue 21. Shell completions and the man page come from the clap definitions.
#[test]
fn issue_21_completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let o = std::process::Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("read-only") && text.contains("maintenance"),
            "{shell}"
        );
    }
    let o = std::process::Command::new(BIN).arg("man").output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains(".TH switchyard 1"));
    // The committed copy follows the CLI: `switchyard man > docs/switchyard.1` after changing it.
    let committed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/switchyard.1"))
        .unwrap_or_default();
    assert!(
        committed == o.stdout,
        "docs/switchyard.1 is not what `switchyard man` prints; run `switchyard man > docs/switchyard.1`"
    );
}

/// See: issue 22. The binary runs on mimalloc with its arenas committed as they are used (the
/// idle RSS): that option is set by its number in mimalloc's list, so a mimalloc whose list
/// changed fails here rather than silently doubling the memory.
#[test]
fn issue_22_allocator_commits_arenas_on_demand() {
    let o = std::process::Command::new(BIN)
        .arg("--version")
        .env("MIMALLOC_VERBOSE", "1")
        .output()
        .unwrap();
    assert!(o.status.success());
    let verbose = String::from_utf8_lossy(&o.stderr);
    assert!(
        verbose.contains("option 'arena_eager_commit': 0"),
        "mimalloc's options at start:\n{verbose}"
    );
}

/// Headless Chromium from Debian, if it is there (required with CI=true).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true: chromium is required for the dashboard test (apt-get install chromium)"
        );
        eprintln!("SKIPPED: the dashboard test needs chromium (apt-get install chromium)");
    }
    found
}

/// The page as Chromium's DOM after loading it (a real browser, so the HTML must parse).
fn dump_dom(browser: &str, url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", dir.path().display()))
        .args(["--virtual-time-budget=3000", "--dump-dom", url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// See: issue 21. The dashboard, loaded in headless Chromium: the site, its active color and
/// backends with their health, the traffic chart, the recent changes from the audit log, the
/// read-only banner, everything escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_dashboard_in_a_browser() {
    let Some(browser) = chromium() else { return };
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "",
        &site(
            "wiki",
            &["wiki.test"],
            &[a.addr],
            &["127.0.0.1:1".parse().unwrap()],
            "",
        ),
    );
    for _ in 0..20 {
        let mut r = raw(p.http.unwrap()).await;
        r.send(b"GET / HTTP/1.1\r\nHost: wiki.test\r\n\r\n").await;
        assert_eq!(r.response().await.status(), 200);
    }
    p.ok(&[
        "read-only",
        "on",
        "--reason",
        "<script>alert(1)</script> moving",
    ]);
    let url = format!("http://{}/", p.metrics.unwrap());
    let dom = dump_dom(browser, &url);
    assert!(dom.contains("wiki") && dom.contains("wiki.test"), "{dom}");
    assert!(dom.contains("● blue"), "the active color: {dom}");
    assert!(dom.contains(&a.addr.to_string()), "the blue backend: {dom}");
    assert!(dom.contains("127.0.0.1:1"), "the green backend: {dom}");
    assert!(dom.contains("<svg"), "the traffic chart: {dom}");
    assert!(dom.contains("Read-only"), "the banner: {dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt; moving") && !dom.contains("<script>"),
        "escaped: {dom}"
    );
    assert!(
        dom.contains("Recent changes") && dom.contains("read-only on"),
        "{dom}"
    );
}
