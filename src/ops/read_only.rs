//! `read-only`: maintenance mode at the edge.
//!
//! LIFECYCLE of read-only on: persist → store table (the notice) → raise each site's flag →
//! release the lock → wait until no write is in flight (see `proxy/gate.rs` for why no write can
//! slip past) → answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::audit::audit;
use super::{apply_flags, unknown_site, OpError, Ops, Peer};
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
        if !req.on {
            // Lower the flags first, then publish the table without the notice.
            for s in &t.sites {
                s.shared.read_only.store(false, Ordering::SeqCst);
            }
        }
        let table = self.commit(&mut inner, next)?;
        apply_flags(&table, &inner.state);
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
            .filter(|s| s.shared.read_only.load(Ordering::SeqCst))
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
        if req.on {
            loop {
                let left: usize = covered
                    .iter()
                    .map(|s| s.inflight_writes.load(Ordering::SeqCst))
                    .sum();
                if left == 0 {
                    break;
                }
                if started.elapsed() >= wait {
                    return Err(OpError::Timeout(format!(
                        "read-only is ON, but {left} write(s) were still in flight after {}s; do not start a backup yet — retry `read-only on` to wait again",
                        wait.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tracing::info!(on = req.on, "read-only changed");
        Ok(ReadOnlyResponse {
            on: req.on,
            reason: ro.as_ref().map(|r| r.reason.clone()),
            retry_after_s: ro.as_ref().map(|r| r.retry_after_s),
            sites: covered.iter().map(|s| s.name.to_string()).collect(),
            drained_ms: started.elapsed().as_millis() as u64,
            version,
        })
    }
}
