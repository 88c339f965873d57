//! `read-only`: maintenance mode at the edge.
//!
//! LIFECYCLE of read-only on: commit (state file, or etcd) → store table (the notice) → raise
//! each site's flag → release the lock → wait until no write is in flight (see `proxy/gate.rs`
//! for why no write can slip past; with a cluster, on every edge: `store.rs`, docs/cluster.md)
//! → answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::audit::audit;
use super::{unknown_site, OpError, Ops, Peer};
use crate::control::api::{ReadOnlyRequest, ReadOnlyResponse};
use crate::routing::{RoutingTable, SiteShared};
use crate::state::{self, ReadOnlyState};

impl Ops {
    pub async fn read_only(
        &self,
        req: ReadOnlyRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<ReadOnlyResponse, OpError> {
        self.rounds(if_match, || self.read_only_once(&req, if_match, peer))
            .await
    }

    async fn read_only_once(
        &self,
        req: &ReadOnlyRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<ReadOnlyResponse, OpError> {
        let mut inner = self.inner.lock().await;
        Self::check_version(&inner, if_match)?;
        let t = self.table.load_full();
        check_sites(req.sites.as_deref(), &t)?;
        let before = serde_json::to_value(&inner.state.read_only).unwrap_or_default();
        let mut next = inner.state.clone();
        if req.on {
            let reason = notice_text(
                req.reason.as_deref(),
                "read-only needs a reason that users will see, e.g. --reason \"upgrading to 1.43\"",
                "reason",
            )?;
            next.read_only = Some(ReadOnlyState {
                reason,
                retry_after_s: req.retry_after_s.unwrap_or(300).min(86_400),
                sites: req.sites.clone(),
                since: state::now_rfc3339(),
            });
        } else {
            next.read_only = None;
        }
        let after = serde_json::to_value(&next.read_only).unwrap_or_default();
        // `install` lowers the flags before the table without the notice, and raises them after
        // the table with it.
        let table = self.commit(&mut inner, next).await?;
        let committed_at = Instant::now();
        audit(
            &inner.cfg,
            peer,
            if req.on {
                "read-only on"
            } else {
                "read-only off"
            },
            before,
            after,
        );
        let covered: Vec<Arc<SiteShared>> = table
            .sites
            .iter()
            .filter(|s| s.shared.read_only.load(std::sync::atomic::Ordering::SeqCst))
            .map(|s| s.shared.clone())
            .collect();
        let started = Instant::now();
        let wait = req
            .wait_s
            .map(Duration::from_secs)
            .unwrap_or(inner.cfg.proxy.limits.read_only_drain_timeout);
        let version = inner.state.version;
        let ro = inner.state.read_only.clone();
        drop(inner);
        let cluster = if req.on {
            self.store
                .drained(version, committed_at, &covered, wait)
                .await?
        } else {
            self.store.spread(version).await
        };
        tracing::info!(on = req.on, "read-only changed");
        Ok(ReadOnlyResponse {
            on: req.on,
            reason: ro.as_ref().map(|r| r.reason.clone()),
            retry_after_s: ro.as_ref().map(|r| r.retry_after_s),
            sites: covered.iter().map(|s| s.name.to_string()).collect(),
            drained_ms: started.elapsed().as_millis() as u64,
            version,
            cluster,
        })
    }
}

/// `sites` of a read-only or maintenance request: left out means every site; a list names known
/// sites only.
pub(super) fn check_sites(sites: Option<&[String]>, t: &RoutingTable) -> Result<(), OpError> {
    let Some(list) = sites else { return Ok(()) };
    if list.is_empty() {
        return Err(OpError::BadRequest(
            "`sites` is empty; leave it out to mean every site".into(),
        ));
    }
    match list.iter().find(|s| t.site(s).is_none()) {
        Some(s) => Err(unknown_site(s, t)),
        None => Ok(()),
    }
}

/// The text users will see on the 503 page (a read-only reason, a maintenance message): present
/// and at most 1000 characters.
pub(super) fn notice_text(
    text: Option<&str>,
    missing: &str,
    what: &str,
) -> Result<String, OpError> {
    let text = text.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(OpError::BadRequest(missing.into()));
    }
    if text.len() > 1000 {
        return Err(OpError::BadRequest(format!(
            "the {what} is longer than 1000 characters"
        )));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_must_be_there_and_short() {
        let missing = "read-only needs a reason";
        let err = |r: Result<String, OpError>| match r {
            Err(OpError::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        };
        assert_eq!(err(notice_text(None, missing, "reason")), missing);
        assert_eq!(err(notice_text(Some("  "), missing, "reason")), missing);
        let long = "x".repeat(1001);
        assert_eq!(
            err(notice_text(Some(&long), missing, "message")),
            "the message is longer than 1000 characters"
        );
        assert_eq!(
            notice_text(Some("back at 14:00"), missing, "reason")
                .ok()
                .as_deref(),
            Some("back at 14:00")
        );
    }
}
