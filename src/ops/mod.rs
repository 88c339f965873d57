//! The verbs of the control plane, one file each: `switch.rs`, `read_only.rs`, `maintenance.rs`, `pool.rs`,
//! `reload.rs`; `status` and the shared commit live here, the audit log in `audit.rs`. Each verb
//! checks its input, builds the new state and a complete new routing table off to the side,
//! persists the state atomically, then stores the table once.
//!
//! Cold path: one async Mutex (`inner`) serializes changes; the request path never touches it.
//! Nothing slow is awaited while it is held: a switch probes its target before taking it (see
//! `switch.rs`), read-only waits for writes in flight after releasing it, and the control accept
//! loop reads its allow list from an `ArcSwap`, so `status` answers while a switch probes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::config::{Color, Config, Principal, Role};
use crate::control::api::*;
use crate::metrics::Metrics;
use crate::proxy::tls::CertStore;
use crate::routing::{RoutingTable, SiteShared};
use crate::state::{self, SiteState, State, StateError};

mod audit;
mod maintenance;
mod pool;
mod read_only;
mod reload;
mod switch;

/// Why a control call was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A switch that would leave writes behind (see `switch.rs`); the API adds a `code`.
    #[error("{0}")]
    WritesWouldBeLost(String),
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
            OpError::Conflict(_) | OpError::WritesWouldBeLost(_) => 409,
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
    /// `proxy.control_allow`, read by the control accept loop for every connection without the
    /// lock; replaced on reload.
    control_allow: ArcSwap<Vec<(Principal, Role)>>,
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub certs: Option<Arc<ArcSwap<CertStore>>>,
    pub metrics: Arc<Metrics>,
    /// ACME certificates: schedule, pending challenges, their status.
    pub acme: Arc<crate::acme::Acme>,
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
        let acme = crate::acme::Acme::new(&cfg, certs.clone(), metrics.clone());
        Ok(Ops {
            acme,
            control_allow: ArcSwap::from_pointee(cfg.proxy.control_allow.clone()),
            inner: Mutex::new(Inner { cfg, state, shared }),
            table: Arc::new(ArcSwap::from_pointee(table)),
            certs,
            metrics,
            started: Instant::now(),
        })
    }

    /// Who else may use the control socket and how (`proxy.control_allow`); lock-free.
    pub fn control_allow(&self) -> Arc<Vec<(Principal, Role)>> {
        self.control_allow.load_full()
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
                    maintenance: s.maintenance.is_some(),
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
            maintenance: inner.state.maintenance.as_ref().map(|m| MaintenanceInfo {
                message: m.message.clone(),
                retry_after_s: m.retry_after_s,
                sites: m.sites.clone(),
                since: m.since.clone(),
            }),
            sites,
            connections_open: self.metrics.connections_open.get().max(0) as u64,
            requests_total: self.metrics.requests_total(),
            certificates: self.acme.certificates(std::time::SystemTime::now()),
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
