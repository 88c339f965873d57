//! TLS with rustls: TLS 1.2 and 1.3 only, ALPN h2 + http/1.1, and a certificate chosen by SNI from
//! the NAME.crt + NAME.key pairs in the certs folder. The store sits behind an `ArcSwap`, so a reload
//! applies to new handshakes without touching live connections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certs folder {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("{0}: no certificate found in the file ({1}); it must hold a PEM chain, leaf first")]
    NoCert(PathBuf, String),
    #[error("{0}: cannot read the private key ({1}); it must be a PEM PKCS#8, PKCS#1 or SEC1 key")]
    Key(PathBuf, String),
    #[error("{0}: {1} has no matching {2}; put each NAME.crt beside its NAME.key")]
    Missing(PathBuf, &'static str, &'static str),
    #[error("{key}: this key does not match the certificate {crt}; check that the pair belongs together")]
    Mismatch { crt: PathBuf, key: PathBuf },
    #[error("{0}: cannot read the certificate's names: {1}")]
    Parse(PathBuf, String),
    #[error("certs folder {0} holds no NAME.crt + NAME.key pair; add one (for testing: `switchyard demo` makes one)")]
    Empty(PathBuf),
}

/// The certificates, by name.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Key: the suffix with its leading dot (`*.example.org` → `.example.org`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// (file stem, names) for status and logs.
    pub loaded: Vec<(String, Vec<String>)>,
}

impl CertStore {
    pub fn get(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c.clone());
            }
            if let Some(dot) = name.find('.') {
                if let Some(c) = self.wildcard.get(&name[dot..]) {
                    return Some(c.clone());
                }
            }
        }
        self.default.clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads every NAME.crt + NAME.key pair of `dir`. The names served are the certificate's DNS SANs;
/// `default.crt` (or else the first pair by name) answers clients that send no or an unknown SNI.
pub fn load_dir(dir: &Path) -> Result<CertStore, TlsError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TlsError::Dir(dir.into(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut store = CertStore::default();
    let provider = provider();
    for crt in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
    {
        let key = crt.with_extension("key");
        if !key.exists() {
            return Err(TlsError::Missing(crt.clone(), "certificate", "key"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt)
            .map_err(|e| TlsError::NoCert(crt.clone(), e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::NoCert(crt.clone(), e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCert(crt.clone(), "empty".into()));
        }
        let der = PrivateKeyDer::from_pem_file(&key)
            .map_err(|e| TlsError::Key(key.clone(), e.to_string()))?;
        let signer = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| TlsError::Key(key.clone(), e.to_string()))?;
        let ck = CertifiedKey::new(chain, signer);
        if ck.keys_match().is_err() {
            return Err(TlsError::Mismatch {
                crt: crt.clone(),
                key,
            });
        }
        let names = dns_names(crt, &ck.cert[0])?;
        let ck = Arc::new(ck);
        for n in &names {
            match n.strip_prefix("*.") {
                Some(rest) => {
                    store
                        .wildcard
                        .entry(format!(".{rest}"))
                        .or_insert_with(|| ck.clone());
                }
                None => {
                    store.exact.entry(n.clone()).or_insert_with(|| ck.clone());
                }
            }
        }
        let stem = crt
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if stem == "default" || store.default.is_none() {
            store.default = Some(ck.clone());
        }
        store.loaded.push((stem, names));
    }
    for k in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
    {
        if !k.with_extension("crt").exists() {
            return Err(TlsError::Missing(k.clone(), "key", "certificate"));
        }
    }
    if store.loaded.is_empty() {
        return Err(TlsError::Empty(dir.into()));
    }
    Ok(store)
}

fn dns_names(path: &Path, der: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| TlsError::Parse(path.into(), e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::DNSName(n) = gn {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Picks the certificate for each handshake from the current store.
#[derive(Debug)]
pub struct Resolver(pub Arc<ArcSwap<CertStore>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().get(hello.server_name())
    }
}

/// The server config: TLS 1.2 + 1.3 with rustls's default (strong, forward-secret) suites.
pub fn server_config(store: Arc<ArcSwap<CertStore>>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2/1.3 are supported by the provider")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's suite order (strongest first) wins over the client's.
    cfg.ignore_client_order = true;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    if let Ok(t) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        cfg.ticketer = t;
    }
    Arc::new(cfg)
}

/// Makes a self-signed certificate for `names` and writes NAME.crt/NAME.key into `dir`.
pub fn write_self_signed(dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<()> {
    let key_pair = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    // A dev certificate valid for a year, like a real one, not rcgen's default of centuries.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key_pair)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{stem}.crt")), cert.pem())?;
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&key, key_pair.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_exact_wildcard_default_and_mismatch() {
        let d = tempfile::tempdir().unwrap();
        write_self_signed(d.path(), "a", &["a.test"]).unwrap();
        write_self_signed(d.path(), "w", &["*.w.test"]).unwrap();
        let s = load_dir(d.path()).unwrap();
        let a = s.get(Some("a.test")).unwrap();
        let w = s.get(Some("x.w.test")).unwrap();
        assert!(!Arc::ptr_eq(&a, &w));
        assert!(
            Arc::ptr_eq(&s.get(None).unwrap(), &a),
            "first pair is the default"
        );
        // swap the keys: a clear mismatch error
        std::fs::rename(d.path().join("w.key"), d.path().join("tmp")).unwrap();
        std::fs::copy(d.path().join("a.key"), d.path().join("w.key")).unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}
