//! `pool set`: replace a color's backends.

use super::audit::audit;
use super::{unknown_site, OpError, Ops, Peer};
use crate::config::Color;
use crate::control::api::{PoolRequest, PoolResponse};
use crate::state::SiteState;

impl Ops {
    pub async fn set_pool(
        &self,
        site: &str,
        color: Color,
        req: PoolRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<PoolResponse, OpError> {
        self.rounds(if_match, || {
            self.set_pool_once(site, color, &req, if_match, peer)
        })
        .await
    }

    async fn set_pool_once(
        &self,
        site: &str,
        color: Color,
        req: &PoolRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<PoolResponse, OpError> {
        let mut inner = self.inner.lock().await;
        Self::check_version(&inner, if_match)?;
        let t = self.table.load_full();
        let route = t.site(site).ok_or_else(|| unknown_site(site, &t))?;
        let mut addrs = Vec::new();
        for a in &req.backends {
            let parsed: std::net::SocketAddr = a.parse().map_err(|_| {
                OpError::BadRequest(format!(
                    "backend `{a}` is not an address; write IP:PORT, e.g. 127.0.0.1:8081"
                ))
            })?;
            addrs.push(parsed.to_string());
        }
        if addrs.is_empty() && route.active == color {
            return Err(OpError::Conflict(format!("{site}: {color} is the active color; emptying its pool would take the site down. Switch first.")));
        }
        let mut next = inner.state.clone();
        let entry = next
            .sites
            .entry(site.to_string())
            .or_insert_with(|| SiteState::new(route.active));
        let before = serde_json::to_value(
            route
                .pool(color)
                .backends
                .iter()
                .map(|b| b.addr.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        entry.pools.insert(color, addrs.clone());
        self.commit(&mut inner, next).await?;
        audit(
            &inner.cfg,
            peer,
            &format!("pool set {site} {color}"),
            before,
            serde_json::to_value(&addrs).unwrap_or_default(),
        );
        let version = inner.state.version;
        drop(inner);
        Ok(PoolResponse {
            site: site.into(),
            color,
            backends: addrs,
            version,
            cluster: self.store.spread(version).await,
        })
    }
}
