//! One ACME order (RFC 8555 7.4), start to finish: new order → for each pending authorization,
//! publish the answer to its challenge (`challenge.rs`) and tell the CA it is ready → wait until
//! the order is ready (or learn which host failed and why) → withdraw the answers → a new P-256
//! key and its CSR → finalize → the chain. The protocol itself is instant-acme's.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::challenge::{Challenges, Published};
use super::AcmeError;
use crate::config::ChallengeKind;

/// A certificate as the CA issued it.
pub(crate) struct Issued {
    /// PEM, leaf first.
    pub chain_pem: String,
    /// PEM PKCS#8.
    pub key_pem: String,
}

/// How long the CA may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

fn ca(step: &'static str) -> impl Fn(instant_acme::Error) -> AcmeError {
    move |e| AcmeError::Ca {
        step,
        detail: describe(&e),
    }
}

/// instant-acme's error, as a person reads it (a CA's problem document: its detail and type).
pub(crate) fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p),
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s.push_str(": ");
                    s.push_str(&t);
                }
                src = inner.source();
            }
            s
        }
    }
}

fn problem(p: &instant_acme::Problem) -> String {
    let kind = p
        .r#type
        .as_deref()
        .map(|t| t.trim_start_matches("urn:ietf:params:acme:error:"))
        .unwrap_or("error");
    match &p.detail {
        Some(d) => format!("{d} ({kind})"),
        None => kind.to_string(),
    }
}

/// Orders a certificate for `names` (exact DNS names) with `kind`, answering the challenges from
/// `board`.
pub(crate) async fn issue(
    account: &Account,
    names: &[String],
    kind: ChallengeKind,
    board: Arc<ArcSwap<Challenges>>,
) -> Result<Issued, AcmeError> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(ca("creating the order"))?;
    let wanted = match kind {
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Http01 => ChallengeType::Http01,
    };
    let mut published = Published::new(board);
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(ca("reading an authorization"))?;
            let host = a.identifier().to_string();
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Validation {
                        host,
                        detail: format!("the CA holds its authorization as {other:?}"),
                    })
                }
            }
            let Some(mut ch) = a.challenge(wanted.clone()) else {
                return Err(AcmeError::Ca {
                    step: "choosing the challenge",
                    detail: format!(
                        "the CA offers no {} challenge for {host}; set [acme] challenge to another kind",
                        kind.as_str()
                    ),
                });
            };
            let ka = ch.key_authorization();
            match kind {
                ChallengeKind::Http01 => published.http01(&ch.token, ka.as_str()),
                ChallengeKind::TlsAlpn01 => published.tls_alpn01(&host, ka.digest().as_ref())?,
            }
            ch.set_ready()
                .await
                .map_err(ca("telling the CA the challenge is ready"))?;
        }
    }
    match order.poll_ready(&POLL).await {
        Ok(OrderStatus::Ready) => {}
        // The order is invalid (or carries the CA's error): say which host failed, and why.
        Ok(_) | Err(instant_acme::Error::Api(_)) => {
            return Err(failed_hosts(&mut order).await);
        }
        Err(e) => return Err(ca("waiting for the validation")(e)),
    }
    drop(published);

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AcmeError::Internal(format!("cannot make a certificate key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| AcmeError::Internal(format!("cannot make the CSR: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Internal(format!("cannot make the CSR: {e}")))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(ca("finalizing the order"))?;
    let chain_pem = order
        .poll_certificate(&POLL)
        .await
        .map_err(ca("downloading the certificate"))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The order became invalid: which hosts failed, with the CA's reason for each.
async fn failed_hosts(order: &mut instant_acme::Order) -> AcmeError {
    let mut failed = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let Ok(mut a) = a else { continue };
        let host = a.identifier().to_string();
        let state = match a.refresh().await {
            Ok(s) => s,
            Err(e) => {
                failed.push((host, describe(&e)));
                continue;
            }
        };
        if state.status == AuthorizationStatus::Valid {
            continue;
        }
        let why = state
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref().map(problem))
            .unwrap_or_else(|| format!("its authorization is {:?}", state.status));
        failed.push((host, why));
    }
    match failed.len() {
        0 => AcmeError::Ca {
            step: "waiting for the validation",
            detail: "the order became invalid without a failed authorization".into(),
        },
        _ => AcmeError::Validation {
            host: failed
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            detail: failed
                .iter()
                .map(|(h, w)| format!("{h}: {w}"))
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}
