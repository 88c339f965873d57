//! Health checks, passive failure handling, metrics and the status page (issue 4).

use std::time::{Duration, Instant};

use crate::support::*;

const HEALTH: &str = "[site.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";

fn with_health(s: String) -> String {
    s.replace("\n[site.pools]", &format!("\n{HEALTH}[site.pools]"))
}

async fn metrics(p: &Proxy) -> String {
    p.metrics_get("/metrics").await
}

/// The value of one exposition line (`name{labels} value`), 0 when absent.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A backend that dies is marked down after `fall` failed checks and up again after `rise`
/// good ones; the state is visible in status and metrics; no GET fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_eject_and_recover_within_rise_fall() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let green = Backend::start("green").await;
    let p = Proxy::start(
        "",
        &with_health(site(
            "wiki",
            &["127.0.0.1"],
            &[b1.addr, b2.addr],
            &[green.addr],
            "",
        )),
    );
    let c = reqwest::Client::new();
    let addr1 = b1.addr;
    b1.kill();
    let killed = Instant::now();
    // No GET fails while one of two backends is dying (passive ejection + one retry on the other).
    for _ in 0..50 {
        let r = c.get(p.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "b2");
    }
    wait_until(Duration::from_secs(5), "b1 to be marked down", || {
        let st = p.status();
        let pool = st["sites"][0]["pools"]["blue"].as_array().unwrap().clone();
        pool.iter()
            .find(|b| b["addr"] == addr1.to_string() && b["healthy"] == false)
            .map(|_| ())
    });
    let down_after = killed.elapsed();
    // fall = 2 at 100 ms: about 200-400 ms; allow scheduling slack, not seconds.
    assert!(
        down_after < Duration::from_secs(3),
        "took {down_after:?} to mark down"
    );
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            &format!("switchyard_backend_up{{site=\"wiki\",color=\"blue\",backend=\"{addr1}\"}}")
        ),
        0.0,
        "{m}"
    );
    // Bring it back on the same port.
    let b1 = Backend::start_on(&addr1.to_string(), "b1").await;
    let back = Instant::now();
    wait_until(Duration::from_secs(5), "b1 to be healthy again", || {
        let st = p.status();
        let pool = st["sites"][0]["pools"]["blue"].as_array().unwrap().clone();
        pool.iter()
            .find(|b| {
                b["addr"] == addr1.to_string() && b["healthy"] == true && b["ejected"] == false
            })
            .map(|_| ())
    });
    assert!(back.elapsed() < Duration::from_secs(3));
    wait_until_async(Duration::from_secs(5), "traffic to reach b1 again", || {
        let c = c.clone();
        let u = p.url("/");
        async move { (c.get(u).send().await.ok()?.text().await.ok()? == "b1").then_some(()) }
    })
    .await;
    assert!(b1.hits() > 0);
    wait_until(
        Duration::from_secs(5),
        "a log line for the transition",
        || p.stderr_text().contains("backend is down").then_some(()),
    );
    let logs = p.stderr_text();
    assert_eq!(
        logs.matches("backend is down").count(),
        1,
        "state changes are logged once"
    );
}

/// A write is never retried on another backend: the dead one refuses, the client gets 502, and
/// the live one never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_never_retried() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let p = Proxy::start(
        "",
        &site("wiki", &["127.0.0.1"], &[b1.addr, b2.addr], &[], ""),
    );
    b1.kill();
    let c = reqwest::Client::new();
    let mut bad = 0;
    for _ in 0..6 {
        let r = c.post(p.url("/echo")).body("w").send().await.unwrap();
        if r.status() == 502 {
            bad += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    // At most one POST hit the dead backend before it was ejected; it was not retried.
    assert!(bad <= 1, "{bad} POSTs failed");
    assert_eq!(
        b2.seen.writes.load(std::sync::atomic::Ordering::SeqCst),
        6 - bad,
        "a failed POST was retried"
    );
}

/// A switch to a color whose backends are all down is refused (409) unless forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_refused_to_all_down_color() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start(
        "",
        &with_health(site(
            "wiki",
            &["127.0.0.1"],
            &[blue.addr],
            &[green.addr],
            "",
        )),
    );
    green.kill();
    wait_until(Duration::from_secs(5), "green to be marked down", || {
        (p.status()["sites"][0]["pools"]["green"][0]["healthy"] == false).then_some(())
    });
    let o = p.cli(&["switch", "wiki", "green"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("healthy"));
    assert_eq!(p.status()["sites"][0]["active"], "blue");
}

/// Metrics move as expected under a known number of requests; /healthz answers; the status page
/// shows the live state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_page() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start(
        "",
        &site("wiki", &["127.0.0.1"], &[blue.addr], &[green.addr], ""),
    );
    let c = reqwest::Client::new();
    let before = metrics(&p).await;
    for _ in 0..7 {
        assert_eq!(c.get(p.url("/")).send().await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(
            c.get(p.url("/status/500")).send().await.unwrap().status(),
            500
        );
    }
    assert_eq!(
        c.get(p.url("/"))
            .header("host", "unknown.test")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    p.ok(&["read-only", "on", "--reason", "maintenance window"]);
    assert_eq!(c.post(p.url("/")).send().await.unwrap().status(), 503);
    p.ok(&["switch", "wiki", "green"]);
    let after = metrics(&p).await;
    let d = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(
        d("switchyard_requests_total{class=\"2xx\",color=\"blue\",site=\"wiki\"}"),
        7.0,
        "{after}"
    );
    // three 500s from the backend and the read-only 503
    assert_eq!(
        d("switchyard_requests_total{class=\"5xx\",color=\"blue\",site=\"wiki\"}"),
        4.0,
        "{after}"
    );
    assert_eq!(d("switchyard_unrouted_requests_total"), 1.0, "{after}");
    // ten bodies of "blue" (4 bytes each), plus the read-only page
    assert!(
        d("switchyard_response_bytes_total{site=\"wiki\"}") > 40.0,
        "{after}"
    );
    assert_eq!(
        d("switchyard_read_only_rejected_writes_total{site=\"wiki\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        d("switchyard_switches_total{site=\"wiki\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, "switchyard_read_only{site=\"wiki\"}"),
        1.0,
        "{after}"
    );
    assert!(
        metric(
            &after,
            "switchyard_request_duration_seconds_count{color=\"blue\",site=\"wiki\"}"
        ) >= 10.0,
        "{after}"
    );
    assert!(after.contains("switchyard_tls_handshakes_total"));
    let h = reqwest::get(format!("http://{}/healthz", p.metrics.unwrap()))
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let page = p.metrics_get("/").await;
    assert!(
        page.contains("wiki") && page.contains("green") && page.contains("maintenance window"),
        "{page}"
    );
    assert!(page.contains(&blue.addr.to_string()) && page.contains(&green.addr.to_string()));
}
