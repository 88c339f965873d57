//! Test support: spawn the real binary with a config in a temp dir, read the addresses it reports,
//! wait for conditions with deadlines (never sleep for readiness), and real backends to put behind it.
#![allow(dead_code)]

pub mod cluster;
pub mod pebble;
pub mod swarm;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The binary the proxies run: `SWITCHYARD_BIN` (a release build, for the benchmarks) or [`BIN`].
pub fn bin() -> String {
    std::env::var("SWITCHYARD_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Polls `probe` until it returns Some, or panics naming what never happened.
pub fn wait_until<T>(deadline: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async flavour of [`wait_until`].
pub async fn wait_until_async<T, F: std::future::Future<Output = Option<T>>>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running `switchyard serve`.
pub struct Proxy {
    pub child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub config: PathBuf,
    pub control: PathBuf,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// The `[proxy]` section used by tests: ephemeral ports on 127.0.0.1, files in `dir`.
pub fn proxy_section(dir: &Path, extra: &str) -> String {
    format!(
        "[proxy]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\ncerts = \"{d}/certs\"\ncontrol = \"{d}/control.sock\"\nstate = \"{d}/state.json\"\n{extra}\n",
        d = dir.display()
    )
}

/// Writes a self-signed certificate for `names` as certs/STEM.crt + .key in `dir`.
pub fn make_cert(dir: &Path, stem: &str, names: &[&str]) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    std::fs::write(certs.join(format!("{stem}.crt")), ck.cert.pem()).unwrap();
    std::fs::write(
        certs.join(format!("{stem}.key")),
        ck.key_pair.serialize_pem(),
    )
    .unwrap();
}

impl Proxy {
    /// A temp dir with a localhost certificate, ready for a config.
    pub fn tempdir() -> tempfile::TempDir {
        let t = tempfile::Builder::new()
            .prefix("sy-test-")
            .tempdir()
            .unwrap();
        make_cert(t.path(), "localhost", &["localhost", "127.0.0.1"]);
        t
    }

    /// Starts with `[proxy]` from [`proxy_section`] (plus `proxy_extra` lines) and then `sites`.
    pub fn start(proxy_extra: &str, sites: &str) -> Proxy {
        let t = Self::tempdir();
        let toml = format!("{}{}", proxy_section(t.path(), proxy_extra), sites);
        let dir = t.path().to_path_buf();
        Self::start_in(Some(t), &dir, &toml).unwrap_or_else(|e| panic!("proxy did not start: {e}"))
    }

    /// Starts with a full config text in `dir`; Err carries stderr when it exits instead.
    pub fn start_in(
        tmp: Option<tempfile::TempDir>,
        dir: &Path,
        toml: &str,
    ) -> Result<Proxy, String> {
        let config = dir.join("switchyard.toml");
        std::fs::write(&config, toml).unwrap();
        Self::spawn(tmp, dir, &config, &[])
    }

    pub fn spawn(
        tmp: Option<tempfile::TempDir>,
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<Proxy, String> {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env("SWITCHYARD_LOG", "switchyard=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
        {
            let err = child.stderr.take().unwrap();
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    if l.starts_with("switchyard ready:") {
                        let _ = tx.send(Some(l.clone()));
                    }
                    lines.lock().unwrap().push(l);
                }
                let _ = tx.send(None);
            });
            let out = child.stdout.take().unwrap();
            let lines = stdout.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        let ready = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader sends None once it has pushed the last line (the pipe closed).
                while let Ok(Some(_)) = rx.recv_timeout(Duration::from_secs(5)) {}
                return Err(stderr.lock().unwrap().join("\n"));
            }
        };
        let field = |k: &str| -> Option<String> {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
                .filter(|v| v != "-")
        };
        Ok(Proxy {
            child: Some(child),
            dir: dir.to_path_buf(),
            _tmp: tmp,
            config: config.to_path_buf(),
            control: PathBuf::from(field("control").unwrap()),
            http: field("http").map(|a| a.parse().unwrap()),
            https: field("https").map(|a| a.parse().unwrap()),
            metrics: field("metrics").map(|a| a.parse().unwrap()),
            stderr,
            stdout,
        })
    }

    /// Takes ownership of the temp dir, so the files outlive this process handle (restart tests).
    pub fn take_tmp(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    /// Runs a CLI command against this proxy's control socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--control")
            .arg(&self.control)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// Like `cli`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "switchyard {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// GET `path` on the metrics listener (`/metrics`, the dashboard `/`), the body as text.
    pub async fn metrics_get(&self, path: &str) -> String {
        let addr = self.metrics.expect("the proxy has a metrics listener");
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "GET {path} on the metrics listener");
        r.text().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.unwrap())
    }

    pub fn surl(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https.unwrap().port())
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGTERM and wait for the exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().unwrap();
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = c.kill();
                panic!("switchyard did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An HTTP client that trusts the test certificates and resolves test host names to 127.0.0.1.
pub fn client(p: &Proxy, hosts: &[&str]) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    for h in hosts {
        if let Some(a) = p.https {
            b = b.resolve(h, a);
        }
    }
    b.build().unwrap()
}

/// What a test backend saw.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub writes: AtomicUsize,
    pub last_headers: Mutex<Option<http::HeaderMap>>,
    /// "METHOD path" of every request, in order.
    pub paths: Mutex<Vec<String>>,
    /// When each write arrived (the judge of "no write after the barrier").
    pub write_times: Mutex<Vec<Instant>>,
}

/// A real HTTP/1.1 backend on 127.0.0.1 named `name`. Paths:
/// `/` → "NAME"; `/echo` → request body; `/slow?ms=N` → waits N ms; `/big?mib=N` → N MiB of 'x';
/// `/status/N` → that status; `/headers` → request headers as JSON; `/health` → 200; `/ws` → WebSocket echo.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Seen>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on("127.0.0.1:0", name).await
    }

    pub async fn start_on(addr: &str, name: &str) -> Backend {
        let l = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let n: Arc<str> = name.into();
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    a = l.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let n = n.clone();
                let seen = s2.clone();
                let mut stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let n = n.clone();
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(backend_answer(&n, &seen, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop_rx.changed() => {}
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.into(),
            seen,
            stop,
        }
    }

    /// Stops accepting and closes every connection (the port then refuses).
    pub fn kill(&self) {
        let _ = self.stop.send(true);
    }

    pub fn hits(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        kv.strip_prefix(&format!("{key}="))
            .and_then(|v| v.parse().ok())
    })
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into())
        .map_err(|n: Infallible| match n {})
        .boxed()
}

async fn backend_answer(name: &str, seen: &Seen, mut req: Request<Incoming>) -> Response<BoxBody> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    if !matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        seen.writes.fetch_add(1, Ordering::SeqCst);
        seen.write_times.lock().unwrap().push(Instant::now());
    }
    *seen.last_headers.lock().unwrap() = Some(req.headers().clone());
    seen.paths
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method(), req.uri().path()));
    let path = req.uri().path().to_string();
    let mut resp = match path.as_str() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
            Response::new(full(name.to_string()))
        }
        "/big" => {
            let mib = query(&req, "mib").unwrap_or(1);
            let chunk = Bytes::from(vec![b'x'; 1 << 20]);
            let stream = futures_util::stream::iter(
                (0..mib).map(move |_| Ok::<_, hyper::Error>(http_body::Frame::data(chunk.clone()))),
            );
            Response::new(http_body_util::StreamBody::new(stream).boxed())
        }
        "/bytes" => Response::new(full(pattern(query(&req, "n").unwrap_or(0) as usize))),
        "/count" => {
            // Reads (and discards) the body, answering with its length: streaming uploads.
            let mut n = 0u64;
            let mut body = req.into_body();
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Response::new(full(n.to_string()))
        }
        "/headers" => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            Response::new(full(serde_json::Value::Object(map).to_string()))
        }
        "/health" => Response::new(full("ok")),
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(up),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    let (mut tx, mut rx) = futures_util::StreamExt::split(ws);
                    while let Some(Ok(m)) = futures_util::StreamExt::next(&mut rx).await {
                        if (m.is_text() || m.is_binary())
                            && futures_util::SinkExt::send(&mut tx, m).await.is_err()
                        {
                            break;
                        }
                    }
                }
            });
            let accept = key
                .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
                .unwrap_or_default();
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("sec-websocket-accept", accept.parse().unwrap());
            return r;
        }
        p if p.starts_with("/status/") => {
            let code = p[8..].parse().unwrap_or(500);
            let mut r = Response::new(full(name.to_string()));
            *r.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        _ => Response::new(full(name.to_string())),
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp.headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    resp
}

/// `n` bytes that differ with `n` and along the body, so a mix-up or a gap shows.
pub fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| b'a' + ((i + n) % 26) as u8).collect()
}

/// A site named `name` routing `hosts` to the given blue/green pools.
pub fn site(
    name: &str,
    hosts: &[&str],
    blue: &[SocketAddr],
    green: &[SocketAddr],
    extra: &str,
) -> String {
    let q = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let h = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("\n[[site]]\nname = \"{name}\"\nhosts = [{h}]\nredirect_http = false\n{extra}\n[site.pools]\nblue = [{}]\ngreen = [{}]\n", q(blue), q(green))
}

/// One raw call on the control socket: (status, JSON body). For tests that flip a lot or send bad input.
pub async fn control(
    p: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
    if_match: Option<u64>,
) -> (u16, serde_json::Value) {
    let s = tokio::net::UnixStream::connect(p)
        .await
        .expect("connect control socket");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "switchyard");
    if let Some(v) = if_match {
        req = req.header("if-match", v.to_string());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
    )
}

/// Like [`control`], but None instead of a panic when the daemon goes away mid-call.
pub async fn try_control(
    p: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    let s = tokio::net::UnixStream::connect(p).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "switchyard")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let b = resp.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
    ))
}

/// Sends raw bytes on a new TCP connection and returns everything read until the peer closes or
/// `wait` passes without data.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GET `url` (with `host` as the Host header when given) and return the body text.
pub async fn text(c: &reqwest::Client, url: &str, host: Option<&str>) -> String {
    let mut r = c.get(url);
    if let Some(h) = host {
        r = r.header("host", h);
    }
    r.send().await.unwrap().text().await.unwrap()
}

/// Waits until the site's writes in flight (status `writes_in_flight`) reach `n`.
pub async fn wait_writes_in_flight(p: &Proxy, n: u64) {
    wait_until_async(
        std::time::Duration::from_secs(5),
        "writes to be in flight",
        || {
            let ctl = p.control.clone();
            async move {
                let (_, v) = control(&ctl, "GET", "/v1/status", None, None).await;
                (v["sites"][0]["writes_in_flight"].as_u64() == Some(n)).then_some(())
            }
        },
    )
    .await;
}
