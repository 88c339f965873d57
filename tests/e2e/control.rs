//! The control socket: bad input, peers and roles, If-Match, reload, audit (issue 3); the write
//! guard in the daemon and switches that probe without the lock (issue 15).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

async fn proxy(extra: &str) -> (Proxy, Backend, Backend) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start(
        extra,
        &site(
            "wiki",
            &["wiki.test", "127.0.0.1"],
            &[blue.addr],
            &[green.addr],
            "",
        ),
    );
    (p, blue, green)
}

/// Every bad call gets a 4xx with {"error": ...}; nothing changes, nothing crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let (p, _b, _g) = proxy("").await;
    let ctl = &p.control;
    let v0 = p.status()["version"].as_u64().unwrap();
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/v1/sites/wiki/switch", Some("{not json"), 400),
        (
            "POST",
            "/v1/sites/wiki/switch",
            Some(r#"{"to":"purple"}"#),
            400,
        ),
        (
            "POST",
            "/v1/sites/wiki/switch",
            Some(r#"{"to":"green","colour":1}"#),
            400,
        ),
        (
            "POST",
            "/v1/sites/wiki/switch",
            Some(r#"{"to":"green","drain_s":-1}"#),
            400,
        ),
        (
            "POST",
            "/v1/sites/nope/switch",
            Some(r#"{"to":"green"}"#),
            404,
        ),
        (
            "PUT",
            "/v1/sites/wiki/pools/purple",
            Some(r#"{"backends":[]}"#),
            404,
        ),
        (
            "PUT",
            "/v1/sites/wiki/pools/green",
            Some(r#"{"backends":["not-an-addr"]}"#),
            400,
        ),
        (
            "PUT",
            "/v1/sites/wiki/pools/blue",
            Some(r#"{"backends":[]}"#),
            409,
        ),
        ("PUT", "/v1/read-only", Some(r#"{"on":true}"#), 400),
        (
            "PUT",
            "/v1/read-only",
            Some(r#"{"on":true,"reason":"x","sites":["nope"]}"#),
            404,
        ),
        (
            "PUT",
            "/v1/read-only",
            Some(r#"{"on":true,"reason":"x","sites":[]}"#),
            400,
        ),
        ("DELETE", "/v1/status", None, 405),
        ("GET", "/v1/sites/wiki/switch", None, 405),
        ("GET", "/v2/anything", None, 404),
    ];
    for (m, uri, body, want) in cases {
        let (s, v) = control(ctl, m, uri, *body, None).await;
        assert_eq!(s, *want, "{m} {uri} {body:?} → {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{m} {uri}: no error message: {v}"
        );
    }
    let big = format!(
        "{{\"to\":\"green\",\"pad\":\"{}\"}}",
        "x".repeat(100 * 1024)
    );
    let (s, _) = control(ctl, "POST", "/v1/sites/wiki/switch", Some(&big), None).await;
    assert_eq!(s, 413);
    let st = p.status();
    assert_eq!(
        st["version"].as_u64().unwrap(),
        v0,
        "a refused call changed the state"
    );
    assert_eq!(st["sites"][0]["active"], "blue");
    assert_eq!(st["sites"][0]["read_only"], false);
}

/// Two admins do not overwrite each other: a change with a stale If-Match gets 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_detects_a_moved_state() {
    let (p, _b, _g) = proxy("").await;
    let v = p.status()["version"].as_u64().unwrap();
    let (s, r) = control(
        &p.control,
        "POST",
        "/v1/sites/wiki/switch",
        Some(r#"{"to":"green"}"#),
        Some(v),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = control(
        &p.control,
        "POST",
        "/v1/sites/wiki/switch",
        Some(r#"{"to":"blue"}"#),
        Some(v),
    )
    .await;
    assert_eq!(s, 412, "{r}");
    assert!(r["error"].as_str().unwrap().contains("moved on"), "{r}");
    let o = p.cli(&["switch", "wiki", "blue", "--if-match", &v.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(p.status()["sites"][0]["active"], "green");
}

fn as_nobody(p: &Proxy, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--control",
        ])
        .arg(&p.control)
        .args(args)
        .output()
        .expect("setpriv (util-linux) is needed for the peer tests")
}

fn open_socket_to_all(p: &Proxy) {
    std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&p.control, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// The socket is 0660; a peer that is not root, the owner or in control_allow is refused and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_peer_uid_is_refused() {
    let (p, _b, _g) = proxy("").await;
    let mode = std::fs::metadata(&p.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // File permissions alone keep nobody out...
    std::fs::set_permissions(&p.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = as_nobody(&p, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // ...and with the file opened up, SO_PEERCRED still does.
    open_socket_to_all(&p);
    let o = as_nobody(&p, &["switch", "wiki", "green"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("control_allow"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(p.status()["sites"][0]["active"], "blue");
    wait_until(Duration::from_secs(5), "the refusal to be logged", || {
        p.stderr_text()
            .contains("control peer refused")
            .then_some(())
    });
}

/// Roles: a `read` peer sees status but cannot switch; an `operate` peer can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_read_and_operate() {
    let (p, _b, _g) = proxy("control_allow = { \"uid:65534\" = \"read\" }").await;
    open_socket_to_all(&p);
    let o = as_nobody(&p, &["status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_nobody(&p, &["switch", "wiki", "green"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("read"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (q, _b2, _g2) = proxy("control_allow = { \"gid:65534\" = \"operate\" }").await;
    open_socket_to_all(&q);
    let o = as_nobody(&q, &["switch", "wiki", "green"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The audit log names the peer.
    let audit = std::fs::read_to_string(q.dir.join("audit.log")).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(line["peer_uid"], 65534);
    assert!(line["action"]
        .as_str()
        .unwrap()
        .contains("switch wiki blue->green"));
    assert_eq!(line["before"]["active"], serde_json::Value::Null);
    assert_eq!(line["after"]["active"], "green");
}

/// Reload: a bad config is refused with every problem and the old one keeps serving; a good one
/// applies (new hosts route) — by the CLI and by SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_bad_config_and_applies_good_one() {
    let (p, blue, green) = proxy("").await;
    let good = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, good.replace("[[site]]", "bogus = 1\n[[site]]")).unwrap();
    let o = p.cli(&["reload"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("switchyard.toml:") && e.contains("bogus"), "{e}");
    let c = reqwest::Client::new();
    assert_eq!(text(&c, &p.url("/"), Some("wiki.test")).await, "blue");
    // Good config with a new host: applies.
    std::fs::write(
        &p.config,
        good.replace("\"wiki.test\"", "\"wiki.test\", \"new.test\""),
    )
    .unwrap();
    let out = p.ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert_eq!(text(&c, &p.url("/"), Some("new.test")).await, "blue");
    // SIGHUP does the same.
    std::fs::write(
        &p.config,
        good.replace("\"wiki.test\"", "\"wiki.test\", \"hup.test\""),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    wait_until_async(Duration::from_secs(5), "SIGHUP to reload", || {
        let r = c.get(p.url("/")).header("host", "hup.test").send();
        async move { r.await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    drop((blue, green));
}

/// Client errors say what to try; usage errors exit 2.
#[test]
fn cli_errors_and_exit_codes() {
    let o = Command::new(BIN)
        .args(["--control", "/nonexistent/control.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("switchyard serve") && e.contains("/nonexistent/control.sock"),
        "{e}"
    );
    let o = Command::new(BIN).args(["switch"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(BIN).args(["frobnicate"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// Pools set through the API route at once and survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_set_applies_and_persists() {
    let (mut p, _b, _g) = proxy("").await;
    let other = Backend::start("green2").await;
    p.ok(&["pool", "set", "wiki", "green", &other.addr.to_string()]);
    p.ok(&["switch", "wiki", "green"]);
    let c = reqwest::Client::new();
    assert_eq!(text(&c, &p.url("/"), None).await, "green2");
    p.stop();
    let q = Proxy::spawn(None, &p.dir.clone(), &p.config.clone(), &[]).unwrap();
    assert_eq!(text(&c, &q.url("/"), None).await, "green2");
}

/// New certificates apply to new handshakes after `reload`; live connections are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_certificates_to_new_handshakes() {
    let (p, _b, _g) = proxy("").await;
    let https = p.https.unwrap();
    let before =
        crate::edge::tls_connect(https, "reload.test", &[b"http/1.1"], crate::edge::BOTH).await;
    assert!(
        !before.names.contains(&"reload.test".to_string()),
        "{:?}",
        before.names
    );
    make_cert(&p.dir, "reload", &["reload.test"]);
    let out = p.ok(&["reload"]);
    assert!(out.contains("reload.test"), "{out}");
    let after =
        crate::edge::tls_connect(https, "reload.test", &[b"http/1.1"], crate::edge::BOTH).await;
    assert_eq!(after.names, vec!["reload.test".to_string()]);
    // A broken pair is refused with the file named; the old certificates keep serving.
    std::fs::write(p.dir.join("certs/broken.crt"), "not a certificate").unwrap();
    std::fs::write(p.dir.join("certs/broken.key"), "not a key").unwrap();
    let o = p.cli(&["reload"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("broken"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let still =
        crate::edge::tls_connect(https, "reload.test", &[b"http/1.1"], crate::edge::BOTH).await;
    assert_eq!(still.names, vec!["reload.test".to_string()]);
}

/// The nice value of each of the daemon's threads, by thread name (/proc/PID/task/*/stat: the
/// name is in parentheses, nice is the 19th field).
fn thread_nice(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(t.unwrap().path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        // After ") ": state is field 3, so nice (field 19) is the 17th from there.
        let nice = stat[close + 2..]
            .split(' ')
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        out.push((name, nice));
    }
    out
}

/// The control socket is served by its own thread, at the edge workers' priority (niced lower, a
/// switch waited for a CPU under load: benches/README.md, change 12), and a switch made there
/// applies to the very next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_thread_apart_at_the_edge_workers_priority() {
    let (p, _b, green) = proxy("").await;
    let pid = p.child.as_ref().unwrap().id();
    let (s, r) = control(
        &p.control,
        "POST",
        "/v1/sites/wiki/switch",
        Some(r#"{"to":"green"}"#),
        None,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let c = reqwest::Client::new();
    assert_eq!(text(&c, &p.url("/"), Some("wiki.test")).await, green.name);
    let threads = thread_nice(pid);
    let nice_of = |n: &str| threads.iter().find(|(t, _)| t == n).map(|(_, v)| *v);
    let control = nice_of("control").unwrap_or_else(|| panic!("no control thread: {threads:?}"));
    let edge = nice_of("edge-0").unwrap_or_else(|| panic!("no edge worker: {threads:?}"));
    assert_eq!(control, edge, "{threads:?}");
}

/// The last line of the audit log.
fn last_audit(p: &Proxy) -> serde_json::Value {
    let audit = std::fs::read_to_string(p.dir.join("audit.log")).unwrap();
    serde_json::from_str(audit.lines().last().unwrap()).unwrap()
}

/// The rollback guard is the daemon's: on a site whose colors hold their own data, a switch away
/// from a color that took writes is refused with 409 and the count unless `discard_writes`, and
/// both are audited. A site whose colors share their data is not guarded.
// See: issue 15
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_15_daemon_refuses_a_switch_that_would_lose_writes() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start(
        "",
        &site(
            "wiki",
            &["wiki.test", "127.0.0.1"],
            &[blue.addr],
            &[green.addr],
            "colors_hold_data = true",
        ),
    );
    let switch = |body: &'static str| {
        control(
            &p.control,
            "POST",
            "/v1/sites/wiki/switch",
            Some(body),
            None,
        )
    };
    let (s, r) = switch(r#"{"to":"green"}"#).await;
    assert_eq!(s, 200, "blue took no writes: {r}");
    let c = reqwest::Client::new();
    let w = c.post(p.url("/echo")).body("w").send().await.unwrap();
    assert_eq!(w.status(), 200);
    assert_eq!(
        green.seen.writes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let (s, r) = switch(r#"{"to":"blue"}"#).await;
    assert_eq!(s, 409, "{r}");
    assert_eq!(r["code"], "writes_would_be_lost", "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("1 write(s)") && e.contains("discard_writes"),
        "{e}"
    );
    assert_eq!(p.status()["sites"][0]["active"], "green");
    let a = last_audit(&p);
    assert!(
        a["action"]
            .as_str()
            .unwrap()
            .contains("green->blue refused"),
        "{a}"
    );
    assert_eq!(a["discard_writes"], false, "{a}");
    assert_eq!(a["writes_since_switch"], 1, "{a}");

    let (s, r) = switch(r#"{"to":"blue","discard_writes":true}"#).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(p.status()["sites"][0]["active"], "blue");
    let a = last_audit(&p);
    assert_eq!(a["action"], "switch wiki green->blue", "{a}");
    assert_eq!(a["discard_writes"], true, "{a}");
    assert_eq!(a["writes_since_switch"], 1, "{a}");

    // The CLI: `switch` says how to override, and `--discard-writes` does.
    let w = c.post(p.url("/echo")).body("w").send().await.unwrap();
    assert_eq!(w.status(), 200);
    let o = p.cli(&["switch", "wiki", "green"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("1 write(s)") && e.contains("--discard-writes"),
        "{e}"
    );
    p.ok(&["switch", "wiki", "green", "--discard-writes"]);

    // Colors that share their data (no [site.release], no colors_hold_data): no guard.
    let (q, _b, _g) = proxy("").await;
    let w = c.post(q.url("/echo")).body("w").send().await.unwrap();
    assert_eq!(w.status(), 200);
    let (s, r) = control(
        &q.control,
        "POST",
        "/v1/sites/wiki/switch",
        Some(r#"{"to":"green"}"#),
        None,
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(last_audit(&q)["writes_since_switch"], 1);
}

/// A backend that reads request heads and never answers. Counts the heads whose Host is `host`
/// (the switch's probes send the site's first host; the health checker sends `localhost`).
async fn silent_backend(host: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if text.contains(&format!("host: {host}\r\n")) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                // Hold the connection, unanswered, until the peer gives up.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    (addr, heads)
}

/// A switch probes its target without the control plane's lock: while it waits on a backend that
/// never answers, `status` (on a new connection) and other changes are answered at once; a change
/// that lands meanwhile makes a switch sent with If-Match fail with 412 after its probes.
// See: issue 15
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_15_status_answers_while_a_switch_probes() {
    let blue = Backend::start("blue").await;
    let (green, probes) = silent_backend("wiki.test").await;
    let p = Proxy::start(
        "",
        &site(
            "wiki",
            &["wiki.test", "127.0.0.1"],
            &[blue.addr],
            &[green],
            "[site.health]\npath = \"/health\"\ninterval = \"30s\"\ntimeout = \"3s\"\n",
        ),
    );
    let probing = |n: usize| {
        let probes = probes.clone();
        wait_until_async(
            Duration::from_secs(5),
            "the switch to probe green",
            move || {
                let probes = probes.clone();
                async move { (probes.load(Ordering::SeqCst) >= n).then_some(()) }
            },
        )
    };

    let started = Instant::now();
    let ctl = p.control.clone();
    let sw = tokio::spawn(async move {
        control(
            &ctl,
            "POST",
            "/v1/sites/wiki/switch",
            Some(r#"{"to":"green"}"#),
            None,
        )
        .await
    });
    probing(1).await;
    let (s, st) = tokio::time::timeout(
        Duration::from_secs(1),
        control(&p.control, "GET", "/v1/status", None, None),
    )
    .await
    .expect("status must answer within 1 s while a switch probes");
    assert_eq!(s, 200, "{st}");
    assert!(
        !sw.is_finished(),
        "the switch was still probing when status answered"
    );
    let (s, r) = sw.await.unwrap();
    assert_eq!(s, 409, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("no answer within"),
        "{r}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the probe waited its timeout"
    );

    // If-Match is checked again after the probes: a change made while they run wins.
    let v = st["version"].as_u64().unwrap();
    let ctl = p.control.clone();
    let sw = tokio::spawn(async move {
        let body = Some(r#"{"to":"green","force":true}"#);
        control(&ctl, "POST", "/v1/sites/wiki/switch", body, Some(v)).await
    });
    probing(2).await;
    let pool = format!("{{\"backends\":[\"{}\"]}}", blue.addr);
    let (s, r) = tokio::time::timeout(
        Duration::from_secs(1),
        control(
            &p.control,
            "PUT",
            "/v1/sites/wiki/pools/blue",
            Some(&pool),
            None,
        ),
    )
    .await
    .expect("a pool change must not wait for a switch's probes");
    assert_eq!(s, 200, "{r}");
    let (s, r) = sw.await.unwrap();
    assert_eq!(s, 412, "{r}");
    assert_eq!(p.status()["sites"][0]["active"], "blue");
}
