//! The schedule, on the control-plane runtime. A pass looks at every `acme = true` site: the
//! names it needs (its exact hosts that no hand-made certificate covers), the certificate it has,
//! and its backoff; a site that is due and has no order in flight gets one, as a task of its own.
//! Between passes the task sleeps until the next site is due, or until woken (an order ended, a
//! reload).
//!
//! Due means: no certificate, a certificate that lacks a name, or the renewal time, which is
//! `renew_before` before expiry but never earlier than a third into the certificate's life (so a
//! `renew_before` longer than the CA's lifetime cannot make it order without end). After a failure
//! the next attempt waits 1 min, doubling to 1 h, or until the CA's Retry-After if that is later;
//! the current certificate keeps serving meanwhile.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{Account, Key};
use rustls_pki_types::PrivateKeyDer;

use super::store::{self, Meta};
use super::{client, order, Acme, AcmeError, SiteState};
use crate::config::{AcmeConfig, HostPattern};
use crate::proxy::tls::{self, CertInfo, CertSource, CertStore};

/// A whole order, from the new order to the certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest sleep between passes (a clock change, a missed wake-up).
const MAX_SLEEP: Duration = Duration::from_secs(6 * 3600);
const BACKOFF_FIRST: Duration = Duration::from_secs(60);
const BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// A Retry-After is honoured up to this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(7 * 86400);

/// The wait after `failures` orders failed in a row.
pub(super) fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_CAP)
}

/// When a certificate valid from `nb` to `na` is renewed.
pub(super) fn renew_at(nb: SystemTime, na: SystemTime, renew_before: Duration) -> SystemTime {
    let life = na.duration_since(nb).unwrap_or_default();
    let floor = nb + life / 3;
    na.checked_sub(renew_before)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .max(floor)
}

impl Acme {
    /// Starts the schedule on the current runtime (call it from the control plane's).
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let woken = me.wake.notified();
                let wait = me
                    .pass()
                    .and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .unwrap_or(MAX_SLEEP)
                    .min(MAX_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = woken => {}
                }
            }
        });
    }

    /// Starts the orders that are due; returns when the next one is.
    fn pass(self: &Arc<Self>) -> Option<SystemTime> {
        let cfg = self.cfg.load_full();
        let acme = cfg.acme.as_ref()?;
        let store = self.certs.as_ref()?.load_full();
        let now = SystemTime::now();
        let mut next: Option<SystemTime> = None;
        let mut sites = self.sites.lock().ok()?;
        for site in cfg.sites.iter().filter(|s| s.acme) {
            let (mut wanted, mut covered) = (Vec::new(), Vec::new());
            for h in &site.hosts {
                if let HostPattern::Exact(n) = h {
                    match store.hand_made_for(n) {
                        Some(stem) => covered.push(format!("{n} ({stem}.crt)")),
                        None => wanted.push(n.clone()),
                    }
                }
            }
            wanted.sort();
            wanted.dedup();
            let st = sites
                .entry(site.name.clone())
                .or_insert_with(|| from_meta(&store::load_meta(&acme.storage, &site.name)));
            if st.covered != covered {
                if !covered.is_empty() {
                    tracing::info!(site = %site.name, hosts = %covered.join(", "), "ACME: these hosts are served by hand-made certificates, which win over ACME; no order for them");
                }
                st.covered = covered;
            }
            if st.names != wanted {
                if !st.names.is_empty() {
                    // The site's names changed: the old backoff was about other names.
                    st.failures = 0;
                    st.next_attempt = None;
                }
                st.names = wanted.clone();
            }
            if wanted.is_empty() || st.running {
                continue;
            }
            let current = store
                .info
                .iter()
                .find(|i| i.source == CertSource::Acme && i.stem == site.name);
            let due = match current {
                Some(c) if wanted.iter().all(|n| c.names.contains(n)) => {
                    match (c.not_before, c.not_after) {
                        (Some(nb), Some(na)) => renew_at(nb, na, acme.renew_before),
                        _ => now,
                    }
                }
                _ => now,
            };
            let at = st.next_attempt.map_or(due, |n| n.max(due));
            if current.is_some() && at > now {
                tracing::debug!(site = %site.name, renew_at = %store::rfc3339(at), "ACME: certificate current");
            }
            if at <= now {
                st.running = true;
                let me = self.clone();
                let (name, acme) = (site.name.clone(), acme.clone());
                tokio::spawn(async move { me.order_site(name, wanted, acme).await });
            } else {
                next = Some(next.map_or(at, |n: SystemTime| n.min(at)));
            }
        }
        next
    }

    /// One order for `site`, and its bookkeeping: the record, the metric, the log, the wake-up.
    async fn order_site(self: Arc<Self>, site: String, names: Vec<String>, acme: AcmeConfig) {
        tracing::info!(site = %site, names = %names.join(", "), directory = %acme.directory, challenge = acme.challenge.as_str(), "ACME: ordering a certificate");
        if let Ok(mut h) = self.retry_hint.lock() {
            *h = None;
        }
        let result =
            match tokio::time::timeout(ORDER_TIMEOUT, self.obtain(&site, &names, &acme)).await {
                Ok(r) => r,
                Err(_) => Err(AcmeError::Timeout(ORDER_TIMEOUT.as_secs())),
            };
        let now = SystemTime::now();
        let hint = self.retry_hint.lock().ok().and_then(|h| *h);
        let meta = {
            let Ok(mut sites) = self.sites.lock() else {
                return;
            };
            let st = sites.entry(site.clone()).or_default();
            st.running = false;
            match &result {
                Ok(_) => {
                    st.failures = 0;
                    st.next_attempt = None;
                    st.last_error = None;
                    st.last_error_at = None;
                    st.issued_at = Some(now);
                }
                Err(e) => {
                    st.failures = st.failures.saturating_add(1);
                    let mut at = now + backoff(st.failures);
                    if let Some(h) = hint {
                        at = at.max(h.min(now + RETRY_AFTER_CAP));
                    }
                    st.next_attempt = Some(at);
                    st.last_error = Some(e.to_string());
                    st.last_error_at = Some(now);
                }
            }
            if let Ok(info) = &result {
                st.not_after = info.not_after;
            }
            to_meta(st)
        };
        match &result {
            Ok(info) => {
                self.metrics.acme_order(&site, true);
                tracing::info!(site = %site, names = %info.names.join(", "), expires = %meta.not_after.as_deref().unwrap_or("?"), "ACME: certificate obtained and now served");
            }
            Err(e) => {
                self.metrics.acme_order(&site, false);
                tracing::error!(site = %site, error = %e, next_attempt = %meta.next_attempt.as_deref().unwrap_or("?"), "ACME: ordering the certificate failed; the current certificate (if any) keeps serving");
            }
        }
        if let Err(e) = store::save_meta(&acme.storage, &site, &meta) {
            tracing::warn!(site = %site, error = %e, "ACME: cannot write the site's record");
        }
        self.wake.notify_one();
    }

    async fn obtain(
        &self,
        site: &str,
        names: &[String],
        acme: &AcmeConfig,
    ) -> Result<CertInfo, AcmeError> {
        let account = self.account(acme).await?;
        let issued = order::issue(&account, names, acme.challenge, self.challenges.clone()).await?;
        // Checked before it replaces anything: the chain parses, the key matches, every name is in.
        let label = acme.storage.join(format!("{site}.crt"));
        let (ck, got, (not_before, not_after)) = tls::pair_from_pem(
            &label,
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .map_err(|e| AcmeError::Unusable(e.to_string()))?;
        if let Some(missing) = names.iter().find(|n| !got.contains(n)) {
            return Err(AcmeError::Unusable(format!(
                "it does not name {missing} (it names {})",
                got.join(", ")
            )));
        }
        store::save_pair(&acme.storage, site, &issued.chain_pem, &issued.key_pem)?;
        let info = CertInfo {
            stem: site.to_string(),
            names: got,
            not_before,
            not_after,
            source: CertSource::Acme,
        };
        if let Some(certs) = &self.certs {
            let ck = Arc::new(ck);
            certs.rcu(|cur| {
                let mut next = CertStore::clone(cur);
                next.put_acme(site, ck.clone(), info.clone());
                next
            });
        }
        Ok(info)
    }

    /// The account for this directory and key, registered (or found) on first use.
    async fn account(&self, acme: &AcmeConfig) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some((dir, key, a)) = &*slot {
            if *dir == acme.directory && *key == acme.account_key {
                return Ok(a.clone());
            }
        }
        let (der, _made) = store::account_key(&acme.account_key)?;
        let key = Key::from_pkcs8_der(der.clone_key())
            .map_err(|e| AcmeError::AccountKey(acme.account_key.clone(), e.to_string()))?;
        let http = client::Client::new(acme.ca_certs.as_deref(), self.retry_hint.clone())?;
        let (account, _) = Account::builder_with_http(Box::new(http))
            .create_from_key((key, PrivateKeyDer::Pkcs8(der)), acme.directory.clone())
            .await
            .map_err(|e| AcmeError::Account {
                directory: acme.directory.clone(),
                detail: order::describe(&e),
            })?;
        if !acme.contact.is_empty() {
            let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
            if let Err(e) = account.update_contacts(&contact).await {
                tracing::warn!(error = %order::describe(&e), "ACME: the CA did not take the contact addresses");
            }
        }
        tracing::info!(account = %account.id(), directory = %acme.directory, "ACME: account ready");
        *slot = Some((
            acme.directory.clone(),
            acme.account_key.clone(),
            account.clone(),
        ));
        Ok(account)
    }
}

fn from_meta(m: &Meta) -> SiteState {
    SiteState {
        names: m.names.clone(),
        failures: m.failures,
        next_attempt: m.next_attempt.as_deref().and_then(store::parse_time),
        last_error: m.last_error.clone(),
        last_error_at: m.last_error_at.as_deref().and_then(store::parse_time),
        issued_at: m.issued_at.as_deref().and_then(store::parse_time),
        not_after: m.not_after.as_deref().and_then(store::parse_time),
        ..SiteState::default()
    }
}

fn to_meta(st: &SiteState) -> Meta {
    Meta {
        names: st.names.clone(),
        issued_at: st.issued_at.map(store::rfc3339),
        not_after: st.not_after.map(store::rfc3339),
        last_error: st.last_error.clone(),
        last_error_at: st.last_error_at.map(store::rfc3339),
        failures: st.failures,
        next_attempt: st.next_attempt.map(store::rfc3339),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(6), Duration::from_secs(1920));
        assert_eq!(backoff(7), Duration::from_secs(3600));
        assert_eq!(backoff(1000), Duration::from_secs(3600));
    }

    #[test]
    fn renewal_is_before_expiry_but_not_too_early() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86400);
        // 90 days, renew 30 days before: day 60
        assert_eq!(renew_at(nb, nb + day * 90, day * 30), nb + day * 60);
        // renew_before longer than the life: a third in, not at once
        assert_eq!(renew_at(nb, nb + day * 6, day * 30), nb + day * 2);
    }
}
