//! The ACME files: per site `<storage>/<site>.crt` (the chain, leaf first), `<site>.key` (mode
//! 0600) and `<site>.json` (when it was issued, its expiry, the last error and the next attempt);
//! and the account key. Every file is written atomically: a temp file of the final mode, fsync,
//! rename, fsync of the folder; the key is renamed into place before the certificate, so a crash
//! between the two leaves a pair that fails its key check and is ordered again, never a new
//! certificate beside an old key that is served.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use super::AcmeError;

/// `<site>.json`: what status shows after a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub names: Vec<String>,
    /// RFC 3339.
    #[serde(default)]
    pub issued_at: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at: Option<String>,
    /// Orders failed in a row (the backoff's exponent).
    #[serde(default)]
    pub failures: u32,
    /// Not before this (backoff, or the CA's Retry-After).
    #[serde(default)]
    pub next_attempt: Option<String>,
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

pub fn meta_path(dir: &Path, site: &str) -> PathBuf {
    dir.join(format!("{site}.json"))
}

/// The site's meta file; a missing or unreadable one is an empty record (it is only a record).
pub fn load_meta(dir: &Path, site: &str) -> Meta {
    let p = meta_path(dir, site);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(file = %p.display(), error = %e, "ACME record unreadable; starting a new one");
            Meta::default()
        }),
        Err(_) => Meta::default(),
    }
}

pub fn save_meta(dir: &Path, site: &str, meta: &Meta) -> Result<(), AcmeError> {
    let p = meta_path(dir, site);
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| AcmeError::Internal(e.to_string()))?;
    write_atomic(&p, &bytes, 0o644)
}

/// Writes the site's key (0600) and then its chain.
pub fn save_pair(dir: &Path, site: &str, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
    write_atomic(&dir.join(format!("{site}.key")), key_pem.as_bytes(), 0o600)?;
    write_atomic(
        &dir.join(format!("{site}.crt")),
        chain_pem.as_bytes(),
        0o644,
    )
}

/// The storage folder, made 0700 if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), AcmeError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| AcmeError::Storage(dir.to_path_buf(), e))
}

/// tmp (created with `mode`) + fsync + rename + fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AcmeError> {
    let err = |e| AcmeError::Storage(path.to_path_buf(), e);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    ensure_dir(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("acme");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = o.open(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// The account key (PEM PKCS#8, ECDSA P-256): read, or made (mode 0600) when the file is missing.
/// Returns the DER and whether it was made now.
pub fn account_key(path: &Path) -> Result<(PrivatePkcs8KeyDer<'static>, bool), AcmeError> {
    if path.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                if m.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(file = %path.display(), "the ACME account key is readable by others; chmod 600 it");
                }
            }
        }
        return match PrivateKeyDer::from_pem_file(path) {
            Ok(PrivateKeyDer::Pkcs8(k)) => Ok((k, false)),
            Ok(_) => Err(AcmeError::AccountKey(
                path.to_path_buf(),
                "it is not a PKCS#8 key".into(),
            )),
            Err(e) => Err(AcmeError::AccountKey(path.to_path_buf(), e.to_string())),
        };
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AcmeError::Internal(format!("cannot make an account key: {e}")))?;
    write_atomic(path, key.serialize_pem().as_bytes(), 0o600)?;
    tracing::info!(file = %path.display(), "made a new ACME account key");
    Ok((PrivatePkcs8KeyDer::from(key.serialize_der()), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_atomic_and_the_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("acme");
        save_pair(&dir, "wiki", "CHAIN", "KEY").unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("wiki.key"), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join("wiki.crt")).unwrap(),
            "CHAIN"
        );
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let m = Meta {
            last_error: Some("boom".into()),
            failures: 2,
            ..Meta::default()
        };
        save_meta(&dir, "wiki", &m).unwrap();
        let back = load_meta(&dir, "wiki");
        assert_eq!(back.failures, 2);
        assert_eq!(back.last_error.as_deref(), Some("boom"));
        assert_eq!(load_meta(&dir, "none").failures, 0);
        // no temp file left behind
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);

        let key = dir.join("account.key");
        let (k1, made) = account_key(&key).unwrap();
        assert!(made);
        assert_eq!(mode("account.key"), 0o600);
        let (k2, made) = account_key(&key).unwrap();
        assert!(!made);
        assert_eq!(k1.secret_pkcs8_der(), k2.secret_pkcs8_der());
        std::fs::write(&key, "junk").unwrap();
        assert!(account_key(&key)
            .unwrap_err()
            .to_string()
            .contains("account.key"));
    }
}
