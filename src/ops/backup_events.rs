//! `backup-events`: the release tool reports an off-site copy run or a restore drill. Nothing in
//! the state changes; the daemon appends it to the audit log (`offsite` / `drill`) and counts it
//! in its metrics, so a failed upload or drill is seen where switches and read-only are.

use super::audit::audit;
use super::{OpError, Ops, Peer};
use crate::control::api::BackupEvent;

impl Ops {
    pub async fn backup_event(
        &self,
        site: &str,
        ev: BackupEvent,
        peer: Peer,
    ) -> Result<serde_json::Value, OpError> {
        let cfg = self.config().await;
        if cfg.site(site).is_none_or(|s| s.release.is_none()) {
            return Err(OpError::NotFound(format!(
                "no site `{site}` with a [site.release] in the running config; run `switchyard reload` after editing it"
            )));
        }
        let (action, ok) = match &ev {
            BackupEvent::Offsite(s) => ("offsite", s.ok),
            BackupEvent::Drill(d) => ("drill", d.ok),
        };
        self.metrics.backup_event(site, action, ok);
        let after = serde_json::to_value(&ev).unwrap_or_default();
        audit(
            &cfg,
            peer,
            action,
            serde_json::json!({ "site": site }),
            after,
        );
        Ok(serde_json::json!({ "site": site, "recorded": action }))
    }
}
