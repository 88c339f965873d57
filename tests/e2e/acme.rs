//! Certificates from a real ACME CA on 127.0.0.1 (issue 21): Pebble, with pebble-challtestsrv as
//! its DNS (tests/support/pebble.rs). First issuance by TLS-ALPN-01 and by HTTP-01, a restart that
//! reuses the stored certificate, renewal, the CA down, a host that cannot be validated. Each
//! test has its own CA and proxy; readiness is waited for with deadlines, never slept for.
//! Without pebble (and CI unset) they print SKIPPED; with CI=true they are required.

use std::path::Path;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::support::pebble::{self, free_port, served, served_alpn, Options, Pebble};
use crate::support::*;

/// Issuance, from the proxy's start to the certificate served.
const ISSUE: Duration = Duration::from_secs(30);

/// The proxy's config: fixed ports (Pebble validates on them), `[acme]` at Pebble.
fn config(dir: &Path, http: u16, https: u16, ca: &Pebble, acme: &str, sites: &str) -> String {
    format!(
        "[proxy]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\nmetrics = \"127.0.0.1:0\"\ncerts = \"{d}/certs\"\ncontrol = \"{d}/control.sock\"\nstate = \"{d}/state.json\"\n\n[acme]\ndirectory = \"{}\"\nca_certs = \"{}\"\ncontact = [\"mailto:ops@wiki.test\"]\n{acme}\n{sites}",
        ca.directory,
        ca.ca_pem.display(),
        d = dir.display()
    )
}

fn acme_site(name: &str, host: &str, backend: std::net::SocketAddr) -> String {
    format!("\n[[site]]\nname = \"{name}\"\nhosts = [\"{host}\"]\nacme = true\n[site.pools]\nblue = [\"{backend}\"]\n")
}

/// A CA, and a proxy in front of one backend, set up for ACME.
struct Setup {
    ca: Pebble,
    p: Proxy,
    root: CertificateDer<'static>,
    _backend: Backend,
}

async fn setup(
    validity_s: Option<u64>,
    acme: &str,
    sites: impl Fn(std::net::SocketAddr) -> String,
) -> Option<Setup> {
    if !pebble::available() {
        return None;
    }
    let backend = Backend::start("wiki-app").await;
    let t = Proxy::tempdir();
    let dir = t.path().to_path_buf();
    let (http, https) = (free_port(), free_port());
    let ca = Pebble::start(
        &dir,
        Options {
            http_port: http,
            tls_port: https,
            validity_s,
        },
    )
    .await;
    let toml = config(&dir, http, https, &ca, acme, &sites(backend.addr));
    let p = Proxy::start_in(Some(t), &dir, &toml)
        .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
    let root = ca.root().await;
    Some(Setup {
        ca,
        p,
        root,
        _backend: backend,
    })
}

impl Setup {
    /// Waits until `host` is served a certificate that verifies against Pebble's root (and is
    /// not `other_than`); returns its serial.
    async fn issued(&self, host: &str, other_than: Option<&str>, within: Duration) -> String {
        let addr = self.p.https.unwrap();
        let what = format!("a certificate from the CA for {host}");
        let end = std::time::Instant::now() + within;
        loop {
            let last = match served(addr, host, &self.root).await {
                Ok((serial, names)) if Some(serial.as_str()) != other_than => {
                    assert_eq!(names, vec![host.to_string()]);
                    return serial;
                }
                Ok((serial, _)) => format!("still the old certificate {serial}"),
                Err(e) => e,
            };
            if std::time::Instant::now() > end {
                panic!(
                    "timed out after {within:?} waiting for {what} (last: {last})\n--- proxy:\n{}\n--- pebble:\n{}",
                    self.p.stderr_text(),
                    self.ca.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The site's certificate entry from `status --json` (the control API).
    async fn cert_status(&self, site: &str) -> serde_json::Value {
        let (_, v) = control(&self.p.control, "GET", "/v1/status", None, None).await;
        v["certificates"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|c| c["site"] == site && c["source"] == "acme")
                    .cloned()
            })
            .unwrap_or(serde_json::Value::Null)
    }

    async fn metrics(&self) -> String {
        self.p.metrics_get("/metrics").await
    }

    /// A request to `host` over HTTPS, trusting only Pebble's root.
    async fn get(&self, host: &str) -> reqwest::Response {
        let root = reqwest::Certificate::from_der(self.root.as_ref()).unwrap();
        let c = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .resolve(host, self.p.https.unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        c.get(self.p.surl(host, "/")).send().await.unwrap()
    }
}

fn metric_line(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// See: issue 21. TLS-ALPN-01: the certificate is ordered, validated on the https listener,
/// stored (key 0600) and served without a restart; `acme-tls/1` is never negotiated for HTTP; a
/// reload keeps it; a restart serves the stored certificate without a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_tls_alpn_01_issues_and_a_restart_reuses_the_certificate() {
    let Some(mut s) = setup(None, "challenge = \"tls-alpn-01\"", |b| {
        acme_site("wiki", "wiki.test", b)
    })
    .await
    else {
        return;
    };
    let serial = s.issued("wiki.test", None, ISSUE).await;
    let r = s.get("wiki.test").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "wiki-app");

    let acme = s.p.dir.join("certs/acme");
    assert_eq!(mode(&acme.join("wiki.key")), 0o600);
    assert_eq!(mode(&acme.join("account.key")), 0o600);
    assert!(acme.join("wiki.crt").is_file());
    // The record is written just after the certificate is served: wait for it.
    let meta: serde_json::Value = wait_until(Duration::from_secs(5), "wiki.json written", || {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(acme.join("wiki.json")).ok()?).ok()?;
        m["issued_at"].is_string().then_some(m)
    });
    assert!(meta["not_after"].is_string(), "{meta}");
    assert!(meta["last_error"].is_null(), "{meta}");

    let st = wait_until_async(
        Duration::from_secs(5),
        "status to show the ACME certificate",
        || {
            let s = &s;
            async move {
                let c = s.cert_status("wiki").await;
                (c["acme"]["state"] == "ok").then_some(c)
            }
        },
    )
    .await;
    assert_eq!(st["names"], serde_json::json!(["wiki.test"]));
    assert!(st["days_left"].as_i64().unwrap() > 300, "{st}");
    assert!(st["acme"]["last_error"].is_null(), "{st}");
    let m = s.metrics().await;
    assert_eq!(
        metric_line(
            &m,
            "switchyard_acme_orders_total{result=\"ok\",site=\"wiki\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric_line(
            &m,
            "switchyard_certificate_expiry_seconds{name=\"wiki\",source=\"acme\"}"
        )
        .is_some_and(|v| v > 86400.0 * 300.0),
        "{m}"
    );

    // A normal client offering acme-tls/1 too gets h2; one offering only acme-tls/1 with no
    // challenge pending gets no certificate at all.
    let c = crate::edge::tls_connect(
        s.p.https.unwrap(),
        "wiki.test",
        &[b"acme-tls/1", b"h2", b"http/1.1"],
        crate::edge::BOTH,
    )
    .await;
    assert_eq!(c.stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let only = served_alpn(s.p.https.unwrap(), "wiki.test", &s.root, &[b"acme-tls/1"]).await;
    assert!(only.is_err(), "{only:?}");

    // A reload keeps serving it.
    s.p.ok(&["reload"]);
    let (after_reload, _) = served(s.p.https.unwrap(), "wiki.test", &s.root)
        .await
        .unwrap();
    assert_eq!(after_reload, serial);

    // The restart serves the stored certificate and orders nothing.
    let orders = s.ca.orders();
    assert!(orders >= 1, "{}", s.ca.log_text());
    s.p.stop();
    let tmp = s.p.take_tmp();
    let (dir, config) = (s.p.dir.clone(), s.p.config.clone());
    s.p = Proxy::spawn(tmp, &dir, &config, &[]).unwrap();
    assert_eq!(s.issued("wiki.test", None, ISSUE).await, serial);
    wait_until(
        Duration::from_secs(10),
        "the ACME pass after the restart",
        || {
            s.p.stderr_text()
                .contains("ACME: certificate current")
                .then_some(())
        },
    );
    assert!(
        !s.p.stderr_text().contains("ACME: ordering"),
        "{}",
        s.p.stderr_text()
    );
    assert_eq!(s.ca.orders(), orders);
    assert_eq!(
        metric_line(
            &s.metrics().await,
            "switchyard_acme_orders_total{result=\"ok\",site=\"wiki\"}"
        ),
        None
    );
}

/// See: issue 21. HTTP-01 on the plain listener, answered by the edge before the site's HTTPS
/// redirect; other paths (an unknown token too) still get the redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_http_01_issues_before_the_https_redirect() {
    let sites = |b| {
        format!("\n[[site]]\nname = \"wiki\"\nhosts = [\"wiki.test\"]\nacme = true\nredirect_http = true\n[site.pools]\nblue = [\"{b}\"]\n")
    };
    let Some(s) = setup(None, "challenge = \"http-01\"", sites).await else {
        return;
    };
    s.issued("wiki.test", None, ISSUE).await;
    assert_eq!(s.get("wiki.test").await.status(), 200);
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(s.p.url("/.well-known/acme-challenge/not-pending"))
        .header("host", "wiki.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert!(
        s.ca.log_text().contains("validate w/ HTTP"),
        "{}",
        s.ca.log_text()
    );
}

/// See: issue 21. A certificate within `renew_before` of its expiry is renewed and the new one
/// served without a restart (Pebble issues 20 s certificates here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_renewal_serves_the_new_certificate() {
    let Some(s) = setup(Some(20), "renew_before = \"19s\"", |b| {
        acme_site("wiki", "wiki.test", b)
    })
    .await
    else {
        return;
    };
    let first = s.issued("wiki.test", None, ISSUE).await;
    let second = s.issued("wiki.test", Some(&first), ISSUE).await;
    assert_ne!(first, second);
    let m = s.metrics().await;
    assert!(
        metric_line(
            &m,
            "switchyard_acme_orders_total{result=\"ok\",site=\"wiki\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{m}"
    );
}

/// See: issue 21. The CA is down when the renewal is due: the old certificate keeps serving, and
/// the error is in status (with the next attempt), the metrics and the status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_ca_down_keeps_the_old_certificate_and_says_so() {
    let Some(mut s) = setup(Some(20), "renew_before = \"19s\"", |b| {
        acme_site("wiki", "wiki.test", b)
    })
    .await
    else {
        return;
    };
    let serial = s.issued("wiki.test", None, ISSUE).await;
    s.ca.stop_ca();
    let st = wait_until_async(ISSUE, "status to report the failed renewal", || {
        let s = &s;
        async move {
            let c = s.cert_status("wiki").await;
            c["acme"]["last_error"].is_string().then_some(c)
        }
    })
    .await;
    assert_eq!(st["acme"]["state"], "failing", "{st}");
    assert!(st["acme"]["next_attempt"].is_string(), "{st}");
    assert_eq!(st["acme"]["failures"], 1, "{st}");
    let err = st["acme"]["last_error"].as_str().unwrap();
    assert!(err.contains(&s.ca.directory) || err.contains("CA"), "{err}");
    // Still the old certificate, still valid.
    let (now_serial, _) = served(s.p.https.unwrap(), "wiki.test", &s.root)
        .await
        .unwrap();
    assert_eq!(now_serial, serial);
    let m = s.metrics().await;
    assert_eq!(
        metric_line(
            &m,
            "switchyard_acme_orders_total{result=\"error\",site=\"wiki\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let page = s.p.metrics_get("/").await;
    assert!(
        page.contains("Certificates") && page.contains("failing"),
        "{page}"
    );
    let human = s.p.ok(&["status"]);
    assert!(
        human.contains("ACME ERROR") && human.contains("next attempt"),
        "{human}"
    );
    assert!(s
        .p
        .stderr_text()
        .contains("ACME: ordering the certificate failed"));
}

/// See: issue 21. A site whose host the CA cannot validate gets a clear error naming the host;
/// the other site gets its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_21_a_host_that_cannot_be_validated_fails_alone() {
    if !pebble::available() {
        return;
    }
    let sites = |b| {
        format!(
            "{}{}",
            acme_site("good", "good.test", b),
            acme_site("bad", "bad.test", b)
        )
    };
    // bad.test resolves to an address nobody listens on; it is set before the proxy starts, by
    // a CA set up without the proxy first.
    let backend = Backend::start("app").await;
    let t = Proxy::tempdir();
    let dir = t.path().to_path_buf();
    let (http, https) = (free_port(), free_port());
    let ca = Pebble::start(
        &dir,
        Options {
            http_port: http,
            tls_port: https,
            validity_s: None,
        },
    )
    .await;
    ca.resolve("bad.test", "127.0.0.2").await;
    let toml = config(&dir, http, https, &ca, "", &sites(backend.addr));
    let p = Proxy::start_in(Some(t), &dir, &toml).unwrap();
    let root = ca.root().await;
    let s = Setup {
        ca,
        p,
        root,
        _backend: backend,
    };
    s.issued("good.test", None, ISSUE).await;
    let bad = wait_until_async(ISSUE, "the bad site's error in status", || {
        let s = &s;
        async move {
            let c = s.cert_status("bad").await;
            c["acme"]["last_error"].is_string().then_some(c)
        }
    })
    .await;
    let err = bad["acme"]["last_error"].as_str().unwrap();
    assert!(err.contains("could not validate bad.test"), "{err}");
    assert!(bad["names"].as_array().unwrap().is_empty(), "{bad}");
    assert_eq!(s.cert_status("good").await["acme"]["state"], "ok");
    assert!(served(s.p.https.unwrap(), "bad.test", &s.root)
        .await
        .is_err());
}
