//! The verbs of the control plane: switch, read-only, set pool, reload, status. Each one checks its
//! input, builds the new state and a complete new routing table off to the side, persists the state
//! atomically, then stores the table once. Cold path: one async Mutex serializes changes; the
//! request path never touches it.
//!
//! LIFECYCLE of read-only on: persist → store table (the notice) → raise each site's flag → wait
//! until no write is in flight (see `proxy/gate.rs` for why no write can slip past) → answer.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::config::{Color, Config};
use crate::control::api::*;
use crate::metrics::Metrics;
use crate::proxy::tls::CertStore;
use crate::routing::{RoutingTable, SiteShared};
use crate::state::{self, ReadOnlyState, SiteState, State, StateError};

/// Why a control call was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the state moved on: you sent If-Match {sent}, the current version is {current}; read the status again and retry")]
    Precondition { sent: u64, current: u64 },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Timeout(String),
    #[error("config refused, the running one keeps serving")]
    Config(Vec<String>),
    #[error(transparent)]
    State(#[from] StateError),
}

impl OpError {
    pub fn status(&self) -> u16 {
        match self {
            OpError::BadRequest(_) | OpError::Config(_) => 400,
            OpError::Forbidden(_) => 403,
            OpError::NotFound(_) => 404,
            OpError::Conflict(_) => 409,
            OpError::Precondition { .. } => 412,
            OpError::Timeout(_) => 504,
            OpError::State(_) => 500,
        }
    }
}

/// Who asked, for the audit log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

struct Inner {
    cfg: Config,
    state: State,
    shared: HashMap<String, Arc<SiteShared>>,
}

pub struct Ops {
    inner: Mutex<Inner>,
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub certs: Option<Arc<ArcSwap<CertStore>>>,
    pub metrics: Arc<Metrics>,
    started: Instant,
}

impl Ops {
    /// Loads the state file (refusing an unreadable one) and builds the first table.
    pub fn new(
        cfg: Config,
        certs: Option<Arc<ArcSwap<CertStore>>>,
        metrics: Arc<Metrics>,
    ) -> Result<Ops, StateError> {
        let state = state::load(&cfg.proxy.state)?.unwrap_or_default();
        let mut shared = HashMap::new();
        let table = RoutingTable::build(&cfg, &state, &mut shared, None);
        apply_flags(&table, &state);
        for s in &table.sites {
            let ss = state.sites.get(&*s.name);
            if ss.is_some_and(|s| s.written_since_switch) {
                s.shared.write_seen.store(true, Ordering::Relaxed);
            }
            s.shared.active_tx.send_replace(s.active);
        }
        Ok(Ops {
            inner: Mutex::new(Inner { cfg, state, shared }),
            table: Arc::new(ArcSwap::from_pointee(table)),
            certs,
            metrics,
            started: Instant::now(),
        })
    }

    pub async fn config(&self) -> Config {
        self.inner.lock().await.cfg.clone()
    }

    pub async fn status(&self) -> Status {
        let inner = self.inner.lock().await;
        let t = self.table.load();
        let sites = t
            .sites
            .iter()
            .map(|s| {
                let cfg = inner.cfg.site(&s.name);
                let ss = inner.state.sites.get(&*s.name);
                SiteStatus {
                    name: s.name.to_string(),
                    hosts: cfg
                        .map(|c| c.hosts.iter().map(|h| h.to_string()).collect())
                        .unwrap_or_default(),
                    active: s.active,
                    previous: ss.and_then(|x| x.previous),
                    switched_at: ss.and_then(|x| x.switched_at.clone()),
                    read_only: s.shared.read_only.load(Ordering::SeqCst),
                    writes_since_switch: Color::ALL
                        .iter()
                        .map(|c| (*c, s.shared.writes(*c)))
                        .collect(),
                    written_since_switch: s.shared.write_seen.load(Ordering::Relaxed),
                    writes_in_flight: s.shared.inflight_writes.load(Ordering::SeqCst) as u64,
                    pools: Color::ALL
                        .iter()
                        .map(|c| {
                            let list = s
                                .pool(*c)
                                .backends
                                .iter()
                                .map(|b| BackendStatus {
                                    addr: b.addr.to_string(),
                                    healthy: b.is_up(),
                                    ejected: b.is_ejected(),
                                })
                                .collect();
                            (*c, list)
                        })
                        .collect(),
                    has_release: cfg.is_some_and(|c| c.release.is_some()),
                }
            })
            .collect();
        Status {
            version: inner.state.version,
            uptime_s: self.started.elapsed().as_secs(),
            read_only: inner.state.read_only.as_ref().map(|r| ReadOnlyInfo {
                reason: r.reason.clone(),
                retry_after_s: r.retry_after_s,
                sites: r.sites.clone(),
                since: r.since.clone(),
            }),
            sites,
            connections_open: self.metrics.connections_open.get().max(0) as u64,
            requests_total: self.metrics.requests_total(),
        }
    }

    fn check_version(inner: &Inner, if_match: Option<u64>) -> Result<(), OpError> {
        match if_match {
            Some(v) if v != inner.state.version => Err(OpError::Precondition {
                sent: v,
                current: inner.state.version,
            }),
            _ => Ok(()),
        }
    }

    /// Persists `next` and installs the table built from it. Nothing changes if the write fails.
    fn commit(&self, inner: &mut Inner, mut next: State) -> Result<Arc<RoutingTable>, OpError> {
        next.version = inner.state.version + 1;
        state::save(&inner.cfg.proxy.state, &next)?;
        let prev = self.table.load_full();
        let table = Arc::new(RoutingTable::build(
            &inner.cfg,
            &next,
            &mut inner.shared,
            Some(&prev),
        ));
        inner.state = next;
        self.table.store(table.clone());
        Ok(table)
    }

    pub async fn switch(
        &self,
        site: &str,
        req: SwitchRequest,
        if_match: Option<u64>,
        peer: Peer,
    ) -> Result<SwitchResponse, OpError> {
        let mut inner = self.inner.lock().await;
        Self::check_version(&inner, if_match)?;
        let t = self.table.load_full();
        let route = t.site(site).ok_or_else(|| unknown_site(site, &t))?.clone();
        let from = route.active;
        if req.to == from {
            return Ok(SwitchResponse {
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
            });
        }
        let pool = route.pool(req.to);
        if pool.is_empty() {
            return Err(OpError::Conflict(format!(
                "{site}: the {} pool is empty; set its backends first (`switchyard pool set {site} {} ADDR...`)",
                req.to, req.to
            )));
        }
        // The slow check happens before the swap: probe every backend of the target now.
        let host = inner
            .cfg
            .site(site)
            .and_then(|c| c.hosts.first())
            .map(|h| h.to_string().replace("*.", "x."))
            .unwrap_or_default();
        let mut failures = Vec::new();
        for b in pool.backends.iter() {
            if let Err(e) = crate::health::probe(b.addr, &host, route.health.as_ref()).await {
                failures.push(format!("{}: {e}", b.addr));
            } else if !b.is_up() {
                failures.push(format!("{}: marked down by health checks", b.addr));
            }
        }
        if failures.len() == pool.backends.len() && !req.force {
            return Err(OpError::Conflict(format!(
                "{site}: no backend of {} is healthy ({}); fix it, or add --force to switch anyway",
                req.to,
                failures.join("; ")
            )));
        }
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
        let after = serde_json::to_value(&*entry).unwrap_or_default();
        let sh = route.shared.clone();
        sh.drain_ms
            .store(req.drain_s.unwrap_or(30) * 1000, Ordering::Relaxed);
        self.commit(&mut inner, next)?;
        for c in Color::ALL {
            sh.writes_since_switch[c.idx()].store(0, Ordering::Relaxed);
        }
        sh.write_seen.store(false, Ordering::Relaxed);
        sh.active_tx.send_replace(req.to);
        self.metrics.switched(site);
        audit(
            &inner.cfg,
            peer,
            &format!("switch {site} {from}->{}", req.to),
            before,
            after,
        );
        tracing::info!(site, %from, to = %req.to, forced = req.force, "switched");
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
        })
    }

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

    pub async fn set_pool(
        &self,
        site: &str,
        color: Color,
        req: PoolRequest,
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
        self.commit(&mut inner, next)?;
        audit(
            &inner.cfg,
            peer,
            &format!("pool set {site} {color}"),
            before,
            serde_json::to_value(&addrs).unwrap_or_default(),
        );
        Ok(PoolResponse {
            site: site.into(),
            color,
            backends: addrs,
            version: inner.state.version,
        })
    }

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
            let loaded = crate::proxy::tls::load_dir(dir)
                .map_err(|e| OpError::Config(vec![e.to_string()]))?;
            certificates = loaded
                .loaded
                .iter()
                .map(|(stem, names)| format!("{stem}: {}", names.join(", ")))
                .collect();
            store.store(Arc::new(loaded));
        }
        let before = serde_json::json!({"sites": inner.cfg.sites.iter().map(|s| s.name.clone()).collect::<Vec<_>>()});
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

    /// Persists "a write reached the active color since the switch" the first time it happens,
    /// so the rollback guard survives a restart. Runs in the background, off the request path.
    pub async fn persist_write_marks(&self) {
        let t = self.table.load_full();
        // The common case on the slow tick: no write since the last switch; nothing to lock.
        if !t
            .sites
            .iter()
            .any(|s| s.shared.write_seen.load(Ordering::Relaxed))
        {
            return;
        }
        let mut inner = self.inner.lock().await;
        // Loaded again under the lock: a switch may have come in between.
        let t = self.table.load_full();
        let mut next = inner.state.clone();
        let mut changed = false;
        for s in &t.sites {
            if s.shared.write_seen.load(Ordering::Relaxed) {
                let e = next
                    .sites
                    .entry(s.name.to_string())
                    .or_insert_with(|| SiteState::new(s.active));
                if !e.written_since_switch {
                    e.written_since_switch = true;
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = state::save(&inner.cfg.proxy.state, &next) {
                tracing::error!(error = %e, "cannot record the first write since the switch");
            } else {
                inner.state = next;
            }
        }
    }
}

/// Raises or lowers each site's read-only flag to match the state.
fn apply_flags(table: &RoutingTable, state: &State) {
    for s in &table.sites {
        let on = state.read_only.as_ref().is_some_and(|r| r.covers(&s.name));
        s.shared.read_only.store(on, Ordering::SeqCst);
    }
}

fn unknown_site(site: &str, t: &RoutingTable) -> OpError {
    let names: Vec<&str> = t.sites.iter().map(|s| &*s.name).collect();
    OpError::NotFound(format!(
        "no site named `{site}`; the sites are: {}",
        names.join(", ")
    ))
}

/// Appends one JSON line to the audit log. A failure is logged, not fatal: the change is done.
fn audit(
    cfg: &Config,
    peer: Peer,
    action: &str,
    before: serde_json::Value,
    after: serde_json::Value,
) {
    let line = serde_json::json!({
        "time": state::now_rfc3339(),
        "peer_uid": peer.uid,
        "peer_pid": peer.pid,
        "action": action,
        "before": before,
        "after": after,
    });
    // The whole line in one `write`: formatting straight into the file made a syscall per JSON
    // token (~75 per record), and an append of one buffer is not interleaved with another
    // writer's.
    let mut record = line.to_string();
    record.push('\n');
    let path = &cfg.proxy.audit_log;
    let r = (|| -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(record.as_bytes())?;
        f.sync_data()
    })();
    if let Err(e) = r {
        tracing::error!(path = %path.display(), error = %e, "cannot write the audit log");
    }
}
