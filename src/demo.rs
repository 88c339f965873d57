//! `switchyard demo`: the proxy on 127.0.0.1:8080 (http) and :8443 (https, a dev certificate made on
//! first run) in front of two in-process backends, blue and green, so a new user sees switching and
//! read-only work in one command without Docker. Files live in ./.switchyard-demo/.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::proxy::error_page::html_escape;

/// Starts one demo backend; returns its address.
pub async fn backend(color: &'static str) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let notes = notes.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let notes = notes.clone();
                    async move { Ok::<_, Infallible>(page(color, &notes, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn page(
    color: &str,
    notes: &Mutex<Vec<String>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let read_only = req.headers().contains_key("x-read-only");
    let (status, body) = match (req.method().clone(), req.uri().path()) {
        (_, "/health") => (StatusCode::OK, "ok\n".to_string()),
        (Method::POST, "/notes") => {
            let b = Limited::new(req.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&b);
            let text = text
                .strip_prefix("note=")
                .unwrap_or(&text)
                .replace('+', " ");
            if let Ok(mut n) = notes.lock() {
                n.push(text.chars().take(200).collect());
            }
            (StatusCode::CREATED, format!("saved on {color}\n"))
        }
        _ => {
            let list = notes
                .lock()
                .map(|n| {
                    n.iter()
                        .map(|t| format!("<li>{}</li>", html_escape(t)))
                        .collect::<String>()
                })
                .unwrap_or_default();
            let banner = if read_only {
                "<p style=\"background:#fff3cd;padding:.5em\">The site is read-only for maintenance.</p>"
            } else {
                ""
            };
            (
                StatusCode::OK,
                format!(
                    "<!doctype html><html><body style=\"font-family:sans-serif;border-top:12px solid {color};padding:1em\">{banner}<h1>demo: {color}</h1><p>This answer came from the <b>{color}</b> backend.</p><form method=post action=/notes><input name=note placeholder=\"a note\"><button>post</button></form><ul>{list}</ul></body></html>\n"
                ),
            )
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    // What a well-behaved app sends; the proxy passes them through untouched.
    for (k, v) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'self'; style-src 'unsafe-inline'",
        ),
    ] {
        r.headers_mut().insert(k, http::HeaderValue::from_static(v));
    }
    r.headers_mut().insert(
        "x-demo-color",
        http::HeaderValue::from_str(color).unwrap_or(http::HeaderValue::from_static("?")),
    );
    r
}

/// Prepares the demo folder (certificate on first run, a fresh config) and returns the config path.
pub async fn prepare(
    dir: &Path,
    http: &str,
    https: &str,
    metrics: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let certs = dir.join("certs");
    if !certs.join("localhost.crt").exists() {
        crate::proxy::tls::write_self_signed(
            &certs,
            "localhost",
            &["localhost", "demo.localhost", "127.0.0.1"],
        )?;
        eprintln!(
            "demo: made a self-signed dev certificate in {}",
            certs.display()
        );
    }
    let blue = backend("blue").await?;
    let green = backend("green").await?;
    // The demo's backends get new ports on every run, so the demo starts from a fresh state.
    let _ = std::fs::remove_file(dir.join("state.json"));
    let cfg = format!(
        r#"# written by `switchyard demo`
[proxy]
http = "{http}"
https = "{https}"
certs = "certs"
control = "control.sock"
state = "state.json"
metrics = "{metrics}"
access_log = "access.log"

[[site]]
name = "demo"
hosts = ["localhost", "127.0.0.1", "demo.localhost"]
preview_hosts = ["next.localhost"]
active = "blue"
redirect_http = false
[site.pools]
blue = ["{blue}"]
green = ["{green}"]
[site.health]
path = "/health"
interval = "1s"
[site.read_only]
allow_paths = ["/health"]
allow_clients = ["127.0.0.2"]
"#
    );
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

pub fn banner(b: &crate::server::Bound, dir: &Path) -> String {
    let http = b.http.map(|a| a.to_string()).unwrap_or_default();
    let https = b.https.map(|a| a.to_string()).unwrap_or_default();
    let ctl = dir.join("control.sock");
    let me = std::env::args()
        .next()
        .unwrap_or_else(|| "switchyard".into());
    format!(
        "\nswitchyard demo is running (Ctrl-C to stop)\n\
         \n  open   http://{http}/   or   https://{https}/  (self-signed certificate)\
         \n  dashboard   {dash}\n\
         \nTry, in another terminal:\n\
         \n  curl -s http://{http}/ | grep demo:                      # blue answers\
         \n  {me} --control {ctl} status\
         \n  {me} --control {ctl} switch demo green                   # instant flip\
         \n  curl -s http://{http}/ | grep demo:                      # green answers\
         \n  {me} --control {ctl} read-only on --reason \"backup\" --retry-after 60\
         \n  curl -si -X POST -d note=hi http://{http}/notes | head -1   # 503, Retry-After: 60\
         \n  {me} --control {ctl} read-only off\
         \n  {me} --control {ctl} maintenance on --message \"moving house\"   # reads get 503 too\
         \n  {me} --control {ctl} maintenance off\
         \n  {me} --control {ctl} switch demo blue\
         \n\nAccess log: {log}\n",
        ctl = ctl.display(),
        log = dir.join("access.log").display(),
        dash = b
            .metrics
            .map(|a| format!("http://{a}/"))
            .unwrap_or_else(|| "(no metrics listener)".into()),
    )
}
