//! `switch`: flip a site to its other color.
//!
//! The slow part, probing every backend of the target, runs without the lock (as kamal probes
//! with `WaitUntilHealthy` before `installLoadBalancer` takes its lock), so `status` and the other
//! verbs answer meanwhile. The lock is taken twice, briefly: to plan (what to probe, on which
//! table and state version) and to check that basis still holds and commit.
//!
//! The write guard: on a site whose colors hold their own data (`[site.release]` or
//! `colors_hold_data = true`), a switch away from a color that took writes since it became active
//! would leave those writes behind, so it is refused (409, code `writes_would_be_lost`, naming the
//! count) unless the request says `discard_writes`. It is checked when planning (to answer before
//! a slow probe) and again under the commit lock (writes keep arriving while the probes run).
//! Refused and accepted guarded switches are both audited with `discard_writes` and the count.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::audit::audit_with;
use super::{unknown_site, Inner, OpError, Ops, Peer};
use crate::config::Color;
use crate::control::api::{SwitchRequest, SwitchResponse};
use crate::routing::{RoutingTable, SiteRoute};
use crate::state::{self, SiteState};

/// How many times the probes are redone when other changes land while they run.
const PROBE_ROUNDS: usize = 3;

/// What a switch is planned on, seen under the lock.
struct Basis {
    table: Arc<RoutingTable>,
    version: u64,
    route: Arc<SiteRoute>,
    from: Color,
    host: String,
    colors_hold_data: bool,
}

enum Plan {
    /// Already on the target: answered at once.
    Done(SwitchResponse),
    Probe(Basis),
}

impl Ops {
    pub async fn switch(
        &self,
        site: &str,
        req: SwitchRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<SwitchResponse, OpError> {
        for _ in 0..PROBE_ROUNDS {
            let basis = {
                let inner = self.inner.lock().await;
                match self.plan(&inner, site, &req, if_match, peer)? {
                    Plan::Done(r) => return Ok(r),
                    Plan::Probe(b) => b,
                }
            };
            let failures = probe_target(&basis, &req).await;
            let probed = basis.route.pool(req.to).backends.len();
            if failures.len() == probed && !req.force {
                return Err(OpError::Conflict(format!(
                    "{site}: no backend of {} is healthy ({}); fix it, or add --force to switch anyway",
                    req.to,
                    failures.join("; ")
                )));
            }
            let mut inner = self.inner.lock().await;
            // Any change stores a new table (a reload does not bump the version, so both are
            // compared). The probes checked the pool of the table they saw, and another switch,
            // pool or reload may have made that moot. With If-Match the caller asked for exactly
            // that version, so it gets the 412 any stale If-Match gets. Without it the caller
            // asked for "to X, now": plan and probe again on the new state (a few rounds) rather
            // than commit on a stale check or refuse a request that may still be fine.
            let moved = !Arc::ptr_eq(&basis.table, &self.table.load())
                || inner.state.version != basis.version;
            if moved {
                if let Some(sent) = if_match {
                    return Err(OpError::Precondition {
                        sent,
                        current: inner.state.version,
                    });
                }
                continue;
            }
            let writes = self.guard_writes(&inner, site, &basis, &req, peer)?;
            let mut answer = match self
                .commit_switch(&mut inner, site, basis, &req, failures, writes, peer)
                .await
            {
                Err(OpError::Moved { current }) => match if_match {
                    Some(sent) => return Err(OpError::Precondition { sent, current }),
                    None => continue,
                },
                r => r?,
            };
            drop(inner);
            // Everywhere before the answer: every live edge of a cluster applied it (or the
            // bound passed, which the answer says).
            if let Some(spread) = self.store.spread(answer.version).await {
                answer.message.push_str(&spread.describe());
                answer.cluster = Some(spread);
            }
            return Ok(answer);
        }
        Err(OpError::Conflict(format!(
            "{site}: the state kept changing while the {} backends were probed ({PROBE_ROUNDS} tries); retry",
            req.to
        )))
    }

    fn plan(
        &self,
        inner: &Inner,
        site: &str,
        req: &SwitchRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<Plan, OpError> {
        Self::check_version(inner, if_match)?;
        let table = self.table.load_full();
        let route = table
            .sites
            .iter()
            .find(|s| &*s.name == site)
            .cloned()
            .ok_or_else(|| unknown_site(site, &table))?;
        let from = route.active;
        if req.to == from {
            return Ok(Plan::Done(SwitchResponse {
                site: site.into(),
                from,
                to: from,
                changed: false,
                switched_at: inner
                    .state
                    .sites
                    .get(site)
                    .and_then(|s| s.switched_at.clone()),
                message: format!("{site} is already on {from}; nothing changed"),
                version: inner.state.version,
                cluster: None,
            }));
        }
        if route.pool(req.to).is_empty() {
            return Err(OpError::Conflict(format!(
                "{site}: the {} pool is empty; set its backends first (`switchyard pool set {site} {} ADDR...`)",
                req.to, req.to
            )));
        }
        let cfg = inner.cfg.site(site);
        let basis = Basis {
            version: inner.state.version,
            host: cfg
                .and_then(|c| c.hosts.first())
                .map(|h| h.to_string().replace("*.", "x."))
                .unwrap_or_default(),
            colors_hold_data: cfg.is_some_and(|c| c.colors_hold_data),
            table,
            route,
            from,
        };
        self.guard_writes(inner, site, &basis, req, peer)?;
        Ok(Plan::Probe(basis))
    }

    /// The write guard (see the module doc). Returns the active color's write count.
    fn guard_writes(
        &self,
        inner: &Inner,
        site: &str,
        b: &Basis,
        req: &SwitchRequest,
        peer: Peer,
    ) -> Result<u64, OpError> {
        let sh = &b.route.shared;
        // With a cluster, the writes the other edges forwarded count too.
        let n = sh.writes(b.from) + self.store.others_writes(site, b.from);
        let written = n > 0
            || sh.write_seen.load(Ordering::Relaxed)
            || inner
                .state
                .sites
                .get(site)
                .is_some_and(|s| s.written_since_switch);
        if !b.colors_hold_data || !written || req.discard_writes {
            return Ok(n);
        }
        let (from, to) = (b.from, req.to);
        let count = if n > 0 {
            format!("{n} write(s)")
        } else {
            "some write(s) (the count was lost in a restart)".to_string()
        };
        let msg = format!(
            "refusing to switch {site} from {from} to {to}: {count} reached {from} since it became active and would be lost on {to} (each color of {site} holds its own data). Send \"discard_writes\": true (--discard-writes) if that is what you want."
        );
        audit_with(
            &inner.cfg,
            peer,
            &format!("switch {site} {from}->{to} refused"),
            serde_json::to_value(inner.state.sites.get(site)).unwrap_or_default(),
            serde_json::Value::Null,
            guard_fields(req.discard_writes, n, Some(&msg)),
        );
        tracing::warn!(site, %from, %to, writes = n, "switch refused: writes would be lost");
        Err(OpError::WritesWouldBeLost(msg))
    }

    #[allow(clippy::too_many_arguments)] // one caller, right above
    async fn commit_switch(
        &self,
        inner: &mut Inner,
        site: &str,
        b: Basis,
        req: &SwitchRequest,
        failures: Vec<String>,
        writes: u64,
        peer: Peer,
    ) -> Result<SwitchResponse, OpError> {
        let from = b.from;
        let mut next = inner.state.clone();
        let now = state::now_rfc3339();
        let before = serde_json::to_value(next.sites.get(site)).unwrap_or_default();
        let entry = next
            .sites
            .entry(site.to_string())
            .or_insert_with(|| SiteState::new(from));
        entry.active = req.to;
        entry.previous = Some(from);
        entry.switched_at = Some(now.clone());
        entry.written_since_switch = false;
        entry.drain_s = Some(req.drain_s.unwrap_or(30));
        let after = serde_json::to_value(&*entry).unwrap_or_default();
        // `install` resets the write counts, drains upgraded connections and counts the switch.
        self.commit(inner, next).await?;
        audit_with(
            &inner.cfg,
            peer,
            &format!("switch {site} {from}->{}", req.to),
            before,
            after,
            guard_fields(req.discard_writes, writes, None),
        );
        tracing::info!(site, %from, to = %req.to, forced = req.force, discard_writes = req.discard_writes, writes, "switched");
        Ok(SwitchResponse {
            site: site.into(),
            from,
            to: req.to,
            changed: true,
            switched_at: Some(now),
            message: if failures.is_empty() {
                format!("{site} now serves {}", req.to)
            } else {
                format!(
                    "{site} now serves {} (forced; failing: {})",
                    req.to,
                    failures.join("; ")
                )
            },
            version: inner.state.version,
            cluster: None,
        })
    }
}

/// Probes every backend of the target at once; returns what failed.
async fn probe_target(b: &Basis, req: &SwitchRequest) -> Vec<String> {
    let pool = b.route.pool(req.to);
    let health = b.route.health.as_ref();
    let probes = pool.backends.iter().map(|be| async move {
        match crate::health::probe(be.addr, &b.host, health).await {
            Err(e) => Some(format!("{}: {e}", be.addr)),
            Ok(()) if !be.is_up() => Some(format!("{}: marked down by health checks", be.addr)),
            Ok(()) => None,
        }
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The audit fields of a switch: whether writes were discarded, how many the old color took.
fn guard_fields(
    discard_writes: bool,
    writes: u64,
    refused: Option<&str>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("discard_writes".into(), discard_writes.into());
    m.insert("writes_since_switch".into(), writes.into());
    if let Some(r) = refused {
        m.insert("refused".into(), r.into());
    }
    m
}
