//! A real ACME CA on 127.0.0.1 for the ACME tests: Debian's `pebble`, with `pebble-challtestsrv`
//! as its DNS server (every name resolves to 127.0.0.1 unless a test says otherwise). Pebble's own
//! HTTPS certificate comes from a CA made here with rcgen (Debian ships none); its validation ports
//! are the proxy's listeners, so the proxy's ports are chosen before either starts. Both processes
//! run under `timeout` (so nothing outlives a killed test run) and are stopped on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use super::wait_until_async;

/// The longest a CA process may live.
const LIFETIME: &str = "180";

/// Whether the ACME tests can run: pebble is installed. Without it they are skipped, loudly,
/// unless CI=true, where they are required.
pub fn available() -> bool {
    let have = |b: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("pebble") && have("pebble-challtestsrv") {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true: the ACME tests need Debian's `pebble` package (pebble and pebble-challtestsrv); .ci/run installs it");
    }
    eprintln!("\n*** SKIPPED: ACME test: `pebble` is not installed (apt-get install pebble); with CI=true this fails ***\n");
    false
}

/// A free TCP port on 127.0.0.1 (bound and released: the listener that takes it comes soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What Pebble is told.
pub struct Options {
    /// The proxy's plain and TLS ports: where the VA validates.
    pub http_port: u16,
    pub tls_port: u16,
    /// Seconds a certificate is valid (Pebble's default is 5 years).
    pub validity_s: Option<u64>,
}

pub struct Pebble {
    dir: PathBuf,
    /// `https://127.0.0.1:PORT/dir`
    pub directory: String,
    /// The CA of Pebble's own HTTPS listener (for `[acme] ca_certs`).
    pub ca_pem: PathBuf,
    pub mgmt: SocketAddr,
    /// challtestsrv's management API (plain HTTP).
    pub dns_mgmt: SocketAddr,
    listen: SocketAddr,
    config: PathBuf,
    dns: SocketAddr,
    pebble: Option<Child>,
    challtestsrv: Option<Child>,
    /// Pebble's log lines.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Pebble {
    /// Starts challtestsrv and Pebble in `dir` and waits until both answer.
    pub async fn start(dir: &Path, o: Options) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        // A CA and Pebble's HTTPS certificate for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test CA for pebble");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let ca_pem = dir.join("test-ca.pem");
        std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();

        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns_mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": o.http_port,
            "tlsPort": o.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = o.validity_s {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let config = dir.join("pebble-config.json");
        std::fs::write(&config, cfg.to_string()).unwrap();

        let challtestsrv = Command::new("timeout")
            .args([LIFETIME, "pebble-challtestsrv"])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args([
                "-dns01",
                &dns.to_string(),
                "-management",
                &dns_mgmt.to_string(),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let mut p = Pebble {
            dir,
            directory: format!("https://{listen}/dir"),
            ca_pem,
            mgmt,
            dns_mgmt,
            listen,
            config,
            dns,
            pebble: None,
            challtestsrv: Some(challtestsrv),
            log: Arc::default(),
        };
        wait_until_async(
            Duration::from_secs(15),
            "pebble-challtestsrv to listen",
            || {
                let a = p.dns_mgmt;
                async move { tokio::net::TcpStream::connect(a).await.ok().map(|_| ()) }
            },
        )
        .await;
        p.run_ca().await;
        p
    }

    /// Starts Pebble (again) and waits for its directory.
    pub async fn run_ca(&mut self) {
        let mut child = Command::new("timeout")
            .args([LIFETIME, "pebble", "-config"])
            .arg(&self.config)
            .args(["-dnsserver", &self.dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pebble");
        for pipe in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(l);
                }
            });
        }
        self.pebble = Some(child);
        let client = self.client();
        let url = self.directory.clone();
        let log = self.log.clone();
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let Ok(r) = client.get(&url).send().await {
                    if r.status().is_success() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if ready.is_err() {
            panic!(
                "pebble did not serve its directory within 15 s:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
    }

    /// Stops Pebble (the CA is down); challtestsrv stays.
    pub fn stop_ca(&mut self) {
        if let Some(c) = self.pebble.take() {
            stop(c);
        }
    }

    /// An HTTPS client trusting Pebble's listener.
    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca_pem).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// The root that issues the certificates (management API `/roots/0`).
    pub async fn root(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        let pem = self
            .client()
            .get(format!("https://{}/roots/0", self.mgmt))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        CertificateDer::from_pem_slice(&pem).expect("a PEM root from pebble")
    }

    /// Makes `host` resolve to `addr` (challtestsrv's mock DNS).
    pub async fn resolve(&self, host: &str, addr: &str) {
        let r = reqwest::Client::new()
            .post(format!("http://{}/add-a", self.dns_mgmt))
            .body(serde_json::json!({"host": format!("{host}."), "addresses": [addr]}).to_string())
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "challtestsrv add-a: {}",
            r.status()
        );
    }

    /// New orders Pebble has taken so far (from its log).
    pub fn orders(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("POST /order-plz"))
            .count()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// SIGTERM to `timeout`, which passes it on to its command; then reaps it.
fn stop(mut c: Child) {
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(c) = self.pebble.take() {
            stop(c);
        }
        if let Some(c) = self.challtestsrv.take() {
            stop(c);
        }
    }
}

/// The certificate `addr` serves for `host`, verified against `root` (chain and name), as
/// (serial in hex, names); Err says why the handshake or the verification failed.
pub async fn served(
    addr: SocketAddr,
    host: &str,
    root: &CertificateDer<'static>,
) -> Result<(String, Vec<String>), String> {
    served_alpn(addr, host, root, &[b"h2", b"http/1.1"]).await
}

/// [`served`], offering the ALPN protocols `alpn`.
pub async fn served_alpn(
    addr: SocketAddr,
    host: &str,
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Result<(String, Vec<String>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .clone();
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((cert.raw_serial_as_string(), names))
}
