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
use crate::routing::SiteShared;
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
        if let Some(list) = &req.sites {
            if list.is_empty() {
                return Err(OpError::BadRequest(
                    "`sites` is empty; leave it out to mean every site".into(),
                ));
            }
            for s in list {
                if t.site(s).is_none() {
                    return Err(unknown_site(s, &t));
                }
            }
        }
        let before = serde_json::to_value(&inner.state.read_only).unwrap_or_default();
        let mut next = inner.state.clone();
        if req.on {
            let reason = req.reason.clone().unwrap_or_default();
            if reason.trim().is_empty() {
                return Err(OpError::BadRequest("read-only needs a reason that users will see, e.g. --reason \"upgrading to 1.43\"".into()));
            }
            if reason.len() > 1000 {
                return Err(OpError::BadRequest(
                    "the reason is longer than 1000 characters".into(),
                ));
            }
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
