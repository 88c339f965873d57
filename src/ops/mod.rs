//! The verbs of the control plane, one file each: `switch.rs`, `read_only.rs`, `maintenance.rs`, `pool.rs`,
//! `reload.rs`, `backup_events.rs` (off-site runs and drills, audited); `status` and the shared commit live here, the audit log in `audit.rs`. Each verb
//! checks its input, builds the new state, commits it through the store (`store.rs`: the state
//! file, or etcd with `[cluster]`), then [`Ops::install`] builds a complete new routing table off
//! to the side and stores it once. Changes applied from the cluster (another edge's) go through
//! the same `install`.
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
use store::Outcome;
pub(crate) use store::{local_inflight, Store};

mod audit;
mod backup_events;
mod maintenance;
mod pool;
mod read_only;
mod reload;
mod store;
mod switch;

/// How many times a verb is planned again when another edge's change landed first (cluster only;
/// with If-Match the caller gets the 412 at once).
const COMMIT_ROUNDS: usize = 3;

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
    /// The cluster's state moved on under this change (another edge's landed first); replanned
    /// by the verb without If-Match.
    #[error("the state moved on to version {current} while this change was made; read the status again and retry")]
    Moved { current: u64 },
    /// etcd could not be reached, or did not confirm (the message says which, and what to do).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
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
            OpError::Precondition { .. } | OpError::Moved { .. } => 412,
            OpError::Timeout(_) => 504,
            OpError::State(_) => 500,
            OpError::Cluster(_) => 503,
        }
    }
}

/// Who asked, for the audit log.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

pub(crate) struct Inner {
    cfg: Config,
    state: State,
    shared: HashMap<String, Arc<SiteShared>>,
}

pub struct Ops {
    inner: Mutex<Inner>,
    /// The state file, or etcd (`[cluster]`).
    pub(crate) store: Store,
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
    /// One edge: loads the state file (refusing an unreadable one) and builds the first table.
    pub fn new(
        cfg: Config,
        certs: Option<Arc<ArcSwap<CertStore>>>,
        metrics: Arc<Metrics>,
    ) -> Result<Ops, StateError> {
        let state = state::load(&cfg.proxy.state)?.unwrap_or_default();
        let store = Store::File(cfg.proxy.state.clone());
        Ok(Self::with_state(cfg, state, store, certs, metrics))
    }

    /// Builds the first table from `state`, which `store` holds.
    pub(crate) fn with_state(
        cfg: Config,
        state: State,
        store: Store,
        certs: Option<Arc<ArcSwap<CertStore>>>,
        metrics: Arc<Metrics>,
    ) -> Ops {
        let mut shared = HashMap::new();
        let table = RoutingTable::build(&cfg, &state, &mut shared, None);
        apply_flags(&table, &state);
        for s in &table.sites {
            let ss = state.sites.get(&*s.name);
            if ss.is_some_and(|s| s.written_since_switch) {
                s.shared.write_seen.store(true, Ordering::Relaxed);
            }
            s.shared.active_tx.send_replace(s.active);
            if let Some(d) = ss.and_then(|s| s.drain_s) {
                s.shared.drain_ms.store(d * 1000, Ordering::Relaxed);
            }
        }
        let acme = crate::acme::Acme::new(&cfg, certs.clone(), metrics.clone());
        Ops {
            acme,
            control_allow: ArcSwap::from_pointee(cfg.proxy.control_allow.clone()),
            inner: Mutex::new(Inner { cfg, state, shared }),
            store,
            table: Arc::new(ArcSwap::from_pointee(table)),
            certs,
            metrics,
            started: Instant::now(),
        }
    }

    /// The config this edge runs with (a copy; cold path).
    pub async fn config(&self) -> Config {
        self.inner.lock().await.cfg.clone()
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
                        .map(|c| {
                            let others = self.store.others_writes(&s.name, *c);
                            (*c, s.shared.writes(*c) + others)
                        })
                        .collect(),
                    written_since_switch: s.shared.write_seen.load(Ordering::Relaxed)
                        || ss.is_some_and(|x| x.written_since_switch),
                    writes_in_flight: s.shared.inflight_writes.load(Ordering::SeqCst) as u64
                        + self.store.others_inflight(&s.name),
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
                    release: cfg
                        .filter(|c| c.release.is_some())
                        .and_then(|c| release_progress(&inner.cfg, &c.name)),
                    last_backup: cfg
                        .and_then(|c| c.release.as_ref().map(|r| (c, r)))
                        .and_then(|(c, r)| last_backup(r, &c.name)),
                    last_offsite: cfg
                        .and_then(|c| c.release.as_ref().map(|r| (c, r)))
                        .and_then(|(c, r)| {
                            crate::release::backup::offsite::record::last_offsite(
                                &crate::release::backup::site_dir(r, &c.name),
                            )
                        }),
                    last_drill: cfg
                        .and_then(|c| c.release.as_ref().map(|r| (c, r)))
                        .and_then(|(c, r)| {
                            crate::release::backup::offsite::record::last_drill(
                                &crate::release::backup::site_dir(r, &c.name),
                            )
                        }),
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
            cluster: self.store.cluster().map(|c| c.status()),
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

    /// Commits `next` through the store and installs it. Nothing changes if the commit fails;
    /// `Moved` (cluster only) when another edge's change landed first: that one is installed.
    async fn commit(&self, inner: &mut Inner, next: State) -> Result<Arc<RoutingTable>, OpError> {
        match self.store.commit(&inner.state, &next).await? {
            Outcome::Done(version) => {
                let mut next = next;
                next.version = version;
                Ok(self.install(inner, next))
            }
            Outcome::Moved(current) => {
                let v = current.version;
                if v > inner.state.version {
                    self.install(inner, *current);
                }
                Err(OpError::Moved { current: v })
            }
        }
    }

    /// Runs a verb's `once` again when the cluster's state moved under it (another edge's change
    /// landed first), unless the caller pinned the version with If-Match.
    async fn rounds<T, Fut>(
        &self,
        if_match: Option<u64>,
        mut once: impl FnMut() -> Fut,
    ) -> Result<T, OpError>
    where
        Fut: std::future::Future<Output = Result<T, OpError>>,
    {
        let mut last = 0;
        for _ in 0..COMMIT_ROUNDS {
            match once().await {
                Err(OpError::Moved { current }) => {
                    if let Some(sent) = if_match {
                        return Err(OpError::Precondition { sent, current });
                    }
                    last = current;
                }
                r => return r,
            }
        }
        Err(OpError::Conflict(format!(
            "the cluster's state kept changing under this change ({COMMIT_ROUNDS} tries, now at version {last}); retry"
        )))
    }

    /// Makes `next` the state this edge serves: builds its table off to the side, lowers the
    /// read-only flags it no longer covers, stores the table once, raises the flags it covers,
    /// and for every site whose active color changed resets the write counts and tells upgraded
    /// connections to drain. The one path for this edge's own changes and the cluster's.
    pub(crate) fn install(&self, inner: &mut Inner, next: State) -> Arc<RoutingTable> {
        let prev = self.table.load_full();
        let table = Arc::new(RoutingTable::build(
            &inner.cfg,
            &next,
            &mut inner.shared,
            Some(&prev),
        ));
        // Off: the flags go down before the notice leaves the table (see gate.rs).
        for s in &table.sites {
            let on = next.read_only.as_ref().is_some_and(|r| r.covers(&s.name));
            if !on {
                s.shared.read_only.store(false, Ordering::SeqCst);
            }
        }
        for s in &table.sites {
            if let Some(d) = next.sites.get(&*s.name).and_then(|x| x.drain_s) {
                s.shared.drain_ms.store(d * 1000, Ordering::Relaxed);
            }
        }
        self.table.store(table.clone());
        apply_flags(&table, &next);
        for s in &table.sites {
            let was = prev.site(&s.name).map(|p| p.active);
            if was.is_some_and(|w| w != s.active) {
                for c in Color::ALL {
                    s.shared.writes_since_switch[c.idx()].store(0, Ordering::Relaxed);
                }
                s.shared.write_seen.store(false, Ordering::Relaxed);
                s.shared.active_tx.send_replace(s.active);
                self.metrics.switched(&s.name);
            }
        }
        inner.state = next;
        if let Some(c) = self.store.cluster() {
            c.installed(&inner.state);
        }
        table
    }

    /// A state from the cluster (another edge's change, or a re-list): installed when it is newer
    /// than what this edge serves. Returns whether it was.
    pub(crate) async fn apply_remote(&self, state: State) -> bool {
        let mut inner = self.inner.lock().await;
        if state.version <= inner.state.version {
            return false;
        }
        self.install(&mut inner, state);
        true
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
        if !changed {
            return;
        }
        if self.store.is_file() {
            if let Err(e) = state::save(&inner.cfg.proxy.state, &next) {
                tracing::error!(error = %e, "cannot record the first write since the switch");
            } else {
                inner.state = next;
            }
            return;
        }
        // In a cluster the mark is shared, so that a switch through any edge sees it: a change
        // like any other (the next tick tries again if it failed or another change landed).
        if let Err(e) = self.commit(&mut inner, next).await {
            tracing::warn!(error = %e, "cannot record the first write since the switch in the cluster yet");
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

/// The site's unfinished release, from its journal (a file beside the state file).
fn release_progress(cfg: &Config, site: &str) -> Option<ReleaseProgress> {
    let j = crate::release::journal::load(cfg, site).ok()??;
    // SAFETY: kill with signal 0 only asks whether the process exists.
    let running = unsafe { libc::kill(j.pid as i32, 0) } == 0;
    Some(ReleaseProgress {
        from: j.from,
        to: j.to,
        to_version: j.to_version,
        step: j.step.to_string(),
        started_at: j.started_at,
        updated_at: j.updated_at,
        pid: j.pid,
        running,
    })
}

/// The newest backup set of the site (by its time-stamped id).
fn last_backup(rel: &crate::config::ReleaseConfig, site: &str) -> Option<BackupInfo> {
    let sets = crate::release::backup::list(rel, site).ok()?;
    let newest = sets.into_iter().max_by(|a, b| a.id.cmp(&b.id))?;
    Some(match &newest.manifest {
        Ok(m) => BackupInfo {
            id: newest.id.clone(),
            taken_at: Some(m.taken_at.clone()),
            verified_at: Some(m.verified_at.clone()),
            size: Some(m.size()),
            members: m.members.len(),
            error: None,
        },
        Err(e) => BackupInfo {
            id: newest.id.clone(),
            taken_at: None,
            verified_at: None,
            size: None,
            members: 0,
            error: Some(e.clone()),
        },
    })
}
