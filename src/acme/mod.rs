//! Certificates from an ACME CA (RFC 8555) for the sites with `acme = true`: obtained, stored
//! beside the hand-made ones, served without a restart, renewed well before expiry. Never on the
//! request path: the task runs on the control-plane runtime, and the edge sees only two `ArcSwap`s,
//! the certificate store (`proxy/tls.rs`) and the pending challenge answers ([`Challenges`]).
//!
//! - `task.rs`: the schedule: which site is due (no certificate, names changed, within
//!   `renew_before` of expiry), one order per site at a time, the backoff after a failure (1 min
//!   doubling to 1 h, or the CA's Retry-After if later), installing what was issued.
//! - `order.rs`: one order, start to finish, on instant-acme.
//! - `challenge.rs`: the answers to HTTP-01 and TLS-ALPN-01 while an order is pending.
//! - `client.rs`: the HTTPS client to the CA (rustls + aws-lc-rs, webpki roots + `ca_certs`).
//! - `store.rs`: the files (`<storage>/<site>.crt|.key|.json`, the account key), written atomically.
//!
//! On failure the current certificate keeps serving; the error is logged (error level), counted
//! (`switchyard_acme_orders_total{result="error"}`), kept in `<site>.json` and shown by `status`
//! and the status page with the time of the next attempt.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::{Config, HostPattern};
use crate::control::api::{AcmeState, CertificateStatus};
use crate::metrics::Metrics;
use crate::proxy::tls::{CertInfo, CertSource, CertStore};

mod challenge;
mod client;
mod order;
mod store;
mod task;

pub use challenge::{Challenges, HTTP01_PREFIX};

/// Why an ACME step failed, for people: what failed, with the CA's words, and what to check.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot use the ACME account at {directory}: {detail}; check [acme] directory and that the CA is reachable from this host")]
    Account { directory: String, detail: String },
    #[error("the ACME account key {0} cannot be read ({1}); it must be a PEM PKCS#8 ECDSA P-256 key, or remove the file to have a new one made")]
    AccountKey(PathBuf, String),
    #[error("[acme] ca_certs {0}: {1}; it must hold the PEM certificates of the CA that signs the directory's HTTPS certificate")]
    CaCerts(PathBuf, String),
    #[error("the CA failed while {step}: {detail}")]
    Ca { step: &'static str, detail: String },
    #[error("the CA could not validate {host}: {detail}. Check that the name resolves to this server and that the CA reaches its port 443 (tls-alpn-01) or 80 (http-01)")]
    Validation { host: String, detail: String },
    #[error("cannot write {0}: {1}; check that the ACME storage folder is writable by switchyard")]
    Storage(PathBuf, std::io::Error),
    #[error("the CA issued a certificate that cannot be served: {0}")]
    Unusable(String),
    #[error("the order took longer than {0} s; the CA may be overloaded, it is tried again later")]
    Timeout(u64),
    #[error("{0}")]
    Internal(String),
}

/// One site's ACME bookkeeping (control plane only, behind a std Mutex held for no await).
#[derive(Debug, Default, Clone)]
struct SiteState {
    /// An order of this site is in flight.
    running: bool,
    /// The names the record was made for; a change resets the backoff.
    names: Vec<String>,
    failures: u32,
    next_attempt: Option<SystemTime>,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    issued_at: Option<SystemTime>,
    not_after: Option<SystemTime>,
    /// Hosts a hand-made certificate serves (logged when it changes).
    covered: Vec<String>,
}

/// The ACME side of the daemon: config, schedule, pending challenges.
pub struct Acme {
    cfg: ArcSwap<Config>,
    /// The answers the edge reads (TLS-ALPN-01 in the resolver, HTTP-01 in `request::decide`).
    pub challenges: Arc<ArcSwap<Challenges>>,
    certs: Option<Arc<ArcSwap<CertStore>>>,
    metrics: Arc<Metrics>,
    sites: Mutex<BTreeMap<String, SiteState>>,
    wake: Notify,
    /// The account, made on the first order (directory, key path) → account.
    account: tokio::sync::Mutex<Option<(String, PathBuf, instant_acme::Account)>>,
    /// The last Retry-After the CA sent with an error.
    retry_hint: Arc<Mutex<Option<SystemTime>>>,
}

impl Acme {
    pub fn new(
        cfg: &Config,
        certs: Option<Arc<ArcSwap<CertStore>>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Acme> {
        Arc::new(Acme {
            cfg: ArcSwap::from_pointee(cfg.clone()),
            challenges: Arc::default(),
            certs,
            metrics,
            sites: Mutex::default(),
            wake: Notify::new(),
            account: tokio::sync::Mutex::new(None),
            retry_hint: Arc::default(),
        })
    }

    /// Whether any site uses ACME (then the https listener offers `acme-tls/1`).
    pub fn enabled(&self) -> bool {
        let cfg = self.cfg.load();
        cfg.acme.is_some() && cfg.sites.iter().any(|s| s.acme)
    }

    /// A reloaded config: new sites are ordered for, changed names reset their backoff.
    pub fn reconfigure(&self, cfg: &Config) {
        self.cfg.store(Arc::new(cfg.clone()));
        self.wake.notify_one();
    }

    /// What `status` shows: for each site, the certificates that answer for its hosts (hand-made
    /// or ACME) and, for an ACME site, its order state.
    pub fn certificates(&self, now: SystemTime) -> Vec<CertificateStatus> {
        let cfg = self.cfg.load();
        let Some(store) = &self.certs else {
            return Vec::new();
        };
        let store = store.load();
        let sites = self.sites.lock().map(|g| g.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for site in &cfg.sites {
            let mut stems: Vec<&str> = Vec::new();
            for h in &site.hosts {
                let name = match h {
                    HostPattern::Exact(n) => n.clone(),
                    HostPattern::Wildcard(suffix) => format!("*{suffix}"),
                };
                let probe = name.replacen('*', "x", 1);
                if let Some(stem) = store.hand_made_for(&probe) {
                    if !stems.contains(&stem) {
                        stems.push(stem);
                        if let Some(i) = store
                            .info
                            .iter()
                            .find(|i| i.source == CertSource::File && i.stem == stem)
                        {
                            out.push(cert_status(
                                &site.name,
                                Some(i),
                                CertSource::File,
                                now,
                                None,
                            ));
                        }
                    }
                }
            }
            // An ACME site whose exact hosts all have hand-made certificates orders nothing.
            let all_hand_made = site.hosts.iter().all(|h| match h {
                HostPattern::Exact(n) => store.hand_made_for(n).is_some(),
                HostPattern::Wildcard(_) => true,
            });
            if site.acme && !all_hand_made {
                let info = store
                    .info
                    .iter()
                    .find(|i| i.source == CertSource::Acme && i.stem == site.name);
                let st = sites.get(&site.name);
                let acme = AcmeState {
                    state: match st {
                        Some(s) if s.running => "ordering",
                        Some(s) if s.last_error.is_some() => "failing",
                        _ if info.is_some() => "ok",
                        _ => "waiting",
                    }
                    .into(),
                    last_error: st.and_then(|s| s.last_error.clone()),
                    last_error_at: st.and_then(|s| s.last_error_at.map(store::rfc3339)),
                    next_attempt: st.and_then(|s| s.next_attempt.map(store::rfc3339)),
                    failures: st.map_or(0, |s| s.failures),
                    issued_at: st.and_then(|s| s.issued_at.map(store::rfc3339)),
                };
                out.push(cert_status(
                    &site.name,
                    info,
                    CertSource::Acme,
                    now,
                    Some(acme),
                ));
            }
        }
        out
    }
}

fn cert_status(
    site: &str,
    info: Option<&CertInfo>,
    source: CertSource,
    now: SystemTime,
    acme: Option<AcmeState>,
) -> CertificateStatus {
    let not_after = info.and_then(|i| i.not_after);
    let left = not_after.map(|t| match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    });
    CertificateStatus {
        site: site.to_string(),
        name: info.map_or_else(|| site.to_string(), |i| i.stem.clone()),
        names: info.map(|i| i.names.clone()).unwrap_or_default(),
        source: source.as_str().into(),
        not_after: not_after.map(store::rfc3339),
        expires_in_s: left,
        days_left: left.map(|s| s.div_euclid(86400)),
        acme,
    }
}
