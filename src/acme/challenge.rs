//! The answers to the CA's challenges while an order is pending, as the request path reads them:
//! one immutable [`Challenges`] behind an `ArcSwap`, replaced whole (rcu) when an order publishes
//! or withdraws an answer. The edge loads it only for a request under
//! `/.well-known/acme-challenge/` on the plain listener, or a ClientHello that offers nothing but
//! `acme-tls/1`; no lock either way.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::AcmeError;

/// Where HTTP-01 asks (RFC 8555 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The pending answers.
#[derive(Debug, Default, Clone)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http: HashMap<Box<str>, Arc<str>>,
    /// TLS-ALPN-01: host name → the self-signed certificate with the acmeIdentifier extension.
    tls: HashMap<Box<str>, Arc<CertifiedKey>>,
}

impl Challenges {
    /// The key authorization for an HTTP-01 token.
    #[inline]
    pub fn http01(&self, token: &str) -> Option<Arc<str>> {
        if self.http.is_empty() {
            return None;
        }
        self.http.get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for a server name.
    pub fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.tls.get(host.to_ascii_lowercase().as_str()).cloned()
    }
}

/// What one order has published; withdrawn when dropped (the order ended, failed or was
/// cancelled), so no answer outlives its order.
pub(crate) struct Published {
    board: Arc<ArcSwap<Challenges>>,
    tokens: Vec<Box<str>>,
    hosts: Vec<Box<str>>,
}

impl Published {
    pub fn new(board: Arc<ArcSwap<Challenges>>) -> Published {
        Published {
            board,
            tokens: Vec::new(),
            hosts: Vec::new(),
        }
    }

    pub fn http01(&mut self, token: &str, key_authorization: &str) {
        let (t, ka): (Box<str>, Arc<str>) = (token.into(), key_authorization.into());
        self.board.rcu(|c| {
            let mut next = Challenges::clone(c);
            next.http.insert(t.clone(), ka.clone());
            next
        });
        self.tokens.push(t);
    }

    /// Publishes the TLS-ALPN-01 certificate of `host` for the key authorization's digest.
    pub fn tls_alpn01(&mut self, host: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let ck = Arc::new(challenge_cert(host, digest)?);
        let h: Box<str> = host.to_ascii_lowercase().into();
        self.board.rcu(|c| {
            let mut next = Challenges::clone(c);
            next.tls.insert(h.clone(), ck.clone());
            next
        });
        self.hosts.push(h);
        Ok(())
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if self.tokens.is_empty() && self.hosts.is_empty() {
            return;
        }
        self.board.rcu(|c| {
            let mut next = Challenges::clone(c);
            for t in &self.tokens {
                next.http.remove(t);
            }
            for h in &self.hosts {
                next.tls.remove(h);
            }
            next
        });
    }
}

/// RFC 8737 section 3: a self-signed certificate for `host` alone, with the critical
/// id-pe-acmeIdentifier extension holding the SHA-256 digest of the key authorization.
pub(crate) fn challenge_cert(host: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let bad = |e: String| {
        AcmeError::Internal(format!(
            "cannot make the TLS-ALPN-01 certificate for {host}: {e}"
        ))
    };
    if digest.len() != 32 {
        return Err(bad("the key authorization digest is not SHA-256".into()));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| bad(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| bad(e.to_string()))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(|e| bad(e.to_string()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| bad(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_answers_are_withdrawn_on_drop() {
        let board = Arc::new(ArcSwap::from_pointee(Challenges::default()));
        {
            let mut p = Published::new(board.clone());
            p.http01("tok", "tok.thumb");
            p.tls_alpn01("A.test", &[7u8; 32]).unwrap();
            let c = board.load();
            assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
            assert!(c.http01("other").is_none());
            assert!(c.tls_alpn01("a.test").is_some());
        }
        let c = board.load();
        assert!(c.http01("tok").is_none());
        assert!(c.tls_alpn01("a.test").is_none());
    }

    #[test]
    fn challenge_cert_carries_the_critical_acme_identifier() {
        use x509_parser::prelude::*;
        let ck = challenge_cert("a.test", &[9u8; 32]).unwrap();
        let (_, cert) = X509Certificate::from_der(ck.cert[0].as_ref()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // OCTET STRING (0x04), length 32, the digest
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &[9u8; 32]);
        assert!(challenge_cert("a.test", &[1u8; 5]).is_err());
    }
}
