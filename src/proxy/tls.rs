//! TLS with rustls: TLS 1.2 and 1.3 only, ALPN h2 + http/1.1, and a certificate chosen by SNI from
//! the NAME.crt + NAME.key pairs in the certs folder, then from the ACME ones (`src/acme/`). The
//! store sits behind an `ArcSwap`, so a reload or a new ACME certificate applies to new handshakes
//! without touching live connections. With ACME on, a ClientHello whose ALPN is exactly
//! `acme-tls/1` gets the TLS-ALPN-01 challenge certificate, read from another `ArcSwap`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::acme::Challenges;

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

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// A hand-made NAME.crt + NAME.key pair in `proxy.certs`.
    File,
    /// Obtained from the `[acme]` directory, kept in its storage folder.
    Acme,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::File => "file",
            CertSource::Acme => "acme",
        }
    }
}

/// What status shows of one certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The file stem (for ACME: the site's name).
    pub stem: String,
    pub names: Vec<String>,
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    pub source: CertSource,
}

/// The certificates, by name. Hand-made pairs come first: an ACME certificate answers only for a
/// name no hand-made one covers, exactly or by wildcard.
#[derive(Debug, Default, Clone)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Key: the suffix with its leading dot (`*.example.org` → `.example.org`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// ACME certificates by exact name, with the stem (site) they belong to.
    acme: HashMap<String, (Arc<str>, Arc<CertifiedKey>)>,
    default: Option<Arc<CertifiedKey>>,
    /// (file stem, names) of the hand-made pairs, for reload's answer and logs.
    pub loaded: Vec<(String, Vec<String>)>,
    /// Every certificate, hand-made and ACME, for status and metrics.
    pub info: Vec<CertInfo>,
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
            if let Some((_, c)) = self.acme.get(&name) {
                return Some(c.clone());
            }
        }
        self.default.clone()
    }

    /// The hand-made pair that answers for `name`, if one does (it wins over ACME).
    pub fn hand_made_for(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.info
            .iter()
            .filter(|i| i.source == CertSource::File)
            .find(|i| {
                i.names.iter().any(|n| match n.strip_prefix('*') {
                    Some(suffix) => {
                        name.len() > suffix.len()
                            && name.ends_with(suffix)
                            && !name[..name.len() - suffix.len()].contains('.')
                    }
                    None => *n == name,
                })
            })
            .map(|i| i.stem.as_str())
    }

    /// The ACME certificate of `stem` (a site): replaces the one it had.
    pub fn put_acme(&mut self, stem: &str, ck: Arc<CertifiedKey>, info: CertInfo) {
        self.acme.retain(|_, (s, _)| &**s != stem);
        self.info
            .retain(|i| !(i.source == CertSource::Acme && i.stem == stem));
        let s: Arc<str> = stem.into();
        for n in &info.names {
            if !n.starts_with("*.") {
                self.acme.insert(n.clone(), (s.clone(), ck.clone()));
            }
        }
        if self.default.is_none() {
            self.default = Some(ck);
        }
        self.info.push(info);
    }

    /// Keeps `cur`'s ACME certificates that are newer than (or missing from) this store's: a
    /// reload read the folders while an order was installing one.
    pub fn keep_newer_acme(&mut self, cur: &CertStore) {
        for ci in cur.info.iter().filter(|i| i.source == CertSource::Acme) {
            let mine = self
                .info
                .iter()
                .find(|i| i.source == CertSource::Acme && i.stem == ci.stem);
            if mine.is_some_and(|m| m.not_before >= ci.not_before) {
                continue;
            }
            let ck = ci
                .names
                .iter()
                .find_map(|n| cur.acme.get(n))
                .map(|(_, c)| c.clone());
            if let Some(ck) = ck {
                self.put_acme(&ci.stem, ck, ci.clone());
            }
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads every NAME.crt + NAME.key pair of `dir`. The names served are the certificate's DNS SANs;
/// `default.crt` (or else the first pair by name) answers clients that send no or an unknown SNI.
pub fn load_dir(dir: &Path) -> Result<CertStore, TlsError> {
    load_store(dir, None)
}

/// The hand-made pairs of `dir`, then (with `acme`, the ACME storage folder) the ACME ones. With
/// ACME the certs folder may be empty (the certificates are on their way); a broken ACME pair is
/// skipped with a warning (it is ordered again), a broken hand-made one refuses the whole load.
pub fn load_store(dir: &Path, acme: Option<&Path>) -> Result<CertStore, TlsError> {
    let mut store = CertStore::default();
    let provider = provider();
    for crt in crt_files(dir)? {
        let (ck, names, (not_before, not_after)) = load_pair(&provider, &crt)?;
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
        let stem = stem_of(&crt);
        if stem == "default" || store.default.is_none() {
            store.default = Some(ck.clone());
        }
        store.info.push(CertInfo {
            stem: stem.clone(),
            names: names.clone(),
            not_before,
            not_after,
            source: CertSource::File,
        });
        store.loaded.push((stem, names));
    }
    for k in std::fs::read_dir(dir)
        .map_err(|e| TlsError::Dir(dir.into(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
    {
        if !k.with_extension("crt").exists() {
            return Err(TlsError::Missing(k.clone(), "key", "certificate"));
        }
    }
    match acme {
        None if store.loaded.is_empty() => return Err(TlsError::Empty(dir.into())),
        None => {}
        Some(adir) => {
            // A folder not made yet holds nothing: the first order makes it.
            for crt in crt_files(adir).unwrap_or_default() {
                match load_pair(&provider, &crt) {
                    Ok((ck, names, (not_before, not_after))) => {
                        let stem = stem_of(&crt);
                        let info = CertInfo {
                            stem: stem.clone(),
                            names,
                            not_before,
                            not_after,
                            source: CertSource::Acme,
                        };
                        store.put_acme(&stem, Arc::new(ck), info);
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "ACME certificate skipped; it will be ordered again"
                    ),
                }
            }
        }
    }
    Ok(store)
}

fn crt_files(dir: &Path) -> Result<Vec<PathBuf>, TlsError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TlsError::Dir(dir.into(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    entries.sort();
    Ok(entries)
}

fn stem_of(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_string()
}

/// (not before, not after).
pub type Validity = (Option<SystemTime>, Option<SystemTime>);

/// One NAME.crt + NAME.key pair: the key checked against the certificate, the names served.
fn load_pair(
    provider: &CryptoProvider,
    crt: &Path,
) -> Result<(CertifiedKey, Vec<String>, Validity), TlsError> {
    let key = crt.with_extension("key");
    if !key.exists() {
        return Err(TlsError::Missing(crt.to_path_buf(), "certificate", "key"));
    }
    let chain_pem =
        std::fs::read(crt).map_err(|e| TlsError::NoCert(crt.to_path_buf(), e.to_string()))?;
    let key_pem = std::fs::read(&key).map_err(|e| TlsError::Key(key.clone(), e.to_string()))?;
    pair(provider, crt, &key, &chain_pem, &key_pem)
}

/// A chain and key in PEM (`label`: the file they are or will be), checked as a NAME.crt +
/// NAME.key pair is: the ACME task checks what the CA issued before it writes or serves it.
pub fn pair_from_pem(
    label: &Path,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(CertifiedKey, Vec<String>, Validity), TlsError> {
    pair(
        &provider(),
        label,
        &label.with_extension("key"),
        chain_pem,
        key_pem,
    )
}

fn pair(
    provider: &CryptoProvider,
    crt: &Path,
    key: &Path,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(CertifiedKey, Vec<String>, Validity), TlsError> {
    let key = key.to_path_buf();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NoCert(crt.to_path_buf(), e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(crt.to_path_buf(), "empty".into()));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Key(key.clone(), e.to_string()))?;
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Key(key.clone(), e.to_string()))?;
    let ck = CertifiedKey::new(chain, signer);
    if ck.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            crt: crt.to_path_buf(),
            key,
        });
    }
    let (names, validity) = names_and_validity(crt, &ck.cert[0])?;
    Ok((ck, names, validity))
}

/// A certificate's DNS SANs (else its CN) and its validity.
pub fn names_and_validity(
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<(Vec<String>, Validity), TlsError> {
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
    let at = |t: ASN1Time| {
        u64::try_from(t.timestamp())
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    };
    let v = cert.validity();
    Ok((names, (at(v.not_before), at(v.not_after))))
}

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737). A connection that negotiated it is closed after the
/// handshake: it carries no HTTP.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A ClientHello that offers `acme-tls/1` and nothing else: a CA validating TLS-ALPN-01.
fn acme_only<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let Some(mut it) = alpn else {
        return false;
    };
    it.next() == Some(ACME_TLS_ALPN) && it.next().is_none()
}

/// Picks the certificate for each handshake from the current store; a TLS-ALPN-01 validation
/// (ALPN exactly `acme-tls/1`) gets the challenge certificate for its SNI, or nothing.
#[derive(Debug)]
pub struct Resolver {
    store: Arc<ArcSwap<CertStore>>,
    challenges: Option<Arc<ArcSwap<Challenges>>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(ch) = &self.challenges {
            if acme_only(hello.alpn()) {
                return hello.server_name().and_then(|n| ch.load().tls_alpn01(n));
            }
        }
        self.store.load().get(hello.server_name())
    }
}

/// The server config: TLS 1.2 + 1.3 with rustls's default (strong, forward-secret) suites.
pub fn server_config(store: Arc<ArcSwap<CertStore>>) -> Arc<ServerConfig> {
    server_config_with(store, None)
}

/// [`server_config`], also answering TLS-ALPN-01 validations from `challenges` (ACME on):
/// `acme-tls/1` is offered last, so a client that also offers h2 or http/1.1 never gets it.
pub fn server_config_with(
    store: Arc<ArcSwap<CertStore>>,
    challenges: Option<Arc<ArcSwap<Challenges>>>,
) -> Arc<ServerConfig> {
    let acme = challenges.is_some();
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS 1.2/1.3 are supported by the provider")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { store, challenges }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme {
        cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
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

#[cfg(test)]
mod acme_tests {
    use super::*;

    #[test]
    fn only_a_hello_offering_acme_tls_alone_is_a_validation() {
        let one: &[&[u8]] = &[ACME_TLS_ALPN];
        assert!(acme_only(Some(one.iter().copied())));
        let mixed: &[&[u8]] = &[ACME_TLS_ALPN, b"h2"];
        assert!(!acme_only(Some(mixed.iter().copied())));
        let none: &[&[u8]] = &[];
        assert!(!acme_only(Some(none.iter().copied())));
        assert!(!acme_only(
            None::<std::slice::Iter<'_, &[u8]>>.map(|i| i.copied())
        ));
    }

    #[test]
    fn hand_made_wins_over_acme() {
        let d = tempfile::tempdir().unwrap();
        write_self_signed(d.path(), "w", &["*.w.test"]).unwrap();
        let acme = d.path().join("acme");
        write_self_signed(&acme, "site", &["a.w.test", "b.test"]).unwrap();
        let s = load_store(d.path(), Some(&acme)).unwrap();
        let hand = s.get(Some("x.w.test")).unwrap();
        assert!(Arc::ptr_eq(&s.get(Some("a.w.test")).unwrap(), &hand));
        assert!(!Arc::ptr_eq(&s.get(Some("b.test")).unwrap(), &hand));
        assert_eq!(s.hand_made_for("a.w.test"), Some("w"));
        assert_eq!(s.hand_made_for("b.test"), None);
        assert_eq!(s.hand_made_for("x.y.w.test"), None);
        // With ACME on, an empty certs folder is fine; without, it is refused.
        let e = tempfile::tempdir().unwrap();
        assert!(load_store(e.path(), Some(&acme)).is_ok());
        assert!(load_dir(e.path()).is_err());
    }
}
