//! The edge (issue 2): routing, TLS, forwarding, limits, timeouts, shutdown. Every test runs the
//! real binary and talks to it over real sockets; waits are conditions with deadlines.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers: raw HTTP/1.1 over any stream, and a TLS client that records the presented certificate.

/// A raw HTTP/1.1 connection with a read buffer, for what reqwest cannot express.
pub(crate) struct Raw<S> {
    s: S,
    buf: Vec<u8>,
}

/// One response as read off the wire.
#[derive(Debug)]
pub(crate) struct RawResp {
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: String,
}

impl RawResp {
    pub(crate) fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

const IO_DEADLINE: Duration = Duration::from_secs(10);

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub(crate) fn new(s: S) -> Self {
        Raw { s, buf: Vec::new() }
    }

    /// What was read and not consumed yet.
    pub(crate) fn buf_text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    pub(crate) async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
        self.s.flush().await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IO_DEADLINE, self.s.read(&mut tmp))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n
    }

    /// Reads up to and including the first `\r\n\r\n`; returns the head.
    pub(crate) async fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(
                self.fill().await > 0,
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    async fn read_exact_buf(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await > 0, "connection closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8_lossy(&l[..i]).into_owned();
            }
            assert!(self.fill().await > 0, "connection closed mid-chunk");
        }
    }

    /// Reads a whole response (Content-Length or chunked, with trailers).
    pub(crate) async fn response(&mut self) -> RawResp {
        let head = self.read_head().await;
        let mut r = RawResp {
            head,
            body: Vec::new(),
            trailers: String::new(),
        };
        if let Some(n) = r.header("content-length") {
            r.body = self.read_exact_buf(n.parse().unwrap()).await;
        } else if r
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            loop {
                let size = usize::from_str_radix(
                    self.read_line().await.split(';').next().unwrap().trim(),
                    16,
                )
                .unwrap();
                if size == 0 {
                    loop {
                        let l = self.read_line().await;
                        if l.is_empty() {
                            break;
                        }
                        r.trailers.push_str(&l);
                        r.trailers.push('\n');
                    }
                    break;
                }
                let mut d = self.read_exact_buf(size + 2).await;
                d.truncate(size);
                r.body.extend_from_slice(&d);
            }
        }
        r
    }

    /// True when the peer closes (EOF or reset) within `deadline`; bytes sent before are kept.
    pub(crate) async fn closed_within(&mut self, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        let mut tmp = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(end, self.s.read(&mut tmp)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

pub(crate) async fn raw(addr: SocketAddr) -> Raw<TcpStream> {
    Raw::new(TcpStream::connect(addr).await.unwrap())
}

pub(crate) fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// Accepts any certificate and remembers the leaf it was shown.
#[derive(Debug)]
struct Recorder {
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub(crate) struct TlsConn {
    pub(crate) stream: tokio_rustls::client::TlsStream<TcpStream>,
    /// DNS names of the certificate the server presented.
    pub(crate) names: Vec<String>,
}

impl TlsConn {
    fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }

    fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.get_ref().1.protocol_version()
    }
}

pub(crate) async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConn {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rec = Arc::new(Recorder {
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(rec.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let der = rec
        .seen
        .lock()
        .unwrap()
        .take()
        .expect("a certificate was presented");
    TlsConn {
        stream,
        names: san_names(&der),
    }
}

fn san_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("certificate has a SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(n) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

pub(crate) const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Peak resident memory of a process (VmHWM), in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn pid(p: &Proxy) -> u32 {
    p.child.as_ref().unwrap().id()
}

/// A site with `redirect_http` left to its default (on when https is on).
fn site_default_redirect(name: &str, hosts: &[&str], blue: SocketAddr) -> String {
    let h = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("\n[[site]]\nname = \"{name}\"\nhosts = [{h}]\n[site.pools]\nblue = [\"{blue}\"]\n")
}

// ---------------------------------------------------------------------------------------------
// Routing, protocols, TLS.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_over_h1_h2_and_tls() {
    let a = Backend::start("a-blue").await;
    let b = Backend::start("b-blue").await;
    let sites = site("a", &["a.test", "localhost"], &[a.addr], &[], "")
        + &site("b", &["b.test", "*.b.test"], &[b.addr], &[], "");
    let p = Proxy::start("", &sites);
    let c = client(&p, &["a.test", "b.test", "x.b.test", "nope.test"]);
    let r = c.get(p.surl("a.test", "/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "a-blue");
    assert_eq!(text(&c, &p.surl("x.b.test", "/"), None).await, "b-blue");
    let r = c.get(p.surl("nope.test", "/")).send().await.unwrap();
    assert!(r.status() == 404 || r.status() == 421, "{}", r.status());
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let r = h1
        .get(p.url("/"))
        .header("host", "b.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "b-blue");
    // HTTP/1.1 over TLS as well.
    let tls_h1 = reqwest::Client::builder()
        .http1_only()
        .danger_accept_invalid_certs(true)
        .resolve("a.test", p.https.unwrap())
        .build()
        .unwrap();
    let r = tls_h1.get(p.surl("a.test", "/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "a-blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_exact_wildcard_and_default() {
    let a = Backend::start("a").await;
    let t = Proxy::tempdir();
    make_cert(t.path(), "other", &["other.test"]);
    make_cert(t.path(), "wild", &["*.wild.test"]);
    let dir = t.path().to_path_buf();
    let toml = proxy_section(&dir, "")
        + &site(
            "a",
            &["localhost", "other.test", "*.wild.test"],
            &[a.addr],
            &[],
            "",
        );
    let p = Proxy::start_in(Some(t), &dir, &toml).unwrap();
    let addr = p.https.unwrap();

    let c = tls_connect(addr, "other.test", &[b"h2", b"http/1.1"], BOTH).await;
    assert_eq!(c.names, ["other.test"]);
    assert_eq!(c.alpn().as_deref(), Some(&b"h2"[..]), "ALPN prefers h2");
    assert_eq!(c.version(), Some(rustls::ProtocolVersion::TLSv1_3));

    let c = tls_connect(addr, "deep.wild.test", &[b"http/1.1"], BOTH).await;
    assert_eq!(c.names, ["*.wild.test"]);
    assert_eq!(c.alpn().as_deref(), Some(&b"http/1.1"[..]));

    let c = tls_connect(
        addr,
        "localhost",
        &[b"h2", b"http/1.1"],
        &[&rustls::version::TLS12],
    )
    .await;
    assert_eq!(c.names, ["localhost"]);
    assert_eq!(
        c.version(),
        Some(rustls::ProtocolVersion::TLSv1_2),
        "TLS 1.2 still accepted"
    );

    // An unknown name gets the default (the first pair by file name: localhost.crt).
    let c = tls_connect(addr, "unknown.example", &[b"http/1.1"], BOTH).await;
    assert_eq!(c.names, ["localhost"]);

    // And the wildcard certificate really serves a request for its names.
    let mut r = Raw::new(
        tls_connect(addr, "x.wild.test", &[b"http/1.1"], BOTH)
            .await
            .stream,
    );
    r.send(&get("x.wild.test", "/")).await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body, b"a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_its_certificate_is_refused() {
    let a = Backend::start("a").await;
    let t = Proxy::tempdir();
    make_cert(t.path(), "one", &["one.test"]);
    make_cert(t.path(), "two", &["two.test"]);
    std::fs::copy(
        t.path().join("certs/one.key"),
        t.path().join("certs/two.key"),
    )
    .unwrap();
    let dir = t.path().to_path_buf();
    let cfg = dir.join("switchyard.toml");
    std::fs::write(
        &cfg,
        proxy_section(&dir, "") + &site("a", &["one.test"], &[a.addr], &[], ""),
    )
    .unwrap();
    let key = dir.join("certs/two.key").display().to_string();

    let o = std::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "check: {err}");
    assert!(
        err.contains(&key) && err.contains("does not match"),
        "check names the key file: {err}"
    );

    let o = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "serve: {err}");
    assert!(
        err.contains(&key) && err.contains("does not match"),
        "serve names the key file: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Forwarding.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_appended_and_hop_by_hop_stripped() {
    // From a trusted proxy the chains are extended (an untrusted client's are replaced: see
    // http_rules.rs).
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "trusted_proxies = [\"127.0.0.1\"]",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );

    // Plain HTTP/1.1, raw so every header is exactly what we say.
    let mut r = raw(p.http.unwrap()).await;
    r.send(
        b"GET /headers HTTP/1.1\r\nHost: a.test:8080\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: keep-alive, X-Secret\r\n\
X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
TE: trailers, deflate\r\nX-Keep: 1\r\n\r\n",
    )
    .await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert!(resp.header("x-backend").is_some());
    assert!(resp
        .header("connection")
        .is_none_or(|c| !c.contains("X-Secret")));
    let h: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"a.test:8080\""
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "a.test:8080");
    assert_eq!(h["host"], "a.test:8080", "Host preserved");
    assert_eq!(h["x-keep"], "1");
    assert_eq!(h["te"], "trailers", "TE kept only as `trailers`");
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(h.get(gone).is_none(), "{gone} must be stripped: {h}");
    }
    // The keep-alive connection carries a second request.
    r.send(&get("a.test", "/")).await;
    assert_eq!(r.response().await.body, b"a");

    // HTTPS (h2): no incoming XFF, proto https, Host from :authority.
    let c = client(&p, &["a.test"]);
    let resp = c.get(p.surl("a.test", "/headers")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let h: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    let port = p.https.unwrap().port();
    assert_eq!(h["host"], format!("a.test:{port}"));
    assert_eq!(h["x-forwarded-host"], format!("a.test:{port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_answered_together_arrive_whole_and_in_order() {
    // Many streams on one h2 connection, answered at about the same time, so their frames are
    // gathered into shared TLS records (gather.rs); sizes around the h2 copy threshold (1 KiB),
    // a TLS record (16 KiB) and the gathering limit (64 KiB).
    let a = Backend::start("a").await;
    let p = Proxy::start("", &site("a", &["a.test"], &[a.addr], &[], ""));
    let c = client(&p, &["a.test"]);
    let sizes = [
        0usize, 1, 100, 1023, 1024, 1025, 5000, 16383, 16384, 16385, 65535, 65536, 70000, 300_000,
    ];
    for round in 0..3 {
        let gets = sizes.iter().chain(sizes.iter().rev()).map(|&n| {
            let c = c.clone();
            let url = p.surl("a.test", &format!("/bytes?n={n}"));
            async move {
                let r = c.get(url).send().await.unwrap();
                assert_eq!(r.version(), reqwest::Version::HTTP_2);
                assert_eq!(r.status(), 200);
                (n, r.bytes().await.unwrap())
            }
        });
        for (n, body) in futures_util::future::join_all(gets).await {
            assert_eq!(body.len(), n, "round {round}: body of {n} bytes");
            assert!(
                body == pattern(n),
                "round {round}: body of {n} bytes differs"
            );
        }
    }
}

static CHUNK: [u8; 1 << 20] = [b'y'; 1 << 20];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_large_bodies_with_bounded_memory() {
    // The issue says 2 GiB; 512 MiB each way keeps CI time reasonable on 2 cores with a debug
    // build, and is still 8x the memory bound asserted below, so buffering would show.
    const MIB: u64 = 512;
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "max_body_bytes = \"1GiB\"\naccess_log = \"off\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let before = vm_hwm_kib(pid(&p));

    let t = Instant::now();
    let up = futures_util::stream::iter(
        (0..MIB).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))),
    );
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let r = h1
        .post(p.url("/count"))
        .header("host", "a.test")
        .body(reqwest::Body::wrap_stream(up))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), (MIB << 20).to_string());
    let up_time = t.elapsed();

    let t = Instant::now();
    let c = client(&p, &["a.test"]);
    let mut r = c
        .get(p.surl("a.test", &format!("/big?mib={MIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut n = 0u64;
    while let Some(ch) = r.chunk().await.unwrap() {
        n += ch.len() as u64;
    }
    assert_eq!(n, MIB << 20);
    let down_time = t.elapsed();

    let after = vm_hwm_kib(pid(&p));
    eprintln!("proxy VmHWM: {before} KiB at start, {after} KiB after {MIB} MiB up ({up_time:?}, h1) and down ({down_time:?}, h2+TLS)");
    assert!(
        after < 64 * 1024,
        "proxy peak RSS {after} KiB; bodies must stream, not buffer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy_plain_and_tls() {
    use tokio_tungstenite::tungstenite::Message;
    let a = Backend::start("a").await;
    let p = Proxy::start("", &site("a", &["a.test"], &[a.addr], &[], ""));

    let tcp = TcpStream::connect(p.http.unwrap()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://a.test/ws", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}"))).await.unwrap();
        let m = tokio::time::timeout(IO_DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m, Message::Text(format!("hello {i}")));
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let m = tokio::time::timeout(IO_DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::Binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.unwrap();

    let tls = tls_connect(p.https.unwrap(), "localhost", &[b"http/1.1"], BOTH).await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://a.test/ws", tls.stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("over tls".into())).await.unwrap();
    let m = tokio::time::timeout(IO_DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::Text("over tls".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways() {
    use http_body_util::BodyExt;
    // A backend that answers with the request's trailers echoed as response trailers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let baddr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let collected = req.into_body().collect().await.unwrap();
                        let trailers = collected.trailers().cloned().unwrap_or_default();
                        let data = collected.to_bytes();
                        let mut out = trailers.clone();
                        out.insert("x-body-len", data.len().to_string().parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(data)),
                            Ok(http_body::Frame::trailers(out)),
                        ];
                        let body =
                            http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                        let mut resp = http::Response::new(body);
                        resp.headers_mut()
                            .insert("trailer", "x-checksum, x-body-len".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p = Proxy::start("", &site("a", &["a.test"], &[baddr], &[], ""));
    let mut r = raw(p.http.unwrap()).await;
    r.send(
        b"POST /t HTTP/1.1\r\nHost: a.test\r\nTE: trailers\r\nTrailer: x-checksum\r\nTransfer-Encoding: chunked\r\n\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(resp.body, b"hello world");
    assert!(
        resp.trailers.contains("x-checksum: abc123"),
        "request trailer reached the backend and came back: {resp:?}"
    );
    assert!(resp.trailers.contains("x-body-len: 11"), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &site("a", &["a.test"], &[a.addr], &[], ""));
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n").await;
    let interim = r.read_head().await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    r.send(b"hello world").await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(resp.body, b"hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_with_port_and_path() {
    let a = Backend::start("a").await;
    let p = Proxy::start("", &site_default_redirect("a", &["a.test"], a.addr));
    let port = p.https.unwrap().port();
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("a.test:8080", "/wiki/Page?x=1&y=2")).await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 308, "{resp:?}");
    assert_eq!(
        resp.header("location").unwrap(),
        format!("https://a.test:{port}/wiki/Page?x=1&y=2")
    );
    assert_eq!(a.hits(), 0, "a redirect never reaches the backend");
    // and the https side serves
    let c = client(&p, &["a.test"]);
    assert_eq!(text(&c, &p.surl("a.test", "/"), None).await, "a");
}

// ---------------------------------------------------------------------------------------------
// Errors the proxy makes itself.

/// See: issue 20. A backend that accepts connections and closes them without answering (what a
/// host's port forwarder does for a container that is gone): every GET still gets 200 from the
/// other backend, on HTTP/1.1 and HTTP/2 alike, and the broken one is ejected; a POST, which may
/// not be repeated, gets 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_20_a_backend_that_closes_unanswered_is_skipped_for_repeatable_requests() {
    let good = Backend::start("good").await;
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = closer.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    let p = Proxy::start(
        "",
        &site("w", &["w.test"], &[closer_addr, good.addr], &[], ""),
    );
    let c = client(&p, &["w.test"]);
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    for i in 0..20 {
        let r = c.get(p.surl("w.test", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "h2 GET {i}");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let r = h1
            .get(p.url("/"))
            .header("host", "w.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "h1 GET {i}");
    }
    let tried = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&tried),
        "the closing backend is ejected after its first unanswered close (tried {tried} times)"
    );
    // A POST is not repeated elsewhere: with the closing backend alone, it gets 502.
    let p2 = Proxy::start("", &site("w", &["w.test"], &[closer_addr], &[], ""));
    let r = h1
        .post(p2.url("/echo"))
        .header("host", "w.test")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_is_502_and_slow_is_504_with_json_on_request() {
    let a = Backend::start("a").await;
    let dead = Backend::start("dead").await;
    let sites =
        site("a", &["a.test"], &[a.addr], &[], "") + &site("d", &["d.test"], &[dead.addr], &[], "");
    let p = Proxy::start("upstream_timeout = \"300ms\"", &sites);
    dead.kill();
    let c = client(&p, &["a.test", "d.test"]);
    wait_until_async(IO_DEADLINE, "the killed backend to refuse", || async {
        TcpStream::connect(dead.addr).await.is_err().then_some(())
    })
    .await;

    let r = c.get(p.surl("d.test", "/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("502"));
    let r = c
        .get(p.surl("d.test", "/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "bad_gateway");

    let t = Instant::now();
    let r = c
        .get(p.surl("a.test", "/slow?ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "504 came after {:?}",
        t.elapsed()
    );
    assert!(r.text().await.unwrap().contains("504"));
    let r = c
        .get(p.surl("a.test", "/slow?ms=3000"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "gateway_timeout");
    // A fast request right after still works.
    assert_eq!(
        c.get(p.surl("a.test", "/slow?ms=10"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413_by_length_and_mid_stream() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "max_body_bytes = \"1KiB\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    // Declared too large: refused before the backend sees it.
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"POST /count HTTP/1.1\r\nHost: a.test\r\nAccept: application/json\r\nContent-Length: 2000\r\n\r\n").await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 413, "{resp:?}");
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["error"], "body_too_large");
    assert_eq!(a.hits(), 0);

    // Under the limit passes.
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"POST /count HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n")
        .await;
    r.send(&[b'z'; 0x200]).await;
    r.send(b"\r\n0\r\n\r\n").await;
    let resp = r.response().await;
    assert_eq!((resp.status(), resp.body.as_slice()), (200, &b"512"[..]));

    // Chunked, no length: cut off once it passes the limit.
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"POST /count HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    for _ in 0..4 {
        r.send(b"400\r\n").await;
        r.send(&[b'z'; 0x400]).await;
        r.send(b"\r\n").await;
    }
    r.send(b"0\r\n\r\n").await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 413, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "max_header_bytes = \"16KiB\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let mut r = raw(p.http.unwrap()).await;
    let big = "v".repeat(40 * 1024);
    r.send(format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 431, "{resp:?}");
    // Headers under the limit pass.
    let mut r = raw(p.http.unwrap()).await;
    let ok = "v".repeat(8 * 1024);
    r.send(format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {ok}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.response().await.status(), 200);
    assert_eq!(a.hits(), 1);
    // HTTP/2: the same limit, answered 431 on the stream; the connection serves on.
    let c = client(&p, &["a.test"]);
    let resp = c
        .get(p.surl("a.test", "/"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 431, "{resp:?}");
    let resp = c
        .get(p.surl("a.test", "/"))
        .header("x-big", &ok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.version(), resp.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    assert_eq!(a.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_and_another_sites_host_on_this_tls_name_is_421() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let sites =
        site("a", &["a.test"], &[a.addr], &[], "") + &site("b", &["b.test"], &[b.addr], &[], "");
    let p = Proxy::start("", &sites);
    let c = client(&p, &["nope.test"]);
    let r = c.get(p.surl("nope.test", "/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("<h1>404"));
    let r = c
        .get(p.surl("nope.test", "/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unknown_host");

    // Plain HTTP with no matching host: 404 too, never another site.
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("c.test", "/")).await;
    assert_eq!(r.response().await.status(), 404);

    // TLS name a.test, Host b.test: 421, and the same connection still serves a.test.
    let mut r = Raw::new(
        tls_connect(p.https.unwrap(), "a.test", &[b"http/1.1"], BOTH)
            .await
            .stream,
    );
    r.send(&get("b.test", "/")).await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 421, "{resp:?}");
    r.send(&get("a.test", "/")).await;
    assert_eq!(r.response().await.body, b"a");
    assert_eq!(b.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// Timeouts and limits of client connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_a_partial_request_and_a_silent_connection() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "header_timeout = \"500ms\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    for partial in [&b"GET / HT"[..], b"GET / HTTP/1.1\r\nHost: a.test\r\n", b""] {
        let mut r = raw(p.http.unwrap()).await;
        r.send(partial).await;
        let t = Instant::now();
        assert!(
            r.closed_within(Duration::from_secs(5)).await,
            "connection with {partial:?} was not closed"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "closed too early: {:?}",
            t.elapsed()
        );
    }
    // Over TLS too, with nothing sent after the handshake.
    let mut r = Raw::new(
        tls_connect(p.https.unwrap(), "localhost", &[b"h2", b"http/1.1"], BOTH)
            .await
            .stream,
    );
    assert!(
        r.closed_within(Duration::from_secs(5)).await,
        "silent TLS connection was not closed"
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_is_closed_but_a_slow_request_is_not() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "idle_timeout = \"500ms\"\nheader_timeout = \"5s\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("a.test", "/")).await;
    assert_eq!(r.response().await.status(), 200);
    let t = Instant::now();
    assert!(
        r.closed_within(Duration::from_secs(4)).await,
        "idle keep-alive connection was not closed"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed too early: {:?}",
        t.elapsed()
    );

    // A request that takes three idle periods is in flight, not idle.
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("a.test", "/slow?ms=1500")).await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body, b"a");

    // h2: an idle connection is closed as well.
    let mut r = Raw::new(
        tls_connect(p.https.unwrap(), "localhost", &[b"h2"], BOTH)
            .await
            .stream,
    );
    r.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await;
    assert!(
        r.closed_within(Duration::from_secs(4)).await,
        "idle h2 connection was not closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_extra_connections_while_existing_ones_work() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "max_connections = 2",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let mut one = raw(p.http.unwrap()).await;
    one.send(&get("a.test", "/")).await;
    assert_eq!(one.response().await.status(), 200);
    let mut two = Raw::new(
        tls_connect(p.https.unwrap(), "localhost", &[b"http/1.1"], BOTH)
            .await
            .stream,
    );
    two.send(&get("a.test", "/")).await;
    assert_eq!(two.response().await.status(), 200);

    let mut three = raw(p.http.unwrap()).await;
    let _ = three.s.write_all(&get("a.test", "/")).await;
    assert!(
        three.closed_within(Duration::from_secs(5)).await,
        "third connection was served"
    );
    assert!(
        three.buf.is_empty(),
        "the refused connection got bytes: {:?}",
        String::from_utf8_lossy(&three.buf)
    );
    assert!(
        TcpStream::connect(p.https.unwrap()).await.is_ok(),
        "the kernel still accepts; the proxy closes"
    );

    for _ in 0..3 {
        one.send(&get("a.test", "/")).await;
        assert_eq!(one.response().await.body, b"a");
        two.send(&get("a.test", "/")).await;
        assert_eq!(two.response().await.body, b"a");
    }
    // A slot frees when a connection closes.
    drop(one);
    wait_until_async(IO_DEADLINE, "a freed connection slot", || async {
        let mut r = raw(p.http.unwrap()).await;
        r.s.write_all(&get("a.test", "/")).await.ok()?;
        let mut b = [0u8; 12];
        match tokio::time::timeout(Duration::from_secs(2), r.s.read_exact(&mut b)).await {
            Ok(Ok(_)) if &b == b"HTTP/1.1 200" => Some(()),
            _ => None,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    let a = Backend::start("a").await;
    let mut p = Proxy::start("", &site("a", &["a.test"], &[a.addr], &[], ""));
    let c = client(&p, &["a.test"]);
    let url = p.surl("a.test", "/slow?ms=1500");
    let inflight = tokio::spawn(async move {
        let r = c.get(url).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    });
    wait_until_async(
        IO_DEADLINE,
        "the slow request to reach the backend",
        || async { (a.hits() > 0).then_some(()) },
    )
    .await;
    let t = Instant::now();
    p.signal(libc::SIGTERM);
    let (http, https) = (p.http.unwrap(), p.https.unwrap());
    wait_until_async(
        IO_DEADLINE,
        "listeners to refuse new connections",
        || async {
            (TcpStream::connect(http).await.is_err() && TcpStream::connect(https).await.is_err())
                .then_some(())
        },
    )
    .await;
    assert!(
        !inflight.is_finished(),
        "the slow request must still be running when new connections are refused"
    );
    let (status, body) = inflight.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    let mut child = p.child.take().unwrap();
    let status = wait_until(Duration::from_secs(20), "the proxy to exit", || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", p.stderr_text());
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request() {
    let a = Backend::start("a").await;
    let t = Proxy::tempdir();
    let dir = t.path().to_path_buf();
    let log = dir.join("logs/access.log");
    let toml = proxy_section(&dir, &format!("access_log = \"{}\"", log.display()))
        + &site("a", &["a.test"], &[a.addr], &[], "");
    let p = Proxy::start_in(Some(t), &dir, &toml).unwrap();
    let c = client(&p, &["a.test", "nope.test"]);
    assert_eq!(
        c.get(p.surl("a.test", "/big?mib=1"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len(),
        1 << 20
    );
    assert_eq!(
        c.post(p.surl("a.test", "/echo"))
            .body("12345")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "12345"
    );
    assert_eq!(
        c.get(p.surl("nope.test", "/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("a.test", "/status/418")).await;
    assert_eq!(r.response().await.status(), 418);

    let lines = wait_until(IO_DEADLINE, "4 access log lines", || {
        let s = std::fs::read_to_string(&log).ok()?;
        let l: Vec<String> = s.lines().map(str::to_string).collect();
        (l.len() >= 4).then_some(l)
    });
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let f = |i: usize| {
        lines[i]
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let backend = a.addr.to_string();
    // time client host method path status bytes duration color backend
    let l = f(0);
    assert_eq!(
        &l[1..7],
        &[
            "127.0.0.1",
            &format!("a.test:{}", p.https.unwrap().port()),
            "GET",
            "/big?mib=1",
            "200",
            &(1u64 << 20).to_string()
        ],
        "{l:?}"
    );
    assert_eq!(&l[8..], &["blue", backend.as_str()], "{l:?}");
    let l = f(1);
    assert_eq!(
        (l[3].as_str(), l[5].as_str(), l[6].as_str(), l[8].as_str()),
        ("POST", "200", "5", "blue"),
        "{l:?}"
    );
    let l = f(2);
    assert_eq!(
        (l[5].as_str(), l[8].as_str(), l[9].as_str()),
        ("404", "-", "-"),
        "{l:?}"
    );
    let l = f(3);
    assert_eq!(
        (l[2].as_str(), l[4].as_str(), l[5].as_str(), l[9].as_str()),
        ("a.test", "/status/418", "418", backend.as_str()),
        "{l:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_whose_request_was_cancelled_still_goes_idle() {
    // A client that resets its stream while the proxy waits on the upstream: the proxy drops the
    // handler; the connection must not count that request as in flight forever.
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "idle_timeout = \"500ms\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let tls = tls_connect(p.https.unwrap(), "a.test", &[b"h2"], BOTH).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls.stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = || {
        http::Request::get("https://a.test/slow?ms=5000")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), send.send_request(req())).await;
    assert!(
        cancelled.is_err(),
        "the slow request was cut short by the client"
    );
    wait_until_async(
        IO_DEADLINE,
        "the cancelled request to reach the backend",
        || async { (a.hits() > 0).then_some(()) },
    )
    .await;
    let t = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), conn).await;
    assert!(
        closed.is_ok(),
        "the idle h2 connection was kept open after its only request was cancelled"
    );
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_forwarding_and_connection_lines_are_all_honoured() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let mut r = raw(p.http.unwrap()).await;
    r.send(
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n\
Connection: keep-alive\r\nConnection: X-One, X-Two\r\nX-One: 1\r\nX-Two: 2\r\nX-Three: 3\r\nTE: gzip\r\nTE: trailers\r\n\r\n",
    )
    .await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 200, "{resp:?}");
    let h: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        h["x-forwarded-for"],
        "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
    );
    assert!(h.get("x-one").is_none() && h.get("x-two").is_none(), "{h}");
    assert_eq!(h["x-three"], "3");
    assert_eq!(h["te"], "trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_cut_off() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "handshake_timeout = \"500ms\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    for hello in [&b""[..], b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"] {
        let mut r = raw(p.https.unwrap()).await;
        r.send(hello).await;
        let t = Instant::now();
        assert!(
            r.closed_within(Duration::from_secs(5)).await,
            "stalled handshake ({} bytes) not closed",
            hello.len()
        );
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "closed too early: {:?}",
            t.elapsed()
        );
    }
    // A real handshake afterwards is fine.
    let c = client(&p, &["a.test"]);
    assert_eq!(text(&c, &p.surl("a.test", "/"), None).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_keep_alive_connections_exits_promptly() {
    // Idle h1 and h2 keep-alive connections must not hold the shutdown to its 30 s deadline.
    let a = Backend::start("a").await;
    let mut p = Proxy::start("", &site("a", &["a.test"], &[a.addr], &[], ""));
    let c = client(&p, &["a.test"]);
    assert_eq!(
        c.get(p.surl("a.test", "/")).send().await.unwrap().version(),
        reqwest::Version::HTTP_2
    );
    let mut h1 = raw(p.http.unwrap()).await;
    h1.send(&get("a.test", "/")).await;
    assert_eq!(h1.response().await.status(), 200);
    let mut tls_h1 = Raw::new(
        tls_connect(p.https.unwrap(), "a.test", &[b"http/1.1"], BOTH)
            .await
            .stream,
    );
    tls_h1.send(&get("a.test", "/")).await;
    assert_eq!(tls_h1.response().await.status(), 200);
    let t = Instant::now();
    let status = p.stop();
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with idle connections open",
        t.elapsed()
    );
    assert!(h1.closed_within(Duration::from_secs(1)).await);
    assert!(tls_h1.closed_within(Duration::from_secs(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_far_past_the_limit_gets_413_not_a_reset() {
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "max_body_bytes = \"1MiB\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let up = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))),
    );
    let r = h1
        .post(p.url("/count"))
        .header("host", "a.test")
        .body(reqwest::Body::wrap_stream(up))
        .send()
        .await;
    assert_eq!(
        r.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}")),
        Ok(413),
        "h1"
    );
    let c = client(&p, &["a.test"]);
    let up = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))),
    );
    let r = c
        .post(p.surl("a.test", "/count"))
        .body(reqwest::Body::wrap_stream(up))
        .send()
        .await;
    assert_eq!(
        r.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}")),
        Ok(413),
        "h2"
    );
    // Expect: 100-continue with a declared length over the limit: 413 instead of 100.
    let mut r = raw(p.http.unwrap()).await;
    r.send(b"POST /count HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n\r\n").await;
    let resp = r.response().await;
    assert_eq!(resp.status(), 413, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_outlives_the_header_timeout_up_to_the_idle_timeout() {
    // hyper's header_read_timeout also runs between keep-alive requests; it must not cut an idle
    // connection at header_timeout when idle_timeout is longer. A head trickling in after the
    // idle spell still gets only header_timeout.
    let a = Backend::start("a").await;
    let p = Proxy::start(
        "idle_timeout = \"2s\"\nheader_timeout = \"400ms\"",
        &site("a", &["a.test"], &[a.addr], &[], ""),
    );
    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("a.test", "/")).await;
    assert_eq!(r.response().await.status(), 200);
    let t = Instant::now();
    assert!(
        !r.closed_within(Duration::from_millis(1200)).await,
        "keep-alive closed after {:?}, before idle_timeout",
        t.elapsed()
    );
    r.send(&get("a.test", "/")).await;
    assert_eq!(
        r.response().await.body,
        b"a",
        "the kept connection still serves"
    );
    let t = Instant::now();
    assert!(
        r.closed_within(Duration::from_secs(5)).await,
        "not closed after idle_timeout"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1800),
        "closed after {:?}",
        t.elapsed()
    );

    let mut r = raw(p.http.unwrap()).await;
    r.send(&get("a.test", "/")).await;
    assert_eq!(r.response().await.status(), 200);
    r.send(b"GET / HTTP/1.1\r\nHost: a.te").await;
    let t = Instant::now();
    assert!(
        r.closed_within(Duration::from_secs(3)).await,
        "a partial second head was not cut off"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "partial head lived {:?}, past header_timeout",
        t.elapsed()
    );
}
