//! `maintenance`: every request of the covered sites (reads too) gets the maintenance page, for
//! work that breaks reads as well (a long schema change); `allow_clients` and `allow_paths` of
//! `[site.maintenance]` pass. Same state, audit and status treatment as read-only; unlike it,
//! nothing waits: requests in flight finish on their own.

use super::audit::audit;
use super::read_only::{check_sites, notice_text};
use super::{OpError, Ops, Peer};
use crate::control::api::{MaintenanceRequest, MaintenanceResponse};
use crate::state::{self, MaintenanceState};

impl Ops {
    pub async fn maintenance(
        &self,
        req: MaintenanceRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<MaintenanceResponse, OpError> {
        self.rounds(if_match, || self.maintenance_once(&req, if_match, peer))
            .await
    }

    async fn maintenance_once(
        &self,
        req: &MaintenanceRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<MaintenanceResponse, OpError> {
        let mut inner = self.inner.lock().await;
        Self::check_version(&inner, if_match)?;
        let t = self.table.load_full();
        check_sites(req.sites.as_deref(), &t)?;
        let before = serde_json::to_value(&inner.state.maintenance).unwrap_or_default();
        let mut next = inner.state.clone();
        next.maintenance = match req.on {
            false => None,
            true => {
                let message = notice_text(
                    req.message.as_deref(),
                    "maintenance needs a message that users will see, e.g. --message \"Moving to a new database, back at 14:00\"",
                    "message",
                )?;
                Some(MaintenanceState {
                    message,
                    retry_after_s: req.retry_after_s.unwrap_or(300).min(86_400),
                    sites: req.sites.clone(),
                    since: state::now_rfc3339(),
                })
            }
        };
        let after = serde_json::to_value(&next.maintenance).unwrap_or_default();
        let table = self.commit(&mut inner, next).await?;
        let action = if req.on {
            "maintenance on"
        } else {
            "maintenance off"
        };
        audit(&inner.cfg, peer, action, before, after);
        tracing::info!(on = req.on, "maintenance changed");
        let m = inner.state.maintenance.clone();
        let version = inner.state.version;
        drop(inner);
        Ok(MaintenanceResponse {
            on: req.on,
            message: m.as_ref().map(|m| m.message.clone()),
            retry_after_s: m.as_ref().map(|m| m.retry_after_s),
            sites: table
                .sites
                .iter()
                .filter(|s| s.maintenance.is_some())
                .map(|s| s.name.to_string())
                .collect(),
            version,
            cluster: self.store.spread(version).await,
        })
    }
}
