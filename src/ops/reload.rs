//! `reload`: re-read the config and the certificates; a bad config is refused and the running one
//! keeps serving.

use std::sync::Arc;

use super::audit::audit;
use super::{apply_flags, Inner, OpError, Ops, Peer};
use crate::control::api::ReloadResponse;
use crate::routing::RoutingTable;

impl Ops {
    pub async fn reload(&self, peer: Peer) -> Result<ReloadResponse, OpError> {
        let mut inner = self.inner.lock().await;
        let path = inner.cfg.path.clone();
        let cfg = crate::config::load(&path).map_err(|e| OpError::Config(e.problems()))?;
        let mut notes = Vec::new();
        if cfg.proxy.http != inner.cfg.proxy.http
            || cfg.proxy.https != inner.cfg.proxy.https
            || cfg.proxy.control != inner.cfg.proxy.control
            || cfg.proxy.state != inner.cfg.proxy.state
        {
            notes.push(
                "listener, control or state paths changed: they take effect at the next restart"
                    .into(),
            );
        }
        let mut certificates = Vec::new();
        if let (Some(store), Some(dir)) = (&self.certs, &cfg.proxy.certs) {
            let acme = cfg.acme.as_ref().map(|a| a.storage.as_path());
            let loaded = crate::proxy::tls::load_store(dir, acme)
                .map_err(|e| OpError::Config(vec![e.to_string()]))?;
            certificates = loaded
                .loaded
                .iter()
                .map(|(stem, names)| format!("{stem}: {}", names.join(", ")))
                .collect();
            // An ACME certificate installed while the folders were read is kept.
            store.rcu(|cur| {
                let mut next = crate::proxy::tls::CertStore::clone(&loaded);
                next.keep_newer_acme(cur);
                next
            });
        }
        self.control_allow
            .store(Arc::new(cfg.proxy.control_allow.clone()));
        let before = serde_json::json!({"sites": inner.cfg.sites.iter().map(|s| s.name.clone()).collect::<Vec<_>>()});
        self.acme.reconfigure(&cfg);
        inner.cfg = cfg;
        let prev = self.table.load_full();
        let st = inner.state.clone();
        let Inner { cfg, shared, .. } = &mut *inner;
        let table = Arc::new(RoutingTable::build(cfg, &st, shared, Some(&prev)));
        apply_flags(&table, &st);
        self.table.store(table);
        self.metrics.reloads.inc();
        let sites: Vec<String> = inner.cfg.sites.iter().map(|s| s.name.clone()).collect();
        audit(
            &inner.cfg,
            peer,
            "reload",
            before,
            serde_json::json!({"sites": sites}),
        );
        tracing::info!(sites = sites.len(), "config reloaded");
        Ok(ReloadResponse {
            sites,
            certificates,
            notes,
            version: inner.state.version,
        })
    }
}
